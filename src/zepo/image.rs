//! Images in and out: decoding any format the `image` crate reads, the reference's resize
//! (bicubic, to any size; a centre crop for `fit: cover`) and scaling to [-1, 1], and the result back to PNG.

use burn::tensor::{Device, Tensor, TensorData};

use super::options::Size;
use crate::{Error, Result};

/// The most pixels an input image may have: a 48-megapixel phone photo (8064×6048) fits.
/// Larger ones are refused from their header, before decoding: their pixels would cost
/// hundreds of MiB (in the browser, of wasm memory, which never shrinks).
pub const MAX_PIXELS: u64 = 50_000_000;

/// What a decoder may allocate: one RGBA8 frame of [`MAX_PIXELS`], and a margin. (A GIF
/// frame, for one, may claim more pixels than its header's screen: the decoder stops there.)
fn decode_limits() -> image::Limits {
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(4 * MAX_PIXELS + (16 << 20));
    limits
}

/// A reader of encoded bytes, its format guessed from them, under [`decode_limits`].
fn reader(bytes: &[u8]) -> std::result::Result<image::ImageReader<std::io::Cursor<&[u8]>>, String> {
    let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes)).with_guessed_format().map_err(|e| e.to_string())?;
    reader.limits(decode_limits());
    Ok(reader)
}

const UNSUPPORTED: &str = "not an image in a supported format (PNG, JPEG, WebP, BMP, GIF)";

fn decode_error(e: image::ImageError) -> String {
    match e {
        image::ImageError::Unsupported(_) => UNSUPPORTED.into(),
        image::ImageError::Limits(l) => format!("too large to decode here ({l})"),
        other => format!("damaged or incomplete: {other}"),
    }
}

/// A PNG's decoder stops once it has the pixels: a file cut in its last chunk is complete
/// only with its end chunk (IEND, with its fixed checksum).
fn png_is_complete(b: &[u8]) -> std::result::Result<(), String> {
    const IEND: [u8; 8] = [0x49, 0x45, 0x4E, 0x44, 0xAE, 0x42, 0x60, 0x82];
    if b.windows(8).rev().take(4096).any(|w| w == IEND) {
        Ok(())
    } else {
        Err(format!("damaged or incomplete: a truncated PNG ({} bytes, no end chunk)", b.len()))
    }
}

/// A WebP is a RIFF file, whose header states its length: a shorter file was cut.
fn riff_is_complete(b: &[u8]) -> std::result::Result<(), String> {
    let stated = b.get(4..8).map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]) as u64 + 8);
    match stated {
        Some(n) if n <= b.len() as u64 => Ok(()),
        Some(n) => Err(format!("damaged or incomplete: a truncated WebP ({} of its {n} bytes)", b.len())),
        None => Err("damaged: a WebP without its header".into()),
    }
}

/// A JPEG's decoder fills a truncated file's missing rows with grey, silently: a file is
/// complete only if its end-of-image marker follows its image data. The segments before the
/// first scan are walked by their lengths (an EXIF thumbnail inside APP1 has its own scan and
/// end marker); inside the scans 0xFF is always followed by 0x00 or a restart marker, so an
/// FF D9 there is the end of the image.
fn jpeg_is_complete(b: &[u8]) -> std::result::Result<(), String> {
    let truncated = || format!("damaged or incomplete: a truncated JPEG ({} bytes, no end-of-image marker after its image data)", b.len());
    let mut i = 2;
    loop {
        while i + 1 < b.len() && b[i] == 0xFF && b[i + 1] == 0xFF {
            i += 1; // fill bytes
        }
        if i + 4 > b.len() {
            return Err(truncated());
        }
        if b[i] != 0xFF {
            return Err(format!("damaged: byte {i} should start a JPEG marker"));
        }
        match b[i + 1] {
            0xDA => break,
            0xD9 => return Err("damaged: the JPEG ends before its image data".into()),
            0x01 | 0xD0..=0xD7 => i += 2,
            _ => {
                let len = u16::from_be_bytes([b[i + 2], b[i + 3]]) as usize;
                if len < 2 {
                    return Err(format!("damaged: a JPEG segment at byte {i} has length {len}"));
                }
                i += 2 + len;
            }
        }
    }
    if b[i..].windows(2).any(|w| w == [0xFF, 0xD9]) {
        Ok(())
    } else {
        Err(truncated())
    }
}

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

    /// Decodes PNG, JPEG, WebP, BMP or GIF bytes; `name` appears in errors. A damaged file
    /// (truncated, corrupt) is an error, never a partial image; one over [`MAX_PIXELS`] is
    /// refused from its header, before a pixel is decoded. The EXIF orientation is applied (a
    /// phone's portrait comes out upright). Pixel values are taken as they are stored: an
    /// embedded colour profile is not applied (sRGB is assumed, as the model was trained on).
    pub fn decode(bytes: &[u8], name: &str) -> Result<Self> {
        let bad = |reason: String| Error::Image { name: name.to_string(), reason };
        let reader = reader(bytes).map_err(bad)?;
        let Some(format) = reader.format() else { return Err(bad(UNSUPPORTED.into())) };
        match format {
            image::ImageFormat::Jpeg => jpeg_is_complete(bytes).map_err(bad)?,
            image::ImageFormat::Png => png_is_complete(bytes).map_err(bad)?,
            image::ImageFormat::WebP => riff_is_complete(bytes).map_err(bad)?,
            // A GIF ends with its trailer byte ';'.
            image::ImageFormat::Gif if bytes.last() != Some(&0x3B) => {
                return Err(bad(format!("damaged or incomplete: a truncated GIF ({} bytes, no trailer)", bytes.len())))
            }
            _ => {}
        }
        let mut decoder = reader.into_decoder().map_err(|e| bad(decode_error(e)))?;
        let (w, h) = image::ImageDecoder::dimensions(&decoder);
        if w == 0 || h == 0 {
            return Err(bad(format!("{w}×{h}: an image without pixels")));
        }
        let pixels = w as u64 * h as u64;
        if pixels > MAX_PIXELS {
            return Err(bad(format!(
                "{w}×{h} is {:.1} megapixels; at most {} are accepted (scale it down first)",
                pixels as f64 / 1e6,
                MAX_PIXELS / 1_000_000
            )));
        }
        let orientation = image::ImageDecoder::orientation(&mut decoder).unwrap_or(image::metadata::Orientation::NoTransforms);
        let mut img = image::DynamicImage::from_decoder(decoder).map_err(|e| bad(decode_error(e)))?;
        img.apply_orientation(orientation);
        let rgb = img.into_rgb8();
        let (w, h) = rgb.dimensions();
        Ok(Self { width: w as usize, height: h as usize, pixels: rgb.into_raw() })
    }

    /// The width and height of encoded image bytes, from the header alone.
    pub fn dimensions(bytes: &[u8], name: &str) -> Result<(usize, usize)> {
        let bad = |reason: String| Error::Image { name: name.to_string(), reason };
        let (w, h) = reader(bytes).map_err(bad)?.into_dimensions().map_err(|e| bad(decode_error(e)))?;
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

    /// A 96×64 test picture (noise over a gradient, so that every format has real data).
    fn picture() -> image::RgbImage {
        image::RgbImage::from_fn(96, 64, |x, y| {
            let n = (x * 7919 + y * 104729) % 61;
            image::Rgb([(x * 2 + n) as u8, (y * 3 + n) as u8, ((x + y) as u8).wrapping_mul(3)])
        })
    }

    fn encode(format: image::ImageFormat) -> Vec<u8> {
        let mut out = std::io::Cursor::new(Vec::new());
        image::DynamicImage::ImageRgb8(picture()).write_to(&mut out, format).unwrap();
        out.into_inner()
    }

    #[test]
    fn damaged_images_are_refused_by_name() {
        use image::ImageFormat::*;
        for format in [Png, Jpeg, WebP, Bmp, Gif] {
            let bytes = encode(format);
            let whole = RgbImage::decode(&bytes, "ok").unwrap();
            assert_eq!((whole.width, whole.height), (96, 64), "{format:?}");
            for keep in [bytes.len() / 4, bytes.len() / 2, bytes.len() * 9 / 10, bytes.len() - 1] {
                let err = RgbImage::decode(&bytes[..keep], "portrait.x").err().map(|e| e.to_string());
                let err = err.unwrap_or_else(|| panic!("{format:?} truncated to {keep} of {} bytes was accepted", bytes.len()));
                assert!(err.contains("portrait.x"), "{err}");
            }
        }
        // A flipped byte in a PNG's image data fails its checksum.
        let mut png = encode(Png);
        let at = png.len() / 2;
        png[at] ^= 0x55;
        let err = RgbImage::decode(&png, "style.png").unwrap_err().to_string();
        assert!(err.contains("style.png") && err.contains("damaged"), "{err}");
    }

    /// A JPEG with an EXIF thumbnail (its own complete JPEG in APP1) and a truncated main
    /// image is refused: the check walks the segments, it does not search for any end marker.
    #[test]
    fn a_truncated_jpeg_with_a_complete_thumbnail_is_refused() {
        let jpeg = encode(image::ImageFormat::Jpeg);
        let mut app1 = b"Exif\0\0".to_vec();
        app1.extend_from_slice(&jpeg); // not a valid TIFF, but a segment holding SOS..EOI bytes
        let mut file = jpeg[..2].to_vec();
        file.extend_from_slice(&[0xFF, 0xE1]);
        file.extend_from_slice(&((app1.len() + 2) as u16).to_be_bytes());
        file.extend_from_slice(&app1);
        file.extend_from_slice(&jpeg[2..jpeg.len() / 2]);
        let err = RgbImage::decode(&file, "photo.jpg").unwrap_err().to_string();
        assert!(err.contains("truncated JPEG"), "{err}");
    }

    fn exif_orientation(value: u16) -> Vec<u8> {
        let mut exif = b"Exif\0\0II*\0".to_vec();
        exif.extend_from_slice(&8u32.to_le_bytes());
        exif.extend_from_slice(&1u16.to_le_bytes());
        for v in [0x0112u16, 3] {
            exif.extend_from_slice(&v.to_le_bytes());
        }
        exif.extend_from_slice(&1u32.to_le_bytes());
        exif.extend_from_slice(&value.to_le_bytes());
        exif.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        let mut seg = vec![0xFF, 0xE1];
        seg.extend_from_slice(&((exif.len() + 2) as u16).to_be_bytes());
        seg.extend_from_slice(&exif);
        seg
    }

    #[test]
    fn the_exif_orientation_is_applied() {
        let jpeg = encode(image::ImageFormat::Jpeg);
        let plain = RgbImage::decode(&jpeg, "p").unwrap();
        let mut rotated = jpeg[..2].to_vec();
        rotated.extend_from_slice(&exif_orientation(6)); // "rotate 90° clockwise to view"
        rotated.extend_from_slice(&jpeg[2..]);
        let upright = RgbImage::decode(&rotated, "phone.jpg").unwrap();
        assert_eq!((upright.width, upright.height), (64, 96), "a landscape sensor image shown as a portrait");
        // Its top-left pixel is the stored image's bottom-left.
        let px = |img: &RgbImage, x: usize, y: usize| img.pixels[(y * img.width + x) * 3..][..3].to_vec();
        assert_eq!(px(&upright, 0, 0), px(&plain, 0, 63));
    }

    fn crc32(data: &[u8]) -> u32 {
        let mut crc = 0xFFFF_FFFFu32;
        for &b in data {
            crc ^= b as u32;
            for _ in 0..8 {
                crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
            }
        }
        !crc
    }

    #[test]
    fn an_image_over_the_pixel_limit_is_refused_before_decoding() {
        // A PNG whose header says 10000×6000 (60 MP) but that holds a few bytes.
        let mut png = encode(image::ImageFormat::Png);
        png[16..20].copy_from_slice(&10000u32.to_be_bytes());
        png[20..24].copy_from_slice(&6000u32.to_be_bytes());
        let crc = crc32(&png[12..29]);
        png[29..33].copy_from_slice(&crc.to_be_bytes());
        let t = std::time::Instant::now();
        let err = RgbImage::decode(&png, "huge.png").unwrap_err().to_string();
        assert!(err.contains("huge.png") && err.contains("60.0 megapixels") && err.contains("at most 50"), "{err}");
        assert!(t.elapsed().as_millis() < 500, "refused from the header");
    }

    #[test]
    fn float_image_quantises_like_torchvision() {
        let f = FloatImage::from_decoded(&[-1.0, 1.0, 0.0, 2.0, -3.0, 0.5], 1, 2);
        assert_eq!(f.values, vec![0.0, 0.5, 0.0, 1.0, 1.0, 0.75]);
        assert_eq!(f.to_rgb8().pixels, vec![0, 128, 0, 255, 255, 191]);
    }
}
