//! Where a diffusers checkpoint keeps a part's weights: `<stem>.safetensors`, a `variant`
//! (`<stem>.fp16.safetensors`: half the download where a repository has it), or either sharded
//! (`<stem>.safetensors.index.json` naming its shards). One list of candidates and one index
//! parser serve the native loader (files) and the browser (HTTP).

use std::collections::{BTreeMap, BTreeSet};

use super::{Header, WeightsError};

/// One way a part's weights may be stored, relative to the part's folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The safetensors file, or the shard index (`…safetensors.index.json`).
    pub file: String,
    pub sharded: bool,
}

/// The files to try for a part with file stem `stem` (`diffusion_pytorch_model`, `model`), in
/// order: `preferred` variant first (single file, then sharded) when given, then the plain
/// files; `fallback` variant last (the native loader takes an fp16-only checkpoint too).
pub fn candidates(stem: &str, preferred: Option<&str>, fallback: Option<&str>) -> Vec<Candidate> {
    let mut out = Vec::new();
    let mut add = |variant: Option<&str>| {
        let name = match variant {
            Some(v) => format!("{stem}.{v}.safetensors"),
            None => format!("{stem}.safetensors"),
        };
        out.push(Candidate { file: name.clone(), sharded: false });
        out.push(Candidate { file: format!("{name}.index.json"), sharded: true });
    };
    if let Some(v) = preferred {
        add(Some(v));
    }
    add(None);
    if let Some(v) = fallback.filter(|v| Some(*v) != preferred) {
        add(Some(v));
    }
    out
}

/// A variant name as diffusers writes it (`fp16`, `bf16`, `ema`…): letters, digits, `_`, `-`.
pub fn check_variant(variant: &str) -> Result<(), String> {
    if variant.is_empty() || variant.len() > 32 || !variant.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        return Err(format!("variant `{variant}` must be a short name of letters, digits, `_` or `-` (e.g. fp16)"));
    }
    Ok(())
}

/// A sharded checkpoint's index: `{"weight_map": {"tensor": "shard file", …}}`.
#[derive(Debug, Clone)]
pub struct ShardIndex {
    name: String,
    /// Tensor → shard.
    map: BTreeMap<String, String>,
    shards: Vec<String>,
}

impl ShardIndex {
    /// Parses an index; `name` (its path or URL) appears in errors. Shard names must be plain
    /// file names beside the index: an index never points outside its folder.
    pub fn parse(text: &str, name: &str) -> Result<Self, WeightsError> {
        let corrupt = |reason: String| WeightsError::Corrupt { file: name.to_string(), reason };
        let json: serde_json::Value = serde_json::from_str(text).map_err(|e| corrupt(format!("not JSON: {e}")))?;
        let entries = json.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| corrupt("no `weight_map` object".into()))?;
        let mut map = BTreeMap::new();
        for (tensor, shard) in entries {
            let shard = shard.as_str().ok_or_else(|| corrupt(format!("weight_map[`{tensor}`] is not a file name")))?;
            let plain = !shard.is_empty()
                && shard.len() <= 255
                && !shard.contains(['/', '\\', '?', '#', '%'])
                && shard != "."
                && shard != ".."
                && shard.ends_with(".safetensors");
            if !plain {
                return Err(corrupt(format!("shard `{shard}` of `{tensor}` is not a .safetensors file beside the index")));
            }
            map.insert(tensor.clone(), shard.to_string());
        }
        if map.is_empty() {
            return Err(corrupt("`weight_map` is empty".into()));
        }
        let shards = map.values().cloned().collect::<BTreeSet<_>>().into_iter().collect();
        Ok(Self { name: name.to_string(), map, shards })
    }

    /// The shard files, each once, in name order.
    pub fn shards(&self) -> &[String] {
        &self.shards
    }

    /// Checks a shard's header against the index: each of its tensors is mapped to it.
    pub fn check_shard(&self, shard: &str, header: &Header) -> Result<(), WeightsError> {
        for entry in &header.tensors {
            match self.map.get(&entry.name) {
                Some(s) if s == shard => {}
                Some(other) => {
                    return Err(WeightsError::Bundle {
                        file: shard.to_string(),
                        reason: format!("holds `{}`, which {} maps to {other}", entry.name, self.name),
                    })
                }
                None => {
                    return Err(WeightsError::Bundle {
                        file: shard.to_string(),
                        reason: format!("holds `{}`, which {} does not list", entry.name, self.name),
                    })
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_prefer_the_variant_and_fall_back() {
        let files = |c: Vec<Candidate>| c.into_iter().map(|c| c.file).collect::<Vec<_>>();
        assert_eq!(
            files(candidates("model", Some("fp16"), None)),
            ["model.fp16.safetensors", "model.fp16.safetensors.index.json", "model.safetensors", "model.safetensors.index.json"]
        );
        assert_eq!(files(candidates("m", None, Some("fp16")))[2..], ["m.fp16.safetensors", "m.fp16.safetensors.index.json"]);
        assert_eq!(files(candidates("m", Some("fp16"), Some("fp16"))).len(), 4);
        assert!(check_variant("fp16").is_ok());
        assert!(check_variant("../x").is_err());
    }

    #[test]
    fn an_index_names_plain_shards_only() {
        let idx =
            ShardIndex::parse(r#"{"metadata":{},"weight_map":{"a":"m-2.safetensors","b":"m-1.safetensors","c":"m-2.safetensors"}}"#, "i")
                .unwrap();
        assert_eq!(idx.shards(), ["m-1.safetensors", "m-2.safetensors"]);
        for bad in [
            r#"{"weight_map":{"a":"../x.safetensors"}}"#,
            r#"{"weight_map":{"a":"https://evil/x.safetensors"}}"#,
            r#"{"weight_map":{"a":"x.bin"}}"#,
            r#"{"weight_map":{}}"#,
            r#"{"weight_map":{"a":3}}"#,
            r#"[1]"#,
        ] {
            let err = ShardIndex::parse(bad, "idx.json").unwrap_err().to_string();
            assert!(err.contains("idx.json"), "{bad}: {err}");
        }
    }
}
