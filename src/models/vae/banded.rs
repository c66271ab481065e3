//! The exact large-image path: activations held as horizontal row bands, each below the byte
//! limit, with every operation giving the whole-image result up to summation order:
//! 3×3 convolutions read one halo row from each neighbour, group norms accumulate their
//! statistics over all bands before normalising any, SiLU / adds / 1×1 convolutions / nearest
//! upsampling work band by band, the stride-2 convolution reads one row of the next band, and
//! the mid-block attention runs over query chunks with an online softmax across key bands.
//! A block whose tensors fit runs whole through the plain modules. The partition of each block
//! comes from `plan.rs`, and the executor records what it creates so that tests can check the
//! plan against it.

use std::cell::Cell;

use burn::nn::GroupNorm;
use burn::tensor::module::interpolate;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};
use burn::tensor::{DType, Tensor};

use super::blocks::{Decoder, Encoder, VaeMidBlock};
use super::plan::{attention_whole, attn_query_chunk, block_rows, conv_bytes, partition, plain_bytes, ELEM_BYTES};
use crate::models::attention::SpatialSelfAttention;
use crate::models::resnet::{Downsample2D, ResnetBlock2D, Upsample2D};
use crate::nn::{conv_forward, silu, Conv2d};

/// What a banded run did: its largest tensor (as the plan counts it) and how its blocks ran.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BandedRun {
    pub peak_bytes: usize,
    /// Blocks that ran in several bands (or, for the attention, in chunks).
    pub banded_blocks: usize,
    /// Blocks that ran whole.
    pub whole_blocks: usize,
    /// Batch items ran one at a time.
    pub per_item: bool,
}

/// Row bands of one `[B, C, H, W]` activation, top to bottom.
type Bands = Vec<Tensor<4>>;

fn heights(x: &Bands) -> Vec<usize> {
    x.iter().map(|t| t.dims()[2]).collect()
}

/// `[B, C, H, W]` of the whole activation.
fn dims(x: &Bands) -> [usize; 4] {
    let [b, c, _, w] = x[0].dims();
    [b, c, heights(x).iter().sum(), w]
}

/// `(c_in, c_out)` of a convolution.
fn io(conv: &Conv2d) -> (usize, usize) {
    conv.channels()
}

pub(crate) struct Ctx {
    limit: usize,
    peak: Cell<usize>,
    banded: Cell<usize>,
    whole: Cell<usize>,
}

impl Ctx {
    pub(crate) fn new(limit: usize) -> Self {
        Self { limit, peak: Cell::new(0), banded: Cell::new(0), whole: Cell::new(0) }
    }

    pub(crate) fn trace(&self, per_item: bool) -> BandedRun {
        BandedRun { peak_bytes: self.peak.get(), banded_blocks: self.banded.get(), whole_blocks: self.whole.get(), per_item }
    }

    pub(crate) fn see(&self, bytes: usize) {
        self.peak.set(self.peak.get().max(bytes));
    }

    pub(crate) fn see_t(&self, t: &Tensor<4>) {
        self.see(t.dims().iter().product::<usize>() * ELEM_BYTES);
    }

    fn count(&self, banded: bool) {
        let c = if banded { &self.banded } else { &self.whole };
        c.set(c.get() + 1);
    }

    /// Re-cuts `x` into bands of `rows` rows (the last shorter); a no-op when it already is.
    fn reband(&self, x: Bands, rows: usize) -> Bands {
        let hs = heights(&x);
        let target = partition(hs.iter().sum(), rows);
        if hs == target {
            return x;
        }
        let (mut src, mut off) = (0, 0);
        let mut out = Vec::with_capacity(target.len());
        for t in target {
            let mut parts = Vec::new();
            let mut need = t;
            while need > 0 {
                let take = need.min(hs[src] - off);
                parts.push(x[src].clone().narrow(2, off, take));
                (off, need) = (off + take, need - take);
                if off == hs[src] {
                    (src, off) = (src + 1, 0);
                }
            }
            let band = if parts.len() == 1 { parts.pop().unwrap() } else { Tensor::cat(parts, 2) };
            self.see_t(&band);
            out.push(band);
        }
        out
    }

    fn map(&self, x: Bands, f: impl Fn(Tensor<4>) -> Tensor<4>) -> Bands {
        x.into_iter()
            .map(|t| {
                let y = f(t);
                self.see_t(&y);
                y
            })
            .collect()
    }

    /// Concatenates the bands into one tensor.
    pub(crate) fn join(&self, mut x: Bands) -> Tensor<4> {
        let t = if x.len() == 1 { x.pop().unwrap() } else { Tensor::cat(x, 2) };
        self.see_t(&t);
        t
    }

    /// Group norm with the statistics of the whole activation, accumulated band by band (two
    /// passes, as burn's `group_norm` computes the mean first, then the centred variance).
    fn group_norm(&self, x: &Bands, gn: &GroupNorm) -> Bands {
        if x.len() == 1 {
            let y = gn.forward(x[0].clone());
            self.see_t(&y);
            return vec![y];
        }
        let [_, c, h_total, w] = dims(x);
        let g = gn.num_groups;
        let count = (c / g * h_total * w) as f64;
        let dtype = x[0].dtype();
        // Like burn's group norm, statistics of narrow floats are taken in f32.
        let grouped = |t: &Tensor<4>| {
            let [b, c, h, w] = t.dims();
            let t = if dtype == DType::F32 { t.clone() } else { t.clone().cast(DType::F32) };
            t.reshape([b, g, c / g * h * w])
        };
        let sum = x.iter().map(|t| grouped(t).sum_dim(2)).reduce(|a, b| a + b).unwrap();
        let mean = sum.div_scalar(count);
        let sq = x.iter().map(|t| (grouped(t) - mean.clone()).square().sum_dim(2)).reduce(|a, b| a + b).unwrap();
        let std = sq.div_scalar(count).add_scalar(gn.epsilon).sqrt();
        x.iter()
            .map(|t| {
                let [b, c, h, w] = t.dims();
                let mut y = ((grouped(t) - mean.clone()) / std.clone()).reshape([b, c, h, w]);
                if dtype != DType::F32 {
                    y = y.cast(dtype);
                }
                if let (Some(gamma), Some(beta)) = (&gn.gamma, &gn.beta) {
                    y = y * gamma.val().reshape([1, c, 1, 1]) + beta.val().reshape([1, c, 1, 1]);
                }
                self.see_t(&y);
                y
            })
            .collect()
    }

    /// A 3×3, stride-1, padding-1 convolution over bands: each band reads the last row of the
    /// band above and the first row of the band below; image edges keep their zero padding.
    fn conv3(&self, x: &Bands, conv: &Conv2d) -> Bands {
        let n = x.len();
        (0..n)
            .map(|i| {
                let [b, c, h, w] = x[i].dims();
                self.see(conv_bytes(b, c, h, w));
                let (top, bottom) = (i > 0, i + 1 < n);
                let mut parts = Vec::with_capacity(3);
                if top {
                    let hp = x[i - 1].dims()[2];
                    parts.push(x[i - 1].clone().narrow(2, hp - 1, 1));
                }
                parts.push(x[i].clone());
                if bottom {
                    parts.push(x[i + 1].clone().narrow(2, 0, 1));
                }
                let input = if parts.len() == 1 { parts.pop().unwrap() } else { Tensor::cat(parts, 2) };
                let pad = [(usize::from(!top), usize::from(!bottom)), (1, 1)];
                let y = conv.forward_padded(input, pad);
                self.see_t(&y);
                y
            })
            .collect()
    }

    /// `conv(silu(norm(x)))` (or `conv(x)`), a 3×3 convolution, in bands when it must.
    fn conv_block(&self, x: Bands, norm: Option<&GroupNorm>, conv: &Conv2d) -> Bands {
        let (c_in, c_out) = io(conv);
        let [b, _, h, w] = dims(&x);
        let rows = block_rows(self.limit, b, c_in.max(c_out), h, w);
        self.count(rows < h);
        let x = self.reband(x, rows);
        if x.len() == 1 {
            self.see(conv_bytes(b, c_in, h, w));
            let t = x.into_iter().next().unwrap();
            let t = match norm {
                Some(gn) => silu(gn.forward(t)),
                None => t,
            };
            let y = conv_forward(conv, t);
            self.see_t(&y);
            return vec![y];
        }
        let x = match norm {
            Some(gn) => self.map(self.group_norm(&x, gn), silu),
            None => x,
        };
        self.conv3(&x, conv)
    }

    fn resnet(&self, x: Bands, r: &ResnetBlock2D) -> Bands {
        let (c_in, c_out) = io(&r.conv1);
        let [b, _, h, w] = dims(&x);
        let rows = block_rows(self.limit, b, c_in.max(c_out), h, w);
        self.count(rows < h);
        let x = self.reband(x, rows);
        if x.len() == 1 {
            self.see(conv_bytes(b, c_in.max(c_out), h, w));
            let y = r.forward(x.into_iter().next().unwrap(), None);
            self.see_t(&y);
            return vec![y];
        }
        let hs = self.map(self.group_norm(&x, &r.norm1), silu);
        let hs = self.conv3(&hs, &r.conv1);
        let hs = self.map(self.group_norm(&hs, &r.norm2), silu);
        let hs = self.conv3(&hs, &r.conv2);
        let x = match &r.conv_shortcut {
            Some(conv) => self.map(x, |t| conv_forward(conv, t)),
            None => x,
        };
        x.into_iter()
            .zip(hs)
            .map(|(a, b)| {
                let y = a + b;
                self.see_t(&y);
                y
            })
            .collect()
    }

    /// The encoder's stride-2 convolution (pad bottom/right by one, no other padding). Bands
    /// start on even rows, so band `[s, e)` gives output rows `[s/2, e/2)` from its rows and
    /// row `e` of the next band; the image's last row, when the height is odd, only serves as
    /// that halo.
    fn downsample(&self, x: Bands, d: &Downsample2D) -> Bands {
        let [b, c, h, w] = dims(&x);
        let rows = block_rows(self.limit, b, c, h, w);
        self.count(rows < h);
        let x = self.reband(x, rows);
        if x.len() == 1 {
            self.see(conv_bytes(b, c, h, w));
            let y = d.forward(x.into_iter().next().unwrap());
            self.see_t(&y);
            return vec![y];
        }
        let hs = heights(&x);
        let mut out = Vec::with_capacity(x.len());
        let mut start = 0;
        for i in 0..x.len() {
            let end = start + hs[i];
            let n_out = end / 2 - start / 2;
            if n_out > 0 {
                self.see(conv_bytes(b, c, hs[i], w));
                let input =
                    if i + 1 < x.len() { Tensor::cat(vec![x[i].clone(), x[i + 1].clone().narrow(2, 0, 1)], 2) } else { x[i].clone() };
                let y = d.forward(input).narrow(2, 0, n_out);
                self.see_t(&y);
                out.push(y);
            }
            start = end;
        }
        out
    }

    /// Nearest ×2 then a 3×3 convolution; bands are cut at low resolution so that the
    /// upsampled bands fit.
    fn upsample(&self, x: Bands, u: &Upsample2D) -> Bands {
        let [b, c, h, w] = dims(&x);
        let hi = block_rows(self.limit, b, c, 2 * h, 2 * w);
        self.count(hi < 2 * h);
        let lo = if hi >= 2 * h { h } else { (hi / 2).max(1) };
        let x = self.reband(x, lo);
        if x.len() == 1 {
            self.see(conv_bytes(b, c, 2 * h, 2 * w));
            let y = u.forward(x.into_iter().next().unwrap(), None);
            self.see_t(&y);
            return vec![y];
        }
        let up = self.map(x, |t| {
            let [_, _, th, tw] = t.dims();
            interpolate(t, InterpolateOptions::new(InterpolateMode::Nearest).with_output_size([2 * th, 2 * tw]))
        });
        self.conv3(&up, &u.conv)
    }

    /// The mid-block's one-head self-attention with residual. Whole when the activation and its
    /// score matrix fit; else per band of queries, in query chunks, with a running softmax over
    /// the key bands (flash-attention style), so no score block reaches the limit.
    fn attention(&self, x: Bands, a: &SpatialSelfAttention) -> Bands {
        let [b, c, h, w] = dims(&x);
        if attention_whole(self.limit, b, c, h, w) {
            self.count(false);
            self.see(plain_bytes(b, c, h, w));
            self.see(b * (h * w) * (h * w) * ELEM_BYTES);
            let y = a.forward(self.join(x));
            self.see_t(&y);
            return vec![y];
        }
        self.count(true);
        let x = self.reband(x, block_rows(self.limit, b, c, h, w));
        let normed = self.group_norm(&x, &a.group_norm);
        let attn = &a.attn;
        let tokens: Vec<Tensor<3>> = normed
            .into_iter()
            .map(|t| {
                let [b, c, h, w] = t.dims();
                t.reshape([b, c, h * w]).swap_dims(1, 2)
            })
            .collect();
        let keys: Vec<Tensor<3>> = tokens.iter().map(|t| attn.to_k.forward(t.clone()).swap_dims(1, 2)).collect();
        let values: Vec<Tensor<3>> = tokens.iter().map(|t| attn.to_v.forward(t.clone())).collect();
        let max_keys = keys.iter().map(|k| k.dims()[2]).max().unwrap();
        let chunk = attn_query_chunk(self.limit, b, max_keys);
        let scale = 1.0 / (attn.head_dim as f64).sqrt();
        x.into_iter()
            .zip(tokens)
            .map(|(res, t)| {
                let [_, _, th, tw] = res.dims();
                let q = attn.to_q.forward(t);
                let n = q.dims()[1];
                let outs: Vec<Tensor<3>> = (0..n)
                    .step_by(chunk)
                    .map(|s| self.online_softmax(q.clone().narrow(1, s, chunk.min(n - s)), &keys, &values, scale))
                    .collect();
                let o = if outs.len() == 1 { outs.into_iter().next().unwrap() } else { Tensor::cat(outs, 1) };
                let o = attn.to_out.forward(o).swap_dims(1, 2).reshape([b, c, th, tw]);
                let y = o + res;
                self.see_t(&y);
                y
            })
            .collect()
    }

    /// softmax(q·kᵀ·scale)·v for one query chunk `[B, nq, C]`, over keys `[B, C, nk]` in bands.
    fn online_softmax(&self, q: Tensor<3>, keys: &[Tensor<3>], values: &[Tensor<3>], scale: f64) -> Tensor<3> {
        let mut state: Option<(Tensor<3>, Tensor<3>, Tensor<3>)> = None; // (max, sum, acc)
        for (k, v) in keys.iter().zip(values) {
            let s = q.clone().matmul(k.clone()).mul_scalar(scale);
            let [b, nq, nk] = s.dims();
            self.see(b * nq * nk * ELEM_BYTES);
            let s_max = s.clone().max_dim(2);
            state = Some(match state {
                None => {
                    let p = (s - s_max.clone()).exp();
                    (s_max, p.clone().sum_dim(2), p.matmul(v.clone()))
                }
                Some((m, l, acc)) => {
                    let m_new = m.clone().max_pair(s_max);
                    let corr = (m - m_new.clone()).exp();
                    let p = (s - m_new.clone()).exp();
                    (m_new, l * corr.clone() + p.clone().sum_dim(2), acc * corr + p.matmul(v.clone()))
                }
            });
        }
        let (_, l, acc) = state.expect("at least one key band");
        acc / l
    }

    fn mid(&self, mut x: Bands, m: &VaeMidBlock) -> Bands {
        x = self.resnet(x, &m.resnets[0]);
        if let Some(a) = &m.attention {
            x = self.attention(x, a);
        }
        self.resnet(x, &m.resnets[1])
    }

    /// The encoder on `x` `[B, C, H, W]`: its `2·latent` moments, whole.
    pub(crate) fn encoder(&self, enc: &Encoder, x: Tensor<4>) -> Tensor<4> {
        self.see_t(&x);
        let mut h = self.conv_block(vec![x], None, &enc.conv_in);
        for block in &enc.down_blocks {
            for r in &block.resnets {
                h = self.resnet(h, r);
            }
            if let Some(d) = &block.downsampler {
                h = self.downsample(h, d);
            }
        }
        h = self.mid(h, &enc.mid_block);
        h = self.conv_block(h, Some(&enc.conv_norm_out), &enc.conv_out);
        self.join(h)
    }

    /// The decoder on `z` `[B, latent, h, w]` (after `post_quant_conv`): the image, whole.
    pub(crate) fn decoder(&self, dec: &Decoder, z: Tensor<4>) -> Tensor<4> {
        let mut h = self.conv_block(vec![z], None, &dec.conv_in);
        h = self.mid(h, &dec.mid_block);
        for block in &dec.up_blocks {
            for r in &block.resnets {
                h = self.resnet(h, r);
            }
            if let Some(u) = &block.upsampler {
                h = self.upsample(h, u);
            }
        }
        h = self.conv_block(h, Some(&dec.conv_norm_out), &dec.conv_out);
        self.join(h)
    }
}
