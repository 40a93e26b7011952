//! Crop-and-resize in one step: the crop box (source coordinates) is
//! resized straight to the output size with `fast_image_resize`, so no
//! full-size intermediate image is ever made.

use super::CropBox;
use crate::decode::Region;
use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};

/// Why a crop could not be resized.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ResizeError {
    /// The pixel buffer does not hold a `width x height` RGB8 image.
    #[error("{width}x{height} RGB image: {source}")]
    Image {
        /// Width.
        width: u32,
        /// Height.
        height: u32,
        /// fast_image_resize's reason.
        source: fast_image_resize::ImageBufferError,
    },
    /// fast_image_resize refused the crop.
    #[error("crop {crop:?}: {source}")]
    Crop {
        /// The crop box.
        crop: CropBox,
        /// fast_image_resize's reason.
        source: fast_image_resize::ResizeError,
    },
}

/// A worker's resizer and output scratch, reused for every sample.
pub struct CropResizer {
    resizer: Resizer,
    out: Image<'static>,
    alg: ResizeAlg,
}

impl CropResizer {
    /// Output side `size`, antialiased bilinear filtering (PIL's and
    /// torchvision's `Resize` default; the filter widens when downscaling).
    pub fn new(size: u32) -> Self {
        Self::with_alg(size, ResizeAlg::Convolution(FilterType::Bilinear))
    }

    /// Output side `size` with another algorithm.
    pub fn with_alg(size: u32, alg: ResizeAlg) -> Self {
        CropResizer {
            resizer: Resizer::new(),
            out: Image::new(size, size, PixelType::U8x3),
            alg,
        }
    }

    /// Resizes `b`'s region of the RGB8 image `rgb` (`w x h`) to the output
    /// size; returns the output pixels (RGB8, HWC). The flip is not applied here.
    pub fn crop_resize(
        &mut self,
        rgb: &[u8],
        w: u32,
        h: u32,
        b: &CropBox,
    ) -> Result<&[u8], ResizeError> {
        let src =
            ImageRef::new(w, h, rgb, PixelType::U8x3).map_err(|source| ResizeError::Image {
                width: w,
                height: h,
                source,
            })?;
        let opts = ResizeOptions::new()
            .resize_alg(self.alg)
            .crop(b.left, b.top, b.width, b.height);
        self.resizer
            .resize(&src, &mut self.out, &opts)
            .map_err(|source| ResizeError::Crop { crop: *b, source })?;
        Ok(self.out.buffer())
    }

    /// Output side.
    pub fn size(&self) -> u32 {
        self.out.width()
    }

    /// The source pixels that resizing `boxes` of a `w x h` image reads:
    /// each box widened by the filter's reach (its support, times the
    /// downscale factor) and two more pixels, clamped to the image; their
    /// union. (The margin keeps a decoder's cut edges, where its chroma
    /// upsampling lacks a neighbour, out of the filter's reach.) The whole
    /// image for no boxes.
    pub fn source_region(&self, boxes: &[CropBox], w: u32, h: u32) -> Region {
        if boxes.is_empty() {
            return Region::full(w, h);
        }
        let support = match self.alg {
            ResizeAlg::Nearest => 0.5,
            ResizeAlg::Convolution(f) | ResizeAlg::SuperSampling(f, _) => match f {
                FilterType::Box => 0.5,
                FilterType::Bilinear | FilterType::Hamming => 1.0,
                FilterType::CatmullRom | FilterType::Mitchell => 2.0,
                FilterType::Custom(c) => c.support(),
                _ => 3.0, // Gaussian, Lanczos3
            },
            _ => 3.0,
        };
        let size = self.size() as f64;
        let reach = |extent: f64| (support * (extent / size).max(1.0)).ceil() + 2.0;
        let (mut x0, mut y0, mut x1, mut y1) = (f64::MAX, f64::MAX, 0f64, 0f64);
        for b in boxes {
            let (rx, ry) = (reach(b.width), reach(b.height));
            x0 = x0.min(b.left - rx);
            y0 = y0.min(b.top - ry);
            x1 = x1.max(b.left + b.width + rx);
            y1 = y1.max(b.top + b.height + ry);
        }
        let (x0, y0) = (x0.floor().max(0.0) as u32, y0.floor().max(0.0) as u32);
        let (x1, y1) = (
            x1.ceil().min(w as f64) as u32,
            y1.ceil().min(h as f64) as u32,
        );
        Region {
            x: x0,
            y: y0,
            width: x1.saturating_sub(x0),
            height: y1.saturating_sub(y0),
        }
        .clamped(w, h)
    }
}

/// Resizes a whole RGB8 image to `nw x nh` (antialiased bilinear).
pub fn resize_rgb(rgb: &[u8], w: u32, h: u32, nw: u32, nh: u32) -> Result<Vec<u8>, ResizeError> {
    let src = ImageRef::new(w, h, rgb, PixelType::U8x3).map_err(|source| ResizeError::Image {
        width: w,
        height: h,
        source,
    })?;
    let mut dst = Image::new(nw, nh, PixelType::U8x3);
    Resizer::new()
        .resize(
            &src,
            &mut dst,
            &ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear)),
        )
        .map_err(|source| ResizeError::Crop {
            crop: CropBox {
                left: 0.0,
                top: 0.0,
                width: f64::from(w),
                height: f64::from(h),
                flip: false,
            },
            source,
        })?;
    Ok(dst.into_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::augment::crop::resized_dims;
    use crate::augment::{TrainAugment, sample_rng};

    /// A smooth-ish but detailed test picture.
    fn picture(w: u32, h: u32) -> Vec<u8> {
        let mut v = Vec::with_capacity((w * h * 3) as usize);
        for y in 0..h {
            for x in 0..w {
                let (fx, fy) = (x as f32, y as f32);
                v.push((128.0 + 100.0 * (fx * 0.05).sin() * (fy * 0.03).cos()) as u8);
                v.push(((x * 7 + y * 3) % 256) as u8);
                v.push((255.0 * fy / h as f32) as u8);
            }
        }
        v
    }

    /// Crop-then-resize equals the reference resize-then-crop within a
    /// stated tolerance: mean absolute difference under 1.5 levels (of 255)
    /// and the 99th percentile under 12, over many random draws. (They differ
    /// only near the crop's border, where the reference's filter also sees
    /// pixels outside the crop.)
    #[test]
    fn crop_then_resize_matches_resize_then_crop() {
        let (w, h) = (500, 375);
        let img = picture(w, h);
        let aug = TrainAugment::default();
        let mut fast = CropResizer::new(224);
        let mut resizer = Resizer::new();
        let mut diffs = Vec::new();
        for i in 0..40 {
            let (p, b) = aug.draw(w, h, &mut sample_rng(1, 0, i));
            let out = fast.crop_resize(&img, w, h, &b).unwrap().to_vec();
            // Reference: resize the whole image to S, then cut the window.
            let (rw, rh) = resized_dims(w, h, p.s);
            let src = ImageRef::new(w, h, &img, PixelType::U8x3).unwrap();
            let mut full = Image::new(rw, rh, PixelType::U8x3);
            resizer
                .resize(
                    &src,
                    &mut full,
                    &ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear)),
                )
                .unwrap();
            let fb = full.buffer();
            for y in 0..224usize {
                for x in 0..224usize {
                    for c in 0..3 {
                        let r = fb[((p.crop_y as usize + y) * rw as usize + p.crop_x as usize + x)
                            * 3
                            + c];
                        let f = out[(y * 224 + x) * 3 + c];
                        diffs.push((r as i32 - f as i32).unsigned_abs());
                    }
                }
            }
        }
        let mean = diffs.iter().map(|&d| d as f64).sum::<f64>() / diffs.len() as f64;
        diffs.sort_unstable();
        let p99 = diffs[diffs.len() * 99 / 100];
        assert!(mean < 1.5, "mean abs diff {mean}");
        assert!(p99 < 12, "p99 {p99}");
    }

    /// At unit scale a crop is an exact copy of the window.
    #[test]
    fn unit_scale_crop_is_exact() {
        let (w, h) = (300, 256);
        let img = picture(w, h);
        let mut r = CropResizer::new(224);
        let b = CropBox {
            left: 38.0,
            top: 16.0,
            width: 224.0,
            height: 224.0,
            flip: false,
        };
        let out = r.crop_resize(&img, w, h, &b).unwrap();
        for y in 0..224usize {
            let src = &img[((16 + y) * 300 + 38) * 3..((16 + y) * 300 + 38 + 224) * 3];
            assert_eq!(&out[y * 224 * 3..(y + 1) * 224 * 3], src, "row {y}");
        }
    }
}
