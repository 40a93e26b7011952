//! The training loop: steps, the end-of-epoch evaluation and schedule,
//! checkpoints, the log and the plot.

use super::TrainError;
use super::checkpoint;
use super::config::EngineKind;
use super::device::cpu_device;
use super::eval::{center_crop, evaluate, evaluate_engine, paper_scales, ten_crop_and_multiscale};
use super::job::{Job, Start, TrainState, eval_loader, metadata, prepare, train_loader};
use super::metrics::Accuracy;
use super::runlog::{self, EpochRecord, FinalRecord, LogRecord, StepRecord};
use super::schedule::LrSchedule;
use super::sgd::Sgd;
use crate::engine::{Engine, SgdSettings};
use crate::loader::{Loader, LoaderState};
use crate::model::state;
use crate::model::zoo;
use crate::model::zoo::{Family, Input, Logits, Network, NetworkUser};
use crate::progress::{ProgressMode, progress_bar};
use dfdx::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
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
/// on the device its config names.
pub fn train(job: Job) -> Result<TrainReport, TrainError> {
    struct With<D>(Job, D);
    impl<D: Device<f32>> NetworkUser<D> for With<D> {
        type Output = Result<TrainReport, TrainError>;
        fn run<M: Network<D>>(self) -> Self::Output {
            run::<M, D>(self.0, self.1)
        }
    }
    let (model, classes, seed) = (job.model().to_string(), job.classes(), job.config.seed);
    match job.config.device {
        #[cfg(feature = "dfdx-cuda")]
        super::DeviceKind::Cuda => {
            zoo::with_network(&model, classes, With(job, super::cuda_device(seed)?))?
        }
        _ => zoo::with_network(&model, classes, With(job, cpu_device(seed)))?,
    }
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

/// What computes the steps: dfdx's tape with [`Sgd`], or the planned
/// engine, which holds the parameters and momentum itself and copies them
/// to the dfdx model for checkpoints and the multi-scale test.
enum Stepper<D: Device<f32>> {
    Dfdx(Sgd<D>),
    Engine(Box<Engine>),
}

impl<D: Device<f32>> Stepper<D> {
    fn new<M: Network<D>>(
        kind: EngineKind,
        model: &M,
        cfg: &super::TrainConfig,
    ) -> Result<Self, TrainError> {
        let (momentum, weight_decay) = (cfg.momentum as f32, cfg.weight_decay as f32);
        Ok(match kind {
            EngineKind::Dfdx => Stepper::Dfdx(Sgd::new(momentum, weight_decay)),
            EngineKind::Engine => {
                let side = cfg.crop as usize;
                let mut e = Engine::new(model, cfg.batch_size, (side, side), 0)?;
                e.sgd = SgdSettings {
                    momentum,
                    weight_decay,
                };
                Stepper::Engine(Box::new(e))
            }
        })
    }

    /// Restores momentum (after the model's weights were loaded).
    fn resume<M: Network<D>>(
        &mut self,
        model: &M,
        dev: &D,
        momentum: BTreeMap<String, Vec<f32>>,
    ) -> Result<(), TrainError> {
        match self {
            Stepper::Dfdx(sgd) => sgd.set_buffers(dev, momentum),
            Stepper::Engine(e) => {
                e.read_from(model)?;
                e.set_momentum(&momentum)?;
            }
        }
        Ok(())
    }

    /// One SGD step: the loss and the logits.
    fn step<M: Network<D>>(
        &mut self,
        model: &mut M,
        dev: &D,
        batch: &crate::loader::Batch,
        lr: f32,
    ) -> Result<(f32, Vec<f32>), TrainError> {
        let [n, h, w, _] = batch.shape();
        match self {
            Stepper::Dfdx(sgd) => Ok(sgd_step(
                model,
                sgd,
                dev,
                batch.images(),
                (n, h, w),
                batch.labels(),
                lr,
            )),
            Stepper::Engine(e) => {
                let loss = e.train_step(batch.images(), batch.labels(), lr)?;
                Ok((loss, e.logits().to_vec()))
            }
        }
    }

    /// Brings the dfdx model up to date (the engine's weights and running
    /// statistics copied into it) and returns the momentum.
    fn sync<M: Network<D>>(&self, model: &mut M) -> Result<BTreeMap<String, Vec<f32>>, TrainError> {
        Ok(match self {
            Stepper::Dfdx(sgd) => sgd.buffers(),
            Stepper::Engine(e) => {
                e.write_to(model)?;
                e.momentum()
            }
        })
    }

    fn evaluate<M: Network<D>>(
        &mut self,
        model: &mut M,
        dev: &D,
        loader: &Loader,
    ) -> Result<super::metrics::Accuracy, TrainError> {
        match self {
            Stepper::Dfdx(_) => evaluate(model, dev, loader),
            Stepper::Engine(e) => evaluate_engine(e, loader),
        }
    }
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
        nan_at_step,
    } = job;
    let n_classes = M::CLASSES;
    let mut model = M::build(&dev);
    if cfg.zero_init_last_bn {
        state::zero_init_last_bn(&mut model);
    }
    let mut stepper = Stepper::new(cfg.engine, &model, &cfg)?;
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
        },
    };
    st.config = cfg.clone();
    let log_path = cfg.out.join("log.jsonl");
    let mut logger = runlog::Logger::open(&log_path, st.step)?;
    let mut last_ckpt: Option<PathBuf> = ckpt_dir
        .join(checkpoint::STATE_FILE)
        .is_file()
        .then(|| ckpt_dir.clone());
    let save =
        |model: &mut M, stepper: &Stepper<D>, st: &TrainState| -> Result<PathBuf, TrainError> {
            let momentum = stepper.sync(model)?;
            let json = serde_json::to_string_pretty(st).expect("state serialises");
            checkpoint::write(&ckpt_dir, model, momentum, &json, metadata(&cfg, &classes))?;
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
            let n = batch.shape()[0];
            let t = st.step as f64 / steps_per_epoch as f64;
            let lr = st.schedule.lr(t);
            let (mut loss_value, scores) = stepper.step(&mut model, &dev, &batch, lr as f32)?;
            if nan_at_step == Some(st.step + 1) {
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
                last_ckpt = Some(save(&mut model, &stepper, &st)?);
            }
        }
        drop(epoch);
        // Epoch finished: evaluate, adjust the schedule, checkpoint.
        let v = stepper.evaluate(&mut model, &dev, &val_loader)?;
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
        last_ckpt = Some(save(&mut model, &stepper, &st)?);
    }
    bar.finish_and_clear();
    if st.step >= max_steps && st.loader.position != 0 {
        // Stopped mid-epoch: keep the place.
        last_ckpt = Some(save(&mut model, &stepper, &st)?);
    }
    let mut final_eval = None;
    if cfg.final_eval && st.epoch >= cfg.epochs && zoo::family(&cfg.model) == Some(Family::ImageNet)
    {
        let scales = paper_scales(cfg.crop);
        stepper.sync(&mut model)?;
        let engine = match &mut stepper {
            Stepper::Engine(e) => Some(&mut **e),
            Stepper::Dfdx(_) => None,
        };
        let (ten, ms) =
            ten_crop_and_multiscale(&mut model, engine, &dev, &cfg, &val, &val_loader, &scales)?;
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
    let plot = match runlog::plot(&log_path, &plot_path, &cfg.model) {
        Ok(_) => Some(plot_path),
        Err(e) => {
            log::warn!("could not draw {}: {e}", plot_path.display());
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
