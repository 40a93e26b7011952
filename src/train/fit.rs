//! The training loop: steps, the end-of-epoch evaluation and schedule,
//! checkpoints, the log and the plot.

use super::TrainError;
use super::checkpoint;
use super::device::cpu_device;
use super::eval::{center_crop, paper_scales, ten_crop_and_multiscale};
use super::job::{Job, Start, TrainState, eval_loader, metadata, prepare, train_loader};
use super::metrics::Accuracy;
use super::runlog::{self, CheckpointRecord, EpochRecord, FinalRecord, LogRecord, StepRecord};
use super::schedule::LrSchedule;
use super::stepper::{Stepper, sum_accuracy};
use crate::dist::{self, Communicator, Local};
use crate::loader::LoaderState;
use crate::model::state;
use crate::model::zoo;
use crate::model::zoo::{Family, Network, NetworkUser};
use crate::progress::{ProgressMode, progress_bar};
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

/// What rank 0 shows and writes while training: the log and the progress
/// bar. Other ranks hold neither.
struct Recorder {
    logger: Option<runlog::Logger>,
    bar: indicatif::ProgressBar,
}

impl Recorder {
    fn write(&mut self, r: &LogRecord) -> Result<(), TrainError> {
        match &mut self.logger {
            Some(l) => l.write(r),
            None => Ok(()),
        }
    }
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
    match job.config.device {
        #[cfg(feature = "dfdx-cuda")]
        super::DeviceKind::Cuda => {
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
/// Rank 0 alone writes the log, the progress bar, the checkpoints and the plot.
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
    let mut fields = agreement_fields(&cfg, start.as_ref().map(|(_, s)| s));
    fields.push(("training images", train.len().to_string()));
    fields.push(("classes", classes.len().to_string()));
    dist::check_agreement(comm, &fields)?;
    if !cfg.batch_size.is_multiple_of(world) {
        return Err(TrainError::Ranks(format!(
            "--batch-size {} does not divide among {world} ranks (the global batch is split evenly: use a multiple of {world})",
            cfg.batch_size
        )));
    }
    if let Some((dir, st)) = &start
        && st.world_size != world
    {
        return Err(TrainError::Ranks(format!(
            "checkpoint {} was written by a run of {} rank(s), this one has {world}: resume with `mpirun -np {}` (a resumed run continues exactly only on as many ranks)",
            dir.display(),
            st.world_size,
            st.world_size
        )));
    }
    let n_classes = M::CLASSES;
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
    let ckpt_dir = cfg.out.join("checkpoints").join("last");
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
    let log_path = cfg.out.join("log.jsonl");
    let mut rec = Recorder {
        logger: if rank == 0 {
            Some(runlog::Logger::open(&log_path, st.step)?)
        } else {
            None
        },
        bar: progress_bar(
            (cfg.epochs * steps_per_epoch) as u64,
            "train",
            if rank == 0 {
                progress
            } else {
                ProgressMode::Hidden
            },
        ),
    };
    let mut last_ckpt: Option<PathBuf> = ckpt_dir
        .join(checkpoint::STATE_FILE)
        .is_file()
        .then(|| ckpt_dir.clone());
    // The checkpoint policy, collective: every rank averages its running
    // statistics and gives its checksum; rank 0 writes; all stop if the
    // ranks' parameters differ.
    let save = |model: &mut M,
                stepper: &mut Stepper<D>,
                st: &TrainState,
                rec: &mut Recorder,
                comm: &dyn Communicator|
     -> Result<PathBuf, TrainError> {
        let checksums = stepper.checksums(comm);
        if rank == 0 {
            let momentum = stepper.sync(model)?;
            let json = serde_json::to_string_pretty(st).expect("state serialises");
            checkpoint::write(
                &ckpt_dir,
                model,
                momentum,
                &json,
                metadata(&cfg, &classes),
                cfg.keep_checkpoints,
            )?;
            rec.write(&LogRecord::Checkpoint(CheckpointRecord {
                step: st.step,
                world_size: world,
                param_checksums: checksums.clone(),
            }))?;
        }
        if checksums.iter().any(|c| *c != checksums[0]) {
            return Err(TrainError::Diverged {
                step: st.step,
                checksums,
            });
        }
        Ok(ckpt_dir.clone())
    };
    let max_steps = cfg.max_steps.unwrap_or(usize::MAX);
    let mut saved_step = None;
    let (mut images, mut busy) = (0usize, 0f64);
    rec.bar.set_position(st.step as u64);
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
            if panic_at_step == Some(st.step + 1) && rank + 1 == world {
                panic!(
                    "injected panic at step {} (--debug-panic-at-step)",
                    st.step + 1
                );
            }
            let t = st.step as f64 / steps_per_epoch as f64;
            let lr = st.schedule.lr(t);
            let [n, h, w, _] = batch.shape();
            // Testing aid: a NaN loss on the last rank, which the ranks
            // then agree on as they would on a real one.
            let poison = nan_at_step == Some(st.step + 1) && rank + 1 == world;
            let step = stepper.step(
                &mut model,
                &dev,
                (batch.images(), (n, h, w), batch.labels()),
                lr as f32,
                comm,
                poison,
            )?;
            if !step.all_finite {
                rec.bar.abandon();
                return Err(TrainError::NonFinite {
                    step: st.step + 1,
                    loss: step.loss,
                    checkpoint: last_ckpt,
                });
            }
            let mut acc = Accuracy::default();
            acc.add(&step.logits, n_classes, batch.labels());
            sum_accuracy(&mut acc, comm);
            st.epoch_train.merge(&acc);
            st.step += 1;
            st.loader = epoch.state();
            let dt = t0.elapsed().as_secs_f64();
            let n = acc.n;
            images += n;
            busy += dt;
            let loss = if world == 1 {
                step.loss as f64
            } else {
                acc.loss()
            };
            rec.write(&LogRecord::Step(StepRecord {
                step: st.step,
                epoch: st.step as f64 / steps_per_epoch as f64,
                loss,
                top1_error: acc.top1_error(),
                lr,
                images_per_sec: n as f64 / dt,
                step_s: dt,
                data_wait_s: wait,
                allreduce_wait_s: step.allreduce_wait_s,
            }))?;
            rec.bar.inc(1);
            rec.bar.set_message(format!(
                "ep {} loss {loss:.3} lr {lr:.3e} {:.0} img/s wait {:.0}%",
                st.epoch,
                n as f64 / dt,
                100.0 * wait / dt
            ));
            if cfg.checkpoint_every > 0 && st.step % cfg.checkpoint_every == 0 {
                last_ckpt = Some(save(&mut model, &mut stepper, &st, &mut rec, comm)?);
                saved_step = Some(st.step);
            }
        }
        drop(epoch);
        // Epoch finished: evaluate (with the ranks' averaged statistics),
        // adjust the schedule, checkpoint.
        stepper.average_statistics(comm);
        let v = stepper.evaluate(&mut model, &dev, &val_loader, comm)?;
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
        rec.write(&LogRecord::Epoch(record.clone()))?;
        rec.bar.println(format!(
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
        last_ckpt = Some(save(&mut model, &mut stepper, &st, &mut rec, comm)?);
        saved_step = Some(st.step);
    }
    rec.bar.finish_and_clear();
    if st.step >= max_steps && st.loader.position != 0 && saved_step != Some(st.step) {
        // Stopped mid-epoch: keep the place.
        last_ckpt = Some(save(&mut model, &mut stepper, &st, &mut rec, comm)?);
    }
    let mut final_eval = None;
    // The final ten-crop and multi-scale test runs on rank 0 alone (the
    // statistics were averaged at the last checkpoint).
    if rank == 0
        && cfg.final_eval
        && st.epoch >= cfg.epochs
        && zoo::family(&cfg.model) == Some(Family::ImageNet)
    {
        let scales = paper_scales(cfg.crop);
        stepper.sync(&mut model)?;
        let engine = match &mut stepper {
            Stepper::Engine(e) => Some(&mut **e),
            Stepper::Dfdx(_) => None,
        };
        let center = eval_loader(
            &cfg,
            Arc::clone(&val),
            center_crop(&cfg),
            Distributed::default(),
        )?;
        let (ten, ms) =
            ten_crop_and_multiscale(&mut model, engine, &dev, &cfg, &val, &center, &scales)?;
        let r = FinalRecord {
            ten_crop_top1_error: ten.top1_error(),
            ten_crop_top5_error: ten.top5_error(),
            multiscale_top1_error: ms.top1_error(),
            multiscale_top5_error: ms.top5_error(),
            scales,
            images: ten.n,
        };
        rec.write(&LogRecord::Final(r.clone()))?;
        final_eval = Some(r);
    }
    drop(rec);
    let plot_path = cfg.out.join("curves.png");
    // The run is done and its log written: a plot that fails is a warning.
    let plot = match rank {
        0 => match runlog::plot(&log_path, &plot_path, &cfg.model) {
            Ok(_) => Some(plot_path),
            Err(e) => {
                log::warn!("could not draw {}: {e}", plot_path.display());
                None
            }
        },
        _ => None,
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
