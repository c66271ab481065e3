//! ZePo: the LCM scheduler, attention control, token merging, the pipeline and its feature
//! cache, images in and out, options, and `load`: the one path from a model's files to a pipeline.

pub mod control;
pub mod image;
mod libstdcxx_introsort;
pub mod load;
pub mod noise;
pub mod options;
pub mod pipeline;
pub mod progress;
pub mod scheduler;
pub mod style_attention;
pub mod tome;

pub use options::{Fit, Size, TomeOptions, ZepoOptions};
