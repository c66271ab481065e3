//! ZePo's controlled attention against `AttentionStyle.forward` (`astyle_*`).

use burn::tensor::Tensor;
use zepo::zepo::style_attention::{mix_query, style_attention, StyleKv};

use crate::common::{assert_close_rel, devices, values, Fixture};

/// Rows `[i·heads, (i+1)·heads)` of a `[3·heads, n, d]` tensor as `[1, heads, n, d]`.
fn rows(t: &Tensor<3>, i: usize, heads: usize) -> Tensor<4> {
    let [_, n, d] = t.dims();
    t.clone().narrow(0, i * heads, heads).reshape([1, heads, n, d])
}

#[test]
fn astyle_out() {
    let fx = Fixture::load("components.safetensors");
    let heads = fx.shape("astyle_out")[0];
    for (name, device) in devices() {
        let q: Tensor<3> = fx.tensor("astyle_q", &device);
        let k: Tensor<3> = fx.tensor("astyle_k", &device);
        let v: Tensor<3> = fx.tensor("astyle_v", &device);
        // rows: style, content, target
        let kv = StyleKv {
            k_content: rows(&k, 1, heads),
            v_content: rows(&v, 1, heads),
            k_style: rows(&k, 0, heads),
            v_style: rows(&v, 0, heads),
        };
        let out = style_attention(rows(&q, 2, heads), &kv, 1.2, None).unwrap();
        let err = assert_close_rel(&format!("{name} astyle_out"), &values(out), &fx.f32("astyle_out"), 1e-5);
        eprintln!("{name} astyle_out: max rel err {err:.2e}");

        // mix = 1 leaves the queries alone; mix = 0 takes the content's
        let qt = rows(&q, 2, heads);
        let qc = rows(&q, 1, heads);
        assert_eq!(values(mix_query(qt.clone(), qc.clone(), 1.0).unwrap()), values(qt.clone()));
        assert_eq!(values(mix_query(qt.clone(), qc.clone(), 0.0).unwrap()), values(qc));
        assert!(mix_query(qt, rows(&k, 1, heads), 0.5).is_err());
    }
}
