//! `zepo bench`: full-size models with random weights (configs only), timed per part and per
//! pipeline stage, per backend. Numbers, never assertions.

use std::path::PathBuf;
use std::time::Instant;

use burn::tensor::{DType, Device, FloatDType, Tensor, TensorData};
use clap::Args;
use zepo::device::Backend;
use zepo::nn::profile;
use zepo::weights::LoadOptions;
use zepo::zepo::image::RgbImage;
use zepo::zepo::load::{load_scheduler, load_text, load_unet, load_vae, WeightSource};
use zepo::zepo::noise::SeededNoise;
use zepo::zepo::pipeline::{PromptEmbeddings, Style, Zepo};
use zepo::zepo::progress::{Observer, Progress, Stage};
use zepo::zepo::ZepoOptions;
use zepo::{Error, Result};

#[derive(Args)]
pub struct BenchArgs {
    /// Model directory: only the config.json files are read (weights are random).
    #[arg(long, default_value = "weights/lcm-dreamshaper-v7")]
    config: PathBuf,
    /// Backends, comma-separated.
    #[arg(long, default_value = "cpu", value_delimiter = ',')]
    backend: Vec<String>,
    /// Image sizes, comma-separated.
    #[arg(long, default_value = "256,512", value_delimiter = ',')]
    sizes: Vec<usize>,
    /// Steps N of the pipeline runs, comma-separated (0: parts only).
    #[arg(long, default_value = "2,4", value_delimiter = ',')]
    steps: Vec<usize>,
    /// Time each part this many times (after one warm-up) and report the best.
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// Parts to time, comma-separated (unet, unet2: a CFG pair, as the pipeline calls it,
    /// encode, decode); e.g. `--parts unet --steps 0` for a UNet-only profile, `--parts none`
    /// for a stylization's own peak memory.
    #[arg(long, default_value = "unet,encode,decode", value_delimiter = ',')]
    parts: Vec<String>,
    /// Compute precision: f32, or f16 (weights and activations; GPU backends with f16).
    #[arg(long, default_value = "f32")]
    precision: String,
    /// After timing each part, run it once more op by op and print where its time went
    /// (convolutions by shape, attention, norms, matmuls; GFLOP/s and GB/s against this CPU's
    /// measured peaks). CPU backend only: GPU calls return before their work is done.
    #[arg(long)]
    profile: bool,
}

/// Prints one part's profile: its heaviest operations, then totals by kind, each against the
/// CPU's measured GEMM and copy peaks; what no layer scope covers (adds, copies, layout
/// changes, upsampling, allocation) is the remainder of the part's wall time.
fn print_profile(part: &str, wall: f64, table: std::collections::BTreeMap<String, profile::Entry>, (gflops, gbps): (f64, f64)) {
    let mut rows: Vec<(String, profile::Entry)> = table.into_iter().collect();
    rows.sort_by(|a, b| b.1.seconds.total_cmp(&a.1.seconds));
    println!("  profile of {part}: {wall:.3} s (CPU peaks measured: GEMM {gflops:.0} GFLOP/s, copy {gbps:.1} GB/s)");
    println!("  {:<44} {:>5} {:>8} {:>6} {:>8} {:>6} {:>7}", "operation", "calls", "ms", "share", "GFLOP/s", "%peak", "GB/s");
    let line = |name: &str, e: &profile::Entry| {
        let (f, b) = (e.flops / e.seconds / 1e9, e.bytes / e.seconds / 1e9);
        let (f, pk) = if e.flops > 0.0 { (format!("{f:.1}"), format!("{:.0}%", 100.0 * f / gflops)) } else { ("".into(), "".into()) };
        println!("  {name:<44} {:>5} {:>8.1} {:>5.1}% {f:>8} {pk:>6} {:>7.1}", e.calls, 1e3 * e.seconds, 100.0 * e.seconds / wall, b);
    };
    let shown = rows.len().min(20);
    for (k, e) in &rows[..shown] {
        line(k, e);
    }
    if rows.len() > shown {
        println!("  … {} more", rows.len() - shown);
    }
    let kind = |k: &str| -> &'static str {
        match k {
            _ if k.starts_with("conv 1×1") => "conv 1×1",
            _ if k.starts_with("conv") => "conv 3×3",
            _ if k.starts_with("attention") => "attention (scores, softmax, ·v)",
            _ if k.starts_with("linear") => "linear (projections, MLP)",
            _ if k.starts_with("group norm") => "group norm (+ SiLU)",
            _ if k.starts_with("layer norm") => "layer norm",
            _ => "other scopes",
        }
    };
    let mut kinds: std::collections::BTreeMap<&str, profile::Entry> = Default::default();
    for (k, e) in &rows {
        let t = kinds.entry(kind(k)).or_default();
        t.calls += e.calls;
        t.seconds += e.seconds;
        t.flops += e.flops;
        t.bytes += e.bytes;
    }
    println!("  by kind:");
    let covered: f64 = kinds.values().map(|e| e.seconds).sum();
    for (k, e) in &kinds {
        line(k, e);
    }
    let rest = profile::Entry { calls: 0, seconds: (wall - covered).max(0.0), flops: 0.0, bytes: 0.0 };
    line("rest: adds, copies, layout, upsampling, alloc", &rest);
}

fn sync(device: &Device) -> Result<()> {
    device.sync().map_err(|e| Error::Device(format!("{e:?}")))
}

/// CPU time (user + system, all threads) this process has used so far, in seconds (Linux;
/// NaN elsewhere). Steadier than wall time on a shared machine.
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return f64::NAN };
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(f64::NAN);
    // Linux reports these in USER_HZ, 100 on every mainstream configuration.
    (ticks(11) + ticks(12)) / 100.0
}

/// Wall and CPU time of the fastest (by wall) of `repeat` runs after one warm-up, in seconds.
fn time<T>(device: &Device, repeat: usize, mut f: impl FnMut() -> T) -> Result<(f64, f64)> {
    let _ = f();
    sync(device)?;
    let mut best = (f64::INFINITY, f64::INFINITY);
    for _ in 0..repeat.max(1) {
        let (start, cpu) = (Instant::now(), cpu_seconds());
        let out = f();
        sync(device)?;
        drop(out);
        let t = (start.elapsed().as_secs_f64(), cpu_seconds() - cpu);
        if t.0 < best.0 {
            best = t;
        }
    }
    Ok(best)
}

/// Peak resident memory of this process (Linux), in MiB.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn device_mib(device: &Device) -> Option<f64> {
    device.memory_pool_usage().map(|u| u.bytes_reserved as f64 / (1 << 20) as f64)
}

fn random(shape: [usize; 4], seed: u64, device: &Device, dtype: DType) -> Tensor<4> {
    use rand::SeedableRng;
    use rand_distr::Distribution;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let n = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rand_distr::StandardNormal.sample(&mut rng)).collect();
    Tensor::from_data(TensorData::new(v, shape), (device, dtype))
}

/// Times every stage of a stylization through the observer.
struct StageClock {
    start: Instant,
    last: Instant,
    stages: Vec<(Stage, f64)>,
    current: Option<Stage>,
    device: Device,
}

impl Observer for StageClock {
    fn progress(&mut self, p: Progress) {
        let _ = self.device.sync();
        let now = Instant::now();
        let dt = (now - self.last).as_secs_f64();
        self.last = now;
        // The time since the last report was spent in the stage that report announced.
        if let Some(stage) = self.current.replace(p.stage) {
            match self.stages.last_mut() {
                Some((s, t)) if *s == stage => *t += dt,
                _ => self.stages.push((stage, dt)),
            }
        }
    }
}

pub fn run(args: BenchArgs) -> Result<()> {
    let dir = &args.config;
    if let Some(p) = args.parts.iter().find(|p| !["unet", "unet2", "encode", "decode", "none"].contains(&p.as_str())) {
        return Err(Error::InvalidOption(format!("--parts: unknown part {p:?} (unet, unet2, encode, decode, or none)")));
    }
    println!("zepo bench: random weights, configs from {}", dir.display());
    println!("threads: {}", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    let dtype = match args.precision.as_str() {
        "f32" => DType::F32,
        "f16" => DType::F16,
        other => return Err(Error::InvalidOption(format!("--precision {other}: f32 or f16"))),
    };
    let opts = LoadOptions { dtype, ..Default::default() };
    if args.profile && args.backend.iter().any(|b| b != "cpu") {
        return Err(Error::InvalidOption("--profile times the CPU backend only (a GPU call returns before its work is done)".into()));
    }
    let peaks = if args.profile { profile::cpu_peaks() } else { (f64::NAN, f64::NAN) };
    for name in &args.backend {
        let backend: Backend = name.parse()?;
        let mut device = zepo::device::device(backend)?;
        if dtype == DType::F16 {
            // Before any tensor: the device's float dtype is set once.
            device.configure(FloatDType::F16).map_err(|e| Error::InvalidOption(format!("{name} cannot compute in f16: {e:?}")))?;
        }
        let adapter = zepo::device::wgpu_adapter().filter(|_| backend == Backend::Wgpu).map(|a| format!(" ({a})")).unwrap_or_default();
        println!("\n== backend {name}{adapter}, {}", args.precision);
        let t = Instant::now();
        let unet = load_unet(dir, &device, &opts, WeightSource::Random(1))?;
        let vae = load_vae(dir, &device, &opts, WeightSource::Random(2))?;
        let text = load_text(dir, &device, &opts, WeightSource::Random(3))?;
        sync(&device)?;
        println!("build full-size models (random weights): {:.1} s", t.elapsed().as_secs_f64());
        let model = Zepo::new(unet, vae, Some(text), load_scheduler(dir)?, device.clone());
        let prompts: PromptEmbeddings = model.embed_prompts("face", "")?;
        let ctx = prompts.cond.clone();

        for &size in &args.sizes {
            let lat = size / 8;
            let x = random([1, 3, size, size], 1, &device, dtype);
            let z = random([1, 4, lat, lat], 2, &device, dtype);
            let part = |name: &str| args.parts.iter().any(|p| p == name);
            let mut parts = vec![];
            let mut profiles = vec![];
            let mut timed = |name: &str, f: &mut dyn FnMut() -> Tensor<4>| -> Result<()> {
                let (s, c) = time(&device, args.repeat, &mut *f)?;
                parts.push(format!("{name} {s:.3} s (cpu {c:.2} s)"));
                if args.profile {
                    profile::enable(true);
                    let start = Instant::now();
                    drop(f());
                    sync(&device)?;
                    let wall = start.elapsed().as_secs_f64();
                    profile::enable(false);
                    profiles.push((format!("{name}, {size}²"), wall, profile::take()));
                }
                Ok(())
            };
            if part("unet") {
                timed("UNet forward (1 image)", &mut || model.unet.forward(z.clone(), &[499.0], &ctx))?;
            }
            if part("unet2") {
                let (z2, ctx2) = (Tensor::cat(vec![z.clone(), z.clone()], 0), Tensor::cat(vec![prompts.uncond.clone(), ctx.clone()], 0));
                timed("UNet forward (2 images)", &mut || model.unet.forward(z2.clone(), &[499.0, 499.0], &ctx2))?;
            }
            if part("encode") {
                timed("VAE encode", &mut || model.vae.encode(x.clone()).mean)?;
            }
            if part("decode") {
                timed("VAE decode", &mut || model.vae.decode(z.clone()))?;
            }
            println!(
                "{size}²: {} | peak RSS {:.0} MiB{}",
                parts.join(" | "),
                peak_rss_mib().unwrap_or(f64::NAN),
                device_mib(&device).map(|m| format!(" | device pool {m:.0} MiB")).unwrap_or_default()
            );
            for (name, wall, table) in profiles {
                print_profile(&name, wall, table, peaks);
            }
            for &n in args.steps.iter().filter(|&&n| n > 0) {
                let opts = ZepoOptions { resolution: size, steps: n, ..Default::default() };
                let img =
                    |seed: u8| RgbImage::new(size, size, (0..size * size * 3).map(|i| (i as u8).wrapping_mul(seed)).collect()).unwrap();
                let (content, style) = (img(3), img(7));
                model.reset_counters();
                let cpu = cpu_seconds();
                let mut clock =
                    StageClock { start: Instant::now(), last: Instant::now(), stages: vec![], current: None, device: device.clone() };
                profile::enable(args.profile);
                model.stylize(&content, Style::Image(&style), &opts, &prompts, &mut SeededNoise::new(0), &mut clock, None)?;
                let total = clock.start.elapsed().as_secs_f64();
                let total_cpu = cpu_seconds() - cpu;
                profile::enable(false);
                let table = profile::take();
                let c = model.counters();
                let stages: Vec<String> = clock.stages.iter().map(|(s, t)| format!("{} {t:.2}", s.name())).collect();
                println!(
                    "{size}², N={n}: stylize {total:.2} s (cpu {total_cpu:.1} s) [{}] | UNet image-evaluations {} (reference {}) | VAE {} encodes, {} decodes (reference 3 + 3) | peak RSS {:.0} MiB",
                    stages.join(", "),
                    c.unet_evals,
                    6 * n,
                    c.vae_encodes,
                    c.vae_decodes,
                    peak_rss_mib().unwrap_or(f64::NAN)
                );
                if args.profile {
                    print_profile(&format!("stylization, {size}², N={n} (timed above with the profile on)"), total, table, peaks);
                }
            }
        }
    }
    Ok(())
}
