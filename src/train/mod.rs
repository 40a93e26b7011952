//! The trainer: the loader streams augmented batches while the model trains
//! with the paper's recipe (SGD, momentum 0.9, weight decay 1e-4, lr 0.1 per
//! 256 images divided by 10 when the validation error plateaus), evaluates
//! every epoch, checkpoints, resumes exactly, logs JSON Lines and plots.
//!
//! ```text
//! run folder/
//!   log.jsonl           one line per step and per epoch, then the final evaluation
//!   curves.png          training error (thin) and validation error (bold), as the paper's figures
//!   checkpoints/last/   model.safetensors (torchvision names), optim.safetensors, state.json
//! ```

pub mod checkpoint;
pub mod device_check;
pub mod log;
pub mod metrics;
pub mod schedule;
pub mod sgd;

use crate::augment::{CifarAugment, EvalCrop, TrainAugment};
use crate::error::{LoadError, ReadError};
use crate::loader::{Loader, LoaderBuilder, LoaderState, OutputKind};
use crate::model::state::{self, StateError};
use crate::model::zoo::{self, Family, Input, Logits, Network, ZooError};
use crate::progress::{ProgressMode, progress_bar};
use crate::reader::Dataset;
use dfdx::prelude::*;
use log::{EpochRecord, FinalRecord, LogRecord, StepRecord};
use metrics::Accuracy;
use schedule::{LrSchedule, Schedule};
use serde::{Deserialize, Serialize};
use sgd::Sgd;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// Everything that defines a run (saved in every checkpoint).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Packed dataset root with `train/` and `val/` splits.
    pub data: PathBuf,
    /// Model name (see [`zoo::MODELS`]).
    pub model: String,
    /// Images per step.
    pub batch_size: usize,
    /// Epochs to train.
    pub epochs: usize,
    /// Stop after this many steps in all (None: run all epochs).
    pub max_steps: Option<usize>,
    /// Learning rate (the paper: 0.1 for batch 256; the CLI scales it linearly by default).
    pub lr: f64,
    /// SGD momentum.
    pub momentum: f64,
    /// L2 weight decay.
    pub weight_decay: f64,
    /// How the learning rate falls.
    pub schedule: Schedule,
    /// Linear warm-up, epochs.
    pub warmup_epochs: f64,
    /// Seed for initialisation and data order.
    pub seed: u64,
    /// Loader threads.
    pub workers: usize,
    /// Training crop side (224 for ImageNet models, 32 for CIFAR ones).
    pub crop: u32,
    /// Shorter-side range for the scale augmentation (ImageNet models).
    pub scale: (u32, u32),
    /// Shorter side before the evaluation centre crop.
    pub eval_resize: u32,
    /// Zero the last BatchNorm scale of each residual branch.
    pub zero_init_last_bn: bool,
    /// Also checkpoint every N steps (0: only at epoch ends).
    pub checkpoint_every: usize,
    /// Ten-crop and multi-scale evaluation at the end (ImageNet models).
    pub final_eval: bool,
    /// Output folder.
    pub out: PathBuf,
    /// `cpu`, or `cuda` when built with the feature.
    pub device: String,
    /// Testing aid: make the loss NaN at this step.
    #[serde(default)]
    pub debug_nan_at_step: Option<usize>,
}

impl TrainConfig {
    /// The paper's recipe for `model` on `data`: batch 256, lr 0.1, plateau
    /// schedule, 224 crops from S in [256, 480] (CIFAR models: 32x32, batch
    /// 128, lr 0.1).
    pub fn paper(data: impl Into<PathBuf>, model: &str) -> Self {
        let cifar = zoo::family(model) == Some(Family::Cifar);
        TrainConfig {
            data: data.into(),
            model: model.to_string(),
            batch_size: if cifar { 128 } else { 256 },
            epochs: 90,
            max_steps: None,
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 1e-4,
            schedule: Schedule::default(),
            warmup_epochs: 0.0,
            seed: 0,
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            crop: if cifar { 32 } else { 224 },
            scale: (256, 480),
            eval_resize: if cifar { 32 } else { 256 },
            zero_init_last_bn: false,
            checkpoint_every: 0,
            final_eval: true,
            out: PathBuf::from("runs/train"),
            device: "cpu".into(),
            debug_nan_at_step: None,
        }
    }

    /// Checks the settings that would train to nothing or to garbage
    /// without an error (a batch of 0 gives lr 0, a negative lr diverges).
    pub fn validate(&self) -> Result<(), TrainError> {
        let bad = |what: &str, value: String| {
            Err(TrainError::Config(format!(
                "{what} {value}: {}",
                match what {
                    "momentum" => "must be in [0, 1)",
                    "weight decay" | "warm-up" => "must be at least 0",
                    "lr" => "must be above 0",
                    _ => "must be at least 1",
                }
            )))
        };
        if self.batch_size == 0 {
            return bad("batch size", "0".into());
        }
        if self.epochs == 0 {
            return bad("epochs", "0".into());
        }
        if self.workers == 0 {
            return bad("workers", "0".into());
        }
        if self.crop == 0 {
            return bad("crop", "0".into());
        }
        if self.max_steps == Some(0) {
            return bad("max steps", "0".into());
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad("lr", self.lr.to_string());
        }
        if !(self.momentum.is_finite() && (0.0..1.0).contains(&self.momentum)) {
            return bad("momentum", self.momentum.to_string());
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad("weight decay", self.weight_decay.to_string());
        }
        if !(self.warmup_epochs.is_finite() && self.warmup_epochs >= 0.0) {
            return bad("warm-up", self.warmup_epochs.to_string());
        }
        if self.scale.0 == 0 || self.scale.0 > self.scale.1 {
            return Err(TrainError::Config(format!(
                "scale range {},{}: expected 1 <= MIN <= MAX",
                self.scale.0, self.scale.1
            )));
        }
        Ok(())
    }
}

/// What can stop a run.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A split folder is missing or not a packed split.
    #[error("{split} split: {source} (pack it with pack-imagenet)")]
    Split {
        /// `train` or `val`.
        split: String,
        /// Why it could not be opened.
        source: ReadError,
    },
    /// Train and val (or the checkpoint) disagree on the classes.
    #[error("class mismatch: {0}")]
    Classes(String),
    /// No model type for this name and class count.
    #[error(transparent)]
    Model(#[from] ZooError),
    /// The loader failed.
    #[error("loading data: {0}")]
    Load(#[from] LoadError),
    /// A loader could not be built over a split, or resumed from the
    /// checkpoint's position.
    #[error("{what} loader: {source}")]
    Loader {
        /// `training` or `evaluation`.
        what: &'static str,
        /// Why.
        source: ReadError,
    },
    /// The loss became NaN or infinite.
    #[error("loss is {loss} at step {step}; stopped. The last good checkpoint is {}", checkpoint.as_ref().map_or("none (no checkpoint written yet)".to_string(), |p| p.display().to_string()))]
    NonFinite {
        /// Step (1-based) whose loss was not finite.
        step: usize,
        /// The loss.
        loss: f32,
        /// The last checkpoint written.
        checkpoint: Option<PathBuf>,
    },
    /// Writing or reading a checkpoint failed; the previous one is intact.
    #[error("checkpoint {}: {source} (the previous checkpoint, if any, is intact)", path.display())]
    Checkpoint {
        /// The checkpoint folder.
        path: PathBuf,
        /// The cause.
        source: StateError,
    },
    /// No checkpoint where one was expected.
    #[error("no checkpoint in {} (expected state.json there or in checkpoints/last)", path.display())]
    NoCheckpoint {
        /// Where we looked.
        path: PathBuf,
    },
    /// A configuration that cannot run.
    #[error("{0}")]
    Config(String),
    /// The log or plot could not be written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// Where a run is: saved in `state.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainState {
    /// The run's configuration.
    pub config: TrainConfig,
    /// The classes (wnid) the model was trained on, in label order.
    pub classes: Vec<String>,
    /// Epoch in progress (or next, when `position` is 0).
    pub epoch: usize,
    /// Steps done in all.
    pub step: usize,
    /// Loader position inside `epoch`.
    pub loader: LoaderState,
    /// Learning-rate schedule.
    pub schedule: LrSchedule,
    /// Training accuracy of the steps of the current epoch so far.
    pub epoch_train: Accuracy,
    /// Validation results of the finished epochs.
    pub history: Vec<EpochRecord>,
}

/// What a finished run reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainReport {
    /// Steps done.
    pub steps: usize,
    /// Last validation result, if an epoch finished.
    pub last_epoch: Option<EpochRecord>,
    /// Final ten-crop / multi-scale evaluation.
    pub final_eval: Option<FinalRecord>,
    /// The JSON Lines log.
    pub log: PathBuf,
    /// The curves PNG.
    pub plot: Option<PathBuf>,
    /// The last checkpoint.
    pub checkpoint: Option<PathBuf>,
    /// Training images per second over the run (steps only).
    pub images_per_sec: f64,
}

/// Opens a split, with a clear error when it is missing.
pub fn open_split(data: &Path, split: &str) -> Result<Arc<Dataset>, TrainError> {
    Dataset::open(data.join(split))
        .map(Arc::new)
        .map_err(|source| TrainError::Split {
            split: split.into(),
            source,
        })
}

fn class_ids(ds: &Dataset) -> Vec<String> {
    ds.manifest()
        .classes
        .iter()
        .map(|c| c.wnid.clone())
        .collect()
}

/// Opens the data (and the checkpoint to resume, if any) and checks that
/// they agree: everything before the model type is known. Then call
/// [`run`] with the model type for [`Job::model`] and [`Job::classes`]
/// (the binary dispatches with [`zoo::with_network`]), or [`train_cpu`].
///
/// When resuming, the checkpoint's config wins, except `epochs`,
/// `max_steps`, `workers` and `out`, which come from `config`.
pub fn prepare(
    config: TrainConfig,
    resume: Option<&Path>,
    progress: ProgressMode,
) -> Result<Job, TrainError> {
    let (config, start) = match resume {
        None => (config, None),
        Some(p) => {
            let dir = checkpoint::locate(p)?;
            let mut st = read_state(&dir)?;
            st.config.epochs = config.epochs;
            st.config.max_steps = config.max_steps;
            st.config.workers = config.workers;
            st.config.out = config.out.clone();
            st.config.debug_nan_at_step = config.debug_nan_at_step;
            (st.config.clone(), Some((dir, st)))
        }
    };
    config.validate()?;
    let cuda = cfg!(feature = "cuda");
    if !(config.device == "cpu" || config.device == "cuda" && cuda) {
        return Err(TrainError::Config(format!(
            "device {:?}: this build has {}",
            config.device,
            if cuda {
                "cpu and cuda"
            } else {
                "cpu only (build with --features cuda for cuda)"
            }
        )));
    }
    if zoo::family(&config.model).is_none() {
        return Err(ZooError::UnknownModel {
            name: config.model.clone(),
        }
        .into());
    }
    let train = open_split(&config.data, "train")?;
    let val = open_split(&config.data, "val")?;
    let classes = class_ids(&train);
    if class_ids(&val) != classes {
        return Err(TrainError::Classes(format!(
            "train has {} classes, val {} (or in another order)",
            classes.len(),
            val.num_classes()
        )));
    }
    if let Some((dir, st)) = &start
        && st.classes != classes
    {
        return Err(TrainError::Classes(format!(
            "checkpoint {} was trained on {} classes ({}...), the dataset has {} ({}...)",
            dir.display(),
            st.classes.len(),
            st.classes.first().map_or("", String::as_str),
            classes.len(),
            classes.first().map_or("", String::as_str)
        )));
    }
    std::fs::create_dir_all(&config.out).map_err(|source| TrainError::Io {
        path: config.out.clone(),
        source,
    })?;
    Ok(Job {
        config,
        classes,
        train,
        val,
        start,
        progress,
    })
}

/// The configuration saved in a checkpoint (a run folder or a checkpoint folder).
pub fn checkpoint_config(path: &Path) -> Result<TrainConfig, TrainError> {
    Ok(read_state(&checkpoint::locate(path)?)?.config)
}

fn read_state(dir: &Path) -> Result<TrainState, TrainError> {
    let path = dir.join(checkpoint::STATE_FILE);
    let text = std::fs::read_to_string(&path).map_err(|source| TrainError::Io {
        path: path.clone(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| TrainError::Config(format!("{}: {e}", path.display())))
}

/// [`prepare`] and [`run`] on the CPU with model type `M`, which must have
/// as many classes as the data.
pub fn train_cpu<M: Network<Cpu>>(
    config: TrainConfig,
    resume: Option<&Path>,
    progress: ProgressMode,
) -> Result<TrainReport, TrainError> {
    let job = prepare(config, resume, progress)?;
    let dev = cpu_device(job.config.seed);
    run::<M, Cpu>(job, dev)
}

/// The CPU device for a run: seeded, with dfdx's allocation cache on
/// (without it every step page-faults in fresh buffers: ResNet-20, batch 128,
/// 3.3 s/step without, 1.7 s with, on the 2-core machine of the README).
pub fn cpu_device(seed: u64) -> Cpu {
    let dev = Cpu::seed_from_u64(seed);
    dev.enable_cache();
    dev
}

/// The first CUDA device for a run, seeded, with the allocation cache on.
///
/// Asks the driver first: cudarc 0.9 (under dfdx) unwraps the driver's
/// answer, so a machine without a GPU would otherwise panic, not fail.
#[cfg(feature = "cuda")]
pub fn cuda_device(seed: u64) -> Result<Cuda, TrainError> {
    use cudarc::driver::result;
    let no_gpu = |what: String| TrainError::Config(format!("--device cuda: {what}"));
    result::init().map_err(|e| no_gpu(format!("no usable CUDA driver ({e:?})")))?;
    match result::device::get_count() {
        Ok(n) if n > 0 => {}
        Ok(_) => return Err(no_gpu("the driver sees no GPU".into())),
        Err(e) => return Err(no_gpu(format!("cannot count GPUs ({e:?})"))),
    }
    let dev = Cuda::try_seed_from_u64(seed).map_err(|e| no_gpu(format!("device 0: {e:?}")))?;
    dev.enable_cache();
    Ok(dev)
}

/// Device memory in use on the current CUDA context (total - free), bytes.
#[cfg(feature = "cuda")]
pub fn cuda_memory_used() -> Option<u64> {
    cudarc::driver::result::mem_get_info()
        .ok()
        .map(|(free, total)| (total - free) as u64)
}

/// A run ready to start: data opened and checked, checkpoint read.
pub struct Job {
    config: TrainConfig,
    classes: Vec<String>,
    train: Arc<Dataset>,
    val: Arc<Dataset>,
    start: Option<(PathBuf, TrainState)>,
    progress: ProgressMode,
}

impl Job {
    /// The model name.
    pub fn model(&self) -> &str {
        &self.config.model
    }
    /// Number of classes of the data.
    pub fn classes(&self) -> usize {
        self.classes.len()
    }
    /// The effective configuration.
    pub fn config(&self) -> &TrainConfig {
        &self.config
    }
}

/// Builds the training loader of a config.
pub fn train_loader(cfg: &TrainConfig, ds: Arc<Dataset>) -> Result<Loader, TrainError> {
    let b = LoaderBuilder::new()
        .batch_size(cfg.batch_size)
        .workers(cfg.workers.max(1))
        .seed(cfg.seed)
        .drop_last(true)
        .output(OutputKind::F32Hwc);
    let b = match zoo::family(&cfg.model) {
        Some(Family::Cifar) => b.cifar(CifarAugment {
            crop: cfg.crop,
            ..CifarAugment::default()
        }),
        _ => b.train(TrainAugment {
            crop: cfg.crop,
            scale: cfg.scale,
            ..TrainAugment::default()
        }),
    };
    if ds.len() < cfg.batch_size {
        return Err(TrainError::Config(format!(
            "batch size {} is larger than the {} training images",
            cfg.batch_size,
            ds.len()
        )));
    }
    b.build(ds).map_err(|source| TrainError::Loader {
        what: "training",
        source,
    })
}

/// Builds an evaluation loader (sequential order, every record once).
pub fn eval_loader(
    cfg: &TrainConfig,
    ds: Arc<Dataset>,
    crop: EvalCrop,
) -> Result<Loader, TrainError> {
    LoaderBuilder::new()
        .batch_size(cfg.batch_size.min(ds.len()).max(1))
        .workers(cfg.workers.max(1))
        .seed(cfg.seed)
        .output(OutputKind::F32Hwc)
        .eval(crop)
        .build(ds)
        .map_err(|source| TrainError::Loader {
            what: "evaluation",
            source,
        })
}

pub(crate) fn onehot(labels: &[u32], classes: usize) -> Vec<f32> {
    let mut v = vec![0f32; labels.len() * classes];
    for (i, &l) in labels.iter().enumerate() {
        v[i * classes + l as usize] = 1.0;
    }
    v
}

/// One training step on an NHWC batch `(n, h, w, 3)`: forward in training
/// mode, cross-entropy, backward and an SGD update (skipped when the loss
/// is not finite). Returns the loss and the logits, `n x classes` row-major.
/// The logits and loss are read back before the backward pass, so on an
/// asynchronous device the update may still be running on return.
pub fn sgd_step<M: Network<D>, D: Device<f32>>(
    model: &mut M,
    sgd: &mut Sgd<D>,
    dev: &D,
    images: &[f32],
    (n, h, w): (usize, usize, usize),
    labels: &[u32],
    lr: f32,
) -> (f32, Vec<f32>) {
    let x: Input<D> = dev.tensor_from_vec(images.to_vec(), (n, h, w, Const::<3>));
    let y = dev.tensor_from_vec(onehot(labels, M::CLASSES), (n, M::CLASSES));
    sgd_step_on_device(model, sgd, x, y, lr)
}

/// [`sgd_step`] with the batch already on the device: `x` NHWC, `y` one-hot.
pub fn sgd_step_on_device<M: Network<D>, D: Device<f32>>(
    model: &mut M,
    sgd: &mut Sgd<D>,
    x: Input<D>,
    y: Logits<D>,
    lr: f32,
) -> (f32, Vec<f32>) {
    let logits = model.forward_train(x.traced(Gradients::leaky()));
    let scores = logits.retaped::<NoneTape>().as_vec();
    let loss = cross_entropy_with_logits_loss(logits, y);
    let value = loss.as_vec()[0];
    if value.is_finite() {
        let grads = loss.backward();
        sgd.update(model, &grads, lr);
    }
    (value, scores)
}

/// Evaluates `model` over a loader's epoch: one row of logits per view,
/// probabilities averaged over the views of each record.
pub fn evaluate<M: Network<D>, D: Device<f32>>(
    model: &mut M,
    dev: &D,
    loader: &Loader,
) -> Result<Accuracy, TrainError> {
    let mut acc = Accuracy::default();
    for batch in loader.epoch(0) {
        let batch = batch?;
        let [n, h, w, _] = batch.shape();
        let x: Input<D> = dev.tensor_from_vec(batch.images().to_vec(), (n, h, w, Const::<3>));
        let logits = model.forward_eval(x).as_vec();
        let views = batch.views();
        let scores = if views == 1 {
            logits
        } else {
            metrics::average_views(&logits, M::CLASSES, views)
        };
        acc.add(&scores, M::CLASSES, batch.labels());
    }
    Ok(acc)
}

/// The paper's fully-convolutional multi-scale testing: each whole image
/// (no crop) at every shorter side in `scales`, and its mirror; softmax
/// scores averaged.
pub fn evaluate_multiscale<M: Network<D>, D: Device<f32>>(
    model: &mut M,
    dev: &D,
    loader: &Loader,
    scales: &[u32],
) -> Result<Accuracy, TrainError> {
    let mut acc = Accuracy::default();
    let n = loader.dataset().len();
    for i in 0..n {
        let mut logits = Vec::new();
        let mut label = 0;
        for &s in scales {
            let img = loader.load_full(i, s)?;
            label = img.label;
            let (h, w) = (img.height, img.width);
            for flip in [false, true] {
                let mut hwc = vec![0f32; 3 * h * w];
                for y in 0..h {
                    for x in 0..w {
                        let sx = if flip { w - 1 - x } else { x };
                        for c in 0..3 {
                            hwc[(y * w + x) * 3 + c] = img.data[(c * h + y) * w + sx];
                        }
                    }
                }
                let t: Input<D> = dev.tensor_from_vec(hwc, (1, h, w, Const::<3>));
                logits.extend(model.forward_eval(t).as_vec());
            }
        }
        let views = logits.len() / M::CLASSES;
        acc.add(
            &metrics::average_views(&logits, M::CLASSES, views),
            M::CLASSES,
            &[label],
        );
    }
    Ok(acc)
}

/// The standard single-crop test of a config: shorter side `eval_resize`, centre `crop`.
fn center_crop(cfg: &TrainConfig) -> EvalCrop {
    EvalCrop::Center {
        resize: cfg.eval_resize,
        crop: cfg.crop,
    }
}

/// Ten-crop, then multi-scale at `scales` (through `center_loader`'s
/// normalisation): the end-of-run tests of ImageNet models.
fn ten_crop_and_multiscale<M: Network<D>, D: Device<f32>>(
    model: &mut M,
    dev: &D,
    cfg: &TrainConfig,
    val: &Arc<Dataset>,
    center_loader: &Loader,
    scales: &[u32],
) -> Result<(Accuracy, Accuracy), TrainError> {
    let ten = eval_loader(
        cfg,
        Arc::clone(val),
        EvalCrop::TenCrop {
            resize: cfg.eval_resize,
            crop: cfg.crop,
        },
    )?;
    let ten = evaluate(model, dev, &ten)?;
    let ms = evaluate_multiscale(model, dev, center_loader, scales)?;
    Ok((ten, ms))
}

/// The paper's test scales {224, 256, 384, 480, 640}, scaled to a crop size.
pub fn paper_scales(crop: u32) -> Vec<u32> {
    [224u32, 256, 384, 480, 640]
        .iter()
        .map(|s| (s * crop).div_ceil(224))
        .collect()
}

fn metadata(cfg: &TrainConfig, classes: &[String]) -> HashMap<String, String> {
    HashMap::from([
        ("format".into(), "resnet-imagenet checkpoint".into()),
        ("model".into(), cfg.model.clone()),
        (
            "classes".into(),
            serde_json::to_string(classes).expect("strings"),
        ),
    ])
}

/// Trains model type `M` on device `dev` (see [`prepare`]).
pub fn run<M: Network<D>, D: Device<f32>>(job: Job, dev: D) -> Result<TrainReport, TrainError> {
    if M::CLASSES != job.classes.len() {
        return Err(TrainError::Classes(format!(
            "the model has {} classes, the data {}",
            M::CLASSES,
            job.classes.len()
        )));
    }
    let Job {
        config: cfg,
        classes,
        train,
        val,
        start,
        progress,
    } = job;
    let n_classes = M::CLASSES;
    let mut model = M::build(&dev);
    if cfg.zero_init_last_bn {
        state::zero_init_last_bn(&mut model);
    }
    let mut sgd: Sgd<D> = Sgd::new(cfg.momentum as f32, cfg.weight_decay as f32);
    let train_loader = train_loader(&cfg, Arc::clone(&train))?;
    let val_loader = eval_loader(&cfg, Arc::clone(&val), center_crop(&cfg))?;
    let steps_per_epoch = train_loader.batches_per_epoch();
    let ckpt_dir = cfg.out.join("checkpoints").join("last");
    let mut st = match start {
        Some((dir, st)) => {
            state::load_safetensors(&mut model, &dir.join(checkpoint::MODEL_FILE)).map_err(
                |source| TrainError::Checkpoint {
                    path: dir.clone(),
                    source,
                },
            )?;
            sgd.set_buffers(&dev, checkpoint::read_momentum(&dir)?);
            st
        }
        None => TrainState {
            config: cfg.clone(),
            classes: classes.clone(),
            epoch: 0,
            step: 0,
            loader: LoaderState {
                seed: cfg.seed,
                epoch: 0,
                position: 0,
            },
            schedule: LrSchedule::new(cfg.lr, cfg.schedule.clone(), cfg.warmup_epochs),
            epoch_train: Accuracy::default(),
            history: Vec::new(),
        },
    };
    st.config = cfg.clone();
    let log_path = cfg.out.join("log.jsonl");
    let mut logger = log::Logger::open(&log_path, st.step)?;
    let mut last_ckpt: Option<PathBuf> = ckpt_dir
        .join(checkpoint::STATE_FILE)
        .is_file()
        .then(|| ckpt_dir.clone());
    let save = |model: &M, sgd: &Sgd<D>, st: &TrainState| -> Result<PathBuf, TrainError> {
        let json = serde_json::to_string_pretty(st).expect("state serialises");
        checkpoint::write(
            &ckpt_dir,
            model,
            sgd.buffers(),
            &json,
            metadata(&cfg, &classes),
        )?;
        Ok(ckpt_dir.clone())
    };
    let max_steps = cfg.max_steps.unwrap_or(usize::MAX);
    let (mut images, mut busy) = (0usize, 0f64);
    let bar = progress_bar((cfg.epochs * steps_per_epoch) as u64, "train", progress);
    bar.set_position(st.step as u64);
    'epochs: while st.epoch < cfg.epochs {
        let mut epoch = train_loader
            .resume(st.loader)
            .map_err(|source| TrainError::Loader {
                what: "training",
                source,
            })?;
        let mut last_wait = 0.0;
        loop {
            if st.step >= max_steps {
                break 'epochs;
            }
            let t0 = Instant::now();
            let Some(batch) = epoch.next() else { break };
            let batch = batch?;
            let wait = epoch.stage_times().wait - last_wait;
            last_wait += wait;
            let [n, h, w, _] = batch.shape();
            let t = st.step as f64 / steps_per_epoch as f64;
            let lr = st.schedule.lr(t);
            let (mut loss_value, scores) = sgd_step(
                &mut model,
                &mut sgd,
                &dev,
                batch.images(),
                (n, h, w),
                batch.labels(),
                lr as f32,
            );
            if cfg.debug_nan_at_step == Some(st.step + 1) {
                loss_value = f32::NAN;
            }
            if !loss_value.is_finite() {
                bar.abandon();
                return Err(TrainError::NonFinite {
                    step: st.step + 1,
                    loss: loss_value,
                    checkpoint: last_ckpt,
                });
            }
            let mut acc = Accuracy::default();
            acc.add(&scores, n_classes, batch.labels());
            st.epoch_train.merge(&acc);
            st.step += 1;
            st.loader = epoch.state();
            let dt = t0.elapsed().as_secs_f64();
            images += n;
            busy += dt;
            logger.write(&LogRecord::Step(StepRecord {
                step: st.step,
                epoch: st.step as f64 / steps_per_epoch as f64,
                loss: loss_value as f64,
                top1_error: acc.top1_error(),
                lr,
                images_per_sec: n as f64 / dt,
                step_s: dt,
                data_wait_s: wait,
            }))?;
            bar.inc(1);
            bar.set_message(format!(
                "ep {} loss {loss_value:.3} lr {lr:.3e} {:.0} img/s wait {:.0}%",
                st.epoch,
                n as f64 / dt,
                100.0 * wait / dt
            ));
            if cfg.checkpoint_every > 0 && st.step % cfg.checkpoint_every == 0 {
                last_ckpt = Some(save(&model, &sgd, &st)?);
            }
        }
        drop(epoch);
        // Epoch finished: evaluate, adjust the schedule, checkpoint.
        let v = evaluate(&mut model, &dev, &val_loader)?;
        let lr_fell = st.schedule.epoch_end(v.top1_error());
        let record = EpochRecord {
            epoch: st.epoch + 1,
            step: st.step,
            train_loss: st.epoch_train.loss(),
            train_top1_error: st.epoch_train.top1_error(),
            val_loss: v.loss(),
            val_top1_error: v.top1_error(),
            val_top5_error: v.top5_error(),
            val_images: v.n,
            lr: st.schedule.lr(st.step as f64 / steps_per_epoch as f64),
            lr_fell,
        };
        logger.write(&LogRecord::Epoch(record.clone()))?;
        bar.println(format!(
            "epoch {:>3}: train loss {:.3} top-1 err {:.1}% | val loss {:.3} top-1 err {:.1}% top-5 err {:.1}%{}",
            record.epoch,
            record.train_loss,
            100.0 * record.train_top1_error,
            record.val_loss,
            100.0 * record.val_top1_error,
            100.0 * record.val_top5_error,
            if lr_fell { " (lr / 10)" } else { "" }
        ));
        st.history.push(record);
        st.epoch += 1;
        st.epoch_train = Accuracy::default();
        st.loader = LoaderState {
            seed: cfg.seed,
            epoch: st.epoch as u64,
            position: 0,
        };
        last_ckpt = Some(save(&model, &sgd, &st)?);
    }
    bar.finish_and_clear();
    if st.step >= max_steps && st.loader.position != 0 {
        // Stopped mid-epoch: keep the place.
        last_ckpt = Some(save(&model, &sgd, &st)?);
    }
    let mut final_eval = None;
    if cfg.final_eval && st.epoch >= cfg.epochs && zoo::family(&cfg.model) == Some(Family::ImageNet)
    {
        let scales = paper_scales(cfg.crop);
        let (ten, ms) =
            ten_crop_and_multiscale(&mut model, &dev, &cfg, &val, &val_loader, &scales)?;
        let rec = FinalRecord {
            ten_crop_top1_error: ten.top1_error(),
            ten_crop_top5_error: ten.top5_error(),
            multiscale_top1_error: ms.top1_error(),
            multiscale_top5_error: ms.top5_error(),
            scales,
            images: ten.n,
        };
        logger.write(&LogRecord::Final(rec.clone()))?;
        final_eval = Some(rec);
    }
    drop(logger);
    let plot_path = cfg.out.join("curves.png");
    // The run is done and its log written: a plot that fails is a warning.
    let plot = match log::plot(&log_path, &plot_path, &cfg.model) {
        Ok(_) => Some(plot_path),
        Err(e) => {
            ::log::warn!("could not draw {}: {e}", plot_path.display());
            None
        }
    };
    Ok(TrainReport {
        steps: st.step,
        last_epoch: st.history.last().cloned(),
        final_eval,
        log: log_path,
        plot,
        checkpoint: last_ckpt,
        images_per_sec: images as f64 / busy.max(1e-9),
    })
}

/// Results of evaluating a checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalReport {
    /// Centre-crop top-1 / top-5 error and loss.
    pub center: Accuracy,
    /// Ten-crop (ImageNet models).
    pub ten_crop: Option<Accuracy>,
    /// Fully-convolutional multi-scale (ImageNet models).
    pub multiscale: Option<Accuracy>,
    /// Scales used for multi-scale.
    pub scales: Vec<u32>,
}

/// A checkpoint evaluation ready to run (see [`prepare_eval`]).
pub struct EvalJob {
    dir: PathBuf,
    cfg: TrainConfig,
    classes: usize,
    val: Arc<Dataset>,
    scales: Vec<u32>,
}

impl EvalJob {
    /// The model name.
    pub fn model(&self) -> &str {
        &self.cfg.model
    }
    /// Number of classes.
    pub fn classes(&self) -> usize {
        self.classes
    }
}

/// Evaluates a checkpoint with model type `M` on the CPU: centre crop, and
/// for ImageNet models ten-crop and multi-scale.
pub fn evaluate_job<M: Network<Cpu>>(job: EvalJob) -> Result<EvalReport, TrainError> {
    let dev = cpu_device(job.cfg.seed);
    let mut model = M::build(&dev);
    state::load_safetensors(&mut model, &job.dir.join(checkpoint::MODEL_FILE)).map_err(
        |source| TrainError::Checkpoint {
            path: job.dir.clone(),
            source,
        },
    )?;
    let (cfg, val) = (&job.cfg, &job.val);
    let center_loader = eval_loader(cfg, Arc::clone(val), center_crop(cfg))?;
    let center = evaluate(&mut model, &dev, &center_loader)?;
    let imagenet = zoo::family(&cfg.model) == Some(Family::ImageNet);
    let (ten_crop, multiscale) = if imagenet {
        let (ten, ms) =
            ten_crop_and_multiscale(&mut model, &dev, cfg, val, &center_loader, &job.scales)?;
        (Some(ten), Some(ms))
    } else {
        (None, None)
    };
    Ok(EvalReport {
        center,
        ten_crop,
        multiscale,
        scales: job.scales,
    })
}

/// Reads a checkpoint (a run folder or a checkpoint folder) for evaluation
/// on the val split of `data` (default: the data it was trained on), with
/// multi-scale `scales` (default: the paper's, scaled to the crop).
pub fn prepare_eval(
    path: &Path,
    data: Option<&Path>,
    scales: Option<Vec<u32>>,
    workers: usize,
) -> Result<EvalJob, TrainError> {
    let dir = checkpoint::locate(path)?;
    let st = read_state(&dir)?;
    let mut cfg = st.config.clone();
    cfg.workers = workers;
    if let Some(d) = data {
        cfg.data = d.to_owned();
    }
    let val = open_split(&cfg.data, "val")?;
    if class_ids(&val) != st.classes {
        return Err(TrainError::Classes(format!(
            "checkpoint {} was trained on {} classes, {} has {}",
            dir.display(),
            st.classes.len(),
            cfg.data.join("val").display(),
            val.num_classes()
        )));
    }
    let scales = scales.unwrap_or_else(|| paper_scales(cfg.crop));
    Ok(EvalJob {
        dir,
        cfg,
        classes: st.classes.len(),
        val,
        scales,
    })
}
