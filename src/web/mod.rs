//! The browser engine: the JS API of the wasm package (`www/pkg/zepo.js`), run in a dedicated
//! Web Worker by `www/worker.js`. The only module that touches web-sys / js-sys.
//!
//! One engine per Worker: its state (device, loaded models) lives in a thread-local, and every
//! export is async because WebGPU device creation and GPU read-back are.
//!
//! ```js
//! import init, * as zepo from './pkg/zepo.js';
//! await init();
//! const device = await zepo.init_device();          // { backend, adapter, vendor, ... }
//! const info = await zepo.load_unet('weights/tiny-lcm', (loaded, total) => ...);
//! const eps = await zepo.unet_forward(sample, [2, 4, 16, 16], timesteps, context);
//! ```

mod fetch;

use std::cell::RefCell;
use std::rc::Rc;

use burn::tensor::wgpu::{WgpuBackend, WgpuInitError};
use burn::tensor::{Device, Tensor, TensorData};
use js_sys::{Float32Array, Function, Object, Reflect};
use wasm_bindgen::prelude::*;

use crate::models::unet::{UNet2DConditionModel, UNetConfig};
use crate::weights::{LoadOptions, StreamParser, VarStore};

struct Gpu {
    device: Device,
    info: Vec<(&'static str, String)>,
}

struct LoadedUNet {
    model: UNet2DConditionModel,
    config: UNetConfig,
}

#[derive(Default)]
struct Engine {
    gpu: Option<Rc<Gpu>>,
    unet: Option<Rc<LoadedUNet>>,
}

thread_local! {
    static ENGINE: RefCell<Engine> = RefCell::new(Engine::default());
}

#[wasm_bindgen(start)]
fn start() {
    console_error_panic_hook::set_once();
}

fn err(msg: impl std::fmt::Display) -> JsValue {
    js_sys::Error::new(&msg.to_string()).into()
}

/// The error for a browser without usable WebGPU, named so that the page can tell it apart.
fn no_webgpu(msg: &str) -> JsValue {
    let e = js_sys::Error::new(msg);
    e.set_name("WebGpuUnavailable");
    e.into()
}

/// Whether the global scope (page or Worker) exposes `navigator.gpu`.
fn has_webgpu() -> bool {
    let global = js_sys::global();
    Reflect::get(&global, &"navigator".into())
        .and_then(|nav| Reflect::get(&nav, &"gpu".into()))
        .map(|gpu| !gpu.is_undefined() && !gpu.is_null())
        .unwrap_or(false)
}

/// Acquires the WebGPU device once; later calls return the same one.
async fn gpu() -> Result<Rc<Gpu>, JsValue> {
    if let Some(gpu) = ENGINE.with(|e| e.borrow().gpu.clone()) {
        return Ok(gpu);
    }
    if !has_webgpu() {
        return Err(no_webgpu(
            "WebGPU is not available in this browser (navigator.gpu is missing). ZePo runs on your GPU \
             through WebGPU: use a recent Chrome or Edge (113+), Safari 26+, or Firefox 141+ on Windows; \
             on Linux enable chrome://flags/#enable-unsafe-webgpu. The page must be served over https or \
             from localhost.",
        ));
    }
    let (device, setup) = Device::wgpu_options()
        .graphics_api(WgpuBackend::WebGpu)
        .init_with_setup_async()
        .await
        .map_err(|e| match e {
            WgpuInitError::AdapterUnavailable { .. } | WgpuInitError::UnsupportedGraphicsApi { .. } => no_webgpu(&format!(
                "This browser has WebGPU but gave no usable GPU adapter: WebGPU may be disabled or \
                 blocked for this GPU or driver. On Linux enable chrome://flags/#enable-unsafe-webgpu; \
                 otherwise update the graphics driver and check chrome://gpu, then reload. (Details: {e})"
            )),
            other => err(format!("could not create the WebGPU device: {other}")),
        })?;
    // Browsers hide most adapter details (name and driver are often empty): keep what is known.
    let a = setup.adapter.get_info();
    let limits = setup.device.limits();
    let mut info = vec![("backend", format!("{:?}", a.backend)), ("device_type", format!("{:?}", a.device_type))];
    for (key, value) in [("adapter", a.name), ("driver", a.driver), ("driver_info", a.driver_info)] {
        if !value.is_empty() {
            info.push((key, value));
        }
    }
    info.push(("max_buffer_size", limits.max_buffer_size.to_string()));
    info.push(("max_storage_binding", limits.max_storage_buffer_binding_size.to_string()));
    let gpu = Rc::new(Gpu { device, info });
    ENGINE.with(|e| e.borrow_mut().gpu = Some(gpu.clone()));
    Ok(gpu)
}

fn object(fields: &[(&str, JsValue)]) -> JsValue {
    let obj = Object::new();
    for (k, v) in fields {
        let _ = Reflect::set(&obj, &(*k).into(), v);
    }
    obj.into()
}

/// Acquires the WebGPU device (once). Resolves to a description of the adapter; rejects with a
/// message saying what to do when the browser has no WebGPU or grants no adapter.
#[wasm_bindgen]
pub async fn init_device() -> Result<JsValue, JsValue> {
    let gpu = gpu().await?;
    let fields: Vec<(&str, JsValue)> = gpu.info.iter().map(|(k, v)| (*k, JsValue::from_str(v))).collect();
    Ok(object(&fields))
}

/// Loads the UNet of the model at `base_url` (diffusers layout): `unet/config.json`, then
/// `unet/diffusion_pytorch_model.safetensors` streamed tensor by tensor onto the GPU.
/// `on_progress(loaded_bytes, total_bytes)` is called as bytes arrive (total 0 while unknown).
/// Resolves to `{ tensors, bytes, parameters, sample_size, in_channels, cross_attention_dim }`.
#[wasm_bindgen]
pub async fn load_unet(base_url: String, on_progress: Option<Function>) -> Result<JsValue, JsValue> {
    let gpu = gpu().await?;
    let base = base_url.trim_end_matches('/');
    let config_url = format!("{base}/unet/config.json");
    let text = fetch::text(&config_url).await.map_err(err)?;
    let config: UNetConfig = crate::models::parse_config(&text, &config_url).map_err(err)?;
    config.validate().map_err(|reason| err(format!("{config_url}: {reason}")))?;

    let url = format!("{base}/unet/diffusion_pytorch_model.safetensors");
    let mut stream = fetch::ByteStream::open(&url).await.map_err(err)?;
    let mut parser = StreamParser::new(url.clone());
    let mut store = VarStore::new(&gpu.device, &LoadOptions::default(), url.clone());
    let (mut tensors, mut parameters) = (0usize, 0usize);
    let report = |parser: &StreamParser, content_length: Option<u64>| {
        if let Some(cb) = &on_progress {
            // The header's promised size is exact even when the body is compressed.
            let total = parser.header().map(|h| h.file_len()).or(content_length).unwrap_or(0);
            let _ = cb.call2(&JsValue::NULL, &(parser.received() as f64).into(), &(total as f64).into());
        }
    };
    while let Some(chunk) = stream.next().await.map_err(err)? {
        for t in parser.push(&chunk).map_err(err)? {
            store.insert(&t.entry, &t.bytes, &url).map_err(err)?;
            tensors += 1;
            parameters += t.entry.shape.iter().product::<usize>();
        }
        report(&parser, stream.content_length);
    }
    let bytes = parser.received();
    parser.finish().map_err(err)?;

    let vb = store.into_builder();
    let model = UNet2DConditionModel::load(&vb, &config).map_err(err)?;
    vb.finish().map_err(err)?;
    let info = object(&[
        ("tensors", (tensors as f64).into()),
        ("bytes", (bytes as f64).into()),
        ("parameters", (parameters as f64).into()),
        ("sample_size", config.sample_size.map(|s| s as f64).into()),
        ("in_channels", (config.in_channels as f64).into()),
        ("cross_attention_dim", (config.cross_attention_dim as f64).into()),
    ]);
    ENGINE.with(|e| e.borrow_mut().unet = Some(Rc::new(LoadedUNet { model, config })));
    Ok(info)
}

/// Runs the loaded UNet: `sample` `[B, C, H, W]` (its shape given as `shape`), one timestep per
/// batch item, `context` `[B, L, cross_attention_dim]` flattened. Resolves to the predicted
/// noise `[B, out_channels, H, W]`, flattened.
#[wasm_bindgen]
pub async fn unet_forward(
    sample: Float32Array,
    shape: Vec<u32>,
    timesteps: Float32Array,
    context: Float32Array,
) -> Result<Float32Array, JsValue> {
    let gpu = gpu().await?;
    let unet = ENGINE
        .with(|e| e.borrow().unet.clone())
        .ok_or_else(|| err("unet_forward: no UNet loaded (call load_unet first)"))?;
    let cfg = &unet.config;
    let &[b, c, h, w] = shape.iter().map(|&d| d as usize).collect::<Vec<_>>().as_slice() else {
        return Err(err(format!("unet_forward: sample shape {shape:?} is not [batch, channels, height, width]")));
    };
    if b == 0 || h == 0 || w == 0 || c != cfg.in_channels {
        return Err(err(format!("unet_forward: sample shape {shape:?}: expected [B>0, {}, H>0, W>0]", cfg.in_channels)));
    }
    if sample.length() as usize != b * c * h * w {
        return Err(err(format!("unet_forward: sample has {} values, shape {shape:?} needs {}", sample.length(), b * c * h * w)));
    }
    if timesteps.length() as usize != b {
        return Err(err(format!("unet_forward: {} timesteps for a batch of {b}", timesteps.length())));
    }
    let d = cfg.cross_attention_dim;
    let ctx_len = context.length() as usize;
    if ctx_len == 0 || ctx_len % (b * d) != 0 {
        return Err(err(format!("unet_forward: context has {ctx_len} values, not a multiple of batch {b} × width {d}")));
    }

    let device = &gpu.device;
    let x = Tensor::<4>::from_data(TensorData::new(sample.to_vec(), [b, c, h, w]), device);
    let ctx = Tensor::<3>::from_data(TensorData::new(context.to_vec(), [b, ctx_len / (b * d), d]), device);
    let out = unet.model.forward(x, &timesteps.to_vec(), &ctx);
    let data = out.into_data_async().await.map_err(|e| err(format!("reading the UNet output back: {e:?}")))?;
    let values = data
        .convert::<f32>()
        .try_to_vec::<f32>()
        .map_err(|e| err(format!("UNet output: {e:?}")))?;
    Ok(Float32Array::from(values.as_slice()))
}
