//! Layers built from checkpoint weights: burn's own `nn` modules, filled from a [`VarBuilder`]
//! with PyTorch's layouts, without a random initialisation first.

use burn::module::Param;
use burn::nn::{Embedding, GroupNorm, PaddingConfig2d};
use burn::tensor::activation;
use burn::tensor::Tensor;

use crate::weights::{VarBuilder, WeightsError};
pub use compact::{CompactConv2d, CompactWeight};

/// Defines `$name`, which runs the `#[inline(always)]` kernel `$body` compiled for AVX-512 or
/// AVX2 + FMA where the CPU has them, so that LLVM vectorizes its loops 16 or 8 wide (the crate
/// is built for baseline x86-64, SSE2), and for the baseline elsewhere.
#[cfg(all(feature = "cpu", not(target_arch = "wasm32")))]
macro_rules! dispatch_wide {
    ($(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),*) => $body:ident) => {
        $(#[$doc])*
        fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
                unsafe fn avx512($($arg: $ty),*) {
                    $body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) {
                    $body($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512vl") {
                    // SAFETY: the CPU has the features `avx512` was compiled for (AVX-512 CPUs
                    // have AVX2 and FMA).
                    return unsafe { avx512($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU has the features `avx2` was compiled for.
                    return unsafe { avx2($($arg),*) };
                }
            }
            $body($($arg),*)
        }
    };
}

pub mod compact;
#[cfg(all(feature = "cpu", not(target_arch = "wasm32")))]
pub mod cpu_conv;
#[cfg(all(feature = "cpu", not(target_arch = "wasm32")))]
pub mod cpu_ops;
#[cfg(any(feature = "gpu", target_arch = "wasm32"))]
pub mod gpu;
pub mod profile;
#[cfg(all(feature = "cpu", target_arch = "x86_64"))]
pub mod skinny_gemm;
#[cfg(all(feature = "cpu", not(target_arch = "wasm32")))]
pub mod winograd;

type R<T> = Result<T, WeightsError>;

/// A projection's weight.
#[derive(burn::module::Module, Debug)]
#[allow(clippy::large_enum_variant)] // one per layer, built once
pub enum LinearWeight {
    /// `[d_in, d_out]` (burn's layout).
    Dense(Param<Tensor<2>>),
    /// `[d_out, d_in]` (PyTorch's), kept compact on the GPU.
    Compact(CompactWeight),
}

/// `torch.nn.Linear`: `x · weight + bias`.
#[derive(burn::module::Module, Debug)]
pub struct Linear {
    pub weight: LinearWeight,
    pub bias: Option<Param<Tensor<1>>>,
}

impl Linear {
    /// A projection with a dense `[d_in, d_out]` weight.
    pub fn dense(weight: Tensor<2>, bias: Option<Tensor<1>>) -> Self {
        Self { weight: LinearWeight::Dense(Param::from_tensor(weight)), bias: bias.map(Param::from_tensor) }
    }

    pub fn d_in(&self) -> usize {
        match &self.weight {
            LinearWeight::Dense(w) => w.dims()[0],
            LinearWeight::Compact(c) => c.shape()[1],
        }
    }

    pub fn d_out(&self) -> usize {
        match &self.weight {
            LinearWeight::Dense(w) => w.dims()[1],
            LinearWeight::Compact(c) => c.shape()[0],
        }
    }

    /// `x` `[.., d_in]` → `[.., d_out]`. On the GPU the matmul is kept out of fusion, so that
    /// the bias add fuses with what follows (a residual add, an activation); a compact weight
    /// runs its own kernel, the bias included.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let rows = x.dims()[..D - 1].iter().product::<usize>();
        let (d_in, d_out) = (self.d_in(), self.d_out());
        profile::scope(
            || self.forward_unprofiled(x),
            |_| profile::Work {
                key: format!("linear {d_in}→{d_out}, {rows} rows"),
                flops: 2.0 * (rows * d_in * d_out) as f64,
                bytes: 4.0 * (rows * (d_in + d_out) + d_in * d_out) as f64,
            },
        )
    }

    fn forward_unprofiled<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let bias = self.bias.as_ref().map(|b| b.val());
        let weight = match &self.weight {
            LinearWeight::Compact(c) => return compact::linear(x, c, bias),
            LinearWeight::Dense(w) => w.val(),
        };
        #[cfg(any(feature = "gpu", target_arch = "wasm32"))]
        if gpu::on_gpu(&x) {
            let y = gpu::matmul(x, weight.unsqueeze());
            return match bias {
                Some(b) => y + b.unsqueeze(),
                None => y,
            };
        }
        #[cfg(all(feature = "cpu", not(target_arch = "wasm32")))]
        if let Some(y) = cpu_ops::linear(&x, &weight, bias.as_ref()) {
            return y;
        }
        burn::tensor::module::linear(x, weight, bias)
    }
}

/// `torch.nn.Linear(d_in, d_out, bias)`: weight `[d_out, d_in]`, kept transposed for burn
/// (on the CPU backend made contiguous, see [`crate::nn::cpu_ops::contiguous`]), or compact as
/// the store holds it.
pub fn linear(vb: &VarBuilder, d_in: usize, d_out: usize, bias: bool) -> R<Linear> {
    let weight = match vb.get_compact("weight", &[d_out, d_in])? {
        Some(tensor) => LinearWeight::Compact(CompactWeight { tensor }),
        None => {
            let weight = vb.get("weight", [d_out, d_in])?.transpose();
            #[cfg(all(feature = "cpu", not(target_arch = "wasm32")))]
            let weight = crate::nn::cpu_ops::contiguous(weight);
            LinearWeight::Dense(Param::from_tensor(weight))
        }
    };
    let bias = if bias { Some(Param::from_tensor(vb.get("bias", [d_out])?)) } else { None };
    Ok(Linear { weight, bias })
}

/// `torch.nn.Conv2d` with a square kernel and a bias: burn's, or one with a compact weight.
#[derive(burn::module::Module, Debug)]
#[allow(clippy::large_enum_variant)] // one per layer, built once
pub enum Conv2d {
    Dense(burn::nn::conv::Conv2d),
    Compact(CompactConv2d),
}

impl Conv2d {
    /// `(c_in, c_out)`.
    pub fn channels(&self) -> (usize, usize) {
        match self {
            Conv2d::Dense(c) => {
                let [c_out, c_in, _, _] = c.weight.dims();
                (c_in, c_out)
            }
            Conv2d::Compact(c) => c.channels(),
        }
    }

    /// The stride-1 convolution with padding `[(top, bottom), (left, right)]` instead of its own
    /// (a band's halo rows replace the zero padding).
    pub fn forward_padded(&self, x: Tensor<4>, pad: [(usize, usize); 2]) -> Tensor<4> {
        let [b, c_in, _, _] = x.dims();
        profile::scope(|| self.forward_padded_unprofiled(x, pad), |y| conv_profile(self, b, c_in, y))
    }

    fn forward_padded_unprofiled(&self, x: Tensor<4>, pad: [(usize, usize); 2]) -> Tensor<4> {
        match self {
            Conv2d::Dense(c) => {
                use burn::tensor::ops::ConvOptions;
                let options = ConvOptions::new_with_padding([1, 1], pad, [1, 1], 1);
                burn::tensor::module::conv2d(x, c.weight.val(), c.bias.as_ref().map(|b| b.val()), options)
            }
            Conv2d::Compact(c) => c.forward_padded(x, [pad[0].0, pad[1].0, pad[0].1, pad[1].1]),
        }
    }
}

/// Whether `device` is burn's CPU backend (Flex).
pub fn on_cpu(device: &burn::tensor::Device) -> bool {
    #[cfg(all(feature = "cpu", not(target_arch = "wasm32")))]
    return Tensor::<1>::zeros([1], device).try_into_primitive::<burn::backend::Flex>().is_ok();
    #[cfg(not(all(feature = "cpu", not(target_arch = "wasm32"))))]
    {
        let _ = device;
        false
    }
}

/// `torch.nn.Conv2d(c_in, c_out, k, stride, padding)` with a bias.
pub fn conv2d(vb: &VarBuilder, c_in: usize, c_out: usize, kernel: usize, stride: usize, padding: usize) -> R<Conv2d> {
    conv2d_padded(vb, c_in, c_out, kernel, stride, [padding; 4])
}

/// A convolution with explicit (possibly asymmetric) padding `[top, left, bottom, right]`.
pub fn conv2d_padded(vb: &VarBuilder, c_in: usize, c_out: usize, kernel: usize, stride: usize, padding: [usize; 4]) -> R<Conv2d> {
    if let Some(tensor) = vb.get_compact("weight", &[c_out, c_in, kernel, kernel])? {
        let bias = Param::from_tensor(vb.get("bias", [c_out])?);
        return Ok(Conv2d::Compact(CompactConv2d { weight: CompactWeight { tensor }, bias: Some(bias), stride, padding }));
    }
    // On a GPU the store keeps it channels-last, as burn's convolution reads it.
    let weight = vb.get("weight", [c_out, c_in, kernel, kernel])?;
    let bias = Param::from_tensor(vb.get("bias", [c_out])?);
    let [top, left, bottom, right] = padding;
    Ok(Conv2d::Dense(burn::nn::conv::Conv2d {
        weight: Param::from_tensor(weight),
        bias: Some(bias),
        stride: [stride, stride],
        kernel_size: [kernel, kernel],
        dilation: [1, 1],
        groups: 1,
        padding: PaddingConfig2d::Explicit(top, left, bottom, right),
    }))
}

/// `conv.forward(x)`: on the CPU backend through the convolution fast path
/// ([`crate::nn::cpu_conv`]), elsewhere burn's own kernel; a compact weight runs its own.
pub fn conv_forward(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    let [b, c_in, _, _] = x.dims();
    profile::scope(|| conv_forward_unprofiled(conv, x), |y| conv_profile(conv, b, c_in, y))
}

/// A convolution's profile key (kernel, channels, output map, stride) and work.
fn conv_profile(conv: &Conv2d, b: usize, c_in: usize, y: &Tensor<4>) -> profile::Work {
    let [_, c_out, h, w] = y.dims();
    let (k, stride) = match conv {
        Conv2d::Dense(c) => (c.kernel_size[0], c.stride[0]),
        Conv2d::Compact(c) => (c.weight.tensor.shape[2], c.stride),
    };
    let s = if stride == 1 { String::new() } else { format!(" stride {stride}") };
    let key = format!("conv {k}×{k} {c_in}→{c_out} @{}{s}", profile::map_size(h, w));
    let (input, weights, output) = (b * c_in * h * w * stride * stride, c_in * k * k * c_out, b * c_out * h * w);
    profile::Work { key, flops: 2.0 * (b * c_in * k * k * c_out * h * w) as f64, bytes: 4.0 * (input + weights + output) as f64 }
}

fn conv_forward_unprofiled(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    let conv = match conv {
        Conv2d::Compact(c) => return c.forward(x),
        Conv2d::Dense(c) => c,
    };
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
    profile::scope(|| fused_group_norm(gn, x, false).unwrap_or_else(|x| gn.forward(x)), |y| norm_profile("group norm", y))
}

/// `silu(gn.forward(x))`, fused like [`group_norm_forward`].
pub fn group_norm_silu<const D: usize>(gn: &GroupNorm, x: Tensor<D>) -> Tensor<D> {
    profile::scope(|| fused_group_norm(gn, x, true).unwrap_or_else(|x| silu(gn.forward(x))), |y| norm_profile("group norm + SiLU", y))
}

/// An element-wise layer's profile key (what, channels and map) and work: no flops counted
/// (these are bound by memory, not arithmetic), its input and output once each.
fn norm_profile<const D: usize>(what: &str, y: &Tensor<D>) -> profile::Work {
    let dims = y.dims();
    let map = match &dims[1..] {
        [c, h, w] => format!("{c} @{}", profile::map_size(*h, *w)),
        rest => format!("{rest:?}"),
    };
    profile::Work { key: format!("{what} {map}"), flops: 0.0, bytes: 8.0 * dims.iter().product::<usize>() as f64 }
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
        profile::scope(|| self.forward_unprofiled(x), |y| norm_profile("layer norm", y))
    }

    fn forward_unprofiled<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
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
        let h = match &proj.weight {
            LinearWeight::Dense(w) => gpu::matmul(x, w.val().unsqueeze()),
            LinearWeight::Compact(c) => compact::linear(x, c, None),
        };
        return gpu::geglu(h, bias.val());
    }
    geglu(proj.forward(x))
}

/// Linears of the same input fused into one (their outputs side by side): one matmul instead of
/// several. Returns it with each part's `(offset, width)` in its output.
/// Compact parts of one packing stay compact (their rows side by side); parts of different
/// packings are expanded (the converter gives fused parts one packing, so only a hand-made
/// bundle pays that).
pub fn fuse_linears(parts: Vec<Linear>) -> (Linear, Vec<(usize, usize)>) {
    let mut ranges = Vec::with_capacity(parts.len());
    let mut offset = 0;
    for p in &parts {
        let width = p.d_out();
        ranges.push((offset, width));
        offset += width;
    }
    let with_bias = parts.iter().all(|p| p.bias.is_some());
    let bias =
        with_bias.then(|| Param::from_tensor(Tensor::cat(parts.iter().map(|p| p.bias.as_ref().expect("all have one").val()).collect(), 0)));
    let compact: Vec<&CompactWeight> = parts
        .iter()
        .filter_map(|p| match &p.weight {
            LinearWeight::Compact(c) => Some(c),
            LinearWeight::Dense(_) => None,
        })
        .collect();
    if compact.len() == parts.len() && compact.iter().all(|c| c.tensor.packing == compact[0].tensor.packing) {
        let first = &compact[0].tensor;
        let tensor = crate::weights::CompactTensor {
            codes: Tensor::cat(compact.iter().map(|c| c.tensor.codes.clone()).collect(), 0),
            scales: Tensor::cat(compact.iter().map(|c| c.tensor.scales.clone()).collect(), 0),
            packing: first.packing,
            shape: vec![offset, first.shape[1]],
        };
        return (Linear { weight: LinearWeight::Compact(CompactWeight { tensor }), bias }, ranges);
    }
    let dense = |p: Linear| match p.weight {
        LinearWeight::Dense(w) => w.val(),
        LinearWeight::Compact(c) => c.dense().transpose(),
    };
    let weight = Tensor::cat(parts.into_iter().map(dense).collect(), 1);
    #[cfg(all(feature = "cpu", not(target_arch = "wasm32")))]
    let weight = crate::nn::cpu_ops::contiguous(weight);
    (Linear { weight: LinearWeight::Dense(Param::from_tensor(weight)), bias }, ranges)
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
