//! A run's configuration: the paper's recipe, the rules that derive one
//! setting from another (the learning rate from the batch, the scale range
//! and the evaluation resize from the crop, milestones as fractions of the
//! run), and the bundled sample's small job. `train-resnet` only fills a
//! [`Choices`] from its arguments.

use super::TrainError;
use super::schedule::Schedule;
use crate::engine::Precision;
use crate::model::zoo::{self, Family, ZooError};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Where the model trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    /// This machine's cores.
    #[default]
    Cpu,
    /// An NVIDIA GPU (the engine's CUDA backend: a build with `--features
    /// cuda`; dfdx's with `--features dfdx-cuda`): each rank of a
    /// multi-process run takes the GPU of its local rank.
    Cuda,
}

/// Which trainer computes the steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    /// The planned engine ([`crate::engine`]): the default on the CPU.
    Engine,
    /// dfdx's tape with the crate's ops: the reference.
    Dfdx,
}

impl EngineKind {
    /// The name `--engine` takes.
    pub fn name(self) -> &'static str {
        match self {
            EngineKind::Engine => "engine",
            EngineKind::Dfdx => "dfdx",
        }
    }

    /// What a run written before the choice existed used.
    fn before_the_engine() -> Self {
        EngineKind::Dfdx
    }
}

/// The learning-rate rule a user picks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ScheduleKind {
    /// Divide by 10 when the validation error stalls (the paper's ImageNet rule).
    Plateau,
    /// Divide by 10 at given epochs.
    Step,
}

/// Everything that defines a run (saved in every checkpoint).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Packed dataset root with `train/` and `val/` splits.
    pub data: PathBuf,
    /// Model name (see [`zoo::MODELS`]).
    pub model: String,
    /// Images per step.
    pub batch_size: usize,
    /// Epochs to train.
    pub epochs: usize,
    /// Stop after this many steps in all (None: run all epochs).
    pub max_steps: Option<usize>,
    /// Learning rate (the paper: 0.1 for batch 256; the CLI scales it linearly by default).
    pub lr: f64,
    /// SGD momentum.
    pub momentum: f64,
    /// L2 weight decay.
    pub weight_decay: f64,
    /// How the learning rate falls.
    pub schedule: Schedule,
    /// Linear warm-up, epochs.
    pub warmup_epochs: f64,
    /// Seed for initialisation and data order.
    pub seed: u64,
    /// Loader threads.
    pub workers: usize,
    /// Training crop side (224 for ImageNet models, 32 for CIFAR ones).
    pub crop: u32,
    /// Shorter-side range for the scale augmentation (ImageNet models).
    pub scale: (u32, u32),
    /// Shorter side before the evaluation centre crop.
    pub eval_resize: u32,
    /// Zero the last BatchNorm scale of each residual branch.
    pub zero_init_last_bn: bool,
    /// Also checkpoint every N steps (0: only at epoch ends).
    pub checkpoint_every: usize,
    /// Ten-crop and multi-scale evaluation at the end (ImageNet models).
    pub final_eval: bool,
    /// Output folder.
    pub out: PathBuf,
    /// Where the model trains.
    pub device: DeviceKind,
    /// Which trainer computes the steps.
    #[serde(default = "EngineKind::before_the_engine")]
    pub engine: EngineKind,
    /// Arithmetic of convolutions and the classifier (runs saved before
    /// it existed were fp32).
    #[serde(default)]
    pub precision: Precision,
    /// Checkpoints kept: `checkpoints/last` and the K-1 before it
    /// (`checkpoints/step-NNNNNNNN`), so a damaged newest one leaves older ones.
    #[serde(default = "default_keep_checkpoints")]
    pub keep_checkpoints: usize,
}

/// `--keep-checkpoints`' default.
pub const DEFAULT_KEEP_CHECKPOINTS: usize = 2;

fn default_keep_checkpoints() -> usize {
    DEFAULT_KEEP_CHECKPOINTS
}

impl TrainConfig {
    /// The paper's recipe for `model` on `data`: batch 256, lr 0.1, plateau
    /// schedule, 224 crops from S in [256, 480] (CIFAR models: 32x32, batch
    /// 128, lr 0.1).
    pub fn paper(data: impl Into<PathBuf>, model: &str) -> Self {
        let cifar = zoo::family(model) == Some(Family::Cifar);
        TrainConfig {
            data: data.into(),
            model: model.to_string(),
            batch_size: if cifar { 128 } else { 256 },
            epochs: 90,
            max_steps: None,
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 1e-4,
            schedule: Schedule::default(),
            warmup_epochs: 0.0,
            seed: 0,
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            crop: if cifar { 32 } else { 224 },
            scale: (256, 480),
            eval_resize: if cifar { 32 } else { 256 },
            zero_init_last_bn: false,
            checkpoint_every: 0,
            final_eval: true,
            out: PathBuf::from("runs/train"),
            device: DeviceKind::Cpu,
            engine: EngineKind::Engine,
            precision: Precision::Fp32,
            keep_checkpoints: DEFAULT_KEEP_CHECKPOINTS,
        }
    }

    /// Checks the settings that would train to nothing or to garbage
    /// without an error (a batch of 0 gives lr 0, a negative lr diverges).
    pub fn validate(&self) -> Result<(), TrainError> {
        let bad = |setting: &'static str, value: String| {
            Err(TrainError::Setting {
                setting,
                value,
                expected: match setting {
                    "momentum" => "in [0, 1)",
                    "weight decay" | "warm-up" => "at least 0",
                    "lr" => "above 0",
                    _ => "at least 1",
                },
            })
        };
        if self.batch_size == 0 {
            return bad("batch size", "0".into());
        }
        if self.epochs == 0 {
            return bad("epochs", "0".into());
        }
        if self.workers == 0 {
            return bad("workers", "0".into());
        }
        if self.crop == 0 {
            return bad("crop", "0".into());
        }
        if self.max_steps == Some(0) {
            return bad("max steps", "0".into());
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad("lr", self.lr.to_string());
        }
        if !(self.momentum.is_finite() && (0.0..1.0).contains(&self.momentum)) {
            return bad("momentum", self.momentum.to_string());
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad("weight decay", self.weight_decay.to_string());
        }
        if !(self.warmup_epochs.is_finite() && self.warmup_epochs >= 0.0) {
            return bad("warm-up", self.warmup_epochs.to_string());
        }
        if self.scale.0 == 0 || self.scale.0 > self.scale.1 {
            return Err(TrainError::Setting {
                setting: "scale range",
                value: format!("{},{}", self.scale.0, self.scale.1),
                expected: "MIN,MAX with 1 <= MIN <= MAX",
            });
        }
        // BatchNorm in training needs two values per channel; the last
        // stage has the fewest (PyTorch refuses the same batch).
        let last_side = match crate::model::zoo::family(&self.model) {
            Some(crate::model::zoo::Family::Cifar) => last_side(self.crop, 2),
            _ => last_side(self.crop, 5),
        };
        if self.batch_size * last_side * last_side < 2 {
            return Err(TrainError::Setting {
                setting: "batch size",
                value: format!(
                    "{} (the last stage is {last_side}x{last_side} at crop {})",
                    self.batch_size, self.crop
                ),
                expected: "at least 2 values per channel for BatchNorm: a larger batch or crop",
            });
        }
        if self.precision == Precision::Bf16 && self.engine == EngineKind::Dfdx {
            return Err(TrainError::Setting {
                setting: "precision",
                value: "bf16 with --engine dfdx".into(),
                expected: "fp32 with --engine dfdx (bf16 runs on the engine)",
            });
        }
        if self.device == DeviceKind::Cuda {
            let built = match self.engine {
                EngineKind::Engine => cfg!(feature = "cuda"),
                EngineKind::Dfdx => cfg!(feature = "dfdx-cuda"),
            };
            if !built {
                return Err(TrainError::Setting {
                    setting: "device",
                    value: format!("cuda with --engine {}", self.engine.name()),
                    expected: match self.engine {
                        EngineKind::Engine => {
                            "cpu in this build (build with --features cuda for the engine on a GPU)"
                        }
                        EngineKind::Dfdx => {
                            "cpu in this build (build with --features dfdx-cuda for dfdx on a GPU)"
                        }
                    },
                });
            }
        }
        Ok(())
    }
}

/// The side of the last stage's output for input side `crop` after
/// `halvings` stride-2 steps (each rounds up, as a padded conv or pool does).
fn last_side(crop: u32, halvings: u32) -> usize {
    (0..halvings).fold(crop as usize, |s, _| s.div_ceil(2))
}

/// What a user chose for a new run; everything left `None` follows the
/// paper's recipe for the model ([`TrainConfig::paper`]) and the rules
/// below, or the bundled sample's job when `sample` is set.
#[derive(Debug, Clone, Default)]
pub struct Choices {
    /// Packed data root.
    pub data: PathBuf,
    /// Whether `data` is the bundled sample: then the defaults are its small
    /// job (ResNet-18, 64x64 crops, batch 16, 30 epochs, lr 0.05 falling at
    /// epochs 20 and 27).
    pub sample: bool,
    /// Model name [default: resnet18].
    pub model: Option<String>,
    /// Images per step [default: 256; CIFAR models 128].
    pub batch_size: Option<usize>,
    /// Epochs [default: 90].
    pub epochs: Option<usize>,
    /// Stop after this many steps in all.
    pub max_steps: Option<usize>,
    /// Learning rate [default: 0.1 x batch / 256; CIFAR models 0.1].
    pub lr: Option<f64>,
    /// SGD momentum [default: 0.9].
    pub momentum: Option<f64>,
    /// Weight decay [default: 1e-4].
    pub weight_decay: Option<f64>,
    /// The rule [default: plateau; step when milestones are given].
    pub schedule: Option<ScheduleKind>,
    /// Plateau: epochs without improvement before the lr falls [default: 5].
    pub patience: Option<usize>,
    /// Plateau: smallest improvement that counts [default: 1e-3].
    pub threshold: Option<f64>,
    /// Step: epochs at which the lr falls; values below 1 are fractions of the run.
    pub milestones: Option<Vec<f64>>,
    /// Linear warm-up, epochs [default: 0].
    pub warmup_epochs: Option<f64>,
    /// Seed [default: 0].
    pub seed: Option<u64>,
    /// Loader threads [default: all cores].
    pub workers: Option<usize>,
    /// Training crop [default: 224; CIFAR models 32].
    pub crop: Option<u32>,
    /// Scale augmentation range [default: 256..480 scaled to the crop].
    pub scale: Option<(u32, u32)>,
    /// Zero-init the last BatchNorm of each residual branch.
    pub zero_init_last_bn: bool,
    /// Also checkpoint every N steps (0: at epoch ends only).
    pub checkpoint_every: usize,
    /// Skip the final ten-crop and multi-scale evaluation.
    pub no_final_eval: bool,
    /// Output folder [default: runs/<model>; the sample: target/sample-run].
    pub out: Option<PathBuf>,
    /// Device [default: cpu].
    pub device: DeviceKind,
    /// Trainer [default: the engine].
    pub engine: Option<EngineKind>,
    /// Precision [default: fp32].
    pub precision: Option<Precision>,
    /// Checkpoints kept, at least 1 [default: 2].
    pub keep_checkpoints: Option<usize>,
}

impl Choices {
    /// The run these choices describe, checked ([`TrainConfig::validate`]).
    pub fn config(&self) -> Result<TrainConfig, TrainError> {
        let model = self.model.clone().unwrap_or_else(|| "resnet18".into());
        let Some(family) = zoo::family(&model) else {
            return Err(ZooError::UnknownModel { name: model }.into());
        };
        let cifar = family == Family::Cifar;
        let mut c = TrainConfig::paper(self.data.clone(), &model);
        let mut sample_schedule = None;
        if self.sample {
            c.batch_size = 16;
            c.epochs = 30;
            c.crop = 64;
            c.lr = 0.05;
            sample_schedule = Some(Schedule::Step {
                milestones: vec![20.0, 27.0],
                factor: 0.1,
            });
            c.out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/sample-run");
        } else {
            c.out = PathBuf::from("runs").join(&model);
        }
        c.batch_size = self.batch_size.unwrap_or(c.batch_size);
        c.epochs = self.epochs.unwrap_or(c.epochs);
        c.crop = self.crop.unwrap_or(c.crop);
        // The paper's lr 0.1 is for batch 256 (ImageNet), scaled linearly
        // (Goyal et al. 2017); the CIFAR recipe uses 0.1 at batch 128.
        c.lr = match self.lr {
            Some(lr) => lr,
            None if self.sample => c.lr,
            None if cifar => 0.1,
            None => 0.1 * c.batch_size as f64 / 256.0,
        };
        // S in [256, 480] and the 256 resize are for 224 crops: scaled with it.
        c.scale = self
            .scale
            .unwrap_or(((256 * c.crop).div_ceil(224), (480 * c.crop).div_ceil(224)));
        c.eval_resize = if cifar {
            c.crop
        } else {
            (256 * c.crop).div_ceil(224)
        };
        c.max_steps = self.max_steps;
        c.momentum = self.momentum.unwrap_or(c.momentum);
        c.weight_decay = self.weight_decay.unwrap_or(c.weight_decay);
        let kind = self
            .schedule
            .or(self.milestones.as_ref().map(|_| ScheduleKind::Step));
        c.schedule = match (kind, sample_schedule) {
            (None, Some(sample)) => sample,
            (None | Some(ScheduleKind::Plateau), _) => Schedule::Plateau {
                patience: self.patience.unwrap_or(5),
                threshold: self.threshold.unwrap_or(1e-3),
                factor: 0.1,
            },
            (Some(ScheduleKind::Step), _) => {
                let m = self.milestones.as_ref().ok_or(TrainError::Setting {
                    setting: "schedule",
                    value: "step".into(),
                    expected: "milestones with it (--milestones)",
                })?;
                let epochs = c.epochs as f64;
                Schedule::Step {
                    milestones: m
                        .iter()
                        .map(|&v| if v < 1.0 { v * epochs } else { v })
                        .collect(),
                    factor: 0.1,
                }
            }
        };
        c.warmup_epochs = self.warmup_epochs.unwrap_or(0.0);
        c.seed = self.seed.unwrap_or(0);
        c.workers = self.workers.unwrap_or(c.workers);
        c.zero_init_last_bn = self.zero_init_last_bn;
        c.checkpoint_every = self.checkpoint_every;
        c.keep_checkpoints = self.keep_checkpoints.unwrap_or(DEFAULT_KEEP_CHECKPOINTS);
        c.final_eval = !self.no_final_eval;
        if let Some(o) = &self.out {
            c.out = o.clone();
        }
        c.device = self.device;
        c.engine = self.engine.unwrap_or(EngineKind::Engine);
        c.precision = self.precision.unwrap_or_default();
        c.validate()?;
        Ok(c)
    }
}
