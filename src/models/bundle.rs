//! Making and verifying an fp16 weight bundle (`weights/README.md`): the steps that need the
//! models — prompt embeddings computed by our CLIP text encoder, and every tensor's shape
//! checked by building each part through its normal loader. The file-level work (streaming
//! shards, sha256, loading a part) is `crate::weights::bundle`.

use std::path::{Path, PathBuf};

use burn::tensor::{DType, Device};

use crate::models::clip::{ClipTextConfig, ClipTextModel};
use crate::models::read_config;
use crate::models::tokenizer::ClipTokenizer;
use crate::models::unet::{UNet2DConditionModel, UNetConfig};
use crate::models::vae::{AutoencoderKL, Decoder, VaeConfig};
use crate::nn::conv2d;
use crate::weights::bundle::{
    check_files, convert_part, copy_file, load_bundle_part, read_manifest, write_f32_safetensors, write_manifest, PartSpec,
    DEFAULT_SHARD_BYTES,
};
use crate::weights::manifest::{Manifest, PrecomputedPrompts, PromptEntry, FORMAT, FORMAT_VERSION, MANIFEST_FILE, PARTS};
use crate::weights::{load_dir_part, LoadOptions, WeightsError};
use crate::{Error, Result};

/// The file of precomputed prompt embeddings, relative to the bundle's root.
pub const PROMPT_EMBEDDINGS_FILE: &str = "prompt_embeddings.safetensors";
/// VAE keys that only the encoder uses (left out with `vae_encoder: false`).
pub const VAE_ENCODER_PREFIXES: &[&str] = &["encoder.", "quant_conv."];

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
    /// Prompts whose embeddings are precomputed; the unconditional "" is always added.
    pub prompts: Vec<String>,
    /// Carry the text encoder and tokenizer (needed for prompts not precomputed).
    pub text_encoder: bool,
    /// Carry the VAE encoder (needed to encode images; a decode-only use can leave it out).
    pub vae_encoder: bool,
}

impl ConvertOptions {
    pub fn new(model: impl Into<PathBuf>, out: impl Into<PathBuf>) -> Self {
        Self {
            model: model.into(),
            out: out.into(),
            name: None,
            shard_bytes: DEFAULT_SHARD_BYTES,
            prompts: vec!["face".into()],
            text_encoder: true,
            vae_encoder: true,
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

/// `last_hidden_state` of each prompt (`[positions, hidden]`, f32, on the CPU) by the text
/// encoder of the diffusers checkpoint in `model`, loaded in f32 and dropped afterwards.
pub fn prompt_embeddings(model: &Path, prompts: &[String]) -> Result<(Vec<usize>, Vec<Vec<f32>>)> {
    let device = crate::device::device(crate::device::Backend::Cpu)?;
    let tokenizer = ClipTokenizer::from_dir(&model.join("tokenizer"))?;
    let cfg: ClipTextConfig = read_config(&model.join("text_encoder/config.json"))?;
    let store = load_dir_part(model, "text_encoder", "model", &device, &LoadOptions::default())?;
    let encoder = ClipTextModel::from_store(store, &cfg)?;
    let out = encoder.forward(tokenizer.encode_batch(prompts, &device));
    let [n, positions, hidden] = out.dims();
    let values = out
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| Error::Device(format!("reading the prompt embeddings back: {e:?}")))?;
    let rows = values.chunks(positions * hidden).map(<[f32]>::to_vec).collect::<Vec<_>>();
    debug_assert_eq!(rows.len(), n);
    Ok((vec![positions, hidden], rows))
}

/// Converts a diffusers checkpoint into an fp16 bundle (see [`ConvertOptions`]); returns the
/// manifest written. `progress` is told about each step.
pub fn convert(opts: &ConvertOptions, progress: &mut dyn FnMut(&str)) -> Result<Manifest> {
    let model = &opts.model;
    if !model.is_dir() {
        return Err(Error::io(model, std::io::Error::new(std::io::ErrorKind::NotFound, "model directory not found")));
    }
    if opts.out.exists() && std::fs::read_dir(&opts.out).map_err(|e| Error::io(&opts.out, e))?.next().is_some() {
        return Err(Error::InvalidOption(format!("output directory {} is not empty; remove it or choose another", opts.out.display())));
    }
    std::fs::create_dir_all(&opts.out).map_err(|e| Error::io(&opts.out, e))?;
    let out = opts.out.as_path();
    let name = opts.name.clone().unwrap_or_else(|| {
        model.canonicalize().ok().and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned())).unwrap_or_else(|| "model".into())
    });

    // Prompt embeddings first, while nothing else is held.
    let prompts = prompt_list(&opts.prompts);
    progress(&format!("prompt embeddings: {prompts:?}"));
    let (shape, rows) = prompt_embeddings(model, &prompts)?;
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
    };
    for &(part, stem) in PARTS {
        let omit: &[&str] = match part {
            "text_encoder" if !opts.text_encoder => {
                manifest.omitted.extend(["text_encoder".to_string(), "tokenizer".to_string()]);
                continue;
            }
            "vae" if !opts.vae_encoder => {
                manifest.omitted.push("vae.encoder".into());
                VAE_ENCODER_PREFIXES
            }
            _ => &[],
        };
        progress(&format!("{part}:"));
        let converted = convert_part(model, &PartSpec { part, stem, omit }, out, opts.shard_bytes, progress)?;
        manifest.parts.insert(part.to_string(), converted);
    }
    if opts.text_encoder {
        manifest.tokenizer = copy_dir_files(model, "tokenizer", out)?;
    }
    let scheduler = model.join("scheduler/scheduler_config.json");
    if scheduler.is_file() {
        manifest.scheduler = Some(copy_file(&scheduler, out, "scheduler/scheduler_config.json")?);
    }
    if model.join("model_index.json").is_file() {
        manifest.model_index = Some(copy_file(&model.join("model_index.json"), out, "model_index.json")?);
    }
    write_manifest(out, &manifest)?;
    progress(&format!("{}: {:.1} MB in all", out.join(MANIFEST_FILE).display(), manifest.total_bytes() as f64 / 1e6));
    Ok(manifest)
}

/// Copies every file of `model/sub` (sorted by name) to `out/sub`.
fn copy_dir_files(model: &Path, sub: &str, out: &Path) -> Result<Vec<crate::weights::manifest::FileRef>> {
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

/// Re-checks the bundle in `dir`: every file's size and sha256, every shard's header against
/// the manifest, then every tensor's shape against the configs by building each part through
/// its normal loader (on the CPU, in f16), and the prompt embeddings' shape against the UNet's
/// `cross_attention_dim` and the text encoder. Every problem found is reported, naming its file
/// or tensor.
pub fn verify(dir: &Path) -> Result<VerifyReport> {
    let manifest = read_manifest(dir)?;
    let mut problems: Vec<String> = check_files(dir, &manifest).iter().map(ToString::to_string).collect();
    let mut report = VerifyReport { files: manifest.files().len(), bytes: manifest.total_bytes(), parts: Vec::new(), notes: Vec::new() };
    if problems.is_empty() {
        let device = crate::device::device(crate::device::Backend::Cpu)?;
        let opts = LoadOptions { dtype: DType::F16, ..Default::default() };
        for name in manifest.parts.keys() {
            match check_part(dir, &manifest, name, &device, &opts) {
                Ok(Some(n)) => report.parts.push((name.clone(), n)),
                Ok(None) => report
                    .notes
                    .push(format!("{name}: sizes and sha256 checked; shapes not checked: this build has no {name} model loader")),
                Err(e) => problems.push(format!("{name}: {e}")),
            }
        }
        if let Err(e) = check_prompt_shape(dir, &manifest) {
            problems.push(e.to_string());
        }
    }
    if problems.is_empty() {
        Ok(report)
    } else {
        Err(WeightsError::Bundle {
            file: dir.display().to_string(),
            reason: format!("{} problem(s):\n  {}", problems.len(), problems.join("\n  ")),
        }
        .into())
    }
}

/// Builds one part from the bundle through its loader; `None` for a part with no loader here.
fn check_part(dir: &Path, manifest: &Manifest, name: &str, device: &Device, opts: &LoadOptions) -> Result<Option<usize>> {
    let part = manifest.part(name)?;
    let config = dir.join(&part.config.url);
    match name {
        "unet" => {
            let cfg: UNetConfig = read_config(&config)?;
            cfg.validate().map_err(|e| Error::config(config.display(), e))?;
            let vb = load_bundle_part(dir, name, device, opts)?.into_builder();
            UNet2DConditionModel::load(&vb, &cfg)?;
            vb.finish()?;
        }
        "text_encoder" => {
            let cfg: ClipTextConfig = read_config(&config)?;
            ClipTextModel::from_store(load_bundle_part(dir, name, device, opts)?, &cfg)?;
        }
        "vae" => {
            let cfg: VaeConfig = read_config(&config)?;
            cfg.validate().map_err(|e| Error::config(config.display(), e))?;
            let vb = load_bundle_part(dir, name, device, opts)?.into_builder();
            if part.omits("encoder.") {
                // A decode-only bundle: what `AutoencoderKL::decode` uses.
                Decoder::load(&vb.pp("decoder"), &cfg)?;
                if cfg.use_post_quant_conv {
                    let lc = cfg.latent_channels;
                    conv2d(&vb.pp("post_quant_conv"), lc, lc, 1, 1, 0)?;
                }
            } else {
                AutoencoderKL::load(&vb, &cfg)?;
            }
            vb.finish()?;
        }
        _ => return Ok(None),
    }
    Ok(Some(part.tensor_count()))
}

/// The precomputed embeddings must fit the UNet's cross-attention and the text encoder.
fn check_prompt_shape(dir: &Path, manifest: &Manifest) -> Result<()> {
    let Some(pe) = &manifest.prompt_embeddings else { return Ok(()) };
    let file = dir.join(&pe.file.url).display().to_string();
    let bad = |reason: String| Err(WeightsError::Bundle { file: file.clone(), reason }.into());
    if pe.shape.len() != 2 {
        return bad(format!("shape {:?} is not [positions, hidden]", pe.shape));
    }
    if let Ok(unet) = manifest.part("unet") {
        let cfg: UNetConfig = read_config(&dir.join(&unet.config.url))?;
        if cfg.cross_attention_dim != pe.shape[1] {
            return bad(format!("embeddings are {} wide, the UNet's cross_attention_dim is {}", pe.shape[1], cfg.cross_attention_dim));
        }
    }
    if let Ok(text) = manifest.part("text_encoder") {
        let cfg: ClipTextConfig = read_config(&dir.join(&text.config.url))?;
        if [cfg.max_position_embeddings, cfg.hidden_size] != pe.shape[..] {
            return bad(format!("shape {:?}, the text encoder gives [{}, {}]", pe.shape, cfg.max_position_embeddings, cfg.hidden_size));
        }
    }
    if pe.prompts.iter().all(|p| !p.text.is_empty()) {
        return bad("no embedding of the empty prompt (classifier-free guidance needs it)".into());
    }
    Ok(())
}
