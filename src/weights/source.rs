//! Where a model comes from. A [`ModelSource`] is a model's files, wherever they are: a
//! directory (natively, [`super::dir::DirSource`]) or the browser's downloads (`web::files`).
//! A [`Layout`] says how they are laid out: an fp16 bundle (`manifest.json`, see
//! [`super::bundle`]) or a diffusers checkpoint (configs beside `<stem>[.variant].safetensors`,
//! maybe sharded, see [`super::diffusers`]). Together they give every part's config text and
//! weights the same way for the CLI, the converter and verifier, and the browser engine.

use super::bundle::{ChecksumList, Manifest, WeightsChoice, FP16, LOADED_PARTS, MANIFEST_FILE, PARTS};
use super::diffusers::{self, ShardIndex};
use super::{Header, LoadOptions, SafetensorsBytes, VarStore, WeightsError};
use crate::{Error, Result};
use burn::tensor::Device;

/// A check of a safetensors file's header before any of its tensors is stored (against a
/// bundle's manifest or a shard index).
pub type HeaderCheck<'a> = &'a dyn Fn(&Header) -> Result<(), WeightsError>;

/// A model's files, by path relative to the model's root (`unet/config.json`). The browser's is
/// asynchronous (every file is a download); a directory's completes at once.
#[allow(async_fn_in_trait)] // the futures are awaited where they are made (one thread in a Worker)
pub trait ModelSource {
    /// The file's full name for messages: its path or URL.
    fn name(&self, path: &str) -> String;

    /// A text file; `None` when `optional` and the file does not exist (else that is an error
    /// naming it).
    async fn text(&self, path: &str, optional: bool) -> Result<Option<String>>;

    /// A small binary file whole (the prompt embeddings).
    async fn bytes(&self, path: &str) -> Result<Vec<u8>>;

    /// Streams the safetensors file `path` into `store`, tensor by tensor; `check` sees its
    /// header before any tensor is stored. `Ok(false)` when `optional` and it does not exist.
    async fn stream_into(&self, path: &str, optional: bool, store: &mut VarStore, check: HeaderCheck<'_>) -> Result<bool>;

    /// Tells the source what a manifest says of a file (its size, its sha256), before it is
    /// read: the source refuses a file that disagrees. `now`: the current load reads it (the
    /// browser counts it in the download announced up front).
    fn declare(&self, path: &str, size: Option<u64>, sha256: Option<&str>, now: bool);

    /// The diffusers weight variants to look for, `(preferred, fallback)` (see
    /// [`diffusers::candidates`]): the browser prefers `fp16` (half the download); a directory
    /// takes the full files first and an fp16-only checkpoint too.
    fn variants(&self) -> (Option<String>, Option<String>);
}

/// How a model's files are laid out.
#[derive(Debug, Clone)]
pub enum Layout {
    /// An fp16 bundle: its manifest lists every file; `variant` names the weights a load takes
    /// (`fp16` or a compact variant).
    Bundle { manifest: Manifest, variant: String },
    /// A diffusers checkpoint (its `manifest.json`, if any, only lists checksums).
    Diffusers,
}

impl Layout {
    /// Reads `manifest.json` (if any) and tells the layout: a bundle's manifest is parsed (its
    /// format and version checked), the weights of `choice` picked and every file it lists
    /// declared to the source; a diffusers layout's checksum list is declared likewise (it has
    /// only its own weights: asking it for a compact variant is an error). A bundle without the
    /// VAE's encoder is refused here: stylizing encodes the portrait and the style image.
    pub async fn detect<S: ModelSource>(source: &S, choice: &WeightsChoice) -> Result<Self> {
        let text = source.text(MANIFEST_FILE, true).await?;
        let name = source.name(MANIFEST_FILE);
        let text = match text {
            Some(text) if super::bundle::is_manifest(&text) => text,
            other => {
                // No manifest, or a diffusers layout's checksum list.
                if let Some(t) = other {
                    for (path, entry) in &ChecksumList::parse(&t, &name)?.files {
                        source.declare(path, entry.size, entry.sha256.as_deref(), false);
                    }
                }
                if let Some(n) = choice.clone().into_named().filter(|n| n != FP16) {
                    let reason = format!(
                        "is a diffusers checkpoint, which has only its own weights, not `{n}`: convert it into a bundle with \
                         `zepo weights convert --variants {n}`, or load it with weights 'auto'"
                    );
                    return Err(WeightsError::Bundle { file: source.name(""), reason }.into());
                }
                return Ok(Layout::Diffusers);
            }
        };
        let manifest = Manifest::parse(&text, &name)?;
        let variant = manifest.choose(choice)?;
        let now: Vec<&str> = manifest.load_weights(&variant).iter().map(|f| f.url.as_str()).collect();
        for f in manifest.files() {
            source.declare(&f.url, Some(f.size), Some(&f.sha256), now.contains(&f.url.as_str()));
        }
        if manifest.vae_encoder_omitted() {
            return Err(WeightsError::Bundle {
                file: name,
                reason: "the VAE encoder (vae.encoder) was left out of this bundle, and stylizing needs it to encode the \
                         portrait and the style image; convert the model again with `zepo weights convert`"
                    .into(),
            }
            .into());
        }
        Ok(Layout::Bundle { manifest, variant })
    }

    /// The bundle's manifest, if the model is one.
    pub fn manifest(&self) -> Option<&Manifest> {
        match self {
            Layout::Bundle { manifest, .. } => Some(manifest),
            Layout::Diffusers => None,
        }
    }

    /// The path of a part's `config.json` (an error naming the part when a bundle left it out).
    pub fn config_path(&self, part: &str) -> Result<String> {
        match self {
            Layout::Bundle { manifest, .. } => Ok(manifest.part(part)?.config.url.clone()),
            Layout::Diffusers => Ok(format!("{part}/config.json")),
        }
    }

    /// The path of the scheduler's config.
    pub fn scheduler_path(&self) -> Result<String> {
        match self {
            Layout::Bundle { manifest: m, .. } => Ok(m
                .scheduler
                .as_ref()
                .ok_or_else(|| WeightsError::Bundle {
                    file: format!("{} ({MANIFEST_FILE})", m.model),
                    reason: "lists no scheduler config".into(),
                })?
                .url
                .clone()),
            Layout::Diffusers => Ok("scheduler/scheduler_config.json".into()),
        }
    }

    /// The path of a tokenizer file (`vocab.json`…), `None` if a bundle does not list it.
    pub fn tokenizer_path(&self, file: &str) -> Option<String> {
        match self {
            Layout::Bundle { manifest: m, .. } => {
                m.tokenizer.iter().find(|f| f.url.rsplit('/').next() == Some(file)).map(|f| f.url.clone())
            }
            Layout::Diffusers => Some(format!("tokenizer/{file}")),
        }
    }

    /// The weights a load takes: a bundle's chosen variant, `fp16` for a diffusers layout
    /// (whatever its files' dtype: its own weights).
    pub fn variant(&self) -> &str {
        match self {
            Layout::Bundle { variant, .. } => variant,
            Layout::Diffusers => FP16,
        }
    }

    /// A part's weights, streamed from its files into one store: a bundle's shards of the
    /// chosen variant, each checked against the manifest (its compact tensors declared to the
    /// store first); a diffusers part's first weight candidate present (a sharded one's shards
    /// checked against its index).
    pub async fn load_part<S: ModelSource>(&self, source: &S, part: &str, device: &Device, opts: &LoadOptions) -> Result<VarStore> {
        match self {
            Layout::Bundle { manifest, variant } => {
                let what = if variant == FP16 { String::new() } else { format!(", {variant} weights") };
                let mut store =
                    VarStore::new(device, opts, format!("{} (bundle part {part}{what})", source.name("").trim_end_matches('/')));
                if LOADED_PARTS.contains(&part) {
                    store.keep_f16_compact();
                }
                for shard in manifest.part_shards(part, variant)? {
                    let name = source.name(&shard.file.url);
                    store.expect_quantized(&shard.quantized, &name)?;
                    source.stream_into(&shard.file.url, false, &mut store, &|h| shard.check_header(h, &name)).await?;
                }
                Ok(store)
            }
            Layout::Diffusers => {
                let mut store = VarStore::new(device, opts, source.name(part));
                if LOADED_PARTS.contains(&part) {
                    store.keep_f16_compact();
                }
                diffusers_weights(source, part, &mut async |path, index| match index {
                    None => source.stream_into(path, true, &mut store, &|_| Ok(())).await,
                    Some(index) => {
                        let shard = path.rsplit('/').next().unwrap_or(path);
                        source.stream_into(path, false, &mut store, &|h| index.check_shard(shard, h)).await
                    }
                })
                .await?;
                Ok(store)
            }
        }
    }

    /// The bundle's precomputed prompt embeddings: the `[positions, hidden]` shape and each
    /// prompt's f32 values, `hidden` checked against the UNet's `cross_attention_dim`. Empty
    /// for a diffusers layout.
    pub async fn precomputed_prompts<S: ModelSource>(&self, source: &S, cross_attention_dim: usize) -> Result<PrecomputedValues> {
        let Some(pe) = self.manifest().and_then(|m| m.prompt_embeddings.as_ref()) else { return Ok(PrecomputedValues::default()) };
        let name = source.name(&pe.file.url);
        if pe.shape.len() != 2 || pe.shape[1] != cross_attention_dim {
            let reason = format!("embeddings of shape {:?}, the UNet's cross_attention_dim is {cross_attention_dim}", pe.shape);
            return Err(WeightsError::Bundle { file: name, reason }.into());
        }
        let st = SafetensorsBytes::new(source.bytes(&pe.file.url).await?, name)?;
        let mut prompts = Vec::with_capacity(pe.prompts.len());
        for p in &pe.prompts {
            let values = pe.values(&st, &p.text)?.expect("a listed prompt has values");
            prompts.push((p.text.clone(), values));
        }
        Ok(PrecomputedValues { shape: [pe.shape[0], pe.shape[1]], prompts })
    }
}

/// Precomputed prompt embeddings read from a bundle.
#[derive(Debug, Clone, Default)]
pub struct PrecomputedValues {
    /// `[positions, hidden]`.
    pub shape: [usize; 2],
    /// Each prompt's text and `positions × hidden` values.
    pub prompts: Vec<(String, Vec<f32>)>,
}

/// A diffusers part's weight candidates (relative to its folder) for the given variants, each
/// checked ([`diffusers::candidates`] with the part's file stem): what the loader walks and what
/// the page's download question sizes.
pub fn part_candidates(part: &str, preferred: Option<&str>, fallback: Option<&str>) -> Result<Vec<diffusers::Candidate>> {
    let (_, stem) = PARTS.iter().find(|(p, _)| *p == part).ok_or_else(|| Error::InvalidOption(format!("no model part `{part}`")))?;
    for v in [preferred, fallback].into_iter().flatten() {
        diffusers::check_variant(v).map_err(Error::InvalidOption)?;
    }
    Ok(diffusers::candidates(stem, preferred, fallback))
}

/// Walks a diffusers part's weight candidates in the source's order ([`ModelSource::variants`]):
/// `read(path, None)` for a single file (it returns whether the file was there), or, for the
/// first shard index present, `read(shard, Some(index))` for each of its shards. The one
/// definition of "where a diffusers part's weights are", for loading and for converting.
pub async fn diffusers_weights<S: ModelSource>(
    source: &S,
    part: &str,
    read: &mut impl AsyncFnMut(&str, Option<&ShardIndex>) -> Result<bool>,
) -> Result<()> {
    let (preferred, fallback) = source.variants();
    let tried = part_candidates(part, preferred.as_deref(), fallback.as_deref())?;
    for c in &tried {
        let path = format!("{part}/{}", c.file);
        if !c.sharded {
            if read(&path, None).await? {
                return Ok(());
            }
            continue;
        }
        let Some(text) = source.text(&path, true).await? else { continue };
        let index = ShardIndex::parse(&text, &source.name(&path))?;
        for shard in index.shards() {
            read(&format!("{part}/{shard}"), Some(&index)).await?;
        }
        return Ok(());
    }
    let looked_for = tried.iter().map(|c| c.file.clone()).collect::<Vec<_>>().join(", ");
    Err(WeightsError::NoWeights { part: source.name(part), looked_for }.into())
}
