//! Layers built from checkpoint weights: burn's own `nn` modules, filled from a [`VarBuilder`]
//! with PyTorch's layouts, without a random initialisation first.

use burn::module::Param;
use burn::nn::conv::Conv2d;
use burn::nn::{Embedding, GroupNorm, Linear, PaddingConfig2d};
use burn::tensor::activation;
use burn::tensor::Tensor;

use crate::weights::{VarBuilder, WeightsError};

type R<T> = Result<T, WeightsError>;

/// `torch.nn.Linear(d_in, d_out, bias)`: weight `[d_out, d_in]`, kept transposed for burn
/// (on the CPU backend made contiguous, see [`crate::models::cpu_ops::contiguous`]).
pub fn linear(vb: &VarBuilder, d_in: usize, d_out: usize, bias: bool) -> R<Linear> {
    let weight = vb.get("weight", [d_out, d_in])?.transpose();
    #[cfg(all(feature = "cpu", not(target_arch = "wasm32")))]
    let weight = crate::models::cpu_ops::contiguous(weight);
    let bias = if bias { Some(Param::from_tensor(vb.get("bias", [d_out])?)) } else { None };
    Ok(Linear { weight: Param::from_tensor(weight), bias })
}

/// `torch.nn.Conv2d(c_in, c_out, k, stride, padding)` with a bias.
pub fn conv2d(vb: &VarBuilder, c_in: usize, c_out: usize, kernel: usize, stride: usize, padding: usize) -> R<Conv2d> {
    conv2d_padded(vb, c_in, c_out, kernel, stride, PaddingConfig2d::Explicit(padding, padding, padding, padding))
}

/// A convolution with explicit (possibly asymmetric) padding `(top, left, bottom, right)`.
pub fn conv2d_padded(vb: &VarBuilder, c_in: usize, c_out: usize, kernel: usize, stride: usize, padding: PaddingConfig2d) -> R<Conv2d> {
    let weight = vb.get("weight", [c_out, c_in, kernel, kernel])?;
    let bias = vb.get("bias", [c_out])?;
    Ok(Conv2d {
        weight: Param::from_tensor(weight),
        bias: Some(Param::from_tensor(bias)),
        stride: [stride, stride],
        kernel_size: [kernel, kernel],
        dilation: [1, 1],
        groups: 1,
        padding,
    })
}

/// `conv.forward(x)`: on the CPU backend through the convolution fast path
/// ([`crate::models::cpu_conv`]), elsewhere burn's own kernel.
pub fn conv_forward(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    #[cfg(all(feature = "cpu", not(target_arch = "wasm32")))]
    return crate::models::cpu_conv::conv2d(conv, x);
    #[cfg(not(all(feature = "cpu", not(target_arch = "wasm32"))))]
    conv.forward(x)
}

/// `torch.nn.GroupNorm(groups, channels, eps, affine=True)`.
pub fn group_norm(vb: &VarBuilder, groups: usize, channels: usize, eps: f64) -> R<GroupNorm> {
    Ok(GroupNorm {
        gamma: Some(Param::from_tensor(vb.get("weight", [channels])?)),
        beta: Some(Param::from_tensor(vb.get("bias", [channels])?)),
        num_groups: groups,
        num_channels: channels,
        epsilon: eps,
        affine: true,
    })
}

/// `gn.forward(x)`, fused on the CPU backend ([`crate::models::cpu_ops::group_norm`]).
pub fn group_norm_forward<const D: usize>(gn: &GroupNorm, x: Tensor<D>) -> Tensor<D> {
    #[cfg(all(feature = "cpu", not(target_arch = "wasm32")))]
    if let Some(out) = crate::models::cpu_ops::group_norm(gn, &x, false) {
        return out;
    }
    gn.forward(x)
}

/// `silu(gn.forward(x))`, fused on the CPU backend.
pub fn group_norm_silu<const D: usize>(gn: &GroupNorm, x: Tensor<D>) -> Tensor<D> {
    #[cfg(all(feature = "cpu", not(target_arch = "wasm32")))]
    if let Some(out) = crate::models::cpu_ops::group_norm(gn, &x, true) {
        return out;
    }
    silu(gn.forward(x))
}

/// `torch.nn.Embedding(n, d)`.
pub fn embedding(vb: &VarBuilder, n: usize, d: usize) -> R<Embedding> {
    Ok(Embedding { weight: Param::from_tensor(vb.get("weight", [n, d])?) })
}

/// `torch.nn.LayerNorm(d, eps)` over the last dimension.
#[derive(burn::module::Module, Debug)]
pub struct LayerNorm {
    pub gamma: Param<Tensor<1>>,
    pub beta: Param<Tensor<1>>,
    pub epsilon: f64,
}

impl LayerNorm {
    pub fn load(vb: &VarBuilder, d: usize, eps: f64) -> R<Self> {
        Ok(Self { gamma: Param::from_tensor(vb.get("weight", [d])?), beta: Param::from_tensor(vb.get("bias", [d])?), epsilon: eps })
    }

    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        burn::tensor::module::layer_norm(x, self.gamma.val(), Some(self.beta.val()), self.epsilon)
    }
}

/// SiLU, as diffusers' `act_fn = "silu"` (one fused pass on the CPU backend,
/// [`crate::models::cpu_ops::silu`]).
pub fn silu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    #[cfg(all(feature = "cpu", not(target_arch = "wasm32")))]
    if let Some(out) = crate::models::cpu_ops::silu(&x) {
        return out;
    }
    activation::silu(x)
}

/// GELU with the exact erf form (PyTorch's default `approximate="none"`).
pub fn gelu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    activation::gelu(x)
}

/// GEGLU's `hidden * gelu(gate)`, `hidden` and `gate` the two halves of `h`'s last dimension:
/// fused on the CPU backend ([`crate::models::cpu_ops::geglu`]).
pub fn geglu<const D: usize>(h: Tensor<D>) -> Tensor<D> {
    #[cfg(all(feature = "cpu", not(target_arch = "wasm32")))]
    if let Some(out) = crate::models::cpu_ops::geglu(&h) {
        return out;
    }
    let [hidden, gate] = h.chunk(2, D - 1).try_into().expect("two halves");
    hidden * gelu(gate)
}

/// `torch.nn.Embedding(n, d)` whose table may be split in row blocks (each one device buffer):
/// CLIP-L's 49408×768 f32 table is 152 MB, over WebGPU's 128 MiB binding limit.
#[derive(burn::module::Module, Debug)]
pub struct BlockedEmbedding {
    pub blocks: Vec<Param<Tensor<2>>>,
}

impl BlockedEmbedding {
    pub fn load(vb: &VarBuilder, n: usize, d: usize) -> R<Self> {
        Ok(Self { blocks: vb.get_row_blocks("weight", [n, d])?.into_iter().map(Param::from_tensor).collect() })
    }

    /// Rows `ids` `[B, N]` → `[B, N, d]`. With several blocks each looks up the ids in its
    /// range (others clamped, then zeroed) and the results add up: exact, and no buffer holds
    /// the whole table.
    pub fn forward(&self, ids: Tensor<2, burn::tensor::Int>) -> Tensor<3> {
        if self.blocks.len() == 1 {
            return burn::tensor::module::embedding(self.blocks[0].val(), ids);
        }
        let mut start = 0i64;
        let mut out: Option<Tensor<3>> = None;
        for block in &self.blocks {
            let rows = block.dims()[0] as i64;
            let local = ids.clone().sub_scalar(start);
            let inside = local.clone().greater_equal_elem(0).bool_and(local.clone().lower_elem(rows));
            let e = burn::tensor::module::embedding(block.val(), local.clamp(0, rows - 1));
            let e = e * inside.float().unsqueeze_dim::<3>(2);
            out = Some(match out {
                Some(o) => o + e,
                None => e,
            });
            start += rows;
        }
        out.expect("at least one block")
    }

    /// The whole table (small tables only; used for checks).
    pub fn rows(&self) -> usize {
        self.blocks.iter().map(|b| b.dims()[0]).sum()
    }
}
