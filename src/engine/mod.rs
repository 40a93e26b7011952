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
//!   (no tape), then SGD as one pass over the flat arrays, on a thread pool
//!   of its own. The backend is [`cpu`]; results do not depend on the
//!   number of threads.
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
//! Parameters and momentum live in the engine; [`Engine::read_from`],
//! [`Engine::write_to`], [`Engine::momentum`] and [`Engine::set_momentum`]
//! copy them from and to the dfdx model and the trainer's SGD buffers (for
//! checkpoints, the multi-scale test, and tests), by dfdx path. The
//! trainer (`train-resnet`, [`crate::train::fit`]) uses the engine by
//! default; [`Engine::eval_rows`] evaluates any number of images on the
//! training plan.

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod data_parallel;
pub mod direct;
pub mod plan;
pub mod sgemm;

use crate::model::lower::Lower;
use crate::model::state::{assign_tensors, named_tensors};
pub use data_parallel::{Buckets, StepStats};
use dfdx::prelude::*;
use plan::{Layout, Plan, PlanBuilder, TensorSpec};
use std::sync::Arc;

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

/// A buffer's start, handed to rayon tasks that each write a disjoint part
/// of it.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: used only to hand disjoint parts of one buffer to rayon tasks.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}
impl SendPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// Floats starting at a 64-byte boundary: every buffer has the same
/// alignment in every run (vector loads never split a cache line by
/// chance, so timings do not depend on where the allocator put it).
struct Aligned {
    data: Vec<f32>,
    shift: usize,
    len: usize,
}

impl Aligned {
    fn zeros(len: usize) -> Self {
        let data = vec![0.0f32; len + 16];
        let shift = data.as_ptr().align_offset(64);
        Aligned { data, shift, len }
    }
}

impl std::ops::Deref for Aligned {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.data[self.shift..self.shift + self.len]
    }
}

impl std::ops::DerefMut for Aligned {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.data[self.shift..self.shift + self.len]
    }
}

/// A model's training step, planned for one batch and input size.
pub struct Engine {
    plan: Plan,
    arena: Aligned,
    params: Aligned,
    grads: Aligned,
    /// Gradients summed over ranks (empty with one rank).
    reduced: Aligned,
    buckets: Buckets,
    velocity: Aligned,
    has_velocity: bool,
    states: Vec<f32>,
    partial: Vec<f64>,
    pool: Arc<rayon::ThreadPool>,
    threads: usize,
    /// Seconds per (op kind, direction) since profiling was switched on.
    profile: Option<std::collections::BTreeMap<(&'static str, &'static str), f64>>,
    /// SGD settings.
    pub sgd: SgdSettings,
    /// Testing aid: the next loss is NaN.
    poison: bool,
    /// The running statistics were averaged over the ranks and no training
    /// forward has changed them since.
    statistics_averaged: bool,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("ops", &self.plan.ops.len())
            .field("arena_bytes", &self.plan.arena_bytes())
            .field("threads", &self.threads)
            .finish()
    }
}

impl Engine {
    /// Plans `model` for `batch` images of `h x w` and copies its tensors
    /// in; runs on `threads` threads (0: all cores).
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
        let (mut p, x) = PlanBuilder::new(batch, (h, w));
        let logits = model.lower(&mut p, "", x);
        let plan = p.finish(logits, logits.c);
        Self::from_plan(plan, threads).and_then(|mut e| e.read_from(model).map(|()| e))
    }

    fn from_plan(plan: Plan, threads: usize) -> Result<Self, EngineError> {
        for op in &plan.ops {
            if let plan::Op::BatchNorm { rows, c, .. } = op {
                if *c > cpu::MAX_CHANNELS {
                    return Err(EngineError::TooWide(*c));
                }
                if *rows < 2 {
                    let (h, w) = plan.input;
                    return Err(EngineError::BatchTooSmall {
                        batch: plan.batch,
                        h,
                        w,
                        rows: *rows,
                    });
                }
            }
        }
        let (h, w) = plan.input;
        let needed = Self::bytes_needed(&plan);
        if let Some(available) = crate::files::available_memory()
            && needed > available
        {
            return Err(EngineError::OutOfMemory {
                batch: plan.batch,
                h,
                w,
                needed,
                available,
            });
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("engine-{i}"))
            .build()
            .map_err(|e| EngineError::Threads(e.to_string()))?;
        let threads = pool.current_num_threads();
        // Each thread's packing buffers for the matrix product, made now:
        // which pool thread first runs a product is up to work stealing, so
        // made lazily they could appear at any step.
        pool.broadcast(|_| sgemm::reserve());
        Ok(Engine {
            arena: Aligned::zeros(plan.arena_len),
            params: Aligned::zeros(plan.params_len),
            grads: Aligned::zeros(plan.params_len),
            reduced: Aligned::zeros(0),
            buckets: Buckets::new(
                &plan,
                data_parallel::FIRST_BUCKET_BYTES,
                data_parallel::BUCKET_BYTES,
            ),
            velocity: Aligned::zeros(plan.params_len),
            has_velocity: false,
            states: vec![0.0; plan.states_len],
            partial: vec![0.0; cpu::partial_len(&plan)],
            pool: Arc::new(pool),
            threads,
            sgd: SgdSettings::default(),
            poison: false,
            statistics_averaged: false,
            profile: None,
            plan,
        })
    }

    /// Bytes the engine allocates for `plan` (arena, parameters, their
    /// gradients and momentum, running statistics, reduction scratch); a
    /// data-parallel run adds one more gradient array.
    pub fn bytes_needed(plan: &Plan) -> u64 {
        let floats = plan.arena_len + 3 * plan.params_len + plan.states_len;
        4 * floats as u64 + 8 * cpu::partial_len(plan) as u64
    }

    /// Starts (or restarts) timing each op kind, forward and backward.
    pub fn start_profile(&mut self) {
        self.profile = Some(Default::default());
    }

    /// Seconds per (op kind, direction) since [`Engine::start_profile`], largest first.
    pub fn profile(&self) -> Vec<(String, f64)> {
        let mut v: Vec<(String, f64)> = self
            .profile
            .iter()
            .flatten()
            .map(|((k, d), s)| (format!("{k} {d}"), *s))
            .collect();
        v.sort_by(|a, b| b.1.total_cmp(&a.1));
        v
    }

    /// The plan.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Threads the engine runs on.
    pub fn threads(&self) -> usize {
        self.threads
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
        let load = |specs: &[TensorSpec], flat: &mut [f32]| -> Result<(), EngineError> {
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
            Ok(())
        };
        load(&self.plan.params, &mut self.params)?;
        load(&self.plan.states, &mut self.states)
    }

    /// Copies every parameter and running statistic into `model`.
    pub fn write_to<M: TensorCollection<f32, D>, D: Device<f32>>(
        &self,
        model: &mut M,
    ) -> Result<(), EngineError> {
        let mut values = std::collections::HashMap::new();
        for (specs, flat) in [
            (&self.plan.params, &self.params[..]),
            (&self.plan.states, &self.states),
        ] {
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
    pub fn gradients(&self) -> Vec<(String, Vec<f32>)> {
        self.per_param(&self.grads)
    }

    /// Each parameter's slice of `flat` (laid out as the parameters), by
    /// dfdx path and in dfdx's layout.
    fn per_param<C: FromIterator<(String, Vec<f32>)>>(&self, flat: &[f32]) -> C {
        self.plan
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
    pub fn parameters(&self) -> Vec<(String, Vec<f32>)> {
        self.per_param(&self.params)
    }

    /// Every running statistic by dfdx path.
    pub fn statistics(&self) -> Vec<(String, Vec<f32>)> {
        self.plan
            .states
            .iter()
            .map(|s| {
                (
                    s.path.clone(),
                    self.states[s.offset..s.offset + s.len].to_vec(),
                )
            })
            .collect()
    }

    /// Multiplies every parameter by `1 + rel` or `1 - rel` (signs from a
    /// fixed sequence seeded by `seed`): with `rel` one rounding
    /// (`f32::EPSILON / 2`), what a run from such weights ends at measures
    /// the network's own float32 sensitivity, the yardstick for results
    /// computed in another order (another backend, another device).
    pub fn nudge_parameters(&mut self, rel: f32, seed: u32) {
        let mut k = seed;
        for v in self.params.iter_mut() {
            k = k.wrapping_mul(747796405).wrapping_add(2891336453);
            *v *= if k >> 31 == 1 { 1.0 + rel } else { 1.0 - rel };
        }
    }

    /// The SGD momentum of every parameter by dfdx path, in dfdx's layout
    /// (the trainer's [`crate::train::Sgd::buffers`]); empty before the first step.
    pub fn momentum(&self) -> std::collections::BTreeMap<String, Vec<f32>> {
        if !self.has_velocity {
            return Default::default();
        }
        self.per_param(&self.velocity)
    }

    /// Restores momentum saved by [`Engine::momentum`] (or by the dfdx
    /// trainer's SGD): none (the next step is a first step) or one buffer
    /// for every parameter, each of its size.
    pub fn set_momentum(
        &mut self,
        buffers: &std::collections::BTreeMap<String, Vec<f32>>,
    ) -> Result<(), EngineError> {
        if buffers.is_empty() {
            self.has_velocity = false;
            self.velocity.fill(0.0);
            return Ok(());
        }
        for s in &self.plan.params {
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
            .find(|k| !self.plan.params.iter().any(|s| &s.path == *k))
        {
            return Err(EngineError::MissingTensor(k.clone()));
        }
        for s in &self.plan.params {
            to_engine(
                s.layout,
                &buffers[&s.path],
                &mut self.velocity[s.offset..s.offset + s.len],
            );
        }
        self.has_velocity = true;
        Ok(())
    }

    /// The logits of the last forward pass, `batch x classes`.
    pub fn logits(&self) -> &[f32] {
        let b = &self.plan.bufs[self.plan.logits];
        &self.arena[b.offset..b.offset + b.len]
    }

    /// The current contents of the buffer named `name` (see [`plan::Buf::name`]),
    /// valid only while the plan has not reused its memory.
    pub fn buffer(&self, name: &str) -> Option<&[f32]> {
        let b = self.plan.bufs.iter().find(|b| b.name == name)?;
        Some(&self.arena[b.offset..b.offset + b.len])
    }

    fn check_input(&self, images: &[f32]) -> Result<(), EngineError> {
        check_batch(&self.plan, images, None)
    }

    fn run_forward(&mut self, images: &[f32], train: bool) {
        self.statistics_averaged &= !train;
        let xb = &self.plan.bufs[self.plan.x];
        self.arena[xb.offset..xb.offset + xb.len].copy_from_slice(images);
        self.run_ops(Some(train));
    }

    /// Every op forward (`Some(train)`) or, in reverse order, backward
    /// (`None`), on the engine's pool, timed per op kind while profiling.
    fn run_ops(&mut self, forward: Option<bool>) {
        let pool = self.pool.clone();
        pool.install(|| {
            let mem = cpu::Mem::new(&mut self.arena, &self.plan);
            let mut t = cpu::Tensors {
                params: &self.params,
                grads: &mut self.grads,
                states: &mut self.states,
                partial: &mut self.partial,
                threads: self.threads,
            };
            let n = self.plan.ops.len();
            for i in 0..n {
                let t0 = std::time::Instant::now();
                let (op, direction) = match forward {
                    Some(train) => {
                        let op = &self.plan.ops[i];
                        cpu::forward(op, &self.plan, &mem, &mut t, train);
                        (op, "forward")
                    }
                    None => {
                        let op = &self.plan.ops[n - 1 - i];
                        cpu::backward(op, &self.plan, &mem, &mut t);
                        (op, "backward")
                    }
                };
                if let Some(p) = &mut self.profile {
                    *p.entry((op.kind(), direction)).or_default() += t0.elapsed().as_secs_f64();
                }
            }
        });
    }

    /// Forward in training mode (running statistics updated), the loss
    /// (mean softmax cross-entropy) and, where it is finite, every gradient.
    pub fn forward_backward(&mut self, images: &[f32], labels: &[u32]) -> Result<f32, EngineError> {
        check_batch(&self.plan, images, Some(labels))?;
        self.run_forward(images, true);
        let loss = self.loss_and_dlogits(labels);
        if loss.is_finite() {
            self.run_ops(None);
        }
        Ok(loss)
    }

    /// The mean softmax cross-entropy of the logits of the last forward
    /// pass, with its gradient written where backward starts.
    fn loss_and_dlogits(&mut self, labels: &[u32]) -> f32 {
        let (lb, db) = (
            &self.plan.bufs[self.plan.logits],
            &self.plan.bufs[self.plan.dlogits],
        );
        let ((lo, ll), (dlo, dl)) = ((lb.offset, lb.len), (db.offset, db.len));
        // Both live at the loss, so they do not overlap.
        let (logits, dlogits) = if lo < dlo {
            let (a, b) = self.arena.split_at_mut(dlo);
            (&a[lo..lo + ll], &mut b[..dl])
        } else {
            let (a, b) = self.arena.split_at_mut(lo);
            (&b[..ll], &mut a[dlo..dlo + dl])
        };
        let loss = cpu::softmax_cross_entropy(logits, labels, self.plan.classes, dlogits);
        if std::mem::take(&mut self.poison) {
            return f32::NAN;
        }
        loss
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
        let loss = self.forward_backward(images, labels)?;
        if loss.is_finite() {
            let s = self.sgd;
            let first = !self.has_velocity;
            let pool = self.pool.clone();
            pool.install(|| {
                cpu::sgd(
                    &mut self.params,
                    &self.grads,
                    &mut self.velocity,
                    (lr, s.momentum, s.weight_decay, 1.0),
                    first,
                )
            });
            self.has_velocity = true;
        }
        Ok(loss)
    }

    /// Evaluation forward (running statistics): the logits.
    pub fn eval(&mut self, images: &[f32]) -> Result<&[f32], EngineError> {
        self.check_input(images)?;
        self.run_forward(images, false);
        Ok(self.logits())
    }
}

impl Engine {
    /// Evaluation logits of `rows` images of the plan's size, any number of
    /// them: run in chunks of the plan's batch, the last one padded with
    /// zeros (in evaluation each image's logits depend on that image alone).
    /// Returns `rows x classes`.
    pub fn eval_rows(&mut self, images: &[f32], rows: usize) -> Result<Vec<f32>, EngineError> {
        let (h, w) = self.plan.input;
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
        let (b, classes) = (self.plan.batch, self.plan.classes);
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
fn check_batch(plan: &Plan, images: &[f32], labels: Option<&[u32]>) -> Result<(), EngineError> {
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
    let Some(labels) = labels else {
        return Ok(());
    };
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
