//! What a run leaves behind, written by rank 0 alone: the log, the progress
//! bar, the checkpoints and the plot. Which rank writes is decided once,
//! when the [`Recorder`] is made; the other ranks hold one that writes
//! nothing.

use super::TrainError;
use super::checkpoint;
use super::config::TrainConfig;
use super::job::{TrainState, metadata};
use super::runlog::{self, CheckpointRecord, LogRecord};
use super::stepper::Stepper;
use crate::model::zoo::Network;
use crate::progress::{ProgressMode, progress_bar};
use dfdx::prelude::*;
use std::path::{Path, PathBuf};

/// Rank 0's files.
struct Writer {
    logger: runlog::Logger,
    classes: Vec<String>,
}

/// The run's log, bar, checkpoints and plot (rank 0), or nothing.
pub(super) struct Recorder {
    writer: Option<Writer>,
    pub(super) bar: indicatif::ProgressBar,
    log_path: PathBuf,
    ckpt_dir: PathBuf,
}

impl Recorder {
    /// The recorder of rank `rank`: rank 0 opens the log (continuing after
    /// `step`) and shows the bar over `total_steps`.
    pub(super) fn new(
        rank: usize,
        cfg: &TrainConfig,
        classes: &[String],
        step: usize,
        total_steps: usize,
        progress: ProgressMode,
    ) -> Result<Self, TrainError> {
        let log_path = cfg.out.join("log.jsonl");
        let writer = match rank {
            0 => Some(Writer {
                logger: runlog::Logger::open(&log_path, step)?,
                classes: classes.to_vec(),
            }),
            _ => None,
        };
        let bar = progress_bar(
            total_steps as u64,
            "train",
            if writer.is_some() {
                progress
            } else {
                ProgressMode::Hidden
            },
        );
        bar.set_position(step as u64);
        Ok(Recorder {
            writer,
            bar,
            log_path,
            ckpt_dir: cfg.out.join("checkpoints").join("last"),
        })
    }

    /// The log's path.
    pub(super) fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Where the newest checkpoint goes.
    pub(super) fn checkpoint_dir(&self) -> &Path {
        &self.ckpt_dir
    }

    /// Appends a record to the log (rank 0).
    pub(super) fn write(&mut self, r: &LogRecord) -> Result<(), TrainError> {
        match &mut self.writer {
            Some(w) => w.logger.write(r),
            None => Ok(()),
        }
    }

    /// The checkpoint policy, collective: every rank averages its running
    /// statistics and gives its checksum, rank 0 writes the checkpoint and
    /// the checksums to the log, and every rank stops if the ranks'
    /// parameters differ. Returns the checkpoint's folder.
    pub(super) fn checkpoint<M: Network<D>, D: Device<f32>>(
        &mut self,
        model: &mut M,
        stepper: &mut Stepper<D>,
        st: &TrainState,
        comm: &dyn crate::dist::Communicator,
    ) -> Result<PathBuf, TrainError> {
        let checksums = stepper.checksums(comm)?;
        if let Some(w) = &mut self.writer {
            let momentum = stepper.sync(model)?;
            let json = serde_json::to_string_pretty(st).expect("state serialises");
            let cfg = &st.config;
            checkpoint::write(
                &self.ckpt_dir,
                model,
                momentum,
                &json,
                metadata(cfg, &w.classes),
                cfg.keep_checkpoints,
            )?;
            w.logger.write(&LogRecord::Checkpoint(CheckpointRecord {
                step: st.step,
                world_size: comm.world_size(),
                param_checksums: checksums.clone(),
            }))?;
        }
        if checksums.iter().any(|c| *c != checksums[0]) {
            return Err(TrainError::Diverged {
                step: st.step,
                checksums,
            });
        }
        Ok(self.ckpt_dir.clone())
    }

    /// Closes the log and draws the curves (rank 0); a plot that fails is
    /// a warning, the run is done.
    pub(super) fn finish(self, model: &str) -> Option<PathBuf> {
        self.bar.finish_and_clear();
        let writer = self.writer?;
        drop(writer);
        let plot_path = self.log_path.with_file_name("curves.png");
        match runlog::plot(&self.log_path, &plot_path, model) {
            Ok(_) => Some(plot_path),
            Err(e) => {
                log::warn!("could not draw {}: {e}", plot_path.display());
                None
            }
        }
    }
}
