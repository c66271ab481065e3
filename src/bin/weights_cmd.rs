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
    /// Re-check a bundle: every sha256, every shard against the manifest, every tensor's shape
    /// against the configs (through the model loaders).
    Verify {
        /// Bundle directory (with manifest.json).
        bundle: PathBuf,
    },
}

pub fn run(cmd: WeightsCommand) -> Result<()> {
    match cmd {
        WeightsCommand::Convert { model, out, shard_mb, prompts, prompt, no_text_encoder, name } => {
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
            let manifest = convert(&opts, &mut |msg| eprintln!("{msg}"))?;
            for (part, p) in &manifest.parts {
                println!("{part}: {} tensors in {} shard(s), {:.1} MB", p.tensor_count(), p.shards.len(), p.total_bytes as f64 / 1e6);
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
