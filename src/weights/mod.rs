//! Weights: safetensors parsing (whole files, sharded checkpoints, byte streams) and the
//! [`VarBuilder`] through which model constructors take their tensors by diffusers key name.
//!
//! Every failure names what it concerns: the file, the key, the expected and found shape.

mod safetensors;
mod store;

pub use safetensors::{
    parse_header, Dtype, Header, SafetensorsBytes, StreamParser, StreamedTensor, TensorEntry,
};
pub use store::{LoadOptions, VarBuilder, VarStore};

#[cfg(not(target_arch = "wasm32"))]
pub use store::load_dir_part;

/// What can go wrong while reading or assigning weights.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("missing weight `{key}` (expected shape {expected:?}) in {source_name}")]
    Missing { key: String, expected: Vec<usize>, source_name: String },
    #[error("weight `{key}` has shape {found:?}, expected {expected:?}")]
    Shape { key: String, expected: Vec<usize>, found: Vec<usize> },
    #[error("unexpected weight(s) in {source_name}: {keys} (the checkpoint does not match the config)")]
    Unexpected { source_name: String, keys: String },
    #[error("{file}: truncated: needs {needed} bytes, has {found}")]
    Truncated { file: String, needed: u64, found: u64 },
    #[error("{file}: not a valid safetensors file: {reason}")]
    Corrupt { file: String, reason: String },
    #[error("weight `{key}` has dtype {dtype}, which cannot be used as a float weight")]
    Dtype { key: String, dtype: String },
    #[error("weight `{key}` appears in more than one file ({first} and {second})")]
    Duplicate { key: String, first: String, second: String },
    #[error("{file}: {source}")]
    Io { file: String, source: std::io::Error },
}
