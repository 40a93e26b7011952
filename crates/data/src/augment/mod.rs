//! Augmentation: one record → one network input, as in the paper.
//!
//! Training (He et al. 2015, §3.4, after Krizhevsky et al. 2012): decode;
//! resize so the shorter side is S ~ U[256, 480]; take a random 224x224
//! crop; flip horizontally with probability 1/2; subtract the per-pixel mean;
//! optionally add AlexNet's PCA lighting noise. Evaluation: shorter side 256
//! and the centre 224 crop; ten crops (4 corners + centre, and their flips);
//! or the whole image at a given shorter side (fully-convolutional testing).
//!
//! Only the work the output needs is done: the crop is computed in the
//! source image's coordinates and just that region is resized straight to
//! the output size ([`resize`]), then flip and normalisation write the
//! network's CHW f32 input in one pass ([`normalize`]). [`Pipeline`] chains
//! those steps for one record; the loader only schedules it.
//!
//! Every random choice for a sample comes from [`sample_rng`]`(seed, epoch,
//! index)`, never from a global or per-thread generator, so the output does
//! not depend on which worker ran it.

pub mod crop;
pub mod lighting;
pub mod normalize;
pub mod pipeline;
pub mod resize;

use crate::seed::mix_seed;
pub use crop::{CifarAugment, CropBox, EvalCrop, SampleParams, TrainAugment};
pub use lighting::Lighting;
pub use normalize::{Normalization, Normalizer, WholeNormalizer};
pub use pipeline::{AugmentError, Out, Pipeline, Scratch, Stage, WholeImage};
use rand::SeedableRng;
pub use resize::{CropResizer, ResizeError};

/// The generator for one sample's random choices.
pub fn sample_rng(seed: u64, epoch: u64, index: u64) -> rand_pcg::Pcg64 {
    rand_pcg::Pcg64::seed_from_u64(mix_seed(&[seed, epoch, index, 0x4155_474D]))
}

/// How samples are turned into inputs.
#[derive(Debug, Clone, PartialEq)]
pub enum Augment {
    /// Training: random scale, crop, flip (and lighting).
    Train(TrainAugment),
    /// Evaluation: deterministic crops.
    Eval(EvalCrop),
    /// The paper's CIFAR augmentation: pad, random crop, flip.
    Cifar(CifarAugment),
}

impl Augment {
    /// Output side (square).
    pub fn crop_size(&self) -> u32 {
        match self {
            Augment::Train(t) => t.crop,
            Augment::Eval(e) => e.crop_size(),
            Augment::Cifar(c) => c.crop,
        }
    }

    /// Network inputs produced per record (10 for ten-crop, else 1).
    pub fn views(&self) -> usize {
        match self {
            Augment::Eval(e) => e.views(),
            _ => 1,
        }
    }
}

impl Default for Augment {
    fn default() -> Self {
        Augment::Train(TrainAugment::default())
    }
}
