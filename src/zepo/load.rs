//! Loading a whole model directory (natively) into a [`Zepo`] pipeline: a diffusers
//! checkpoint (`unet/diffusion_pytorch_model.safetensors` …) or an fp16 bundle (`manifest.json`).

use std::path::Path;

use burn::tensor::{Device, Tensor, TensorData};

use super::pipeline::{PromptEmbeddings, TextStack, Zepo};
use super::scheduler::{LcmScheduler, LcmSchedulerConfig};
use crate::models::clip::{ClipTextConfig, ClipTextModel};
use crate::models::read_config;
use crate::models::tokenizer::ClipTokenizer;
use crate::models::unet::{UNet2DConditionModel, UNetConfig};
use crate::models::vae::{AutoencoderKL, VaeConfig};
use crate::weights::{load_dir_part, LoadOptions, VarStore};
use crate::{Error, Result};

/// Which weights to use: a checkpoint directory, or random weights for the configs in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightSource {
    Checkpoint,
    /// Deterministic random weights from this seed (benchmarks on full-size configs).
    Random(u64),
}

/// A part's tensors: from a diffusers directory, an fp16 bundle (`manifest.json`), or random.
fn store(dir: &Path, part: &str, stem: &str, device: &Device, opts: &LoadOptions, src: WeightSource) -> Result<VarStore> {
    Ok(match src {
        WeightSource::Checkpoint if crate::weights::bundle::is_bundle(dir) => {
            crate::weights::bundle::load_bundle_part(dir, part, device, opts)?
        }
        WeightSource::Checkpoint => load_dir_part(dir, part, stem, device, opts)?,
        WeightSource::Random(seed) => VarStore::random(device, opts, seed),
    })
}

/// The UNet of `dir/unet`.
pub fn load_unet(dir: &Path, device: &Device, opts: &LoadOptions, src: WeightSource) -> Result<UNet2DConditionModel> {
    let cfg: UNetConfig = read_config(&dir.join("unet/config.json"))?;
    cfg.validate().map_err(|e| Error::config(dir.join("unet/config.json").display(), e))?;
    let vb = store(dir, "unet", "diffusion_pytorch_model", device, opts, src)?.into_builder();
    let unet = UNet2DConditionModel::load(&vb, &cfg)?;
    vb.finish()?;
    Ok(unet)
}

/// The VAE of `dir/vae`.
pub fn load_vae(dir: &Path, device: &Device, opts: &LoadOptions, src: WeightSource) -> Result<AutoencoderKL> {
    let cfg: VaeConfig = read_config(&dir.join("vae/config.json"))?;
    let vb = store(dir, "vae", "diffusion_pytorch_model", device, opts, src)?.into_builder();
    let vae = AutoencoderKL::load(&vb, &cfg)?;
    vb.finish()?;
    Ok(vae)
}

/// The tokenizer and text encoder of `dir/tokenizer`, `dir/text_encoder`.
pub fn load_text(dir: &Path, device: &Device, opts: &LoadOptions, src: WeightSource) -> Result<TextStack> {
    let tokenizer = ClipTokenizer::from_dir(&dir.join("tokenizer"))?;
    let cfg: ClipTextConfig = read_config(&dir.join("text_encoder/config.json"))?;
    let encoder = ClipTextModel::from_store(store(dir, "text_encoder", "model", device, opts, src)?, &cfg)?;
    Ok(TextStack { tokenizer, encoder })
}

/// The scheduler of `dir/scheduler`.
pub fn load_scheduler(dir: &Path) -> Result<LcmScheduler> {
    let cfg: LcmSchedulerConfig = read_config(&dir.join("scheduler/scheduler_config.json"))?;
    LcmScheduler::new(cfg)
}

/// Every part of a diffusers directory (`model_index.json` layout).
pub fn load_dir(dir: &Path, device: &Device, opts: &LoadOptions, src: WeightSource) -> Result<Zepo> {
    if !dir.is_dir() {
        return Err(Error::io(dir, std::io::Error::new(std::io::ErrorKind::NotFound, "model directory not found")));
    }
    let text = load_text(dir, device, opts, src)?;
    let unet = load_unet(dir, device, opts, src)?;
    let vae = load_vae(dir, device, opts, src)?;
    Ok(Zepo::new(unet, vae, Some(text), load_scheduler(dir)?, device.clone()))
}

/// The prompt pair's embeddings for a model loaded from `dir`: each prompt a bundle has
/// precomputed (`prompt_embeddings.safetensors`, made from the source's f32 weights) is taken
/// from there, as the browser does; any other through the text encoder.
pub fn embed_prompts(dir: &Path, model: &Zepo, prompt: &str, negative: &str) -> Result<PromptEmbeddings> {
    let manifest = crate::weights::bundle::is_bundle(dir).then(|| crate::weights::bundle::read_manifest(dir)).transpose()?;
    let precomputed = |text: &str| -> Result<Option<Tensor<3>>> {
        let (Some(m), Some(pe)) = (&manifest, manifest.as_ref().and_then(|m| m.prompt_embeddings.as_ref())) else { return Ok(None) };
        let values = crate::weights::bundle::read_prompt_embedding(dir, m, text)?;
        Ok(values.map(|v| Tensor::<3>::from_data(TensorData::new(v, [1, pe.shape[0], pe.shape[1]]), &model.device)))
    };
    let (cond, uncond) = (precomputed(prompt)?, precomputed(negative)?);
    if let (Some(cond), Some(uncond)) = (&cond, &uncond) {
        return Ok(PromptEmbeddings { cond: cond.clone(), uncond: uncond.clone() });
    }
    let encoded = model.embed_prompts(prompt, negative)?;
    Ok(PromptEmbeddings { cond: cond.unwrap_or(encoded.cond), uncond: uncond.unwrap_or(encoded.uncond) })
}
