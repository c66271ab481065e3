//! ZePo zero-shot portrait stylization on burn.
//!
//! Layout (dependencies point one way: `zepo` → `models`, `weights`):
//! - [`weights`]: safetensors parsing (files, shards, streams) and the [`weights::VarBuilder`]
//!   that hands tensors to model constructors by diffusers key name.
//! - [`models`]: the Stable Diffusion 1.5 / LCM parts (CLIP, tokenizer, UNet, VAE), config
//!   driven, knowing nothing of ZePo except that the UNet's self-attention accepts a controller.
//! - [`zepo`]: the LCM scheduler and, on top, the ZePo pipeline.
//! - `web` (wasm32 only): the browser engine's JS API, on top of all three.

pub mod device;
pub mod error;
pub mod models;
pub mod nn;
/// Native tools (the CLI's): random full-size checkpoints.
#[cfg(all(feature = "cpu", not(target_arch = "wasm32")))]
pub mod tools;
pub mod weights;
pub mod zepo;

/// The browser engine (wasm32 only): the JS API run in a Web Worker.
#[cfg(target_arch = "wasm32")]
pub mod web;

pub use error::{Error, Result};
