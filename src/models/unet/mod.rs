//! `UNet2DConditionModel` as SD1.5 / LCM use it, sized entirely from `unet/config.json`.

mod blocks;
mod config;
mod embeddings;
mod transformer;

pub use blocks::{BlockSpec, DownBlock, MidBlock, UpBlock};
pub use config::{PerBlock, UNetConfig};
pub use embeddings::{guidance_scale_embedding, timestep_proj, TimestepEmbedding};
pub use transformer::{BasicTransformerBlock, FeedForward, Transformer2DModel};

use burn::nn::GroupNorm;
use burn::tensor::{Device, Tensor};

use crate::models::attention::{AttentionController, NoControl};
use crate::models::resnet::TimeShare;
use crate::nn::{conv2d, conv_forward, fuse_linears, group_norm, group_norm_silu, silu, Conv2d, Linear};
use crate::weights::VarBuilder;

/// What a UNet call's cross-attentions read of the text context, computed once per context:
/// each transformer block's keys and values (`[B, heads, 77, d]`), by block index.
#[derive(Clone, Debug)]
pub struct UNetContext {
    pub kv: Vec<(Tensor<4>, Tensor<4>)>,
}

#[derive(burn::module::Module, Debug)]
pub struct UNet2DConditionModel {
    pub conv_in: Conv2d,
    pub time_embedding: TimestepEmbedding,
    pub down_blocks: Vec<DownBlock>,
    pub mid_block: MidBlock,
    pub up_blocks: Vec<UpBlock>,
    pub conv_norm_out: GroupNorm,
    pub conv_out: Conv2d,
    /// Every resnet's `time_emb_proj`, side by side (one matmul per call, not one per resnet),
    /// with each one's offset in its output, in call order (down, mid, up).
    pub time_emb_projs: Linear,
    pub time_emb_offsets: Vec<usize>,
    /// Number of self-attentions (transformer blocks), in call order.
    pub num_self_attentions: usize,
    pub time_proj_dim: usize,
    pub flip_sin_to_cos: bool,
    pub freq_shift: usize,
}

impl UNet2DConditionModel {
    /// Builds the UNet from its weights (after [`UNetConfig::validate`]).
    pub fn load(vb: &VarBuilder, cfg: &UNetConfig) -> crate::Result<Self> {
        cfg.validate()?;
        let boc = &cfg.block_out_channels;
        let n = boc.len();
        let temb = cfg.time_embed_dim();
        let spec = |i: usize, with_attention: bool| BlockSpec {
            temb,
            groups: cfg.norm_num_groups,
            eps: cfg.norm_eps,
            heads: cfg.heads(i),
            transformer_layers: cfg.transformer_layers_per_block.get(i),
            cross_dim: cfg.cross_attention_dim,
            with_attention,
        };
        let mut next_self_attn = 0;
        let conv_in = conv2d(&vb.pp("conv_in"), cfg.in_channels, boc[0], 3, 1, 1)?;
        let time_embedding = TimestepEmbedding::load(&vb.pp("time_embedding"), boc[0], temb, cfg.time_cond_proj_dim)?;

        let mut down_blocks: Vec<DownBlock> = Vec::with_capacity(n);
        let mut c_out = boc[0];
        for (i, kind) in cfg.down_block_types.iter().enumerate() {
            let c_in = c_out;
            c_out = boc[i];
            let last = i == n - 1;
            down_blocks.push(DownBlock::load(
                &vb.pp("down_blocks").pp(i),
                &spec(i, kind == "CrossAttnDownBlock2D"),
                c_in,
                c_out,
                cfg.layers_per_block,
                (!last).then_some(cfg.downsample_padding),
                &mut next_self_attn,
            )?);
        }

        let mut mid_block = MidBlock::load(&vb.pp("mid_block"), &spec(n - 1, true), boc[n - 1], &mut next_self_attn)?;

        let mut up_blocks: Vec<UpBlock> = Vec::with_capacity(n);
        let rev: Vec<usize> = boc.iter().rev().copied().collect();
        let mut c_out = rev[0];
        for (i, kind) in cfg.up_block_types.iter().enumerate() {
            let c_prev = c_out;
            c_out = rev[i];
            let c_skip_in = rev[(i + 1).min(n - 1)];
            up_blocks.push(UpBlock::load(
                &vb.pp("up_blocks").pp(i),
                &spec(n - 1 - i, kind == "CrossAttnUpBlock2D"),
                c_skip_in,
                c_prev,
                c_out,
                cfg.layers_per_block + 1,
                i != n - 1,
                &mut next_self_attn,
            )?);
        }

        // The resnets' time projections, fused (taken out of the resnets, in call order).
        let resnets = down_blocks
            .iter_mut()
            .flat_map(|b| b.resnets.iter_mut())
            .chain(mid_block.resnets.iter_mut())
            .chain(up_blocks.iter_mut().flat_map(|b| b.resnets.iter_mut()));
        let projs = resnets.map(|r| r.time_emb_proj.take().expect("UNet resnets project the time embedding")).collect();
        let (time_emb_projs, ranges) = fuse_linears(projs);
        let time_emb_offsets = ranges.into_iter().map(|(offset, _)| offset).collect();

        Ok(Self {
            conv_in,
            time_embedding,
            down_blocks,
            mid_block,
            up_blocks,
            time_emb_projs,
            time_emb_offsets,
            conv_norm_out: group_norm(&vb.pp("conv_norm_out"), cfg.norm_num_groups, boc[0], cfg.norm_eps)?,
            conv_out: conv2d(&vb.pp("conv_out"), boc[0], cfg.out_channels, 3, 1, 1)?,
            num_self_attentions: next_self_attn,
            time_proj_dim: boc[0],
            flip_sin_to_cos: cfg.flip_sin_to_cos,
            freq_shift: cfg.freq_shift,
        })
    }

    /// The time embedding `[B, 4·C0]` of one timestep per item; `condition` is the LCM
    /// guidance embedding (`time_cond_proj_dim` wide), `None` as ZePo's reference passes.
    pub fn time_embedding(&self, timesteps: &[f32], condition: Option<Tensor<2>>, device: &Device) -> Tensor<2> {
        let proj = timestep_proj(timesteps, self.time_proj_dim, self.flip_sin_to_cos, self.freq_shift as f64, device);
        self.time_embedding.forward(proj, condition)
    }

    /// The cross-attention keys and values of `context` `[B, 77, D]`, for any number of calls
    /// with it.
    pub fn context(&self, context: &Tensor<3>) -> UNetContext {
        let blocks = self
            .down_blocks
            .iter()
            .flat_map(|b| &b.attentions)
            .chain(&self.mid_block.attentions)
            .chain(self.up_blocks.iter().flat_map(|b| &b.attentions))
            .flat_map(|t| &t.transformer_blocks);
        let mut kv: Vec<(usize, (Tensor<4>, Tensor<4>))> = blocks.map(|b| (b.self_attn_index, b.attn2.kv(context.clone()))).collect();
        kv.sort_by_key(|(i, _)| *i);
        UNetContext { kv: kv.into_iter().map(|(_, kv)| kv).collect() }
    }

    /// Predicted noise for `sample` `[B, C, h, w]` at one timestep per item, conditioned on
    /// `context` `[B, 77, D]`.
    pub fn forward(&self, sample: Tensor<4>, timesteps: &[f32], context: &Tensor<3>) -> Tensor<4> {
        self.forward_controlled(sample, timesteps, &self.context(context), None, &mut NoControl)
    }

    /// [`Self::forward`] with an optional guidance condition and a controller that may take
    /// over self-attentions.
    pub fn forward_controlled(
        &self,
        sample: Tensor<4>,
        timesteps: &[f32],
        context: &UNetContext,
        condition: Option<Tensor<2>>,
        ctrl: &mut dyn AttentionController,
    ) -> Tensor<4> {
        assert_eq!(sample.dims()[0], timesteps.len(), "one timestep per batch item");
        let temb = self.time_embedding(timesteps, condition, &sample.device());
        // Every resnet's projection of silu(temb), in one matmul.
        let all = self.time_emb_projs.forward(silu(temb));
        let mut temb = self.time_emb_offsets.iter().map(|&offset| TimeShare { all: &all, offset });
        let mut take = |n: usize| -> Vec<TimeShare<'_>> { temb.by_ref().take(n).collect() };
        let mut h = conv_forward(&self.conv_in, sample);
        let mut skips = vec![h.clone()];
        for block in &self.down_blocks {
            h = block.forward(h, &take(block.resnets.len()), context, &mut skips, ctrl);
        }
        h = self.mid_block.forward(h, &take(self.mid_block.resnets.len()), context, ctrl);
        for block in &self.up_blocks {
            h = block.forward(h, &take(block.resnets.len()), context, &mut skips, ctrl);
        }
        conv_forward(&self.conv_out, group_norm_silu(&self.conv_norm_out, h))
    }
}
