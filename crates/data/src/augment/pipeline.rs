//! One record's bytes → its network input(s): the augmentation a loader
//! worker runs per sample.
//!
//! ```text
//! header ─▶ draw the crop box(es) ─▶ decode only their region ─▶ per box: crop-resize ─▶ flip + normalise ─▶ out
//! CIFAR:  decode all ─▶ (no-op) resize ─▶ draw shift + flip ─▶ zero-padded shifted copy ─▶ out
//! ```
//!
//! The caller gives the sample's generator ([`super::sample_rng`]), so the
//! output depends on `(seed, epoch, index)` only, and a [`Scratch`] per
//! worker, so no sample allocates in the steady state.

use super::crop::resized_dims;
use super::normalize::{self, Normalizer};
use super::resize::{CropResizer, ResizeError, resize_rgb};
use super::{Augment, CropBox, Lighting};
use crate::decode::{DecodeError, decode_rgb, decode_rgb_region};
use rand::Rng;

/// Why a sample could not be produced.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AugmentError {
    /// The record's bytes did not decode.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// Resizing failed.
    #[error("resize: {0}")]
    Resize(#[from] ResizeError),
}

/// A step of [`Pipeline::apply`] just finished (for per-stage profiling).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// The record was decoded (the region its crops need).
    Decode,
    /// One view was cropped and resized.
    Resize,
    /// One view was flipped and normalised into the output.
    Normalize,
}

/// Per-worker scratch, reused for every sample: the decode buffer and the resizer.
pub struct Scratch {
    rgb: Vec<u8>,
    resizer: CropResizer,
}

impl Scratch {
    /// Scratch for outputs of side `size`.
    pub fn new(size: u32) -> Self {
        Scratch {
            rgb: Vec::new(),
            resizer: CropResizer::new(size),
        }
    }
}

/// Where one record's views go: [`Augment::views`] consecutive
/// `3 * size * size` inputs, in the layout the variant names.
pub enum Out<'a> {
    /// Normalised, channels-first.
    F32Chw(&'a mut [f32]),
    /// Normalised, channels-last.
    F32Hwc(&'a mut [f32]),
    /// Raw pixels, channels-last (normalised later, e.g. on the GPU).
    U8Hwc(&'a mut [u8]),
}

/// How a resized view is placed into its output.
enum Place {
    /// As is or mirrored, with a lighting offset.
    Whole { flip: bool, light: [f32; 3] },
    /// Shifted by `(dx, dy)` with zero padding, as is or mirrored (CIFAR).
    Shifted { dx: isize, dy: isize, flip: bool },
}

impl Out<'_> {
    /// Writes the `size x size` RGB8 `pixels` as view `view`.
    fn write(&mut self, n: &Normalizer, pixels: &[u8], view: usize, place: Place) {
        let size = n.size();
        let len = 3 * size * size;
        let at = view * len..(view + 1) * len;
        match (self, place) {
            (Out::F32Chw(o), Place::Whole { flip, light }) => {
                n.write_chw(pixels, flip, light, &mut o[at])
            }
            (Out::F32Hwc(o), Place::Whole { flip, light }) => {
                n.write_hwc(pixels, flip, light, &mut o[at])
            }
            (Out::U8Hwc(o), Place::Whole { flip, .. }) => {
                normalize::write_hwc_u8(pixels, size, flip, &mut o[at])
            }
            (Out::F32Chw(o), Place::Shifted { dx, dy, flip }) => {
                n.write_chw_shifted(pixels, dx, dy, flip, &mut o[at])
            }
            (Out::F32Hwc(o), Place::Shifted { dx, dy, flip }) => {
                n.write_hwc_shifted(pixels, dx, dy, flip, &mut o[at])
            }
            (Out::U8Hwc(o), Place::Shifted { dx, dy, flip }) => {
                normalize::write_hwc_u8_shifted(pixels, size, dx, dy, flip, &mut o[at])
            }
        }
    }
}

/// An augmentation together with the normalisation and lighting it ends with.
#[derive(Debug, Clone)]
pub struct Pipeline {
    augment: Augment,
    normalizer: Normalizer,
    lighting: Lighting,
}

impl Pipeline {
    /// `normalizer` must be for `augment`'s crop size.
    pub fn new(augment: Augment, normalizer: Normalizer, lighting: Lighting) -> Self {
        assert_eq!(
            normalizer.size(),
            augment.crop_size() as usize,
            "normaliser and augmentation disagree on the output size"
        );
        Pipeline {
            augment,
            normalizer,
            lighting,
        }
    }

    /// The augmentation.
    pub fn augment(&self) -> &Augment {
        &self.augment
    }

    /// The normalisation.
    pub fn normalizer(&self) -> &Normalizer {
        &self.normalizer
    }

    /// Writes every view of the record `bytes` into `out`, drawing the
    /// sample's random choices from `rng`; `stage` is told when each step ends.
    pub fn apply(
        &self,
        scratch: &mut Scratch,
        bytes: &[u8],
        rng: &mut impl Rng,
        mut out: Out<'_>,
        stage: &mut impl FnMut(Stage),
    ) -> Result<(), AugmentError> {
        // Up to 10 boxes, on the stack: no per-sample allocation. They are
        // drawn once the header gives the image's size, so that only the
        // pixels they need are decoded (the whole image for CIFAR: no boxes).
        let mut boxes = [CropBox::default(); 10];
        let mut n_boxes = 0;
        let mut alpha = None;
        let resizer = &mut scratch.resizer;
        let (info, region) = decode_rgb_region(bytes, &mut scratch.rgb, |iw, ih| {
            n_boxes = match &self.augment {
                Augment::Train(aug) => {
                    let (p, b) = aug.draw(iw, ih, rng);
                    boxes[0] = b;
                    alpha = (aug.lighting_std > 0.0).then_some(p.alpha);
                    1
                }
                Augment::Eval(e) => e.boxes_into(iw, ih, &mut boxes),
                Augment::Cifar(_) => 0,
            };
            resizer.source_region(&boxes[..n_boxes], iw, ih)
        })?;
        stage(Stage::Decode);
        let rgb = &scratch.rgb;
        // Whole image to the crop size (a no-op copy for CIFAR-sized
        // records), then shifted views: one random pad-crop-flip for CIFAR
        // training, ten fixed ones for the padded ten-crop.
        let shifted = match &self.augment {
            Augment::Eval(e) => e.padded_views().map(|v| (v, 10)),
            Augment::Cifar(_) => Some(([(0, 0, false); 10], 1)),
            Augment::Train(_) => None,
        };
        if let Some((mut views, n)) = shifted {
            let full = CropBox {
                left: 0.0,
                top: 0.0,
                width: info.width as f64,
                height: info.height as f64,
                flip: false,
            };
            let pixels = resizer.crop_resize(rgb, info.width, info.height, &full)?;
            stage(Stage::Resize);
            if let Augment::Cifar(c) = &self.augment {
                let p = c.draw(rng);
                let (dx, dy) = (
                    p.crop_x as isize - c.pad as isize,
                    p.crop_y as isize - c.pad as isize,
                );
                views[0] = (dx, dy, p.flip);
            }
            for (v, &(dx, dy, flip)) in views[..n].iter().enumerate() {
                out.write(&self.normalizer, pixels, v, Place::Shifted { dx, dy, flip });
                stage(Stage::Normalize);
            }
        }
        let light = alpha.map_or([0.0; 3], |a| self.lighting.offset(a));
        for (v, b) in boxes[..n_boxes].iter().enumerate() {
            let pixels =
                resizer.crop_resize(rgb, region.width, region.height, &b.within(&region))?;
            stage(Stage::Resize);
            let place = Place::Whole {
                flip: b.flip,
                light,
            };
            out.write(&self.normalizer, pixels, v, place);
            stage(Stage::Normalize);
        }
        Ok(())
    }
}

/// A whole decoded image resized so its shorter side is a given length, no
/// crop: the input of the paper's fully-convolutional multi-scale testing
/// (normalise it with [`normalize::WholeNormalizer`]).
#[derive(Debug, Clone)]
pub struct WholeImage {
    /// RGB8, channels-last, `3 * width * height`.
    pub pixels: Vec<u8>,
    /// Width.
    pub width: u32,
    /// Height.
    pub height: u32,
}

impl WholeImage {
    /// Decodes `bytes` and resizes the image so that its shorter side is `short`.
    pub fn decode(bytes: &[u8], short: u32) -> Result<WholeImage, AugmentError> {
        let mut rgb = Vec::new();
        let info = decode_rgb(bytes, &mut rgb)?;
        let (width, height) = resized_dims(info.width, info.height, short);
        let pixels = resize_rgb(&rgb, info.width, info.height, width, height)?;
        Ok(WholeImage {
            pixels,
            width,
            height,
        })
    }
}
