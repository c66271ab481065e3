//! Incremental SHA-256 for `www/weights.js`, which checks every downloaded file of a bundle
//! against its manifest as the bytes stream by (WebCrypto's `digest` needs the whole input at
//! once): the `sha2` crate the converter writes the manifest's digests with.

use sha2::Digest;
use wasm_bindgen::prelude::*;

/// `const h = new Sha256(); h.update(bytes); …; h.hex()` (the hasher is spent by `hex`).
#[wasm_bindgen]
pub struct Sha256(sha2::Sha256);

#[wasm_bindgen]
impl Sha256 {
    #[wasm_bindgen(constructor)]
    #[allow(clippy::new_without_default)] // a JS constructor
    pub fn new() -> Sha256 {
        Sha256(sha2::Sha256::new())
    }

    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// The digest as lowercase hex.
    pub fn hex(self) -> String {
        self.0.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }
}
