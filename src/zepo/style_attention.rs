//! ZePo's controlled self-attention for the target (the reference's `AttentionStyle.forward`):
//!
//! `softmax([q·k_cᵀ ; g·q·k_sᵀ] · scale) · [v_c ; v_s]`
//!
//! with q the target's queries, k/v the content (c) and style (s) keys and values of the same
//! layer (token-merged or not) and g the style guidance, which scales the style logits, not the
//! probabilities. Since g·(q·k_sᵀ) = q·(g·k_s)ᵀ, this is plain attention over the keys
//! `[k_c ; g·k_s]` and values `[v_c ; v_s]`: burn's fused attention, no score matrix on wgpu.

use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::Tensor;

use crate::{Error, Result};

/// Content and style keys / values of one controlled layer, `[B, heads, m, d]` each (m may
/// differ between content and style and from the query length).
#[derive(Debug, Clone)]
pub struct StyleKv {
    pub k_content: Tensor<4>,
    pub v_content: Tensor<4>,
    pub k_style: Tensor<4>,
    pub v_style: Tensor<4>,
}

/// The controlled attention of target queries `q` `[B, heads, n, d]`: `[B, heads, n, d]`.
/// `scale` defaults to d^-½ (diffusers' `attn.scale`).
pub fn style_attention(q: Tensor<4>, kv: &StyleKv, style_guidance: f32, scale: Option<f64>) -> Result<Tensor<4>> {
    let [b, h, _, d] = q.dims();
    for (name, t) in [("k_content", &kv.k_content), ("v_content", &kv.v_content), ("k_style", &kv.k_style), ("v_style", &kv.v_style)] {
        let [tb, th, _, td] = t.dims();
        if tb != b || th != h || td != d {
            return Err(Error::InvalidOption(format!("style attention: {name} is [{tb}, {th}, _, {td}], queries are [{b}, {h}, _, {d}]")));
        }
    }
    if kv.k_content.dims()[2] != kv.v_content.dims()[2] || kv.k_style.dims()[2] != kv.v_style.dims()[2] {
        return Err(Error::InvalidOption("style attention: keys and values differ in length".into()));
    }
    let k = Tensor::cat(vec![kv.k_content.clone(), kv.k_style.clone().mul_scalar(style_guidance)], 2);
    let v = Tensor::cat(vec![kv.v_content.clone(), kv.v_style.clone()], 2);
    Ok(match scale {
        // The default scale: the same (query-chunked where needed) path as every attention.
        None => crate::models::attention::attend_heads(q, k, v),
        Some(_) => attention(q, k, v, None, None, AttentionModuleOptions { scale, ..Default::default() }),
    })
}

/// The optional query mix (`mix_q_scale` < 1): `mix·q_target + (1 − mix)·q_content`, on
/// tokens `[B, N, C]` or heads `[B, H, N, d]` (the controlled layers mix before splitting heads).
pub fn mix_query<const D: usize>(q_target: Tensor<D>, q_content: Tensor<D>, mix: f32) -> Result<Tensor<D>> {
    if q_target.dims() != q_content.dims() {
        return Err(Error::InvalidOption(format!(
            "query mix: target {:?} and content {:?} queries differ in shape",
            q_target.dims(),
            q_content.dims()
        )));
    }
    Ok(q_target.mul_scalar(mix) + q_content.mul_scalar(1.0 - mix))
}
