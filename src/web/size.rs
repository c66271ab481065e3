//! The engine's rules for the page's question before the first download (`www/model-size.js`,
//! which runs before any engine exists and only asks the network for sizes): whether a
//! `manifest.json` is a bundle's and what a load of it fetches, where a diffusers part's weights
//! are looked for, and which shards an index names. The same functions the engine loads with,
//! so the question always describes the download that follows.

use wasm_bindgen::prelude::*;

use super::crate_err;
use crate::weights::bundle::{is_manifest, FileRef, Manifest, WeightsChoice};
use crate::weights::diffusers::ShardIndex;
use crate::weights::source::part_candidates;

fn total(files: &[&FileRef]) -> f64 {
    files.iter().map(|f| f.size as f64).sum()
}

/// A bundle's download sizes from its `manifest.json` text (`name`: its URL, for errors) for
/// the weights `weights` ('auto', 'fp16', a compact variant's name):
/// `{ bytes, weights, variants: [{ name, bytes, psnr }], textEncoderBytes, textEncoderAlways }`
/// (`weights`: the variant a load takes; `variants`: each one's download), or `null` when the
/// text is not a bundle's manifest (a diffusers layout's checksum list). A bundle manifest this
/// engine would refuse, or weights it lacks, is an error here too.
#[wasm_bindgen(js_name = bundleSizes)]
pub fn bundle_sizes(manifest_text: &str, name: &str, weights: Option<String>) -> Result<JsValue, JsValue> {
    if !is_manifest(manifest_text) {
        return Ok(JsValue::NULL);
    }
    let m = Manifest::parse(manifest_text, name).map_err(|e| crate_err(e.into()))?;
    let chosen = m.choose(&WeightsChoice::parse(weights.as_deref().unwrap_or("auto"))).map_err(|e| crate_err(e.into()))?;
    let out = js_sys::Object::new();
    let set = |k: &str, v: JsValue| js_sys::Reflect::set(&out, &k.into(), &v).map(|_| ());
    set("bytes", total(&m.load_files(&chosen)).into())?;
    set("weights", chosen.as_str().into())?;
    let variants = js_sys::Array::new();
    for v in m.variant_names() {
        let item = js_sys::Object::new();
        js_sys::Reflect::set(&item, &"name".into(), &v.into())?;
        js_sys::Reflect::set(&item, &"bytes".into(), &total(&m.load_files(v)).into())?;
        let measured = m.variants.get(v).and_then(|x| x.measured.as_ref());
        let psnr = js_sys::Object::new();
        for (k, db) in measured.map(|x| x.psnr.iter()).into_iter().flatten() {
            js_sys::Reflect::set(&psnr, &k.as_str().into(), &(*db).into())?;
        }
        js_sys::Reflect::set(&item, &"psnr".into(), &psnr.into())?;
        variants.push(&item);
    }
    set("variants", variants.into())?;
    set("textEncoderBytes", m.text_encoder_files().map_or(JsValue::NULL, |f| total(&f).into()))?;
    // Without precomputed prompts every run encodes its prompt.
    set("textEncoderAlways", m.prompt_embeddings.is_none().into())?;
    Ok(out.into())
}

/// Where a diffusers part's weights are looked for, in the engine's order: `[{ path, sharded }]`
/// (the `variant` first, then the full files: what the browser engine loads).
#[wasm_bindgen(js_name = weightCandidates)]
pub fn weight_candidates(part: &str, variant: Option<String>) -> Result<JsValue, JsValue> {
    let variant = variant.filter(|v| !v.is_empty());
    let list = js_sys::Array::new();
    for c in part_candidates(part, variant.as_deref(), None).map_err(crate_err)? {
        let item = js_sys::Object::new();
        js_sys::Reflect::set(&item, &"path".into(), &format!("{part}/{}", c.file).into())?;
        js_sys::Reflect::set(&item, &"sharded".into(), &c.sharded.into())?;
        list.push(&item);
    }
    Ok(list.into())
}

/// The shard files a sharded checkpoint's index names, each once, as the engine reads them.
#[wasm_bindgen(js_name = shardFiles)]
pub fn shard_files(index_text: &str, name: &str) -> Result<Vec<String>, JsValue> {
    let index = ShardIndex::parse(index_text, name).map_err(|e| crate_err(e.into()))?;
    Ok(index.shards().to_vec())
}
