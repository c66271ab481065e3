//! The whole ZePo pipeline against the authors' code: every case in tests/fixtures/cases,
//! replayed with the reference's random draws, through the public API and through the CLI.

use std::path::PathBuf;

use crate::common::*;
use zepo::zepo::image::RgbImage;
use zepo::zepo::load::{load_dir, WeightSource};
use zepo::zepo::noise::{ReplayNoise, SeededNoise};
use zepo::zepo::pipeline::{Style, Trace, Zepo};
use zepo::zepo::progress::Silent;
use zepo::zepo::{TomeOptions, ZepoOptions};

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
    }
}

fn rgb(fx: &Fixture, name: &str) -> RgbImage {
    let s = fx.shape(name);
    RgbImage::new(s[1], s[0], fx.i64(name).into_iter().map(|v| v as u8).collect()).unwrap()
}

fn replay(fx: &Fixture) -> ReplayNoise {
    let draws = fx.names().into_iter().filter(|n| n.starts_with("rand_")).map(|n| (n.clone(), fx.shape(&n), fx.f32(&n))).collect();
    ReplayNoise::new(draws)
}

/// The stylized image (third of `images`), H×W×3.
fn reference_image(fx: &Fixture) -> Vec<f32> {
    let all = fx.f32("images");
    let n = all.len() / 3;
    all[2 * n..].to_vec()
}

fn model(device: &burn::tensor::Device) -> Zepo {
    load_dir(&tiny_model(), device, &Default::default(), WeightSource::Checkpoint).unwrap()
}

#[test]
fn every_reference_case_is_reproduced() {
    for (dev_name, device) in devices() {
        let zepo = model(&device);
        for case in CASES {
            let fx = Fixture::load(&format!("cases/{case}/reference.safetensors"));
            let debug = Fixture::load(&format!("cases/{case}/debug.safetensors"));
            let o = case_options(case);
            let prompts = zepo.embed_prompts(&o.prompt, &o.negative_prompt).unwrap();
            let mut noise = replay(&fx);
            let mut trace = Trace::default();
            zepo.reset_counters();
            let out = zepo
                .stylize(&rgb(&fx, "content_rgb_u8"), Style::Image(&rgb(&fx, "style_rgb_u8")), &o, &prompts, &mut noise, &mut Silent, Some(&mut trace))
                .unwrap();
            assert_eq!(noise.remaining(), 0, "{case}: every recorded draw is used");
            let tag = format!("{dev_name} {case}");
            for (i, eps) in trace.eps.iter().enumerate() {
                assert_close_rel(&format!("{tag} step{i} eps"), eps, &fx.f32(&format!("step{i}_sched_model_output")), 1e-3);
            }
            let e_x0 = assert_close_rel(&format!("{tag} pred_x0_target"), trace.denoised.last().unwrap(), &fx.f32("pred_x0_target"), 1e-3);
            let mut worst_attn = 0f32;
            for (step, layer, half, values) in &trace.attention {
                let name = format!("attn_s{step}_l{layer:02}_{half}");
                worst_attn = worst_attn.max(assert_close_rel(&format!("{tag} {name}"), values, &debug.f32(&name), 1e-4));
            }
            let expected_attn = debug.names().len();
            assert_eq!(trace.attention.len(), expected_attn, "{tag}: one controlled output per step, layer and half");
            let e_img = assert_close_abs(&format!("{tag} image"), &out.image.values, &reference_image(&fx), 2e-3);
            let n = o.run_steps();
            assert_eq!(zepo.counters().unet_evals, 4 + 2 * n, "{tag}: UNet image-evaluations");
            println!("{tag}: image max abs err {e_img:.2e}, pred_x0 rel {e_x0:.2e}, attention rel {worst_attn:.2e}, UNet evals {} (reference {})", 4 + 2 * n, 6 * n);
        }
    }
}

#[test]
fn cached_path_equals_uncached_and_counts_half_the_work() {
    let device = burn::tensor::Device::flex();
    let zepo = model(&device);
    for case in ["tiny_s2_r64", "tiny_s4_r128"] {
        let fx = Fixture::load(&format!("cases/{case}/reference.safetensors"));
        let o = case_options(case);
        let prompts = zepo.embed_prompts(&o.prompt, &o.negative_prompt).unwrap();
        let (content, style) = (rgb(&fx, "content_rgb_u8"), rgb(&fx, "style_rgb_u8"));
        let n = o.run_steps();

        zepo.reset_counters();
        let uncached = zepo.stylize_uncached(&content, &style, &o, &prompts, &mut replay(&fx)).unwrap();
        let c = zepo.counters();
        assert_eq!((c.unet_evals, c.vae_encodes, c.vae_decodes), (6 * n, 3, 1), "{case}: the reference's work");

        zepo.reset_counters();
        let cached = zepo.stylize(&content, Style::Image(&style), &o, &prompts, &mut replay(&fx), &mut Silent, None).unwrap();
        let c = zepo.counters();
        assert_eq!((c.unet_evals, c.vae_encodes, c.vae_decodes), (4 + 2 * n, 2, 1), "{case}: cached work (content + style encode)");
        let e = assert_close_abs(&format!("{case} cached vs uncached"), &cached.image.values, &uncached.values, 1e-5);
        println!("{case}: cached vs uncached max abs diff {e:.2e}");

        // A style's features reused for another content: only the content's own work.
        zepo.reset_counters();
        let again = zepo.stylize(&content, Style::Features(&cached.style), &o, &prompts, &mut SeededNoise::new(1), &mut Silent, None).unwrap();
        let c = zepo.counters();
        assert_eq!((c.unet_evals, c.vae_encodes, c.vae_decodes), (2 + 2 * n, 1, 1), "{case}: reused style");
        assert_eq!(again.image.values.len(), cached.image.values.len());
    }
}

#[test]
fn seeded_runs_are_bitwise_reproducible_and_style_reuse_changes_nothing() {
    let device = burn::tensor::Device::flex();
    let zepo = model(&device);
    let fx = Fixture::load("cases/tiny_s2_r64/reference.safetensors");
    let o = ZepoOptions { resolution: 64, steps: 2, seed: 7, ..Default::default() };
    let prompts = zepo.embed_prompts(&o.prompt, &o.negative_prompt).unwrap();
    let (content, style) = (rgb(&fx, "content_rgb_u8"), rgb(&fx, "style_rgb_u8"));
    let run = |style: Style<'_>| zepo.stylize(&content, style, &o, &prompts, &mut SeededNoise::new(o.seed), &mut Silent, None).unwrap();
    let a = run(Style::Image(&style));
    let b = run(Style::Image(&style));
    assert!(a.image.values == b.image.values, "same seed, same bits");
    let features = zepo.style_features(&style, &o, &prompts, &mut SeededNoise::new(o.seed)).unwrap();
    let c = run(Style::Features(&features));
    assert!(a.image.values == c.image.values, "precomputed style features give the same bits");
    let d = zepo.stylize(&content, Style::Image(&style), &ZepoOptions { seed: 8, ..o.clone() }, &prompts, &mut SeededNoise::new(8), &mut Silent, None).unwrap();
    assert!(a.image.values != d.image.values, "another seed, another image");
}

#[test]
fn cli_replays_a_case_with_flags() {
    let exe = env!("CARGO_BIN_EXE_zepo");
    let dir = std::env::temp_dir().join(format!("zepo-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for case in ["tiny_s2_r64_notome", "tiny_s2_r96_synth"] {
        let o = case_options(case);
        let out: PathBuf = dir.join(format!("{case}.safetensors"));
        let mut args: Vec<String> = vec![
            "stylize".into(), "--quiet".into(),
            "--model".into(), tiny_model().display().to_string(),
            "--replay".into(), fixture(&format!("cases/{case}/reference.safetensors")).display().to_string(),
            "--save-tensor".into(), out.display().to_string(),
            "--steps".into(), o.steps.to_string(),
            "--strength".into(), o.strength.to_string(),
            "--cfg".into(), o.cfg.to_string(),
            "--style-guidance".into(), o.style_guidance.to_string(),
        ];
        match &o.tome {
            Some(t) => {
                args.extend(["--tome-ratio".into(), t.ratio.to_string()]);
                if t.deterministic {
                    args.push("--tome-deterministic".into());
                }
            }
            None => args.push("--no-tome".into()),
        }
        let status = std::process::Command::new(exe).args(&args).status().unwrap();
        assert!(status.success(), "{case}: zepo {}", args.join(" "));
        let got = zepo::weights::SafetensorsBytes::new(std::fs::read(&out).unwrap(), "out").unwrap();
        let (entry, bytes) = got.get("image").unwrap();
        assert_eq!(entry.shape, vec![o.resolution, o.resolution, 3]);
        let values: Vec<f32> = bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
        let fx = Fixture::load(&format!("cases/{case}/reference.safetensors"));
        let e = assert_close_abs(&format!("cli {case}"), &values, &reference_image(&fx), 2e-3);
        println!("cli {case}: max abs err {e:.2e}");
    }
}

#[test]
fn cli_errors_are_one_clear_line() {
    let exe = env!("CARGO_BIN_EXE_zepo");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(exe).args(args).output().unwrap();
        assert!(!out.status.success(), "zepo {args:?} should fail");
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let model = tiny_model().display().to_string();
    let err = run(&["stylize", "--model", "/nonexistent", "--content", "a.png", "--style", "b.png", "--out", "o.png"]);
    assert!(err.starts_with("error: ") && err.contains("/nonexistent") && err.lines().count() == 1, "{err}");
    let bad = std::env::temp_dir().join(format!("zepo-bad-{}.png", std::process::id()));
    std::fs::write(&bad, b"not an image").unwrap();
    let err = run(&["stylize", "--model", &model, "--content", bad.to_str().unwrap(), "--style", bad.to_str().unwrap(), "--out", "o.png", "--resolution", "64"]);
    assert!(err.starts_with("error: ") && err.contains("zepo-bad") && err.lines().count() == 1, "{err}");
    let err = run(&["stylize", "--model", &model, "--content", "a.png", "--style", "b.png", "--out", "o.png", "--steps", "0"]);
    assert!(err.starts_with("error: ") && err.contains("steps"), "{err}");
}
