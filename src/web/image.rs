//! The engine's image decoding, on its own: what the model sees of an image file (its colour
//! profile applied, alpha composited onto white, its orientation applied, the damage and size
//! rules), for the browser tests that hold the wasm build to the native one and to littleCMS.

use wasm_bindgen::prelude::*;

use super::crate_err;
use crate::zepo::image::RgbImage;

/// `bytes` decoded as a stylization reads an input (`name` appears in errors):
/// `{ width, height, pixels: Uint8Array }` (8-bit sRGB, RGB, row-major), or an `ImageError`.
#[wasm_bindgen(js_name = decodeImage)]
pub fn decode_image(bytes: &[u8], name: &str) -> Result<JsValue, JsValue> {
    let img = RgbImage::decode(bytes, name).map_err(crate_err)?;
    let out = js_sys::Object::new();
    js_sys::Reflect::set(&out, &"width".into(), &(img.width as f64).into())?;
    js_sys::Reflect::set(&out, &"height".into(), &(img.height as f64).into())?;
    js_sys::Reflect::set(&out, &"pixels".into(), &js_sys::Uint8Array::from(&img.pixels[..]).into())?;
    Ok(out.into())
}
