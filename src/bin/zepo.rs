//! `zepo`: the native command-line tool (stylize, benchmark), a thin layer over the library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use zepo::device::Backend;
use zepo::weights::bundle::WeightsChoice;
use zepo::weights::LoadOptions;
use zepo::zepo::image::{FloatImage, RgbImage};
use zepo::zepo::load::{embed_prompts, load_dir, WeightSource};
use zepo::zepo::noise::{NoiseSource, ReplayNoise, SeededNoise};
use zepo::zepo::pipeline::Style;
use zepo::zepo::progress::{Observer, Progress};
use zepo::zepo::{Fit, TomeOptions, ZepoOptions};
use zepo::{Error, Result};

mod bench;
mod unet_cmd;
mod weights_cmd;

#[derive(Parser)]
#[command(name = "zepo", version, about = "ZePo zero-shot portrait stylization (burn; CPU or wgpu)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Stylize a content portrait (or every image of a folder) after a style image.
    Stylize(StylizeArgs),
    /// Time the models and the pipeline on full-size random weights.
    Bench(bench::BenchArgs),
    /// One UNet call on seeded inputs, saved with them (checks of another engine on the same call).
    Unet(unet_cmd::UnetArgs),
    /// Make or check the fp16 weight bundle that the browser streams.
    Weights {
        #[command(subcommand)]
        cmd: weights_cmd::WeightsCommand,
    },
}

/// The pipeline's defaults: every option's default below is read from here (one source of truth).
fn defaults() -> ZepoOptions {
    ZepoOptions::default()
}

#[derive(Args)]
struct StylizeArgs {
    /// Model directory in diffusers layout (unet/, vae/, text_encoder/, tokenizer/, scheduler/).
    #[arg(long)]
    model: PathBuf,
    /// Content portrait, or a folder of them (then --out is a folder).
    #[arg(long, required_unless_present = "replay")]
    content: Option<PathBuf>,
    /// Style image.
    #[arg(long, required_unless_present = "replay")]
    style: Option<PathBuf>,
    /// Output PNG (or folder, for a folder of contents).
    #[arg(long, required_unless_present_any = ["replay", "save_tensor"])]
    out: Option<PathBuf>,
    /// Working size: the square's side, or with --fit cover/contain the long side.
    #[arg(long, default_value_t = defaults().resolution)]
    resolution: usize,
    /// Explicit working width (with --height; multiples of 8).
    #[arg(long, requires = "height")]
    width: Option<usize>,
    #[arg(long, requires = "width")]
    height: Option<usize>,
    /// stretch (the reference: resized to the size whatever its shape), cover (fill the size,
    /// centre-cropped; without --width/--height the portrait's shape), contain (the
    /// portrait's shape, within the size).
    #[arg(long, default_value_t = defaults().fit.name().to_string(), value_parser = ["stretch", "cover", "contain"])]
    fit: String,
    #[arg(long, default_value_t = defaults().steps)]
    steps: usize,
    #[arg(long, default_value_t = defaults().strength)]
    strength: f64,
    /// Guidance scale (the reference's formula).
    #[arg(long, default_value_t = defaults().cfg)]
    cfg: f32,
    #[arg(long, default_value_t = defaults().style_guidance)]
    style_guidance: f32,
    /// Timestep of the consistency features.
    #[arg(long, default_value_t = defaults().feature_step)]
    feature_step: usize,
    /// First controlled self-attention layer.
    #[arg(long, default_value_t = defaults().start_layer)]
    start_layer: usize,
    /// End (exclusive) of the controlled self-attention layers.
    #[arg(long, default_value_t = defaults().end_layer)]
    end_layer: usize,
    #[arg(long, default_value_t = defaults().mix_q)]
    mix_q: f32,
    #[arg(long, default_value_t = defaults().tome.unwrap_or_default().ratio)]
    tome_ratio: f32,
    /// Turn token merging off.
    #[arg(long)]
    no_tome: bool,
    /// Token-merging destinations at the top-left of each cell (as the reference cases).
    #[arg(long)]
    tome_deterministic: bool,
    #[arg(long, default_value_t = defaults().prompt)]
    prompt: String,
    #[arg(long, default_value_t = defaults().negative_prompt)]
    negative_prompt: String,
    #[arg(long, default_value_t = defaults().seed)]
    seed: u64,
    /// LCM guidance embedding instead of classifier-free guidance (half the UNet work).
    #[arg(long)]
    no_cfg: bool,
    #[arg(long, default_value = "cpu")]
    backend: String,
    /// Which of a bundle's weights to load: auto (the smallest it has), fp16, or a compact
    /// variant (q8, mixed, …: `zepo weights convert --variants`); apart from the compute dtype.
    #[arg(long, default_value = "auto")]
    weights: String,
    /// Reference case file: its content_rgb_u8, style_rgb_u8 and rand_* draws are the inputs
    /// (the resolution is the case's; token merging is deterministic, as in the cases).
    #[arg(long)]
    replay: Option<PathBuf>,
    /// Write the float result as `image` (H×W×3 in [0,1]) to this safetensors file.
    #[arg(long)]
    save_tensor: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

impl StylizeArgs {
    fn options(&self) -> ZepoOptions {
        ZepoOptions {
            resolution: self.resolution,
            width: self.width,
            height: self.height,
            fit: Fit::parse(&self.fit).expect("clap checks the value"),
            steps: self.steps,
            strength: self.strength,
            cfg: self.cfg,
            style_guidance: self.style_guidance,
            feature_step: self.feature_step,
            start_layer: self.start_layer,
            end_layer: self.end_layer,
            mix_q: self.mix_q,
            tome: (!self.no_tome).then(|| TomeOptions {
                ratio: self.tome_ratio,
                deterministic: self.tome_deterministic,
                ..TomeOptions::default()
            }),
            prompt: self.prompt.clone(),
            negative_prompt: self.negative_prompt.clone(),
            seed: self.seed,
            no_cfg: self.no_cfg,
        }
    }
}

/// A progress bar on stderr.
struct Bar(Option<indicatif::ProgressBar>);

impl Bar {
    fn new(quiet: bool, label: &str) -> Self {
        if quiet {
            return Self(None);
        }
        let bar = indicatif::ProgressBar::new(1000);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{prefix} [{bar:30}] {percent:>3}% {msg} ({elapsed})").unwrap().progress_chars("=> "),
        );
        bar.set_prefix(label.to_string());
        Self(Some(bar))
    }
}

impl Observer for Bar {
    fn progress(&mut self, p: Progress) {
        if let Some(bar) = &self.0 {
            bar.set_position((p.fraction * 1000.0) as u64);
            bar.set_message(format!("{} {}/{}", p.stage.name(), p.step, p.steps));
        }
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}

fn read_image(path: &Path) -> Result<RgbImage> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    RgbImage::decode(&bytes, &path.display().to_string())
}

fn write_png(img: &FloatImage, path: &Path, text: &[(&str, String)]) -> Result<()> {
    let png = img.to_rgb8().to_png_with_text(text)?;
    std::fs::write(path, png).map_err(|e| Error::io(path, e))
}

fn write_tensor(img: &FloatImage, path: &Path) -> Result<()> {
    let bytes: Vec<u8> = img.values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![img.height, img.width, 3], &bytes)
        .map_err(|e| Error::Device(format!("{e:?}")))?;
    let out = safetensors::serialize([("image", view)], &None).map_err(|e| Error::Device(format!("{e:?}")))?;
    std::fs::write(path, out).map_err(|e| Error::io(path, e))
}

/// A reference case: its resized inputs and its random draws in call order.
struct Replay {
    content: RgbImage,
    style: RgbImage,
    noise: ReplayNoise,
}

fn read_replay(path: &Path) -> Result<Replay> {
    use zepo::weights::{Dtype, SafetensorsBytes};
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let st = SafetensorsBytes::new(bytes, path.display().to_string())?;
    let image = |name: &str| -> Result<RgbImage> {
        let (e, b) = st.get(name).ok_or_else(|| Error::InvalidOption(format!("{}: no `{name}` tensor", path.display())))?;
        if e.dtype != Dtype::U8 || e.shape.len() != 3 || e.shape[2] != 3 {
            return Err(Error::InvalidOption(format!("{}: `{name}` must be H×W×3 uint8", path.display())));
        }
        RgbImage::new(e.shape[1], e.shape[0], b.to_vec())
    };
    let mut draws: Vec<(String, Vec<usize>, Vec<f32>)> = st
        .tensors()
        .filter(|(e, _)| e.name.starts_with("rand_"))
        .map(|(e, b)| {
            let v = b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
            (e.name.clone(), e.shape.clone(), v)
        })
        .collect();
    draws.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(Replay { content: image("content_rgb_u8")?, style: image("style_rgb_u8")?, noise: ReplayNoise::new(draws) })
}

fn is_image(path: &Path) -> bool {
    let ext = path.extension().and_then(|e| e.to_str()).map(|e| e.to_ascii_lowercase());
    matches!(ext.as_deref(), Some("png" | "jpg" | "jpeg" | "webp" | "bmp" | "gif"))
}

fn stylize(args: StylizeArgs) -> Result<()> {
    let backend: Backend = args.backend.parse()?;
    let mut opts = args.options();
    let replay = args.replay.as_deref().map(read_replay).transpose()?;
    if let Some(r) = &replay {
        if args.content.as_deref().is_some_and(Path::is_dir) {
            return Err(Error::InvalidOption("--replay takes its content from the case file, not a folder".into()));
        }
        if r.content.width != r.content.height {
            return Err(Error::InvalidOption("replay images must be square".into()));
        }
        opts.resolution = r.content.width;
        // The reference's random token-merging destinations come from torch's generator and
        // cannot be replayed; its recorded cases use the top-left of each cell.
        if let Some(t) = &mut opts.tome {
            t.deterministic = true;
        }
    }
    let device = zepo::device::device(backend)?;
    let model_name = args.model.display().to_string();
    let load = LoadOptions { weights: WeightsChoice::parse(&args.weights), ..Default::default() };
    let model = load_dir(&args.model, &device, &load, WeightSource::Checkpoint)?;
    model.check_options(&opts)?;
    // A bundle's precomputed prompts are used as the browser uses them.
    let prompts = embed_prompts(&args.model, &model, &opts.prompt, &opts.negative_prompt)?;

    if let Some(mut r) = replay {
        let mut bar = Bar::new(args.quiet, "stylize");
        let out = model.stylize(&r.content, Style::Image(&r.style), &opts, &prompts, &mut r.noise, &mut bar, None)?;
        drop(bar);
        if r.noise.remaining() != 0 {
            eprintln!("warning: {} recorded draws were not used (options differ from the case?)", r.noise.remaining());
        }
        let text = opts.png_text(opts.size_for(r.content.width, r.content.height), &model_name);
        return save(&out.image, args.out.as_deref(), args.save_tensor.as_deref(), &text);
    }

    let content = args.content.as_deref().expect("clap requires it");
    let style = read_image(args.style.as_deref().expect("clap requires it"))?;
    let out = args.out.as_deref();
    if content.is_dir() {
        let out = out.ok_or_else(|| Error::InvalidOption("--out must name a folder for a folder of contents".into()))?;
        std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
        let mut files: Vec<PathBuf> = std::fs::read_dir(content)
            .map_err(|e| Error::io(content, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| is_image(p))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(Error::InvalidOption(format!("{}: no images (png, jpg, webp, bmp, gif)", content.display())));
        }
        // The style's features are computed once per working size and reused.
        let mut features = std::collections::HashMap::new();
        for file in files {
            let img = read_image(&file)?;
            let size = opts.size_for(img.width, img.height);
            if !features.contains_key(&size) {
                features.insert(size, model.style_features(&style, &opts, size, &prompts, &mut SeededNoise::new(opts.seed))?);
            }
            let mut bar = Bar::new(args.quiet, &file.file_name().unwrap_or_default().to_string_lossy());
            let result = model.stylize(
                &img,
                Style::Features(&features[&size]),
                &opts,
                &prompts,
                &mut SeededNoise::new(opts.seed),
                &mut bar,
                None,
            )?;
            drop(bar);
            let target = out.join(file.with_extension("png").file_name().unwrap());
            write_png(&result.image, &target, &opts.png_text(size, &model_name))?;
            println!("{}", target.display());
        }
        return Ok(());
    }
    let img = read_image(content)?;
    let mut bar = Bar::new(args.quiet, "stylize");
    let noise: &mut dyn NoiseSource = &mut SeededNoise::new(opts.seed);
    let result = model.stylize(&img, Style::Image(&style), &opts, &prompts, noise, &mut bar, None)?;
    drop(bar);
    let text = opts.png_text(opts.size_for(img.width, img.height), &model_name);
    save(&result.image, out, args.save_tensor.as_deref(), &text)
}

fn save(img: &FloatImage, png: Option<&Path>, tensor: Option<&Path>, text: &[(&str, String)]) -> Result<()> {
    if let Some(p) = png {
        write_png(img, p, text)?;
        println!("{}", p.display());
    }
    if let Some(p) = tensor {
        write_tensor(img, p)?;
        println!("{}", p.display());
    }
    Ok(())
}

fn main() -> ExitCode {
    // A bug must still end in one readable line, not a backtrace.
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown".into());
        eprintln!("error: internal error: {msg} (please report it)");
    }));
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Stylize(args) => stylize(args),
        Command::Bench(args) => bench::run(args),
        Command::Unet(args) => unet_cmd::run(args),
        Command::Weights { cmd } => weights_cmd::run(cmd),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The CLI states no default of its own: with no option given it runs `ZepoOptions::default()`.
    #[test]
    fn cli_defaults_are_the_pipelines() {
        let cli =
            Cli::try_parse_from(["zepo", "stylize", "--model", "m", "--content", "c.png", "--style", "s.png", "--out", "o.png"]).unwrap();
        let Command::Stylize(args) = cli.command else { panic!("stylize") };
        assert_eq!(args.options(), ZepoOptions::default());
    }
}
