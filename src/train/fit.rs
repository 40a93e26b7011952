//! The training loop: steps, the end-of-epoch evaluation and schedule,
//! checkpoints, the log and the plot.

use super::TrainError;
use super::checkpoint;
use super::device::cpu_device;
use super::eval::{center_crop, paper_scales, ten_crop_and_multiscale, ten_crop_loader};
use super::job::{Job, Start, TrainState, eval_loader, prepare, train_loader};
use super::metrics::Accuracy;
use super::recorder::Recorder;
use super::runlog::{EpochRecord, FinalRecord, LogRecord, StepRecord};
use super::schedule::LrSchedule;
use super::stepper::{Stepper, sum_accuracy};
use crate::dist::{self, Communicator, Local};
use crate::loader::{Batch, Loader, LoaderState};
use crate::model::state;
use crate::model::zoo;
use crate::model::zoo::{Family, Network, NetworkUser};
use crate::progress::ProgressMode;
use crate::reader::Dataset;
use crate::sampler::{Distributed, Remainder};
use dfdx::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

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

/// [`prepare`] and [`run`] on the CPU with model type `M`, which must have
/// as many classes as the data.
pub fn train_cpu<M: Network<Cpu>>(
    start: Start,
    progress: ProgressMode,
) -> Result<TrainReport, TrainError> {
    let job = prepare(start, progress)?;
    let dev = cpu_device(job.config.seed);
    run::<M, Cpu>(job, dev)
}

/// Trains a prepared job with the model type its name picks from the zoo,
/// on the device its config names, in one process.
pub fn train(job: Job) -> Result<TrainReport, TrainError> {
    train_on(job, &mut Local)
}

/// Trains model type `M` on device `dev` (see [`prepare`]), in one process.
pub fn run<M: Network<D>, D: Device<f32>>(job: Job, dev: D) -> Result<TrainReport, TrainError> {
    run_on::<M, D>(job, dev, &mut Local)
}

/// [`train`] as one of the ranks of `comm` (data-parallel: each rank
/// computes its share of the global batch, gradients averaged).
pub fn train_on(job: Job, comm: &mut dyn Communicator) -> Result<TrainReport, TrainError> {
    struct With<'c, D>(Job, D, &'c mut dyn Communicator);
    impl<D: Device<f32>> NetworkUser<D> for With<'_, D> {
        type Output = Result<TrainReport, TrainError>;
        fn run<M: Network<D>>(self) -> Self::Output {
            run_on::<M, D>(self.0, self.1, self.2)
        }
    }
    let (model, classes, seed) = (job.model().to_string(), job.classes(), job.config.seed);
    match (job.config.device, job.config.engine) {
        #[cfg(feature = "dfdx-cuda")]
        (super::DeviceKind::Cuda, super::EngineKind::Dfdx) => {
            zoo::with_network(&model, classes, With(job, super::cuda_device(seed)?, comm))?
        }
        _ => zoo::with_network(&model, classes, With(job, cpu_device(seed), comm))?,
    }
}

/// What every rank must agree on before the first step: the ranks check it
/// together ([`dist::check_agreement`]) and all stop on the first difference.
fn agreement_fields(
    cfg: &super::TrainConfig,
    job_start: Option<&TrainState>,
) -> Vec<(&'static str, String)> {
    vec![
        ("code version", env!("CARGO_PKG_VERSION").to_string()),
        ("model", cfg.model.clone()),
        ("batch size", cfg.batch_size.to_string()),
        ("crop", cfg.crop.to_string()),
        ("engine", format!("{:?}", cfg.engine)),
        ("precision", cfg.precision.to_string()),
        ("device", format!("{:?}", cfg.device)),
        ("seed", cfg.seed.to_string()),
        ("learning rate", cfg.lr.to_string()),
        ("epochs", cfg.epochs.to_string()),
        ("max steps", format!("{:?}", cfg.max_steps)),
        ("data", cfg.data.display().to_string()),
        ("output folder", cfg.out.display().to_string()),
        (
            "resumed at step",
            job_start.map_or("new run".into(), |s| s.step.to_string()),
        ),
    ]
}

/// Trains model type `M` on device `dev` as one of the ranks of `comm`.
/// Rank 0 alone writes the log, the progress bar, the checkpoints and the
/// plot ([`Recorder`]).
pub fn run_on<M: Network<D>, D: Device<f32>>(
    job: Job,
    dev: D,
    comm: &mut dyn Communicator,
) -> Result<TrainReport, TrainError> {
    if M::CLASSES != job.classes.len() {
        return Err(TrainError::Classes(format!(
            "the model has {} classes, the data {}",
            M::CLASSES,
            job.classes.len()
        )));
    }
    check_ranks(&job, comm)?;
    let mut run = Run::<M, D>::start(job, dev, comm)?;
    run.train()?;
    let final_eval = run.final_test()?;
    Ok(run.finish(final_eval))
}

/// What must hold across the ranks before the first step: the same
/// settings, data and code everywhere, a global batch that divides among
/// them, and (resuming) as many ranks as wrote the checkpoint.
fn check_ranks(job: &Job, comm: &dyn Communicator) -> Result<(), TrainError> {
    let (cfg, world) = (&job.config, comm.world_size());
    let mut fields = agreement_fields(cfg, job.start.as_ref().map(|(_, s)| s));
    fields.push(("training images", job.train.len().to_string()));
    fields.push(("classes", job.classes.len().to_string()));
    dist::check_agreement(comm, &fields)?;
    if !cfg.batch_size.is_multiple_of(world) {
        return Err(TrainError::Ranks(format!(
            "--batch-size {} does not divide among {world} ranks (the global batch is split evenly: use a multiple of {world})",
            cfg.batch_size
        )));
    }
    if let Some((dir, st)) = &job.start
        && st.world_size != world
    {
        return Err(TrainError::Ranks(format!(
            "checkpoint {} was written by a run of {} rank(s), this one has {world}: resume with `mpirun -np {}` (a resumed run continues exactly only on as many ranks)",
            dir.display(),
            st.world_size,
            st.world_size
        )));
    }
    Ok(())
}

/// Testing aids of a [`Job`] (never saved).
struct Faults {
    nan_at_step: Option<usize>,
    panic_at_step: Option<usize>,
}

/// A run in progress on one rank: the model and what steps it, the state
/// a checkpoint saves, the loaders of this rank's shares, the recorder.
struct Run<'c, M, D: Device<f32>> {
    cfg: super::TrainConfig,
    model: M,
    dev: D,
    stepper: Stepper<D>,
    st: TrainState,
    rec: Recorder,
    comm: &'c mut dyn Communicator,
    train_loader: Loader,
    val_loader: Loader,
    val: Arc<Dataset>,
    steps_per_epoch: usize,
    last_ckpt: Option<PathBuf>,
    saved_step: Option<usize>,
    /// Training images and seconds of the steps run here.
    images: usize,
    busy: f64,
    faults: Faults,
}

impl<'c, M: Network<D>, D: Device<f32>> Run<'c, M, D> {
    /// The model built (or loaded from the checkpoint resumed), the
    /// stepper planned, this rank's loaders and recorder made.
    fn start(job: Job, dev: D, comm: &'c mut dyn Communicator) -> Result<Self, TrainError> {
        let Job {
            config: cfg,
            classes,
            train,
            val,
            start,
            progress,
            nan_at_step,
            panic_at_step,
        } = job;
        let (rank, world) = (comm.rank(), comm.world_size());
        let mut model = M::build(&dev);
        if cfg.zero_init_last_bn {
            state::zero_init_last_bn(&mut model);
        }
        let mut stepper = Stepper::new(cfg.engine, &model, &cfg, comm)?;
        let share = Distributed {
            rank,
            world_size: world,
            remainder: Remainder::Pad,
        };
        let train_loader = train_loader(&cfg, Arc::clone(&train), share)?;
        let val_loader = eval_loader(
            &cfg,
            Arc::clone(&val),
            center_crop(&cfg),
            Distributed {
                remainder: Remainder::Uneven,
                ..share
            },
        )?;
        let steps_per_epoch = train_loader.batches_per_epoch();
        let mut st = match start {
            Some((dir, st)) => {
                state::load_safetensors(&mut model, &dir.join(checkpoint::MODEL_FILE)).map_err(
                    |source| TrainError::Checkpoint {
                        path: dir.clone(),
                        source,
                    },
                )?;
                stepper.resume(&model, &dev, checkpoint::read_momentum(&dir, &model)?)?;
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
                world_size: world,
            },
        };
        st.config = cfg.clone();
        let rec = Recorder::new(
            rank,
            &cfg,
            &classes,
            st.step,
            cfg.epochs * steps_per_epoch,
            progress,
        )?;
        let last_ckpt = rec
            .checkpoint_dir()
            .join(checkpoint::STATE_FILE)
            .is_file()
            .then(|| rec.checkpoint_dir().to_owned());
        Ok(Run {
            cfg,
            model,
            dev,
            stepper,
            st,
            rec,
            comm,
            train_loader,
            val_loader,
            val,
            steps_per_epoch,
            last_ckpt,
            saved_step: None,
            images: 0,
            busy: 0.0,
            faults: Faults {
                nan_at_step,
                panic_at_step,
            },
        })
    }

    /// Epochs until the last or `--max-steps`; a run stopped mid-epoch
    /// checkpoints its place.
    fn train(&mut self) -> Result<(), TrainError> {
        let max_steps = self.cfg.max_steps.unwrap_or(usize::MAX);
        while self.st.epoch < self.cfg.epochs {
            if !self.epoch(max_steps)? {
                break;
            }
            self.end_epoch()?;
        }
        self.rec.bar.finish_and_clear();
        if self.st.step >= max_steps
            && self.st.loader.position != 0
            && self.saved_step != Some(self.st.step)
        {
            self.checkpoint()?;
        }
        Ok(())
    }

    /// The steps of the current epoch from where the loader stands;
    /// `false` when `max_steps` stopped it first.
    fn epoch(&mut self, max_steps: usize) -> Result<bool, TrainError> {
        let mut epoch =
            self.train_loader
                .resume(self.st.loader)
                .map_err(|source| TrainError::Loader {
                    what: "training",
                    source,
                })?;
        let mut last_wait = 0.0;
        loop {
            if self.st.step >= max_steps {
                return Ok(false);
            }
            let t0 = Instant::now();
            let Some(batch) = epoch.next() else {
                return Ok(true);
            };
            let batch = batch?;
            let wait = epoch.stage_times().wait - last_wait;
            last_wait += wait;
            self.step(&batch, t0, wait)?;
            self.st.loader = epoch.state();
            if self.cfg.checkpoint_every > 0
                && self.st.step.is_multiple_of(self.cfg.checkpoint_every)
            {
                self.checkpoint()?;
            }
        }
    }

    /// One SGD step over the ranks on `batch` (this rank's share), logged.
    fn step(&mut self, batch: &Batch, t0: Instant, wait: f64) -> Result<(), TrainError> {
        let (rank, world) = (self.comm.rank(), self.comm.world_size());
        let next = self.st.step + 1;
        let last_rank = rank + 1 == world;
        if self.faults.panic_at_step == Some(next) && last_rank {
            panic!("injected panic at step {next} (--debug-panic-at-step)");
        }
        let lr = self
            .st
            .schedule
            .lr(self.st.step as f64 / self.steps_per_epoch as f64);
        let [n, h, w, _] = batch.shape();
        // Testing aid: a NaN loss on the last rank, which the ranks then
        // agree on as they would on a real one.
        let poison = self.faults.nan_at_step == Some(next) && last_rank;
        let step = self.stepper.step(
            &mut self.model,
            &self.dev,
            (batch.images(), (n, h, w), batch.labels()),
            lr as f32,
            &mut *self.comm,
            poison,
        )?;
        if !step.all_finite {
            self.rec.bar.abandon();
            return Err(TrainError::NonFinite {
                step: next,
                loss: step.loss,
                checkpoint: self.last_ckpt.clone(),
            });
        }
        let mut acc = Accuracy::default();
        acc.add(&step.logits, M::CLASSES, batch.labels());
        sum_accuracy(&mut acc, &*self.comm);
        self.st.epoch_train.merge(&acc);
        self.st.step = next;
        let dt = t0.elapsed().as_secs_f64();
        self.images += acc.n;
        self.busy += dt;
        let loss = if world == 1 {
            step.loss as f64
        } else {
            acc.loss()
        };
        self.rec.write(&LogRecord::Step(StepRecord {
            step: next,
            epoch: next as f64 / self.steps_per_epoch as f64,
            loss,
            top1_error: acc.top1_error(),
            lr,
            images_per_sec: acc.n as f64 / dt,
            step_s: dt,
            data_wait_s: wait,
            allreduce_wait_s: step.allreduce_wait_s,
        }))?;
        self.rec.bar.inc(1);
        self.rec.bar.set_message(format!(
            "ep {} loss {loss:.3} lr {lr:.3e} {:.0} img/s wait {:.0}%",
            self.st.epoch,
            acc.n as f64 / dt,
            100.0 * wait / dt
        ));
        Ok(())
    }

    /// The epoch's end: evaluation with the ranks' averaged statistics,
    /// the schedule, the record, a checkpoint.
    fn end_epoch(&mut self) -> Result<(), TrainError> {
        self.stepper.average_statistics(&*self.comm)?;
        let v = self
            .stepper
            .evaluate(&mut self.model, &self.dev, &self.val_loader, &*self.comm)?;
        let st = &mut self.st;
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
            lr: st.schedule.lr(st.step as f64 / self.steps_per_epoch as f64),
            lr_fell,
        };
        self.rec.write(&LogRecord::Epoch(record.clone()))?;
        self.rec.bar.println(format!(
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
            seed: self.cfg.seed,
            epoch: st.epoch as u64,
            position: 0,
        };
        self.checkpoint()
    }

    /// A checkpoint now ([`Recorder::checkpoint`], collective).
    fn checkpoint(&mut self) -> Result<(), TrainError> {
        let dir = self
            .rec
            .checkpoint(&mut self.model, &mut self.stepper, &self.st, &*self.comm)?;
        self.last_ckpt = Some(dir);
        self.saved_step = Some(self.st.step);
        Ok(())
    }

    /// The final ten-crop and multi-scale test of an ImageNet net whose
    /// epochs all ran, each rank on its share of the validation split (the
    /// statistics were averaged at the last checkpoint), the counts summed.
    fn final_test(&mut self) -> Result<Option<FinalRecord>, TrainError> {
        let cfg = &self.cfg;
        if !cfg.final_eval
            || self.st.epoch < cfg.epochs
            || zoo::family(&cfg.model) != Some(Family::ImageNet)
        {
            return Ok(None);
        }
        let scales = paper_scales(cfg.crop);
        self.stepper.sync(&mut self.model)?;
        let engine = match &mut self.stepper {
            Stepper::Engine(e) => Some(&mut **e),
            Stepper::Dfdx(_) => None,
        };
        let share = Distributed {
            rank: self.comm.rank(),
            world_size: self.comm.world_size(),
            remainder: Remainder::Uneven,
        };
        let center = eval_loader(cfg, Arc::clone(&self.val), center_crop(cfg), share)?;
        let ten_loader = ten_crop_loader(cfg, &self.val, share)?;
        let (mut ten, mut ms) = ten_crop_and_multiscale(
            &mut self.model,
            engine,
            &self.dev,
            &ten_loader,
            &center,
            &scales,
        )?;
        sum_accuracy(&mut ten, &*self.comm);
        sum_accuracy(&mut ms, &*self.comm);
        let r = FinalRecord {
            ten_crop_top1_error: ten.top1_error(),
            ten_crop_top5_error: ten.top5_error(),
            multiscale_top1_error: ms.top1_error(),
            multiscale_top5_error: ms.top5_error(),
            scales,
            images: ten.n,
        };
        self.rec.write(&LogRecord::Final(r.clone()))?;
        Ok(Some(r))
    }

    /// The log closed, the plot drawn (rank 0): what the run reports.
    fn finish(self, final_eval: Option<FinalRecord>) -> TrainReport {
        let log = self.rec.log_path().to_owned();
        let plot = self.rec.finish(&self.cfg.model);
        TrainReport {
            steps: self.st.step,
            last_epoch: self.st.history.last().cloned(),
            final_eval,
            log,
            plot,
            checkpoint: self.last_ckpt,
            images_per_sec: self.images as f64 / self.busy.max(1e-9),
        }
    }
}

fn pct(x: f64) -> String {
    format!("{:.1}%", 100.0 * x)
}

/// What `train-resnet` prints at the end of a run.
impl std::fmt::Display for TrainReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{} steps, {:.1} training images/s",
            self.steps, self.images_per_sec
        )?;
        if let Some(e) = &self.last_epoch {
            writeln!(
                f,
                "validation (centre crop, {} images): top-1 accuracy {} (error {}), top-5 accuracy {}",
                e.val_images,
                pct(1.0 - e.val_top1_error),
                pct(e.val_top1_error),
                pct(1.0 - e.val_top5_error)
            )?;
        }
        if let Some(r) = &self.final_eval {
            writeln!(
                f,
                "ten-crop top-1 error {}, top-5 {}; multi-scale {:?} top-1 error {}, top-5 {}",
                pct(r.ten_crop_top1_error),
                pct(r.ten_crop_top5_error),
                r.scales,
                pct(r.multiscale_top1_error),
                pct(r.multiscale_top5_error)
            )?;
        }
        writeln!(f, "log: {}", self.log.display())?;
        if let Some(p) = &self.plot {
            writeln!(f, "plot: {}", p.display())?;
        }
        if let Some(c) = &self.checkpoint {
            writeln!(f, "checkpoint: {}", c.display())?;
        }
        Ok(())
    }
}
