//! The compact variants' recipes, chosen by measuring the checkpoint being converted
//! (`zepo weights convert --variants q8,mixed`). No data: synthetic latents and images, the
//! bundle's own prompt embedding, ZePo's own first timestep.
//!
//! Each part's outputs (the UNet's prediction; the VAE's encoded latent and decoded image) are
//! measured against the fp16 weights' as Apple's ml-stable-diffusion does:
//! PSNR = 20·log10(max|ref| / RMS(ref − test)). Then:
//! 1. *Sensitivity*: each weight of two or more dimensions is quantized alone with the scheme's
//!    narrowest candidate, the model rebuilt and run; its output noise over its weight noise
//!    (squared errors, computed exactly for every candidate without running anything) is its
//!    sensitivity. The 1-D tensors of an output (norms, biases) are measured as one group.
//! 2. *Recipe*: output noise is taken as the sum of each tensor's sensitivity times its weight
//!    noise; a greedy search starts every unit at its smallest candidate and upgrades the unit
//!    with the least added bytes per noise removed until the estimate meets the target.
//! 3. *Check*: the model with the whole recipe is run; if the measured PSNR misses the target the
//!    budget is tightened by the miss and the search run again (three times at most). The PSNR
//!    reached is what the converter prints and the manifest records.
//!
//! Memory: the part's weights held once in f16 (1.7 GB for the real UNet) and the f32 model
//! the CPU runs (3.4 GB).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use burn::tensor::{Device, Tensor, TensorData};
use half::f16;

use super::convert::{part_files, to_f16};
use crate::models::unet::UNetConfig;
use crate::models::vae::VaeConfig;
use crate::weights::dir::map_file;
use crate::weights::quant::{rows_cols, Quant, DEFAULT_BLOCK};
use crate::weights::{Dtype, LoadOptions, SafetensorsBytes, TensorEntry, VarStore};
use crate::zepo::load::{block_on, Loader, WeightSource};
use crate::Result;

/// A compact scheme: which storage each tensor may get, and the default target.
#[derive(Debug, Clone, PartialEq)]
pub struct Scheme {
    /// The variant's name in the bundle.
    pub name: String,
    /// Candidate packings of weights of two or more dimensions, narrowest first (f16 always
    /// remains a candidate).
    pub candidates: Vec<Quant>,
    /// The output PSNR (dB) the recipe must reach; `None`: every such weight takes the one
    /// candidate, and only the 1-D group is decided (kept f16 unless its measured noise is
    /// under 1% of the rest's).
    pub target_psnr: Option<f64>,
}

/// The default PSNR target of the mixed scheme (dB), the goal for the real model.
pub const DEFAULT_MIXED_TARGET: f64 = 70.0;

impl Scheme {
    /// `q8`: linear 8-bit, blocks of 32 (and `q4` … `q6` alike, for experiments); `mixed`: 4 to
    /// 8 bits per tensor for `target` dB (default [`DEFAULT_MIXED_TARGET`]).
    pub fn named(name: &str, target: Option<f64>) -> Result<Self> {
        let q = |bits| Quant { bits, block: DEFAULT_BLOCK };
        match name {
            "mixed" => Ok(Self {
                name: name.into(),
                candidates: vec![q(4), q(5), q(6), q(8)],
                target_psnr: Some(target.unwrap_or(DEFAULT_MIXED_TARGET)),
            }),
            _ => {
                let quant = Quant::parse(name).map_err(|e| crate::Error::InvalidOption(format!("{e}, or mixed")))?;
                Ok(Self { name: name.into(), candidates: vec![quant], target_psnr: target })
            }
        }
    }
}

/// A part's recipe: each tensor's packing (`None`: f16), and what it reached.
#[derive(Debug, Clone)]
pub struct Recipe {
    pub choice: HashMap<String, Option<Quant>>,
    /// Measured PSNR (dB) of each output (`unet`, `vae.encode`, `vae.decode`) the recipe
    /// changes (one left identical is not listed).
    pub psnr: BTreeMap<String, f64>,
    /// Stored bytes of the part's tensors with this recipe, and in f16.
    pub bytes: u64,
    pub fp16_bytes: u64,
    /// Tensors per packing (`q4`, …, `f16`).
    pub counts: BTreeMap<String, usize>,
    /// Model runs the calibration made.
    pub runs: usize,
}

/// One tensor of the part, in f16 as the bundle holds it.
struct Weight {
    name: String,
    shape: Vec<usize>,
    values: Vec<f16>,
}

impl Weight {
    fn as_f32(&self) -> Vec<f32> {
        self.values.iter().map(|v| v.to_f32()).collect()
    }

    fn stored_bytes(&self, q: Option<Quant>) -> u64 {
        match q {
            Some(q) => q.tensor_bytes(&self.shape) as u64,
            None => 2 * self.values.len() as u64,
        }
    }
}

/// The float tensors of a diffusers part rounded to f16, in source order.
fn read_part(model: &Path, part: &str) -> Result<Vec<Weight>> {
    let mut weights = Vec::new();
    for path in part_files(model, part)? {
        let map = map_file(&path)?;
        let st = SafetensorsBytes::new(&map, path.display().to_string())?;
        for (t, bytes) in st.tensors() {
            if !t.dtype.is_float() {
                continue;
            }
            let mut values = Vec::with_capacity(t.shape.iter().product());
            to_f16(t, bytes, st.name(), &mut |b| {
                values.extend(b.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]])));
                Ok(())
            })?;
            weights.push(Weight { name: t.name.clone(), shape: t.shape.clone(), values });
        }
    }
    Ok(weights)
}

/// What a part's outputs are run on, and how.
enum Runner {
    Unet { sample: Tensor<4>, timestep: f32, context: Tensor<3> },
    Vae { image: Tensor<4>, latent: Tensor<4> },
}

/// One measured output: its name, which tensors affect it, and its fp16 reference.
struct Output {
    name: &'static str,
    owns: fn(&str) -> bool,
    reference: Vec<f32>,
    peak: f64,
}

fn noise(reference: &[f32], test: &[f32]) -> f64 {
    reference.iter().zip(test).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>() / reference.len().max(1) as f64
}

fn psnr(peak: f64, noise: f64) -> f64 {
    if noise == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (peak * peak / noise).log10()
    }
}

fn values(t: Tensor<4>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_into_vec::<f32>().expect("f32 values")
}

/// The part's model, built on the CPU in f32 from `weights`, some of them quantized.
struct Bench<'a> {
    loader: &'a Loader<crate::weights::dir::DirSource>,
    /// The fp16 weights as f32 device tensors, shared by every build.
    base: VarStore,
    weights: HashMap<&'a str, &'a Weight>,
    runner: Runner,
    runs: usize,
}

/// Which weights a run quantizes, and how (the others keep their f16 values).
type Packings<'a> = HashMap<&'a str, Quant>;

/// `w` as a store entry: its f16 values, or those values quantized and dequantized by `q`.
fn entry_of(w: &Weight, q: Option<Quant>) -> (TensorEntry, Vec<u8>) {
    let (dtype, bytes): (Dtype, Vec<u8>) = match q {
        None => (Dtype::F16, w.values.iter().flat_map(|x| x.to_le_bytes()).collect()),
        Some(q) => (Dtype::F32, q.round_trip(&w.as_f32(), rows_cols(&w.shape).1).iter().flat_map(|x| x.to_le_bytes()).collect()),
    };
    (TensorEntry { name: w.name.clone(), dtype, shape: w.shape.clone(), start: 0, end: bytes.len() as u64 }, bytes)
}

impl<'a> Bench<'a> {
    fn new(
        loader: &'a Loader<crate::weights::dir::DirSource>,
        device: &Device,
        part: &str,
        weights: &'a [Weight],
        runner: Runner,
    ) -> Result<Self> {
        let mut base = VarStore::new(device, &LoadOptions::default(), format!("{part} (calibration)"));
        for w in weights {
            let (entry, bytes) = entry_of(w, None);
            base.insert(&entry, &bytes, "calibration")?;
        }
        let weights = weights.iter().map(|w| (w.name.as_str(), w)).collect();
        Ok(Self { loader, base, weights, runner, runs: 0 })
    }

    /// Every output's values with the weights in `over` quantized. The model is held once: the
    /// quantized weights replace the base's for the run (each made and uploaded one at a
    /// time), and the f16 ones are restored after it.
    fn run(&mut self, over: &Packings) -> Result<Vec<Vec<f32>>> {
        self.runs += 1;
        for name in over.keys() {
            self.base.remove(name);
        }
        let mut store = self.base.share();
        for (name, q) in over {
            let (entry, bytes) = entry_of(self.weights[name], Some(*q));
            store.insert(&entry, &bytes, "calibration")?;
        }
        let outputs = self.outputs(store);
        for name in over.keys() {
            let (entry, bytes) = entry_of(self.weights[name], None);
            self.base.insert(&entry, &bytes, "calibration")?;
        }
        outputs
    }

    fn outputs(&self, store: VarStore) -> Result<Vec<Vec<f32>>> {
        match &self.runner {
            Runner::Unet { sample, timestep, context } => {
                let (unet, _) = block_on(self.loader.unet_from_store(store))?;
                Ok(vec![values(unet.forward(sample.clone(), &[*timestep], context))])
            }
            Runner::Vae { image, latent } => {
                let vae = block_on(self.loader.vae_from_store(store))?.0;
                Ok(vec![values(vae.encode(image.clone()).mean), values(vae.decode(latent.clone()))])
            }
        }
    }
}

/// The weights the UNet fuses into one projection (`nn::fuse_linears`): they take one packing.
const FUSED_TIME_PROJECTION: &str = "time_emb_proj.weight";

/// A unit of the search: tensors that take one packing together.
struct Unit {
    tensors: Vec<usize>,
    output: usize,
    /// `(packing, stored bytes, estimated output noise)`, by bytes ascending; the last is f16.
    options: Vec<(Option<Quant>, u64, f64)>,
}

/// Calibrates `part` (`unet` or `vae`) of the diffusers checkpoint in `model` for `scheme`;
/// `context` is the default prompt's embedding `[positions, hidden]` (the bundle's own).
pub fn calibrate(
    model: &Path,
    part: &str,
    scheme: &Scheme,
    context: &[f32],
    context_shape: [usize; 2],
    progress: &mut dyn FnMut(&str),
) -> Result<Recipe> {
    let device = crate::device::device(crate::device::Backend::Cpu)?;
    let loader = Loader::dir(model, &device, &LoadOptions::default(), WeightSource::Checkpoint)?;
    let weights = read_part(model, part)?;
    let normal = |seed: u64, shape: [usize; 4], scale: f32| -> Tensor<4> {
        use rand::SeedableRng;
        use rand_distr::{Distribution as _, Normal};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| Normal::new(0.0f32, scale).unwrap().sample(&mut rng)).collect();
        Tensor::from_data(TensorData::new(v, shape), &device)
    };
    let (runner, outputs): (Runner, Vec<(&'static str, fn(&str) -> bool)>) = match part {
        "unet" => {
            let cfg: UNetConfig = block_on(loader.config("unet"))?;
            let side = CALIBRATION_LATENT.min(cfg.sample_size.unwrap_or(CALIBRATION_LATENT)).max(8);
            let options = crate::zepo::ZepoOptions::default();
            let mut scheduler = block_on(loader.scheduler())?;
            let timestep = scheduler.zepo_timesteps(options.steps, options.strength)?[0] as f32;
            let context = Tensor::<3>::from_data(TensorData::new(context.to_vec(), [1, context_shape[0], context_shape[1]]), &device);
            let sample = normal(1, [1, cfg.in_channels, side, side], 1.0);
            (Runner::Unet { sample, timestep, context }, vec![("unet", |_| true)])
        }
        "vae" => {
            let cfg: VaeConfig = block_on(loader.config("vae"))?;
            let side = CALIBRATION_LATENT;
            let down = 1 << (cfg.block_out_channels.len() - 1);
            let image = synthetic_image([1, cfg.in_channels, side * down, side * down], &device);
            let latent = normal(2, [1, cfg.latent_channels, side, side], 1.0 / cfg.scaling_factor as f32);
            let encode: fn(&str) -> bool = |n| n.starts_with("encoder.") || n.starts_with("quant_conv.");
            let decode: fn(&str) -> bool = |n| n.starts_with("decoder.") || n.starts_with("post_quant_conv.");
            (Runner::Vae { image, latent }, vec![("vae.encode", encode), ("vae.decode", decode)])
        }
        other => return Err(crate::Error::InvalidOption(format!("no calibration for the part `{other}`"))),
    };
    let mut bench = Bench::new(&loader, &device, part, &weights, runner)?;
    let reference = bench.run(&HashMap::new())?;
    let outputs: Vec<Output> = outputs
        .into_iter()
        .zip(reference)
        .map(|((name, owns), reference)| {
            let peak = reference.iter().fold(0f64, |m, v| m.max(v.abs() as f64));
            Output { name, owns, reference, peak }
        })
        .collect();

    // The units: each weight of 2+ dimensions alone, except the resnets' time projections,
    // which the UNet runs as one fused projection (one packing keeps it compact on the GPU);
    // the 1-D tensors of each output together.
    let output_of = |name: &str| outputs.iter().position(|o| (o.owns)(name));
    let mut units: Vec<Unit> = Vec::new();
    let mut vectors: Vec<Vec<usize>> = vec![Vec::new(); outputs.len()];
    let mut fused: HashMap<usize, usize> = HashMap::new();
    for (i, w) in weights.iter().enumerate() {
        let Some(o) = output_of(&w.name) else { continue };
        if w.shape.len() >= 2 && w.name.ends_with(FUSED_TIME_PROJECTION) {
            match fused.get(&o) {
                Some(&u) => units[u].tensors.push(i),
                None => {
                    fused.insert(o, units.len());
                    units.push(Unit { tensors: vec![i], output: o, options: Vec::new() });
                }
            }
        } else if w.shape.len() >= 2 {
            units.push(Unit { tensors: vec![i], output: o, options: Vec::new() });
        } else {
            vectors[o].push(i);
        }
    }
    units.extend(vectors.into_iter().enumerate().filter(|(_, v)| !v.is_empty()).map(|(o, tensors)| Unit {
        tensors,
        output: o,
        options: Vec::new(),
    }));
    let vector_candidates = [Quant { bits: 8, block: DEFAULT_BLOCK }];

    // 1. Sensitivities, with the narrowest candidate. Every candidate's weight noise first
    // (exact, no model run), on all cores.
    progress(&format!(
        "{part}: measuring {} units' effect on {}",
        units.len(),
        outputs.iter().map(|o| o.name).collect::<Vec<_>>().join(" and ")
    ));
    let candidates_of = |unit: &Unit| -> &[Quant] {
        if weights[unit.tensors[0]].shape.len() < 2 {
            &vector_candidates
        } else {
            &scheme.candidates
        }
    };
    let noises: Vec<Vec<f64>> = parallel_map(&units, |unit| {
        // Each tensor's values widened once, for every candidate.
        let values: Vec<(Vec<f32>, usize)> = unit.tensors.iter().map(|&i| (weights[i].as_f32(), rows_cols(&weights[i].shape).1)).collect();
        candidates_of(unit).iter().map(|q| values.iter().map(|(v, k)| q.squared_error(v, *k)).sum()).collect()
    });
    let total = units.len();
    for (u, unit) in units.iter_mut().enumerate() {
        let candidates = candidates_of(unit).to_vec();
        let probe = candidates[0];
        let over: Packings = unit.tensors.iter().map(|&i| (weights[i].name.as_str(), probe)).collect();
        // Without a target only the 1-D groups are decided by measurement: every other unit
        // takes the one candidate, and its run would decide nothing.
        let is_vector = weights[unit.tensors[0]].shape.len() < 2;
        let measured = if scheme.target_psnr.is_none() && !is_vector {
            f64::NAN
        } else {
            noise(&outputs[unit.output].reference, &bench.run(&over)?[unit.output])
        };
        let sensitivity = if noises[u][0] > 0.0 { measured / noises[u][0] } else { 0.0 };
        let mut options: Vec<(Option<Quant>, u64, f64)> = candidates
            .iter()
            .zip(&noises[u])
            .map(|(&q, &wn)| {
                let bytes = unit.tensors.iter().map(|&i| weights[i].stored_bytes(Some(q))).sum();
                (Some(q), bytes, if q == probe { measured } else { sensitivity * wn })
            })
            .collect();
        options.push((None, unit.tensors.iter().map(|&i| weights[i].stored_bytes(None)).sum(), 0.0));
        options.sort_by_key(|o| o.1);
        unit.options = options;
        if (u + 1) % 25 == 0 || u + 1 == total {
            progress(&format!("{part}: {}/{total} measured", u + 1));
        }
    }

    // 2 and 3. The recipe and its check.
    let mut level: Vec<usize> = vec![0; units.len()];
    let mut psnrs: BTreeMap<String, f64> = BTreeMap::new();
    for (o, out) in outputs.iter().enumerate() {
        let mine: Vec<usize> = (0..units.len()).filter(|&u| units[u].output == o).collect();
        match scheme.target_psnr {
            None => {
                // One candidate: every weight takes it; the 1-D group only if its measured noise is
                // under 1% of the whole recipe's (measured with the group in f16).
                let vector_units: Vec<usize> = mine.iter().copied().filter(|&u| weights[units[u].tensors[0]].shape.len() < 2).collect();
                for &u in &mine {
                    level[u] = if vector_units.contains(&u) { units[u].options.len() - 1 } else { 0 };
                }
                let rest = noise(&out.reference, &measure(&mut bench, &weights, &units, &level, o)?);
                for &u in &mine {
                    let vector = weights[units[u].tensors[0]].shape.len() < 2;
                    let quantized = units[u].options.iter().position(|opt| opt.0.is_some()).unwrap_or(0);
                    level[u] = if !vector || units[u].options[quantized].2 < 0.01 * rest { quantized } else { units[u].options.len() - 1 };
                }
            }
            Some(target) => {
                // What other targets would cost, from the same measurements (estimates: only
                // the chosen target's recipe is run and checked).
                let curve: Vec<String> = [40.0, 45.0, 50.0, 55.0, 60.0, 65.0, 70.0, 75.0]
                    .iter()
                    .map(|&t| {
                        let mut trial = level.clone();
                        solve(&units, &mine, out.peak * out.peak * 10f64.powf(-t / 10.0), &mut trial);
                        let bytes: u64 = mine.iter().map(|&u| units[u].options[trial[u]].1).sum();
                        let f16: u64 = mine.iter().map(|&u| units[u].options.last().map_or(0, |o| o.1)).sum();
                        format!("{t} dB {:.0}%", 100.0 * bytes as f64 / f16.max(1) as f64)
                    })
                    .collect();
                progress(&format!("{part}: {} estimated size against f16 by target: {}", out.name, curve.join(", ")));
                let mut budget = out.peak * out.peak * 10f64.powf(-target / 10.0);
                for attempt in 0..4 {
                    solve(&units, &mine, budget, &mut level);
                    let measured = measure(&mut bench, &weights, &units, &level, o)?;
                    let reached = psnr(out.peak, noise(&out.reference, &measured));
                    progress(&format!("{part}: {} recipe for {target} dB reached {reached:.1} dB (try {})", out.name, attempt + 1));
                    if reached >= target {
                        break;
                    }
                    let actual = noise(&out.reference, &measured);
                    budget *= (out.peak * out.peak * 10f64.powf(-target / 10.0) / actual).min(0.9);
                }
            }
        }
    }
    // The whole recipe, measured on every output.
    let measured = measure_all(&mut bench, &weights, &units, &level)?;
    for (o, out) in outputs.iter().enumerate() {
        // An output the recipe leaves identical (every weight it depends on kept f16) has no
        // finite PSNR: it is not listed.
        let db = psnr(out.peak, noise(&out.reference, &measured[o]));
        if db.is_finite() {
            psnrs.insert(out.name.to_string(), db);
        }
    }

    let mut choice: HashMap<String, Option<Quant>> = weights.iter().map(|w| (w.name.clone(), None)).collect();
    for (u, unit) in units.iter().enumerate() {
        for &i in &unit.tensors {
            choice.insert(weights[i].name.clone(), unit.options[level[u]].0);
        }
    }
    let mut counts = BTreeMap::new();
    for q in choice.values() {
        *counts.entry(q.map_or("f16".to_string(), |q| q.name())).or_insert(0) += 1;
    }
    let bytes = weights.iter().map(|w| w.stored_bytes(choice[&w.name])).sum();
    let fp16_bytes = weights.iter().map(|w| w.stored_bytes(None)).sum();
    Ok(Recipe { choice, psnr: psnrs, bytes, fp16_bytes, counts, runs: bench.runs })
}

/// The latent side the calibration runs at: 16 (a 128² image; a UNet of a smaller sample size
/// at that, down to 8).
const CALIBRATION_LATENT: usize = 16;

/// A smooth synthetic picture in [-1, 1] with some texture: gradients, a disc and noise.
fn synthetic_image(shape: [usize; 4], device: &Device) -> Tensor<4> {
    use rand::SeedableRng;
    use rand_distr::{Distribution as _, Normal};
    let [b, c, h, w] = shape;
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let grain = Normal::new(0.0f32, 0.1).unwrap();
    let mut v = Vec::with_capacity(b * c * h * w);
    for _ in 0..b {
        for ch in 0..c {
            for y in 0..h {
                for x in 0..w {
                    let (fy, fx) = (y as f32 / h as f32, x as f32 / w as f32);
                    let disc = if (fx - 0.5).powi(2) + (fy - 0.45).powi(2) < 0.08 { 0.6 } else { -0.2 };
                    let wave = (fx * 6.0 + ch as f32).sin() * 0.3 + (fy * 4.0).cos() * 0.2;
                    v.push((disc + wave + grain.sample(&mut rng)).clamp(-1.0, 1.0));
                }
            }
        }
    }
    Tensor::from_data(TensorData::new(v, shape), device)
}

/// `f` of every item, on all cores (in order).
fn parallel_map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).max(1);
    let chunk = items.len().div_ceil(threads).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = items.chunks(chunk).map(|c| s.spawn(|| c.iter().map(&f).collect::<Vec<R>>())).collect();
        handles.into_iter().flat_map(|h| h.join().expect("a calibration thread")).collect()
    })
}

/// Greedy: every unit of `mine` from its smallest option, upgrading the one with the most
/// noise removed per byte added until the estimate fits `budget`.
fn solve(units: &[Unit], mine: &[usize], budget: f64, level: &mut [usize]) {
    for &u in mine {
        level[u] = 0;
    }
    let estimate = |level: &[usize]| mine.iter().map(|&u| units[u].options[level[u]].2).sum::<f64>();
    let mut est = estimate(level);
    while est > budget {
        let best = mine
            .iter()
            .filter(|&&u| level[u] + 1 < units[u].options.len())
            .map(|&u| {
                let (now, next) = (&units[u].options[level[u]], &units[u].options[level[u] + 1]);
                let gain = now.2 - next.2;
                let cost = (next.1 - now.1).max(1) as f64;
                (u, gain / cost)
            })
            .max_by(|a, b| a.1.total_cmp(&b.1));
        let Some((u, _)) = best else { break };
        level[u] += 1;
        est = estimate(level);
    }
}

fn recipe_weights<'a>(weights: &'a [Weight], units: &[Unit], level: &[usize], only: Option<usize>) -> Packings<'a> {
    let mut over = HashMap::new();
    for (u, unit) in units.iter().enumerate() {
        if only.is_some_and(|o| unit.output != o) {
            continue;
        }
        if let Some(q) = unit.options[level[u]].0 {
            for &i in &unit.tensors {
                over.insert(weights[i].name.as_str(), q);
            }
        }
    }
    over
}

fn measure(bench: &mut Bench, weights: &[Weight], units: &[Unit], level: &[usize], output: usize) -> Result<Vec<f32>> {
    Ok(bench.run(&recipe_weights(weights, units, level, Some(output)))?.swap_remove(output))
}

fn measure_all(bench: &mut Bench, weights: &[Weight], units: &[Unit], level: &[usize]) -> Result<Vec<Vec<f32>>> {
    bench.run(&recipe_weights(weights, units, level, None))
}

impl std::fmt::Display for Recipe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let counts: Vec<String> = self.counts.iter().map(|(k, v)| format!("{v} {k}")).collect();
        let psnr: Vec<String> = self.psnr.iter().map(|(k, v)| format!("{k} {v:.1} dB")).collect();
        write!(
            f,
            "{:.1} MB ({:.1}% of f16, {:.2} bits per weight): {}; PSNR against fp16: {}",
            self.bytes as f64 / 1e6,
            100.0 * self.bytes as f64 / self.fp16_bytes as f64,
            16.0 * self.bytes as f64 / self.fp16_bytes as f64,
            counts.join(", "),
            psnr.join(", ")
        )
    }
}
