//! The planned training engine: a whole ResNet step as one static plan.
//!
//! dfdx defines the networks (type-level shapes, the parameter tree,
//! checkpoints) and is the reference every result here is tested against;
//! it runs each op as its own generic kernel with a fresh output, and keeps
//! its storage crate-private, so custom ops pay copies. The engine instead:
//!
//! - **Lowers** the model once per (batch, input size): each block type
//!   appends its ops to a [`plan::PlanBuilder`] ([`crate::model::lower`]):
//!   convolution, BatchNorm fused with the residual add and the ReLU that
//!   follow it, option A's shortcut, max pool (winners kept for backward),
//!   global average pool, fully connected; softmax cross-entropy on top.
//! - **Plans memory** once: every activation, gradient and scratch buffer
//!   gets a place in one arena, shared between buffers whose lives on the
//!   step's timeline do not overlap ([`plan::Plan::arena_bytes`] against
//!   [`plan::Plan::unshared_bytes`]). Parameters, their gradients, the
//!   momentum and the running statistics are four flat arrays.
//! - **Runs** the ops forward, then each op's own backward in reverse order
//!   (no tape), then SGD as one pass over the flat arrays, on a
//!   [`backend::Backend`]: [`cpu::Cpu`] (a thread pool of its own; results
//!   do not depend on the number of threads) or, with feature `cuda`,
//!   `cuda::Cuda` (cuDNN, cuBLAS and kernels of its own; NCCL between
//!   ranks with feature `mpi`). [`Engine`] is what is the same on both:
//!   the dfdx paths and layouts, the order of a step, the data-parallel
//!   agreement between ranks ([`data_parallel`]).
//!
//! On the CPU the layout is NHWC, and each convolution picks its way by
//! its weight's size ([`plan::ConvGeom::grouped`]): a narrow one (the
//! CIFAR nets, the first stages of the ImageNet ones) runs by fixed groups
//! of images; where its output channels come in 16s it is computed
//! directly, forward and both gradients, by the [`direct`] kernels
//! (AVX-512 or AVX2 tiles of pixels x channels held in registers, no
//! columns), otherwise each group lowers cache-sized tiles of its images
//! into its own columns and multiplies them there, so the columns never
//! travel through memory; a wide one is one matrix product over the whole
//! batch, which [`sgemm`] (the engine's own packed product, AVX-512 or
//! AVX2 microkernels, packing into per-thread buffers made once) splits
//! among threads by rows or columns, never the inner dimension. Every
//! reduction has an order fixed by the plan, never by the threads: the weight gradient of a grouped conv is
//! summed per group, then over the groups in order; BatchNorm sums 32 rows
//! in f32, then in f64 by fixed chunks. That is what keeps exact resume
//! bit-exact on one machine, whatever its thread count; the AVX-512 and
//! AVX2 kernels (products and direct convolutions) give the same bits, so
//! two x86 machines with FMA agree too (tested per kernel).
//!
//! Parameters and momentum live in the backend; [`Engine::read_from`],
//! [`Engine::write_to`], [`Engine::momentum`] and [`Engine::set_momentum`]
//! copy them from and to the dfdx model and the trainer's SGD buffers (for
//! checkpoints, the multi-scale test, and tests), by dfdx path. The
//! trainer (`train-resnet`, [`crate::train::fit`]) uses the engine by
//! default; [`Engine::eval_rows`] evaluates any number of images on the
//! training plan.

pub mod backend;
pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod data_parallel;
pub mod plan;
pub mod precision;

use crate::model::lower::Lower;
use crate::model::state::{assign_tensors, named_tensors};
pub use backend::{Backend, Flat, Reduction};
pub use data_parallel::{Buckets, StepStats};
use dfdx::prelude::*;
use plan::{Layout, Plan, PlanBuilder, TensorSpec};
pub use precision::Precision;

/// Why the engine cannot run as asked.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum EngineError {
    /// The model has no tensor at a path the plan needs.
    #[error("the model has no tensor {0:?}")]
    MissingTensor(String),
    /// A tensor's size differs from the plan's.
    #[error("{path}: {got} values, the plan needs {expected}")]
    TensorSize {
        /// dfdx path.
        path: String,
        /// Values in the plan.
        expected: usize,
        /// Values given.
        got: usize,
    },
    /// The batch is not the plan's.
    #[error(
        "input of {got} values; the plan is for {batch} images of {h}x{w}x3 ({expected} values)"
    )]
    Input {
        /// Values expected.
        expected: usize,
        /// Values given.
        got: usize,
        /// Batch.
        batch: usize,
        /// Height.
        h: usize,
        /// Width.
        w: usize,
    },
    /// Labels: wrong count or out of range.
    #[error("labels: {0}")]
    Labels(String),
    /// BatchNorm in training needs more than one value per channel.
    #[error(
        "batch {batch} at {h}x{w} leaves a BatchNorm with {rows} value(s) per channel; training needs at least 2"
    )]
    BatchTooSmall {
        /// Batch.
        batch: usize,
        /// Height.
        h: usize,
        /// Width.
        w: usize,
        /// Values per channel at the smallest BatchNorm.
        rows: usize,
    },
    /// A layer wider than the backend supports.
    #[error("a BatchNorm of {0} channels (at most {max})", max = cpu::MAX_CHANNELS)]
    TooWide(usize),
    /// Momentum given for some parameters but not this one.
    #[error("no momentum for {0:?} (a checkpoint's momentum must cover every parameter or none)")]
    MissingMomentum(String),
    /// The backend failed (a device call, a collective of its own).
    #[error("{0}")]
    Backend(String),
    /// The device asked for is not in this build.
    #[error("this build has no {0} backend (rebuild with --features {0})")]
    NotBuilt(&'static str),
    /// The thread pool could not start.
    #[error("thread pool: {0}")]
    Threads(String),
    /// The plan's memory is more than the machine has free.
    #[error(
        "the plan for {batch} images of {h}x{w} needs {needed} bytes ({:.2} GiB) and {available} bytes ({:.2} GiB) are available: use a smaller --batch-size (or more ranks)",
        *needed as f64 / (1u64 << 30) as f64,
        *available as f64 / (1u64 << 30) as f64
    )]
    OutOfMemory {
        /// Batch of the plan.
        batch: usize,
        /// Height.
        h: usize,
        /// Width.
        w: usize,
        /// Bytes the engine would allocate.
        needed: u64,
        /// Bytes available (MemAvailable, or the cgroup's limit if lower).
        available: u64,
    },
}

/// SGD settings (the paper's: momentum 0.9, weight decay 1e-4).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SgdSettings {
    /// Momentum.
    pub momentum: f32,
    /// L2 weight decay, on every parameter.
    pub weight_decay: f32,
}

impl Default for SgdSettings {
    fn default() -> Self {
        SgdSettings {
            momentum: 0.9,
            weight_decay: 1e-4,
        }
    }
}

/// Where an engine runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// This machine's cores: `threads` of them (0: all).
    Cpu {
        /// Threads (0: one per core).
        threads: usize,
    },
    /// NVIDIA GPU `ordinal`, fp32 (feature `cuda`).
    Cuda {
        /// The GPU's index.
        ordinal: usize,
    },
}

/// A model's training step, planned for one batch and input size, run by
/// a [`Backend`].
pub struct Engine {
    backend: Box<dyn Backend>,
    buckets: Buckets,
    /// SGD settings.
    pub sgd: SgdSettings,
    has_velocity: bool,
    /// Testing aid: the next loss is NaN.
    poison: bool,
    /// The running statistics were averaged over the ranks and no training
    /// forward has changed them since.
    statistics_averaged: bool,
    /// The backend has joined the ranks of a data-parallel run.
    joined: bool,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("backend", &self.backend.describe())
            .field("ops", &self.plan().ops.len())
            .field("arena_bytes", &self.plan().arena_bytes())
            .finish()
    }
}

impl Engine {
    /// Plans `model` for `batch` images of `h x w` on the CPU and copies
    /// its tensors in; runs on `threads` threads (0: all cores).
    pub fn new<M, D>(
        model: &M,
        batch: usize,
        (h, w): (usize, usize),
        threads: usize,
    ) -> Result<Self, EngineError>
    where
        M: Lower + TensorCollection<f32, D>,
        D: Device<f32>,
    {
        Self::on(model, batch, (h, w), Target::Cpu { threads })
    }

    /// Plans `model` for `batch` images of `h x w` on `target` and copies
    /// its tensors in (fp32).
    pub fn on<M, D>(
        model: &M,
        batch: usize,
        (h, w): (usize, usize),
        target: Target,
    ) -> Result<Self, EngineError>
    where
        M: Lower + TensorCollection<f32, D>,
        D: Device<f32>,
    {
        Self::build(model, batch, (h, w), target, Precision::Fp32)
    }

    /// [`Engine::on`] computing convolutions and the classifier in
    /// `precision` ([`precision`]).
    pub fn build<M, D>(
        model: &M,
        batch: usize,
        (h, w): (usize, usize),
        target: Target,
        precision: Precision,
    ) -> Result<Self, EngineError>
    where
        M: Lower + TensorCollection<f32, D>,
        D: Device<f32>,
    {
        let plan = Self::lower(model, batch, (h, w))?;
        let backend: Box<dyn Backend> = match target {
            Target::Cpu { threads } => {
                Box::new(cpu::Cpu::with_precision(plan, threads, precision)?)
            }
            #[cfg(feature = "cuda")]
            Target::Cuda { ordinal } => {
                let precision = match precision {
                    Precision::Fp32 => cuda::Precision::Fp32,
                    Precision::Bf16 => cuda::Precision::Bf16,
                };
                Box::new(cuda::Cuda::new(plan, ordinal, precision)?)
            }
            #[cfg(not(feature = "cuda"))]
            Target::Cuda { .. } => return Err(EngineError::NotBuilt("cuda")),
        };
        Self::with_backend(model, backend)
    }

    /// `model`'s plan for `batch` images of `h x w`, checked: every
    /// BatchNorm must see at least two values per channel in training.
    pub fn lower<M: Lower>(
        model: &M,
        batch: usize,
        (h, w): (usize, usize),
    ) -> Result<Plan, EngineError> {
        let (mut p, x) = PlanBuilder::new(batch, (h, w));
        let logits = model.lower(&mut p, "", x);
        let plan = p.finish(logits, logits.c);
        for op in &plan.ops {
            if let plan::Op::BatchNorm { rows, .. } = op
                && *rows < 2
            {
                return Err(EngineError::BatchTooSmall {
                    batch,
                    h,
                    w,
                    rows: *rows,
                });
            }
        }
        Ok(plan)
    }

    /// An engine on `backend` (made from [`Engine::lower`]'s plan of
    /// `model`), with `model`'s tensors copied in.
    pub fn with_backend<M, D>(model: &M, backend: Box<dyn Backend>) -> Result<Self, EngineError>
    where
        M: TensorCollection<f32, D>,
        D: Device<f32>,
    {
        let buckets = Buckets::new(
            backend.plan(),
            data_parallel::FIRST_BUCKET_BYTES,
            data_parallel::BUCKET_BYTES,
        );
        let mut e = Engine {
            backend,
            buckets,
            sgd: SgdSettings::default(),
            has_velocity: false,
            poison: false,
            statistics_averaged: false,
            joined: false,
        };
        e.read_from(model)?;
        Ok(e)
    }

    /// The backend in words.
    pub fn describe(&self) -> String {
        self.backend.describe()
    }

    /// Starts (or restarts) timing each op kind, forward and backward.
    pub fn start_profile(&mut self) {
        self.backend.start_profile();
    }

    /// Seconds per (op kind, direction) since [`Engine::start_profile`],
    /// largest first (empty where the backend does not time its ops).
    pub fn profile(&self) -> Vec<(String, f64)> {
        self.backend.profile()
    }

    /// The plan.
    pub fn plan(&self) -> &Plan {
        self.backend.plan()
    }

    /// The arithmetic of convolutions and the classifier.
    pub fn precision(&self) -> Precision {
        self.backend.precision()
    }

    /// Host threads the backend computes on (0 on a GPU).
    pub fn threads(&self) -> usize {
        self.backend.threads()
    }

    /// A copy of the flat array `which`.
    pub fn flat(&self, which: Flat) -> Result<Vec<f32>, EngineError> {
        let plan = self.plan();
        let len = match which {
            Flat::States => plan.states_len,
            _ => plan.params_len,
        };
        let mut v = vec![0.0; len];
        self.backend.read(which, &mut v)?;
        Ok(v)
    }

    /// Overwrites the flat array `which` (laid out as [`Engine::flat`]'s).
    pub fn set_flat(&mut self, which: Flat, values: &[f32]) -> Result<(), EngineError> {
        self.backend.write(which, values)
    }

    /// Copies every parameter and running statistic from `model`.
    pub fn read_from<M: TensorCollection<f32, D>, D: Device<f32>>(
        &mut self,
        model: &M,
    ) -> Result<(), EngineError> {
        let tensors: std::collections::HashMap<String, Vec<f32>> = named_tensors(model)
            .into_iter()
            .map(|t| (t.path, t.data))
            .collect();
        let load = |specs: &[TensorSpec], len: usize| -> Result<Vec<f32>, EngineError> {
            let mut flat = vec![0.0; len];
            for s in specs {
                let data = tensors
                    .get(&s.path)
                    .ok_or_else(|| EngineError::MissingTensor(s.path.clone()))?;
                if data.len() != s.len {
                    return Err(EngineError::TensorSize {
                        path: s.path.clone(),
                        expected: s.len,
                        got: data.len(),
                    });
                }
                to_engine(s.layout, data, &mut flat[s.offset..s.offset + s.len]);
            }
            Ok(flat)
        };
        let plan = self.plan();
        let params = load(&plan.params, plan.params_len)?;
        let states = load(&plan.states, plan.states_len)?;
        self.backend.write(Flat::Params, &params)?;
        self.backend.write(Flat::States, &states)
    }

    /// Copies every parameter and running statistic into `model`.
    pub fn write_to<M: TensorCollection<f32, D>, D: Device<f32>>(
        &self,
        model: &mut M,
    ) -> Result<(), EngineError> {
        let (params, states) = (self.flat(Flat::Params)?, self.flat(Flat::States)?);
        let plan = self.plan();
        let mut values = std::collections::HashMap::new();
        for (specs, flat) in [(&plan.params, &params), (&plan.states, &states)] {
            for s in specs.iter() {
                values.insert(
                    s.path.as_str(),
                    from_engine(s.layout, &flat[s.offset..s.offset + s.len]),
                );
            }
        }
        let mut missing = None;
        let mut source = |path: &str, _: &[usize]| {
            let v = values.get(path).cloned();
            if v.is_none() && missing.is_none() {
                missing = Some(path.to_string());
            }
            Ok(v)
        };
        assign_tensors(model, &mut source).expect("the engine's values have the model's sizes");
        match missing {
            Some(path) => Err(EngineError::MissingTensor(path)),
            None => Ok(()),
        }
    }

    /// Every parameter's gradient from the last [`Engine::forward_backward`],
    /// by dfdx path and in dfdx's layout.
    pub fn gradients(&self) -> Result<Vec<(String, Vec<f32>)>, EngineError> {
        Ok(self.per_param(&self.flat(Flat::Grads)?))
    }

    /// Each parameter's slice of `flat` (laid out as the parameters), by
    /// dfdx path and in dfdx's layout.
    fn per_param<C: FromIterator<(String, Vec<f32>)>>(&self, flat: &[f32]) -> C {
        self.plan()
            .params
            .iter()
            .map(|s| {
                (
                    s.path.clone(),
                    from_engine(s.layout, &flat[s.offset..s.offset + s.len]),
                )
            })
            .collect()
    }

    /// Every parameter by dfdx path, in dfdx's layout.
    pub fn parameters(&self) -> Result<Vec<(String, Vec<f32>)>, EngineError> {
        Ok(self.per_param(&self.flat(Flat::Params)?))
    }

    /// Every running statistic by dfdx path.
    pub fn statistics(&self) -> Result<Vec<(String, Vec<f32>)>, EngineError> {
        let states = self.flat(Flat::States)?;
        Ok(self
            .plan()
            .states
            .iter()
            .map(|s| (s.path.clone(), states[s.offset..s.offset + s.len].to_vec()))
            .collect())
    }

    /// Multiplies every parameter by `1 + rel` or `1 - rel` (signs from a
    /// fixed sequence seeded by `seed`): with `rel` one rounding
    /// (`f32::EPSILON / 2`), what a run from such weights ends at measures
    /// the network's own float32 sensitivity, the yardstick for results
    /// computed in another order (another backend, another device).
    pub fn nudge_parameters(&mut self, rel: f32, seed: u32) -> Result<(), EngineError> {
        let mut params = self.flat(Flat::Params)?;
        let mut k = seed;
        for v in params.iter_mut() {
            k = k.wrapping_mul(747796405).wrapping_add(2891336453);
            *v *= if k >> 31 == 1 { 1.0 + rel } else { 1.0 - rel };
        }
        self.backend.write(Flat::Params, &params)
    }

    /// The SGD momentum of every parameter by dfdx path, in dfdx's layout
    /// (the trainer's [`crate::train::Sgd::buffers`]); empty before the first step.
    pub fn momentum(&self) -> Result<std::collections::BTreeMap<String, Vec<f32>>, EngineError> {
        if !self.has_velocity {
            return Ok(Default::default());
        }
        Ok(self.per_param(&self.flat(Flat::Velocity)?))
    }

    /// Restores momentum saved by [`Engine::momentum`] (or by the dfdx
    /// trainer's SGD): none (the next step is a first step) or one buffer
    /// for every parameter, each of its size.
    pub fn set_momentum(
        &mut self,
        buffers: &std::collections::BTreeMap<String, Vec<f32>>,
    ) -> Result<(), EngineError> {
        let plan = self.plan();
        let mut velocity = vec![0.0; plan.params_len];
        if buffers.is_empty() {
            self.backend.write(Flat::Velocity, &velocity)?;
            self.has_velocity = false;
            return Ok(());
        }
        for s in &plan.params {
            let v = buffers
                .get(&s.path)
                .ok_or_else(|| EngineError::MissingMomentum(s.path.clone()))?;
            if v.len() != s.len {
                return Err(EngineError::TensorSize {
                    path: s.path.clone(),
                    expected: s.len,
                    got: v.len(),
                });
            }
        }
        if let Some(k) = buffers
            .keys()
            .find(|k| !plan.params.iter().any(|s| &s.path == *k))
        {
            return Err(EngineError::MissingTensor(k.clone()));
        }
        for s in &plan.params {
            to_engine(
                s.layout,
                &buffers[&s.path],
                &mut velocity[s.offset..s.offset + s.len],
            );
        }
        self.backend.write(Flat::Velocity, &velocity)?;
        self.has_velocity = true;
        Ok(())
    }

    /// The logits of the last forward pass, `batch x classes`.
    pub fn logits(&self) -> Result<Vec<f32>, EngineError> {
        self.backend.logits()
    }

    /// The current contents of the buffer named `name` (see [`plan::Buf::name`]),
    /// valid only while the plan has not reused its memory; `None` where
    /// there is no such buffer or the backend cannot show it.
    pub fn buffer(&self, name: &str) -> Option<Vec<f32>> {
        self.backend.buffer(name)
    }

    /// Forward in training mode (running statistics updated) and the loss
    /// (mean softmax cross-entropy), with the poisoning of the testing aid.
    fn forward_loss(&mut self, images: &[f32], labels: &[u32]) -> Result<f32, EngineError> {
        check_batch(self.plan(), images, Some(labels))?;
        self.statistics_averaged = false;
        self.backend.forward(images, true)?;
        let loss = self.backend.loss(labels)?;
        Ok(if std::mem::take(&mut self.poison) {
            f32::NAN
        } else {
            loss
        })
    }

    /// Forward in training mode (running statistics updated), the loss
    /// (mean softmax cross-entropy) and, where it is finite, every gradient.
    pub fn forward_backward(&mut self, images: &[f32], labels: &[u32]) -> Result<f32, EngineError> {
        let loss = self.forward_loss(images, labels)?;
        if loss.is_finite() {
            self.backend.backward(None)?;
        }
        Ok(loss)
    }

    /// Testing aid: the next step's loss is NaN (what a diverging run does,
    /// on one rank of several if wanted).
    #[doc(hidden)]
    pub fn poison_next_loss(&mut self) {
        self.poison = true;
    }

    /// One SGD step at learning rate `lr`: [`Engine::forward_backward`],
    /// then the update (skipped when the loss is not finite, as the
    /// trainer does). Returns the loss.
    pub fn train_step(
        &mut self,
        images: &[f32],
        labels: &[u32],
        lr: f32,
    ) -> Result<f32, EngineError> {
        if self.poison {
            return self.forward_loss(images, labels);
        }
        check_batch(self.plan(), images, Some(labels))?;
        self.statistics_averaged = false;
        let first = !self.has_velocity;
        let loss = self
            .backend
            .train_step(images, labels, lr, self.sgd, first)?;
        if loss.is_finite() {
            self.has_velocity = true;
        }
        Ok(loss)
    }

    /// Evaluation forward (running statistics): the logits, `batch x classes`.
    pub fn eval(&mut self, images: &[f32]) -> Result<Vec<f32>, EngineError> {
        check_batch(self.plan(), images, None)?;
        self.backend.forward(images, false)?;
        self.backend.logits()
    }

    /// Evaluation logits of `rows` images of the plan's size, any number of
    /// them: run in chunks of the plan's batch, the last one padded with
    /// zeros (in evaluation each image's logits depend on that image alone).
    /// Returns `rows x classes`.
    pub fn eval_rows(&mut self, images: &[f32], rows: usize) -> Result<Vec<f32>, EngineError> {
        let (h, w) = self.plan().input;
        let per = h * w * 3;
        if images.len() != rows * per {
            return Err(EngineError::Input {
                expected: rows * per,
                got: images.len(),
                batch: rows,
                h,
                w,
            });
        }
        let (b, classes) = (self.plan().batch, self.plan().classes);
        let mut out = Vec::with_capacity(rows * classes);
        let mut padded = Vec::new();
        for chunk in images.chunks(b * per) {
            let n = chunk.len() / per;
            let x = if n == b {
                chunk
            } else {
                padded.clear();
                padded.extend_from_slice(chunk);
                padded.resize(b * per, 0.0);
                &padded[..]
            };
            out.extend_from_slice(&self.eval(x)?[..n * classes]);
        }
        Ok(out)
    }
}

/// Whether `images` (and `labels`) are a batch of `plan`'s: the count and
/// size of the images, one label per image, each below the class count.
/// Every backend checks its input with this.
pub(crate) fn check_batch(
    plan: &Plan,
    images: &[f32],
    labels: Option<&[u32]>,
) -> Result<(), EngineError> {
    let (h, w) = plan.input;
    let expected = plan.batch * h * w * 3;
    if images.len() != expected {
        return Err(EngineError::Input {
            expected,
            got: images.len(),
            batch: plan.batch,
            h,
            w,
        });
    }
    match labels {
        Some(labels) => check_labels(plan, labels),
        None => Ok(()),
    }
}

/// One label per image of `plan`'s batch, each below its class count.
pub(crate) fn check_labels(plan: &Plan, labels: &[u32]) -> Result<(), EngineError> {
    if labels.len() != plan.batch {
        return Err(EngineError::Labels(format!(
            "{} labels for a batch of {}",
            labels.len(),
            plan.batch
        )));
    }
    if let Some(&l) = labels.iter().find(|&&l| l as usize >= plan.classes) {
        return Err(EngineError::Labels(format!(
            "label {l} of {} classes",
            plan.classes
        )));
    }
    Ok(())
}

/// Where element `i` of a dfdx tensor lies in the engine's layout.
fn engine_index(layout: Layout, i: usize) -> usize {
    match layout {
        Layout::Same => i,
        Layout::ConvKkcO { o, c, k } => {
            // dfdx [o][c][t] -> engine [t][c][o], t = ky * k + kx.
            let (oc, rest) = (i / (c * k * k), i % (c * k * k));
            let (ic, t) = (rest / (k * k), rest % (k * k));
            (t * c + ic) * o + oc
        }
        Layout::Transposed { rows, cols } => (i % cols) * rows + i / cols,
    }
}

/// dfdx layout → the engine's.
fn to_engine(layout: Layout, src: &[f32], dst: &mut [f32]) {
    for (i, &v) in src.iter().enumerate() {
        dst[engine_index(layout, i)] = v;
    }
}

/// The engine's layout → dfdx's.
fn from_engine(layout: Layout, src: &[f32]) -> Vec<f32> {
    (0..src.len())
        .map(|i| src[engine_index(layout, i)])
        .collect()
}
