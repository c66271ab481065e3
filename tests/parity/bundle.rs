//! The fp16 weight bundle: conversion is exact f16 rounding of the checkpoint, a bundle loads
//! into the same models (outputs within fp16-rounding of the f32 checkpoint's and of PyTorch's),
//! `verify` catches damaged files, left-out parts are recorded and refused clearly, and the
//! committed tiny bundles are current and match their PyTorch references.

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor};
use half::f16;
use zepo::models::clip::{ClipTextConfig, ClipTextModel};
use zepo::models::read_config;
use zepo::models::tokenizer::ClipTokenizer;
use zepo::models::unet::{UNet2DConditionModel, UNetConfig};
use zepo::models::vae::{AutoencoderKL, VaeConfig};
use zepo::tools::convert::{convert, convert_part, part_files, read_manifest, ConvertOptions};
use zepo::tools::verify::verify;
use zepo::weights::bundle::{Manifest, PARTS};
use zepo::weights::{Dtype, LoadOptions, SafetensorsBytes, VarStore};
use zepo::zepo::load::load_part;

use crate::common::*;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `tiny-lcm` converted with a 1 MiB shard cap (several shards per part).
fn convert_tiny(name: &str, edit: impl FnOnce(&mut ConvertOptions)) -> (Scratch, Manifest) {
    let scratch = Scratch::new(&format!("bundle-{name}"));
    let mut opts = ConvertOptions::new(tiny_model(), scratch.to_path_buf());
    opts.shard_bytes = 1 << 20;
    edit(&mut opts);
    let manifest = convert(&opts, &mut |_| {}).unwrap();
    (scratch, manifest)
}

fn unet(store: VarStore, dir: &Path) -> UNet2DConditionModel {
    let cfg: UNetConfig = read_config(&dir.join("unet/config.json")).unwrap();
    let vb = store.into_builder();
    let unet = UNet2DConditionModel::load(&vb, &cfg).unwrap();
    vb.finish().unwrap();
    unet
}

fn text_encoder(store: VarStore, dir: &Path) -> ClipTextModel {
    let cfg: ClipTextConfig = read_config(&dir.join("text_encoder/config.json")).unwrap();
    ClipTextModel::from_store(store, &cfg).unwrap()
}

fn vae(store: VarStore, dir: &Path) -> AutoencoderKL {
    let cfg: VaeConfig = read_config(&dir.join("vae/config.json")).unwrap();
    let vb = store.into_builder();
    let vae = AutoencoderKL::load(&vb, &cfg).unwrap();
    vb.finish().unwrap();
    vae
}

fn embeddings(dir: &Path, manifest: &Manifest, text: &str) -> Vec<f32> {
    let pe = manifest.prompt_embeddings.as_ref().unwrap();
    let bytes = std::fs::read(dir.join(&pe.file.url)).unwrap();
    let st = SafetensorsBytes::new(bytes, "prompts").unwrap();
    let (_, b) = st.get(manifest.prompt_tensor(text).unwrap()).unwrap();
    b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

#[test]
fn bundle_tensors_are_the_checkpoint_rounded_to_f16() {
    let (dir, manifest) = convert_tiny("exact", |_| {});
    for &(part, _) in PARTS {
        let p = manifest.part(part).unwrap();
        // Every source float tensor, as f16 rounding to nearest-even.
        let mut expected = std::collections::HashMap::new();
        for file in part_files(&tiny_model(), part).unwrap() {
            let st = SafetensorsBytes::new(std::fs::read(&file).unwrap(), "src").unwrap();
            for (t, b) in st.tensors().filter(|(t, _)| t.dtype.is_float()) {
                let v: Vec<u16> = b.chunks_exact(4).map(|c| f16::from_f32(f32::from_le_bytes(c.try_into().unwrap())).to_bits()).collect();
                expected.insert(t.name.clone(), (t.shape.clone(), v));
            }
        }
        let mut seen = 0;
        for shard in &p.shards {
            assert!(shard.file.size <= 1 << 20 || shard.tensors.len() == 1, "{}: over the cap", shard.file.url);
            let st = SafetensorsBytes::new(std::fs::read(dir.join(&shard.file.url)).unwrap(), "shard").unwrap();
            for (t, b) in st.tensors() {
                let (shape, want) = &expected[&t.name];
                let got: Vec<u16> = b.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
                assert_eq!((&t.shape, &got), (shape, want), "{part} {}", t.name);
                seen += 1;
            }
        }
        assert_eq!(seen, expected.len(), "{part}: every source tensor is in the bundle");
        assert!(p.shards.len() > 1 || p.total_bytes < 1 << 20, "{part}: the cap splits it");
    }
}

/// The checkpoint's part with every float weight rounded to f16 (as the converter does) and
/// decoded back: what the bundle must load to, exactly.
fn rounded_source(part: &str, device: &Device) -> VarStore {
    let mut store = VarStore::new(device, &LoadOptions::default(), "rounded checkpoint");
    for file in part_files(&tiny_model(), part).unwrap() {
        let st = SafetensorsBytes::new(std::fs::read(&file).unwrap(), "src").unwrap();
        for (t, b) in st.tensors() {
            let mut entry = t.clone();
            entry.dtype = Dtype::F16;
            let half: Vec<u8> =
                b.chunks_exact(4).flat_map(|c| f16::from_f32(f32::from_le_bytes(c.try_into().unwrap())).to_le_bytes()).collect();
            store.insert(&entry, &half, "src").unwrap();
        }
    }
    store
}

/// Loaded to f32, the bundle's UNet / text encoder / VAE give bit for bit the outputs of the
/// checkpoint with its weights rounded to f16: the bundle adds nothing but that rounding.
/// Against the f32 checkpoint (and PyTorch's f32 outputs) the rounding (relative 2^-11 per
/// weight) shows as output differences of 0.7e-3 (CLIP), 1.0e-3 (UNet) and 3.9e-3 (VAE
/// decoder, the deepest) of the largest output magnitude on these random-weight networks;
/// `FP16_TOL` = 1e-2 is the stated bound (a wrong or missing tensor is off by O(1)). The prompt
/// embeddings are computed from the f32 checkpoint, so they match PyTorch at the text-encoder
/// parity tolerance.
#[test]
fn bundle_loads_the_same_models_as_the_checkpoint() {
    const FP16_TOL: f32 = 1e-2;
    let (dir, manifest) = convert_tiny("models", |_| {});
    let fx = Fixture::load("components.safetensors");
    let device = Device::flex();
    let opts = LoadOptions::default();
    let load = |part: &str| load_part(&*dir, part, &device, &opts).unwrap();
    let load_src = |part: &str| load_part(&tiny_model(), part, &device, &opts).unwrap();
    let exact = |what: &str, a: &[f32], b: &[f32]| assert_eq!(max_abs_diff(a, b), 0.0, "{what}: bundle vs rounded checkpoint");

    let t: Vec<f32> = fx.f32("unet_in_timestep");
    let run = |u: &UNet2DConditionModel| values(u.forward(fx.tensor("unet_in_sample", &device), &t, &fx.tensor("unet_in_ehs", &device)));
    let from_bundle = run(&unet(load("unet"), &*dir));
    exact("unet", &from_bundle, &run(&unet(rounded_source("unet", &device), &tiny_model())));
    let from_ckpt = run(&unet(load_src("unet"), &tiny_model()));
    let e = assert_close_rel("unet bundle vs f32 checkpoint", &from_bundle, &from_ckpt, FP16_TOL);
    let r = assert_close_rel("unet bundle vs PyTorch", &from_bundle, &fx.f32("unet_out"), FP16_TOL);
    println!("unet: bundle vs f32 checkpoint {e:.2e}, vs PyTorch {r:.2e}");
    assert!(e > 0.0, "the fp16 rounding must show: is the bundle really f16?");

    let tok = ClipTokenizer::from_dir(&dir.join("tokenizer")).unwrap();
    let ids = || tok.encode_batch(&["face", ""], &device);
    let from_bundle = values(text_encoder(load("text_encoder"), &*dir).forward(ids()));
    exact("clip", &from_bundle, &values(text_encoder(rounded_source("text_encoder", &device), &tiny_model()).forward(ids())));
    let from_ckpt = values(text_encoder(load_src("text_encoder"), &tiny_model()).forward(ids()));
    let e = assert_close_rel("clip bundle vs f32 checkpoint", &from_bundle, &from_ckpt, FP16_TOL);
    let r = assert_close_rel("clip bundle vs PyTorch", &from_bundle, &fx.f32("clip_last_hidden_state"), FP16_TOL);
    println!("clip: bundle vs f32 checkpoint {e:.2e}, vs PyTorch {r:.2e}");

    let pre: Vec<f32> = ["face", ""].iter().flat_map(|p| embeddings(&*dir, &manifest, p)).collect();
    let e = assert_close_rel("precomputed prompts vs PyTorch", &pre, &fx.f32("clip_last_hidden_state"), 1e-4);
    println!("precomputed prompt embeddings vs PyTorch {e:.2e}");
    assert_eq!(manifest.prompt_embeddings.as_ref().unwrap().shape, [77, 32]);

    let z: Tensor<4> = fx.tensor("vae_dec_in", &device);
    let from_bundle = values(vae(load("vae"), &*dir).decode(z.clone()));
    exact("vae", &from_bundle, &values(vae(rounded_source("vae", &device), &tiny_model()).decode(z.clone())));
    let from_ckpt = values(vae(load_src("vae"), &tiny_model()).decode(z));
    let e = assert_close_rel("vae decode bundle vs f32 checkpoint", &from_bundle, &from_ckpt, FP16_TOL);
    let r = assert_close_rel("vae decode bundle vs PyTorch", &from_bundle, &fx.f32("vae_dec_out"), FP16_TOL);
    println!("vae decode: bundle vs f32 checkpoint {e:.2e}, vs PyTorch {r:.2e}");
}

#[test]
fn verify_catches_a_flipped_byte_a_truncated_and_a_swapped_shard() {
    let (dir, manifest) = convert_tiny("verify", |_| {});
    let report = verify(&*dir).unwrap();
    assert_eq!(report.parts.len(), 3, "{report:?}");
    assert!(report.notes.is_empty(), "{report:?}");
    let unet = &manifest.part("unet").unwrap().shards;
    assert!(unet.len() >= 2);
    let (a, b) = (&unet[0].file.url, &unet[1].file.url);

    let damaged = |name: &str, damage: &dyn Fn(&Path)| {
        let copy = Scratch::new(&format!("bundle-{name}"));
        copy_dir(&*dir, &*copy);
        damage(&*copy);
        let err = verify(&*copy).unwrap_err().to_string();
        (copy, err)
    };

    let (_c, err) = damaged("flip", &|d| {
        let p = d.join(a);
        let mut bytes = std::fs::read(&p).unwrap();
        let i = bytes.len() - 100; // inside the tensor data: the header still parses
        bytes[i] ^= 0x01;
        std::fs::write(&p, bytes).unwrap();
    });
    assert!(err.contains(a.as_str()) && err.contains("sha256"), "{err}");

    let (_c, err) = damaged("truncate", &|d| {
        let p = d.join(a);
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    });
    assert!(err.contains(a.as_str()) && err.contains("truncated"), "{err}");

    let (copy, err) = damaged("swap", &|d| {
        std::fs::copy(d.join(b), d.join(a)).unwrap();
    });
    assert!(err.contains(a.as_str()) && !err.contains(&format!("{}:", b)), "{err}");
    // Loading (which skips the sha256) still refuses the swapped shard, by its size or content.
    let err = load_part(&*copy, "unet", &Device::flex(), &LoadOptions::default()).err().unwrap().to_string();
    assert!(err.contains(a.as_str()), "{err}");

    let (_c, err) = damaged("config", &|d| {
        let p = d.join("unet/config.json");
        let text = std::fs::read_to_string(&p).unwrap().replace("\"cross_attention_dim\": 32", "\"cross_attention_dim\": 48");
        std::fs::write(&p, text).unwrap();
    });
    assert!(err.contains("unet/config.json") && err.contains("sha256"), "{err}");
}

#[test]
fn verify_checks_shapes_through_the_model_loaders() {
    // A manifest and files that agree with each other, but a config that does not fit the
    // weights: only building the model can tell.
    let (dir, mut manifest) = convert_tiny("shapes", |_| {});
    let cfg = dir.join("unet/config.json");
    let text = std::fs::read_to_string(&cfg).unwrap().replace("\"cross_attention_dim\": 32", "\"cross_attention_dim\": 48");
    let entry = zepo::tools::convert::write_file(&*dir, "unet/config.json", text.as_bytes()).unwrap();
    manifest.parts.get_mut("unet").unwrap().config = entry;
    zepo::tools::convert::write_manifest(&*dir, &manifest).unwrap();
    let err = verify(&*dir).unwrap_err().to_string();
    assert!(err.contains("unet:") && err.contains("attn2.to_k.weight") && err.contains("48"), "{err}");
    assert!(err.contains("prompt_embeddings.safetensors") && err.contains("cross_attention_dim"), "{err}");
}

#[test]
fn left_out_parts_are_recorded_and_refused_clearly() {
    let (dir, mut manifest) = convert_tiny("leftout", |o| {
        o.text_encoder = false;
        o.prompts = vec!["a portrait, oil painting".into(), "face".into()];
    });
    assert_eq!(manifest.omitted, ["text_encoder", "tokenizer"]);
    assert!(manifest.tokenizer.is_empty() && !dir.join("tokenizer").exists() && !dir.join("text_encoder").exists());

    let err = load_part(&*dir, "text_encoder", &Device::flex(), &LoadOptions::default()).err().unwrap().to_string();
    assert!(err.contains("text_encoder") && err.contains("left out"), "{err}");
    let report = verify(&*dir).unwrap();
    assert_eq!(report.parts.iter().map(|(p, _)| p.as_str()).collect::<Vec<_>>(), ["unet", "vae"]);

    let prompts: Vec<&str> = manifest.prompt_embeddings.as_ref().unwrap().prompts.iter().map(|p| p.text.as_str()).collect();
    assert_eq!(prompts, ["a portrait, oil painting", "face", ""]);
    let fx = Fixture::load("components.safetensors");
    let face: Vec<f32> = fx.f32("clip_last_hidden_state")[..77 * 32].to_vec();
    assert_close_rel("precomputed face", &embeddings(&*dir, &manifest, "face"), &face, 1e-4);

    // A decode-only VAE (which older converters could write): the converter no longer makes
    // one, and the loader (so the engine and the verifier) refuses it by name.
    manifest.parts.get_mut("vae").unwrap().omitted = vec!["encoder.".into(), "quant_conv.".into()];
    zepo::tools::convert::write_manifest(&*dir, &manifest).unwrap();
    let err = load_part(&*dir, "unet", &Device::flex(), &LoadOptions::default()).err().unwrap().to_string();
    assert!(err.contains("manifest.json") && err.contains("VAE encoder"), "{err}");
    assert!(verify(&*dir).unwrap_err().to_string().contains("VAE encoder"));
}

#[test]
fn out_of_range_weight_is_an_error_naming_the_tensor() {
    let dir = Scratch::new("bundle-range");
    let part = dir.join("m/unet");
    std::fs::create_dir_all(&part).unwrap();
    std::fs::write(part.join("config.json"), "{}").unwrap();
    let values: Vec<u8> = [1.0f32, -7.0e4, 2.0].iter().flat_map(|v| v.to_le_bytes()).collect();
    let ok: Vec<u8> = [0.5f32; 4].iter().flat_map(|v| v.to_le_bytes()).collect();
    let header = serde_json::json!({
        "fine.weight": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
        "up_blocks.1.conv.weight": {"dtype": "F32", "shape": [3], "data_offsets": [16, 28]},
    });
    let json = serde_json::to_vec(&header).unwrap();
    let mut file = (json.len() as u64).to_le_bytes().to_vec();
    file.extend(json);
    file.extend(ok);
    file.extend(values);
    std::fs::write(part.join("diffusion_pytorch_model.safetensors"), file).unwrap();

    let err = convert_part(&dir.join("m"), "unet", &dir.join("out"), 1 << 20, &mut |_| {}).unwrap_err().to_string();
    assert!(err.contains("`up_blocks.1.conv.weight`") && err.contains("-70000") && err.contains("f16"), "{err}");
}

#[test]
fn committed_tiny_bundle_is_current() {
    let committed = root().join("weights/tiny-lcm-bundle");
    verify(&committed).unwrap();
    let old = read_manifest(&committed).unwrap();
    let scratch = Scratch::new("bundle-current");
    let mut opts = ConvertOptions::new(tiny_model(), scratch.to_path_buf());
    opts.shard_bytes = 2 << 20; // as weights/README.md converts it
    let new = convert(&opts, &mut |_| {}).unwrap();
    // Weights, configs and tokenizer are bit-identical; the prompt embeddings are float
    // results of this machine's CPU kernels, compared by value.
    let files =
        |m: &Manifest| m.parts.values().flat_map(|p| p.shards.iter().map(|s| &s.file).chain([&p.config])).cloned().collect::<Vec<_>>();
    assert_eq!(files(&old), files(&new), "weights/tiny-lcm-bundle is stale: re-run the conversion in weights/README.md");
    assert!(old.parts == new.parts, "weights/tiny-lcm-bundle: tensor lists differ; re-run the conversion");
    assert_eq!((&old.tokenizer, &old.scheduler, &old.omitted), (&new.tokenizer, &new.scheduler, &new.omitted));
    for p in &old.prompt_embeddings.as_ref().unwrap().prompts {
        assert_close_rel(
            &format!("prompt {:?}", p.text),
            &embeddings(&committed, &old, &p.text),
            &embeddings(&scratch, &new, &p.text),
            1e-5,
        );
    }
}

/// The second tiny bundle (other widths, heads per block, groups, text width and depth, VAE
/// depth) against PyTorch on the fp16-representable weights it was made from
/// (`weights/make_tiny_model.py`): f32 arithmetic differences only.
#[test]
fn second_tiny_bundle_matches_pytorch() {
    let dir = root().join("weights/tiny-lcm-2-bundle");
    let manifest = verify(&dir).and_then(|_| Ok(read_manifest(&dir)?)).unwrap();
    let fx = Fixture::load("tiny-lcm-2/reference.safetensors");
    for (name, device) in devices() {
        let load = |part: &str| load_part(&dir, part, &device, &LoadOptions::default()).unwrap();
        let tok = ClipTokenizer::from_dir(&dir.join("tokenizer")).unwrap();
        let ids = tok.encode_batch(&["face", ""], &device);
        let out = values(text_encoder(load("text_encoder"), &dir).forward(ids));
        let e = assert_close_rel(&format!("{name} text_embeds"), &out, &fx.f32("text_embeds"), 1e-4);
        println!("{name} tiny-lcm-2 text encoder rel err {e:.2e}");
        let pre: Vec<f32> = ["face", ""].iter().flat_map(|p| embeddings(&dir, &manifest, p)).collect();
        assert_close_rel("tiny-lcm-2 precomputed prompts", &pre, &fx.f32("text_embeds"), 1e-4);

        let u = unet(load("unet"), &dir);
        let t = fx.f32("unet_in_timestep");
        let (sample, ehs) = (fx.tensor::<4>("unet_in_sample", &device), fx.tensor::<3>("unet_in_ehs", &device));
        let out = values(u.forward(sample.clone(), &t, &ehs));
        let e = assert_close_rel(&format!("{name} unet_out"), &out, &fx.f32("unet_out"), 1e-4);
        let cond = fx.tensor::<2>("unet_in_timestep_cond", &device);
        let out = values(u.forward_controlled(sample, &t, &u.context(&ehs), Some(cond), &mut zepo::models::attention::NoControl));
        let c = assert_close_rel(&format!("{name} unet_out_timestep_cond"), &out, &fx.f32("unet_out_timestep_cond"), 1e-4);
        println!("{name} tiny-lcm-2 unet rel err {e:.2e}, with guidance embedding {c:.2e}");

        let v = vae(load("vae"), &dir);
        let dec = values(v.decode(fx.tensor("vae_in_latent", &device)));
        let d = assert_close_rel(&format!("{name} vae_decoded"), &dec, &fx.f32("vae_decoded"), 1e-4);
        let post = v.encode(fx.tensor("vae_in_image", &device));
        let m = assert_close_rel(&format!("{name} vae_posterior_mean"), &values(post.mean), &fx.f32("vae_posterior_mean"), 1e-4);
        assert_close_rel(&format!("{name} vae_posterior_std"), &values(post.std), &fx.f32("vae_posterior_std"), 1e-4);
        println!("{name} tiny-lcm-2 vae decode rel err {d:.2e}, encode {m:.2e}");
    }
}
