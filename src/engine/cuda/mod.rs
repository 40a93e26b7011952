//! The engine's CUDA backend: the same [`Plan`] as the CPU backend, run on
//! an NVIDIA GPU through cudarc (libraries loaded at run time: the build
//! needs no CUDA toolkit).
//!
//! - **Memory**: one device arena laid out by the plan (the CPU's im2col
//!   scratch dropped, [`Plan::without_scratch`]), flat parameter, gradient,
//!   momentum and running-statistic arrays, one cuDNN workspace.
//! - **Convolutions** through cuDNN in NHWC: forward, backward-data (adding
//!   into the input's gradient where the plan says so) and backward-filter,
//!   each algorithm chosen once per shape with `cudnnFind*` (the fastest
//!   deterministic one). cuDNN's NHWC filter is `[o][k][k][c]`, the
//!   engine's `[k][k][c][o]`: each step transposes the weights in and the
//!   weight gradients out (a few MB, next to the activations' GB).
//! - **Everything else** in kernels of its own ([`KERNELS`], compiled by
//!   NVRTC for the card at start-up): BatchNorm with its residual add and
//!   ReLU fused (statistics by fixed chunks, then in double in order: no
//!   atomics, results independent of scheduling), max pool (backward as a
//!   gather), option A's shortcut, average pool, softmax cross-entropy,
//!   SGD over all parameters; the classifier through cuBLAS.
//! - **Precision**: [`Precision::Fp32`] forbids tensor-core math (cuDNN's
//!   FMA math, cuBLAS's pedantic mode): the like-for-like comparison with
//!   PyTorch fp32. [`Precision::Tf32`] allows TF32 in convolutions and
//!   products, as PyTorch's `allow_tf32`. bf16 is not built yet.
//!
//! - **Between ranks** (features `cuda` and `mpi`): NCCL ([`nccl`]), its
//!   id handed round over MPI; each gradient bucket's sum runs on NCCL's
//!   own stream as soon as backward has produced it. Without libnccl the
//!   sums go through host memory and the communicator.
//!
//! [`Cuda`] implements [`Backend`]: the [`crate::engine::Engine`] copies the
//! model in and out through it (checkpoints, the dfdx model, the tests), as
//! it does for the CPU backend; the two share nothing but the plan.

mod backend;
mod conv;
#[cfg(feature = "mpi")]
mod nccl;
mod ops;

use super::backend::{Flat, Reduction};
#[cfg(feature = "mpi")]
use super::data_parallel::Buckets;
use super::plan::{ConvGeom, Op, Plan};
use super::{EngineError, SgdSettings};
use crate::dist::Communicator;
use conv::{AlgoCache, ConvDnn};
use cudarc::cublas::sys as blas;
use cudarc::cudnn::sys as dnn;
use cudarc::driver::sys::CUdeviceptr;
use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, LaunchConfig, PushKernelArg,
};
use std::sync::Arc;

/// The kernels' source (CUDA C, compiled by NVRTC at start-up).
pub const KERNELS: &str = include_str!("kernels.cu");

/// Arithmetic of the convolutions and matrix products.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Plain f32 FMA, no tensor cores.
    Fp32,
    /// f32 storage, TF32 tensor-core products.
    Tf32,
    /// bf16 activations and weight copies, f32 master weights (not built yet).
    Bf16,
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "fp32" => Ok(Precision::Fp32),
            "tf32" => Ok(Precision::Tf32),
            "bf16" => Ok(Precision::Bf16),
            _ => Err(format!("{s:?}: the precisions are fp32, tf32, bf16")),
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Precision::Fp32 => "fp32",
            Precision::Tf32 => "tf32",
            Precision::Bf16 => "bf16",
        })
    }
}

/// Why the CUDA backend cannot run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CudaError {
    /// The driver (no GPU, no libcuda, out of memory, a failed launch).
    #[error("CUDA driver: {0}")]
    Driver(String),
    /// NVRTC could not compile the kernels.
    #[error("NVRTC: {0}")]
    Nvrtc(String),
    /// A cuDNN call failed.
    #[error("cuDNN {call}: {status}")]
    Cudnn {
        /// The function.
        call: &'static str,
        /// Its status.
        status: String,
    },
    /// A cuBLAS call failed.
    #[error("cuBLAS {call}: {status}")]
    Cublas {
        /// The function.
        call: &'static str,
        /// Its status.
        status: String,
    },
    /// cuDNN offered no algorithm for a convolution.
    #[error("cuDNN has no {what} algorithm for {geom:?}")]
    NoAlgorithm {
        /// forward, backward-data or backward-filter.
        what: &'static str,
        /// The convolution.
        geom: ConvGeom,
    },
    /// A CUDA library could not be loaded.
    #[error(
        "cannot load {0} (an NVIDIA driver, and CUDA 13's NVRTC, cuBLAS and cuDNN 9 on LD_LIBRARY_PATH, e.g. PyTorch's CUDA wheels' nvidia/*/lib folders)"
    )]
    MissingLibrary(&'static str),
    /// A precision this build does not have.
    #[error("precision {0} is not built yet (fp32 and tf32 are)")]
    Unsupported(Precision),
    /// NCCL failed (its id, a communicator, a sum).
    #[error("NCCL: {0}")]
    Nccl(String),
    /// The batch, labels or settings (as the CPU engine checks them).
    #[error(transparent)]
    Engine(#[from] EngineError),
}

impl From<cudarc::driver::DriverError> for CudaError {
    fn from(e: cudarc::driver::DriverError) -> Self {
        CudaError::Driver(format!("{e:?}"))
    }
}

fn dnn_ok(call: &'static str, s: dnn::cudnnStatus_t) -> Result<(), CudaError> {
    if s == dnn::cudnnStatus_t::CUDNN_STATUS_SUCCESS {
        Ok(())
    } else {
        Err(CudaError::Cudnn {
            call,
            status: format!("{s:?}"),
        })
    }
}

fn blas_ok(call: &'static str, s: blas::cublasStatus_t) -> Result<(), CudaError> {
    if s == blas::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
        Ok(())
    } else {
        Err(CudaError::Cublas {
            call,
            status: format!("{s:?}"),
        })
    }
}

/// The largest cuDNN workspace an algorithm may ask for.
const WORKSPACE_LIMIT: usize = 1 << 31;

/// The kernels of [`KERNELS`], loaded.
struct Kernels {
    transpose: CudaFunction,
    bn_sums: CudaFunction,
    bn_mean: CudaFunction,
    bn_var: CudaFunction,
    bn_eval_stats: CudaFunction,
    bn_apply: CudaFunction,
    bn_bwd_sums: CudaFunction,
    bn_bwd_final: CudaFunction,
    bn_bwd_apply: CudaFunction,
    maxpool_fwd: CudaFunction,
    maxpool_bwd: CudaFunction,
    shortcut_fwd: CudaFunction,
    shortcut_bwd: CudaFunction,
    avgpool_fwd: CudaFunction,
    avgpool_bwd: CudaFunction,
    bias_rows: CudaFunction,
    col_sums: CudaFunction,
    softmax_ce: CudaFunction,
    loss_flag: CudaFunction,
    sgd: CudaFunction,
}

/// Checks that the libraries the backend loads at run time are there
/// (cudarc would panic at the first call into a missing one).
pub fn check_libraries(driver: bool) -> Result<(), CudaError> {
    // SAFETY: each only tries to load its library.
    let present = unsafe {
        [
            ("libnvrtc (NVRTC)", cudarc::nvrtc::sys::is_culib_present()),
            (
                "libcuda (the NVIDIA driver)",
                !driver || cudarc::driver::sys::is_culib_present(),
            ),
            (
                "libcublas (cuBLAS)",
                !driver || cudarc::cublas::sys::is_culib_present(),
            ),
            (
                "libcudnn (cuDNN 9)",
                !driver || cudarc::cudnn::sys::is_culib_present(),
            ),
        ]
    };
    match present.iter().find(|p| !p.1) {
        Some((name, _)) => Err(CudaError::MissingLibrary(name)),
        None => Ok(()),
    }
}

/// Compiles [`KERNELS`] for compute capability `(major, minor)` (PTX, which
/// the driver turns into the card's code). Needs only libnvrtc, no GPU.
pub fn compile_kernels(major: i32, minor: i32) -> Result<cudarc::nvrtc::Ptx, CudaError> {
    check_libraries(false)?;
    let opts = cudarc::nvrtc::CompileOptions {
        options: vec![format!("--gpu-architecture=compute_{major}{minor}")],
        ..Default::default()
    };
    cudarc::nvrtc::compile_ptx_with_opts(KERNELS, opts)
        .map_err(|e| CudaError::Nvrtc(format!("{e}")))
}

/// A device allocation and its address.
struct Dev<T> {
    _slice: CudaSlice<T>,
    ptr: CUdeviceptr,
    len: usize,
}

impl<T: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits> Dev<T> {
    fn zeros(stream: &Arc<CudaStream>, len: usize) -> Result<Self, CudaError> {
        let slice = stream.alloc_zeros::<T>(len.max(1))?;
        let ptr = {
            let (ptr, _sync) = slice.device_ptr(stream);
            ptr
        };
        Ok(Dev {
            ptr,
            _slice: slice,
            len,
        })
    }
    fn at(&self, offset: usize) -> CUdeviceptr {
        self.ptr + (offset * std::mem::size_of::<T>()) as u64
    }
    fn bytes(&self) -> usize {
        self.len * std::mem::size_of::<T>()
    }
}

/// Elementwise launches: 256 threads, grid-stride beyond 2^20 blocks.
fn elementwise(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (n.div_ceil(256).clamp(1, 1 << 20) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// BatchNorm's row chunks: (rows per chunk, chunks), at most 512 chunks.
fn bn_chunks(rows: usize) -> (usize, usize) {
    let per = rows.div_ceil(512).max(32);
    (per, rows.div_ceil(per))
}

/// The plan run on an NVIDIA GPU: one device arena, the flat arrays on
/// the device, cuDNN and cuBLAS handles and the kernels on one stream.
pub struct Cuda {
    plan: Plan,
    precision: Precision,
    ordinal: usize,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    k: Kernels,
    dnn: dnn::cudnnHandle_t,
    blas: blas::cublasHandle_t,
    convs: Vec<Option<ConvDnn>>,
    arena: Dev<f32>,
    params: Dev<f32>,
    grads: Dev<f32>,
    /// Gradients summed over ranks (empty until a data-parallel backward).
    summed: Dev<f32>,
    velocity: Dev<f32>,
    states: Dev<f32>,
    wt: Dev<f32>,
    dwt: Dev<f32>,
    workspace: Dev<u8>,
    partial: Dev<f32>,
    mean64: Dev<f64>,
    coef: Dev<f32>,
    loss: Dev<f32>,
    labels: Dev<u32>,
    /// Set by the loss kernel when a loss is not finite (the graph's SGD
    /// then does nothing).
    skip: Dev<i32>,
    /// Always zero: SGD called by the engine after it checked the loss.
    no_skip: Dev<i32>,
    loss_host: Vec<f32>,
    /// The step captured as a CUDA graph, with the (lr, momentum, decay,
    /// first step) it was captured for.
    graph: Option<((u32, u32, u32, bool), cudarc::driver::CudaGraph)>,
    /// Replay each single-process training step as a CUDA graph (captured
    /// at the first step and again whenever the learning rate changes).
    pub graphs: bool,
    /// NCCL with the other ranks, once joined (features `cuda` and `mpi`).
    #[cfg(feature = "mpi")]
    nccl: Option<nccl::Nccl>,
}

impl std::fmt::Debug for Cuda {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cuda")
            .field("ordinal", &self.ordinal)
            .field("ops", &self.plan.ops.len())
            .field("precision", &self.precision)
            .field("device_bytes", &self.device_bytes())
            .finish()
    }
}

// SAFETY: the raw cuDNN/cuBLAS handles, descriptors and the graph are
// used only through `&mut self` or `&self` from one thread at a time (the
// backend is moved between threads, never shared), and every entry point
// makes the backend's context current on the calling thread first
// (`run_forward`, `run_backward`, the copies through cudarc's stream).
unsafe impl Send for Cuda {}

impl Drop for Cuda {
    fn drop(&mut self) {
        #[cfg(feature = "mpi")]
        drop(self.nccl.take());
        self.convs.clear();
        // SAFETY: the handles are ours, created in `new`, destroyed once.
        unsafe {
            dnn::cudnnDestroy(self.dnn);
            blas::cublasDestroy_v2(self.blas);
        }
    }
}

impl Cuda {
    /// `plan` on GPU `ordinal` (the CPU's scratch buffers dropped), every
    /// flat array zero: the [`crate::engine::Engine`] copies the model in.
    pub fn new(plan: Plan, ordinal: usize, precision: Precision) -> Result<Self, CudaError> {
        if precision == Precision::Bf16 {
            return Err(CudaError::Unsupported(precision));
        }
        check_libraries(true)?;
        let plan = plan.without_scratch();
        let ctx = CudaContext::new(ordinal)?;
        // One stream, raw addresses: no per-use event tracking.
        // SAFETY: nothing here uses a slice on another stream.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream()?;
        let (major, minor) = ctx.compute_capability()?;
        let module = ctx.load_module(compile_kernels(major, minor)?)?;
        let f = |name: &str| module.load_function(name);
        let k = Kernels {
            transpose: f("transpose")?,
            bn_sums: f("bn_sums")?,
            bn_mean: f("bn_mean")?,
            bn_var: f("bn_var")?,
            bn_eval_stats: f("bn_eval_stats")?,
            bn_apply: f("bn_apply")?,
            bn_bwd_sums: f("bn_bwd_sums")?,
            bn_bwd_final: f("bn_bwd_final")?,
            bn_bwd_apply: f("bn_bwd_apply")?,
            maxpool_fwd: f("maxpool_fwd")?,
            maxpool_bwd: f("maxpool_bwd")?,
            shortcut_fwd: f("shortcut_fwd")?,
            shortcut_bwd: f("shortcut_bwd")?,
            avgpool_fwd: f("avgpool_fwd")?,
            avgpool_bwd: f("avgpool_bwd")?,
            bias_rows: f("bias_rows")?,
            col_sums: f("col_sums")?,
            softmax_ce: f("softmax_ce")?,
            loss_flag: f("loss_flag")?,
            sgd: f("sgd")?,
        };
        let mut h = std::ptr::null_mut();
        let mut b = std::ptr::null_mut();
        // SAFETY: handle creation; the stream outlives the handles (both
        // are dropped with the engine, the handles first).
        unsafe {
            dnn_ok("cudnnCreate", dnn::cudnnCreate(&mut h))?;
            dnn_ok(
                "cudnnSetStream",
                dnn::cudnnSetStream(h, stream.cu_stream() as _),
            )?;
            blas_ok("cublasCreate", blas::cublasCreate_v2(&mut b))?;
            blas_ok(
                "cublasSetStream",
                blas::cublasSetStream_v2(b, stream.cu_stream() as _),
            )?;
            let mode = match precision {
                Precision::Fp32 => blas::cublasMath_t::CUBLAS_PEDANTIC_MATH,
                _ => blas::cublasMath_t::CUBLAS_TF32_TENSOR_OP_MATH,
            };
            blas_ok("cublasSetMathMode", blas::cublasSetMathMode(b, mode))?;
        }
        // cuDNN's descriptors and algorithms, the transposed weights' places.
        let (mut convs, mut wt_len, mut dwt_len, mut ws) = (Vec::new(), 0, 0, 0);
        let (mut partial, mut widest) = (1, 1);
        let mut found = AlgoCache::new();
        for op in &plan.ops {
            convs.push(match op {
                Op::Conv { g, dx, .. } => {
                    let c = ConvDnn::new(h, g, dx.is_some(), precision, wt_len, &mut found)?;
                    ws = ws.max(c.workspace(h)?);
                    wt_len += g.cols() * g.o;
                    dwt_len = dwt_len.max(g.cols() * g.o);
                    Some(c)
                }
                Op::BatchNorm { rows, c, .. } => {
                    partial = partial.max(bn_chunks(*rows).1 * 2 * c);
                    widest = widest.max(*c);
                    None
                }
                _ => None,
            });
        }
        let z32 = |n| Dev::<f32>::zeros(&stream, n);
        Ok(Cuda {
            arena: z32(plan.arena_len)?,
            params: z32(plan.params_len)?,
            grads: z32(plan.params_len)?,
            summed: z32(0)?,
            velocity: z32(plan.params_len)?,
            states: z32(plan.states_len)?,
            wt: z32(wt_len)?,
            dwt: z32(dwt_len)?,
            workspace: Dev::zeros(&stream, ws)?,
            partial: z32(partial)?,
            mean64: Dev::zeros(&stream, widest)?,
            coef: z32(3 * widest)?,
            loss: z32(plan.batch)?,
            labels: Dev::zeros(&stream, plan.batch)?,
            skip: Dev::zeros(&stream, 1)?,
            no_skip: Dev::zeros(&stream, 1)?,
            graph: None,
            graphs: false,
            loss_host: vec![0.0; plan.batch],
            #[cfg(feature = "mpi")]
            nccl: None,
            convs,
            dnn: h,
            blas: b,
            k,
            precision,
            ordinal,
            plan,
            ctx,
            stream,
        })
    }

    /// The precision.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The GPU's name.
    pub fn device_name(&self) -> String {
        self.ctx.name().unwrap_or_else(|e| format!("({e:?})"))
    }

    /// Bytes of device memory the backend allocated (arena, parameters,
    /// gradients, momentum, statistics, weight copies, workspace).
    pub fn device_bytes(&self) -> usize {
        self.arena.bytes()
            + 3 * self.params.bytes()
            + self.summed.bytes()
            + self.states.bytes()
            + self.wt.bytes()
            + self.dwt.bytes()
            + self.workspace.bytes()
            + self.partial.bytes()
    }

    fn htod<T: cudarc::driver::DeviceRepr>(
        &self,
        src: &[T],
        dst: CUdeviceptr,
    ) -> Result<(), CudaError> {
        if src.is_empty() {
            return Ok(());
        }
        // SAFETY: `dst` is an allocation of ours with room for `src` (the
        // callers pass matching buffers); the copy from pageable memory
        // completes before this returns.
        unsafe { cudarc::driver::result::memcpy_htod_async(dst, src, self.stream.cu_stream()) }?;
        Ok(())
    }

    fn dtoh<T: cudarc::driver::DeviceRepr>(
        &self,
        src: CUdeviceptr,
        dst: &mut [T],
    ) -> Result<(), CudaError> {
        if dst.is_empty() {
            return Ok(());
        }
        // SAFETY: as `htod`; synchronised before `dst` is read.
        unsafe { cudarc::driver::result::memcpy_dtoh_async(dst, src, self.stream.cu_stream()) }?;
        self.stream.synchronize()?;
        Ok(())
    }

    fn buf(&self, id: usize) -> CUdeviceptr {
        self.arena.at(self.plan.bufs[id].offset)
    }

    fn param(&self, id: usize) -> CUdeviceptr {
        self.params.at(self.plan.params[id].offset)
    }

    fn grad(&self, id: usize) -> CUdeviceptr {
        self.grads.at(self.plan.params[id].offset)
    }

    fn state(&self, id: usize) -> CUdeviceptr {
        self.states.at(self.plan.states[id].offset)
    }

    fn flat(&self, which: Flat) -> &Dev<f32> {
        match which {
            Flat::Params => &self.params,
            Flat::Grads => &self.grads,
            Flat::Velocity => &self.velocity,
            Flat::States => &self.states,
            Flat::Summed => &self.summed,
        }
    }

    /// SGD over every parameter (the backend's one definition): gradient
    /// `grads * scale`, skipped on the GPU when `skip` holds non-zero.
    fn launch_sgd(
        &self,
        (lr, s, scale, first): (f32, SgdSettings, f32, bool),
        grads: CUdeviceptr,
        skip: CUdeviceptr,
    ) -> Result<(), CudaError> {
        let (p, v) = (self.params.ptr, self.velocity.ptr);
        let n = self.plan.params_len as i64;
        let first = first as i32;
        let mut l = self.stream.launch_builder(&self.k.sgd);
        l.arg(&p)
            .arg(&grads)
            .arg(&v)
            .arg(&n)
            .arg(&lr)
            .arg(&s.momentum)
            .arg(&s.weight_decay)
            .arg(&scale)
            .arg(&first)
            .arg(&skip);
        // SAFETY: the three arrays hold params_len floats, skip one int.
        unsafe { l.launch(elementwise(self.plan.params_len)) }?;
        Ok(())
    }

    /// The step's kernels after the upload: forward, loss, backward and
    /// SGD, which the GPU skips when the loss is not finite.
    fn step_ops(&self, lr: f32, s: SgdSettings, first: bool) -> Result<(), CudaError> {
        self.run_forward(true)?;
        self.loss_and_dlogits()?;
        self.run_backward()?;
        let (lp, b, sk) = (self.loss.ptr, self.plan.batch as i32, self.skip.ptr);
        let mut l = self.stream.launch_builder(&self.k.loss_flag);
        l.arg(&lp).arg(&b).arg(&sk);
        let one = LaunchConfig {
            grid_dim: (1, 1, 1),
            block_dim: (32, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: the loss holds b floats, skip one int.
        unsafe { l.launch(one) }?;
        self.launch_sgd((lr, s, 1.0, first), self.grads.ptr, self.skip.ptr)
    }

    /// The mean of the per-row losses (waits for the step).
    fn read_loss(&mut self) -> Result<f32, CudaError> {
        let mut host = std::mem::take(&mut self.loss_host);
        let r = self.dtoh(self.loss.ptr, &mut host);
        let total: f64 = host.iter().map(|&v| v as f64).sum();
        self.loss_host = host;
        r?;
        Ok((total / self.plan.batch as f64) as f32)
    }

    /// The step's kernels captured as a graph.
    fn capture(
        &self,
        lr: f32,
        s: SgdSettings,
        first: bool,
    ) -> Result<cudarc::driver::CudaGraph, CudaError> {
        use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
        self.stream
            .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)?;
        let ops = self.step_ops(lr, s, first);
        let graph = self.stream.end_capture(CUgraphInstantiate_flags(0));
        ops?;
        graph?.ok_or_else(|| CudaError::Driver("an empty graph was captured".into()))
    }

    /// Backward, op by op, each bucket's sum over the ranks queued on
    /// NCCL's stream as soon as the compute stream has produced it.
    #[cfg(feature = "mpi")]
    fn backward_nccl(&mut self, buckets: &Buckets) -> Result<Reduction, CudaError> {
        let Some(nccl) = &self.nccl else {
            return Err(CudaError::Nccl("not joined".into()));
        };
        let timing = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
        let mut next = 0;
        let mut first_start = None;
        for (i, (op, conv)) in self.plan.ops.iter().zip(&self.convs).enumerate().rev() {
            self.backward_op(op, conv.as_ref())?;
            while let Some(&(at, lo, hi)) = buckets.ranges.get(next)
                && at == i
            {
                nccl.stream.wait(&self.stream.record_event(None)?)?;
                if first_start.is_none() {
                    first_start = Some(nccl.stream.record_event(timing)?);
                }
                // SAFETY: backward writes lo..hi of the gradients in ops
                // already queued before the event NCCL's stream waited for
                // (Buckets::new checks the order), and nothing reads
                // `summed` before the compute stream joins NCCL's below.
                unsafe { nccl.start_sum(self.grads.at(lo), self.summed.at(lo), hi - lo)? };
                next += 1;
            }
        }
        let end = nccl.stream.record_event(timing)?;
        self.stream.synchronize()?;
        let t0 = std::time::Instant::now();
        nccl.stream.synchronize()?;
        let wait_s = t0.elapsed().as_secs_f64();
        self.stream.join(&nccl.stream)?;
        let allreduce_s = match first_start {
            Some(start) => start.elapsed_ms(&end)? as f64 / 1e3,
            None => 0.0,
        };
        Ok(Reduction {
            allreduce_s,
            wait_s,
        })
    }

    /// Backward, then the gradients summed over the ranks through host
    /// memory by `comm` (where NCCL is not there): correct, not overlapped.
    fn backward_through_host(
        &mut self,
        comm: &mut dyn Communicator,
    ) -> Result<Reduction, CudaError> {
        self.run_backward()?;
        let mut grads = vec![0f32; self.plan.params_len];
        self.dtoh(self.grads.ptr, &mut grads)?;
        let t0 = std::time::Instant::now();
        comm.sum_f32(&mut grads);
        let s = t0.elapsed().as_secs_f64();
        self.htod(&grads, self.summed.ptr)?;
        Ok(Reduction {
            allreduce_s: s,
            wait_s: s,
        })
    }
}

impl From<CudaError> for EngineError {
    fn from(e: CudaError) -> Self {
        match e {
            CudaError::Engine(e) => e,
            e => EngineError::Backend(format!("CUDA backend: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Engine;
    use dfdx::prelude::BuildModule;

    /// The kernels compile with NVRTC (needs libnvrtc on the library path,
    /// e.g. from the `nvidia-cuda-nvrtc` wheel; no GPU).
    #[test]
    fn kernels_compile_where_nvrtc_is() {
        match compile_kernels(9, 0) {
            Ok(ptx) => assert!(ptx.to_src().contains(".entry bn_apply")),
            Err(CudaError::MissingLibrary(name)) => eprintln!("{name} not found: not compiled"),
            Err(e) => panic!("{e}"),
        }
    }

    /// No GPU (or no driver): an error naming what is missing, no panic.
    #[test]
    fn no_gpu_is_an_error() {
        if unsafe { cudarc::driver::sys::is_culib_present() } {
            return;
        }
        let dev = dfdx::prelude::Cpu::default();
        let model = crate::model::cifar::ResNet20::<10, f32, dfdx::prelude::Cpu>::build(&dev);
        let plan = Engine::lower(&model, 2, (32, 32)).unwrap();
        let e = Cuda::new(plan, 0, Precision::Fp32).unwrap_err();
        assert!(matches!(e, CudaError::MissingLibrary(_)), "{e}");
    }

    #[test]
    fn bf16_is_refused_until_built() {
        let dev = dfdx::prelude::Cpu::default();
        let model = crate::model::cifar::ResNet20::<10, f32, dfdx::prelude::Cpu>::build(&dev);
        let plan = Engine::lower(&model, 2, (32, 32)).unwrap();
        let e = Cuda::new(plan, 0, Precision::Bf16).unwrap_err();
        assert!(matches!(e, CudaError::Unsupported(Precision::Bf16)), "{e}");
    }
}
