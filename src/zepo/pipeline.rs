//! The ZePo pipeline: content portrait + style image → stylized portrait, as the authors'
//! code computes it, without its waste:
//! - the style and content branches run once (their latents, timestep and text are fixed),
//!   their controlled layers' k/v are kept and reused at every step (4 + 2·N UNet image
//!   evaluations instead of 6·N; a style's features serve any number of contents);
//! - the content is VAE-encoded once (two posterior samples of one encoding) and only the
//!   result is decoded.

use std::cell::Cell;

use burn::tensor::{Device, Int, Tensor, TensorData};

#[cfg(feature = "reference-oracle")]
use super::control::ReferenceControl;
use super::control::{ControlSpec, FeatureRecorder, ImageFeatures, StyleInjector};
use super::image::{FloatImage, RgbImage};
use super::noise::NoiseSource;
use super::options::{Fit, Size, ZepoOptions};
use super::progress::{Observer, Progress, Stage};
use super::scheduler::LcmScheduler;
use crate::models::clip::ClipTextModel;
use crate::models::tokenizer::ClipTokenizer;
use crate::models::unet::{guidance_scale_embedding, UNet2DConditionModel, UNetContext};
use crate::models::vae::AutoencoderKL;
use crate::{Error, Result};

/// The prompt's text embeddings `[1, 77, D]`, cond and uncond.
#[derive(Clone, Debug)]
pub struct PromptEmbeddings {
    pub cond: Tensor<3>,
    pub uncond: Tensor<3>,
}

/// The text stack, loaded only when a prompt must be encoded.
pub struct TextStack {
    pub tokenizer: ClipTokenizer,
    pub encoder: ClipTextModel,
}

/// Work done, counted for tests and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// UNet image-evaluations (batch items through the UNet).
    pub unet_evals: usize,
    pub vae_encodes: usize,
    pub vae_decodes: usize,
}

/// A style image's consistency features, reusable for any number of content images run with
/// the same options (resolution, prompt, layers, token merging, feature step, seed).
#[derive(Clone, Debug)]
pub struct StyleFeatures {
    pub features: ImageFeatures,
    /// The options they were computed with (checked on reuse).
    key: FeatureKey,
}

/// Everything a style's features depend on besides the image: the options that shape the
/// style branch, and the seed (its noise and token-merge draws). Native reuse checks it; the
/// browser engine's style cache keys on it with the image's bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct FeatureKey {
    size: Size,
    /// The style is centre-cropped (any fit but stretch) rather than resized whole.
    style_cropped: bool,
    feature_step: usize,
    layers: (usize, usize),
    tome: Option<super::options::TomeOptions>,
    mix_q: bool,
    prompt: String,
    negative_prompt: String,
    no_cfg: bool,
    seed: u64,
}

impl FeatureKey {
    /// The key of a style run at `size` (see [`ZepoOptions::size_for`]) with `o`.
    pub fn of(o: &ZepoOptions, size: Size) -> Self {
        Self {
            size,
            style_cropped: o.fit != Fit::Stretch,
            feature_step: o.feature_step,
            layers: (o.start_layer, o.end_layer),
            tome: o.tome.clone(),
            mix_q: o.mix_q < 1.0,
            prompt: o.prompt.clone(),
            negative_prompt: o.negative_prompt.clone(),
            no_cfg: o.no_cfg,
            seed: o.seed,
        }
    }
}

impl std::hash::Hash for FeatureKey {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        // Debug covers every field (the token-merge ratio is a float, which has no Hash).
        format!("{self:?}").hash(h)
    }
}

/// The style of a run: an image, or features computed before.
pub enum Style<'a> {
    Image(&'a RgbImage),
    Features(&'a StyleFeatures),
}

/// Intermediate values kept for parity checks.
#[derive(Debug, Default)]
pub struct Trace {
    /// Per step: the guided ε of the target.
    pub eps: Vec<Vec<f32>>,
    /// Per step: the LCM denoised latent.
    pub denoised: Vec<Vec<f32>>,
    /// `(step, layer, half 'u'|'c', [heads, N, d] values)`: each controlled attention output.
    pub attention: Vec<(usize, usize, char, Vec<f32>)>,
}

/// The result of a stylization.
pub struct Stylized {
    pub image: FloatImage,
    /// The content's features (so a caller may reuse them) and the style's.
    pub style: StyleFeatures,
}

/// The loaded models and the scheduler, on one device.
pub struct Zepo {
    pub unet: UNet2DConditionModel,
    pub vae: AutoencoderKL,
    pub text: Option<TextStack>,
    pub scheduler: LcmScheduler,
    pub device: Device,
    counters: Cell<Counters>,
}

impl Zepo {
    pub fn new(unet: UNet2DConditionModel, vae: AutoencoderKL, text: Option<TextStack>, scheduler: LcmScheduler, device: Device) -> Self {
        Self { unet, vae, text, scheduler, device, counters: Cell::new(Counters::default()) }
    }

    /// Work done since the last [`Zepo::reset_counters`].
    pub fn counters(&self) -> Counters {
        self.counters.get()
    }

    pub fn reset_counters(&self) {
        self.counters.set(Counters::default());
    }

    fn count(&self, f: impl FnOnce(&mut Counters)) {
        let mut c = self.counters.get();
        f(&mut c);
        self.counters.set(c);
    }

    /// Text embeddings of a prompt pair, with the text encoder.
    pub fn embed_prompts(&self, prompt: &str, negative: &str) -> Result<PromptEmbeddings> {
        let text = self.text.as_ref().ok_or_else(|| {
            Error::InvalidOption(
                "this model was loaded without its text encoder; use the precomputed prompt or load the text encoder".into(),
            )
        })?;
        let embed = |p: &str| {
            let ids = text.tokenizer.encode(p);
            let n = ids.len();
            let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [1, n]), &self.device);
            text.encoder.forward(ids)
        };
        Ok(PromptEmbeddings { cond: embed(prompt), uncond: embed(negative) })
    }

    fn unet(
        &self,
        sample: Tensor<4>,
        t: &[f32],
        context: &UNetContext,
        cond: Option<Tensor<2>>,
        ctrl: &mut dyn crate::models::attention::AttentionController,
    ) -> Tensor<4> {
        self.count(|c| c.unet_evals += t.len());
        self.unet.forward_controlled(sample, t, context, cond, ctrl)
    }

    /// The UNet's context for the CFG halves `[uncond, cond]` (just `[cond]` without CFG), each
    /// repeated `rows` times: its cross-attention keys and values, computed once per run.
    fn context(&self, p: &PromptEmbeddings, no_cfg: bool, rows: usize) -> UNetContext {
        self.unet.context(&self.context_rows(p, no_cfg, rows))
    }

    fn context_rows(&self, p: &PromptEmbeddings, no_cfg: bool, rows: usize) -> Tensor<3> {
        let half = |t: &Tensor<3>| {
            let [_, n, d] = t.dims();
            t.clone().expand([rows, n, d])
        };
        if no_cfg {
            half(&p.cond)
        } else {
            Tensor::cat(vec![half(&p.uncond), half(&p.cond)], 0)
        }
    }

    fn guidance_cond(&self, o: &ZepoOptions, rows: usize) -> Option<Tensor<2>> {
        let dim = self.unet.time_embedding.cond_proj.as_ref().map(|p| p.d_in())?;
        o.no_cfg.then(|| guidance_scale_embedding(&vec![o.cfg - 1.0; rows], dim, &self.device))
    }

    fn control_spec(&self, o: &ZepoOptions) -> ControlSpec {
        ControlSpec {
            layers: o.start_layer..o.end_layer,
            tome: o.tome.clone(),
            tome_seed: o.seed,
            style_guidance: o.style_guidance,
            mix_q: o.mix_q,
        }
    }

    /// Validates options against this model (layer count, schedule length, no-CFG support).
    pub fn check_options(&self, o: &ZepoOptions) -> Result<()> {
        o.validate(self.unet.num_self_attentions, self.scheduler.config.num_train_timesteps)?;
        if o.no_cfg && self.unet.time_embedding.cond_proj.is_none() {
            return Err(Error::InvalidOption("no-CFG mode needs a UNet with time_cond_proj_dim (an LCM checkpoint)".into()));
        }
        Ok(())
    }

    /// An image at the working size, as a `[1, 3, H, W]` tensor: resized whole (the
    /// reference), or centre-cropped to the size's shape first (`fit` cover; a style with any
    /// fit but stretch, which keeps its texture unstretched whatever the content's shape).
    fn image_tensor(&self, img: &RgbImage, size: Size, fit: Fit, role: Role) -> Tensor<4> {
        let placed = match (fit, role) {
            (Fit::Stretch, _) | (Fit::Contain, Role::Content) => img.resize(size),
            (Fit::Cover, _) | (Fit::Contain, Role::Style) => img.cover(size),
        };
        placed.to_tensor(&self.device)
    }

    /// Encodes an image and draws `samples` posterior samples, each followed by its noise draw:
    /// the reference's `prepare_latents` (posterior noise, then the noise added at `t`).
    #[allow(clippy::too_many_arguments)]
    fn latents(
        &self,
        img: &RgbImage,
        role: Role,
        o: &ZepoOptions,
        size: Size,
        labels: &[(&str, i64)],
        noise: &mut dyn NoiseSource,
    ) -> Result<Vec<Tensor<4>>> {
        self.count(|c| c.vae_encodes += 1);
        let post = self.vae.encode(self.image_tensor(img, size, o.fit, role));
        let shape = post.mean.dims();
        let sf = self.vae.scaling_factor as f32;
        let mut out = Vec::new();
        for (label, t) in labels {
            let z = post.sample(noise.draw(&format!("{label}_vae_posterior"), shape, &self.device)?).mul_scalar(sf);
            let n = noise.draw(&format!("{label}_prepare_latents_noise"), shape, &self.device)?;
            out.push(self.scheduler.add_noise(z, n, *t)?);
        }
        Ok(out)
    }

    /// Runs one image's branch at the feature step and records its consistency features.
    fn record_features(&self, noisy: &Tensor<4>, o: &ZepoOptions, context: &UNetContext) -> ImageFeatures {
        let spec = self.control_spec(o);
        let mut rec = FeatureRecorder::new(&spec);
        let halves = if o.no_cfg { 1 } else { 2 };
        let [_, c, h, w] = noisy.dims();
        let sample = noisy.clone().expand([halves, c, h, w]);
        let t = vec![o.feature_step as f32; halves];
        let _ = self.unet(sample, &t, context, self.guidance_cond(o, halves), &mut rec);
        rec.features
    }

    /// A style's consistency features at working size `size` ([`ZepoOptions::size_for`] the
    /// contents), to reuse across contents of that size. Draws the style's two noise tensors
    /// from `noise`.
    pub fn style_features(
        &self,
        style: &RgbImage,
        o: &ZepoOptions,
        size: Size,
        prompts: &PromptEmbeddings,
        noise: &mut dyn NoiseSource,
    ) -> Result<StyleFeatures> {
        self.check_options(o)?;
        let noisy = self.latents(style, Role::Style, o, size, &[("style", o.feature_step as i64)], noise)?.remove(0);
        let context = self.context(prompts, o.no_cfg, 1);
        Ok(StyleFeatures { features: self.record_features(&noisy, o, &context), key: FeatureKey::of(o, size) })
    }

    /// Starts a stylization of `content` after `style`, to be driven step by step with
    /// [`StylizeRun::advance`] (the browser awaits the GPU between steps; [`Zepo::stylize`]
    /// loops). Noise is drawn in the reference's order.
    pub fn start<'a>(
        &'a self,
        content: &'a RgbImage,
        style: Style<'a>,
        o: &ZepoOptions,
        prompts: &'a PromptEmbeddings,
        noise: &'a mut dyn NoiseSource,
    ) -> Result<StylizeRun<'a>> {
        self.check_options(o)?;
        let size = o.size_for(content.width, content.height);
        if let Style::Features(f) = &style {
            if f.key != FeatureKey::of(o, size) {
                return Err(Error::InvalidOption(
                    "style features were computed with other options (size, fit, prompt, layers, token merging, feature step or seed)"
                        .into(),
                ));
            }
        }
        let mut scheduler = self.scheduler.clone();
        let timesteps = scheduler.zepo_timesteps(o.steps, o.strength)?;
        Ok(StylizeRun {
            zepo: self,
            scheduler,
            o: o.clone(),
            size,
            context: self.context(prompts, o.no_cfg, 1),
            noise,
            content,
            style_in: style,
            timesteps,
            phase: Phase::EncodeContent,
            posterior: None,
            content_noisy: None,
            style: None,
            content_features: None,
            x: None,
            denoised: None,
            decoded: None,
            trace: None,
        })
    }

    /// Stylizes `content` after `style` in one go, reporting to `obs` and stopping with
    /// [`Error::Cancelled`] when it asks.
    #[allow(clippy::too_many_arguments)]
    pub fn stylize(
        &self,
        content: &RgbImage,
        style: Style<'_>,
        o: &ZepoOptions,
        prompts: &PromptEmbeddings,
        noise: &mut dyn NoiseSource,
        obs: &mut dyn Observer,
        trace: Option<&mut Trace>,
    ) -> Result<Stylized> {
        let mut run = self.start(content, style, o, prompts, noise)?;
        let mut local = Trace::default();
        if trace.is_some() {
            run.trace = Some(&mut local);
        }
        loop {
            obs.progress(run.progress());
            if obs.cancelled() {
                return Err(Error::Cancelled);
            }
            if !run.advance()? {
                break;
            }
        }
        obs.progress(run.progress());
        let (decoded, style) = run.finish()?;
        if let Some(t) = trace {
            *t = local;
        }
        let [_, _, h, w] = decoded.dims();
        Ok(Stylized { image: FloatImage::from_decoded(&read(decoded)?, h, w), style })
    }

    /// The reference's uncached path: a 6-row batch `[style, content, target] × [uncond, cond]`
    /// through the UNet at every step, the content encoded twice. Same draws, same output as
    /// [`Zepo::stylize`]: kept to prove the cache changes nothing. A test oracle (feature
    /// `reference-oracle`, on for the tests only).
    #[cfg(feature = "reference-oracle")]
    pub fn stylize_uncached(
        &self,
        content: &RgbImage,
        style: &RgbImage,
        o: &ZepoOptions,
        prompts: &PromptEmbeddings,
        noise: &mut dyn NoiseSource,
    ) -> Result<FloatImage> {
        self.check_options(o)?;
        if o.no_cfg {
            return Err(Error::InvalidOption("the uncached reference path has no no-CFG mode".into()));
        }
        let mut scheduler = self.scheduler.clone();
        let timesteps = scheduler.zepo_timesteps(o.steps, o.strength)?;
        let fs = o.feature_step as i64;
        let size = o.size_for(content.width, content.height);
        let c_lat = self.latents(content, Role::Content, o, size, &[("content", fs)], noise)?.remove(0);
        let s_lat = self.latents(style, Role::Style, o, size, &[("style", fs)], noise)?.remove(0);
        let mut x = self.latents(content, Role::Content, o, size, &[("mutual", timesteps[0])], noise)?.remove(0);
        let shape = x.dims();
        let spec = self.control_spec(o);
        let context = self.context(prompts, false, 3);
        let mut denoised = x.clone();
        for (i, &t) in timesteps.iter().enumerate() {
            let rows = vec![s_lat.clone(), c_lat.clone(), x.clone()];
            let sample = Tensor::cat([rows.clone(), rows].concat(), 0);
            let ts = [fs as f32, fs as f32, t as f32, fs as f32, fs as f32, t as f32];
            let out = self.unet(sample, &ts, &context, None, &mut ReferenceControl { spec: &spec });
            let out_u = out.clone().slice([2..3]);
            let out_c = out.slice([5..6]);
            let eps = out_c.clone() + (out_u - out_c).mul_scalar(o.cfg);
            noise.draw(&format!("step{i}_randn_like_unused"), shape, &self.device)?;
            let step_noise =
                if scheduler.needs_noise(t)? { Some(noise.draw(&format!("step{i}_lcm_step_noise"), shape, &self.device)?) } else { None };
            let (prev, den) = scheduler.step(eps, t, x, step_noise)?;
            x = prev;
            denoised = den;
        }
        self.count(|c| c.vae_decodes += 1);
        let decoded = self.vae.decode(denoised.div_scalar(self.vae.scaling_factor as f32));
        let [_, _, hh, ww] = decoded.dims();
        Ok(FloatImage::from_decoded(&read(decoded)?, hh, ww))
    }
}

/// Which image of a run: they are placed differently with `fit` contain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Content,
    Style,
}

/// Where a [`StylizeRun`] stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    EncodeContent,
    Style,
    ContentFeatures,
    Step(usize),
    Decode,
    Done,
}

/// A stylization in progress: each [`StylizeRun::advance`] does one model call (an encode, a
/// feature pass, one LCM step, the decode), so that a caller can report progress, yield to
/// an event loop and cancel between them.
pub struct StylizeRun<'a> {
    zepo: &'a Zepo,
    o: ZepoOptions,
    /// The working size (the content's shape with `fit` cover or contain).
    size: Size,
    /// The text context of every UNet call of the run.
    context: UNetContext,
    noise: &'a mut dyn NoiseSource,
    content: &'a RgbImage,
    style_in: Style<'a>,
    /// This run's scheduler, set to its schedule.
    scheduler: LcmScheduler,
    /// Timesteps actually run.
    timesteps: Vec<i64>,
    phase: Phase,
    posterior: Option<crate::models::vae::Posterior>,
    content_noisy: Option<Tensor<4>>,
    style: Option<StyleFeatures>,
    content_features: Option<ImageFeatures>,
    x: Option<Tensor<4>>,
    denoised: Option<Tensor<4>>,
    decoded: Option<Tensor<4>>,
    trace: Option<&'a mut Trace>,
}

impl StylizeRun<'_> {
    fn halves(&self) -> usize {
        if self.o.no_cfg {
            1
        } else {
            2
        }
    }

    /// The progress before the next [`StylizeRun::advance`].
    pub fn progress(&self) -> Progress {
        let n = self.timesteps.len();
        let h = self.halves() as f32;
        // Units of work, roughly UNet-evaluation sized: 2 encodes, 2 feature passes, N steps, decode.
        let total = 2.0 + 2.0 * h + n as f32 * h + 1.0;
        let (stage, step, steps, done) = match self.phase {
            Phase::EncodeContent => (Stage::Encode, 0, 2, 0.0),
            Phase::Style => (Stage::Encode, 1, 2, 1.0),
            Phase::ContentFeatures => (Stage::Features, 1, 2, 2.0 + h),
            Phase::Step(i) => (Stage::Denoise, i, n, 2.0 + 2.0 * h + i as f32 * h),
            Phase::Decode => (Stage::Decode, 0, 1, total - 1.0),
            Phase::Done => (Stage::Decode, 1, 1, total),
        };
        Progress { stage, step, steps, fraction: done / total }
    }

    /// Does the next unit of work; `Ok(false)` once the result is ready.
    pub fn advance(&mut self) -> Result<bool> {
        let z = self.zepo;
        let device = &z.device;
        let o = &self.o;
        match self.phase {
            Phase::EncodeContent => {
                // One encoding serves both content samples (the reference encodes twice).
                z.count(|c| c.vae_encodes += 1);
                let post = z.vae.encode(z.image_tensor(self.content, self.size, o.fit, Role::Content));
                let shape = post.mean.dims();
                let sf = z.vae.scaling_factor as f32;
                let clean = post.sample(self.noise.draw("content_vae_posterior", shape, device)?).mul_scalar(sf);
                let n = self.noise.draw("content_prepare_latents_noise", shape, device)?;
                self.content_noisy = Some(self.scheduler.add_noise(clean, n, o.feature_step as i64)?);
                self.posterior = Some(post);
                self.phase = Phase::Style;
            }
            Phase::Style => {
                self.style = Some(match &self.style_in {
                    Style::Image(img) => {
                        let noisy = z.latents(img, Role::Style, o, self.size, &[("style", o.feature_step as i64)], self.noise)?.remove(0);
                        StyleFeatures { features: z.record_features(&noisy, o, &self.context), key: FeatureKey::of(o, self.size) }
                    }
                    Style::Features(f) => (*f).clone(),
                });
                self.phase = Phase::ContentFeatures;
            }
            Phase::ContentFeatures => {
                let noisy = self.content_noisy.take().expect("encoded");
                self.content_features = Some(z.record_features(&noisy, o, &self.context));
                let post = self.posterior.as_ref().expect("encoded");
                let shape = post.mean.dims();
                let sf = z.vae.scaling_factor as f32;
                let clean = post.sample(self.noise.draw("mutual_vae_posterior", shape, device)?).mul_scalar(sf);
                let n = self.noise.draw("mutual_prepare_latents_noise", shape, device)?;
                self.x = Some(self.scheduler.add_noise(clean, n, self.timesteps[0])?);
                self.phase = Phase::Step(0);
            }
            Phase::Step(i) => {
                let t = self.timesteps[i];
                let halves = self.halves();
                let x = self.x.take().expect("prepared");
                let shape = x.dims();
                let [_, c, h, w] = shape;
                let spec = z.control_spec(o);
                let style = self.style.as_ref().expect("style features");
                let content = self.content_features.as_ref().expect("content features");
                let mut inject =
                    StyleInjector { spec: &spec, content, style: &style.features, recorded: self.trace.is_some().then(Vec::new) };
                let out = z.unet(
                    x.clone().expand([halves, c, h, w]),
                    &vec![t as f32; halves],
                    &self.context,
                    z.guidance_cond(o, halves),
                    &mut inject,
                );
                let eps = if o.no_cfg {
                    out
                } else {
                    // The reference's quirk: ε = out_c + g·(out_u − out_c).
                    let out_u = out.clone().slice([0..1]);
                    let out_c = out.slice([1..2]);
                    out_c.clone() + (out_u - out_c).mul_scalar(o.cfg)
                };
                // The reference draws (and ignores) one tensor here; keep the order for replay.
                self.noise.draw(&format!("step{i}_randn_like_unused"), shape, device)?;
                let step_noise = if self.scheduler.needs_noise(t)? {
                    Some(self.noise.draw(&format!("step{i}_lcm_step_noise"), shape, device)?)
                } else {
                    None
                };
                let (prev, den) = self.scheduler.step(eps.clone(), t, x, step_noise)?;
                if let Some(tr) = self.trace.as_deref_mut() {
                    for (layer, out) in inject.recorded.take().unwrap_or_default() {
                        let halves_names: &[char] = if halves == 1 { &['c'] } else { &['u', 'c'] };
                        for (k, &half) in halves_names.iter().enumerate() {
                            tr.attention.push((i, layer, half, read(out.clone().slice([k..k + 1]))?));
                        }
                    }
                    tr.eps.push(read(eps)?);
                    tr.denoised.push(read(den.clone())?);
                }
                self.x = Some(prev);
                self.denoised = Some(den);
                self.phase = if i + 1 < self.timesteps.len() { Phase::Step(i + 1) } else { Phase::Decode };
            }
            Phase::Decode => {
                z.count(|c| c.vae_decodes += 1);
                let den = self.denoised.take().expect("denoised");
                self.decoded = Some(z.vae.decode(den.div_scalar(z.vae.scaling_factor as f32)));
                self.phase = Phase::Done;
            }
            Phase::Done => return Ok(false),
        }
        Ok(self.phase != Phase::Done)
    }

    /// The decoded result `[1, 3, H, W]` (in [-1, 1], before clamping) and the style's
    /// features for reuse. Read it with `into_data` natively, `into_data_async` in a browser.
    pub fn finish(mut self) -> Result<(Tensor<4>, StyleFeatures)> {
        let decoded = self.decoded.take().ok_or_else(|| Error::InvalidOption("the run has not finished".into()))?;
        Ok((decoded, self.style.take().expect("style features")))
    }
}

/// Reads a tensor back to the host (natively; the browser uses the async variant).
fn read<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>> {
    t.try_into_data()
        .map_err(|e| Error::Device(format!("{e:?}")))?
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| Error::Device(format!("{e:?}")))
}
