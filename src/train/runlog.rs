//! The run's JSON Lines log and the curves drawn from it.

use super::TrainError;
use crate::plot::{Chart, Series, line_chart};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufWriter, Write};
use std::path::{Path, PathBuf};

/// One training step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// Steps done (1-based).
    pub step: usize,
    /// Fractional epoch at the end of the step.
    pub epoch: f64,
    /// Mean cross-entropy of the batch.
    pub loss: f64,
    /// Top-1 error of the batch (augmented images, before the update).
    pub top1_error: f64,
    /// Learning rate used.
    pub lr: f64,
    /// Images per second of this step (data wait included).
    pub images_per_sec: f64,
    /// Seconds for the step, data wait included.
    pub step_s: f64,
    /// Seconds of it spent waiting for the loader.
    pub data_wait_s: f64,
    /// Seconds of it spent waiting for the gradients' sums over ranks
    /// after backward (the part of the allreduce not hidden under it).
    #[serde(default)]
    pub allreduce_wait_s: f64,
}

/// A checkpoint written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointRecord {
    /// Steps done.
    pub step: usize,
    /// Ranks of the run.
    pub world_size: usize,
    /// CRC-32 of each rank's parameters and running statistics, in rank
    /// order: all equal, or the run stops.
    pub param_checksums: Vec<String>,
}

/// One finished epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// Epochs done (1-based).
    pub epoch: usize,
    /// Steps done.
    pub step: usize,
    /// Mean training loss over the epoch's steps.
    pub train_loss: f64,
    /// Training top-1 error over the epoch's steps.
    pub train_top1_error: f64,
    /// Validation loss (centre crop).
    pub val_loss: f64,
    /// Validation top-1 error (centre crop).
    pub val_top1_error: f64,
    /// Validation top-5 error (centre crop).
    pub val_top5_error: f64,
    /// Validation images.
    pub val_images: usize,
    /// Learning rate after this epoch's schedule update.
    pub lr: f64,
    /// Whether the plateau rule divided the learning rate.
    pub lr_fell: bool,
}

/// The end-of-run evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FinalRecord {
    /// Ten-crop top-1 error.
    pub ten_crop_top1_error: f64,
    /// Ten-crop top-5 error.
    pub ten_crop_top5_error: f64,
    /// Fully-convolutional multi-scale top-1 error.
    pub multiscale_top1_error: f64,
    /// Multi-scale top-5 error.
    pub multiscale_top5_error: f64,
    /// Shorter sides used.
    pub scales: Vec<u32>,
    /// Validation images.
    pub images: usize,
}

/// A line of the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum LogRecord {
    /// A step.
    Step(StepRecord),
    /// An epoch.
    Epoch(EpochRecord),
    /// The final evaluation.
    Final(FinalRecord),
    /// A checkpoint.
    Checkpoint(CheckpointRecord),
}

impl LogRecord {
    fn step(&self) -> usize {
        match self {
            LogRecord::Step(s) => s.step,
            LogRecord::Epoch(e) => e.step,
            LogRecord::Final(_) => usize::MAX,
            LogRecord::Checkpoint(c) => c.step,
        }
    }
}

/// Reads a log.
pub fn read(path: &Path) -> Result<Vec<LogRecord>, TrainError> {
    let io = |source| TrainError::Io {
        path: path.to_owned(),
        source,
    };
    let f = std::fs::File::open(path).map_err(io)?;
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
        let line = line.map_err(io)?;
        if line.trim().is_empty() {
            continue;
        }
        out.push(serde_json::from_str(&line).map_err(|e| TrainError::Json {
            path: PathBuf::from(format!("{} line {}", path.display(), i + 1)),
            source: e,
        })?);
    }
    Ok(out)
}

/// Appends records to the log, one JSON object per line.
pub struct Logger {
    out: BufWriter<std::fs::File>,
    path: PathBuf,
}

impl Logger {
    /// Opens the log; when resuming at `step` > 0, keeps only the records up
    /// to that step (a resumed run then logs what an uninterrupted one would).
    pub fn open(path: &Path, step: usize) -> Result<Self, TrainError> {
        let io = |source| TrainError::Io {
            path: path.to_owned(),
            source,
        };
        let kept: Vec<LogRecord> = if step > 0 && path.exists() {
            read(path)?
                .into_iter()
                .filter(|r| r.step() <= step)
                .collect()
        } else {
            Vec::new()
        };
        let f = std::fs::File::create(path).map_err(io)?;
        let mut logger = Logger {
            out: BufWriter::new(f),
            path: path.to_owned(),
        };
        for r in &kept {
            logger.write(r)?;
        }
        Ok(logger)
    }

    /// Writes one record (flushed, so a crash loses at most a line).
    pub fn write(&mut self, r: &LogRecord) -> Result<(), TrainError> {
        let io = |source| TrainError::Io {
            path: self.path.clone(),
            source,
        };
        serde_json::to_writer(&mut self.out, r).expect("records serialise");
        self.out.write_all(b"\n").map_err(io)?;
        self.out.flush().map_err(io)
    }
}

/// The training error of a log's steps in %, a moving average over a
/// quarter epoch of steps, against epochs: `(epoch, error)`.
pub fn training_curve(records: &[LogRecord]) -> Vec<(f64, f64)> {
    let steps: Vec<&StepRecord> = records
        .iter()
        .filter_map(|r| match r {
            LogRecord::Step(s) => Some(s),
            _ => None,
        })
        .collect();
    let per_epoch = steps
        .iter()
        .position(|s| s.epoch >= 1.0)
        .map_or(steps.len(), |p| p + 1)
        .max(1);
    let window = (per_epoch / 4).max(1);
    let mut train = Vec::new();
    let mut sum = 0.0;
    for (i, s) in steps.iter().enumerate() {
        sum += s.top1_error;
        if i >= window {
            sum -= steps[i - window].top1_error;
        }
        let n = (i + 1).min(window) as f64;
        train.push((s.epoch, 100.0 * sum / n));
    }
    train
}

/// The validation (centre-crop) error after each epoch in %: `(epoch, error)`.
pub fn validation_curve(records: &[LogRecord]) -> Vec<(f64, f64)> {
    records
        .iter()
        .filter_map(|r| match r {
            LogRecord::Epoch(e) => Some((e.epoch as f64, 100.0 * e.val_top1_error)),
            _ => None,
        })
        .collect()
}

/// Draws training error (thin, [`training_curve`]) and validation error
/// (bold) in %, against epochs, as the paper's Figures 4 and 6.
pub fn plot(log: &Path, png: &Path, title: &str) -> Result<(), TrainError> {
    let records = read(log)?;
    let series = [
        Series {
            label: "training error (augmented batches)".into(),
            points: training_curve(&records),
            width: 1,
            markers: false,
            color: None,
        },
        Series {
            label: "validation error (centre crop)".into(),
            points: validation_curve(&records),
            width: 4,
            markers: false,
            color: None,
        },
    ];
    let chart = Chart {
        title,
        x_label: "epoch",
        y_label: "top-1 error (%)",
        integer_x: false,
    };
    Ok(line_chart(png, &chart, &series)?)
}
