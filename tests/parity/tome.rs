//! Token merging against ZePo's `utils/merge.py` (`tome_*` in components.safetensors;
//! dst = top-left token of each cell).

use burn::tensor::Tensor;
use burn::tensor::TensorData;
use zepo::zepo::tome::{merge_count, split_indices, DstPick, TokenMerge};

use crate::common::{assert_close_abs, devices, values, Fixture};

/// (tag, h, w, B, r) of every `tome_*` case in components.json.
const CASES: [(&str, usize, usize, usize, usize); 7] = [
    ("tome_8x8_B2", 8, 8, 2, 32),
    ("tome_16x16_B6", 16, 16, 6, 128),
    ("tome_3x3_B2", 3, 3, 2, 4),
    ("tome_6x6_B2", 6, 6, 2, 18),
    ("tome_2x2_B2", 2, 2, 2, 2),
    ("tome_1x1_B2", 1, 1, 2, 0),
    ("tome_5x5_B2", 5, 5, 2, 12),
];

#[test]
fn tome_merge_unmerge() {
    let fx = Fixture::load("components.safetensors");
    for (name, device) in devices() {
        for (tag, h, w, b, r) in CASES {
            assert_eq!(fx.shape(&format!("{tag}_x")), vec![b, h * w, fx.shape(&format!("{tag}_x"))[2]]);
            assert_eq!(merge_count(h * w, 0.5), r, "{tag}: r = int(N·0.5)");
            let x: Tensor<3> = fx.tensor(&format!("{tag}_x"), &device);
            let m = TokenMerge::new(x.clone(), h, w, 2, 2, r, DstPick::TopLeft).unwrap();
            let merged = m.merge(x).unwrap();
            assert_eq!(merged.dims().to_vec(), fx.shape(&format!("{tag}_merged")), "{tag} merged shape");
            let unmerged = m.unmerge(merged.clone()).unwrap();
            let e1 = assert_close_abs(&format!("{name} {tag} merged"), &values(merged), &fx.f32(&format!("{tag}_merged")), 1e-6);
            let e2 = assert_close_abs(&format!("{name} {tag} unmerged"), &values(unmerged), &fx.f32(&format!("{tag}_unmerged")), 1e-6);
            eprintln!("{name} {tag}: merged {e1:.2e}, unmerged {e2:.2e} max abs err");
        }
    }
}

#[test]
fn tome_bad_input_is_an_error() {
    let device = devices().remove(0).1;
    let x = Tensor::<3>::ones([2, 16, 8], &device);
    assert!(TokenMerge::new(x.clone(), 3, 5, 2, 2, 8, DstPick::TopLeft).is_err());
    assert!(TokenMerge::new(x.clone(), 4, 4, 0, 2, 8, DstPick::TopLeft).is_err());
    let m = TokenMerge::new(x.clone(), 4, 4, 2, 2, 8, DstPick::Random { seed: 1 }).unwrap();
    assert_eq!(m.merged_len(), 8);
    assert!(m.merge(Tensor::ones([2, 15, 8], &device)).is_err());
    assert!(m.unmerge(x).is_err());
}

/// r larger than the src count is capped: every src merges, only the dst remain.
#[test]
fn tome_all_src_merged() {
    let device = devices().remove(0).1;
    let fx = Fixture::load("components.safetensors");
    let x: Tensor<3> = fx.tensor("tome_8x8_B2_x", &device);
    let m = TokenMerge::new(x.clone(), 8, 8, 2, 2, 1000, DstPick::TopLeft).unwrap();
    assert_eq!(m.r(), 48);
    let merged = m.merge(x.clone()).unwrap();
    assert_eq!(merged.dims(), [2, 16, 16]);
    // means of the tokens each dst collected: the total over tokens is preserved as Σ count·mean
    let unmerged = m.unmerge(merged).unwrap();
    let total_in: f32 = values(x.sum()).iter().sum();
    let total_out: f32 = values(unmerged.sum()).iter().sum();
    assert!((total_in - total_out).abs() < 1e-3, "{total_in} vs {total_out}");
}

/// Straight loops over one item, following the reference step by step (cosine scores, first
/// best dst, stable descending sort, mean with the dst counted); `split_indices` gives the
/// reference's src/dst order (checked by the fixtures above).
fn host_merge(x: &[f32], n: usize, c: usize, h: usize, w: usize, r: usize, pick: DstPick) -> Vec<f32> {
    let (src, dst) = split_indices(h, w, 2, 2, pick);
    let r = r.min(src.len());
    if r == 0 || dst.is_empty() {
        return x.to_vec();
    }
    assert_eq!(n, h * w);
    let tok = |i: i64| &x[i as usize * c..(i as usize + 1) * c];
    let unit = |i: i64| {
        let t = tok(i);
        let norm = t.iter().map(|v| v * v).sum::<f32>().sqrt();
        t.iter().map(|v| v / norm).collect::<Vec<f32>>()
    };
    let best: Vec<(f32, usize)> = src
        .iter()
        .map(|&s| {
            let a = unit(s);
            let scores: Vec<f32> = dst.iter().map(|&d| unit(d).iter().zip(&a).map(|(p, q)| p * q).sum()).collect();
            let mut k = 0;
            for j in 1..scores.len() {
                if scores[j] > scores[k] {
                    k = j;
                }
            }
            (scores[k], k)
        })
        .collect();
    let mut order: Vec<usize> = (0..src.len()).collect();
    order.sort_by(|&i, &j| best[j].0.partial_cmp(&best[i].0).unwrap());
    let mut sums: Vec<Vec<f32>> = dst.iter().map(|&d| tok(d).to_vec()).collect();
    let mut counts = vec![1f32; dst.len()];
    for &i in &order[..r] {
        let k = best[i].1;
        counts[k] += 1.0;
        for (acc, v) in sums[k].iter_mut().zip(tok(src[i])) {
            *acc += v;
        }
    }
    let mut out: Vec<f32> = order[r..].iter().flat_map(|&i| tok(src[i]).to_vec()).collect();
    for (k, s) in sums.iter().enumerate() {
        out.extend(s.iter().map(|v| v / counts[k]));
    }
    out
}

/// Non-square maps, r = 1, r = all but one src, random dst: against the host loops, and
/// unmerge puts every unmerged token back in place.
#[test]
fn tome_other_geometries() {
    let cases = [
        (4usize, 6usize, 1usize, DstPick::TopLeft),
        (4, 4, 11, DstPick::TopLeft),
        (5, 3, 7, DstPick::TopLeft),
        (6, 8, 20, DstPick::Random { seed: 3 }),
        (2, 2, 1, DstPick::Random { seed: 9 }),
    ];
    for (name, device) in devices() {
        for (h, w, r, pick) in cases {
            let (b, n, c) = (3, h * w, 5);
            // a deterministic scramble, distinct tokens
            let data: Vec<f32> = (0..b * n * c).map(|i| ((i as f32 * 0.7548777).fract() - 0.5) * ((i % 7) as f32 + 1.0)).collect();
            let x = Tensor::<3>::from_data(TensorData::new(data.clone(), [b, n, c]), &device);
            let m = TokenMerge::new(x.clone(), h, w, 2, 2, r, pick).unwrap();
            let merged = values(m.merge(x).unwrap());
            let expected: Vec<f32> = (0..b).flat_map(|i| host_merge(&data[i * n * c..(i + 1) * n * c], n, c, h, w, r, pick)).collect();
            let err = assert_close_abs(&format!("{name} {h}x{w} r={r} {pick:?} merged"), &merged, &expected, 1e-6);
            eprintln!("{name} {h}x{w} r={r} {pick:?}: merged {err:.2e} max abs err");

            let nm = m.merged_len();
            let merged_t = Tensor::<3>::from_data(TensorData::new(merged.clone(), [b, nm, c]), &device);
            let unmerged = values(m.unmerge(merged_t).unwrap());
            // each token comes back exactly, or (merged src, or a dst that took merges) as its
            // dst's mean; at most 2r per item are not exact
            let (_, dst) = split_indices(h, w, 2, 2, pick);
            for i in 0..b {
                let means = &merged[(i * nm + nm - dst.len()) * c..(i + 1) * nm * c];
                let mut exact = 0;
                for t in i * n..(i + 1) * n {
                    let got = &unmerged[t * c..(t + 1) * c];
                    if got == &data[t * c..(t + 1) * c] {
                        exact += 1;
                    } else {
                        assert!(
                            means.chunks(c).any(|mean| mean == got),
                            "{name} {h}x{w} r={r}: token {t} is neither itself nor a dst mean"
                        );
                    }
                }
                assert!(exact + 2 * m.r() >= n, "{name} {h}x{w} r={r}: only {exact} of {n} tokens restored");
            }
        }
    }
}
