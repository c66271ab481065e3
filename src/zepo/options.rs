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

/// How an image is mapped onto the working size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Fit {
    /// Both images resized to the size, whatever their shape (the reference; square by default).
    #[default]
    Stretch,
    /// The size is filled: the content (and the style) scaled to cover it, centre-cropped.
    /// Without `width`/`height` the size follows the content's shape (long side `resolution`).
    Cover,
    /// The content keeps its whole frame: the size is the largest of the content's shape that
    /// fits in `width`×`height` (or `resolution`²), each side a multiple of 8. The style is
    /// centre-cropped to that shape.
    Contain,
}

impl Fit {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "stretch" => Ok(Self::Stretch),
            "cover" => Ok(Self::Cover),
            "contain" => Ok(Self::Contain),
            _ => Err(Error::InvalidOption(format!("fit `{s}` must be stretch, cover or contain"))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Stretch => "stretch",
            Self::Cover => "cover",
            Self::Contain => "contain",
        }
    }
}

/// A working size in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Size {
    pub width: usize,
    pub height: usize,
}

/// Everything a stylization takes besides the two images.
#[derive(Debug, Clone, PartialEq)]
pub struct ZepoOptions {
    /// Working resolution in pixels (multiple of 8): the square's side, or with `fit` cover or
    /// contain (and no `width`/`height`), the long side of the content's shape.
    pub resolution: usize,
    /// An explicit working size (both or neither; multiples of 8): overrides `resolution`.
    pub width: Option<usize>,
    pub height: Option<usize>,
    pub fit: Fit,
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
            width: None,
            height: None,
            fit: Fit::Stretch,
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

/// The options' names in the JS API (and the PNG's settings), in the order the docs give them.
pub const OPTION_NAMES: [&str; 17] = [
    "resolution",
    "width",
    "height",
    "fit",
    "steps",
    "strength",
    "cfg",
    "styleGuidance",
    "featureStep",
    "startLayer",
    "endLayer",
    "mixQ",
    "tome",
    "prompt",
    "negativePrompt",
    "seed",
    "noCfg",
];

/// The largest resolution accepted: beyond it the UNet's attention and the VAE would need
/// more memory than a consumer GPU has.
pub const MAX_RESOLUTION: usize = 1024;

impl ZepoOptions {
    /// Checks every option; `num_self_attentions` and `train_steps` come from the model.
    pub fn validate(&self, num_self_attentions: usize, train_steps: usize) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidOption(m));
        let side = |name: &str, v: usize| -> Result<()> {
            if v == 0 || v % 8 != 0 || v > MAX_RESOLUTION {
                return Err(Error::InvalidOption(format!("{name} {v} must be a multiple of 8 between 8 and {MAX_RESOLUTION}")));
            }
            Ok(())
        };
        side("resolution", self.resolution)?;
        match (self.width, self.height) {
            (Some(w), Some(h)) => {
                side("width", w)?;
                side("height", h)?;
            }
            (None, None) => {}
            _ => return bad("width and height go together: give both or neither".into()),
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

    /// The box the size is fitted in: `width`×`height`, else `resolution`².
    fn bounds(&self) -> Size {
        match (self.width, self.height) {
            (Some(width), Some(height)) => Size { width, height },
            _ => Size { width: self.resolution, height: self.resolution },
        }
    }

    /// Whether the working size depends on the content image's shape.
    pub fn follows_content(&self) -> bool {
        match self.fit {
            Fit::Stretch => false,
            Fit::Cover => self.width.is_none(),
            Fit::Contain => true,
        }
    }

    /// The working size for a content image of `width`×`height` pixels.
    pub fn size_for(&self, width: usize, height: usize) -> Size {
        let bounds = self.bounds();
        if !self.follows_content() {
            return bounds;
        }
        // The largest size of the content's shape within the bounds, sides rounded to 8.
        let scale = (bounds.width as f64 / width.max(1) as f64).min(bounds.height as f64 / height.max(1) as f64);
        let round8 = |v: f64, max: usize| (((v / 8.0).round() as usize) * 8).clamp(8, max);
        Size { width: round8(width as f64 * scale, bounds.width), height: round8(height as f64 * scale, bounds.height) }
    }

    /// The settings of a run at `size`, under the JS API's option names (stored in the result
    /// PNG's metadata, shown by the page): enough to repeat the run.
    pub fn settings(&self, size: Size) -> serde_json::Value {
        serde_json::json!({
            "width": size.width,
            "height": size.height,
            "fit": self.fit.name(),
            "steps": self.steps,
            "strength": self.strength,
            "cfg": self.cfg,
            "styleGuidance": self.style_guidance,
            "featureStep": self.feature_step,
            "startLayer": self.start_layer,
            "endLayer": self.end_layer,
            "mixQ": self.mix_q,
            "tome": self.tome.as_ref().map_or(serde_json::Value::Bool(false), |t| serde_json::json!({
                "ratio": t.ratio, "sx": t.sx, "sy": t.sy, "deterministic": t.deterministic,
            })),
            "prompt": self.prompt,
            "negativePrompt": self.negative_prompt,
            "seed": self.seed,
            "noCfg": self.no_cfg,
        })
    }

    /// The result PNG's text chunks: what made it, and the settings (with the model) that
    /// repeat it.
    pub fn png_text(&self, size: Size, model: &str) -> Vec<(&'static str, String)> {
        let mut settings = self.settings(size);
        settings["model"] = model.into();
        vec![("Software", format!("zepo-web {}", env!("CARGO_PKG_VERSION"))), ("zepo-settings", settings.to_string())]
    }

    /// Options from a JSON object under the JS API's names (what `stylize(…, options)` takes,
    /// after `JSON.stringify`): absent keys keep the reference's defaults; unknown keys and
    /// wrong types are errors naming the key. Never panics, whatever the input.
    pub fn from_json(value: &serde_json::Value) -> Result<Self> {
        use serde_json::Value;
        let mut o = Self::default();
        let obj = match value {
            Value::Null => return Ok(o),
            Value::Object(m) => m,
            _ => return Err(Error::InvalidOption("options must be an object".into())),
        };
        let bad = |k: &str, what: &str| Error::InvalidOption(format!("option `{k}` must be {what}"));
        let num = |k: &str, v: &Value| v.as_f64().filter(|x| x.is_finite()).ok_or_else(|| bad(k, "a finite number"));
        let uint = |k: &str, v: &Value| {
            v.as_f64()
                .filter(|x| x.is_finite() && *x >= 0.0 && x.fract() == 0.0 && *x <= 9.007e15)
                .map(|x| x as u64)
                .ok_or_else(|| bad(k, "a non-negative integer"))
        };
        // Sizes and counts beyond any model's are refused here, before a cast could wrap them.
        let count = |k: &str, v: &Value| uint(k, v).and_then(|x| usize::try_from(x.min(1 << 40)).map_err(|_| bad(k, "smaller")));
        let text = |k: &str, v: &Value| v.as_str().map(str::to_string).ok_or_else(|| bad(k, "a string"));
        let boolean = |k: &str, v: &Value| v.as_bool().ok_or_else(|| bad(k, "true or false"));
        for (k, v) in obj {
            match k.as_str() {
                "resolution" => o.resolution = count(k, v)?,
                "width" => o.width = Some(count(k, v)?),
                "height" => o.height = Some(count(k, v)?),
                "fit" => o.fit = Fit::parse(&text(k, v)?).map_err(|_| bad(k, "'stretch', 'cover' or 'contain'"))?,
                "steps" => o.steps = count(k, v)?,
                "strength" => o.strength = num(k, v)?,
                "cfg" => o.cfg = num(k, v)? as f32,
                "styleGuidance" => o.style_guidance = num(k, v)? as f32,
                "featureStep" => o.feature_step = count(k, v)?,
                "startLayer" => o.start_layer = count(k, v)?,
                "endLayer" => o.end_layer = count(k, v)?,
                "mixQ" => o.mix_q = num(k, v)? as f32,
                "prompt" => o.prompt = text(k, v)?,
                "negativePrompt" => o.negative_prompt = text(k, v)?,
                "seed" => o.seed = uint(k, v)?,
                "noCfg" => o.no_cfg = boolean(k, v)?,
                "tome" => {
                    o.tome = match v {
                        Value::Bool(on) => on.then(TomeOptions::default),
                        Value::Null => None,
                        Value::Object(t) => {
                            let mut tome = TomeOptions::default();
                            for (tk, tv) in t {
                                let name = format!("tome.{tk}");
                                match tk.as_str() {
                                    "ratio" => tome.ratio = num(&name, tv)? as f32,
                                    "sx" => tome.sx = count(&name, tv)?,
                                    "sy" => tome.sy = count(&name, tv)?,
                                    "deterministic" => tome.deterministic = boolean(&name, tv)?,
                                    _ => {
                                        return Err(Error::InvalidOption(format!("unknown option `{name}` (ratio, sx, sy, deterministic)")))
                                    }
                                }
                            }
                            Some(tome)
                        }
                        _ => return Err(bad(k, "true, false or { ratio, sx, sy, deterministic }")),
                    }
                }
                _ => return Err(Error::InvalidOption(format!("unknown option `{k}` ({})", OPTION_NAMES.join(", ")))),
            }
        }
        Ok(o)
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
    fn sizes_follow_the_fit() {
        let size = |width, height| Size { width, height };
        let square = ZepoOptions::default();
        assert_eq!(square.size_for(300, 400), size(512, 512), "stretch: the reference's square");
        assert!(!square.follows_content());
        let contain = ZepoOptions { fit: Fit::Contain, ..Default::default() };
        assert_eq!(contain.size_for(300, 400), size(384, 512), "a 3:4 photo gives 3:4, long side = resolution");
        assert_eq!(contain.size_for(4000, 3000), size(512, 384));
        assert_eq!(contain.size_for(1000, 1000), size(512, 512));
        assert_eq!(contain.size_for(10, 4000), size(8, 512), "never below 8");
        let cover = ZepoOptions { fit: Fit::Cover, ..Default::default() };
        assert_eq!(cover.size_for(300, 400), size(384, 512));
        let boxed = |fit| ZepoOptions { fit, width: Some(256), height: Some(512), ..Default::default() };
        assert_eq!(boxed(Fit::Cover).size_for(400, 400), size(256, 512), "cover fills the box");
        assert!(!boxed(Fit::Cover).follows_content());
        assert_eq!(boxed(Fit::Contain).size_for(400, 400), size(256, 256), "contain fits inside it");
        assert_eq!(boxed(Fit::Stretch).size_for(400, 400), size(256, 512));
        let err = ZepoOptions { width: Some(256), ..Default::default() }.validate(16, 1000).unwrap_err().to_string();
        assert!(err.contains("width and height"), "{err}");
        let err = ZepoOptions { width: Some(250), height: Some(256), ..Default::default() }.validate(16, 1000).unwrap_err().to_string();
        assert!(err.contains("width 250"), "{err}");
        assert_eq!(Fit::parse("cover").unwrap(), Fit::Cover);
        assert!(Fit::parse("fill").unwrap_err().to_string().contains("stretch, cover or contain"));
    }

    #[test]
    fn options_from_json_name_what_is_wrong() {
        use serde_json::json;
        assert_eq!(ZepoOptions::from_json(&json!({})).unwrap(), ZepoOptions::default());
        assert_eq!(ZepoOptions::from_json(&serde_json::Value::Null).unwrap(), ZepoOptions::default());
        let o = ZepoOptions::from_json(&json!({"steps": 2, "fit": "contain", "tome": {"ratio": 0.25}, "negativePrompt": "x"})).unwrap();
        assert_eq!((o.steps, o.fit, o.tome.unwrap().ratio, o.negative_prompt.as_str()), (2, Fit::Contain, 0.25, "x"));
        for (bad, word) in [
            (json!({"steps": "two"}), "`steps` must be a non-negative integer"),
            (json!({"steps": -1}), "`steps`"),
            (json!({"steps": 1.5}), "`steps`"),
            (json!({"cfg": null}), "`cfg` must be a finite number"),
            (json!({"colour": 1}), "unknown option `colour` (resolution, width, height, fit, steps"),
            (json!({"tome": {"r": 1}}), "unknown option `tome.r`"),
            (json!({"tome": 3}), "`tome` must be true, false or"),
            (json!({"fit": "fill"}), "`fit` must be 'stretch', 'cover' or 'contain'"),
            (json!([1]), "options must be an object"),
        ] {
            let err = ZepoOptions::from_json(&bad).unwrap_err().to_string();
            assert!(err.contains(word), "{bad}: {err}");
        }
    }

    /// The settings a PNG carries are options that repeat the run: read back, they give the
    /// same run at its size.
    #[test]
    fn settings_read_back_as_the_same_options() {
        let o = ZepoOptions { fit: Fit::Contain, seed: 9, tome: None, prompt: "a \"quoted\" face".into(), ..Default::default() };
        let size = o.size_for(300, 400);
        let back = ZepoOptions::from_json(&o.settings(size)).unwrap();
        assert_eq!(back, ZepoOptions { width: Some(size.width), height: Some(size.height), ..o.clone() });
        assert_eq!(back.size_for(300, 400), size);
        let keys: Vec<String> = o.settings(size).as_object().unwrap().keys().cloned().collect();
        assert!(keys.iter().all(|k| OPTION_NAMES.contains(&k.as_str())), "{keys:?}");
    }

    /// The option names stated in the typings and the package README are the engine's.
    #[test]
    fn the_documented_options_are_the_engines() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let dts = std::fs::read_to_string(root.join("pkg/index.d.ts")).unwrap();
        let body = dts.split("export interface StylizeOptions {").nth(1).unwrap().split("\n}").next().unwrap();
        let typed: Vec<&str> =
            body.lines().filter_map(|l| l.trim().split_once("?:").map(|(k, _)| k)).filter(|k| !k.contains(' ')).collect();
        assert_eq!(typed, OPTION_NAMES, "pkg/index.d.ts StylizeOptions");
        let readme = std::fs::read_to_string(root.join("pkg/README.md")).unwrap();
        let documented: Vec<String> = readme
            .lines()
            .filter(|l| l.starts_with("| `"))
            .flat_map(|l| l.split('|').nth(1).unwrap().split(',').map(|k| k.trim().trim_matches('`').to_string()).collect::<Vec<_>>())
            .collect();
        for name in OPTION_NAMES {
            assert!(documented.iter().any(|d| d == name), "pkg/README.md's options table lacks `{name}`");
        }
        let js = std::fs::read_to_string(root.join("www/zepo.js")).unwrap();
        for name in OPTION_NAMES {
            assert!(js.contains(name), "www/zepo.js's option list lacks `{name}`");
        }
    }

    /// Each default as JS writes it (`2`, `0.5`, `'face'`, `true`), by option name.
    fn js_defaults() -> Vec<(&'static str, String)> {
        let d = ZepoOptions::default();
        let text = |s: &str| format!("'{s}'");
        vec![
            ("resolution", d.resolution.to_string()),
            ("fit", text(d.fit.name())),
            ("steps", d.steps.to_string()),
            ("strength", d.strength.to_string()),
            ("cfg", d.cfg.to_string()),
            ("styleGuidance", d.style_guidance.to_string()),
            ("featureStep", d.feature_step.to_string()),
            ("startLayer", d.start_layer.to_string()),
            ("endLayer", d.end_layer.to_string()),
            ("mixQ", d.mix_q.to_string()),
            // `true`: token merging with TomeOptions' defaults.
            ("tome", (d.tome == Some(TomeOptions::default())).to_string()),
            ("prompt", text(&d.prompt)),
            ("negativePrompt", text(&d.negative_prompt)),
            ("seed", d.seed.to_string()),
            ("noCfg", d.no_cfg.to_string()),
        ]
    }

    /// The defaults the docs state are `ZepoOptions::default()`'s: the package README's table,
    /// the typings' comments and www/zepo.js's option list.
    #[test]
    fn the_documented_defaults_are_the_engines() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let readme = std::fs::read_to_string(root.join("pkg/README.md")).unwrap();
        let mut table = std::collections::HashMap::new();
        for row in readme.lines().filter(|l| l.starts_with("| `")) {
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            for (name, value) in cells[1].split(',').zip(cells[2].split(", ")) {
                table.insert(name.trim().trim_matches('`').to_string(), value.trim().trim_matches('`').to_string());
            }
        }
        let dts = std::fs::read_to_string(root.join("pkg/index.d.ts")).unwrap();
        let body = dts.split("export interface StylizeOptions {").nth(1).unwrap().split("\n}").next().unwrap();
        let js = std::fs::read_to_string(root.join("www/zepo.js")).unwrap();
        let js_list: String = js.lines().filter_map(|l| l.strip_prefix("// ")).collect::<Vec<_>>().join(" ");
        // The README's JS API example spells the defaults out.
        let main_readme = std::fs::read_to_string(root.join("README.md")).unwrap();
        let example = main_readme.split("// One call, with a shared default engine").nth(1).unwrap().split("model:").next().unwrap();
        let spelled: std::collections::HashMap<&str, &str> = example
            .split(',')
            .filter_map(|kv| kv.split_once(": "))
            .map(|(k, v)| (k.trim().rsplit(['{', ' ', '\n']).next().unwrap(), v.trim()))
            .collect();
        assert!(spelled.len() >= 10, "README example: {spelled:?}");
        for (name, value) in js_defaults() {
            if let Some(v) = spelled.get(name) {
                assert_eq!(*v, value, "README.md's JS API example: `{name}`");
            }
            assert_eq!(table.get(name), Some(&value), "pkg/README.md's default of `{name}`");
            // The typing's doc comment ends with the default in parentheses.
            let before = body.split(&format!("\n  {name}?:")).next().unwrap();
            let doc = before.rsplit("/**").next().unwrap();
            assert!(doc.contains(&format!("({value})")), "pkg/index.d.ts: `{name}`'s comment lacks ({value}): {doc}");
            assert!(js_list.contains(&format!("{name} ({value}")), "www/zepo.js's option list lacks `{name} ({value}`");
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
