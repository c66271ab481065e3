//! The WebGPU device: acquired once per Worker (burn's wgpu runtime cannot be re-initialised),
//! its precision chosen from the adapter's features, its limits and loss recorded.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use burn::tensor::wgpu::{wgpu, WgpuBackend, WgpuInitError};
use burn::tensor::{DType, Device, FloatDType};
use js_sys::Reflect;
use wasm_bindgen::JsCast;

use super::{err, named_err};

/// Compute precision, as asked by the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    Auto,
    F16,
    F32,
}

impl Precision {
    pub fn parse(s: &str) -> Result<Self, wasm_bindgen::JsValue> {
        match s {
            "auto" | "" => Ok(Self::Auto),
            "f16" => Ok(Self::F16),
            "f32" => Ok(Self::F32),
            other => Err(named_err("InvalidOption", format!("precision `{other}`: expected 'auto', 'f16' or 'f32'"))),
        }
    }
}

/// Compute dispatches recorded per queue submit (burn's default: 32). A submit costs a round
/// trip to the browser's GPU process; a UNet call is some 650 dispatches.
pub const TASKS_PER_SUBMIT: usize = 128;

pub struct Gpu {
    pub device: Device,
    /// The dtype weights and activations use.
    pub dtype: DType,
    /// The adapter's `maxStorageBufferBindingSize` as granted to the device.
    pub max_binding: u64,
    pub info: Vec<(&'static str, String)>,
    /// Set by wgpu's device-lost callback: every later call fails with a clear error.
    pub lost: Arc<Mutex<Option<String>>>,
}

thread_local! {
    static GPU: RefCell<Option<Rc<Gpu>>> = const { RefCell::new(None) };
    static INITIALISING: Cell<bool> = const { Cell::new(false) };
}

/// Whether the global scope (page or Worker) exposes `navigator.gpu`.
fn has_webgpu() -> bool {
    Reflect::get(&js_sys::global(), &"navigator".into())
        .and_then(|nav| Reflect::get(&nav, &"gpu".into()))
        .map(|gpu| !gpu.is_undefined() && !gpu.is_null())
        .unwrap_or(false)
}

const NO_WEBGPU: &str = "WebGPU is not available in this browser (navigator.gpu is missing). ZePo runs on your GPU \
    through WebGPU: use a recent Chrome or Edge (113+), Safari 26+, or Firefox 141+ on Windows; on Linux enable \
    chrome://flags/#enable-unsafe-webgpu. The page must be served over https or from localhost.";

/// The device, acquired on first use with `precision`; a later call asking for another
/// explicit precision than the one in use is an error (the runtime is made once per Worker).
pub async fn acquire(precision: Precision) -> Result<Rc<Gpu>, wasm_bindgen::JsValue> {
    if let Some(gpu) = GPU.with(|g| g.borrow().clone()) {
        let wanted = match precision {
            Precision::F16 => Some(DType::F16),
            Precision::F32 => Some(DType::F32),
            Precision::Auto => None,
        };
        if wanted.is_some_and(|d| d != gpu.dtype) {
            return Err(named_err(
                "InvalidOption",
                format!("this engine already runs in {:?}; create the engine in a new Worker to change precision", gpu.dtype),
            ));
        }
        return Ok(gpu);
    }
    if INITIALISING.with(|i| i.replace(true)) {
        return Err(err("the WebGPU device is already being created (await Engine.create once)"));
    }
    let result = init(precision).await;
    INITIALISING.with(|i| i.set(false));
    let gpu = Rc::new(result?);
    GPU.with(|g| *g.borrow_mut() = Some(gpu.clone()));
    Ok(gpu)
}

async fn init(precision: Precision) -> Result<Gpu, wasm_bindgen::JsValue> {
    if !has_webgpu() {
        return Err(named_err("WebGpuUnavailable", NO_WEBGPU));
    }
    let (mut device, setup) =
        Device::wgpu_options().graphics_api(WgpuBackend::WebGpu).tasks_max(TASKS_PER_SUBMIT).init_with_setup_async().await.map_err(
            |e| match e {
                WgpuInitError::AdapterUnavailable { .. } | WgpuInitError::UnsupportedGraphicsApi { .. } => named_err(
                    "WebGpuUnavailable",
                    format!(
                        "This browser has WebGPU but gave no usable GPU adapter: WebGPU may be disabled or blocked for \
                     this GPU or driver. On Linux enable chrome://flags/#enable-unsafe-webgpu; otherwise update the \
                     graphics driver and check chrome://gpu, then reload. (Details: {e})"
                    ),
                ),
                other => err(format!("could not create the WebGPU device: {other}")),
            },
        )?;

    // f16 only where the adapter really computes in it (`shader-f16`): elsewhere f16 weights
    // would be converted on every use or rejected by the shader compiler.
    let has_f16 = setup.adapter.features().contains(wgpu::Features::SHADER_F16) && device.supports_dtype(DType::F16);
    let dtype = match precision {
        Precision::F32 => DType::F32,
        Precision::Auto if !has_f16 => DType::F32,
        Precision::Auto | Precision::F16 if has_f16 => DType::F16,
        _ => {
            return Err(named_err(
                "InvalidOption",
                "precision 'f16' was asked for, but this GPU adapter has no `shader-f16` feature: use 'auto' or 'f32'",
            ))
        }
    };
    if dtype == DType::F16 {
        device.configure(FloatDType::F16).map_err(|e| err(format!("could not switch the device to f16: {e:?}")))?;
    }

    let lost = Arc::new(Mutex::new(None));
    {
        let lost = lost.clone();
        setup.device.set_device_lost_callback(move |reason, message| {
            if let Ok(mut l) = lost.lock() {
                *l = Some(format!("{reason:?}: {message}"));
            }
        });
    }

    // Browsers hide most adapter details (name and driver are often empty): keep what is known.
    let a = setup.adapter.get_info();
    let limits = setup.device.limits();
    let mut info = vec![("backend", format!("{:?}", a.backend)), ("device_type", format!("{:?}", a.device_type))];
    for (key, value) in [("adapter", a.name), ("driver", a.driver), ("driver_info", a.driver_info)] {
        if !value.is_empty() {
            info.push((key, value));
        }
    }
    info.push(("precision", if dtype == DType::F16 { "f16".into() } else { "f32".into() }));
    info.push(("shader_f16", has_f16.to_string()));
    info.push(("max_buffer_size", limits.max_buffer_size.to_string()));
    info.push(("max_storage_binding", limits.max_storage_buffer_binding_size.to_string()));
    Ok(Gpu { device, dtype, max_binding: limits.max_storage_buffer_binding_size as u64, info, lost })
}

impl Gpu {
    /// The error for a GPU operation that failed (`what`: what was being done): `DeviceLost` when
    /// the failure came from losing the device, else `DeviceError`. The browser reports a loss
    /// through a promise of its own, which may settle just after the failed read: give it a
    /// moment first.
    pub async fn failure(&self, what: &str, error: impl std::fmt::Debug) -> wasm_bindgen::JsValue {
        let mut wait = |resolve: js_sys::Function, _reject: js_sys::Function| {
            let set_timeout =
                Reflect::get(&js_sys::global(), &"setTimeout".into()).ok().and_then(|f| f.dyn_into::<js_sys::Function>().ok());
            match set_timeout {
                Some(f) => {
                    let _ = f.call2(&wasm_bindgen::JsValue::NULL, &resolve, &100.into());
                }
                None => {
                    let _ = resolve.call0(&wasm_bindgen::JsValue::NULL);
                }
            }
        };
        let _ = wasm_bindgen_futures::JsFuture::from(js_sys::Promise::new(&mut wait)).await;
        match self.check() {
            Err(lost) => lost,
            Ok(()) => named_err("DeviceError", format!("{what}: {error:?}")),
        }
    }

    /// An error if the device was lost (the engine must then be re-created in a new Worker).
    pub fn check(&self) -> Result<(), wasm_bindgen::JsValue> {
        let lost = self.lost.lock().ok().and_then(|l| l.clone());
        match lost {
            Some(reason) => {
                Err(named_err("DeviceLost", format!("the GPU device was lost ({reason}); the engine must be re-created (reload the page)")))
            }
            None => Ok(()),
        }
    }
}
