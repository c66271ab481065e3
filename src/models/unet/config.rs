//! `unet/config.json`, as diffusers reads it.

use serde::Deserialize;

/// An int for every block, or one int for all (diffusers accepts both).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum PerBlock {
    One(usize),
    Each(Vec<usize>),
}

impl PerBlock {
    pub fn get(&self, i: usize) -> usize {
        match self {
            PerBlock::One(v) => *v,
            PerBlock::Each(v) => v[i],
        }
    }
}

/// The fields of `UNet2DConditionModel`'s config that SD1.5-style checkpoints use.
#[derive(Debug, Clone, Deserialize)]
pub struct UNetConfig {
    #[serde(default = "d_in_channels")]
    pub in_channels: usize,
    #[serde(default = "d_in_channels")]
    pub out_channels: usize,
    pub block_out_channels: Vec<usize>,
    pub down_block_types: Vec<String>,
    pub up_block_types: Vec<String>,
    #[serde(default = "d_mid_block_type")]
    pub mid_block_type: Option<String>,
    #[serde(default = "d_layers_per_block")]
    pub layers_per_block: usize,
    /// diffusers' misnomer: with `num_attention_heads` unset this is the number of heads.
    #[serde(default = "d_attention_head_dim")]
    pub attention_head_dim: PerBlock,
    #[serde(default)]
    pub num_attention_heads: Option<PerBlock>,
    pub cross_attention_dim: usize,
    #[serde(default = "d_norm_num_groups")]
    pub norm_num_groups: usize,
    #[serde(default = "d_norm_eps")]
    pub norm_eps: f64,
    #[serde(default = "d_downsample_padding")]
    pub downsample_padding: usize,
    #[serde(default = "d_true")]
    pub flip_sin_to_cos: bool,
    #[serde(default)]
    pub freq_shift: usize,
    #[serde(default)]
    pub time_cond_proj_dim: Option<usize>,
    #[serde(default = "d_transformer_layers")]
    pub transformer_layers_per_block: PerBlock,
    #[serde(default)]
    pub use_linear_projection: bool,
    #[serde(default)]
    pub only_cross_attention: bool,
    #[serde(default)]
    pub upcast_attention: bool,
    #[serde(default = "d_one")]
    pub mid_block_scale_factor: f64,
    #[serde(default = "d_act")]
    pub act_fn: String,
    #[serde(default)]
    pub sample_size: Option<usize>,
    #[serde(default)]
    pub addition_embed_type: Option<String>,
    #[serde(default)]
    pub class_embed_type: Option<String>,
    #[serde(default = "d_conv_kernel")]
    pub conv_in_kernel: usize,
    #[serde(default = "d_conv_kernel")]
    pub conv_out_kernel: usize,
    #[serde(default = "d_tet")]
    pub time_embedding_type: String,
    #[serde(default = "d_rtss")]
    pub resnet_time_scale_shift: String,
}

fn d_in_channels() -> usize {
    4
}
fn d_mid_block_type() -> Option<String> {
    Some("UNetMidBlock2DCrossAttn".into())
}
fn d_layers_per_block() -> usize {
    2
}
fn d_attention_head_dim() -> PerBlock {
    PerBlock::One(8)
}
fn d_norm_num_groups() -> usize {
    32
}
fn d_norm_eps() -> f64 {
    1e-5
}
fn d_downsample_padding() -> usize {
    1
}
fn d_true() -> bool {
    true
}
fn d_transformer_layers() -> PerBlock {
    PerBlock::One(1)
}
fn d_one() -> f64 {
    1.0
}
fn d_act() -> String {
    "silu".into()
}
fn d_conv_kernel() -> usize {
    3
}
fn d_tet() -> String {
    "positional".into()
}
fn d_rtss() -> String {
    "default".into()
}

impl UNetConfig {
    /// Heads of block `i` (down-block order).
    pub fn heads(&self, i: usize) -> usize {
        self.num_attention_heads.as_ref().unwrap_or(&self.attention_head_dim).get(i)
    }

    pub fn time_embed_dim(&self) -> usize {
        self.block_out_channels[0] * 4
    }

    /// Rejects configurations this port does not implement, with the offending field named
    /// (the model's constructor calls it: no model is built from a config that fails it).
    pub fn validate(&self) -> crate::Result<()> {
        self.problem().map_err(|reason| crate::Error::config("unet/config.json", reason))
    }

    fn problem(&self) -> Result<(), String> {
        let n = self.block_out_channels.len();
        if self.down_block_types.len() != n || self.up_block_types.len() != n {
            return Err("down_block_types / up_block_types must have one entry per block_out_channels".into());
        }
        for t in &self.down_block_types {
            if t != "CrossAttnDownBlock2D" && t != "DownBlock2D" {
                return Err(format!("down block type {t} is not supported"));
            }
        }
        for t in &self.up_block_types {
            if t != "CrossAttnUpBlock2D" && t != "UpBlock2D" {
                return Err(format!("up block type {t} is not supported"));
            }
        }
        if self.mid_block_type.as_deref() != Some("UNetMidBlock2DCrossAttn") {
            return Err(format!("mid block type {:?} is not supported", self.mid_block_type));
        }
        let unsupported = [
            (self.use_linear_projection, "use_linear_projection"),
            (self.only_cross_attention, "only_cross_attention"),
            (self.addition_embed_type.is_some(), "addition_embed_type"),
            (self.class_embed_type.is_some(), "class_embed_type"),
            (self.act_fn != "silu", "act_fn other than silu"),
            (self.time_embedding_type != "positional", "time_embedding_type other than positional"),
            (self.resnet_time_scale_shift != "default", "resnet_time_scale_shift other than default"),
            (self.conv_in_kernel != 3 || self.conv_out_kernel != 3, "conv kernels other than 3"),
            (self.mid_block_scale_factor != 1.0, "mid_block_scale_factor other than 1"),
        ];
        if let Some((_, what)) = unsupported.iter().find(|(bad, _)| *bad) {
            return Err(format!("{what} is not supported"));
        }
        for i in 0..n {
            if self.block_out_channels[i] % self.heads(i) != 0 {
                return Err(format!("block {i}: {} channels not divisible by {} heads", self.block_out_channels[i], self.heads(i)));
            }
            if self.block_out_channels[i] % self.norm_num_groups != 0 {
                return Err(format!("block {i}: {} channels not divisible by {} groups", self.block_out_channels[i], self.norm_num_groups));
            }
        }
        Ok(())
    }
}
