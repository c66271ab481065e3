//! CPU backend fast paths besides convolutions ([`crate::nn::cpu_conv`]), chosen at run
//! time like them: float32 tensors on burn's Flex device take them, every other tensor (wgpu /
//! WebGPU) goes through burn's generic ops unchanged.

use burn::backend::Flex;
use burn::nn::GroupNorm;
use burn::tensor::{DType, Tensor, TensorData};
use burn_flex::FlexTensor;
use rayon::prelude::*;

/// `t` with a contiguous row-major layout (a no-op when it has one). Linear weights are kept
/// as transposed views of the PyTorch `[d_out, d_in]` tensors; burn's `linear` reshapes the
/// weight to the input's rank, which on Flex copies (transposes) the whole weight on every
/// call. Made contiguous once at load, the reshape is a view.
pub fn contiguous<const D: usize>(t: Tensor<D>) -> Tensor<D> {
    match flex_values(&t) {
        Some(f) => Tensor::from_primitive::<Flex>(f),
        None => t,
    }
}

/// `t`'s values on the Flex device, contiguous row-major (so that `as_slice` reads them in
/// order); `None` on any other device.
pub(crate) fn flex_values<const D: usize>(t: &Tensor<D>) -> Option<FlexTensor> {
    t.clone().try_into_primitive::<Flex>().ok().map(|f| f.to_contiguous())
}

/// Elements per parallel task of the element-wise kernels.
const CHUNK: usize = 1 << 14;

/// GEGLU on `h` `[.., 2·inner]`: `hidden * gelu(gate)` with `hidden, gate` its two halves of the
/// last dimension (erf GELU), fused, vectorized and multi-threaded; burn-flex would copy both
/// halves, run GELU as a single-threaded map of libm's scalar `erff` (6% of a 512² UNet call)
/// and the product as another pass. `erf` is [`erf_f32`], PyTorch's own. `None` when the fast
/// path does not apply.
pub fn geglu<const D: usize>(h: &Tensor<D>) -> Option<Tensor<D>> {
    let mut dims = h.dims();
    let wide = dims[D - 1];
    if h.dtype() != DType::F32 || wide % 2 != 0 || wide == 0 {
        return None;
    }
    let inner = wide / 2;
    let f = flex_values(h)?;
    let hs = f.as_slice::<f32>()?;
    let mut out = vec![0f32; hs.len() / 2];
    let rows = (CHUNK / inner).max(1);
    out.par_chunks_mut(rows * inner).zip(hs.par_chunks(rows * wide)).for_each(|(o, h)| geglu_rows(o, h, inner));
    dims[D - 1] = inner;
    Some(Tensor::from_primitive::<Flex>(FlexTensor::from_data(TensorData::new(out, dims))))
}

dispatch_wide! {
    /// [`geglu`] of whole rows: `h` `[rows, 2·inner]` into `o` `[rows, inner]`.
    fn geglu_rows(o: &mut [f32], h: &[f32], inner: usize) => geglu_rows_body
}

#[inline(always)]
fn geglu_rows_body(o: &mut [f32], h: &[f32], inner: usize) {
    for (o, h) in o.chunks_mut(inner).zip(h.chunks(2 * inner)) {
        let (hidden, gate) = h.split_at(inner);
        for ((o, &h), &x) in o.iter_mut().zip(hidden).zip(gate) {
            *o = h * (0.5 * x * (1.0 + erf_f32(x * core::f32::consts::FRAC_1_SQRT_2)));
        }
    }
}

/// `erf(x)` as PyTorch's vectorized CPU kernels compute it (so as the reference's GELU does):
/// Abramowitz & Stegun 7.1.26, `1 − (a₁t + a₂t² + a₃t³ + a₄t⁴ + a₅t⁵)·e^(−x²)` with
/// `t = 1 / (1 + p|x|)`, odd; within 1.5e-7 of the true value in exact arithmetic, 5e-7 in f32
/// (the difference from 1 near 0 cancels). Branch-free, so that it
/// vectorizes; meant for [`dispatch_wide!`] bodies, whose targets have FMA (elsewhere
/// `mul_add` is a libm call: right, but slow).
#[inline(always)]
pub fn erf_f32(x: f32) -> f32 {
    let t = 1.0 / x.abs().mul_add(0.327_591_1, 1.0);
    let r = t.mul_add(t.mul_add(t.mul_add(t.mul_add(1.061_405_4, -1.453_152), 1.421_413_8), -0.284_496_74), 0.254_829_6);
    (-(r * t)).mul_add(exp_f32(-x * x), 1.0).copysign(x)
}

/// flex's sigmoid (same branches, so the same values).
fn sigmoid(x: f32) -> f32 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// SiLU `x·sigmoid(x)` in one multi-threaded pass (flex: a single-threaded sigmoid map, then a
/// product). `None` when the fast path does not apply.
pub fn silu<const D: usize>(x: &Tensor<D>) -> Option<Tensor<D>> {
    if x.dtype() != DType::F32 {
        return None;
    }
    let f = flex_values(x)?;
    let xs = f.as_slice::<f32>()?;
    let mut out = vec![0f32; xs.len()];
    out.par_chunks_mut(CHUNK).zip(xs.par_chunks(CHUNK)).for_each(|(o, x)| {
        for (o, &x) in o.iter_mut().zip(x) {
            *o = x * sigmoid(x);
        }
    });
    Some(Tensor::from_primitive::<Flex>(FlexTensor::from_data(TensorData::new(out, x.dims()))))
}

/// `dst [m × n] = (dst if accumulate) + scale · lhs [m × k] · rhs [k × n]`: the one `gemm` call
/// of the CPU fast paths, named. Each matrix is its pointer and (row, column) strides in
/// elements; the destination's columns are contiguous. On the thread pool when `parallel`.
///
/// # Safety
/// The pointers are valid for those shapes and strides, and `dst` aliases neither operand.
#[allow(clippy::too_many_arguments)]
pub unsafe fn sgemm(
    [m, n, k]: [usize; 3],
    dst: (*mut f32, usize),
    lhs: (*const f32, usize, usize),
    rhs: (*const f32, usize, usize),
    scale: f32,
    accumulate: bool,
    parallel: bool,
) {
    // One short side against a long reduction: see `skinny_gemm` (its rows must be contiguous).
    #[cfg(target_arch = "x86_64")]
    if parallel && accumulate && scale == 1.0 && lhs.2 == 1 && rhs.2 == 1 && dst.1 >= n && super::skinny_gemm::applies([m, n, k]) {
        // SAFETY: the caller's shapes and strides, as `gemm` would take them.
        return unsafe { super::skinny_gemm::sgemm([m, n, k], dst, (lhs.0, lhs.1), (rhs.0, rhs.1)) };
    }
    let par = if parallel { gemm::Parallelism::Rayon(0) } else { gemm::Parallelism::None };
    let i = |s: usize| s as isize;
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.0,
            1,
            i(dst.1),
            accumulate,
            lhs.0,
            i(lhs.2),
            i(lhs.1),
            rhs.0,
            i(rhs.2),
            i(rhs.1),
            1.0,
            scale,
            false,
            false,
            false,
            par,
        )
    }
}

/// `e^x` in f32 without a libm call, so that loops over it vectorize: Cody–Waite reduction
/// `x = n·ln 2 + r`, |r| ≤ ln 2 / 2, Cephes' degree-6 polynomial for `e^r`, `2^n` from the
/// exponent bits. Within 2 ulp of `f32::exp` on [-87, 88]; clamped outside (no inf, no
/// denormals).
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    // Round to nearest by the 1.5·2²³ trick (`round()` is a libm call on baseline x86-64).
    let n = (x * core::f32::consts::LOG2_E + 12582912.0) - 12582912.0;
    let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r + 0.166_666_65) * r + 0.5;
    let e = p * r * r + r + 1.0;
    // 2ⁿ: n + 127 lands in the low mantissa bits of 2²³ + n + 127 (n is integral, in
    // [-126, 127]); shifted into the exponent field. No float→int conversion (scalar when
    // saturating, as `as` does).
    e * f32::from_bits((n + 8_388_735.0).to_bits() << 23)
}

/// `GroupNorm` (affine) of `x` `[B, C, ..]`, followed by SiLU when `silu`, in two vectorized,
/// multi-threaded passes per group (the statistics, then normalise + affine + activation);
/// burn-nn composes it from a dozen whole-tensor ops. The statistics are accumulated in f64
/// (burn: f32); the normalisation is `x·s + t` with `s = γ / √(var + ε)`,
/// `t = β − mean·s` (burn: `(x − mean) / √(var + ε) · γ + β`, the same up to rounding), SiLU
/// `y / (1 + e^−y)` with [`exp_f32`]. `None` when the fast path does not apply.
pub fn group_norm<const D: usize>(gn: &GroupNorm, x: &Tensor<D>, silu: bool) -> Option<Tensor<D>> {
    let dims = x.dims();
    let (Some(gamma), Some(beta)) = (&gn.gamma, &gn.beta) else {
        return None;
    };
    if D < 3 || x.dtype() != DType::F32 || !gn.affine || gn.num_groups == 0 || dims[1] != gn.num_channels || dims[1] % gn.num_groups != 0 {
        return None;
    }
    let (gf, bf) = (flex_values(&gamma.val())?, flex_values(&beta.val())?);
    let (gs, bs) = (gf.as_slice::<f32>()?, bf.as_slice::<f32>()?);
    let f = flex_values(x)?;
    let xs = f.as_slice::<f32>()?;
    let (c, plane) = (dims[1], dims[2..].iter().product::<usize>());
    let cg = c / gn.num_groups;
    if gs.len() != c || bs.len() != c || plane == 0 {
        return None;
    }
    let (groups, eps) = (gn.num_groups, gn.epsilon);
    let mut out = vec![0f32; xs.len()];
    // One task per (batch, group): `cg` whole channel planes.
    out.par_chunks_mut(cg * plane).zip(xs.par_chunks(cg * plane)).enumerate().for_each(|(i, (o, x))| {
        let c0 = (i % groups) * cg;
        normalize_group(o, x, plane, &gs[c0..c0 + cg], &bs[c0..c0 + cg], eps, silu)
    });
    Some(Tensor::from_primitive::<Flex>(FlexTensor::from_data(TensorData::new(out, dims))))
}

dispatch_wide! {
    /// One group of [`group_norm`]: `x` its channels' planes of `plane` values, `gamma` and
    /// `beta` its channels'.
    fn normalize_group(o: &mut [f32], x: &[f32], plane: usize, gamma: &[f32], beta: &[f32], eps: f64, silu: bool) => normalize_group_body
}

#[inline(always)]
fn normalize_group_body(o: &mut [f32], x: &[f32], plane: usize, gamma: &[f32], beta: &[f32], eps: f64, silu: bool) {
    // One pass: E[x] and E[x²] in f64, whose cancellation in E[x²] − E[x]² costs about
    // 1e-16·(mean/std)² of the variance, nothing at f32 precision.
    let n = x.len() as f64;
    let (sum, squares) = sums_f64(x);
    let mean = sum / n;
    let var = (squares / n - mean * mean).max(0.0);
    let inv = 1.0 / (var + eps).sqrt();
    for ((o, x), (&g, &b)) in o.chunks_mut(plane).zip(x.chunks(plane)).zip(gamma.iter().zip(beta)) {
        let s = g as f64 * inv;
        let (s, t) = (s as f32, (b as f64 - mean * s) as f32);
        if silu {
            for (o, &v) in o.iter_mut().zip(x) {
                let y = v * s + t;
                *o = y / (1.0 + exp_f32(-y));
            }
        } else {
            for (o, &v) in o.iter_mut().zip(x) {
                *o = v * s + t;
            }
        }
    }
}

/// `x · weight + bias` for `x` `[.., d_in]` and `weight` `[d_in, d_out]` (f32): one `gemm` into
/// the output rows, which start as the bias (burn: the product, then a broadcast add over it).
/// `None` when the fast path does not apply.
pub fn linear<const D: usize>(x: &Tensor<D>, weight: &Tensor<2>, bias: Option<&Tensor<1>>) -> Option<Tensor<D>> {
    let mut dims = x.dims();
    let ([d_in, d_out], rows) = (weight.dims(), dims[..D - 1].iter().product::<usize>());
    if x.dtype() != DType::F32 || weight.dtype() != DType::F32 || dims[D - 1] != d_in || bias.is_some_and(|b| b.dims() != [d_out]) {
        return None;
    }
    let xf = flex_values(&x.clone().reshape([rows, d_in]))?;
    let wf = flex_values(weight)?;
    let (xs, ws) = (xf.as_slice::<f32>()?, wf.as_slice::<f32>()?);
    let mut out = match bias {
        Some(b) => {
            let bf = flex_values(b)?;
            let bs = bf.as_slice::<f32>()?;
            let mut out = Vec::with_capacity(rows * d_out);
            (0..rows).for_each(|_| out.extend_from_slice(bs));
            out
        }
        None => vec![0f32; rows * d_out],
    };
    // SAFETY: rows × d_in, d_in × d_out and rows × d_out values.
    unsafe { sgemm([rows, d_out, d_in], (out.as_mut_ptr(), d_out), (xs.as_ptr(), d_in, 1), (ws.as_ptr(), d_out, 1), 1.0, true, true) };
    dims[D - 1] = d_out;
    Some(Tensor::from_primitive::<Flex>(FlexTensor::from_data(TensorData::new(out, dims))))
}

/// Query rows per attention task: its score block `[rows, keys]` takes half the L2 at 2048 keys.
/// At the 512² UNet's 64² maps (4096 keys, 2 MiB) blocks of 64 rows measured no faster on this
/// machine: in three rounds of alternation either size won by 5–15%.
const ATTENTION_ROWS: usize = 128;

/// softmax(q·kᵀ/√d)·v on `[B, heads, N, d]` (keys and values `[B, heads, M, d]`), f32, as
/// multi-threaded tasks of [`ATTENTION_ROWS`] query rows of one head: the block's scores by one
/// `gemm`, a vectorized softmax per row (max-shifted, [`exp_f32`]), then `gemm` with `v`.
/// burn-flex tiles the keys with an online softmax and a scalar `exp` per score, its products
/// at most 64 keys long. `None` when the fast path does not apply.
pub fn attention(q: &Tensor<4>, k: &Tensor<4>, v: &Tensor<4>) -> Option<Tensor<4>> {
    let ([b, heads, n, d], [kb, kh, m, kd], [vb, vh, vm, dv]) = (q.dims(), k.dims(), v.dims());
    if [q.dtype(), k.dtype(), v.dtype()] != [DType::F32; 3] || [kb, kh, kd] != [b, heads, d] || [vb, vh, vm] != [b, heads, m] || m == 0 {
        return None;
    }
    let (qf, kf, vf) = (flex_values(q)?, flex_values(k)?, flex_values(v)?);
    let (qs, ks, vs) = (qf.as_slice::<f32>()?, kf.as_slice::<f32>()?, vf.as_slice::<f32>()?);
    let scale = 1.0 / (d as f32).sqrt();
    let mut out = vec![0f32; b * heads * n * dv];
    out.par_chunks_mut(n * dv).enumerate().for_each(|(bh, o)| {
        let (q, k, v) = (&qs[bh * n * d..][..n * d], &ks[bh * m * d..][..m * d], &vs[bh * m * dv..][..m * dv]);
        o.par_chunks_mut(ATTENTION_ROWS * dv).enumerate().for_each_init(Vec::new, |scores, (blk, o)| {
            let rows = o.len() / dv;
            let q = &q[blk * ATTENTION_ROWS * d..][..rows * d];
            scores.resize(rows * m, 0.0);
            // scores [rows × m] = scale · q [rows × d] · kᵀ [d × m]
            unsafe { sgemm([rows, m, d], (scores.as_mut_ptr(), m), (q.as_ptr(), d, 1), (k.as_ptr(), 1, d), scale, false, false) };
            for row in scores.chunks_mut(m) {
                softmax(row);
            }
            // o [rows × dv] = scores · v [m × dv]
            unsafe { sgemm([rows, dv, m], (o.as_mut_ptr(), dv), (scores.as_ptr(), m, 1), (v.as_ptr(), dv, 1), 1.0, false, false) };
        });
    });
    Some(Tensor::from_primitive::<Flex>(FlexTensor::from_data(TensorData::new(out, [b, heads, n, dv]))))
}

dispatch_wide! {
    /// softmax of one row in place: `e^(x − max) / Σ`.
    fn softmax(row: &mut [f32]) => softmax_body
}

#[inline(always)]
fn softmax_body(row: &mut [f32]) {
    // 32 lanes: four vectors' worth of independent maxima and sums, so that no add waits on
    // the one before (a single vector accumulator is bound by the add's latency).
    const L: usize = 32;
    let mut chunks = row.chunks_exact(L);
    let mut lanes = [f32::NEG_INFINITY; L];
    for c in &mut chunks {
        for (m, &x) in lanes.iter_mut().zip(c) {
            *m = if x > *m { x } else { *m };
        }
    }
    let max = chunks.remainder().iter().chain(&lanes).fold(f32::NEG_INFINITY, |a, &b| if b > a { b } else { a });
    for x in row.iter_mut() {
        *x = exp_f32(*x - max);
    }
    let mut chunks = row.chunks_exact(L);
    let mut lanes = [0f32; L];
    for c in &mut chunks {
        for (s, &x) in lanes.iter_mut().zip(c) {
            *s += x;
        }
    }
    let sum: f32 = lanes.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>();
    let inv = 1.0 / sum;
    row.iter_mut().for_each(|x| *x *= inv);
}

/// `(Σ v, Σ v²)` over `x` in f64, in 8 independent lanes (so that it vectorizes).
#[inline(always)]
fn sums_f64(x: &[f32]) -> (f64, f64) {
    let (mut sum, mut squares) = ([0f64; 8], [0f64; 8]);
    let chunks = x.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for ((s, q), &v) in sum.iter_mut().zip(&mut squares).zip(c) {
            let v = v as f64;
            *s += v;
            *q += v * v;
        }
    }
    let tail_sum: f64 = tail.iter().map(|&v| v as f64).sum();
    let tail_squares: f64 = tail.iter().map(|&v| (v as f64) * (v as f64)).sum();
    (sum.iter().sum::<f64>() + tail_sum, squares.iter().sum::<f64>() + tail_squares)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{activation, Device, Distribution};

    #[test]
    fn fused_activations_equal_burn() {
        let device = Device::flex();
        let h = Tensor::<3>::random([2, 37, 2 * 300], Distribution::Normal(0.0, 3.0), &device);
        let [hidden, gate] = h.clone().chunk(2, 2).try_into().expect("two halves");
        // libm's erf (burn) against PyTorch's (here): |Δerf| ≤ 5e-7, times |hidden·gate| / 2.
        let expected = hidden.clone() * activation::gelu(gate.clone());
        let bound = (hidden * gate).abs() * 2.5e-7 + 1e-6;
        let excess = ((geglu(&h).expect("fast path") - expected).abs() - bound).max().into_scalar::<f32>();
        assert!(excess <= 0.0, "GEGLU off by {excess} beyond the bound");
        assert_eq!(silu(&h).expect("fast path").into_data(), activation::silu(h).into_data());
    }

    #[test]
    fn linear_equals_burn() {
        let device = Device::flex();
        let x = Tensor::<3>::random([2, 37, 64], Distribution::Normal(0.0, 1.0), &device);
        let w = Tensor::<2>::random([64, 24], Distribution::Normal(0.0, 0.3), &device);
        let b = Tensor::<1>::random([24], Distribution::Normal(0.0, 1.0), &device);
        for bias in [Some(&b), None] {
            let expected = burn::tensor::module::linear(x.clone(), w.clone(), bias.cloned());
            let err = (linear(&x, &w, bias).expect("fast path") - expected).abs().max().into_scalar::<f32>();
            assert!(err < 1e-5, "bias {}: max error {err}", bias.is_some());
        }
        // A transposed weight view (as fused projections may be) is read as its values.
        let wt = w.clone().transpose().transpose();
        assert_eq!(linear(&x, &wt, Some(&b)).unwrap().into_data(), linear(&x, &w, Some(&b)).unwrap().into_data());
        // 64 rows against a long reduction: the skinny kernel's shape (on AVX-512 CPUs).
        let x = Tensor::<3>::random([1, 64, 320], Distribution::Normal(0.0, 1.0), &device);
        let w = Tensor::<2>::random([320, 96], Distribution::Normal(0.0, 0.3), &device);
        let b = Tensor::<1>::random([96], Distribution::Normal(0.0, 1.0), &device);
        let expected = burn::tensor::module::linear(x.clone(), w.clone(), Some(b.clone()));
        let err = (linear(&x, &w, Some(&b)).expect("fast path") - expected).abs().max().into_scalar::<f32>();
        assert!(err < 1e-4, "64 rows: max error {err}");
    }

    #[test]
    fn attention_equals_burn() {
        let device = Device::flex();
        // q [b, heads, n, d], k [b, heads, m, d], v [b, heads, m, dv] against burn's attention.
        let check = |[b, heads, n, m, d, dv]: [usize; 6]| {
            let q = Tensor::<4>::random([b, heads, n, d], Distribution::Normal(0.0, 1.0), &device);
            let k = Tensor::<4>::random([b, heads, m, d], Distribution::Normal(0.0, 1.0), &device);
            let v = Tensor::<4>::random([b, heads, m, dv], Distribution::Normal(0.0, 1.0), &device);
            let expected = burn::tensor::module::attention(q.clone(), k.clone(), v.clone(), None, None, Default::default());
            let err = (attention(&q, &k, &v).expect("fast path") - expected).abs().max().into_scalar::<f32>();
            assert!(err < 1e-5, "{:?}: max error {err}", [b, heads, n, m, d, dv]);
            (q, k, v)
        };
        // Two heads of 40 over 300 queries (three blocks, the last short) and 77 keys (a
        // cross-attention's context); values 24 wide.
        let (q, k, v) = check([2, 2, 300, 77, 40, 24]);
        // Transposed views (as split heads are) are read as their values.
        let qt = q.clone().swap_dims(1, 2).reshape([2, 300, 80]).reshape([2, 300, 2, 40]).swap_dims(1, 2);
        assert_eq!(attention(&qt, &k, &v).unwrap().into_data(), attention(&q, &k, &v).unwrap().into_data());
        // 4100 keys (more than a 64² map's), 150 queries: a full block and a short one.
        check([1, 1, 150, 4100, 16, 16]);
    }

    #[test]
    fn erf_is_within_abramowitz_stegun_bound() {
        let mut worst = 0f32;
        for i in 0..=200_000 {
            let x = -10.0 + 20.0 * i as f32 / 2e5;
            worst = worst.max((erf_f32(x) - burn_flex::ops::unary::erf_f32(x)).abs());
        }
        assert!(worst < 5e-7, "max error {worst}");
        assert!(erf_f32(0.0).abs() < 2e-7);
        assert_eq!((erf_f32(100.0), erf_f32(-100.0)), (1.0, -1.0));
    }

    #[test]
    fn exp_is_within_two_ulp() {
        let mut worst = 0f32;
        for i in 0..=2_000_000 {
            let x = -87.0 + 175.0 * i as f32 / 2e6;
            let (a, b) = (exp_f32(x), x.exp());
            worst = worst.max((a - b).abs() / b);
        }
        assert!(worst < 2.5 * f32::EPSILON, "max relative error {worst}");
        assert_eq!(exp_f32(-1000.0), exp_f32(-87.0));
        assert!(exp_f32(1000.0).is_finite());
    }

    #[test]
    fn fused_group_norm_equals_burn() {
        let device = Device::flex();
        let gn = GroupNorm {
            gamma: Some(burn::module::Param::from_tensor(Tensor::random([12], Distribution::Normal(1.0, 0.5), &device))),
            beta: Some(burn::module::Param::from_tensor(Tensor::random([12], Distribution::Normal(0.0, 0.5), &device))),
            num_groups: 4,
            num_channels: 12,
            epsilon: 1e-6,
            affine: true,
        };
        let x = Tensor::<4>::random([2, 12, 9, 7], Distribution::Normal(0.5, 2.0), &device);
        for silu in [false, true] {
            let mut expected = gn.forward(x.clone());
            if silu {
                expected = activation::silu(expected);
            }
            let err = (group_norm(&gn, &x, silu).expect("fast path") - expected).abs().max().into_scalar::<f32>();
            assert!(err < 2e-6, "silu {silu}: max error {err}");
        }
    }
}
