//! What can stop a run.

use crate::error::{LoadError, ReadError};
use crate::model::state::StateError;
use crate::model::zoo::ZooError;
use std::path::PathBuf;

/// What can stop a run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrainError {
    /// A split folder is missing, not a packed split, or inconsistent.
    #[error("{split} split: {source}{}", if matches!(source, ReadError::Io { .. }) { " (pack it with pack-imagenet)" } else { "" })]
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
    /// A comparison report was asked for where no run has a checkpoint yet.
    #[error("no finished or started runs under {} to report (train them first)", .0.display())]
    NothingToReport(PathBuf),
    /// A setting that would train to nothing or to garbage.
    #[error("{setting} {value}: expected {expected}")]
    Setting {
        /// Which setting.
        setting: &'static str,
        /// The value given.
        value: String,
        /// What would be accepted.
        expected: &'static str,
    },
    /// A batch larger than the training split (no step could be taken).
    #[error("batch size {batch} is larger than the {images} training images")]
    BatchTooLarge {
        /// The batch size.
        batch: usize,
        /// Images in the training split.
        images: usize,
    },
    /// `--device cuda`, but no GPU can be used.
    #[error("--device cuda: {0}")]
    NoGpu(String),
    /// A JSON file of the run (`state.json`, a `log.jsonl` line) that does not parse.
    #[error("{}: {source}", path.display())]
    Json {
        /// The file (and line, for the log).
        path: PathBuf,
        /// The parser's error.
        source: serde_json::Error,
    },
    /// The log or plot could not be written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The training curves could not be drawn.
    #[error(transparent)]
    Plot(#[from] crate::plot::PlotError),
    /// The planned engine refused the model or a batch.
    #[error("engine: {0}")]
    Engine(#[from] crate::engine::EngineError),
    /// The ranks of a data-parallel run disagree or cannot run together.
    #[error(transparent)]
    Dist(#[from] crate::dist::DistError),
    /// The setup cannot be split over the ranks as asked.
    #[error("{0}")]
    Ranks(String),
    /// A checkpoint file does not hold what its `state.json` says it does.
    #[error("checkpoint {}: {file} is damaged ({why}); {}", dir.display(), match newest_intact {
        Some(p) => format!("the newest intact checkpoint is {} (resume or evaluate from it)", p.display()),
        None => "no intact checkpoint was found beside it".to_string(),
    })]
    Corrupt {
        /// The checkpoint folder.
        dir: PathBuf,
        /// The damaged file.
        file: String,
        /// What is wrong (checksum or size).
        why: String,
        /// The newest kept checkpoint whose files all match.
        newest_intact: Option<PathBuf>,
    },
    /// The ranks hold different parameters after the same steps (a bug,
    /// or non-deterministic collectives): the run stops.
    #[error("ranks diverged at step {step}: parameter checksums {checksums:?} (rank order)")]
    Diverged {
        /// Step.
        step: usize,
        /// Each rank's checksum.
        checksums: Vec<String>,
    },
}
