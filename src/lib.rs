//! ZePo zero-shot portrait stylization on burn.
//!
//! Layout (dependencies point one way, each layer using only those above it in this list;
//! `tests/layering.rs` checks it on the source):
//! - [`device`]: choosing the compute device at run time.
//! - [`weights`]: where a model's files come from ([`weights::ModelSource`]: a directory, or the
//!   browser's downloads) and how they are laid out ([`weights::Layout`]: an fp16 bundle or a
//!   diffusers checkpoint); safetensors parsing; the [`weights::VarBuilder`] that hands tensors
//!   to model constructors by diffusers key name.
//! - [`nn`]: layers over burn's modules, with their CPU and GPU fast paths.
//! - [`models`]: the Stable Diffusion 1.5 / LCM parts (CLIP, tokenizer, UNet, VAE), config
//!   driven, knowing nothing of ZePo except that the UNet's self-attention accepts a controller.
//! - [`zepo`]: the LCM scheduler, attention control, token merging, the pipeline and its feature
//!   cache, and [`zepo::load`], the one path from a model source to a loaded pipeline.
//! - `tools` (native) and `web` (wasm32, the only code naming wasm-bindgen / web-sys / js-sys):
//!   the converter and verifier, and the browser engine's JS API. The CLI (`src/bin`) is thin
//!   over all of it.

pub mod device;
pub mod error;
pub mod models;
pub mod nn;
/// Native tools (the CLI's `zepo weights …`): converter, verifier, random checkpoints.
#[cfg(all(feature = "cpu", not(target_arch = "wasm32")))]
pub mod tools;
pub mod weights;
pub mod zepo;

/// The browser engine (wasm32 only): the JS API run in a Web Worker.
#[cfg(target_arch = "wasm32")]
pub mod web;

pub use error::{Error, Result};
