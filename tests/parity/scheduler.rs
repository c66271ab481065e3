//! LCMScheduler against diffusers 0.30 (`sched_*` in components.safetensors).

use burn::tensor::Tensor;
use zepo::zepo::load::load_scheduler;
use zepo::zepo::scheduler::LcmScheduler;

use crate::common::{assert_close_abs, devices, tiny_model, values, Fixture};

fn scheduler() -> LcmScheduler {
    load_scheduler(&tiny_model()).unwrap()
}

#[test]
fn sched_alphas_cumprod_bitwise() {
    let fx = Fixture::load("components.safetensors");
    let s = scheduler();
    let expected = fx.f32("sched_alphas_cumprod");
    assert_eq!(s.alphas_cumprod().len(), expected.len());
    let differing: Vec<usize> = (0..expected.len()).filter(|&i| s.alphas_cumprod()[i].to_bits() != expected[i].to_bits()).collect();
    assert!(differing.is_empty(), "alphas_cumprod differs in bits at {} indices, first {:?}", differing.len(), differing.first());
    assert_eq!(s.final_alpha_cumprod(), fx.f32("sched_final_alpha_cumprod")[0]);
}

#[test]
fn sched_timesteps_exact() {
    let fx = Fixture::load("components.safetensors");
    let mut s = scheduler();
    for (steps, tag) in [(4usize, "s4"), (2, "s2")] {
        let run = s.zepo_timesteps(steps, 0.5).unwrap();
        assert_eq!(s.timesteps(), fx.i64(&format!("sched_{tag}_all_timesteps")), "{tag} full schedule");
        assert_eq!(run, fx.i64(&format!("sched_{tag}_timesteps")), "{tag} strength slice");
    }
}

#[test]
fn sched_boundary_scalings() {
    let fx = Fixture::load("components.safetensors");
    let s = scheduler();
    for tag in ["s4", "s2"] {
        for k in 0.. {
            let name = format!("sched_{tag}_k{k}_t");
            if !fx.has(&name) {
                break;
            }
            let t = fx.i64(&name)[0];
            let b = s.boundary_scalings(t);
            let expected = fx.f32(&format!("sched_{tag}_k{k}_c_skip_c_out"));
            // the reference computes them in f32: equal bit for bit
            assert_eq!([b.c_skip, b.c_out], [expected[0], expected[1]], "{tag} step {k} (t={t}) c_skip/c_out");
        }
    }
}

#[test]
fn sched_add_noise() {
    let fx = Fixture::load("components.safetensors");
    let s = scheduler();
    for (name, device) in devices() {
        let x0: Tensor<4> = fx.tensor("sched_add_noise_x0", &device);
        let noise: Tensor<4> = fx.tensor("sched_add_noise_noise", &device);
        for t in [99, 499, 999] {
            let out = s.add_noise(x0.clone(), noise.clone(), t).unwrap();
            let err = assert_close_abs(&format!("{name} add_noise t={t}"), &values(out), &fx.f32(&format!("sched_add_noise_t{t}")), 1e-6);
            eprintln!("{name} add_noise t={t}: max abs err {err:.2e}");
        }
    }
}

#[test]
fn sched_steps() {
    let fx = Fixture::load("components.safetensors");
    for (name, device) in devices() {
        let mut s = scheduler();
        for (steps, tag) in [(4usize, "s4"), (2, "s2")] {
            let run = s.zepo_timesteps(steps, 0.5).unwrap();
            // each step from the reference's own input, so errors do not compound
            let mut sample: Tensor<4> = fx.tensor(&format!("sched_{tag}_sample0"), &device);
            for (k, &t) in run.iter().enumerate() {
                let p = format!("sched_{tag}_k{k}");
                assert_eq!(fx.i64(&format!("{p}_t"))[0], t);
                let noise_name = format!("{p}_noise");
                assert_eq!(s.needs_noise(t).unwrap(), fx.has(&noise_name), "{p}: noise injected or not");
                let noise = fx.has(&noise_name).then(|| fx.tensor::<4>(&noise_name, &device));
                let eps: Tensor<4> = fx.tensor(&format!("{p}_model_output"), &device);
                let (prev, denoised) = s.step(eps, t, sample, noise).unwrap();
                let e1 = assert_close_abs(&format!("{name} {p} prev_sample"), &values(prev), &fx.f32(&format!("{p}_prev_sample")), 1e-5);
                let e2 = assert_close_abs(&format!("{name} {p} denoised"), &values(denoised), &fx.f32(&format!("{p}_denoised")), 1e-5);
                eprintln!("{name} {p} (t={t}): prev_sample {e1:.2e}, denoised {e2:.2e} max abs err");
                sample = fx.tensor(&format!("{p}_prev_sample"), &device);
            }
        }
    }
}

#[test]
fn sched_step_requires_noise_except_last() {
    let device = devices().remove(0).1;
    let mut s = scheduler();
    s.zepo_timesteps(2, 0.5).unwrap();
    let x = Tensor::<4>::ones([1, 4, 2, 2], &device);
    assert!(s.step(x.clone(), 499, x.clone(), None).is_err());
    assert!(s.step(x.clone(), 259, x.clone(), None).is_ok());
    assert!(s.step(x.clone(), 123, x.clone(), None).is_err());
    assert!(s.add_noise(x.clone(), x, 1000).is_err());
}
