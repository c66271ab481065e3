//! A model in a local directory (native): the [`ModelSource`] of the CLI, the converter and
//! the verifier. Weight files are memory-mapped and each tensor's pages dropped once it is
//! stored, so that loading a checkpoint does not keep it resident.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::bundle::check_size;
use super::source::{HeaderCheck, ModelSource};
use super::{SafetensorsBytes, VarStore, WeightsError};
use crate::{Error, Result};

/// The files of the model directory `root`.
pub struct DirSource {
    root: PathBuf,
    /// Sizes a manifest gave (checked when a file is read: a truncated shard is named as such).
    declared: RefCell<HashMap<String, u64>>,
}

impl DirSource {
    pub fn new(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        if !root.is_dir() {
            return Err(Error::io(&root, std::io::Error::new(std::io::ErrorKind::NotFound, "model directory not found")));
        }
        Ok(Self { root, declared: RefCell::new(HashMap::new()) })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The file `path` (relative to the root).
    pub fn path(&self, path: &str) -> PathBuf {
        self.root.join(path)
    }

    /// `path` to read, checked against its declared size; `None` if absent and `optional`
    /// (absent and required: an error naming it).
    fn open(&self, path: &str, optional: bool) -> Result<Option<PathBuf>> {
        let full = self.path(path);
        let found = match std::fs::metadata(&full) {
            Ok(m) if m.is_file() => m.len(),
            Ok(_) if optional => return Ok(None),
            Err(e) if optional && e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Ok(_) => return Err(Error::io(&full, std::io::Error::new(std::io::ErrorKind::NotFound, "not found"))),
            Err(e) => return Err(Error::io(&full, e)),
        };
        if let Some(&expected) = self.declared.borrow().get(path) {
            check_size(&full.display().to_string(), found, expected)?;
        }
        Ok(Some(full))
    }
}

impl ModelSource for DirSource {
    fn name(&self, path: &str) -> String {
        self.path(path).display().to_string()
    }

    async fn text(&self, path: &str, optional: bool) -> Result<Option<String>> {
        let Some(full) = self.open(path, optional)? else { return Ok(None) };
        std::fs::read_to_string(&full).map(Some).map_err(|e| Error::io(&full, e))
    }

    async fn bytes(&self, path: &str) -> Result<Vec<u8>> {
        let full = self.open(path, false)?.expect("a required file is there or an error");
        std::fs::read(&full).map_err(|e| Error::io(&full, e))
    }

    async fn stream_into(&self, path: &str, optional: bool, store: &mut VarStore, check: HeaderCheck<'_>) -> Result<bool> {
        let Some(full) = self.open(path, optional)? else { return Ok(false) };
        let map = map_file(&full)?;
        let st = SafetensorsBytes::new(&map, full.display().to_string())?;
        check(st.header())?;
        let base = st.header().data_start as usize;
        for (entry, bytes) in st.tensors() {
            store.insert(entry, bytes, st.name())?;
            release_pages(&map, base + entry.start as usize, bytes.len());
        }
        Ok(true)
    }

    fn declare(&self, path: &str, size: Option<u64>, _sha256: Option<&str>, _now: bool) {
        // Sizes only: the sha256 of every file is the verifier's job (`zepo weights verify`),
        // not every load's.
        if let Some(size) = size {
            self.declared.borrow_mut().insert(path.to_string(), size);
        }
    }

    fn variants(&self) -> (Option<String>, Option<String>) {
        // Full precision first: natively there is no download to save.
        (None, Some("fp16".into()))
    }
}

/// Memory-maps a file read-only.
pub fn map_file(path: &Path) -> Result<memmap2::Mmap, WeightsError> {
    let io = |source| WeightsError::Io { file: path.display().to_string(), source };
    let file = std::fs::File::open(path).map_err(io)?;
    // SAFETY: the map is read-only and the file is not modified while we read it.
    unsafe { memmap2::Mmap::map(&file) }.map_err(io)
}

/// Drops the resident pages of `map[offset..offset + len]` once read, so that streaming a
/// checkpoint through a map does not keep it all resident (the pages are clean: a later read
/// faults them back in from the file).
pub fn release_pages(map: &memmap2::Mmap, offset: usize, len: usize) {
    #[cfg(unix)]
    // SAFETY: DontNeed on a read-only file mapping only discards clean page-cache references;
    // the contents seen through `map` do not change.
    unsafe {
        let _ = map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, offset, len);
    }
    #[cfg(not(unix))]
    let _ = (map, offset, len);
}
