//! CPU backend fast paths besides convolutions ([`crate::nn::cpu_conv`]), chosen at run
//! time like them: float32 tensors on burn's Flex device take them, every other tensor (wgpu /
//! WebGPU) goes through burn's generic ops unchanged.

use burn::backend::Flex;
use burn::nn::GroupNorm;
use burn::tensor::{DType, Tensor, TensorData};
use burn_flex::FlexTensor;
use rayon::prelude::*;

/// `t` with a contiguous row-major layout (a no-op when it has one). Linear weights are kept
/// as transposed views of the PyTorch `[d_out, d_in]` tensors; burn's `linear` reshapes the
/// weight to the input's rank, which on Flex copies (transposes) the whole weight on every
/// call. Made contiguous once at load, the reshape is a view.
pub fn contiguous<const D: usize>(t: Tensor<D>) -> Tensor<D> {
    match t.clone().try_into_primitive::<Flex>() {
        Ok(f) => Tensor::from_primitive::<Flex>(f.to_contiguous()),
        Err(_) => t,
    }
}

/// Elements per parallel task of the element-wise kernels.
const CHUNK: usize = 1 << 14;

/// GEGLU on `h` `[.., 2·inner]`: `hidden * gelu(gate)` with `hidden, gate` its two halves of the
/// last dimension (exact erf GELU), fused and multi-threaded; burn-flex would copy both halves,
/// run GELU as a single-threaded map and the product as another pass. Same formula and
/// operation order as flex's GELU, so the same values. `None` when the fast path does not apply.
pub fn geglu<const D: usize>(h: &Tensor<D>) -> Option<Tensor<D>> {
    let mut dims = h.dims();
    let wide = dims[D - 1];
    if h.dtype() != DType::F32 || wide % 2 != 0 || wide == 0 {
        return None;
    }
    let inner = wide / 2;
    let f = h.clone().try_into_primitive::<Flex>().ok()?.to_contiguous();
    let hs = f.as_slice::<f32>()?;
    let mut out = vec![0f32; hs.len() / 2];
    let rows = (CHUNK / inner).max(1);
    out.par_chunks_mut(rows * inner).zip(hs.par_chunks(rows * wide)).for_each(|(o, h)| {
        for (o, h) in o.chunks_mut(inner).zip(h.chunks(wide)) {
            let (hidden, gate) = h.split_at(inner);
            for ((o, &h), &x) in o.iter_mut().zip(hidden).zip(gate) {
                *o = h * (0.5 * x * (1.0 + burn_flex::ops::unary::erf_f32(x / core::f32::consts::SQRT_2)));
            }
        }
    });
    dims[D - 1] = inner;
    Some(Tensor::from_primitive::<Flex>(FlexTensor::from_data(TensorData::new(out, dims))))
}

/// flex's sigmoid (same branches, so the same values).
fn sigmoid(x: f32) -> f32 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// SiLU `x·sigmoid(x)` in one multi-threaded pass (flex: a single-threaded sigmoid map, then a
/// product). `None` when the fast path does not apply.
pub fn silu<const D: usize>(x: &Tensor<D>) -> Option<Tensor<D>> {
    if x.dtype() != DType::F32 {
        return None;
    }
    let f = x.clone().try_into_primitive::<Flex>().ok()?.to_contiguous();
    let xs = f.as_slice::<f32>()?;
    let mut out = vec![0f32; xs.len()];
    out.par_chunks_mut(CHUNK).zip(xs.par_chunks(CHUNK)).for_each(|(o, x)| {
        for (o, &x) in o.iter_mut().zip(x) {
            *o = x * sigmoid(x);
        }
    });
    Some(Tensor::from_primitive::<Flex>(FlexTensor::from_data(TensorData::new(out, x.dims()))))
}

/// `GroupNorm` (affine) of `x` `[B, C, ..]`, followed by SiLU when `silu`, in two
/// multi-threaded passes per group (statistics, then normalise + affine + activation); burn-nn
/// composes it from a dozen whole-tensor ops. The statistics are accumulated in f64 (burn: f32),
/// the rest follows burn's formula `(x - mean) / sqrt(var + eps) · γ + β`. `None` when the fast
/// path does not apply.
pub fn group_norm<const D: usize>(gn: &GroupNorm, x: &Tensor<D>, silu: bool) -> Option<Tensor<D>> {
    let dims = x.dims();
    let (Some(gamma), Some(beta)) = (&gn.gamma, &gn.beta) else {
        return None;
    };
    if D < 3 || x.dtype() != DType::F32 || !gn.affine || gn.num_groups == 0 || dims[1] != gn.num_channels || dims[1] % gn.num_groups != 0 {
        return None;
    }
    let flex = |t: Tensor<1>| t.try_into_primitive::<Flex>().ok().map(|f| f.to_contiguous());
    let (gf, bf) = (flex(gamma.val())?, flex(beta.val())?);
    let (gs, bs) = (gf.as_slice::<f32>()?, bf.as_slice::<f32>()?);
    let f = x.clone().try_into_primitive::<Flex>().ok()?.to_contiguous();
    let xs = f.as_slice::<f32>()?;
    let (c, plane) = (dims[1], dims[2..].iter().product::<usize>());
    let cg = c / gn.num_groups;
    if gs.len() != c || bs.len() != c || plane == 0 {
        return None;
    }
    let eps = gn.epsilon as f32;
    let mut out = vec![0f32; xs.len()];
    // One task per (batch, group): `cg` whole channel planes.
    out.par_chunks_mut(cg * plane).zip(xs.par_chunks(cg * plane)).enumerate().for_each(|(i, (o, x))| {
        let n = x.len() as f64;
        let mean = (x.iter().map(|&v| v as f64).sum::<f64>() / n) as f32;
        let var = (x.iter().map(|&v| ((v - mean) as f64).powi(2)).sum::<f64>() / n) as f32;
        let std = (var + eps).sqrt();
        let c0 = (i % gn.num_groups) * cg;
        for (k, (o, x)) in o.chunks_mut(plane).zip(x.chunks(plane)).enumerate() {
            let (g, b) = (gs[c0 + k], bs[c0 + k]);
            for (o, &v) in o.iter_mut().zip(x) {
                let y = (v - mean) / std * g + b;
                *o = if silu { y * sigmoid(y) } else { y };
            }
        }
    });
    Some(Tensor::from_primitive::<Flex>(FlexTensor::from_data(TensorData::new(out, dims))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{activation, Device, Distribution};

    #[test]
    fn fused_activations_equal_burn() {
        let device = Device::flex();
        let h = Tensor::<3>::random([2, 37, 2 * 300], Distribution::Normal(0.0, 3.0), &device);
        let [hidden, gate] = h.clone().chunk(2, 2).try_into().expect("two halves");
        assert_eq!(geglu(&h).expect("fast path").into_data(), (hidden * activation::gelu(gate)).into_data());
        assert_eq!(silu(&h).expect("fast path").into_data(), activation::silu(h).into_data());
    }

    #[test]
    fn fused_group_norm_equals_burn() {
        let device = Device::flex();
        let gn = GroupNorm {
            gamma: Some(burn::module::Param::from_tensor(Tensor::random([12], Distribution::Normal(1.0, 0.5), &device))),
            beta: Some(burn::module::Param::from_tensor(Tensor::random([12], Distribution::Normal(0.0, 0.5), &device))),
            num_groups: 4,
            num_channels: 12,
            epsilon: 1e-6,
            affine: true,
        };
        let x = Tensor::<4>::random([2, 12, 9, 7], Distribution::Normal(0.5, 2.0), &device);
        for silu in [false, true] {
            let mut expected = gn.forward(x.clone());
            if silu {
                expected = activation::silu(expected);
            }
            let err = (group_norm(&gn, &x, silu).expect("fast path") - expected).abs().max().into_scalar::<f32>();
            assert!(err < 2e-6, "silu {silu}: max error {err}");
        }
    }
}
