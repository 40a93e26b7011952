//! The CPU backend: the plan's ops in NHWC on a rayon pool of the
//! backend's own, one arena laid out by the plan, the flat parameter,
//! gradient, momentum and statistic arrays in host memory.
//!
//! - [`ops`]: each op forward and backward (BatchNorm with its add and
//!   ReLU, pooling, the classifier, softmax cross-entropy, SGD).
//! - [`conv`]: convolutions by im2col in fixed groups of images.
//! - [`direct`]: direct convolutions (AVX-512 / AVX2 register tiles; fp32
//!   products only, skipped when a bf16 kernel multiplies).
//! - [`sgemm`]: the packed fp32 matrix product.
//! - [`bf16gemm`]: the bf16 matrix product on AMX or AVX512-BF16 (bf16 runs
//!   on a CPU that has them).
//! - [`simd`]: the element-wise loops compiled for AVX-512 or AVX2 where
//!   the CPU has them.
//!
//! Results do not depend on the number of threads (every reduction has an
//! order fixed by the plan), so exact resume holds whatever `--threads`.

pub mod bf16gemm;
pub mod conv;
pub mod direct;
pub mod direct16;
pub mod ops;
pub mod sgemm;
pub mod simd;
pub mod values;

pub use ops::{
    CHUNK_ROWS, MAX_CHANNELS, Mem, Tensors, backward, forward, gemm_calls, partial_len, sgd,
    softmax_cross_entropy,
};

use super::backend::{Backend, Flat, Reduction};
use super::data_parallel::Buckets;
use super::plan::{self, Plan, Stored16};
use super::precision::{Kernels, Precision, round_slice_bf16};
use super::{EngineError, SgdSettings};
use crate::dist::Communicator;
use bf16gemm::Bf16Kernel;
use direct16::Dot16;
use std::sync::Arc;

/// A buffer's start (f32, or u16 for a 16-bit one), handed to rayon tasks
/// that each write a disjoint part of it.
struct SendPtr<T = f32>(*mut T);
impl<T> Clone for SendPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for SendPtr<T> {}
// SAFETY: used only to hand disjoint parts of one buffer to rayon tasks.
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}
impl<T> SendPtr<T> {
    fn get(self) -> *mut T {
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

/// The plan run on this machine's cores.
pub struct Cpu {
    plan: Plan,
    arena: Aligned,
    params: Aligned,
    /// In bf16: `params` with every convolution and classifier weight
    /// rounded to bf16 (what the products read), remade before a forward
    /// pass after the parameters changed. Empty in fp32.
    weights: Aligned,
    weights_stale: bool,
    precision: Precision,
    /// What multiplies (in bf16: the CPU's bf16 kernel, if it has one).
    gemm: ops::Gemm,
    /// Buffers stored rounded in bf16 by their writer ([`ops::rounded_at_write`]).
    rounded: Vec<bool>,
    /// Buffers some op reads as f32 ([`ops::read_as_f32`]).
    read_as_f32: Vec<bool>,
    grads: Aligned,
    /// Gradients summed over ranks (empty until a data-parallel step).
    summed: Aligned,
    velocity: Aligned,
    states: Vec<f32>,
    partial: Vec<f64>,
    pool: Arc<rayon::ThreadPool>,
    threads: usize,
    /// Seconds per (op kind, direction) since profiling was switched on.
    profile: Option<std::collections::BTreeMap<(&'static str, &'static str), f64>>,
}

impl std::fmt::Debug for Cpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cpu")
            .field("ops", &self.plan.ops.len())
            .field("arena_bytes", &self.plan.arena_bytes())
            .field("threads", &self.threads)
            .finish()
    }
}

impl Cpu {
    /// Allocates `plan`'s memory (after checking that the machine has it
    /// free) and starts `threads` threads (0: one per core).
    pub fn new(plan: Plan, threads: usize) -> Result<Self, EngineError> {
        Self::with_precision(plan, threads, Precision::Fp32)
    }

    /// [`Cpu::new`] computing convolutions and the classifier in
    /// `precision`; in bf16 on the fastest bf16 kernel this machine runs
    /// ([`bf16gemm::native`]), else on the fp32 kernels, which also take a
    /// network of mostly small convolutions on AVX512-BF16
    /// ([`Plan::mostly_small_convs`]) unless `RESNET_BF16_KERNEL` names a
    /// kernel.
    pub fn with_precision(
        plan: Plan,
        threads: usize,
        precision: Precision,
    ) -> Result<Self, EngineError> {
        let kernel = match precision {
            Precision::Fp32 => None,
            Precision::Bf16 => match bf16gemm::native().map_err(EngineError::Backend)? {
                // The small convolutions of the CIFAR nets run on the
                // direct VDPBF16PS kernels ([`direct16`]); switched off
                // (`RESNET_DIRECT_BF16=0`), they run faster on the direct
                // fp32 kernels over the same rounded operands than as
                // small products on VDPBF16PS (ResNet-20 b128: 0.187
                // against 0.32 s/step, AMD EPYC, 2026-12-07). AMX is not
                // measured yet, so it keeps every convolution.
                Some(Bf16Kernel::Avx512Bf16)
                    if !bf16gemm::kernel_named()
                        && plan.mostly_small_convs()
                        && Dot16::for_kernel(Bf16Kernel::Avx512Bf16).is_none() =>
                {
                    None
                }
                k => k,
            },
        };
        Self::with_kernel(plan, threads, precision, kernel)
    }

    /// [`Cpu::with_precision`] with the bf16 products on `kernel` (`None`:
    /// on the fp32 kernels; in bf16 on rounded operands), e.g. a kernel's
    /// model in a test. A kernel needs [`Precision::Bf16`].
    pub fn with_kernel(
        plan: Plan,
        threads: usize,
        precision: Precision,
        kernel: Option<Bf16Kernel>,
    ) -> Result<Self, EngineError> {
        Self::with_storage(plan, threads, precision, kernel, stored_16_bit(precision))
    }

    /// [`Cpu::with_kernel`] keeping `stored` activations for backward in
    /// 16 bits ([`Plan::with_16_bit_activations`]; in bf16 all of them by
    /// default, none in fp32): tests compare a bf16 step with and without.
    #[doc(hidden)]
    pub fn with_storage(
        plan: Plan,
        threads: usize,
        precision: Precision,
        kernel: Option<Bf16Kernel>,
        stored: Stored16,
    ) -> Result<Self, EngineError> {
        if precision == Precision::Fp32 && stored != Stored16::NONE {
            return Err(EngineError::Backend(format!(
                "Cpu::with_storage: activations stored in 16 bits ({stored:?}) need precision bf16"
            )));
        }
        let gemm = match (precision, kernel) {
            (_, None) => ops::Gemm::Fp32,
            (Precision::Bf16, Some(k)) => match k.why_not() {
                None => ops::Gemm::Bf16(k),
                Some(why) => {
                    return Err(EngineError::Backend(format!(
                        "bf16 kernel {}: {why}",
                        k.name()
                    )));
                }
            },
            (Precision::Fp32, Some(k)) => {
                return Err(EngineError::Backend(format!(
                    "Cpu::with_kernel: the bf16 kernel {} needs precision bf16 (pass None for fp32)",
                    k.name()
                )));
            }
        };
        for op in &plan.ops {
            if let plan::Op::BatchNorm { c, .. } = op
                && *c > MAX_CHANNELS
            {
                return Err(EngineError::TooWide(*c));
            }
        }
        let plan = plan_for(&plan, gemm, stored);
        let (h, w) = plan.input;
        let needed = bytes_allocated(&plan, precision, kernel);
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
        pool.broadcast(|_| {
            sgemm::reserve();
            if gemm != ops::Gemm::Fp32 {
                bf16gemm::reserve();
            }
        });
        Ok(Cpu {
            arena: Aligned::zeros(plan.arena_len),
            params: Aligned::zeros(plan.params_len),
            weights: Aligned::zeros(match weight_copy(precision, kernel) {
                true => plan.params_len,
                false => 0,
            }),
            weights_stale: true,
            precision,
            gemm,
            rounded: ops::rounded_at_write(&plan),
            read_as_f32: ops::read_as_f32(&plan, gemm),
            grads: Aligned::zeros(plan.params_len),
            summed: Aligned::zeros(0),
            velocity: Aligned::zeros(plan.params_len),
            states: vec![0.0; plan.states_len],
            partial: vec![0.0; partial_len(&plan)],
            pool: Arc::new(pool),
            threads,
            profile: None,
            plan,
        })
    }

    /// Bytes the backend allocates for `plan` (arena, parameters, their
    /// gradients and momentum, running statistics, reduction scratch) in
    /// `precision` with the bf16 products on `kernel` (as
    /// [`Cpu::with_kernel`]); a data-parallel run adds one more gradient
    /// array; bf16 on the fp32 kernels adds the rounded copy of the
    /// parameters.
    pub fn bytes_needed(plan: &Plan, precision: Precision, kernel: Option<Bf16Kernel>) -> u64 {
        let gemm = kernel.map_or(ops::Gemm::Fp32, ops::Gemm::Bf16);
        let plan = plan_for(plan, gemm, stored_16_bit(precision));
        bytes_allocated(&plan, precision, kernel)
    }

    /// Threads the backend runs on.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// The kernels a step runs, in words (`fp32 Avx512 kernels`, or in
    /// bf16 how its operands are multiplied on this CPU).
    pub fn kernels(&self) -> String {
        Kernels::detect().running(
            self.precision,
            &format!("{:?} kernels", sgemm::best_isa()),
            self.gemm.bf16(),
        )
    }

    fn flat(&self, which: Flat) -> &[f32] {
        match which {
            Flat::Params => &self.params,
            Flat::Grads => &self.grads,
            Flat::Velocity => &self.velocity,
            Flat::States => &self.states,
            Flat::Summed => &self.summed,
        }
    }

    /// Runs ops `ops` (in that order) forward (`Some(train)`) or backward
    /// (`None`) inside one entry into the pool (each entry from outside it
    /// queues a job, and rayon's queue grows by a block every few dozen:
    /// one entry per pass keeps a step free of allocations), timed per op
    /// while profiling.
    fn run_ops(&mut self, ops: impl Iterator<Item = usize> + Send, forward: Option<bool>) {
        let pool = self.pool.clone();
        let bf16 = self.precision == Precision::Bf16;
        let copy = !self.weights.is_empty();
        pool.install(|| {
            if copy && self.weights_stale {
                let t0 = std::time::Instant::now();
                self.round_weights();
                if let Some(p) = &mut self.profile {
                    *p.entry(("bf16 weight copy", "forward")).or_default() +=
                        t0.elapsed().as_secs_f64();
                }
            }
            let mem = Mem::new(&mut self.arena, &self.plan);
            let mut t = Tensors {
                params: &self.params,
                weights: if copy { &self.weights } else { &self.params },
                bf16,
                rounded: &self.rounded,
                read_as_f32: &self.read_as_f32,
                grads: &mut self.grads,
                states: &mut self.states,
                partial: &mut self.partial,
                threads: self.threads,
                gemm: self.gemm,
            };
            for i in ops {
                let t0 = std::time::Instant::now();
                let op = &self.plan.ops[i];
                let direction = match forward {
                    Some(train) => {
                        ops::forward(op, &self.plan, &mem, &mut t, train);
                        "forward"
                    }
                    None => {
                        ops::backward(op, &self.plan, &mem, &mut t);
                        "backward"
                    }
                };
                if let Some(p) = &mut self.profile {
                    *p.entry((op.kind(), direction)).or_default() += t0.elapsed().as_secs_f64();
                }
            }
        });
    }

    /// Remakes the bf16 copy of the weights from the parameters: the
    /// weights of convolutions and the classifier rounded, BatchNorm's and
    /// the classifier's bias as they are (they never enter a product).
    fn round_weights(&mut self) {
        self.weights.copy_from_slice(&self.params);
        for op in &self.plan.ops {
            if let plan::Op::Conv { w, .. } | plan::Op::Linear { w, .. } = op {
                let spec = &self.plan.params[*w];
                round_slice_bf16(&mut self.weights[spec.offset..spec.offset + spec.len]);
            }
        }
        self.weights_stale = false;
    }

    /// Backward, op by op, starting each bucket's sum over the ranks as
    /// soon as its gradients are final and letting the communicator move
    /// the started ones on after every later op. Returns when the first
    /// sum started.
    fn backward_overlapped(
        &mut self,
        comm: &mut dyn Communicator,
        buckets: &Buckets,
    ) -> Option<std::time::Instant> {
        if self.summed.len() != self.grads.len() {
            self.summed = Aligned::zeros(self.grads.len());
        }
        let send = self.grads.as_ptr();
        let recv = self.summed.as_mut_ptr();
        let mut next = 0;
        let mut first_start = None;
        for i in (0..self.plan.ops.len()).rev() {
            // One op per entry into the pool: the communicator is called
            // from this thread between ops.
            self.run_ops(std::iter::once(i), None);
            while let Some(&(op, lo, hi)) = buckets.ranges.get(next)
                && op == i
            {
                first_start.get_or_insert_with(std::time::Instant::now);
                // SAFETY: backward writes each parameter's gradient in its
                // own op only, and ops later in backward own lower offsets
                // (Buckets::new checks), so nothing touches lo..hi of
                // `grads` again this step, nor `summed` before wait_all.
                unsafe { comm.start_sum(send.add(lo), recv.add(lo), hi - lo) };
                next += 1;
            }
            comm.progress();
        }
        first_start
    }
}

impl Backend for Cpu {
    fn describe(&self) -> String {
        format!(
            "cpu ({} thread{}, {})",
            self.threads,
            if self.threads == 1 { "" } else { "s" },
            self.kernels()
        )
    }

    fn precision(&self) -> Precision {
        self.precision
    }

    fn plan(&self) -> &Plan {
        &self.plan
    }

    fn read(&self, which: Flat, dst: &mut [f32]) -> Result<(), EngineError> {
        let src = self.flat(which);
        if src.len() != dst.len() {
            return Err(EngineError::TensorSize {
                path: format!("{which:?}"),
                expected: src.len(),
                got: dst.len(),
            });
        }
        dst.copy_from_slice(src);
        Ok(())
    }

    fn write(&mut self, which: Flat, src: &[f32]) -> Result<(), EngineError> {
        let dst: &mut [f32] = match which {
            Flat::Params => &mut self.params,
            Flat::Grads => &mut self.grads,
            Flat::Velocity => &mut self.velocity,
            Flat::States => &mut self.states,
            Flat::Summed => &mut self.summed,
        };
        if src.len() != dst.len() {
            return Err(EngineError::TensorSize {
                path: format!("{which:?}"),
                expected: dst.len(),
                got: src.len(),
            });
        }
        dst.copy_from_slice(src);
        if which == Flat::Params {
            self.weights_stale = true;
        }
        Ok(())
    }

    fn forward(&mut self, images: &[f32], train: bool) -> Result<(), EngineError> {
        super::check_batch(&self.plan, images, None)?;
        let xb = &self.plan.bufs[self.plan.x];
        self.arena[xb.offset..xb.offset + xb.len].copy_from_slice(images);
        self.run_ops(0..self.plan.ops.len(), Some(train));
        Ok(())
    }

    fn loss(&mut self, labels: &[u32]) -> Result<f32, EngineError> {
        super::check_labels(&self.plan, labels)?;
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
        Ok(softmax_cross_entropy(
            logits,
            labels,
            self.plan.classes,
            dlogits,
        ))
    }

    fn backward(
        &mut self,
        reduce: Option<(&mut dyn Communicator, &Buckets)>,
    ) -> Result<Reduction, EngineError> {
        let Some((comm, buckets)) = reduce else {
            self.run_ops((0..self.plan.ops.len()).rev(), None);
            return Ok(Reduction::default());
        };
        let first_start = self.backward_overlapped(comm, buckets);
        let wait_s = comm.wait_all();
        Ok(Reduction {
            allreduce_s: first_start.map_or(0.0, |t| t.elapsed().as_secs_f64()),
            wait_s,
        })
    }

    fn sgd(
        &mut self,
        lr: f32,
        settings: SgdSettings,
        scale: f32,
        first: bool,
        summed: bool,
    ) -> Result<(), EngineError> {
        let pool = self.pool.clone();
        let grads: &[f32] = if summed { &self.summed } else { &self.grads };
        if grads.len() != self.params.len() {
            return Err(EngineError::Backend(
                "SGD on summed gradients before any data-parallel backward".into(),
            ));
        }
        pool.install(|| {
            sgd(
                &mut self.params,
                grads,
                &mut self.velocity,
                (lr, settings.momentum, settings.weight_decay, scale),
                first,
            )
        });
        self.weights_stale = true;
        Ok(())
    }

    fn logits(&self) -> Result<Vec<f32>, EngineError> {
        let b = &self.plan.bufs[self.plan.logits];
        Ok(self.arena[b.offset..b.offset + b.len].to_vec())
    }

    fn buffer(&self, name: &str) -> Option<Vec<f32>> {
        let b = self.plan.bufs.iter().find(|b| b.name == name)?;
        let floats = &self.arena[b.offset..b.offset + b.floats()];
        Some(match b.elem {
            plan::Elem::F32 => floats.to_vec(),
            plan::Elem::Bf16 => {
                // SAFETY: `b.len` 16-bit values fill `b.floats()` floats
                // (aligned for u16), as the backend's ops store them.
                let v = unsafe { std::slice::from_raw_parts(floats.as_ptr().cast::<u16>(), b.len) };
                v.iter().map(|&v| values::from_bf16(v)).collect()
            }
        })
    }

    fn start_profile(&mut self) {
        self.profile = Some(Default::default());
    }

    fn profile(&self) -> Vec<(String, f64)> {
        let mut v: Vec<(String, f64)> = self
            .profile
            .iter()
            .flatten()
            .map(|((k, d), s)| (format!("{k} {d}"), *s))
            .collect();
        v.sort_by(|a, b| b.1.total_cmp(&a.1));
        v
    }

    fn threads(&self) -> usize {
        self.threads
    }
}

/// What a step in `precision` keeps in 16 bits: in bf16 every activation
/// kept for backward ([`Stored16::ALL`]), in fp32 none.
fn stored_16_bit(precision: Precision) -> Stored16 {
    match precision {
        Precision::Fp32 => Stored16::NONE,
        Precision::Bf16 => Stored16::ALL,
    }
}

/// `plan` as the backend runs it: `stored` activations in 16 bits, the
/// convolution scratch as the products on `gemm` need it.
fn plan_for(plan: &Plan, gemm: ops::Gemm, stored: Stored16) -> Plan {
    let plan = match stored == Stored16::NONE {
        true => plan.clone(),
        false => plan.with_16_bit_activations(stored),
    };
    scratch_for(plan, gemm)
}

/// `plan` with its convolution scratch as the products on `gemm` need it.
/// A wide convolution's forward product reads its windows where they lie
/// on the fp32 kernel, and on a bf16 kernel with an even channel count
/// ([`ops::Gemm::reads_windows`]): no forward columns. Its weight gradient
/// reads them in place on every kernel. The input gradient needs: nothing without one (the
/// stem), the flipped weight where it is a convolution whose windows are
/// read in place too (stride 1), its columns and the flipped weight where
/// they are not, the columns' gradient for a strided one. Grouped and
/// single-tap convolutions are unchanged.
fn scratch_for(plan: Plan, gemm: ops::Gemm) -> Plan {
    plan.with_conv_scratch(|g, dx, (cols, bcols)| {
        if g.grouped() || g.single_tap().is_some() {
            return (cols, bcols);
        }
        let forward = if gemm.reads_windows(g) { 0 } else { cols };
        let flipped = g.cols() * g.o;
        let backward = match (dx, g.input_gradient_conv()) {
            (false, _) => 0,
            (true, Some(d)) if gemm.reads_windows(&d) => flipped,
            (true, Some(d)) => d.rows() * d.cols() + flipped,
            (true, None) => bcols,
        };
        (forward, backward.min(bcols))
    })
}

/// [`Cpu::bytes_needed`] of a plan whose scratch is already
/// [`scratch_for`] the kernel.
fn bytes_allocated(plan: &Plan, precision: Precision, kernel: Option<Bf16Kernel>) -> u64 {
    let copies = 3 + weight_copy(precision, kernel) as usize;
    let floats = plan.arena_len + copies * plan.params_len + plan.states_len;
    4 * floats as u64 + 8 * partial_len(plan) as u64
}

/// Whether the step multiplies by a bf16-rounded copy of the weights: in
/// bf16 on the fp32 kernels (and their direct convolutions), which
/// multiply what they are given. A bf16 kernel rounds its operands as it
/// packs them, so it takes the fp32 weights as they are.
fn weight_copy(precision: Precision, kernel: Option<Bf16Kernel>) -> bool {
    precision == Precision::Bf16 && kernel.is_none()
}
