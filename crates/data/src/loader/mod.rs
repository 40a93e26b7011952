//! The streaming loader: a crossbeam worker pool over memory-mapped shards
//! that yields augmented batches in order.
//!
//! ```text
//! epoch order (seed, epoch, rank) ─▶ jobs (batch, slot, record) ─▶ W workers:
//!     record (mmap) ─▶ decode ─▶ crop-resize ─▶ flip + normalise ─▶ slot of a pooled batch buffer
//! ─▶ completion channel ─▶ consumer yields batch k when all its slots are written
//! ```
//!
//! - In order and reproducible: the order depends on `(seed, epoch)`, each
//!   sample's random choices on `(seed, epoch, index)`; the bytes of every
//!   batch are the same whatever the number of workers.
//! - Bounded: at most `prefetch` batches are being filled ahead of the
//!   consumer; buffers are reused (no per-sample heap allocation in the
//!   steady state: each worker owns its decode buffer and resizer).
//! - Resumable: [`Epoch::state`] is a [`LoaderState`] (seed, epoch,
//!   position) to save in a checkpoint; [`Loader::resume`] continues with
//!   exactly the batches an uninterrupted run would have yielded.
//! - Failures surface: a record that fails (or a worker that panics) is an
//!   `Err` from the iterator naming the shard and the record, unless
//!   [`OnError::Skip`] substitutes the next record and counts it. Dropping an
//!   [`Epoch`] stops and joins its workers.

mod batch;
mod epoch;
mod worker;

pub use batch::{Batch, OutputKind};
pub use epoch::{Epoch, Next};

/// The names [`LoaderBuilder::augment_named`] knows.
pub const AUGMENT_NAMES: [&str; 4] = ["train", "center", "ten_crop", "cifar"];

use crate::augment::{
    Augment, CifarAugment, EvalCrop, Lighting, Normalization, Normalizer, Pipeline, SampleParams,
    TrainAugment, WholeImage, WholeNormalizer, sample_rng,
};
use crate::error::{LoadError, ReadError};
use crate::reader::Dataset;
use crate::sampler::{Distributed, Order, Remainder, epoch_indices};
use batch::BatchMem;
use crossbeam::channel::{Receiver, Sender};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// What to do with a record that cannot be loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum OnError {
    /// Yield an error naming the shard and record, and end the epoch.
    #[default]
    Fail,
    /// Use the next loadable record of the dataset in its place, and count it.
    Skip,
}

/// Where an epoch is: saved in checkpoints for exact mid-epoch resume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoaderState {
    /// The loader's seed.
    pub seed: u64,
    /// The epoch.
    pub epoch: u64,
    /// Batches of the epoch already consumed.
    pub position: usize,
}

/// Time spent per stage, summed over workers (filled only when profiling is on).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct StageTimes {
    /// Samples processed.
    pub samples: u64,
    /// Locating the record and (if enabled) checking its checksum, seconds.
    pub read: f64,
    /// JPEG decoding, seconds.
    pub decode: f64,
    /// Crop + resize, seconds.
    pub resize: f64,
    /// Flip + normalise into the batch, seconds.
    pub normalize: f64,
    /// Time the consumer waited in `next()` for a batch, seconds.
    pub wait: f64,
    /// Records replaced by the next loadable one ([`OnError::Skip`]); counted always.
    pub skipped: u64,
}

/// Builds a [`Loader`].
#[derive(Debug, Clone)]
pub struct LoaderBuilder {
    batch_size: usize,
    workers: usize,
    prefetch: usize,
    seed: u64,
    augment: Augment,
    order: Option<Order>,
    dist: Distributed,
    drop_last: bool,
    on_error: OnError,
    output: OutputKind,
    normalization: Normalization,
    lighting: Lighting,
    verify_checksums: bool,
    read_ahead: bool,
    profile: bool,
}

impl Default for LoaderBuilder {
    fn default() -> Self {
        LoaderBuilder {
            batch_size: 256,
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            prefetch: 3,
            seed: 0,
            augment: Augment::default(),
            order: None,
            dist: Distributed::default(),
            drop_last: false,
            on_error: OnError::Fail,
            output: OutputKind::F32Chw,
            normalization: Normalization::PerPixelMean,
            lighting: Lighting::imagenet(),
            verify_checksums: true,
            read_ahead: true,
            profile: false,
        }
    }
}

impl LoaderBuilder {
    /// A builder with the paper's training defaults (batch 256, all cores).
    pub fn new() -> Self {
        Self::default()
    }
    /// Records per batch.
    pub fn batch_size(mut self, n: usize) -> Self {
        self.batch_size = n.max(1);
        self
    }
    /// Worker threads.
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n.max(1);
        self
    }
    /// Batches filled ahead of the consumer.
    pub fn prefetch(mut self, n: usize) -> Self {
        self.prefetch = n.max(1);
        self
    }
    /// Seed of the order and of every random choice.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }
    /// The augmentation (training by default).
    pub fn augment(mut self, a: Augment) -> Self {
        self.augment = a;
        self
    }
    /// The paper's training augmentation with these settings.
    pub fn train(self, t: TrainAugment) -> Self {
        self.augment(Augment::Train(t))
    }
    /// The paper's CIFAR augmentation (pad, random crop, flip).
    pub fn cifar(self, c: CifarAugment) -> Self {
        self.augment(Augment::Cifar(c))
    }
    /// Evaluation crops (sequential order unless [`LoaderBuilder::order`] says otherwise).
    pub fn eval(self, e: EvalCrop) -> Self {
        self.augment(Augment::Eval(e))
    }
    /// The augmentation by the name the Python package and the tools give
    /// it, at `crop` pixels: `train` (the paper's), `cifar`, `center` or
    /// `ten_crop` (shorter side resized to 256/224 of `crop`, as the
    /// paper's 256 for 224). Returns the builder and how a rank's share of
    /// a split that does not divide is made: training pads (as PyTorch's
    /// `DistributedSampler`), evaluation visits every record once.
    pub fn augment_named(self, name: &str, crop: u32) -> Result<(Self, Remainder), String> {
        let resize = (crop * 256).div_ceil(224);
        Ok(match name {
            "train" => (
                self.train(TrainAugment {
                    crop,
                    ..TrainAugment::default()
                }),
                Remainder::Pad,
            ),
            "cifar" => (
                self.cifar(CifarAugment {
                    crop,
                    ..CifarAugment::default()
                }),
                Remainder::Pad,
            ),
            "center" => (
                self.eval(EvalCrop::Center { resize, crop }),
                Remainder::Uneven,
            ),
            "ten_crop" => (
                self.eval(EvalCrop::TenCrop { resize, crop }),
                Remainder::Uneven,
            ),
            other => {
                return Err(format!(
                    "{other:?}: expected one of {}",
                    AUGMENT_NAMES.join(", ")
                ));
            }
        })
    }
    /// Epoch order (default: shuffled for training, sequential for evaluation).
    pub fn order(mut self, o: Order) -> Self {
        self.order = Some(o);
        self
    }
    /// This rank's share of each epoch.
    pub fn distributed(mut self, d: Distributed) -> Self {
        self.dist = d;
        self
    }
    /// Drop the last, short batch of each epoch.
    pub fn drop_last(mut self, yes: bool) -> Self {
        self.drop_last = yes;
        self
    }
    /// What to do with records that fail.
    pub fn on_error(mut self, e: OnError) -> Self {
        self.on_error = e;
        self
    }
    /// f32 CHW normalised (default), f32 HWC normalised (for this crate's models), or raw u8 HWC.
    pub fn output(mut self, k: OutputKind) -> Self {
        self.output = k;
        self
    }
    /// Input normalisation (default: the paper's per-pixel mean).
    pub fn normalization(mut self, n: Normalization) -> Self {
        self.normalization = n;
        self
    }
    /// Eigen-decomposition used by the lighting noise (default: ImageNet's).
    pub fn lighting(mut self, l: Lighting) -> Self {
        self.lighting = l;
        self
    }
    /// Check each record's CRC-32 before decoding (default: yes; a corrupt
    /// record is then an error, or skipped and counted, as
    /// [`LoaderBuilder::on_error`] says).
    pub fn verify_checksums(mut self, yes: bool) -> Self {
        self.verify_checksums = yes;
        self
    }
    /// Start the disk reads of the records of the `prefetch` batches after
    /// those being filled (default: yes; see [`Epoch`]), so that reads from
    /// slow storage overlap the decoding. Off only to measure it (on the
    /// disks measured so far it made no measurable difference: BENCHMARKS.md).
    pub fn read_ahead(mut self, yes: bool) -> Self {
        self.read_ahead = yes;
        self
    }
    /// Time each stage (costs two clock reads per stage per sample).
    pub fn profile(mut self, yes: bool) -> Self {
        self.profile = yes;
        self
    }

    /// Builds the loader over `dataset`.
    pub fn build(self, dataset: Arc<Dataset>) -> Result<Loader, ReadError> {
        let d = self.dist;
        if d.world_size == 0 || d.rank >= d.world_size {
            return Err(ReadError::Settings {
                what: "distributed",
                detail: format!(
                    "rank {} of world size {}: needs world size at least 1 and rank below it",
                    d.rank, d.world_size
                ),
            });
        }
        if dataset.len() > u32::MAX as usize {
            return Err(ReadError::Settings {
                what: "dataset",
                detail: format!("{} records; the loader takes at most 2^32", dataset.len()),
            });
        }
        let size = self.augment.crop_size();
        let stats = &dataset.manifest().stats;
        let mean = match self.normalization {
            Normalization::PerPixelMean => dataset.mean_image()?,
            _ => Vec::new(),
        };
        let normalizer = Normalizer::new(
            self.normalization,
            size,
            &mean,
            stats.mean_size,
            stats.channel_std,
        );
        let order = self.order.unwrap_or(match self.augment {
            Augment::Train(_) | Augment::Cifar(_) => Order::Shuffled,
            Augment::Eval(_) => Order::Sequential,
        });
        let whole =
            WholeNormalizer::new(self.normalization, mean, stats.mean_size, stats.channel_std);
        let pipeline = Pipeline::new(self.augment.clone(), normalizer, self.lighting);
        let (pool_tx, pool_rx) = crossbeam::channel::unbounded();
        Ok(Loader {
            shared: Arc::new(Shared {
                dataset,
                pipeline,
                whole,
                cfg: self,
                order,
                pool_tx,
                pool_rx,
                buffers: AtomicUsize::new(0),
            }),
        })
    }
}

struct Shared {
    dataset: Arc<Dataset>,
    pipeline: Pipeline,
    /// The same normalisation for whole images of any size.
    whole: WholeNormalizer,
    cfg: LoaderBuilder,
    order: Order,
    /// Batch buffers not in use, kept across epochs (a new epoch's first
    /// batches would otherwise fault in fresh pages).
    pool_tx: Sender<Arc<BatchMem>>,
    pool_rx: Receiver<Arc<BatchMem>>,
    /// Batch buffers allocated so far.
    buffers: AtomicUsize,
}

impl Shared {
    /// Record `index`, its checksum checked unless the builder said not to.
    fn record(&self, index: usize) -> Result<crate::reader::Record<'_>, ReadError> {
        if self.cfg.verify_checksums {
            self.dataset.record_checked(index)
        } else {
            self.dataset.record(index)
        }
    }
}

/// The loader: makes [`Epoch`] iterators.
#[derive(Clone)]
pub struct Loader {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Loader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loader")
            .field("config", &self.shared.cfg)
            .finish()
    }
}

impl Loader {
    /// The dataset.
    pub fn dataset(&self) -> &Arc<Dataset> {
        &self.shared.dataset
    }

    /// The normaliser (to turn outputs back into pictures).
    pub fn normalizer(&self) -> &Normalizer {
        self.shared.pipeline.normalizer()
    }

    /// Worker threads.
    pub fn workers(&self) -> usize {
        self.shared.cfg.workers
    }

    /// Records per batch.
    pub fn batch_size(&self) -> usize {
        self.shared.cfg.batch_size
    }

    /// Records this rank sees per epoch.
    pub fn samples_per_epoch(&self) -> usize {
        epoch_indices(
            self.shared.dataset.len(),
            self.shared.order,
            0,
            0,
            self.shared.cfg.dist,
        )
        .len()
    }

    /// Batch buffers allocated so far, each holding a whole batch
    /// (`batch_size` records of 3 x crop x crop values, times the views).
    /// Buffers are reused within and across epochs: in a loop that drops
    /// each batch before taking the next, this stays at most `prefetch + 1`.
    pub fn batch_buffers(&self) -> usize {
        self.shared.buffers.load(Ordering::Relaxed)
    }

    /// Batches per epoch.
    pub fn batches_per_epoch(&self) -> usize {
        let n = self.samples_per_epoch();
        let b = self.shared.cfg.batch_size;
        if self.shared.cfg.drop_last {
            n / b
        } else {
            n.div_ceil(b)
        }
    }

    /// The records of `epoch` for this rank, in order.
    pub fn epoch_order(&self, epoch: u64) -> Vec<u32> {
        let s = &self.shared;
        epoch_indices(s.dataset.len(), s.order, s.cfg.seed, epoch, s.cfg.dist)
    }

    /// The random choices the training augmentation makes for record
    /// `index` in `epoch` (None for evaluation).
    pub fn sample_params(
        &self,
        epoch: u64,
        index: usize,
    ) -> Result<Option<SampleParams>, ReadError> {
        let mut rng = sample_rng(self.shared.cfg.seed, epoch, index as u64);
        Ok(match &self.shared.cfg.augment {
            Augment::Train(t) => {
                let r = self.shared.dataset.record(index)?;
                Some(t.draw(r.width, r.height, &mut rng).0)
            }
            Augment::Cifar(c) => Some(c.draw(&mut rng)),
            Augment::Eval(_) => None,
        })
    }

    /// Record `index` decoded whole and resized to shorter side `short`,
    /// with its label: the paper's fully-convolutional multi-scale testing
    /// (short in {224, 256, 384, 480, 640}). Normalise it with
    /// [`Loader::whole_normalizer`]; sizes vary, so this is per image, not batched.
    pub fn whole_image(&self, index: usize, short: u32) -> Result<(WholeImage, u32), LoadError> {
        let s = &self.shared;
        let err = |kind| worker::load_error(s, index, kind);
        let record = s.record(index).map_err(|e| err(e.into()))?;
        let image = WholeImage::decode(record.bytes, short).map_err(|e| err(e.into()))?;
        Ok((image, record.label))
    }

    /// The normalisation of this loader's batches, for whole images of any size.
    pub fn whole_normalizer(&self) -> &WholeNormalizer {
        &self.shared.whole
    }

    /// Iterates over `epoch` from its start.
    pub fn epoch(&self, epoch: u64) -> Epoch {
        self.start(epoch, 0)
    }

    /// Continues an epoch from a saved state (which must come from a loader
    /// with the same seed).
    pub fn resume(&self, state: LoaderState) -> Result<Epoch, ReadError> {
        if state.seed != self.shared.cfg.seed {
            return Err(ReadError::Settings {
                what: "resume",
                detail: format!(
                    "the saved loader state has seed {}, this loader {}",
                    state.seed, self.shared.cfg.seed
                ),
            });
        }
        if state.position > self.batches_per_epoch() {
            return Err(ReadError::Settings {
                what: "resume",
                detail: format!(
                    "position {} is past the epoch's {} batches",
                    state.position,
                    self.batches_per_epoch()
                ),
            });
        }
        Ok(self.start(state.epoch, state.position))
    }
}
