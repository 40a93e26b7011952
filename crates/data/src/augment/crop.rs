//! Where to crop: the paper's scale augmentation and the evaluation crops,
//! as boxes in the source image's coordinates.

use rand::Rng;
use serde::{Deserialize, Serialize};

/// A region of the source image (pixels, fractional) and whether to mirror it.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct CropBox {
    /// Left edge.
    pub left: f64,
    /// Top edge.
    pub top: f64,
    /// Width.
    pub width: f64,
    /// Height.
    pub height: f64,
    /// Mirror horizontally after resizing.
    pub flip: bool,
}

impl CropBox {
    /// The same box in the coordinates of `region` of the image.
    pub fn within(&self, region: &crate::decode::Region) -> CropBox {
        CropBox {
            left: self.left - region.x as f64,
            top: self.top - region.y as f64,
            ..*self
        }
    }
}

/// The paper's training augmentation settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TrainAugment {
    /// Shorter side S is drawn uniformly from `scale.0..=scale.1` (paper: 256..=480).
    pub scale: (u32, u32),
    /// Output crop side (paper: 224).
    pub crop: u32,
    /// Random horizontal flip with probability 1/2.
    pub flip: bool,
    /// Standard deviation of AlexNet's PCA lighting noise (0 = off; AlexNet: 0.1).
    pub lighting_std: f32,
}

impl Default for TrainAugment {
    fn default() -> Self {
        TrainAugment {
            scale: (256, 480),
            crop: 224,
            flip: true,
            lighting_std: 0.0,
        }
    }
}

/// The paper's CIFAR-10 augmentation (§4.2): pad 4 pixels on each side,
/// take a random 32x32 crop of the padded image, flip with probability 1/2.
/// The padding is zero after normalisation (the per-pixel mean is
/// subtracted first, as in the paper's Torch/Caffe implementations).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CifarAugment {
    /// Padding on each side (paper: 4).
    pub pad: u32,
    /// Output side (paper: 32); images of another size are resized to it first.
    pub crop: u32,
    /// Random horizontal flip.
    pub flip: bool,
}

impl Default for CifarAugment {
    fn default() -> Self {
        CifarAugment {
            pad: 4,
            crop: 32,
            flip: true,
        }
    }
}

impl CifarAugment {
    /// Draws the crop offset in the padded image (`0..=2 * pad` each way) and the flip.
    pub fn draw(&self, rng: &mut impl Rng) -> SampleParams {
        SampleParams {
            s: self.crop,
            crop_x: rng.random_range(0..=2 * self.pad),
            crop_y: rng.random_range(0..=2 * self.pad),
            flip: self.flip && rng.random_bool(0.5),
            alpha: [0.0; 3],
        }
    }
}

/// The random choices made for one training sample (for inspection and tests).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SampleParams {
    /// Drawn shorter side.
    pub s: u32,
    /// Crop position in the resized image.
    pub crop_x: u32,
    /// Crop position in the resized image.
    pub crop_y: u32,
    /// Mirrored.
    pub flip: bool,
    /// PCA lighting coefficients (alpha_i ~ N(0, lighting_std)).
    pub alpha: [f32; 3],
}

/// Size of a `w x h` image whose shorter side is resized to `s` (longer side rounded).
pub fn resized_dims(w: u32, h: u32, s: u32) -> (u32, u32) {
    let scale = s as f64 / w.min(h) as f64;
    let r = |x: u32| ((x as f64 * scale).round() as u32).max(1);
    if w <= h { (s, r(h)) } else { (r(w), s) }
}

/// Maps a `crop`-sized window at `(x, y)` of the `(rw, rh)`-resized image back
/// to the `(w, h)` source. A window larger than the resized image is clamped
/// to it (and so stretched).
fn source_box(
    (w, h): (u32, u32),
    (rw, rh): (u32, u32),
    (x, y): (u32, u32),
    crop: u32,
    flip: bool,
) -> CropBox {
    let (sx, sy) = (w as f64 / rw as f64, h as f64 / rh as f64);
    let (left, top) = (x as f64 * sx, y as f64 * sy);
    // Clamp away floating-point excess so the box never leaves the image.
    CropBox {
        left,
        top,
        width: (crop.min(rw) as f64 * sx).min(w as f64 - left),
        height: (crop.min(rh) as f64 * sy).min(h as f64 - top),
        flip,
    }
}

impl TrainAugment {
    /// Draws the parameters for a `w x h` image and the matching source box.
    pub fn draw(&self, w: u32, h: u32, rng: &mut impl Rng) -> (SampleParams, CropBox) {
        let (lo, hi) = (
            self.scale.0.min(self.scale.1),
            self.scale.0.max(self.scale.1),
        );
        let s = rng.random_range(lo..=hi);
        let (rw, rh) = resized_dims(w, h, s);
        let crop_x = rng.random_range(0..=rw.saturating_sub(self.crop));
        let crop_y = rng.random_range(0..=rh.saturating_sub(self.crop));
        let flip = self.flip && rng.random_bool(0.5);
        let mut alpha = [0f32; 3];
        if self.lighting_std > 0.0 {
            for a in &mut alpha {
                *a = normal(rng) * self.lighting_std;
            }
        }
        let params = SampleParams {
            s,
            crop_x,
            crop_y,
            flip,
            alpha,
        };
        (
            params,
            source_box((w, h), (rw, rh), (crop_x, crop_y), self.crop, flip),
        )
    }
}

/// A standard normal draw (Box-Muller).
fn normal(rng: &mut impl Rng) -> f32 {
    let u1: f64 = rng.random_range(f64::MIN_POSITIVE..1.0);
    let u2: f64 = rng.random();
    ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
}

/// Evaluation crops.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum EvalCrop {
    /// Shorter side to `resize`, then the centre `crop` (the standard single-crop test).
    Center {
        /// Shorter side before cropping (256).
        resize: u32,
        /// Crop side (224).
        crop: u32,
    },
    /// The four corners and the centre, and their mirrors: 10 views per image.
    TenCrop {
        /// Shorter side before cropping.
        resize: u32,
        /// Crop side.
        crop: u32,
    },
    /// Ten-crop at the scale a CIFAR net trained at: the whole image
    /// resized to `crop`, padded by `pad` on each side (zero after
    /// normalisation, as in [`CifarAugment`]), its centre and four corner
    /// crops of side `crop`, and their mirrors. These are the extremes of
    /// the pad-and-crop training draws; [`EvalCrop::TenCrop`] from a
    /// resized image would zoom the image instead, to a scale the net
    /// never saw.
    PaddedTenCrop {
        /// Padding on each side (4 at 32).
        pad: u32,
        /// Crop side, the size the image is resized to.
        crop: u32,
    },
}

impl Default for EvalCrop {
    fn default() -> Self {
        EvalCrop::Center {
            resize: 256,
            crop: 224,
        }
    }
}

impl EvalCrop {
    /// Output side.
    pub fn crop_size(&self) -> u32 {
        match *self {
            EvalCrop::Center { crop, .. }
            | EvalCrop::TenCrop { crop, .. }
            | EvalCrop::PaddedTenCrop { crop, .. } => crop,
        }
    }

    /// Views per image: 1 or 10.
    pub fn views(&self) -> usize {
        match self {
            EvalCrop::Center { .. } => 1,
            EvalCrop::TenCrop { .. } | EvalCrop::PaddedTenCrop { .. } => 10,
        }
    }

    /// For [`EvalCrop::PaddedTenCrop`], each view's shift of the resized
    /// image and its mirroring (centre, top-left, top-right, bottom-left,
    /// bottom-right, then the same mirrored), as the CIFAR augmentation
    /// places its crops: output pixel `(x, y)` shows `(x + dx, y + dy)`.
    pub fn padded_views(&self) -> Option<[(isize, isize, bool); 10]> {
        let EvalCrop::PaddedTenCrop { pad, .. } = *self else {
            return None;
        };
        let p = pad as isize;
        let at = [(0, 0), (-p, -p), (p, -p), (-p, p), (p, p)];
        Some(std::array::from_fn(|v| {
            let (dx, dy) = at[v % 5];
            (dx, dy, v >= 5)
        }))
    }

    /// Writes the boxes into `out` and returns how many (1 or 10): no allocation.
    pub fn boxes_into(&self, w: u32, h: u32, out: &mut [CropBox; 10]) -> usize {
        let b = self.boxes(w, h);
        out[..b.len()].copy_from_slice(&b);
        b.len()
    }

    /// The boxes for a `w x h` image: 1 or 10 (in the order centre,
    /// top-left, top-right, bottom-left, bottom-right, then the same
    /// mirrored); none for [`EvalCrop::PaddedTenCrop`], whose views are
    /// shifts of the whole image ([`EvalCrop::padded_views`]).
    pub fn boxes(&self, w: u32, h: u32) -> Vec<CropBox> {
        match *self {
            EvalCrop::PaddedTenCrop { .. } => Vec::new(),
            EvalCrop::Center { resize, crop } => {
                let (rw, rh) = resized_dims(w, h, resize);
                let (x, y) = (rw.saturating_sub(crop) / 2, rh.saturating_sub(crop) / 2);
                vec![source_box((w, h), (rw, rh), (x, y), crop, false)]
            }
            EvalCrop::TenCrop { resize, crop } => {
                let (rw, rh) = resized_dims(w, h, resize);
                let (mx, my) = (rw.saturating_sub(crop), rh.saturating_sub(crop));
                let at = [(mx / 2, my / 2), (0, 0), (mx, 0), (0, my), (mx, my)];
                [false, true]
                    .into_iter()
                    .flat_map(|flip| {
                        at.iter()
                            .map(move |&at| source_box((w, h), (rw, rh), at, crop, flip))
                    })
                    .collect()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::augment::sample_rng;
    use proptest::prelude::*;

    proptest! {
        /// Crop boxes stay inside the source and S inside its range, for any image size.
        #[test]
        fn boxes_in_bounds(w in 1u32..3000, h in 1u32..3000, seed in any::<u64>()) {
            let aug = TrainAugment::default();
            let (p, b) = aug.draw(w, h, &mut sample_rng(seed, 0, 0));
            prop_assert!((256..=480).contains(&p.s));
            prop_assert!(b.left >= 0.0 && b.top >= 0.0);
            prop_assert!(b.left + b.width <= w as f64, "{b:?} {w}");
            prop_assert!(b.top + b.height <= h as f64, "{b:?} {h}");
            let (rw, rh) = resized_dims(w, h, p.s);
            prop_assert!(p.crop_x + 224 <= rw.max(224) && p.crop_y + 224 <= rh.max(224));
            for e in [EvalCrop::Center { resize: 256, crop: 224 }, EvalCrop::TenCrop { resize: 256, crop: 224 }] {
                for b in e.boxes(w, h) {
                    prop_assert!(b.left >= 0.0 && b.left + b.width <= w as f64);
                    prop_assert!(b.top >= 0.0 && b.top + b.height <= h as f64);
                }
            }
        }
    }

    /// S, the crop position and the flip are uniform: chi-square tests with a fixed seed.
    #[test]
    fn draws_are_uniform() {
        let aug = TrainAugment::default();
        let n = 45_000;
        let mut s_bins = [0u32; 15]; // 225 values of S in 15 bins of 15
        let mut x_bins = [0u32; 10];
        let mut flips = 0;
        for i in 0..n {
            let (p, _) = aug.draw(500, 375, &mut sample_rng(42, 0, i));
            s_bins[((p.s - 256) / 15) as usize] += 1;
            let (rw, _) = resized_dims(500, 375, p.s);
            let frac = p.crop_x as f64 / (rw - 224 + 1) as f64;
            x_bins[(frac * 10.0) as usize] += 1;
            flips += p.flip as u32;
        }
        let chi2 = |bins: &[u32]| {
            let e = n as f64 / bins.len() as f64;
            bins.iter()
                .map(|&o| (o as f64 - e).powi(2) / e)
                .sum::<f64>()
        };
        // 99.9% quantiles: chi2(14) = 36.1; chi2(9) = 27.9.
        assert!(chi2(&s_bins) < 36.1, "S not uniform: {s_bins:?}");
        assert!(chi2(&x_bins) < 27.9, "crop x not uniform: {x_bins:?}");
        let p = flips as f64 / n as f64;
        assert!(
            (p - 0.5).abs() < 4.0 * (0.25 / n as f64).sqrt(),
            "flip rate {p}"
        );
    }

    #[test]
    fn ten_crop_corners_are_exact_at_unit_scale() {
        // A 300x256 image: shorter side already 256, so the crops are plain windows.
        let b = EvalCrop::TenCrop {
            resize: 256,
            crop: 224,
        }
        .boxes(300, 256);
        assert_eq!(b.len(), 10);
        let at = |b: &CropBox| (b.left, b.top, b.width, b.height, b.flip);
        assert_eq!(at(&b[0]), (38.0, 16.0, 224.0, 224.0, false));
        assert_eq!(at(&b[1]), (0.0, 0.0, 224.0, 224.0, false));
        assert_eq!(at(&b[4]), (76.0, 32.0, 224.0, 224.0, false));
        assert_eq!(at(&b[9]), (76.0, 32.0, 224.0, 224.0, true));
        let c = EvalCrop::Center {
            resize: 256,
            crop: 224,
        }
        .boxes(512, 1024);
        assert_eq!(at(&c[0]), (32.0, 288.0, 448.0, 448.0, false)); // (256x512 resized: window at 16,144)
    }
}
