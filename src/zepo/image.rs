//! Images in and out: decoding any format the `image` crate reads (to sRGB: embedded colour
//! profiles applied, transparency composited onto [`BACKGROUND`]), the reference's resize
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

type Reader<'a> = image::ImageReader<std::io::Cursor<&'a [u8]>>;

/// A reader of encoded bytes, its format guessed from them, under [`decode_limits`]; bytes in
/// a format that is not supported are refused, named where their magic bytes tell the format.
fn reader(bytes: &[u8]) -> std::result::Result<(Reader<'_>, image::ImageFormat), String> {
    let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes)).with_guessed_format().map_err(|e| e.to_string())?;
    reader.limits(decode_limits());
    use image::ImageFormat as F;
    match reader.format() {
        Some(f @ (F::Png | F::Jpeg | F::WebP | F::Bmp | F::Gif)) => Ok((reader, f)),
        other => Err(unsupported(bytes, other)),
    }
}

const SUPPORTED: &str = "PNG, JPEG, WebP, BMP, GIF";
const UNSUPPORTED: &str = "not an image in a supported format (PNG, JPEG, WebP, BMP, GIF)";

/// Why bytes in an unsupported format are refused: their format, where their magic bytes tell it
/// (the `image` crate's guess, `guessed`, knows some; phones' and cameras' formats are sniffed
/// here), and what is supported.
fn unsupported(bytes: &[u8], guessed: Option<image::ImageFormat>) -> String {
    use image::ImageFormat as F;
    let named = sniff_format(bytes).or(match guessed {
        Some(F::Tiff) => Some("a TIFF image"),
        Some(F::Avif) => Some("an AVIF image"),
        Some(F::Ico) => Some("an ICO icon"),
        Some(F::Hdr) => Some("a Radiance HDR image"),
        Some(F::OpenExr) => Some("an OpenEXR image"),
        Some(F::Qoi) => Some("a QOI image"),
        Some(F::Pnm) => Some("a PNM image (PBM/PGM/PPM/PAM)"),
        Some(F::Dds) => Some("a DDS texture"),
        Some(F::Farbfeld) => Some("a farbfeld image"),
        Some(F::Tga) => Some("a TGA image"),
        _ => None,
    });
    match named {
        Some(format) => format!("{format}: not a supported format (supported: {SUPPORTED}); convert or export it as JPEG or PNG first"),
        None => UNSUPPORTED.into(),
    }
}

/// The format of bytes that the `image` crate does not name, or names too vaguely, from their
/// magic bytes: ISO base media files (`ftyp` box: HEIC/HEIF, AVIF, Canon CR3, MP4/QuickTime
/// video), TIFF (and the camera raw files built on it), JPEG XL, JPEG 2000, PSD, PDF, SVG.
fn sniff_format(b: &[u8]) -> Option<&'static str> {
    if b.get(4..8) == Some(b"ftyp") {
        // The box: size (u32), "ftyp", the major brand, a minor version, compatible brands.
        let size = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
        let end = size.clamp(12, 4096).min(b.len());
        let brands: Vec<&[u8]> =
            std::iter::once(&b[8..end.clamp(8, 12)]).chain((16..end).step_by(4).map(|i| &b[i..(i + 4).min(end)])).collect();
        let any = |names: &[&[u8; 4]]| brands.iter().any(|brand| names.iter().any(|n| brand.starts_with(&n[..])));
        return Some(if any(&[b"avif", b"avis"]) {
            "an AVIF image"
        } else if any(&[b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs"]) {
            "a HEIC image (HEIF, as iPhones save photos)"
        } else if any(&[b"mif1", b"msf1", b"miaf"]) {
            "a HEIF image"
        } else if any(&[b"crx "]) {
            "a Canon CR3 camera raw file"
        } else {
            "an MP4/QuickTime file (a video?)"
        });
    }
    let starts = |magic: &[u8]| b.starts_with(magic);
    if starts(b"II*\0") || starts(b"MM\0*") || starts(b"II+\0") || starts(b"MM\0+") {
        return Some("a TIFF image (or a camera raw file built on TIFF, such as DNG)");
    }
    if starts(&[0xFF, 0x0A]) || starts(b"\0\0\0\x0CJXL \r\n\x87\n") {
        return Some("a JPEG XL image");
    }
    if starts(b"\0\0\0\x0CjP  \r\n\x87\n") || starts(&[0xFF, 0x4F, 0xFF, 0x51]) {
        return Some("a JPEG 2000 image");
    }
    if starts(b"8BPS") {
        return Some("a Photoshop document (PSD)");
    }
    if starts(b"%PDF") {
        return Some("a PDF document");
    }
    let head = &b[..b.len().min(1024)];
    let text = head.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(head).trim_ascii_start();
    if text.starts_with(b"<") && head.windows(4).any(|w| w == b"<svg") {
        return Some("an SVG (vector) image");
    }
    None
}

fn decode_error(e: image::ImageError) -> String {
    match e {
        image::ImageError::Unsupported(_) => UNSUPPORTED.into(),
        image::ImageError::Limits(l) => format!("too large to decode here ({l})"),
        other => format!("damaged or incomplete: {other}"),
    }
}

/// The colour that transparent pixels are composited onto: white, `(255, 255, 255)` (see
/// [`composite`]).
pub const BACKGROUND: [u8; 3] = [255, 255, 255];

/// One channel of a pixel with alpha composited onto a background channel, in 8-bit sRGB, as a
/// canvas filled with the background shows the image drawn over it:
/// `out = round(c·a/255 + bg·(255−a)/255)` (`c`, `a`: the stored, not premultiplied, colour and
/// alpha), computed exactly in integers as `(c·a + bg·(255−a) + 127) / 255` (integer division;
/// the exact value is never a half, 255 being odd). Alpha 0 gives the background whatever colour
/// is stored under it, alpha 255 the colour.
pub fn composite(c: u8, a: u8, bg: u8) -> u8 {
    let (c, a, bg) = (c as u32, a as u32, bg as u32);
    ((c * a + bg * (255 - a) + 127) / 255) as u8
}

/// RGBA8 pixels composited onto [`BACKGROUND`], to RGB8, in place (the buffer is reused).
fn flatten(mut px: Vec<u8>) -> Vec<u8> {
    let n = px.len() / 4;
    for i in 0..n {
        let [r, g, b, a] = [px[4 * i], px[4 * i + 1], px[4 * i + 2], px[4 * i + 3]];
        // Pixel i is written to bytes 3i..3i+3, before any pixel after it is read.
        px[3 * i] = composite(r, a, BACKGROUND[0]);
        px[3 * i + 1] = composite(g, a, BACKGROUND[1]);
        px[3 * i + 2] = composite(b, a, BACKGROUND[2]);
    }
    px.truncate(3 * n);
    px.shrink_to_fit();
    px
}

/// The conversion to sRGB of pixels described by an embedded ICC profile `icc`, for 8-bit RGB
/// (`qcms::DataType::RGB8`) or RGBA (`RGBA8`, alpha kept) pixels. `None` where the profile is
/// not one that is applied: damaged or unparseable, not an RGB profile (gray, CMYK, Lab…), or
/// one without a matrix and curves (LUT-only) — [`RgbImage::decode`] then takes the pixels as sRGB.
///
/// Only the profile's matrix and tone curves are read (qcms's `curves_only`): any valid RGB
/// matrix/TRC profile — Display P3, Adobe RGB (1998), ProPhoto, sRGB itself — as phones and
/// cameras embed them; LUT tags (A2B0/B2A0, mAB) are not. The intent is relative colorimetric:
/// for a matrix/TRC profile it is the one transform the profile defines (perceptual rendering
/// needs the perceptual LUTs such profiles lack; littleCMS, too, uses the same matrix for both),
/// and it maps the source's white to sRGB's white; colours outside sRGB are clipped channel by
/// channel, as browsers show them. (qcms builds this transform whatever the intent argument.)
/// The sRGB profile is not precached for output: qcms's precached path has SIMD variants on x86
/// and ARM that round differently from its scalar one, while the uncached path is the same
/// scalar code natively and in wasm.
fn to_srgb(icc: &[u8], ty: qcms::DataType) -> Option<qcms::Transform> {
    // The header's colour space (bytes 16..20): qcms parses gray and CMYK profiles too.
    if icc.len() < 132 || &icc[16..20] != b"RGB " {
        return None;
    }
    let input = qcms::Profile::new_from_slice(icc, true)?;
    qcms::Transform::new(&input, &qcms::Profile::new_sRGB(), ty, qcms::Intent::RelativeColorimetric)
}

/// Converts 8-bit RGB pixels (`rgb`: 3 bytes a pixel; a partial pixel at the end is left alone)
/// described by the ICC profile `icc` to sRGB in place, as [`RgbImage::decode`] does for an
/// embedded profile. Returns whether it did: `false`, pixels untouched, for a profile that is
/// not applied (damaged, not RGB, LUT-only: see [`RgbImage::decode`]).
pub fn profile_to_srgb(icc: &[u8], rgb: &mut [u8]) -> bool {
    let whole = rgb.len() / 3 * 3;
    match to_srgb(icc, qcms::DataType::RGB8) {
        Some(t) => {
            t.apply(&mut rgb[..whole]);
            true
        }
        None => false,
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

    /// Decodes PNG, JPEG, WebP, BMP or GIF bytes to 8-bit sRGB; `name` appears in errors.
    ///
    /// - **Damage, size.** A damaged file (truncated, corrupt) is an error, never a partial
    ///   image; one over [`MAX_PIXELS`] is refused from its header, before a pixel is decoded.
    /// - **Other formats** are refused, the format named where its magic bytes tell it (HEIC/HEIF,
    ///   AVIF, TIFF, JPEG XL, PSD, …) with the formats that are supported.
    /// - **Orientation.** The EXIF orientation is applied (a phone's portrait comes out upright).
    /// - **Colour.** An embedded ICC profile (JPEG APP2, PNG iCCP, WebP ICCP, GIF) that is a
    ///   valid RGB matrix/TRC profile — Display P3 as iPhones tag photos, Adobe RGB (1998),
    ///   ProPhoto… — is applied: the pixels are converted to sRGB (the model was trained on sRGB)
    ///   by qcms, relative colorimetric, out-of-gamut colours clipped (see [`profile_to_srgb`]).
    ///   An image without a profile is taken as sRGB, its pixels as stored; one tagged sRGB
    ///   comes out within 1/255 of them. A profile that cannot be applied — damaged or
    ///   unparseable, not RGB (CMYK, gray or Lab on a colour image), LUT-only — is **ignored**
    ///   and the pixels taken as sRGB, never an error: so do browsers, so the model sees what the
    ///   page shows, and a photo that every viewer opens is not refused over its metadata.
    ///   Grayscale images are taken as sRGB gray whatever their profile. PNG's other colour
    ///   chunks (gAMA, cHRM, sRGB, cICP) are not read.
    /// - **Transparency.** An image with alpha (PNG, WebP, GIF, BMP) is composited, after its
    ///   colour conversion, onto [`BACKGROUND`] (white) in 8-bit sRGB: each channel
    ///   `out = round(c·a/255 + bg·(255−a)/255)`, exactly `(c·a + bg·(255−a) + 127) / 255` in
    ///   integers ([`composite`]), so a fully transparent pixel is white whatever colour it stores.
    pub fn decode(bytes: &[u8], name: &str) -> Result<Self> {
        let bad = |reason: String| Error::Image { name: name.to_string(), reason };
        let (reader, format) = reader(bytes).map_err(bad)?;
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
        // A profile that cannot be read is no profile (as one that cannot be applied, below).
        let icc = image::ImageDecoder::icc_profile(&mut decoder).ok().flatten();
        let colour = image::ImageDecoder::color_type(&decoder).has_color();
        let mut img = image::DynamicImage::from_decoder(decoder).map_err(|e| bad(decode_error(e)))?;
        img.apply_orientation(orientation);
        let icc = icc.filter(|_| colour);
        let (w, h) = (img.width() as usize, img.height() as usize);
        let pixels = if img.color().has_alpha() {
            // 16-bit gray+alpha to 8 bits first: its frame and an RGBA8 copy together would
            // exceed what the opaque path holds at most (the frame and an RGB8 copy).
            let img = match img {
                image::DynamicImage::ImageLumaA16(_) => image::DynamicImage::ImageLumaA8(img.into_luma_alpha8()),
                other => other,
            };
            let mut rgba = img.into_rgba8().into_raw();
            if let Some(t) = icc.and_then(|icc| to_srgb(&icc, qcms::DataType::RGBA8)) {
                t.apply(&mut rgba);
            }
            flatten(rgba)
        } else {
            let mut rgb = img.into_rgb8().into_raw();
            if let Some(icc) = icc {
                profile_to_srgb(&icc, &mut rgb);
            }
            rgb
        };
        Ok(Self { width: w, height: h, pixels })
    }

    /// The width and height of encoded image bytes, from the header alone.
    pub fn dimensions(bytes: &[u8], name: &str) -> Result<(usize, usize)> {
        let bad = |reason: String| Error::Image { name: name.to_string(), reason };
        let (w, h) = reader(bytes).map_err(bad)?.0.into_dimensions().map_err(|e| bad(decode_error(e)))?;
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

    // --- Colour profiles, transparency, unsupported formats (fixtures: tests/fixtures/color,
    // made by its make.py; the references are littleCMS's, through Pillow).

    fn fixture(name: &str) -> Vec<u8> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/color").join(name);
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// A PNG's pixels, as the `image` crate decodes them (RGB8).
    fn png_rgb(bytes: &[u8]) -> Vec<u8> {
        image::load_from_memory_with_format(bytes, image::ImageFormat::Png).unwrap().into_rgb8().into_raw()
    }

    /// The largest difference between two equally long byte images, and where it is.
    fn max_diff(a: &[u8], b: &[u8]) -> (u8, usize) {
        assert_eq!(a.len(), b.len());
        a.iter().zip(b).enumerate().map(|(i, (x, y))| (x.abs_diff(*y), i)).max().unwrap_or((0, 0))
    }

    /// The 64×64 lattice of make.py: 16 levels a channel, every combination once.
    fn lattice() -> image::RgbImage {
        image::RgbImage::from_fn(64, 64, |x, y| {
            image::Rgb([(17 * (x % 16)) as u8, (17 * (y % 16)) as u8, (17 * (4 * (y / 16) + x / 16)) as u8])
        })
    }

    /// 256×256 pixels, every value of every channel, 65536 colours.
    fn ramps() -> image::RgbImage {
        image::RgbImage::from_fn(256, 256, |x, y| image::Rgb([x as u8, y as u8, ((x * 7 + y * 13) % 256) as u8]))
    }

    /// Encoded with `format`, tagged with `icc` where given.
    fn encode_tagged(img: &image::DynamicImage, format: image::ImageFormat, icc: Option<&[u8]>) -> Vec<u8> {
        use image::ImageEncoder;
        let mut out = Vec::new();
        let (w, h, ty) = (img.width(), img.height(), img.color().into());
        match format {
            image::ImageFormat::Png => {
                let mut e = image::codecs::png::PngEncoder::new(&mut out);
                if let Some(icc) = icc {
                    e.set_icc_profile(icc.to_vec()).unwrap();
                }
                e.write_image(img.as_bytes(), w, h, ty).unwrap();
            }
            image::ImageFormat::Jpeg => {
                let mut e = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 95);
                if let Some(icc) = icc {
                    e.set_icc_profile(icc.to_vec()).unwrap();
                }
                e.write_image(img.as_bytes(), w, h, ty).unwrap();
            }
            image::ImageFormat::WebP => {
                let mut e = image::codecs::webp::WebPEncoder::new_lossless(&mut out);
                if let Some(icc) = icc {
                    e.set_icc_profile(icc.to_vec()).unwrap();
                }
                e.write_image(img.as_bytes(), w, h, ty).unwrap();
            }
            other => panic!("{other:?}"),
        }
        out
    }

    const PROFILES: [&str; 2] = ["display-p3", "adobe-rgb-1998"];

    /// Display-P3- and Adobe-RGB-tagged JPEGs (written by Pillow) decode to littleCMS's sRGB
    /// conversion of the same pixels within 1/255. The reference converts the pixels that
    /// libjpeg-turbo decodes, and the engine's JPEG decoder (zune-jpeg) differs from it by a
    /// level or two in a few pixels: pixels are compared where both decoders agree (3025 of
    /// 3072). The PNG test below covers the whole colour cube, from exact inputs.
    #[test]
    fn tagged_jpegs_match_littlecms() {
        let libjpeg = png_rgb(&fixture("photo.decoded.png"));
        for p in PROFILES {
            let jpeg = fixture(&format!("photo.{p}.jpg"));
            let raw = image::load_from_memory(&jpeg).unwrap().into_rgb8().into_raw();
            let img = RgbImage::decode(&jpeg, "photo.jpg").unwrap();
            assert_eq!((img.width, img.height), (64, 48));
            let reference = png_rgb(&fixture(&format!("photo.{p}.srgb.png")));
            let (mut compared, mut worst) = (0, 0);
            for i in (0..raw.len()).step_by(3) {
                if raw[i..i + 3] == libjpeg[i..i + 3] {
                    compared += 1;
                    worst = worst.max(max_diff(&img.pixels[i..i + 3], &reference[i..i + 3]).0);
                }
            }
            println!("{p} JPEG: max difference from littleCMS {worst}/255 over the {compared} of 3072 pixels both JPEG decoders agree on");
            assert!(compared > 3072 * 3 / 4, "{p}: the decoders agree on {compared} pixels");
            assert!(worst <= 1, "{p}: {worst}/255 from littleCMS");
            assert!(max_diff(&img.pixels, &raw).0 >= 20, "{p}: the profile was applied");
        }
    }

    /// Every combination of 16 levels a channel (out-of-gamut colours included), tagged PNGs
    /// against littleCMS: within 1/255.
    #[test]
    fn tagged_pngs_match_littlecms_over_the_colour_cube() {
        let lattice = image::DynamicImage::ImageRgb8(lattice());
        for p in PROFILES {
            let png = encode_tagged(&lattice, image::ImageFormat::Png, Some(&fixture(&format!("{p}.icc"))));
            let img = RgbImage::decode(&png, "lattice.png").unwrap();
            let (d, at) = max_diff(&img.pixels, &png_rgb(&fixture(&format!("lattice.{p}.srgb.png"))));
            println!("{p} lattice: max difference from littleCMS {d}/255 (byte {at})");
            assert!(d <= 1, "{p}: {d}/255 from littleCMS at byte {at}");
        }
        // The WebP decoder passes its profile on too.
        let icc = fixture("display-p3.icc");
        let webp = encode_tagged(&lattice, image::ImageFormat::WebP, Some(&icc));
        let png = encode_tagged(&lattice, image::ImageFormat::Png, Some(&icc));
        assert_eq!(RgbImage::decode(&webp, "w").unwrap(), RgbImage::decode(&png, "p").unwrap());
    }

    /// An sRGB profile (v2 with 1024-entry curves, as cameras embed; littleCMS's v4 one) leaves
    /// every value of every channel within 1/255.
    #[test]
    fn srgb_tagged_images_are_unchanged_within_one_level() {
        let ramps = image::DynamicImage::ImageRgb8(ramps());
        for p in ["srgb-v2.icc", "srgb-v4-lcms.icc"] {
            let png = encode_tagged(&ramps, image::ImageFormat::Png, Some(&fixture(p)));
            let img = RgbImage::decode(&png, "srgb.png").unwrap();
            let (d, at) = max_diff(&img.pixels, ramps.as_bytes());
            let changed = img.pixels.iter().zip(ramps.as_bytes()).filter(|(a, b)| a != b).count();
            println!("{p}: max difference {d}/255 (byte {at}), {changed} of {} bytes changed", img.pixels.len());
            assert!(d <= 1, "{p}: {d}/255 at byte {at}");
        }
    }

    /// An image without a profile is decoded exactly as the `image` crate decodes it (as before
    /// colour management).
    #[test]
    fn untagged_images_decode_exactly_as_before() {
        for format in [image::ImageFormat::Jpeg, image::ImageFormat::Png, image::ImageFormat::WebP] {
            let bytes = encode_tagged(&image::DynamicImage::ImageRgb8(picture()), format, None);
            let expected = image::load_from_memory(&bytes).unwrap().into_rgb8().into_raw();
            assert_eq!(RgbImage::decode(&bytes, "plain").unwrap().pixels, expected, "{format:?}");
        }
        // The P3 photo with its profile segment (APP2 "ICC_PROFILE") taken out: the pixels as
        // stored, which the tagged file holds too.
        let tagged = fixture("photo.display-p3.jpg");
        let (mut plain, mut i) = (tagged[..2].to_vec(), 2);
        while tagged[i + 1] != 0xDA {
            let end = i + 2 + u16::from_be_bytes([tagged[i + 2], tagged[i + 3]]) as usize;
            if !(tagged[i + 1] == 0xE2 && tagged[i + 4..].starts_with(b"ICC_PROFILE\0")) {
                plain.extend_from_slice(&tagged[i..end]);
            }
            i = end;
        }
        plain.extend_from_slice(&tagged[i..]);
        assert!(plain.len() + 500 < tagged.len(), "the profile was taken out");
        let stored = image::load_from_memory(&tagged).unwrap().into_rgb8().into_raw();
        assert_eq!(RgbImage::decode(&plain, "plain.jpg").unwrap().pixels, stored);
    }

    /// Profiles that cannot be applied are ignored (sRGB assumed: the pixels as stored), never
    /// an error, never a panic: damaged, truncated, garbage, CMYK or gray on a colour image.
    #[test]
    fn an_unusable_profile_is_ignored() {
        let p3 = fixture("display-p3.icc");
        let with_space = |space: &[u8; 4]| {
            let mut p = p3.clone();
            p[16..20].copy_from_slice(space);
            p
        };
        let mut bad_size = p3.clone();
        bad_size[0..4].copy_from_slice(&(p3.len() as u32 + 100).to_be_bytes());
        let mut bad_tag_table = p3.clone();
        bad_tag_table[128..132].copy_from_slice(&1000u32.to_be_bytes());
        let mut no_matrix = p3.clone();
        no_matrix[132..136].copy_from_slice(b"zzzz"); // the first tag (desc)…
        for i in (132..p3.len().min(132 + 12 * 10)).step_by(12) {
            if &no_matrix[i..i + 4] == b"rXYZ" {
                no_matrix[i..i + 4].copy_from_slice(b"xXYZ"); // …and the red colorant renamed
            }
        }
        let garbage: Vec<u8> = (0..600u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("truncated", p3[..200].to_vec()),
            ("empty", Vec::new()),
            ("garbage", garbage),
            ("size beyond its bytes", bad_size),
            ("tag table beyond its bytes", bad_tag_table),
            ("no red colorant", no_matrix),
            ("CMYK", with_space(b"CMYK")),
            ("gray on colour", with_space(b"GRAY")),
            ("Lab", with_space(b"Lab ")),
        ];
        let picture = image::DynamicImage::ImageRgb8(picture());
        let rgba = image::DynamicImage::ImageRgba8(image::RgbaImage::from_fn(96, 64, |x, y| {
            let p = picture.as_rgb8().unwrap().get_pixel(x, y).0;
            image::Rgba([p[0], p[1], p[2], (x * 2 + y) as u8])
        }));
        for (what, icc) in &cases {
            let mut px = picture.as_bytes().to_vec();
            assert!(!profile_to_srgb(icc, &mut px), "{what}");
            assert_eq!(px, picture.as_bytes(), "{what}");
            for (img, format) in
                [(&picture, image::ImageFormat::Jpeg), (&picture, image::ImageFormat::Png), (&rgba, image::ImageFormat::Png)]
            {
                if icc.is_empty() && format == image::ImageFormat::Png {
                    continue; // PNG's encoder refuses an empty profile
                }
                let tagged = encode_tagged(img, format, Some(icc));
                let plain = encode_tagged(img, format, None);
                let got = RgbImage::decode(&tagged, "photo").unwrap_or_else(|e| panic!("{what}, {format:?}: {e}"));
                assert_eq!(got, RgbImage::decode(&plain, "photo").unwrap(), "{what}, {format:?}: taken as sRGB");
            }
        }
        // Every truncation and every flipped byte of a real profile: no panic (applied or not).
        for n in 0..p3.len() {
            profile_to_srgb(&p3[..n], &mut [10, 200, 30]);
        }
        for i in 0..p3.len() {
            for bit in [0x01, 0x80, 0xFF] {
                let mut p = p3.clone();
                p[i] ^= bit;
                profile_to_srgb(&p, &mut [10, 200, 30, 250, 0, 128]);
            }
        }
    }

    /// A grayscale image is taken as sRGB gray whatever its profile.
    #[test]
    fn grayscale_images_are_taken_as_srgb_gray() {
        let gray = image::DynamicImage::ImageLuma8(image::GrayImage::from_fn(32, 16, |x, y| image::Luma([(x * 8 + y) as u8])));
        let mut gray_profile = fixture("srgb-v2.icc");
        gray_profile[16..20].copy_from_slice(b"GRAY");
        for format in [image::ImageFormat::Jpeg, image::ImageFormat::Png] {
            for icc in [fixture("display-p3.icc"), gray_profile.clone()] {
                let tagged = RgbImage::decode(&encode_tagged(&gray, format, Some(&icc)), "g").unwrap();
                assert_eq!(tagged, RgbImage::decode(&encode_tagged(&gray, format, None), "g").unwrap(), "{format:?}");
                assert!(tagged.pixels.chunks(3).all(|p| p[0] == p[1] && p[1] == p[2]));
            }
        }
    }

    #[test]
    fn the_composite_formula() {
        assert_eq!(BACKGROUND, [255, 255, 255]);
        // round(c·a/255 + bg·(255−a)/255)
        assert_eq!(composite(0, 128, 255), 127); // 127.0
        assert_eq!(composite(100, 200, 255), 133); // 78.43 + 55
        assert_eq!(composite(0, 1, 255), 254); // 254.0
        assert_eq!(composite(255, 0, 0), 0);
        for c in 0..=255u8 {
            assert_eq!(composite(c, 255, 255), c);
            assert_eq!(composite(255, c, 0), c); // white over black: the alpha
            for a in 0..=255u8 {
                for bg in [0u8, 255, 77] {
                    let exact = (c as f64 * a as f64 + bg as f64 * (255 - a) as f64) / 255.0;
                    assert_eq!(composite(c, a, bg), exact.round() as u8, "{c} {a} {bg}");
                }
            }
        }
    }

    /// A portrait with its background removed: partially transparent pixels are composited onto
    /// white exactly as stated; fully transparent ones are white whatever they store (pure red
    /// here).
    #[test]
    fn transparency_is_composited_onto_white() {
        let png = fixture("transparent.png");
        let rgba = image::load_from_memory(&png).unwrap().into_rgba8();
        let expected: Vec<u8> = rgba.pixels().flat_map(|p| (0..3).map(move |c| composite(p[c], p[3], BACKGROUND[c]))).collect();
        let img = RgbImage::decode(&png, "cutout.png").unwrap();
        assert_eq!(img.pixels, expected);
        assert_eq!(rgba.get_pixel(0, 0).0, [255, 0, 0, 0], "garbage under a transparent pixel");
        assert_eq!(img.pixels[..3], [255, 255, 255]);
        assert!(rgba.pixels().any(|p| p[3] > 0 && p[3] < 255), "partial alpha");
        // The same from a WebP, and from a gray-with-alpha PNG.
        let webp = encode_tagged(&image::DynamicImage::ImageRgba8(rgba.clone()), image::ImageFormat::WebP, None);
        assert_eq!(RgbImage::decode(&webp, "cutout.webp").unwrap().pixels, expected);
        let la =
            image::DynamicImage::ImageLumaA8(image::GrayAlphaImage::from_fn(16, 8, |x, y| image::LumaA([(x * 16) as u8, (y * 36) as u8])));
        let got = RgbImage::decode(&encode_tagged(&la, image::ImageFormat::Png, None), "la.png").unwrap();
        let la_expected: Vec<u8> = la.as_luma_alpha8().unwrap().pixels().flat_map(|p| [composite(p[0], p[1], 255); 3]).collect();
        assert_eq!(got.pixels, la_expected);
        // A GIF's transparent colour.
        let mut gif = Vec::new();
        {
            let frame =
                image::RgbaImage::from_fn(8, 4, |x, _| if x < 4 { image::Rgba([255, 0, 0, 0]) } else { image::Rgba([10, 20, 30, 255]) });
            let mut e = image::codecs::gif::GifEncoder::new(&mut gif);
            e.encode_frame(image::Frame::new(frame)).unwrap();
        }
        let got = RgbImage::decode(&gif, "cutout.gif").unwrap();
        assert_eq!(&got.pixels[..3], &[255, 255, 255]);
        assert_eq!(&got.pixels[3 * 4..3 * 5], &[10, 20, 30]);
    }

    /// With a profile and alpha, the colour is converted first (the alpha kept), then composited.
    #[test]
    fn a_tagged_transparent_image_is_converted_then_composited() {
        let rgba = image::load_from_memory(&fixture("transparent.png")).unwrap().into_rgba8();
        let icc = fixture("display-p3.icc");
        let png = encode_tagged(&image::DynamicImage::ImageRgba8(rgba.clone()), image::ImageFormat::Png, Some(&icc));
        let mut rgb: Vec<u8> = rgba.pixels().flat_map(|p| [p[0], p[1], p[2]]).collect();
        assert!(profile_to_srgb(&icc, &mut rgb));
        let expected: Vec<u8> =
            rgb.chunks(3).zip(rgba.pixels()).flat_map(|(c, p)| (0..3).map(move |i| composite(c[i], p[3], BACKGROUND[i]))).collect();
        assert_eq!(RgbImage::decode(&png, "cutout.png").unwrap().pixels, expected);
    }

    /// Phones' and cameras' formats that are not supported are named, with what is.
    #[test]
    fn unsupported_formats_are_named() {
        let ftyp = |major: &[u8; 4], compatible: &[&[u8; 4]]| {
            let mut b = ((16 + 4 * compatible.len()) as u32).to_be_bytes().to_vec();
            b.extend_from_slice(b"ftyp");
            b.extend_from_slice(major);
            b.extend_from_slice(&[0; 4]);
            for c in compatible {
                b.extend_from_slice(&c[..]);
            }
            b.extend_from_slice(b"\0\0\0\x08meta some more boxes follow");
            b
        };
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (ftyp(b"heic", &[b"mif1", b"heic"]), "HEIC"),
            (ftyp(b"mif1", &[b"mif1", b"heic", b"miaf"]), "HEIC"),
            (ftyp(b"avif", &[b"avif", b"mif1", b"miaf"]), "AVIF"),
            (ftyp(b"mif1", &[b"avif", b"mif1"]), "AVIF"),
            (ftyp(b"mif1", &[b"mif1"]), "HEIF"),
            (ftyp(b"qt  ", &[b"qt  "]), "MP4/QuickTime"),
            (b"II*\0\x08\0\0\0 a little-endian TIFF".to_vec(), "TIFF"),
            (b"MM\0*\0\0\0\x08 a big-endian TIFF".to_vec(), "TIFF"),
            (b"\xFF\x0A a JPEG XL codestream".to_vec(), "JPEG XL"),
            (b"8BPS\0\x01 a Photoshop document".to_vec(), "PSD"),
            (b"%PDF-1.7".to_vec(), "PDF"),
            (b"<?xml version=\"1.0\"?>\n<svg xmlns=\"http://www.w3.org/2000/svg\"/>".to_vec(), "SVG"),
            (b"qoif\0\0\0\x10".to_vec(), "QOI"),
        ];
        for (bytes, format) in cases {
            for err in [RgbImage::decode(&bytes, "IMG_0042.HEIC").unwrap_err(), RgbImage::dimensions(&bytes, "IMG_0042.HEIC").unwrap_err()]
            {
                let err = err.to_string();
                assert!(err.contains("IMG_0042.HEIC") && err.contains(format), "{format}: {err}");
                assert!(err.contains("not a supported format") && err.contains("PNG, JPEG, WebP, BMP, GIF"), "{err}");
            }
        }
        // A short or unknown file: the plain message.
        for bytes in [&b"ftyp"[..], b"\0\0\0\0ftyp", b"hello"] {
            let err = RgbImage::decode(bytes, "x").unwrap_err().to_string();
            assert!(err.contains("PNG, JPEG, WebP, BMP, GIF"), "{err}");
        }
    }

    #[test]
    fn float_image_quantises_like_torchvision() {
        let f = FloatImage::from_decoded(&[-1.0, 1.0, 0.0, 2.0, -3.0, 0.5], 1, 2);
        assert_eq!(f.values, vec![0.0, 0.5, 0.0, 1.0, 1.0, 0.75]);
        assert_eq!(f.to_rgb8().pixels, vec![0, 128, 0, 255, 255, 191]);
    }
}
