//! The fp16 weight bundle on disk (native): writing a part's shards by streaming a diffusers
//! checkpoint tensor by tensor, checking every file of a bundle against its manifest, and
//! loading a part of a bundle into a [`VarStore`]. The model-aware steps (prompt embeddings,
//! shapes against the model loaders) are in `crate::models::bundle`.
//!
//! Memory: the source files are memory-mapped and each tensor's pages are dropped once it is
//! written; a shard is written as it is produced, through a buffer of [`CHUNK`] elements.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use burn::tensor::Device;
use half::{bf16, f16};
use sha2::{Digest, Sha256};

use super::manifest::{FileRef, Manifest, Part, Shard, MANIFEST_FILE};
use super::safetensors::{Dtype, SafetensorsBytes, TensorEntry};
use super::store::{map_file, part_files, release_pages};
use super::{LoadOptions, VarStore, WeightsError};

/// Elements converted per step: bounds the converter's working memory (4 MB of f32).
pub const CHUNK: usize = 1 << 20;
/// The default shard cap, 256 MiB: well under what a fetch, a Cache API entry or a GPU
/// buffer comfortably takes.
pub const DEFAULT_SHARD_BYTES: u64 = 256 << 20;

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
/// spaces so that the data starts 8-byte aligned (as the Python writer does). Written here, not
/// by the `safetensors` crate, because the converter streams: the crate's writers take every
/// tensor's bytes at once (`TensorView`s), the converter writes the header, then each tensor as
/// it is rounded to f16, and so holds 0.5 GB for a 3.4 GB UNet. (The parser's round-trip tests
/// read what this writes.)
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

/// Which source tensors a part carries: every float tensor not under an omitted prefix.
pub struct PartSpec<'a> {
    pub part: &'a str,
    /// The weight files' stem (`diffusion_pytorch_model`, `model`).
    pub stem: &'a str,
    /// Key prefixes to leave out (`encoder.` for a decode-only VAE).
    pub omit: &'a [&'a str],
}

/// Converts one part of the diffusers checkpoint in `model` into f16 shards of at most
/// `shard_bytes` (a tensor larger than that gets a shard of its own) under `out/<part>/`, and
/// copies its `config.json`. `progress` is told about each shard written.
pub fn convert_part(
    model: &Path,
    spec: &PartSpec,
    out: &Path,
    shard_bytes: u64,
    progress: &mut dyn FnMut(&str),
) -> Result<Part, WeightsError> {
    let files = part_files(model, spec.part, spec.stem)?;
    let maps = files.iter().map(|p| map_file(p)).collect::<Result<Vec<_>, _>>()?;
    let sources = files.iter().zip(&maps).map(|(p, m)| SafetensorsBytes::new(m, p.display().to_string())).collect::<Result<Vec<_>, _>>()?;

    // Plan: the carried tensors in source order, packed greedily into shards.
    let mut seen = std::collections::HashMap::new();
    let mut carried: Vec<(usize, &TensorEntry)> = Vec::new();
    let mut skipped = Vec::new();
    for (i, st) in sources.iter().enumerate() {
        for t in &st.header().tensors {
            if let Some(first) = seen.insert(t.name.clone(), i) {
                return Err(WeightsError::Duplicate {
                    key: t.name.clone(),
                    first: sources[first].name().to_string(),
                    second: st.name().to_string(),
                });
            }
            if spec.omit.iter().any(|p| t.name.starts_with(p)) {
                continue;
            }
            if t.dtype.is_float() {
                carried.push((i, t));
            } else {
                skipped.push(t.name.clone());
            }
        }
    }
    if carried.is_empty() {
        return Err(bundle_err(model.join(spec.part).display(), "no float tensors to convert"));
    }
    // A tensor's bytes in a shard: its f16 data plus a bound on its header entry
    // (`"name":{"dtype":"F16","shape":[..],"data_offsets":[a,b]},`), so that whole files stay
    // within the cap.
    let cost = |t: &TensorEntry| t.shape.iter().product::<usize>() as u64 * 2 + (t.name.len() + 21 * t.shape.len() + 96) as u64;
    const HEADER_BASE: u64 = 64; // length prefix, braces, `__metadata__`, alignment
    let mut plan: Vec<Vec<(usize, &TensorEntry)>> = vec![Vec::new()];
    let mut size = HEADER_BASE;
    for (i, t) in carried {
        let current = plan.last_mut().unwrap();
        if !current.is_empty() && size + cost(t) > shard_bytes {
            plan.push(Vec::new());
            size = HEADER_BASE;
        }
        plan.last_mut().unwrap().push((i, t));
        size += cost(t);
    }

    let part_dir = out.join(spec.part);
    std::fs::create_dir_all(&part_dir).map_err(io(&part_dir))?;
    let mut shards = Vec::with_capacity(plan.len());
    for (n, tensors) in plan.iter().enumerate() {
        let url = format!("{}/fp16-{:05}-of-{:05}.safetensors", spec.part, n + 1, plan.len());
        let path = out.join(&url);
        let file = File::create(&path).map_err(io(&path))?;
        let mut w = HashWriter::new(BufWriter::with_capacity(1 << 20, file));
        let layout: Vec<(&str, Dtype, &[usize])> = tensors.iter().map(|(_, t)| (t.name.as_str(), Dtype::F16, t.shape.as_slice())).collect();
        w.write_all(&header_bytes(&layout)).map_err(io(&path))?;
        for (i, t) in tensors {
            let st = &sources[*i];
            let bytes = &maps[*i][st.header().data_start as usize + t.start as usize..][..(t.end - t.start) as usize];
            to_f16(t, bytes, st.name(), &mut |b| w.write_all(b).map_err(io(&path)))?;
            release_pages(&maps[*i], st.header().data_start as usize + t.start as usize, bytes.len());
        }
        let (size, sha256) = w.finish().map_err(io(&path))?;
        progress(&format!("{url}: {} tensors, {:.1} MB", tensors.len(), size as f64 / 1e6));
        shards.push(Shard {
            file: FileRef { url, size, sha256 },
            dtype: Dtype::F16.name().into(),
            tensors: tensors.iter().map(|(_, t)| t.name.clone()).collect(),
        });
    }
    let config = copy_file(&model.join(spec.part).join("config.json"), out, &format!("{}/config.json", spec.part))?;
    Ok(Part {
        config,
        total_bytes: shards.iter().map(|s| s.file.size).sum(),
        shards,
        omitted: spec.omit.iter().map(|p| p.to_string()).collect(),
        skipped,
    })
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

/// Reads and checks `dir/manifest.json`.
pub fn read_manifest(dir: &Path) -> Result<Manifest, WeightsError> {
    let path = dir.join(MANIFEST_FILE);
    let text = std::fs::read_to_string(&path).map_err(io(&path))?;
    Manifest::parse(&text, &path.display().to_string())
}

/// Whether `dir` holds a bundle (a `manifest.json`) rather than a diffusers checkpoint.
pub fn is_bundle(dir: &Path) -> bool {
    dir.join(MANIFEST_FILE).is_file()
}

/// Writes `dir/manifest.json`: the last file written, so that a bundle whose conversion
/// stopped half-way has none.
pub fn write_manifest(dir: &Path, manifest: &Manifest) -> Result<(), WeightsError> {
    let path = dir.join(MANIFEST_FILE);
    std::fs::write(&path, manifest.to_json()).map_err(io(&path))
}

/// A shard opened and checked against its manifest entry: size, header, dtype, tensor list.
fn open_shard(dir: &Path, shard: &Shard) -> Result<(PathBuf, memmap2::Mmap), WeightsError> {
    let path = dir.join(&shard.file.url);
    let found = std::fs::metadata(&path).map_err(io(&path))?.len();
    if found < shard.file.size {
        return Err(WeightsError::Truncated { file: path.display().to_string(), needed: shard.file.size, found });
    }
    if found > shard.file.size {
        return Err(bundle_err(path.display(), format!("{found} bytes, the manifest says {}", shard.file.size)));
    }
    let map = map_file(&path)?;
    Ok((path, map))
}

fn check_shard_header(st: &SafetensorsBytes<&memmap2::Mmap>, shard: &Shard) -> Result<(), WeightsError> {
    shard.check_header(st.header(), st.name())
}

/// The precomputed embedding of `text` (`[positions, hidden]` f32) from the bundle in `dir`,
/// or `None` when the bundle has none for it.
pub fn read_prompt_embedding(dir: &Path, manifest: &Manifest, text: &str) -> Result<Option<Vec<f32>>, WeightsError> {
    let Some(pe) = &manifest.prompt_embeddings else { return Ok(None) };
    if manifest.prompt_tensor(text).is_none() {
        return Ok(None);
    }
    let path = dir.join(&pe.file.url);
    let map = map_file(&path)?;
    let st = SafetensorsBytes::new(&map, path.display().to_string())?;
    pe.values(&st, text)
}

/// Loads one part of the bundle in `dir` into a [`VarStore`] (sizes, headers and tensor lists
/// are checked against the manifest; the sha256 are not: that is [`check_files`]' job).
pub fn load_bundle_part(dir: &Path, part: &str, device: &Device, options: &LoadOptions) -> Result<VarStore, WeightsError> {
    let manifest = read_manifest(dir)?;
    let entry = manifest.part(part)?;
    let mut store = VarStore::new(device, options, format!("{} (bundle part {part})", dir.display()));
    for shard in &entry.shards {
        let (path, map) = open_shard(dir, shard)?;
        let st = SafetensorsBytes::new(&map, path.display().to_string())?;
        check_shard_header(&st, shard)?;
        let base = st.header().data_start as usize;
        for (t, bytes) in st.tensors() {
            store.insert(t, bytes, st.name())?;
            release_pages(&map, base + t.start as usize, bytes.len());
        }
    }
    Ok(store)
}

/// Checks every file of the bundle in `dir` against `manifest`: present, of the stated size,
/// of the stated sha256; shards are valid safetensors of the stated dtype holding exactly the
/// listed tensors; the prompt embeddings hold each listed prompt with the stated shape.
/// Returns every problem found (empty: all good), each naming its file.
pub fn check_files(dir: &Path, manifest: &Manifest) -> Vec<WeightsError> {
    let mut problems = Vec::new();
    for file in manifest.files() {
        let path = dir.join(&file.url);
        match sha256_file(&path) {
            Err(e) => problems.push(e),
            Ok((size, _)) if size != file.size => problems.push(if size < file.size {
                WeightsError::Truncated { file: path.display().to_string(), needed: file.size, found: size }
            } else {
                bundle_err(path.display(), format!("{size} bytes, the manifest says {}", file.size))
            }),
            Ok((_, sha)) if sha != file.sha256 => {
                problems.push(WeightsError::Checksum { file: path.display().to_string(), expected: file.sha256.clone(), found: sha })
            }
            Ok(_) => {}
        }
    }
    if !problems.is_empty() {
        return problems;
    }
    for part in manifest.parts.values() {
        for shard in &part.shards {
            let checked = open_shard(dir, shard).and_then(|(path, map)| {
                let st = SafetensorsBytes::new(&map, path.display().to_string())?;
                check_shard_header(&st, shard)
            });
            problems.extend(checked.err());
        }
    }
    if let Some(pe) = &manifest.prompt_embeddings {
        let path = dir.join(&pe.file.url);
        let checked = map_file(&path).and_then(|map| {
            let st = SafetensorsBytes::new(&map, path.display().to_string())?;
            for p in &pe.prompts {
                let (t, _) = st
                    .get(&p.tensor)
                    .ok_or_else(|| bundle_err(path.display(), format!("no tensor `{}` (prompt {:?})", p.tensor, p.text)))?;
                if t.dtype.name() != pe.dtype || t.shape != pe.shape {
                    return Err(bundle_err(
                        path.display(),
                        format!("tensor `{}` is {} {:?}, the manifest says {} {:?}", p.tensor, t.dtype.name(), t.shape, pe.dtype, pe.shape),
                    ));
                }
            }
            Ok(())
        });
        problems.extend(checked.err());
    }
    problems
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
