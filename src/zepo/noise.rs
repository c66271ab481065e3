//! Where the pipeline's Gaussian draws come from: a seeded generator, or a replay of the
//! reference's recorded draws (`rand_NN_*` tensors), taken in the reference's order:
//! content posterior, content noise at the feature step, style posterior, style noise,
//! target posterior, target noise at the first timestep, then per step one unused draw and
//! the LCM step noise (none at the last index).

use std::collections::VecDeque;

use burn::tensor::{Device, Tensor, TensorData};
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};

use crate::{Error, Result};

/// A source of standard-normal tensors, asked for in the reference's order.
pub trait NoiseSource {
    /// The next draw; `label` says what it is for (used in replay error messages).
    fn draw(&mut self, label: &str, shape: [usize; 4], device: &Device) -> Result<Tensor<4>>;
}

/// Standard normals from a seeded generator: the same seed gives the same draws everywhere.
/// The style's draws (labels starting with `style`) come from a stream of their own, so that
/// style features computed once give the same result as a run that computes them itself.
pub struct SeededNoise {
    rng: rand::rngs::StdRng,
    style: rand::rngs::StdRng,
}

impl SeededNoise {
    pub fn new(seed: u64) -> Self {
        Self { rng: rand::rngs::StdRng::seed_from_u64(seed), style: rand::rngs::StdRng::seed_from_u64(seed ^ 0x5354_594c_455f_5a50) }
    }
}

impl NoiseSource for SeededNoise {
    fn draw(&mut self, label: &str, shape: [usize; 4], device: &Device) -> Result<Tensor<4>> {
        let n = shape.iter().product();
        let rng = if label.starts_with("style") { &mut self.style } else { &mut self.rng };
        let values: Vec<f32> = (0..n).map(|_| StandardNormal.sample(rng)).collect();
        Ok(Tensor::from_data(TensorData::new(values, shape), device))
    }
}

/// The reference's recorded draws, replayed in order; a shape mismatch or running out is an
/// error that says which draw.
pub struct ReplayNoise {
    draws: VecDeque<(String, Vec<usize>, Vec<f32>)>,
}

impl ReplayNoise {
    /// `draws`: `(name, shape, values)` in call order.
    pub fn new(draws: Vec<(String, Vec<usize>, Vec<f32>)>) -> Self {
        Self { draws: draws.into() }
    }

    /// Draws left unused.
    pub fn remaining(&self) -> usize {
        self.draws.len()
    }
}

impl NoiseSource for ReplayNoise {
    fn draw(&mut self, label: &str, shape: [usize; 4], device: &Device) -> Result<Tensor<4>> {
        let (name, s, values) =
            self.draws.pop_front().ok_or_else(|| Error::InvalidOption(format!("replay: no recorded draw left for {label}")))?;
        if s != shape {
            return Err(Error::InvalidOption(format!(
                "replay: draw {name} has shape {s:?}, the pipeline needs {shape:?} for {label} (different resolution or steps?)"
            )));
        }
        Ok(Tensor::from_data(TensorData::new(values, shape), device))
    }
}
