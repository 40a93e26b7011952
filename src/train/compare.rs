//! The paper's degradation experiment (He et al. 2015, Fig. 1 and Fig. 6):
//! plain and residual CIFAR nets of several depths trained with one recipe,
//! seed and data, each run in its own folder and resumable, then one figure
//! (plain nets left, residual nets right; training error thin, test error
//! bold, a colour per depth) and one table beside the paper's CIFAR-10
//! numbers. `reproduce-degradation` runs it.

use super::config::{Choices, ScheduleKind};
use super::runlog::{self, LogRecord};
use super::{Resume, Start, TrainError, checkpoint, eval, job, prepare, train};
use crate::plot::{Chart, Series, panels};
use crate::progress::ProgressMode;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// What to run.
#[derive(Debug, Clone)]
pub struct Comparison {
    /// Packed data root (`train/`, `val/`).
    pub data: PathBuf,
    /// One folder per network under it, then the figure and the table.
    pub out: PathBuf,
    /// Depths (6n + 2: 20, 32, 44, 56, 110).
    pub depths: Vec<usize>,
    /// Epochs of every run.
    pub epochs: usize,
    /// Images per step (the paper: 128).
    pub batch_size: usize,
    /// Learning rate (the paper: 0.1, divided by 10 at 50% and 75% of the run).
    pub lr: f64,
    /// Seed of every run.
    pub seed: u64,
    /// Loader threads.
    pub workers: usize,
    /// Stop each run after this many steps (a test, or a sitting cut short;
    /// the next call resumes it).
    pub max_steps: Option<usize>,
    /// Also checkpoint every N steps (0: at epoch ends only), so that a
    /// sitting stopped mid-run loses at most N steps.
    pub checkpoint_every: usize,
    /// Train nothing: draw and tabulate the runs found under `out` (a set
    /// that is still under way).
    pub report_only: bool,
}

/// One network's result, from its log and checkpoint.
#[derive(Debug, Clone, Serialize)]
pub struct NetResult {
    /// `plain20`, `resnet56`, ...
    pub model: String,
    /// Depth.
    pub depth: usize,
    /// Residual (true) or plain.
    pub residual: bool,
    /// Steps done.
    pub steps: usize,
    /// Epochs finished.
    pub epochs: usize,
    /// Training top-1 error over the last finished epoch (augmented batches).
    pub train_error_last_epoch: Option<f64>,
    /// Training top-1 error over the last tenth of the steps.
    pub train_error_end: Option<f64>,
    /// Test top-1 error, centre crop, after the last finished epoch.
    pub test_error: Option<f64>,
    /// Test top-1 error, ten crops (see [`eval::EvalReport::ten_crop`]).
    pub ten_crop_test_error: Option<f64>,
    /// Seconds of training steps (all sittings).
    pub train_s: f64,
    /// Training images per second over those seconds.
    pub images_per_sec: f64,
}

/// The paper's CIFAR-10 test error (%) of ResNet-`depth` (Table 6).
pub fn paper_resnet_error(depth: usize) -> Option<f64> {
    match depth {
        20 => Some(8.75),
        32 => Some(7.51),
        44 => Some(7.17),
        56 => Some(6.97),
        110 => Some(6.43),
        _ => None,
    }
}

/// The networks of a comparison in the order they train: per depth, in the
/// order given, the plain net then the residual one, so that a set cut
/// short (`--depths 20,56,32,44`) already holds whole pairs:
/// `(name, depth, residual)`.
pub fn networks(depths: &[usize]) -> Vec<(String, usize, bool)> {
    depths
        .iter()
        .flat_map(|&d| {
            [
                (format!("plain{d}"), d, false),
                (format!("resnet{d}"), d, true),
            ]
        })
        .collect()
}

impl Comparison {
    /// Trains (or resumes) every network in turn, evaluates each
    /// checkpoint, and writes `OUT/degradation.png` and `OUT/degradation.md`
    /// (plain nets first, each kind by depth). With `report_only`, only the
    /// runs already under `out` are read.
    pub fn run(&self, progress: ProgressMode) -> Result<Vec<NetResult>, TrainError> {
        let mut results = Vec::new();
        for (model, depth, residual) in networks(&self.depths) {
            let dir = self.out.join(&model);
            let resumable = dir
                .join("checkpoints/last")
                .join(checkpoint::STATE_FILE)
                .is_file();
            if self.report_only {
                if resumable {
                    results.push(self.result(&model, depth, residual, &dir)?);
                }
                continue;
            }
            let start = if resumable {
                Start::Resume(Resume {
                    from: dir.clone(),
                    epochs: Some(self.epochs),
                    max_steps: self.max_steps,
                    workers: Some(self.workers),
                    out: Some(dir.clone()),
                })
            } else {
                Start::New(
                    Choices {
                        data: self.data.clone(),
                        model: Some(model.clone()),
                        batch_size: Some(self.batch_size),
                        epochs: Some(self.epochs),
                        max_steps: self.max_steps,
                        lr: Some(self.lr),
                        schedule: Some(ScheduleKind::Step),
                        milestones: Some(vec![0.5, 0.75]),
                        seed: Some(self.seed),
                        workers: Some(self.workers),
                        checkpoint_every: self.checkpoint_every,
                        out: Some(dir.clone()),
                        ..Choices::default()
                    }
                    .config()?,
                )
            };
            if progress != ProgressMode::Hidden {
                eprintln!(
                    "{model}: {}",
                    if resumable { "resuming" } else { "training" }
                );
            }
            train(prepare(start, progress)?)?;
            results.push(self.result(&model, depth, residual, &dir)?);
        }
        if results.is_empty() {
            return Err(TrainError::NothingToReport(self.out.clone()));
        }
        results.sort_by_key(|r| (r.residual, r.depth));
        figure(&self.out.join("degradation.png"), &self.out, &results)?;
        let md = self.out.join("degradation.md");
        std::fs::write(&md, table(&results))
            .map_err(|source| TrainError::Io { path: md, source })?;
        Ok(results)
    }

    fn result(
        &self,
        model: &str,
        depth: usize,
        residual: bool,
        dir: &Path,
    ) -> Result<NetResult, TrainError> {
        let records = runlog::read(&dir.join("log.jsonl"))?;
        let steps: Vec<&runlog::StepRecord> = records
            .iter()
            .filter_map(|r| match r {
                LogRecord::Step(s) => Some(s),
                _ => None,
            })
            .collect();
        let last_epoch = records.iter().rev().find_map(|r| match r {
            LogRecord::Epoch(e) => Some(e),
            _ => None,
        });
        let tail = &steps[steps.len() - steps.len().div_ceil(10)..];
        let train_error_end = (!tail.is_empty())
            .then(|| tail.iter().map(|s| s.top1_error).sum::<f64>() / tail.len() as f64);
        let train_s: f64 = steps.iter().map(|s| s.step_s).sum();
        let images: f64 = steps.iter().map(|s| s.images_per_sec * s.step_s).sum();
        let ten_crop = match last_epoch {
            Some(_) => self.ten_crop_error(dir, steps.last().map_or(0, |s| s.step))?,
            None => None,
        };
        Ok(NetResult {
            model: model.to_string(),
            depth,
            residual,
            steps: steps.last().map_or(0, |s| s.step),
            epochs: last_epoch.map_or(0, |e| e.epoch),
            train_error_last_epoch: last_epoch.map(|e| e.train_top1_error),
            train_error_end,
            test_error: last_epoch.map(|e| e.val_top1_error),
            ten_crop_test_error: ten_crop,
            train_s,
            images_per_sec: images / train_s.max(1e-9),
        })
    }
}

/// A run's ten-crop test error, kept in `RUN/ten-crop.json` beside the
/// log so that a report, or the next sitting, does not test the same
/// checkpoint again.
#[derive(Debug, Serialize, Deserialize)]
struct TenCrop {
    /// The run's last logged step when it was measured.
    step: usize,
    /// Which ten crops ([`TEN_CROP_VIEWS`]; empty in files of the
    /// 2026-12-05 resize-to-36 kind, measured again).
    #[serde(default)]
    views: String,
    top1_error: Option<f64>,
}

/// The ten crops a CIFAR net is tested with: [`crate::augment::EvalCrop::PaddedTenCrop`].
const TEN_CROP_VIEWS: &str = "padded";

impl Comparison {
    fn ten_crop_error(&self, dir: &Path, step: usize) -> Result<Option<f64>, TrainError> {
        let path = dir.join(TEN_CROP_FILE);
        let kept = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<TenCrop>(&b).ok());
        if let Some(t) = kept.filter(|t| t.step == step && t.views == TEN_CROP_VIEWS) {
            return Ok(t.top1_error);
        }
        let job = job::prepare_eval(dir, None, None, self.workers)?;
        let top1_error = eval::evaluate_checkpoint(job)?
            .ten_crop
            .map(|a| a.top1_error());
        let json = serde_json::to_vec(&TenCrop {
            step,
            views: TEN_CROP_VIEWS.into(),
            top1_error,
        })
        .expect("plain data");
        std::fs::write(&path, json).map_err(|source| TrainError::Io { path, source })?;
        Ok(top1_error)
    }
}

/// Where a run's ten-crop result is kept.
pub const TEN_CROP_FILE: &str = "ten-crop.json";

/// The figure: plain nets left, residual nets right; per depth one colour,
/// training error thin, test error bold (the paper's Figure 6).
pub fn figure(png: &Path, out: &Path, results: &[NetResult]) -> Result<(), TrainError> {
    let mut sides: [Vec<Series>; 2] = [Vec::new(), Vec::new()];
    let mut depths: Vec<usize> = results.iter().map(|r| r.depth).collect();
    depths.sort_unstable();
    depths.dedup();
    for r in results {
        let records = runlog::read(&out.join(&r.model).join("log.jsonl"))?;
        let color = Some(depths.iter().position(|&d| d == r.depth).unwrap_or(0));
        let side = &mut sides[r.residual as usize];
        side.push(Series {
            label: format!("{} train", r.model),
            points: runlog::training_curve(&records),
            width: 1,
            markers: false,
            color,
        });
        let test = runlog::validation_curve(&records);
        let markers = test.len() < 3;
        side.push(Series {
            label: format!("{} test", r.model),
            points: test,
            width: 3,
            markers,
            color,
        });
    }
    let chart = |title| Chart {
        title,
        x_label: "epoch",
        y_label: "top-1 error (%)",
        integer_x: false,
    };
    Ok(panels(
        png,
        &[
            (chart("plain networks"), &sides[0][..]),
            (chart("residual networks"), &sides[1][..]),
        ],
    )?)
}

fn duration(s: f64) -> String {
    match s {
        s if s < 120.0 => format!("{s:.0} s"),
        s if s < 7200.0 => format!("{:.0} min", s / 60.0),
        s => format!("{:.1} h", s / 3600.0),
    }
}

fn pct(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{:.2}", 100.0 * v))
}

/// The table (Markdown): per network the training and test errors here,
/// beside the paper's CIFAR-10 test error.
pub fn table(results: &[NetResult]) -> String {
    let mut s = String::from(
        "| network | epochs | steps | train err, last epoch (%) | train err, last 10% of steps (%) | test err, centre (%) | test err, ten-crop (%) | paper CIFAR-10 test err (%) | train time | images/s |\n|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in results {
        let paper = match r.residual {
            true => paper_resnet_error(r.depth).map_or("-".into(), |v| format!("{v:.2}")),
            false => "- (Fig. 6 only)".into(),
        };
        s += &format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.0} |\n",
            r.model,
            r.epochs,
            r.steps,
            pct(r.train_error_last_epoch),
            pct(r.train_error_end),
            pct(r.test_error),
            pct(r.ten_crop_test_error),
            paper,
            duration(r.train_s),
            r.images_per_sec
        );
    }
    s
}
