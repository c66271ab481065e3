//! The model's files, as handed in by JavaScript (`www/weights.js`: streaming `fetch`, the Cache
//! API, HTTP Range resume, sha256 checks). Rust pulls chunks and parses them as they arrive:
//! a checkpoint is never whole in memory, and each tensor goes to the GPU as soon as its bytes
//! are in.

use js_sys::Uint8Array;
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;

use super::{js_error, js_message};
use crate::weights::{Header, SafetensorsBytes, StreamParser, VarStore, WeightsError};

#[wasm_bindgen]
extern "C" {
    /// `ModelFiles` of `www/weights.js`: `text(path)`, `open(path)` relative to the model's base.
    pub type ModelFiles;
    #[wasm_bindgen(method, catch)]
    async fn text(this: &ModelFiles, path: &str, optional: bool) -> Result<JsValue, JsValue>;
    /// With `optional`, `null` when the server answers 404 (the absence is remembered).
    #[wasm_bindgen(method, catch)]
    async fn open(this: &ModelFiles, path: &str, optional: bool) -> Result<JsValue, JsValue>;
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
    /// Declares a bundle file's size and sha256 (from `manifest.json`), checked before it is
    /// stored; `now`: it is loaded by this call (counted in the download total up front).
    #[wasm_bindgen(method)]
    fn expect(this: &ModelFiles, path: &str, size: f64, sha256: &str, now: bool);

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

impl ModelFiles {
    pub fn from_js(value: JsValue) -> Result<Self, JsValue> {
        let ok = ["text", "open"].iter().all(|m| js_sys::Reflect::get(&value, &(*m).into()).map(|f| f.is_function()).unwrap_or(false));
        if !ok {
            return Err(js_error("TypeError", "files: expected an object with text(path) and open(path) (www/weights.js ModelFiles)"));
        }
        Ok(value.unchecked_into())
    }

    /// A text file (config, tokenizer); an HTTP error names the file.
    pub async fn get_text(&self, path: &str) -> Result<String, JsValue> {
        let v = self.text(path, false).await?;
        v.as_string().ok_or_else(|| js_error("Error", format!("{path}: not text")))
    }

    /// A text file that may be absent (`None` on HTTP 404).
    pub async fn get_optional_text(&self, path: &str) -> Result<Option<String>, JsValue> {
        Ok(self.text(path, true).await?.as_string())
    }

    /// The URL of `path`, for errors.
    pub fn name(&self, path: &str) -> String {
        format!("{}/{path}", self.base().trim_end_matches('/'))
    }

    /// Declares a file of a bundle (see `expect` above).
    pub fn declare(&self, path: &str, size: u64, sha256: &str, now: bool) {
        self.expect(path, size as f64, sha256, now);
    }

    /// Streams the safetensors file `path` into `store`; `check` sees its header before any of
    /// its tensors is uploaded. The file is stored (committed) only once parsed to its last byte.
    pub async fn stream_into(
        &self,
        path: &str,
        store: &mut VarStore,
        check: impl Fn(&Header) -> Result<(), WeightsError>,
    ) -> Result<(), JsValue> {
        self.stream_file(path, false, store, check).await.map(|_| ())
    }

    /// Like [`ModelFiles::stream_into`], but `Ok(false)` when the server has no such file.
    pub async fn stream_optional(&self, path: &str, store: &mut VarStore) -> Result<bool, JsValue> {
        self.stream_file(path, true, store, |_| Ok(())).await
    }

    /// Opens `path` (with `optional`, `Ok(false)` on a 404) and streams it into `store`.
    async fn stream_file(
        &self,
        path: &str,
        optional: bool,
        store: &mut VarStore,
        check: impl Fn(&Header) -> Result<(), WeightsError>,
    ) -> Result<bool, JsValue> {
        let dl = self.open(path, optional).await?;
        if dl.is_null() || dl.is_undefined() {
            return Ok(false);
        }
        let dl: Download = dl.unchecked_into();
        let result = stream(&dl, &self.name(path), store, check).await;
        finish(&dl, result).await.map(|_| true)
    }

    /// The preferred diffusers weight variant (`ZePo.load({ variant })`), checked.
    pub fn weight_variant(&self) -> Result<Option<String>, JsValue> {
        let v = self.variant().filter(|v| !v.is_empty());
        if let Some(v) = &v {
            crate::weights::diffusers::check_variant(v).map_err(|e| js_error("InvalidOption", e))?;
        }
        Ok(v)
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

    /// A small binary file whole (the prompt embeddings), parsed as safetensors.
    pub async fn get_safetensors(&self, path: &str) -> Result<SafetensorsBytes<Vec<u8>>, JsValue> {
        let name = self.name(path);
        let dl: Download = self.open(path, false).await?.unchecked_into();
        let result = async {
            let mut bytes = Vec::new();
            while let Some(chunk) = next_chunk(&dl, &name).await? {
                bytes.extend_from_slice(&chunk);
            }
            SafetensorsBytes::new(bytes, name.clone()).map_err(werr)
        }
        .await;
        finish(&dl, result).await
    }
}

/// Largest piece of a weight that passes through wasm memory at once (its f32 copy is twice
/// that): the wasm heap never holds a whole weight, let alone a shard.
const PIECE_BYTES: usize = 4 << 20;

fn werr(e: WeightsError) -> JsValue {
    js_error("WeightsError", e.to_string())
}

/// Commits the download on success (only then may the cache keep it), aborts it otherwise.
async fn finish<T>(dl: &Download, result: Result<T, JsValue>) -> Result<T, JsValue> {
    match result {
        Ok(v) => {
            dl.commit().await?;
            Ok(v)
        }
        Err(e) => {
            dl.abort(&js_message(&e));
            Err(e)
        }
    }
}

async fn next_chunk(dl: &Download, name: &str) -> Result<Option<Vec<u8>>, JsValue> {
    let chunk = dl.read().await?;
    if chunk.is_null() || chunk.is_undefined() {
        return Ok(None);
    }
    let chunk: Uint8Array = chunk.dyn_into().map_err(|_| js_error("Error", format!("{name}: a chunk is not bytes")))?;
    Ok(Some(chunk.to_vec()))
}

async fn stream(
    dl: &Download,
    name: &str,
    store: &mut VarStore,
    check: impl Fn(&Header) -> Result<(), WeightsError>,
) -> Result<(), JsValue> {
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
                dl.expect_size(h.file_len() as f64)?;
                check(h).map_err(werr)?;
                checked = true;
            }
        }
        for t in pushed.map_err(werr)? {
            store.insert_piece(&t, &t.bytes, name).map_err(werr)?;
        }
    }
    parser.finish().map_err(werr)?;
    Ok(())
}
