//! Where a forward pass spends its time, op by op (`zepo bench --profile`): each layer call is
//! timed and filed under its kind and shape (`conv 3×3 512→512 @64²`), with the floating-point
//! work it did, so a table can say how close each kernel runs to the CPU's peak.
//!
//! Off unless [`enable`]d: a disabled scope is one relaxed atomic load. Wall times only mean
//! something on an eager backend (the CPU's): on a GPU a call returns once its work is queued.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

static ENABLED: AtomicBool = AtomicBool::new(false);
static TABLE: Mutex<BTreeMap<String, Entry>> = Mutex::new(BTreeMap::new());

/// What the scopes under one key added up to.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Entry {
    pub calls: usize,
    pub seconds: f64,
    /// Floating-point operations (a multiply-add is two).
    pub flops: f64,
    /// Bytes a call must at least read and write (its inputs, weights and output, once each).
    pub bytes: f64,
}

/// What one call did: its key, flops and compulsory bytes.
pub struct Work {
    pub key: String,
    pub flops: f64,
    pub bytes: f64,
}

/// Starts (or stops) recording; starting clears what was recorded.
pub fn enable(on: bool) {
    if on {
        TABLE.lock().expect("profile table").clear();
    }
    ENABLED.store(on, Ordering::Relaxed);
}

/// Whether scopes record.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Takes what was recorded since [`enable`], by key.
pub fn take() -> BTreeMap<String, Entry> {
    std::mem::take(&mut *TABLE.lock().expect("profile table"))
}

/// Runs `f`; when recording, files its wall time under the [`Work`] `describe` gives for its
/// result. A scope inside another is counted in both: keep scopes to leaf operations.
pub fn scope<T>(f: impl FnOnce() -> T, describe: impl FnOnce(&T) -> Work) -> T {
    // wasm32's `Instant::now` panics: the browser is profiled by its own counters.
    if cfg!(target_arch = "wasm32") || !enabled() {
        return f();
    }
    let start = Instant::now();
    let out = f();
    let seconds = start.elapsed().as_secs_f64();
    let work = describe(&out);
    let mut table = TABLE.lock().expect("profile table");
    let e = table.entry(work.key).or_default();
    e.calls += 1;
    e.seconds += seconds;
    e.flops += work.flops;
    e.bytes += work.bytes;
    out
}

/// What this machine's CPU does at best, measured: a large f32 GEMM on every thread (GFLOP/s)
/// and a large copy (GB/s, bytes read + written). The yardsticks of a profile's rows.
#[cfg(all(feature = "cpu", not(target_arch = "wasm32")))]
pub fn cpu_peaks() -> (f64, f64) {
    use rayon::prelude::*;
    let n = 1536;
    let (a, b) = (vec![1.0f32; n * n], vec![0.5f32; n * n]);
    let mut c = vec![0f32; n * n];
    let best = |f: &mut dyn FnMut()| {
        f();
        (0..3)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64()
            })
            .fold(f64::INFINITY, f64::min)
    };
    // SAFETY: three n × n matrices.
    let gemm_s = best(&mut || unsafe {
        super::cpu_ops::sgemm([n, n, n], (c.as_mut_ptr(), n), (a.as_ptr(), n, 1), (b.as_ptr(), n, 1), 1.0, false, true)
    });
    let len = 64 << 20;
    let src = vec![1.0f32; len];
    let mut dst = vec![0.0f32; len];
    let copy_s = best(&mut || dst.par_chunks_mut(1 << 16).zip(src.par_chunks(1 << 16)).for_each(|(d, s)| d.copy_from_slice(s)));
    (2.0 * (n * n * n) as f64 / gemm_s / 1e9, 8.0 * len as f64 / copy_s / 1e9)
}

/// Without the CPU backend there is nothing to measure.
#[cfg(not(all(feature = "cpu", not(target_arch = "wasm32"))))]
pub fn cpu_peaks() -> (f64, f64) {
    (f64::NAN, f64::NAN)
}

/// `h×w` of a map, `h²` when square.
pub fn map_size(h: usize, w: usize) -> String {
    if h == w {
        format!("{h}²")
    } else {
        format!("{h}×{w}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_only_when_enabled() {
        // Keys of its own: other tests' layers may record while this one has it on.
        assert_eq!(scope(|| 3, |_| Work { key: "profile-test".into(), flops: 1.0, bytes: 1.0 }), 3);
        enable(true);
        scope(|| 1, |v| Work { key: format!("profile-test {v}"), flops: 10.0, bytes: 4.0 });
        scope(|| 1, |v| Work { key: format!("profile-test {v}"), flops: 10.0, bytes: 4.0 });
        enable(false);
        scope(|| 1, |v| Work { key: format!("profile-test {v}"), flops: 10.0, bytes: 4.0 });
        let t = take();
        assert!(!t.contains_key("profile-test"));
        assert_eq!((t["profile-test 1"].calls, t["profile-test 1"].flops), (2, 20.0));
        assert!(!take().contains_key("profile-test 1"), "taken");
    }
}
