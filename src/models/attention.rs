//! diffusers' `Attention` (to_q / to_k / to_v / to_out.0), used by the UNet's transformer blocks
//! (self- and cross-attention) and the VAE's mid-block, and the hook through which a caller
//! may take over a UNet self-attention ([`AttentionController`]).

use burn::nn::GroupNorm;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::Tensor;

use crate::nn::{group_norm, linear, Linear};
use crate::weights::{VarBuilder, WeightsError};

/// Multi-head scaled dot-product attention with diffusers' parameter names.
#[derive(burn::module::Module, Debug)]
pub struct Attention {
    pub to_q: Linear,
    pub to_k: Linear,
    pub to_v: Linear,
    pub to_out: Linear,
    pub heads: usize,
    pub head_dim: usize,
}

impl Attention {
    /// `query_dim` → `heads × head_dim`, keys and values from `context_dim` (cross-attention)
    /// or `query_dim` (self-attention). `qkv_bias`: the VAE's projections have biases, the
    /// UNet's do not.
    pub fn load(
        vb: &VarBuilder,
        query_dim: usize,
        context_dim: usize,
        heads: usize,
        head_dim: usize,
        qkv_bias: bool,
    ) -> Result<Self, WeightsError> {
        let inner = heads * head_dim;
        Ok(Self {
            to_q: linear(&vb.pp("to_q"), query_dim, inner, qkv_bias)?,
            to_k: linear(&vb.pp("to_k"), context_dim, inner, qkv_bias)?,
            to_v: linear(&vb.pp("to_v"), context_dim, inner, qkv_bias)?,
            to_out: linear(&vb.pp("to_out").pp(0), inner, query_dim, true)?,
            heads,
            head_dim,
        })
    }

    /// `[B, N, heads·d]` → `[B, heads, N, d]`.
    pub fn split_heads(&self, x: Tensor<3>) -> Tensor<4> {
        let [b, n, _] = x.dims();
        x.reshape([b, n, self.heads, self.head_dim]).swap_dims(1, 2)
    }

    /// `[B, heads, N, d]` → `[B, N, heads·d]`.
    pub fn merge_heads(&self, x: Tensor<4>) -> Tensor<3> {
        let [b, h, n, d] = x.dims();
        x.swap_dims(1, 2).reshape([b, n, h * d])
    }

    /// softmax(q·kᵀ/√d)·v on `[B, N, heads·d]` projections, output `[B, N, heads·d]`
    /// (before `to_out`). burn's fused kernel on wgpu never materialises the scores.
    pub fn attend(&self, q: Tensor<3>, k: Tensor<3>, v: Tensor<3>) -> Tensor<3> {
        self.merge_heads(attend_heads(self.split_heads(q), self.split_heads(k), self.split_heads(v)))
    }

    /// The keys and values of `context` `[B, M, C]`, split in heads `[B, heads, M, d]`: what
    /// [`Attention::forward_with_kv`] takes (a cross-attention's context is the same at every
    /// step: computed once).
    pub fn kv(&self, context: Tensor<3>) -> (Tensor<4>, Tensor<4>) {
        (self.split_heads(self.to_k.forward(context.clone())), self.split_heads(self.to_v.forward(context)))
    }

    /// Attention of `x` `[B, N, C]` over keys and values from [`Attention::kv`], including
    /// `to_out`.
    pub fn forward_with_kv(&self, x: Tensor<3>, k: Tensor<4>, v: Tensor<4>) -> Tensor<3> {
        let q = self.split_heads(self.to_q.forward(x));
        self.to_out.forward(self.merge_heads(attend_heads(q, k, v)))
    }

    /// Plain attention of `x` `[B, N, C]` over `context` (or itself), including `to_out`.
    pub fn forward(&self, x: Tensor<3>, context: Option<Tensor<3>>) -> Tensor<3> {
        let context = context.unwrap_or_else(|| x.clone());
        let q = self.to_q.forward(x);
        let k = self.to_k.forward(context.clone());
        let v = self.to_v.forward(context);
        self.to_out.forward(self.attend(q, k, v))
    }
}

/// Largest score matrix a backend without a fused kernel may materialise (f32 bytes).
const SCORES_CHUNK_BYTES: usize = 256 << 20;

/// Largest head size given to the flash-attention kernel: each of its invocations keeps a row
/// of q and of the output (head size values each) in registers. SD's UNet heads are 40–160; the
/// VAE's single 512-wide head crashed SwiftShader's GPU process (full-size VAE encode in
/// Chromium) and would spill on real GPUs, so it takes the plain path (its maps are small: at
/// 512² the VAE's scores are 4096², 64 MiB).
#[cfg(any(feature = "gpu", target_arch = "wasm32"))]
const FLASH_MAX_HEAD_DIM: usize = 160;

/// softmax(q·kᵀ/√d)·v on `[B, heads, N, d]`. On the GPU one flash-attention kernel, which never
/// materialises the scores; on the CPU (f32) blocks of query rows in parallel
/// ([`crate::nn::cpu_ops::attention`]). Anything else runs burn's op in query chunks (exact:
/// softmax is per query row), as a 1024² image would otherwise need a 17 GB score matrix.
pub fn attend_heads(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>) -> Tensor<4> {
    let ([b, heads, n, d], m) = (q.dims(), k.dims()[2]);
    crate::nn::profile::scope(
        || attend_heads_unprofiled(q, k, v),
        // q·kᵀ and p·v: two multiply-adds per (query, key, channel).
        |_| crate::nn::profile::Work {
            key: format!("attention {heads}×{d} heads, {n}×{m}"),
            flops: 4.0 * (b * heads * n * m * d) as f64,
            bytes: 4.0 * (b * heads * (2 * n + 2 * m) * d) as f64,
        },
    )
}

fn attend_heads_unprofiled(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>) -> Tensor<4> {
    #[cfg(any(feature = "gpu", target_arch = "wasm32"))]
    if crate::nn::gpu::on_gpu(&q) && q.dims()[3] <= FLASH_MAX_HEAD_DIM {
        return crate::nn::gpu::flash_attention(q, k, v);
    }
    #[cfg(all(feature = "cpu", not(target_arch = "wasm32")))]
    if let Some(out) = crate::nn::cpu_ops::attention(&q, &k, &v) {
        return out;
    }
    let [b, h, n, _] = q.dims();
    let m = k.dims()[2];
    let rows = (SCORES_CHUNK_BYTES / (b * h * m * 4).max(1)).max(1);
    let run = |q: Tensor<4>| attention(q, k.clone(), v.clone(), None, None, AttentionModuleOptions::default());
    if n <= rows {
        return run(q);
    }
    Tensor::cat((0..n).step_by(rows).map(|s| run(q.clone().narrow(2, s, rows.min(n - s)))).collect(), 2)
}

/// The VAE mid-block's spatial self-attention: group norm, one head over all channels,
/// residual connection.
#[derive(burn::module::Module, Debug)]
pub struct SpatialSelfAttention {
    pub group_norm: GroupNorm,
    pub attn: Attention,
}

impl SpatialSelfAttention {
    pub fn load(vb: &VarBuilder, channels: usize, groups: usize, eps: f64) -> Result<Self, WeightsError> {
        Ok(Self {
            group_norm: group_norm(&vb.pp("group_norm"), groups, channels, eps)?,
            attn: Attention::load(vb, channels, channels, 1, channels, true)?,
        })
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let [_, _, h, w] = x.dims();
        let hs = crate::nn::to_tokens(crate::nn::group_norm_forward(&self.group_norm, x.clone()));
        let out = self.attn.forward(hs, None);
        crate::nn::from_tokens(out, h, w) + x
    }
}

/// What a UNet self-attention (`attn1`) hands to a controller.
pub struct SelfAttentionCall<'a> {
    /// Index among the UNet's self-attentions, in call order (down, mid, up).
    pub layer: usize,
    /// The attention module (its projections and head layout).
    pub attn: &'a Attention,
    /// The block's normed input `[B, N, C]`, N = `height·width`.
    pub hidden: Tensor<3>,
    pub height: usize,
    pub width: usize,
}

/// Takes over UNet self-attentions. Return `Some(out)` (`[B, N, heads·d]`, before `to_out`)
/// to replace a layer's attention, `None` to let it run as usual.
pub trait AttentionController {
    fn self_attention(&mut self, call: SelfAttentionCall<'_>) -> Option<Tensor<3>>;
}

/// The controller that controls nothing: every layer runs as usual.
pub struct NoControl;

impl AttentionController for NoControl {
    fn self_attention(&mut self, _call: SelfAttentionCall<'_>) -> Option<Tensor<3>> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, Distribution};

    #[test]
    fn query_chunked_attention_equals_whole() {
        let device = Device::flex();
        let rnd = |s: [usize; 4]| Tensor::<4>::random(s, Distribution::Normal(0.0, 1.0), &device);
        // 1 × 1 × n × 4096 keys × 4 B > SCORES_CHUNK_BYTES once n > 16384.
        let (q, k, v) = (rnd([1, 1, 40_000, 4]), rnd([1, 1, 4096, 4]), rnd([1, 1, 4096, 4]));
        let whole = attention(q.clone(), k.clone(), v.clone(), None, None, AttentionModuleOptions::default());
        let chunked = attend_heads(q, k, v);
        let diff = (whole - chunked).abs().max().into_scalar::<f32>();
        assert!(diff < 1e-6, "{diff}");
    }
}
