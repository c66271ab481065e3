//! f16 compute on wgpu: what the browser engine does on an adapter with `shader-f16` (the
//! headless Chromium of the tests has none, so this path is checked natively, on lavapipe in CI).
//! A test binary of its own: the device's default float dtype is set for the whole process.
//! Ignored unless asked for (it needs a GPU backend): `ZEPO_TEST_WGPU=1 cargo test --test f16_wgpu --
//! --include-ignored` (scripts/test.sh does).

#[path = "parity/common.rs"]
#[allow(dead_code)]
mod common;

use burn::tensor::{DType, Device, FloatDType};
use common::*;
use zepo::weights::LoadOptions;
use zepo::zepo::load::{load_dir, WeightSource};

const WHY: &str = "runs on wgpu: ZEPO_TEST_WGPU=1 cargo test --test f16_wgpu -- --include-ignored";

/// The wgpu device, switched to f16 as `src/web/gpu.rs` does when the adapter computes in it.
fn f16_device() -> Device {
    assert_eq!(std::env::var("ZEPO_TEST_WGPU").as_deref(), Ok("1"), "{WHY}");
    let (_, wgpu) = devices().into_iter().find(|(name, _)| *name == "wgpu").expect("the wgpu device");
    let mut device = wgpu;
    assert!(
        device.supports_dtype(DType::F16),
        "the wgpu adapter ({}) has no f16 arithmetic: this test needs one (lavapipe has it)",
        zepo::device::wgpu_adapter().unwrap_or_default()
    );
    // Once per process (the tests of this file share it).
    static CONFIGURED: std::sync::Once = std::sync::Once::new();
    CONFIGURED.call_once(|| device.configure(FloatDType::F16).unwrap());
    assert_eq!(burn::tensor::Tensor::<1>::zeros([1], &device).dtype(), DType::F16, "new float tensors are f16");
    device
}

#[test]
#[ignore = "runs on wgpu: ZEPO_TEST_WGPU=1 ... -- --include-ignored"]
fn the_fp16_bundle_runs_in_f16_on_wgpu() {
    let device = f16_device();
    let bundle = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("weights/tiny-lcm-bundle");
    let opts = LoadOptions { dtype: DType::F16, ..Default::default() };
    let zepo = load_dir(&bundle, &device, &opts, WeightSource::Checkpoint).unwrap();
    for case in ["tiny_s2_r64", "tiny_s2_r96_synth"] {
        let (image, reference) = replay_case(&zepo, case);
        assert!(image.iter().all(|v| v.is_finite()), "{case}: f16 image has non-finite values");
        // The f32 run of the same bundle is within 8e-3 of the reference (tests/parity); f16
        // arithmetic through 2 steps and the VAE decoder adds rounding of its own (measured on
        // lavapipe: max 2.4e-2, mean 3.0e-3).
        let e = assert_close_abs(&format!("{case} f16 image"), &image, &reference, 3e-2);
        let mean = image.iter().zip(&reference).map(|(a, b)| (a - b).abs()).sum::<f32>() / image.len() as f32;
        println!("f16 on wgpu, {case}: image max abs err {e:.2e}, mean {mean:.2e} (on [0, 1])");
        assert!(mean < 5e-3, "{case}: mean abs err {mean:.2e} in f16: more than rounding");
    }
}

/// Random normal values, rounded to f16 (so that the f16 and f32 runs see the same inputs), as a
/// tensor of `dtype` on `device`.
fn normal<const D: usize>(shape: [usize; D], std: f32, seed: u64, device: &Device, dtype: DType) -> burn::tensor::Tensor<D> {
    use rand::SeedableRng;
    use rand_distr::Distribution;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|_| half::f16::from_f32(std * Distribution::<f32>::sample(&rand_distr::StandardNormal, &mut rng) + 0.3).to_f32())
        .collect();
    burn::tensor::Tensor::from_data(burn::tensor::TensorData::new(v, shape), (device, dtype))
}

fn values<const D: usize>(t: burn::tensor::Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_into_vec::<f32>().unwrap()
}

/// Max |a − b| over max |b| (`a`: an f16 run, which must be finite).
fn rel(a: Vec<f32>, b: Vec<f32>) -> f32 {
    assert!(a.iter().all(|v| v.is_finite()), "non-finite f16 output");
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
    a.iter().zip(&b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

/// The GPU kernels in f16 on values whose sums of squares and attention logits overflow f16
/// if accumulated in it: they accumulate in f32 and stay within f16 rounding of the f32 run.
#[test]
#[ignore = "runs on wgpu: ZEPO_TEST_WGPU=1 ... -- --include-ignored"]
fn f16_kernels_accumulate_in_f32() {
    use zepo::nn::gpu;
    let device = f16_device();
    // GroupNorm (+ SiLU) over groups of 4·32² values of magnitude ~200: sums of squares ~1.6e8.
    let gn = |dtype| {
        let x = normal([1, 32, 32, 32], 200.0, 1, &device, dtype);
        let (g, b) = (normal([32], 0.5, 2, &device, dtype), normal([32], 0.5, 3, &device, dtype));
        values(gpu::group_norm(x, g, b, 8, 1e-5, true))
    };
    let e = rel(gn(DType::F16), gn(DType::F32));
    println!("f16 group norm of large values: {e:.2e} of max |f32|");
    assert!(e < 1e-2, "f16 group norm: {e:e}");
    // LayerNorm of rows of 1280 values of magnitude ~300.
    let ln = |dtype| {
        let x = normal([1, 16, 1280], 300.0, 4, &device, dtype);
        values(gpu::layer_norm(x, normal([1280], 0.5, 5, &device, dtype), normal([1280], 0.5, 6, &device, dtype), 1e-5))
    };
    let e = rel(ln(DType::F16), ln(DType::F32));
    println!("f16 layer norm of large values: {e:.2e}");
    assert!(e < 1e-2, "f16 layer norm: {e:e}");
    // Attention logits beyond f16's range before scaling: |q|, |k| ~ 40 over d = 40 (q·k ~ 6e4).
    let att = |dtype| {
        let q = normal([1, 2, 64, 40], 40.0, 7, &device, dtype);
        let k = normal([1, 2, 64, 40], 40.0, 8, &device, dtype);
        let v = normal([1, 2, 64, 40], 1.0, 9, &device, dtype);
        values(gpu::flash_attention(q, k, v))
    };
    let e = rel(att(DType::F16), att(DType::F32));
    println!("f16 attention with huge logits: {e:.2e}");
    assert!(e < 3e-2, "f16 attention: {e:e}");
}

/// The compact weights' kernels in f16 (activations and scales f16, as the browser engine runs
/// them on a `shader-f16` adapter): they dequantize and accumulate in f32, so they stay within
/// the output's f16 rounding of the same kernels in f32 (the inputs are f16 values in both).
#[test]
#[ignore = "runs on wgpu: ZEPO_TEST_WGPU=1 ... -- --include-ignored"]
fn f16_compact_kernels_accumulate_in_f32() {
    use zepo::nn::gpu;
    use zepo::weights::quant::{rows_cols, Quant};
    use zepo::weights::CompactTensor;
    let device = f16_device();
    let weight = |shape: &[usize], dtype| {
        let quant = Quant { bits: 8, block: 32 };
        let (rows, k) = rows_cols(shape);
        let v = values(normal([rows * k], 1.0, 11, &device, DType::F32));
        let mut stored = Vec::new();
        for row in v.chunks(k) {
            quant.quantize_row(row, &mut stored);
        }
        CompactTensor::from_stored(quant, shape, &stored, &device, dtype).unwrap()
    };
    let conv = |dtype| {
        let x = normal([1, 320, 8, 8], 30.0, 12, &device, dtype);
        let b = normal([64], 1.0, 13, &device, dtype);
        values(gpu::compact_conv2d(x, &weight(&[64, 320, 3, 3], dtype), Some(b), 1, [1, 1, 1, 1]))
    };
    let e = rel(conv(DType::F16), conv(DType::F32));
    println!("f16 compact 3×3 convolution, 320 channels: {e:.2e} of max |f32|");
    assert!(e < 2e-3, "f16 compact convolution: {e:e}");
    let linear = |dtype| {
        let x = normal([2, 40, 1280], 30.0, 14, &device, dtype);
        values(gpu::compact_linear(x, &weight(&[96, 1280], dtype), None))
    };
    let e = rel(linear(DType::F16), linear(DType::F32));
    println!("f16 compact projection, 1280 wide: {e:.2e}");
    assert!(e < 2e-3, "f16 compact projection: {e:e}");
}
