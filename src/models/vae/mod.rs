//! diffusers' `AutoencoderKL` (the SD1.5 VAE), sized from `vae/config.json`, with an exact
//! banded path for images whose activations would not fit one GPU buffer (see `plan.rs` and
//! `banded.rs`).

mod banded;
mod blocks;
mod config;
mod plan;

pub use banded::BandedRun;
pub use blocks::{Decoder, DownEncoderBlock2D, Encoder, UpDecoderBlock2D, VaeMidBlock};
pub use config::{VaeConfig, VAE_NORM_EPS};
pub use plan::{decode_plan, encode_plan, BufferPlan, VaeOptions, VaeShape, DEFAULT_MAX_BUFFER_BYTES, ELEM_BYTES};

use burn::tensor::Tensor;

use crate::nn::{conv2d, conv_forward, Conv2d};
use crate::weights::VarBuilder;
use banded::Ctx;

/// The diagonal Gaussian posterior of an encoding.
#[derive(Debug, Clone)]
pub struct Posterior {
    pub mean: Tensor<4>,
    /// Clamped to [-30, 20], as diffusers does.
    pub logvar: Tensor<4>,
    /// `exp(0.5·logvar)`.
    pub std: Tensor<4>,
}

impl Posterior {
    /// Splits `[B, 2·latent, h, w]` moments into mean and log-variance.
    pub fn from_moments(moments: Tensor<4>) -> Self {
        let c = moments.dims()[1] / 2;
        let mean = moments.clone().narrow(1, 0, c);
        let logvar = moments.narrow(1, c, c).clamp(-30.0, 20.0);
        let std = logvar.clone().mul_scalar(0.5).exp();
        Self { mean, logvar, std }
    }

    /// `mean + std·noise` (`noise` standard normal, the latent's shape).
    pub fn sample(&self, noise: Tensor<4>) -> Tensor<4> {
        self.mean.clone() + self.std.clone() * noise
    }
}

#[derive(burn::module::Module, Debug)]
pub struct AutoencoderKL {
    pub encoder: Encoder,
    pub decoder: Decoder,
    pub quant_conv: Option<Conv2d>,
    pub post_quant_conv: Option<Conv2d>,
    /// The sizes (what the buffer plan needs).
    #[module(skip)]
    pub shape: VaeShape,
    pub scaling_factor: f64,
    /// [`VaeOptions::max_buffer_bytes`].
    pub max_buffer_bytes: usize,
}

impl AutoencoderKL {
    /// Builds the VAE from its weights with the default [`VaeOptions`].
    pub fn load(vb: &VarBuilder, cfg: &VaeConfig) -> crate::Result<Self> {
        cfg.validate()?;
        let lc = cfg.latent_channels;
        Ok(Self {
            encoder: Encoder::load(&vb.pp("encoder"), cfg)?,
            decoder: Decoder::load(&vb.pp("decoder"), cfg)?,
            quant_conv: if cfg.use_quant_conv { Some(conv2d(&vb.pp("quant_conv"), 2 * lc, 2 * lc, 1, 1, 0)?) } else { None },
            post_quant_conv: if cfg.use_post_quant_conv { Some(conv2d(&vb.pp("post_quant_conv"), lc, lc, 1, 1, 0)?) } else { None },
            shape: VaeShape::from(cfg),
            scaling_factor: cfg.scaling_factor,
            max_buffer_bytes: VaeOptions::default().max_buffer_bytes,
        })
    }

    pub fn options(&self) -> VaeOptions {
        VaeOptions { max_buffer_bytes: self.max_buffer_bytes }
    }

    pub fn set_options(&mut self, options: VaeOptions) {
        self.max_buffer_bytes = options.max_buffer_bytes;
    }

    pub fn with_options(mut self, options: VaeOptions) -> Self {
        self.set_options(options);
        self
    }

    pub fn shape(&self) -> VaeShape {
        self.shape.clone()
    }

    /// Image size ÷ latent size.
    pub fn downscale(&self) -> usize {
        1 << (self.shape.block_out_channels.len() - 1)
    }

    /// Checks an image batch's dims `[B, C, H, W]` for [`Self::encode`]: the channel count, and
    /// each side at least [`Self::downscale`] pixels (smaller images vanish in the encoder).
    pub fn check_encode_input(&self, dims: [usize; 4]) -> crate::Result<()> {
        let [b, c, h, w] = dims;
        let f = self.downscale();
        if b == 0 || c != self.shape.in_channels || h < f || w < f {
            return Err(crate::Error::InvalidOption(format!(
                "VAE encode input {dims:?}: expected [B>0, {}, H>={f}, W>={f}]",
                self.shape.in_channels
            )));
        }
        Ok(())
    }

    /// Checks a latent batch's dims `[B, C, h, w]` for [`Self::decode`].
    pub fn check_decode_input(&self, dims: [usize; 4]) -> crate::Result<()> {
        let [b, c, h, w] = dims;
        if b == 0 || c != self.shape.latent_channels || h == 0 || w == 0 {
            return Err(crate::Error::InvalidOption(format!(
                "VAE decode input {dims:?}: expected [B>0, {}, h>0, w>0]",
                self.shape.latent_channels
            )));
        }
        Ok(())
    }

    /// How [`Self::encode`] runs on images of `dims`, and its largest tensor.
    pub fn encode_plan(&self, dims: [usize; 4]) -> BufferPlan {
        encode_plan(&self.shape(), &self.options(), dims)
    }

    /// How [`Self::decode`] runs on latents of `dims`, and its largest tensor.
    pub fn decode_plan(&self, dims: [usize; 4]) -> BufferPlan {
        decode_plan(&self.shape(), &self.options(), dims)
    }

    /// Encodes images `[B, C, H, W]` in [-1, 1] (input as [`Self::check_encode_input`] accepts;
    /// other inputs panic in the backend) into the posterior over unscaled latents. Runs whole,
    /// or in bands / per item when a tensor would reach the buffer limit.
    pub fn encode(&self, x: Tensor<4>) -> Posterior {
        let plan = self.encode_plan(x.dims());
        if plan.banded || plan.per_item {
            return self.encode_traced(x).0;
        }
        let moments = self.encoder.forward(x);
        Posterior::from_moments(self.quant(moments))
    }

    /// Decodes unscaled latents `[B, latent, h, w]` into raw images (not clamped). Runs whole,
    /// or in bands / per item when a tensor would reach the buffer limit.
    pub fn decode(&self, z: Tensor<4>) -> Tensor<4> {
        let plan = self.decode_plan(z.dims());
        if plan.banded || plan.per_item {
            return self.decode_traced(z).0;
        }
        self.decoder.forward(self.post_quant(z))
    }

    /// [`Self::encode`] through the banded executor (whatever the plan), with what it did.
    pub fn encode_traced(&self, x: Tensor<4>) -> (Posterior, BandedRun) {
        let plan = self.encode_plan(x.dims());
        let ctx = Ctx::new(self.max_buffer_bytes);
        ctx.see_t(&x);
        let moments = if plan.per_item {
            let items: Vec<Tensor<4>> =
                (0..x.dims()[0]).map(|i| self.quant(ctx.encoder(&self.encoder, x.clone().narrow(0, i, 1)))).collect();
            Tensor::cat(items, 0)
        } else {
            self.quant(ctx.encoder(&self.encoder, x))
        };
        ctx.see_t(&moments);
        (Posterior::from_moments(moments), ctx.trace(plan.per_item))
    }

    /// [`Self::decode`] through the banded executor (whatever the plan), with what it did.
    pub fn decode_traced(&self, z: Tensor<4>) -> (Tensor<4>, BandedRun) {
        let plan = self.decode_plan(z.dims());
        let ctx = Ctx::new(self.max_buffer_bytes);
        ctx.see_t(&z);
        let out = if plan.per_item {
            let items: Vec<Tensor<4>> =
                (0..z.dims()[0]).map(|i| ctx.decoder(&self.decoder, self.post_quant(z.clone().narrow(0, i, 1)))).collect();
            Tensor::cat(items, 0)
        } else {
            ctx.decoder(&self.decoder, self.post_quant(z))
        };
        ctx.see_t(&out);
        (out, ctx.trace(plan.per_item))
    }

    fn quant(&self, moments: Tensor<4>) -> Tensor<4> {
        match &self.quant_conv {
            Some(c) => conv_forward(c, moments),
            None => moments,
        }
    }

    fn post_quant(&self, z: Tensor<4>) -> Tensor<4> {
        match &self.post_quant_conv {
            Some(c) => conv_forward(c, z),
            None => z,
        }
    }
}
