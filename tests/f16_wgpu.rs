//! f16 compute on wgpu: what the browser engine does on an adapter with `shader-f16` (the
//! headless Chromium of the tests has none, so this path is checked natively, on lavapipe in CI).
//! A test binary of its own: the device's default float dtype is set for the whole process.
//! Runs with ZEPO_TEST_WGPU=1 (scripts/test.sh); without it, it says so and checks nothing.

#[path = "parity/common.rs"]
#[allow(dead_code)]
mod common;

use burn::tensor::{DType, Device, FloatDType};
use common::*;
use zepo::weights::LoadOptions;
use zepo::zepo::load::{load_dir, WeightSource};

/// The wgpu device, switched to f16 as `src/web/gpu.rs` does when the adapter computes in it.
fn f16_device() -> Option<Device> {
    let (_, wgpu) = devices().into_iter().find(|(name, _)| *name == "wgpu")?;
    let mut device = wgpu;
    assert!(
        device.supports_dtype(DType::F16),
        "the wgpu adapter ({}) has no f16 arithmetic: this test needs one (lavapipe has it)",
        zepo::device::wgpu_adapter().unwrap_or_default()
    );
    device.configure(FloatDType::F16).unwrap();
    assert_eq!(burn::tensor::Tensor::<1>::zeros([1], &device).dtype(), DType::F16, "new float tensors are f16");
    Some(device)
}

#[test]
fn the_fp16_bundle_runs_in_f16_on_wgpu() {
    let Some(device) = f16_device() else {
        println!("skipped: set ZEPO_TEST_WGPU=1 to run f16 on wgpu");
        return;
    };
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
