//! Layers whose weight stays compact on the GPU (`crate::weights::quant`'s block-quantized
//! codes and scales, as the store keeps them there): their kernels dequantize inside their tiles
//! ([`super::gpu::compact_conv2d`], [`super::gpu::compact_linear`]), so the whole model is never
//! expanded. On the CPU the store expands compact weights at load, and these never appear.

use burn::module::Param;
use burn::tensor::Tensor;

use crate::weights::CompactTensor;

/// A compact weight, as a module field (nothing in it is trained or recorded).
#[derive(burn::module::Module, Debug)]
pub struct CompactWeight {
    #[module(skip)]
    pub tensor: CompactTensor,
}

impl CompactWeight {
    /// The weight's logical shape (PyTorch's: `[d_out, d_in]`, `[C_out, C_in, k, k]`).
    pub fn shape(&self) -> &[usize] {
        &self.tensor.shape
    }

    /// Its values, `[rows, cols]` (first dimension, rest flattened): one dequantizing kernel.
    pub fn dense(&self) -> Tensor<2> {
        #[cfg(any(feature = "gpu", target_arch = "wasm32"))]
        return super::gpu::compact_dequantize(&self.tensor);
        #[cfg(not(any(feature = "gpu", target_arch = "wasm32")))]
        unreachable!("compact weights are kept only on a GPU")
    }
}

/// `torch.nn.Conv2d` with a compact weight: square kernel, `padding` `[top, left, bottom, right]`.
#[derive(burn::module::Module, Debug)]
pub struct CompactConv2d {
    pub weight: CompactWeight,
    pub bias: Option<Param<Tensor<1>>>,
    pub stride: usize,
    #[module(skip)]
    pub padding: [usize; 4],
}

impl CompactConv2d {
    /// `(c_in, c_out)`.
    pub fn channels(&self) -> (usize, usize) {
        let s = self.weight.shape();
        (s[1], s[0])
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.forward_padded(x, self.padding)
    }

    /// The convolution with another padding `[top, left, bottom, right]` (a band's halo).
    pub fn forward_padded(&self, x: Tensor<4>, padding: [usize; 4]) -> Tensor<4> {
        #[cfg(any(feature = "gpu", target_arch = "wasm32"))]
        return super::gpu::compact_conv2d(x, &self.weight.tensor, self.bias.as_ref().map(|b| b.val()), self.stride, padding);
        #[cfg(not(any(feature = "gpu", target_arch = "wasm32")))]
        {
            let _ = (x, padding);
            unreachable!("compact weights are kept only on a GPU")
        }
    }
}

/// `x` `[.., d_in]` times a compact `[d_out, d_in]` weight transposed, `+ bias`.
pub fn linear<const D: usize>(x: Tensor<D>, weight: &CompactWeight, bias: Option<Tensor<1>>) -> Tensor<D> {
    #[cfg(any(feature = "gpu", target_arch = "wasm32"))]
    {
        let dims = x.dims();
        let d_out = weight.shape()[0];
        // The kernel reads `[B, N, K]` with any strides: rank 3 as it is, others reshaped.
        let x3: Tensor<3> = match D {
            3 => Tensor::from_dispatch(x.into_dispatch()),
            _ => {
                let k = dims[D - 1];
                let n = dims.iter().product::<usize>() / k.max(1);
                x.reshape([1, n, k])
            }
        };
        let y = super::gpu::compact_linear(x3, &weight.tensor, bias);
        let mut out = dims;
        out[D - 1] = d_out;
        y.reshape(out)
    }
    #[cfg(not(any(feature = "gpu", target_arch = "wasm32")))]
    {
        let _ = (x, weight, bias);
        unreachable!("compact weights are kept only on a GPU")
    }
}
