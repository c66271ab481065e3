//! Buffer planning: how the VAE splits its high-resolution activations into row bands so that no
//! tensor reaches a byte limit, and the largest tensor a run creates, computed from shapes alone.
//!
//! Every tensor is counted at 4 bytes per element, also for f16 weights: group norm widens f16
//! to f32 for its statistics, so an f32 copy of each normalised band exists anyway. A 3×3
//! convolution's input is counted with a one-pixel border on every side (a band with its halo
//! rows, or the zero-padded copy a backend makes for asymmetric padding), so the figures are
//! upper bounds of what the executor in `banded.rs` creates; the executor records the same
//! quantities, and a test checks that both agree.

use super::config::VaeConfig;

/// Bytes per element the plan counts (see the module docs).
pub const ELEM_BYTES: usize = 4;

/// WebGPU's default `maxStorageBufferBindingSize` (and lavapipe's) is 128 MiB, inclusive. The
/// default keeps 8 MiB below it: the plan counts the tensors this crate creates, while a
/// backend may add a little of its own (allocation alignment, layout copies with padding).
pub const DEFAULT_MAX_BUFFER_BYTES: usize = 120 << 20;

/// Run-time options of the VAE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VaeOptions {
    /// Every tensor an encode or decode creates stays strictly below this many bytes, where the
    /// model allows it: activations that would reach it are processed in row bands (exactly),
    /// batch items one at a time. Rows are never split below two per band; a plan that cannot
    /// meet the limit even so reports a `peak_bytes` at or above it.
    pub max_buffer_bytes: usize,
}

impl Default for VaeOptions {
    fn default() -> Self {
        Self { max_buffer_bytes: DEFAULT_MAX_BUFFER_BYTES }
    }
}

impl VaeOptions {
    /// On the CPU only memory bounds a tensor: activations up to 2 GiB run whole (every image
    /// up to 1448², as PyTorch runs them), and bands cost copies and halo rows.
    pub fn cpu() -> Self {
        Self { max_buffer_bytes: 2 << 30 }
    }
}

/// The sizes of an `AutoencoderKL`, enough to plan its buffers without building it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaeShape {
    pub in_channels: usize,
    pub out_channels: usize,
    pub latent_channels: usize,
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: usize,
    pub mid_attention: bool,
}

impl From<&VaeConfig> for VaeShape {
    fn from(cfg: &VaeConfig) -> Self {
        Self {
            in_channels: cfg.in_channels,
            out_channels: cfg.out_channels,
            latent_channels: cfg.latent_channels,
            block_out_channels: cfg.block_out_channels.clone(),
            layers_per_block: cfg.layers_per_block,
            mid_attention: cfg.mid_block_add_attention,
        }
    }
}

/// How an encode or decode of one input size runs, and the largest tensor it creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferPlan {
    /// Bytes of the largest tensor (an upper bound, see the module docs).
    pub peak_bytes: usize,
    /// Batch items run one at a time (the batched run would reach the limit).
    pub per_item: bool,
    /// Some block runs in several row bands (or the attention in query/key chunks).
    pub banded: bool,
    /// Blocks (convolution, resnet, resampler, attention) that run banded, and whole, in one
    /// pass (one batch item when `per_item`).
    pub banded_blocks: usize,
    pub whole_blocks: usize,
}

impl BufferPlan {
    /// Whether every tensor stays below `options.max_buffer_bytes`.
    pub fn fits(&self, options: &VaeOptions) -> bool {
        self.peak_bytes < options.max_buffer_bytes
    }
}

/// Bytes of a `[b, c, h, w]` tensor.
pub(crate) fn plain_bytes(b: usize, c: usize, h: usize, w: usize) -> usize {
    b * c * h * w * ELEM_BYTES
}

/// Bytes counted for a 3×3 convolution's input band of `h` rows: with a one-pixel border.
pub(crate) fn conv_bytes(b: usize, c: usize, h: usize, w: usize) -> usize {
    plain_bytes(b, c, h + 2, w + 2)
}

/// Rows per band for a block whose widest tensor has `c` channels, at `h`×`w`: `h` (one band)
/// when it fits, else the most rows that fit, even (so that a stride-2 convolution's bands
/// start on even rows) and at least two.
pub(crate) fn block_rows(limit: usize, b: usize, c: usize, h: usize, w: usize) -> usize {
    if conv_bytes(b, c, h, w) < limit {
        return h;
    }
    let per_row = plain_bytes(b, c, 1, w + 2);
    let rows = (limit.saturating_sub(1) / per_row).saturating_sub(2);
    (rows & !1).max(2).min(h)
}

/// Band heights covering `h` rows, `rows` each but the last.
pub(crate) fn partition(h: usize, rows: usize) -> Vec<usize> {
    let rows = rows.max(1);
    let mut out = vec![rows; h / rows];
    if !h.is_multiple_of(rows) {
        out.push(h % rows);
    }
    out
}

/// Query tokens per chunk so that a `[b, queries, keys]` score block stays below the limit.
pub(crate) fn attn_query_chunk(limit: usize, b: usize, keys: usize) -> usize {
    (limit.saturating_sub(1) / (b * keys * ELEM_BYTES).max(1)).max(1)
}

/// Whether the attention over an `h`×`w` map runs whole: one band and its score matrix fit.
pub(crate) fn attention_whole(limit: usize, b: usize, c: usize, h: usize, w: usize) -> bool {
    let n = h * w;
    block_rows(limit, b, c, h, w) == h && b * n * n * ELEM_BYTES < limit
}

/// Output height (or width) of the encoder's stride-2 convolution after its (0, 1) padding.
pub(crate) fn downsampled(h: usize) -> usize {
    h / 2
}

/// The largest tensor and banding of one pass at batch `b`.
#[derive(Default)]
struct Meter {
    limit: usize,
    peak: usize,
    banded: usize,
    whole: usize,
}

impl Meter {
    fn see(&mut self, bytes: usize) {
        self.peak = self.peak.max(bytes);
    }

    fn count(&mut self, banded: bool) {
        if banded {
            self.banded += 1;
        } else {
            self.whole += 1;
        }
    }

    /// Rows per band of a block; counts the block.
    fn rows(&mut self, b: usize, c: usize, h: usize, w: usize) -> usize {
        let rows = block_rows(self.limit, b, c, h, w);
        self.count(rows < h);
        rows
    }

    /// A 3×3 convolution block `c_in` → `c_out` (possibly behind a group norm).
    fn conv(&mut self, b: usize, c_in: usize, c_out: usize, h: usize, w: usize) {
        let hm = self.rows(b, c_in.max(c_out), h, w).min(h);
        self.see(conv_bytes(b, c_in, hm, w));
        self.see(plain_bytes(b, c_out, hm, w));
    }

    fn resnet(&mut self, b: usize, c_in: usize, c_out: usize, h: usize, w: usize) {
        let hm = self.rows(b, c_in.max(c_out), h, w).min(h);
        self.see(conv_bytes(b, c_in.max(c_out), hm, w));
    }

    fn attention(&mut self, b: usize, c: usize, h: usize, w: usize) {
        if attention_whole(self.limit, b, c, h, w) {
            self.count(false);
            self.see(plain_bytes(b, c, h, w));
            self.see(b * (h * w) * (h * w) * ELEM_BYTES);
            return;
        }
        self.count(true);
        let hm = block_rows(self.limit, b, c, h, w).min(h);
        let keys = hm * w;
        self.see(plain_bytes(b, c, hm, w));
        self.see(b * attn_query_chunk(self.limit, b, keys).min(keys) * keys * ELEM_BYTES);
    }

    fn mid(&mut self, shape: &VaeShape, b: usize, c: usize, h: usize, w: usize) {
        self.resnet(b, c, c, h, w);
        if shape.mid_attention {
            self.attention(b, c, h, w);
        }
        self.resnet(b, c, c, h, w);
    }

    fn encode(&mut self, s: &VaeShape, b: usize, mut h: usize, mut w: usize) {
        let boc = &s.block_out_channels;
        let n = boc.len();
        self.see(plain_bytes(b, s.in_channels, h, w));
        self.conv(b, s.in_channels, boc[0], h, w);
        for i in 0..n {
            let c_in = if i == 0 { boc[0] } else { boc[i - 1] };
            for j in 0..s.layers_per_block {
                self.resnet(b, if j == 0 { c_in } else { boc[i] }, boc[i], h, w);
            }
            if i + 1 < n {
                let hm = self.rows(b, boc[i], h, w).min(h);
                self.see(conv_bytes(b, boc[i], hm, w));
                (h, w) = (downsampled(h), downsampled(w));
            }
        }
        self.mid(s, b, boc[n - 1], h, w);
        self.conv(b, boc[n - 1], 2 * s.latent_channels, h, w);
        self.see(plain_bytes(b, 2 * s.latent_channels, h, w));
    }

    fn decode(&mut self, s: &VaeShape, b: usize, mut h: usize, mut w: usize) {
        let rev: Vec<usize> = s.block_out_channels.iter().rev().copied().collect();
        let n = rev.len();
        self.see(plain_bytes(b, s.latent_channels, h, w));
        self.conv(b, s.latent_channels, rev[0], h, w);
        self.mid(s, b, rev[0], h, w);
        for i in 0..n {
            let c_in = if i == 0 { rev[0] } else { rev[i - 1] };
            for j in 0..=s.layers_per_block {
                self.resnet(b, if j == 0 { c_in } else { rev[i] }, rev[i], h, w);
            }
            if i + 1 < n {
                let (h2, w2) = (2 * h, 2 * w);
                let hi = self.rows(b, rev[i], h2, w2);
                let lo = if hi >= h2 { h } else { (hi / 2).max(1) };
                self.see(conv_bytes(b, rev[i], 2 * lo.min(h), w2));
                (h, w) = (h2, w2);
            }
        }
        self.conv(b, rev[n - 1], s.out_channels, h, w);
        self.see(plain_bytes(b, s.out_channels, h, w));
    }
}

fn plan(limit: usize, dims: [usize; 4], pass: impl Fn(&mut Meter, usize)) -> BufferPlan {
    let b = dims[0];
    let mut whole = Meter { limit, ..Default::default() };
    pass(&mut whole, b);
    let (m, per_item) = if whole.peak < limit || b == 1 {
        (whole, false)
    } else {
        let mut one = Meter { limit, ..Default::default() };
        pass(&mut one, 1);
        (one, true)
    };
    BufferPlan { peak_bytes: m.peak, per_item, banded: m.banded > 0, banded_blocks: m.banded, whole_blocks: m.whole }
}

/// The plan of [`super::AutoencoderKL::encode`] on an image batch of `dims` `[b, c, h, w]`.
pub fn encode_plan(shape: &VaeShape, options: &VaeOptions, dims: [usize; 4]) -> BufferPlan {
    let [b, _, h, w] = dims;
    let mut p = plan(options.max_buffer_bytes, dims, |m, bb| m.encode(shape, bb, h, w));
    // The whole input and the batched moments exist in either case.
    let (lh, lw) = (1..shape.block_out_channels.len()).fold((h, w), |(h, w), _| (downsampled(h), downsampled(w)));
    p.peak_bytes = p.peak_bytes.max(plain_bytes(b, shape.in_channels, h, w)).max(plain_bytes(b, 2 * shape.latent_channels, lh, lw));
    p
}

/// The plan of [`super::AutoencoderKL::decode`] on a latent batch of `dims` `[b, c, h, w]`.
pub fn decode_plan(shape: &VaeShape, options: &VaeOptions, dims: [usize; 4]) -> BufferPlan {
    let [b, _, h, w] = dims;
    let f = 1 << (shape.block_out_channels.len() - 1);
    let mut p = plan(options.max_buffer_bytes, dims, |m, bb| m.decode(shape, bb, h, w));
    // The whole input and the batched output exist in either case.
    p.peak_bytes = p.peak_bytes.max(plain_bytes(b, shape.latent_channels, h, w)).max(plain_bytes(b, shape.out_channels, h * f, w * f));
    p
}
