//! Token merging (ToMe) by 2D bipartite soft matching, as ZePo applies it to the content and
//! style hidden states of the controlled self-attentions (tomesd's
//! `bipartite_soft_matching_random2d`, which ZePo's `utils/merge.py` uses).
//!
//! The h×w token map is cut into sy×sx cells; one token per cell is a destination (dst), all
//! others (and the rows / columns past the last whole cell) are sources (src). Each src finds its
//! most cosine-similar dst; the r src with the highest such score are averaged into their dst.
//! Output: `[unmerged src (by descending score) ; dst]`, N − r tokens.
//!
//! Everything after the (host-side, size-only) src/dst split runs as tensor ops on the device.
//! burn has no device sort on wgpu (its argsort reads back synchronously, impossible in the
//! browser), so the descending score order is computed as ranks by pairwise comparison, in row
//! chunks to bound memory. Exactly equal scores are ordered by index; torch's unstable sort
//! may order them otherwise, which only matters if such a tie straddles the r-th place
//! (attention over the merged keys does not depend on their order).

use burn::tensor::{Device, IndexingUpdateOp, Int, Tensor, TensorData};
use rand::{Rng, SeedableRng};

use crate::{Error, Result};

/// How the dst token of each cell is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DstPick {
    /// The top-left token of each cell (the reference's `no_rand`; the oracle fixtures use it).
    TopLeft,
    /// A uniformly random token of each cell, from a seeded generator (the reference draws one
    /// from torch's generator; those exact draws are not reproduced).
    Random { seed: u64 },
}

/// The number of tokens the reference merges: `int(N · ratio)`.
pub fn merge_count(tokens: usize, ratio: f64) -> usize {
    (tokens as f64 * ratio).max(0.0) as usize
}

/// Src and dst token positions of an h×w map, in the order the reference's (unstable) argsort
/// of its −1 (dst) / 0 (src) buffer leaves them: libstdc++ `std::sort` order, not raster order
/// once the map has more than 16 tokens. The dst order is the order of the merged output's dst.
pub fn split_indices(h: usize, w: usize, sx: usize, sy: usize, pick: DstPick) -> (Vec<i64>, Vec<i64>) {
    let (hsy, wsx) = (h / sy, w / sx);
    let mut is_dst = vec![false; h * w];
    let mut rng = match pick {
        DstPick::Random { seed } => Some(rand::rngs::StdRng::seed_from_u64(seed)),
        DstPick::TopLeft => None,
    };
    for cy in 0..hsy {
        for cx in 0..wsx {
            let k = rng.as_mut().map_or(0, |g| g.random_range(0..sy * sx));
            let (y, x) = (cy * sy + k / sx, cx * sx + k % sx);
            is_dst[y * w + x] = true;
        }
    }
    let mut order: Vec<(bool, i64)> = is_dst.iter().enumerate().map(|(i, &d)| (d, i as i64)).collect();
    // key −1 for dst sorts before 0 for src
    super::libstdcxx_introsort::sort_by(&mut order, |a, b| a.0 && !b.0);
    let num_dst = order.iter().filter(|p| p.0).count();
    let src = order[num_dst..].iter().map(|p| p.1).collect();
    let dst = order[..num_dst].iter().map(|p| p.1).collect();
    (src, dst)
}

/// A matching computed from a metric, applicable to any tensor of the same token layout.
#[derive(Debug, Clone)]
pub struct TokenMerge {
    batch: usize,
    tokens: usize,
    r: usize,
    plan: Option<Plan>,
}

#[derive(Debug, Clone)]
struct Plan {
    /// Token positions of the src / dst sets, `[Na]` / `[Nb]`.
    a_idx: Tensor<1, Int>,
    b_idx: Tensor<1, Int>,
    /// Positions within src, `[B, Na − r]` (unmerged, in descending score) and `[B, r]` (merged).
    unm_idx: Option<Tensor<2, Int>>,
    src_idx: Tensor<2, Int>,
    /// The dst each merged src goes to, `[B, r]`.
    dst_idx: Tensor<2, Int>,
}

/// Elements per chunk of the pairwise rank comparison.
const RANK_CHUNK_ELEMS: usize = 1 << 24;

/// Rank of each element of each row in a descending, stable sort: `#{j : s_j > s_i} +
/// #{j < i : s_j = s_i}`. `[B, n]` → `[B, n]`.
fn stable_descending_ranks(s: Tensor<2>) -> Tensor<2, Int> {
    let [b, n] = s.dims();
    let device = s.device();
    let chunk = (RANK_CHUNK_ELEMS / (b * n).max(1)).clamp(1, n);
    let sj = s.clone().unsqueeze_dim::<3>(1); // [B, 1, n]
    let jj = Tensor::<1, Int>::arange(0..n as i64, &device).reshape([1, 1, n]);
    let mut parts = Vec::new();
    let mut start = 0;
    while start < n {
        let c = chunk.min(n - start);
        let si = s.clone().narrow(1, start, c).unsqueeze_dim::<3>(2).expand([b, c, n]);
        let sj = sj.clone().expand([b, c, n]);
        let ii = Tensor::<1, Int>::arange(start as i64..(start + c) as i64, &device).reshape([1, c, 1]);
        let before = jj.clone().expand([b, c, n]).lower(ii.expand([b, c, n]));
        let ahead = sj.clone().greater(si.clone()).bool_or(sj.equal(si).bool_and(before));
        parts.push(ahead.int().sum_dim(2));
        start += c;
    }
    Tensor::cat(parts, 1).reshape([b, n])
}

impl TokenMerge {
    /// The matching of reference `bipartite_soft_matching_random2d(metric, w, h, sx, sy, r)`.
    /// `metric`: `[B, N, C]` with N = h·w. `r` is capped at the number of src tokens; with
    /// r = 0 (or no whole cell) nothing is merged.
    pub fn new(metric: Tensor<3>, h: usize, w: usize, sx: usize, sy: usize, r: usize, pick: DstPick) -> Result<Self> {
        let [batch, tokens, _] = metric.dims();
        if sx == 0 || sy == 0 {
            return Err(Error::InvalidOption(format!("token merge cell {sy}×{sx} must be non-empty")));
        }
        if h * w != tokens {
            return Err(Error::InvalidOption(format!("token merge: {tokens} tokens are not a {h}×{w} map")));
        }
        let (src, dst) = split_indices(h, w, sx, sy, pick);
        let r = r.min(src.len());
        if r == 0 || dst.is_empty() {
            return Ok(Self { batch, tokens, r: 0, plan: None });
        }
        let device = metric.device();
        let na = src.len();
        let a_idx = int_tensor(src, &device);
        let b_idx = int_tensor(dst, &device);

        // cosine similarity of every src to every dst
        let norm = metric.clone().powi_scalar(2).sum_dim(2).sqrt();
        let metric = metric / norm;
        let a = metric.clone().select(1, a_idx.clone());
        let bt = metric.select(1, b_idx.clone()).swap_dims(1, 2);
        let scores = a.matmul(bt); // [B, Na, Nb]
        let (node_max, node_idx) = scores.max_dim_with_indices(2);
        let node_max = node_max.reshape([batch, na]);
        let node_idx = node_idx.reshape([batch, na]);

        // edge_idx[b, p] = the src at sorted position p (inverse of the ranks)
        let ranks = stable_descending_ranks(node_max);
        let order = Tensor::<1, Int>::arange(0..na as i64, &device).unsqueeze_dim::<2>(0).expand([batch, na]);
        let edge_idx = Tensor::<2, Int>::zeros([batch, na], &device).scatter(1, ranks, order, IndexingUpdateOp::Add);

        let src_idx = edge_idx.clone().narrow(1, 0, r);
        let unm_idx = (r < na).then(|| edge_idx.narrow(1, r, na - r));
        let dst_idx = node_idx.gather(1, src_idx.clone());
        Ok(Self { batch, tokens, r, plan: Some(Plan { a_idx, b_idx, unm_idx, src_idx, dst_idx }) })
    }

    /// Tokens merged away.
    pub fn r(&self) -> usize {
        self.r
    }

    /// Tokens after merging.
    pub fn merged_len(&self) -> usize {
        self.tokens - self.r
    }

    fn check(&self, x: &Tensor<3>, tokens: usize, what: &str) -> Result<()> {
        let [b, n, _] = x.dims();
        if b != self.batch || n != tokens {
            return Err(Error::InvalidOption(format!(
                "token {what}: input [{b}, {n}, _], the matching expects [{}, {tokens}, _]",
                self.batch
            )));
        }
        Ok(())
    }

    /// `m(x)`: `[B, N, C]` → `[B, N − r, C]`, merged src averaged into their dst (the dst
    /// itself counted), `[unmerged src ; dst]`.
    pub fn merge(&self, x: Tensor<3>) -> Result<Tensor<3>> {
        self.check(&x, self.tokens, "merge")?;
        let Some(p) = &self.plan else { return Ok(x) };
        let [b, _, c] = x.dims();
        let device = x.device();
        let src = x.clone().select(1, p.a_idx.clone());
        let dst = x.select(1, p.b_idx.clone());
        let nb = dst.dims()[1];

        let merged = src.clone().gather(1, expand_idx(&p.src_idx, c));
        let to_dst = expand_idx(&p.dst_idx, c);
        let sum = dst.scatter(1, to_dst, merged, IndexingUpdateOp::Add);
        let count = Tensor::<3>::ones([b, nb, 1], &device).scatter(
            1,
            p.dst_idx.clone().unsqueeze_dim::<3>(2),
            Tensor::ones([b, self.r, 1], &device),
            IndexingUpdateOp::Add,
        );
        let dst = sum / count;
        Ok(match &p.unm_idx {
            Some(unm_idx) => Tensor::cat(vec![src.gather(1, expand_idx(unm_idx, c)), dst], 1),
            None => dst,
        })
    }

    /// `u(x)`: `[B, N − r, C]` → `[B, N, C]`, each token back at its position, merged src
    /// taking their dst's value.
    pub fn unmerge(&self, x: Tensor<3>) -> Result<Tensor<3>> {
        self.check(&x, self.merged_len(), "unmerge")?;
        let Some(p) = &self.plan else { return Ok(x) };
        let [b, n_merged, c] = x.dims();
        let device = x.device();
        let unm_len = n_merged - p.b_idx.dims()[0];
        let dst = x.clone().narrow(1, unm_len, n_merged - unm_len);
        let src = dst.clone().gather(1, expand_idx(&p.dst_idx, c));

        // token positions of [unmerged ; merged src ; dst], a permutation of 0..N per item
        // a_idx[idx] per item, by index_select on the flat indices (a gather of the repeated
        // a_idx misread its index under burn-fusion on wgpu when the index had one column)
        let token_pos = |idx: &Tensor<2, Int>| {
            let [b, k] = idx.dims();
            p.a_idx.clone().select(0, idx.clone().reshape([b * k])).reshape([b, k])
        };
        let mut positions = Vec::new();
        let mut values = Vec::new();
        if let Some(unm_idx) = &p.unm_idx {
            positions.push(token_pos(unm_idx));
            values.push(x.narrow(1, 0, unm_len));
        }
        positions.push(token_pos(&p.src_idx));
        values.push(src);
        let nb = p.b_idx.dims()[0];
        positions.push(p.b_idx.clone().unsqueeze_dim::<2>(0).expand([b, nb]));
        values.push(dst);
        let positions = Tensor::cat(positions, 1);
        // positions are distinct, so adding into zeros places each value exactly
        Ok(Tensor::<3>::zeros([b, self.tokens, c], &device).scatter(
            1,
            expand_idx(&positions, c),
            Tensor::cat(values, 1),
            IndexingUpdateOp::Add,
        ))
    }
}

fn int_tensor(v: Vec<i64>, device: &Device) -> Tensor<1, Int> {
    let n = v.len();
    Tensor::from_data(TensorData::new(v, [n]), device)
}

/// `[B, k]` → `[B, k, C]` index for gathering / scattering whole tokens.
fn expand_idx(idx: &Tensor<2, Int>, c: usize) -> Tensor<3, Int> {
    let [b, k] = idx.dims();
    idx.clone().unsqueeze_dim::<3>(2).expand([b, k, c])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_covers_remainder_as_src() {
        let (src, dst) = split_indices(3, 3, 2, 2, DstPick::TopLeft);
        assert_eq!(dst, vec![0]);
        assert_eq!(src, vec![1, 2, 3, 4, 5, 6, 7, 8]);
        // 16 tokens: insertion sort only, raster order
        let (src, dst) = split_indices(4, 4, 2, 2, DstPick::TopLeft);
        assert_eq!(dst, vec![0, 2, 8, 10]);
        assert_eq!(src.len(), 12);
        // past 16 tokens the introsort partition reorders: all positions still there once
        let (src, dst) = split_indices(8, 8, 2, 2, DstPick::TopLeft);
        let mut all: Vec<i64> = src.iter().chain(&dst).copied().collect();
        all.sort();
        assert_eq!(all, (0..64).collect::<Vec<_>>());
        assert!(dst.iter().all(|&d| (d / 8) % 2 == 0 && (d % 8) % 2 == 0));
        let (src, dst) = split_indices(4, 6, 2, 2, DstPick::Random { seed: 7 });
        assert_eq!(dst.len(), 6);
        assert_eq!(src.len() + dst.len(), 24);
        // one dst per cell
        for d in &dst {
            let (y, x) = (*d as usize / 6, *d as usize % 6);
            assert_eq!(dst.iter().filter(|e| (**e as usize / 6) / 2 == y / 2 && (**e as usize % 6) / 2 == x / 2).count(), 1);
        }
    }

    #[test]
    fn ranks_are_stable_and_descending() {
        let device = crate::device::device(crate::device::Backend::Cpu).unwrap();
        let s = Tensor::<2>::from_data(TensorData::new(vec![0.5f32, 0.9, 0.5, 0.1, 0.9], [1, 5]), &device);
        let ranks = stable_descending_ranks(s).into_data().convert::<i64>().try_to_vec::<i64>().unwrap();
        assert_eq!(ranks, vec![2, 0, 3, 4, 1]);
    }
}
