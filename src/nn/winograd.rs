//! Winograd F(2×2, 3×3) for the CPU backend's stride-1 3×3 convolutions on large maps (the
//! VAE's, and the UNet's at 32² and up): each 2×2 block of outputs from a 4×4 input patch with
//! 16 multiplications per channel pair instead of 36, so 2.25× fewer flops than the direct
//! convolution ([`super::cpu_conv`]).
//!
//! With `d` a 4×4 input patch and `g` a 3×3 filter, the 2×2 output is `Aᵀ[(G g Gᵀ) ⊙ (Bᵀ d B)]A`:
//! the 16 elementwise products summed over input channels are 16 matrix products
//! `M_ξ = U_ξ · V_ξ` (`U_ξ` `[c_out × c_in]` the filters' transforms, `V_ξ` `[c_in × tiles]`
//! the patches'). The transforms hold only ±1 and ½, so F(2×2, 3×3) rounds about as the direct
//! sum does (larger tiles, F(4×4, 3×3), trade that for fewer flops; not taken).
//!
//! The map is cut into bands of tile rows, one task each on the thread pool: its patches are
//! transformed into a scratch `V`, the 16 products (single-threaded `gemm`) land in `M`, and
//! the output transform writes the band's rows (and the bias) straight into the NCHW output.
//! A band's `V` and `M` are sized to stay in this core's L2 cache.

use rayon::prelude::*;

use super::cpu_ops::sgemm;

/// Bytes of one band's `V` and `M` scratch: about a core's L2 cache…
const BAND_BYTES: usize = 2 << 20;
/// …unless that leaves fewer tiles than this, the products' width below which `gemm` slows.
const MIN_BAND_TILES: usize = 128;

/// Whether a convolution with `c_out` output channels and `tiles` 2×2 output tiles is faster
/// this way: on small maps (the UNet's at 16² and below) writing and reading the 16/9-larger
/// transformed filters costs more than the flops saved (measured: with 64 tiles as the bound,
/// a 512² UNet call took 4.2 s instead of 3.9 s), and for a few output channels (the VAE's
/// last layer) the input transform is most of the work.
pub fn pays_off(c_out: usize, tiles: usize) -> bool {
    c_out >= 32 && tiles >= 256
}

/// The output pointer, shared by bands that write disjoint rows.
#[derive(Clone, Copy)]
struct Out(*mut f32);
// SAFETY: every task writes its own output rows only.
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

impl Out {
    /// The pointer `offset` values on (a method, so that closures capture the `Out`, not its
    /// raw pointer).
    ///
    /// # Safety
    /// As `pointer::add`.
    unsafe fn add(self, offset: usize) -> Out {
        Out(unsafe { self.0.add(offset) })
    }
}

/// The 3×3, stride-1 convolution of `x` `[b, c_in, h, w]` with `weight` `[c_out, c_in, 3, 3]`,
/// zero padding `top`/`left` (the output `h_out × w_out`; rows and columns past the input
/// read zeros), plus `bias`: `[b, c_out, h_out, w_out]`.
#[allow(clippy::too_many_arguments)]
pub fn conv3x3(
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    [b, c_in, h, w]: [usize; 4],
    c_out: usize,
    (top, left): (usize, usize),
    (h_out, w_out): (usize, usize),
) -> Vec<f32> {
    let (th, tw) = (h_out.div_ceil(2), w_out.div_ceil(2));
    let u = filter_transforms(weight, c_out, c_in);
    let tile_bytes = 16 * (c_in + c_out) * 4;
    let rows = (BAND_BYTES / (tile_bytes * tw).max(1)).max(MIN_BAND_TILES.div_ceil(tw)).clamp(1, th);
    let mut out = vec![0f32; b * c_out * h_out * w_out];
    let dst = Out(out.as_mut_ptr());
    let bands: Vec<(usize, usize)> = (0..b).flat_map(|i| (0..th).step_by(rows).map(move |t| (i, t))).collect();
    // Fewer bands than threads (small maps): each band's products use the whole pool.
    let parallel = bands.len() < rayon::current_num_threads();
    let geo = Geo { c_in, c_out, h, w, top, left, h_out, w_out, tw, parallel };
    bands.par_iter().for_each_init(Scratch::default, |s, &(i, ty0)| {
        let nr = rows.min(th - ty0);
        let xi = &x[i * c_in * h * w..(i + 1) * c_in * h * w];
        // SAFETY: image `i`'s output starts here; this band writes its rows 2·ty0 .. 2·(ty0 + nr)
        // of each channel, which no other band writes.
        let oi = unsafe { dst.add(i * c_out * h_out * w_out) };
        band(&geo, xi, &u, bias, ty0, nr, s, oi);
    });
    out
}

/// Sizes shared by a convolution's bands.
struct Geo {
    c_in: usize,
    c_out: usize,
    h: usize,
    w: usize,
    top: usize,
    left: usize,
    h_out: usize,
    w_out: usize,
    /// Tiles per row.
    tw: usize,
    /// Whether the products run on the thread pool.
    parallel: bool,
}

/// A task's reused buffers: the band's zero-padded input rows, `V`, `M`, and rows of a
/// transform's intermediate values.
#[derive(Default)]
struct Scratch {
    pad: Vec<f32>,
    v: Vec<f32>,
    m: Vec<f32>,
    rows: Vec<f32>,
}

/// Filters per task of [`filter_transforms`].
const FILTER_CHUNK: usize = 1024;

/// `U_ξ = (G g Gᵀ)_ξ` of every filter, `[16][c_out][c_in]`; `G = [1 0 0; ½ ½ ½; ½ −½ ½; 0 0 1]`.
/// In chunks of filters, each chunk's taps first gathered into 9 rows, so that every step after
/// is a vector operation over the chunk and each `U_ξ` is written as one contiguous run.
fn filter_transforms(weight: &[f32], c_out: usize, c_in: usize) -> Vec<f32> {
    let n = c_out * c_in;
    let mut u = Vec::<f32>::with_capacity(16 * n);
    let dst = Out(u.as_mut_ptr());
    (0..n.div_ceil(FILTER_CHUNK)).into_par_iter().for_each_init(
        || vec![0f32; 21 * FILTER_CHUNK],
        |scratch, k| {
            let (f0, f1) = (k * FILTER_CHUNK, ((k + 1) * FILTER_CHUNK).min(n));
            // SAFETY: within the capacity; the chunk's run of each U_ξ is written by this task only.
            let runs: [&mut [f32]; 16] =
                std::array::from_fn(|xi| unsafe { std::slice::from_raw_parts_mut(dst.add(xi * n + f0).0, f1 - f0) });
            filter_chunk(&weight[9 * f0..9 * f1], scratch, runs);
        },
    );
    // SAFETY: all 16·n values were written above.
    unsafe { u.set_len(16 * n) };
    u
}

dispatch_wide! {
    /// The 16 transforms of a chunk of filters `g` (9 taps each) into `runs`, with `scratch`
    /// (21 rows of the chunk's length) for the taps and the rows of `G·g`.
    fn filter_chunk(g: &[f32], scratch: &mut [f32], runs: [&mut [f32]; 16]) => filter_chunk_body
}

#[inline(always)]
fn filter_chunk_body(g: &[f32], scratch: &mut [f32], mut runs: [&mut [f32]; 16]) {
    let len = g.len() / 9;
    let (taps, r) = scratch.split_at_mut(9 * FILTER_CHUNK);
    for (f, g) in g.chunks_exact(9).enumerate() {
        for (t, &v) in g.iter().enumerate() {
            taps[t * FILTER_CHUNK + f] = v;
        }
    }
    fn row(x: &[f32], i: usize, len: usize) -> &[f32] {
        &x[i * FILTER_CHUNK..][..len]
    }
    // G·g: row a of the 4×3 result, column j, is r[(3a + j)].
    for j in 0..3 {
        for f in 0..len {
            let (g0, g1, g2) = (taps[j * FILTER_CHUNK + f], taps[(3 + j) * FILTER_CHUNK + f], taps[(6 + j) * FILTER_CHUNK + f]);
            r[j * FILTER_CHUNK + f] = g0;
            r[(3 + j) * FILTER_CHUNK + f] = 0.5 * (g0 + g1 + g2);
            r[(6 + j) * FILTER_CHUNK + f] = 0.5 * (g0 - g1 + g2);
            r[(9 + j) * FILTER_CHUNK + f] = g2;
        }
    }
    // (G·g)·Gᵀ: each row of 3 becomes 4.
    for a in 0..4 {
        let (r0, r1, r2) = (row(r, 3 * a, len), row(r, 3 * a + 1, len), row(r, 3 * a + 2, len));
        let [u0, u1, u2, u3, ..] = &mut runs[4 * a..] else { unreachable!("16 runs") };
        for f in 0..len {
            u0[f] = r0[f];
            u1[f] = 0.5 * (r0[f] + r1[f] + r2[f]);
            u2[f] = 0.5 * (r0[f] - r1[f] + r2[f]);
            u3[f] = r2[f];
        }
    }
}

/// One band of tile rows `ty0 .. ty0 + nr` of one image: transform, 16 products, transform back.
#[allow(clippy::too_many_arguments)]
fn band(g: &Geo, x: &[f32], u: &[f32], bias: Option<&[f32]>, ty0: usize, nr: usize, s: &mut Scratch, out: Out) {
    let (c_in, c_out, tw) = (g.c_in, g.c_out, g.tw);
    let t = nr * tw;
    // The band's input rows 2·ty0 − top .. + 2·nr + 2 and columns −left .. 2·tw + 2 − left,
    // zero outside the image.
    let (ph, pw) = (2 * nr + 2, 2 * tw + 2);
    grow(&mut s.pad, c_in * ph * pw);
    // Padded column p reads input column p − left.
    let (p0, p1) = (g.left.min(pw), (g.left + g.w).min(pw));
    for c in 0..c_in {
        for r in 0..ph {
            let dst = &mut s.pad[(c * ph + r) * pw..][..pw];
            let iy = (2 * ty0 + r) as isize - g.top as isize;
            if iy < 0 || iy >= g.h as isize {
                dst.fill(0.0);
                continue;
            }
            let src = &x[(c * g.h + iy as usize) * g.w..][..g.w];
            dst[..p0].fill(0.0);
            dst[p0..p1].copy_from_slice(&src[..p1 - p0]);
            dst[p1..].fill(0.0);
        }
    }
    // Every value of V and M is written below: grown, never cleared.
    grow(&mut s.v, 16 * c_in * t);
    grow(&mut s.m, 16 * c_out * t);
    grow(&mut s.rows, 4 * pw);
    input_transforms(&s.pad, &mut s.v[..16 * c_in * t], &mut s.rows, c_in, nr, tw, ph, pw);
    for xi in 0..16 {
        // M_ξ [c_out × t] = U_ξ [c_out × c_in] · V_ξ [c_in × t]
        let (m, u, v) = (s.m[xi * c_out * t..].as_mut_ptr(), u[xi * c_out * c_in..].as_ptr(), s.v[xi * c_in * t..].as_ptr());
        // SAFETY: the three blocks hold c_out·t, c_out·c_in and c_in·t values.
        unsafe { sgemm([c_out, t, c_in], (m, t), (u, c_in, 1), (v, t, 1), 1.0, false, g.parallel) };
    }
    for o in 0..c_out {
        let bo = bias.map_or(0.0, |b| b[o]);
        for ty in 0..nr {
            let oy = 2 * (ty0 + ty);
            let two = (g.h_out - oy).min(2);
            // SAFETY: rows oy .. oy + two of channel o lie in the map and belong to this band.
            let rows = unsafe { std::slice::from_raw_parts_mut(out.0.add((o * g.h_out + oy) * g.w_out), two * g.w_out) };
            output_transform(&s.m[..16 * c_out * t], &mut s.rows, o * t + ty * tw, c_out * t, tw, bo, rows, g.w_out);
        }
    }
}

fn grow(v: &mut Vec<f32>, len: usize) {
    if v.len() < len {
        v.resize(len, 0.0);
    }
}

dispatch_wide! {
    /// `V_ξ[c][t] = (Bᵀ d B)_ξ` of every patch `d` of the padded band, `Bᵀ = [1 0 −1 0;
    /// 0 1 1 0; 0 −1 1 0; 0 1 0 −1]`: first `Bᵀ` over whole padded rows (`r`, 4 rows of `pw`),
    /// then `·B` over each tile's columns.
    fn input_transforms(pad: &[f32], v: &mut [f32], r: &mut [f32], c_in: usize, nr: usize, tw: usize, ph: usize, pw: usize) => input_transforms_body
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn input_transforms_body(pad: &[f32], v: &mut [f32], r: &mut [f32], c_in: usize, nr: usize, tw: usize, ph: usize, pw: usize) {
    let t = nr * tw;
    let n = c_in * t;
    let (r0, rest) = r.split_at_mut(pw);
    let (r1, rest) = rest.split_at_mut(pw);
    let (r2, rest) = rest.split_at_mut(pw);
    let r3 = &mut rest[..pw];
    for c in 0..c_in {
        for ty in 0..nr {
            let d = |a: usize| &pad[(c * ph + 2 * ty + a) * pw..][..pw];
            let (d0, d1, d2, d3) = (d(0), d(1), d(2), d(3));
            for i in 0..pw {
                r0[i] = d0[i] - d2[i];
                r1[i] = d1[i] + d2[i];
                r2[i] = d2[i] - d1[i];
                r3[i] = d1[i] - d3[i];
            }
            let at = c * t + ty * tw;
            for (a, ra) in [&*r0, &*r1, &*r2, &*r3].into_iter().enumerate() {
                let base = 4 * a * n + at;
                let (v0, rest) = v[base..].split_at_mut(n);
                let (v1, rest) = rest.split_at_mut(n);
                let (v2, rest) = rest.split_at_mut(n);
                let v3 = &mut rest[..tw];
                for tx in 0..tw {
                    let (e0, e1, e2, e3) = (ra[2 * tx], ra[2 * tx + 1], ra[2 * tx + 2], ra[2 * tx + 3]);
                    v0[tx] = e0 - e2;
                    v1[tx] = e1 + e2;
                    v2[tx] = e2 - e1;
                    v3[tx] = e1 - e3;
                }
            }
        }
    }
}

dispatch_wide! {
    /// One tile row of one output channel: `Aᵀ M A` (`Aᵀ = [1 1 1 0; 0 1 −1 −1]`) of its `tw`
    /// tiles (`M_ξ` at `at + ξ·n`) plus the bias, into `out`, its one or two output rows of `w_out`.
    fn output_transform(m: &[f32], s: &mut [f32], at: usize, n: usize, tw: usize, bias: f32, out: &mut [f32], w_out: usize) => output_transform_body
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn output_transform_body(m: &[f32], s: &mut [f32], at: usize, n: usize, tw: usize, bias: f32, out: &mut [f32], w_out: usize) {
    let mm = |xi: usize| &m[xi * n + at..][..tw];
    // The four output values of each tile, as four rows of `tw`.
    let (y00, rest) = s.split_at_mut(tw);
    let (y01, rest) = rest.split_at_mut(tw);
    let (y10, rest) = rest.split_at_mut(tw);
    let y11 = &mut rest[..tw];
    let (m0, m1, m2, m3) = (mm(0), mm(1), mm(2), mm(3));
    let (m4, m5, m6, m7) = (mm(4), mm(5), mm(6), mm(7));
    let (m8, m9, m10, m11) = (mm(8), mm(9), mm(10), mm(11));
    let (m12, m13, m14, m15) = (mm(12), mm(13), mm(14), mm(15));
    for i in 0..tw {
        // Aᵀ·M: s0 = rows 0 + 1 + 2, s1 = rows 1 − 2 − 3; then ·A on each.
        let s0 = [m0[i] + m4[i] + m8[i], m1[i] + m5[i] + m9[i], m2[i] + m6[i] + m10[i], m3[i] + m7[i] + m11[i]];
        let s1 = [m4[i] - m8[i] - m12[i], m5[i] - m9[i] - m13[i], m6[i] - m10[i] - m14[i], m7[i] - m11[i] - m15[i]];
        y00[i] = s0[0] + s0[1] + s0[2] + bias;
        y01[i] = s0[1] - s0[2] - s0[3] + bias;
        y10[i] = s1[0] + s1[1] + s1[2] + bias;
        y11[i] = s1[1] - s1[2] - s1[3] + bias;
    }
    let (row0, row1) = out.split_at_mut(w_out);
    let pairs = w_out / 2;
    for i in 0..pairs {
        row0[2 * i] = y00[i];
        row0[2 * i + 1] = y01[i];
    }
    if w_out % 2 == 1 {
        row0[w_out - 1] = y00[pairs];
    }
    if !row1.is_empty() {
        for i in 0..pairs {
            row1[2 * i] = y10[i];
            row1[2 * i + 1] = y11[i];
        }
        if w_out % 2 == 1 {
            row1[w_out - 1] = y10[pairs];
        }
    }
}
