//! ZePo's attention control: the consistency features (k/v of the controlled layers, after
//! token merging) of the style and content branches, and the style-enhanced attention that
//! replaces the target's self-attention in those layers.
//!
//! The reference recomputes the style and content branches at every step although their
//! latents, timestep and text are fixed; here a [`FeatureRecorder`] records them once per
//! image and a [`StyleInjector`] reuses them at every step. [`ReferenceControl`] runs the
//! reference's 6-row batch in one go, to prove the two paths agree.

use std::collections::BTreeMap;
use std::ops::Range;

use burn::tensor::Tensor;

use super::options::TomeOptions;
use super::style_attention::{mix_query, style_attention, StyleKv};
use super::tome::{merge_count, DstPick, TokenMerge};
use crate::models::attention::{Attention, AttentionController, SelfAttentionCall};

/// One controlled layer's features of one image: rows are the CFG halves `[uncond, cond]`.
#[derive(Clone, Debug)]
pub struct LayerFeatures {
    /// `to_k` of the (merged) hidden states, `[halves, M, inner]`.
    pub k: Tensor<3>,
    /// `to_v` of the (merged) hidden states, `[halves, M, inner]`.
    pub v: Tensor<3>,
    /// `to_q` of the unmerged hidden states, kept only for the query mix.
    pub q: Option<Tensor<3>>,
}

/// The consistency features of one image (style or content), per controlled layer.
#[derive(Clone, Debug, Default)]
pub struct ImageFeatures {
    pub layers: BTreeMap<usize, LayerFeatures>,
}

impl ImageFeatures {
    fn layer(&self, layer: usize) -> &LayerFeatures {
        self.layers.get(&layer).expect("features recorded for every controlled layer")
    }
}

/// How the controlled layers are set up.
#[derive(Clone, Debug)]
pub struct ControlSpec {
    pub layers: Range<usize>,
    pub tome: Option<TomeOptions>,
    /// Seed of the token-merging destination draws (unused when deterministic).
    pub tome_seed: u64,
    pub style_guidance: f32,
    pub mix_q: f32,
}

impl ControlSpec {
    /// k/v (and q when the query mix needs it) of `hidden` `[halves, N, C]` for one layer.
    fn features(&self, layer: usize, attn: &Attention, hidden: Tensor<3>, hw: [usize; 2]) -> LayerFeatures {
        let q = (self.mix_q < 1.0).then(|| attn.to_q.forward(hidden.clone()));
        let merged = match &self.tome {
            Some(t) => {
                let pick =
                    if t.deterministic { DstPick::TopLeft } else { DstPick::Random { seed: self.tome_seed.wrapping_add(layer as u64) } };
                let r = merge_count(hidden.dims()[1], t.ratio as f64);
                // The options were validated and `hidden` is this layer's h×w map.
                TokenMerge::new(hidden.clone(), hw[0], hw[1], t.sx, t.sy, r, pick)
                    .and_then(|m| m.merge(hidden))
                    .expect("token merging of a validated h×w map")
            }
            None => hidden,
        };
        LayerFeatures { k: attn.to_k.forward(merged.clone()), v: attn.to_v.forward(merged), q }
    }

    /// The style-enhanced attention of the target rows `hidden` `[halves, N, C]`, before
    /// `to_out`: softmax([q·k_c ; g·q·k_s]·scale)·[v_c ; v_s].
    fn stylized(&self, attn: &Attention, hidden: Tensor<3>, content: &LayerFeatures, style: &LayerFeatures) -> Tensor<3> {
        let mut q = attn.to_q.forward(hidden);
        if let Some(qc) = &content.q {
            q = mix_query(q, qc.clone(), self.mix_q).expect("q of the same layer and rows: one shape");
        }
        let kv = StyleKv {
            k_content: attn.split_heads(content.k.clone()),
            v_content: attn.split_heads(content.v.clone()),
            k_style: attn.split_heads(style.k.clone()),
            v_style: attn.split_heads(style.v.clone()),
        };
        let out = style_attention(attn.split_heads(q), &kv, self.style_guidance, None)
            .expect("k/v recorded from the same layer have matching shapes");
        attn.merge_heads(out)
    }
}

/// Records one image's features while its branch runs with ordinary attention.
pub struct FeatureRecorder<'a> {
    pub spec: &'a ControlSpec,
    pub features: ImageFeatures,
}

impl<'a> FeatureRecorder<'a> {
    pub fn new(spec: &'a ControlSpec) -> Self {
        Self { spec, features: ImageFeatures::default() }
    }
}

impl AttentionController for FeatureRecorder<'_> {
    fn self_attention(&mut self, call: SelfAttentionCall<'_>) -> Option<Tensor<3>> {
        if self.spec.layers.contains(&call.layer) {
            let f = self.spec.features(call.layer, call.attn, call.hidden, [call.height, call.width]);
            self.features.layers.insert(call.layer, f);
        }
        None
    }
}

/// Replaces the target's self-attention in the controlled layers, from recorded features.
pub struct StyleInjector<'a> {
    pub spec: &'a ControlSpec,
    pub content: &'a ImageFeatures,
    pub style: &'a ImageFeatures,
    /// When set, each controlled output is kept here as `(layer, [halves, heads, N, d])`.
    pub recorded: Option<Vec<(usize, Tensor<4>)>>,
}

impl AttentionController for StyleInjector<'_> {
    fn self_attention(&mut self, call: SelfAttentionCall<'_>) -> Option<Tensor<3>> {
        if !self.spec.layers.contains(&call.layer) {
            return None;
        }
        let (c, s) = (self.content.layer(call.layer), self.style.layer(call.layer));
        let out = self.spec.stylized(call.attn, call.hidden, c, s);
        if let Some(rec) = &mut self.recorded {
            rec.push((call.layer, call.attn.split_heads(out.clone())));
        }
        Some(out)
    }
}

/// The reference's way: one batch of six rows `[style, content, target] × [uncond, cond]`,
/// every branch recomputed at every step. A test oracle (feature `reference-oracle`).
#[cfg(feature = "reference-oracle")]
pub struct ReferenceControl<'a> {
    pub spec: &'a ControlSpec,
}

#[cfg(feature = "reference-oracle")]
impl AttentionController for ReferenceControl<'_> {
    fn self_attention(&mut self, call: SelfAttentionCall<'_>) -> Option<Tensor<3>> {
        if !self.spec.layers.contains(&call.layer) {
            return None;
        }
        let hw = [call.height, call.width];
        let rows = |i: usize| Tensor::cat(vec![call.hidden.clone().slice([i..i + 1]), call.hidden.clone().slice([i + 3..i + 4])], 0);
        let style = self.spec.features(call.layer, call.attn, rows(0), hw);
        let content = self.spec.features(call.layer, call.attn, rows(1), hw);
        let target = self.spec.stylized(call.attn, rows(2), &content, &style);
        // Style and content rows keep their ordinary self-attention.
        let plain = {
            let a = call.attn;
            let h = call.hidden.clone();
            a.attend(a.to_q.forward(h.clone()), a.to_k.forward(h.clone()), a.to_v.forward(h))
        };
        let [b, n, c] = plain.dims();
        debug_assert_eq!(b, 6);
        let plain = plain.slice_assign([2..3, 0..n, 0..c], target.clone().slice([0..1]));
        Some(plain.slice_assign([5..6, 0..n, 0..c], target.slice([1..2])))
    }
}
