//! The prompt pair's text embeddings in the browser: cached per pair, taken from a bundle's
//! precomputed ones or from those a diffusers-layout model stored on an earlier visit, else
//! computed by the text encoder, loaded on first use.

use std::rc::Rc;

use burn::tensor::{Int, Tensor, TensorData};
use wasm_bindgen::prelude::*;

use super::engine::{settle, Model};
use super::files::ModelFiles;
use super::gpu::Gpu;
use super::{crate_err, err, js_error, named_err};
use crate::weights::bundle::Manifest;
use crate::weights::{Dtype, SafetensorsBytes};
use crate::zepo::pipeline::PromptEmbeddings;
use crate::zepo::ZepoOptions;

/// The prompt pair's embeddings: cached, else each from the bundle's precomputed ones or
/// encoded (loading the text stack on first use).
pub(super) async fn prompt_embeddings(
    model: &Model,
    gpu: &Gpu,
    o: &ZepoOptions,
    report: &impl Fn(&str, usize, usize, f32),
) -> Result<PromptEmbeddings, JsValue> {
    let key = (o.prompt.clone(), o.negative_prompt.clone());
    if let Some(p) = model.prompts.borrow().get(&key) {
        return Ok(p.clone());
    }
    let mut pair = Vec::with_capacity(2);
    for prompt in [&o.prompt, &o.negative_prompt] {
        if let Some(t) = model.precomputed.get(prompt.as_str()) {
            pair.push(t.clone());
            continue;
        }
        // A diffusers layout keeps the embeddings it computed with the model: the next visit
        // needs no text encoder for them.
        let files = &model.loader.source;
        let bundle = model.loader.layout.manifest();
        let stored = bundle.is_none().then(|| stored_prompt_path(prompt, gpu.dtype));
        if let Some(path) = &stored {
            if let Some(t) = stored_prompt(files, path, model.unet_config.cross_attention_dim, gpu).await? {
                pair.push(t);
                continue;
            }
        }
        report("text", 0, 1, 0.0);
        let loaded = model.text.borrow().clone();
        let text = match loaded {
            Some(t) => t,
            None => {
                let t = model.loader.text_stack().await.map_err(|e| match bundle {
                    // A bundle may have been made without the text encoder, for its prompts only.
                    Some(m) => not_precomputed(m, prompt, e),
                    None => crate_err(e),
                })?;
                let t = Rc::new(t);
                *model.text.borrow_mut() = Some(t.clone());
                t
            }
        };
        let ids = text.tokenizer.encode(prompt);
        let n = ids.len();
        let embedding = text.encoder.forward(Tensor::<2, Int>::from_data(TensorData::new(ids, [1, n]), &gpu.device));
        if let Some(path) = &stored {
            store_prompt(files, path, &embedding, gpu).await?;
        }
        pair.push(embedding);
    }
    let uncond = pair.pop().expect("two prompts");
    let p = PromptEmbeddings { cond: pair.pop().expect("two prompts"), uncond };
    settle(gpu).await?;
    model.prompts.borrow_mut().insert(key, p.clone());
    Ok(p)
}

/// Where a prompt's embedding is stored with a diffusers-layout model: by the prompt's sha256
/// and the precision it was computed in (an f16 embedding is not an f32 one).
fn stored_prompt_path(prompt: &str, dtype: burn::tensor::DType) -> String {
    use sha2::Digest;
    let hash: String = sha2::Sha256::digest(prompt.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
    format!(".zepo-derived/prompt-{}-{hash}.safetensors", if dtype == burn::tensor::DType::F16 { "f16" } else { "f32" })
}

const EMBEDDING: &str = "embedding";

/// A stored prompt embedding `[1, L, width]`; `None` if absent, or unusable (then it is
/// computed again and replaced).
async fn stored_prompt(files: &ModelFiles, path: &str, width: usize, gpu: &Gpu) -> Result<Option<Tensor<3>>, JsValue> {
    let Some(bytes) = files.get_derived(path).await? else { return Ok(None) };
    let parsed = SafetensorsBytes::new(bytes, path.to_string()).ok().and_then(|st| {
        let (entry, data) = st.tensors().find(|(e, _)| e.name == EMBEDDING)?;
        let [1, l, d] = entry.shape[..] else { return None };
        (d == width && entry.dtype == Dtype::F32 && data.len() == l * d * 4).then(|| {
            let values: Vec<f32> = data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
            Tensor::<3>::from_data(TensorData::new(values, [1, l, d]), (&gpu.device, gpu.dtype))
        })
    });
    Ok(parsed)
}

/// Stores a computed prompt embedding with the model (f32 values: the exact ones, whatever the
/// precision, which is part of the path).
async fn store_prompt(files: &ModelFiles, path: &str, embedding: &Tensor<3>, gpu: &Gpu) -> Result<(), JsValue> {
    let shape = embedding.dims().to_vec();
    let data = match embedding.clone().into_data_async().await {
        Ok(d) => d,
        Err(e) => return Err(gpu.failure("reading the prompt embedding back", e).await),
    };
    let values = data.convert::<f32>().try_to_vec::<f32>().map_err(|e| named_err("DeviceError", format!("prompt embedding: {e:?}")))?;
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape, &bytes).map_err(|e| err(format!("{e:?}")))?;
    let file = safetensors::serialize([(EMBEDDING, view)], &None).map_err(|e| err(format!("{e:?}")))?;
    files.put_derived(path, &file).await;
    Ok(())
}

/// A bundle could not give its text encoder for `prompt`: the error says which prompts it has.
fn not_precomputed(manifest: &Manifest, prompt: &str, e: crate::Error) -> JsValue {
    let listed: Vec<String> = manifest.prompt_embeddings.iter().flat_map(|p| &p.prompts).map(|p| format!("{:?}", p.text)).collect();
    let message = format!(
        "the prompt {prompt:?} is not precomputed in this bundle (it has {}), so it needs the text encoder: {e}",
        listed.join(", ")
    );
    js_error("WeightsError", message)
}
