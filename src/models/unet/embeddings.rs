//! Timestep embeddings: diffusers' `get_timestep_embedding` (sinusoids) and `TimestepEmbedding`.

use burn::tensor::{Device, Tensor, TensorData};

use crate::nn::{linear, silu, Linear};
use crate::weights::{VarBuilder, WeightsError};

/// Sinusoidal embedding `[B, dim]` of one timestep per item, computed on the host like
/// diffusers: `exp(-ln(10000)·i/(half − shift))`, `t·freq` in f32, `[sin, cos]` (flipped to
/// `[cos, sin]` with `flip_sin_to_cos`).
pub fn timestep_proj(timesteps: &[f32], dim: usize, flip_sin_to_cos: bool, shift: f64, device: &Device) -> Tensor<2> {
    let half = dim / 2;
    let freqs: Vec<f32> = (0..half)
        .map(|i| {
            let exponent = (-(10000f64.ln()) as f32 * i as f32) / (half as f64 - shift) as f32;
            (exponent as f64).exp() as f32
        })
        .collect();
    let mut values = Vec::with_capacity(timesteps.len() * dim);
    for &t in timesteps {
        let args: Vec<f32> = freqs.iter().map(|&f| t * f).collect();
        let sin = args.iter().map(|&a| (a as f64).sin() as f32);
        let cos = args.iter().map(|&a| (a as f64).cos() as f32);
        if flip_sin_to_cos {
            values.extend(cos.chain(sin));
        } else {
            values.extend(sin.chain(cos));
        }
        values.extend(std::iter::repeat_n(0.0, dim - 2 * half));
    }
    Tensor::from_data(TensorData::new(values, [timesteps.len(), dim]), device)
}

/// `TimestepEmbedding`: linear, SiLU, linear; with the LCM guidance projection `cond_proj`
/// (no bias) added to its input when a condition is given.
#[derive(burn::module::Module, Debug)]
pub struct TimestepEmbedding {
    pub linear_1: Linear,
    pub linear_2: Linear,
    pub cond_proj: Option<Linear>,
}

impl TimestepEmbedding {
    pub fn load(vb: &VarBuilder, in_dim: usize, embed_dim: usize, cond_dim: Option<usize>) -> Result<Self, WeightsError> {
        Ok(Self {
            linear_1: linear(&vb.pp("linear_1"), in_dim, embed_dim, true)?,
            linear_2: linear(&vb.pp("linear_2"), embed_dim, embed_dim, true)?,
            cond_proj: cond_dim.map(|d| linear(&vb.pp("cond_proj"), d, in_dim, false)).transpose()?,
        })
    }

    pub fn forward(&self, sample: Tensor<2>, condition: Option<Tensor<2>>) -> Tensor<2> {
        let sample = match (&self.cond_proj, condition) {
            (Some(proj), Some(c)) => sample + proj.forward(c),
            _ => sample,
        };
        self.linear_2.forward(silu(self.linear_1.forward(sample)))
    }
}

/// The LCM guidance-scale embedding `w → [B, dim]` (diffusers' `get_guidance_scale_embedding`),
/// fed to `cond_proj` in the no-CFG mode.
pub fn guidance_scale_embedding(w: &[f32], dim: usize, device: &Device) -> Tensor<2> {
    let half = dim / 2;
    let base = (10000f64.ln() / (half as f64 - 1.0)) as f32;
    let freqs: Vec<f32> = (0..half).map(|i| ((i as f32 * -base) as f64).exp() as f32).collect();
    let mut values = Vec::with_capacity(w.len() * dim);
    for &g in w {
        let g = g * 1000.0;
        let args: Vec<f32> = freqs.iter().map(|&f| g * f).collect();
        values.extend(args.iter().map(|&a| (a as f64).sin() as f32));
        values.extend(args.iter().map(|&a| (a as f64).cos() as f32));
        values.extend(std::iter::repeat_n(0.0, dim - 2 * half));
    }
    Tensor::from_data(TensorData::new(values, [w.len(), dim]), device)
}
