//! Layers built from checkpoint weights: burn's own `nn` modules, filled from a [`VarBuilder`]
//! with PyTorch's layouts, without a random initialisation first.

use burn::module::Param;
use burn::nn::conv::Conv2d;
use burn::nn::{Embedding, GroupNorm, PaddingConfig2d};
use burn::tensor::activation;
use burn::tensor::Tensor;

use crate::weights::{VarBuilder, WeightsError};

#[cfg(all(feature = "cpu", not(target_arch = "wasm32")))]
pub mod cpu_conv;
#[cfg(all(feature = "cpu", not(target_arch = "wasm32")))]
pub mod cpu_ops;
#[cfg(any(feature = "gpu", target_arch = "wasm32"))]
pub mod gpu;

type R<T> = Result<T, WeightsError>;

/// `torch.nn.Linear`: `x · weight + bias`, `weight` `[d_in, d_out]` (burn's layout).
#[derive(burn::module::Module, Debug)]
pub struct Linear {
    pub weight: Param<Tensor<2>>,
    pub bias: Option<Param<Tensor<1>>>,
}

impl Linear {
    /// `x` `[.., d_in]` → `[.., d_out]`. On the GPU the matmul is kept out of fusion, so that
    /// the bias add fuses with what follows (a residual add, an activation).
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        #[cfg(any(feature = "gpu", target_arch = "wasm32"))]
        if gpu::on_gpu(&x) {
            let y = gpu::matmul(x, self.weight.val().unsqueeze());
            return match &self.bias {
                Some(b) => y + b.val().unsqueeze(),
                None => y,
            };
        }
        burn::tensor::module::linear(x, self.weight.val(), self.bias.as_ref().map(|b| b.val()))
    }
}

/// `torch.nn.Linear(d_in, d_out, bias)`: weight `[d_out, d_in]`, kept transposed for burn
/// (on the CPU backend made contiguous, see [`crate::nn::cpu_ops::contiguous`]).
pub fn linear(vb: &VarBuilder, d_in: usize, d_out: usize, bias: bool) -> R<Linear> {
    let weight = vb.get("weight", [d_out, d_in])?.transpose();
    #[cfg(all(feature = "cpu", not(target_arch = "wasm32")))]
    let weight = crate::nn::cpu_ops::contiguous(weight);
    let bias = if bias { Some(Param::from_tensor(vb.get("bias", [d_out])?)) } else { None };
    Ok(Linear { weight: Param::from_tensor(weight), bias })
}

/// `torch.nn.Conv2d(c_in, c_out, k, stride, padding)` with a bias.
pub fn conv2d(vb: &VarBuilder, c_in: usize, c_out: usize, kernel: usize, stride: usize, padding: usize) -> R<Conv2d> {
    conv2d_padded(vb, c_in, c_out, kernel, stride, PaddingConfig2d::Explicit(padding, padding, padding, padding))
}

/// A convolution with explicit (possibly asymmetric) padding `(top, left, bottom, right)`.
pub fn conv2d_padded(vb: &VarBuilder, c_in: usize, c_out: usize, kernel: usize, stride: usize, padding: PaddingConfig2d) -> R<Conv2d> {
    // On a GPU the store keeps it channels-last, as burn's convolution reads it.
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
/// ([`crate::nn::cpu_conv`]), elsewhere burn's own kernel.
pub fn conv_forward(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    #[cfg(all(feature = "cpu", not(target_arch = "wasm32")))]
    return crate::nn::cpu_conv::conv2d(conv, x);
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

/// `gn.forward(x)`, one fused pass on the CPU backend ([`cpu_ops::group_norm`]) and on the GPU
/// ([`gpu::group_norm`]).
pub fn group_norm_forward<const D: usize>(gn: &GroupNorm, x: Tensor<D>) -> Tensor<D> {
    fused_group_norm(gn, x, false).unwrap_or_else(|x| gn.forward(x))
}

/// `silu(gn.forward(x))`, fused like [`group_norm_forward`].
pub fn group_norm_silu<const D: usize>(gn: &GroupNorm, x: Tensor<D>) -> Tensor<D> {
    fused_group_norm(gn, x, true).unwrap_or_else(|x| silu(gn.forward(x)))
}

/// `silu(gn.forward(x + t))` with `t` columns `offset..offset + C` of `all` `[B, ≥ C]`, broadcast
/// over the map (a UNet resnet's time embedding, from the fused projection of all of them); on
/// the GPU the add is folded into the norm's kernel, which reads `all` in place.
pub fn group_norm_silu_add(gn: &GroupNorm, x: Tensor<4>, all: &Tensor<2>, offset: usize) -> Tensor<4> {
    #[cfg(any(feature = "gpu", target_arch = "wasm32"))]
    if let (Some(gamma), Some(beta)) = (&gn.gamma, &gn.beta) {
        if gpu::on_gpu(&x) && gn.affine && x.dims()[1] == gn.num_channels && gn.num_channels % gn.num_groups == 0 {
            return gpu::group_norm_add(x, all.clone(), offset, gamma.val(), beta.val(), gn.num_groups, gn.epsilon, true);
        }
    }
    let [b, c, _, _] = x.dims();
    let t = all.clone().narrow(1, offset, c);
    group_norm_silu(gn, x + t.reshape([b, c, 1, 1]))
}

/// The fused GroupNorm (+ SiLU) where a backend has one; `Err(x)` hands `x` back otherwise.
fn fused_group_norm<const D: usize>(gn: &GroupNorm, x: Tensor<D>, with_silu: bool) -> Result<Tensor<D>, Tensor<D>> {
    #[cfg(all(feature = "cpu", not(target_arch = "wasm32")))]
    if let Some(out) = cpu_ops::group_norm(gn, &x, with_silu) {
        return Ok(out);
    }
    #[cfg(any(feature = "gpu", target_arch = "wasm32"))]
    if let (4, Some(gamma), Some(beta)) = (D, &gn.gamma, &gn.beta) {
        if gpu::on_gpu(&x) && gn.affine && x.dims()[1] == gn.num_channels && gn.num_channels % gn.num_groups == 0 {
            // D is 4: the same tensor at its own rank.
            let x4 = Tensor::<4>::from_dispatch(x.into_dispatch());
            let out = gpu::group_norm(x4, gamma.val(), beta.val(), gn.num_groups, gn.epsilon, with_silu);
            return Ok(Tensor::from_dispatch(out.into_dispatch()));
        }
    }
    let _ = with_silu;
    Err(x)
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
        #[cfg(any(feature = "gpu", target_arch = "wasm32"))]
        if D == 3 && gpu::on_gpu(&x) {
            let x3 = Tensor::<3>::from_dispatch(x.into_dispatch());
            let out = gpu::layer_norm(x3, self.gamma.val(), self.beta.val(), self.epsilon);
            return Tensor::from_dispatch(out.into_dispatch());
        }
        burn::tensor::module::layer_norm(x, self.gamma.val(), Some(self.beta.val()), self.epsilon)
    }
}

/// SiLU, as diffusers' `act_fn = "silu"` (one fused pass on the CPU backend,
/// [`crate::nn::cpu_ops::silu`]).
pub fn silu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    #[cfg(all(feature = "cpu", not(target_arch = "wasm32")))]
    if let Some(out) = crate::nn::cpu_ops::silu(&x) {
        return out;
    }
    activation::silu(x)
}

/// GELU with the exact erf form (PyTorch's default `approximate="none"`).
pub fn gelu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    activation::gelu(x)
}

/// GEGLU after the projection `proj`: `hidden * gelu(gate)` of the two halves of `proj(x)`'s
/// last dimension. On the GPU the projection's bias goes into the one GEGLU kernel.
pub fn linear_geglu<const D: usize>(proj: &Linear, x: Tensor<D>) -> Tensor<D> {
    #[cfg(any(feature = "gpu", target_arch = "wasm32"))]
    if let (true, Some(bias)) = (gpu::on_gpu(&x), &proj.bias) {
        return gpu::geglu(gpu::matmul(x, proj.weight.val().unsqueeze()), bias.val());
    }
    geglu(proj.forward(x))
}

/// Linears of the same input fused into one (their outputs side by side): one matmul instead of
/// several. Returns it with each part's `(offset, width)` in its output.
pub fn fuse_linears(parts: Vec<Linear>) -> (Linear, Vec<(usize, usize)>) {
    let mut ranges = Vec::with_capacity(parts.len());
    let mut offset = 0;
    for p in &parts {
        let width = p.weight.dims()[1];
        ranges.push((offset, width));
        offset += width;
    }
    let with_bias = parts.iter().all(|p| p.bias.is_some());
    let bias =
        with_bias.then(|| Param::from_tensor(Tensor::cat(parts.iter().map(|p| p.bias.as_ref().expect("all have one").val()).collect(), 0)));
    let weight = Tensor::cat(parts.into_iter().map(|p| p.weight.val()).collect(), 1);
    #[cfg(all(feature = "cpu", not(target_arch = "wasm32")))]
    let weight = crate::nn::cpu_ops::contiguous(weight);
    (Linear { weight: Param::from_tensor(weight), bias }, ranges)
}

/// GEGLU's `hidden * gelu(gate)`, `hidden` and `gate` the two halves of `h`'s last dimension:
/// fused on the CPU backend ([`crate::nn::cpu_ops::geglu`]).
pub fn geglu<const D: usize>(h: Tensor<D>) -> Tensor<D> {
    #[cfg(all(feature = "cpu", not(target_arch = "wasm32")))]
    if let Some(out) = crate::nn::cpu_ops::geglu(&h) {
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

/// A feature map `[B, C, H, W]` as tokens `[B, H·W, C]`. On the GPU the maps are stored
/// channels-last (convolutions write them so), where this is a view; the other order (reshape,
/// then swap) would copy.
pub fn to_tokens(x: Tensor<4>) -> Tensor<3> {
    let [b, c, h, w] = x.dims();
    #[cfg(any(feature = "gpu", target_arch = "wasm32"))]
    if gpu::on_gpu(&x) {
        return x.permute([0, 2, 3, 1]).reshape([b, h * w, c]);
    }
    x.reshape([b, c, h * w]).swap_dims(1, 2)
}

/// Tokens `[B, H·W, C]` back to a feature map `[B, C, H, W]` (a channels-last view on the GPU).
pub fn from_tokens(x: Tensor<3>, h: usize, w: usize) -> Tensor<4> {
    let [b, _, c] = x.dims();
    #[cfg(any(feature = "gpu", target_arch = "wasm32"))]
    if gpu::on_gpu(&x) {
        return x.reshape([b, h, w, c]).permute([0, 3, 1, 2]);
    }
    x.swap_dims(1, 2).reshape([b, c, h, w])
}
