//! Stable Diffusion 1.5 / LCM model parts, following diffusers' structure and parameter names.
//! Every size comes from the part's `config.json`. Nothing here knows about ZePo, except that
//! the UNet's self-attentions accept an [`attention::AttentionController`].

pub mod attention;
pub mod clip;
pub mod resnet;
pub mod tokenizer;
pub mod unet;
pub mod vae;

/// Reads a part's `config.json` into its config type.
pub fn parse_config<T: serde::de::DeserializeOwned>(text: &str, name: &str) -> crate::Result<T> {
    // The error names the key (`prediction_type: unknown variant …`), not only a column.
    let mut de = serde_json::Deserializer::from_str(text);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| crate::Error::config(name, e))?;
    de.end().map_err(|e| crate::Error::config(name, e))?;
    Ok(value)
}

/// Reads `path` and parses it as a config.
#[cfg(not(target_arch = "wasm32"))]
pub fn read_config<T: serde::de::DeserializeOwned>(path: &std::path::Path) -> crate::Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| crate::Error::io(path, e))?;
    parse_config(&text, &path.display().to_string())
}
