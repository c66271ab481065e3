//! Fixture loading and tolerance checks shared by the parity tests.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::tensor::{Device, Int, Tensor, TensorData};
use zepo::weights::{Dtype, SafetensorsBytes};
use zepo::zepo::image::RgbImage;
use zepo::zepo::noise::ReplayNoise;
use zepo::zepo::{TomeOptions, ZepoOptions};

/// `tests/fixtures/<rel>`.
pub fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(rel)
}

/// The tiny LCM model in diffusers layout (`weights/tiny-lcm`).
pub fn tiny_model() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("weights/tiny-lcm")
}

/// Devices the parity tests run on: the CPU backend always; wgpu too when `ZEPO_TEST_WGPU=1`
/// (lavapipe in CI).
pub fn devices() -> Vec<(&'static str, Device)> {
    let mut out = vec![("cpu", zepo::device::device(zepo::device::Backend::Cpu).unwrap())];
    if std::env::var("ZEPO_TEST_WGPU").map(|v| v == "1").unwrap_or(false) {
        out.push(("wgpu", zepo::device::device(zepo::device::Backend::Wgpu).expect("ZEPO_TEST_WGPU=1 but no wgpu adapter")));
        // scripts/test.sh sets this to `llvmpipe`, so that a run on another adapter fails.
        if let Ok(want) = std::env::var("ZEPO_TEST_WGPU_ADAPTER") {
            let got = zepo::device::wgpu_adapter().unwrap_or_default();
            assert!(got.to_lowercase().contains(&want.to_lowercase()), "wgpu adapter is `{got}`, not `{want}`");
        }
    }
    out
}

/// A reference safetensors file, every tensor decoded to f32 (floats) or i64 (integers).
pub struct Fixture {
    tensors: HashMap<String, (Vec<usize>, Values)>,
}

enum Values {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

impl Fixture {
    pub fn load(rel: &str) -> Self {
        let path = fixture(rel);
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let st = SafetensorsBytes::new(bytes, rel).unwrap();
        let mut tensors = HashMap::new();
        for (entry, b) in st.tensors() {
            let values = match entry.dtype {
                Dtype::F32 => Values::F32(b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()),
                Dtype::F64 => Values::F32(b.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap()) as f32).collect()),
                Dtype::I64 => Values::I64(b.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect()),
                Dtype::U8 => Values::I64(b.iter().map(|&v| v as i64).collect()),
                other => panic!("fixture dtype {other:?}"),
            };
            tensors.insert(entry.name.clone(), (entry.shape.clone(), values));
        }
        Self { tensors }
    }

    pub fn has(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<_> = self.tensors.keys().cloned().collect();
        v.sort();
        v
    }

    pub fn shape(&self, name: &str) -> Vec<usize> {
        self.entry(name).0.clone()
    }

    fn entry(&self, name: &str) -> &(Vec<usize>, Values) {
        self.tensors.get(name).unwrap_or_else(|| panic!("fixture has no tensor `{name}`"))
    }

    pub fn f32(&self, name: &str) -> Vec<f32> {
        match &self.entry(name).1 {
            Values::F32(v) => v.clone(),
            Values::I64(v) => v.iter().map(|&x| x as f32).collect(),
        }
    }

    pub fn i64(&self, name: &str) -> Vec<i64> {
        match &self.entry(name).1 {
            Values::I64(v) => v.clone(),
            Values::F32(v) => v.iter().map(|&x| x as i64).collect(),
        }
    }

    pub fn data(&self, name: &str) -> TensorData {
        TensorData::new(self.f32(name), self.shape(name))
    }

    pub fn tensor<const D: usize>(&self, name: &str, device: &Device) -> Tensor<D> {
        Tensor::from_data(self.data(name), device)
    }

    pub fn int_tensor<const D: usize>(&self, name: &str, device: &Device) -> Tensor<D, Int> {
        Tensor::from_data(TensorData::new(self.i64(name), self.shape(name)), device)
    }
}

/// Max abs error relative to the expected tensor's max magnitude; panics above `tol`.
pub fn assert_close_rel(what: &str, actual: &[f32], expected: &[f32], tol: f32) -> f32 {
    assert_eq!(actual.len(), expected.len(), "{what}: {} values, expected {}", actual.len(), expected.len());
    let scale = expected.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
    let err = max_abs_diff(actual, expected);
    assert!(actual.iter().all(|v| v.is_finite()), "{what}: non-finite output");
    assert!(err / scale <= tol, "{what}: max abs error {err:.3e} = {:.3e} of max |ref| {scale:.3e} > {tol:.0e}", err / scale);
    err / scale
}

/// Max abs error; panics above `tol`.
pub fn assert_close_abs(what: &str, actual: &[f32], expected: &[f32], tol: f32) -> f32 {
    assert_eq!(actual.len(), expected.len(), "{what}: {} values, expected {}", actual.len(), expected.len());
    let err = max_abs_diff(actual, expected);
    assert!(actual.iter().all(|v| v.is_finite()), "{what}: non-finite output");
    assert!(err <= tol, "{what}: max abs error {err:.3e} > {tol:.0e}");
    err
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()))
}

/// A tensor's values as f32 on the host.
pub fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_into_vec::<f32>().unwrap()
}

/// A fresh, empty scratch directory under the system's temp dir, removed when dropped (also
/// when the test fails), so that test runs leave nothing behind.
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("zepo-test-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// The reference cases (tests/fixtures/cases/*): their options, inputs, draws and result.

pub const CASES: [&str; 5] = ["tiny_s2_r64", "tiny_s2_r128", "tiny_s4_r128", "tiny_s2_r96_synth", "tiny_s2_r64_notome"];

/// The case's parameters, as the reference ran it.
pub fn case_options(case: &str) -> ZepoOptions {
    let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(fixture(&format!("cases/{case}/meta.json"))).unwrap()).unwrap();
    let p = &meta["params"];
    let u = |k: &str| p[k].as_u64().unwrap_or_else(|| panic!("{case}: params.{k}")) as usize;
    let f = |k: &str| p[k].as_f64().unwrap_or_else(|| panic!("{case}: params.{k}"));
    ZepoOptions {
        resolution: u("res"),
        steps: u("num_inference_steps"),
        strength: f("strength"),
        cfg: f("guidance_scale") as f32,
        style_guidance: f("style_guidance") as f32,
        feature_step: u("fix_step_index"),
        start_layer: u("start_ac_layer"),
        end_layer: u("end_ac_layer"),
        mix_q: f("mix_q_scale") as f32,
        tome: p["tome"].as_bool().unwrap().then(|| TomeOptions {
            ratio: f("tome_ratio") as f32,
            sx: u("tome_sx"),
            sy: u("tome_sy"),
            deterministic: p["tome_no_rand"].as_bool().unwrap(),
        }),
        prompt: p["prompt"].as_str().unwrap().into(),
        negative_prompt: p["neg_prompt"].as_str().unwrap().into(),
        seed: u("seed") as u64,
        no_cfg: false,
        ..Default::default()
    }
}

pub fn rgb(fx: &Fixture, name: &str) -> RgbImage {
    let s = fx.shape(name);
    RgbImage::new(s[1], s[0], fx.i64(name).into_iter().map(|v| v as u8).collect()).unwrap()
}

pub fn replay(fx: &Fixture) -> ReplayNoise {
    let draws = fx.names().into_iter().filter(|n| n.starts_with("rand_")).map(|n| (n.clone(), fx.shape(&n), fx.f32(&n))).collect();
    ReplayNoise::new(draws)
}

/// The stylized image (third of `images`), H×W×3.
pub fn reference_image(fx: &Fixture) -> Vec<f32> {
    let all = fx.f32("images");
    let n = all.len() / 3;
    all[2 * n..].to_vec()
}

/// Runs reference case `case` through `zepo` as the reference did (its options, inputs and
/// replayed draws): (the stylized image, the reference's), both H×W×3 in [0, 1].
pub fn replay_case(zepo: &zepo::zepo::pipeline::Zepo, case: &str) -> (Vec<f32>, Vec<f32>) {
    use zepo::zepo::pipeline::Style;
    let fx = Fixture::load(&format!("cases/{case}/reference.safetensors"));
    let o = case_options(case);
    let prompts = zepo.embed_prompts(&o.prompt, &o.negative_prompt).unwrap();
    let out = zepo
        .stylize(
            &rgb(&fx, "content_rgb_u8"),
            Style::Image(&rgb(&fx, "style_rgb_u8")),
            &o,
            &prompts,
            &mut replay(&fx),
            &mut zepo::zepo::progress::Silent,
            None,
        )
        .unwrap();
    (out.image.values, reference_image(&fx))
}

/// Copies a bundle so that a test can damage it.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.path().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}
