//! `zepo weights convert|random|verify`: the fp16 weight bundle that the browser streams
//! (`weights/README.md` describes the format), over `zepo::tools`.

use std::path::PathBuf;

use clap::Subcommand;
use zepo::tools::convert::{convert, ConvertOptions};
use zepo::tools::verify::verify;
use zepo::Result;

#[derive(Subcommand)]
pub enum WeightsCommand {
    /// Convert a diffusers checkpoint (f32/f16/bf16 safetensors, single or sharded) into an
    /// fp16 bundle: bounded shards, configs, tokenizer, precomputed prompts, manifest.json.
    Convert {
        /// Diffusers model directory (unet/, vae/, text_encoder/, tokenizer/, scheduler/).
        #[arg(long)]
        model: PathBuf,
        /// Bundle directory to create (must not exist, or be empty).
        #[arg(long)]
        out: PathBuf,
        /// Shard size cap in MiB (a tensor larger than that gets a shard of its own).
        #[arg(long, default_value_t = zepo::weights::bundle::DEFAULT_SHARD_BYTES >> 20)]
        shard_mb: u64,
        /// Comma-separated prompts whose text embeddings are precomputed (default: the
        /// pipeline's default prompt); the unconditional "" is always added.
        #[arg(long, value_delimiter = ',')]
        prompts: Vec<String>,
        /// One more prompt to precompute, verbatim (may contain commas); repeatable.
        #[arg(long)]
        prompt: Vec<String>,
        /// Leave out the text encoder and tokenizer (only precomputed prompts can be used).
        #[arg(long)]
        no_text_encoder: bool,
        /// Model name in the manifest (default: the model directory's name).
        #[arg(long)]
        name: Option<String>,
        /// Compact variants to add beside the fp16 weights, comma-separated: `q8` (linear
        /// 8-bit, blocks of 32), `mixed` (4 to 8 bits per tensor, chosen by measuring this
        /// checkpoint for --target-psnr), or `q4` … `q6`. Each one's recipe, size and PSNR are
        /// printed and recorded in the manifest.
        #[arg(long, value_delimiter = ',')]
        variants: Vec<String>,
        /// The output PSNR (dB, against the fp16 weights) the variants' recipes must reach
        /// (default: 70 for `mixed`; none for `q8`, which quantizes every weight).
        #[arg(long)]
        target_psnr: Option<f64>,
    },
    /// Write a diffusers-layout checkpoint with the real model's structure and random f16
    /// weights, from a directory of configs (each part's config.json, tokenizer/, scheduler/):
    /// for benchmarks and full-size tests without the real weights. Convert it like any other.
    Random {
        /// Directory of the model's configs.
        #[arg(long, default_value = "weights/lcm-dreamshaper-v7")]
        config: PathBuf,
        /// Checkpoint directory to create (must not exist, or be empty).
        #[arg(long)]
        out: PathBuf,
    },
    /// Measure a bundle's compact variants end to end on the CPU against its fp16 weights: the
    /// download for the default prompt, and the PSNR of a whole stylization (same seed, options
    /// and images) and of one UNet call at ZePo's timestep.
    Compare {
        /// Bundle directory (with manifest.json).
        bundle: PathBuf,
        /// The variants to compare (default: all the bundle has).
        #[arg(long, value_delimiter = ',')]
        variants: Vec<String>,
        /// Working size of the stylization.
        #[arg(long, default_value_t = 256)]
        resolution: usize,
        #[arg(long, default_value_t = zepo::zepo::ZepoOptions::default().steps)]
        steps: usize,
        #[arg(long, default_value_t = zepo::zepo::ZepoOptions::default().seed)]
        seed: u64,
        /// Content portrait (default: a synthetic one).
        #[arg(long)]
        content: Option<PathBuf>,
        /// Style image (default: a synthetic one).
        #[arg(long)]
        style: Option<PathBuf>,
    },
    /// Re-check a bundle: every sha256, every shard against the manifest, every tensor's shape
    /// against the configs (through the model loaders).
    Verify {
        /// Bundle directory (with manifest.json).
        bundle: PathBuf,
    },
}

pub fn run(cmd: WeightsCommand) -> Result<()> {
    match cmd {
        WeightsCommand::Convert { model, out, shard_mb, prompts, prompt, no_text_encoder, name, variants, target_psnr } => {
            if shard_mb == 0 {
                return Err(zepo::Error::InvalidOption("--shard-mb must be at least 1".into()));
            }
            let mut opts = ConvertOptions::new(model, out);
            opts.shard_bytes = shard_mb << 20;
            if !prompts.is_empty() || !prompt.is_empty() {
                opts.prompts = prompts.into_iter().chain(prompt).collect();
            }
            opts.text_encoder = !no_text_encoder;
            opts.name = name;
            opts.variants = variants;
            if target_psnr.is_some_and(|t| !(t > 0.0 && t.is_finite())) {
                return Err(zepo::Error::InvalidOption("--target-psnr must be a positive number of dB".into()));
            }
            opts.target_psnr = target_psnr;
            let manifest = convert(&opts, &mut |msg| eprintln!("{msg}"))?;
            for (part, p) in &manifest.parts {
                println!("{part}: {} tensors in {} shard(s), {:.1} MB", p.tensor_count(), p.shards.len(), p.total_bytes as f64 / 1e6);
            }
            for (name, v) in &manifest.variants {
                let bytes: u64 = v.parts.values().map(|p| p.total_bytes).sum();
                let psnr = v.measured.iter().flat_map(|m| &m.psnr).map(|(k, db)| format!("{k} {db:.1} dB")).collect::<Vec<_>>().join(", ");
                println!("{name}: {:.1} MB of weights (unet, vae); PSNR against fp16: {psnr}", bytes as f64 / 1e6);
            }
            if !manifest.omitted.is_empty() {
                println!("left out: {}", manifest.omitted.join(", "));
            }
            println!("{}: {:.1} MB in all", opts.out.display(), manifest.total_bytes() as f64 / 1e6);
        }
        WeightsCommand::Random { config, out } => {
            let bytes = zepo::tools::random_checkpoint::write_random_checkpoint(&config, &out, &mut |msg| eprintln!("{msg}"))?;
            println!("{}: random weights, {:.1} MB", out.display(), bytes as f64 / 1e6);
        }
        WeightsCommand::Compare { bundle, variants, resolution, steps, seed, content, style } => {
            let manifest = zepo::tools::convert::read_manifest(&bundle)?;
            let variants = if variants.is_empty() { manifest.variants.keys().cloned().collect() } else { variants };
            let opts = zepo::zepo::ZepoOptions { resolution, steps, seed, ..Default::default() };
            let picture = |path: Option<PathBuf>, style: bool| -> Result<zepo::zepo::image::RgbImage> {
                match path {
                    Some(p) => {
                        let bytes = std::fs::read(&p).map_err(|e| zepo::Error::io(&p, e))?;
                        zepo::zepo::image::RgbImage::decode(&bytes, &p.display().to_string())
                    }
                    None => Ok(zepo::tools::compare::synthetic_picture(resolution, style)),
                }
            };
            let (content, style) = (picture(content, false)?, picture(style, true)?);
            let fp16: u64 = manifest.load_files(zepo::weights::bundle::FP16).iter().map(|f| f.size).sum();
            println!("{:<8} {:>12} {:>8} {:>14} {:>12}", "weights", "download MB", "of fp16", "image PSNR dB", "UNet PSNR dB");
            println!("{:<8} {:>12.1} {:>7.1}% {:>14} {:>12}", "fp16", fp16 as f64 / 1e6, 100.0, "-", "-");
            for c in zepo::tools::compare::compare(&bundle, &variants, &opts, &content, &style)? {
                let share = 100.0 * c.download_bytes as f64 / fp16 as f64;
                println!(
                    "{:<8} {:>12.1} {:>7.1}% {:>14.1} {:>12.1}",
                    c.variant,
                    c.download_bytes as f64 / 1e6,
                    share,
                    c.image_psnr,
                    c.unet_psnr
                );
            }
        }
        WeightsCommand::Verify { bundle } => {
            let report = verify(&bundle)?;
            for (part, n) in &report.parts {
                println!("{part}: {n} tensors, shapes match the config");
            }
            for note in &report.notes {
                println!("note: {note}");
            }
            println!("{}: OK ({} files, {:.1} MB, every sha256 matches)", bundle.display(), report.files, report.bytes as f64 / 1e6);
        }
    }
    Ok(())
}
