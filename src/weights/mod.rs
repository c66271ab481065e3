//! Weights: where a model's files come from ([`source`]: a directory or the browser's
//! downloads, laid out as an fp16 [`bundle`] or a [`diffusers`] checkpoint), safetensors parsing
//! (whole files, byte streams), and the [`VarStore`] / [`VarBuilder`] through which model
//! constructors take their tensors by diffusers key name.
//!
//! Every failure names what it concerns: the file, the key, the expected and found shape.

pub mod bundle;
pub mod diffusers;
#[cfg(not(target_arch = "wasm32"))]
pub mod dir;
pub mod quant;
mod safetensors;
pub mod source;
mod store;

pub use safetensors::{parse_header, Dtype, Header, SafetensorsBytes, StreamParser, StreamedTensor, TensorEntry};
pub use source::{Layout, ModelSource};
pub use store::{f16_words, random_weight, CompactTensor, LoadOptions, Packing, Requests, VarBuilder, VarStore, MAX_WEIGHT_BUFFER_BYTES};

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
    #[error("{file}: {reason}")]
    Bundle { file: String, reason: String },
    #[error("{file}: sha256 is {found}, the manifest says {expected} (a corrupt or replaced file)")]
    Checksum { file: String, expected: String, found: String },
    #[error("{part}: no weights found (looked for {looked_for})")]
    NoWeights { part: String, looked_for: String },
    #[error("weight `{key}` in {file}: value {value} cannot be stored as f16 (finite range ±65504), refusing to write it as inf/NaN")]
    OutOfRange { key: String, file: String, value: String },
}
