//! Images in and out: decoding any format the `image` crate reads, the reference's resize
//! (bicubic, to any size; a centre crop for `fit: cover`) and scaling to [-1, 1], and the result back to PNG.

use burn::tensor::{Device, Tensor, TensorData};

use super::options::Size;
use crate::{Error, Result};

/// An RGB image, 8 bits per channel, row-major HWC.
#[derive(Clone, Debug, PartialEq)]
pub struct RgbImage {
    pub width: usize,
    pub height: usize,
    pub pixels: Vec<u8>,
}

impl RgbImage {
    /// Wraps already-decoded pixels; the length must be `width·height·3`.
    pub fn new(width: usize, height: usize, pixels: Vec<u8>) -> Result<Self> {
        if width == 0 || height == 0 || pixels.len() != width * height * 3 {
            return Err(Error::Image {
                name: "pixels".into(),
                reason: format!("{} bytes do not make a {width}×{height} RGB image", pixels.len()),
            });
        }
        Ok(Self { width, height, pixels })
    }

    /// Decodes PNG, JPEG, WebP, BMP or GIF bytes; `name` appears in errors.
    pub fn decode(bytes: &[u8], name: &str) -> Result<Self> {
        let img = image::load_from_memory(bytes).map_err(|e| Error::Image {
            name: name.to_string(),
            reason: match e {
                image::ImageError::Unsupported(_) => "not an image in a supported format (PNG, JPEG, WebP, BMP, GIF)".into(),
                other => format!("cannot decode: {other}"),
            },
        })?;
        let rgb = img.to_rgb8();
        let (w, h) = rgb.dimensions();
        Ok(Self { width: w as usize, height: h as usize, pixels: rgb.into_raw() })
    }

    /// The width and height of encoded image bytes, from the header alone.
    pub fn dimensions(bytes: &[u8], name: &str) -> Result<(usize, usize)> {
        let reader = image::ImageReader::new(std::io::Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| Error::Image { name: name.to_string(), reason: e.to_string() })?;
        let (w, h) =
            reader.into_dimensions().map_err(|e| Error::Image { name: name.to_string(), reason: format!("cannot read its size: {e}") })?;
        Ok((w as usize, h as usize))
    }

    /// Resized to `size` with a bicubic filter (the reference uses PIL's bicubic), whatever
    /// the shape.
    pub fn resize(&self, size: Size) -> Self {
        if self.width == size.width && self.height == size.height {
            return self.clone();
        }
        let out = image::imageops::resize(&self.as_image(), size.width as u32, size.height as u32, image::imageops::FilterType::CatmullRom);
        Self { width: size.width, height: size.height, pixels: out.into_raw() }
    }

    /// The centre of the image with `size`'s shape (as large as fits), resized to `size`.
    pub fn cover(&self, size: Size) -> Self {
        let (w, h) = (self.width as u64, self.height as u64);
        let (tw, th) = (size.width as u64, size.height as u64);
        // Integer arithmetic: the crop is the same on every platform.
        let (cw, ch) = if w * th > h * tw { (((h * tw + th / 2) / th).clamp(1, w), h) } else { (w, ((w * th + tw / 2) / tw).clamp(1, h)) };
        if (cw, ch) == (w, h) {
            return self.resize(size);
        }
        let (x0, y0) = ((w - cw) / 2, (h - ch) / 2);
        let crop = image::imageops::crop_imm(&self.as_image(), x0 as u32, y0 as u32, cw as u32, ch as u32).to_image();
        Self { width: cw as usize, height: ch as usize, pixels: crop.into_raw() }.resize(size)
    }

    fn as_image(&self) -> image::RgbImage {
        image::RgbImage::from_raw(self.width as u32, self.height as u32, self.pixels.clone()).expect("length checked on construction")
    }

    /// `[1, 3, H, W]` in [-1, 1], as diffusers' `VaeImageProcessor.preprocess` makes it.
    pub fn to_tensor(&self, device: &Device) -> Tensor<4> {
        let (h, w) = (self.height, self.width);
        let mut chw = vec![0f32; 3 * h * w];
        for (i, px) in self.pixels.chunks_exact(3).enumerate() {
            for c in 0..3 {
                chw[c * h * w + i] = px[c] as f32 / 255.0 * 2.0 - 1.0;
            }
        }
        Tensor::from_data(TensorData::new(chw, [1, 3, h, w]), device)
    }

    /// PNG bytes.
    pub fn to_png(&self) -> Result<Vec<u8>> {
        self.to_png_with_text(&[])
    }

    /// PNG bytes carrying `text` as UTF-8 text chunks (iTXt: keyword, value), e.g. the run's
    /// settings, which image viewers and `exiftool` show.
    pub fn to_png_with_text(&self, text: &[(&str, String)]) -> Result<Vec<u8>> {
        let err = |e: png::EncodingError| Error::Image { name: "result".into(), reason: e.to_string() };
        let mut out = Vec::new();
        let mut encoder = png::Encoder::new(&mut out, self.width as u32, self.height as u32);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        for (keyword, value) in text {
            encoder.add_itxt_chunk(keyword.to_string(), value.clone()).map_err(err)?;
        }
        let mut writer = encoder.write_header().map_err(err)?;
        writer.write_image_data(&self.pixels).map_err(err)?;
        writer.finish().map_err(err)?;
        Ok(out)
    }
}

/// A float image `H×W×3` in [0, 1] (the stylized result before quantisation).
#[derive(Clone, Debug)]
pub struct FloatImage {
    pub width: usize,
    pub height: usize,
    pub values: Vec<f32>,
}

impl FloatImage {
    /// From a decoded `[1, 3, H, W]` tensor in [-1, 1]: `(x/2 + 0.5)` clamped to [0, 1], HWC.
    pub fn from_decoded(chw: &[f32], height: usize, width: usize) -> Self {
        let n = height * width;
        let mut values = vec![0f32; n * 3];
        for c in 0..3 {
            for i in 0..n {
                values[i * 3 + c] = (chw[c * n + i] / 2.0 + 0.5).clamp(0.0, 1.0);
            }
        }
        Self { width, height, values }
    }

    /// 8-bit, rounded as torchvision's `save_image` does (`x·255 + 0.5`, clamped).
    pub fn to_rgb8(&self) -> RgbImage {
        let pixels = self.values.iter().map(|v| (v * 255.0 + 0.5).clamp(0.0, 255.0) as u8).collect();
        RgbImage { width: self.width, height: self.height, pixels }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn png_round_trip_and_bad_bytes() {
        let img = RgbImage::new(2, 1, vec![255, 0, 0, 0, 128, 255]).unwrap();
        let back = RgbImage::decode(&img.to_png().unwrap(), "x").unwrap();
        assert_eq!(back, img);
        let err = RgbImage::decode(b"definitely not an image", "style.jpg").unwrap_err().to_string();
        assert!(err.contains("style.jpg"), "{err}");
        assert!(RgbImage::new(2, 2, vec![0; 5]).is_err());
    }

    #[test]
    fn float_image_quantises_like_torchvision() {
        let f = FloatImage::from_decoded(&[-1.0, 1.0, 0.0, 2.0, -3.0, 0.5], 1, 2);
        assert_eq!(f.values, vec![0.0, 0.5, 0.0, 1.0, 1.0, 0.75]);
        assert_eq!(f.to_rgb8().pixels, vec![0, 128, 0, 255, 255, 191]);
    }
}
