//! CLIP's byte-level BPE tokenizer, reproducing transformers' slow `CLIPTokenizer` as it runs
//! without `ftfy` installed (as the reference did): BERT's basic text cleanup (control
//! characters dropped, CJK ideographs spaced, NFC, lowercase, whitespace collapsed), the CLIP
//! word regex, byte-to-unicode mapping, BPE with `</w>` word ends, then
//! `bos + ids + eos` truncated and padded to `model_max_length`.

use std::collections::HashMap;
use std::sync::Mutex;

use burn::tensor::{Device, Int, Tensor, TensorData};
use regex::Regex;
use serde_json::Value;
use unicode_normalization::UnicodeNormalization;

use crate::{Error, Result};

/// CLIP's word pattern (`(?i)` as transformers compiles it with `re.IGNORECASE`).
const WORD_PATTERN: &str = r"(?i)<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

/// transformers reads only this many merges (`[1 : 49152 - 256 - 2 + 1]`), whatever the file holds.
const MAX_MERGES: usize = 49152 - 256 - 2;

/// Cleared when full, so a long-lived page cannot grow it without bound.
const CACHE_LIMIT: usize = 20_000;

/// The four special tokens, as transformers resolves them: `special_tokens_map.json` over
/// `tokenizer_config.json` over `CLIPTokenizer`'s defaults.
struct Specials {
    bos: String,
    eos: String,
    pad: String,
    unk: String,
}

/// transformers' `CLIPTokenizer` (slow), called as diffusers calls it:
/// `padding="max_length", max_length=model_max_length, truncation=True`.
pub struct ClipTokenizer {
    encoder: HashMap<String, i64>,
    bpe_ranks: HashMap<(String, String), usize>,
    byte_encoder: [char; 256],
    words: Regex,
    /// `\p{Cc}`/`\p{Cf}` (minus tab, newline, return), U+FFFD: removed by the cleanup.
    control: Regex,
    /// Tokens matched verbatim in the input before any cleanup (transformers' added tokens).
    no_split: Vec<(String, i64)>,
    bos_id: i64,
    eos_id: i64,
    pad_id: i64,
    unk_id: i64,
    max_length: usize,
    /// Byte-encoded word → its BPE ids.
    cache: Mutex<HashMap<String, Vec<i64>>>,
}

impl ClipTokenizer {
    /// From the contents of `vocab.json` and `merges.txt`, and, when present,
    /// `tokenizer_config.json` and `special_tokens_map.json` (the browser fetches them).
    pub fn from_strings(
        vocab_json: &str,
        merges_txt: &str,
        tokenizer_config_json: Option<&str>,
        special_tokens_map_json: Option<&str>,
    ) -> Result<Self> {
        let encoder: HashMap<String, i64> = serde_json::from_str(vocab_json).map_err(|e| Error::config("tokenizer/vocab.json", e))?;

        // Like transformers: strip, split on newlines, skip the `#version` header line.
        let mut bpe_ranks = HashMap::new();
        for (rank, line) in merges_txt.trim().split('\n').skip(1).take(MAX_MERGES).enumerate() {
            let mut parts = line.split_whitespace();
            match (parts.next(), parts.next(), parts.next()) {
                (Some(a), Some(b), None) => {
                    // A repeated pair keeps its last rank, as a Python dict built from the list does.
                    bpe_ranks.insert((a.to_string(), b.to_string()), rank);
                }
                _ => return Err(Error::config("tokenizer/merges.txt", format!("line {}: expected two symbols, found {line:?}", rank + 2))),
            }
        }

        let config = parse_optional(tokenizer_config_json, "tokenizer/tokenizer_config.json")?;
        let map = parse_optional(special_tokens_map_json, "tokenizer/special_tokens_map.json")?;
        let special = |key: &str, default: &str| -> Result<String> {
            for (source, name) in [(&map, "special_tokens_map.json"), (&config, "tokenizer_config.json")] {
                match source.get(key) {
                    None | Some(Value::Null) => continue,
                    Some(v) => {
                        return token_content(v).ok_or_else(|| {
                            Error::config(format!("tokenizer/{name}"), format!("`{key}` is neither a string nor a token object"))
                        })
                    }
                }
            }
            Ok(default.to_string())
        };
        let specials = Specials {
            bos: special("bos_token", "<|startoftext|>")?,
            eos: special("eos_token", "<|endoftext|>")?,
            pad: special("pad_token", "<|endoftext|>")?,
            unk: special("unk_token", "<|endoftext|>")?,
        };
        let max_length = match config.get("model_max_length") {
            None | Some(Value::Null) => 77, // CLIP's position count, transformers' default for it
            Some(v) => v
                .as_u64()
                .map(|n| n as usize)
                .or_else(|| v.as_f64().filter(|f| *f >= 0.0).map(|f| f as usize))
                .ok_or_else(|| Error::config("tokenizer/tokenizer_config.json", "`model_max_length` is not a number"))?,
        };
        if max_length < 2 {
            return Err(Error::config(
                "tokenizer/tokenizer_config.json",
                format!("model_max_length {max_length} leaves no room for the start and end tokens"),
            ));
        }

        // Added tokens keep their own ids; the special tokens are added tokens too.
        let mut no_split: Vec<(String, i64)> = Vec::new();
        if let Some(added) = config.get("added_tokens_decoder").and_then(Value::as_object) {
            for (id, token) in added {
                let id: i64 = id
                    .parse()
                    .map_err(|_| Error::config("tokenizer/tokenizer_config.json", format!("added token id `{id}` is not an integer")))?;
                let content = token_content(token)
                    .ok_or_else(|| Error::config("tokenizer/tokenizer_config.json", format!("added token {id} has no content")))?;
                no_split.push((content, id));
            }
        }
        let id_of = |token: &str, what: &str| -> Result<i64> {
            no_split
                .iter()
                .find(|(t, _)| t == token)
                .map(|(_, id)| *id)
                .or_else(|| encoder.get(token).copied())
                .ok_or_else(|| Error::config("tokenizer/vocab.json", format!("{what} `{token}` is not in the vocabulary")))
        };
        let bos_id = id_of(&specials.bos, "bos_token")?;
        let eos_id = id_of(&specials.eos, "eos_token")?;
        let pad_id = id_of(&specials.pad, "pad_token")?;
        let unk_id = id_of(&specials.unk, "unk_token")?;
        for (token, id) in [(&specials.bos, bos_id), (&specials.eos, eos_id), (&specials.pad, pad_id), (&specials.unk, unk_id)] {
            if !no_split.iter().any(|(t, _)| t == token) {
                no_split.push((token.clone(), id));
            }
        }
        // Longest first, so that a token containing another wins where both match.
        no_split.sort_by_key(|t| std::cmp::Reverse(t.0.len()));
        no_split.retain(|(t, _)| !t.is_empty());

        // As transformers seeds its BPE cache: these two map to themselves, not to BPE pieces.
        let mut cache = HashMap::new();
        for special in ["<|startoftext|>", "<|endoftext|>"] {
            if let Some(&id) = encoder.get(special) {
                cache.insert(special.to_string(), vec![id]);
            }
        }

        Ok(Self {
            encoder,
            bpe_ranks,
            byte_encoder: bytes_to_unicode(),
            words: Regex::new(WORD_PATTERN).expect("valid pattern"),
            control: Regex::new(r"[\p{Cc}\p{Cf}\x{FFFD}--[\t\n\r]]").expect("valid pattern"),
            no_split,
            bos_id,
            eos_id,
            pad_id,
            unk_id,
            max_length,
            cache: Mutex::new(cache),
        })
    }

    /// From a diffusers `tokenizer/` directory.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn from_dir(dir: &std::path::Path) -> Result<Self> {
        let read = |name: &str| std::fs::read_to_string(dir.join(name)).map_err(|e| Error::io(dir.join(name), e));
        let read_optional = |name: &str| -> Result<Option<String>> {
            let path = dir.join(name);
            if path.exists() {
                read(name).map(Some)
            } else {
                Ok(None)
            }
        };
        let vocab = read("vocab.json")?;
        let merges = read("merges.txt")?;
        let config = read_optional("tokenizer_config.json")?;
        let map = read_optional("special_tokens_map.json")?;
        Self::from_strings(&vocab, &merges, config.as_deref(), map.as_deref())
    }

    /// The sequence length every encoding has (`model_max_length`, 77 for CLIP).
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// `bos + ids + eos` of `text`, truncated (end token kept last) and padded to
    /// [`Self::max_length`] ids.
    pub fn encode(&self, text: &str) -> Vec<i64> {
        let mut ids = Vec::with_capacity(self.max_length);
        ids.push(self.bos_id);
        let mut body = self.tokenize(text);
        body.truncate(self.max_length - 2);
        ids.extend(body);
        ids.push(self.eos_id);
        ids.resize(self.max_length, self.pad_id);
        ids
    }

    /// The encodings of `texts` as a `[texts.len(), max_length]` id tensor.
    pub fn encode_batch<S: AsRef<str>>(&self, texts: &[S], device: &Device) -> Tensor<2, Int> {
        let ids: Vec<i64> = texts.iter().flat_map(|t| self.encode(t.as_ref())).collect();
        Tensor::from_data(TensorData::new(ids, [texts.len(), self.max_length]), device)
    }

    /// The ids of `text` without special tokens, truncation or padding.
    fn tokenize(&self, text: &str) -> Vec<i64> {
        let mut ids = Vec::new();
        let mut rest = text;
        // Added tokens are cut out first and never split (transformers' tokens trie).
        while !rest.is_empty() {
            let found = rest
                .char_indices()
                .find_map(|(i, _)| self.no_split.iter().find(|(t, _)| rest[i..].starts_with(t.as_str())).map(|(t, id)| (i, t.len(), *id)));
            match found {
                Some((start, len, id)) => {
                    self.tokenize_piece(&rest[..start], &mut ids);
                    ids.push(id);
                    rest = &rest[start + len..];
                }
                None => {
                    self.tokenize_piece(rest, &mut ids);
                    break;
                }
            }
        }
        ids
    }

    /// CLIPTokenizer._tokenize with BasicTokenizer(strip_accents=False, do_split_on_punc=False).
    fn tokenize_piece(&self, piece: &str, ids: &mut Vec<i64>) {
        if piece.is_empty() {
            return;
        }
        let text = self.basic_clean(piece);
        for word in self.words.find_iter(&text) {
            let encoded: String = word.as_str().bytes().map(|b| self.byte_encoder[b as usize]).collect();
            ids.extend(self.bpe_ids(&encoded));
        }
    }

    /// BERT's basic tokenizer, joined back with single spaces.
    fn basic_clean(&self, text: &str) -> String {
        let text = self.control.replace_all(text, "");
        let mut spaced = String::with_capacity(text.len());
        for c in text.chars() {
            if is_bert_whitespace(c) {
                spaced.push(' ');
            } else if is_cjk(c) {
                spaced.push(' ');
                spaced.push(c);
                spaced.push(' ');
            } else {
                spaced.push(c);
            }
        }
        let normalized: String = spaced.nfc().collect();
        let words: Vec<String> = normalized.split(is_python_space).filter(|w| !w.is_empty()).map(str::to_lowercase).collect();
        words.join(" ")
    }

    /// The ids of one byte-encoded word, through the cache.
    fn bpe_ids(&self, word: &str) -> Vec<i64> {
        // A poisoned lock only means another thread panicked mid-insert: the map is still valid.
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(ids) = cache.get(word) {
            return ids.clone();
        }
        let ids: Vec<i64> = self.bpe(word).iter().map(|piece| *self.encoder.get(piece).unwrap_or(&self.unk_id)).collect();
        if cache.len() >= CACHE_LIMIT {
            cache.clear();
        }
        cache.insert(word.to_string(), ids.clone());
        ids
    }

    /// Merges the pair of lowest rank, everywhere, until no ranked pair is left.
    fn bpe(&self, word: &str) -> Vec<String> {
        let chars: Vec<char> = word.chars().collect();
        let Some((&last, init)) = chars.split_last() else { return Vec::new() };
        let mut symbols: Vec<String> = init.iter().map(|c| c.to_string()).collect();
        symbols.push(format!("{last}</w>"));

        while symbols.len() > 1 {
            let best = symbols
                .windows(2)
                .filter_map(|w| self.bpe_ranks.get(&(w[0].clone(), w[1].clone())).map(|&r| (r, w)))
                .min_by_key(|(r, _)| *r);
            let Some((_, pair)) = best else { break };
            let (first, second) = (pair[0].clone(), pair[1].clone());
            let mut merged = Vec::with_capacity(symbols.len());
            let mut i = 0;
            while i < symbols.len() {
                if i + 1 < symbols.len() && symbols[i] == first && symbols[i + 1] == second {
                    merged.push(format!("{first}{second}"));
                    i += 2;
                } else {
                    merged.push(std::mem::take(&mut symbols[i]));
                    i += 1;
                }
            }
            symbols = merged;
        }
        symbols
    }
}

fn parse_optional(text: Option<&str>, name: &str) -> Result<serde_json::Map<String, Value>> {
    match text {
        None => Ok(Default::default()),
        Some(t) => match serde_json::from_str::<Value>(t).map_err(|e| Error::config(name, e))? {
            Value::Object(map) => Ok(map),
            _ => Err(Error::config(name, "not a JSON object")),
        },
    }
}

/// A token given as `"<|endoftext|>"` or as `{"content": "<|endoftext|>", ...}`.
fn token_content(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

/// GPT-2's reversible byte → printable character map.
fn bytes_to_unicode() -> [char; 256] {
    let mut map = ['\0'; 256];
    let printable = |b: u32| (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b);
    let mut next = 256u32;
    for b in 0..256u32 {
        map[b as usize] = if printable(b) {
            char::from_u32(b).expect("latin-1")
        } else {
            next += 1;
            char::from_u32(next - 1).expect("below U+0200")
        };
    }
    map
}

/// BERT's `_is_whitespace`: space, tab, newline, return, and category Zs.
fn is_bert_whitespace(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r')
        || matches!(c, '\u{a0}' | '\u{1680}' | '\u{2000}'..='\u{200a}' | '\u{202f}' | '\u{205f}' | '\u{3000}')
}

/// Python's `str.isspace`, which `str.split()` splits on.
fn is_python_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// BERT's `_is_chinese_char`: the CJK ideograph blocks (not kana or hangul).
fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x4E00..=0x9FFF | 0x3400..=0x4DBF | 0x20000..=0x2A6DF | 0x2A700..=0x2B73F
        | 0x2B740..=0x2B81F | 0x2B820..=0x2CEAF | 0xF900..=0xFAFF | 0x2F800..=0x2FA1F)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_map_is_a_bijection_onto_printables() {
        let map = bytes_to_unicode();
        let set: std::collections::HashSet<char> = map.iter().copied().collect();
        assert_eq!(set.len(), 256);
        assert_eq!(map[b'a' as usize], 'a');
        assert_eq!(map[b' ' as usize], '\u{120}'); // 'Ġ'
    }

    #[test]
    fn zs_list_matches_unicode() {
        let zs = Regex::new(r"^\p{Zs}$").unwrap();
        for cp in 0..=0x10FFFFu32 {
            if let Some(c) = char::from_u32(cp) {
                if c != ' ' && !matches!(c, '\t' | '\n' | '\r') {
                    assert_eq!(is_bert_whitespace(c), zs.is_match(c.encode_utf8(&mut [0; 4])), "U+{cp:04X}");
                }
            }
        }
    }

    fn tiny() -> ClipTokenizer {
        let vocab = r#"{"a":0,"b":1,"a</w>":2,"b</w>":3,"ab":4,"ab</w>":5,"<|startoftext|>":6,"<|endoftext|>":7,"!</w>":8}"#;
        let merges = "#version: 0.2\na b\na b</w>\n";
        let config = r#"{"model_max_length": 6, "pad_token": "!</w>"}"#;
        ClipTokenizer::from_strings(vocab, merges, Some(config), None).unwrap()
    }

    #[test]
    fn bpe_merges_truncates_and_pads() {
        let t = tiny();
        assert_eq!(t.encode("ab"), vec![6, 5, 7, 8, 8, 8]);
        assert_eq!(t.encode("AB aab"), vec![6, 5, 0, 5, 7, 8]);
        // Truncated to 4 body tokens, end token kept last.
        assert_eq!(t.encode("ab ab ab ab ab"), vec![6, 5, 5, 5, 5, 7]);
        assert_eq!(t.encode(""), vec![6, 7, 8, 8, 8, 8]);
    }

    #[test]
    fn bad_files_are_errors() {
        assert!(ClipTokenizer::from_strings("[", "#v\n", None, None).is_err());
        let vocab = r#"{"a":0}"#;
        let err = ClipTokenizer::from_strings(vocab, "#v\na b\n", None, None).err().unwrap().to_string();
        assert!(err.contains("<|startoftext|>"), "{err}");
        let err = ClipTokenizer::from_strings(vocab, "#v\na b c\n", None, None).err().unwrap().to_string();
        assert!(err.contains("line 2"), "{err}");
    }
}
