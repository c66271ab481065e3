//! `vae/config.json`, as diffusers 0.30 reads it for `AutoencoderKL`.

use serde::Deserialize;

/// The fields of `AutoencoderKL`'s config; absent fields take diffusers 0.30's defaults.
#[derive(Debug, Clone, Deserialize)]
pub struct VaeConfig {
    #[serde(default = "d_three")]
    pub in_channels: usize,
    #[serde(default = "d_three")]
    pub out_channels: usize,
    #[serde(default = "d_down_block_types")]
    pub down_block_types: Vec<String>,
    #[serde(default = "d_up_block_types")]
    pub up_block_types: Vec<String>,
    #[serde(default = "d_block_out_channels")]
    pub block_out_channels: Vec<usize>,
    #[serde(default = "d_one")]
    pub layers_per_block: usize,
    #[serde(default = "d_act")]
    pub act_fn: String,
    #[serde(default = "d_latent_channels")]
    pub latent_channels: usize,
    #[serde(default = "d_norm_num_groups")]
    pub norm_num_groups: usize,
    #[serde(default = "d_scaling_factor")]
    pub scaling_factor: f64,
    #[serde(default)]
    pub shift_factor: Option<f64>,
    #[serde(default = "d_true")]
    pub use_quant_conv: bool,
    #[serde(default = "d_true")]
    pub use_post_quant_conv: bool,
    #[serde(default = "d_true")]
    pub mid_block_add_attention: bool,
}

fn d_three() -> usize {
    3
}
fn d_down_block_types() -> Vec<String> {
    vec!["DownEncoderBlock2D".into()]
}
fn d_up_block_types() -> Vec<String> {
    vec!["UpDecoderBlock2D".into()]
}
fn d_block_out_channels() -> Vec<usize> {
    vec![64]
}
fn d_one() -> usize {
    1
}
fn d_act() -> String {
    "silu".into()
}
fn d_latent_channels() -> usize {
    4
}
fn d_norm_num_groups() -> usize {
    32
}
fn d_scaling_factor() -> f64 {
    0.18215
}
fn d_true() -> bool {
    true
}

/// The eps of every VAE group norm (resnets, attention, output norms): diffusers hardcodes it.
pub const VAE_NORM_EPS: f64 = 1e-6;

impl VaeConfig {
    /// Rejects configurations this port does not implement, with the offending field named
    /// (the model's constructor calls it: no model is built from a config that fails it).
    pub fn validate(&self) -> crate::Result<()> {
        self.problem().map_err(|reason| crate::Error::config("vae/config.json", reason))
    }

    fn problem(&self) -> Result<(), String> {
        let n = self.block_out_channels.len();
        if n == 0 {
            return Err("block_out_channels is empty".into());
        }
        if self.down_block_types.len() != n || self.up_block_types.len() != n {
            return Err("down_block_types / up_block_types must have one entry per block_out_channels".into());
        }
        if let Some(t) = self.down_block_types.iter().find(|t| *t != "DownEncoderBlock2D") {
            return Err(format!("down block type {t} is not supported"));
        }
        if let Some(t) = self.up_block_types.iter().find(|t| *t != "UpDecoderBlock2D") {
            return Err(format!("up block type {t} is not supported"));
        }
        if self.act_fn != "silu" {
            return Err(format!("act_fn {} is not supported", self.act_fn));
        }
        if self.layers_per_block == 0 || self.latent_channels == 0 || self.in_channels == 0 || self.out_channels == 0 {
            return Err("layers_per_block, latent_channels, in_channels and out_channels must be positive".into());
        }
        if self.norm_num_groups == 0 {
            return Err("norm_num_groups must be positive".into());
        }
        for (i, &c) in self.block_out_channels.iter().enumerate() {
            if c == 0 || c % self.norm_num_groups != 0 {
                return Err(format!("block {i}: {c} channels not divisible by {} groups", self.norm_num_groups));
            }
        }
        Ok(())
    }

    /// The spatial factor between image and latent: one ×2 per block but the last.
    pub fn downscale(&self) -> usize {
        1 << (self.block_out_channels.len() - 1)
    }
}
