//! `AutoencoderKL` against diffusers (components and a whole case), and the banded large-image
//! path against the plain one.

use burn::tensor::{Device, Tensor, TensorData};
use zepo::models::vae::{decode_plan, encode_plan, AutoencoderKL, BandedRun, BufferPlan, VaeConfig, VaeOptions, VaeShape};
use zepo::weights::LoadOptions;
use zepo::zepo::load::load_part;

use crate::common::{assert_close_rel, devices, tiny_model, values, Fixture};

const TOL: f32 = 1e-4;
/// Banded vs plain: the same arithmetic up to summation order.
const BAND_TOL: f32 = 1e-5;

fn config(dir: &std::path::Path) -> VaeConfig {
    zepo::models::read_config(&dir.join("vae/config.json")).unwrap()
}

fn load(device: &Device) -> AutoencoderKL {
    let dir = tiny_model();
    let store = load_part(&dir, "vae", device, &LoadOptions::default()).unwrap();
    let vb = store.into_builder();
    let vae = AutoencoderKL::load(&vb, &config(&dir)).unwrap();
    vb.finish().unwrap();
    vae
}

fn check(what: &str, dev: &str, actual: Tensor<4>, expected: &[f32], tol: f32) {
    let err = assert_close_rel(&format!("{what} [{dev}]"), &values(actual), expected, tol);
    eprintln!("{what} [{dev}]: max rel error {err:.2e}");
}

#[test]
fn vae_encode_matches_diffusers() {
    let fx = Fixture::load("components.safetensors");
    for (dev, device) in devices() {
        let vae = load(&device);
        for sfx in ["", "_rect"] {
            let x = fx.tensor::<4>(&format!("vae_enc_in{sfx}"), &device);
            let post = vae.encode(x);
            check(&format!("vae_enc_mean{sfx}"), dev, post.mean, &fx.f32(&format!("vae_enc_mean{sfx}")), TOL);
            check(&format!("vae_enc_logvar{sfx}"), dev, post.logvar, &fx.f32(&format!("vae_enc_logvar{sfx}")), TOL);
            if fx.has(&format!("vae_enc_std{sfx}")) {
                check(&format!("vae_enc_std{sfx}"), dev, post.std, &fx.f32(&format!("vae_enc_std{sfx}")), TOL);
            }
        }
    }
}

#[test]
fn vae_decode_matches_diffusers() {
    let fx = Fixture::load("components.safetensors");
    for (dev, device) in devices() {
        let vae = load(&device);
        for sfx in ["", "_rect"] {
            let z = fx.tensor::<4>(&format!("vae_dec_in{sfx}"), &device);
            check(&format!("vae_dec_out{sfx}"), dev, vae.decode(z), &fx.f32(&format!("vae_dec_out{sfx}")), TOL);
        }
    }
}

/// The whole-run case: posteriors of the input images, the sampled latent, the final decode.
#[test]
fn vae_case_matches_reference() {
    let fx = Fixture::load("cases/tiny_s2_r64/reference.safetensors");
    for (dev, device) in devices() {
        let vae = load(&device);
        for name in ["content", "style"] {
            let post = vae.encode(fx.tensor::<4>(&format!("{name}_image"), &device));
            check(&format!("vae_posterior_mean_{name}"), dev, post.mean.clone(), &fx.f32(&format!("vae_posterior_mean_{name}")), TOL);
            check(&format!("vae_posterior_std_{name}"), dev, post.std.clone(), &fx.f32(&format!("vae_posterior_std_{name}")), TOL);
            if name == "content" {
                let noise = fx.tensor::<4>("rand_00_content_vae_posterior", &device);
                let latent = post.sample(noise).mul_scalar(vae.scaling_factor);
                check("latents_clean_content", dev, latent, &fx.f32("latents_clean_content"), TOL);
            }
        }
        let z = fx.tensor::<4>("vae_decode_in", &device);
        check("decoded_raw", dev, vae.decode(z), &fx.f32("decoded_raw"), TOL);
    }
}

/// Deterministic, image-like values in [-1, 1] (no RNG dependency).
fn pattern(dims: [usize; 4], seed: f32, device: &Device) -> Tensor<4> {
    let n: usize = dims.iter().product();
    let v: Vec<f32> = (0..n).map(|i| ((i as f32 * 0.7311 + seed).sin() * 0.8 + (i as f32 * 0.0123).cos() * 0.2).clamp(-1.0, 1.0)).collect();
    Tensor::from_data(TensorData::new(v, dims), device)
}

fn with_limit(vae: &AutoencoderKL, limit: usize) -> AutoencoderKL {
    vae.clone().with_options(VaeOptions { max_buffer_bytes: limit })
}

/// The executor did what the plan says: same largest tensor, same block counts.
fn assert_trace_is_plan(what: &str, trace: BandedRun, plan: BufferPlan, batch: usize) {
    let passes = if plan.per_item { batch } else { 1 };
    assert_eq!(trace.per_item, plan.per_item, "{what}: per_item");
    assert_eq!(trace.peak_bytes, plan.peak_bytes, "{what}: traced peak vs planned peak");
    assert_eq!(trace.banded_blocks, plan.banded_blocks * passes, "{what}: banded blocks");
    assert_eq!(trace.whole_blocks, plan.whole_blocks * passes, "{what}: whole blocks");
}

fn banded_decode_case(dev: &str, plain: &AutoencoderKL, banded: &AutoencoderKL, z: Tensor<4>, every_block: bool) {
    let dims = z.dims();
    let plan = banded.decode_plan(dims);
    let what = format!("decode {dims:?} limit {} [{dev}]", banded.max_buffer_bytes);
    assert!(plan.banded, "{what}: not banded");
    if every_block {
        assert_eq!(plan.whole_blocks, 0, "{what}: some block runs whole");
    } else {
        assert!(plan.fits(&banded.options()), "{what}: plan peak {} does not fit", plan.peak_bytes);
    }
    let (out, trace) = banded.decode_traced(z.clone());
    assert_trace_is_plan(&what, trace, plan, dims[0]);
    let expected = values(plain.decode(z));
    let err = assert_close_rel(&what, &values(out), &expected, BAND_TOL);
    eprintln!("{what}: {trace:?}, max rel error {err:.2e}");
}

fn banded_encode_case(dev: &str, plain: &AutoencoderKL, banded: &AutoencoderKL, x: Tensor<4>, every_block: bool) {
    let dims = x.dims();
    let plan = banded.encode_plan(dims);
    let what = format!("encode {dims:?} limit {} [{dev}]", banded.max_buffer_bytes);
    assert!(plan.banded, "{what}: not banded");
    if every_block {
        assert_eq!(plan.whole_blocks, 0, "{what}: some block runs whole");
    } else {
        assert!(plan.fits(&banded.options()), "{what}: plan peak {} does not fit", plan.peak_bytes);
    }
    let (post, trace) = banded.encode_traced(x.clone());
    assert_trace_is_plan(&what, trace, plan, dims[0]);
    let reference = plain.encode(x);
    let e1 = assert_close_rel(&format!("{what} mean"), &values(post.mean), &values(reference.mean), BAND_TOL);
    let e2 = assert_close_rel(&format!("{what} logvar"), &values(post.logvar), &values(reference.logvar), BAND_TOL);
    eprintln!("{what}: {trace:?}, max rel error mean {e1:.2e} logvar {e2:.2e}");
}

/// A limit of one byte cannot be met, but it cuts every block into two-row bands and runs
/// the attention one query at a time: each banded operation against the plain path,
/// including odd and non-square sizes.
#[test]
fn vae_banded_every_block_equals_plain() {
    for (dev, device) in devices() {
        let plain = load(&device);
        let banded = with_limit(&plain, 1);
        assert!(!plain.decode_plan([2, plain.shape.latent_channels, 8, 8]).banded, "the default limit bands the tiny model");
        for (i, (h, w)) in [(8, 8), (5, 3), (7, 10)].into_iter().enumerate() {
            let z = pattern([if i == 0 { 2 } else { 1 }, plain.shape.latent_channels, h, w], i as f32, &device).mul_scalar(2.0);
            banded_decode_case(dev, &plain, &banded, z, true);
        }
        for (i, (h, w)) in [(64, 64), (40, 56), (37, 50)].into_iter().enumerate() {
            let x = pattern([if i == 0 { 2 } else { 1 }, plain.shape.in_channels, h, w], 3.0 + i as f32, &device);
            banded_encode_case(dev, &plain, &banded, x, true);
        }
    }
}

/// The smallest limit (to a 1 KiB step) that the plan meets, i.e. the most banding that still
/// keeps every tensor below the limit.
fn tightest_limit(plan: impl Fn(usize) -> BufferPlan) -> usize {
    (1..4096).map(|k| k * 1024).find(|&l| plan(l).peak_bytes < l).expect("no limit under 4 MiB fits")
}

/// Limits the plan meets: the executor stays below them and matches the plain path.
#[test]
fn vae_banded_within_limit_equals_plain() {
    for (dev, device) in devices() {
        let plain = load(&device);
        let shape = plain.shape();
        for (i, (b, h, w)) in [(1, 16, 16), (2, 13, 10)].into_iter().enumerate() {
            let dims = [b, plain.shape.latent_channels, h, w];
            let limit = tightest_limit(|l| decode_plan(&shape, &VaeOptions { max_buffer_bytes: l }, dims));
            let z = pattern(dims, 7.0 + i as f32, &device).mul_scalar(2.0);
            banded_decode_case(dev, &plain, &with_limit(&plain, limit), z, false);
        }
        for (i, (b, h, w)) in [(1, 128, 128), (2, 99, 83)].into_iter().enumerate() {
            let dims = [b, plain.shape.in_channels, h, w];
            let limit = tightest_limit(|l| encode_plan(&shape, &VaeOptions { max_buffer_bytes: l }, dims));
            let x = pattern(dims, 11.0 + i as f32, &device);
            banded_encode_case(dev, &plain, &with_limit(&plain, limit), x, false);
        }
    }
}

/// The full-size VAE (LCM Dreamshaper v7) at 512² and 768² stays below the default limit
/// (computed from shapes; the whole-image run would not).
#[test]
fn vae_full_size_plan_fits_default_limit() {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("weights/lcm-dreamshaper-v7");
    let cfg = config(&dir);
    cfg.validate().unwrap();
    // Fields the published config leaves out take diffusers 0.30's defaults.
    assert!(cfg.use_quant_conv && cfg.use_post_quant_conv && cfg.mid_block_add_attention);
    let shape = VaeShape::from(&cfg);
    let options = VaeOptions::default();
    let unlimited = VaeOptions { max_buffer_bytes: usize::MAX };
    let f = cfg.downscale();
    let mib = |b: usize| b as f64 / (1 << 20) as f64;
    for batch in [1, 3] {
        for size in [512, 768] {
            let enc = encode_plan(&shape, &options, [batch, cfg.in_channels, size, size]);
            let dec = decode_plan(&shape, &options, [batch, cfg.latent_channels, size / f, size / f]);
            let enc_whole = encode_plan(&shape, &unlimited, [batch, cfg.in_channels, size, size]);
            let dec_whole = decode_plan(&shape, &unlimited, [batch, cfg.latent_channels, size / f, size / f]);
            eprintln!(
                "{batch}×{size}²: encode peak {:.1} MiB ({:?}), decode peak {:.1} MiB ({:?}); whole-image: encode {:.1} MiB, decode {:.1} MiB",
                mib(enc.peak_bytes),
                enc,
                mib(dec.peak_bytes),
                dec,
                mib(enc_whole.peak_bytes),
                mib(dec_whole.peak_bytes)
            );
            assert!(enc.fits(&options) && dec.fits(&options), "{batch}×{size}²: {enc:?} {dec:?}");
            assert!(dec_whole.peak_bytes >= 128 << 20 && enc_whole.peak_bytes >= 128 << 20, "the whole-image run should not fit");
        }
    }
}

#[test]
fn vae_config_rejects_unsupported() {
    let cfg = config(&tiny_model());
    cfg.validate().unwrap();
    let mut bad = cfg.clone();
    bad.up_block_types[0] = "AttnUpDecoderBlock2D".into();
    assert!(bad.validate().unwrap_err().to_string().contains("AttnUpDecoderBlock2D"));
    let mut bad = cfg.clone();
    bad.block_out_channels.push(48);
    assert!(bad.validate().is_err());
    let mut bad = cfg;
    bad.block_out_channels[0] += 1;
    assert!(bad.validate().unwrap_err().to_string().contains("groups"));
}
