//! Loading a model: the one path from a [`ModelSource`] (a directory natively, the browser's
//! downloads in the engine) through its [`Layout`] (fp16 bundle or diffusers checkpoint) to the
//! scheduler, the UNet, the VAE, the text stack and the precomputed prompts. Each part: its
//! config parsed (errors name the file), its weights streamed into a store, the model built by
//! its constructor (which validates the config), every weight used (`VarBuilder::finish`).

use std::collections::HashMap;

use burn::tensor::{Device, Tensor, TensorData};

use super::pipeline::TextStack;
use super::scheduler::LcmScheduler;
use crate::models::clip::{ClipTextConfig, ClipTextModel};
use crate::models::parse_config;
use crate::models::tokenizer::ClipTokenizer;
use crate::models::unet::{UNet2DConditionModel, UNetConfig};
use crate::models::vae::{AutoencoderKL, VaeConfig};
use crate::weights::{Layout, LoadOptions, ModelSource, VarBuilder, VarStore, WeightsError};
use crate::Result;

/// Which weights to use: the model's, or random weights for its configs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightSource {
    Checkpoint,
    /// Deterministic random weights from this seed (benchmarks on full-size configs).
    Random(u64),
}

/// A model's source and layout, and how its weights become device tensors.
pub struct Loader<S> {
    pub source: S,
    pub layout: Layout,
    pub device: Device,
    pub options: LoadOptions,
    pub weights: WeightSource,
    /// Device bytes of the weights of the parts built so far (see [`Loader::weight_bytes`]).
    held: std::sync::atomic::AtomicUsize,
}

impl<S: ModelSource> Loader<S> {
    /// Tells the source's layout ([`Layout::detect`]: a bundle's files are declared to it).
    pub async fn open(source: S, device: &Device, options: LoadOptions, weights: WeightSource) -> Result<Self> {
        let layout = Layout::detect(&source, &options.weights).await?;
        Ok(Self { source, layout, device: device.clone(), options, weights, held: Default::default() })
    }

    /// Device bytes holding the weights of the parts this loader has built (UNet, VAE, text
    /// encoder): floats in the compute dtype, compact weights as the GPU keeps them.
    pub fn weight_bytes(&self) -> usize {
        self.held.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A text file that must be there (the source's error names it otherwise).
    async fn text(&self, path: &str) -> Result<String> {
        Ok(self.source.text(path, false).await?.unwrap_or_default())
    }

    /// A part's config, parsed; errors name the file.
    pub async fn config<C: serde::de::DeserializeOwned>(&self, part: &str) -> Result<C> {
        let path = self.layout.config_path(part)?;
        parse_config(&self.text(&path).await?, &self.source.name(&path))
    }

    /// A part's weights, in one store.
    pub async fn store(&self, part: &str) -> Result<VarStore> {
        match self.weights {
            WeightSource::Checkpoint => self.layout.load_part(&self.source, part, &self.device, &self.options).await,
            WeightSource::Random(seed) => Ok(VarStore::random(&self.device, &self.options, seed)),
        }
    }

    pub async fn scheduler(&self) -> Result<LcmScheduler> {
        let path = self.layout.scheduler_path()?;
        LcmScheduler::from_json(&self.text(&path).await?, &self.source.name(&path))
    }

    /// The UNet, with its config.
    pub async fn unet(&self) -> Result<(UNet2DConditionModel, UNetConfig)> {
        self.unet_from(None).await
    }

    pub async fn vae(&self) -> Result<AutoencoderKL> {
        Ok(self.vae_from(None).await?.0)
    }

    /// The UNet built from `store` (weights already in memory: the converter's calibration).
    pub async fn unet_from_store(&self, store: VarStore) -> Result<(UNet2DConditionModel, UNetConfig)> {
        self.unet_from(Some(store)).await
    }

    /// The VAE built from `store`.
    pub async fn vae_from_store(&self, store: VarStore) -> Result<(AutoencoderKL, VaeConfig)> {
        self.vae_from(Some(store)).await
    }

    async fn unet_from(&self, store: Option<VarStore>) -> Result<(UNet2DConditionModel, UNetConfig)> {
        self.part("unet", store, UNetConfig::validate, |store, cfg| build(store, |vb| UNet2DConditionModel::load(vb, cfg))).await
    }

    async fn vae_from(&self, store: Option<VarStore>) -> Result<(AutoencoderKL, VaeConfig)> {
        let (vae, cfg) = self.part("vae", store, VaeConfig::validate, |store, cfg| build(store, |vb| AutoencoderKL::load(vb, cfg))).await?;
        // The default limit is a GPU buffer's.
        let vae = if crate::nn::on_cpu(&self.device) { vae.with_options(crate::models::vae::VaeOptions::cpu()) } else { vae };
        Ok((vae, cfg))
    }

    async fn text_encoder_from(&self, store: Option<VarStore>) -> Result<(ClipTextModel, ClipTextConfig)> {
        self.part("text_encoder", store, ClipTextConfig::validate, ClipTextModel::from_store).await
    }

    /// One part: its config parsed and validated (before its weights are streamed: a config
    /// this port cannot run costs no download), then the model built from `store`, or from the
    /// part's weights. The constructor validates too: no model is ever built from a bad config.
    async fn part<C: serde::de::DeserializeOwned, M>(
        &self,
        part: &str,
        store: Option<VarStore>,
        validate: fn(&C) -> Result<()>,
        make: impl FnOnce(VarStore, &C) -> Result<M>,
    ) -> Result<(M, C)> {
        let cfg: C = self.config(part).await?;
        validate(&cfg)?;
        let store = match store {
            Some(s) => s,
            None => self.store(part).await?,
        };
        self.held.fetch_add(store.held_bytes(), std::sync::atomic::Ordering::Relaxed);
        Ok((make(store, &cfg)?, cfg))
    }

    /// Builds `part`'s model from `store` and drops it: what the verifier checks a bundle's
    /// shapes with, and what records a part's keys and shapes from a store of zeros (random
    /// checkpoints). `Ok(false)`: this build has no model for that part.
    pub async fn build_part(&self, part: &str, store: VarStore) -> Result<bool> {
        match part {
            "unet" => drop(self.unet_from(Some(store)).await?),
            "vae" => drop(self.vae_from(Some(store)).await?),
            "text_encoder" => drop(self.text_encoder_from(Some(store)).await?),
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// The tokenizer and the text encoder.
    pub async fn text_stack(&self) -> Result<TextStack> {
        // A bundle made without the text encoder says so first, rather than "no tokenizer".
        self.layout.config_path("text_encoder")?;
        let vocab = self.tokenizer_file("vocab.json", true).await?.unwrap_or_default();
        let merges = self.tokenizer_file("merges.txt", true).await?.unwrap_or_default();
        let config = self.tokenizer_file("tokenizer_config.json", false).await?;
        let map = self.tokenizer_file("special_tokens_map.json", false).await?;
        let tokenizer = ClipTokenizer::from_strings(&vocab, &merges, config.as_deref(), map.as_deref())?;
        let (encoder, _) = self.text_encoder_from(None).await?;
        Ok(TextStack { tokenizer, encoder })
    }

    /// A tokenizer file; a `required` one missing is an error naming it.
    async fn tokenizer_file(&self, file: &str, required: bool) -> Result<Option<String>> {
        match self.layout.tokenizer_path(file) {
            Some(path) => self.source.text(&path, !required).await,
            None if required => {
                let reason = format!("lists no tokenizer/{file}");
                Err(WeightsError::Bundle { file: self.source.name(crate::weights::bundle::MANIFEST_FILE), reason }.into())
            }
            None => Ok(None),
        }
    }

    /// The bundle's precomputed prompt embeddings as `[1, positions, hidden]` tensors in the
    /// load's dtype, by prompt text (none for a diffusers layout).
    pub async fn precomputed_prompts(&self, cross_attention_dim: usize) -> Result<HashMap<String, Tensor<3>>> {
        let values = self.layout.precomputed_prompts(&self.source, cross_attention_dim).await?;
        let [l, d] = values.shape;
        let on = (&self.device, self.options.dtype);
        Ok(values.prompts.into_iter().map(|(text, v)| (text, Tensor::<3>::from_data(TensorData::new(v, [1, l, d]), on))).collect())
    }
}

/// Builds a model from a store: every weight must be used.
fn build<M>(store: VarStore, load: impl FnOnce(&VarBuilder) -> Result<M>) -> Result<M> {
    let vb = store.into_builder();
    let model = load(&vb)?;
    vb.finish()?;
    Ok(model)
}

/// The native entry points: a model directory, loaded synchronously.
#[cfg(not(target_arch = "wasm32"))]
mod native {
    use std::path::Path;

    use burn::tensor::Device;

    use super::{Loader, WeightSource};
    use crate::models::unet::{UNet2DConditionModel, UNetConfig};
    use crate::models::vae::AutoencoderKL;
    use crate::weights::dir::DirSource;
    use crate::weights::{LoadOptions, VarStore};
    use crate::zepo::pipeline::{PromptEmbeddings, TextStack, Zepo};
    use crate::zepo::scheduler::LcmScheduler;
    use crate::Result;

    /// Runs a load step to completion: a directory's reads never wait.
    pub fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
        futures_lite::future::block_on(f)
    }

    impl Loader<DirSource> {
        /// The model in the directory `dir`.
        pub fn dir(dir: &Path, device: &Device, options: &LoadOptions, weights: WeightSource) -> Result<Self> {
            block_on(Loader::open(DirSource::new(dir)?, device, options.clone(), weights))
        }
    }

    /// One part's weights from `dir` (tests, tools).
    pub fn load_part(dir: &Path, part: &str, device: &Device, opts: &LoadOptions) -> Result<VarStore> {
        block_on(Loader::dir(dir, device, opts, WeightSource::Checkpoint)?.store(part))
    }

    /// The UNet of `dir`.
    pub fn load_unet(dir: &Path, device: &Device, opts: &LoadOptions, src: WeightSource) -> Result<UNet2DConditionModel> {
        Ok(block_on(Loader::dir(dir, device, opts, src)?.unet())?.0)
    }

    /// The VAE of `dir`.
    pub fn load_vae(dir: &Path, device: &Device, opts: &LoadOptions, src: WeightSource) -> Result<AutoencoderKL> {
        block_on(Loader::dir(dir, device, opts, src)?.vae())
    }

    /// The tokenizer and text encoder of `dir`.
    pub fn load_text(dir: &Path, device: &Device, opts: &LoadOptions, src: WeightSource) -> Result<TextStack> {
        block_on(Loader::dir(dir, device, opts, src)?.text_stack())
    }

    /// The scheduler of `dir`.
    pub fn load_scheduler(dir: &Path) -> Result<LcmScheduler> {
        block_on(Loader::dir(dir, &Device::default(), &LoadOptions::default(), WeightSource::Checkpoint)?.scheduler())
    }

    /// Every part of the model in `dir`, the text encoder included.
    pub fn load_dir(dir: &Path, device: &Device, opts: &LoadOptions, src: WeightSource) -> Result<Zepo> {
        let loader = Loader::dir(dir, device, opts, src)?;
        block_on(async {
            let text = loader.text_stack().await?;
            let (unet, _) = loader.unet().await?;
            let vae = loader.vae().await?;
            Ok(Zepo::new(unet, vae, Some(text), loader.scheduler().await?, device.clone()))
        })
    }

    /// The prompt pair's embeddings for a model loaded from `dir`: each prompt a bundle has
    /// precomputed (made from the source's f32 weights) is taken from there, as the browser
    /// does; any other through the text encoder.
    pub fn embed_prompts(dir: &Path, model: &Zepo, prompt: &str, negative: &str) -> Result<PromptEmbeddings> {
        let loader = Loader::dir(dir, &model.device, &LoadOptions::default(), WeightSource::Checkpoint)?;
        let unet: UNetConfig = block_on(loader.config("unet"))?;
        let pre = block_on(loader.precomputed_prompts(unet.cross_attention_dim))?;
        let (cond, uncond) = (pre.get(prompt).cloned(), pre.get(negative).cloned());
        if let (Some(cond), Some(uncond)) = (&cond, &uncond) {
            return Ok(PromptEmbeddings { cond: cond.clone(), uncond: uncond.clone() });
        }
        let encoded = model.embed_prompts(prompt, negative)?;
        Ok(PromptEmbeddings { cond: cond.unwrap_or(encoded.cond), uncond: uncond.unwrap_or(encoded.uncond) })
    }
}

#[cfg(not(target_arch = "wasm32"))]
pub use native::{block_on, embed_prompts, load_dir, load_part, load_scheduler, load_text, load_unet, load_vae};
