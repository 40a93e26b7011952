//! # resnet-imagenet
//!
//! Train residual networks (He et al. 2015) on ImageNet-style data, fast.
//!
//! ```text
//! folder ─pack─▶ shards ─reader─▶ Record ─sampler─▶ indices ─augment─▶ sample ─loader─▶ Batch ─▶ model ─▶ train
//! ```
//!
//! - [`pack`]: an ImageNet folder → memory-mapped shards ([`format`] documents the bytes).
//! - [`reader`]: maps shards and hands out zero-copy [`reader::Record`]s.
//! - [`decode`]: encoded bytes → RGB pixels.
//! - [`sampler`]: the order of each epoch, per rank.
//! - [`augment`]: the paper's scale/crop/flip/mean augmentation and the evaluation crops.
//! - [`loader`]: the crossbeam worker pool that yields augmented batches in order.
//! - [`model`]: the ResNets on dfdx (stable Rust), torchvision-compatible checkpoints.
//! - [`engine`]: the planned training engine (a static plan per batch and size, one arena, per-op backward), tested against dfdx.
//! - [`train`]: the trainer (SGD, schedules, evaluation, checkpoints, logs).
//! - [`measure`]: medians, the loader against its decode-only ceiling, the CPU-vs-device parity check, step timings; [`plot`]: charts.
//! - Shared by the stages: [`files`] (atomic writes), [`seed`] (seed mixing), [`error`];
//!   by the binaries: [`cli`]; [`sample`]: the bundled sample, packed.
//!
//! The data half (`pack` to `loader`, `files`, `seed`, `progress`, the
//! loader's benchmark) is its own crate, `resnet-imagenet-data` (no dfdx,
//! no clap, no plotters: what the Python package is built from); it is
//! re-exported here under the same paths.
//!
//! ```no_run
//! use resnet_imagenet::{augment::TrainAugment, loader::LoaderBuilder, pack, reader::Dataset};
//! use std::sync::Arc;
//! pack::pack("datasets/sample".as_ref(), "target/sample-packed".as_ref(), &Default::default())?;
//! let train = Arc::new(Dataset::open("target/sample-packed/train")?);
//! let r = train.record_checked(0)?;
//! println!("{} records; record 0: {}x{} label {}", train.len(), r.width, r.height, r.label);
//! let loader = LoaderBuilder::new().batch_size(32).workers(2).seed(0).train(TrainAugment::default()).build(train)?;
//! for batch in loader.epoch(0) {
//!     let batch = batch?; // [B, 3, 224, 224] f32 CHW and B labels
//!     assert_eq!(batch.images().len(), batch.len() * 3 * 224 * 224);
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(missing_docs)]

pub mod cli;
pub mod dist;
pub mod engine;
pub mod error;
pub mod measure;
pub mod model;
pub mod plot;
pub mod sample;
pub mod train;

pub use resnet_imagenet_data::{
    augment, decode, files, format, loader, pack, progress, reader, sampler, seed,
};

pub use error::{Error, Result};
