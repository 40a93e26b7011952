//! What the engine asks of the machine that runs its plan.
//!
//! A backend owns the plan's memory (the arena and the flat parameter,
//! gradient, momentum and statistic arrays, wherever they live) and runs
//! the plan's ops; everything that is the same on every machine (the dfdx
//! paths and layouts, checkpoints' tensors, the order of a step, the
//! agreement between ranks, the statistics' averaging) is the
//! [`super::Engine`]'s, written once. [`super::cpu::Cpu`] and (feature
//! `cuda`) `super::cuda::Cuda` implement it; neither uses the other.

use super::data_parallel::Buckets;
use super::plan::Plan;
use super::{EngineError, SgdSettings};
use crate::dist::Communicator;

/// One of the flat arrays every backend keeps, laid out as the plan's
/// [`Plan::params`] (or [`Plan::states`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flat {
    /// The parameters (master weights, f32).
    Params,
    /// Their gradients from the last backward.
    Grads,
    /// SGD's momentum.
    Velocity,
    /// BatchNorm's running statistics.
    States,
    /// The gradients summed over the ranks by the last data-parallel
    /// backward (empty before one).
    Summed,
}

/// How long a data-parallel backward's gradient sums took.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Reduction {
    /// Seconds from the first bucket's start to the last bucket's end.
    pub allreduce_s: f64,
    /// Seconds waited for the sums after backward (the part not hidden).
    pub wait_s: f64,
}

/// A machine that runs a [`Plan`]: forward, loss, backward (optionally
/// summing gradients over ranks as it goes), SGD, and copies of its flat
/// arrays in and out.
pub trait Backend: Send {
    /// The device in words (`"cpu (2 threads, fp32 Avx512 kernels)"`).
    fn describe(&self) -> String;

    /// The plan it runs.
    fn plan(&self) -> &Plan;

    /// Copies the flat array `which` into `dst` (its length exactly).
    fn read(&self, which: Flat, dst: &mut [f32]) -> Result<(), EngineError>;

    /// Replaces the flat array `which` with `src` (its length exactly).
    fn write(&mut self, which: Flat, src: &[f32]) -> Result<(), EngineError>;

    /// Forward over `images` (a batch of the plan's, NHWC): with `train`,
    /// batch statistics and the running statistics updated.
    fn forward(&mut self, images: &[f32], train: bool) -> Result<(), EngineError>;

    /// The mean softmax cross-entropy of the last forward's logits against
    /// `labels`, its gradient written where backward starts.
    fn loss(&mut self, labels: &[u32]) -> Result<f32, EngineError>;

    /// Every op's backward in reverse order: the gradients of the last
    /// [`Backend::loss`]. With `reduce` (a communicator of several ranks
    /// and the plan's buckets), each bucket's sum over the ranks starts as
    /// soon as backward has produced it, into [`Flat::Summed`]; returns
    /// when every sum is done.
    fn backward(
        &mut self,
        reduce: Option<(&mut dyn Communicator, &Buckets)>,
    ) -> Result<Reduction, EngineError>;

    /// SGD with momentum and weight decay over every parameter (PyTorch's
    /// formulation): gradient `g * scale` from [`Flat::Grads`] or, with
    /// `summed`, [`Flat::Summed`]; `first`: no momentum yet.
    fn sgd(
        &mut self,
        lr: f32,
        settings: SgdSettings,
        scale: f32,
        first: bool,
        summed: bool,
    ) -> Result<(), EngineError>;

    /// The logits of the last forward, `batch x classes`.
    fn logits(&self) -> Result<Vec<f32>, EngineError>;

    /// One single-process training step: forward, loss, and where the loss
    /// is finite backward and SGD; returns the loss. A backend may queue it
    /// as one unit (the CUDA one replays it as a graph).
    fn train_step(
        &mut self,
        images: &[f32],
        labels: &[u32],
        lr: f32,
        settings: SgdSettings,
        first: bool,
    ) -> Result<f32, EngineError> {
        self.forward(images, true)?;
        let loss = self.loss(labels)?;
        if loss.is_finite() {
            self.backward(None)?;
            self.sgd(lr, settings, 1.0, first, false)?;
        }
        Ok(loss)
    }

    /// Joins the ranks of `comm` for collectives of the backend's own (the
    /// CUDA backend's NCCL); the CPU sums through `comm` itself.
    fn join(&mut self, comm: &dyn Communicator) -> Result<(), EngineError> {
        let _ = comm;
        Ok(())
    }

    /// The current contents of the plan's buffer `name`, if the backend
    /// can show it (valid while the plan has not reused its memory).
    fn buffer(&self, name: &str) -> Option<Vec<f32>> {
        let _ = name;
        None
    }

    /// Starts (or restarts) timing each op kind, forward and backward.
    fn start_profile(&mut self) {}

    /// Seconds per (op kind, direction) since [`Backend::start_profile`],
    /// largest first; empty where the backend does not time its ops.
    fn profile(&self) -> Vec<(String, f64)> {
        Vec::new()
    }

    /// Host threads the backend computes on (0 for a device).
    fn threads(&self) -> usize {
        0
    }

    /// The arithmetic of its convolutions and classifier.
    fn precision(&self) -> super::Precision {
        super::Precision::Fp32
    }
}
