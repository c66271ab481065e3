//! `zepo weights verify`: re-checks a bundle on disk before it is published. Every file against
//! the manifest (size, sha256; shards' headers; the prompt embeddings' tensors), then every
//! part through the one load path (`zepo::load::Loader`: the shapes its models ask for), then the
//! prompt embeddings' shape against the UNet and the text encoder. Every problem is reported,
//! naming its file or tensor.

use std::path::Path;

use burn::tensor::DType;

use super::convert::{read_manifest, sha256_file};
use crate::models::clip::ClipTextConfig;
use crate::weights::bundle::{check_size, Manifest, WeightsChoice, FP16};
use crate::weights::dir::map_file;
use crate::weights::{LoadOptions, SafetensorsBytes, WeightsError};
use crate::zepo::load::{block_on, Loader, WeightSource};
use crate::{Error, Result};

/// What [`verify`] checked.
#[derive(Debug, Clone)]
pub struct VerifyReport {
    pub files: usize,
    pub bytes: u64,
    /// Per part: tensors whose shapes the model loader accepted.
    pub parts: Vec<(String, usize)>,
    /// Checks that this build cannot make (said, not skipped silently).
    pub notes: Vec<String>,
}

fn bundle_err(file: impl std::fmt::Display, reason: impl Into<String>) -> WeightsError {
    WeightsError::Bundle { file: file.to_string(), reason: reason.into() }
}

/// Re-checks the bundle in `dir` (see the module's comment); parts are built on the CPU in f16.
pub fn verify(dir: &Path) -> Result<VerifyReport> {
    let manifest = read_manifest(dir)?;
    let mut problems: Vec<String> = check_files(dir, &manifest).iter().map(ToString::to_string).collect();
    let mut report = VerifyReport { files: manifest.files().len(), bytes: manifest.total_bytes(), parts: Vec::new(), notes: Vec::new() };
    if problems.is_empty() {
        let device = crate::device::device(crate::device::Backend::Cpu)?;
        // Every variant's weights, each through the loader as a load of it would take them.
        for variant in manifest.variant_names() {
            let options = LoadOptions { dtype: DType::F16, weights: WeightsChoice::Named(variant.to_string()), ..Default::default() };
            let loader = Loader::dir(dir, &device, &options, WeightSource::Checkpoint)?;
            for (name, part) in &manifest.parts {
                let replaced = manifest.variants.get(variant).is_some_and(|v| v.parts.contains_key(name));
                if variant != FP16 && !replaced {
                    continue;
                }
                let shown = if variant == FP16 { name.clone() } else { format!("{name} ({variant})") };
                let built = block_on(async { loader.build_part(name, loader.store(name).await?).await });
                match built {
                    Ok(true) => report.parts.push((shown, part.tensor_count())),
                    Ok(false) => report
                        .notes
                        .push(format!("{shown}: sizes and sha256 checked; shapes not checked: this build has no {name} model loader")),
                    Err(e) => problems.push(format!("{shown}: {e}")),
                }
            }
        }
        let loader = Loader::dir(dir, &device, &LoadOptions { dtype: DType::F16, ..Default::default() }, WeightSource::Checkpoint)?;
        if let Err(e) = check_prompt_shape(&loader, &manifest) {
            problems.push(e.to_string());
        }
    }
    if problems.is_empty() {
        Ok(report)
    } else {
        let reason = format!("{} problem(s):\n  {}", problems.len(), problems.join("\n  "));
        Err(bundle_err(dir.display(), reason).into())
    }
}

/// The precomputed embeddings fit the UNet's cross-attention (the loader checks that as it reads
/// them) and the text encoder, and hold the empty prompt.
fn check_prompt_shape(loader: &Loader<crate::weights::dir::DirSource>, manifest: &Manifest) -> Result<()> {
    let Some(pe) = &manifest.prompt_embeddings else { return Ok(()) };
    let file = loader.source.path(&pe.file.url).display().to_string();
    if manifest.parts.contains_key("unet") {
        let unet: crate::models::unet::UNetConfig = block_on(loader.config("unet"))?;
        block_on(loader.precomputed_prompts(unet.cross_attention_dim))?;
    }
    if manifest.parts.contains_key("text_encoder") {
        let cfg: ClipTextConfig = block_on(loader.config("text_encoder"))?;
        if [cfg.max_position_embeddings, cfg.hidden_size] != pe.shape[..] {
            let reason = format!("shape {:?}, the text encoder gives [{}, {}]", pe.shape, cfg.max_position_embeddings, cfg.hidden_size);
            return Err(bundle_err(file, reason).into());
        }
    }
    if pe.prompts.iter().all(|p| !p.text.is_empty()) {
        return Err(bundle_err(file, "no embedding of the empty prompt (classifier-free guidance needs it)").into());
    }
    Ok(())
}

/// Checks every file of the bundle in `dir` against `manifest`: present, of the stated size,
/// of the stated sha256; shards are valid safetensors of the stated dtype holding exactly the
/// listed tensors; the prompt embeddings hold each listed prompt with the stated shape.
/// Returns every problem found (empty: all good), each naming its file.
pub fn check_files(dir: &Path, manifest: &Manifest) -> Vec<Error> {
    let mut problems: Vec<Error> = Vec::new();
    for file in manifest.files() {
        let path = dir.join(&file.url);
        let shown = path.display().to_string();
        let checked = sha256_file(&path).and_then(|(size, sha)| {
            check_size(&shown, size, file.size)?;
            if sha != file.sha256 {
                return Err(WeightsError::Checksum { file: shown.clone(), expected: file.sha256.clone(), found: sha });
            }
            Ok(())
        });
        problems.extend(checked.err().map(Error::from));
    }
    if !problems.is_empty() {
        return problems;
    }
    let parse = |url: &str, check: &dyn Fn(&SafetensorsBytes<&memmap2::Mmap>) -> Result<(), WeightsError>| {
        let path = dir.join(url);
        let map = map_file(&path)?;
        check(&SafetensorsBytes::new(&map, path.display().to_string())?)
    };
    for shard in manifest.shards() {
        problems.extend(parse(&shard.file.url, &|st| shard.check_header(st.header(), st.name())).err().map(Error::from));
    }
    if let Some(pe) = &manifest.prompt_embeddings {
        let checked = parse(&pe.file.url, &|st| {
            for p in &pe.prompts {
                pe.values(st, &p.text)?;
            }
            Ok(())
        });
        problems.extend(checked.err().map(Error::from));
    }
    problems
}
