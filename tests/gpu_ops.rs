//! The GPU fast paths of `src/nn/gpu.rs` against burn's plain compositions, on wgpu (lavapipe in
//! CI), on random inputs in the layouts the models hand them (contiguous, channels-last views,
//! slices), in f32 (f16: tests/f16_wgpu.rs, a process of its own). Ignored unless asked for: `ZEPO_TEST_WGPU=1 cargo test --test
//! gpu_ops -- --include-ignored` (scripts/test.sh runs them in its wgpu stage).

use burn::nn::GroupNorm;
use burn::tensor::module::{attention, layer_norm};
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{activation, Device, Distribution, Tensor};
use zepo::nn::gpu;

const WHY: &str = "runs on wgpu: ZEPO_TEST_WGPU=1 cargo test --test gpu_ops -- --include-ignored";

fn device() -> Device {
    assert_eq!(std::env::var("ZEPO_TEST_WGPU").as_deref(), Ok("1"), "{WHY}");
    zepo::device::device(zepo::device::Backend::Wgpu).expect("a wgpu adapter")
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_into_vec::<f32>().unwrap()
}

/// Max |a − b| over max |b|.
fn rel(a: Vec<f32>, b: Vec<f32>) -> f32 {
    assert_eq!(a.len(), b.len());
    assert!(a.iter().all(|v| v.is_finite()), "non-finite output");
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
    a.iter().zip(&b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

fn rnd<const D: usize>(shape: [usize; D], std: f64, device: &Device) -> Tensor<D> {
    Tensor::random(shape, Distribution::Normal(0.3, std), device)
}

fn norm(groups: usize, channels: usize, device: &Device) -> GroupNorm {
    use burn::module::Param;
    GroupNorm {
        gamma: Some(Param::from_tensor(rnd([channels], 0.5, device))),
        beta: Some(Param::from_tensor(rnd([channels], 0.5, device))),
        num_groups: groups,
        num_channels: channels,
        epsilon: 1e-5,
        affine: true,
    }
}

#[test]
#[ignore = "runs on wgpu: ZEPO_TEST_WGPU=1 ... -- --include-ignored"]
fn group_norm_matches_burn_in_every_layout() {
    let device = device();
    for (shape, groups) in [([2, 64, 9, 7], 32), ([1, 12, 16, 16], 4), ([3, 8, 1, 5], 8)] {
        let gn = norm(groups, shape[1], &device);
        let contiguous = rnd(shape, 2.0, &device);
        // A channels-last view, as convolutions on the GPU write their outputs.
        let [b, c, h, w] = shape;
        let channels_last = rnd([b, h, w, c], 2.0, &device).permute([0, 3, 1, 2]);
        let t = rnd([b, c], 1.0, &device);
        for x in [contiguous, channels_last] {
            let (g, bt) = (gn.gamma.as_ref().unwrap().val(), gn.beta.as_ref().unwrap().val());
            let plain = gn.forward(x.clone());
            let e = rel(values(gpu::group_norm(x.clone(), g.clone(), bt.clone(), groups, 1e-5, false)), values(plain.clone()));
            assert!(e < 1e-5, "{shape:?}: group norm {e:e}");
            let e = rel(values(gpu::group_norm(x.clone(), g.clone(), bt.clone(), groups, 1e-5, true)), values(activation::silu(plain)));
            assert!(e < 1e-5, "{shape:?}: group norm + SiLU {e:e}");
            let plain_add = activation::silu(gn.forward(x.clone() + t.clone().reshape([b, c, 1, 1])));
            // `t` read at an offset of a wider tensor, as the UNet's fused time projection.
            let wide = Tensor::cat(vec![rnd([b, 3], 1.0, &device), t.clone(), rnd([b, 5], 1.0, &device)], 1);
            let e = rel(values(gpu::group_norm_add(x, wide, 3, g, bt, groups, 1e-5, true)), values(plain_add));
            assert!(e < 1e-5, "{shape:?}: group norm of x + t, SiLU {e:e}");
        }
    }
}

#[test]
#[ignore = "runs on wgpu: ZEPO_TEST_WGPU=1 ... -- --include-ignored"]
fn layer_norm_matches_burn() {
    let device = device();
    for shape in [[2, 77, 320], [1, 5, 1280], [3, 64, 7]] {
        let [_, _, d] = shape;
        let (g, b) = (rnd([d], 0.5, &device), rnd([d], 0.5, &device));
        for x in [rnd(shape, 3.0, &device), rnd([shape[0], shape[2], shape[1]], 3.0, &device).swap_dims(1, 2)] {
            let plain = layer_norm(x.clone(), g.clone(), Some(b.clone()), 1e-5);
            let e = rel(values(gpu::layer_norm(x, g.clone(), b.clone(), 1e-5)), values(plain));
            assert!(e < 1e-5, "{shape:?}: layer norm {e:e}");
        }
    }
}

#[test]
#[ignore = "runs on wgpu: ZEPO_TEST_WGPU=1 ... -- --include-ignored"]
fn geglu_with_bias_matches_burn() {
    let device = device();
    for shape in [[2, 64, 40], [1, 3, 2560]] {
        let h = rnd(shape, 1.5, &device);
        let bias = rnd([shape[2]], 0.5, &device);
        let [a, g]: [Tensor<3>; 2] = (h.clone() + bias.clone().unsqueeze()).chunk(2, 2).try_into().unwrap();
        let plain = a * activation::gelu(g);
        let e = rel(values(gpu::geglu(h, bias)), values(plain));
        assert!(e < 1e-5, "{shape:?}: geglu {e:e}");
    }
}

#[test]
#[ignore = "runs on wgpu: ZEPO_TEST_WGPU=1 ... -- --include-ignored"]
fn flash_attention_matches_burn() {
    let device = device();
    // Self- and cross-attention shapes of the UNet (head dims 40, 80, 160) and odd lengths.
    for (b, h, n, m, d) in [(2, 8, 64, 64, 40), (2, 8, 16, 77, 80), (1, 8, 37, 77, 160), (2, 1, 50, 113, 8)] {
        let q = rnd([b, h, n, d], 1.0, &device);
        // Keys and values as the models hand them: heads split out of [B, M, H·d] (views).
        let k = rnd([b, m, h, d], 1.0, &device).swap_dims(1, 2);
        let v = rnd([b, m, h, d], 1.0, &device).swap_dims(1, 2);
        let plain = attention(q.clone(), k.clone(), v.clone(), None, None, AttentionModuleOptions::default());
        let e = rel(values(gpu::flash_attention(q, k, v)), values(plain));
        assert!(e < 1e-5, "[{b}, {h}, {n}, {m}, {d}]: attention {e:e}");
    }
}

#[test]
#[ignore = "runs on wgpu: ZEPO_TEST_WGPU=1 ... -- --include-ignored"]
fn matmul_matches_burn() {
    let device = device();
    let (x, w) = (rnd([2, 33, 48], 1.0, &device), rnd([48, 20], 1.0, &device));
    let e = rel(values(gpu::matmul(x.clone(), w.clone().unsqueeze())), values(x.matmul(w.unsqueeze())));
    assert!(e < 1e-6, "matmul {e:e}");
}
