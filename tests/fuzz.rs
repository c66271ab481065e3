//! Fuzzing on stable Rust: a time-boxed, seeded driver over every parser that takes input
//! from outside — the safetensors header and the streaming parser (bytes in arbitrary chunks),
//! the bundle manifest (compact variants included), compact weights' stored rows, the tokenizer (any Unicode, any length), the JS options object (the
//! engine's parser, natively), image decoding, embedded ICC colour profiles. Properties: never
//! a panic; never an allocation beyond the stated limit of its target (a counting allocator
//! measures each call's peak); the streaming parser gives exactly what the whole-file parser
//! gives, for every chunking.
//!
//! Each target first replays its regression corpus (`tests/fuzz-corpus/<target>/`: inputs
//! that once failed), then mutates seeds for `ZEPO_FUZZ_SECONDS` seconds (default 2; the test
//! script gives each target more). A failing input is written to the corpus folder (commit
//! it) and the test fails naming it. `ZEPO_FUZZ_SEED` repeats a run; `ZEPO_FUZZ_ONLY=<target>`
//! runs one target.
//!
//!     ZEPO_FUZZ_SECONDS=60 cargo test --release --test fuzz -- --nocapture

use std::alloc::{GlobalAlloc, Layout, System};
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use zepo::models::tokenizer::ClipTokenizer;
use zepo::weights::bundle::{FileRef, Manifest, Shard};
use zepo::weights::quant::{Quant, QuantTensor};
use zepo::weights::{SafetensorsBytes, StreamParser};
use zepo::zepo::image::{profile_to_srgb, RgbImage, MAX_PIXELS};
use zepo::zepo::ZepoOptions;

/// Counts live heap bytes and their peak.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        unsafe { System.dealloc(p, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Runs `f`, returning whether it panicked and the most bytes it had allocated at once.
fn measured(f: impl FnOnce()) -> (bool, usize) {
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let panicked = std::panic::catch_unwind(AssertUnwindSafe(f)).is_err();
    (panicked, PEAK.load(Ordering::Relaxed).saturating_sub(base))
}

type Rng64 = rand::rngs::StdRng;

/// One fuzz target: seeds, a mutator, a check (which panics on a broken property), and the
/// allocation limit for an input of a given length.
struct Target {
    name: &'static str,
    seeds: Vec<Vec<u8>>,
    mutate: fn(&mut Rng64, &[u8]) -> Vec<u8>,
    check: Box<dyn Fn(&[u8])>,
    /// Stated limit: the most bytes one call may allocate for an input of this length.
    limit: fn(usize) -> usize,
    /// Why that limit: printed with the results.
    limit_text: &'static str,
}

fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-corpus").join(target)
}

/// A byte-level mutation: flips, interesting values, insertions, deletions, truncation, splices.
fn mutate_bytes(rng: &mut Rng64, input: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..rng.random_range(1..=4) {
        let len = out.len();
        match rng.random_range(0..8) {
            0 if len > 0 => {
                let i = rng.random_range(0..len);
                out[i] ^= 1 << rng.random_range(0..8);
            }
            1 if len > 0 => {
                let i = rng.random_range(0..len);
                out[i] = [0, 0xFF, 0x7F, 0x80, b'"', b'{', b'9', b'-'][rng.random_range(0..8)];
            }
            2 => {
                let i = rng.random_range(0..=len);
                let n = rng.random_range(1..16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.random()).collect();
                out.splice(i..i, bytes);
            }
            3 if len > 1 => {
                let i = rng.random_range(0..len);
                let j = (i + rng.random_range(1..64)).min(len);
                out.drain(i..j);
            }
            4 if len > 0 => out.truncate(rng.random_range(0..len)),
            5 if len >= 8 => {
                // Little-endian u64 fields (safetensors' header length) set to edge values.
                let i = rng.random_range(0..len - 7);
                let v: u64 = [0, 1, u64::MAX, 1 << 62, 1 << 32, 64 << 20, (len as u64).wrapping_sub(8)][rng.random_range(0..7)];
                out[i..i + 8].copy_from_slice(&v.to_le_bytes());
            }
            6 if len > 2 => {
                // Duplicate a run (repeated JSON keys, repeated chunks).
                let i = rng.random_range(0..len);
                let j = (i + rng.random_range(1..32)).min(len);
                let run = out[i..j].to_vec();
                let at = rng.random_range(0..=out.len());
                out.splice(at..at, run);
            }
            _ => {
                // Replace a decimal number with an extreme one.
                if let Some(i) = (0..len).find(|&k| out[k].is_ascii_digit() && rng.random_range(0..8) == 0) {
                    let end = (i..len).find(|&k| !out[k].is_ascii_digit()).unwrap_or(len);
                    let v = ["18446744073709551615", "99999999999999999999999", "-1", "0", "4294967296", "1e308", "9007199254740993"]
                        [rng.random_range(0..7)];
                    out.splice(i..end, v.bytes());
                }
            }
        }
    }
    out
}

fn run(target: Target, budget: Duration, seed: u64) -> (usize, usize, Vec<String>) {
    let mut failures = Vec::new();
    let mut biggest = 0usize;
    let dir = corpus_dir(target.name);
    let mut test = |input: &[u8], failures: &mut Vec<String>| {
        let (panicked, peak) = measured(|| (target.check)(input));
        biggest = biggest.max(peak);
        let limit = (target.limit)(input.len());
        if panicked || peak > limit {
            let hash: u64 = input.iter().fold(0xcbf29ce484222325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x100000001b3));
            std::fs::create_dir_all(&dir).unwrap();
            let file = dir.join(format!("crash-{hash:016x}"));
            std::fs::write(&file, input).unwrap();
            let what = if panicked { "panicked".to_string() } else { format!("allocated {peak} bytes (limit {limit})") };
            failures.push(format!("{}: {what}: {}", target.name, file.display()));
        }
    };
    // The regression corpus first.
    let mut corpus = 0;
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for e in entries.flatten() {
            test(&std::fs::read(e.path()).unwrap(), &mut failures);
            corpus += 1;
        }
    }
    for s in &target.seeds {
        test(s, &mut failures);
    }
    let mut rng = Rng64::seed_from_u64(seed ^ target.name.len() as u64);
    let start = Instant::now();
    let mut tried = corpus + target.seeds.len();
    while start.elapsed() < budget && failures.len() < 5 {
        let seed_input = &target.seeds[rng.random_range(0..target.seeds.len())];
        let input = (target.mutate)(&mut rng, seed_input);
        test(&input, &mut failures);
        tried += 1;
    }
    println!(
        "fuzz {:<12} {tried:>8} inputs in {:>5.1} s (corpus {corpus}); largest allocation {:.1} MiB; limit: {}",
        target.name,
        start.elapsed().as_secs_f64(),
        biggest as f64 / (1 << 20) as f64,
        target.limit_text
    );
    (tried, biggest, failures)
}

// ---- seeds ----

fn safetensors_file(tensors: &[(&str, &str, Vec<usize>, usize)], metadata: bool) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, dtype, shape, elem) in tensors {
        let n: usize = shape.iter().product::<usize>() * elem;
        let start = data.len();
        data.extend((0..n).map(|i| (i * 31 + 7) as u8));
        header.insert(name.to_string(), serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [start, data.len()]}));
    }
    if metadata {
        header.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
    }
    let json = serde_json::to_vec(&header).unwrap();
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend(json);
    out.extend(data);
    out
}

/// The whole-file parse and a streamed parse with random chunks (and piece size) agree.
/// A compact tensor as a shard holds it: `[bits − 2, k low, k high]` then stored rows of `k`
/// values (`zepo::weights::quant`).
fn compact_seeds() -> Vec<Vec<u8>> {
    [(8u32, 64usize), (4, 37), (5, 96), (2, 1)]
        .iter()
        .map(|&(bits, k)| {
            let q = Quant { bits, block: 32 };
            let mut out = vec![(bits - 2) as u8, k as u8, (k >> 8) as u8];
            for r in 0..3 {
                let row: Vec<f32> = (0..k).map(|i| ((i * 7 + r) % 13) as f32 - 6.0).collect();
                q.quantize_row(&row, &mut out);
            }
            out
        })
        .collect()
}

/// Decoding stored rows never panics: a short or long row, any codes and any scales (a scale
/// that is not finite is an error, a finite one gives finite values), and the shard entry's
/// check of a header against its scheme.
fn check_compact(input: &[u8]) {
    if input.len() < 3 {
        return;
    }
    let bits = 2 + input[0] as u32 % 7;
    let k = 1 + (u16::from_le_bytes([input[1], input[2]]) as usize % 2048);
    let q = Quant { bits, block: 32 };
    let body = &input[3..];
    let whole = body.len() / q.row_bytes(k) * q.row_bytes(k);
    if let Ok(values) = zepo::weights::quant::dequantize(q, &body[..whole], k, "w", "fuzz") {
        assert!(values.iter().all(|v| v.is_finite()), "finite scales give finite values");
        assert_eq!(values.len(), whole / q.row_bytes(k) * k);
    }
    let mut out = vec![0f32; k];
    let _ = q.dequantize_row(body, &mut out);
    let entry = QuantTensor { scheme: format!("q{bits}"), block: 32, shape: vec![2, k] };
    let shard = Shard {
        file: FileRef { url: "unet/q8-00001-of-00001.safetensors".into(), size: 0, sha256: "0".repeat(64) },
        dtype: "F16".into(),
        tensors: vec!["w".into()],
        quantized: [("w".to_string(), entry)].into(),
    };
    if let Ok(Some(header)) = zepo::weights::parse_header(body, "fuzz") {
        let _ = shard.check_header(&header, "fuzz");
    }
}

/// A version-2 manifest with a compact variant (what `convert --variants` writes).
fn compact_manifest() -> Vec<u8> {
    br#"{"format":"zepo-fp16-bundle","format_version":2,"model":"m","parts":{"unet":{"config":{"url":"unet/config.json","size":3,"sha256":"0000000000000000000000000000000000000000000000000000000000000000"},"shards":[{"url":"unet/fp16-00001-of-00001.safetensors","size":10,"sha256":"0000000000000000000000000000000000000000000000000000000000000000","dtype":"F16","tensors":["a","b"]}],"total_bytes":10}},"scheduler":null,"prompt_embeddings":null,"variants":{"q8":{"parts":{"unet":{"shards":[{"url":"unet/q8-00001-of-00001.safetensors","size":8,"sha256":"0000000000000000000000000000000000000000000000000000000000000000","dtype":"F16","tensors":["a","b"],"quantized":{"a":{"scheme":"q8","block":32,"shape":[4,64]}}}],"total_bytes":8}},"measured":{"target_psnr":70.0,"psnr":{"unet":71.5}}}}}"#.to_vec()
}

fn check_safetensors(input: &[u8]) {
    // The chunking comes from the input itself, so that a saved crash replays exactly.
    let mut rng = Rng64::seed_from_u64(input.iter().fold(7u64, |h, &b| h.wrapping_mul(31).wrapping_add(b as u64)));
    let whole = SafetensorsBytes::new(input, "fuzz");
    let mut parser = StreamParser::with_max_piece("fuzz", [1, 3, 64, usize::MAX][rng.random_range(0..4)]);
    let mut streamed: Vec<(String, Vec<u8>)> = Vec::new();
    let mut rest = input;
    let mut result = Ok(());
    while !rest.is_empty() {
        let n = rng.random_range(1..=rest.len().min(97));
        match parser.push(&rest[..n]) {
            Ok(tensors) => {
                for t in tensors {
                    match streamed.last_mut() {
                        Some((name, bytes)) if *name == t.entry.name && t.first_row > 0 => bytes.extend(t.bytes),
                        _ => streamed.push((t.entry.name.clone(), t.bytes)),
                    }
                }
            }
            Err(e) => {
                result = Err(e);
                break;
            }
        }
        rest = &rest[n..];
    }
    let result = result.and_then(|_| parser.finish().map(|_| ()));
    match (&whole, &result) {
        (Ok(st), Ok(())) => {
            let expected: Vec<(String, Vec<u8>)> = st.tensors().map(|(e, b)| (e.name.clone(), b.to_vec())).collect();
            assert!(expected == streamed, "the streamed tensors differ from the whole file's");
        }
        (Err(_), Err(_)) => {}
        (Ok(_), Err(e)) => panic!("the whole file parses, the stream fails: {e}"),
        (Err(e), Ok(())) => panic!("the stream parses, the whole file fails: {e}"),
    }
}

fn json_value(rng: &mut Rng64, depth: usize) -> serde_json::Value {
    use serde_json::Value;
    match rng.random_range(0..if depth > 3 { 6 } else { 8 }) {
        0 => Value::Null,
        1 => Value::Bool(rng.random()),
        2 => serde_json::json!(rng.random_range(-5i64..2000)),
        3 => serde_json::json!([0.0, -1.5, 0.5, 1e300, 9.007e15, 1.0e-9, 77.0, 8.0][rng.random_range(0..8)]),
        4 => serde_json::json!(["", "face", "contain", "cover", "stretch", "\u{0}", "🙂"][rng.random_range(0..7)]),
        5 => serde_json::json!(u64::MAX),
        6 => Value::Array((0..rng.random_range(0..3)).map(|_| json_value(rng, depth + 1)).collect()),
        _ => {
            let keys = ["ratio", "sx", "sy", "deterministic", "steps", "x"];
            Value::Object(
                (0..rng.random_range(0..4))
                    .map(|_| (keys[rng.random_range(0..keys.len())].to_string(), json_value(rng, depth + 1)))
                    .collect(),
            )
        }
    }
}

fn mutate_options(rng: &mut Rng64, seed: &[u8]) -> Vec<u8> {
    let mut obj = serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(seed).unwrap_or_default();
    for _ in 0..rng.random_range(1..6) {
        let key = match rng.random_range(0..10) {
            0 => "unknownKey".to_string(),
            _ => zepo::zepo::options::OPTION_NAMES[rng.random_range(0..zepo::zepo::options::OPTION_NAMES.len())].to_string(),
        };
        obj.insert(key, json_value(rng, 0));
    }
    let text = serde_json::to_vec(&obj).unwrap();
    if rng.random_range(0..4) == 0 {
        mutate_bytes(rng, &text)
    } else {
        text
    }
}

fn check_options(input: &[u8]) {
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(input) {
        if let Ok(o) = ZepoOptions::from_json(&value) {
            // Validation against a model's sizes, and the working size of any content.
            if o.validate(16, 1000).is_ok() {
                let size = o.size_for(1 + input.len() % 5000, 1 + input.len() % 3000);
                assert!(size.width % 8 == 0 && size.height % 8 == 0 && size.width <= 1024 && size.height <= 1024, "{size:?}");
                assert!(o.effective_steps() <= 1000 && o.run_steps() >= 1);
            }
        }
    }
}

fn random_text(rng: &mut Rng64, _seed: &[u8]) -> Vec<u8> {
    let ranges: [(u32, u32); 9] = [
        (0x20, 0x7E),
        (0x00, 0x1F),
        (0xA0, 0x24F),
        (0x300, 0x36F), // combining marks
        (0x4E00, 0x9FFF),
        (0x1F300, 0x1FAFF),
        (0xFE00, 0xFE0F),
        (0x200B, 0x200F),
        (0x10000, 0x10FFFF),
    ];
    let len = match rng.random_range(0..10) {
        0 => rng.random_range(1000..20_000),
        1 => 0,
        _ => rng.random_range(1..80),
    };
    let mut s = String::new();
    let (mut lo, mut hi) = ranges[0];
    for _ in 0..len {
        if rng.random_range(0..8) == 0 {
            (lo, hi) = ranges[rng.random_range(0..ranges.len())];
        }
        if let Some(c) = char::from_u32(rng.random_range(lo..=hi)) {
            s.push(c);
        }
        if rng.random_range(0..6) == 0 {
            s.push(' ');
        }
    }
    s.into_bytes()
}

fn encoded_images() -> Vec<Vec<u8>> {
    let img = image::RgbImage::from_fn(40, 24, |x, y| image::Rgb([(x * 6) as u8, (y * 10) as u8, ((x * y) % 251) as u8]));
    [image::ImageFormat::Png, image::ImageFormat::Jpeg, image::ImageFormat::WebP, image::ImageFormat::Gif, image::ImageFormat::Bmp]
        .into_iter()
        .map(|f| {
            let mut out = std::io::Cursor::new(Vec::new());
            image::DynamicImage::ImageRgb8(img.clone()).write_to(&mut out, f).unwrap();
            out.into_inner()
        })
        .collect()
}

/// The colour fixtures (tests/fixtures/color): ICC profiles, or images with a profile or alpha.
fn color_fixtures(ext: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/color");
    let mut names: Vec<PathBuf> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    names.sort();
    let of = |p: &PathBuf| p.extension().is_some_and(|e| e == ext) && !p.to_string_lossy().contains(".srgb.");
    names.iter().filter(|p| of(p)).map(|p| std::fs::read(p).unwrap()).collect()
}

/// Images with an embedded profile (Display P3, Adobe RGB: JPEGs as Pillow writes them) and
/// with alpha (a PNG with garbage under its transparent pixels; a P3-tagged PNG with alpha).
fn tagged_images() -> Vec<Vec<u8>> {
    let mut seeds = color_fixtures("jpg");
    let transparent = color_fixtures("png").into_iter().find(|b| image::load_from_memory(b).unwrap().color().has_alpha()).unwrap();
    let icc = std::fs::read(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/color/display-p3.icc")).unwrap();
    let rgba = image::load_from_memory(&transparent).unwrap().into_rgba8();
    let mut tagged = Vec::new();
    let mut e = image::codecs::png::PngEncoder::new(&mut tagged);
    image::ImageEncoder::set_icc_profile(&mut e, icc).unwrap();
    image::ImageEncoder::write_image(e, rgba.as_raw(), rgba.width(), rgba.height(), image::ExtendedColorType::Rgba8).unwrap();
    seeds.push(transparent);
    seeds.push(tagged);
    seeds
}

#[test]
fn fuzz_every_parser() {
    let budget = Duration::from_secs_f64(std::env::var("ZEPO_FUZZ_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(2.0));
    let seed = std::env::var("ZEPO_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64);
    println!("fuzz: {budget:?} per target, seed {seed} (ZEPO_FUZZ_SEED={seed} repeats it)");
    // Panics are expected to be caught and reported, not printed for every input.
    std::panic::set_hook(Box::new(|_| {}));

    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let tokenizer = ClipTokenizer::from_dir(&root.join("weights/tiny-lcm/tokenizer")).unwrap();
    let max_length = tokenizer.max_length();
    let vocab = 49408;
    let manifest = std::fs::read(root.join("weights/tiny-lcm-bundle/manifest.json")).unwrap();

    let targets = vec![
        Target {
            name: "safetensors",
            seeds: vec![
                safetensors_file(&[("a", "F32", vec![2, 3], 4), ("b.weight", "F16", vec![4], 2)], true),
                safetensors_file(&[("w", "BF16", vec![3, 1, 2], 2), ("s", "F32", vec![], 4), ("z", "F32", vec![0, 5], 4)], false),
                safetensors_file(&[("ids", "I64", vec![5], 8)], true),
            ],
            mutate: mutate_bytes,
            check: Box::new(check_safetensors),
            // The header is held once (and parsed once into entries); tensor bytes are copied
            // once by the streaming side.
            limit: |n| 64 * n + (1 << 20),
            limit_text: "64 × input + 1 MiB (never the sizes a header claims)",
        },
        Target {
            name: "manifest",
            seeds: vec![manifest, compact_manifest()],
            mutate: mutate_bytes,
            check: Box::new(|input| {
                let _ = Manifest::parse(&String::from_utf8_lossy(input), "manifest.json");
            }),
            limit: |n| 64 * n + (1 << 20),
            limit_text: "64 × input + 1 MiB",
        },
        Target {
            name: "tokenizer",
            seeds: vec![b"face".to_vec(), "a portrait, oil on canvas 🎨 — Ünïcödé".as_bytes().to_vec()],
            mutate: random_text,
            check: Box::new(move |input| {
                let ids = tokenizer.encode(&String::from_utf8_lossy(input));
                assert_eq!(ids.len(), max_length, "every encoding is max_length ids");
                assert!(ids.iter().all(|&i| (0..vocab).contains(&i)), "ids within the vocabulary");
            }),
            limit: |n| 256 * n + (4 << 20),
            limit_text: "256 × prompt bytes + 4 MiB (its BPE cache grows with new words)",
        },
        Target {
            name: "options",
            seeds: vec![b"{}".to_vec(), br#"{"resolution":64,"steps":2,"tome":{"ratio":0.5},"fit":"contain"}"#.to_vec()],
            mutate: mutate_options,
            check: Box::new(check_options),
            limit: |n| 64 * n + (1 << 20),
            limit_text: "64 × input + 1 MiB",
        },
        Target {
            name: "compact",
            seeds: compact_seeds(),
            mutate: mutate_bytes,
            check: Box::new(check_compact),
            // One row's values (f32) and the stored row's copy.
            limit: |n| 64 * n + (1 << 20),
            limit_text: "64 × input + 1 MiB",
        },
        Target {
            name: "image",
            seeds: [encoded_images(), tagged_images()].concat(),
            mutate: mutate_bytes,
            check: Box::new(|input| {
                if let Ok(img) = RgbImage::decode(input, "fuzz") {
                    assert_eq!(img.pixels.len(), img.width * img.height * 3);
                }
            }),
            // The decoder's frame (at most RGBA8 of MAX_PIXELS: image::Limits) and its RGB8 copy.
            limit: |n| 7 * MAX_PIXELS as usize + 64 * n + (32 << 20),
            limit_text: "7 B × 50 MP + 64 × input + 32 MiB (pixel limit checked before decoding; decoder capped at 4 B × 50 MP)",
        },
        Target {
            // An embedded profile's parser and transform (qcms) on its own: mutations of the
            // profile itself, which reach far more of it than mutations of an image holding one.
            name: "icc",
            seeds: color_fixtures("icc"),
            mutate: mutate_bytes,
            check: Box::new(|input| {
                let mut px: Vec<u8> = (0..=255u8).flat_map(|v| [v, 255 - v, v / 3]).collect();
                profile_to_srgb(input, &mut px);
            }),
            // The profile's curves (at most 40000 entries each) and qcms's tables.
            limit: |n| 64 * n + (1 << 20),
            limit_text: "64 × profile + 1 MiB",
        },
    ];
    let mut failures = Vec::new();
    let mut total = 0;
    let only = std::env::var("ZEPO_FUZZ_ONLY").ok();
    for t in targets.into_iter().filter(|t| only.as_deref().is_none_or(|o| o == t.name)) {
        let (tried, _, f) = run(t, budget, seed);
        total += tried;
        failures.extend(f);
    }
    let _ = std::panic::take_hook();
    println!("fuzz: {total} inputs in all");
    assert!(failures.is_empty(), "failing inputs (saved; commit them to the corpus once fixed):\n{}", failures.join("\n"));
}
