//! The VAE's encoder and decoder with diffusers' structure and key names, and their plain
//! (whole-tensor) forwards.

use burn::nn::GroupNorm;
use burn::tensor::Tensor;

use super::config::{VaeConfig, VAE_NORM_EPS};
use crate::models::attention::SpatialSelfAttention;
use crate::models::resnet::{Downsample2D, ResnetBlock2D, Upsample2D};
use crate::nn::{conv2d, conv_forward, group_norm, group_norm_silu, Conv2d};
use crate::weights::{VarBuilder, WeightsError};

/// `layers` resnets without time embedding, `c_in` → `c_out` in the first.
fn resnets(vb: &VarBuilder, layers: usize, c_in: usize, c_out: usize, groups: usize) -> Result<Vec<ResnetBlock2D>, WeightsError> {
    (0..layers)
        .map(|j| ResnetBlock2D::load(&vb.pp("resnets").pp(j), if j == 0 { c_in } else { c_out }, c_out, None, groups, VAE_NORM_EPS))
        .collect()
}

/// `DownEncoderBlock2D`: resnets, then (but in the last block) a stride-2 convolution.
#[derive(burn::module::Module, Debug)]
pub struct DownEncoderBlock2D {
    pub resnets: Vec<ResnetBlock2D>,
    pub downsampler: Option<Downsample2D>,
}

impl DownEncoderBlock2D {
    pub fn forward(&self, mut x: Tensor<4>) -> Tensor<4> {
        for r in &self.resnets {
            x = r.forward(x, None);
        }
        match &self.downsampler {
            Some(d) => d.forward(x),
            None => x,
        }
    }
}

/// `UpDecoderBlock2D`: resnets, then (but in the last block) nearest ×2 and a convolution.
#[derive(burn::module::Module, Debug)]
pub struct UpDecoderBlock2D {
    pub resnets: Vec<ResnetBlock2D>,
    pub upsampler: Option<Upsample2D>,
}

impl UpDecoderBlock2D {
    pub fn forward(&self, mut x: Tensor<4>) -> Tensor<4> {
        for r in &self.resnets {
            x = r.forward(x, None);
        }
        match &self.upsampler {
            Some(u) => u.forward(x, None),
            None => x,
        }
    }
}

/// `UNetMidBlock2D` without time embedding: resnet, (attention), resnet.
#[derive(burn::module::Module, Debug)]
pub struct VaeMidBlock {
    pub resnets: Vec<ResnetBlock2D>,
    pub attention: Option<SpatialSelfAttention>,
}

impl VaeMidBlock {
    pub fn load(vb: &VarBuilder, channels: usize, groups: usize, add_attention: bool) -> Result<Self, WeightsError> {
        Ok(Self {
            resnets: resnets(vb, 2, channels, channels, groups)?,
            attention: if add_attention {
                Some(SpatialSelfAttention::load(&vb.pp("attentions").pp(0), channels, groups, VAE_NORM_EPS)?)
            } else {
                None
            },
        })
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let mut x = self.resnets[0].forward(x, None);
        if let Some(a) = &self.attention {
            x = a.forward(x);
        }
        self.resnets[1].forward(x, None)
    }
}

/// diffusers' `Encoder` (double_z): image → `2·latent_channels` moments.
#[derive(burn::module::Module, Debug)]
pub struct Encoder {
    pub conv_in: Conv2d,
    pub down_blocks: Vec<DownEncoderBlock2D>,
    pub mid_block: VaeMidBlock,
    pub conv_norm_out: GroupNorm,
    pub conv_out: Conv2d,
}

impl Encoder {
    pub fn load(vb: &VarBuilder, cfg: &VaeConfig) -> Result<Self, WeightsError> {
        let boc = &cfg.block_out_channels;
        let (n, g) = (boc.len(), cfg.norm_num_groups);
        let mut down_blocks = Vec::with_capacity(n);
        for i in 0..n {
            let vbi = vb.pp("down_blocks").pp(i);
            let c_in = if i == 0 { boc[0] } else { boc[i - 1] };
            down_blocks.push(DownEncoderBlock2D {
                resnets: resnets(&vbi, cfg.layers_per_block, c_in, boc[i], g)?,
                // diffusers pads (0, 1, 0, 1) and convolves with padding 0.
                downsampler: if i + 1 < n { Some(Downsample2D::load(&vbi.pp("downsamplers").pp(0), boc[i], 0)?) } else { None },
            });
        }
        Ok(Self {
            conv_in: conv2d(&vb.pp("conv_in"), cfg.in_channels, boc[0], 3, 1, 1)?,
            down_blocks,
            mid_block: VaeMidBlock::load(&vb.pp("mid_block"), boc[n - 1], g, cfg.mid_block_add_attention)?,
            conv_norm_out: group_norm(&vb.pp("conv_norm_out"), g, boc[n - 1], VAE_NORM_EPS)?,
            conv_out: conv2d(&vb.pp("conv_out"), boc[n - 1], 2 * cfg.latent_channels, 3, 1, 1)?,
        })
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let mut h = conv_forward(&self.conv_in, x);
        for b in &self.down_blocks {
            h = b.forward(h);
        }
        h = self.mid_block.forward(h);
        conv_forward(&self.conv_out, group_norm_silu(&self.conv_norm_out, h))
    }
}

/// diffusers' `Decoder`: latent → image (raw, not clamped).
#[derive(burn::module::Module, Debug)]
pub struct Decoder {
    pub conv_in: Conv2d,
    pub mid_block: VaeMidBlock,
    pub up_blocks: Vec<UpDecoderBlock2D>,
    pub conv_norm_out: GroupNorm,
    pub conv_out: Conv2d,
}

impl Decoder {
    pub fn load(vb: &VarBuilder, cfg: &VaeConfig) -> Result<Self, WeightsError> {
        let rev: Vec<usize> = cfg.block_out_channels.iter().rev().copied().collect();
        let (n, g) = (rev.len(), cfg.norm_num_groups);
        let mut up_blocks = Vec::with_capacity(n);
        for i in 0..n {
            let vbi = vb.pp("up_blocks").pp(i);
            let c_in = if i == 0 { rev[0] } else { rev[i - 1] };
            up_blocks.push(UpDecoderBlock2D {
                resnets: resnets(&vbi, cfg.layers_per_block + 1, c_in, rev[i], g)?,
                upsampler: if i + 1 < n { Some(Upsample2D::load(&vbi.pp("upsamplers").pp(0), rev[i])?) } else { None },
            });
        }
        Ok(Self {
            conv_in: conv2d(&vb.pp("conv_in"), cfg.latent_channels, rev[0], 3, 1, 1)?,
            mid_block: VaeMidBlock::load(&vb.pp("mid_block"), rev[0], g, cfg.mid_block_add_attention)?,
            up_blocks,
            conv_norm_out: group_norm(&vb.pp("conv_norm_out"), g, rev[n - 1], VAE_NORM_EPS)?,
            conv_out: conv2d(&vb.pp("conv_out"), rev[n - 1], cfg.out_channels, 3, 1, 1)?,
        })
    }

    pub fn forward(&self, z: Tensor<4>) -> Tensor<4> {
        let mut h = conv_forward(&self.conv_in, z);
        h = self.mid_block.forward(h);
        for b in &self.up_blocks {
            h = b.forward(h);
        }
        conv_forward(&self.conv_out, group_norm_silu(&self.conv_norm_out, h))
    }
}
