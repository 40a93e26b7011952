//! The trainer: the loader streams augmented batches while the model trains
//! with the paper's recipe (SGD, momentum 0.9, weight decay 1e-4, lr 0.1 per
//! 256 images divided by 10 when the validation error plateaus), evaluates
//! every epoch, checkpoints, resumes exactly, logs JSON Lines and plots.
//!
//! ```text
//! run folder/
//!   log.jsonl           one line per step and per epoch, then the final evaluation
//!   curves.png          training error (thin) and validation error (bold), as the paper's figures
//!   checkpoints/last/   model.safetensors (torchvision names), optim.safetensors, state.json
//! ```
//!
//! - [`config`]: [`TrainConfig`], the recipe, and [`Choices`] (what a user set) → config.
//! - [`job`]: [`prepare`] a run (data, checkpoint, checks), the loaders.
//! - [`fit`]: the training loop [`run`] and one [`sgd_step`].
//! - [`eval`]: centre crop, ten-crop, multi-scale; checkpoint evaluation.
//! - [`compare`]: the paper's plain-vs-residual experiment over several depths.
//! - [`device`], [`checkpoint`], [`sgd`], [`schedule`], [`metrics`], [`runlog`] (the JSON Lines log and its plot).

pub mod checkpoint;
pub mod compare;
pub mod config;
pub mod device;
mod error;
pub mod eval;
pub mod fit;
pub mod job;
pub mod metrics;
mod recorder;
pub mod runlog;
pub mod schedule;
pub mod sgd;
pub mod stepper;

pub use config::{Choices, DeviceKind, EngineKind, ScheduleKind, TrainConfig};
pub use device::cpu_device;
#[cfg(feature = "dfdx-cuda")]
pub use device::{cuda_device, cuda_memory_used};
pub use error::TrainError;
pub use eval::{
    EvalReport, evaluate, evaluate_checkpoint, evaluate_job, evaluate_multiscale, paper_scales,
};
pub use fit::{TrainReport, run, run_on, train, train_cpu, train_on};
pub use job::{
    EvalJob, Job, Resume, Start, TrainState, checkpoint_config, eval_loader, open_split, prepare,
    prepare_eval, train_loader,
};
pub use stepper::{sgd_step, sgd_step_on_device};
