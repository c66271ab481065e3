//! Products with one short side on the CPU: `C [m × n] += A [m × k] · B [k × n]` where one of
//! the two factors is a layer's weight too large for the caches and the other is a handful of
//! pixels or tokens (the UNet's 1280-channel layers at 256²: its linears at 64 tokens, its 3×3
//! convolutions on 4² maps). `gemm` packs both factors into its panels at a tile shape made for
//! large products: on these it measured 74–160 GFLOP/s of this CPU's 250–300 (the profile
//! read 14–45% of the GEMM peak in the UNet call).
//!
//! Here the tasks are tiles of up to [`TILE_COLS`] columns of `C` and all its rows (or
//! [`TILE_ROWS`] rows where the columns are too few to keep the threads busy). In a task, `k`
//! runs in chunks of [`CHUNK_K`]; each chunk is multiplied by blocks of [`BLOCK_ROWS`] rows ×
//! the tile's columns held in registers (6 × 64 = 24 AVX-512 vectors): `A`'s values broadcast,
//! `B`'s rows loaded as vectors. Either way the weight is read from memory once:
//! - as `B` (a linear's `[d_in, d_out]`), the task copies its `[chunk × 64]` slice (256 KiB) into
//!   a buffer that stays in L2 for every row block (read in place, its rows pages apart, a
//!   128-row product ran 2.3× slower);
//! - as `A` (a convolution's `[c_out, c_in·9]`), its rows stream in order, `B` (the unfolded
//!   pixels, 16 or 32 wide) staying in L2.
//!
//! Each output is summed in `k`'s order, in fused multiply-adds, on top of what `C` held (the
//! bias).

use rayon::prelude::*;

/// Columns of `C` per task, and per register block: four AVX-512 vectors.
const TILE_COLS: usize = 64;
/// Rows of `C` per register block: with [`TILE_COLS`], 24 accumulators of the 32 registers.
const BLOCK_ROWS: usize = 6;
/// Rows of `C` per task where the columns are too few to share out (a multiple of
/// [`BLOCK_ROWS`]).
const TILE_ROWS: usize = 48;
/// `k` per chunk: a chunk of `B` (`CHUNK_K × TILE_COLS` values, 256 KiB) stays in L2 while the
/// task's row blocks use it.
const CHUNK_K: usize = 1024;

/// Whether [`sgemm`] should take `[m, n, k]`: one side short (at most 64 rows, or at most 32
/// columns; at 128 rows or 64 columns `gemm` measured as fast, at 256 faster) against a long
/// reduction, columns in whole vectors, on a CPU with AVX-512 (elsewhere `gemm`'s kernels are
/// the better choice).
pub fn applies([m, n, k]: [usize; 3]) -> bool {
    (m <= 64 || n <= 32) && n % 16 == 0 && k >= 256 && has_avx512()
}

fn has_avx512() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
}

/// `C += A · B` with `A` `[m × k]` (row stride `lda`), `B` `[k × n]` (row stride `ldb`) and `C`
/// `[m × n]` (row stride `ldc`), all with contiguous rows, `n` a multiple of 16, on the thread
/// pool. Only where [`applies`] says so (it checks the CPU).
///
/// # Safety
/// The pointers are valid for those shapes and strides, and `c` aliases neither operand.
pub unsafe fn sgemm([m, n, k]: [usize; 3], c: (*mut f32, usize), a: (*const f32, usize), b: (*const f32, usize)) {
    assert!(n % 16 == 0 && has_avx512(), "columns in whole vectors, on an AVX-512 CPU");
    // Each task packs its chunks of B: one task per column tile takes every row, where the
    // column tiles alone keep the threads busy.
    let col_tiles = n.div_ceil(TILE_COLS);
    let tile_rows = if col_tiles >= 4 * rayon::current_num_threads() { m } else { TILE_ROWS };
    let row_tiles = m.div_ceil(tile_rows);
    // Raw pointers are not Send; the tiles write disjoint parts of C.
    let (cp, ap, bp) = (c.0 as usize, a.0 as usize, b.0 as usize);
    (0..row_tiles * col_tiles).into_par_iter().for_each(|t| {
        // Neighbouring tasks share a column tile (a chunk of B in L2) where rows are many.
        let (rt, ct) = (t % row_tiles, t / row_tiles);
        let (r0, c0) = (rt * tile_rows, ct * TILE_COLS);
        let tile = Tile {
            rows: tile_rows.min(m - r0),
            cols: TILE_COLS.min(n - c0),
            k,
            c: (cp as *mut f32).wrapping_add(r0 * c.1 + c0),
            ldc: c.1,
            a: (ap as *const f32).wrapping_add(r0 * a.1),
            lda: a.1,
            b: (bp as *const f32).wrapping_add(c0),
            ldb: b.1,
        };
        // SAFETY: `applies` checked the CPU; the tile lies inside the caller's matrices.
        PACKED.with_borrow_mut(|packed| unsafe { run_tile(&tile, packed) })
    });
}

/// One task's part of the product.
struct Tile {
    rows: usize,
    cols: usize,
    k: usize,
    c: *mut f32,
    ldc: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    ldb: usize,
}

/// Chunks of `k`, then register blocks of rows, for the tile's column width.
///
/// # Safety
/// The CPU has AVX-512F; the [`Tile`] is valid (made by [`sgemm`] from its caller's pointers).
#[target_feature(enable = "avx512f")]
unsafe fn run_tile(t: &Tile, packed: &mut Vec<f32>) {
    unsafe {
        match t.cols {
            64 => tile_cols::<64>(t, packed),
            48 => tile_cols::<48>(t, packed),
            32 => tile_cols::<32>(t, packed),
            16 => tile_cols::<16>(t, packed),
            other => unreachable!("{other} columns: a multiple of 16 up to 64"),
        }
    }
}

thread_local! {
    /// A task's chunk of `B` with its rows side by side, where `B`'s rows are longer than the
    /// tile: read once from memory, then from L2 by each block of rows.
    static PACKED: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn tile_cols<const N: usize>(t: &Tile, packed: &mut Vec<f32>) {
    for k0 in (0..t.k).step_by(CHUNK_K) {
        let kc = CHUNK_K.min(t.k - k0);
        let (b, ldb) = if t.ldb == N || t.rows <= BLOCK_ROWS {
            (unsafe { t.b.add(k0 * t.ldb) }, t.ldb)
        } else {
            packed.resize(kc * N, 0.0);
            for (p, dst) in packed.chunks_exact_mut(N).enumerate() {
                // SAFETY: row k0 + p of B's columns.
                dst.copy_from_slice(unsafe { std::slice::from_raw_parts(t.b.add((k0 + p) * t.ldb), N) });
            }
            (packed.as_ptr(), N)
        };
        let mut r = 0;
        while r < t.rows {
            let rows = BLOCK_ROWS.min(t.rows - r);
            // SAFETY: rows r.. of the tile, columns 0..N, k0..k0 + kc.
            unsafe {
                let (a, c) = (t.a.add(r * t.lda + k0), t.c.add(r * t.ldc));
                match rows {
                    6 => block::<6, N>(kc, a, t.lda, b, ldb, c, t.ldc),
                    5 => block::<5, N>(kc, a, t.lda, b, ldb, c, t.ldc),
                    4 => block::<4, N>(kc, a, t.lda, b, ldb, c, t.ldc),
                    3 => block::<3, N>(kc, a, t.lda, b, ldb, c, t.ldc),
                    2 => block::<2, N>(kc, a, t.lda, b, ldb, c, t.ldc),
                    _ => block::<1, N>(kc, a, t.lda, b, ldb, c, t.ldc),
                }
            }
            r += rows;
        }
    }
}

/// `C[R × N] += A[R × kc] · B[kc × N]` in registers (`N / 16` vectors per row). Each value of
/// `A` is broadcast into a register once and used by the row's `N / 16` multiply-adds: the
/// empty `asm!` keeps the compiler from folding the broadcast into each of them, which made
/// the loop bound by loads.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn block<const R: usize, const N: usize>(kc: usize, a: *const f32, lda: usize, b: *const f32, ldb: usize, c: *mut f32, ldc: usize) {
    use std::arch::x86_64::*;
    // SAFETY (whole body): the caller's block of R rows × N columns, kc deep.
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); 4]; R];
        for (r, acc) in acc.iter_mut().enumerate() {
            for (v, acc) in acc.iter_mut().enumerate().take(N / 16) {
                *acc = _mm512_loadu_ps(c.add(r * ldc + 16 * v));
            }
        }
        let rows: [*const f32; R] = std::array::from_fn(|r| a.add(r * lda));
        for p in 0..kc {
            let mut bv = [_mm512_setzero_ps(); 4];
            for (v, bv) in bv.iter_mut().enumerate().take(N / 16) {
                *bv = _mm512_loadu_ps(b.add(p * ldb + 16 * v));
            }
            for (acc, row) in acc.iter_mut().zip(&rows) {
                let mut av = _mm512_set1_ps(*row.add(p));
                std::arch::asm!("/* {0} */", inout(zmm_reg) av, options(pure, nomem, nostack, preserves_flags));
                for (acc, bv) in acc.iter_mut().zip(&bv).take(N / 16) {
                    *acc = _mm512_fmadd_ps(av, *bv, *acc);
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            for (v, acc) in acc.iter().enumerate().take(N / 16) {
                _mm512_storeu_ps(c.add(r * ldc + 16 * v), *acc);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `C += A · B` in f64, the definition.
    fn reference([m, n, k]: [usize; 3], c: &[f32], ldc: usize, a: &[f32], lda: usize, b: &[f32], ldb: usize) -> Vec<f64> {
        let mut out = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = c[i * ldc + j] as f64 + (0..k).map(|p| a[i * lda + p] as f64 * b[p * ldb + j] as f64).sum::<f64>();
            }
        }
        out
    }

    fn values(len: usize, seed: usize) -> Vec<f32> {
        (0..len).map(|i| ((i * 7919 + seed * 104729) % 2003) as f32 / 1001.0 - 1.0).collect()
    }

    /// Every tile width (16–64 columns), a row remainder, a `k` past one chunk, strides wider
    /// than the matrices (B packed), many and few column tiles: within f32 rounding of the
    /// definition.
    #[test]
    fn skinny_products_equal_the_definition() {
        if !has_avx512() {
            assert!(!applies([64, 1280, 1280]), "the kernel needs AVX-512");
            return;
        }
        for &(m, n, k, pad) in
            &[(64, 1280, 300, 0), (13, 112, 1500, 5), (1, 640, 256, 0), (200, 16, 2100, 3), (100, 32, 700, 16), (61, 48, 1030, 0)]
        {
            let (lda, ldb, ldc) = (k + pad, n + pad, n + 2 * pad);
            let (a, b) = (values(m * lda, 1), values(k * ldb, 2));
            let mut c = values(m * ldc, 3);
            let want = reference([m, n, k], &c, ldc, &a, lda, &b, ldb);
            // SAFETY: the buffers hold those shapes at those strides.
            unsafe { sgemm([m, n, k], (c.as_mut_ptr(), ldc), (a.as_ptr(), lda), (b.as_ptr(), ldb)) };
            for i in 0..m {
                for j in 0..n {
                    let (got, want) = (c[i * ldc + j] as f64, want[i * n + j]);
                    assert!((got - want).abs() <= 1e-6 * k as f64, "[{m}, {n}, {k}] at ({i}, {j}): {got} vs {want}");
                }
            }
        }
    }
}
