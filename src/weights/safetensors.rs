//! The safetensors format, parsed and checked strictly: an 8-byte little-endian header length,
//! a JSON header `{name: {dtype, shape, data_offsets}}`, then the tensors' bytes back to back.
//!
//! Two readers share one header parser: [`SafetensorsBytes`] over a whole buffer (a memory-mapped
//! file natively), and [`StreamParser`], fed chunk by chunk as a download arrives, which holds
//! no more than one tensor's bytes at a time.

use super::WeightsError;

/// Largest header accepted; real checkpoints have headers of a few hundred KB.
const MAX_HEADER_BYTES: u64 = 64 << 20;

/// Element types found in diffusers / transformers checkpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    F32,
    F16,
    BF16,
    F64,
    I64,
    I32,
    U8,
    Bool,
}

impl Dtype {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "F32" => Dtype::F32,
            "F16" => Dtype::F16,
            "BF16" => Dtype::BF16,
            "F64" => Dtype::F64,
            "I64" => Dtype::I64,
            "I32" => Dtype::I32,
            "U8" => Dtype::U8,
            "BOOL" => Dtype::Bool,
            _ => return None,
        })
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Dtype::F64 | Dtype::I64 => 8,
            Dtype::F32 | Dtype::I32 => 4,
            Dtype::F16 | Dtype::BF16 => 2,
            Dtype::U8 | Dtype::Bool => 1,
        }
    }

    /// The name used in the safetensors header.
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "F32",
            Dtype::F16 => "F16",
            Dtype::BF16 => "BF16",
            Dtype::F64 => "F64",
            Dtype::I64 => "I64",
            Dtype::I32 => "I32",
            Dtype::U8 => "U8",
            Dtype::Bool => "BOOL",
        }
    }

    /// Whether the tensor can serve as a float weight.
    pub fn is_float(self) -> bool {
        matches!(self, Dtype::F32 | Dtype::F16 | Dtype::BF16 | Dtype::F64)
    }
}

/// One tensor described by the header. Offsets are relative to the start of the data section.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorEntry {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub start: u64,
    pub end: u64,
}

/// A parsed, validated header: entries sorted by offset, covering the data section exactly.
#[derive(Debug, Clone)]
pub struct Header {
    pub tensors: Vec<TensorEntry>,
    /// Offset of the data section from the start of the file (8 + JSON length).
    pub data_start: u64,
    /// Length of the data section.
    pub data_len: u64,
    /// The optional `__metadata__` string map.
    pub metadata: Vec<(String, String)>,
}

impl Header {
    /// Total file size the header promises.
    pub fn file_len(&self) -> u64 {
        self.data_start + self.data_len
    }
}

fn corrupt(file: &str, reason: impl Into<String>) -> WeightsError {
    WeightsError::Corrupt { file: file.to_string(), reason: reason.into() }
}

/// Reads the header length from the first 8 bytes; `None` if fewer than 8 bytes are given.
fn header_len(prefix: &[u8], file: &str) -> Result<Option<u64>, WeightsError> {
    if prefix.len() < 8 {
        return Ok(None);
    }
    let n = u64::from_le_bytes(prefix[..8].try_into().unwrap());
    if n < 2 || n > MAX_HEADER_BYTES {
        return Err(corrupt(file, format!("header length {n} is implausible")));
    }
    Ok(Some(n))
}

/// Parses and validates the header at the start of `bytes`. Returns `Ok(None)` when `bytes`
/// is too short to hold the whole header yet (streaming), an error when it is malformed.
pub fn parse_header(bytes: &[u8], file: &str) -> Result<Option<Header>, WeightsError> {
    let Some(n) = header_len(bytes, file)? else { return Ok(None) };
    let end = 8 + n as usize;
    if bytes.len() < end {
        return Ok(None);
    }
    let json: serde_json::Value = serde_json::from_slice(&bytes[8..end]).map_err(|e| corrupt(file, format!("header is not JSON: {e}")))?;
    let obj = json.as_object().ok_or_else(|| corrupt(file, "header is not a JSON object"))?;

    let mut tensors = Vec::with_capacity(obj.len());
    let mut metadata = Vec::new();
    for (name, info) in obj {
        if name == "__metadata__" {
            if let Some(m) = info.as_object() {
                for (k, v) in m {
                    metadata.push((k.clone(), v.as_str().unwrap_or_default().to_string()));
                }
            }
            continue;
        }
        let bad = |what: &str| corrupt(file, format!("tensor `{name}`: {what}"));
        let dtype_s = info.get("dtype").and_then(|d| d.as_str()).ok_or_else(|| bad("no dtype"))?;
        let dtype = Dtype::parse(dtype_s).ok_or_else(|| bad(&format!("unknown dtype {dtype_s}")))?;
        let shape = info
            .get("shape")
            .and_then(|s| s.as_array())
            .ok_or_else(|| bad("no shape"))?
            .iter()
            .map(|d| d.as_u64().map(|d| d as usize))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| bad("shape is not a list of sizes"))?;
        let offsets = info
            .get("data_offsets")
            .and_then(|o| o.as_array())
            .filter(|o| o.len() == 2)
            .and_then(|o| Some((o[0].as_u64()?, o[1].as_u64()?)))
            .ok_or_else(|| bad("data_offsets is not [start, end]"))?;
        let numel = shape.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d as u64));
        let nbytes = numel.and_then(|n| n.checked_mul(dtype.size() as u64)).ok_or_else(|| bad("shape overflows"))?;
        if offsets.1 < offsets.0 || offsets.1 - offsets.0 != nbytes {
            return Err(bad(&format!(
                "data_offsets {:?} hold {} bytes, shape {:?} of {} needs {}",
                offsets,
                offsets.1.saturating_sub(offsets.0),
                shape,
                dtype.name(),
                nbytes
            )));
        }
        tensors.push(TensorEntry { name: name.clone(), dtype, shape, start: offsets.0, end: offsets.1 });
    }
    tensors.sort_by_key(|t| (t.start, t.end));
    let mut pos = 0u64;
    for t in &tensors {
        if t.start != pos {
            return Err(corrupt(file, format!("tensor `{}` starts at {} where {} was expected (gap or overlap)", t.name, t.start, pos)));
        }
        pos = t.end;
    }
    Ok(Some(Header { tensors, data_start: end as u64, data_len: pos, metadata }))
}

/// A whole safetensors file in memory (or memory-mapped), checked against its header.
pub struct SafetensorsBytes<B: AsRef<[u8]>> {
    bytes: B,
    header: Header,
    name: String,
}

impl<B: AsRef<[u8]>> SafetensorsBytes<B> {
    /// Checks the header and that the buffer holds every byte it promises.
    pub fn new(bytes: B, name: impl Into<String>) -> Result<Self, WeightsError> {
        let name = name.into();
        let buf = bytes.as_ref();
        let header = match parse_header(buf, &name)? {
            Some(h) => h,
            None => {
                let needed = header_len(buf, &name)?.map(|n| n + 8).unwrap_or(8);
                return Err(WeightsError::Truncated { file: name, needed, found: buf.len() as u64 });
            }
        };
        let found = buf.len() as u64;
        if found < header.file_len() {
            return Err(WeightsError::Truncated { file: name, needed: header.file_len(), found });
        }
        if found > header.file_len() {
            return Err(corrupt(&name, format!("{} trailing bytes after the last tensor", found - header.file_len())));
        }
        Ok(Self { bytes, header, name })
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The tensors in file order with their raw little-endian bytes.
    pub fn tensors(&self) -> impl Iterator<Item = (&TensorEntry, &[u8])> {
        let buf = self.bytes.as_ref();
        let base = self.header.data_start as usize;
        self.header.tensors.iter().map(move |t| (t, &buf[base + t.start as usize..base + t.end as usize]))
    }

    /// One tensor by name.
    pub fn get(&self, name: &str) -> Option<(&TensorEntry, &[u8])> {
        self.tensors().find(|(t, _)| t.name == name)
    }
}

/// A tensor completed by the [`StreamParser`].
/// A tensor's bytes as they arrive: the whole tensor, or a run of its rows (its first
/// dimension) when pieces are bounded ([`StreamParser::with_max_piece`]). Pieces of one tensor
/// come in order.
#[derive(Debug)]
pub struct StreamedTensor {
    pub entry: TensorEntry,
    /// The first row (index in the first dimension) these bytes start at.
    pub first_row: usize,
    /// Rows in these bytes.
    pub rows: usize,
    pub bytes: Vec<u8>,
}

impl StreamedTensor {
    /// Whether this piece ends its tensor.
    pub fn is_last(&self) -> bool {
        self.first_row + self.rows == rows_of(&self.entry)
    }
}

/// The rows of a tensor: its first dimension (a scalar is one row).
pub fn rows_of(entry: &TensorEntry) -> usize {
    entry.shape.first().copied().unwrap_or(1)
}

/// Incremental parser: feed it chunks as they arrive, take tensors (or bounded pieces of
/// them) out. Memory held: the header, plus the bytes of the one piece being received.
pub struct StreamParser {
    name: String,
    pending: Vec<u8>,
    header: Option<Header>,
    next: usize,
    /// Rows of tensor `next` already handed out.
    row: usize,
    /// Largest piece handed out, in bytes (at least one row).
    max_piece: usize,
    received: u64,
}

impl StreamParser {
    /// A parser that hands out whole tensors.
    pub fn new(name: impl Into<String>) -> Self {
        Self::with_max_piece(name, usize::MAX)
    }

    /// A parser that hands out tensors in pieces of whole rows, each at most `max_piece` bytes
    /// (or one row, if a row is larger): what the browser uses so that a weight never has to
    /// be whole in wasm memory.
    pub fn with_max_piece(name: impl Into<String>, max_piece: usize) -> Self {
        Self { name: name.into(), pending: Vec::new(), header: None, next: 0, row: 0, max_piece: max_piece.max(1), received: 0 }
    }

    /// The header, once it has arrived.
    pub fn header(&self) -> Option<&Header> {
        self.header.as_ref()
    }

    /// Bytes fed so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Feeds a chunk; returns the tensors (or pieces) it completed, in file order.
    pub fn push(&mut self, mut chunk: &[u8]) -> Result<Vec<StreamedTensor>, WeightsError> {
        self.received += chunk.len() as u64;
        let mut done = Vec::new();
        if self.header.is_none() {
            self.pending.extend_from_slice(chunk);
            chunk = &[];
            match parse_header(&self.pending, &self.name)? {
                None => return Ok(done),
                Some(h) => {
                    let rest = self.pending.split_off(h.data_start as usize);
                    self.pending = rest;
                    self.header = Some(h);
                }
            }
        }
        self.pending.extend_from_slice(chunk);
        let header = self.header.as_ref().unwrap();
        while let Some(t) = header.tensors.get(self.next) {
            let rows = rows_of(t);
            let len = (t.end - t.start) as usize;
            let row_bytes = if rows == 0 { 0 } else { len / rows };
            let left = rows - self.row;
            let take = if row_bytes == 0 { left } else { (self.max_piece / row_bytes).clamp(1, left.max(1)).min(left) };
            let need = take * row_bytes;
            if self.pending.len() < need {
                // Reserve once so that a piece arriving in many chunks is not re-allocated.
                self.pending.reserve(need - self.pending.len());
                break;
            }
            let rest = self.pending.split_off(need);
            let bytes = std::mem::replace(&mut self.pending, rest);
            done.push(StreamedTensor { entry: t.clone(), first_row: self.row, rows: take, bytes });
            self.row += take;
            if self.row >= rows {
                self.next += 1;
                self.row = 0;
            }
        }
        if self.next == header.tensors.len() && !self.pending.is_empty() {
            return Err(corrupt(&self.name, format!("{} trailing bytes after the last tensor", self.pending.len())));
        }
        Ok(done)
    }

    /// Declares the end of the stream: an error if anything promised has not arrived.
    pub fn finish(self) -> Result<Header, WeightsError> {
        match self.header {
            Some(h) if self.next == h.tensors.len() => Ok(h),
            Some(h) => Err(WeightsError::Truncated { file: self.name, needed: h.file_len(), found: self.received }),
            None => {
                let needed = header_len(&self.pending, &self.name)?.map(|n| n + 8).unwrap_or(8);
                Err(WeightsError::Truncated { file: self.name, needed, found: self.received })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(tensors: &[(&str, &str, &[usize], Vec<u8>)]) -> Vec<u8> {
        let mut header = serde_json::Map::new();
        let mut data = Vec::new();
        for (name, dtype, shape, bytes) in tensors {
            let start = data.len();
            data.extend_from_slice(bytes);
            header.insert(name.to_string(), serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [start, data.len()]}));
        }
        let json = serde_json::to_vec(&header).unwrap();
        let mut out = (json.len() as u64).to_le_bytes().to_vec();
        out.extend(json);
        out.extend(data);
        out
    }

    fn sample() -> Vec<u8> {
        let a: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        let b: Vec<u8> = vec![0, 60, 0, 64]; // f16 1.0, 2.0
        file(&[("a", "F32", &[2, 2], a), ("b", "F16", &[2], b)])
    }

    #[test]
    fn parses_whole_file() {
        let st = SafetensorsBytes::new(sample(), "t").unwrap();
        let names: Vec<_> = st.tensors().map(|(t, b)| (t.name.clone(), b.len())).collect();
        assert_eq!(names, vec![("a".to_string(), 16), ("b".to_string(), 4)]);
    }

    #[test]
    fn truncated_file_is_an_error_naming_sizes() {
        let mut bytes = sample();
        bytes.truncate(bytes.len() - 3);
        let err = SafetensorsBytes::new(bytes, "unet.safetensors").err().unwrap().to_string();
        assert!(err.contains("unet.safetensors") && err.contains("truncated"), "{err}");
        let err = SafetensorsBytes::new(vec![1, 2, 3], "x").err().unwrap().to_string();
        assert!(err.contains("truncated"), "{err}");
    }

    #[test]
    fn garbage_is_corrupt_not_a_panic() {
        let err = SafetensorsBytes::new(vec![0xff; 64], "x").err().unwrap().to_string();
        assert!(err.contains("not a valid safetensors"), "{err}");
        let mut bytes = sample();
        bytes[8] = b'!';
        let err = SafetensorsBytes::new(bytes, "x").err().unwrap().to_string();
        assert!(err.contains("not JSON"), "{err}");
        let bad = file(&[("a", "F32", &[3], vec![0; 8])]);
        let err = SafetensorsBytes::new(bad, "x").err().unwrap().to_string();
        assert!(err.contains("tensor `a`"), "{err}");
    }

    #[test]
    fn stream_parser_yields_tensors_for_any_chunking() {
        let bytes = sample();
        for chunk in [1, 3, 7, 64, 1000] {
            let mut p = StreamParser::new("s");
            let mut got = Vec::new();
            for c in bytes.chunks(chunk) {
                got.extend(p.push(c).unwrap().into_iter().map(|t| (t.entry.name, t.bytes.len())));
            }
            p.finish().unwrap();
            assert_eq!(got, vec![("a".to_string(), 16), ("b".to_string(), 4)], "chunk {chunk}");
        }
    }

    /// Pieces of bounded size reassemble to exactly the whole-file parse, for any chunking.
    #[test]
    fn stream_parser_pieces_reassemble_to_the_whole_file() {
        let rows: Vec<u8> = (0..6 * 5 * 4).map(|i| i as u8).collect(); // 6 rows of 5 f32
        let bytes = file(&[("a", "F32", &[6, 5], rows), ("s", "F32", &[], vec![1, 2, 3, 4]), ("e", "F16", &[0, 3], vec![])]);
        let whole = SafetensorsBytes::new(bytes.clone(), "w").unwrap();
        for max_piece in [1, 20, 45, 64, 1 << 20] {
            for chunk in [1, 5, 13, 1000] {
                let mut p = StreamParser::with_max_piece("s", max_piece);
                let mut got: Vec<(String, Vec<u8>)> = Vec::new();
                for c in bytes.chunks(chunk) {
                    for t in p.push(c).unwrap() {
                        assert!(t.bytes.len() <= max_piece.max(20), "piece of {} bytes over {max_piece}", t.bytes.len());
                        match got.last_mut() {
                            Some((name, b)) if *name == t.entry.name && t.first_row > 0 => b.extend(t.bytes),
                            _ => got.push((t.entry.name.clone(), t.bytes)),
                        }
                    }
                }
                p.finish().unwrap();
                let want: Vec<(String, Vec<u8>)> = whole.tensors().map(|(t, b)| (t.name.clone(), b.to_vec())).collect();
                assert_eq!(got, want, "max piece {max_piece}, chunk {chunk}");
            }
        }
    }

    #[test]
    fn stream_parser_reports_truncation() {
        let bytes = sample();
        let mut p = StreamParser::new("s.safetensors");
        p.push(&bytes[..bytes.len() - 1]).unwrap();
        let err = p.finish().unwrap_err().to_string();
        assert!(err.contains("s.safetensors") && err.contains("truncated"), "{err}");
    }
}
