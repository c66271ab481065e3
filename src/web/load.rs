//! Loading a model's parts in the browser: configs and weights from an fp16 bundle's manifest or
//! a diffusers layout (its variant files and shards: `weights::diffusers`).

use burn::tensor::Device;
use wasm_bindgen::prelude::*;

use super::bundle;
use super::files::ModelFiles;
use super::{crate_err, js_error};
use crate::models::parse_config;
use crate::weights::diffusers::{self, ShardIndex};
use crate::weights::manifest::Manifest;
use crate::weights::{LoadOptions, VarStore};

/// A model part's config (`unet`, `vae`): from the bundle's manifest, or `<part>/config.json`
/// of a diffusers layout.
pub(super) async fn part_config<C: serde::de::DeserializeOwned>(
    files: &ModelFiles,
    m: Option<&Manifest>,
    part: &str,
) -> Result<C, JsValue> {
    let path = format!("{part}/config.json");
    let text = match m {
        Some(m) => bundle::config(files, m, part).await?,
        None => files.get_text(&path).await?,
    };
    parse_config(&text, &path).map_err(crate_err)
}

/// A model part's weights: the bundle's shards, or the diffusers layout's single file.
pub(super) async fn part_store(
    files: &ModelFiles,
    m: Option<&Manifest>,
    part: &str,
    device: &Device,
    opts: &LoadOptions,
) -> Result<VarStore, JsValue> {
    match m {
        Some(m) => bundle::load_part(files, m, part, device, opts).await,
        None => diffusers_part(files, part, "diffusion_pytorch_model", device, opts).await,
    }
}

/// A diffusers part's weights: the preferred variant's file (`.fp16`, half the download) or
/// shards when the server has them, else the plain ones (see `weights::diffusers`).
pub(super) async fn diffusers_part(
    files: &ModelFiles,
    part: &str,
    stem: &str,
    device: &Device,
    opts: &LoadOptions,
) -> Result<VarStore, JsValue> {
    let variant = files.weight_variant()?;
    let tried = diffusers::candidates(stem, variant.as_deref(), None);
    for c in &tried {
        let path = format!("{part}/{}", c.file);
        let mut store = VarStore::new(device, opts, files.name(part));
        if !c.sharded {
            if files.stream_optional(&path, &mut store).await? {
                return Ok(store);
            }
            continue;
        }
        let Some(text) = files.get_optional_text(&path).await? else { continue };
        let index = ShardIndex::parse(&text, &files.name(&path)).map_err(|e| js_error("WeightsError", e.to_string()))?;
        for shard in index.shards() {
            files.stream_into(&format!("{part}/{shard}"), &mut store, |h| index.check_shard(shard, h)).await?;
        }
        return Ok(store);
    }
    let names: Vec<String> = tried.iter().map(|c| c.file.clone()).collect();
    Err(js_error("NotFound", format!("{}: no weights found (looked for {})", files.name(part), names.join(", "))))
}
