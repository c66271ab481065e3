//! diffusers' `ResnetBlock2D`, `Downsample2D` and `Upsample2D`, shared by the UNet and the VAE.

use burn::nn::GroupNorm;
use burn::tensor::module::interpolate;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};
use burn::tensor::Tensor;

use crate::nn::{conv2d, conv2d_padded, conv_forward, group_norm, group_norm_silu, group_norm_silu_add, linear, Conv2d, Linear};
use crate::weights::{VarBuilder, WeightsError};

/// A resnet's time embedding: columns `offset..offset + c_out` of the UNet's projection of all
/// its resnets' at once, `all` `[B, Σ c_out]`.
#[derive(Clone, Copy)]
pub struct TimeShare<'a> {
    pub all: &'a Tensor<2>,
    pub offset: usize,
}

/// `ResnetBlock2D` (time_embedding_norm "default", output_scale_factor 1).
#[derive(burn::module::Module, Debug)]
pub struct ResnetBlock2D {
    pub norm1: GroupNorm,
    pub conv1: Conv2d,
    /// Projection of the time embedding (UNet only; the VAE has none). The UNet takes it out at
    /// load and fuses all its resnets' into one (see `forward`).
    pub time_emb_proj: Option<Linear>,
    pub norm2: GroupNorm,
    pub conv2: Conv2d,
    /// 1×1 convolution when the channel count changes.
    pub conv_shortcut: Option<Conv2d>,
}

impl ResnetBlock2D {
    pub fn load(
        vb: &VarBuilder,
        c_in: usize,
        c_out: usize,
        temb_channels: Option<usize>,
        groups: usize,
        eps: f64,
    ) -> Result<Self, WeightsError> {
        Ok(Self {
            norm1: group_norm(&vb.pp("norm1"), groups, c_in, eps)?,
            conv1: conv2d(&vb.pp("conv1"), c_in, c_out, 3, 1, 1)?,
            time_emb_proj: temb_channels.map(|t| linear(&vb.pp("time_emb_proj"), t, c_out, true)).transpose()?,
            norm2: group_norm(&vb.pp("norm2"), groups, c_out, eps)?,
            conv2: conv2d(&vb.pp("conv2"), c_out, c_out, 3, 1, 1)?,
            conv_shortcut: if c_in != c_out { Some(conv2d(&vb.pp("conv_shortcut"), c_in, c_out, 1, 1, 0)?) } else { None },
        })
    }

    /// `temb`: the time embedding already projected to this block's width (its
    /// `time_emb_proj` of `silu(temb)`: the UNet projects all its resnets' at once), or `None`
    /// in the VAE.
    pub fn forward(&self, x: Tensor<4>, temb: Option<TimeShare<'_>>) -> Tensor<4> {
        let h = conv_forward(&self.conv1, group_norm_silu(&self.norm1, x.clone()));
        let h = match temb {
            Some(t) => group_norm_silu_add(&self.norm2, h, t.all, t.offset),
            None => group_norm_silu(&self.norm2, h),
        };
        let h = conv_forward(&self.conv2, h);
        let x = match &self.conv_shortcut {
            Some(conv) => conv_forward(conv, x),
            None => x,
        };
        x + h
    }
}

/// `Downsample2D` with a convolution: stride 2, padding 1 in the UNet; in the VAE padding 0
/// after padding the right and bottom by one (diffusers pads `(0, 1, 0, 1)`).
#[derive(burn::module::Module, Debug)]
pub struct Downsample2D {
    pub conv: Conv2d,
}

impl Downsample2D {
    pub fn load(vb: &VarBuilder, channels: usize, padding: usize) -> Result<Self, WeightsError> {
        let pad = if padding == 0 {
            [0, 0, 1, 1]
        } else {
            [padding; 4]
        };
        Ok(Self { conv: conv2d_padded(&vb.pp("conv"), channels, channels, 3, 2, pad)? })
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        conv_forward(&self.conv, x)
    }
}

/// `Upsample2D`: nearest ×2 (or to the skip connection's size), then a 3×3 convolution.
#[derive(burn::module::Module, Debug)]
pub struct Upsample2D {
    pub conv: Conv2d,
}

impl Upsample2D {
    pub fn load(vb: &VarBuilder, channels: usize) -> Result<Self, WeightsError> {
        Ok(Self { conv: conv2d(&vb.pp("conv"), channels, channels, 3, 1, 1)? })
    }

    /// `size`: the output's `[h, w]`; `None` doubles.
    pub fn forward(&self, x: Tensor<4>, size: Option<[usize; 2]>) -> Tensor<4> {
        let [_, _, h, w] = x.dims();
        let size = size.unwrap_or([h * 2, w * 2]);
        let x = interpolate(x, InterpolateOptions::new(InterpolateMode::Nearest).with_output_size(size));
        conv_forward(&self.conv, x)
    }
}
