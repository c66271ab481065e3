//! The ZePo options, with the reference's defaults (run.sh / demo), and their validation.

use crate::{Error, Result};

/// Token merging of the content and style hidden states that feed the controlled layers' k/v.
#[derive(Debug, Clone, PartialEq)]
pub struct TomeOptions {
    /// Fraction of the tokens merged away (the reference: 0.5).
    pub ratio: f32,
    pub sx: usize,
    pub sy: usize,
    /// Destination token at the top-left of each cell (the oracle's cases) instead of a
    /// position drawn from the seed (the authors' default).
    pub deterministic: bool,
}

impl Default for TomeOptions {
    fn default() -> Self {
        Self { ratio: 0.5, sx: 2, sy: 2, deterministic: false }
    }
}

/// Everything a stylization takes besides the two images.
#[derive(Debug, Clone, PartialEq)]
pub struct ZepoOptions {
    /// Square working resolution in pixels (multiple of 8).
    pub resolution: usize,
    /// LCM steps actually run (the reference's `num_inference_steps`).
    pub steps: usize,
    pub strength: f64,
    /// Guidance scale, applied with the reference's formula `out_c + g·(out_u − out_c)`.
    pub cfg: f32,
    /// Multiplier of the style logits in the controlled attention.
    pub style_guidance: f32,
    /// Timestep at which content and style latents are noised once (consistency features).
    pub feature_step: usize,
    /// Controlled self-attention layers `[start_layer, end_layer)`, in UNet call order.
    pub start_layer: usize,
    pub end_layer: usize,
    /// Query mix: `q_t ← mix·q_t + (1−mix)·q_content`; 1 is off.
    pub mix_q: f32,
    /// `None`: no token merging.
    pub tome: Option<TomeOptions>,
    pub prompt: String,
    pub negative_prompt: String,
    pub seed: u64,
    /// Use the LCM guidance embedding instead of classifier-free guidance: half the UNet work,
    /// a different output from the reference.
    pub no_cfg: bool,
}

impl Default for ZepoOptions {
    fn default() -> Self {
        Self {
            resolution: 512,
            steps: 4,
            strength: 0.5,
            cfg: 2.0,
            style_guidance: 1.2,
            feature_step: 99,
            start_layer: 8,
            end_layer: 16,
            mix_q: 1.0,
            tome: Some(TomeOptions::default()),
            prompt: "face".into(),
            negative_prompt: String::new(),
            seed: 0,
            no_cfg: false,
        }
    }
}

/// The largest resolution accepted: beyond it the UNet's attention and the VAE would need
/// more memory than a consumer GPU has.
pub const MAX_RESOLUTION: usize = 1024;

impl ZepoOptions {
    /// Checks every option; `num_self_attentions` and `train_steps` come from the model.
    pub fn validate(&self, num_self_attentions: usize, train_steps: usize) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidOption(m));
        if self.resolution == 0 || self.resolution % 8 != 0 || self.resolution > MAX_RESOLUTION {
            return bad(format!("resolution {} must be a multiple of 8 between 8 and {MAX_RESOLUTION}", self.resolution));
        }
        if self.steps == 0 {
            return bad("steps must be at least 1".into());
        }
        if !(self.strength > 0.0 && self.strength <= 1.0) {
            return bad(format!("strength {} must be in (0, 1]", self.strength));
        }
        if self.effective_steps() > train_steps {
            return bad(format!("steps / strength = {} exceeds the scheduler's {train_steps} training steps", self.effective_steps()));
        }
        if self.run_steps() == 0 {
            return bad(format!("steps {} at strength {} leaves no step to run", self.steps, self.strength));
        }
        if !self.cfg.is_finite() || !self.style_guidance.is_finite() {
            return bad("cfg and style guidance must be finite numbers".into());
        }
        if self.feature_step >= train_steps {
            return bad(format!("feature step {} must be below {train_steps}", self.feature_step));
        }
        if self.start_layer >= self.end_layer || self.end_layer > num_self_attentions {
            return bad(format!(
                "controlled layers [{}, {}) must be a non-empty range within the model's {num_self_attentions} self-attention layers",
                self.start_layer, self.end_layer
            ));
        }
        if !(0.0..=1.0).contains(&self.mix_q) {
            return bad(format!("mix-q {} must be in [0, 1]", self.mix_q));
        }
        if let Some(t) = &self.tome {
            if !(0.0..1.0).contains(&t.ratio) {
                return bad(format!("token-merging ratio {} must be in [0, 1)", t.ratio));
            }
            if t.sx == 0 || t.sy == 0 {
                return bad("token-merging cell size must be at least 1".into());
            }
        }
        Ok(())
    }

    /// The reference's `int(steps / strength)`: the length of the full LCM schedule.
    pub fn effective_steps(&self) -> usize {
        (self.steps as f64 / self.strength) as usize
    }

    /// Steps actually run: the last `int(effective · strength)` of the schedule.
    pub fn run_steps(&self) -> usize {
        ((self.effective_steps() as f64 * self.strength) as usize).min(self.effective_steps())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_are_named() {
        ZepoOptions::default().validate(16, 1000).unwrap();
        let cases: Vec<(ZepoOptions, &str)> = vec![
            (ZepoOptions { steps: 0, ..Default::default() }, "steps"),
            (ZepoOptions { strength: 0.0, ..Default::default() }, "strength"),
            (ZepoOptions { strength: 1.5, ..Default::default() }, "strength"),
            (ZepoOptions { resolution: 500, ..Default::default() }, "resolution"),
            (ZepoOptions { resolution: 4096, ..Default::default() }, "resolution"),
            (ZepoOptions { end_layer: 17, ..Default::default() }, "layers"),
            (ZepoOptions { start_layer: 9, end_layer: 9, ..Default::default() }, "layers"),
            (ZepoOptions { mix_q: 1.5, ..Default::default() }, "mix-q"),
            (ZepoOptions { feature_step: 1000, ..Default::default() }, "feature step"),
            (ZepoOptions { tome: Some(TomeOptions { ratio: 1.0, ..Default::default() }), ..Default::default() }, "ratio"),
        ];
        for (o, word) in cases {
            let err = o.validate(16, 1000).unwrap_err().to_string();
            assert!(err.contains(word), "{err} should mention {word}");
        }
    }

    #[test]
    fn step_counts_follow_the_reference() {
        let o = ZepoOptions { steps: 4, strength: 0.5, ..Default::default() };
        assert_eq!((o.effective_steps(), o.run_steps()), (8, 4));
        let o = ZepoOptions { steps: 2, strength: 0.5, ..Default::default() };
        assert_eq!((o.effective_steps(), o.run_steps()), (4, 2));
        let o = ZepoOptions { steps: 3, strength: 0.7, ..Default::default() };
        assert_eq!((o.effective_steps(), o.run_steps()), (4, 2));
        // Python: int(3 / 0.3) == 10 (3/0.3 = 10.000000000000002); f32 arithmetic would give 9.
        let o = ZepoOptions { steps: 3, strength: 0.3, ..Default::default() };
        assert_eq!((o.effective_steps(), o.run_steps()), (10, 3));
    }
}
