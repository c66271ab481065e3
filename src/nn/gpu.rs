//! GPU fast paths (burn's CubeCL backends: wgpu natively, WebGPU in the browser) for the chains
//! that burn's fusion leaves in many dispatches, as a burn backend extension: each op has a
//! CubeCL implementation and a lazy one under fusion. Callers take them for tensors on a CubeCL
//! device ([`on_gpu`]); the CPU backend has its own fast paths (`cpu_ops`).
//!
//! - [`matmul`]: a projection's matmul kept out of fusion, so that its bias and residual adds
//!   fuse into one kernel after it.
//! - [`flash_attention`]: softmax(q·kᵀ/√d)·v in one kernel that never materialises the scores
//!   (burn without autotune runs about fifteen kernels and a score matrix that passes WebGPU's
//!   128 MiB binding limit at 512²).
//! - [`group_norm`]: GroupNorm (+ SiLU) in one kernel (burn: a layout copy, two reductions and
//!   three element-wise passes), written channels-last, the layout burn's convolution reads
//!   without a copy.
//! - [`group_norm_add`]: the same of `x + t` (a UNet resnet adds its time embedding just before
//!   its second norm).
//! - [`geglu`]: a feed-forward's GEGLU with its projection's bias, in one kernel (burn leaves the
//!   bias add apart: the halves' slicing stops fusion).
//! - [`layer_norm`]: LayerNorm over the last dimension in one kernel (burn: five).
//!
//! Statistics are accumulated in f32 whatever the tensor's dtype (f16 sums of squares overflow).

use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Backend, Dispatch};
use burn::tensor::{Shape, Tensor};

/// Threads per cube of the normalisation kernels (a power of two, for the tree reduction).
const BLOCK: usize = 256;

/// The output shape of a batched matmul `[.., M, K] × [.., K, N]` (batch dims broadcast).
fn matmul_shape(lhs: &Shape, rhs: &Shape) -> Shape {
    let mut s = lhs.clone();
    let r = s.num_dims();
    for i in 0..r - 2 {
        s[i] = s[i].max(rhs[i]);
    }
    s[r - 1] = rhs[r - 1];
    s
}

/// `shape` with its last dimension halved (GEGLU's output).
fn half_last(shape: &Shape) -> Shape {
    let mut s = shape.clone();
    let r = s.num_dims();
    s[r - 1] /= 2;
    s
}

/// The output shape of attention: `[B, H, Nq, Dv]`.
fn attention_shape(q: &Shape, v: &Shape) -> Shape {
    let mut s = q.clone();
    s[3] = v[3];
    s
}

#[backend_extension(Cube, Fusion)]
pub trait GpuOps: Backend {
    /// burn's matmul, opaque to fusion: the bias and residual adds after a projection then fuse
    /// into one element-wise kernel, instead of being captured by a fused matmul that falls back
    /// (no cooperative-matrix units on WebGPU) to running them one by one.
    #[fusion(dtype = lhs, shape = matmul_shape(lhs, rhs))]
    fn matmul(lhs: FloatTensor<Self>, rhs: FloatTensor<Self>) -> FloatTensor<Self>;

    #[fusion(dtype = query, shape = attention_shape(query, value))]
    fn flash_attention(query: FloatTensor<Self>, key: FloatTensor<Self>, value: FloatTensor<Self>) -> FloatTensor<Self>;

    #[fusion(dtype = input, shape = input)]
    fn group_norm(
        input: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        groups: usize,
        epsilon: f64,
        silu: bool,
    ) -> FloatTensor<Self>;

    /// [`GpuOps::group_norm`] of `input + addend[b, offset + c]` (`addend` `[B, ≥ offset + C]`,
    /// broadcast over the map): the time embedding a UNet resnet adds just before its second
    /// norm, read from the UNet's fused projection of all of them.
    #[fusion(dtype = input, shape = input)]
    #[allow(clippy::too_many_arguments)]
    fn group_norm_add(
        input: FloatTensor<Self>,
        addend: FloatTensor<Self>,
        offset: usize,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        groups: usize,
        epsilon: f64,
        silu: bool,
    ) -> FloatTensor<Self>;

    /// GEGLU of `h + bias` (`h` `[.., 2·inner]`): `(a + b_a) · gelu(g + b_g)` over its two halves.
    #[fusion(dtype = h, shape = half_last(h))]
    fn geglu(h: FloatTensor<Self>, bias: FloatTensor<Self>) -> FloatTensor<Self>;

    #[fusion(dtype = input, shape = input)]
    fn layer_norm(input: FloatTensor<Self>, gamma: FloatTensor<Self>, beta: FloatTensor<Self>, epsilon: f64) -> FloatTensor<Self>;
}

mod cube {
    // The #[cube] macros name the `cubecl` crate: burn-cubecl's own.
    use burn_cubecl::cubecl;
    use burn_cubecl::ops::numeric::empty_device_dtype;
    use burn_cubecl::ops::permute;
    use burn_cubecl::tensor::CubeTensor;
    use burn_cubecl::CubeBackend;
    use cubecl::prelude::*;

    use super::{GpuOps, BLOCK};

    fn storage(t: &CubeTensor) -> ElemType {
        burn::backend::cubecl::dtype_to_storage_type(t.dtype)
    }

    /// Sums `value` over the cube (a power-of-two number of units) through shared memory;
    /// every unit gets the total.
    #[cube]
    fn cube_sum(value: f32, shared: &mut Shared<[f32]>) -> f32 {
        let tid = UNIT_POS_X as usize;
        shared[tid] = value;
        sync_cube();
        let mut stride = CUBE_DIM_X as usize / 2;
        while stride > 0 {
            if tid < stride {
                shared[tid] += shared[tid + stride];
            }
            sync_cube();
            stride /= 2;
        }
        let total = shared[0];
        sync_cube();
        total
    }

    /// Element `i` of group-local order (channel fastest) of batch item `b`, whose first channel
    /// is `c0`, as f32; plus `addend[b, c]` when `add`.
    #[cube]
    #[allow(clippy::too_many_arguments)]
    fn load_grouped<F: Float>(
        input: &Tensor<F>,
        addend: &Tensor<F>,
        b: usize,
        c0: usize,
        i: usize,
        per: usize,
        width: usize,
        base: usize,
        #[comptime] add: bool,
    ) -> f32 {
        let s = i / per;
        let c = i % per;
        let mut x = f32::cast_from(input[base + c * input.stride(1) + (s / width) * input.stride(2) + (s % width) * input.stride(3)]);
        if add {
            x += f32::cast_from(addend[b * addend.stride(0) + (c0 + c) * addend.stride(1)]);
        }
        x
    }

    /// One cube per unit of `h` `[.., 2·inner]`'s output `[.., inner]`: `(a + b_a)·gelu(g + b_g)`
    /// with the exact erf GELU.
    #[cube(launch)]
    fn geglu_kernel<F: Float>(h: &Tensor<F>, bias: &Tensor<F>, output: &mut Tensor<F>, #[define(F)] _dtype: ElemType) {
        let pos = ABSOLUTE_POS;
        if pos >= output.len() {
            terminate!();
        }
        let rank = h.rank();
        let inner = output.shape(rank - 1);
        let col = pos % inner;
        // The row's offset in `h` (any strides) from the output's contiguous index.
        let mut rest = pos / inner;
        let mut offset = 0;
        let mut d = rank - 1;
        while d > 0 {
            d -= 1;
            offset += (rest % h.shape(d)) * h.stride(d);
            rest /= h.shape(d);
        }
        let last = h.stride(rank - 1);
        let a = f32::cast_from(h[offset + col * last]) + f32::cast_from(bias[col]);
        let g = f32::cast_from(h[offset + (col + inner) * last]) + f32::cast_from(bias[col + inner]);
        let gelu = 0.5f32 * g * (1.0f32 + Erf::erf(g * 0.70710678118654752f32));
        output[pos] = F::cast_from(a * gelu);
    }

    /// One cube per (batch item, group) of `input` `[B, C, H, W]` (any strides): mean, then
    /// variance of the centred values (burn's formula), then the affine (+ SiLU) written to
    /// `output`, contiguous `[B, H, W, C]`. Units walk the group channel-fastest.
    #[cube(launch)]
    #[allow(clippy::too_many_arguments)]
    fn group_norm_kernel<F: Float>(
        input: &Tensor<F>,
        addend: &Tensor<F>,
        gamma: &Tensor<F>,
        beta: &Tensor<F>,
        output: &mut Tensor<F>,
        groups: u32,
        addend_offset: u32,
        epsilon: f32,
        #[comptime] add: bool,
        #[comptime] silu: bool,
        #[comptime] block: usize,
        #[define(F)] _dtype: ElemType,
    ) {
        let tid = UNIT_POS_X as usize;
        let groups = groups as usize;
        let b = CUBE_POS_X as usize / groups;
        let g = CUBE_POS_X as usize % groups;
        let channels = input.shape(1);
        let width = input.shape(3);
        let hw = input.shape(2) * width;
        let per = channels / groups;
        let count = per * hw;
        let base = b * input.stride(0) + g * per * input.stride(1);
        let mut shared = Shared::<[f32]>::new_slice(block);

        let mut acc = 0.0f32;
        let mut i = tid;
        while i < count {
            acc += load_grouped(input, addend, b, addend_offset as usize + g * per, i, per, width, base, add);
            i += block;
        }
        let mean = cube_sum(acc, &mut shared) / f32::cast_from(count as u32);

        let mut acc = 0.0f32;
        let mut i = tid;
        while i < count {
            let d = load_grouped(input, addend, b, addend_offset as usize + g * per, i, per, width, base, add) - mean;
            acc += d * d;
            i += block;
        }
        let var = cube_sum(acc, &mut shared) / f32::cast_from(count as u32);
        let std = (var + epsilon).sqrt();

        let mut i = tid;
        while i < count {
            let s = i / per;
            let c = g * per + i % per;
            let x = load_grouped(input, addend, b, addend_offset as usize + g * per, i, per, width, base, add);
            let mut y = (x - mean) / std * f32::cast_from(gamma[c]) + f32::cast_from(beta[c]);
            if silu {
                y = y / (1.0f32 + (-y).exp());
            }
            output[(b * hw + s) * channels + c] = F::cast_from(y);
            i += block;
        }
    }

    /// One cube per row of `input` `[B, N, D]` (any strides): LayerNorm over D, written to
    /// `output`, contiguous.
    #[cube(launch)]
    fn layer_norm_kernel<F: Float>(
        input: &Tensor<F>,
        gamma: &Tensor<F>,
        beta: &Tensor<F>,
        output: &mut Tensor<F>,
        epsilon: f32,
        #[comptime] block: usize,
        #[define(F)] _dtype: ElemType,
    ) {
        let tid = UNIT_POS_X as usize;
        let rows = input.shape(1);
        let d = input.shape(2);
        let row = CUBE_POS_X as usize;
        let base = (row / rows) * input.stride(0) + (row % rows) * input.stride(1);
        let sd = input.stride(2);
        let mut shared = Shared::<[f32]>::new_slice(block);

        let mut acc = 0.0f32;
        let mut i = tid;
        while i < d {
            acc += f32::cast_from(input[base + i * sd]);
            i += block;
        }
        let mean = cube_sum(acc, &mut shared) / f32::cast_from(d as u32);
        let mut acc = 0.0f32;
        let mut i = tid;
        while i < d {
            let x = f32::cast_from(input[base + i * sd]) - mean;
            acc += x * x;
            i += block;
        }
        let var = cube_sum(acc, &mut shared) / f32::cast_from(d as u32);
        let std = (var + epsilon).sqrt();
        let mut i = tid;
        while i < d {
            let x = f32::cast_from(input[base + i * sd]);
            output[row * d + i] = F::cast_from((x - mean) / std * f32::cast_from(gamma[i]) + f32::cast_from(beta[i]));
            i += block;
        }
    }

    /// GroupNorm (+ addend, + SiLU) of `input` `[B, C, H, W]`, written channels-last.
    fn launch_group_norm(
        input: CubeTensor,
        addend: Option<(CubeTensor, usize)>,
        gamma: CubeTensor,
        beta: CubeTensor,
        groups: usize,
        epsilon: f64,
        silu: bool,
    ) -> CubeTensor {
        let [b, c, h, w] = input.meta.shape().dims::<4>();
        let add = addend.is_some();
        let (addend, offset) = addend.unwrap_or_else(|| (gamma.clone(), 0));
        let out = empty_device_dtype(input.client.clone(), input.device.clone(), [b, h, w, c].into(), input.dtype);
        let client = input.client.clone();
        let dtype = storage(&input);
        group_norm_kernel::launch(
            &client,
            CubeCount::Static((b * groups) as u32, 1, 1),
            CubeDim::new_1d(BLOCK as u32),
            input.into_tensor_arg(),
            addend.into_tensor_arg(),
            gamma.into_tensor_arg(),
            beta.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            groups as u32,
            offset as u32,
            epsilon as f32,
            add,
            silu,
            BLOCK,
            dtype,
        );
        // Channels-last in memory, [B, C, H, W] to its users.
        permute(out, &[0, 3, 1, 2])
    }

    impl GpuOps for CubeBackend {
        fn matmul(lhs: CubeTensor, rhs: CubeTensor) -> CubeTensor {
            <Self as burn::backend::ops::FloatTensorOps<Self>>::float_matmul(lhs, rhs)
        }

        fn flash_attention(query: CubeTensor, key: CubeTensor, value: CubeTensor) -> CubeTensor {
            use cubek::attention::forward::definition::{AccumulatorPrecision, AttentionGlobalTypes, AttentionOptions};
            use cubek::attention::forward::launch::{launch_ref, BlueprintStrategy, Strategy};
            let [b, heads, n, _] = query.meta.shape().dims::<4>();
            let dv = value.meta.shape()[3];
            // Written as [B, N, heads, dv] in memory, so that merging the heads after it is a view.
            let out = empty_device_dtype(query.client.clone(), query.device.clone(), [b, n, heads, dv].into(), query.dtype);
            let out = permute(out, &[0, 2, 1, 3]);
            let dtypes = AttentionGlobalTypes {
                query: storage(&query),
                key: storage(&key),
                value: storage(&value),
                mask: burn::backend::cubecl::dtype_to_storage_type(burn::tensor::DType::U8),
                out: storage(&out),
            };
            let options = AttentionOptions {
                causal: false,
                accumulator_precision: AccumulatorPrecision::Strict(ElemType::Float(cubecl::ir::FloatKind::F32)),
            };
            let client = query.client.clone();
            launch_ref(
                Strategy::Unit(BlueprintStrategy::Inferred(())),
                &client,
                query.binding(),
                key.binding(),
                value.binding(),
                None,
                out.clone().binding(),
                &dtypes,
                options,
            )
            .expect("the unit flash-attention kernel launches on any WebGPU device");
            out
        }

        fn group_norm(input: CubeTensor, gamma: CubeTensor, beta: CubeTensor, groups: usize, epsilon: f64, silu: bool) -> CubeTensor {
            launch_group_norm(input, None, gamma, beta, groups, epsilon, silu)
        }

        #[allow(clippy::too_many_arguments)]
        fn group_norm_add(
            input: CubeTensor,
            addend: CubeTensor,
            offset: usize,
            gamma: CubeTensor,
            beta: CubeTensor,
            groups: usize,
            epsilon: f64,
            silu: bool,
        ) -> CubeTensor {
            launch_group_norm(input, Some((addend, offset)), gamma, beta, groups, epsilon, silu)
        }

        fn geglu(h: CubeTensor, bias: CubeTensor) -> CubeTensor {
            let mut shape = h.meta.shape().clone();
            let r = shape.num_dims();
            shape[r - 1] /= 2;
            let out = empty_device_dtype(h.client.clone(), h.device.clone(), shape, h.dtype);
            let n = out.meta.num_elements();
            let client = h.client.clone();
            let dtype = storage(&h);
            let cube_dim = CubeDim::new(&client, n);
            let cube_count = cubecl::calculate_cube_count_elemwise(&client, n, cube_dim);
            geglu_kernel::launch(
                &client,
                cube_count,
                cube_dim,
                h.into_tensor_arg(),
                bias.into_tensor_arg(),
                out.clone().into_tensor_arg(),
                dtype,
            );
            out
        }

        fn layer_norm(input: CubeTensor, gamma: CubeTensor, beta: CubeTensor, epsilon: f64) -> CubeTensor {
            let [b, n, d] = input.meta.shape().dims::<3>();
            let out = empty_device_dtype(input.client.clone(), input.device.clone(), [b, n, d].into(), input.dtype);
            let client = input.client.clone();
            let dtype = storage(&input);
            layer_norm_kernel::launch(
                &client,
                CubeCount::Static((b * n) as u32, 1, 1),
                CubeDim::new_1d(BLOCK as u32),
                input.into_tensor_arg(),
                gamma.into_tensor_arg(),
                beta.into_tensor_arg(),
                out.clone().into_tensor_arg(),
                epsilon as f32,
                BLOCK,
                dtype,
            );
            out
        }
    }
}

/// Whether `t` lives on a CubeCL device (the GPU), where these ops apply.
pub fn on_gpu<const D: usize>(t: &Tensor<D>) -> bool {
    matches!(t.device().as_dispatch(), burn::backend::DispatchDevice::Cube(_))
}

/// `lhs · rhs` (batched, broadcast), as one kernel that fusion does not capture.
pub fn matmul<const D: usize>(lhs: Tensor<D>, rhs: Tensor<D>) -> Tensor<D> {
    Tensor::from_dispatch(Dispatch::matmul(lhs.into_dispatch(), rhs.into_dispatch()))
}

/// softmax(q·kᵀ/√d)·v on `[B, heads, N, d]` tensors, in one kernel.
pub fn flash_attention(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>) -> Tensor<4> {
    Tensor::from_dispatch(Dispatch::flash_attention(q.into_dispatch(), k.into_dispatch(), v.into_dispatch()))
}

/// GroupNorm (affine) of `x` `[B, C, H, W]`, then SiLU when `silu`, in one kernel; the result is
/// stored channels-last.
pub fn group_norm(x: Tensor<4>, gamma: Tensor<1>, beta: Tensor<1>, groups: usize, epsilon: f64, silu: bool) -> Tensor<4> {
    Tensor::from_dispatch(Dispatch::group_norm(x.into_dispatch(), gamma.into_dispatch(), beta.into_dispatch(), groups, epsilon, silu))
}

/// [`group_norm`] of `x + addend[:, offset..offset + C]` (broadcast over the map).
#[allow(clippy::too_many_arguments)]
pub fn group_norm_add(
    x: Tensor<4>,
    addend: Tensor<2>,
    offset: usize,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    groups: usize,
    epsilon: f64,
    silu: bool,
) -> Tensor<4> {
    Tensor::from_dispatch(Dispatch::group_norm_add(
        x.into_dispatch(),
        addend.into_dispatch(),
        offset,
        gamma.into_dispatch(),
        beta.into_dispatch(),
        groups,
        epsilon,
        silu,
    ))
}

/// GEGLU of `h + bias` over the two halves of `h`'s last dimension, in one kernel.
pub fn geglu<const D: usize>(h: Tensor<D>, bias: Tensor<1>) -> Tensor<D> {
    Tensor::from_dispatch(Dispatch::geglu(h.into_dispatch(), bias.into_dispatch()))
}

/// LayerNorm (affine) of `x` `[B, N, D]` over D, in one kernel.
pub fn layer_norm(x: Tensor<3>, gamma: Tensor<1>, beta: Tensor<1>, epsilon: f64) -> Tensor<3> {
    Tensor::from_dispatch(Dispatch::layer_norm(x.into_dispatch(), gamma.into_dispatch(), beta.into_dispatch(), epsilon))
}
