//! `zepo weights random`: a diffusers-layout checkpoint with the real model's structure and
//! random weights, from its configs alone: what benchmarks and the full-size tests stream when
//! the real weights cannot be downloaded. No torch needed.
//!
//! The keys and shapes are those the model loaders ask for (each part is built once from a
//! store of zeros that records them), so the checkpoint loads exactly like the real one. The
//! values are [`random_weight`]'s, the same as `zepo bench`'s random models, rounded to f16.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use burn::tensor::{DType, Device};
use half::f16;

use super::convert::header_bytes;
use crate::weights::{random_weight, Dtype, LoadOptions, VarStore};
use crate::zepo::load::{block_on, Loader, WeightSource};
use crate::{Error, Result};

/// The parts written: `(part, weight file stem, seed)`. The seeds are `zepo bench`'s.
const PARTS: &[(&str, &str, u64)] =
    &[("unet", "diffusion_pytorch_model", 1), ("vae", "diffusion_pytorch_model", 2), ("text_encoder", "model", 3)];

/// The keys and shapes the loader of `part` asks for, configured from `config_dir`.
fn structure(config_dir: &Path, part: &str, device: &Device) -> Result<Vec<(String, Vec<usize>)>> {
    // f16 zeros: the structure costs half of an f32 model's memory, briefly.
    let options = LoadOptions { dtype: DType::F16, ..Default::default() };
    let store = VarStore::zeros(device, &options);
    let requests = store.requests();
    let loader = Loader::dir(config_dir, device, &options, WeightSource::Checkpoint)?;
    if !block_on(loader.build_part(part, store))? {
        return Err(Error::InvalidOption(format!("no loader for part {part}")));
    }
    let list = requests.borrow().clone();
    // A key asked twice (shared weights) is stored once.
    let mut seen = std::collections::HashSet::new();
    Ok(list.into_iter().filter(|(k, _)| seen.insert(k.clone())).collect())
}

/// Writes one part's random weights as an f16 safetensors file, tensor by tensor.
fn write_part(path: &Path, tensors: &[(String, Vec<usize>)], seed: u64) -> Result<u64> {
    let layout: Vec<(&str, Dtype, &[usize])> = tensors.iter().map(|(k, s)| (k.as_str(), Dtype::F16, s.as_slice())).collect();
    let io = |e| Error::io(path, e);
    let mut w = BufWriter::with_capacity(1 << 20, File::create(path).map_err(io)?);
    let header = header_bytes(&layout);
    w.write_all(&header).map_err(io)?;
    let mut bytes = header.len() as u64;
    for (key, shape) in tensors {
        let values = random_weight(key, shape, seed);
        for chunk in values.chunks(1 << 20) {
            let out: Vec<u8> = chunk.iter().flat_map(|&v| f16::from_f32(v).to_le_bytes()).collect();
            w.write_all(&out).map_err(io)?;
            bytes += out.len() as u64;
        }
    }
    w.flush().map_err(io)?;
    Ok(bytes)
}

fn copy_tree(src: &Path, dest: &Path) -> Result<()> {
    std::fs::create_dir_all(dest).map_err(|e| Error::io(dest, e))?;
    for entry in std::fs::read_dir(src).map_err(|e| Error::io(src, e))? {
        let path = entry.map_err(|e| Error::io(src, e))?.path();
        if path.is_file() {
            let to = dest.join(path.file_name().expect("a file has a name"));
            std::fs::copy(&path, &to).map_err(|e| Error::io(&to, e))?;
        }
    }
    Ok(())
}

/// Writes the checkpoint of the model configured in `config_dir` (each part's `config.json`,
/// `tokenizer/`, `scheduler/`) to `out` (created; must be empty), with random f16 weights.
/// `progress` is told about each part. Returns the bytes of weights written.
pub fn write_random_checkpoint(config_dir: &Path, out: &Path, progress: &mut dyn FnMut(&str)) -> Result<u64> {
    if out.exists() && std::fs::read_dir(out).map_err(|e| Error::io(out, e))?.next().is_some() {
        return Err(Error::InvalidOption(format!("output directory {} is not empty; remove it or choose another", out.display())));
    }
    let device = crate::device::device(crate::device::Backend::Cpu)?;
    let mut total = 0;
    for &(part, stem, seed) in PARTS {
        let tensors = structure(config_dir, part, &device)?;
        let dir = out.join(part);
        copy_tree(&config_dir.join(part), &dir)?;
        let file = dir.join(format!("{stem}.safetensors"));
        let bytes = write_part(&file, &tensors, seed)?;
        progress(&format!("{}: {} tensors, {:.1} MB", file.display(), tensors.len(), bytes as f64 / 1e6));
        total += bytes;
    }
    for extra in ["tokenizer", "scheduler"] {
        copy_tree(&config_dir.join(extra), &out.join(extra))?;
    }
    let index = config_dir.join("model_index.json");
    if index.is_file() {
        std::fs::copy(&index, out.join("model_index.json")).map_err(|e| Error::io(&index, e))?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tiny model's checkpoint has exactly the keys and shapes the loaders ask for.
    #[test]
    fn structure_matches_a_real_checkpoint() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("weights/tiny-lcm");
        let device = crate::device::device(crate::device::Backend::Cpu).unwrap();
        for &(part, stem, _) in PARTS {
            let mut asked = structure(&dir, part, &device).unwrap();
            let file = dir.join(part).join(format!("{stem}.safetensors"));
            let bytes = std::fs::read(&file).unwrap();
            let st = crate::weights::SafetensorsBytes::new(bytes, file.display().to_string()).unwrap();
            let mut stored: Vec<(String, Vec<usize>)> =
                st.header().tensors.iter().filter(|t| t.dtype.is_float()).map(|t| (t.name.clone(), t.shape.clone())).collect();
            asked.sort();
            stored.sort();
            assert_eq!(asked, stored, "{part}");
        }
    }
}
