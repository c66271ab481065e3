//! `zepo weights compare`: what a bundle's compact variants cost in quality and what they save,
//! measured end to end: each variant's download for the default prompt, and the PSNR of a whole
//! stylization (same seed, options and images) and of one UNet call at ZePo's first timestep
//! against the fp16 weights, Apple's measure (20·log10(max|ref| / RMS(ref − test))).

use std::path::Path;

use burn::tensor::{Tensor, TensorData};

use crate::weights::bundle::WeightsChoice;
use crate::weights::LoadOptions;
use crate::zepo::image::RgbImage;
use crate::zepo::load::{embed_prompts, load_dir, WeightSource};
use crate::zepo::noise::SeededNoise;
use crate::zepo::pipeline::Style;
use crate::zepo::progress::Silent;
use crate::zepo::ZepoOptions;
use crate::Result;

/// One variant against the fp16 weights.
#[derive(Debug, Clone)]
pub struct Comparison {
    pub variant: String,
    /// Bytes a load downloads for the default prompt (weights, configs, prompt embeddings).
    pub download_bytes: u64,
    /// PSNR (dB) of the stylized image (its [0, 1] values) against the fp16 weights'.
    pub image_psnr: f64,
    /// PSNR (dB) of one UNet call's prediction at ZePo's first timestep against fp16's.
    pub unet_psnr: f64,
}

/// PSNR of `test` against `reference`: 20·log10(max|ref| / RMS(ref − test)).
pub fn psnr(reference: &[f32], test: &[f32]) -> f64 {
    let peak = reference.iter().fold(0f64, |m, v| m.max(v.abs() as f64));
    let mse = reference.iter().zip(test).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>() / reference.len().max(1) as f64;
    if mse == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (peak * peak / mse).log10()
    }
}

/// A synthetic portrait-like picture (a face-coloured oval on a gradient) or a striped style, of
/// `side`², seeded.
pub fn synthetic_picture(side: usize, style: bool) -> RgbImage {
    let mut pixels = Vec::with_capacity(side * side * 3);
    for y in 0..side {
        for x in 0..side {
            let (fx, fy) = (x as f32 / side as f32, y as f32 / side as f32);
            let rgb = if style {
                let s = ((fx * 9.0 + fy * 5.0).sin() * 0.5 + 0.5) * 255.0;
                [s, 255.0 - s, (fy * 255.0)]
            } else if (fx - 0.5).powi(2) / 0.09 + (fy - 0.45).powi(2) / 0.16 < 1.0 {
                [224.0 - fy * 40.0, 172.0 - fy * 30.0, 140.0]
            } else {
                [40.0 + fx * 80.0, 60.0 + fy * 60.0, 110.0]
            };
            pixels.extend(rgb.iter().map(|v| v.clamp(0.0, 255.0) as u8));
        }
    }
    RgbImage { width: side, height: side, pixels }
}

/// Stylizes `content` after `style` with `opts` on the CPU with each of `variants` of the bundle
/// in `dir` and with its fp16 weights, and compares them.
pub fn compare(dir: &Path, variants: &[String], opts: &ZepoOptions, content: &RgbImage, style: &RgbImage) -> Result<Vec<Comparison>> {
    let device = crate::device::device(crate::device::Backend::Cpu)?;
    let run = |weights: &str| -> Result<(Vec<f32>, Vec<f32>, u64)> {
        let load = LoadOptions { weights: WeightsChoice::parse(weights), ..Default::default() };
        let loader = crate::zepo::load::Loader::dir(dir, &device, &load, WeightSource::Checkpoint)?;
        let variant = loader.layout.variant().to_string();
        let download = loader.layout.manifest().map_or(0, |m| m.load_files(&variant).iter().map(|f| f.size).sum());
        let model = load_dir(dir, &device, &load, WeightSource::Checkpoint)?;
        let prompts = embed_prompts(dir, &model, &opts.prompt, &opts.negative_prompt)?;
        let out = model.stylize(content, Style::Image(style), opts, &prompts, &mut SeededNoise::new(opts.seed), &mut Silent, None)?;
        // One UNet call at ZePo's first timestep on a seeded latent.
        let mut scheduler = model.scheduler.clone();
        let t = scheduler.zepo_timesteps(opts.steps, opts.strength)?[0] as f32;
        let side = 16;
        let channels = model.unet.conv_in.channels().0;
        let n = channels * side * side;
        let latent: Vec<f32> = (0..n).map(|i| ((i as f32 * 0.618).fract() - 0.5) * 2.0).collect();
        let sample = Tensor::<4>::from_data(TensorData::new(latent, [1, channels, side, side]), &device);
        let pred = model.unet.forward(sample, &[t], &prompts.cond);
        let pred = pred.into_data().convert::<f32>().try_into_vec::<f32>().expect("f32 values");
        Ok((out.image.values, pred, download))
    };
    let (image16, unet16, _) = run(crate::weights::bundle::FP16)?;
    let mut out = Vec::new();
    for v in variants {
        let (image, unet, download_bytes) = run(v)?;
        out.push(Comparison { variant: v.clone(), download_bytes, image_psnr: psnr(&image16, &image), unet_psnr: psnr(&unet16, &unet) });
    }
    Ok(out)
}
