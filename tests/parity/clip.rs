//! CLIP tokenizer and text encoder against transformers 4.44 (components, the whole-run cases,
//! and `tests/fixtures/clip_tokenizer.json` from `scripts/clip_tokenizer_fixture.py`).

use burn::tensor::Device;
use zepo::models::clip::{ClipTextConfig, ClipTextModel};
use zepo::models::read_config;
use zepo::models::tokenizer::ClipTokenizer;
use zepo::weights::{Dtype, LoadOptions, SafetensorsBytes, TensorEntry, VarStore};
use zepo::zepo::load::load_part;

use crate::common::{assert_close_rel, devices, fixture, tiny_model, values, Fixture};

fn tokenizer() -> ClipTokenizer {
    ClipTokenizer::from_dir(&tiny_model().join("tokenizer")).unwrap()
}

fn config() -> ClipTextConfig {
    read_config(&tiny_model().join("text_encoder/config.json")).unwrap()
}

fn text_encoder(device: &Device) -> ClipTextModel {
    let store = load_part(&tiny_model(), "text_encoder", device, &LoadOptions::default()).unwrap();
    ClipTextModel::from_store(store, &config()).unwrap()
}

#[test]
fn clip_tokenizer_matches_component_ids() {
    let fx = Fixture::load("components.safetensors");
    let tok = tokenizer();
    let ids: Vec<i64> = ["face", ""].iter().flat_map(|t| tok.encode(t)).collect();
    assert_eq!(ids, fx.i64("clip_input_ids"));
    assert_eq!(&ids[..3], &[49406, 1710, 49407]);
    assert_eq!(tok.encode("a portrait of a woman, oil painting"), fx.i64("clip_input_ids_long"));

    let batch = tok.encode_batch(&["face", ""], &Device::flex());
    assert_eq!(batch.dims(), [2, 77]);
    assert_eq!(batch.into_data().convert::<i64>().try_to_vec::<i64>().unwrap(), fx.i64("clip_input_ids"));
}

#[test]
fn clip_tokenizer_matches_case_ids() {
    let tok = tokenizer();
    let cases = std::fs::read_dir(fixture("cases")).unwrap();
    let mut checked = 0;
    for case in cases {
        let dir = case.unwrap().path();
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let meta: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("meta.json")).unwrap()).unwrap();
        let fx = Fixture::load(&format!("cases/{name}/reference.safetensors"));
        for (key, param) in [("text_input_ids_cond", "prompt"), ("text_input_ids_uncond", "neg_prompt")] {
            let prompt = meta["params"][param].as_str().unwrap();
            let rows = fx.shape(key)[0];
            let ids: Vec<i64> = (0..rows).flat_map(|_| tok.encode(prompt)).collect();
            assert_eq!(ids, fx.i64(key), "{name} {key} ({prompt:?})");
            checked += 1;
        }
    }
    assert!(checked >= 2, "no case checked");
}

#[test]
fn clip_tokenizer_matches_transformers_on_tricky_prompts() {
    let text = std::fs::read_to_string(fixture("clip_tokenizer.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let cases = json["cases"].as_array().unwrap();
    assert!(cases.len() >= 15);

    // The browser's path: the same files as strings.
    let dir = tiny_model().join("tokenizer");
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
    let from_strings = ClipTokenizer::from_strings(
        &read("vocab.json"),
        &read("merges.txt"),
        Some(&read("tokenizer_config.json")),
        Some(&read("special_tokens_map.json")),
    )
    .unwrap();
    let from_dir = tokenizer();

    let mut failures = Vec::new();
    for case in cases {
        let prompt = case["text"].as_str().unwrap();
        let expected: Vec<i64> = case["ids"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
        assert_eq!(expected.len(), 77);
        // Twice: the second encoding goes through the BPE cache.
        for tok in [&from_dir, &from_strings, &from_dir] {
            let ids = tok.encode(prompt);
            if ids != expected {
                failures.push(format!("{prompt:?}:\n  got      {ids:?}\n  expected {expected:?}"));
            }
        }
    }
    assert!(failures.is_empty(), "{} mismatches:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn clip_last_hidden_state_matches() {
    let fx = Fixture::load("components.safetensors");
    let case = Fixture::load("cases/tiny_s2_r64/reference.safetensors");
    for (dev_name, device) in devices() {
        let model = text_encoder(&device);
        for (ids, expected, fixture) in [
            ("clip_input_ids", "clip_last_hidden_state", &fx),
            ("clip_input_ids_long", "clip_last_hidden_state_long", &fx),
            ("text_input_ids_cond", "text_embeds_cond", &case),
            ("text_input_ids_uncond", "text_embeds_uncond", &case),
        ] {
            let ids = fixture.int_tensor::<2>(ids, &device);
            let out = model.forward(ids);
            assert_eq!(out.dims().to_vec(), fixture.shape(expected));
            let err = assert_close_rel(&format!("{dev_name} {expected}"), &values(out), &fixture.f32(expected), 1e-4);
            println!("{dev_name} {expected}: max error {err:.2e} of max |ref|");
        }
    }
}

#[test]
fn clip_tokenizer_then_encoder_matches() {
    let fx = Fixture::load("components.safetensors");
    let device = Device::flex();
    let ids = tokenizer().encode_batch(&["face", ""], &device);
    let out = text_encoder(&device).forward(ids);
    assert_close_rel("tokenize+encode", &values(out), &fx.f32("clip_last_hidden_state"), 1e-4);
}

/// The tiny checkpoint's tensors, each as (entry, bytes).
fn checkpoint() -> Vec<(TensorEntry, Vec<u8>)> {
    let path = tiny_model().join("text_encoder/model.safetensors");
    let st = SafetensorsBytes::new(std::fs::read(&path).unwrap(), path.display().to_string()).unwrap();
    st.tensors().map(|(e, b)| (e.clone(), b.to_vec())).collect()
}

fn store_of(tensors: &[(TensorEntry, Vec<u8>)], device: &Device) -> VarStore {
    let mut store = VarStore::new(device, &LoadOptions::default(), "test checkpoint");
    for (entry, bytes) in tensors {
        store.insert(entry, bytes, "test checkpoint").unwrap();
    }
    store
}

fn load_err(tensors: &[(TensorEntry, Vec<u8>)]) -> String {
    match ClipTextModel::from_store(store_of(tensors, &Device::flex()), &config()) {
        Ok(_) => panic!("a broken checkpoint loaded"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn clip_checkpoint_errors_name_the_key() {
    let full = checkpoint();
    let key = "text_model.encoder.layers.1.mlp.fc1.weight";
    assert!(full.iter().any(|(e, _)| e.name == key));

    let missing: Vec<_> = full.iter().filter(|(e, _)| e.name != key).cloned().collect();
    let err = load_err(&missing);
    assert!(err.contains(key) && err.contains("missing"), "{err}");

    // Same bytes, wrong shape: [64, 32] stored as [32, 64].
    let reshaped: Vec<_> = full
        .iter()
        .cloned()
        .map(|(mut e, b)| {
            if e.name == key {
                e.shape.reverse();
            }
            (e, b)
        })
        .collect();
    let err = load_err(&reshaped);
    assert!(err.contains(key) && err.contains("[32, 64]"), "{err}");

    // A key no module uses.
    let mut extra = full.clone();
    let (mut entry, bytes) = full[0].clone();
    entry.name = "text_model.unused.weight".into();
    extra.push((entry, bytes));
    let err = load_err(&extra);
    assert!(err.contains("text_model.unused.weight"), "{err}");
}

#[test]
fn clip_checkpoint_may_carry_position_ids() {
    let mut tensors = checkpoint();
    let bytes: Vec<u8> = (0..77i64).flat_map(|i| i.to_le_bytes()).collect();
    let entry = TensorEntry {
        name: "text_model.embeddings.position_ids".into(),
        dtype: Dtype::I64,
        shape: vec![1, 77],
        start: 0,
        end: bytes.len() as u64,
    };
    tensors.push((entry, bytes));
    let device = Device::flex();
    let model = ClipTextModel::from_store(store_of(&tensors, &device), &config()).unwrap();
    let fx = Fixture::load("components.safetensors");
    let out = model.forward(fx.int_tensor::<2>("clip_input_ids", &device));
    assert_close_rel("with position_ids", &values(out), &fx.f32("clip_last_hidden_state"), 1e-4);
}

#[test]
fn clip_config_reads_sizes_and_rejects_bad_ones() {
    let cfg = config();
    assert_eq!((cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads), (32, 2, 2));
    let gelu: ClipTextConfig = serde_json::from_str(r#"{"hidden_act": "gelu", "hidden_size": 64}"#).unwrap();
    assert_eq!(gelu.hidden_act, zepo::models::clip::HiddenAct::Gelu);
    assert!(serde_json::from_str::<ClipTextConfig>(r#"{"hidden_act": "relu"}"#).is_err());
    let odd: ClipTextConfig = serde_json::from_str(r#"{"hidden_size": 30, "num_attention_heads": 4}"#).unwrap();
    assert!(odd.validate().unwrap_err().to_string().contains("num_attention_heads"));
}

#[test]
fn clip_with_a_token_table_split_in_blocks_gives_the_same_output() {
    // The real model's f32 token table (152 MB) exceeds one WebGPU buffer: it is kept as row
    // blocks. Forcing tiny blocks here must change nothing.
    use zepo::zepo::load::{load_text, WeightSource};
    let device = burn::tensor::Device::flex();
    let whole = load_text(&tiny_model(), &device, &LoadOptions::default(), WeightSource::Checkpoint).unwrap();
    let opts = LoadOptions { max_buffer_bytes: 1 << 20, ..Default::default() };
    let blocked = load_text(&tiny_model(), &device, &opts, WeightSource::Checkpoint).unwrap();
    assert!(blocked.encoder.token_embedding.blocks.len() > 1, "the 6.3 MB table is split in 1 MiB blocks");
    let ids = whole.tokenizer.encode_batch(&["face", "a portrait of a woman, oil painting", ""], &device);
    let (a, b) = (values(whole.encoder.forward(ids.clone())), values(blocked.encoder.forward(ids)));
    assert!(a == b, "blocked lookup differs");
}
