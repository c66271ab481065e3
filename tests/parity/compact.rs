//! Compact weight variants (`zepo weights convert --variants q8,mixed`): the tiny model converts
//! with both, the bundle verifies, each variant's stored tensors are exactly the recipe's
//! quantization of the fp16 weights, each loads through the one load path (the CPU expands it)
//! and runs close to the fp16 weights by the PSNR the converter measured, and tampered compact
//! shards are refused by name.

use std::collections::HashMap;
use std::path::Path;

use burn::tensor::{Device, Tensor};
use half::f16;
use zepo::tools::convert::{convert, part_files, ConvertOptions};
use zepo::tools::verify::verify;
use zepo::weights::bundle::{Manifest, WeightsChoice, FP16, LOADED_PARTS};
use zepo::weights::quant::{rows_cols, Quant};
use zepo::weights::{LoadOptions, SafetensorsBytes};
use zepo::zepo::load::{block_on, Loader, WeightSource};

use crate::common::*;

/// `tiny-lcm` with the q8 and mixed variants, made once per test binary run.
fn compact_bundle() -> &'static (Scratch, Manifest) {
    static BUNDLE: std::sync::OnceLock<(Scratch, Manifest)> = std::sync::OnceLock::new();
    BUNDLE.get_or_init(|| {
        let scratch = Scratch::new("bundle-compact");
        let mut opts = ConvertOptions::new(tiny_model(), scratch.to_path_buf());
        opts.shard_bytes = 1 << 20;
        opts.variants = vec!["q8".into(), "mixed".into()];
        let mut log = Vec::new();
        let manifest = convert(&opts, &mut |m| log.push(m.to_string())).unwrap();
        println!("{}", log.join("\n"));
        (scratch, manifest)
    })
}

fn psnr(reference: &[f32], test: &[f32]) -> f64 {
    let peak = reference.iter().fold(0f64, |m, v| m.max(v.abs() as f64));
    let mse = reference.iter().zip(test).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>() / reference.len() as f64;
    10.0 * (peak * peak / mse).log10()
}

fn loader(dir: &Path, weights: &str, device: &Device) -> Loader<zepo::weights::dir::DirSource> {
    let opts = LoadOptions { weights: WeightsChoice::parse(weights), ..Default::default() };
    Loader::dir(dir, device, &opts, WeightSource::Checkpoint).unwrap()
}

#[test]
fn compact_variants_convert_and_verify_with_their_recipe_recorded() {
    let (dir, manifest) = compact_bundle();
    assert_eq!(manifest.format_version, 2);
    assert_eq!(manifest.variant_names(), ["fp16", "mixed", "q8"]);
    for (name, v) in &manifest.variants {
        let measured = v.measured.as_ref().unwrap();
        let outputs: Vec<&String> = measured.psnr.keys().collect();
        assert!(
            outputs.iter().all(|o| ["unet", "vae.decode", "vae.encode"].contains(&o.as_str())) && outputs.contains(&&"unet".to_string()),
            "{name}: {outputs:?}"
        );
        assert!(measured.psnr.values().all(|p| p.is_finite()), "{name}: {measured:?}");
        for part in LOADED_PARTS {
            let fp16 = manifest.part(part).unwrap().total_bytes;
            let compact = v.parts[part].total_bytes;
            println!("{name} {part}: {compact} bytes, {:.1}% of fp16; PSNR {:?}", 100.0 * compact as f64 / fp16 as f64, measured.psnr);
            assert!(compact < fp16, "{name} {part}: {compact} ≥ {fp16}");
        }
        if name == "mixed" {
            let target = measured.target_psnr.unwrap();
            assert!(measured.psnr.values().all(|&p| p >= target), "mixed misses its target {target}: {measured:?}");
        }
    }
    // q8 with blocks of 32 (8.5 bits) is near 53% of f16 where the tiny model's weights are
    // wide enough for a block; its 1-D tensors and narrow rows weigh more here than in the
    // real model.
    let q8 = manifest.variants["q8"].parts["unet"].total_bytes as f64 / manifest.part("unet").unwrap().total_bytes as f64;
    assert!(q8 < 0.6, "q8 unet at {q8:.3} of fp16");
    let report = verify(dir).unwrap();
    let parts: Vec<&str> = report.parts.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(parts, ["text_encoder", "unet", "vae", "unet (mixed)", "vae (mixed)", "unet (q8)", "vae (q8)"]);
}

/// Each compact tensor is exactly the f16 weight quantized by its recorded scheme.
#[test]
fn compact_tensors_are_the_fp16_weights_quantized() {
    let (dir, manifest) = compact_bundle();
    let mut fp16: HashMap<String, Vec<f32>> = HashMap::new();
    for part in LOADED_PARTS {
        for file in part_files(&tiny_model(), part).unwrap() {
            let st = SafetensorsBytes::new(std::fs::read(&file).unwrap(), "src").unwrap();
            for (t, b) in st.tensors().filter(|(t, _)| t.dtype.is_float()) {
                let v = b.chunks_exact(4).map(|c| f16::from_f32(f32::from_le_bytes(c.try_into().unwrap())).to_f32()).collect();
                fp16.insert(format!("{part}/{}", t.name), v);
            }
        }
    }
    let mut compact = 0;
    for v in manifest.variants.values() {
        let mut time_projection: Option<Quant> = None;
        for (part, p) in &v.parts {
            for shard in &p.shards {
                let st = SafetensorsBytes::new(std::fs::read(dir.join(&shard.file.url)).unwrap(), "shard").unwrap();
                for (t, b) in st.tensors() {
                    let want = &fp16[&format!("{part}/{}", t.name)];
                    let Some(qt) = shard.quantized.get(&t.name) else {
                        let got: Vec<f32> = b.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()).collect();
                        assert_eq!(&got, want, "{}: f16 as in the fp16 weights", t.name);
                        continue;
                    };
                    let q: Quant = qt.quant(&t.name).unwrap();
                    if t.name.ends_with("time_emb_proj.weight") {
                        // The UNet fuses these into one projection: one packing keeps it compact.
                        let first = *time_projection.get_or_insert(q);
                        assert_eq!(q, first, "{}: the time projections take one packing", t.name);
                    }
                    let (rows, k) = rows_cols(&qt.shape);
                    assert_eq!(t.shape, [rows, q.row_bytes(k)]);
                    let mut expected = Vec::new();
                    for row in want.chunks(k) {
                        q.quantize_row(row, &mut expected);
                    }
                    assert!(b == expected.as_slice(), "{}: the stored rows are the quantized f16 weight", t.name);
                    compact += 1;
                }
            }
        }
    }
    assert!(compact > 50, "{compact} compact tensors");
}

/// Loaded natively (expanded on the CPU), each variant runs its UNet and VAE within the PSNR
/// the converter measured and recorded (the same inputs are not needed: any fixed input shows
/// a variant that loads wrong tensors, which is off by O(1), under 10 dB).
#[test]
fn compact_variants_load_and_run_near_the_fp16_weights() {
    let (dir, manifest) = compact_bundle();
    let fx = Fixture::load("components.safetensors");
    let device = Device::flex();
    let t: Vec<f32> = fx.f32("unet_in_timestep");
    let run = |weights: &str| {
        let l = loader(dir, weights, &device);
        assert_eq!(l.layout.variant(), weights);
        let (unet, _) = block_on(l.unet()).unwrap();
        let u = values(unet.forward(fx.tensor("unet_in_sample", &device), &t, &fx.tensor("unet_in_ehs", &device)));
        let vae = block_on(l.vae()).unwrap();
        let d = values(vae.decode(fx.tensor("vae_dec_in", &device)));
        (u, d)
    };
    let (u16, d16) = run(FP16);
    for name in ["q8", "mixed"] {
        let (u, d) = run(name);
        let (pu, pd) = (psnr(&u16, &u), psnr(&d16, &d));
        println!("{name}: unet {pu:.1} dB, vae decode {pd:.1} dB against fp16 (recorded {:?})", manifest.variants[name].measured);
        assert!(pu > 30.0 && pd > 30.0, "{name}: unet {pu:.1} dB, vae {pd:.1} dB");
        assert!(pu.is_finite() && pd.is_finite(), "{name}: the variant must differ from fp16");
    }
    // auto takes the smallest.
    let auto = loader(dir, "auto", &device);
    assert_eq!(auto.layout.variant(), manifest.choose(&WeightsChoice::Auto).unwrap());
    assert_ne!(auto.layout.variant(), FP16);
    // A diffusers checkpoint has only its own weights.
    let opts = LoadOptions { weights: WeightsChoice::parse("q8"), ..Default::default() };
    let err = Loader::dir(&tiny_model(), &device, &opts, WeightSource::Checkpoint).err().unwrap().to_string();
    assert!(err.contains("diffusers checkpoint") && err.contains("`q8`"), "{err}");
    let err =
        Loader::dir(dir, &device, &LoadOptions { weights: WeightsChoice::parse("q5"), ..Default::default() }, WeightSource::Checkpoint)
            .err()
            .unwrap()
            .to_string();
    assert!(err.contains("no `q5` weights") && err.contains("fp16, mixed, q8"), "{err}");
}

/// On a GPU each compact variant stays compact: its convolutions' and projections' weights are
/// not expanded (they are not burn parameters but code words and scales, read by the compact
/// kernels), and the UNet, the VAE decoder and encoder give what the same weights expanded at
/// load give, up to summation order. Runs where `ZEPO_TEST_WGPU=1` (lavapipe in CI).
#[test]
fn compact_variants_stay_compact_on_the_gpu_and_match_them_expanded() {
    use burn::module::Module;
    let (dir, _) = compact_bundle();
    let fx = Fixture::load("components.safetensors");
    let t: Vec<f32> = fx.f32("unet_in_timestep");
    let gpus: Vec<(&str, Device)> = devices().into_iter().filter(|(name, _)| *name != "cpu").collect();
    if gpus.is_empty() {
        println!("no GPU device: ZEPO_TEST_WGPU=1 runs this on wgpu");
    }
    for (dev_name, device) in gpus {
        for name in ["q8", "mixed"] {
            let run = |compact_on_device: bool| {
                let opts = LoadOptions { weights: WeightsChoice::parse(name), compact_on_device, ..Default::default() };
                let l = Loader::dir(dir, &device, &opts, WeightSource::Checkpoint).unwrap();
                let (unet, _) = block_on(l.unet()).unwrap();
                let vae = block_on(l.vae()).unwrap();
                let params = unet.num_params() + vae.num_params();
                let u = values(unet.forward(fx.tensor("unet_in_sample", &device), &t, &fx.tensor("unet_in_ehs", &device)));
                let d = values(vae.decode(fx.tensor("vae_dec_in", &device)));
                let image: Tensor<4> = fx.tensor("vae_enc_in", &device);
                let e = values(vae.encode(image).mean);
                (params, [u, d, e])
            };
            let (compact_params, compact) = run(true);
            let (dense_params, dense) = run(false);
            println!("{dev_name} {name}: {compact_params} parameters held as floats, {dense_params} expanded");
            let share = compact_params as f64 / dense_params as f64;
            let most = if name == "q8" { 0.05 } else { 0.9 };
            assert!(share < most, "{dev_name} {name}: {share:.3} of the weights held as floats");
            for (what, (c, d)) in ["unet", "vae decode", "vae encode"].iter().zip(compact.iter().zip(&dense)) {
                assert_close_rel(&format!("{dev_name} {name} {what}: compact vs expanded"), c, d, 1e-4);
            }
        }
    }
}

/// Copies the compact bundle, lets `tamper` change the q8 UNet's first compact shard (bytes
/// and manifest entry), re-states that shard's size and sha256 (so that only the compact checks
/// stand in the way) and loads the q8 UNet.
fn tampered(tag: &str, tamper: &dyn Fn(&mut Vec<u8>, &mut serde_json::Value)) -> String {
    let (dir, _) = compact_bundle();
    let copy = Scratch::new(&format!("compact-{tag}"));
    copy_dir(dir, &copy);
    let manifest_path = copy.join("manifest.json");
    let mut m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&manifest_path).unwrap()).unwrap();
    let shard = &mut m["variants"]["q8"]["parts"]["unet"]["shards"][0];
    let url = shard["url"].as_str().unwrap().to_string();
    let mut bytes = std::fs::read(copy.join(&url)).unwrap();
    tamper(&mut bytes, shard);
    std::fs::write(copy.join(&url), &bytes).unwrap();
    let (size, sha) = zepo::tools::convert::sha256_file(&copy.join(&url)).unwrap();
    let shard = &mut m["variants"]["q8"]["parts"]["unet"]["shards"][0];
    shard["size"] = size.into();
    shard["sha256"] = sha.into();
    let total: u64 = m["variants"]["q8"]["parts"]["unet"]["shards"].as_array().unwrap().iter().map(|s| s["size"].as_u64().unwrap()).sum();
    m["variants"]["q8"]["parts"]["unet"]["total_bytes"] = total.into();
    std::fs::write(&manifest_path, serde_json::to_string_pretty(&m).unwrap()).unwrap();
    let device = Device::flex();
    let opts = LoadOptions { weights: WeightsChoice::parse("q8"), ..Default::default() };
    match Loader::dir(&copy, &device, &opts, WeightSource::Checkpoint) {
        Err(e) => e.to_string(),
        Ok(l) => block_on(l.unet()).err().expect("a tampered compact shard must be refused").to_string(),
    }
}

/// The first compact tensor of a shard: its name and where its bytes start in the file.
fn first_compact(bytes: &[u8], shard: &serde_json::Value) -> (String, usize, Vec<usize>) {
    let st = SafetensorsBytes::new(bytes.to_vec(), "shard").unwrap();
    let quantized = shard["quantized"].as_object().unwrap();
    let (t, _) = st.tensors().find(|(t, _)| quantized.contains_key(&t.name)).unwrap();
    (
        t.name.clone(),
        (st.header().data_start + t.start) as usize,
        quantized[&t.name]["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect(),
    )
}

#[test]
fn tampered_compact_shards_are_refused_by_name() {
    // A scale that is not finite.
    let err = tampered("nan-scale", &|bytes, shard| {
        let (name, at, shape) = first_compact(bytes, shard);
        let q = Quant { bits: 8, block: 32 };
        let scales = at + 4 * q.code_words(rows_cols(&shape).1);
        bytes[scales..scales + 2].copy_from_slice(&f16::NAN.to_le_bytes());
        println!("tampered {name}");
    });
    assert!(err.contains("not finite") && err.contains("compact tensor"), "{err}");
    // A block length that the stored rows do not have (more scales per row).
    let err = tampered("block", &|bytes, shard| {
        let (name, _, _) = first_compact(bytes, shard);
        shard["quantized"][&name]["block"] = 8.into();
    });
    assert!(err.contains("stored U8"), "{err}");
    // Another scheme than the one stored.
    let err = tampered("scheme", &|bytes, shard| {
        let (name, _, _) = first_compact(bytes, shard);
        shard["quantized"][&name]["scheme"] = "q4".into();
    });
    assert!(err.contains("stored U8"), "{err}");
    // A scheme this build does not know.
    let err = tampered("unknown", &|bytes, shard| {
        let (name, _, _) = first_compact(bytes, shard);
        shard["quantized"][&name]["scheme"] = "nf4".into();
    });
    assert!(err.contains("unknown weight scheme `nf4`"), "{err}");
    // A logical shape other than the model's.
    let err = tampered("shape", &|bytes, shard| {
        let (name, _, shape) = first_compact(bytes, shard);
        let mut other = shape.clone();
        other.insert(1, 1);
        shard["quantized"][&name]["shape"] = serde_json::json!(other);
    });
    assert!(err.contains("shape"), "{err}");
}
