//! ZePo: the LCM scheduler, attention control, token merging, feature cache and pipeline.

pub mod options;
pub use options::{TomeOptions, ZepoOptions};
pub mod noise;
pub mod control;
pub mod image;
pub mod progress;
pub mod pipeline;
#[cfg(not(target_arch = "wasm32"))]
pub mod load;
