//! One input file → one record: decode once, convert to RGB, cap the shorter
//! side, re-encode only when needed, and measure pixel statistics.

use crate::decode::{
    DecodeError, SourceColor, SourceFormat, decode_rgb_reduced, is_jpeg, jpeg_has_eoi,
};
use crate::format::Origin;
use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};

/// How records are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncodeOptions {
    /// Images whose shorter side exceeds this are resized so that it equals
    /// this (unless kept, see `keep_up_to`).
    pub max_side: u32,
    /// An RGB JPEG whose shorter side is at most this (at least `max_side`)
    /// keeps its own bytes: resizing it by a few percent would cost a
    /// decode, a resample and a lossy re-encode for nothing the loader
    /// needs (it resizes every image to its scale anyway).
    pub keep_up_to: u32,
    /// JPEG quality of re-encoded images (1..=100).
    pub quality: u8,
    /// Side of the square thumbnail the statistics are measured on.
    pub mean_size: u32,
}

/// Default of [`super::PackOptions::keep_slack_percent`].
pub const DEFAULT_KEEP_SLACK_PERCENT: u32 = 5;

impl EncodeOptions {
    /// The shorter side up to which an RGB JPEG keeps its bytes: `max_side`
    /// plus `slack_percent` of it.
    pub fn keep_limit(max_side: u32, slack_percent: u32) -> u32 {
        let slack = u64::from(max_side) * u64::from(slack_percent) / 100;
        (u64::from(max_side) + slack).min(u64::from(u32::MAX)) as u32
    }

    /// Whether an RGB JPEG whose shorter side is `short` keeps its bytes.
    fn keeps(&self, short: u32) -> bool {
        short <= self.keep_up_to.max(self.max_side)
    }
}

impl Default for EncodeOptions {
    fn default() -> Self {
        EncodeOptions {
            max_side: 480,
            keep_up_to: Self::keep_limit(480, DEFAULT_KEEP_SLACK_PERCENT),
            quality: 95,
            mean_size: 64,
        }
    }
}

/// Running sums over one image's thumbnail pixels: r, g, b, rr, rg, rb, gg, gb, bb, pixels.
pub type PixelSums = [f64; 10];

/// A record ready to be written.
#[derive(Debug, Clone)]
pub struct PackedImage {
    /// Encoded JPEG bytes.
    pub bytes: Vec<u8>,
    /// Stored width.
    pub width: u32,
    /// Stored height.
    pub height: u32,
    /// What was done to the input.
    pub origin: Origin,
    /// The image squashed to `mean_size x mean_size`, RGB8 HWC.
    pub thumb: Vec<u8>,
    /// Pixel sums over `thumb`.
    pub sums: PixelSums,
}

/// Per-worker state: decode buffer and resizer, reused across images.
#[derive(Default)]
pub struct Encoder {
    rgb: Vec<u8>,
    resizer: Resizer,
}

/// The reason an input was not packed (its message goes into the skip report).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SkipReason {
    /// The file has no bytes.
    #[error("empty file")]
    Empty,
    /// The file could not be read.
    #[error("unreadable: {0}")]
    Unreadable(#[from] std::io::Error),
    /// The file is not an image this build decodes, or a broken one.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The decoder panicked on it (caught; the worker goes on).
    #[error("decoder panicked: {0}")]
    DecoderPanic(String),
    /// Resizing it failed.
    #[error("{0}")]
    Resize(#[from] fast_image_resize::ResizeError),
    /// Its pixels do not describe an image of its size.
    #[error("{0}")]
    Buffer(#[from] fast_image_resize::ImageBufferError),
    /// Larger than a JPEG can be (libjpeg's limit, 65,500).
    #[error("{width}x{height} is too large for JPEG")]
    TooLarge {
        /// Width after resizing.
        width: u32,
        /// Height after resizing.
        height: u32,
    },
    /// A pixel buffer of the wrong length (a bug, reported rather than packed).
    #[error("{bytes} bytes are not a {width}x{height} RGB image")]
    NotRgb {
        /// Bytes given.
        bytes: usize,
        /// Width.
        width: u32,
        /// Height.
        height: u32,
    },
    /// The re-encoder failed.
    #[error("JPEG encoding failed: {0}")]
    Encode(String),
}

impl Encoder {
    /// Turns one input file's bytes into a record, or says why it can't.
    pub fn encode(
        &mut self,
        input: &[u8],
        opts: &EncodeOptions,
    ) -> Result<PackedImage, SkipReason> {
        if input.is_empty() {
            return Err(SkipReason::Empty);
        }
        if is_jpeg(input) && !jpeg_has_eoi(input) {
            return Err(DecodeError::Truncated.into());
        }
        // A JPEG at least twice the limit is decoded at a reduced DCT scale
        // (down to no less than the limit) and resized from there. One
        // whose bytes are kept (RGB, shorter side within the limit) is
        // decoded only as far as its thumbnail needs (a 500x375 photo at
        // 1/4, 125x94): its whole entropy-coded data is still decoded, so a
        // broken file is still found, in about half the time of a full
        // decode.
        let (info, (dw, dh)) = decode_rgb_reduced(input, &mut self.rgb, |w, h, color| {
            if color == SourceColor::Rgb && opts.keeps(w.min(h)) {
                opts.mean_size
            } else {
                opts.max_side
            }
        })?;
        let mut origin = 0u8;
        if info.format != SourceFormat::Jpeg {
            origin |= Origin::FROM_OTHER_FORMAT;
        }
        match info.color {
            SourceColor::Rgb => {}
            SourceColor::Gray => origin |= Origin::FROM_GRAY,
            SourceColor::Cmyk => origin |= Origin::FROM_CMYK,
            SourceColor::Other => origin |= Origin::FROM_OTHER_COLOR,
        }
        let (w, h) = (info.width, info.height);
        let short = w.min(h);
        let kept = origin == 0 && opts.keeps(short);
        let mut resized = None;
        if short > opts.max_side && !kept {
            origin |= Origin::RESIZED;
            let target = scaled_to_short_side(w, h, opts.max_side);
            // A reduced decode may already have the target size.
            if (dw, dh) != target {
                let alg = ResizeAlg::Convolution(FilterType::Bilinear);
                resized = Some(self.resize(dw, dh, target.0, target.1, alg)?);
            }
        }
        let (pixels, pw, ph) = match &resized {
            Some(img) => (img.buffer(), img.width(), img.height()),
            None => (self.rgb.as_slice(), dw, dh),
        };
        // Kept: the file's own bytes and size (the pixels may be reduced).
        let (bytes, width, height) = if kept {
            (input.to_vec(), w, h)
        } else {
            (encode_jpeg(pixels, pw, ph, opts.quality)?, pw, ph)
        };
        let thumb_img = {
            let src = ImageRef::new(pw, ph, pixels, PixelType::U8x3)?;
            let mut dst = Image::new(opts.mean_size, opts.mean_size, PixelType::U8x3);
            // Averaged over its area (a convolution), as the reduced
            // decode of a kept file already is in its blocks.
            self.resizer.resize(
                &src,
                &mut dst,
                &ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear)),
            )?;
            dst.into_vec()
        };
        let sums = pixel_sums(&thumb_img);
        Ok(PackedImage {
            bytes,
            width,
            height,
            origin: Origin(origin),
            thumb: thumb_img,
            sums,
        })
    }

    fn resize(
        &mut self,
        w: u32,
        h: u32,
        nw: u32,
        nh: u32,
        alg: ResizeAlg,
    ) -> Result<Image<'static>, SkipReason> {
        let src = ImageRef::new(w, h, &self.rgb, PixelType::U8x3)?;
        let mut dst = Image::new(nw, nh, PixelType::U8x3);
        self.resizer
            .resize(&src, &mut dst, &ResizeOptions::new().resize_alg(alg))?;
        Ok(dst)
    }
}

/// New size with the shorter side equal to `short` and the aspect ratio
/// kept (the longer side rounded to the nearest pixel, at least 1).
pub fn scaled_to_short_side(w: u32, h: u32, short: u32) -> (u32, u32) {
    let scale = short as f64 / w.min(h) as f64;
    let long = |x: u32| ((x as f64 * scale).round() as u32).max(1);
    if w <= h {
        (short, long(h))
    } else {
        (long(w), short)
    }
}

/// Encodes RGB8 pixels as a baseline 4:2:0 JPEG (the subsampling of most
/// ILSVRC2012 files and of PIL's default): with libjpeg-turbo's compressor
/// in the default build (3x faster than `jpeg-encoder`, `compress`), with
/// `jpeg-encoder`'s AVX2 path otherwise (6x faster than the `image` crate's
/// encoder). An image smaller than one 4:2:0 MCU (16x16) is encoded 4:4:4:
/// subsampling saves nothing there, and the zune-jpeg build refuses such
/// files (`decode`).
pub fn encode_jpeg(pixels: &[u8], w: u32, h: u32, quality: u8) -> Result<Vec<u8>, SkipReason> {
    // libjpeg's limit (JPEG's own is 65,535).
    if w > 65_500 || h > 65_500 {
        return Err(SkipReason::TooLarge {
            width: w,
            height: h,
        });
    }
    if pixels.len() != w as usize * h as usize * 3 || w == 0 || h == 0 {
        return Err(SkipReason::NotRgb {
            bytes: pixels.len(),
            width: w,
            height: h,
        });
    }
    let full_chroma = w < 16 || h < 16;
    #[cfg(feature = "libjpeg-turbo")]
    {
        super::compress::encode_rgb(pixels, w, h, quality, full_chroma)
    }
    #[cfg(not(feature = "libjpeg-turbo"))]
    {
        let mut out = Vec::with_capacity(pixels.len() / 8);
        let mut enc = jpeg_encoder::Encoder::new(&mut out, quality);
        enc.set_sampling_factor(if full_chroma {
            jpeg_encoder::SamplingFactor::R_4_4_4
        } else {
            jpeg_encoder::SamplingFactor::R_4_2_0
        });
        enc.encode(pixels, w as u16, h as u16, jpeg_encoder::ColorType::Rgb)
            .map_err(|e| SkipReason::Encode(e.to_string()))?;
        Ok(out)
    }
}

fn pixel_sums(rgb: &[u8]) -> PixelSums {
    let mut s = [0f64; 10];
    // Integer accumulation per image is exact and fast; f64 only at the end.
    let mut acc = [0u64; 9];
    for p in rgb.chunks_exact(3) {
        let (r, g, b) = (p[0] as u64, p[1] as u64, p[2] as u64);
        acc[0] += r;
        acc[1] += g;
        acc[2] += b;
        acc[3] += r * r;
        acc[4] += r * g;
        acc[5] += r * b;
        acc[6] += g * g;
        acc[7] += g * b;
        acc[8] += b * b;
    }
    for i in 0..9 {
        s[i] = acc[i] as f64;
    }
    s[9] = (rgb.len() / 3) as f64;
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_side_scaling_keeps_aspect() {
        assert_eq!(scaled_to_short_side(2600, 1950, 480), (640, 480));
        assert_eq!(scaled_to_short_side(500, 1000, 480), (480, 960));
        assert_eq!(scaled_to_short_side(10000, 481, 480), (9979, 480));
    }

    #[test]
    fn sums_are_exact() {
        let s = pixel_sums(&[1, 2, 3, 4, 5, 6]);
        assert_eq!(s, [5.0, 7.0, 9.0, 17.0, 22.0, 27.0, 29.0, 36.0, 45.0, 2.0]);
    }

    /// The encoder keeps a real photo's pixels at quality 95, writes 4:2:0
    /// (4:4:4 under 16 pixels a side) and refuses sizes JPEG cannot hold.
    #[test]
    fn encoded_photos_decode_to_their_pixels() {
        use crate::decode::{decode_rgb, markers};
        let root =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../datasets/sample/train");
        let input = std::fs::read(root.join("n03785016/n03785016_1.JPEG")).unwrap();
        let mut px = Vec::new();
        let info = decode_rgb(&input, &mut px).unwrap();
        for (w, h) in [(info.width, info.height), (15, 200), (200, 15), (1, 1)] {
            let crop: Vec<u8> = px
                .chunks_exact(info.width as usize * 3)
                .take(h as usize)
                .flat_map(|row| &row[..w as usize * 3])
                .copied()
                .collect();
            let bytes = encode_jpeg(&crop, w, h, 95).unwrap();
            let layout = markers::scan(&bytes);
            assert_eq!(layout.sof, 0xC0, "baseline");
            assert_eq!((u32::from(layout.width), u32::from(layout.height)), (w, h));
            let luma = (layout.components[0].h, layout.components[0].v);
            assert_eq!(
                luma,
                if w < 16 || h < 16 { (1, 1) } else { (2, 2) },
                "{w}x{h}"
            );
            let mut back = Vec::new();
            decode_rgb(&bytes, &mut back).unwrap();
            let diff = back
                .iter()
                .zip(&crop)
                .map(|(&a, &b)| (f64::from(a) - f64::from(b)).abs())
                .sum::<f64>()
                / crop.len() as f64;
            assert!(diff < 2.0, "{w}x{h}: mean |diff| {diff:.2}");
        }
        assert!(encode_jpeg(&[0; 3], 70_000, 1, 95).is_err());
        assert!(encode_jpeg(&[0; 6], 1, 1, 95).is_err());
    }

    /// A large photo is decoded at a reduced DCT scale, then resized: the
    /// record has the size a full decode would give and nearly its pixels
    /// (the bundled 2600x1950 photo at 1/4 scale, then 650x488 → 640x480;
    /// a 512x512 one at 1/2 scale, exactly the 256x256 asked for).
    #[test]
    fn large_photos_pack_like_a_full_decode_resized() {
        use crate::decode::decode_rgb;
        let root =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../datasets/sample/train");
        for (file, max_side, want) in [
            ("n03877845/n03877845_huge.JPEG", 480, (640, 480)),
            ("n07747607/n07747607_1.JPEG", 256, (256, 256)),
        ] {
            let input = std::fs::read(root.join(file)).unwrap();
            let opts = EncodeOptions {
                max_side,
                keep_up_to: max_side,
                ..EncodeOptions::default()
            };
            let mut enc = Encoder::default();
            let rec = enc.encode(&input, &opts).unwrap();
            assert_eq!((rec.width, rec.height), want, "{file}");
            assert!(rec.origin.0 & Origin::RESIZED != 0);
            // The reference: the whole image decoded, then resized.
            let mut full = Vec::new();
            let info = decode_rgb(&input, &mut full).unwrap();
            let src = ImageRef::new(info.width, info.height, &full, PixelType::U8x3).unwrap();
            let mut reference = Image::new(want.0, want.1, PixelType::U8x3);
            Resizer::new()
                .resize(
                    &src,
                    &mut reference,
                    &ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear)),
                )
                .unwrap();
            let mut got = Vec::new();
            decode_rgb(&rec.bytes, &mut got).unwrap();
            let diff = got
                .iter()
                .zip(reference.buffer())
                .map(|(&a, &b)| (f64::from(a) - f64::from(b)).abs())
                .sum::<f64>()
                / got.len() as f64;
            assert!(diff < 2.5, "{file}: mean |diff| {diff:.2}");
            eprintln!("{file}: mean |record - full decode resized| {diff:.3}");
        }
    }

    /// A file whose bytes are kept is decoded only as far as its thumbnail
    /// needs: on every bundled JPEG and odd JPEG (and broken copies of a
    /// photo) the packer's verdict is a full decode's, a kept record has
    /// its file's bytes and size, and its thumbnail is near the one a full
    /// decode gives (both averaged over their area).
    #[test]
    fn kept_files_are_checked_like_a_full_decode() {
        use crate::decode::{decode_rgb, jpeg_has_eoi};
        let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../datasets");
        let mut files = Vec::new();
        let mut stack = vec![data.join("sample"), data.join("odd-jpeg")];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else if let Ok(bytes) = std::fs::read(&p)
                    && is_jpeg(&bytes)
                {
                    files.push((p.display().to_string(), bytes));
                }
            }
        }
        files.sort();
        let photo = std::fs::read(data.join("sample/train/n03785016/n03785016_1.JPEG")).unwrap();
        let mut cut = photo[..photo.len() / 2].to_vec();
        cut.extend_from_slice(&[0xFF, 0xD9]);
        let mut no_huffman = photo.clone();
        let dht = no_huffman
            .windows(2)
            .position(|w| w == [0xFF, 0xC4])
            .unwrap();
        no_huffman[dht + 1] = 0xEE; // the Huffman tables become an APP14 segment
        files.push(("photo cut mid-scan".into(), cut));
        files.push(("photo without Huffman tables".into(), no_huffman));
        let opts = EncodeOptions::default();
        let (mut enc, mut full) = (Encoder::default(), Vec::new());
        let (mut kept, mut worst) = (0, 0f64);
        // Sums of the thumbnails (the mean image is their average).
        let n = (opts.mean_size * opts.mean_size * 3) as usize;
        let (mut sum_reduced, mut sum_full) = (vec![0f64; n], vec![0f64; n]);
        for (name, bytes) in &files {
            let whole = decode_rgb(bytes, &mut full);
            let packed = enc.encode(bytes, &opts);
            if !jpeg_has_eoi(bytes) {
                assert!(packed.is_err(), "{name}");
                continue;
            }
            assert_eq!(whole.is_ok(), packed.is_ok(), "{name}: {whole:?}");
            let (Ok(info), Ok(rec)) = (whole, packed) else {
                continue;
            };
            if rec.origin.0 != 0 {
                continue;
            }
            kept += 1;
            assert_eq!(rec.bytes, *bytes, "{name}");
            assert_eq!((rec.width, rec.height), (info.width, info.height), "{name}");
            let src = ImageRef::new(info.width, info.height, &full, PixelType::U8x3).unwrap();
            let mut thumb = Image::new(opts.mean_size, opts.mean_size, PixelType::U8x3);
            Resizer::new()
                .resize(
                    &src,
                    &mut thumb,
                    &ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear)),
                )
                .unwrap();
            let diff = rec
                .thumb
                .iter()
                .zip(thumb.buffer())
                .map(|(&a, &b)| (f64::from(a) - f64::from(b)).abs())
                .sum::<f64>()
                / rec.thumb.len() as f64;
            worst = worst.max(diff);
            sum_reduced
                .iter_mut()
                .zip(&rec.thumb)
                .for_each(|(s, &v)| *s += f64::from(v));
            sum_full
                .iter_mut()
                .zip(thumb.buffer())
                .for_each(|(s, &v)| *s += f64::from(v));
        }
        assert!(kept > 40, "only {kept} kept files checked");
        // One textured photo's thumbnail moves by up to ~5.5 levels (the
        // two low-pass filters differ); the mean image of these files by
        // well under one, each channel's mean by less still.
        let mean_diff = sum_reduced
            .iter()
            .zip(&sum_full)
            .map(|(a, b)| (a - b).abs())
            .sum::<f64>()
            / (n * kept) as f64;
        let channel =
            |s: &[f64], c: usize| s.iter().skip(c).step_by(3).sum::<f64>() / (n / 3 * kept) as f64;
        let channel_diff = (0..3)
            .map(|c| (channel(&sum_reduced, c) - channel(&sum_full, c)).abs())
            .fold(0.0, f64::max);
        eprintln!(
            "{kept} kept files: thumbnails up to {worst:.2} apart, mean image {mean_diff:.3}, channel means {channel_diff:.3}"
        );
        assert!(worst < 8.0 && mean_diff < 1.0 && channel_diff < 0.25);
    }
}
