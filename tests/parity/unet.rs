//! UNet2DConditionModel against diffusers (stock attention, no timestep_cond), on every device
//! of `devices()` — CPU, and wgpu (lavapipe in CI) with ZEPO_TEST_WGPU=1.

use zepo::models::read_config;
use zepo::models::unet::{UNet2DConditionModel, UNetConfig};
use zepo::weights::{load_dir_part, LoadOptions};

use crate::common::{assert_close_rel, devices, tiny_model, values, Fixture};

#[test]
fn unet_forward_matches_diffusers() {
    let fx = Fixture::load("components.safetensors");
    let cfg: UNetConfig = read_config(&tiny_model().join("unet/config.json")).unwrap();
    cfg.validate().unwrap();
    for (name, device) in devices() {
        let store = load_dir_part(&tiny_model(), "unet", "diffusion_pytorch_model", &device, &LoadOptions::default()).unwrap();
        let vb = store.into_builder();
        let unet = UNet2DConditionModel::load(&vb, &cfg).unwrap();
        vb.finish().unwrap();
        for suffix in ["", "_12"] {
            let sample = fx.tensor::<4>(&format!("unet_in_sample{suffix}"), &device);
            let batch = sample.dims()[0];
            let timesteps: Vec<f32> = fx.i64(&format!("unet_in_timestep{suffix}")).iter().map(|&t| t as f32).collect();
            // unet_out_12 used the first `batch` rows of the context (clip_last_hidden_state[:1]).
            let context = fx.tensor::<3>("unet_in_ehs", &device).narrow(0, 0, batch);
            let out = unet.forward(sample, &timesteps, &context);
            let err = assert_close_rel(
                &format!("{name} unet_out{suffix}"),
                &values(out),
                &fx.f32(&format!("unet_out{suffix}")),
                1e-4,
            );
            println!("{name} unet_out{suffix}: max abs error {err:.3e} of max |ref|");
        }
    }
}
