//! transformers' `CLIPTextModel` (the text encoder of Stable Diffusion), with its key names:
//! token + position embeddings, pre-norm transformer layers with causal self-attention, final
//! layer norm. Called as diffusers and ZePo call it: ids only, no padding mask; the output is
//! `last_hidden_state`.

use burn::nn::Embedding;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{activation, Int, Tensor};
use serde::Deserialize;

use crate::nn::{embedding, linear, BlockedEmbedding, LayerNorm, Linear};
use crate::weights::{VarBuilder, VarStore};
use crate::{Error, Result};

/// Checkpoint keys no module uses: transformers' saved `position_ids` buffer (0..77).
pub const IGNORED_KEYS: &[&str] = &["text_model.embeddings.position_ids"];

/// `text_encoder/config.json`; missing fields take transformers' `CLIPTextConfig` defaults.
#[derive(Debug, Clone, Deserialize)]
pub struct ClipTextConfig {
    #[serde(default = "d_hidden_size")]
    pub hidden_size: usize,
    #[serde(default = "d_intermediate_size")]
    pub intermediate_size: usize,
    #[serde(default = "d_num_attention_heads")]
    pub num_attention_heads: usize,
    #[serde(default = "d_num_hidden_layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "d_max_position_embeddings")]
    pub max_position_embeddings: usize,
    #[serde(default = "d_vocab_size")]
    pub vocab_size: usize,
    #[serde(default = "d_layer_norm_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub hidden_act: HiddenAct,
}

fn d_hidden_size() -> usize {
    512
}
fn d_intermediate_size() -> usize {
    2048
}
fn d_num_attention_heads() -> usize {
    8
}
fn d_num_hidden_layers() -> usize {
    12
}
fn d_max_position_embeddings() -> usize {
    77
}
fn d_vocab_size() -> usize {
    49408
}
fn d_layer_norm_eps() -> f64 {
    1e-5
}

/// The MLP activation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum HiddenAct {
    /// `x · sigmoid(1.702 x)` (CLIP ViT-L/14, SD 1.5).
    #[default]
    #[serde(rename = "quick_gelu")]
    QuickGelu,
    /// Exact erf GELU.
    #[serde(rename = "gelu")]
    Gelu,
}

impl HiddenAct {
    fn forward<const D: usize>(self, x: Tensor<D>) -> Tensor<D> {
        match self {
            HiddenAct::QuickGelu => x.clone() * activation::sigmoid(x * 1.702),
            HiddenAct::Gelu => activation::gelu(x),
        }
    }
}

impl ClipTextConfig {
    /// Checks what the shapes alone cannot.
    pub fn validate(&self) -> Result<()> {
        let bad = |reason: String| Err(Error::config("text_encoder/config.json", reason));
        if self.num_attention_heads == 0 || !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return bad(format!("hidden_size {} is not divisible by num_attention_heads {}", self.hidden_size, self.num_attention_heads));
        }
        if self.max_position_embeddings == 0 || self.vocab_size == 0 {
            return bad("max_position_embeddings and vocab_size must be positive".into());
        }
        Ok(())
    }
}

/// `CLIPAttention`: multi-head self-attention with biased q/k/v/out projections.
#[derive(burn::module::Module, Debug)]
pub struct ClipAttention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub out_proj: Linear,
    pub heads: usize,
}

impl ClipAttention {
    fn load(vb: &VarBuilder, cfg: &ClipTextConfig) -> Result<Self> {
        let d = cfg.hidden_size;
        Ok(Self {
            q_proj: linear(&vb.pp("q_proj"), d, d, true)?,
            k_proj: linear(&vb.pp("k_proj"), d, d, true)?,
            v_proj: linear(&vb.pp("v_proj"), d, d, true)?,
            out_proj: linear(&vb.pp("out_proj"), d, d, true)?,
            heads: cfg.num_attention_heads,
        })
    }

    /// Causal self-attention of `x` `[B, N, C]`.
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let [b, n, c] = x.dims();
        let split = |t: Tensor<3>| t.reshape([b, n, self.heads, c / self.heads]).swap_dims(1, 2);
        let q = split(self.q_proj.forward(x.clone()));
        let k = split(self.k_proj.forward(x.clone()));
        let v = split(self.v_proj.forward(x));
        let options = AttentionModuleOptions { is_causal: true, ..Default::default() };
        let out = attention(q, k, v, None, None, options);
        self.out_proj.forward(out.swap_dims(1, 2).reshape([b, n, c]))
    }
}

/// `CLIPEncoderLayer`: pre-norm attention and MLP, each with a residual.
#[derive(burn::module::Module, Debug)]
pub struct ClipEncoderLayer {
    pub self_attn: ClipAttention,
    pub layer_norm1: LayerNorm,
    pub fc1: Linear,
    pub fc2: Linear,
    pub layer_norm2: LayerNorm,
    #[module(skip)]
    pub act: HiddenAct,
}

impl ClipEncoderLayer {
    fn load(vb: &VarBuilder, cfg: &ClipTextConfig) -> Result<Self> {
        let (d, eps) = (cfg.hidden_size, cfg.layer_norm_eps);
        Ok(Self {
            self_attn: ClipAttention::load(&vb.pp("self_attn"), cfg)?,
            layer_norm1: LayerNorm::load(&vb.pp("layer_norm1"), d, eps)?,
            fc1: linear(&vb.pp("mlp").pp("fc1"), d, cfg.intermediate_size, true)?,
            fc2: linear(&vb.pp("mlp").pp("fc2"), cfg.intermediate_size, d, true)?,
            layer_norm2: LayerNorm::load(&vb.pp("layer_norm2"), d, eps)?,
            act: cfg.hidden_act,
        })
    }

    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let x = x.clone() + self.self_attn.forward(self.layer_norm1.forward(x));
        let h = self.fc1.forward(self.layer_norm2.forward(x.clone()));
        x + self.fc2.forward(self.act.forward(h))
    }
}

/// `CLIPTextModel`; `forward` returns `last_hidden_state`.
#[derive(burn::module::Module, Debug)]
pub struct ClipTextModel {
    /// Blocked: the real model's f32 table exceeds one WebGPU buffer.
    pub token_embedding: BlockedEmbedding,
    pub position_embedding: Embedding,
    pub layers: Vec<ClipEncoderLayer>,
    pub final_layer_norm: LayerNorm,
}

impl ClipTextModel {
    /// Takes the weights under `text_model.*` from `vb` (the root of `text_encoder/`).
    /// Loading from a [`VarStore`] directly ([`Self::from_store`]) also tolerates the
    /// [`IGNORED_KEYS`] a checkpoint may carry.
    pub fn load(vb: &VarBuilder, cfg: &ClipTextConfig) -> Result<Self> {
        cfg.validate()?;
        let vb = vb.pp("text_model");
        let emb = vb.pp("embeddings");
        let d = cfg.hidden_size;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| ClipEncoderLayer::load(&vb.pp("encoder").pp("layers").pp(i), cfg))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            token_embedding: BlockedEmbedding::load(&emb.pp("token_embedding"), cfg.vocab_size, d)?,
            position_embedding: embedding(&emb.pp("position_embedding"), cfg.max_position_embeddings, d)?,
            layers,
            final_layer_norm: LayerNorm::load(&vb.pp("final_layer_norm"), d, cfg.layer_norm_eps)?,
        })
    }

    /// The whole text encoder from a store holding exactly its checkpoint: unused keys other
    /// than [`IGNORED_KEYS`] are an error.
    pub fn from_store(mut store: VarStore, cfg: &ClipTextConfig) -> Result<Self> {
        for key in IGNORED_KEYS {
            store.ignore(*key);
        }
        let vb = store.into_builder();
        let model = Self::load(&vb, cfg)?;
        vb.finish()?;
        Ok(model)
    }

    /// The number of positions: `forward` takes at most this many ids per prompt.
    pub fn max_positions(&self) -> usize {
        self.position_embedding.weight.dims()[0]
    }

    /// `last_hidden_state` `[B, N, hidden]` of ids `[B, N]`, N ≤ [`Self::max_positions`].
    pub fn forward(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        let [_, n] = ids.dims();
        let positions = self.position_embedding.weight.val().narrow(0, 0, n).unsqueeze::<3>();
        let mut x = self.token_embedding.forward(ids) + positions;
        for layer in &self.layers {
            x = layer.forward(x);
        }
        self.final_layer_norm.forward(x)
    }
}
