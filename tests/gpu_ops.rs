//! The GPU fast paths of `src/nn/gpu.rs` against burn's plain compositions (the compact
//! weights' kernels against the same values dequantized on the CPU), on wgpu (lavapipe in
//! CI), on random inputs in the layouts the models hand them (contiguous, channels-last views,
//! slices), in f32 (f16: tests/f16_wgpu.rs, a process of its own). Ignored unless asked for: `ZEPO_TEST_WGPU=1 cargo test --test
//! gpu_ops -- --include-ignored` (scripts/test.sh runs them in its wgpu stage).

use burn::nn::GroupNorm;
use burn::tensor::module::{attention, conv2d, layer_norm, linear};
use burn::tensor::ops::{AttentionModuleOptions, ConvOptions};
use burn::tensor::{activation, DType, Device, Distribution, Tensor, TensorData};
use zepo::nn::gpu;
use zepo::weights::quant::{dequantize, rows_cols, Quant};
use zepo::weights::CompactTensor;

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

/// A weight of `shape` (PyTorch's layout) packed as `quant`, on `device`: its compact form, and
/// the values the CPU decodes from the same stored rows (`[rows, cols]`, row-major).
fn compact_weight(shape: &[usize], quant: Quant, seed: u32, device: &Device) -> (CompactTensor, Vec<f32>) {
    let (rows, k) = rows_cols(shape);
    // Deterministic values with a spread of magnitudes per row, a zero block included.
    let mut state = seed.wrapping_mul(2654435761).max(1);
    let mut stored = Vec::new();
    for r in 0..rows {
        let row: Vec<f32> = (0..k)
            .map(|i| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                let u = (state as f32 / u32::MAX as f32) * 2.0 - 1.0;
                if r == 1 && i < quant.block { 0.0 } else { u * (1.0 + (r % 5) as f32) }
            })
            .collect();
        quant.quantize_row(&row, &mut stored);
    }
    let cpu = dequantize(quant, &stored, k, "w", "test").unwrap();
    (CompactTensor::from_stored(quant, shape, &stored, device, DType::F32).unwrap(), cpu)
}

#[test]
#[ignore = "runs on wgpu: ZEPO_TEST_WGPU=1 ... -- --include-ignored"]
fn compact_dequantization_gives_the_cpus_values_exactly() {
    let device = device();
    // Every width, codes straddling words (3, 5, 6, 7 bits), rows not a whole number of
    // blocks, another block length.
    for bits in 2..=8 {
        for (shape, block) in [(vec![7, 100], 32), (vec![5, 3, 3, 3], 32), (vec![3, 256], 64)] {
            let quant = Quant { bits, block };
            let (compact, cpu) = compact_weight(&shape, quant, bits * 7 + shape.len() as u32, &device);
            let gpu = values(gpu::compact_dequantize(&compact));
            assert!(gpu == cpu, "q{bits} block {block} {shape:?}: the GPU's values differ from the CPU's");
        }
    }
}

#[test]
#[ignore = "runs on wgpu: ZEPO_TEST_WGPU=1 ... -- --include-ignored"]
fn compact_linear_matches_the_dense_weight() {
    let device = device();
    // (tokens, d_in, d_out): the UNet's widths, a row shorter than a block, tiles cut by both
    // edges; at most 16 rows (2·tokens) the skinny kernel, a row tile cut short (3 → 6 rows).
    for (n, d_in, d_out, bits) in [(70, 320, 77, 8), (9, 100, 130, 4), (64, 20, 64, 5), (1, 1280, 320, 6), (8, 300, 70, 8), (3, 64, 65, 3)] {
        let quant = Quant { bits, block: 32 };
        let (compact, cpu) = compact_weight(&[d_out, d_in], quant, n as u32, &device);
        let dense: Tensor<2> = Tensor::from_data(TensorData::new(cpu, [d_out, d_in]), &device).transpose();
        let bias = rnd([d_out], 0.5, &device);
        let contiguous = rnd([2, n, d_in], 1.0, &device);
        // Tokens as the models hand them: a channels-last feature map seen as [B, N, C].
        let view = rnd([2, d_in, n], 1.0, &device).swap_dims(1, 2);
        for x in [contiguous, view] {
            let plain = linear(x.clone(), dense.clone(), Some(bias.clone()));
            let e = rel(values(gpu::compact_linear(x.clone(), &compact, Some(bias.clone()))), values(plain));
            assert!(e < 1e-5, "[{n}, {d_in}] → {d_out}, q{bits}: {e:e}");
            let plain = linear(x.clone(), dense.clone(), None);
            let e = rel(values(gpu::compact_linear(x, &compact, None)), values(plain));
            assert!(e < 1e-5, "[{n}, {d_in}] → {d_out}, q{bits}, no bias: {e:e}");
        }
    }
}

#[test]
#[ignore = "runs on wgpu: ZEPO_TEST_WGPU=1 ... -- --include-ignored"]
fn compact_convolution_matches_the_dense_weight() {
    let device = device();
    // (c_in, c_out, kernel, stride, [top, left, bottom, right], h, w): the UNet's and VAE's 3×3
    // and 1×1 convolutions, the downsamplers' stride 2 with the VAE's asymmetric padding, a
    // band's halo padding, `c_in·9` not a whole number of blocks (conv_in: 4·9 = 36). Maps so
    // small that taps only read padding (skipped): a 1×1 map (the centre tap alone), a 2×2 map
    // downsampled with the VAE's padding (its bottom row and right column of taps), one row of
    // 12 (tiled: only the middle row of taps); the skinny kernel for at most 16 output pixels
    // (2 items of 1×1, 2×2 with `c_in` not a multiple of its 64 steps, 2×4 at stride 2).
    let cases = [
        (64, 40, 3, 1, [1, 1, 1, 1], 1, 1, 8),
        (16, 16, 3, 2, [0, 0, 1, 1], 2, 2, 6),
        (24, 8, 3, 1, [1, 1, 1, 1], 1, 12, 8),
        (20, 70, 3, 1, [1, 1, 1, 1], 2, 2, 4),
        (24, 33, 3, 2, [1, 1, 1, 1], 4, 8, 8),
        (4, 32, 3, 1, [1, 1, 1, 1], 9, 7, 8),
        (40, 70, 3, 1, [1, 1, 1, 1], 6, 11, 4),
        (16, 16, 3, 2, [0, 0, 1, 1], 9, 8, 8),
        (8, 24, 3, 2, [1, 1, 1, 1], 7, 7, 6),
        (24, 8, 3, 1, [0, 1, 1, 1], 5, 6, 5),
        (40, 24, 1, 1, [0, 0, 0, 0], 8, 8, 8),
    ];
    for (c_in, c_out, kernel, stride, pad, h, w, bits) in cases {
        let quant = Quant { bits, block: 32 };
        let (compact, cpu) = compact_weight(&[c_out, c_in, kernel, kernel], quant, (c_in * c_out) as u32, &device);
        let dense: Tensor<4> = Tensor::from_data(TensorData::new(cpu, [c_out, c_in, kernel, kernel]), &device);
        let bias = rnd([c_out], 0.5, &device);
        let contiguous = rnd([2, c_in, h, w], 1.0, &device);
        // Channels-last, as convolutions and the fused norms write their outputs on the GPU.
        let channels_last = rnd([2, h, w, c_in], 1.0, &device).permute([0, 3, 1, 2]);
        let [top, left, bottom, right] = pad;
        let options = ConvOptions::new_with_padding([stride, stride], [(top, bottom), (left, right)], [1, 1], 1);
        for x in [contiguous, channels_last] {
            let plain = conv2d(x.clone(), dense.clone(), Some(bias.clone()), options.clone());
            let out = gpu::compact_conv2d(x, &compact, Some(bias.clone()), stride, pad);
            assert_eq!(out.dims(), plain.dims());
            let e = rel(values(out), values(plain));
            assert!(e < 1e-5, "{c_in} → {c_out}, {kernel}×{kernel} stride {stride} pad {pad:?}, q{bits}: {e:e}");
        }
    }
}

/// f16 weights kept as f16 words (`Packing::F16`, an f16 bundle on a GPU computing in f32):
/// every f16 value (zeros of both signs, subnormals, the largest, infinities) decodes to its
/// exact f32, and the projection and convolution kernels read them as the dense path does.
#[test]
#[ignore = "runs on wgpu: ZEPO_TEST_WGPU=1 ... -- --include-ignored"]
fn f16_words_decode_exactly_and_run_like_the_dense_weight() {
    use half::f16;
    let device = device();
    // All 65536 f16 bit patterns but NaNs, as 248 rows of 263 (odd: a row ends in a half word).
    let all: Vec<f16> = (0..=u16::MAX).map(f16::from_bits).filter(|v| !v.is_nan()).collect();
    let k = 263;
    let rows = all.len() / k;
    let bytes: Vec<u8> = all[..rows * k].iter().flat_map(|v| v.to_le_bytes()).collect();
    let compact = CompactTensor::from_f16(&[rows, k], &bytes, &device, DType::F32);
    let gpu = values(gpu::compact_dequantize(&compact));
    let cpu: Vec<f32> = all[..rows * k].iter().map(|v| v.to_f32()).collect();
    let same = gpu.iter().zip(&cpu).all(|(a, b)| a.to_bits() == b.to_bits());
    assert!(same, "every f16 decodes to its exact f32, sign of zero included");

    let weight = |shape: &[usize], seed: u64| {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = values(rnd([n], 0.5, &device)).into_iter().map(|x| f16::from_f32(x + seed as f32 * 1e-3).to_f32()).collect();
        let bytes: Vec<u8> = v.iter().flat_map(|x| f16::from_f32(*x).to_le_bytes()).collect();
        (CompactTensor::from_f16(shape, &bytes, &device, DType::F32), v)
    };
    // Both GEMM kernels: 38 rows (tiled) and 10 (skinny).
    let (compact, v) = weight(&[77, 321], 1);
    let dense: Tensor<2> = Tensor::from_data(TensorData::new(v, [77, 321]), &device).transpose();
    for tokens in [19, 5] {
        let x = rnd([2, tokens, 321], 1.0, &device);
        let e = rel(values(gpu::compact_linear(x.clone(), &compact, None)), values(linear(x, dense.clone(), None)));
        assert!(e < 1e-5, "f16 words, projection of {tokens} tokens: {e:e}");
    }
    let (compact, v) = weight(&[24, 13, 3, 3], 2);
    let dense: Tensor<4> = Tensor::from_data(TensorData::new(v, [24, 13, 3, 3]), &device);
    let options = ConvOptions::new([1, 1], [1, 1], [1, 1], 1);
    for (h, w) in [(7, 9), (2, 2)] {
        let x = rnd([2, h, w, 13], 1.0, &device).permute([0, 3, 1, 2]);
        let e = rel(values(gpu::compact_conv2d(x.clone(), &compact, None, 1, [1, 1, 1, 1])), values(conv2d(x, dense.clone(), None, options.clone())));
        assert!(e < 1e-5, "f16 words, 3×3 convolution of a {h}×{w} map: {e:e}");
    }
}
