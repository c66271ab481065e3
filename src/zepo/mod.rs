//! ZePo: the LCM scheduler, attention control, token merging, feature cache and pipeline.

pub mod scheduler;
mod std_sort;
pub mod style_attention;
pub mod tome;
