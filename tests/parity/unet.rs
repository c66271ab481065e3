//! UNet2DConditionModel against diffusers (stock attention), including an odd 12×12 latent.

use crate::common::*;
use zepo::models::read_config;
use zepo::models::unet::{UNet2DConditionModel, UNetConfig};
use zepo::weights::LoadOptions;
use zepo::zepo::load::load_part;

fn load(device: &burn::tensor::Device) -> UNet2DConditionModel {
    let dir = tiny_model();
    let cfg: UNetConfig = read_config(&dir.join("unet/config.json")).unwrap();
    cfg.validate().unwrap();
    let vb = load_part(&dir, "unet", device, &LoadOptions::default()).unwrap().into_builder();
    let unet = UNet2DConditionModel::load(&vb, &cfg).unwrap();
    vb.finish().unwrap();
    unet
}

#[test]
fn unet_matches_diffusers() {
    let fx = Fixture::load("components.safetensors");
    for (name, device) in devices() {
        let unet = load(&device);
        assert_eq!(unet.num_self_attentions, 16);

        let t: Vec<f32> = fx.f32("unet_in_timestep");
        let out = unet.forward(fx.tensor("unet_in_sample", &device), &t, &fx.tensor("unet_in_ehs", &device));
        let e = assert_close_rel(&format!("{name} unet_out 16x16"), &values(out), &fx.f32("unet_out"), 1e-4);
        println!("{name} unet 16x16 rel err {e:.2e}");

        let t: Vec<f32> = fx.f32("unet_in_timestep_12");
        let ehs = fx.tensor::<3>("unet_in_ehs", &device).slice([0..1]);
        let out = unet.forward(fx.tensor("unet_in_sample_12", &device), &t, &ehs);
        let e = assert_close_rel(&format!("{name} unet_out 12x12"), &values(out), &fx.f32("unet_out_12"), 1e-4);
        println!("{name} unet 12x12 rel err {e:.2e}");
    }
}

#[test]
fn time_embedding_matches_diffusers() {
    let fx = Fixture::load("components.safetensors");
    for (name, device) in devices() {
        let unet = load(&device);
        let proj = zepo::models::unet::timestep_proj(&[499.0], unet.time_proj_dim, true, 0.0, &device);
        assert_close_rel(&format!("{name} time proj"), &values(proj), &fx.f32("unet_time_proj_499"), 1e-5);
        let emb = unet.time_embedding(&[499.0], None, &device);
        assert_close_rel(&format!("{name} time emb"), &values(emb), &fx.f32("unet_time_emb_499"), 1e-4);
    }
}

#[test]
fn wrong_checkpoint_names_the_key() {
    // The UNet config says 32 base channels; a config asking for 64 must fail on the first
    // weight whose shape differs, naming it.
    let dir = tiny_model();
    let mut cfg: UNetConfig = read_config(&dir.join("unet/config.json")).unwrap();
    cfg.block_out_channels[0] = 64;
    let device = burn::tensor::Device::flex();
    let vb = load_part(&dir, "unet", &device, &LoadOptions::default()).unwrap().into_builder();
    let err = UNet2DConditionModel::load(&vb, &cfg).unwrap_err().to_string();
    assert!(err.contains("conv_in.weight") && err.contains("[64, 4, 3, 3]") && err.contains("[32, 4, 3, 3]"), "{err}");
}
