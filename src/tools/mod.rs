//! Native tools over the library (used by the CLI): making test and benchmark checkpoints.

pub mod random_checkpoint;
