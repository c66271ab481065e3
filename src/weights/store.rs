//! [`VarStore`]: the tensors of one model part, uploaded to the device as they are read;
//! [`VarBuilder`]: a prefixed view that model constructors take their weights from by diffusers
//! key, with the expected shape, so that a missing or mis-shaped key is an error naming it.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::rc::Rc;

use burn::tensor::{DType, Device, Int, Tensor, TensorData};

use super::bundle::WeightsChoice;
use super::quant::{self, Quant, QuantTensor};
use super::safetensors::{rows_of, Dtype, StreamedTensor, TensorEntry};
use super::WeightsError;

/// How weights are turned into device tensors.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// The compute dtype: `DType::F32` or `DType::F16`; stored weights are cast to it.
    pub dtype: DType,
    /// Largest device buffer one weight may take; larger weights are kept as row blocks.
    pub max_buffer_bytes: usize,
    /// Which of a bundle's weights to load (`fp16` or a compact variant; `auto`: the smallest).
    pub weights: WeightsChoice,
    /// On a GPU, keep compact weights compact (their layers dequantize inside their kernels);
    /// `false` expands them at load, as the CPU backend always does.
    pub compact_on_device: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self { dtype: DType::F32, max_buffer_bytes: MAX_WEIGHT_BUFFER_BYTES, weights: WeightsChoice::Auto, compact_on_device: true }
    }
}

/// Largest single device buffer a weight may occupy: WebGPU's default (and lavapipe's) storage
/// binding limit is 128 MiB; larger weights (CLIP-L's 152 MB f32 token table) are kept as row
/// blocks, taken with [`VarBuilder::get_row_blocks`].
pub const MAX_WEIGHT_BUFFER_BYTES: usize = 120 << 20;

#[derive(Clone)]
struct Stored {
    /// Row blocks of the tensor, flattened; one block unless it is over the buffer limit.
    /// Empty for a compact tensor kept compact.
    blocks: Vec<Tensor<1>>,
    shape: Vec<usize>,
    compact: Option<CompactTensor>,
}

/// How a [`CompactTensor`]'s words hold its values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packing {
    /// Block-quantized codes and scales ([`super::quant`]).
    Blocks(Quant),
    /// f16 values, two per word (the first in the low half): an f16 weight on a GPU that
    /// computes in f32, held in half the bytes of its f32 expansion.
    F16,
}

impl Packing {
    /// Code words in a row of `k` values.
    pub fn words(&self, k: usize) -> usize {
        match self {
            Packing::Blocks(q) => q.code_words(k),
            Packing::F16 => k.div_ceil(2),
        }
    }

    /// `q<bits>`, or `f16`.
    pub fn name(&self) -> String {
        match self {
            Packing::Blocks(q) => q.name(),
            Packing::F16 => "f16".into(),
        }
    }
}

/// A compact weight as a GPU holds it: each row's code words and block scales, the arrays the
/// compact kernels (`crate::nn::gpu`) read; see [`super::quant`] for the packing, and
/// [`Packing::F16`]. `rows` are the weight's first dimension, each row its other dimensions
/// flattened (PyTorch's order).
#[derive(Debug, Clone)]
pub struct CompactTensor {
    /// `U32 [rows, code words per row]`.
    pub codes: Tensor<2, Int>,
    /// `[rows, blocks per row]`, in the compute dtype (f16 scales are exact in both); `[1, 1]`,
    /// unread, for [`Packing::F16`].
    pub scales: Tensor<2>,
    pub packing: Packing,
    /// The weight's logical shape.
    pub shape: Vec<usize>,
}

/// An f16 tensor's rows (`bytes`: whole rows of `k` little-endian f16 values) as words of two
/// values, the first in the low half, a row's odd last value with a zero (appended to `words`).
pub fn f16_words(bytes: &[u8], k: usize, words: &mut Vec<u32>) {
    for row in bytes.chunks(2 * k) {
        let mut pairs = row.chunks_exact(4);
        words.extend(pairs.by_ref().map(|w| u32::from_le_bytes(w.try_into().expect("4 bytes"))));
        if let [a, b] = pairs.remainder() {
            words.push(u16::from_le_bytes([*a, *b]) as u32);
        }
    }
}

impl CompactTensor {
    /// An f16 weight of `shape` (`bytes`: its little-endian f16 values) kept as f16 words.
    pub fn from_f16(shape: &[usize], bytes: &[u8], device: &Device, dtype: DType) -> Self {
        let mut words = Vec::new();
        f16_words(bytes, quant::rows_cols(shape).1, &mut words);
        Self::upload(Packing::F16, shape, words, Vec::new(), device, dtype)
    }

    /// A compact tensor of logical `shape` from its stored rows (`bytes`, `quant`'s packing),
    /// on `device`, scales in `dtype`.
    pub fn from_stored(quant: Quant, shape: &[usize], bytes: &[u8], device: &Device, dtype: DType) -> Result<Self, WeightsError> {
        let (mut words, mut scales) = (Vec::new(), Vec::new());
        let (_, k) = quant::rows_cols(shape);
        quant::split_rows(quant, bytes, k, &mut words, &mut scales, "a compact tensor", "memory")?;
        Ok(Self::upload(Packing::Blocks(quant), shape, words, scales, device, dtype))
    }

    /// Uploads code words and scales (as [`quant::split_rows`] or [`f16_words`] give them),
    /// each one buffer outside the device's activation pools.
    fn upload(packing: Packing, shape: &[usize], words: Vec<u32>, scales: Vec<f32>, device: &Device, dtype: DType) -> Self {
        let (rows, k) = quant::rows_cols(shape);
        let words = TensorData::new(words, [rows, packing.words(k)]);
        let on = device.clone();
        let codes = device.memory_persistent_allocations(words, move |data| Tensor::<2, Int>::from_data(data, (&on, DType::U32)));
        let (scales, [r, c]) = match packing {
            Packing::Blocks(q) => (scales, [rows, q.blocks(k)]),
            Packing::F16 => (vec![0.0], [1, 1]),
        };
        let scales = float_data(scales, dtype, None);
        let on = device.clone();
        let scales = device.memory_persistent_allocations(scales, move |data| Tensor::<1>::from_data(data, (&on, dtype)).reshape([r, c]));
        Self { codes, scales, packing, shape: shape.to_vec() }
    }

    /// Bytes it holds on the device (its words, and its scales if it has any).
    pub fn device_bytes(&self) -> usize {
        let elem = if self.scales.dtype() == DType::F16 { 2 } else { 4 };
        let scales = match self.packing {
            Packing::Blocks(_) => self.scales.shape().num_elements() * elem,
            Packing::F16 => 0,
        };
        self.codes.shape().num_elements() * 4 + scales
    }
}

/// Whether `device` runs burn's CubeCL backends (wgpu, WebGPU, CUDA).
fn on_cube(device: &Device) -> bool {
    #[cfg(any(feature = "gpu", target_arch = "wasm32"))]
    return matches!(device.as_dispatch(), burn::backend::DispatchDevice::Cube(_));
    #[cfg(not(any(feature = "gpu", target_arch = "wasm32")))]
    {
        let _ = device;
        false
    }
}

/// Whether a weight of `shape` is stored channels-last on `device`: convolution weights on a
/// GPU, where burn's convolution reads them so (otherwise it re-lays them out at every call).
fn stored_channels_last(device: &Device, shape: &[usize]) -> bool {
    shape.len() == 4 && on_cube(device)
}

/// The `(inner, k)` of a row's channels-last transposition for `shape`, if it is stored so.
fn layout_of(device: &Device, shape: &[usize]) -> Option<(usize, usize)> {
    stored_channels_last(device, shape).then(|| (shape[1], shape[2] * shape[3]))
}

enum Source {
    Loaded(HashMap<String, Stored>),
    /// Deterministic random weights (benchmarks and memory checks on full-size configs).
    Random {
        seed: u64,
    },
    /// Zeros of whatever shape is asked: the model's structure without its weights (the keys and
    /// shapes a checkpoint must have, see [`VarStore::requests`]).
    Zeros,
}

/// The keys a model asked a [`VarStore`] for, with their shapes, in the order asked.
pub type Requests = Rc<RefCell<Vec<(String, Vec<usize>)>>>;

/// The tensors of one model part on one device.
pub struct VarStore {
    device: Device,
    dtype: DType,
    max_buffer_bytes: usize,
    source: Source,
    name: String,
    used: BTreeSet<String>,
    /// Keys a checkpoint may carry that no module needs (e.g. CLIP's `position_ids` buffer).
    ignorable: Vec<String>,
    /// Where each key came from, to report duplicates across shards.
    origin: HashMap<String, String>,
    /// Every key taken, with its shape.
    requests: Requests,
    /// The tensor being received in pieces.
    partial: Option<Partial>,
    /// The compact tensors declared for the files being read: their packing and logical shape.
    quantized: HashMap<String, (Quant, Vec<usize>)>,
    compact_on_device: bool,
    /// Whether f16 weights of 2+ dimensions are kept as f16 words ([`Packing::F16`]) when the
    /// device computes in f32: for model parts whose every such weight is a projection's or a
    /// convolution's ([`VarStore::keep_f16_compact`]).
    f16_compact: bool,
    /// Device bytes of the weights held (loaded ones).
    held_bytes: usize,
}

/// A tensor being received in pieces: its complete row blocks, and the pieces of the next.
struct Partial {
    rows: usize,
    row_elems: usize,
    rows_per_block: usize,
    blocks: Vec<Tensor<1>>,
    pieces: Vec<Tensor<1>>,
    rows_done: usize,
    /// A compact tensor kept compact: its packing, code words and scales so far (one weight's
    /// worth of host memory at most, a few MB).
    compact: Option<(Packing, Vec<u32>, Vec<f32>)>,
}

impl VarStore {
    /// An empty store; fill it with [`VarStore::insert`].
    pub fn new(device: &Device, options: &LoadOptions, name: impl Into<String>) -> Self {
        Self {
            device: device.clone(),
            dtype: options.dtype,
            max_buffer_bytes: options.max_buffer_bytes,
            source: Source::Loaded(HashMap::new()),
            name: name.into(),
            used: BTreeSet::new(),
            ignorable: Vec::new(),
            origin: HashMap::new(),
            requests: Rc::default(),
            partial: None,
            quantized: HashMap::new(),
            compact_on_device: options.compact_on_device,
            f16_compact: false,
            held_bytes: 0,
        }
    }

    /// A store that makes up weights of whatever shape is asked, from `seed`.
    pub fn random(device: &Device, options: &LoadOptions, seed: u64) -> Self {
        let mut store = Self::new(device, options, "random weights");
        store.source = Source::Random { seed };
        store
    }

    /// A store that hands out zeros of whatever shape is asked: building a model from it lists
    /// the weights the model needs ([`VarStore::requests`]).
    pub fn zeros(device: &Device, options: &LoadOptions) -> Self {
        let mut store = Self::new(device, options, "the model's structure");
        store.source = Source::Zeros;
        store
    }

    /// A store holding the same device tensors (no data is copied; burn's tensors are shared),
    /// nothing used yet: to build a model several times from one set of weights, some replaced
    /// by [`VarStore::insert`] (the converter's calibration).
    pub fn share(&self) -> Self {
        let source = match &self.source {
            Source::Loaded(map) => Source::Loaded(map.clone()),
            Source::Random { seed } => Source::Random { seed: *seed },
            Source::Zeros => Source::Zeros,
        };
        let mut store = Self::new(
            &self.device,
            &LoadOptions {
                dtype: self.dtype,
                max_buffer_bytes: self.max_buffer_bytes,
                compact_on_device: self.compact_on_device,
                ..Default::default()
            },
            self.name.clone(),
        );
        store.source = source;
        store.ignorable = self.ignorable.clone();
        store.f16_compact = self.f16_compact;
        store
    }

    /// The keys taken so far (and later), with their shapes: a handle that outlives the store.
    pub fn requests(&self) -> Requests {
        self.requests.clone()
    }

    /// Number of tensors held.
    pub fn len(&self) -> usize {
        match &self.source {
            Source::Loaded(m) => m.len(),
            Source::Random { .. } | Source::Zeros => 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Device bytes of the weights loaded into it: floats in the compute dtype, compact
    /// tensors as the device keeps them ([`CompactTensor::device_bytes`]).
    pub fn held_bytes(&self) -> usize {
        self.held_bytes
    }

    /// Decodes one tensor's raw bytes, casts it to the compute dtype and uploads it.
    /// Non-float tensors (integer buffers) are kept aside: a module never asks for one, and
    /// they are reported as unexpected only if not declared ignorable.
    pub fn insert(&mut self, entry: &TensorEntry, bytes: &[u8], origin: &str) -> Result<(), WeightsError> {
        self.insert_piece(&StreamedTensor { entry: entry.clone(), first_row: 0, rows: rows_of(entry), bytes: Vec::new() }, bytes, origin)
    }

    /// Declares the compact tensors of the next file (`file`, for errors), as its manifest
    /// entry lists them: their pieces arrive as `U8` rows, are checked and dequantized here.
    pub fn expect_quantized(&mut self, tensors: &std::collections::BTreeMap<String, QuantTensor>, file: &str) -> Result<(), WeightsError> {
        for (name, t) in tensors {
            let q = t.quant(name).map_err(|reason| WeightsError::Bundle { file: file.to_string(), reason })?;
            self.quantized.insert(name.clone(), (q, t.shape.clone()));
        }
        Ok(())
    }

    /// Takes a piece of a tensor (`piece`'s rows, whose bytes are `bytes`; pieces of a tensor in
    /// order, as [`super::StreamParser`] hands them out): each piece is decoded and uploaded on
    /// its own, so that a weight is never whole in host memory; the pieces of each row block
    /// are joined on the device once it is complete. The final blocks are allocated outside the
    /// device's activation pools ([`Device::memory_persistent_allocations`]), one buffer each.
    /// A compact tensor (declared by [`VarStore::expect_quantized`]) arrives as its stored rows:
    /// on a GPU it is kept so ([`CompactTensor`], unless `compact_on_device` is off), elsewhere
    /// dequantized to the compute dtype here.
    pub fn insert_piece(&mut self, piece: &StreamedTensor, bytes: &[u8], origin: &str) -> Result<(), WeightsError> {
        let Source::Loaded(_) = &self.source else { return Ok(()) };
        let entry = &piece.entry;
        let quant = self.quantized.get(&entry.name).cloned();
        let shape = quant.as_ref().map_or(&entry.shape, |(_, shape)| shape).clone();
        let float = entry.dtype.is_float() || quant.is_some();
        if piece.first_row == 0 {
            if let Some(first) = self.origin.get(&entry.name) {
                return Err(WeightsError::Duplicate { key: entry.name.clone(), first: first.clone(), second: origin.to_string() });
            }
            if let Some((q, shape)) = &quant {
                quant::check_stored(*q, shape, &entry.name, entry.dtype, &entry.shape)
                    .map_err(|reason| WeightsError::Corrupt { file: origin.to_string(), reason })?;
            }
            self.origin.insert(entry.name.clone(), origin.to_string());
            let rows = rows_of(entry).max(1);
            let row_elems = shape.iter().product::<usize>() / rows;
            let rows_per_block = block_rows(rows, row_elems, self.dtype, self.max_buffer_bytes);
            let kept = self.compact_on_device && on_cube(&self.device);
            let f16 = self.f16_compact && entry.dtype == Dtype::F16 && shape.len() >= 2 && self.dtype == DType::F32;
            let compact = match &quant {
                Some((q, _)) if kept => Some((Packing::Blocks(*q), Vec::new(), Vec::new())),
                None if kept && f16 => Some((Packing::F16, Vec::new(), Vec::new())),
                _ => None,
            };
            self.partial =
                Some(Partial { rows, row_elems, rows_per_block, blocks: Vec::new(), pieces: Vec::new(), rows_done: 0, compact });
        }
        let Some(part) = self.partial.as_mut().filter(|p| p.rows_done == piece.first_row) else {
            return Err(WeightsError::Corrupt {
                file: origin.to_string(),
                reason: format!("tensor `{}`: a piece out of order", entry.name),
            });
        };
        if let Some((packing, words, scales)) = part.compact.as_mut() {
            match packing {
                Packing::Blocks(q) => quant::split_rows(*q, bytes, part.row_elems, words, scales, &entry.name, origin)?,
                Packing::F16 => f16_words(bytes, part.row_elems, words),
            }
        } else if float {
            // Split at block boundaries: a block's pieces are joined, blocks are kept apart.
            let in_row = match &quant {
                Some((q, _)) => q.row_bytes(part.row_elems),
                None => part.row_elems * entry.dtype.size(),
            };
            let layout = layout_of(&self.device, &shape);
            let mut row = piece.first_row;
            let end = piece.first_row + piece.rows;
            while row < end {
                let block_end = (row / part.rows_per_block + 1) * part.rows_per_block;
                let upto = block_end.min(end);
                let n = (upto - row) * part.row_elems;
                let from = (row - piece.first_row) * in_row;
                let raw = &bytes[from..from + (upto - row) * in_row];
                let data = match &quant {
                    Some((q, _)) => float_data(quant::dequantize(*q, raw, part.row_elems, &entry.name, origin)?, self.dtype, layout),
                    None => decode_float(entry.dtype, raw, n, self.dtype, layout),
                };
                let block_done = upto == block_end || upto == part.rows;
                let whole_block = row % part.rows_per_block == 0 && block_done;
                if whole_block {
                    // A block in one piece goes straight to its final buffer.
                    let (device, dtype) = (self.device.clone(), self.dtype);
                    part.blocks
                        .push(self.device.memory_persistent_allocations(data, move |data| Tensor::<1>::from_data(data, (&device, dtype))));
                } else {
                    part.pieces.push(Tensor::<1>::from_data(data, (&self.device, self.dtype)));
                    if block_done {
                        let pieces = std::mem::take(&mut part.pieces);
                        part.blocks.push(self.device.memory_persistent_allocations(pieces, |pieces| Tensor::cat(pieces, 0)));
                    }
                }
                row = upto;
            }
        }
        part.rows_done = piece.first_row + piece.rows;
        if !piece.is_last() {
            return Ok(());
        }
        let part = self.partial.take().expect("a tensor in progress");
        if let Some((packing, words, scales)) = part.compact {
            let compact = CompactTensor::upload(packing, &shape, words, scales, &self.device, self.dtype);
            self.held_bytes += compact.device_bytes();
            let Source::Loaded(map) = &mut self.source else { unreachable!("checked above") };
            map.insert(entry.name.clone(), Stored { blocks: Vec::new(), shape, compact: Some(compact) });
            return Ok(());
        }
        let Source::Loaded(map) = &mut self.source else { unreachable!("checked above") };
        let blocks = if float && !part.blocks.is_empty() {
            let elem = if self.dtype == DType::F16 { 2 } else { 4 };
            self.held_bytes += part.blocks.iter().map(|b| b.dims()[0] * elem).sum::<usize>();
            part.blocks
        } else {
            // No rows (one empty block), or not a float: a placeholder, so that `finish` can
            // report it unless it is ignorable.
            vec![Tensor::<1>::from_data(TensorData::new(vec![0f32; 0], [0]), (&self.device, self.dtype))]
        };
        map.insert(entry.name.clone(), Stored { blocks, shape, compact: None });
        Ok(())
    }

    /// Keeps this part's f16 weights of 2+ dimensions as f16 words where the device computes in
    /// f32 (see [`Packing::F16`]): only for parts whose every such weight is a projection's or a
    /// convolution's (the UNet, the VAE), as a layer that reads a weight dense cannot take one.
    pub fn keep_f16_compact(&mut self) {
        self.f16_compact = true;
    }

    /// Drops a loaded tensor (`key` may then be inserted again): the converter's calibration
    /// swaps weights in and out of one store. `false` if it held none.
    pub fn remove(&mut self, key: &str) -> bool {
        self.origin.remove(key);
        match &mut self.source {
            Source::Loaded(map) => map.remove(key).is_some(),
            Source::Random { .. } | Source::Zeros => false,
        }
    }

    /// Declares keys (exact names) that may be present and need not be used.
    pub fn ignore(&mut self, key: impl Into<String>) {
        self.ignorable.push(key.into());
    }

    /// A builder at the root of this store. The store is shared: call [`VarStore::finish`]
    /// through [`VarBuilder::finish`] once the model is built.
    pub fn into_builder(self) -> VarBuilder {
        VarBuilder { store: Rc::new(RefCell::new(self)), prefix: String::new() }
    }

    /// The row blocks of `key`, checked against `shape`, marked used.
    fn take_blocks(&mut self, key: &str, shape: &[usize]) -> Result<Vec<Tensor<1>>, WeightsError> {
        self.requests.borrow_mut().push((key.to_string(), shape.to_vec()));
        // Made-up weights are blocked like loaded ones, so full-size random models respect the
        // buffer limit too.
        let rows = shape.first().copied().unwrap_or(1).max(1);
        let row_elems = shape.iter().product::<usize>() / rows;
        let per = block_rows(rows, row_elems, self.dtype, self.max_buffer_bytes);
        let layout = layout_of(&self.device, shape);
        let made_up = |values: &dyn Fn(usize, usize) -> Vec<f32>| -> Vec<Tensor<1>> {
            (0..rows)
                .step_by(per)
                .map(|r| {
                    let n = per.min(rows - r) * row_elems;
                    Tensor::<1>::from_data(TensorData::new(in_layout(values(r * row_elems, n), layout), [n]), (&self.device, self.dtype))
                })
                .collect()
        };
        match &self.source {
            Source::Random { seed } => {
                let all = random_weight(key, shape, *seed);
                Ok(made_up(&|start, n| all[start..start + n].to_vec()))
            }
            Source::Zeros => Ok(made_up(&|_, n| vec![0.0; n])),
            Source::Loaded(map) => {
                let stored = map.get(key).ok_or_else(|| WeightsError::Missing {
                    key: key.to_string(),
                    expected: shape.to_vec(),
                    source_name: self.name.clone(),
                })?;
                if stored.shape != shape {
                    return Err(WeightsError::Shape { key: key.to_string(), expected: shape.to_vec(), found: stored.shape.clone() });
                }
                if let Some(c) = &stored.compact {
                    let dtype = format!("{} (kept compact on the device, for a layer that reads it so)", c.packing.name());
                    return Err(WeightsError::Dtype { key: key.to_string(), dtype });
                }
                let held: usize = stored.blocks.iter().map(|b| b.dims()[0]).sum();
                if held != shape.iter().product::<usize>() {
                    return Err(WeightsError::Dtype { key: key.to_string(), dtype: "integer".into() });
                }
                let blocks = stored.blocks.clone();
                self.used.insert(key.to_string());
                Ok(blocks)
            }
        }
    }

    fn take<const D: usize>(&mut self, key: &str, shape: [usize; D]) -> Result<Tensor<D>, WeightsError> {
        let mut blocks = self.take_blocks(key, &shape)?;
        let flat = if blocks.len() == 1 { blocks.remove(0) } else { Tensor::cat(blocks, 0) };
        if stored_channels_last(&self.device, &shape) {
            // Stored [O, kh, kw, I]: the same values as [O, I, kh, kw], channels-last.
            let stored: Tensor<4> = flat.reshape([shape[0], shape[2], shape[3], shape[1]]);
            return Ok(Tensor::from_dispatch(stored.permute([0, 3, 1, 2]).into_dispatch()));
        }
        Ok(flat.reshape(shape))
    }

    /// `key` as the device holds it when it is kept compact; `None` when it is held as floats
    /// (or made up), to be taken with [`VarStore::take`].
    fn take_compact(&mut self, key: &str, shape: &[usize]) -> Result<Option<CompactTensor>, WeightsError> {
        let Source::Loaded(map) = &self.source else { return Ok(None) };
        let Some(stored) = map.get(key) else { return Ok(None) };
        let Some(compact) = &stored.compact else { return Ok(None) };
        if stored.shape != shape {
            return Err(WeightsError::Shape { key: key.to_string(), expected: shape.to_vec(), found: stored.shape.clone() });
        }
        let compact = compact.clone();
        self.requests.borrow_mut().push((key.to_string(), shape.to_vec()));
        self.used.insert(key.to_string());
        Ok(Some(compact))
    }

    fn take_row_blocks(&mut self, key: &str, shape: [usize; 2]) -> Result<Vec<Tensor<2>>, WeightsError> {
        let blocks = self.take_blocks(key, &shape)?;
        Ok(blocks
            .into_iter()
            .map(|b| {
                let rows = b.dims()[0] / shape[1];
                b.reshape([rows, shape[1]])
            })
            .collect())
    }

    fn contains(&self, key: &str) -> bool {
        match &self.source {
            Source::Loaded(map) => map.contains_key(key),
            Source::Random { .. } | Source::Zeros => true,
        }
    }

    fn finish(&mut self) -> Result<(), WeightsError> {
        let Source::Loaded(map) = &mut self.source else { return Ok(()) };
        let mut unexpected: Vec<&String> =
            map.keys().filter(|k| !self.used.contains(*k) && !self.ignorable.iter().any(|i| i == *k)).collect();
        unexpected.sort();
        let result = if unexpected.is_empty() {
            Ok(())
        } else {
            let shown: Vec<String> = unexpected.iter().take(8).map(|k| format!("`{k}`")).collect();
            let more = unexpected.len().saturating_sub(8);
            let keys = if more > 0 { format!("{} and {more} more", shown.join(", ")) } else { shown.join(", ") };
            Err(WeightsError::Unexpected { source_name: self.name.clone(), keys })
        };
        map.clear();
        result
    }
}

/// A prefixed view on a [`VarStore`], cheap to clone, like diffusers' dotted module paths.
#[derive(Clone)]
pub struct VarBuilder {
    store: Rc<RefCell<VarStore>>,
    prefix: String,
}

impl VarBuilder {
    /// The view one level down: `vb.pp("down_blocks").pp(0)` addresses `down_blocks.0.*`.
    pub fn pp(&self, name: impl std::fmt::Display) -> Self {
        let prefix = if self.prefix.is_empty() { name.to_string() } else { format!("{}.{}", self.prefix, name) };
        Self { store: self.store.clone(), prefix }
    }

    fn key(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{}", self.prefix, name)
        }
    }

    /// The tensor `prefix.name`, which must have exactly `shape`.
    pub fn get<const D: usize>(&self, name: &str, shape: [usize; D]) -> Result<Tensor<D>, WeightsError> {
        let key = self.key(name);
        self.store.borrow_mut().take(&key, shape)
    }

    /// The 2-D tensor `prefix.name` as row blocks, each under [`MAX_WEIGHT_BUFFER_BYTES`]
    /// (one block when it fits): for embedding tables too large for one GPU buffer.
    pub fn get_row_blocks(&self, name: &str, shape: [usize; 2]) -> Result<Vec<Tensor<2>>, WeightsError> {
        let key = self.key(name);
        self.store.borrow_mut().take_row_blocks(&key, shape)
    }

    /// `prefix.name` of `shape` as the device holds it, when it is kept compact (see
    /// [`CompactTensor`]); `None` when it is held as floats, to be taken with [`VarBuilder::get`].
    pub fn get_compact(&self, name: &str, shape: &[usize]) -> Result<Option<CompactTensor>, WeightsError> {
        let key = self.key(name);
        self.store.borrow_mut().take_compact(&key, shape)
    }

    /// Whether `prefix.name` exists (optional weights such as a bias).
    pub fn contains(&self, name: &str) -> bool {
        self.store.borrow().contains(&self.key(name))
    }

    pub fn device(&self) -> Device {
        self.store.borrow().device.clone()
    }

    pub fn dtype(&self) -> DType {
        self.store.borrow().dtype
    }

    /// Ends loading: every stored tensor must have been used by the model (no unexpected keys).
    /// Frees the store's references so the model holds the only copy of each weight.
    pub fn finish(self) -> Result<(), WeightsError> {
        self.store.borrow_mut().finish()
    }
}

/// Rows per block so that a block stays under `max_bytes` in `dtype`.
fn block_rows(rows: usize, row_elems: usize, dtype: DType, max_bytes: usize) -> usize {
    let bytes = if dtype == DType::F16 { 2 } else { 4 };
    (max_bytes / (row_elems * bytes).max(1)).clamp(1, rows)
}

/// Each of the rows of `v` (`inner` runs of `k` values) transposed to `k` runs of `inner`: a
/// convolution weight `[O, I, kh, kw]` row by row to `[O, kh, kw, I]`, channels-last.
fn rows_to_channels_last<T: Copy>(v: Vec<T>, inner: usize, k: usize) -> Vec<T> {
    if inner <= 1 || k <= 1 {
        return v;
    }
    let row = inner * k;
    let mut out = Vec::with_capacity(v.len());
    for r in v.chunks(row) {
        for j in 0..k {
            out.extend((0..inner).map(|i| r[i * k + j]));
        }
    }
    out
}

/// A weight's values in its device layout: `layout` `Some((inner, k))` stores each row
/// channels-last (see [`rows_to_channels_last`]).
fn decode_float(dtype: Dtype, bytes: &[u8], numel: usize, target: DType, layout: Option<(usize, usize)>) -> TensorData {
    use half::{bf16, f16};
    let as_f32 = || -> Vec<f32> {
        match dtype {
            Dtype::F32 => bytes.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect(),
            Dtype::F16 => bytes.chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            Dtype::BF16 => bytes.chunks_exact(2).map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            Dtype::F64 => bytes.chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().unwrap()) as f32).collect(),
            _ => unreachable!("checked by the caller"),
        }
    };
    match target {
        DType::F16 => {
            let v: Vec<f16> = if dtype == Dtype::F16 {
                bytes.chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]])).collect()
            } else {
                as_f32().into_iter().map(f16::from_f32).collect()
            };
            TensorData::new(in_layout(v, layout), [numel])
        }
        _ => TensorData::new(in_layout(as_f32(), layout), [numel]),
    }
}

/// Dequantized values in the compute dtype and device layout.
fn float_data(values: Vec<f32>, target: DType, layout: Option<(usize, usize)>) -> TensorData {
    let numel = values.len();
    match target {
        DType::F16 => TensorData::new(in_layout(values.into_iter().map(half::f16::from_f32).collect(), layout), [numel]),
        _ => TensorData::new(in_layout(values, layout), [numel]),
    }
}

fn in_layout<T: Copy>(v: Vec<T>, layout: Option<(usize, usize)>) -> Vec<T> {
    match layout {
        Some((inner, k)) => rows_to_channels_last(v, inner, k),
        None => v,
    }
}

fn hash(key: &str) -> u64 {
    // FNV-1a: stable across runs and platforms, unlike std's hasher.
    key.bytes().fold(0xcbf29ce484222325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100000001b3))
}

/// The values of the random weight `key` of `shape` for `seed`: normal, fan-in scaled, so that
/// activations stay finite through a deep random network; 1-D `weight`s are norm scales, kept
/// near one. Deterministic across runs and platforms; [`VarStore::random`] hands these out and
/// `zepo weights random` writes them.
pub fn random_weight(key: &str, shape: &[usize], seed: u64) -> Vec<f32> {
    use rand::SeedableRng;
    use rand_distr::{Distribution, Normal};
    let n: usize = shape.iter().product();
    let rows = shape.first().copied().unwrap_or(1).max(1);
    let row_elems = (n / rows).max(1);
    let (mean, std) = if shape.len() == 1 && key.ends_with("weight") {
        (1.0f32, 0.1f32)
    } else if shape.len() == 1 {
        (0.0, 0.02)
    } else {
        (0.0f32, 1.0 / (row_elems as f32).sqrt())
    };
    let normal = Normal::new(mean, std).expect("a positive standard deviation");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed.wrapping_add(hash(key)));
    (0..n).map(|_| normal.sample(&mut rng)).collect()
}
