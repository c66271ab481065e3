//! The CPU backend's fast path for k×k convolutions (the UNet's and the VAE's 3×3 layers), the
//! one hot spot where burn-flex's generic conv (NHWC copy of the input and re-flattened weights
//! on every call, both single-threaded, then per-tile im2col and result scatter) took over half
//! of a forward pass.
//!
//! Here the PyTorch weight `[c_out, c_in, kh, kw]` is used as it is, as the `[c_out, c_in·kh·kw]`
//! left factor; the input, NCHW, is unfolded into row bands of im2col columns `[c_in·kh·kw,
//! rows·w_out]` (contiguous row copies), and one `gemm` per band writes straight into the NCHW
//! output, on top of the bias. Same products and sums as the direct definition, only summed in
//! another order (float reassociation).
//!
//! Stride-1 3×3 convolutions on large maps go through Winograd F(2×2, 3×3) instead
//! ([`super::winograd`]: 2.25× fewer flops).
//!
//! Chosen at run time: only float32 tensors on burn's Flex device with groups 1, dilation 1 and a
//! kernel larger than 1×1 take it (flex already runs 1×1 convolutions as one gemm); everything
//! else, and every other device (wgpu / WebGPU), runs burn's `Conv2d::forward` unchanged.

use burn::backend::Flex;
use burn::nn::conv::Conv2d;
use burn::nn::PaddingConfig2d;
use burn::tensor::{DType, Tensor, TensorData};
use burn_flex::FlexTensor;
use rayon::prelude::*;

use super::cpu_ops::{flex_values, sgemm};

/// Bytes of im2col columns unfolded per gemm call: large enough for gemm to run at full speed,
/// small enough to stay in the L2/L3 caches next to the weights.
const BAND_BYTES: usize = 8 << 20;

/// Fewest output pixels per gemm call, whatever [`BAND_BYTES`] says: each call streams (and
/// packs) the whole weight once, so a band must be wide enough to pay for it. The UNet's 16²
/// maps at 512² (1280 and 2560 input channels, 59–118 MB of weights per layer) were cut into
/// bands of 5–11 rows, which read their weights 2 to 4 times and ran at half the GEMM peak.
const MIN_BAND_PIXELS: usize = 512;

/// `conv.forward(x)`, through the fast path when it applies.
pub fn conv2d(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    match try_fast(conv, x) {
        Ok(y) => y,
        Err(x) => conv.forward(x),
    }
}

/// The fast path, or the input back when it does not apply.
fn try_fast(conv: &Conv2d, x: Tensor<4>) -> Result<Tensor<4>, Tensor<4>> {
    let [kh, kw] = conv.kernel_size;
    let (top, left, bottom, right) = match conv.padding {
        PaddingConfig2d::Explicit(t, l, b, r) => (t, l, b, r),
        PaddingConfig2d::Valid => (0, 0, 0, 0),
        PaddingConfig2d::Same => return Err(x),
    };
    let [b, c_in, h, w] = x.dims();
    let [sh, sw] = conv.stride;
    if conv.groups != 1 || conv.dilation != [1, 1] || kh * kw == 1 || x.dtype() != DType::F32 || sh == 0 || sw == 0 {
        return Err(x);
    }
    if h + top + bottom < kh || w + left + right < kw {
        return Err(x);
    }
    let weight = conv.weight.val();
    let [c_out, wc_in, wkh, wkw] = weight.dims();
    if wc_in != c_in || [wkh, wkw] != [kh, kw] || weight.dtype() != DType::F32 {
        return Err(x);
    }
    // Only Flex tensors: anything else goes back untouched.
    let (Some(xf), Some(wf)) = (flex_values(&x), flex_values(&weight)) else {
        return Err(x);
    };
    let bf = match &conv.bias {
        Some(bias) if bias.val().dtype() == DType::F32 => match flex_values(&bias.val()) {
            Some(t) => Some(t),
            None => return Err(x),
        },
        Some(_) => return Err(x),
        None => None,
    };
    drop(x);

    let xs = xf.as_slice::<f32>().expect("contiguous f32");
    let ws = wf.as_slice::<f32>().expect("contiguous f32");
    let bs = bf.as_ref().map(|t| t.as_slice::<f32>().expect("contiguous f32"));

    let geo =
        Geometry { h, w, kh, kw, sh, sw, top, left, h_out: (h + top + bottom - kh) / sh + 1, w_out: (w + left + right - kw) / sw + 1 };
    let plane = geo.h_out * geo.w_out;
    if [kh, kw, sh, sw] == [3, 3, 1, 1] && super::winograd::pays_off(c_out, geo.h_out.div_ceil(2) * geo.w_out.div_ceil(2)) {
        let out = super::winograd::conv3x3(xs, ws, bs, [b, c_in, h, w], c_out, (top, left), (geo.h_out, geo.w_out));
        return Ok(Tensor::from_primitive::<Flex>(FlexTensor::from_data(TensorData::new(out, [b, c_out, geo.h_out, geo.w_out]))));
    }
    if b > 1 && plane < MIN_BAND_PIXELS {
        return Ok(small_maps_batched(xs, ws, bs, &geo, [b, c_in, c_out]));
    }
    let k = c_in * kh * kw;
    let mut out = vec![0f32; b * c_out * plane];
    if let Some(bs) = bs {
        for (row, &v) in out.chunks_mut(plane).zip(bs.iter().cycle()) {
            row.fill(v);
        }
    }
    let rows = (BAND_BYTES / (4 * k * geo.w_out).max(1)).max(MIN_BAND_PIXELS.div_ceil(geo.w_out)).clamp(1, geo.h_out);
    let mut cols = vec![0f32; k * rows * geo.w_out];
    for i in 0..b {
        let xi = &xs[i * c_in * h * w..(i + 1) * c_in * h * w];
        let oi = &mut out[i * c_out * plane..(i + 1) * c_out * plane];
        for r0 in (0..geo.h_out).step_by(rows) {
            let nr = rows.min(geo.h_out - r0);
            let n = nr * geo.w_out;
            let cols = &mut cols[..k * n];
            geo.unfold(xi, r0, nr, cols, n);
            // out[:, r0·w_out ..][c_out × n] += W[c_out × k] · cols[k × n]
            let dst = oi[r0 * geo.w_out..].as_mut_ptr();
            // SAFETY: c_out rows of n values at stride plane from there; W is c_out × k, cols k × n.
            unsafe { sgemm([c_out, n, k], (dst, plane), (ws.as_ptr(), k, 1), (cols.as_ptr(), n, 1), 1.0, true, true) };
        }
    }
    let data = TensorData::new(out, [b, c_out, geo.h_out, geo.w_out]);
    Ok(Tensor::from_primitive::<Flex>(FlexTensor::from_data(data)))
}

/// A batch of small maps (the UNet's 16², 8² and 4² at 256², where weights of up to 118 MB meet
/// 256, 64 or 16 pixels an image): every image's columns side by side in one product, which
/// streams the weight once for the batch instead of once per image, then each image's part put
/// in its place.
fn small_maps_batched(x: &[f32], w: &[f32], bias: Option<&[f32]>, geo: &Geometry, [b, c_in, c_out]: [usize; 3]) -> Tensor<4> {
    let (plane, k) = (geo.h_out * geo.w_out, c_in * geo.kh * geo.kw);
    let n = b * plane;
    let mut cols = vec![0f32; k * n];
    for i in 0..b {
        geo.unfold(&x[i * c_in * geo.h * geo.w..(i + 1) * c_in * geo.h * geo.w], 0, geo.h_out, &mut cols[i * plane..], n);
    }
    let mut product = vec![0f32; c_out * n];
    if let Some(bias) = bias {
        for (row, &v) in product.chunks_exact_mut(n).zip(bias) {
            row.fill(v);
        }
    }
    // SAFETY: W is c_out × k, cols k × n, the product c_out × n.
    unsafe { sgemm([c_out, n, k], (product.as_mut_ptr(), n), (w.as_ptr(), k, 1), (cols.as_ptr(), n, 1), 1.0, true, true) };
    let mut out = vec![0f32; b * c_out * plane];
    for (i, image) in out.chunks_exact_mut(c_out * plane).enumerate() {
        for (dst, src) in image.chunks_exact_mut(plane).zip(product.chunks_exact(n)) {
            dst.copy_from_slice(&src[i * plane..(i + 1) * plane]);
        }
    }
    Tensor::from_primitive::<Flex>(FlexTensor::from_data(TensorData::new(out, [b, c_out, geo.h_out, geo.w_out])))
}

/// Sizes of one convolution (padding: top and left; the bottom and right follow from the output
/// size).
struct Geometry {
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
    sh: usize,
    sw: usize,
    top: usize,
    left: usize,
    h_out: usize,
    w_out: usize,
}

impl Geometry {
    /// im2col of output rows `r0 .. r0 + nr` of one image `x` `[c_in, h, w]`: `cols` `[c_in·kh·kw,
    /// nr·w_out]` with rows `ld` apart (wider than `nr·w_out` where a batch's images lie side by
    /// side), row `(c·kh + i)·kw + j` holding `x[c, oy·sh + i - top, ox·sw + j - left]` (0
    /// outside the image).
    fn unfold(&self, x: &[f32], r0: usize, nr: usize, cols: &mut [f32], ld: usize) {
        let n = nr * self.w_out;
        cols.par_chunks_mut(ld).enumerate().for_each(|(row, dst)| {
            let dst = &mut dst[..n];
            let (c, ij) = (row / (self.kh * self.kw), row % (self.kh * self.kw));
            let (i, j) = (ij / self.kw, ij % self.kw);
            let src = &x[c * self.h * self.w..(c + 1) * self.h * self.w];
            // Output columns whose input column lies inside the image: ox·sw + j - left ∈ [0, w).
            let ox0 = self.left.saturating_sub(j).div_ceil(self.sw).min(self.w_out);
            let ox1 = if self.w + self.left > j { ((self.w + self.left - j - 1) / self.sw + 1).min(self.w_out) } else { 0 };
            for (r, d) in dst.chunks_mut(self.w_out).enumerate() {
                let iy = ((r0 + r) * self.sh + i) as isize - self.top as isize;
                if iy < 0 || iy >= self.h as isize || ox0 >= ox1 {
                    d.fill(0.0);
                    continue;
                }
                let line = &src[iy as usize * self.w..(iy as usize + 1) * self.w];
                d[..ox0].fill(0.0);
                d[ox1..].fill(0.0);
                if self.sw == 1 {
                    let s = ox0 + j - self.left;
                    d[ox0..ox1].copy_from_slice(&line[s..s + (ox1 - ox0)]);
                } else {
                    for (ox, v) in d[ox0..ox1].iter_mut().enumerate() {
                        *v = line[(ox0 + ox) * self.sw + j - self.left];
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::module::Param;
    use burn::tensor::{Device, Distribution};

    fn check(c_in: usize, c_out: usize, k: usize, stride: usize, pad: (usize, usize, usize, usize), hw: [usize; 2], bias: bool) {
        let device = Device::flex();
        let conv = Conv2d {
            weight: Param::from_tensor(Tensor::random([c_out, c_in, k, k], Distribution::Normal(0.0, 0.2), &device)),
            bias: bias.then(|| Param::from_tensor(Tensor::random([c_out], Distribution::Normal(0.0, 1.0), &device))),
            stride: [stride, stride],
            kernel_size: [k, k],
            dilation: [1, 1],
            groups: 1,
            padding: PaddingConfig2d::Explicit(pad.0, pad.1, pad.2, pad.3),
        };
        let x = Tensor::<4>::random([2, c_in, hw[0], hw[1]], Distribution::Normal(0.0, 1.0), &device);
        let expected = conv.forward(x.clone());
        let actual = try_fast(&conv, x).unwrap_or_else(|_| panic!("fast path not taken"));
        assert_eq!(actual.dims(), expected.dims());
        let err = (actual - expected).abs().max().into_scalar::<f32>();
        assert!(err < 1e-4, "{c_in}->{c_out} k{k} s{stride} {pad:?} {hw:?}: max error {err}");
    }

    #[test]
    fn fast_conv_equals_burn_conv() {
        check(5, 7, 3, 1, (1, 1, 1, 1), [9, 11], true);
        check(4, 6, 3, 2, (1, 1, 1, 1), [9, 8], true);
        // The VAE's downsampler: padding bottom and right only.
        check(3, 4, 3, 2, (0, 0, 1, 1), [8, 7], true);
        check(3, 2, 5, 1, (2, 1, 0, 3), [6, 10], false);
        check(2, 3, 3, 1, (0, 0, 0, 0), [3, 3], true);
        // A 4×4 map against 32·9 inputs: the skinny kernel's shape (on AVX-512 CPUs). Maps
        // under MIN_BAND_PIXELS run the batch as one product, larger ones image by image.
        check(32, 20, 3, 1, (1, 1, 1, 1), [4, 4], true);
        check(3, 4, 3, 2, (0, 0, 1, 1), [48, 50], true);
    }

    /// Winograd F(2×2, 3×3) (maps of at least 256 2×2 tiles): odd sizes, one-sided
    /// padding (a band's halo), no padding, batch 2, many channels (the error grows with the
    /// sum's length as the direct sum's does).
    #[test]
    fn winograd_conv_equals_burn_conv() {
        check(5, 7, 3, 1, (1, 1, 1, 1), [33, 35], true);
        check(6, 4, 3, 1, (1, 1, 1, 1), [32, 32], false);
        check(3, 5, 3, 1, (0, 1, 1, 1), [40, 33], true);
        check(3, 5, 3, 1, (1, 1, 0, 1), [40, 33], true);
        check(4, 3, 3, 1, (0, 0, 0, 0), [36, 37], true);
        check(256, 8, 3, 1, (1, 1, 1, 1), [32, 34], true);
    }

    #[test]
    fn other_convolutions_fall_back() {
        let device = Device::flex();
        let conv = Conv2d {
            weight: Param::from_tensor(Tensor::random([4, 3, 1, 1], Distribution::Normal(0.0, 1.0), &device)),
            bias: None,
            stride: [1, 1],
            kernel_size: [1, 1],
            dilation: [1, 1],
            groups: 1,
            padding: PaddingConfig2d::Valid,
        };
        let x = Tensor::<4>::random([1, 3, 4, 4], Distribution::Normal(0.0, 1.0), &device);
        assert!(try_fast(&conv, x).is_err());
    }
}
