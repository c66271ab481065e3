//! The `Engine` class: one WebGPU device, one loaded model, stylizations driven step by step.

use std::cell::RefCell;
use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::rc::Rc;

use burn::tensor::{Tensor, TensorData};
use js_sys::{Float32Array, Function, Object, Promise, Reflect, Uint8Array};
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::future_to_promise;

use super::files::ModelFiles;
use super::gpu::{self, Gpu, Precision};
use super::prompts::prompt_embeddings;
use super::{crate_err, err, named_err};
use crate::models::unet::UNetConfig;
use crate::models::vae::VaeOptions;
use crate::weights::bundle::WeightsChoice;
use crate::weights::LoadOptions;
use crate::zepo::image::{FloatImage, RgbImage};
use crate::zepo::load::{Loader, WeightSource};
use crate::zepo::noise::SeededNoise;
use crate::zepo::pipeline::{FeatureKey, PromptEmbeddings, Style, StyleFeatures, TextStack, Zepo};
use crate::zepo::progress::Progress;
use crate::zepo::{Size, ZepoOptions};

/// WebGPU's buffers may not reach the binding limit; what the crate plans for stays this far below
/// it (allocation alignment, a backend's own padded copies).
const BINDING_MARGIN: u64 = 8 << 20;

/// The last style's features, for the next content in the same style.
struct CachedStyle {
    key: u64,
    features: Rc<StyleFeatures>,
}

pub(super) struct Model {
    pub(super) zepo: Zepo,
    pub(super) unet_config: UNetConfig,
    /// The model's files and layout (the text encoder is loaded from them on demand).
    pub(super) loader: Loader<ModelFiles>,
    /// The bundle's precomputed prompt embeddings, by prompt text.
    pub(super) precomputed: HashMap<String, Tensor<3>>,
    /// Tokenizer and text encoder, loaded on the first prompt that needs them.
    pub(super) text: RefCell<Option<Rc<TextStack>>>,
    pub(super) prompts: RefCell<HashMap<(String, String), PromptEmbeddings>>,
    style: RefCell<Option<CachedStyle>>,
}

struct Inner {
    gpu: Rc<Gpu>,
    model: RefCell<Option<Rc<Model>>>,
    /// A stylization or load in progress: the JS side queues calls; a second one is refused.
    busy: RefCell<bool>,
}

/// The engine: create it with `await Engine.create({precision})`.
#[wasm_bindgen]
pub struct Engine {
    inner: Rc<Inner>,
}

fn get(obj: &JsValue, key: &str) -> JsValue {
    Reflect::get(obj, &key.into()).unwrap_or(JsValue::UNDEFINED)
}

fn object(fields: &[(&str, JsValue)]) -> JsValue {
    let obj = Object::new();
    for (k, v) in fields {
        let _ = Reflect::set(&obj, &(*k).into(), v);
    }
    obj.into()
}

/// Marks the engine busy for the lifetime of the guard.
struct Busy(Rc<Inner>);

impl Busy {
    fn take(inner: &Rc<Inner>, what: &str) -> Result<Self, JsValue> {
        if inner.busy.replace(true) {
            return Err(named_err("EngineBusy", format!("{what}: the engine is busy with another call (queue calls; www/zepo.js does)")));
        }
        Ok(Self(inner.clone()))
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        *self.0.busy.borrow_mut() = false;
    }
}

/// Lets the browser run the queued GPU work and the Worker's event loop turn: waits for a tiny
/// read-back, which completes only after everything submitted before it.
pub(super) async fn settle(gpu: &Gpu) -> Result<(), JsValue> {
    gpu.check()?;
    let _ = gpu.device.flush();
    if let Err(e) = Tensor::<1>::zeros([1], &gpu.device).into_data_async().await {
        return Err(gpu.failure("waiting for the GPU", e).await);
    }
    gpu.check()
}

#[wasm_bindgen]
impl Engine {
    /// Acquires the WebGPU device. `opts.precision`: 'auto' (f16 where the adapter has
    /// `shader-f16`, else f32), 'f16' or 'f32'.
    pub async fn create(opts: JsValue) -> Result<Engine, JsValue> {
        let precision = match get(&opts, "precision").as_string() {
            Some(p) => Precision::parse(&p)?,
            None => Precision::Auto,
        };
        let gpu = gpu::acquire(precision).await?;
        Ok(Engine { inner: Rc::new(Inner { gpu, model: RefCell::new(None), busy: RefCell::new(false) }) })
    }

    /// What the device is: `{ backend, adapter, precision, shader_f16, max_buffer_size, ... }`.
    #[wasm_bindgen(getter)]
    pub fn device(&self) -> JsValue {
        let fields: Vec<(&str, JsValue)> = self.inner.gpu.info.iter().map(|(k, v)| (*k, JsValue::from_str(v))).collect();
        object(&fields)
    }

    /// Loads the model from `files` (a `ModelFiles` of `www/weights.js`): the scheduler config,
    /// then the UNet and the VAE, each streamed tensor by tensor onto the GPU. The text encoder
    /// is loaded on demand. `on_stage(name)` is called as each part starts. `weights`: which
    /// of a bundle's weights ('auto', the smallest it has; 'fp16'; a compact variant such as
    /// 'q8' or 'mixed'). Resolves to the model's info (`ModelInfo` in pkg/index.d.ts).
    pub fn load(&self, files: JsValue, on_stage: Option<Function>, weights: Option<String>) -> Promise {
        let inner = self.inner.clone();
        future_to_promise(async move {
            let _busy = Busy::take(&inner, "load")?;
            let files = ModelFiles::from_js(files)?;
            let gpu = inner.gpu.clone();
            gpu.check()?;
            *inner.model.borrow_mut() = None;
            let stage = |name: &str| {
                if let Some(f) = &on_stage {
                    let _ = f.call1(&JsValue::NULL, &name.into());
                }
            };
            let weights = WeightsChoice::parse(weights.as_deref().unwrap_or("auto"));
            let opts = LoadOptions { dtype: gpu.dtype, weights, ..Default::default() };
            let loader = Loader::open(files, &gpu.device, opts, WeightSource::Checkpoint).await.map_err(crate_err)?;

            stage("scheduler");
            let scheduler = loader.scheduler().await.map_err(crate_err)?;

            stage("unet");
            let (unet, unet_config) = loader.unet().await.map_err(crate_err)?;
            settle(&gpu).await?;
            // The weights live in their own buffers; what streaming them needed goes back.
            gpu.device.memory_cleanup();

            stage("vae");
            // Every activation the VAE makes stays below the device's binding limit.
            let max = gpu.max_binding.saturating_sub(BINDING_MARGIN).max(1 << 20) as usize;
            let vae = loader.vae().await.map_err(crate_err)?.with_options(VaeOptions { max_buffer_bytes: max });
            settle(&gpu).await?;
            gpu.device.memory_cleanup();

            // The bundle's precomputed prompts: the default prompt needs no text encoder.
            if loader.layout.manifest().is_some() {
                stage("prompts");
            }
            let precomputed = loader.precomputed_prompts(unet_config.cross_attention_dim).await.map_err(crate_err)?;

            let zepo = Zepo::new(unet, vae, None, scheduler, gpu.device.clone());
            let info = object(&[
                ("self_attentions", (zepo.unet.num_self_attentions as f64).into()),
                ("in_channels", (unet_config.in_channels as f64).into()),
                ("cross_attention_dim", (unet_config.cross_attention_dim as f64).into()),
                ("precision", if gpu.dtype == burn::tensor::DType::F16 { "f16" } else { "f32" }.into()),
                ("layout", if loader.layout.manifest().is_some() { "bundle" } else { "diffusers" }.into()),
                ("weights", loader.layout.variant().into()),
                // What the GPU holds of the UNet's and the VAE's weights.
                ("weight_bytes", (loader.weight_bytes() as f64).into()),
                ("precomputed_prompts", precomputed.keys().map(|k| JsValue::from_str(k)).collect::<js_sys::Array>().into()),
            ]);
            *inner.model.borrow_mut() = Some(Rc::new(Model {
                zepo,
                unet_config,
                loader,
                precomputed,
                text: RefCell::new(None),
                prompts: RefCell::new(HashMap::new()),
                style: RefCell::new(None),
            }));
            Ok(info)
        })
    }

    /// Stylizes the content portrait after the style image (encoded image bytes: PNG, JPEG,
    /// WebP, BMP, GIF). `opts`: the pipeline options (see [`parse_options`]). `on_progress`
    /// gets `{ stage, step, steps, fraction }` before each model call; `is_cancelled()` is asked
    /// between them (then the promise rejects with an `AbortError`). Resolves to PNG bytes.
    /// The style's features are kept: the next call with the same style and options skips them.
    pub fn stylize(
        &self,
        content: Uint8Array,
        style: Uint8Array,
        opts: JsValue,
        on_progress: Option<Function>,
        is_cancelled: Option<Function>,
    ) -> Promise {
        let inner = self.inner.clone();
        future_to_promise(async move {
            let _busy = Busy::take(&inner, "stylize")?;
            let gpu = inner.gpu.clone();
            gpu.check()?;
            let model = inner.model.borrow().clone().ok_or_else(|| err("stylize: no model loaded (call load first)"))?;
            let o = parse_options(&opts)?;
            model.zepo.check_options(&o).map_err(crate_err)?;
            model.zepo.reset_counters();
            let content_bytes = content.to_vec();
            let style_bytes = style.to_vec();
            let content = RgbImage::decode(&content_bytes, "content image").map_err(crate_err)?;
            let report = |stage: &str, step: usize, steps: usize, fraction: f32| {
                if let Some(f) = &on_progress {
                    let p = object(&[
                        ("stage", stage.into()),
                        ("step", (step as f64).into()),
                        ("steps", (steps as f64).into()),
                        ("fraction", (fraction as f64).into()),
                    ]);
                    let _ = f.call1(&JsValue::NULL, &p);
                }
            };
            let check_cancel = cancel_check(&is_cancelled);

            let size = o.size_for(content.width, content.height);
            let key = style_key(&style_bytes, &o, size);
            let cached = model.style.borrow().as_ref().filter(|c| c.key == key).map(|c| c.features.clone());
            let style_img = match cached {
                Some(_) => None,
                None => Some(RgbImage::decode(&style_bytes, "style image").map_err(crate_err)?),
            };

            let prompts = prompt_embeddings(&model, &gpu, &o, &report).await?;
            check_cancel()?;

            let style_arg = match (&cached, &style_img) {
                (Some(f), _) => Style::Features(f),
                (None, Some(img)) => Style::Image(img),
                (None, None) => {
                    unreachable!("a style image is decoded when no features are cached")
                }
            };
            let (decoded, features) = drive(&model, &gpu, &content, style_arg, &o, &prompts, &report, &check_cancel).await?;
            let [_, _, h, w] = decoded.dims();
            let data = match decoded.into_data_async().await {
                Ok(data) => data,
                Err(e) => return Err(gpu.failure("reading the result back", e).await),
            };
            let values = data.convert::<f32>().try_to_vec::<f32>().map_err(|e| named_err("DeviceError", format!("result: {e:?}")))?;
            let png = FloatImage::from_decoded(&values, h, w)
                .to_rgb8()
                .to_png_with_text(&o.png_text(size, &model.loader.source.base()))
                .map_err(crate_err)?;
            if cached.is_none() {
                *model.style.borrow_mut() = Some(CachedStyle { key, features: Rc::new(features) });
            }
            report("done", 1, 1, 1.0);
            Ok(Uint8Array::from(png.as_slice()).into())
        })
    }

    /// Runs one stylization of synthetic images with `opts` (one denoising step) and throws it
    /// away: the GPU pipelines a stylization at this resolution needs are compiled and the
    /// memory pools sized, so that the first real one costs what later ones do. Nothing is
    /// cached. Resolves to the seconds it took.
    pub fn warmup(&self, opts: JsValue, is_cancelled: Option<Function>) -> Promise {
        let inner = self.inner.clone();
        future_to_promise(async move {
            let _busy = Busy::take(&inner, "warmup")?;
            let gpu = inner.gpu.clone();
            gpu.check()?;
            let model = inner.model.borrow().clone().ok_or_else(|| err("warmup: no model loaded (call load first)"))?;
            let mut o = parse_options(&opts)?;
            // The fewest steps that still denoise once: every kernel of a step runs.
            o.steps = (1.0 / o.strength.max(1e-3)).ceil().max(1.0) as usize;
            model.zepo.check_options(&o).map_err(crate_err)?;
            let started = js_sys::Date::now();
            // Images of the working size: explicit, else the resolution's square.
            let Size { width: w, height: h } = o.size_for(o.width.unwrap_or(o.resolution), o.height.unwrap_or(o.resolution));
            let image = |k: usize| RgbImage::new(w, h, (0..w * h * 3).map(|i| ((i * k) % 251) as u8).collect()).map_err(crate_err);
            let (content, style) = (image(3)?, image(7)?);
            let check_cancel = cancel_check(&is_cancelled);
            let prompts = prompt_embeddings(&model, &gpu, &o, &|_: &str, _, _, _| {}).await?;
            let (decoded, _) =
                drive(&model, &gpu, &content, Style::Image(&style), &o, &prompts, &|_: &str, _, _, _| {}, &check_cancel).await?;
            if let Err(e) = decoded.into_data_async().await {
                return Err(gpu.failure("reading the warm-up result back", e).await);
            }
            Ok(JsValue::from_f64((js_sys::Date::now() - started) / 1000.0))
        })
    }

    /// The work of the last `stylize` (whether it finished or not): `{ unet_evals, vae_encodes,
    /// vae_decodes }`, UNet evaluations counted per batch item. A run that reused the style's
    /// features shows fewer than one that computed them.
    pub fn counters(&self) -> JsValue {
        let c = self.inner.model.borrow().as_ref().map(|m| m.zepo.counters()).unwrap_or_default();
        object(&[
            ("unet_evals", (c.unet_evals as f64).into()),
            ("vae_encodes", (c.vae_encodes as f64).into()),
            ("vae_decodes", (c.vae_decodes as f64).into()),
        ])
    }

    /// Whether the next `stylize` with this style and these options reuses cached features.
    /// `content` (its bytes) is needed where the working size follows its shape (`fit`).
    #[wasm_bindgen(js_name = hasStyle)]
    pub fn has_style(&self, style: Uint8Array, opts: JsValue, content: Option<Uint8Array>) -> Result<bool, JsValue> {
        let o = parse_options(&opts)?;
        let size = match content {
            Some(bytes) => {
                let (w, h) = RgbImage::dimensions(&bytes.to_vec(), "content image").map_err(crate_err)?;
                o.size_for(w, h)
            }
            None if o.follows_content() => {
                return Err(named_err(
                    "InvalidOption",
                    format!("hasStyle: with fit `{}` the size follows the portrait's shape: pass the portrait too", o.fit.name()),
                ))
            }
            None => o.size_for(o.resolution, o.resolution),
        };
        let key = style_key(&style.to_vec(), &o, size);
        let model = self.inner.model.borrow().clone();
        Ok(model.is_some_and(|m| m.style.borrow().as_ref().is_some_and(|c| c.key == key)))
    }

    /// Runs the loaded UNet alone (parity checks of the browser's kernels): `sample`
    /// `[B, C, H, W]` (its shape as `shape`), one timestep per item, `context` `[B, L, D]`
    /// flattened. Resolves to the predicted noise, flattened.
    #[wasm_bindgen(js_name = unetForward)]
    pub fn unet_forward(&self, sample: Float32Array, shape: Vec<u32>, timesteps: Float32Array, context: Float32Array) -> Promise {
        let inner = self.inner.clone();
        future_to_promise(async move {
            let _busy = Busy::take(&inner, "unetForward")?;
            let gpu = inner.gpu.clone();
            gpu.check()?;
            let model = inner.model.borrow().clone().ok_or_else(|| err("unetForward: no model loaded (call load first)"))?;
            let unet = &model.zepo.unet;
            let (cin, d) = (model.unet_config.in_channels, model.unet_config.cross_attention_dim);
            let &[b, c, h, w] = shape.iter().map(|&d| d as usize).collect::<Vec<_>>().as_slice() else {
                return Err(err(format!("unetForward: sample shape {shape:?} is not [batch, channels, height, width]")));
            };
            if b == 0 || h == 0 || w == 0 || c != cin {
                return Err(err(format!("unetForward: sample shape {shape:?}: expected [B>0, {cin}, H>0, W>0]")));
            }
            if sample.length() as usize != b * c * h * w {
                return Err(err(format!("unetForward: sample has {} values, shape {shape:?} needs {}", sample.length(), b * c * h * w)));
            }
            if timesteps.length() as usize != b {
                return Err(err(format!("unetForward: {} timesteps for a batch of {b}", timesteps.length())));
            }
            let n = context.length() as usize;
            if n == 0 || n % (b * d) != 0 {
                return Err(err(format!("unetForward: context has {n} values, not a multiple of batch {b} × width {d}")));
            }
            let device = &gpu.device;
            let x = Tensor::<4>::from_data(TensorData::new(sample.to_vec(), [b, c, h, w]), device);
            let ctx = Tensor::<3>::from_data(TensorData::new(context.to_vec(), [b, n / (b * d), d]), device);
            let out = unet.forward(x, &timesteps.to_vec(), &ctx);
            let data = match out.into_data_async().await {
                Ok(data) => data,
                Err(e) => return Err(gpu.failure("reading the UNet output back", e).await),
            };
            let values = data.convert::<f32>().try_to_vec::<f32>().map_err(|e| named_err("DeviceError", format!("UNet output: {e:?}")))?;
            Ok(Float32Array::from(values.as_slice()).into())
        })
    }

    /// Drops the model and the cached features (GPU memory is returned to the device's pool).
    /// The device stays: a later `load` reuses it.
    pub fn dispose(&self) -> Result<(), JsValue> {
        if *self.inner.busy.borrow() {
            return Err(named_err("EngineBusy", "dispose: a call is in progress (cancel it first)"));
        }
        *self.inner.model.borrow_mut() = None;
        self.inner.gpu.device.memory_cleanup();
        Ok(())
    }
}

/// Drives a stylization one model call at a time, reporting progress before each and awaiting
/// the GPU after each (the Worker's event loop turns, a cancellation is seen). Returns the
/// decoded result (on the GPU) and the style's features.
#[allow(clippy::too_many_arguments)]
async fn drive(
    model: &Model,
    gpu: &Gpu,
    content: &RgbImage,
    style: Style<'_>,
    o: &ZepoOptions,
    prompts: &PromptEmbeddings,
    report: &impl Fn(&str, usize, usize, f32),
    check_cancel: &impl Fn() -> Result<(), JsValue>,
) -> Result<(Tensor<4>, StyleFeatures), JsValue> {
    // The style's draws come from a stream of their own: cached features give the same image
    // as a run that computes them.
    let mut noise = SeededNoise::new(o.seed);
    let mut run = model.zepo.start(content, style, o, prompts, &mut noise).map_err(crate_err)?;
    loop {
        let Progress { stage, step, steps, fraction } = run.progress();
        report(stage.name(), step, steps, fraction);
        check_cancel()?;
        let more = run.advance().map_err(crate_err)?;
        settle(gpu).await?;
        if !more {
            break;
        }
    }
    run.finish().map_err(crate_err)
}

/// `Err(Cancelled)` once the JS `isCancelled()` callback (if any) says so.
fn cancel_check(is_cancelled: &Option<Function>) -> impl Fn() -> Result<(), JsValue> + '_ {
    move || {
        let cancelled = is_cancelled.as_ref().is_some_and(|f| f.call0(&JsValue::NULL).map(|v| v.is_truthy()).unwrap_or(false));
        if cancelled {
            Err(crate_err(crate::Error::Cancelled))
        } else {
            Ok(())
        }
    }
}

/// What the style's features depend on: its bytes, and the options that shape them (the seed
/// among them: the style's noise is drawn from it).
fn style_key(bytes: &[u8], o: &ZepoOptions, size: Size) -> u64 {
    let mut h = DefaultHasher::new();
    bytes.hash(&mut h);
    FeatureKey::of(o, size).hash(&mut h);
    h.finish()
}

/// The pipeline options from a JS object (camelCase): read as JSON by
/// [`ZepoOptions::from_json`], the one parser (tested natively, fuzzed): absent keys keep the
/// reference's defaults, unknown keys and wrong types are errors naming the key.
pub fn parse_options(opts: &JsValue) -> Result<ZepoOptions, JsValue> {
    if opts.is_undefined() || opts.is_null() {
        return Ok(ZepoOptions::default());
    }
    if !opts.is_object() || opts.is_function() {
        return Err(named_err("InvalidOption", "options must be an object"));
    }
    let text = js_sys::JSON::stringify(opts)
        .map_err(|e| named_err("InvalidOption", format!("options cannot be read: {}", super::js_message(&e))))?;
    let value: serde_json::Value =
        serde_json::from_str(&String::from(text)).map_err(|e| named_err("InvalidOption", format!("options: {e}")))?;
    ZepoOptions::from_json(&value).map_err(crate_err)
}
