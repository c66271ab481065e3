//! The model's files, as handed in by JavaScript (`www/weights.js`: streaming `fetch`, the Cache
//! API, HTTP Range resume, sha256 checks). Rust pulls chunks and parses them as they arrive:
//! a checkpoint is never whole in memory, and each tensor goes to the GPU as soon as its bytes
//! are in.

use burn::tensor::Device;
use js_sys::Uint8Array;
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;

use super::{js_error, js_message};
use crate::weights::{LoadOptions, StreamParser, VarStore};

#[wasm_bindgen]
extern "C" {
    /// `ModelFiles` of `www/weights.js`: `text(path)`, `open(path)` relative to the model's base.
    pub type ModelFiles;
    #[wasm_bindgen(method, catch)]
    async fn text(this: &ModelFiles, path: &str, optional: bool) -> Result<JsValue, JsValue>;
    #[wasm_bindgen(method, catch)]
    async fn open(this: &ModelFiles, path: &str) -> Result<JsValue, JsValue>;
    #[wasm_bindgen(method, getter)]
    fn base(this: &ModelFiles) -> String;

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
}

impl ModelFiles {
    pub fn from_js(value: JsValue) -> Result<Self, JsValue> {
        let ok = ["text", "open"].iter().all(|m| {
            js_sys::Reflect::get(&value, &(*m).into()).map(|f| f.is_function()).unwrap_or(false)
        });
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

    /// Streams the safetensors file `path` into a store on `device`, tensor by tensor.
    pub async fn load_store(&self, path: &str, device: &Device, opts: &LoadOptions) -> Result<VarStore, JsValue> {
        let name = format!("{}/{path}", self.base().trim_end_matches('/'));
        let dl: Download = self.open(path).await?.unchecked_into();
        let result = stream_into(&dl, &name, device, opts).await;
        match result {
            Ok(store) => {
                // Only now, the file parsed to its last byte, may the cache keep it.
                dl.commit().await?;
                Ok(store)
            }
            Err(e) => {
                dl.abort(&js_message(&e));
                Err(e)
            }
        }
    }
}

async fn stream_into(dl: &Download, name: &str, device: &Device, opts: &LoadOptions) -> Result<VarStore, JsValue> {
    let mut parser = StreamParser::new(name.to_string());
    let mut store = VarStore::new(device, opts, name.to_string());
    let werr = |e: crate::weights::WeightsError| js_error("WeightsError", e.to_string());
    loop {
        let chunk = dl.read().await?;
        if chunk.is_null() || chunk.is_undefined() {
            break;
        }
        let chunk: Uint8Array = chunk.dyn_into().map_err(|_| js_error("Error", format!("{name}: a chunk is not bytes")))?;
        for t in parser.push(&chunk.to_vec()).map_err(werr)? {
            store.insert(&t.entry, &t.bytes, name).map_err(werr)?;
        }
    }
    parser.finish().map_err(werr)?;
    Ok(store)
}
