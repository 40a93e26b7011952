//! What computes a step on one rank: dfdx's tape with [`Sgd`] (the
//! reference, one process), or the planned engine (data-parallel with the
//! ranks of a [`Communicator`]); and the collectives around it that the
//! training loop needs (statistics averaged, checksums, accuracy summed).

use super::TrainError;
use super::config::{DeviceKind, EngineKind};
use super::eval::{evaluate, evaluate_engine};
use super::metrics::Accuracy;
use super::sgd::Sgd;
use crate::dist::{self, Communicator};
use crate::engine::{Engine, SgdSettings, Target};
use crate::loader::Loader;
use crate::model::zoo::{Input, Logits, Network};
use dfdx::prelude::*;
use std::collections::BTreeMap;

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
pub(super) enum Stepper<D: Device<f32>> {
    Dfdx(Sgd<D>),
    Engine(Box<Engine>),
}

/// What one step of this rank did.
pub(super) struct Step {
    pub(super) loss: f32,
    pub(super) logits: Vec<f32>,
    pub(super) all_finite: bool,
    pub(super) allreduce_wait_s: f64,
}

impl<D: Device<f32>> Stepper<D> {
    /// The stepper of this rank: plans the engine for its share of the
    /// global batch.
    pub(super) fn new<M: Network<D>>(
        kind: EngineKind,
        model: &M,
        cfg: &super::TrainConfig,
        comm: &dyn Communicator,
    ) -> Result<Self, TrainError> {
        let (momentum, weight_decay) = (cfg.momentum as f32, cfg.weight_decay as f32);
        let world = comm.world_size();
        Ok(match kind {
            EngineKind::Dfdx if world > 1 => {
                return Err(TrainError::Ranks(format!(
                    "training on {world} ranks runs on the engine (--engine engine), not dfdx"
                )));
            }
            EngineKind::Dfdx => Stepper::Dfdx(Sgd::new(momentum, weight_decay)),
            EngineKind::Engine => {
                let side = cfg.crop as usize;
                let target = match cfg.device {
                    DeviceKind::Cpu if world > 1 => Target::Cpu {
                        threads: dist::threads_per_rank(),
                    },
                    DeviceKind::Cpu => Target::Cpu { threads: 0 },
                    DeviceKind::Cuda => Target::Cuda {
                        ordinal: dist::local_rank(),
                    },
                };
                let mut e = Engine::build(
                    model,
                    cfg.batch_size / world,
                    (side, side),
                    target,
                    cfg.precision,
                )?;
                log::info!("engine: {}", e.describe());
                e.sgd = SgdSettings {
                    momentum,
                    weight_decay,
                };
                Stepper::Engine(Box::new(e))
            }
        })
    }

    /// Restores momentum (after the model's weights were loaded).
    pub(super) fn resume<M: Network<D>>(
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

    /// One SGD step on an NHWC batch `(images, (n, h, w), labels)` with the
    /// ranks of `comm`; `poison` (a testing aid) makes this rank's loss NaN.
    pub(super) fn step<M: Network<D>>(
        &mut self,
        model: &mut M,
        dev: &D,
        (images, (n, h, w), labels): (&[f32], (usize, usize, usize), &[u32]),
        lr: f32,
        comm: &mut dyn Communicator,
        poison: bool,
    ) -> Result<Step, TrainError> {
        match self {
            Stepper::Dfdx(sgd) => {
                let (mut loss, logits) = sgd_step(model, sgd, dev, images, (n, h, w), labels, lr);
                if poison {
                    loss = f32::NAN;
                }
                Ok(Step {
                    loss,
                    logits,
                    all_finite: loss.is_finite(),
                    allreduce_wait_s: 0.0,
                })
            }
            Stepper::Engine(e) => {
                if poison {
                    e.poison_next_loss();
                }
                let s = e.train_step_on(images, labels, lr, comm)?;
                Ok(Step {
                    loss: s.loss,
                    logits: e.logits()?,
                    all_finite: s.all_finite,
                    allreduce_wait_s: s.wait_s,
                })
            }
        }
    }

    /// Averages the running statistics over the ranks (before evaluation
    /// and checkpoints; once per change).
    pub(super) fn average_statistics(&mut self, comm: &dyn Communicator) -> Result<(), TrainError> {
        if let Stepper::Engine(e) = self {
            e.average_statistics(comm)?;
        }
        Ok(())
    }

    /// The statistics averaged, then the checksum of every rank's
    /// parameters and statistics, in rank order.
    pub(super) fn checksums(&mut self, comm: &dyn Communicator) -> Result<Vec<String>, TrainError> {
        self.average_statistics(comm)?;
        let mine = match self {
            Stepper::Engine(e) => e.checksum()?,
            // One rank only (Stepper::new).
            Stepper::Dfdx(_) => 0,
        };
        Ok(comm
            .all_gather(&mine.to_le_bytes())
            .iter()
            .map(|b| {
                format!(
                    "{:08x}",
                    u32::from_le_bytes(b[..4].try_into().unwrap_or([0; 4]))
                )
            })
            .collect())
    }

    /// Brings the dfdx model up to date (the engine's weights and running
    /// statistics copied into it) and returns the momentum.
    pub(super) fn sync<M: Network<D>>(
        &self,
        model: &mut M,
    ) -> Result<BTreeMap<String, Vec<f32>>, TrainError> {
        Ok(match self {
            Stepper::Dfdx(sgd) => sgd.buffers(),
            Stepper::Engine(e) => {
                e.write_to(model)?;
                e.momentum()?
            }
        })
    }

    /// This rank's share of the validation split, its counts summed over
    /// the ranks.
    pub(super) fn evaluate<M: Network<D>>(
        &mut self,
        model: &mut M,
        dev: &D,
        loader: &Loader,
        comm: &dyn Communicator,
    ) -> Result<Accuracy, TrainError> {
        let mut acc = match self {
            Stepper::Dfdx(_) => evaluate(model, dev, loader)?,
            Stepper::Engine(e) => evaluate_engine(e, loader)?,
        };
        sum_accuracy(&mut acc, comm);
        Ok(acc)
    }
}

/// Sums accuracy counts over the ranks.
pub(super) fn sum_accuracy(acc: &mut Accuracy, comm: &dyn Communicator) {
    if comm.world_size() == 1 {
        return;
    }
    let mut v = [acc.n as f64, acc.loss_sum, acc.top1 as f64, acc.top5 as f64];
    comm.sum_f64(&mut v);
    *acc = Accuracy {
        n: v[0] as usize,
        loss_sum: v[1],
        top1: v[2] as usize,
        top5: v[3] as usize,
    };
}
