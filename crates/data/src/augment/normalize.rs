//! Flip and normalise into the network's input in one pass:
//! `out[c][y][x] = (in[y][x'][c] + light[c] - sub[c][y][x]) * mul[c]`,
//! with `x' = x` or `size - 1 - x` when mirrored.

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use serde::{Deserialize, Serialize};

/// How pixel values become network inputs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub enum Normalization {
    /// The paper's per-pixel mean subtraction (mean image from `pack-imagenet`,
    /// resized to the crop), divided by the dataset's per-channel std so the
    /// inputs have unit scale: `(x - mean[y][x]) / std_c`.
    #[default]
    PerPixelMean,
    /// torchvision's convention: `(x / 255 - mean_c) / std_c`.
    PerChannel {
        /// Channel means on the 0..1 scale (ImageNet: 0.485, 0.456, 0.406).
        mean: [f32; 3],
        /// Channel stds on the 0..1 scale (ImageNet: 0.229, 0.224, 0.225).
        std: [f32; 3],
    },
    /// `x / 255`.
    Unit,
}

/// Precomputed planes for one output size.
#[derive(Debug, Clone)]
pub struct Normalizer {
    size: usize,
    /// CHW plane subtracted (0..255 scale).
    sub: Vec<f32>,
    mul: [f32; 3],
}

impl Normalizer {
    /// Builds the planes. `mean_image` is the pack's mean image (HWC f32,
    /// `mean_size` square) and `channel_std` the pack's per-channel std; both
    /// are used by [`Normalization::PerPixelMean`] only.
    pub fn new(
        norm: Normalization,
        size: u32,
        mean_image: &[f32],
        mean_size: u32,
        channel_std: [f64; 3],
    ) -> Self {
        let n = (size * size) as usize;
        let (sub, mul) = match norm {
            Normalization::PerPixelMean => {
                let resized = resize_mean(mean_image, mean_size, size);
                let mut sub = vec![0f32; 3 * n];
                for i in 0..n {
                    for c in 0..3 {
                        sub[c * n + i] = resized[i * 3 + c];
                    }
                }
                (sub, channel_std.map(|s| 1.0 / (s.max(1e-3) as f32)))
            }
            Normalization::PerChannel { mean, std } => {
                let mut sub = vec![0f32; 3 * n];
                for c in 0..3 {
                    sub[c * n..(c + 1) * n].fill(mean[c] * 255.0);
                }
                (sub, std.map(|s| 1.0 / (255.0 * s)))
            }
            Normalization::Unit => (vec![0f32; 3 * n], [1.0 / 255.0; 3]),
        };
        Normalizer {
            size: size as usize,
            sub,
            mul,
        }
    }

    /// Output side.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Writes `hwc` (RGB8, `size x size`) into `out` (CHW f32, `3 * size * size`).
    ///
    /// One pass over each input row, writing the three output planes'
    /// rows side by side (reading each pixel once, in order or mirrored).
    pub fn write_chw(&self, hwc: &[u8], flip: bool, light: [f32; 3], out: &mut [f32]) {
        let s = self.size;
        let n = s * s;
        assert!(hwc.len() >= 3 * n && out.len() >= 3 * n);
        let (r_plane, rest) = out[..3 * n].split_at_mut(n);
        let (g_plane, b_plane) = rest.split_at_mut(n);
        let rows = hwc[..3 * n].as_chunks::<3>().0.chunks_exact(s);
        let planes = r_plane
            .chunks_exact_mut(s)
            .zip(g_plane.chunks_exact_mut(s))
            .zip(b_plane.chunks_exact_mut(s));
        for ((row, ((r, g), b)), sub) in rows.zip(planes).zip(self.mean_rows()) {
            let out = [r, g, b];
            if flip {
                self.chw_row(row.iter().rev(), light, out, sub);
            } else {
                self.chw_row(row.iter(), light, out, sub);
            }
        }
    }

    /// The rows of the subtracted mean, one slice per channel.
    fn mean_rows(&self) -> impl Iterator<Item = [&[f32]; 3]> {
        let s = self.size;
        let (r, rest) = self.sub[..3 * s * s].split_at(s * s);
        let (g, b) = rest.split_at(s * s);
        let rows = r.chunks_exact(s).zip(g.chunks_exact(s));
        rows.zip(b.chunks_exact(s)).map(|((r, g), b)| [r, g, b])
    }

    #[inline(always)]
    fn chw_row<'a>(
        &self,
        pixels: impl Iterator<Item = &'a [u8; 3]>,
        light: [f32; 3],
        [r, g, b]: [&mut [f32]; 3],
        [rm, gm, bm]: [&[f32]; 3],
    ) {
        let mul = self.mul;
        let outs = r.iter_mut().zip(g.iter_mut()).zip(b.iter_mut());
        let subs = rm.iter().zip(gm).zip(bm);
        for ((p, ((r, g), b)), ((rm, gm), bm)) in pixels.zip(outs).zip(subs) {
            *r = (p[0] as f32 + light[0] - rm) * mul[0];
            *g = (p[1] as f32 + light[1] - gm) * mul[1];
            *b = (p[2] as f32 + light[2] - bm) * mul[2];
        }
    }

    /// As [`Normalizer::write_chw`], but the output is channels-last (HWC f32),
    /// the layout of this crate's models.
    pub fn write_hwc(&self, hwc: &[u8], flip: bool, light: [f32; 3], out: &mut [f32]) {
        let s = self.size;
        let n = s * s;
        assert!(hwc.len() >= 3 * n && out.len() >= 3 * n);
        let mul = self.mul;
        let rows = hwc[..3 * n].as_chunks::<3>().0.chunks_exact(s);
        let outs = out[..3 * n].as_chunks_mut::<3>().0.chunks_exact_mut(s);
        for ((row, o), sub) in rows.zip(outs).zip(self.mean_rows()) {
            if flip {
                hwc_row(row.iter().rev(), light, mul, o, sub);
            } else {
                hwc_row(row.iter(), light, mul, o, sub);
            }
        }
    }

    /// The CIFAR-style padded crop: output pixel `(y, x)` is source pixel
    /// `(y + dy, x' + dx)` of the `size x size` image `hwc` (x' mirrored if
    /// asked), normalised with the mean at the *source* position, and 0 where
    /// that falls outside the image (zero padding after normalisation).
    pub fn write_chw_shifted(&self, hwc: &[u8], dx: isize, dy: isize, flip: bool, out: &mut [f32]) {
        self.write_shifted(hwc, dx, dy, flip, false, out)
    }

    /// [`Normalizer::write_chw_shifted`] with channels-last output.
    pub fn write_hwc_shifted(&self, hwc: &[u8], dx: isize, dy: isize, flip: bool, out: &mut [f32]) {
        self.write_shifted(hwc, dx, dy, flip, true, out)
    }

    fn write_shifted(
        &self,
        hwc: &[u8],
        dx: isize,
        dy: isize,
        flip: bool,
        channels_last: bool,
        out: &mut [f32],
    ) {
        let s = self.size;
        let n = s * s;
        assert!(hwc.len() >= 3 * n && out.len() >= 3 * n);
        let si = s as isize;
        for y in 0..s {
            let sy = y as isize + dy;
            for x in 0..s {
                let cx = if flip { s - 1 - x } else { x } as isize;
                let sx = cx + dx;
                let inside = (0..si).contains(&sy) && (0..si).contains(&sx);
                for c in 0..3 {
                    let o = if channels_last {
                        (y * s + x) * 3 + c
                    } else {
                        c * n + y * s + x
                    };
                    out[o] = if inside {
                        let at = sy as usize * s + sx as usize;
                        (hwc[at * 3 + c] as f32 - self.sub[c * n + at]) * self.mul[c]
                    } else {
                        0.0
                    };
                }
            }
        }
    }

    /// Inverse of [`Normalizer::write_chw`] without lighting: CHW f32 back to
    /// RGB8 HWC (for looking at what the network sees).
    pub fn to_rgb8(&self, chw: &[f32]) -> Vec<u8> {
        let n = self.size * self.size;
        let mut out = vec![0u8; 3 * n];
        for i in 0..n {
            for c in 0..3 {
                let v = chw[c * n + i] / self.mul[c] + self.sub[c * n + i];
                out[i * 3 + c] = v.round().clamp(0.0, 255.0) as u8;
            }
        }
        out
    }
}

/// One row of [`Normalizer::write_hwc`].
#[inline(always)]
fn hwc_row<'a>(
    pixels: impl Iterator<Item = &'a [u8; 3]>,
    light: [f32; 3],
    mul: [f32; 3],
    out: &mut [[f32; 3]],
    [rm, gm, bm]: [&[f32]; 3],
) {
    let subs = rm.iter().zip(gm).zip(bm);
    for (p, (o, ((rm, gm), bm))) in pixels.zip(out.iter_mut().zip(subs)) {
        *o = [
            (p[0] as f32 + light[0] - rm) * mul[0],
            (p[1] as f32 + light[1] - gm) * mul[1],
            (p[2] as f32 + light[2] - bm) * mul[2],
        ];
    }
}

/// Writes `hwc` into `out` (HWC u8), mirrored if asked: the raw output mode,
/// for normalising on the GPU.
pub fn write_hwc_u8(hwc: &[u8], size: usize, flip: bool, out: &mut [u8]) {
    if !flip {
        out[..hwc.len()].copy_from_slice(hwc);
        return;
    }
    for y in 0..size {
        let row = &hwc[y * size * 3..(y + 1) * size * 3];
        let o = &mut out[y * size * 3..(y + 1) * size * 3];
        for x in 0..size {
            o[x * 3..x * 3 + 3].copy_from_slice(&row[(size - 1 - x) * 3..(size - x) * 3]);
        }
    }
}

/// The left-right mirror of a channels-last `w x h` image (pixel and mean
/// together: the mirror of a normalised image).
pub fn mirror_hwc(x: &[f32], w: usize, h: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(3 * w * h);
    for row in x[..3 * w * h].chunks_exact(3 * w) {
        for px in row.chunks_exact(3).rev() {
            out.extend_from_slice(px);
        }
    }
    out
}

/// Normalisation of whole images of any size (the paper's fully-convolutional
/// multi-scale testing), with the same conventions as [`Normalizer`]: for
/// [`Normalization::PerPixelMean`] the mean image is resized to each image's size.
#[derive(Debug, Clone)]
pub struct WholeNormalizer {
    norm: Normalization,
    mean_image: Vec<f32>,
    mean_size: u32,
    channel_std: [f64; 3],
}

impl WholeNormalizer {
    /// `mean_image`, `mean_size` and `channel_std` as for [`Normalizer::new`].
    pub fn new(
        norm: Normalization,
        mean_image: Vec<f32>,
        mean_size: u32,
        channel_std: [f64; 3],
    ) -> Self {
        WholeNormalizer {
            norm,
            mean_image,
            mean_size,
            channel_std,
        }
    }

    /// The `w x h` RGB8 image `hwc` as channels-last f32 (the models' layout),
    /// mirrored left to right if `flip`.
    pub fn hwc(&self, hwc: &[u8], w: u32, h: u32, flip: bool) -> Vec<f32> {
        let (w, h) = (w as usize, h as usize);
        let n = w * h;
        assert!(
            hwc.len() >= 3 * n,
            "{} bytes for a {w}x{h} image",
            hwc.len()
        );
        let (mean, mul): (Option<Vec<f32>>, [f32; 3]) = match self.norm {
            Normalization::PerPixelMean => (
                Some(resize_mean_to(
                    &self.mean_image,
                    self.mean_size,
                    w as u32,
                    h as u32,
                )),
                self.channel_std.map(|s| 1.0 / (s.max(1e-3) as f32)),
            ),
            Normalization::PerChannel { mean, std } => {
                let m: Vec<f32> = (0..n).flat_map(|_| mean.map(|v| v * 255.0)).collect();
                (Some(m), std.map(|s| 1.0 / (255.0 * s)))
            }
            Normalization::Unit => (None, [1.0 / 255.0; 3]),
        };
        let mut out = vec![0f32; 3 * n];
        for i in 0..n {
            for c in 0..3 {
                let m = mean.as_ref().map_or(0.0, |m| m[i * 3 + c]);
                out[i * 3 + c] = (hwc[i * 3 + c] as f32 - m) * mul[c];
            }
        }
        if flip {
            out = mirror_hwc(&out, w, h);
        }
        out
    }
}

/// The raw-output twin of [`Normalizer::write_chw_shifted`]: HWC u8, zero padding.
pub fn write_hwc_u8_shifted(
    hwc: &[u8],
    size: usize,
    dx: isize,
    dy: isize,
    flip: bool,
    out: &mut [u8],
) {
    let s = size as isize;
    for y in 0..size {
        for x in 0..size {
            let cx = if flip { size - 1 - x } else { x } as isize;
            let (sx, sy) = (cx + dx, y as isize + dy);
            let o = (y * size + x) * 3;
            if (0..s).contains(&sx) && (0..s).contains(&sy) {
                let at = (sy as usize * size + sx as usize) * 3;
                out[o..o + 3].copy_from_slice(&hwc[at..at + 3]);
            } else {
                out[o..o + 3].fill(0);
            }
        }
    }
}

/// Resizes the HWC f32 mean image to `size` square.
fn resize_mean(mean: &[f32], from: u32, size: u32) -> Vec<f32> {
    resize_mean_to(mean, from, size, size)
}

/// Resizes the HWC f32 mean image (`from` square) to `w x h`.
pub fn resize_mean_to(mean: &[f32], from: u32, w: u32, h: u32) -> Vec<f32> {
    if from == w && from == h {
        return mean.to_vec();
    }
    let bytes: Vec<u8> = mean.iter().flat_map(|v| v.to_ne_bytes()).collect();
    let src = ImageRef::new(from, from, &bytes, PixelType::F32x3).expect("mean image size");
    let mut dst = Image::new(w, h, PixelType::F32x3);
    Resizer::new()
        .resize(
            &src,
            &mut dst,
            &ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear)),
        )
        .expect("resize mean image");
    dst.buffer()
        .chunks_exact(4)
        .map(|c| f32::from_ne_bytes(c.try_into().expect("4 bytes")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A whole image normalises like a square batch input of its size, and
    /// its mirror is the mirror of that (pixel and mean together; the batch
    /// path's flip keeps the mean in place, see `write_hwc`).
    #[test]
    fn whole_images_normalise_like_batches_and_mirror() {
        let (w, h) = (4u32, 4u32);
        let mean: Vec<f32> = (0..48).map(|i| i as f32 * 0.5).collect();
        let std = [2.0, 4.0, 8.0];
        let hwc: Vec<u8> = (0..48).map(|i| (i * 5) as u8).collect();
        let whole = WholeNormalizer::new(Normalization::PerPixelMean, mean.clone(), 4, std);
        let square = Normalizer::new(Normalization::PerPixelMean, 4, &mean, 4, std);
        let mut want = vec![0f32; 48];
        square.write_hwc(&hwc, false, [0.0; 3], &mut want);
        assert_eq!(whole.hwc(&hwc, w, h, false), want);
        let mirrored: Vec<f32> = (0..16)
            .flat_map(|p| {
                let (y, x) = (p / 4, 3 - p % 4);
                want[(y * 4 + x) * 3..(y * 4 + x) * 3 + 3].to_vec()
            })
            .collect();
        assert_eq!(whole.hwc(&hwc, w, h, true), mirrored);
        // 3 x 2, channel 0: the mirror's first pixel is the last of the row.
        let unit = WholeNormalizer::new(Normalization::Unit, Vec::new(), 0, std);
        let px: Vec<u8> = (0..18).collect();
        let m = unit.hwc(&px, 3, 2, true);
        assert_eq!(m[0], 6.0 * (1.0 / 255.0));
        assert_eq!(m[9], 15.0 * (1.0 / 255.0));
    }

    #[test]
    fn per_pixel_mean_flip_and_round_trip() {
        let size = 4u32;
        let mean: Vec<f32> = (0..48).map(|i| i as f32).collect();
        let norm = Normalizer::new(Normalization::PerPixelMean, size, &mean, 4, [2.0, 4.0, 8.0]);
        let hwc: Vec<u8> = (0..48).map(|i| (i * 5) as u8).collect();
        let mut out = vec![0f32; 48];
        norm.write_chw(&hwc, false, [0.0; 3], &mut out);
        // pixel (y=1, x=2), channel 1: hwc index (1*4+2)*3+1 = 19
        assert_eq!(out[16 + 6], (95.0 - 19.0) / 4.0);
        assert_eq!(norm.to_rgb8(&out), hwc);
        let mut flipped = vec![0f32; 48];
        norm.write_chw(&hwc, true, [0.0; 3], &mut flipped);
        // x=2 mirrored reads x=1: hwc index (1*4+1)*3+1 = 16, mean at the output position.
        assert_eq!(flipped[16 + 6], (80.0 - 19.0) / 4.0);
        let mut raw = vec![0u8; 48];
        write_hwc_u8(&hwc, 4, true, &mut raw);
        assert_eq!(&raw[0..3], &hwc[9..12]);
    }

    #[test]
    fn shifted_crop_pads_with_zero_and_uses_the_source_mean() {
        let mean: Vec<f32> = (0..12).map(|i| i as f32).collect(); // 2x2
        let norm = Normalizer::new(Normalization::PerPixelMean, 2, &mean, 2, [1.0; 3]);
        let hwc: Vec<u8> = (0..12).map(|i| (i * 10) as u8).collect();
        let mut out = vec![9f32; 12];
        // Shift by (+1, 0): output x=0 reads source x=1, output x=1 is padding.
        norm.write_chw_shifted(&hwc, 1, 0, false, &mut out);
        // channel 0, y=0, x=0 <- source (0, 1): value 30, mean 3.
        assert_eq!(out[0], 27.0);
        assert_eq!(out[1], 0.0);
        // No shift, mirrored: output x=0 reads source x=1.
        norm.write_chw_shifted(&hwc, 0, 0, true, &mut out);
        assert_eq!(out[0], 27.0);
        assert_eq!(out[1], 0.0); // source (0, 0): value 0, mean 0
    }

    #[test]
    fn channels_last_is_the_transpose_of_chw() {
        let mean: Vec<f32> = (0..27).map(|i| i as f32 * 2.0).collect();
        let norm = Normalizer::new(Normalization::PerPixelMean, 3, &mean, 3, [2.0, 3.0, 4.0]);
        let hwc: Vec<u8> = (0..27).map(|i| (i * 7 % 256) as u8).collect();
        for flip in [false, true] {
            let (mut chw, mut last) = (vec![0f32; 27], vec![0f32; 27]);
            norm.write_chw(&hwc, flip, [1.0, 2.0, 3.0], &mut chw);
            norm.write_hwc(&hwc, flip, [1.0, 2.0, 3.0], &mut last);
            for i in 0..9 {
                for c in 0..3 {
                    assert_eq!(last[i * 3 + c], chw[c * 9 + i]);
                }
            }
            norm.write_chw_shifted(&hwc, 1, -1, flip, &mut chw);
            norm.write_hwc_shifted(&hwc, 1, -1, flip, &mut last);
            for i in 0..9 {
                for c in 0..3 {
                    assert_eq!(last[i * 3 + c], chw[c * 9 + i]);
                }
            }
        }
    }

    #[test]
    fn per_channel_is_torchvision() {
        let norm = Normalizer::new(
            Normalization::PerChannel {
                mean: [0.485, 0.456, 0.406],
                std: [0.229, 0.224, 0.225],
            },
            1,
            &[],
            0,
            [1.0; 3],
        );
        let mut out = [0f32; 3];
        norm.write_chw(&[255, 0, 128], false, [0.0; 3], &mut out);
        let want = [
            (1.0 - 0.485) / 0.229,
            (0.0 - 0.456) / 0.224,
            (128.0 / 255.0 - 0.406) / 0.225,
        ];
        for c in 0..3 {
            assert!((out[c] - want[c]).abs() < 1e-5);
        }
    }
}
