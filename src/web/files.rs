//! The model's files, as handed in by JavaScript (`www/weights.js`: streaming `fetch`, the Cache
//! API, HTTP Range resume, sha256 checks): the browser's [`ModelSource`], so the engine loads
//! through the same `zepo::load` path as the CLI. Rust pulls chunks and parses them as they
//! arrive: a checkpoint is never whole in memory, and each tensor goes to the GPU as soon as its
//! bytes are in. Errors thrown by the JS side keep their names (`Error::Fetch`).

use js_sys::Uint8Array;
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;

use super::{js_error, js_message};
use crate::weights::source::HeaderCheck;
use crate::weights::{ModelSource, StreamParser, VarStore};
use crate::{Error, Result};

#[wasm_bindgen]
extern "C" {
    /// `ModelFiles` of `www/weights.js`: `text(path)`, `open(path)` relative to the model's base.
    pub type ModelFiles;
    #[wasm_bindgen(method, catch, js_name = text)]
    async fn js_text(this: &ModelFiles, path: &str, optional: bool) -> Result<JsValue, JsValue>;
    /// With `optional`, `null` when the server answers 404 (the absence is remembered).
    #[wasm_bindgen(method, catch, js_name = open)]
    async fn js_open(this: &ModelFiles, path: &str, optional: bool) -> Result<JsValue, JsValue>;
    /// The diffusers weight variant to prefer (`fp16`), if any.
    #[wasm_bindgen(method, getter)]
    fn variant(this: &ModelFiles) -> Option<String>;
    /// Bytes the engine derived from the model and stored with it (`null` if none).
    #[wasm_bindgen(method, catch)]
    async fn derived(this: &ModelFiles, path: &str) -> Result<JsValue, JsValue>;
    /// Stores derived bytes with the model (best effort: storage may refuse).
    #[wasm_bindgen(method, catch, js_name = storeDerived)]
    async fn store_derived(this: &ModelFiles, path: &str, bytes: Uint8Array) -> Result<JsValue, JsValue>;
    #[wasm_bindgen(method, getter)]
    pub fn base(this: &ModelFiles) -> String;
    /// Declares a file's size and sha256 (from `manifest.json`: a bundle's, or a diffusers
    /// layout's checksum list), checked before it is stored; `now`: it is loaded by this call
    /// (counted in the download total up front).
    #[wasm_bindgen(method)]
    fn expect(this: &ModelFiles, path: &str, size: Option<f64>, sha256: Option<&str>, now: bool);

    /// One file being read: `read()` → the next `Uint8Array` or `null` at the end (it rejects
    /// on a network, size or integrity error), `commit()` once the consumer accepted the whole
    /// file (only then is it stored in the cache), `abort(reason)` otherwise.
    pub type Download;
    #[wasm_bindgen(method, catch)]
    async fn read(this: &Download) -> Result<JsValue, JsValue>;
    #[wasm_bindgen(method, catch)]
    async fn commit(this: &Download) -> Result<JsValue, JsValue>;
    #[wasm_bindgen(method)]
    fn abort(this: &Download, reason: &str);
    /// The file's length as its safetensors header states it, once parsed: it rejects (and the
    /// download stops) when that is over the limit for a model file or disagrees with the
    /// manifest or the server's Content-Length; no byte past it is read.
    #[wasm_bindgen(method, catch, js_name = expectSize)]
    fn expect_size(this: &Download, size: f64) -> Result<(), JsValue>;
}

/// A JS error (thrown by `www/weights.js`) as the crate's, its name kept for the page.
pub(super) fn fetch_err(e: JsValue) -> Error {
    let name = js_sys::Reflect::get(&e, &"name".into()).ok().and_then(|n| n.as_string()).unwrap_or_else(|| "Error".into());
    Error::Fetch { name, message: js_message(&e) }
}

impl ModelFiles {
    pub fn from_js(value: JsValue) -> Result<Self, JsValue> {
        let ok = ["text", "open"].iter().all(|m| js_sys::Reflect::get(&value, &(*m).into()).map(|f| f.is_function()).unwrap_or(false));
        if !ok {
            return Err(js_error("TypeError", "files: expected an object with text(path) and open(path) (www/weights.js ModelFiles)"));
        }
        Ok(value.unchecked_into())
    }

    /// Bytes derived from the model and stored with it, if any (never from the network).
    pub async fn get_derived(&self, path: &str) -> Result<Option<Vec<u8>>, JsValue> {
        let v = self.derived(path).await?;
        Ok(v.dyn_into::<Uint8Array>().ok().map(|a| a.to_vec()))
    }

    /// Stores bytes derived from the model with it; a refusal only costs recomputing them.
    pub async fn put_derived(&self, path: &str, bytes: &[u8]) {
        let _ = self.store_derived(path, Uint8Array::from(bytes)).await;
    }

    /// Opens `path` (with `optional`, `None` on a 404).
    async fn download(&self, path: &str, optional: bool) -> Result<Option<Download>> {
        let dl = self.js_open(path, optional).await.map_err(fetch_err)?;
        Ok((!dl.is_null() && !dl.is_undefined()).then(|| dl.unchecked_into()))
    }
}

impl ModelSource for ModelFiles {
    fn name(&self, path: &str) -> String {
        format!("{}/{path}", self.base().trim_end_matches('/'))
    }

    async fn text(&self, path: &str, optional: bool) -> Result<Option<String>> {
        let v = self.js_text(path, optional).await.map_err(fetch_err)?;
        if v.is_null() || v.is_undefined() {
            return Ok(None);
        }
        let text = v.as_string().ok_or_else(|| Error::Fetch { name: "Error".into(), message: format!("{}: not text", self.name(path)) })?;
        Ok(Some(text))
    }

    async fn bytes(&self, path: &str) -> Result<Vec<u8>> {
        let name = self.name(path);
        let dl = self
            .download(path, false)
            .await?
            .ok_or_else(|| Error::Fetch { name: "NotFound".into(), message: format!("{name}: not found") })?;
        let result = async {
            let mut bytes = Vec::new();
            while let Some(chunk) = next_chunk(&dl, &name).await? {
                bytes.extend_from_slice(&chunk);
            }
            Ok(bytes)
        }
        .await;
        finish(&dl, result).await
    }

    async fn stream_into(&self, path: &str, optional: bool, store: &mut VarStore, check: HeaderCheck<'_>) -> Result<bool> {
        let Some(dl) = self.download(path, optional).await? else { return Ok(false) };
        let result = stream(&dl, &self.name(path), store, check).await;
        finish(&dl, result).await.map(|_| true)
    }

    fn declare(&self, path: &str, size: Option<u64>, sha256: Option<&str>, now: bool) {
        self.expect(path, size.map(|s| s as f64), sha256, now);
    }

    fn variants(&self) -> (Option<String>, Option<String>) {
        (self.variant().filter(|v| !v.is_empty()), None)
    }
}

/// Largest piece of a weight that passes through wasm memory at once (its f32 copy is twice
/// that): the wasm heap never holds a whole weight, let alone a shard.
const PIECE_BYTES: usize = 4 << 20;

/// Commits the download on success (only then may the cache keep it), aborts it otherwise.
async fn finish<T>(dl: &Download, result: Result<T>) -> Result<T> {
    match result {
        Ok(v) => {
            dl.commit().await.map_err(fetch_err)?;
            Ok(v)
        }
        Err(e) => {
            dl.abort(&e.to_string());
            Err(e)
        }
    }
}

async fn next_chunk(dl: &Download, name: &str) -> Result<Option<Vec<u8>>> {
    let chunk = dl.read().await.map_err(fetch_err)?;
    if chunk.is_null() || chunk.is_undefined() {
        return Ok(None);
    }
    let chunk: Uint8Array =
        chunk.dyn_into().map_err(|_| Error::Fetch { name: "Error".into(), message: format!("{name}: a chunk is not bytes") })?;
    Ok(Some(chunk.to_vec()))
}

async fn stream(dl: &Download, name: &str, store: &mut VarStore, check: HeaderCheck<'_>) -> Result<()> {
    let mut parser = StreamParser::with_max_piece(name.to_string(), PIECE_BYTES);
    let mut checked = false;
    while let Some(chunk) = next_chunk(dl, name).await? {
        let pushed = parser.push(&chunk);
        // The header first, even when the same chunk also broke the parse: its size and what
        // it holds are the clearer error. A diffusers file has no manifest: its header says
        // where it ends (an endless or mislabelled body stops there, and a file over the limit
        // is refused before any byte of its data), before any of its tensors is used.
        if !checked {
            if let Some(h) = parser.header() {
                dl.expect_size(h.file_len() as f64).map_err(fetch_err)?;
                check(h)?;
                checked = true;
            }
        }
        for t in pushed? {
            store.insert_piece(&t, &t.bytes, name)?;
        }
    }
    parser.finish()?;
    Ok(())
}
