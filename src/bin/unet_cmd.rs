//! `zepo unet`: one UNet call on seeded inputs, written with its inputs to a safetensors file,
//! so that another engine (the browser's, another backend) can be checked against it on the
//! same call, at any model size.

use std::path::PathBuf;
use std::time::Instant;

use burn::tensor::{Tensor, TensorData};
use clap::Args;
use zepo::device::Backend;
use zepo::zepo::load::{block_on, Loader, WeightSource};
use zepo::{Error, Result};

#[derive(Args)]
pub struct UnetArgs {
    /// Model directory: diffusers layout or an fp16 bundle (only the UNet is loaded).
    #[arg(long)]
    model: PathBuf,
    /// Image size in pixels: the latent is size/8 on a side.
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Batch (2: the two halves of a classifier-free-guidance call).
    #[arg(long, default_value_t = 2)]
    batch: usize,
    #[arg(long, default_value_t = 499.0)]
    timestep: f32,
    /// Seed of the sample and context (standard normal).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[arg(long, default_value = "cpu")]
    backend: String,
    /// A bundle's weights: auto (the smallest), fp16, or a compact variant (q8, mixed, …).
    #[arg(long, default_value = "auto")]
    weights: String,
    /// Calls to time (the first one includes compiling the GPU's pipelines).
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// Output safetensors file: `sample`, `timesteps`, `context`, `output` (f32).
    #[arg(long)]
    out: PathBuf,
}

const MIB: f64 = (1 << 20) as f64;

/// The device allocator's bytes in use and reserved (its pools keep what a call needed: after
/// a call, reserved is its peak), where the backend reports them.
fn memory(device: &burn::tensor::Device, when: &str) -> String {
    device.memory_pool_usage().map_or_else(String::new, |u| {
        format!("; device memory {when}: {:.0} MiB in use, {:.0} MiB reserved", u.bytes_in_use as f64 / MIB, u.bytes_reserved as f64 / MIB)
    })
}

fn normal(n: usize, seed: u64) -> Vec<f32> {
    use rand::SeedableRng;
    use rand_distr::Distribution;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n).map(|_| rand_distr::StandardNormal.sample(&mut rng)).collect()
}

pub fn run(args: UnetArgs) -> Result<()> {
    if args.size == 0 || args.size % 8 != 0 || args.batch == 0 {
        return Err(Error::InvalidOption("--size must be a positive multiple of 8, --batch at least 1".into()));
    }
    let device = zepo::device::device(args.backend.parse::<Backend>()?)?;
    let t = Instant::now();
    let load = zepo::weights::LoadOptions { weights: zepo::weights::bundle::WeightsChoice::parse(&args.weights), ..Default::default() };
    let loader = Loader::dir(&args.model, &device, &load, WeightSource::Checkpoint)?;
    let (unet, cfg) = block_on(loader.unet())?;
    eprintln!(
        "UNet loaded in {:.1} s ({} weights, {:.0} MiB on the device){}",
        t.elapsed().as_secs_f64(),
        loader.layout.variant(),
        loader.weight_bytes() as f64 / MIB,
        memory(&device, "after load")
    );
    let lat = args.size / 8;
    let sample_shape = [args.batch, cfg.in_channels, lat, lat];
    let context_shape = [args.batch, 77, cfg.cross_attention_dim];
    let sample = normal(sample_shape.iter().product(), args.seed);
    let context = normal(context_shape.iter().product(), args.seed.wrapping_add(1));
    let timesteps = vec![args.timestep; args.batch];
    let mut output = Vec::new();
    for _ in 0..args.repeat.max(1) {
        let t = Instant::now();
        let out = unet.forward(
            Tensor::<4>::from_data(TensorData::new(sample.clone(), sample_shape), &device),
            &timesteps,
            &Tensor::<3>::from_data(TensorData::new(context.clone(), context_shape), &device),
        );
        output =
            out.into_data().convert::<f32>().try_into_vec::<f32>().map_err(|e| Error::Device(format!("reading the UNet output: {e:?}")))?;
        eprintln!("UNet call {sample_shape:?}: {:.2} s{}", t.elapsed().as_secs_f64(), memory(&device, "after the call"));
    }
    let bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let tensors = [
        ("sample", sample_shape.to_vec(), bytes(&sample)),
        ("timesteps", vec![args.batch], bytes(&timesteps)),
        ("context", context_shape.to_vec(), bytes(&context)),
        ("output", sample_shape.to_vec(), bytes(&output)),
    ];
    let views = tensors
        .iter()
        .map(|(name, shape, b)| safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), b).map(|v| (*name, v)))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::Device(format!("{e:?}")))?;
    safetensors::serialize_to_file(views, &None, &args.out).map_err(|e| Error::Device(format!("writing {}: {e}", args.out.display())))?;
    println!("{}", args.out.display());
    Ok(())
}
