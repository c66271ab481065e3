//! The whole ZePo pipeline against the authors' code: every case in tests/fixtures/cases,
//! replayed with the reference's random draws, through the public API and through the CLI.

use std::path::PathBuf;

use crate::common::*;
use zepo::zepo::image::RgbImage;
use zepo::zepo::load::{load_dir, WeightSource};
use zepo::zepo::noise::SeededNoise;
use zepo::zepo::pipeline::{Style, Trace, Zepo};
use zepo::zepo::progress::Silent;
use zepo::zepo::{Fit, ZepoOptions};

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
                .stylize(
                    &rgb(&fx, "content_rgb_u8"),
                    Style::Image(&rgb(&fx, "style_rgb_u8")),
                    &o,
                    &prompts,
                    &mut noise,
                    &mut Silent,
                    Some(&mut trace),
                )
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
        let again =
            zepo.stylize(&content, Style::Features(&cached.style), &o, &prompts, &mut SeededNoise::new(1), &mut Silent, None).unwrap();
        let c = zepo.counters();
        assert_eq!((c.unet_evals, c.vae_encodes, c.vae_decodes), (2 + 2 * n, 1, 1), "{case}: reused style");
        assert_eq!(again.image.values.len(), cached.image.values.len());
    }
}

/// The query mix (`mix_q` < 1) as the pipeline runs it (control.rs through
/// `style_attention::mix_query`): the cached path equals the reference-structured uncached one,
/// and the mix changes the image (the reference cases all use mix 1).
#[test]
fn query_mix_runs_the_same_cached_and_uncached() {
    let device = burn::tensor::Device::flex();
    let zepo = model(&device);
    let case = "tiny_s2_r64";
    let fx = Fixture::load(&format!("cases/{case}/reference.safetensors"));
    let (content, style) = (rgb(&fx, "content_rgb_u8"), rgb(&fx, "style_rgb_u8"));
    let o = ZepoOptions { mix_q: 0.5, ..case_options(case) };
    let prompts = zepo.embed_prompts(&o.prompt, &o.negative_prompt).unwrap();
    let uncached = zepo.stylize_uncached(&content, &style, &o, &prompts, &mut replay(&fx)).unwrap();
    let mixed = zepo.stylize(&content, Style::Image(&style), &o, &prompts, &mut replay(&fx), &mut Silent, None).unwrap();
    let e = assert_close_abs("mix_q 0.5: cached vs uncached", &mixed.image.values, &uncached.values, 1e-5);
    let plain = zepo.stylize(&content, Style::Image(&style), &case_options(case), &prompts, &mut replay(&fx), &mut Silent, None).unwrap();
    let d = mixed.image.values.iter().zip(&plain.image.values).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    println!("mix_q 0.5: cached vs uncached {e:.2e}; vs mix 1: {d:.2e}");
    assert!(d > 1e-3, "mix_q 0.5 gives the image of mix_q 1 (max diff {d:e}): the mix is not applied");
}

/// A portrait that is not square keeps its shape: with `fit` contain the working size follows
/// it, and the cached path equals the reference-structured uncached one at that size (the
/// reference cases are all square; the UNet and the VAE are checked on non-square latents
/// against PyTorch in unet.rs and vae.rs). Square inputs give the square path's bits.
#[test]
fn a_portrait_keeps_its_shape() {
    let device = burn::tensor::Device::flex();
    let zepo = model(&device);
    let fx = Fixture::load("cases/tiny_s2_r64/reference.safetensors");
    let (square, style) = (rgb(&fx, "content_rgb_u8"), rgb(&fx, "style_rgb_u8"));
    // A 3:4 portrait: the middle 48 columns of the 64² content.
    let rows: Vec<u8> = square.pixels.chunks_exact(64 * 3).flat_map(|row| row[8 * 3..56 * 3].to_vec()).collect();
    let portrait = RgbImage::new(48, 64, rows).unwrap();
    let o = ZepoOptions { resolution: 96, steps: 2, fit: Fit::Contain, ..Default::default() };
    let prompts = zepo.embed_prompts(&o.prompt, &o.negative_prompt).unwrap();
    let uncached = zepo.stylize_uncached(&portrait, &style, &o, &prompts, &mut SeededNoise::new(5)).unwrap();
    let cached = zepo.stylize(&portrait, Style::Image(&style), &o, &prompts, &mut SeededNoise::new(5), &mut Silent, None).unwrap();
    assert_eq!((cached.image.width, cached.image.height), (72, 96), "3:4 in, 3:4 out, long side = resolution");
    let e = assert_close_abs("3:4 cached vs uncached", &cached.image.values, &uncached.values, 1e-5);
    println!("72×96 (latent 9×12): cached vs uncached max abs diff {e:.2e}");
    // Its style features serve the next portrait of that shape, not a square one.
    let size = o.size_for(48, 64);
    let features = zepo.style_features(&style, &o, size, &prompts, &mut SeededNoise::new(5)).unwrap();
    let again = zepo.stylize(&portrait, Style::Features(&features), &o, &prompts, &mut SeededNoise::new(5), &mut Silent, None).unwrap();
    assert!(again.image.values == cached.image.values, "reused features, same bits");
    let err = zepo.stylize(&square, Style::Features(&features), &o, &prompts, &mut SeededNoise::new(5), &mut Silent, None).err();
    assert!(matches!(&err, Some(zepo::Error::InvalidOption(m)) if m.contains("size")), "{err:?}");

    // Cover with an explicit landscape size crops the portrait's middle.
    let cover = ZepoOptions { width: Some(64), height: Some(40), fit: Fit::Cover, ..o.clone() };
    let out = zepo.stylize(&portrait, Style::Image(&style), &cover, &prompts, &mut SeededNoise::new(5), &mut Silent, None).unwrap();
    assert_eq!((out.image.width, out.image.height), (64, 40));

    // A square portrait: contain and cover change nothing.
    let plain = ZepoOptions { resolution: 64, steps: 2, ..Default::default() };
    let run =
        |o: &ZepoOptions| zepo.stylize(&square, Style::Image(&style), o, &prompts, &mut SeededNoise::new(5), &mut Silent, None).unwrap();
    let reference = run(&plain).image.values;
    for fit in [Fit::Contain, Fit::Cover] {
        assert!(run(&ZepoOptions { fit, ..plain.clone() }).image.values == reference, "{fit:?} on a square image");
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
    let size = o.size_for(content.width, content.height);
    let features = zepo.style_features(&style, &o, size, &prompts, &mut SeededNoise::new(o.seed)).unwrap();
    let c = run(Style::Features(&features));
    assert!(a.image.values == c.image.values, "precomputed style features give the same bits");
    let d = zepo
        .stylize(
            &content,
            Style::Image(&style),
            &ZepoOptions { seed: 8, ..o.clone() },
            &prompts,
            &mut SeededNoise::new(8),
            &mut Silent,
            None,
        )
        .unwrap();
    assert!(a.image.values != d.image.values, "another seed, another image");
    // The style's noise and token-merge draws depend on the seed: its features are not reused
    // under another one (the browser engine's style cache keys on the same FeatureKey).
    let o8 = ZepoOptions { seed: 8, ..o.clone() };
    let err = zepo.stylize(&content, Style::Features(&features), &o8, &prompts, &mut SeededNoise::new(8), &mut Silent, None).err();
    assert!(matches!(&err, Some(zepo::Error::InvalidOption(m)) if m.contains("seed")), "features of seed 7 reused under seed 8: {err:?}");
    assert_ne!(zepo::zepo::pipeline::FeatureKey::of(&o, size), zepo::zepo::pipeline::FeatureKey::of(&o8, size));
}

#[test]
fn cli_replays_a_case_with_flags() {
    let exe = env!("CARGO_BIN_EXE_zepo");
    let dir = Scratch::new("cli");
    for case in ["tiny_s2_r64_notome", "tiny_s2_r96_synth"] {
        let o = case_options(case);
        let out: PathBuf = dir.join(format!("{case}.safetensors"));
        let mut args: Vec<String> = vec![
            "stylize".into(),
            "--quiet".into(),
            "--model".into(),
            tiny_model().display().to_string(),
            "--replay".into(),
            fixture(&format!("cases/{case}/reference.safetensors")).display().to_string(),
            "--save-tensor".into(),
            out.display().to_string(),
            "--steps".into(),
            o.steps.to_string(),
            "--strength".into(),
            o.strength.to_string(),
            "--cfg".into(),
            o.cfg.to_string(),
            "--style-guidance".into(),
            o.style_guidance.to_string(),
        ];
        match &o.tome {
            // No --tome-deterministic: replay implies it (the cases' destinations are top-left).
            Some(t) => args.extend(["--tome-ratio".into(), t.ratio.to_string()]),
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
    let scratch = Scratch::new("bad-image");
    let bad = scratch.join("zepo-bad.png");
    std::fs::write(&bad, b"not an image").unwrap();
    let err = run(&[
        "stylize",
        "--model",
        &model,
        "--content",
        bad.to_str().unwrap(),
        "--style",
        bad.to_str().unwrap(),
        "--out",
        "o.png",
        "--resolution",
        "64",
    ]);
    assert!(err.starts_with("error: ") && err.contains("zepo-bad") && err.lines().count() == 1, "{err}");
    let err = run(&["stylize", "--model", &model, "--content", "a.png", "--style", "b.png", "--out", "o.png", "--steps", "0"]);
    assert!(err.starts_with("error: ") && err.contains("steps"), "{err}");
}

#[test]
fn progress_is_reported_and_cancellation_stops_between_model_calls() {
    use zepo::zepo::progress::{FnObserver, Stage};
    let device = burn::tensor::Device::flex();
    let zepo = model(&device);
    let fx = Fixture::load("cases/tiny_s2_r64/reference.safetensors");
    let o = ZepoOptions { resolution: 64, steps: 2, ..Default::default() };
    let prompts = zepo.embed_prompts(&o.prompt, &o.negative_prompt).unwrap();
    let (content, style) = (rgb(&fx, "content_rgb_u8"), rgb(&fx, "style_rgb_u8"));

    let mut seen = Vec::new();
    let mut obs = FnObserver::new(|p| {
        seen.push(p);
        true
    });
    zepo.stylize(&content, Style::Image(&style), &o, &prompts, &mut SeededNoise::new(0), &mut obs, None).unwrap();
    assert!(seen.windows(2).all(|w| w[0].fraction <= w[1].fraction), "fractions only grow");
    assert_eq!(seen.first().unwrap().fraction, 0.0);
    assert_eq!(seen.last().unwrap().fraction, 1.0);
    let steps: Vec<_> = seen.iter().filter(|p| p.stage == Stage::Denoise).map(|p| (p.step, p.steps)).collect();
    assert_eq!(steps, vec![(0, 2), (1, 2)]);

    // Cancel once the first LCM step is announced: no further UNet call runs.
    zepo.reset_counters();
    let mut obs = FnObserver::new(|p| p.stage != Stage::Denoise);
    let err = zepo.stylize(&content, Style::Image(&style), &o, &prompts, &mut SeededNoise::new(0), &mut obs, None).err().unwrap();
    assert!(matches!(err, zepo::Error::Cancelled), "{err}");
    assert_eq!(zepo.counters().unet_evals, 4, "only the feature passes ran");
}

#[test]
fn no_cfg_mode_halves_the_unet_work() {
    let device = burn::tensor::Device::flex();
    let zepo = model(&device);
    let fx = Fixture::load("cases/tiny_s2_r64/reference.safetensors");
    let o = ZepoOptions { resolution: 64, steps: 2, no_cfg: true, ..Default::default() };
    let prompts = zepo.embed_prompts(&o.prompt, &o.negative_prompt).unwrap();
    let (content, style) = (rgb(&fx, "content_rgb_u8"), rgb(&fx, "style_rgb_u8"));
    zepo.reset_counters();
    let out = zepo.stylize(&content, Style::Image(&style), &o, &prompts, &mut SeededNoise::new(0), &mut Silent, None).unwrap();
    assert_eq!(zepo.counters().unet_evals, 2 + 2, "1 style + 1 content feature pass + 1 per step");
    assert!(out.image.values.iter().all(|v| (0.0..=1.0).contains(v)));
    let cfg = zepo
        .stylize(
            &content,
            Style::Image(&style),
            &ZepoOptions { no_cfg: false, ..o.clone() },
            &prompts,
            &mut SeededNoise::new(0),
            &mut Silent,
            None,
        )
        .unwrap();
    assert!(cfg.image.values != out.image.values, "no-CFG is a different mode, never the default");
}

/// A photo cut short in transfer is refused by name, not stylized from its readable part.
#[test]
fn cli_refuses_a_truncated_jpeg_by_name() {
    let exe = env!("CARGO_BIN_EXE_zepo");
    let dir = Scratch::new("truncated");
    let fx = Fixture::load("cases/tiny_s2_r64/reference.safetensors");
    let (content, style) = (rgb(&fx, "content_rgb_u8"), rgb(&fx, "style_rgb_u8"));
    let mut jpeg = std::io::Cursor::new(Vec::new());
    image::RgbImage::from_raw(content.width as u32, content.height as u32, content.pixels.clone())
        .unwrap()
        .write_to(&mut jpeg, image::ImageFormat::Jpeg)
        .unwrap();
    let jpeg = jpeg.into_inner();
    let photo = dir.join("photo.jpg");
    std::fs::write(&photo, &jpeg[..jpeg.len() / 4]).unwrap();
    std::fs::write(dir.join("style.png"), style.to_png().unwrap()).unwrap();
    let out = std::process::Command::new(exe)
        .args(["stylize", "--quiet", "--resolution", "64", "--steps", "2", "--model"])
        .arg(tiny_model())
        .arg("--content")
        .arg(&photo)
        .arg("--style")
        .arg(dir.join("style.png"))
        .arg("--out")
        .arg(dir.join("out.png"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("photo.jpg") && stderr.contains("truncated JPEG"), "{stderr}");
    assert!(!dir.join("out.png").exists());
}

#[test]
fn cli_stylizes_a_folder_with_one_style() {
    let exe = env!("CARGO_BIN_EXE_zepo");
    let dir = Scratch::new("folder");
    let (contents, out) = (dir.join("contents"), dir.join("out"));
    std::fs::create_dir_all(&contents).unwrap();
    let fx = Fixture::load("cases/tiny_s2_r64/reference.safetensors");
    let (content, style) = (rgb(&fx, "content_rgb_u8"), rgb(&fx, "style_rgb_u8"));
    std::fs::write(contents.join("a.png"), content.to_png().unwrap()).unwrap();
    std::fs::write(contents.join("b.png"), style.to_png().unwrap()).unwrap();
    std::fs::write(contents.join("notes.txt"), "not an image").unwrap();
    std::fs::write(dir.join("style.png"), style.to_png().unwrap()).unwrap();
    let status = std::process::Command::new(exe)
        .args(["stylize", "--quiet", "--resolution", "64", "--steps", "2", "--model"])
        .arg(tiny_model())
        .arg("--content")
        .arg(&contents)
        .arg("--style")
        .arg(dir.join("style.png"))
        .arg("--out")
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    for name in ["a.png", "b.png"] {
        let img = RgbImage::decode(&std::fs::read(out.join(name)).unwrap(), name).unwrap();
        assert_eq!((img.width, img.height), (64, 64));
    }
    assert!(!out.join("notes.png").exists());
}

#[test]
fn the_fp16_bundle_runs_the_pipeline() {
    // The same case through the fp16 bundle: fp16 weights move the image by far less than a
    // wrong weight would (see tests/parity/bundle.rs for the per-part figures).
    let device = burn::tensor::Device::flex();
    let bundle = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("weights/tiny-lcm-bundle");
    let zepo = load_dir(&bundle, &device, &Default::default(), WeightSource::Checkpoint).unwrap();
    let case = "tiny_s2_r64";
    let (image, reference) = replay_case(&zepo, case);
    let e = assert_close_abs("bundle image", &image, &reference, 2e-2);
    println!("fp16 bundle {case}: image max abs err {e:.2e}");
}

#[test]
fn a_differently_sized_model_runs_the_whole_pipeline() {
    // tiny-lcm-2: other widths, per-block head counts, norm groups, text width, layer counts.
    let device = burn::tensor::Device::flex();
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("weights/tiny-lcm-2-bundle");
    let zepo = load_dir(&dir, &device, &Default::default(), WeightSource::Checkpoint).unwrap();
    let fx = Fixture::load("cases/tiny_s2_r96_synth/reference.safetensors");
    let (content, style) = (rgb(&fx, "content_rgb_u8"), rgb(&fx, "style_rgb_u8"));
    for no_cfg in [false, true] {
        let o = ZepoOptions { resolution: 96, steps: 2, no_cfg, end_layer: zepo.unet.num_self_attentions, ..Default::default() };
        let prompts = zepo.embed_prompts(&o.prompt, &o.negative_prompt).unwrap();
        zepo.reset_counters();
        let out = zepo.stylize(&content, Style::Image(&style), &o, &prompts, &mut SeededNoise::new(3), &mut Silent, None).unwrap();
        assert_eq!((out.image.width, out.image.height), (96, 96));
        assert!(out.image.values.iter().all(|v| v.is_finite() && (0.0..=1.0).contains(v)));
        let halves = if no_cfg { 1 } else { 2 };
        assert_eq!(zepo.counters().unet_evals, 2 * halves + 2 * halves, "no_cfg {no_cfg}");
    }
}
