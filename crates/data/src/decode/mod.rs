//! Decoding: encoded bytes → packed RGB8 pixels (HWC).
//!
//! JPEGs are decoded into a caller-owned buffer, so that a worker reuses one
//! allocation for every image. With the default cargo feature
//! `libjpeg-turbo`, every JPEG goes to libjpeg-turbo (RGB, YCbCr, grayscale,
//! CMYK and YCCK; [`decode_rgb_region`] then decodes only the rows and
//! columns asked for), with or without its SIMD code (without nasm it is
//! slower, never different: [`jpeg_decoder_name`] says which). A build
//! without the feature decodes JPEGs with `zune-jpeg` (the decoder the
//! `image` crate itself uses), which decodes some valid files wrongly
//! (non-interleaved scans, luma sampled less than chroma): those are refused
//! with [`DecodeError::Unsupported`] before it sees them (see
//! [`markers::JpegLayout`]). `image` handles everything else (PNG, GIF,
//! WebP, ...). See BENCHMARKS.md, "Decoder choice".

use zune_core::bytestream::ZCursor;
use zune_core::colorspace::ColorSpace;
use zune_core::options::DecoderOptions;

/// The container format of an input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceFormat {
    /// JPEG.
    Jpeg,
    /// Anything else `image` decodes (PNG, GIF, WebP, BMP, TIFF...).
    Other,
}

/// The colour model of an input before conversion to RGB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceColor {
    /// Three channels: RGB or YCbCr.
    Rgb,
    /// One channel.
    Gray,
    /// Four-channel CMYK or YCCK (Adobe JPEGs).
    Cmyk,
    /// Anything else (alpha, 16-bit, palette...).
    Other,
}

/// What [`decode_rgb`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodedInfo {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Container format.
    pub format: SourceFormat,
    /// Colour model before conversion.
    pub color: SourceColor,
}

/// Why an input could not be decoded.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    /// Not a format `image` recognises.
    #[error("not an image (unrecognised format)")]
    UnknownFormat,
    /// A JPEG without its end-of-image marker: cut off.
    #[error("truncated JPEG (no end-of-image marker)")]
    Truncated,
    /// The decoder rejected the data.
    #[error("corrupt {format} data: {detail}")]
    Corrupt {
        /// `JPEG`, `PNG`, ...
        format: &'static str,
        /// The decoder's message.
        detail: String,
    },
    /// A valid file that this build's decoder cannot decode correctly.
    #[error(
        "{detail} (zune-jpeg decodes such files wrongly; build with the default libjpeg-turbo feature)"
    )]
    Unsupported {
        /// What the file has.
        detail: &'static str,
    },
    /// The image has a zero or absurd dimension.
    #[error("unsupported dimensions {width}x{height}")]
    Dimensions {
        /// Width.
        width: u32,
        /// Height.
        height: u32,
    },
}

/// Largest side accepted (JPEG's own limit).
pub const MAX_SIDE: u32 = 65_535;

/// Whether `bytes` start like a JPEG (SOI marker).
pub fn is_jpeg(bytes: &[u8]) -> bool {
    bytes.len() >= 3 && bytes[0] == 0xFF && bytes[1] == 0xD8 && bytes[2] == 0xFF
}

/// Whether a JPEG's data contains an end-of-image marker (FF D9) after its
/// start. Decoders are lenient with cut-off files (they fill the missing
/// rows with grey), so the packer checks this to report them honestly.
/// Trailing bytes after the marker, common in real files, are allowed.
pub fn jpeg_has_eoi(bytes: &[u8]) -> bool {
    bytes.len() >= 4 && bytes[2..].windows(2).rev().any(|w| w == [0xFF, 0xD9])
}

fn jpeg_options() -> DecoderOptions {
    DecoderOptions::default()
        .set_strict_mode(false)
        .set_max_width(MAX_SIDE as usize)
        .set_max_height(MAX_SIDE as usize)
        .jpeg_set_out_colorspace(ColorSpace::RGB)
}

/// Reads a JPEG's dimensions and colour model without decoding pixels.
pub fn jpeg_info(bytes: &[u8]) -> Result<DecodedInfo, DecodeError> {
    let mut dec = zune_jpeg::JpegDecoder::new_with_options(ZCursor::new(bytes), jpeg_options());
    dec.decode_headers().map_err(jpeg_err)?;
    jpeg_info_of(&dec)
}

fn jpeg_info_of<T: zune_core::bytestream::ZByteReaderTrait>(
    dec: &zune_jpeg::JpegDecoder<T>,
) -> Result<DecodedInfo, DecodeError> {
    let (w, h) = dec
        .dimensions()
        .ok_or_else(|| jpeg_err("no frame header"))?;
    let color = match dec.input_colorspace() {
        Some(ColorSpace::Luma) | Some(ColorSpace::LumaA) => SourceColor::Gray,
        Some(ColorSpace::CMYK) | Some(ColorSpace::YCCK) => SourceColor::Cmyk,
        Some(ColorSpace::YCbCr) | Some(ColorSpace::RGB) => SourceColor::Rgb,
        _ => SourceColor::Other,
    };
    let (width, height) = (w as u32, h as u32);
    if width == 0 || height == 0 {
        return Err(DecodeError::Dimensions { width, height });
    }
    Ok(DecodedInfo {
        width,
        height,
        format: SourceFormat::Jpeg,
        color,
    })
}

fn jpeg_err(e: impl std::fmt::Display) -> DecodeError {
    DecodeError::Corrupt {
        format: "JPEG",
        detail: e.to_string(),
    }
}

/// A rectangle of an image, in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    /// Left column.
    pub x: u32,
    /// Top row.
    pub y: u32,
    /// Width.
    pub width: u32,
    /// Height.
    pub height: u32,
}

impl Region {
    /// The whole of a `width x height` image.
    pub fn full(width: u32, height: u32) -> Self {
        Region {
            x: 0,
            y: 0,
            width,
            height,
        }
    }

    /// This region cut to a `width x height` image (both > 0), keeping at
    /// least one pixel.
    pub fn clamped(self, width: u32, height: u32) -> Self {
        let x = self.x.min(width - 1);
        let y = self.y.min(height - 1);
        Region {
            x,
            y,
            width: self.width.clamp(1, width - x),
            height: self.height.clamp(1, height - y),
        }
    }
}

/// Decodes `bytes` into `out` as RGB8 (HWC, `width * height * 3` bytes;
/// `out` is resized, its allocation reused).
pub fn decode_rgb(bytes: &[u8], out: &mut Vec<u8>) -> Result<DecodedInfo, DecodeError> {
    decode_rgb_region(bytes, out, Region::full).map(|(info, _)| info)
}

/// Decodes at least the region that `region_for(width, height)` asks for
/// (called once the header is read) into `out` as RGB8 and returns the
/// image's info and the region that `out` holds, as rows of `region.width`
/// pixels. With the `libjpeg-turbo` feature, a JPEG's rows above and below
/// the region are not decoded to pixels and its columns are cut to the
/// region (widened to the left to a block boundary); the pixels are a full
/// decode's except in the cut columns themselves. Every other decoder
/// returns the whole image.
pub fn decode_rgb_region(
    bytes: &[u8],
    out: &mut Vec<u8>,
    mut region_for: impl FnMut(u32, u32) -> Region,
) -> Result<(DecodedInfo, Region), DecodeError> {
    #[cfg(feature = "libjpeg-turbo")]
    if is_jpeg(bytes) {
        return libjpeg::decode(bytes, out, None, &mut region_for);
    }
    let info = decode_full(bytes, out)?;
    region_for(info.width, info.height);
    Ok((info, Region::full(info.width, info.height)))
}

/// Decodes the whole of `bytes` into `out` as RGB8, a JPEG reduced in its
/// inverse DCT (libjpeg-turbo's `scale_num/8` with `n` of 1, 2 or 4) to the
/// smallest size whose shorter side is still at least `min_short(width,
/// height, colour)` of the JPEG's header: a quarter of the work at half
/// size, with the DCT's own block averaging as the low-pass filter (the
/// entropy-coded data is decoded whole whatever the scale, so a broken
/// file is found as in a full decode). Returns the image's info (its own
/// size) and the size of the pixels in `out`, which is the image's own
/// when it is not a JPEG, its shorter side is under about twice what is
/// asked (see `libjpeg::dct_scale`), or the build has no libjpeg-turbo.
pub fn decode_rgb_reduced(
    bytes: &[u8],
    out: &mut Vec<u8>,
    min_short: impl Fn(u32, u32, SourceColor) -> u32,
) -> Result<(DecodedInfo, (u32, u32)), DecodeError> {
    #[cfg(feature = "libjpeg-turbo")]
    if is_jpeg(bytes) {
        let (info, r) = libjpeg::decode(bytes, out, Some(&min_short), &mut Region::full)?;
        return Ok((info, (r.width, r.height)));
    }
    let _ = min_short;
    let info = decode_full(bytes, out)?;
    Ok((info, (info.width, info.height)))
}

fn decode_full(bytes: &[u8], out: &mut Vec<u8>) -> Result<DecodedInfo, DecodeError> {
    if is_jpeg(bytes) {
        zune_can_decode(&markers::scan(bytes))?;
        let mut dec = zune_jpeg::JpegDecoder::new_with_options(ZCursor::new(bytes), jpeg_options());
        dec.decode_headers().map_err(jpeg_err)?;
        let info = jpeg_info_of(&dec)?;
        let n = info.width as usize * info.height as usize * 3;
        out.resize(n, 0);
        dec.decode_into(out).map_err(jpeg_err)?;
        return Ok(info);
    }
    let format = image::guess_format(bytes).map_err(|_| DecodeError::UnknownFormat)?;
    let img =
        image::load_from_memory_with_format(bytes, format).map_err(|e| DecodeError::Corrupt {
            format: format.extensions_str().first().copied().unwrap_or("image"),
            detail: e.to_string(),
        })?;
    let color = match img.color() {
        image::ColorType::Rgb8 => SourceColor::Rgb,
        image::ColorType::L8 => SourceColor::Gray,
        _ => SourceColor::Other,
    };
    let (width, height) = (img.width(), img.height());
    if width == 0 || height == 0 || width > MAX_SIDE || height > MAX_SIDE {
        return Err(DecodeError::Dimensions { width, height });
    }
    let rgb = img.into_rgb8();
    out.clear();
    out.extend_from_slice(rgb.as_raw());
    Ok(DecodedInfo {
        width,
        height,
        format: SourceFormat::Other,
        color,
    })
}

/// Refuses the valid JPEGs that zune-jpeg decodes to wrong pixels without
/// an error (found on libjxl's and Pillow's test files, `tests/odd_jpeg.rs`).
fn zune_can_decode(layout: &markers::JpegLayout) -> Result<(), DecodeError> {
    if layout.non_interleaved() {
        return Err(DecodeError::Unsupported {
            detail: "non-interleaved or partially interleaved scans",
        });
    }
    if !layout.luma_samples_most() {
        return Err(DecodeError::Unsupported {
            detail: "a chroma component sampled more finely than luma",
        });
    }
    // The next two are the conditions of the two test files zune-jpeg 0.5
    // decodes wrongly (Pillow's hopper_bad_exif.jpg: mean |diff| 38;
    // app13.jpg: 19), not an established cause inside zune-jpeg; refusing
    // them keeps the fallback honest until that is found.
    if layout.components.len() == 1 && layout.restart_interval != 0 {
        return Err(DecodeError::Unsupported {
            detail: "a grayscale image with restart markers",
        });
    }
    let (mw, mh) = layout.mcu_size();
    if layout.components.len() > 1
        && (mw, mh) != (8, 8)
        && (u32::from(layout.width) < mw || u32::from(layout.height) < mh)
    {
        return Err(DecodeError::Unsupported {
            detail: "a subsampled image smaller than one MCU",
        });
    }
    Ok(())
}

/// Whether libjpeg-turbo runs its SIMD code (false in builds without nasm,
/// under `JSIMD_FORCENONE=1`, and in builds without libjpeg-turbo).
pub fn jpeg_simd() -> bool {
    #[cfg(feature = "libjpeg-turbo")]
    return libjpeg::has_simd();
    #[allow(unreachable_code)]
    false
}

/// Name of the JPEG decoder this build uses.
pub fn jpeg_decoder_name() -> &'static str {
    #[cfg(feature = "libjpeg-turbo")]
    if libjpeg::has_simd() {
        return "libjpeg-turbo";
    } else {
        return "libjpeg-turbo without SIMD (2.5x slower: install nasm, then `cargo clean -p mozjpeg-sys` and rebuild)";
    }
    #[allow(unreachable_code)]
    "zune-jpeg"
}

#[cfg(feature = "libjpeg-turbo")]
pub(crate) mod libjpeg;
pub mod markers;
