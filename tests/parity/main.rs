//! Parity with the authors' PyTorch stack (`tests/fixtures`, copied from the shared oracle):
//! one test binary, one module per model part.

mod bundle;
mod clip;
mod common;
mod compact;
mod pipeline;
mod scheduler;
mod style_attention;
mod tome;
mod unet;
mod vae;
mod weights;
