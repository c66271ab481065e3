//! The browser engine: the `Engine` class of the wasm package (`www/pkg/zepo.js`), run in a
//! dedicated Web Worker by `www/worker.js`. The only module that touches web-sys / js-sys.
//!
//! ```js
//! import init, { Engine } from './pkg/zepo.js';
//! await init();
//! const engine = await Engine.create({ precision: 'auto' });   // WebGPU device
//! await engine.load(files);              // files: ModelFiles of www/weights.js (cache, resume, sha256):
//!                                        // a diffusers layout, or an fp16 bundle (manifest.json)
//! const png = await engine.stylize(contentBytes, styleBytes, { steps: 2, resolution: 64 },
//!                                  (p) => {}, () => cancelled);   // Uint8Array (PNG)
//! engine.dispose();
//! ```
//!
//! Every method that does GPU work returns a Promise and awaits the GPU between model calls
//! (never a synchronous read-back), so the Worker's event loop sees cancellation requests.
//! Errors are JS `Error`s whose `name` says what went wrong: `WebGpuUnavailable`,
//! `DeviceLost`, `InvalidOption`, `ImageError`, `WeightsError`, `AbortError`, `DeviceError`.

mod engine;
mod files;
mod gpu;
mod hash;
mod image;
mod prompts;
mod size;

pub use engine::Engine;
pub use hash::Sha256;
pub use image::decode_image;
pub use size::{bundle_sizes, shard_files, weight_candidates};

use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;

#[wasm_bindgen(start)]
fn start() {
    // A panic (an out-of-memory buffer, a rejected shader) kills the module: keep its message
    // where the Worker can read it, so the page gets a readable error instead of `unreachable`.
    std::panic::set_hook(Box::new(|info| {
        console_error_panic_hook::hook(info);
        let _ = js_sys::Reflect::set(&js_sys::global(), &"__zepoPanic".into(), &info.to_string().into());
    }));
}

/// A JS `Error` with a `name`.
pub(crate) fn js_error(name: &str, msg: impl std::fmt::Display) -> JsValue {
    let e = js_sys::Error::new(&msg.to_string());
    e.set_name(name);
    e.into()
}

pub(crate) fn err(msg: impl std::fmt::Display) -> JsValue {
    js_error("Error", msg)
}

pub(crate) fn named_err(name: &str, msg: impl std::fmt::Display) -> JsValue {
    js_error(name, msg)
}

/// The crate's errors as named JS errors.
pub(crate) fn crate_err(e: crate::Error) -> JsValue {
    use crate::Error as E;
    let name = match &e {
        E::Fetch { name, message } => return js_error(name, message),
        E::Weights(crate::weights::WeightsError::NoWeights { .. }) => "NotFound",
        E::Weights(_) => "WeightsError",
        E::Config { .. } => "ConfigError",
        E::InvalidOption(_) => "InvalidOption",
        E::Image { .. } => "ImageError",
        E::Io { .. } => "Error",
        E::Cancelled => "AbortError",
        E::Device(_) => "DeviceError",
    };
    let msg = match e {
        E::Cancelled => "the stylization was cancelled".to_string(),
        other => other.to_string(),
    };
    js_error(name, msg)
}

/// A JS exception (or rejected promise) as a readable message.
pub(crate) fn js_message(value: &JsValue) -> String {
    if let Some(err) = value.dyn_ref::<js_sys::Error>() {
        return String::from(err.message());
    }
    let message = js_sys::Reflect::get(value, &"message".into()).ok().and_then(|m| m.as_string());
    message.or_else(|| value.as_string()).unwrap_or_else(|| format!("{value:?}"))
}
