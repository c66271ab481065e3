//! Loading from an fp16 bundle (`weights/README.md`): `manifest.json` says which shards make
//! each part, with their sizes and sha256 (handed to `www/weights.js`, which checks every file
//! before storing it); each shard is streamed and its header checked against the manifest
//! before its tensors go to the GPU (f16 as is on an f16 device, cast to f32 otherwise).

use std::collections::HashMap;

use burn::tensor::{DType, Device, Tensor, TensorData};
use wasm_bindgen::JsValue;

use super::files::ModelFiles;
use super::js_error;
use crate::models::clip::{ClipTextConfig, ClipTextModel};
use crate::models::parse_config;
use crate::models::tokenizer::ClipTokenizer;
use crate::weights::manifest::{FileRef, Manifest, MANIFEST_FILE};
use crate::weights::{LoadOptions, VarStore, WeightsError};
use crate::zepo::pipeline::TextStack;

fn werr(e: WeightsError) -> JsValue {
    js_error("WeightsError", e.to_string())
}

/// Whether `manifest.json`'s text is a bundle manifest (it has a `format`), rather than the
/// plain `{ "files": … }` checksum list a diffusers-layout model may carry.
pub fn is_bundle(text: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(text).is_ok_and(|v| v.get("format").is_some())
}

/// Parses the manifest (refusing another format or version) and declares every file to the
/// JS side, which checks each against its size and sha256 before storing it. The weights a
/// load streams (UNet and VAE shards, prompt embeddings) count in its download total up front;
/// the text encoder's load on demand.
pub fn open(files: &ModelFiles, text: &str) -> Result<Manifest, JsValue> {
    let manifest = Manifest::parse(text, &files.name(MANIFEST_FILE)).map_err(werr)?;
    let streamed: Vec<&str> = ["unet", "vae"]
        .iter()
        .filter_map(|p| manifest.parts.get(*p))
        .flat_map(|p| p.shards.iter().map(|s| s.file.url.as_str()))
        .chain(manifest.prompt_embeddings.iter().map(|p| p.file.url.as_str()))
        .collect();
    for f in manifest.files() {
        files.declare(&f.url, f.size, &f.sha256, streamed.contains(&f.url.as_str()));
    }
    // Stylizing encodes the portrait and the style image: a decode-only bundle cannot.
    if manifest.vae_encoder_omitted() {
        return Err(js_error(
            "WeightsError",
            format!(
                "{}: the VAE encoder (vae.encoder) was left out of this bundle at conversion, and stylizing needs it to \
                 encode the portrait and the style image; convert the model again without --no-vae-encoder",
                files.name(MANIFEST_FILE)
            ),
        ));
    }
    Ok(manifest)
}

/// A text file the manifest lists (config, scheduler, tokenizer).
pub async fn text(files: &ModelFiles, file: &FileRef) -> Result<String, JsValue> {
    files.get_text(&file.url).await
}

/// The scheduler config's file.
pub fn scheduler(files: &ModelFiles, manifest: &Manifest) -> Result<FileRef, JsValue> {
    manifest
        .scheduler
        .clone()
        .ok_or_else(|| js_error("WeightsError", format!("{}: the bundle lists no scheduler config", files.name(MANIFEST_FILE))))
}

/// A part's config text (the error names the part if it was left out).
pub async fn config(files: &ModelFiles, manifest: &Manifest, part: &str) -> Result<String, JsValue> {
    let p = manifest.part(part).map_err(werr)?;
    text(files, &p.config).await
}

/// A part's tensors, from its shards in order, into one store.
pub async fn load_part(
    files: &ModelFiles,
    manifest: &Manifest,
    part: &str,
    device: &Device,
    opts: &LoadOptions,
) -> Result<VarStore, JsValue> {
    let p = manifest.part(part).map_err(werr)?;
    let mut store = VarStore::new(device, opts, format!("{} (bundle part {part})", files.base()));
    for shard in &p.shards {
        let name = files.name(&shard.file.url);
        files.stream_into(&shard.file.url, &mut store, |h| shard.check_header(h, &name)).await?;
    }
    Ok(store)
}

/// The precomputed prompt embeddings, by prompt text, as `[1, positions, hidden]` tensors;
/// `hidden` must be the UNet's `cross_attention_dim`.
pub async fn prompts(
    files: &ModelFiles,
    manifest: &Manifest,
    device: &Device,
    dtype: DType,
    cross_attention_dim: usize,
) -> Result<HashMap<String, Tensor<3>>, JsValue> {
    let mut out = HashMap::new();
    let Some(pe) = &manifest.prompt_embeddings else { return Ok(out) };
    let name = files.name(&pe.file.url);
    if pe.shape.len() != 2 || pe.shape[1] != cross_attention_dim {
        return Err(js_error(
            "WeightsError",
            format!("{name}: embeddings of shape {:?}, the UNet's cross_attention_dim is {cross_attention_dim}", pe.shape),
        ));
    }
    let st = files.get_safetensors(&pe.file.url).await?;
    for p in &pe.prompts {
        let values = pe.values(&st, &p.text).map_err(werr)?.expect("a listed prompt has values");
        let t = Tensor::<3>::from_data(TensorData::new(values, [1, pe.shape[0], pe.shape[1]]), (device, dtype));
        out.insert(p.text.clone(), t);
    }
    Ok(out)
}

/// The tokenizer and text encoder of a bundle, for a prompt it has no embedding for.
pub async fn load_text(
    files: &ModelFiles,
    manifest: &Manifest,
    prompt: &str,
    device: &Device,
    opts: &LoadOptions,
) -> Result<TextStack, JsValue> {
    let needs = |e: JsValue| {
        let listed: Vec<String> = manifest.prompt_embeddings.iter().flat_map(|p| &p.prompts).map(|p| format!("{:?}", p.text)).collect();
        js_error(
            "WeightsError",
            format!(
                "the prompt {prompt:?} is not precomputed in this bundle (it has {}), so it needs the text encoder: {}",
                listed.join(", "),
                super::js_message(&e)
            ),
        )
    };
    let part = manifest.part("text_encoder").map_err(|e| needs(werr(e)))?;
    let tokenizer_file = |file: &str| manifest.tokenizer.iter().find(|f| f.url.rsplit('/').next() == Some(file));
    let required = |file: &str| {
        tokenizer_file(file)
            .ok_or_else(|| needs(js_error("WeightsError", format!("{}: the bundle lists no tokenizer/{file}", files.name(MANIFEST_FILE)))))
    };
    let vocab = text(files, required("vocab.json")?).await?;
    let merges = text(files, required("merges.txt")?).await?;
    let mut optional = Vec::new();
    for file in ["tokenizer_config.json", "special_tokens_map.json"] {
        optional.push(match tokenizer_file(file) {
            Some(f) => Some(text(files, f).await?),
            None => None,
        });
    }
    let tokenizer =
        ClipTokenizer::from_strings(&vocab, &merges, optional[0].as_deref(), optional[1].as_deref()).map_err(super::crate_err)?;
    let cfg: ClipTextConfig = parse_config(&text(files, &part.config).await?, &part.config.url).map_err(super::crate_err)?;
    cfg.validate().map_err(super::crate_err)?;
    let store = load_part(files, manifest, "text_encoder", device, opts).await?;
    let encoder = ClipTextModel::from_store(store, &cfg).map_err(super::crate_err)?;
    Ok(TextStack { tokenizer, encoder })
}
