//! `zepo weights convert`: a diffusers checkpoint into the fp16 bundle a CDN serves (the format
//! is `crate::weights::bundle`'s). Each part's tensors are read through the loader's
//! definition of where a diffusers part's weights are (`weights::source::diffusers_weights`),
//! rounded to f16 and packed into shards by `bundle::plan_shards`; the prompt embeddings are
//! computed by the model's own text encoder (f32, on the CPU) through the one load path.
//!
//! Memory: the source files are memory-mapped and each tensor's pages are dropped once it is
//! written; a shard is written as it is produced, through a buffer of [`CHUNK`] elements.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use sha2::{Digest, Sha256};

use std::collections::BTreeMap;

use super::calibrate::{calibrate, Scheme};
use crate::weights::bundle::{
    plan_shards, shard_url, FileRef, Manifest, Measured, Part, PrecomputedPrompts, PromptEntry, Shard, Variant, VariantPart,
    DEFAULT_SHARD_BYTES, FORMAT, FORMAT_VERSION, FORMAT_VERSION_VARIANTS, FP16, LOADED_PARTS, MANIFEST_FILE, PARTS, PROMPT_EMBEDDINGS_FILE,
};
use crate::weights::dir::{map_file, release_pages, DirSource};
use crate::weights::quant::{rows_cols, Quant, QuantTensor};
use crate::weights::source::diffusers_weights;
use crate::weights::{Dtype, LoadOptions, SafetensorsBytes, TensorEntry, WeightsError};
use crate::zepo::load::{block_on, Loader, WeightSource};
use crate::{Error, Result};

/// Elements converted per step: bounds the converter's working memory (4 MB of f32).
pub const CHUNK: usize = 1 << 20;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> WeightsError + '_ {
    move |source| WeightsError::Io { file: path.display().to_string(), source }
}

fn bundle_err(file: impl std::fmt::Display, reason: impl Into<String>) -> WeightsError {
    WeightsError::Bundle { file: file.to_string(), reason: reason.into() }
}

/// A writer that hashes and counts what goes through it.
struct HashWriter<W: Write> {
    inner: W,
    hasher: Sha256,
    written: u64,
}

impl<W: Write> HashWriter<W> {
    fn new(inner: W) -> Self {
        Self { inner, hasher: Sha256::new(), written: 0 }
    }

    fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.hasher.update(bytes);
        self.written += bytes.len() as u64;
        self.inner.write_all(bytes)
    }

    fn finish(mut self) -> std::io::Result<(u64, String)> {
        self.inner.flush()?;
        Ok((self.written, hex(&self.hasher.finalize())))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The sha256 (hex) and size of a file, read in 1 MiB pieces.
pub fn sha256_file(path: &Path) -> Result<(u64, String), WeightsError> {
    let mut file = File::open(path).map_err(io(path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(io(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((size, hex(&hasher.finalize())))
}

/// A safetensors header for tensors laid out back to back in the given order, padded with
/// spaces so that the data starts 8-byte aligned (as the Python writer does). The header is
/// written here, the data by the converter as it rounds each tensor, because the `safetensors`
/// crate's streaming writer (`serialize_to_file`) does not fit: it asks each tensor for its
/// bytes through an infallible `View::data()` (an out-of-range weight could not be refused by
/// name), writes to a path only (the shard's sha256 could not be taken as it is written), holds
/// a whole tensor's converted copy (76 MB for CLIP's token table, against 2 MB chunks here) and
/// reorders the tensors by name. The parser's round-trip tests read what this writes.
pub fn header_bytes(tensors: &[(&str, Dtype, &[usize])]) -> Vec<u8> {
    let mut map = serde_json::Map::new();
    map.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
    let mut offset = 0u64;
    for (name, dtype, shape) in tensors {
        let len = shape.iter().product::<usize>() as u64 * dtype.size() as u64;
        map.insert(name.to_string(), serde_json::json!({"dtype": dtype.name(), "shape": shape, "data_offsets": [offset, offset + len]}));
        offset += len;
    }
    let mut json = serde_json::to_vec(&map).expect("a header always serializes");
    while !(8 + json.len()).is_multiple_of(8) {
        json.push(b' ');
    }
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend(json);
    out
}

/// The safetensors files of a diffusers part in `model`, where the loader would read them.
pub fn part_files(model: &Path, part: &str) -> Result<Vec<PathBuf>> {
    let source = DirSource::new(model)?;
    let mut files = Vec::new();
    block_on(diffusers_weights(&source, part, &mut async |path, index| {
        let full = source.path(path);
        if !full.is_file() {
            return match index {
                None => Ok(false),
                Some(_) => Err(Error::io(&full, std::io::Error::new(std::io::ErrorKind::NotFound, "a shard its index names is missing"))),
            };
        }
        files.push(full);
        Ok(true)
    }))?;
    Ok(files)
}

/// Converts one part of the diffusers checkpoint in `model` into f16 shards of at most
/// `shard_bytes` (see [`plan_shards`]) under `out/<part>/`, and copies its `config.json`.
/// Non-float tensors (buffers no module uses) are listed as skipped. `progress` is told about
/// each shard written.
pub fn convert_part(model: &Path, part: &str, out: &Path, shard_bytes: u64, progress: &mut dyn FnMut(&str)) -> Result<Part> {
    let (shards, skipped) = write_shards(model, part, out, shard_bytes, FP16, &|_| None, progress)?;
    let config = copy_file(&model.join(part).join("config.json"), out, &format!("{part}/config.json"))?;
    Ok(Part { config, total_bytes: shards.iter().map(|s| s.file.size).sum(), shards, omitted: Vec::new(), skipped })
}

/// Writes a part's float tensors as the shards of `variant` (`out/<part>/<variant>-*`): each in
/// f16, or compact where `packing` gives it one (`crate::weights::quant`, from the f16 values:
/// what the recipe measured). Returns the shards and the non-float tensors skipped.
pub fn write_shards(
    model: &Path,
    part: &str,
    out: &Path,
    shard_bytes: u64,
    variant: &str,
    packing: &dyn Fn(&str) -> Option<Quant>,
    progress: &mut dyn FnMut(&str),
) -> Result<(Vec<Shard>, Vec<String>)> {
    let files = part_files(model, part)?;
    let maps = files.iter().map(|p| map_file(p)).collect::<Result<Vec<_>, _>>()?;
    let sources = files.iter().zip(&maps).map(|(p, m)| SafetensorsBytes::new(m, p.display().to_string())).collect::<Result<Vec<_>, _>>()?;

    // The carried tensors in source order.
    let mut seen = std::collections::HashMap::new();
    let mut carried: Vec<(usize, &TensorEntry)> = Vec::new();
    let mut skipped = Vec::new();
    for (i, st) in sources.iter().enumerate() {
        for t in &st.header().tensors {
            if let Some(first) = seen.insert(t.name.clone(), i) {
                let (first, second) = (sources[first].name().to_string(), st.name().to_string());
                return Err(WeightsError::Duplicate { key: t.name.clone(), first, second }.into());
            }
            if t.dtype.is_float() {
                carried.push((i, t));
            } else {
                skipped.push(t.name.clone());
            }
        }
    }
    if carried.is_empty() {
        return Err(bundle_err(model.join(part).display(), "no float tensors to convert").into());
    }
    // Each tensor's storage: its name, dtype, stored shape and packing.
    let stored: Vec<(Dtype, Vec<usize>, Option<Quant>)> = carried
        .iter()
        .map(|(_, t)| match packing(&t.name) {
            Some(q) => {
                let (rows, k) = rows_cols(&t.shape);
                (Dtype::U8, vec![rows, q.row_bytes(k)], Some(q))
            }
            None => (Dtype::F16, t.shape.clone(), None),
        })
        .collect();
    let sizes: Vec<(&str, &[usize], usize)> =
        carried.iter().zip(&stored).map(|((_, t), (d, s, _))| (t.name.as_str(), s.as_slice(), d.size())).collect();
    let plan = plan_shards(&sizes, shard_bytes);

    let part_dir = out.join(part);
    std::fs::create_dir_all(&part_dir).map_err(io(&part_dir))?;
    let mut shards = Vec::with_capacity(plan.len());
    for (n, members) in plan.iter().enumerate() {
        let url = shard_url(part, variant, n, plan.len());
        let path = out.join(&url);
        let file = File::create(&path).map_err(io(&path))?;
        let mut w = HashWriter::new(BufWriter::with_capacity(1 << 20, file));
        let layout: Vec<(&str, Dtype, &[usize])> =
            members.iter().map(|&k| (carried[k].1.name.as_str(), stored[k].0, stored[k].1.as_slice())).collect();
        w.write_all(&header_bytes(&layout)).map_err(io(&path))?;
        let mut quantized = BTreeMap::new();
        for &k in members {
            let (i, t) = carried[k];
            let st = &sources[i];
            let bytes = &maps[i][st.header().data_start as usize + t.start as usize..][..(t.end - t.start) as usize];
            match stored[k].2 {
                None => to_f16(t, bytes, st.name(), &mut |b| w.write_all(b).map_err(io(&path)))?,
                Some(q) => {
                    write_quantized(t, bytes, st.name(), q, &mut |b| w.write_all(b).map_err(io(&path)))?;
                    quantized.insert(t.name.clone(), QuantTensor { scheme: q.name(), block: q.block, shape: t.shape.clone() });
                }
            }
            release_pages(&maps[i], st.header().data_start as usize + t.start as usize, bytes.len());
        }
        let (size, sha256) = w.finish().map_err(io(&path))?;
        progress(&format!("{url}: {} tensors ({} compact), {:.1} MB", members.len(), quantized.len(), size as f64 / 1e6));
        shards.push(Shard {
            file: FileRef { url, size, sha256 },
            dtype: Dtype::F16.name().into(),
            tensors: members.iter().map(|&k| carried[k].1.name.clone()).collect(),
            quantized,
        });
    }
    Ok((shards, skipped))
}

/// Quantizes one float tensor with `q`, from its f16 rounding (what the fp16 bundle holds and
/// the recipe measured), whole rows at a time, handing the stored bytes to `sink`.
fn write_quantized(
    entry: &TensorEntry,
    bytes: &[u8],
    file: &str,
    q: Quant,
    sink: &mut dyn FnMut(&[u8]) -> Result<(), WeightsError>,
) -> Result<(), WeightsError> {
    let (_, k) = rows_cols(&entry.shape);
    let mut values: Vec<f32> = Vec::with_capacity(entry.shape.iter().product());
    to_f16(entry, bytes, file, &mut |b| {
        values.extend(b.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()));
        Ok(())
    })?;
    let mut out = Vec::new();
    for rows in values.chunks(k * (CHUNK / k).max(1)) {
        out.clear();
        for row in rows.chunks(k) {
            q.quantize_row(row, &mut out);
        }
        sink(&out)?;
    }
    Ok(())
}

/// Rounds one float tensor to f16 (round to nearest, ties to even), [`CHUNK`] elements at a
/// time, handing the little-endian bytes to `sink`. A value that is not finite in f16 (beyond
/// ±65504 after rounding, or inf / NaN in the source) is an error naming the tensor.
pub fn to_f16(
    entry: &TensorEntry,
    bytes: &[u8],
    file: &str,
    sink: &mut dyn FnMut(&[u8]) -> Result<(), WeightsError>,
) -> Result<(), WeightsError> {
    let size = entry.dtype.size();
    let mut wide: Vec<f32> = Vec::with_capacity(CHUNK.min(bytes.len() / size));
    let mut half: Vec<f16> = Vec::with_capacity(wide.capacity());
    let mut out: Vec<u8> = Vec::with_capacity(wide.capacity() * 2);
    let bad = |value: String| WeightsError::OutOfRange { key: entry.name.clone(), file: file.to_string(), value };
    for chunk in bytes.chunks(CHUNK * size) {
        half.clear();
        match entry.dtype {
            Dtype::F16 => half.extend(chunk.chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]]))),
            // f64 rounds to f16 directly: going through f32 could round twice.
            Dtype::F64 => half.extend(chunk.chunks_exact(8).map(|b| f16::from_f64(f64::from_le_bytes(b.try_into().unwrap())))),
            Dtype::F32 | Dtype::BF16 => {
                wide.clear();
                if entry.dtype == Dtype::F32 {
                    wide.extend(chunk.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())));
                } else {
                    wide.extend(chunk.chunks_exact(2).map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32()));
                }
                half.extend(wide.iter().map(|&v| f16::from_f32(v)));
            }
            other => return Err(WeightsError::Dtype { key: entry.name.clone(), dtype: other.name().into() }),
        }
        if let Some(i) = half.iter().position(|v| !v.is_finite()) {
            let value = match entry.dtype {
                Dtype::F32 | Dtype::BF16 => wide[i].to_string(),
                Dtype::F64 => f64::from_le_bytes(chunk[i * 8..i * 8 + 8].try_into().unwrap()).to_string(),
                _ => half[i].to_string(),
            };
            return Err(bad(value));
        }
        out.clear();
        out.extend(half.iter().flat_map(|v| v.to_le_bytes()));
        sink(&out)?;
    }
    Ok(())
}

/// Copies `src` to `out/rel`, returning its manifest entry.
pub fn copy_file(src: &Path, out: &Path, rel: &str) -> Result<FileRef, WeightsError> {
    let bytes = std::fs::read(src).map_err(io(src))?;
    write_file(out, rel, &bytes)
}

/// Writes `bytes` to `out/rel`, returning its manifest entry.
pub fn write_file(out: &Path, rel: &str, bytes: &[u8]) -> Result<FileRef, WeightsError> {
    let dest = out.join(rel);
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent).map_err(io(parent))?;
    }
    std::fs::write(&dest, bytes).map_err(io(&dest))?;
    Ok(FileRef { url: rel.to_string(), size: bytes.len() as u64, sha256: hex(&Sha256::digest(bytes)) })
}

/// A small f32 safetensors file (the prompt embeddings) at `out/rel`.
pub fn write_f32_safetensors(out: &Path, rel: &str, tensors: &[(String, Vec<usize>, Vec<f32>)]) -> Result<FileRef, WeightsError> {
    for (name, shape, values) in tensors {
        if shape.iter().product::<usize>() != values.len() {
            return Err(bundle_err(rel, format!("tensor `{name}`: {} values for shape {shape:?}", values.len())));
        }
    }
    let layout: Vec<(&str, Dtype, &[usize])> = tensors.iter().map(|(n, s, _)| (n.as_str(), Dtype::F32, s.as_slice())).collect();
    let mut bytes = header_bytes(&layout);
    for (_, _, values) in tensors {
        bytes.extend(values.iter().flat_map(|v| v.to_le_bytes()));
    }
    write_file(out, rel, &bytes)
}

/// Reads and checks the bundle manifest `dir/manifest.json`.
pub fn read_manifest(dir: &Path) -> Result<Manifest> {
    let path = dir.join(MANIFEST_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    Ok(Manifest::parse(&text, &path.display().to_string())?)
}

/// Writes `dir/manifest.json`: the last file written, so that a bundle whose conversion
/// stopped half-way has none.
pub fn write_manifest(dir: &Path, manifest: &Manifest) -> Result<(), WeightsError> {
    let path = dir.join(MANIFEST_FILE);
    std::fs::write(&path, manifest.to_json()).map_err(io(&path))
}

/// What `zepo weights convert` does.
#[derive(Debug, Clone)]
pub struct ConvertOptions {
    /// The diffusers checkpoint directory (unet/, vae/, text_encoder/, tokenizer/, scheduler/).
    pub model: PathBuf,
    /// The bundle directory to create (must not exist or be empty).
    pub out: PathBuf,
    /// The model name in the manifest; the source directory's name if `None`.
    pub name: Option<String>,
    /// Shard size cap in bytes.
    pub shard_bytes: u64,
    /// Prompts whose embeddings are precomputed (the pipeline's default prompt unless given);
    /// the unconditional "" is always added.
    pub prompts: Vec<String>,
    /// Carry the text encoder and tokenizer (needed for prompts not precomputed).
    pub text_encoder: bool,
    /// Compact variants to add beside the fp16 weights (`q8`, `mixed`, …; see
    /// [`Scheme::named`]), each with its recipe measured on this checkpoint.
    pub variants: Vec<String>,
    /// The PSNR target of the variants' recipes (dB; the scheme's default if `None`).
    pub target_psnr: Option<f64>,
}

impl ConvertOptions {
    pub fn new(model: impl Into<PathBuf>, out: impl Into<PathBuf>) -> Self {
        Self {
            model: model.into(),
            out: out.into(),
            name: None,
            shard_bytes: DEFAULT_SHARD_BYTES,
            prompts: vec![crate::zepo::ZepoOptions::default().prompt],
            text_encoder: true,
            variants: Vec::new(),
            target_psnr: None,
        }
    }
}

/// The prompts to precompute: the given ones, in order, without repeats, then "" if absent.
pub fn prompt_list(prompts: &[String]) -> Vec<String> {
    let mut list: Vec<String> = Vec::new();
    for p in prompts.iter().chain(std::iter::once(&String::new())) {
        if !list.contains(p) {
            list.push(p.clone());
        }
    }
    list
}

/// `last_hidden_state` of each prompt (`[positions, hidden]`, f32) by the text encoder of the
/// model in `model`, loaded in f32 on the CPU through the one load path and dropped afterwards.
pub fn prompt_embeddings(model: &Path, prompts: &[String]) -> Result<(Vec<usize>, Vec<Vec<f32>>)> {
    let device = crate::device::device(crate::device::Backend::Cpu)?;
    let loader = Loader::dir(model, &device, &LoadOptions::default(), WeightSource::Checkpoint)?;
    let text = block_on(loader.text_stack())?;
    let out = text.encoder.forward(text.tokenizer.encode_batch(prompts, &device));
    let [_, positions, hidden] = out.dims();
    let values = out
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| Error::Device(format!("reading the prompt embeddings back: {e:?}")))?;
    Ok((vec![positions, hidden], values.chunks(positions * hidden).map(<[f32]>::to_vec).collect()))
}

/// Converts a diffusers checkpoint into an fp16 bundle (see [`ConvertOptions`]); returns the
/// manifest written. `progress` is told about each step.
pub fn convert(opts: &ConvertOptions, progress: &mut dyn FnMut(&str)) -> Result<Manifest> {
    let model = DirSource::new(&opts.model)?;
    let schemes = opts.variants.iter().map(|v| Scheme::named(v, opts.target_psnr)).collect::<Result<Vec<_>>>()?;
    if opts.out.exists() && std::fs::read_dir(&opts.out).map_err(|e| Error::io(&opts.out, e))?.next().is_some() {
        return Err(Error::InvalidOption(format!("output directory {} is not empty; remove it or choose another", opts.out.display())));
    }
    std::fs::create_dir_all(&opts.out).map_err(|e| Error::io(&opts.out, e))?;
    let out = opts.out.as_path();
    let name = opts.name.clone().unwrap_or_else(|| {
        let dir = model.root().canonicalize().ok();
        dir.and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned())).unwrap_or_else(|| "model".into())
    });

    // Prompt embeddings first, while nothing else is held.
    let prompts = prompt_list(&opts.prompts);
    progress(&format!("prompt embeddings: {prompts:?}"));
    let (shape, rows) = prompt_embeddings(model.root(), &prompts)?;
    // The calibration's text: the first prompt's (the pipeline's default unless given).
    let context = rows[0].clone();
    let context_shape = [shape[0], shape[1]];
    let tensors: Vec<(String, Vec<usize>, Vec<f32>)> =
        rows.into_iter().enumerate().map(|(i, v)| (format!("prompt_{i}"), shape.clone(), v)).collect();
    let file = write_f32_safetensors(out, PROMPT_EMBEDDINGS_FILE, &tensors)?;
    let prompt_embeddings = PrecomputedPrompts {
        file,
        dtype: "F32".into(),
        shape,
        prompts: prompts.iter().zip(&tensors).map(|(text, t)| PromptEntry { text: text.clone(), tensor: t.0.clone() }).collect(),
    };

    let mut manifest = Manifest {
        format: FORMAT.into(),
        format_version: FORMAT_VERSION,
        model: name,
        parts: Default::default(),
        omitted: Vec::new(),
        tokenizer: Vec::new(),
        scheduler: None,
        model_index: None,
        prompt_embeddings: Some(prompt_embeddings),
        variants: BTreeMap::new(),
    };
    for &(part, _) in PARTS {
        if part == "text_encoder" && !opts.text_encoder {
            manifest.omitted.extend(["text_encoder".to_string(), "tokenizer".to_string()]);
            continue;
        }
        progress(&format!("{part}:"));
        let converted = convert_part(model.root(), part, out, opts.shard_bytes, progress)?;
        manifest.parts.insert(part.to_string(), converted);
    }
    for scheme in &schemes {
        let mut parts = BTreeMap::new();
        let mut psnr = BTreeMap::new();
        for part in LOADED_PARTS {
            let started = std::time::Instant::now();
            let recipe = calibrate(model.root(), part, scheme, &context, context_shape, progress)?;
            progress(&format!("{} {part} recipe ({:.0} s, {} runs): {recipe}", scheme.name, started.elapsed().as_secs_f64(), recipe.runs));
            let (shards, _) = write_shards(
                model.root(),
                part,
                out,
                opts.shard_bytes,
                &scheme.name,
                &|n| recipe.choice.get(n).copied().flatten(),
                progress,
            )?;
            parts.insert(part.to_string(), VariantPart { total_bytes: shards.iter().map(|s| s.file.size).sum(), shards });
            psnr.extend(recipe.psnr);
        }
        let measured = Some(Measured { target_psnr: scheme.target_psnr, psnr });
        manifest.variants.insert(scheme.name.clone(), Variant { parts, measured });
        manifest.format_version = FORMAT_VERSION_VARIANTS;
    }
    if opts.text_encoder {
        manifest.tokenizer = copy_dir_files(model.root(), "tokenizer", out)?;
    }
    for (rel, slot) in [("scheduler/scheduler_config.json", &mut manifest.scheduler), ("model_index.json", &mut manifest.model_index)] {
        if model.path(rel).is_file() {
            *slot = Some(copy_file(&model.path(rel), out, rel)?);
        }
    }
    write_manifest(out, &manifest)?;
    progress(&format!("{}: {:.1} MB in all", out.join(MANIFEST_FILE).display(), manifest.total_bytes() as f64 / 1e6));
    for v in manifest.variant_names() {
        let bytes: u64 = manifest.load_weights(v).iter().map(|f| f.size).sum();
        progress(&format!("  {v}: {:.1} MB to download for the default prompt", bytes as f64 / 1e6));
    }
    Ok(manifest)
}

/// Copies every file of `model/sub` (sorted by name) to `out/sub`.
fn copy_dir_files(model: &Path, sub: &str, out: &Path) -> Result<Vec<FileRef>> {
    let dir = model.join(sub);
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .map_err(|e| Error::io(&dir, e))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    Ok(names.iter().map(|n| copy_file(&dir.join(n), out, &format!("{sub}/{n}"))).collect::<Result<Vec<_>, _>>()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(dtype: Dtype, n: usize) -> TensorEntry {
        TensorEntry { name: "down.0.w".into(), dtype, shape: vec![n], start: 0, end: (n * dtype.size()) as u64 }
    }

    fn convert(dtype: Dtype, bytes: &[u8]) -> Result<Vec<f16>, WeightsError> {
        let mut out = Vec::new();
        to_f16(&entry(dtype, bytes.len() / dtype.size()), bytes, "x.safetensors", &mut |b| {
            out.extend(b.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]])));
            Ok(())
        })?;
        Ok(out)
    }

    #[test]
    fn rounds_to_nearest_even() {
        let ulp = 2f32.powi(-10); // f16's spacing in [1, 2)
        let values = [1.0 + ulp / 2.0, 1.0 + 1.5 * ulp, 1.0 + 0.51 * ulp, 65519.0, -65519.0, 1e-9, 0.1];
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let got: Vec<f32> = convert(Dtype::F32, &bytes).unwrap().iter().map(|v| v.to_f32()).collect();
        // Ties go to the even neighbour (1.0 and 1 + 2 ulp); 65519 is still below the midpoint
        // to infinity; 1e-9 is below half the smallest subnormal.
        assert_eq!(got[..6], [1.0, 1.0 + 2.0 * ulp, 1.0 + ulp, 65504.0, -65504.0, 0.0]);
        assert_eq!(got[6], f16::from_f32(0.1).to_f32());

        let bf: Vec<u8> = [bf16::from_f32(3.5), bf16::from_f32(-0.25)].iter().flat_map(|v| v.to_le_bytes()).collect();
        let got: Vec<f32> = convert(Dtype::BF16, &bf).unwrap().iter().map(|v| v.to_f32()).collect();
        assert_eq!(got, [3.5, -0.25]);
    }

    #[test]
    fn out_of_range_is_an_error_naming_the_tensor() {
        for (dtype, bytes) in [
            (Dtype::F32, 65520f32.to_le_bytes().to_vec()),
            (Dtype::F32, f32::NAN.to_le_bytes().to_vec()),
            (Dtype::BF16, bf16::from_f32(1e6).to_le_bytes().to_vec()),
            (Dtype::F64, (-1e5f64).to_le_bytes().to_vec()),
            (Dtype::F16, f16::INFINITY.to_le_bytes().to_vec()),
        ] {
            let err = convert(dtype, &bytes).unwrap_err().to_string();
            assert!(err.contains("`down.0.w`") && err.contains("x.safetensors") && err.contains("f16"), "{dtype:?}: {err}");
        }
    }

    #[test]
    fn long_tensors_convert_chunk_by_chunk() {
        let n = CHUNK * 2 + 3;
        let bytes: Vec<u8> = (0..n).flat_map(|i| ((i % 1000) as f32).to_le_bytes()).collect();
        let mut pieces = 0;
        let mut count = 0;
        to_f16(&entry(Dtype::F32, n), &bytes, "x", &mut |b| {
            pieces += 1;
            count += b.len() / 2;
            Ok(())
        })
        .unwrap();
        assert_eq!((pieces, count), (3, n));
    }

    #[test]
    fn headers_are_aligned_and_parse() {
        let h = header_bytes(&[("a", Dtype::F16, &[3]), ("b", Dtype::F32, &[2, 2])]);
        assert_eq!(h.len() % 8, 0);
        let mut file = h.clone();
        file.extend(vec![0u8; 6 + 16]);
        let st = SafetensorsBytes::new(file, "t").unwrap();
        let names: Vec<_> = st.tensors().map(|(t, b)| (t.name.clone(), b.len())).collect();
        assert_eq!(names, [("a".to_string(), 6), ("b".to_string(), 16)]);
    }
}
