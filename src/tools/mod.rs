//! Native tools over the library (the CLI's `zepo weights …`): converting a diffusers checkpoint
//! into an fp16 bundle, verifying a bundle, and making random checkpoints with the real
//! structure. Tool code: it reads and writes files, and loads models only through
//! `zepo::load`.

pub mod calibrate;
pub mod compare;
pub mod convert;
pub mod random_checkpoint;
pub mod verify;
