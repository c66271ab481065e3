//! Loading checkpoints as they come: sharded (`*.safetensors.index.json`), in f16 / bf16 (cast to
//! the compute dtype), and broken files (clear errors naming the file, never a panic).

use std::collections::BTreeMap;
use std::path::Path;

use crate::common::*;
use zepo::weights::{Dtype, LoadOptions, SafetensorsBytes};
use zepo::zepo::load::load_part;
use zepo::zepo::load::{load_unet, load_vae, WeightSource};

fn scratch(tag: &str) -> Scratch {
    Scratch::new(&format!("weights-{tag}"))
}

/// A copy of the tiny model's `part` with its tensors re-encoded by `f` and split in `shards`.
fn rewrite(part: &str, dir: &Path, shards: usize, f: impl Fn(&[u8]) -> (safetensors::Dtype, Vec<u8>)) {
    let src = tiny_model().join(part);
    std::fs::create_dir_all(dir.join(part)).unwrap();
    std::fs::copy(src.join("config.json"), dir.join(part).join("config.json")).unwrap();
    let bytes = std::fs::read(src.join("diffusion_pytorch_model.safetensors")).unwrap();
    let st = SafetensorsBytes::new(bytes, "src").unwrap();
    let all: Vec<_> = st.tensors().map(|(e, b)| (e.name.clone(), e.shape.clone(), f(b))).collect();
    let per = all.len().div_ceil(shards);
    let mut index = BTreeMap::new();
    for (i, chunk) in all.chunks(per).enumerate() {
        let name = if shards == 1 {
            "diffusion_pytorch_model.safetensors".to_string()
        } else {
            format!("diffusion_pytorch_model-{:05}-of-{shards:05}.safetensors", i + 1)
        };
        let views: Vec<_> =
            chunk.iter().map(|(n, s, (dt, b))| (n.clone(), safetensors::tensor::TensorView::new(*dt, s.clone(), b).unwrap())).collect();
        std::fs::write(dir.join(part).join(&name), safetensors::serialize(views, &None).unwrap()).unwrap();
        for (n, _, _) in chunk {
            index.insert(n.clone(), name.clone());
        }
    }
    if shards > 1 {
        let json = serde_json::json!({"metadata": {}, "weight_map": index});
        std::fs::write(dir.join(part).join("diffusion_pytorch_model.safetensors.index.json"), json.to_string()).unwrap();
    }
}

fn f32s(b: &[u8]) -> impl Iterator<Item = f32> + '_ {
    b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap()))
}

#[test]
fn sharded_checkpoint_loads_like_a_single_file() {
    let dir = scratch("sharded");
    rewrite("unet", &dir, 3, |b| (safetensors::Dtype::F32, b.to_vec()));
    let device = burn::tensor::Device::flex();
    let fx = Fixture::load("components.safetensors");
    let a = load_unet(&tiny_model(), &device, &LoadOptions::default(), WeightSource::Checkpoint).unwrap();
    let b = load_unet(&dir, &device, &LoadOptions::default(), WeightSource::Checkpoint).unwrap();
    let t = fx.f32("unet_in_timestep");
    let ctx = fx.tensor::<3>("unet_in_ehs", &device);
    let x = fx.tensor::<4>("unet_in_sample", &device);
    assert_eq!(values(a.forward(x.clone(), &t, &ctx)), values(b.forward(x, &t, &ctx)));
}

#[test]
fn half_precision_checkpoints_are_cast_to_the_compute_dtype() {
    // A checkpoint stored in f16 / bf16 must give exactly what the same values stored in f32 give.
    let device = burn::tensor::Device::flex();
    let fx = Fixture::load("components.safetensors");
    let x = fx.tensor::<4>("vae_dec_in", &device);
    type Round = fn(f32) -> f32;
    let cases: [(safetensors::Dtype, Round); 2] =
        [(safetensors::Dtype::F16, |v| half::f16::from_f32(v).to_f32()), (safetensors::Dtype::BF16, |v| half::bf16::from_f32(v).to_f32())];
    for (dtype, round) in cases {
        let (half_dir, f32_dir) = (scratch(&format!("{dtype:?}")), scratch(&format!("{dtype:?}-as-f32")));
        rewrite("vae", &half_dir, 1, |b| {
            let out: Vec<u8> = match dtype {
                safetensors::Dtype::F16 => f32s(b).flat_map(|v| half::f16::from_f32(v).to_le_bytes()).collect(),
                _ => f32s(b).flat_map(|v| half::bf16::from_f32(v).to_le_bytes()).collect(),
            };
            (dtype, out)
        });
        rewrite("vae", &f32_dir, 1, |b| (safetensors::Dtype::F32, f32s(b).flat_map(|v| round(v).to_le_bytes()).collect()));
        let load = |d: &Path| load_vae(d, &device, &LoadOptions::default(), WeightSource::Checkpoint).unwrap();
        let (a, b) = (values(load(&half_dir).decode(x.clone())), values(load(&f32_dir).decode(x.clone())));
        assert!(a == b, "{dtype:?} checkpoint differs from its f32 copy");
    }
}

#[test]
fn broken_files_are_clear_errors() {
    let device = burn::tensor::Device::flex();
    let dir = scratch("broken");
    rewrite("unet", &dir, 1, |b| (safetensors::Dtype::F32, b.to_vec()));
    let file = dir.join("unet/diffusion_pytorch_model.safetensors");
    let bytes = std::fs::read(&file).unwrap();

    std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
    let err = load_part(&dir, "unet", &device, &LoadOptions::default()).err().unwrap().to_string();
    assert!(err.contains("diffusion_pytorch_model.safetensors") && err.contains("truncated"), "{err}");

    std::fs::write(&file, b"<html>404 not found</html>").unwrap();
    let err = load_part(&dir, "unet", &device, &LoadOptions::default()).err().unwrap().to_string();
    assert!(err.contains("diffusion_pytorch_model.safetensors") && err.contains("not a valid safetensors"), "{err}");

    std::fs::remove_file(&file).unwrap();
    let err = load_unet(&dir, &device, &LoadOptions::default(), WeightSource::Checkpoint).err().unwrap().to_string();
    assert!(err.contains("diffusion_pytorch_model.safetensors"), "{err}");

    // A checkpoint of another model: the first mismatching key is named with both shapes.
    let other = scratch("other");
    rewrite("unet", &other, 1, |b| (safetensors::Dtype::F32, b.to_vec()));
    std::fs::copy(tiny_model().join("vae/diffusion_pytorch_model.safetensors"), other.join("unet/diffusion_pytorch_model.safetensors"))
        .unwrap();
    let err = load_unet(&other, &device, &LoadOptions::default(), WeightSource::Checkpoint).err().unwrap().to_string();
    assert!(err.contains("missing weight") || err.contains("has shape"), "{err}");
    let _ = Dtype::F32;
}
