//! Compact weights: linear block quantization, the storage of a bundle's compact variants
//! (`weights/README.md`, "Compact variants").
//!
//! A weight of logical shape `[rows, …]` is quantized row by row; a row is the weight's input
//! dimension flattened (`c_in·kh·kw` for a convolution, `d_in` for a linear), cut into blocks of
//! `block` values. Each block has one f16 scale `d` and `bits`-bit codes `u`; a value is
//! `d · (u − 2^(bits−1))`. The block's largest-magnitude value maps to the code 0 (so every
//! level is used, as ggml's `q4_0`), its scale chosen among a few shrinks of that for the least
//! squared error. A 1-D tensor is one row.
//!
//! A row is stored as `ceil(k·bits/32)` little-endian u32 words of codes, packed from the least
//! significant bit (a code may straddle two words), then the block scales as f16, padded to
//! whole u32 words: rows are 4-byte aligned and self-contained, so they stream and upload as
//! u32 arrays. `d · (u − 2^(bits−1))` is exact in f32 (an 11-bit mantissa times an integer below
//! 2^8), so every backend dequantizes to the same values.

use half::f16;
use serde::{Deserialize, Serialize};

use super::{Dtype, WeightsError};

/// Smallest and largest code width.
pub const MIN_BITS: u32 = 2;
pub const MAX_BITS: u32 = 8;
/// The block length the converter writes.
pub const DEFAULT_BLOCK: usize = 32;

/// A linear block quantization: `bits` per value, one f16 scale per `block` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Quant {
    pub bits: u32,
    pub block: usize,
}

/// How a compact tensor is stored, as its shard's manifest entry records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuantTensor {
    /// `q2` … `q8`: linear block quantization with that many bits.
    pub scheme: String,
    /// Values per scale.
    pub block: usize,
    /// The weight's logical shape (the shard holds it as `U8 [rows, row bytes]`).
    pub shape: Vec<usize>,
}

impl QuantTensor {
    /// The packing it states, checked: a known scheme and a sane block (errors name `name`).
    pub fn quant(&self, name: &str) -> Result<Quant, String> {
        let q = Quant::parse(&self.scheme).map_err(|e| format!("tensor `{name}`: {e}"))?;
        if !self.block.is_power_of_two() || !(8..=4096).contains(&self.block) {
            return Err(format!("tensor `{name}`: block {} is not a power of two from 8 to 4096", self.block));
        }
        if self.shape.is_empty() || self.shape.contains(&0) {
            return Err(format!("tensor `{name}`: shape {:?} has no values to quantize", self.shape));
        }
        if self.shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d as u64)).is_none_or(|n| n > u32::MAX as u64) {
            return Err(format!("tensor `{name}`: shape {:?} is too large", self.shape));
        }
        Ok(Quant { block: self.block, ..q })
    }

    /// The `[rows, row bytes]` of its `U8` storage.
    pub fn stored_shape(&self, q: Quant) -> [usize; 2] {
        let (rows, k) = rows_cols(&self.shape);
        [rows, q.row_bytes(k)]
    }
}

/// Checks a stored tensor (`name`, of `dtype` and `stored` shape) against the packing `q` of a
/// weight of logical `shape`: `U8 [rows, row bytes]`.
pub fn check_stored(q: Quant, shape: &[usize], name: &str, dtype: Dtype, stored: &[usize]) -> Result<(), String> {
    let (rows, k) = rows_cols(shape);
    let want = [rows, q.row_bytes(k)];
    if dtype != Dtype::U8 || stored != want {
        return Err(format!("compact tensor `{name}` is {} {stored:?}, its {} of {shape:?} is stored U8 {want:?}", dtype.name(), q.name()));
    }
    Ok(())
}

/// A weight's `(rows, values per row)`: its first dimension and the rest flattened (a 1-D
/// tensor is one row).
pub fn rows_cols(shape: &[usize]) -> (usize, usize) {
    match shape {
        [] => (1, 1),
        [n] => (1, *n),
        [rows, rest @ ..] => (*rows, rest.iter().product()),
    }
}

impl Quant {
    /// `q<bits>` with the default block; anything else is refused by name.
    pub fn parse(scheme: &str) -> Result<Self, String> {
        let bits = scheme.strip_prefix('q').and_then(|b| b.parse::<u32>().ok()).filter(|b| (MIN_BITS..=MAX_BITS).contains(b));
        match bits {
            Some(bits) if scheme == format!("q{bits}") => Ok(Self { bits, block: DEFAULT_BLOCK }),
            _ => Err(format!("unknown weight scheme `{scheme}` (this build reads q{MIN_BITS} … q{MAX_BITS})")),
        }
    }

    /// The scheme's name, `q<bits>`.
    pub fn name(&self) -> String {
        format!("q{}", self.bits)
    }

    /// Blocks in a row of `k` values.
    pub fn blocks(&self, k: usize) -> usize {
        k.div_ceil(self.block)
    }

    /// u32 words of codes in a row of `k` values.
    pub fn code_words(&self, k: usize) -> usize {
        (k * self.bits as usize).div_ceil(32)
    }

    /// Bytes of one stored row of `k` values: codes, then scales (both whole u32 words).
    pub fn row_bytes(&self, k: usize) -> usize {
        4 * (self.code_words(k) + self.blocks(k).div_ceil(2))
    }

    /// Stored bytes of a tensor of `shape`.
    pub fn tensor_bytes(&self, shape: &[usize]) -> usize {
        let (rows, k) = rows_cols(shape);
        rows * self.row_bytes(k)
    }

    fn half(&self) -> i32 {
        1 << (self.bits - 1)
    }

    /// Appends the stored form of one row to `out`; `row`'s values must be finite.
    pub fn quantize_row(&self, row: &[f32], out: &mut Vec<u8>) {
        let k = row.len();
        let mut codes = vec![0u32; self.code_words(k)];
        let mut scales: Vec<f16> = Vec::with_capacity(self.blocks(k) + 1);
        let half = self.half();
        let mut bit = 0usize;
        for block in row.chunks(self.block) {
            let d = self.block_scale(block);
            scales.push(d);
            let inv = if d.to_f32() == 0.0 { 0.0 } else { 1.0 / d.to_f32() };
            for &v in block {
                let q = ((v * inv).round() as i32).clamp(-half, half - 1);
                let u = (q + half) as u64;
                let (w, s) = (bit / 32, bit % 32);
                let wide = u << s;
                codes[w] |= wide as u32;
                if s + self.bits as usize > 32 {
                    codes[w + 1] |= (wide >> 32) as u32;
                }
                bit += self.bits as usize;
            }
        }
        if scales.len() % 2 == 1 {
            scales.push(f16::ZERO);
        }
        out.extend(codes.iter().flat_map(|w| w.to_le_bytes()));
        out.extend(scales.iter().flat_map(|s| s.to_le_bytes()));
    }

    /// The scale of one block: the largest-magnitude value maps to code 0 (−2^(bits−1)), or a
    /// slightly smaller scale (clipping that value) where it fits the block better.
    fn block_scale(&self, block: &[f32]) -> f16 {
        let extreme = block.iter().copied().fold(0f32, |m, v| if v.abs() > m.abs() { v } else { m });
        if extreme == 0.0 {
            return f16::ZERO;
        }
        let half = self.half();
        let base = extreme / -(half as f32);
        let error = |d: f16| -> f32 {
            let d = d.to_f32();
            if d == 0.0 {
                return f32::INFINITY;
            }
            block.iter().map(|&v| v - d * ((v / d).round() as i32).clamp(-half, half - 1) as f32).map(|e| e * e).sum()
        };
        // Wider codes hardly gain from a search: the plain scale.
        if self.bits >= 7 {
            return f16::from_f32(base);
        }
        let mut best = (f16::from_f32(base), f32::INFINITY);
        for shrink in [1.0f32, 0.96, 0.92, 0.88, 0.84, 0.8] {
            let d = f16::from_f32(base * shrink);
            let e = error(d);
            if e < best.1 {
                best = (d, e);
            }
        }
        best.0
    }

    /// Decodes one stored row (`row_bytes(k)` bytes) into `out` (`k` values). A scale that is not
    /// finite is an error: a tampered or damaged file, never a NaN weight.
    pub fn dequantize_row(&self, bytes: &[u8], out: &mut [f32]) -> Result<(), String> {
        let k = out.len();
        if bytes.len() != self.row_bytes(k) {
            return Err(format!("a row of {} bytes, {} expected", bytes.len(), self.row_bytes(k)));
        }
        let (codes, scales) = bytes.split_at(4 * self.code_words(k));
        let word = |i: usize| u32::from_le_bytes(codes[4 * i..4 * i + 4].try_into().unwrap()) as u64;
        let mask = (1u64 << self.bits) - 1;
        let half = self.half();
        for (b, chunk) in out.chunks_mut(self.block).enumerate() {
            let d = f16::from_le_bytes([scales[2 * b], scales[2 * b + 1]]);
            if !d.is_finite() {
                return Err(format!("block {b} has the scale {d}, which is not finite"));
            }
            let d = d.to_f32();
            for (j, v) in chunk.iter_mut().enumerate() {
                let bit = (b * self.block + j) * self.bits as usize;
                let (w, s) = (bit / 32, bit % 32);
                let mut u = word(w) >> s;
                if s + self.bits as usize > 32 {
                    u |= word(w + 1) << (32 - s);
                }
                *v = d * ((u & mask) as i32 - half) as f32;
            }
        }
        Ok(())
    }

    /// The squared error of quantizing `values` (rows of `k`), summed: what a tensor's
    /// quantization adds as noise, for the recipe's estimates.
    pub fn squared_error(&self, values: &[f32], k: usize) -> f64 {
        values.iter().zip(self.round_trip(values, k)).map(|(a, b)| ((a - b) as f64).powi(2)).sum()
    }

    /// Quantizes and dequantizes `values` (rows of `k`): the weights the compact variant runs.
    pub fn round_trip(&self, values: &[f32], k: usize) -> Vec<f32> {
        let mut stored = Vec::with_capacity(self.row_bytes(k));
        let mut out = vec![0f32; values.len()];
        for (row, back) in values.chunks(k).zip(out.chunks_mut(k)) {
            stored.clear();
            self.quantize_row(row, &mut stored);
            self.dequantize_row(&stored, back).expect("what this writes it reads");
        }
        out
    }
}

/// Decodes stored rows (`bytes`: whole rows of `k` values) into f32 values; `name` (the
/// tensor) and `file` are used in errors.
pub fn dequantize(q: Quant, bytes: &[u8], k: usize, name: &str, file: &str) -> Result<Vec<f32>, WeightsError> {
    let row = q.row_bytes(k);
    let mut out = vec![0f32; bytes.len() / row * k];
    for (r, (b, o)) in bytes.chunks(row).zip(out.chunks_mut(k)).enumerate() {
        q.dequantize_row(b, o).map_err(|e| WeightsError::Corrupt {
            file: file.to_string(),
            reason: format!("compact tensor `{name}` ({}), row {r}: {e}", q.name()),
        })?;
    }
    Ok(out)
}

/// Splits stored rows (`bytes`: whole rows of `k` values) into the two arrays the GPU kernels
/// read: each row's code words (appended to `words`) and its block scales as f32 (appended to
/// `scales`), checked finite; `name` and `file` are used in errors.
pub fn split_rows(q: Quant, bytes: &[u8], k: usize, words: &mut Vec<u32>, scales: &mut Vec<f32>, name: &str, file: &str) -> Result<(), WeightsError> {
    let row = q.row_bytes(k);
    let (n_words, n_blocks) = (q.code_words(k), q.blocks(k));
    for (r, b) in bytes.chunks(row).enumerate() {
        let (codes, scale_bytes) = b.split_at(4 * n_words);
        words.extend(codes.chunks_exact(4).map(|w| u32::from_le_bytes(w.try_into().expect("4 bytes"))));
        for j in 0..n_blocks {
            let d = f16::from_le_bytes([scale_bytes[2 * j], scale_bytes[2 * j + 1]]);
            if !d.is_finite() {
                return Err(WeightsError::Corrupt {
                    file: file.to_string(),
                    reason: format!("compact tensor `{name}` ({}), row {r}: block {j} has the scale {d}, which is not finite", q.name()),
                });
            }
            scales.push(d.to_f32());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u32) -> Vec<f32> {
        // A deterministic spread with outliers.
        (0..n)
            .map(|i| {
                let x = ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) as f32 / (1 << 24) as f32 - 0.5;
                if i % 97 == 0 {
                    x * 12.0
                } else {
                    x
                }
            })
            .collect()
    }

    #[test]
    fn every_width_round_trips_within_half_a_step() {
        for bits in MIN_BITS..=MAX_BITS {
            for k in [1, 7, 32, 33, 100, 2880] {
                let q = Quant { bits, block: 32 };
                let row = values(k, bits);
                let mut stored = Vec::new();
                q.quantize_row(&row, &mut stored);
                assert_eq!(stored.len(), q.row_bytes(k));
                assert_eq!(stored.len() % 4, 0);
                let mut back = vec![0f32; k];
                q.dequantize_row(&stored, &mut back).unwrap();
                for (b, (block, got)) in row.chunks(32).zip(back.chunks(32)).enumerate() {
                    let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
                    let step = amax / (1 << (bits - 1)) as f32;
                    for (v, g) in block.iter().zip(got) {
                        // Half a step, plus the clipped part of a shrunk scale.
                        assert!((v - g).abs() <= 0.5 * step * 1.26 + amax * 0.2 + 1e-6, "q{bits} k{k} block {b}: {v} → {g}");
                    }
                }
            }
        }
    }

    #[test]
    fn eight_bits_is_close_and_zeros_stay_zero() {
        let q = Quant { bits: 8, block: 32 };
        let row = values(256, 3);
        let back = q.round_trip(&row, 256);
        let err: f32 = row.iter().zip(&back).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        assert!(err < 6.0 / 128.0, "{err}");
        assert_eq!(q.round_trip(&[0.0; 40], 40), vec![0.0; 40]);
        // More bits, less error.
        let errs: Vec<f64> = (MIN_BITS..=MAX_BITS).map(|b| Quant { bits: b, block: 32 }.squared_error(&row, 64)).collect();
        assert!(errs.windows(2).all(|w| w[1] < w[0]), "{errs:?}");
    }

    #[test]
    fn non_finite_scales_and_wrong_lengths_are_refused() {
        let q = Quant { bits: 4, block: 32 };
        let mut stored = Vec::new();
        q.quantize_row(&values(64, 1), &mut stored);
        let scale_at = 4 * q.code_words(64);
        let mut bad = stored.clone();
        bad[scale_at..scale_at + 2].copy_from_slice(&f16::NAN.to_le_bytes());
        let err = dequantize(q, &bad, 64, "w", "f.safetensors").unwrap_err().to_string();
        assert!(err.contains("f.safetensors") && err.contains("`w`") && err.contains("not finite"), "{err}");
        bad[scale_at..scale_at + 2].copy_from_slice(&f16::INFINITY.to_le_bytes());
        assert!(q.dequantize_row(&bad, &mut [0.0; 64]).is_err());
        assert!(q.dequantize_row(&stored[..8], &mut [0.0; 64]).unwrap_err().contains("expected"));
    }

    #[test]
    fn schemes_are_parsed_strictly() {
        assert_eq!(Quant::parse("q4"), Ok(Quant { bits: 4, block: 32 }));
        for bad in ["q1", "q9", "q04", "Q4", "nf4", "q4_k", "", "f16"] {
            let err = Quant::parse(bad).unwrap_err();
            assert!(err.contains(&format!("`{bad}`")), "{err}");
        }
        let t = |scheme: &str, block: usize, shape: Vec<usize>| QuantTensor { scheme: scheme.into(), block, shape };
        assert!(t("q8", 32, vec![4, 64]).quant("w").is_ok());
        assert!(t("q8", 24, vec![4, 64]).quant("w").unwrap_err().contains("block 24"));
        assert!(t("q8", 32, vec![4, 0]).quant("w").unwrap_err().contains("no values"));
        assert!(t("q3k", 32, vec![4]).quant("w").unwrap_err().contains("unknown weight scheme `q3k`"));
        assert_eq!(t("q4", 32, vec![320, 4, 3, 3]).stored_shape(Quant { bits: 4, block: 32 }), [320, 4 * (5 + 1)]);
    }
}
