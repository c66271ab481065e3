//! The crate's error type: every failure a user can cause gets a specific, readable message.

use crate::weights::WeightsError;

/// Any error of the crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A weight file or tensor is missing, mis-shaped, truncated or corrupt.
    #[error(transparent)]
    Weights(#[from] WeightsError),
    /// A model `config.json` (or tokenizer file) is missing or malformed.
    #[error("config {path}: {reason}")]
    Config { path: String, reason: String },
    /// An option given by the user is out of range.
    #[error("invalid option: {0}")]
    InvalidOption(String),
    /// An input image could not be decoded.
    #[error("image {name}: {reason}")]
    Image { name: String, reason: String },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    /// A model file could not be fetched or kept (the browser's download layer, `www/weights.js`:
    /// network, HTTP status, integrity, storage); `name` is its error name (`NetworkError`,
    /// `IntegrityError`, `StorageFull`…), kept for the page.
    #[error("{message}")]
    Fetch { name: String, message: String },
    /// The run was cancelled by the caller.
    #[error("cancelled")]
    Cancelled,
    /// The compute device failed (lost, out of memory, readback failure).
    #[error("device: {0}")]
    Device(String),
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An I/O error tied to the path it concerns.
    pub fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        Error::Io { path: path.as_ref().display().to_string(), source }
    }

    /// A config error tied to the file it concerns.
    pub fn config(path: impl std::fmt::Display, reason: impl std::fmt::Display) -> Self {
        Error::Config { path: path.to_string(), reason: reason.to_string() }
    }
}
