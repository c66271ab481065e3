//! The UNet's down, mid and up blocks (`CrossAttnDownBlock2D`, `DownBlock2D`,
//! `UNetMidBlock2DCrossAttn`, `UpBlock2D`, `CrossAttnUpBlock2D`): one type each way, with the
//! attentions present or not.

use burn::tensor::Tensor;

use super::transformer::Transformer2DModel;
use super::UNetContext;
use crate::models::attention::AttentionController;
use crate::models::resnet::{Downsample2D, ResnetBlock2D, TimeShare, Upsample2D};
use crate::weights::{VarBuilder, WeightsError};

/// What every block shares: resnet width settings and the attention shape.
pub struct BlockSpec {
    pub temb: usize,
    pub groups: usize,
    pub eps: f64,
    pub heads: usize,
    pub transformer_layers: usize,
    pub cross_dim: usize,
    pub with_attention: bool,
}

impl BlockSpec {
    fn attention(&self, vb: &VarBuilder, channels: usize, next_self_attn: &mut usize) -> Result<Option<Transformer2DModel>, WeightsError> {
        if !self.with_attention {
            return Ok(None);
        }
        Transformer2DModel::load(vb, channels, self.heads, self.transformer_layers, self.cross_dim, self.groups, next_self_attn).map(Some)
    }
}

/// A down block: `layers` resnets (each followed by a transformer when cross-attention is on)
/// and an optional stride-2 downsampler.
#[derive(burn::module::Module, Debug)]
pub struct DownBlock {
    pub resnets: Vec<ResnetBlock2D>,
    pub attentions: Vec<Transformer2DModel>,
    pub downsampler: Option<Downsample2D>,
}

impl DownBlock {
    #[allow(clippy::too_many_arguments)]
    pub fn load(
        vb: &VarBuilder,
        spec: &BlockSpec,
        c_in: usize,
        c_out: usize,
        layers: usize,
        downsample_padding: Option<usize>,
        next_self_attn: &mut usize,
    ) -> Result<Self, WeightsError> {
        let mut resnets = Vec::new();
        let mut attentions = Vec::new();
        for j in 0..layers {
            let c = if j == 0 { c_in } else { c_out };
            resnets.push(ResnetBlock2D::load(&vb.pp("resnets").pp(j), c, c_out, Some(spec.temb), spec.groups, spec.eps)?);
            attentions.extend(spec.attention(&vb.pp("attentions").pp(j), c_out, next_self_attn)?);
        }
        let downsampler = downsample_padding.map(|p| Downsample2D::load(&vb.pp("downsamplers").pp(0), c_out, p)).transpose()?;
        Ok(Self { resnets, attentions, downsampler })
    }

    /// Returns the output and pushes every intermediate state onto the skip stack. `temb`: each
    /// resnet's projected time embedding.
    pub fn forward(
        &self,
        mut h: Tensor<4>,
        temb: &[TimeShare<'_>],
        context: &UNetContext,
        skips: &mut Vec<Tensor<4>>,
        ctrl: &mut dyn AttentionController,
    ) -> Tensor<4> {
        for (j, resnet) in self.resnets.iter().enumerate() {
            h = resnet.forward(h, Some(temb[j]));
            if let Some(attn) = self.attentions.get(j) {
                h = attn.forward(h, context, ctrl);
            }
            skips.push(h.clone());
        }
        if let Some(down) = &self.downsampler {
            h = down.forward(h);
            skips.push(h.clone());
        }
        h
    }
}

/// `UNetMidBlock2DCrossAttn`: resnet, then (transformer, resnet) pairs.
#[derive(burn::module::Module, Debug)]
pub struct MidBlock {
    pub resnets: Vec<ResnetBlock2D>,
    pub attentions: Vec<Transformer2DModel>,
}

impl MidBlock {
    pub fn load(vb: &VarBuilder, spec: &BlockSpec, channels: usize, next_self_attn: &mut usize) -> Result<Self, WeightsError> {
        let resnet = |j: usize| ResnetBlock2D::load(&vb.pp("resnets").pp(j), channels, channels, Some(spec.temb), spec.groups, spec.eps);
        let mut resnets = vec![resnet(0)?];
        let mut attentions = Vec::new();
        attentions.extend(spec.attention(&vb.pp("attentions").pp(0), channels, next_self_attn)?);
        resnets.push(resnet(1)?);
        Ok(Self { resnets, attentions })
    }

    pub fn forward(&self, h: Tensor<4>, temb: &[TimeShare<'_>], context: &UNetContext, ctrl: &mut dyn AttentionController) -> Tensor<4> {
        let mut h = self.resnets[0].forward(h, Some(temb[0]));
        for (j, (attn, resnet)) in self.attentions.iter().zip(&self.resnets[1..]).enumerate() {
            h = attn.forward(h, context, ctrl);
            h = resnet.forward(h, Some(temb[j + 1]));
        }
        h
    }
}

/// An up block: `layers` resnets over `[h, skip]` concatenations (each followed by a
/// transformer when cross-attention is on) and an optional upsampler.
#[derive(burn::module::Module, Debug)]
pub struct UpBlock {
    pub resnets: Vec<ResnetBlock2D>,
    pub attentions: Vec<Transformer2DModel>,
    pub upsampler: Option<Upsample2D>,
}

impl UpBlock {
    /// `c_prev`: channels coming from below; `c_skip_in`: channels of the deepest skip this
    /// block consumes last (the block input width in diffusers' terms).
    #[allow(clippy::too_many_arguments)]
    pub fn load(
        vb: &VarBuilder,
        spec: &BlockSpec,
        c_skip_in: usize,
        c_prev: usize,
        c_out: usize,
        layers: usize,
        upsample: bool,
        next_self_attn: &mut usize,
    ) -> Result<Self, WeightsError> {
        let mut resnets = Vec::new();
        let mut attentions = Vec::new();
        for j in 0..layers {
            let skip = if j == layers - 1 { c_skip_in } else { c_out };
            let c = if j == 0 { c_prev } else { c_out };
            resnets.push(ResnetBlock2D::load(&vb.pp("resnets").pp(j), c + skip, c_out, Some(spec.temb), spec.groups, spec.eps)?);
            attentions.extend(spec.attention(&vb.pp("attentions").pp(j), c_out, next_self_attn)?);
        }
        let upsampler = if upsample { Some(Upsample2D::load(&vb.pp("upsamplers").pp(0), c_out)?) } else { None };
        Ok(Self { resnets, attentions, upsampler })
    }

    /// Consumes one skip per resnet from the top of the stack; upsamples to the size of the
    /// next skip (so odd latent sizes come back exactly).
    pub fn forward(
        &self,
        mut h: Tensor<4>,
        temb: &[TimeShare<'_>],
        context: &UNetContext,
        skips: &mut Vec<Tensor<4>>,
        ctrl: &mut dyn AttentionController,
    ) -> Tensor<4> {
        for (j, resnet) in self.resnets.iter().enumerate() {
            let skip = skips.pop().expect("one skip per up resnet");
            h = resnet.forward(Tensor::cat(vec![h, skip], 1), Some(temb[j]));
            if let Some(attn) = self.attentions.get(j) {
                h = attn.forward(h, context, ctrl);
            }
        }
        if let Some(up) = &self.upsampler {
            let size = skips.last().map(|s| {
                let [_, _, hh, ww] = s.dims();
                [hh, ww]
            });
            h = up.forward(h, size);
        }
        h
    }
}
