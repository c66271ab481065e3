//! `Transformer2DModel` (conv proj_in/out) and its `BasicTransformerBlock`s: self-attention
//! (the one an [`AttentionController`] may take over), cross-attention, GEGLU feed-forward.

use burn::nn::GroupNorm;
use burn::tensor::Tensor;

use super::UNetContext;
use crate::models::attention::{Attention, AttentionController, SelfAttentionCall};
use crate::nn::{conv2d, conv_forward, from_tokens, group_norm, group_norm_forward, linear, linear_geglu, to_tokens, Conv2d, LayerNorm, Linear};
use crate::weights::{VarBuilder, WeightsError};

/// Largest feed-forward projection computed at once (f32 bytes).
const FF_CHUNK_BYTES: usize = 64 << 20;

/// GEGLU feed-forward: `net.0.proj` to 2×4·dim, `x·gelu(gate)`, `net.2` back to dim.
#[derive(burn::module::Module, Debug)]
pub struct FeedForward {
    pub proj: Linear,
    pub out: Linear,
}

impl FeedForward {
    pub fn load(vb: &VarBuilder, dim: usize) -> Result<Self, WeightsError> {
        let inner = dim * 4;
        Ok(Self {
            proj: linear(&vb.pp("net").pp(0).pp("proj"), dim, inner * 2, true)?,
            out: linear(&vb.pp("net").pp(2), inner, dim, true)?,
        })
    }

    /// Token by token, so long sequences run in chunks: the 8·dim-wide projection of a
    /// 512² batch would otherwise be one of the largest buffers (a WebGPU binding is capped at
    /// 128 MiB). Chunking is exact: nothing mixes tokens here.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let [b, n, _] = x.dims();
        let wide = self.proj.d_out();
        let rows = (FF_CHUNK_BYTES / (b * wide * 4).max(1)).max(1);
        if n <= rows {
            return self.forward_chunk(x);
        }
        let chunks = (0..n).step_by(rows).map(|s| self.forward_chunk(x.clone().narrow(1, s, rows.min(n - s)))).collect();
        Tensor::cat(chunks, 1)
    }

    fn forward_chunk(&self, x: Tensor<3>) -> Tensor<3> {
        self.out.forward(linear_geglu(&self.proj, x))
    }
}

/// `BasicTransformerBlock` (layer norms, self-attention, cross-attention, feed-forward).
#[derive(burn::module::Module, Debug)]
pub struct BasicTransformerBlock {
    pub norm1: LayerNorm,
    pub attn1: Attention,
    pub norm2: LayerNorm,
    pub attn2: Attention,
    pub norm3: LayerNorm,
    pub ff: FeedForward,
    /// This block's index among the UNet's self-attentions, in call order.
    pub self_attn_index: usize,
}

impl BasicTransformerBlock {
    pub fn load(vb: &VarBuilder, dim: usize, heads: usize, cross_dim: usize, self_attn_index: usize) -> Result<Self, WeightsError> {
        let head_dim = dim / heads;
        Ok(Self {
            norm1: LayerNorm::load(&vb.pp("norm1"), dim, 1e-5)?,
            attn1: Attention::load(&vb.pp("attn1"), dim, dim, heads, head_dim, false)?,
            norm2: LayerNorm::load(&vb.pp("norm2"), dim, 1e-5)?,
            attn2: Attention::load(&vb.pp("attn2"), dim, cross_dim, heads, head_dim, false)?,
            norm3: LayerNorm::load(&vb.pp("norm3"), dim, 1e-5)?,
            ff: FeedForward::load(&vb.pp("ff"), dim)?,
            self_attn_index,
        })
    }

    /// `context`: the call's cross-attention keys and values, this block's at its index.
    pub fn forward(&self, x: Tensor<3>, context: &UNetContext, hw: [usize; 2], ctrl: &mut dyn AttentionController) -> Tensor<3> {
        let hidden = self.norm1.forward(x.clone());
        let call =
            SelfAttentionCall { layer: self.self_attn_index, attn: &self.attn1, hidden: hidden.clone(), height: hw[0], width: hw[1] };
        let attn = match ctrl.self_attention(call) {
            Some(out) => self.attn1.to_out.forward(out),
            None => self.attn1.forward(hidden, None),
        };
        let x = attn + x;
        let (k, v) = &context.kv[self.self_attn_index];
        let x = self.attn2.forward_with_kv(self.norm2.forward(x.clone()), k.clone(), v.clone()) + x;
        self.ff.forward(self.norm3.forward(x.clone())) + x
    }
}

/// `Transformer2DModel` with convolutional `proj_in` / `proj_out` (SD1.5).
#[derive(burn::module::Module, Debug)]
pub struct Transformer2DModel {
    pub norm: GroupNorm,
    pub proj_in: Conv2d,
    pub transformer_blocks: Vec<BasicTransformerBlock>,
    pub proj_out: Conv2d,
}

impl Transformer2DModel {
    /// `next_self_attn`: the running self-attention counter, advanced by this model's blocks.
    pub fn load(
        vb: &VarBuilder,
        channels: usize,
        heads: usize,
        layers: usize,
        cross_dim: usize,
        groups: usize,
        next_self_attn: &mut usize,
    ) -> Result<Self, WeightsError> {
        let mut blocks = Vec::with_capacity(layers);
        for k in 0..layers {
            blocks.push(BasicTransformerBlock::load(&vb.pp("transformer_blocks").pp(k), channels, heads, cross_dim, *next_self_attn)?);
            *next_self_attn += 1;
        }
        Ok(Self {
            // diffusers hard-codes eps 1e-6 here, whatever the UNet's norm_eps.
            norm: group_norm(&vb.pp("norm"), groups, channels, 1e-6)?,
            proj_in: conv2d(&vb.pp("proj_in"), channels, channels, 1, 1, 0)?,
            transformer_blocks: blocks,
            proj_out: conv2d(&vb.pp("proj_out"), channels, channels, 1, 1, 0)?,
        })
    }

    pub fn forward(&self, x: Tensor<4>, context: &UNetContext, ctrl: &mut dyn AttentionController) -> Tensor<4> {
        let [_, _, h, w] = x.dims();
        let residual = x.clone();
        let mut hs = to_tokens(conv_forward(&self.proj_in, group_norm_forward(&self.norm, x)));
        for block in &self.transformer_blocks {
            hs = block.forward(hs, context, [h, w], ctrl);
        }
        conv_forward(&self.proj_out, from_tokens(hs, h, w)) + residual
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, Distribution};

    #[test]
    fn chunked_feed_forward_equals_whole() {
        let device = Device::flex();
        let lin = |i: usize, o: usize| {
            Linear::dense(
                Tensor::random([i, o], Distribution::Normal(0.0, 0.1), &device),
                Some(Tensor::random([o], Distribution::Normal(0.0, 0.1), &device)),
            )
        };
        let ff = FeedForward { proj: lin(8, 64), out: lin(32, 8) };
        // 3 × 1.5M tokens × 64 wide × 4 B > FF_CHUNK_BYTES: runs in several chunks.
        let n = FF_CHUNK_BYTES / (3 * 64 * 4) * 5 / 2;
        let x = Tensor::<3>::random([3, n, 8], Distribution::Normal(0.0, 1.0), &device);
        let whole = ff.forward_chunk(x.clone()).into_data();
        let chunked = ff.forward(x).into_data();
        assert_eq!(whole, chunked);
    }
}
