//! diffusers 0.30 `LCMScheduler`, bit-faithful where it matters: the coefficients are computed
//! on the host in f32 exactly as torch computes them on the CPU, then applied to burn tensors of
//! any backend as scalars.
//!
//! Measured against the oracle: ᾱ, c_skip and c_out equal bit for bit; `add_noise` and `step`
//! within one f32 ulp. The remaining ulp is torch's: its CPU sqrt of the ᾱ scalars (MKL's
//! vsSqrt) is sometimes one ulp above the correctly rounded root used here (a one-ulp change of
//! √ᾱ or √(1−ᾱ) reproduces every fixture exactly).
//!
//! Stateless apart from the schedule set by [`LcmScheduler::set_timesteps`]: the step index of
//! a timestep is its position in that schedule (diffusers' `index_for_timestep`), so `step`
//! needs no hidden counter and may be called with any scheduled timestep.

use burn::tensor::Tensor;
use serde::Deserialize;

use crate::{Error, Result};

/// `scheduler/scheduler_config.json`, with diffusers' `LCMScheduler.__init__` defaults. Every
/// key is typed: a value this port does not implement is an error naming the key and the file
/// (parse_config), never silently ignored. Unknown keys (diffusers' `_class_name`, …) pass.
#[derive(Debug, Clone, Deserialize)]
pub struct LcmSchedulerConfig {
    #[serde(default = "d_train_steps")]
    pub num_train_timesteps: usize,
    #[serde(default = "d_beta_start")]
    pub beta_start: f64,
    #[serde(default = "d_beta_end")]
    pub beta_end: f64,
    #[serde(default)]
    pub beta_schedule: BetaSchedule,
    #[serde(default)]
    pub trained_betas: Option<Vec<f64>>,
    #[serde(default = "d_original_steps")]
    pub original_inference_steps: usize,
    #[serde(default)]
    pub clip_sample: bool,
    #[serde(default = "d_one")]
    pub clip_sample_range: f64,
    #[serde(default = "d_true")]
    pub set_alpha_to_one: bool,
    /// Unused by LCM's `set_timesteps` (diffusers ignores it there too); typed all the same.
    #[serde(default)]
    pub steps_offset: usize,
    #[serde(default)]
    pub prediction_type: Prediction,
    /// Dynamic thresholding is not implemented: `true` is refused (so its two parameters below
    /// never take effect; they are still checked to be numbers).
    #[serde(default)]
    pub thresholding: bool,
    #[serde(default = "d_threshold_ratio")]
    pub dynamic_thresholding_ratio: f64,
    #[serde(default = "d_one")]
    pub sample_max_value: f64,
    /// Unused by LCM's `set_timesteps` (its origin schedule is fixed; diffusers ignores the key
    /// there too); one of diffusers' three values all the same.
    #[serde(default)]
    pub timestep_spacing: TimestepSpacing,
    #[serde(default = "d_timestep_scaling")]
    pub timestep_scaling: f64,
    #[serde(default)]
    pub rescale_betas_zero_snr: bool,
}

fn d_train_steps() -> usize {
    1000
}
fn d_beta_start() -> f64 {
    0.00085
}
fn d_beta_end() -> f64 {
    0.012
}
fn d_original_steps() -> usize {
    50
}
fn d_one() -> f64 {
    1.0
}
fn d_true() -> bool {
    true
}
fn d_threshold_ratio() -> f64 {
    0.995
}
fn d_timestep_scaling() -> f64 {
    10.0
}

impl Default for LcmSchedulerConfig {
    fn default() -> Self {
        serde_json::from_str("{}").expect("all fields have defaults")
    }
}

/// What the model predicts (`prediction_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Prediction {
    #[default]
    Epsilon,
    Sample,
    VPrediction,
}

/// How the training betas are spaced (`beta_schedule`), unless `trained_betas` gives them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum BetaSchedule {
    #[serde(rename = "linear")]
    Linear,
    #[default]
    #[serde(rename = "scaled_linear")]
    ScaledLinear,
    #[serde(rename = "squaredcos_cap_v2")]
    SquaredcosCapV2,
}

/// diffusers' `timestep_spacing` values (unused by LCM's schedule).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimestepSpacing {
    #[default]
    Leading,
    Trailing,
    Linspace,
}

/// The boundary-condition scalings of the consistency model at a timestep.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BoundaryScalings {
    pub c_skip: f32,
    pub c_out: f32,
}

/// diffusers' `LCMScheduler`.
#[derive(Debug, Clone)]
pub struct LcmScheduler {
    pub config: LcmSchedulerConfig,
    prediction: Prediction,
    alphas_cumprod: Vec<f32>,
    final_alpha_cumprod: f32,
    timesteps: Vec<i64>,
}

/// torch's CPU `linspace` for f32: start and end rounded to f32, an f32 step, each value
/// `start + step·i` from the front half and `end − step·(n−1−i)` from the back half, each a
/// fused multiply-add (torch's CPU build contracts them; this reproduces its alphas bit for bit).
fn torch_linspace_f32(start: f64, end: f64, n: usize) -> Vec<f32> {
    let (s, e) = (start as f32, end as f32);
    if n == 1 {
        return vec![s];
    }
    let step = (e - s) / (n - 1) as f32;
    let half = n / 2;
    (0..n).map(|i| if i < half { step.mul_add(i as f32, s) } else { (-step).mul_add((n - 1 - i) as f32, e) }).collect()
}

/// torch's CPU `cumprod` of an f32 tensor: the running product is kept in f64 (its `acc_type`)
/// and rounded to f32 at each output.
fn torch_cumprod_f32(x: &[f32]) -> Vec<f32> {
    let mut acc = 1f64;
    x.iter()
        .map(|&v| {
            acc *= v as f64;
            acc as f32
        })
        .collect()
}

/// diffusers' `betas_for_alpha_bar` (cosine), computed in f64 and stored as f32.
fn betas_for_alpha_bar(n: usize) -> Vec<f32> {
    let alpha_bar = |t: f64| ((t + 0.008) / 1.008 * std::f64::consts::PI / 2.0).cos().powi(2);
    (0..n)
        .map(|i| {
            let (t1, t2) = (i as f64 / n as f64, (i + 1) as f64 / n as f64);
            (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(0.999) as f32
        })
        .collect()
}

/// diffusers' `rescale_zero_terminal_snr`, in f32 like its torch ops.
fn rescale_zero_terminal_snr(betas: &[f32]) -> Vec<f32> {
    let alphas: Vec<f32> = betas.iter().map(|b| 1.0 - b).collect();
    let mut sqrt_ab: Vec<f32> = torch_cumprod_f32(&alphas).iter().map(|a| a.sqrt()).collect();
    let (first, last) = (sqrt_ab[0], sqrt_ab[sqrt_ab.len() - 1]);
    let factor = first / (first - last);
    for v in &mut sqrt_ab {
        *v = (*v - last) * factor;
    }
    let ab: Vec<f32> = sqrt_ab.iter().map(|v| v * v).collect();
    let mut out = Vec::with_capacity(ab.len());
    out.push(1.0 - ab[0]);
    for i in 1..ab.len() {
        out.push(1.0 - ab[i] / ab[i - 1]);
    }
    out
}

impl LcmScheduler {
    /// Builds the noise schedule; rejects options this port does not implement.
    pub fn new(config: LcmSchedulerConfig) -> Result<Self> {
        Self::from_config(config, "scheduler_config.json")
    }

    /// [`Self::new`], naming `file` (where the config came from) in errors.
    fn from_config(config: LcmSchedulerConfig, file: &str) -> Result<Self> {
        let bad = |m: String| Error::config(file, m);
        let n = config.num_train_timesteps;
        if n == 0 {
            return Err(bad("num_train_timesteps must be positive".into()));
        }
        if config.thresholding {
            return Err(bad("thresholding: dynamic thresholding is not supported".into()));
        }
        let prediction = config.prediction_type;
        let mut betas = match (&config.trained_betas, config.beta_schedule) {
            (Some(b), _) => b.iter().map(|&v| v as f32).collect(),
            (None, BetaSchedule::Linear) => torch_linspace_f32(config.beta_start, config.beta_end, n),
            (None, BetaSchedule::ScaledLinear) => {
                torch_linspace_f32(config.beta_start.sqrt(), config.beta_end.sqrt(), n).into_iter().map(|b| b * b).collect()
            }
            (None, BetaSchedule::SquaredcosCapV2) => betas_for_alpha_bar(n),
        };
        if betas.len() != n {
            return Err(bad(format!("trained_betas has {} values, num_train_timesteps is {n}", betas.len())));
        }
        if config.rescale_betas_zero_snr {
            betas = rescale_zero_terminal_snr(&betas);
        }
        let alphas: Vec<f32> = betas.iter().map(|b| 1.0 - b).collect();
        let alphas_cumprod = torch_cumprod_f32(&alphas);
        let final_alpha_cumprod = if config.set_alpha_to_one { 1.0 } else { alphas_cumprod[0] };
        Ok(Self { config, prediction, alphas_cumprod, final_alpha_cumprod, timesteps: Vec::new() })
    }

    /// Parses `scheduler_config.json` text (`name` is used in errors).
    pub fn from_json(text: &str, name: &str) -> Result<Self> {
        Self::from_config(crate::models::parse_config(text, name)?, name)
    }

    /// ᾱ for every training timestep.
    pub fn alphas_cumprod(&self) -> &[f32] {
        &self.alphas_cumprod
    }

    /// The ᾱ used past the last timestep (1 with `set_alpha_to_one`).
    pub fn final_alpha_cumprod(&self) -> f32 {
        self.final_alpha_cumprod
    }

    /// The schedule set by the last [`Self::set_timesteps`] (empty before).
    pub fn timesteps(&self) -> &[i64] {
        &self.timesteps
    }

    /// diffusers' `set_timesteps(num_inference_steps, original_inference_steps=…)`: the LCM
    /// origin timesteps k−1, 2k−1, … (k = train steps / original steps), reversed, taken at
    /// `floor(linspace(0, len, n, endpoint=False))`.
    pub fn set_timesteps(&mut self, num_inference_steps: usize, original_inference_steps: Option<usize>) -> Result<&[i64]> {
        let train = self.config.num_train_timesteps;
        let original = original_inference_steps.unwrap_or(self.config.original_inference_steps);
        let n = num_inference_steps;
        if original == 0 || original > train {
            return Err(Error::InvalidOption(format!("original_inference_steps {original} must be in 1..={train} (num_train_timesteps)")));
        }
        if n == 0 || n > original {
            return Err(Error::InvalidOption(format!("num_inference_steps {n} must be in 1..={original} (original_inference_steps)")));
        }
        let k = (train / original) as i64;
        // reversed: original·k − 1, …, 2k − 1, k − 1
        let origin: Vec<i64> = (1..=original as i64).rev().map(|i| i * k - 1).collect();
        let len = origin.len();
        self.timesteps = (0..n)
            .map(|i| {
                // numpy linspace(0, len, n, endpoint=False): step = len / n, value i·step, floored
                let step = len as f64 / n as f64;
                origin[(i as f64 * step).floor() as usize]
            })
            .collect();
        Ok(&self.timesteps)
    }

    /// ZePo's schedule for `num_inference_steps` N at `strength`: sets N' = int(N·(1/strength))
    /// LCM steps and returns the last `max(int(N'·strength), 1)` of them (the pipeline's
    /// `get_timesteps`), the ones actually run.
    pub fn zepo_timesteps(&mut self, num_inference_steps: usize, strength: f64) -> Result<Vec<i64>> {
        if !(strength > 0.0 && strength <= 1.0) {
            return Err(Error::InvalidOption(format!("strength {strength} must be in (0, 1]")));
        }
        let total = (num_inference_steps as f64 * (1.0 / strength)) as usize;
        self.set_timesteps(total, None)?;
        Ok(Self::strength_slice(&self.timesteps, strength).to_vec())
    }

    /// The img2img `get_timesteps` slice of a full schedule: its last
    /// `max(min(int(len·strength), len), 1)` entries.
    pub fn strength_slice(timesteps: &[i64], strength: f64) -> &[i64] {
        let n = timesteps.len();
        let init = ((n as f64 * strength) as usize).min(n).max(1);
        &timesteps[n.saturating_sub(init)..]
    }

    fn alpha(&self, t: i64) -> Result<f32> {
        usize::try_from(t)
            .ok()
            .and_then(|i| self.alphas_cumprod.get(i).copied())
            .ok_or_else(|| Error::InvalidOption(format!("timestep {t} outside 0..{}", self.alphas_cumprod.len())))
    }

    /// `(√ᾱt, √(1−ᾱt))` in f32, as `add_noise` and `step` compute them.
    pub fn noise_coefficients(&self, t: i64) -> Result<(f32, f32)> {
        let a = self.alpha(t)?;
        Ok((a.sqrt(), (1.0 - a).sqrt()))
    }

    /// `get_scalings_for_boundary_condition_discrete(t)` with an int64 timestep tensor, as the
    /// pipeline passes it: everything in f32 (`0.25 / x` is `x.reciprocal() · 0.25` in torch).
    pub fn boundary_scalings(&self, t: i64) -> BoundaryScalings {
        const SIGMA_DATA: f64 = 0.5;
        let sigma2 = (SIGMA_DATA * SIGMA_DATA) as f32;
        let scaled = t as f32 * self.config.timestep_scaling as f32;
        let denom = scaled * scaled + sigma2;
        BoundaryScalings { c_skip: denom.recip() * sigma2, c_out: scaled / denom.sqrt() }
    }

    /// `add_noise(x0, noise, t)` = √ᾱt·x0 + √(1−ᾱt)·noise.
    pub fn add_noise<const D: usize>(&self, original: Tensor<D>, noise: Tensor<D>, t: i64) -> Result<Tensor<D>> {
        check_same_shape("add_noise", &original, &noise)?;
        let (sa, sb) = self.noise_coefficients(t)?;
        Ok(original.mul_scalar(sa) + noise.mul_scalar(sb))
    }

    /// Position of `t` in the schedule (diffusers' `index_for_timestep`: the second match
    /// when there are several).
    pub fn step_index(&self, t: i64) -> Result<usize> {
        if self.timesteps.is_empty() {
            return Err(Error::InvalidOption("step() before set_timesteps()".into()));
        }
        let hits: Vec<usize> = self.timesteps.iter().enumerate().filter(|(_, &s)| s == t).map(|(i, _)| i).collect();
        match hits.len() {
            0 => Err(Error::InvalidOption(format!("timestep {t} is not in the schedule {:?}", self.timesteps))),
            1 => Ok(hits[0]),
            _ => Ok(hits[1]),
        }
    }

    /// Whether `step` at `t` injects fresh noise (every index but the schedule's last), i.e.
    /// whether the caller must draw a noise tensor for it.
    pub fn needs_noise(&self, t: i64) -> Result<bool> {
        Ok(self.step_index(t)? + 1 < self.timesteps.len())
    }

    /// One LCM step at scheduled timestep `t`: returns `(prev_sample, denoised)`. `noise` is
    /// required where [`Self::needs_noise`] says so and ignored at the last index, where
    /// `prev_sample` is `denoised`.
    pub fn step<const D: usize>(
        &self,
        model_output: Tensor<D>,
        t: i64,
        sample: Tensor<D>,
        noise: Option<Tensor<D>>,
    ) -> Result<(Tensor<D>, Tensor<D>)> {
        check_same_shape("step", &model_output, &sample)?;
        let index = self.step_index(t)?;
        let prev_t = self.timesteps.get(index + 1).copied().unwrap_or(t);
        let alpha_t = self.alpha(t)?;
        let alpha_prev = if prev_t >= 0 { self.alpha(prev_t)? } else { self.final_alpha_cumprod };
        let (sa, sb) = (alpha_t.sqrt(), (1.0 - alpha_t).sqrt());
        let s = self.boundary_scalings(t);

        let x0 = match self.prediction {
            Prediction::Epsilon => (sample.clone() - model_output.mul_scalar(sb)).div_scalar(sa),
            Prediction::Sample => model_output,
            Prediction::VPrediction => sample.clone().mul_scalar(sa) - model_output.mul_scalar(sb),
        };
        let x0 = if self.config.clip_sample {
            let r = self.config.clip_sample_range as f32;
            x0.clamp(-r, r)
        } else {
            x0
        };
        let denoised = x0.mul_scalar(s.c_out) + sample.mul_scalar(s.c_skip);

        if index + 1 == self.timesteps.len() {
            return Ok((denoised.clone(), denoised));
        }
        let noise = noise.ok_or_else(|| Error::InvalidOption(format!("step at timestep {t} (index {index}) needs a noise tensor")))?;
        check_same_shape("step noise", &denoised, &noise)?;
        let prev = denoised.clone().mul_scalar(alpha_prev.sqrt()) + noise.mul_scalar((1.0 - alpha_prev).sqrt());
        Ok((prev, denoised))
    }
}

fn check_same_shape<const D: usize>(what: &str, a: &Tensor<D>, b: &Tensor<D>) -> Result<()> {
    if a.dims() != b.dims() {
        return Err(Error::InvalidOption(format!("{what}: shapes {:?} and {:?} differ", a.dims(), b.dims())));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_schedules() {
        let mut s = LcmScheduler::new(LcmSchedulerConfig::default()).unwrap();
        assert_eq!(s.set_timesteps(8, None).unwrap(), &[999, 879, 759, 639, 499, 379, 259, 139]);
        assert_eq!(s.zepo_timesteps(4, 0.5).unwrap(), vec![499, 379, 259, 139]);
        assert_eq!(s.zepo_timesteps(2, 0.5).unwrap(), vec![499, 259]);
        assert_eq!(s.set_timesteps(1, None).unwrap(), &[999]);
        assert!(s.set_timesteps(0, None).is_err());
        assert!(s.set_timesteps(51, None).is_err());
        assert!(s.zepo_timesteps(4, 0.0).is_err());
        assert!(s.step_index(500).is_err());
    }

    #[test]
    fn bad_config_is_an_error() {
        // Each unsupported value names its key and the file.
        let file = "scheduler/scheduler_config.json";
        for (json, key) in [
            (r#"{"beta_schedule": "nope"}"#, "beta_schedule"),
            (r#"{"prediction_type": "x_prediction"}"#, "prediction_type"),
            (r#"{"timestep_spacing": "uniform"}"#, "timestep_spacing"),
            (r#"{"steps_offset": -1}"#, "steps_offset"),
            (r#"{"thresholding": true}"#, "thresholding"),
        ] {
            let e = LcmScheduler::from_json(json, file).err().unwrap_or_else(|| panic!("{json} accepted")).to_string();
            assert!(e.contains(key) && e.contains(file), "{json}: {e}");
        }
        let v = LcmScheduler::from_json(r#"{"prediction_type": "v_prediction", "timestep_spacing": "trailing"}"#, file).unwrap();
        assert_eq!(v.prediction, Prediction::VPrediction);
        let cfg = LcmSchedulerConfig { trained_betas: Some(vec![0.1; 3]), ..Default::default() };
        assert!(LcmScheduler::new(cfg).is_err());
    }
}
