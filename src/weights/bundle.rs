//! The fp16 weight bundle's format (`weights/README.md`), in one place: `manifest.json` (what a
//! browser fetches, in which files, with their sizes and sha256), how a model is told to be a
//! bundle ([`is_manifest`]), and how a part's tensors are packed into shards ([`plan_shards`]).
//! No file system here: the browser engine, the native loader (`super::source`) and the
//! converter and verifier (`crate::tools`) all read and write bundles through this module.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::quant::QuantTensor;
use super::safetensors::{Dtype, Header, SafetensorsBytes};
use super::WeightsError;

/// The `format` field of every bundle manifest.
pub const FORMAT: &str = "zepo-fp16-bundle";
/// The version of a bundle with its fp16 weights only; a reader refuses any version but this
/// and [`FORMAT_VERSION_VARIANTS`].
pub const FORMAT_VERSION: u32 = 1;
/// The version of a bundle that also carries compact variants (`variants`): older readers
/// refuse it by its version rather than loading its fp16 weights without a word.
pub const FORMAT_VERSION_VARIANTS: u32 = 2;
/// The name of the bundle's own (base) weights among its variants.
pub const FP16: &str = "fp16";
/// The manifest's file name at the bundle's root.
pub const MANIFEST_FILE: &str = "manifest.json";
/// The model parts a bundle may hold, with their diffusers weight-file stems.
pub const PARTS: &[(&str, &str)] = &[("unet", "diffusion_pytorch_model"), ("vae", "diffusion_pytorch_model"), ("text_encoder", "model")];
/// The parts a load reads up front (the text encoder is read on demand).
pub const LOADED_PARTS: [&str; 2] = ["unet", "vae"];
/// The file of precomputed prompt embeddings, relative to the bundle's root.
pub const PROMPT_EMBEDDINGS_FILE: &str = "prompt_embeddings.safetensors";
/// The default shard cap, 256 MiB: well under what a fetch, a Cache API entry or a GPU
/// buffer comfortably takes.
pub const DEFAULT_SHARD_BYTES: u64 = 256 << 20;

/// A file of `found` bytes against the `expected` size a manifest gives: shorter is truncated,
/// longer is not the file listed. Both name `file`.
pub fn check_size(file: &str, found: u64, expected: u64) -> Result<(), WeightsError> {
    if found < expected {
        return Err(WeightsError::Truncated { file: file.to_string(), needed: expected, found });
    }
    if found > expected {
        return Err(WeightsError::Bundle { file: file.to_string(), reason: format!("{found} bytes, the manifest says {expected}") });
    }
    Ok(())
}

/// Whether `manifest.json`'s text is a bundle's manifest (it has a `format`; [`Manifest::parse`]
/// then checks which), rather than the plain `{ "files": … }` checksum list a diffusers layout
/// may carry. The one test of "is this model a bundle?", natively and in the browser.
pub fn is_manifest(text: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(text).is_ok_and(|v| v.get("format").is_some())
}

/// The shard file of shard `n` (0-based) of `count` of `part`, in `variant` (`fp16` or a
/// compact variant's name).
pub fn shard_url(part: &str, variant: &str, n: usize, count: usize) -> String {
    format!("{part}/{variant}-{:05}-of-{count:05}.safetensors", n + 1)
}

/// Packs a part's tensors (`(name, stored shape, bytes per element)`, in source order) greedily
/// into shards whose files stay within `cap` bytes (a tensor larger than that gets a shard of
/// its own). Returns each shard's tensor indices.
pub fn plan_shards(tensors: &[(&str, &[usize], usize)], cap: u64) -> Vec<Vec<usize>> {
    // A tensor's bytes in a shard: its data plus a bound on its header entry
    // (`"name":{"dtype":"F16","shape":[..],"data_offsets":[a,b]},`).
    let cost = |(name, shape, elem): &(&str, &[usize], usize)| {
        (shape.iter().product::<usize>() * elem) as u64 + (name.len() + 21 * shape.len() + 96) as u64
    };
    const HEADER_BASE: u64 = 64; // length prefix, braces, `__metadata__`, alignment
    let mut plan: Vec<Vec<usize>> = vec![Vec::new()];
    let mut size = HEADER_BASE;
    for (i, t) in tensors.iter().enumerate() {
        if !plan.last().unwrap().is_empty() && size + cost(t) > cap {
            plan.push(Vec::new());
            size = HEADER_BASE;
        }
        plan.last_mut().unwrap().push(i);
        size += cost(t);
    }
    plan
}

/// A checksum list, the optional `manifest.json` of a diffusers layout:
/// `{ "files": { "unet/diffusion_pytorch_model.safetensors": { "size": 123, "sha256": "ab…" } } }`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ChecksumList {
    #[serde(default)]
    pub files: BTreeMap<String, ChecksumEntry>,
}

/// One file of a [`ChecksumList`].
#[derive(Debug, Clone, Deserialize)]
pub struct ChecksumEntry {
    pub size: Option<u64>,
    pub sha256: Option<String>,
}

impl ChecksumList {
    /// Parses a checksum list; `name` is used in errors.
    pub fn parse(text: &str, name: &str) -> Result<Self, WeightsError> {
        serde_json::from_str(text).map_err(|e| WeightsError::Bundle { file: name.to_string(), reason: format!("not a checksum list: {e}") })
    }
}

/// A file of the bundle: its URL relative to the bundle's root, size and sha256 (lowercase hex).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRef {
    pub url: String,
    pub size: u64,
    pub sha256: String,
}

/// One safetensors shard of a part.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    #[serde(flatten)]
    pub file: FileRef,
    /// The safetensors dtype of every tensor in it (`F16`) but the compact ones.
    pub dtype: String,
    /// The tensors it holds, in file order.
    pub tensors: Vec<String>,
    /// The compact tensors among them, each stored `U8 [rows, row bytes]`
    /// (`crate::weights::quant`), with its scheme and logical shape.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub quantized: BTreeMap<String, QuantTensor>,
}

impl Shard {
    /// Checks the entry itself: every compact tensor listed, of a known scheme and a sane block. `file` is used in errors.
    pub fn check(&self, file: &str) -> Result<(), WeightsError> {
        let bad = |reason: String| WeightsError::Bundle { file: file.to_string(), reason };
        for (name, q) in &self.quantized {
            if !self.tensors.contains(name) {
                return Err(bad(format!("compact tensor `{name}` is not among the shard's tensors")));
            }
            q.quant(name).map_err(bad)?;
        }
        Ok(())
    }

    /// Checks a shard's parsed header against this entry: every tensor of the stated dtype
    /// (a compact one `U8` of its stored shape), exactly the listed tensors in the listed
    /// order. `file` is used in errors.
    pub fn check_header(&self, header: &Header, file: &str) -> Result<(), WeightsError> {
        let bad = |reason: String| WeightsError::Bundle { file: file.to_string(), reason };
        self.check(file)?;
        for t in &header.tensors {
            match self.quantized.get(&t.name) {
                Some(q) => super::quant::check_stored(q.quant(&t.name).map_err(bad)?, &q.shape, &t.name, t.dtype, &t.shape).map_err(bad)?,
                None if t.dtype.name() != self.dtype => {
                    return Err(bad(format!("tensor `{}` is {}, the manifest says {}", t.name, t.dtype.name(), self.dtype)));
                }
                None => {}
            }
        }
        let names: Vec<&str> = header.tensors.iter().map(|t| t.name.as_str()).collect();
        let listed: Vec<&str> = self.tensors.iter().map(String::as_str).collect();
        if names != listed {
            let i = names.iter().zip(&listed).position(|(a, b)| a != b).unwrap_or(names.len().min(listed.len()));
            return Err(bad(format!(
                "holds other tensors than the manifest lists: tensor #{i} is {:?}, the manifest says {:?} ({} held, {} listed)",
                names.get(i),
                listed.get(i),
                names.len(),
                listed.len()
            )));
        }
        Ok(())
    }
}

/// One model part (`unet`, `vae`, `text_encoder`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Part {
    /// The part's diffusers / transformers `config.json`, copied verbatim.
    pub config: FileRef,
    pub shards: Vec<Shard>,
    /// Sum of the shards' sizes.
    pub total_bytes: u64,
    /// Key prefixes left out (`encoder.` of a decode-only VAE, which older converters could
    /// write; the loader refuses such a bundle by name).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub omitted: Vec<String>,
    /// Non-float source tensors not carried: buffers no module uses (CLIP's `position_ids`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<String>,
}

impl Part {
    pub fn tensor_count(&self) -> usize {
        self.shards.iter().map(|s| s.tensors.len()).sum()
    }

    /// Whether keys under `prefix` (e.g. `encoder.`) were left out.
    pub fn omits(&self, prefix: &str) -> bool {
        self.omitted.iter().any(|p| p == prefix)
    }
}

/// A compact variant's weights of one part (its config is the base part's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VariantPart {
    pub shards: Vec<Shard>,
    /// Sum of the shards' sizes.
    pub total_bytes: u64,
}

/// What the converter measured of a compact variant (`weights/README.md`, "Compact variants").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Measured {
    /// The PSNR target its recipe was chosen for (dB), if it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_psnr: Option<f64>,
    /// Each part's output PSNR against the fp16 weights (dB), on the converter's synthetic
    /// inputs: the UNet's prediction, the VAE's decoded image and encoded latent (an output
    /// the variant leaves identical is not listed).
    pub psnr: BTreeMap<String, f64>,
}

/// A compact variant of the bundle's weights: the parts it replaces (the UNet's and the VAE's),
/// sharing everything else (configs, text encoder, tokenizer, prompt embeddings) with the base.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Variant {
    pub parts: BTreeMap<String, VariantPart>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measured: Option<Measured>,
}

/// Which of a bundle's weights a load takes: the smallest it has (`auto`), or one by name
/// (`fp16`, `q8`, `mixed`, …). A diffusers checkpoint has only its own.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum WeightsChoice {
    #[default]
    Auto,
    Named(String),
}

impl WeightsChoice {
    /// `auto` or a variant's name.
    pub fn parse(text: &str) -> Self {
        match text {
            "" | "auto" => WeightsChoice::Auto,
            name => WeightsChoice::Named(name.to_string()),
        }
    }
}

impl WeightsChoice {
    /// The variant's name, if one was named.
    pub fn into_named(self) -> Option<String> {
        match self {
            WeightsChoice::Auto => None,
            WeightsChoice::Named(n) => Some(n),
        }
    }
}

impl std::fmt::Display for WeightsChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WeightsChoice::Auto => f.write_str("auto"),
            WeightsChoice::Named(n) => f.write_str(n),
        }
    }
}

/// The rule for a variant's name: lowercase ASCII letters, digits and `-`, 1 to 32 of them,
/// starting with a letter (it is part of its shards' file names).
pub fn check_variant_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 32
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(format!("variant name {name:?}: 1 to 32 lowercase letters, digits and `-`, starting with a letter"))
    }
}

/// One precomputed prompt: its text and the tensor holding its embedding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromptEntry {
    pub text: String,
    pub tensor: String,
}

/// Text-encoder outputs (`last_hidden_state`, one `[positions, hidden]` tensor per prompt)
/// computed at conversion time, so that the browser needs no text encoder for these prompts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrecomputedPrompts {
    #[serde(flatten)]
    pub file: FileRef,
    /// `F32`: the encoder's f32 output as is (a few hundred KB; no second rounding).
    pub dtype: String,
    /// `[max_position_embeddings, hidden_size]` of the text encoder.
    pub shape: Vec<usize>,
    pub prompts: Vec<PromptEntry>,
}

impl PrecomputedPrompts {
    /// The precomputed embedding of `text` from the parsed `prompt_embeddings.safetensors`
    /// (`[positions, hidden]` f32 values, row-major), checked against the manifest's dtype and
    /// shape; `None` when `text` is not one of the precomputed prompts.
    pub fn values<B: AsRef<[u8]>>(&self, st: &SafetensorsBytes<B>, text: &str) -> Result<Option<Vec<f32>>, WeightsError> {
        let Some(entry) = self.prompts.iter().find(|p| p.text == text) else { return Ok(None) };
        let bad = |reason: String| WeightsError::Bundle { file: st.name().to_string(), reason };
        let (t, bytes) = st.get(&entry.tensor).ok_or_else(|| bad(format!("no tensor `{}` (prompt {:?})", entry.tensor, entry.text)))?;
        if t.dtype != Dtype::F32 || self.dtype != "F32" || t.shape != self.shape || self.shape.len() != 2 {
            return Err(bad(format!(
                "tensor `{}` is {} {:?}, the manifest says {} {:?} (expected F32 [positions, hidden])",
                entry.tensor,
                t.dtype.name(),
                t.shape,
                self.dtype,
                self.shape
            )));
        }
        Ok(Some(bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()))
    }
}

/// The whole `manifest.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub format_version: u32,
    /// The source model's name (its directory name unless given).
    pub model: String,
    /// `unet`, `vae`, and `text_encoder` unless left out.
    pub parts: BTreeMap<String, Part>,
    /// Whole parts left out on request (`text_encoder`, then also `tokenizer`) and sub-parts
    /// (`vae.encoder`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub omitted: Vec<String>,
    /// The CLIP tokenizer files (absent with the text encoder).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tokenizer: Vec<FileRef>,
    /// `scheduler/scheduler_config.json`.
    pub scheduler: Option<FileRef>,
    /// The source's `model_index.json`, if it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_index: Option<FileRef>,
    pub prompt_embeddings: Option<PrecomputedPrompts>,
    /// Compact variants of the UNet's and the VAE's weights, by name (format version 2).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub variants: BTreeMap<String, Variant>,
}

impl Manifest {
    /// Parses and checks a manifest's text; `name` is used in errors.
    pub fn parse(text: &str, name: &str) -> Result<Self, WeightsError> {
        let bad = |reason: String| WeightsError::Bundle { file: name.to_string(), reason };
        let value: serde_json::Value = serde_json::from_str(text).map_err(|e| bad(format!("not JSON: {e}")))?;
        match value.get("format").and_then(|f| f.as_str()) {
            Some(FORMAT) => {}
            other => return Err(bad(format!("format is {other:?}, expected \"{FORMAT}\""))),
        }
        match value.get("format_version").and_then(|v| v.as_u64()) {
            Some(v) if v == FORMAT_VERSION as u64 || v == FORMAT_VERSION_VARIANTS as u64 => {}
            other => {
                return Err(bad(format!(
                    "format_version {other:?} is not supported (this build reads versions {FORMAT_VERSION} and {FORMAT_VERSION_VARIANTS})"
                )))
            }
        }
        let manifest: Manifest = serde_json::from_value(value).map_err(|e| bad(e.to_string()))?;
        if !manifest.variants.is_empty() && manifest.format_version != FORMAT_VERSION_VARIANTS {
            return Err(bad(format!(
                "compact variants need format_version {FORMAT_VERSION_VARIANTS}, it says {}",
                manifest.format_version
            )));
        }
        for (vname, variant) in &manifest.variants {
            check_variant_name(vname).map_err(bad)?;
            if vname == FP16 {
                return Err(bad(format!("`{FP16}` names the bundle's own weights, not a compact variant")));
            }
            for (pname, part) in &variant.parts {
                if !manifest.parts.contains_key(pname) {
                    return Err(bad(format!("variant {vname}: part {pname} is not one of the bundle's parts")));
                }
                check_total(&part.shards, part.total_bytes).map_err(|e| bad(format!("variant {vname}, part {pname}: {e}")))?;
            }
            if let Some(m) = &variant.measured {
                if m.psnr.values().chain(m.target_psnr.iter()).any(|v| !v.is_finite()) {
                    return Err(bad(format!("variant {vname}: a measured PSNR is not finite")));
                }
            }
        }
        for shard in manifest.shards() {
            shard.check(name)?;
        }
        for file in manifest.files() {
            check_url(&file.url).map_err(|reason| bad(format!("`{}`: {reason}", file.url)))?;
            if file.sha256.len() != 64 || !file.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad(format!("`{}`: sha256 is not 64 hex digits", file.url)));
            }
        }
        for (name, part) in &manifest.parts {
            check_total(&part.shards, part.total_bytes).map_err(|e| bad(format!("part {name}: {e}")))?;
        }
        // Every sum of sizes taken later (a load's download, a variant's) is over some of these
        // files: once their total fits in a u64, none of those can overflow.
        if manifest.files().iter().try_fold(0u64, |a, f| a.checked_add(f.size)).is_none() {
            return Err(bad("its files' sizes add up to more than 2^64 bytes".to_string()));
        }
        Ok(manifest)
    }

    /// The manifest as written to `manifest.json` (pretty, stable key order).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a manifest always serializes") + "\n"
    }

    /// A part, or an error saying that it was left out (or never there).
    pub fn part(&self, name: &str) -> Result<&Part, WeightsError> {
        self.parts.get(name).ok_or_else(|| {
            let reason = if self.omitted.iter().any(|o| o == name) {
                format!("the {name} was left out of this bundle at conversion; convert the model again without leaving it out")
            } else {
                format!("this bundle has no {name} part (it has: {})", self.parts.keys().cloned().collect::<Vec<_>>().join(", "))
            };
            WeightsError::Bundle { file: format!("{} ({MANIFEST_FILE})", self.model), reason }
        })
    }

    /// The tensor holding the precomputed embedding of `text`, if there is one.
    pub fn prompt_tensor(&self, text: &str) -> Option<&str> {
        let pe = self.prompt_embeddings.as_ref()?;
        pe.prompts.iter().find(|p| p.text == text).map(|p| p.tensor.as_str())
    }

    /// Whether the VAE's encoder was left out: such a bundle can decode latents but cannot
    /// encode images (the converter no longer makes them; a hand-made or older one is refused).
    pub fn vae_encoder_omitted(&self) -> bool {
        self.omitted.iter().any(|o| o == "vae.encoder") || self.parts.get("vae").is_some_and(|p| p.omits("encoder."))
    }

    /// Every shard of every variant.
    pub fn shards(&self) -> impl Iterator<Item = &Shard> {
        let base = self.parts.values().flat_map(|p| &p.shards);
        base.chain(self.variants.values().flat_map(|v| v.parts.values().flat_map(|p| &p.shards)))
    }

    /// The names of the bundle's weights: `fp16`, then its compact variants.
    pub fn variant_names(&self) -> Vec<&str> {
        std::iter::once(FP16).chain(self.variants.keys().map(String::as_str)).collect()
    }

    /// The variant a load takes for `choice`: `auto` the one with the fewest bytes to load up
    /// front, else the one named (an error listing the bundle's variants if it has none such).
    pub fn choose(&self, choice: &WeightsChoice) -> Result<String, WeightsError> {
        match choice {
            WeightsChoice::Auto => {
                let size = |v: &str| self.load_weights(v).iter().map(|f| f.size).sum::<u64>();
                Ok(self.variant_names().into_iter().min_by_key(|v| size(v)).unwrap_or(FP16).to_string())
            }
            WeightsChoice::Named(n) if n == FP16 || self.variants.contains_key(n) => Ok(n.clone()),
            WeightsChoice::Named(n) => Err(WeightsError::Bundle {
                file: format!("{} ({MANIFEST_FILE})", self.model),
                reason: format!("has no `{n}` weights (it has: {}; or 'auto')", self.variant_names().join(", ")),
            }),
        }
    }

    /// The shards of `part` in `variant` (the base's where the variant does not replace it).
    pub fn part_shards(&self, part: &str, variant: &str) -> Result<&[Shard], WeightsError> {
        let base = self.part(part)?;
        Ok(match self.variants.get(variant).and_then(|v| v.parts.get(part)) {
            Some(p) => &p.shards,
            None => &base.shards,
        })
    }

    /// Every file the bundle references (configs, shards of every variant, tokenizer,
    /// scheduler, embeddings).
    pub fn files(&self) -> Vec<&FileRef> {
        let mut files = Vec::new();
        for part in self.parts.values() {
            files.push(&part.config);
        }
        files.extend(self.shards().map(|s| &s.file));
        files.extend(self.tokenizer.iter());
        files.extend(self.scheduler.iter());
        files.extend(self.model_index.iter());
        files.extend(self.prompt_embeddings.iter().map(|p| &p.file));
        files
    }

    /// The files a load of `variant` reads up front: the scheduler config, the UNet's and the
    /// VAE's configs and [`Self::load_weights`]. The text encoder and tokenizer are read on
    /// demand (a prompt not precomputed). The page's download question counts these.
    pub fn load_files(&self, variant: &str) -> Vec<&FileRef> {
        let mut files: Vec<&FileRef> = self.scheduler.iter().collect();
        files.extend(LOADED_PARTS.iter().filter_map(|p| self.parts.get(*p)).map(|p| &p.config));
        files.extend(self.load_weights(variant));
        files
    }

    /// The weights a load of `variant` streams up front: the UNet's and the VAE's shards and
    /// the prompt embeddings (the engine announces their total as the download's before
    /// reading any).
    pub fn load_weights(&self, variant: &str) -> Vec<&FileRef> {
        let mut files: Vec<&FileRef> = Vec::new();
        for part in LOADED_PARTS.iter().filter(|p| self.parts.contains_key(**p)) {
            files.extend(self.part_shards(part, variant).unwrap_or_default().iter().map(|s| &s.file));
        }
        files.extend(self.prompt_embeddings.iter().map(|p| &p.file));
        files
    }

    /// The text encoder's files (config, shards, tokenizer), `None` when it was left out.
    pub fn text_encoder_files(&self) -> Option<Vec<&FileRef>> {
        let part = self.parts.get("text_encoder")?;
        let mut files = vec![&part.config];
        files.extend(part.shards.iter().map(|s| &s.file));
        files.extend(self.tokenizer.iter());
        Some(files)
    }

    /// Bytes of every referenced file together.
    pub fn total_bytes(&self) -> u64 {
        self.files().iter().map(|f| f.size).sum()
    }
}

/// Checks a part's `total_bytes` against its shards' sizes, which a hostile manifest may make
/// add up past `u64::MAX`.
fn check_total(shards: &[Shard], total_bytes: u64) -> Result<(), String> {
    match shards.iter().try_fold(0u64, |a, s| a.checked_add(s.file.size)) {
        Some(sum) if sum == total_bytes => Ok(()),
        sum => Err(format!(
            "total_bytes {total_bytes} but its shards add up to {}",
            sum.map_or("more than 2^64 bytes".to_string(), |s| s.to_string())
        )),
    }
}

/// The rule for every `url` of a manifest: it names a file inside the bundle's folder, and means
/// the same to every URL parser and static server. `/`-separated components of ASCII letters,
/// digits, `_`, `-` and `.`, none empty and none starting with `.` (so no `.`, `..` or hidden
/// file), at most 255 bytes each. That refuses absolute URLs (`https://…`, any `:`), `//host` and
/// `/…`, backslashes (a `/` to a URL parser), `%` escapes (`%2e%2e` is `..` to a URL parser),
/// `?` and `#`, whitespace and control characters (a URL parser drops tabs and newlines: `.\t.`
/// is `..`), and anything not ASCII. `Manifest::parse` applies it to every file.
pub fn check_url(url: &str) -> Result<(), String> {
    if url.is_empty() {
        return Err("is empty".into());
    }
    if url.starts_with("//") {
        return Err("points to another host (`//host`): a file must be inside the bundle's folder".into());
    }
    if url.starts_with('/') {
        return Err("is an absolute path: a file must be relative to the manifest, inside the bundle's folder".into());
    }
    if url.contains(':') {
        return Err("has a `:` (an absolute URL, `scheme:…`): a file must be relative to the manifest, inside the bundle's folder".into());
    }
    if url.contains('\\') {
        return Err("has a backslash, which a URL parser reads as `/`: only `/` separates folders".into());
    }
    if url.contains('%') {
        return Err("has a `%` escape (`%2e%2e` is `..` to a URL parser): names must be written plain".into());
    }
    if let Some(c) = url.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/'))) {
        return Err(format!("has the character {c:?}: only ASCII letters, digits, `_`, `-`, `.` and `/` are allowed"));
    }
    for c in url.split('/') {
        if c.is_empty() {
            return Err("has an empty folder name (`//` or a trailing `/`)".into());
        }
        if c == ".." || c == "." {
            return Err(format!("has a `{c}` component: a file must be inside the bundle's folder"));
        }
        if c.starts_with('.') {
            return Err(format!("has a name starting with `.` (`{c}`): hidden names are not allowed"));
        }
        if c.len() > 255 {
            return Err("has a name longer than 255 bytes".into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(url: &str, size: u64) -> FileRef {
        FileRef { url: url.into(), size, sha256: "0".repeat(64) }
    }

    fn sample() -> Manifest {
        let shard = Shard {
            file: file("unet/fp16-00001-of-00001.safetensors", 10),
            dtype: "F16".into(),
            tensors: vec!["a".into()],
            quantized: BTreeMap::new(),
        };
        let part = Part { config: file("unet/config.json", 3), shards: vec![shard], total_bytes: 10, omitted: vec![], skipped: vec![] };
        Manifest {
            format: FORMAT.into(),
            format_version: FORMAT_VERSION,
            model: "m".into(),
            parts: [("unet".to_string(), part)].into(),
            omitted: vec!["text_encoder".into()],
            tokenizer: vec![],
            scheduler: None,
            model_index: None,
            prompt_embeddings: None,
            variants: BTreeMap::new(),
        }
    }

    /// `sample()` with a `q4` variant of the UNet of `size` bytes whose tensor `a` is compact.
    fn with_variant(size: u64) -> Manifest {
        let mut m = sample();
        m.format_version = FORMAT_VERSION_VARIANTS;
        let quantized = [("a".to_string(), QuantTensor { scheme: "q4".into(), block: 32, shape: vec![4, 64] })].into();
        let shard =
            Shard { file: file("unet/q4-00001-of-00001.safetensors", size), dtype: "F16".into(), tensors: vec!["a".into()], quantized };
        let part = VariantPart { shards: vec![shard], total_bytes: size };
        let measured = Some(Measured { target_psnr: Some(70.0), psnr: [("unet".to_string(), 71.5)].into() });
        m.variants.insert("q4".into(), Variant { parts: [("unet".to_string(), part)].into(), measured });
        m
    }

    #[test]
    fn variants_are_chosen_by_name_or_by_size() {
        let m = Manifest::parse(&with_variant(4).to_json(), "manifest.json").unwrap();
        assert_eq!(m, with_variant(4));
        assert_eq!(m.variant_names(), ["fp16", "q4"]);
        assert_eq!(m.choose(&WeightsChoice::Auto).unwrap(), "q4");
        assert_eq!(with_variant(40).choose(&WeightsChoice::Auto).unwrap(), "fp16", "the smaller one");
        assert_eq!(m.choose(&WeightsChoice::parse("fp16")).unwrap(), "fp16");
        let err = m.choose(&WeightsChoice::parse("q8")).unwrap_err().to_string();
        assert!(err.contains("no `q8` weights") && err.contains("fp16, q4"), "{err}");
        let urls = |f: Vec<&FileRef>| f.iter().map(|f| f.url.clone()).collect::<Vec<_>>();
        assert_eq!(urls(m.load_weights("q4")), ["unet/q4-00001-of-00001.safetensors"]);
        assert_eq!(urls(m.load_weights("fp16")), ["unet/fp16-00001-of-00001.safetensors"]);
        assert_eq!(m.files().len(), 3, "config and both variants' shards");
        // A bundle of version 1 is what it was.
        assert_eq!(Manifest::parse(&sample().to_json(), "m").unwrap().choose(&WeightsChoice::Auto).unwrap(), "fp16");
    }

    /// A tampered manifest's compact variant is refused by name when it is parsed.
    #[test]
    fn hostile_variants_are_refused_by_name() {
        let cases: Vec<(Box<dyn Fn(&mut Manifest)>, &str)> = vec![
            (Box::new(|m| m.format_version = FORMAT_VERSION), "need format_version 2"),
            (
                Box::new(|m| {
                    m.variants.get_mut("q4").unwrap().parts.get_mut("unet").unwrap().shards[0].quantized.get_mut("a").unwrap().scheme =
                        "q3k".into()
                }),
                "unknown weight scheme `q3k`",
            ),
            (
                Box::new(|m| {
                    m.variants.get_mut("q4").unwrap().parts.get_mut("unet").unwrap().shards[0].quantized.get_mut("a").unwrap().block = 0
                }),
                "block 0",
            ),
            (
                Box::new(|m| m.variants.get_mut("q4").unwrap().parts.get_mut("unet").unwrap().shards[0].tensors = vec!["b".into()]),
                "`a` is not among",
            ),
            (Box::new(|m| m.variants.get_mut("q4").unwrap().parts.get_mut("unet").unwrap().total_bytes = 99), "total_bytes 99"),
            (
                Box::new(|m| {
                    let v = m.variants.remove("q4").unwrap();
                    m.variants.insert("fp16".into(), v);
                }),
                "`fp16` names",
            ),
            (
                Box::new(|m| {
                    let v = m.variants.remove("q4").unwrap();
                    m.variants.insert("../x".into(), v);
                }),
                "variant name",
            ),
            (
                Box::new(|m| {
                    let v = m.variants.get_mut("q4").unwrap();
                    let p = v.parts.remove("unet").unwrap();
                    v.parts.insert("vae".into(), p);
                }),
                "part vae is not",
            ),
            (
                Box::new(|m| {
                    m.variants.get_mut("q4").unwrap().parts.get_mut("unet").unwrap().shards[0].file.url = "../q.safetensors".into()
                }),
                "`..` component",
            ),
        ];
        for (tamper, why) in cases {
            let mut m = with_variant(4);
            tamper(&mut m);
            let err = Manifest::parse(&m.to_json(), "m/manifest.json").unwrap_err().to_string();
            assert!(err.contains("m/manifest.json") && err.contains(why), "expected {why:?} in: {err}");
        }
        let text = with_variant(4).to_json().replace("71.5", "1e999");
        assert!(Manifest::parse(&text, "m").is_err(), "an infinite PSNR");
    }

    #[test]
    fn round_trips_and_names_left_out_parts() {
        let m = sample();
        let back = Manifest::parse(&m.to_json(), "manifest.json").unwrap();
        assert_eq!(back, m);
        let err = back.part("text_encoder").unwrap_err().to_string();
        assert!(err.contains("left out"), "{err}");
        let err = back.part("vae").unwrap_err().to_string();
        assert!(err.contains("no vae part") && err.contains("unet"), "{err}");
    }

    #[test]
    fn a_load_fetches_the_scheduler_unet_vae_and_prompts_not_the_text_encoder() {
        let mut m = sample();
        m.scheduler = Some(file("scheduler/scheduler_config.json", 5));
        let mut text = m.parts["unet"].clone();
        text.config = file("text_encoder/config.json", 7);
        text.shards[0].file = file("text_encoder/fp16-00001-of-00001.safetensors", 10);
        m.parts.insert("text_encoder".into(), text);
        m.tokenizer = vec![file("tokenizer/vocab.json", 11)];
        let urls = |f: Vec<&FileRef>| f.iter().map(|f| f.url.clone()).collect::<Vec<_>>();
        assert_eq!(
            urls(m.load_files(FP16)),
            ["scheduler/scheduler_config.json", "unet/config.json", "unet/fp16-00001-of-00001.safetensors"]
        );
        assert_eq!(urls(m.load_weights(FP16)), ["unet/fp16-00001-of-00001.safetensors"]);
        assert_eq!(
            urls(m.text_encoder_files().unwrap()),
            ["text_encoder/config.json", "text_encoder/fp16-00001-of-00001.safetensors", "tokenizer/vocab.json"]
        );
        m.parts.remove("text_encoder");
        assert!(m.text_encoder_files().is_none());
    }

    #[test]
    fn rejects_other_versions_escaping_urls_and_bad_totals() {
        let mut m = sample();
        m.format_version = 3;
        let err = Manifest::parse(&m.to_json(), "x/manifest.json").unwrap_err().to_string();
        assert!(err.contains("x/manifest.json") && err.contains("format_version"), "{err}");

        for url in ["../secret", "/etc/passwd", "https://a/b", "a//b"] {
            let mut m = sample();
            m.parts.get_mut("unet").unwrap().config.url = url.into();
            let err = Manifest::parse(&m.to_json(), "manifest.json").unwrap_err().to_string();
            assert!(err.contains(url), "{url}: {err}");
        }

        let mut m = sample();
        m.parts.get_mut("unet").unwrap().total_bytes = 11;
        let err = Manifest::parse(&m.to_json(), "manifest.json").unwrap_err().to_string();
        assert!(err.contains("total_bytes"), "{err}");

        // Sizes whose sum passes u64::MAX (found by the fuzzer: the sum panicked): in a part,
        // in a variant's part, and across files that each add up within their part.
        let mut m = sample();
        let unet = m.parts.get_mut("unet").unwrap();
        unet.shards.push(unet.shards[0].clone());
        unet.shards.iter_mut().for_each(|s| s.file.size = u64::MAX / 2 + 1);
        unet.total_bytes = 0;
        let err = Manifest::parse(&m.to_json(), "manifest.json").unwrap_err().to_string();
        assert!(err.contains("more than 2^64 bytes"), "{err}");
        let mut m = with_variant(u64::MAX);
        let q4 = m.variants.get_mut("q4").unwrap().parts.get_mut("unet").unwrap();
        q4.shards.push(q4.shards[0].clone());
        let err = Manifest::parse(&m.to_json(), "manifest.json").unwrap_err().to_string();
        assert!(err.contains("variant q4") && err.contains("more than 2^64 bytes"), "{err}");
        let err = Manifest::parse(&with_variant(u64::MAX).to_json(), "manifest.json").unwrap_err().to_string();
        assert!(err.contains("files' sizes add up to more than 2^64 bytes"), "{err}");
    }

    /// Every way a manifest's `url` could name something outside the bundle's folder (once
    /// joined to the model's base URL and parsed by a browser, or resolved by a server) is
    /// refused by `Manifest::parse`, the error naming the manifest, the url and the reason.
    #[test]
    fn urls_outside_the_bundle_are_refused_by_name() {
        let refused: &[(&str, &str)] = &[
            ("../model.safetensors", "`..` component"),
            ("unet/../../x.safetensors", "`..` component"),
            ("unet/./config.json", "`.` component"),
            ("..", "`..` component"),
            ("/etc/passwd", "absolute path"),
            ("//evil.example/x.safetensors", "another host"),
            ("https://evil.example/x.safetensors", "`:`"),
            ("http:x.safetensors", "`:`"),
            ("file:///etc/passwd", "`:`"),
            ("javascript:alert(1)", "`:`"),
            ("C:/x.safetensors", "`:`"),
            ("%2e%2e/x.safetensors", "`%` escape"),
            ("unet/%2E%2E/%2e%2e/x", "`%` escape"),
            (".%2e/x", "`%` escape"),
            ("unet%2f..%2fx", "`%` escape"),
            ("..\\x.safetensors", "backslash"),
            ("unet\\..\\..\\x", "backslash"),
            ("\\\\evil\\x", "backslash"),
            (".\t./x", "'\\t'"),
            (".\n./x", "'\\n'"),
            ("unet/config.json?x=1", "'?'"),
            ("unet/config.json#x", "'#'"),
            ("unet/con fig.json", "' '"),
            ("unet/\u{ff0e}\u{ff0e}/x", "'\u{ff0e}'"),
            ("unet/\0x", "'\\0'"),
            ("", "empty"),
            ("unet//x", "empty folder"),
            ("unet/", "empty folder"),
            (".zepo-complete", "starting with `.`"),
            ("unet/.hidden", "starting with `.`"),
        ];
        for (url, why) in refused {
            for place in 0..4 {
                let mut m = sample();
                match place {
                    0 => m.parts.get_mut("unet").unwrap().config.url = url.to_string(),
                    1 => m.parts.get_mut("unet").unwrap().shards[0].file.url = url.to_string(),
                    2 => m.tokenizer.push(file(url, 1)),
                    _ => m.scheduler = Some(file(url, 1)),
                }
                let err = Manifest::parse(&m.to_json(), "https://host/m/manifest.json").unwrap_err().to_string();
                assert!(err.starts_with("https://host/m/manifest.json"), "{url:?}: {err}");
                assert!(err.contains(&format!("`{url}`")), "{url:?} named: {err}");
                assert!(err.contains(why), "{url:?}: expected {why:?} in: {err}");
            }
        }
        assert!(check_url(&format!("unet/{}", "a".repeat(256))).unwrap_err().contains("255"));

        // What the converter writes (and any plain relative name) passes.
        for url in [
            "unet/config.json",
            "unet/fp16-00001-of-00007.safetensors",
            "text_encoder/fp16-00001-of-00001.safetensors",
            "tokenizer/special_tokens_map.json",
            "prompt_embeddings.safetensors",
            "model_index.json",
            "a/b/c-d_e.f.g",
        ] {
            assert_eq!(check_url(url), Ok(()), "{url}");
        }
    }
}
