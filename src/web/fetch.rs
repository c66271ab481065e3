//! `fetch` from a page or a Worker: small files as text, large ones as a byte stream read chunk
//! by chunk, so that a multi-GB checkpoint never sits whole in memory.

use js_sys::{Promise, Reflect, Uint8Array};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;
use web_sys::{ReadableStreamDefaultReader, Response};

#[wasm_bindgen]
extern "C" {
    // The global `fetch`, the same in a Window and in a WorkerGlobalScope.
    #[wasm_bindgen(js_name = fetch)]
    fn global_fetch(url: &str) -> Promise;
}

/// A JS exception (or rejected promise) as a readable message.
pub fn js_message(value: &JsValue) -> String {
    if let Some(err) = value.dyn_ref::<js_sys::Error>() {
        return String::from(err.message());
    }
    value.as_string().unwrap_or_else(|| format!("{value:?}"))
}

/// GETs `url`; an HTTP error status is an error naming the URL and the status.
pub async fn get(url: &str) -> Result<Response, String> {
    let response = JsFuture::from(global_fetch(url))
        .await
        .map_err(|e| format!("{url}: request failed: {}", js_message(&e)))?;
    let response: Response = response.dyn_into().map_err(|_| format!("{url}: fetch did not return a Response"))?;
    if !response.ok() {
        return Err(format!("{url}: HTTP {} {}", response.status(), response.status_text()));
    }
    Ok(response)
}

/// The whole body of `url` as text (config files).
pub async fn text(url: &str) -> Result<String, String> {
    let response = get(url).await?;
    let promise = response.text().map_err(|e| format!("{url}: {}", js_message(&e)))?;
    let text = JsFuture::from(promise).await.map_err(|e| format!("{url}: reading the body: {}", js_message(&e)))?;
    text.as_string().ok_or_else(|| format!("{url}: body is not text"))
}

/// A response body read chunk by chunk.
pub struct ByteStream {
    url: String,
    reader: ReadableStreamDefaultReader,
    /// `Content-Length`, when the server sent one (it does not for compressed bodies).
    pub content_length: Option<u64>,
}

impl ByteStream {
    pub async fn open(url: &str) -> Result<Self, String> {
        let response = get(url).await?;
        let content_length = response
            .headers()
            .get("content-length")
            .ok()
            .flatten()
            .and_then(|v| v.trim().parse::<u64>().ok());
        let body = response.body().ok_or_else(|| format!("{url}: response has no body"))?;
        let reader: ReadableStreamDefaultReader =
            body.get_reader().dyn_into().map_err(|_| format!("{url}: body reader is not a default reader"))?;
        Ok(Self { url: url.to_string(), reader, content_length })
    }

    /// The next chunk, `None` at the end of the body.
    pub async fn next(&mut self) -> Result<Option<Vec<u8>>, String> {
        let result = JsFuture::from(self.reader.read())
            .await
            .map_err(|e| format!("{}: download interrupted: {}", self.url, js_message(&e)))?;
        let done = Reflect::get(&result, &"done".into()).map(|d| d.is_truthy()).unwrap_or(true);
        if done {
            return Ok(None);
        }
        let value = Reflect::get(&result, &"value".into()).map_err(|e| js_message(&e))?;
        let chunk: Uint8Array = value.dyn_into().map_err(|_| format!("{}: body chunk is not bytes", self.url))?;
        Ok(Some(chunk.to_vec()))
    }
}
