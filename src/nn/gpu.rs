//! GPU fast paths (burn's CubeCL backends: wgpu natively, WebGPU in the browser) for the chains
//! that burn's fusion leaves in many dispatches, as a burn backend extension: each op has a
//! CubeCL implementation and a lazy one under fusion. Callers take them for tensors on a CubeCL
//! device ([`on_gpu`]); the CPU backend has its own fast paths (`cpu_ops`).
//!
//! - [`matmul`]: a projection's matmul kept out of fusion, so that its bias and residual adds
//!   fuse into one kernel after it.
//! - [`flash_attention`]: softmax(q·kᵀ/√d)·v in one kernel that never materialises the scores
//!   (burn without autotune runs about fifteen kernels and a score matrix that passes WebGPU's
//!   128 MiB binding limit at 512²).
//! - [`group_norm`]: GroupNorm (+ SiLU) in one kernel (burn: a layout copy, two reductions and
//!   three element-wise passes), written channels-last, the layout burn's convolution reads
//!   without a copy.
//! - [`group_norm_add`]: the same of `x + t` (a UNet resnet adds its time embedding just before
//!   its second norm).
//! - [`geglu`]: a feed-forward's GEGLU with its projection's bias, in one kernel (burn leaves the
//!   bias add apart: the halves' slicing stops fusion).
//! - [`layer_norm`]: LayerNorm over the last dimension in one kernel (burn: five).
//!
//! - [`compact_conv2d`] / [`compact_linear`]: a convolution / projection whose weight is kept
//!   compact (block-quantized codes and scales, `crate::weights::quant`), dequantized inside the
//!   kernel's tiles: an implicit GEMM that never expands the weight in GPU memory (64 × 64 tiles;
//!   a skinny kernel for at most 16 rows, a small image's deep levels).
//! - [`compact_dequantize`]: a compact weight expanded (checks, and a fused projection whose parts
//!   have different packings).
//!
//! Statistics are accumulated in f32 whatever the tensor's dtype (f16 sums of squares overflow).

use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{backend_extension, Backend, Dispatch};
use burn::tensor::{Shape, Tensor};

use crate::weights::{CompactTensor, Packing};

/// Threads per cube of the normalisation kernels (a power of two, for the tree reduction).
const BLOCK: usize = 256;

/// The output shape of a batched matmul `[.., M, K] × [.., K, N]` (batch dims broadcast).
fn matmul_shape(lhs: &Shape, rhs: &Shape) -> Shape {
    let mut s = lhs.clone();
    let r = s.num_dims();
    for i in 0..r - 2 {
        s[i] = s[i].max(rhs[i]);
    }
    s[r - 1] = rhs[r - 1];
    s
}

/// `shape` with its last dimension halved (GEGLU's output).
fn half_last(shape: &Shape) -> Shape {
    let mut s = shape.clone();
    let r = s.num_dims();
    s[r - 1] /= 2;
    s
}

/// The output shape of attention: `[B, H, Nq, Dv]`.
fn attention_shape(q: &Shape, v: &Shape) -> Shape {
    let mut s = q.clone();
    s[3] = v[3];
    s
}

/// The output shape of a compact convolution: `[B, C_out, OH, OW]`.
#[allow(clippy::too_many_arguments)]
fn compact_conv_shape(
    input: &Shape,
    codes: &Shape,
    kernel: &usize,
    stride: &usize,
    pad_top: &usize,
    pad_left: &usize,
    pad_bottom: &usize,
    pad_right: &usize,
) -> Shape {
    let (oh, ow) = conv_out_size(input, *kernel, *stride, [*pad_top, *pad_left, *pad_bottom, *pad_right]);
    Shape::from([input[0], codes[0], oh, ow])
}

/// `(OH, OW)` of a convolution of `input` `[B, C, H, W]`, padding `[top, left, bottom, right]`.
fn conv_out_size(input: &Shape, kernel: usize, stride: usize, pad: [usize; 4]) -> (usize, usize) {
    let out = |size: usize, before: usize, after: usize| (size + before + after - kernel) / stride + 1;
    (out(input[2], pad[0], pad[2]), out(input[3], pad[1], pad[3]))
}

/// The output shape of a compact projection of `input` `[B, N, K]`: `[B, N, d_out]`.
fn compact_linear_shape(input: &Shape, codes: &Shape) -> Shape {
    Shape::from([input[0], input[1], codes[0]])
}

#[backend_extension(Cube, Fusion)]
pub trait GpuOps: Backend {
    /// burn's matmul, opaque to fusion: the bias and residual adds after a projection then fuse
    /// into one element-wise kernel, instead of being captured by a fused matmul that falls back
    /// (no cooperative-matrix units on WebGPU) to running them one by one.
    #[fusion(dtype = lhs, shape = matmul_shape(lhs, rhs))]
    fn matmul(lhs: FloatTensor<Self>, rhs: FloatTensor<Self>) -> FloatTensor<Self>;

    #[fusion(dtype = query, shape = attention_shape(query, value))]
    fn flash_attention(query: FloatTensor<Self>, key: FloatTensor<Self>, value: FloatTensor<Self>) -> FloatTensor<Self>;

    #[fusion(dtype = input, shape = input)]
    fn group_norm(
        input: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        groups: usize,
        epsilon: f64,
        silu: bool,
    ) -> FloatTensor<Self>;

    /// [`GpuOps::group_norm`] of `input + addend[b, offset + c]` (`addend` `[B, ≥ offset + C]`,
    /// broadcast over the map): the time embedding a UNet resnet adds just before its second
    /// norm, read from the UNet's fused projection of all of them.
    #[fusion(dtype = input, shape = input)]
    #[allow(clippy::too_many_arguments)]
    fn group_norm_add(
        input: FloatTensor<Self>,
        addend: FloatTensor<Self>,
        offset: usize,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        groups: usize,
        epsilon: f64,
        silu: bool,
    ) -> FloatTensor<Self>;

    /// GEGLU of `h + bias` (`h` `[.., 2·inner]`): `(a + b_a) · gelu(g + b_g)` over its two halves.
    #[fusion(dtype = h, shape = half_last(h))]
    fn geglu(h: FloatTensor<Self>, bias: FloatTensor<Self>) -> FloatTensor<Self>;

    #[fusion(dtype = input, shape = input)]
    fn layer_norm(input: FloatTensor<Self>, gamma: FloatTensor<Self>, beta: FloatTensor<Self>, epsilon: f64) -> FloatTensor<Self>;

    /// A convolution of `input` `[B, C, H, W]` (any strides) with a compact weight (`codes`
    /// `U32 [C_out, words]`, `scales` `[C_out, blocks]`, rows of `C·k·k` values), `+ bias` when
    /// `has_bias`; the output is stored channels-last.
    #[fusion(dtype = input, shape = compact_conv_shape(input, codes, kernel, stride, pad_top, pad_left, pad_bottom, pad_right))]
    #[allow(clippy::too_many_arguments)]
    fn compact_conv2d(
        input: FloatTensor<Self>,
        codes: IntTensor<Self>,
        scales: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        bits: usize,
        block: usize,
        kernel: usize,
        stride: usize,
        pad_top: usize,
        pad_left: usize,
        pad_bottom: usize,
        pad_right: usize,
        has_bias: bool,
    ) -> FloatTensor<Self>;

    /// `input` `[B, N, K]` (any strides) times a compact weight `[d_out, K]` transposed, `+ bias`
    /// when `has_bias`: `[B, N, d_out]`.
    #[fusion(dtype = input, shape = compact_linear_shape(input, codes))]
    #[allow(clippy::too_many_arguments)]
    fn compact_linear(
        input: FloatTensor<Self>,
        codes: IntTensor<Self>,
        scales: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        bits: usize,
        block: usize,
        has_bias: bool,
    ) -> FloatTensor<Self>;

    /// A compact weight's values `[rows, cols]`, in the scales' dtype.
    #[fusion(dtype = scales, shape = Shape::from([codes[0], *cols]))]
    fn compact_dequantize(codes: IntTensor<Self>, scales: FloatTensor<Self>, bits: usize, block: usize, cols: usize) -> FloatTensor<Self>;
}

mod cube {
    // The #[cube] macros name the `cubecl` crate: burn-cubecl's own.
    use burn_cubecl::cubecl;
    use burn_cubecl::ops::numeric::empty_device_dtype;
    use burn_cubecl::ops::permute;
    use burn_cubecl::tensor::CubeTensor;
    use burn_cubecl::CubeBackend;
    use cubecl::prelude::*;

    use super::{GpuOps, BLOCK};

    fn storage(t: &CubeTensor) -> ElemType {
        burn::backend::cubecl::dtype_to_storage_type(t.dtype)
    }

    /// Sums `value` over the cube (a power-of-two number of units) through shared memory;
    /// every unit gets the total.
    #[cube]
    fn cube_sum(value: f32, shared: &mut Shared<[f32]>) -> f32 {
        let tid = UNIT_POS_X as usize;
        shared[tid] = value;
        sync_cube();
        let mut stride = CUBE_DIM_X as usize / 2;
        while stride > 0 {
            if tid < stride {
                shared[tid] += shared[tid + stride];
            }
            sync_cube();
            stride /= 2;
        }
        let total = shared[0];
        sync_cube();
        total
    }

    /// Element `i` of group-local order (channel fastest) of batch item `b`, whose first channel
    /// is `c0`, as f32; plus `addend[b, c]` when `add`.
    #[cube]
    #[allow(clippy::too_many_arguments)]
    fn load_grouped<F: Float>(
        input: &Tensor<F>,
        addend: &Tensor<F>,
        b: usize,
        c0: usize,
        i: usize,
        per: usize,
        width: usize,
        base: usize,
        #[comptime] add: bool,
    ) -> f32 {
        let s = i / per;
        let c = i % per;
        let mut x = f32::cast_from(input[base + c * input.stride(1) + (s / width) * input.stride(2) + (s % width) * input.stride(3)]);
        if add {
            x += f32::cast_from(addend[b * addend.stride(0) + (c0 + c) * addend.stride(1)]);
        }
        x
    }

    /// One cube per unit of `h` `[.., 2·inner]`'s output `[.., inner]`: `(a + b_a)·gelu(g + b_g)`
    /// with the exact erf GELU.
    #[cube(launch)]
    fn geglu_kernel<F: Float>(h: &Tensor<F>, bias: &Tensor<F>, output: &mut Tensor<F>, #[define(F)] _dtype: ElemType) {
        let pos = ABSOLUTE_POS;
        if pos >= output.len() {
            terminate!();
        }
        let rank = h.rank();
        let inner = output.shape(rank - 1);
        let col = pos % inner;
        // The row's offset in `h` (any strides) from the output's contiguous index.
        let mut rest = pos / inner;
        let mut offset = 0;
        let mut d = rank - 1;
        while d > 0 {
            d -= 1;
            offset += (rest % h.shape(d)) * h.stride(d);
            rest /= h.shape(d);
        }
        let last = h.stride(rank - 1);
        let a = f32::cast_from(h[offset + col * last]) + f32::cast_from(bias[col]);
        let g = f32::cast_from(h[offset + (col + inner) * last]) + f32::cast_from(bias[col + inner]);
        let gelu = 0.5f32 * g * (1.0f32 + Erf::erf(g * 0.70710678118654752f32));
        output[pos] = F::cast_from(a * gelu);
    }

    /// One cube per (batch item, group) of `input` `[B, C, H, W]` (any strides): mean, then
    /// variance of the centred values (burn's formula), then the affine (+ SiLU) written to
    /// `output`, contiguous `[B, H, W, C]`. Units walk the group channel-fastest.
    #[cube(launch)]
    #[allow(clippy::too_many_arguments)]
    fn group_norm_kernel<F: Float>(
        input: &Tensor<F>,
        addend: &Tensor<F>,
        gamma: &Tensor<F>,
        beta: &Tensor<F>,
        output: &mut Tensor<F>,
        groups: u32,
        addend_offset: u32,
        epsilon: f32,
        #[comptime] add: bool,
        #[comptime] silu: bool,
        #[comptime] block: usize,
        #[define(F)] _dtype: ElemType,
    ) {
        let tid = UNIT_POS_X as usize;
        let groups = groups as usize;
        let b = CUBE_POS_X as usize / groups;
        let g = CUBE_POS_X as usize % groups;
        let channels = input.shape(1);
        let width = input.shape(3);
        let hw = input.shape(2) * width;
        let per = channels / groups;
        let count = per * hw;
        let base = b * input.stride(0) + g * per * input.stride(1);
        let mut shared = Shared::<[f32]>::new_slice(block);

        let mut acc = 0.0f32;
        let mut i = tid;
        while i < count {
            acc += load_grouped(input, addend, b, addend_offset as usize + g * per, i, per, width, base, add);
            i += block;
        }
        let mean = cube_sum(acc, &mut shared) / f32::cast_from(count as u32);

        let mut acc = 0.0f32;
        let mut i = tid;
        while i < count {
            let d = load_grouped(input, addend, b, addend_offset as usize + g * per, i, per, width, base, add) - mean;
            acc += d * d;
            i += block;
        }
        let var = cube_sum(acc, &mut shared) / f32::cast_from(count as u32);
        let std = (var + epsilon).sqrt();

        let mut i = tid;
        while i < count {
            let s = i / per;
            let c = g * per + i % per;
            let x = load_grouped(input, addend, b, addend_offset as usize + g * per, i, per, width, base, add);
            let mut y = (x - mean) / std * f32::cast_from(gamma[c]) + f32::cast_from(beta[c]);
            if silu {
                y = y / (1.0f32 + (-y).exp());
            }
            output[(b * hw + s) * channels + c] = F::cast_from(y);
            i += block;
        }
    }

    /// One cube per row of `input` `[B, N, D]` (any strides): LayerNorm over D, written to
    /// `output`, contiguous.
    #[cube(launch)]
    fn layer_norm_kernel<F: Float>(
        input: &Tensor<F>,
        gamma: &Tensor<F>,
        beta: &Tensor<F>,
        output: &mut Tensor<F>,
        epsilon: f32,
        #[comptime] block: usize,
        #[define(F)] _dtype: ElemType,
    ) {
        let tid = UNIT_POS_X as usize;
        let rows = input.shape(1);
        let d = input.shape(2);
        let row = CUBE_POS_X as usize;
        let base = (row / rows) * input.stride(0) + (row % rows) * input.stride(1);
        let sd = input.stride(2);
        let mut shared = Shared::<[f32]>::new_slice(block);

        let mut acc = 0.0f32;
        let mut i = tid;
        while i < d {
            acc += f32::cast_from(input[base + i * sd]);
            i += block;
        }
        let mean = cube_sum(acc, &mut shared) / f32::cast_from(d as u32);
        let mut acc = 0.0f32;
        let mut i = tid;
        while i < d {
            let x = f32::cast_from(input[base + i * sd]) - mean;
            acc += x * x;
            i += block;
        }
        let var = cube_sum(acc, &mut shared) / f32::cast_from(d as u32);
        let std = (var + epsilon).sqrt();
        let mut i = tid;
        while i < d {
            let x = f32::cast_from(input[base + i * sd]);
            output[row * d + i] = F::cast_from((x - mean) / std * f32::cast_from(gamma[i]) + f32::cast_from(beta[i]));
            i += block;
        }
    }

    /// Output tile of the compact GEMM: `TILE_M` rows (pixels or tokens) × `TILE_N` output
    /// channels, `TILE_K` of the reduction per step, one cube of `UNITS` units, each holding a
    /// `PER_UNIT × PER_UNIT` block of the tile in registers.
    const TILE_M: usize = 64;
    const TILE_N: usize = 64;
    const TILE_K: usize = 16;
    const PER_UNIT: usize = 4;
    /// Row stride of the staged tiles in workgroup memory: one more than a row, so that the
    /// units staging one `k` column each (consecutive units, consecutive `k`) hit different
    /// banks.
    const TILE_STRIDE: usize = TILE_M + 1;
    const UNITS: usize = (TILE_M / PER_UNIT) * (TILE_N / PER_UNIT);
    /// The `bits` that say a compact weight is f16 values, two per word
    /// (`crate::weights::Packing::F16`).
    pub(super) const F16_WORDS: u32 = 16;
    /// Rows of the left operand (and of the weight) each unit stages per step, and how far
    /// apart they are.
    const STAGED: usize = TILE_K * TILE_M / UNITS;
    const ROWS_APART: usize = UNITS / TILE_K;

    /// The skinny GEMM (at most `SKINNY_MAX_M` rows: a small image's deep levels, where most of
    /// the weights are): `SKINNY_M` rows × `SKINNY_N` output channels per cube, one channel
    /// per unit, `SKINNY_K` of the reduction staged per step (one column per unit).
    const SKINNY_M: usize = 8;
    const SKINNY_N: usize = 64;
    const SKINNY_K: usize = SKINNY_N;
    pub(super) const SKINNY_MAX_M: usize = 2 * SKINNY_M;

    /// The f32 value of the f16 bits `h` (exact: every f16 is an f32).
    #[cube]
    fn f16_bits_to_f32(h: u32) -> f32 {
        let sign = (h >> 15) << 31;
        let e = (h >> 10) & 31;
        let m = h & 1023;
        // Rebiased (15 → 127); infinities and NaN keep the all-ones exponent.
        let mut exp = e + 112;
        if e == 31 {
            exp = 255;
        }
        let mut v = f32::reinterpret(sign | (exp << 23) | (m << 13));
        if e == 0 {
            // Zero and subnormals: m·2^-24.
            v = f32::cast_from(m) * 5.9604645e-8f32;
            if sign != 0 {
                v = -v;
            }
        }
        v
    }

    /// Value `k` of row `n` of a compact weight. Blocks: `d·(u − 2^(bits−1))`, with `u` the
    /// `bits`-bit code at bit `k·bits` of the row's words (least significant first, possibly
    /// straddling two words) and `d` its block's scale (blocks of `2^block_shift` values), exact
    /// in f32 as on the CPU (`quant::dequantize_row`). `bits` [`F16_WORDS`]: the f16 in half
    /// `k % 2` of word `k / 2`.
    #[cube]
    #[allow(unused_assignments)] // the first value is what the kernel's variable starts as
    fn compact_value<F: Float>(codes: &Tensor<u32>, scales: &Tensor<F>, n: usize, k: usize, bits: u32, block_shift: u32) -> f32 {
        let mut v = 0.0f32;
        if bits == F16_WORDS {
            let word = codes[n * codes.stride(0) + k / 2];
            v = f16_bits_to_f32((word >> ((k % 2) as u32 * 16)) & 0xffff);
        } else {
            v = block_value(codes, scales, n, k, bits, block_shift);
        }
        v
    }

    #[cube]
    fn block_value<F: Float>(codes: &Tensor<u32>, scales: &Tensor<F>, n: usize, k: usize, bits: u32, block_shift: u32) -> f32 {
        let bit = k * bits as usize;
        let w = n * codes.stride(0) + bit / 32;
        let s = (bit % 32) as u32;
        let mut u = codes[w] >> s;
        if s + bits > 32 {
            u |= codes[w + 1] << (32 - s);
        }
        let code = u & ((1u32 << bits) - 1);
        let d = f32::cast_from(scales[n * scales.stride(0) + (k >> block_shift as usize) * scales.stride(1)]);
        d * (f32::cast_from(code) - f32::cast_from(1u32 << (bits - 1)))
    }

    /// Where output row `m` reads `input`, stored in slot `i` of `base`, `y`, `x`: a
    /// projection's row `input[b, t, ·]` (`m = b·N + t`) starts at `base`; a convolution's
    /// output pixel (`m = (b·OH + oy)·OW + ox`) reads batch item `base` from (`y`, `x`) =
    /// (`oy·stride`, `ox·stride`) of the padded map.
    #[cube]
    #[allow(clippy::too_many_arguments)]
    fn row_origin<F: Float>(
        input: &Tensor<F>,
        m: usize,
        out_h: u32,
        out_w: u32,
        stride: u32,
        base: &mut Array<u32>,
        y: &mut Array<u32>,
        x: &mut Array<u32>,
        i: usize,
        #[comptime] conv: bool,
    ) {
        if conv {
            let plane = out_h as usize * out_w as usize;
            let r = m % plane;
            base[i] = ((m / plane) * input.stride(0)) as u32;
            y[i] = ((r / out_w as usize) * stride as usize) as u32;
            x[i] = ((r % out_w as usize) * stride as usize) as u32;
        } else {
            let rows = input.shape(1);
            base[i] = ((m / rows) * input.stride(0) + (m % rows) * input.stride(1)) as u32;
            y[i] = 0u32;
            x[i] = 0u32;
        }
    }

    /// The left operand at reduction step `k` of the row whose origin is (`base`, `y0`, `x0`)
    /// (see [`row_origin`]): for a convolution channel `c` of tap (`ky`, `kx`), zero in the
    /// padding.
    #[cube]
    #[allow(clippy::too_many_arguments)]
    fn lhs_value<F: Float>(
        input: &Tensor<F>,
        base: u32,
        y0: u32,
        x0: u32,
        k: usize,
        c: usize,
        ky: usize,
        kx: usize,
        pad_top: u32,
        pad_left: u32,
        #[comptime] conv: bool,
    ) -> f32 {
        let mut v = 0.0f32;
        if conv {
            let y = y0 as usize + ky;
            let x = x0 as usize + kx;
            let (top, left) = (pad_top as usize, pad_left as usize);
            if y >= top && y < input.shape(2) + top && x >= left && x < input.shape(3) + left {
                v = f32::cast_from(input[base as usize + c * input.stride(1) + (y - top) * input.stride(2) + (x - left) * input.stride(3)]);
            }
        } else {
            v = f32::cast_from(input[base as usize + k * input.stride(2)]);
        }
        v
    }

    /// Whether reduction steps `k0 .. k0 + len` (of `k_total`) reach the image: a convolution's
    /// steps run tap by tap, and a tap that only ever reads padding (bit clear in `live_taps`:
    /// most of a 3×3 kernel on a 1×1 map) contributes nothing. The same for every unit.
    #[cube]
    fn steps_live(k0: usize, len: usize, k_total: usize, channels: usize, live_taps: u32, #[comptime] conv: bool) -> bool {
        let mut live = true;
        if conv {
            let mut last = k0 + len;
            if last > k_total {
                last = k_total;
            }
            let lo = k0 / channels;
            let hi = (last - 1) / channels;
            live = ((live_taps >> lo as u32) & ((2u32 << (hi - lo) as u32) - 1)) != 0;
        }
        live
    }

    /// `output[m, n] = Σ_k lhs(m, k) · w(n, k) (+ bias[n])`, `output` contiguous `[M, N_out]`
    /// (a convolution's is `[B, OH, OW, C_out]`, channels-last), `w` the compact weight.
    ///
    /// Tiling: one cube of 256 units per 64 × 64 output tile. Each step stages a 64 × 16 slice
    /// of the left operand and a 16 × 64 slice of the weight, dequantized once as it is staged,
    /// in workgroup memory (2 × 16 × 65 f32, 8.1 KiB of WebGPU's guaranteed 16 KiB), then every
    /// unit accumulates its 4 × 4 outputs over the 16 (f32 registers, whatever the dtype). Per step the cube does 2·64·64·16 = 131,072
    /// FLOPs and reads from global memory 64·16 activations (4 KiB in f32, 2 KiB in f16) and
    /// 64·16 codes (1 KiB at 8 bits) with 64 · 16/32 scales: an arithmetic intensity of about
    /// 25 FLOPs per byte in f32 and 40 in f16 at 8 bits (more at fewer bits), against about
    /// 0.25 for burn's direct convolution, which reads an input and a weight per FMA. A 3×3
    /// convolution is the same GEMM over the implicit im2col, with `K = C_in·9`: nothing is
    /// expanded in memory, neither the weight nor the patches.
    ///
    /// The left operand, read from `input` in place: for a projection `input[b, t, k]`
    /// (`m = b·N + t`); for a convolution `input[b, c, oy·stride + ky − pad_top, ox·stride + kx −
    /// pad_left]` (`m = (b·OH + oy)·OW + ox`), zero in the padding. A convolution's steps run tap
    /// by tap with the channel fastest (`k = (ky·kernel + kx)·C + c`), so that consecutive units
    /// read consecutive channels of a channels-last map; its weight column is PyTorch's
    /// `c·kernel² + tap`. Steps of taps that only read padding are skipped ([`steps_live`]).
    #[cube(launch)]
    #[allow(clippy::too_many_arguments)]
    fn compact_gemm_kernel<F: Float>(
        input: &Tensor<F>,
        codes: &Tensor<u32>,
        scales: &Tensor<F>,
        bias: &Tensor<F>,
        output: &mut Tensor<F>,
        m_total: u32,
        k_total: u32,
        bits: u32,
        block_shift: u32,
        kernel: u32,
        stride: u32,
        pad_top: u32,
        pad_left: u32,
        out_h: u32,
        out_w: u32,
        live_taps: u32,
        #[comptime] conv: bool,
        #[comptime] has_bias: bool,
        #[define(F)] _dtype: ElemType,
    ) {
        let tid = UNIT_POS_X as usize;
        let tx = tid % (TILE_N / PER_UNIT);
        let ty = tid / (TILE_N / PER_UNIT);
        let n0 = CUBE_POS_X as usize * TILE_N;
        let m0 = CUBE_POS_Y as usize * TILE_M;
        let m_total = m_total as usize;
        let k_total = k_total as usize;
        let n_out = codes.shape(0);
        let channels = input.shape(1);
        let taps = kernel as usize * kernel as usize;
        let mut lhs_tile = Shared::<[f32]>::new_slice(TILE_K * TILE_STRIDE);
        let mut w_tile = Shared::<[f32]>::new_slice(TILE_K * TILE_STRIDE);
        let mut acc = Array::<f32>::new(PER_UNIT * PER_UNIT);
        for i in 0..PER_UNIT * PER_UNIT {
            acc[i] = 0.0f32;
        }

        // Staging: unit `tid` takes reduction column `kk` (the same at every step, UNITS being
        // a multiple of TILE_K: consecutive units read consecutive code words and a row's
        // consecutive inputs) of STAGED rows of each tile, `first`, `first + ROWS_APART`, …
        // Where those rows start in `input` is worked out once, not at every step.
        let kk = tid % TILE_K;
        let first = tid / TILE_K;
        let mut row_base = Array::<u32>::new(STAGED);
        let mut row_y = Array::<u32>::new(STAGED);
        let mut row_x = Array::<u32>::new(STAGED);
        for i in 0..STAGED {
            row_origin(input, m0 + first + i * ROWS_APART, out_h, out_w, stride, &mut row_base, &mut row_y, &mut row_x, i, conv);
        }

        let mut k0 = 0;
        while k0 < k_total {
            if steps_live(k0, TILE_K, k_total, channels, live_taps, conv) {
                let k = k0 + kk;
                let k_ok = k < k_total;
                // A convolution's step `k` is channel `c` of tap (`ky`, `kx`), weight column `c·kernel² + tap`.
                let c = k % channels;
                let tap = k / channels;
                let ky = tap / kernel as usize;
                let kx = tap % kernel as usize;
                let mut col = k;
                if conv {
                    col = c * taps + tap;
                }
                for i in 0..STAGED {
                    let slot = kk * TILE_STRIDE + first + i * ROWS_APART;
                    let mut v = 0.0f32;
                    if m0 + first + i * ROWS_APART < m_total && k_ok {
                        v = lhs_value(input, row_base[i], row_y[i], row_x[i], k, c, ky, kx, pad_top, pad_left, conv);
                    }
                    lhs_tile[slot] = v;
                    let n = n0 + first + i * ROWS_APART;
                    let mut w = 0.0f32;
                    if n < n_out && k_ok {
                        w = compact_value(codes, scales, n, col, bits, block_shift);
                    }
                    w_tile[slot] = w;
                }
                sync_cube();
                for kk in 0..TILE_K {
                    for i in 0..PER_UNIT {
                        let a = lhs_tile[kk * TILE_STRIDE + ty * PER_UNIT + i];
                        for j in 0..PER_UNIT {
                            acc[i * PER_UNIT + j] += a * w_tile[kk * TILE_STRIDE + tx * PER_UNIT + j];
                        }
                    }
                }
                sync_cube();
            }
            k0 += TILE_K;
        }

        for i in 0..PER_UNIT {
            let m = m0 + ty * PER_UNIT + i;
            if m < m_total {
                for j in 0..PER_UNIT {
                    let n = n0 + tx * PER_UNIT + j;
                    if n < n_out {
                        let mut y = acc[i * PER_UNIT + j];
                        if has_bias {
                            y += f32::cast_from(bias[n]);
                        }
                        output[m * n_out + n] = F::cast_from(y);
                    }
                }
            }
        }
    }

    /// The same GEMM as [`compact_gemm_kernel`] for few rows (at most [`SKINNY_MAX_M`]): there a
    /// 64-row tile would be mostly padding, and the cost is reading the weight, each value of
    /// which serves only these rows. One cube per `SKINNY_M` rows × `SKINNY_N` output channels,
    /// one channel per unit, which dequantizes its weight row straight into registers (no
    /// weight tile, no bank conflicts); each step stages `SKINNY_M` × `SKINNY_K` of the left
    /// operand (2 KiB of workgroup memory), read by every unit.
    #[cube(launch)]
    #[allow(clippy::too_many_arguments)]
    fn compact_skinny_gemm_kernel<F: Float>(
        input: &Tensor<F>,
        codes: &Tensor<u32>,
        scales: &Tensor<F>,
        bias: &Tensor<F>,
        output: &mut Tensor<F>,
        m_total: u32,
        k_total: u32,
        bits: u32,
        block_shift: u32,
        kernel: u32,
        stride: u32,
        pad_top: u32,
        pad_left: u32,
        out_h: u32,
        out_w: u32,
        live_taps: u32,
        #[comptime] conv: bool,
        #[comptime] has_bias: bool,
        #[define(F)] _dtype: ElemType,
    ) {
        let tid = UNIT_POS_X as usize;
        let n = CUBE_POS_X as usize * SKINNY_N + tid;
        let m0 = CUBE_POS_Y as usize * SKINNY_M;
        let m_total = m_total as usize;
        let k_total = k_total as usize;
        let n_out = codes.shape(0);
        let channels = input.shape(1);
        let taps = kernel as usize * kernel as usize;
        let mut lhs_tile = Shared::<[f32]>::new_slice(SKINNY_K * SKINNY_M);
        let mut acc = Array::<f32>::new(SKINNY_M);
        let mut row_base = Array::<u32>::new(SKINNY_M);
        let mut row_y = Array::<u32>::new(SKINNY_M);
        let mut row_x = Array::<u32>::new(SKINNY_M);
        for i in 0..SKINNY_M {
            acc[i] = 0.0f32;
            row_origin(input, m0 + i, out_h, out_w, stride, &mut row_base, &mut row_y, &mut row_x, i, conv);
        }

        let mut k0 = 0;
        while k0 < k_total {
            if steps_live(k0, SKINNY_K, k_total, channels, live_taps, conv) {
                // Staging: unit `tid` takes step `k0 + tid` of every row.
                let k = k0 + tid;
                let c = k % channels;
                let tap = k / channels;
                let (ky, kx) = (tap / kernel as usize, tap % kernel as usize);
                for i in 0..SKINNY_M {
                    let mut v = 0.0f32;
                    if m0 + i < m_total && k < k_total {
                        v = lhs_value(input, row_base[i], row_y[i], row_x[i], k, c, ky, kx, pad_top, pad_left, conv);
                    }
                    lhs_tile[tid * SKINNY_M + i] = v;
                }
                sync_cube();
                if n < n_out {
                    let mut steps = k_total - k0;
                    if steps > SKINNY_K {
                        steps = SKINNY_K;
                    }
                    // The weight column of step `k0 + kk`, followed step by step (no division).
                    let mut c = k0 % channels;
                    let mut tap = k0 / channels;
                    for kk in 0..steps {
                        let mut col = k0 + kk;
                        if conv {
                            col = c * taps + tap;
                            c += 1;
                            if c == channels {
                                c = 0;
                                tap += 1;
                            }
                        }
                        let w = compact_value(codes, scales, n, col, bits, block_shift);
                        for i in 0..SKINNY_M {
                            acc[i] += lhs_tile[kk * SKINNY_M + i] * w;
                        }
                    }
                }
                sync_cube();
            }
            k0 += SKINNY_K;
        }

        if n < n_out {
            for i in 0..SKINNY_M {
                let m = m0 + i;
                if m < m_total {
                    let mut y = acc[i];
                    if has_bias {
                        y += f32::cast_from(bias[n]);
                    }
                    output[m * n_out + n] = F::cast_from(y);
                }
            }
        }
    }

    /// One unit per value of a compact weight: `output` `[rows, cols]`, contiguous.
    #[cube(launch)]
    fn compact_dequantize_kernel<F: Float>(
        codes: &Tensor<u32>,
        scales: &Tensor<F>,
        output: &mut Tensor<F>,
        bits: u32,
        block_shift: u32,
        #[define(F)] _dtype: ElemType,
    ) {
        let pos = ABSOLUTE_POS;
        if pos >= output.len() {
            terminate!();
        }
        let cols = output.shape(1);
        output[pos] = F::cast_from(compact_value(codes, scales, pos / cols, pos % cols, bits, block_shift));
    }

    /// What a compact GEMM computes: a projection, or a convolution's geometry.
    struct Gemm {
        m: usize,
        k: usize,
        conv: Option<ConvGeometry>,
    }

    #[derive(Clone, Copy, Default)]
    struct ConvGeometry {
        kernel: usize,
        stride: usize,
        pad_top: usize,
        pad_left: usize,
        out_h: usize,
        out_w: usize,
    }

    /// The taps of a convolution that read the image for some output pixel (bit `ky·kernel +
    /// kx`); the others only ever read padding.
    fn live_taps(g: &ConvGeometry, height: usize, width: usize) -> u32 {
        let reaches = |k: usize, pad: usize, out: usize, size: usize| (0..out).any(|o| (pad..pad + size).contains(&(o * g.stride + k)));
        let mut mask = 0u32;
        for ky in 0..g.kernel {
            for kx in 0..g.kernel {
                if reaches(ky, g.pad_top, g.out_h, height) && reaches(kx, g.pad_left, g.out_w, width) {
                    mask |= 1 << (ky * g.kernel + kx);
                }
            }
        }
        mask
    }

    /// Launches [`compact_gemm_kernel`] (or, for few rows, [`compact_skinny_gemm_kernel`]) into a
    /// new contiguous `out_shape` (`[M, N_out]` in memory).
    #[allow(clippy::too_many_arguments)]
    fn launch_compact_gemm(
        input: CubeTensor,
        codes: CubeTensor,
        scales: CubeTensor,
        bias: CubeTensor,
        bits: usize,
        block: usize,
        has_bias: bool,
        gemm: Gemm,
        out_shape: burn::tensor::Shape,
    ) -> CubeTensor {
        assert!(block.is_power_of_two(), "a compact weight's block ({block}) is a power of two");
        let n_out = codes.meta.shape()[0];
        let dims = input.meta.shape().clone();
        let out = empty_device_dtype(input.client.clone(), input.device.clone(), out_shape, input.dtype);
        let client = input.client.clone();
        let dtype = storage(&input);
        let g = gemm.conv.unwrap_or_default();
        // Up to 5×5 kernels: their taps fit the mask's 32 bits.
        assert!(g.kernel <= 5, "a compact convolution's kernel is at most 5×5, not {0}×{0}", g.kernel);
        let live = if gemm.conv.is_some() { live_taps(&g, dims[2], dims[3]) } else { u32::MAX };
        let skinny = gemm.m <= SKINNY_MAX_M;
        let (tile_m, tile_n, units) = if skinny { (SKINNY_M, SKINNY_N, SKINNY_N) } else { (TILE_M, TILE_N, UNITS) };
        let tiles_m = gemm.m.div_ceil(tile_m);
        assert!(tiles_m <= u16::MAX as usize, "a compact GEMM of {} rows is over the dispatch limit", gemm.m);
        let count = CubeCount::Static(n_out.div_ceil(tile_n) as u32, tiles_m as u32, 1);
        let dim = CubeDim::new_1d(units as u32);
        macro_rules! launch {
            ($kernel:ident) => {
                $kernel::launch(
                    &client,
                    count,
                    dim,
                    input.into_tensor_arg(),
                    codes.into_tensor_arg(),
                    scales.into_tensor_arg(),
                    bias.into_tensor_arg(),
                    out.clone().into_tensor_arg(),
                    gemm.m as u32,
                    gemm.k as u32,
                    bits as u32,
                    block.trailing_zeros(),
                    g.kernel.max(1) as u32,
                    g.stride as u32,
                    g.pad_top as u32,
                    g.pad_left as u32,
                    g.out_h.max(1) as u32,
                    g.out_w.max(1) as u32,
                    live,
                    gemm.conv.is_some(),
                    has_bias,
                    dtype,
                )
            };
        }
        if skinny {
            launch!(compact_skinny_gemm_kernel);
        } else {
            launch!(compact_gemm_kernel);
        }
        out
    }

    /// GroupNorm (+ addend, + SiLU) of `input` `[B, C, H, W]`, written channels-last.
    fn launch_group_norm(
        input: CubeTensor,
        addend: Option<(CubeTensor, usize)>,
        gamma: CubeTensor,
        beta: CubeTensor,
        groups: usize,
        epsilon: f64,
        silu: bool,
    ) -> CubeTensor {
        let [b, c, h, w] = input.meta.shape().dims::<4>();
        let add = addend.is_some();
        let (addend, offset) = addend.unwrap_or_else(|| (gamma.clone(), 0));
        let out = empty_device_dtype(input.client.clone(), input.device.clone(), [b, h, w, c].into(), input.dtype);
        let client = input.client.clone();
        let dtype = storage(&input);
        group_norm_kernel::launch(
            &client,
            CubeCount::Static((b * groups) as u32, 1, 1),
            CubeDim::new_1d(BLOCK as u32),
            input.into_tensor_arg(),
            addend.into_tensor_arg(),
            gamma.into_tensor_arg(),
            beta.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            groups as u32,
            offset as u32,
            epsilon as f32,
            add,
            silu,
            BLOCK,
            dtype,
        );
        // Channels-last in memory, [B, C, H, W] to its users.
        permute(out, &[0, 3, 1, 2])
    }

    impl GpuOps for CubeBackend {
        fn matmul(lhs: CubeTensor, rhs: CubeTensor) -> CubeTensor {
            <Self as burn::backend::ops::FloatTensorOps<Self>>::float_matmul(lhs, rhs)
        }

        fn flash_attention(query: CubeTensor, key: CubeTensor, value: CubeTensor) -> CubeTensor {
            use cubek::attention::forward::definition::{AccumulatorPrecision, AttentionGlobalTypes, AttentionOptions};
            use cubek::attention::forward::launch::{launch_ref, BlueprintStrategy, Strategy};
            let [b, heads, n, _] = query.meta.shape().dims::<4>();
            let dv = value.meta.shape()[3];
            // Written as [B, N, heads, dv] in memory, so that merging the heads after it is a view.
            let out = empty_device_dtype(query.client.clone(), query.device.clone(), [b, n, heads, dv].into(), query.dtype);
            let out = permute(out, &[0, 2, 1, 3]);
            let dtypes = AttentionGlobalTypes {
                query: storage(&query),
                key: storage(&key),
                value: storage(&value),
                mask: burn::backend::cubecl::dtype_to_storage_type(burn::tensor::DType::U8),
                out: storage(&out),
            };
            let options = AttentionOptions {
                causal: false,
                accumulator_precision: AccumulatorPrecision::Strict(ElemType::Float(cubecl::ir::FloatKind::F32)),
            };
            let client = query.client.clone();
            launch_ref(
                Strategy::Unit(BlueprintStrategy::Inferred(())),
                &client,
                query.binding(),
                key.binding(),
                value.binding(),
                None,
                out.clone().binding(),
                &dtypes,
                options,
            )
            .expect("the unit flash-attention kernel launches on any WebGPU device");
            out
        }

        fn group_norm(input: CubeTensor, gamma: CubeTensor, beta: CubeTensor, groups: usize, epsilon: f64, silu: bool) -> CubeTensor {
            launch_group_norm(input, None, gamma, beta, groups, epsilon, silu)
        }

        #[allow(clippy::too_many_arguments)]
        fn group_norm_add(
            input: CubeTensor,
            addend: CubeTensor,
            offset: usize,
            gamma: CubeTensor,
            beta: CubeTensor,
            groups: usize,
            epsilon: f64,
            silu: bool,
        ) -> CubeTensor {
            launch_group_norm(input, Some((addend, offset)), gamma, beta, groups, epsilon, silu)
        }

        fn geglu(h: CubeTensor, bias: CubeTensor) -> CubeTensor {
            let mut shape = h.meta.shape().clone();
            let r = shape.num_dims();
            shape[r - 1] /= 2;
            let out = empty_device_dtype(h.client.clone(), h.device.clone(), shape, h.dtype);
            let n = out.meta.num_elements();
            let client = h.client.clone();
            let dtype = storage(&h);
            let cube_dim = CubeDim::new(&client, n);
            let cube_count = cubecl::calculate_cube_count_elemwise(&client, n, cube_dim);
            geglu_kernel::launch(
                &client,
                cube_count,
                cube_dim,
                h.into_tensor_arg(),
                bias.into_tensor_arg(),
                out.clone().into_tensor_arg(),
                dtype,
            );
            out
        }

        #[allow(clippy::too_many_arguments)]
        fn compact_conv2d(
            input: CubeTensor,
            codes: CubeTensor,
            scales: CubeTensor,
            bias: CubeTensor,
            bits: usize,
            block: usize,
            kernel: usize,
            stride: usize,
            pad_top: usize,
            pad_left: usize,
            pad_bottom: usize,
            pad_right: usize,
            has_bias: bool,
        ) -> CubeTensor {
            let shape = input.meta.shape().clone();
            let (out_h, out_w) = super::conv_out_size(&shape, kernel, stride, [pad_top, pad_left, pad_bottom, pad_right]);
            let [b, c, _, _] = shape.dims::<4>();
            let n_out = codes.meta.shape()[0];
            let conv = ConvGeometry { kernel, stride, pad_top, pad_left, out_h, out_w };
            let gemm = Gemm { m: b * out_h * out_w, k: c * kernel * kernel, conv: Some(conv) };
            let out = launch_compact_gemm(input, codes, scales, bias, bits, block, has_bias, gemm, [b, out_h, out_w, n_out].into());
            // Channels-last in memory, [B, C, H, W] to its users (as burn's convolution writes).
            permute(out, &[0, 3, 1, 2])
        }

        fn compact_linear(
            input: CubeTensor,
            codes: CubeTensor,
            scales: CubeTensor,
            bias: CubeTensor,
            bits: usize,
            block: usize,
            has_bias: bool,
        ) -> CubeTensor {
            let [b, n, k] = input.meta.shape().dims::<3>();
            let n_out = codes.meta.shape()[0];
            let gemm = Gemm { m: b * n, k, conv: None };
            launch_compact_gemm(input, codes, scales, bias, bits, block, has_bias, gemm, [b, n, n_out].into())
        }

        fn compact_dequantize(codes: CubeTensor, scales: CubeTensor, bits: usize, block: usize, cols: usize) -> CubeTensor {
            let rows = codes.meta.shape()[0];
            let out = empty_device_dtype(scales.client.clone(), scales.device.clone(), [rows, cols].into(), scales.dtype);
            let n = rows * cols;
            let client = scales.client.clone();
            let dtype = storage(&scales);
            let cube_dim = CubeDim::new(&client, n);
            let cube_count = cubecl::calculate_cube_count_elemwise(&client, n, cube_dim);
            compact_dequantize_kernel::launch(
                &client,
                cube_count,
                cube_dim,
                codes.into_tensor_arg(),
                scales.into_tensor_arg(),
                out.clone().into_tensor_arg(),
                bits as u32,
                block.trailing_zeros(),
                dtype,
            );
            out
        }

        fn layer_norm(input: CubeTensor, gamma: CubeTensor, beta: CubeTensor, epsilon: f64) -> CubeTensor {
            let [b, n, d] = input.meta.shape().dims::<3>();
            let out = empty_device_dtype(input.client.clone(), input.device.clone(), [b, n, d].into(), input.dtype);
            let client = input.client.clone();
            let dtype = storage(&input);
            layer_norm_kernel::launch(
                &client,
                CubeCount::Static((b * n) as u32, 1, 1),
                CubeDim::new_1d(BLOCK as u32),
                input.into_tensor_arg(),
                gamma.into_tensor_arg(),
                beta.into_tensor_arg(),
                out.clone().into_tensor_arg(),
                epsilon as f32,
                BLOCK,
                dtype,
            );
            out
        }
    }
}

/// Whether `t` lives on a CubeCL device (the GPU), where these ops apply.
pub fn on_gpu<const D: usize>(t: &Tensor<D>) -> bool {
    matches!(t.device().as_dispatch(), burn::backend::DispatchDevice::Cube(_))
}

/// `lhs · rhs` (batched, broadcast), as one kernel that fusion does not capture.
pub fn matmul<const D: usize>(lhs: Tensor<D>, rhs: Tensor<D>) -> Tensor<D> {
    Tensor::from_dispatch(Dispatch::matmul(lhs.into_dispatch(), rhs.into_dispatch()))
}

/// softmax(q·kᵀ/√d)·v on `[B, heads, N, d]` tensors, in one kernel.
pub fn flash_attention(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>) -> Tensor<4> {
    Tensor::from_dispatch(Dispatch::flash_attention(q.into_dispatch(), k.into_dispatch(), v.into_dispatch()))
}

/// GroupNorm (affine) of `x` `[B, C, H, W]`, then SiLU when `silu`, in one kernel; the result is
/// stored channels-last.
pub fn group_norm(x: Tensor<4>, gamma: Tensor<1>, beta: Tensor<1>, groups: usize, epsilon: f64, silu: bool) -> Tensor<4> {
    Tensor::from_dispatch(Dispatch::group_norm(x.into_dispatch(), gamma.into_dispatch(), beta.into_dispatch(), groups, epsilon, silu))
}

/// [`group_norm`] of `x + addend[:, offset..offset + C]` (broadcast over the map).
#[allow(clippy::too_many_arguments)]
pub fn group_norm_add(
    x: Tensor<4>,
    addend: Tensor<2>,
    offset: usize,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    groups: usize,
    epsilon: f64,
    silu: bool,
) -> Tensor<4> {
    Tensor::from_dispatch(Dispatch::group_norm_add(
        x.into_dispatch(),
        addend.into_dispatch(),
        offset,
        gamma.into_dispatch(),
        beta.into_dispatch(),
        groups,
        epsilon,
        silu,
    ))
}

/// GEGLU of `h + bias` over the two halves of `h`'s last dimension, in one kernel.
pub fn geglu<const D: usize>(h: Tensor<D>, bias: Tensor<1>) -> Tensor<D> {
    Tensor::from_dispatch(Dispatch::geglu(h.into_dispatch(), bias.into_dispatch()))
}

/// LayerNorm (affine) of `x` `[B, N, D]` over D, in one kernel.
pub fn layer_norm(x: Tensor<3>, gamma: Tensor<1>, beta: Tensor<1>, epsilon: f64) -> Tensor<3> {
    Tensor::from_dispatch(Dispatch::layer_norm(x.into_dispatch(), gamma.into_dispatch(), beta.into_dispatch(), epsilon))
}

/// A convolution of `x` `[B, C, H, W]` with the compact `weight` (`[C_out, C, k, k]`), stride
/// `stride` and padding `[top, left, bottom, right]`, `+ bias`; one kernel that dequantizes the
/// weight inside its tiles. The result is stored channels-last.
pub fn compact_conv2d(x: Tensor<4>, weight: &CompactTensor, bias: Option<Tensor<1>>, stride: usize, padding: [usize; 4]) -> Tensor<4> {
    let kernel = weight.shape[2];
    let has_bias = bias.is_some();
    let bias = bias.map_or_else(|| weight.scales.clone().into_dispatch(), |b| b.into_dispatch());
    let [top, left, bottom, right] = padding;
    Tensor::from_dispatch(Dispatch::compact_conv2d(
        x.into_dispatch(),
        weight.codes.clone().into_dispatch(),
        weight.scales.clone().into_dispatch(),
        bias,
        packing_bits(weight),
        packing_block(weight),
        kernel,
        stride,
        top,
        left,
        bottom,
        right,
        has_bias,
    ))
}

/// `x` `[B, N, K]` times the compact `weight` (`[d_out, K]`) transposed, `+ bias`: `[B, N, d_out]`,
/// in one kernel.
pub fn compact_linear(x: Tensor<3>, weight: &CompactTensor, bias: Option<Tensor<1>>) -> Tensor<3> {
    let has_bias = bias.is_some();
    let bias = bias.map_or_else(|| weight.scales.clone().into_dispatch(), |b| b.into_dispatch());
    Tensor::from_dispatch(Dispatch::compact_linear(
        x.into_dispatch(),
        weight.codes.clone().into_dispatch(),
        weight.scales.clone().into_dispatch(),
        bias,
        packing_bits(weight),
        packing_block(weight),
        has_bias,
    ))
}

/// The compact `weight`'s values as `[rows, cols]` (its first dimension, the rest flattened).
pub fn compact_dequantize(weight: &CompactTensor) -> Tensor<2> {
    let (_, cols) = crate::weights::quant::rows_cols(&weight.shape);
    Tensor::from_dispatch(Dispatch::compact_dequantize(
        weight.codes.clone().into_dispatch(),
        weight.scales.clone().into_dispatch(),
        packing_bits(weight),
        packing_block(weight),
        cols,
    ))
}

/// The `bits` the compact kernels take for `weight`'s packing (16: f16 words).
fn packing_bits(weight: &CompactTensor) -> usize {
    match weight.packing {
        Packing::Blocks(q) => q.bits as usize,
        Packing::F16 => cube::F16_WORDS as usize,
    }
}

fn packing_block(weight: &CompactTensor) -> usize {
    match weight.packing {
        Packing::Blocks(q) => q.block,
        Packing::F16 => 1,
    }
}
