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

pub use batch::{Batch, OutputKind};

use crate::augment::{
    Augment, CropResizer, EvalCrop, Lighting, Normalization, Normalizer, SampleParams,
    TrainAugment, normalize, sample_rng,
};
use crate::augment::{CifarAugment, CropBox};
use crate::error::{LoadError, LoadErrorKind, ReadError};
use crate::reader::Dataset;
use crate::sampler::{Distributed, Order, epoch_indices};
use batch::BatchMem;
use crossbeam::channel::{Receiver, Sender};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Instant;

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

#[derive(Default)]
struct StageCounters {
    samples: AtomicU64,
    read: AtomicU64,
    decode: AtomicU64,
    resize: AtomicU64,
    normalize: AtomicU64,
    skipped: AtomicU64,
}

impl StageCounters {
    fn snapshot(&self) -> StageTimes {
        let s = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64 * 1e-9;
        StageTimes {
            samples: self.samples.load(Ordering::Relaxed),
            read: s(&self.read),
            decode: s(&self.decode),
            resize: s(&self.resize),
            normalize: s(&self.normalize),
            wait: 0.0,
            skipped: self.skipped.load(Ordering::Relaxed),
        }
    }
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
        let (pool_tx, pool_rx) = crossbeam::channel::unbounded();
        Ok(Loader {
            shared: Arc::new(Shared {
                dataset,
                normalizer,
                mean_image: mean,
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
    normalizer: Normalizer,
    /// The pack's mean image (for whole-image evaluation at any size).
    mean_image: Vec<f32>,
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
        &self.shared.normalizer
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

    /// Record `index` as a whole image whose shorter side is `short`, no crop:
    /// the paper's fully-convolutional multi-scale testing (short in {224, 256,
    /// 384, 480, 640}). Normalised like the loader's batches; sizes vary, so
    /// this is per image, not batched.
    pub fn load_full(&self, index: usize, short: u32) -> Result<FullImage, LoadError> {
        let s = &self.shared;
        let err = |kind| load_error(s, index, kind);
        let record = s.record(index).map_err(|e| err(e.into()))?;
        let mut rgb = Vec::new();
        let info = crate::decode::decode_rgb(record.bytes, &mut rgb).map_err(|e| err(e.into()))?;
        let (w, h) = crate::augment::crop::resized_dims(info.width, info.height, short);
        let resized = crate::augment::resize::resize_rgb(&rgb, info.width, info.height, w, h)
            .map_err(|e| err(LoadErrorKind::Resize(e)))?;
        let stats = &s.dataset.manifest().stats;
        let data = normalize::normalize_full(
            s.cfg.normalization,
            &resized,
            w,
            h,
            &s.mean_image,
            stats.mean_size,
            stats.channel_std,
        );
        Ok(FullImage {
            data,
            width: w as usize,
            height: h as usize,
            label: record.label,
        })
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

    fn start(&self, epoch: u64, position: usize) -> Epoch {
        let s = &self.shared;
        let order = self.epoch_order(epoch);
        let b = s.cfg.batch_size;
        let n_batches = self.batches_per_epoch();
        let (job_tx, job_rx) = crossbeam::channel::unbounded::<Job>();
        let (done_tx, done_rx) = crossbeam::channel::unbounded::<Done>();
        let (pool_tx, pool_rx) = (s.pool_tx.clone(), s.pool_rx.clone());
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(StageCounters::default());
        let workers = (0..s.cfg.workers)
            .map(|_| {
                let (shared, job_rx, done_tx) = (Arc::clone(s), job_rx.clone(), done_tx.clone());
                let (stop, counters) = (Arc::clone(&stop), Arc::clone(&counters));
                std::thread::Builder::new()
                    .name("rnim-loader".into())
                    .spawn(move || worker(shared, epoch, job_rx, done_tx, stop, counters))
                    .expect("spawn loader worker")
            })
            .collect();
        Epoch {
            shared: Arc::clone(s),
            epoch,
            order,
            batch_size: b,
            n_batches,
            position,
            dispatched: position,
            read_ahead: position,
            in_flight: HashMap::new(),
            ready: BTreeMap::new(),
            job_tx: Some(job_tx),
            done_rx,
            pool_tx,
            pool_rx,
            stop,
            counters,
            workers,
            finished: false,
            wait: 0.0,
        }
    }
}

/// A whole image for fully-convolutional testing.
#[derive(Debug, Clone)]
pub struct FullImage {
    /// CHW f32, `3 * height * width`.
    pub data: Vec<f32>,
    /// Width.
    pub width: usize,
    /// Height.
    pub height: usize,
    /// Class label.
    pub label: u32,
}

struct Job {
    mem: Arc<BatchMem>,
    batch: usize,
    slot: usize,
    index: u32,
}

enum Done {
    Batch(usize),
    Failed(usize, LoadError),
}

/// One epoch's batches, in order. Dropping it stops its workers.
pub struct Epoch {
    shared: Arc<Shared>,
    epoch: u64,
    order: Vec<u32>,
    batch_size: usize,
    n_batches: usize,
    position: usize,
    dispatched: usize,
    /// Batches before this one have had their records' reads started.
    read_ahead: usize,
    in_flight: HashMap<usize, Arc<BatchMem>>,
    /// Batches finished (Ok) or failed (Err), not yet yielded.
    ready: BTreeMap<usize, Result<(), LoadError>>,
    job_tx: Option<Sender<Job>>,
    done_rx: Receiver<Done>,
    pool_tx: Sender<Arc<BatchMem>>,
    pool_rx: Receiver<Arc<BatchMem>>,
    stop: Arc<AtomicBool>,
    counters: Arc<StageCounters>,
    workers: Vec<JoinHandle<()>>,
    finished: bool,
    wait: f64,
}

impl Epoch {
    /// Where this epoch is: save it to resume exactly here.
    pub fn state(&self) -> LoaderState {
        LoaderState {
            seed: self.shared.cfg.seed,
            epoch: self.epoch,
            position: self.position,
        }
    }

    /// Batches in the epoch.
    pub fn len(&self) -> usize {
        self.n_batches
    }

    /// Whether the epoch has no batches.
    pub fn is_empty(&self) -> bool {
        self.n_batches == 0
    }

    /// Per-stage times so far (zeros unless profiling is on; `wait` always).
    pub fn stage_times(&self) -> StageTimes {
        StageTimes {
            wait: self.wait,
            ..self.counters.snapshot()
        }
    }

    fn records_in(&self, batch: usize) -> &[u32] {
        let start = batch * self.batch_size;
        let end = (start + self.batch_size).min(self.order.len());
        &self.order[start..end]
    }

    /// Hands out jobs for batches ahead of the consumer, up to `prefetch`,
    /// and starts the disk reads of the `prefetch` batches after those
    /// (`madvise(MADV_WILLNEED)` on each record), so that on shards not in
    /// the page cache many reads are in flight at once instead of one per
    /// worker, each waited for. Bounded: at most `2 * prefetch` batches'
    /// records are asked for ahead of the consumer.
    fn dispatch(&mut self) {
        let prefetch = self.shared.cfg.prefetch;
        let ahead = if self.shared.cfg.read_ahead { 2 } else { 0 };
        let horizon = (self.position + ahead * prefetch).min(self.n_batches);
        while self.read_ahead < horizon {
            for &index in self.records_in(self.read_ahead) {
                self.shared.dataset.prefetch_record(index as usize);
            }
            self.read_ahead += 1;
        }
        while self.dispatched < self.n_batches && self.dispatched < self.position + prefetch {
            let mem = self.pool_rx.try_recv().unwrap_or_else(|_| {
                self.shared.buffers.fetch_add(1, Ordering::Relaxed);
                let views = self.shared.cfg.augment.views();
                let size = self.shared.normalizer.size();
                Arc::new(BatchMem::new(
                    self.batch_size,
                    views,
                    3 * size * size,
                    self.shared.cfg.output,
                ))
            });
            let batch = self.dispatched;
            let records = self.records_in(batch).to_vec();
            debug_assert!(records.len() <= mem.capacity());
            mem.remaining.store(records.len(), Ordering::Release);
            self.in_flight.insert(batch, Arc::clone(&mem));
            let tx = self.job_tx.as_ref().expect("open while running");
            for (slot, index) in records.into_iter().enumerate() {
                let job = Job {
                    mem: Arc::clone(&mem),
                    batch,
                    slot,
                    index,
                };
                if tx.send(job).is_err() {
                    return; // workers gone: surfaces as a failure below
                }
            }
            self.dispatched += 1;
        }
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.job_tx = None;
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

impl Iterator for Epoch {
    type Item = Result<Batch, LoadError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.finished || self.position >= self.n_batches {
            if !self.finished {
                self.finished = true;
                self.shutdown();
            }
            return None;
        }
        self.dispatch();
        let t0 = Instant::now();
        while !self.ready.contains_key(&self.position) {
            match self.done_rx.recv() {
                Ok(Done::Batch(b)) => {
                    self.ready.insert(b, Ok(()));
                }
                Ok(Done::Failed(b, err)) => {
                    // Reported when the consumer reaches that batch; the first error wins.
                    self.ready.entry(b).or_insert(Err(err));
                }
                Err(_) => {
                    // Every worker has exited without reporting this batch
                    // (a panic outside the per-sample guard): fail, don't hang.
                    self.finished = true;
                    self.shutdown();
                    let first =
                        self.records_in(self.position).first().copied().unwrap_or(0) as usize;
                    let kind = LoadErrorKind::Panic("all loader workers exited".into());
                    return Some(Err(load_error(&self.shared, first, kind)));
                }
            }
        }
        self.wait += t0.elapsed().as_secs_f64();
        if let Some(Err(err)) = self.ready.remove(&self.position) {
            self.finished = true;
            self.shutdown();
            return Some(Err(err));
        }
        let mem = self.in_flight.remove(&self.position).expect("dispatched");
        let batch = Batch {
            len: self.records_in(self.position).len(),
            mem: Some(mem),
            pool: self.pool_tx.clone(),
            index: self.position,
            size: self.shared.normalizer.size(),
            kind: self.shared.cfg.output,
        };
        self.position += 1;
        self.dispatch(); // keep the workers busy while the consumer computes
        Some(Ok(batch))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.n_batches - self.position.min(self.n_batches);
        (left, Some(left))
    }
}

impl Drop for Epoch {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Per-worker scratch: reused for every sample.
pub struct SampleWorker {
    rgb: Vec<u8>,
    resizer: CropResizer,
}

impl SampleWorker {
    /// Scratch for outputs of side `size`.
    pub fn new(size: u32) -> Self {
        SampleWorker {
            rgb: Vec::new(),
            resizer: CropResizer::new(size),
        }
    }
}

/// Where one sample's output goes.
enum Out<'a> {
    F32(&'a mut [f32]),
    F32Hwc(&'a mut [f32]),
    U8(&'a mut [u8]),
}

/// Produces all views of record `index` into `out`; returns the label.
fn process(
    shared: &Shared,
    w: &mut SampleWorker,
    epoch: u64,
    index: usize,
    out: Out<'_>,
    counters: Option<&StageCounters>,
) -> Result<u32, LoadErrorKind> {
    let clock = |start: &mut Instant, counter: Option<&AtomicU64>| {
        if let Some(c) = counter {
            let now = Instant::now();
            c.fetch_add((now - *start).as_nanos() as u64, Ordering::Relaxed);
            *start = now;
        }
    };
    let mut t = Instant::now();
    let record = shared.record(index)?;
    clock(&mut t, counters.map(|c| &c.read));
    let size = shared.normalizer.size();
    let view_len = 3 * size * size;
    let mut out = out;
    let rng = || sample_rng(shared.cfg.seed, epoch, index as u64);
    // Up to 10 boxes, on the stack: no per-sample allocation. They are drawn
    // once the header gives the image's size, so that only the pixels they
    // need are decoded (the whole image for CIFAR: no boxes).
    let mut boxes = [CropBox::default(); 10];
    let mut n_boxes = 0;
    let mut alpha = None;
    let (info, region) = crate::decode::decode_rgb_region(record.bytes, &mut w.rgb, |iw, ih| {
        n_boxes = match &shared.cfg.augment {
            Augment::Train(aug) => {
                let (p, b) = aug.draw(iw, ih, &mut rng());
                boxes[0] = b;
                alpha = (aug.lighting_std > 0.0).then_some(p.alpha);
                1
            }
            Augment::Eval(e) => e.boxes_into(iw, ih, &mut boxes),
            Augment::Cifar(_) => 0,
        };
        w.resizer.source_region(&boxes[..n_boxes], iw, ih)
    })?;
    clock(&mut t, counters.map(|c| &c.decode));
    let light = alpha.map_or([0.0; 3], |a| shared.cfg.lighting.offset(a));
    if let Augment::Cifar(c) = &shared.cfg.augment {
        // Whole image to the crop size (a no-op copy for CIFAR-sized records), then pad-crop-flip.
        let full = CropBox {
            left: 0.0,
            top: 0.0,
            width: info.width as f64,
            height: info.height as f64,
            flip: false,
        };
        let pixels = w
            .resizer
            .crop_resize(&w.rgb, info.width, info.height, &full)
            .map_err(LoadErrorKind::Resize)?;
        clock(&mut t, counters.map(|c| &c.resize));
        let p = c.draw(&mut rng());
        let (dx, dy) = (
            p.crop_x as isize - c.pad as isize,
            p.crop_y as isize - c.pad as isize,
        );
        match &mut out {
            Out::F32(o) => shared
                .normalizer
                .write_chw_shifted(pixels, dx, dy, p.flip, o),
            Out::F32Hwc(o) => shared
                .normalizer
                .write_hwc_shifted(pixels, dx, dy, p.flip, o),
            Out::U8(o) => normalize::write_hwc_u8_shifted(pixels, size, dx, dy, p.flip, o),
        }
        clock(&mut t, counters.map(|c| &c.normalize));
    }
    for (v, b) in boxes[..n_boxes].iter().enumerate() {
        let pixels = w
            .resizer
            .crop_resize(&w.rgb, region.width, region.height, &b.within(&region))
            .map_err(LoadErrorKind::Resize)?;
        clock(&mut t, counters.map(|c| &c.resize));
        let o = v * view_len..(v + 1) * view_len;
        match &mut out {
            Out::F32(out) => shared
                .normalizer
                .write_chw(pixels, b.flip, light, &mut out[o]),
            Out::F32Hwc(out) => shared
                .normalizer
                .write_hwc(pixels, b.flip, light, &mut out[o]),
            Out::U8(out) => normalize::write_hwc_u8(pixels, size, b.flip, &mut out[o]),
        }
        clock(&mut t, counters.map(|c| &c.normalize));
    }
    if let Some(c) = counters {
        c.samples.fetch_add(1, Ordering::Relaxed);
    }
    Ok(record.label)
}

fn load_error(shared: &Shared, index: usize, kind: LoadErrorKind) -> LoadError {
    let (shard, record) = shared.dataset.locate(index).unwrap_or((0, index));
    LoadError {
        shard: shared
            .dataset
            .shards()
            .get(shard)
            .map(|s| s.path().to_path_buf())
            .unwrap_or_default(),
        record,
        index,
        kind,
    }
}

fn worker(
    shared: Arc<Shared>,
    epoch: u64,
    jobs: Receiver<Job>,
    done: Sender<Done>,
    stop: Arc<AtomicBool>,
    counters: Arc<StageCounters>,
) {
    let mut w = SampleWorker::new(shared.normalizer.size() as u32);
    let profile = shared.cfg.profile.then_some(&*counters);
    let len = shared.dataset.len();
    for job in jobs {
        if stop.load(Ordering::Relaxed) {
            continue; // drain quickly
        }
        // Try the record, then (OnError::Skip) the records after it.
        let tries = if shared.cfg.on_error == OnError::Skip {
            16.min(len)
        } else {
            1
        };
        let mut result = Err(LoadErrorKind::Panic("no attempt".into()));
        let mut used = job.index as usize;
        for t in 0..tries {
            used = (job.index as usize + t) % len;
            let attempt = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                // SAFETY: this job is the only writer of its slot, and the
                // consumer reads the batch only after every slot reported done.
                let out = match shared.cfg.output {
                    OutputKind::F32Chw => Out::F32(unsafe { job.mem.slot_f32(job.slot) }),
                    OutputKind::F32Hwc => Out::F32Hwc(unsafe { job.mem.slot_f32(job.slot) }),
                    OutputKind::U8Hwc => Out::U8(unsafe { job.mem.slot_u8(job.slot) }),
                };
                process(&shared, &mut w, epoch, used, out, profile)
            }));
            result = match attempt {
                Ok(r) => r,
                Err(panic) => {
                    w = SampleWorker::new(shared.normalizer.size() as u32);
                    let msg = crate::error::panic_message(&*panic);
                    Err(LoadErrorKind::Panic(msg))
                }
            };
            match &result {
                Ok(_) => break,
                Err(e) if tries > 1 => {
                    let (shard, record) = shared.dataset.locate(used).unwrap_or((0, used));
                    log::warn!(
                        "shard {shard} record {record} (index {used}): {e}; using the next record"
                    );
                }
                Err(_) => {}
            }
        }
        match result {
            Ok(label) => {
                // SAFETY: as above.
                unsafe { job.mem.set_meta(job.slot, label, job.index) };
                if used != job.index as usize {
                    counters.skipped.fetch_add(1, Ordering::Relaxed);
                }
                if job.mem.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
                    let _ = done.send(Done::Batch(job.batch));
                }
            }
            Err(kind) => {
                let _ = done.send(Done::Failed(
                    job.batch,
                    load_error(&shared, job.index as usize, kind),
                ));
            }
        }
    }
}
