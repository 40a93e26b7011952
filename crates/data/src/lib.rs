//! # resnet-imagenet-data
//!
//! The data half of resnet-imagenet: pack an ImageNet-style folder into
//! memory-mapped, checksummed shards and stream them through the paper's
//! augmentation (He et al. 2015), reproducibly whatever the worker count,
//! split across ranks, resumable mid-epoch. No model, no trainer: the
//! trainer crate (`resnet-imagenet`) and the Python package build on it.
//!
//! ```text
//! folder ─pack─▶ shards ─reader─▶ Record ─sampler─▶ indices ─augment─▶ sample ─loader─▶ Batch
//! ```
//!
//! - [`pack`]: an ImageNet folder → memory-mapped shards ([`format`] documents the bytes).
//! - [`reader`]: maps shards and hands out zero-copy [`reader::Record`]s.
//! - [`decode`]: encoded bytes → RGB pixels.
//! - [`sampler`]: the order of each epoch, per rank.
//! - [`augment`]: the paper's scale/crop/flip/mean augmentation and the evaluation crops.
//! - [`loader`]: the crossbeam worker pool that yields augmented batches in order.
//! - [`measure`]: medians, the loader against its decode-only ceiling.
//! - Shared: [`files`] (atomic writes), [`seed`] (seed mixing),
//!   [`progress`] (bars), [`error`].
#![deny(missing_docs)]

pub mod augment;
pub mod decode;
pub mod error;
pub mod files;
pub mod format;
pub mod loader;
pub mod measure;
pub mod pack;
pub mod progress;
pub mod reader;
pub mod sampler;
pub mod seed;

pub use error::{Error, Result};
