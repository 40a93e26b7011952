//! Getting a run ready: the data opened and checked against the model and
//! the checkpoint, the state read back, the loaders built.

use super::TrainError;
use super::checkpoint;
use super::config::TrainConfig;
use super::eval::paper_scales;
use super::metrics::Accuracy;
use super::runlog::EpochRecord;
use super::schedule::LrSchedule;
use crate::augment::{CifarAugment, EvalCrop, TrainAugment};
use crate::loader::{Loader, LoaderBuilder, LoaderState, OutputKind};
use crate::model::zoo::{self, Family, ZooError};
use crate::progress::ProgressMode;
use crate::reader::Dataset;
use crate::sampler::Distributed;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// How a run starts.
#[derive(Debug, Clone)]
pub enum Start {
    /// A new run.
    New(TrainConfig),
    /// Continue a checkpointed run exactly, with its saved settings.
    Resume(Resume),
}

/// What may change when a run resumes; everything else is the checkpoint's.
#[derive(Debug, Clone, Default)]
pub struct Resume {
    /// A run folder or a checkpoint folder.
    pub from: PathBuf,
    /// Train to this many epochs instead.
    pub epochs: Option<usize>,
    /// Stop after this many steps in all.
    pub max_steps: Option<usize>,
    /// Loader threads.
    pub workers: Option<usize>,
    /// Continue in this folder [default: the run folder of `from`, wherever it now is].
    pub out: Option<PathBuf>,
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
    /// Ranks of the data-parallel run (1: one process).
    #[serde(default = "one")]
    pub world_size: usize,
}

fn one() -> usize {
    1
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
/// When resuming, the checkpoint's config wins, except what [`Resume`] may change.
pub fn prepare(start: Start, progress: ProgressMode) -> Result<Job, TrainError> {
    let (config, start) = match start {
        Start::New(config) => (config, None),
        Start::Resume(r) => {
            let dir = checkpoint::locate(&r.from)?;
            checkpoint::verify(&dir)?;
            let mut st = read_state(&dir)?;
            let c = &mut st.config;
            c.epochs = r.epochs.unwrap_or(c.epochs);
            c.workers = r.workers.unwrap_or(c.workers);
            c.max_steps = r.max_steps;
            // The checkpoint's run continues in the folder given, not the
            // one it was written in: a copied run continues in the copy.
            c.out = match r.out {
                Some(o) => o,
                None => checkpoint::run_folder(&r.from)?,
            };
            (st.config.clone(), Some((dir, st)))
        }
    };
    config.validate()?;
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
        nan_at_step: None,
        panic_at_step: None,
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
    serde_json::from_str(&text).map_err(|source| TrainError::Json { path, source })
}

/// A run ready to start: data opened and checked, checkpoint read.
pub struct Job {
    pub(super) config: TrainConfig,
    pub(super) classes: Vec<String>,
    pub(super) train: Arc<Dataset>,
    pub(super) val: Arc<Dataset>,
    pub(super) start: Option<(PathBuf, TrainState)>,
    pub(super) progress: ProgressMode,
    pub(super) nan_at_step: Option<usize>,
    pub(super) panic_at_step: Option<usize>,
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
    /// Testing aid, not part of the saved configuration: the last rank's
    /// loss is NaN at this step (1-based), to test what a diverging run does.
    #[doc(hidden)]
    pub fn inject_nan_at_step(&mut self, step: Option<usize>) {
        self.nan_at_step = step;
    }
    /// Testing aid: panic on the last rank at this step (1-based), to test
    /// that a failing rank ends a data-parallel job instead of hanging it.
    #[doc(hidden)]
    pub fn inject_panic_at_step(&mut self, step: Option<usize>) {
        self.panic_at_step = step;
    }
}

/// Builds the training loader of a config.
///
/// `share` is this rank's part of every epoch: its batch is the global
/// batch divided by the ranks.
pub fn train_loader(
    cfg: &TrainConfig,
    ds: Arc<Dataset>,
    share: Distributed,
) -> Result<Loader, TrainError> {
    let b = LoaderBuilder::new()
        .batch_size(cfg.batch_size / share.world_size.max(1))
        .distributed(share)
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
        return Err(TrainError::BatchTooLarge {
            batch: cfg.batch_size,
            images: ds.len(),
        });
    }
    b.build(ds).map_err(|source| TrainError::Loader {
        what: "training",
        source,
    })
}

/// Builds an evaluation loader (sequential order, every record once).
///
/// `share`: this rank's records (every record once over all ranks with
/// [`crate::sampler::Remainder::Uneven`]).
pub fn eval_loader(
    cfg: &TrainConfig,
    ds: Arc<Dataset>,
    crop: EvalCrop,
    share: Distributed,
) -> Result<Loader, TrainError> {
    let batch = cfg.batch_size / share.world_size.max(1);
    LoaderBuilder::new()
        .batch_size(batch.min(ds.len()).max(1))
        .distributed(share)
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

pub(super) fn metadata(cfg: &TrainConfig, classes: &[String]) -> HashMap<String, String> {
    HashMap::from([
        ("format".into(), "resnet-imagenet checkpoint".into()),
        ("model".into(), cfg.model.clone()),
        (
            "classes".into(),
            serde_json::to_string(classes).expect("strings"),
        ),
    ])
}

/// A checkpoint evaluation ready to run (see [`prepare_eval`]).
pub struct EvalJob {
    pub(super) dir: PathBuf,
    pub(super) cfg: TrainConfig,
    pub(super) classes: usize,
    pub(super) val: Arc<Dataset>,
    pub(super) scales: Vec<u32>,
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
    /// Evaluates on `engine` instead of the one the run trained on (the
    /// crops of the crop size; multi-scale testing is always dfdx's).
    pub fn on(mut self, engine: super::EngineKind) -> Self {
        self.cfg.engine = engine;
        self
    }
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
    checkpoint::verify(&dir)?;
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
