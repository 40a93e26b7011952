//! The device check `gpu-check` runs: the CPU-vs-device parity of training
//! ([`super::parity`]), step timings on synthetic batches and training fed by
//! the real loader ([`super::timing`]), for any model of the zoo.
//!
//! Each model runs at its family's standard class count (ImageNet 1000,
//! CIFAR-10; [`zoo::with_standard_network`]). A part that panics (a device
//! out of memory, an unsupported size) is reported as [`Record::Failed`]
//! and the run goes on; bad settings are an [`DeviceCheckError`].

use super::parity::{self, Comparison};
use super::timing::{self, LoaderTraining, OpTimes, StepTimes, Timing};
use crate::model::zoo::{self, Network, NetworkPairUser, NetworkUser, ZooError};
use crate::reader::Dataset;
use crate::train::{TrainConfig, TrainError};
use dfdx::prelude::*;
use dfdx::tensor::{Cache, Synchronize};
use serde::Serialize;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::Arc;

/// What to check and time.
#[derive(Debug, Clone)]
pub struct CheckPlan {
    /// Models compared with the CPU.
    pub compare: Vec<String>,
    /// The comparison's batch, side, steps and seed (its `last_bn_scale`
    /// is the first pass's: None).
    pub compare_setup: parity::Setup,
    /// Also compare with each residual branch's last BatchNorm scale set to this.
    pub compare_last_bn_scale: Option<f32>,
    /// Models timed on synthetic batches.
    pub time: Vec<String>,
    /// Batch sizes timed, ascending (a size that fails ends the model's sweep).
    pub batch_sizes: Vec<usize>,
    /// Image side of the timed steps.
    pub side: usize,
    /// How long each timing runs.
    pub timing: Timing,
    /// Time the pieces of a ResNet-50 first-stage layer at this batch (0: skip).
    pub ops_batch: usize,
    /// Training fed by the real loader.
    pub loader: Option<LoaderCheck>,
}

/// Training fed by the real loader from a packed split.
#[derive(Debug, Clone)]
pub struct LoaderCheck {
    /// The packed split (e.g. `shards/train`).
    pub data: PathBuf,
    /// Model trained.
    pub model: String,
    /// Images per step.
    pub batch: usize,
    /// Timed steps (after 3 untimed).
    pub steps: usize,
    /// Loader threads (None: all cores).
    pub workers: Option<usize>,
}

/// One result: what `gpu-check --json` writes, one JSON line each.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Record {
    /// A parity check.
    Compare(Comparison),
    /// Timed steps of one model and batch.
    Time(StepTimes),
    /// Training fed by the loader.
    Loader(LoaderTraining),
    /// The pieces of one layer.
    Ops(OpTimes),
    /// A part that panicked.
    Failed {
        /// The part (`compare resnet50`, `time resnet18 b256`, ...).
        what: String,
        /// The panic's message.
        error: String,
    },
}

/// Why the check could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeviceCheckError {
    /// A model name the zoo does not have.
    #[error(transparent)]
    Zoo(#[from] ZooError),
    /// The packed split could not be opened.
    #[error("open {}: {source}", path.display())]
    Data {
        /// The split given.
        path: PathBuf,
        /// Why.
        source: crate::error::ReadError,
    },
    /// The split has labels the model has no output for.
    #[error("{path}: {classes} classes, but {model} is built with {outputs} outputs here", path = path.display())]
    Classes {
        /// The split given.
        path: PathBuf,
        /// Its classes.
        classes: usize,
        /// The model.
        model: String,
        /// The model's outputs.
        outputs: usize,
    },
    /// The loader could not be built.
    #[error(transparent)]
    Train(#[from] TrainError),
    /// The loader failed while training.
    #[error("loader: {0}")]
    Load(#[from] crate::error::LoadError),
}

fn caught<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|e| crate::error::panic_message(&*e))
}

/// Runs `plan` on `dev` (named `device` in messages), with `reference` the
/// CPU the comparisons are made against and `memory` the device's memory in
/// use where it reports it. Every result goes to `emit` as it comes.
/// Returns whether every comparison was within its thresholds.
pub fn run<D: Device<f32> + Synchronize + Cache>(
    plan: &CheckPlan,
    reference: &Cpu,
    dev: &D,
    memory: &dyn Fn() -> Option<u64>,
    emit: &mut dyn FnMut(Record),
) -> Result<bool, DeviceCheckError> {
    for name in plan.compare.iter().chain(&plan.time) {
        zoo::family(name).ok_or_else(|| ZooError::UnknownModel { name: name.clone() })?;
    }
    let mut all_passed = true;
    let scales = std::iter::once(None).chain(plan.compare_last_bn_scale.map(Some));
    for last_bn_scale in scales {
        for name in &plan.compare {
            let label = match last_bn_scale {
                Some(v) => format!("{name} (last BatchNorm scale {v})"),
                None => name.clone(),
            };
            let setup = parity::Setup {
                last_bn_scale,
                ..plan.compare_setup
            };
            let user = Compare {
                label: &label,
                reference,
                test: dev,
                setup,
            };
            match zoo::with_standard_network_pair(name, user)? {
                Ok(c) => {
                    all_passed &= c.passed();
                    emit(Record::Compare(c));
                }
                Err(error) => {
                    all_passed = false;
                    emit(Record::Failed {
                        what: format!("compare {label}"),
                        error,
                    });
                }
            }
        }
    }
    for name in &plan.time {
        for &batch in &plan.batch_sizes {
            dev.empty_cache();
            let user = TimeSteps {
                name,
                dev,
                batch,
                side: plan.side,
                timing: plan.timing,
                memory,
            };
            match zoo::with_standard_network(name, user)? {
                Ok(t) => emit(Record::Time(t)),
                Err(error) => {
                    emit(Record::Failed {
                        what: format!("time {name} b{batch} (larger batches skipped)"),
                        error,
                    });
                    break;
                }
            }
        }
    }
    if plan.ops_batch > 0 {
        dev.empty_cache();
        match caught(|| timing::time_ops(dev, plan.ops_batch, 10)) {
            Ok(t) => emit(Record::Ops(t)),
            Err(error) => emit(Record::Failed {
                what: "ops".into(),
                error,
            }),
        }
    }
    if let Some(check) = &plan.loader {
        dev.empty_cache();
        let family = zoo::family(&check.model).ok_or_else(|| ZooError::UnknownModel {
            name: check.model.clone(),
        })?;
        let ds = Dataset::open(&check.data).map_err(|source| DeviceCheckError::Data {
            path: check.data.clone(),
            source,
        })?;
        let outputs = family.standard_classes();
        if ds.num_classes() > outputs {
            return Err(DeviceCheckError::Classes {
                path: check.data.clone(),
                classes: ds.num_classes(),
                model: check.model.clone(),
                outputs,
            });
        }
        let mut cfg = TrainConfig::paper(&check.data, &check.model);
        cfg.batch_size = check.batch;
        if let Some(w) = check.workers {
            cfg.workers = w;
        }
        let loader = crate::train::train_loader(&cfg, Arc::new(ds), Default::default())?;
        let user = LoaderSteps {
            name: &check.model,
            dev,
            loader: &loader,
            steps: check.steps,
        };
        match zoo::with_standard_network(&check.model, user)? {
            Ok(l) => emit(Record::Loader(l?)),
            Err(error) => emit(Record::Failed {
                what: format!("loader+train {}", check.model),
                error,
            }),
        }
    }
    Ok(all_passed)
}

struct Compare<'a, T> {
    label: &'a str,
    reference: &'a Cpu,
    test: &'a T,
    setup: parity::Setup,
}

impl<T: Device<f32>> NetworkPairUser<Cpu, T> for Compare<'_, T> {
    type Output = Result<Comparison, String>;
    fn run<M>(self) -> Self::Output
    where
        M: Network<Cpu>,
        <M as TensorCollection<f32, Cpu>>::To<f32, T>: Network<T>,
    {
        caught(|| parity::compare::<M, Cpu, T>(self.label, self.reference, self.test, self.setup))
    }
}

struct TimeSteps<'a, D> {
    name: &'a str,
    dev: &'a D,
    batch: usize,
    side: usize,
    timing: Timing,
    memory: &'a dyn Fn() -> Option<u64>,
}

impl<D: Device<f32> + Synchronize> NetworkUser<D> for TimeSteps<'_, D> {
    type Output = Result<StepTimes, String>;
    fn run<M: Network<D>>(self) -> Self::Output {
        caught(|| {
            timing::time_steps::<M, D>(
                self.name,
                self.dev,
                self.batch,
                self.side,
                self.timing,
                self.memory,
            )
        })
    }
}

struct LoaderSteps<'a, D> {
    name: &'a str,
    dev: &'a D,
    loader: &'a crate::loader::Loader,
    steps: usize,
}

impl<D: Device<f32> + Synchronize> NetworkUser<D> for LoaderSteps<'_, D> {
    type Output = Result<Result<LoaderTraining, crate::error::LoadError>, String>;
    fn run<M: Network<D>>(self) -> Self::Output {
        caught(|| {
            timing::time_loader_training::<M, D>(self.name, self.dev, self.loader, 3, self.steps)
        })
    }
}
