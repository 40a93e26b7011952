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
//! The host side is the CPU [`Engine`]: a [`CudaEngine`] starts from one
//! (its plan, parameters, statistics and momentum) and copies its state
//! back into one ([`CudaEngine::download`]), so checkpoints, the dfdx
//! model and the tests go through the code they already use.

use super::plan::{ConvGeom, GradOut, Op, Plan};
use super::{Engine, EngineError, SgdSettings};
use cudarc::cublas::sys as blas;
use cudarc::cudnn::sys as dnn;
use cudarc::driver::sys::CUdeviceptr;
use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, LaunchConfig, PushKernelArg,
};
use std::ffi::c_void;
use std::sync::Arc;

/// The kernels' source (CUDA C, compiled by NVRTC at start-up).
pub const KERNELS: &str = include_str!("cuda_kernels.cu");

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

/// The algorithms found for each (geometry, input gradient needed): a
/// shape is searched once however often the network repeats it.
type AlgoCache = std::collections::HashMap<
    (ConvGeom, bool),
    (
        dnn::cudnnConvolutionFwdAlgo_t,
        Option<dnn::cudnnConvolutionBwdDataAlgo_t>,
        dnn::cudnnConvolutionBwdFilterAlgo_t,
    ),
>;

/// One convolution's cuDNN descriptors and algorithms.
struct ConvDnn {
    x: dnn::cudnnTensorDescriptor_t,
    y: dnn::cudnnTensorDescriptor_t,
    w: dnn::cudnnFilterDescriptor_t,
    conv: dnn::cudnnConvolutionDescriptor_t,
    fwd: dnn::cudnnConvolutionFwdAlgo_t,
    bwd_data: Option<dnn::cudnnConvolutionBwdDataAlgo_t>,
    bwd_filter: dnn::cudnnConvolutionBwdFilterAlgo_t,
    /// Offset of its `[o][k][k][c]` weight in the transposed-weight buffer.
    wt: usize,
}

impl Drop for ConvDnn {
    fn drop(&mut self) {
        // SAFETY: created by `ConvDnn::new` and destroyed once, here.
        unsafe {
            dnn::cudnnDestroyTensorDescriptor(self.x);
            dnn::cudnnDestroyTensorDescriptor(self.y);
            dnn::cudnnDestroyFilterDescriptor(self.w);
            dnn::cudnnDestroyConvolutionDescriptor(self.conv);
        }
    }
}

fn tensor_desc(
    n: usize,
    c: usize,
    h: usize,
    w: usize,
) -> Result<dnn::cudnnTensorDescriptor_t, CudaError> {
    let mut d = std::ptr::null_mut();
    // SAFETY: plain descriptor calls on a descriptor of our own.
    unsafe {
        dnn_ok(
            "cudnnCreateTensorDescriptor",
            dnn::cudnnCreateTensorDescriptor(&mut d),
        )?;
        dnn_ok(
            "cudnnSetTensor4dDescriptor",
            dnn::cudnnSetTensor4dDescriptor(
                d,
                dnn::cudnnTensorFormat_t::CUDNN_TENSOR_NHWC,
                dnn::cudnnDataType_t::CUDNN_DATA_FLOAT,
                n as i32,
                c as i32,
                h as i32,
                w as i32,
            ),
        )?;
    }
    Ok(d)
}

impl ConvDnn {
    fn new(
        h: dnn::cudnnHandle_t,
        g: &ConvGeom,
        needs_dx: bool,
        precision: Precision,
        wt: usize,
        found: &mut AlgoCache,
    ) -> Result<Self, CudaError> {
        let x = tensor_desc(g.b, g.c, g.h, g.w)?;
        let y = tensor_desc(g.b, g.o, g.oh, g.ow)?;
        let mut w = std::ptr::null_mut();
        let mut conv = std::ptr::null_mut();
        // SAFETY: descriptor calls on descriptors of our own; the Find calls
        // allocate and free their own buffers.
        unsafe {
            dnn_ok(
                "cudnnCreateFilterDescriptor",
                dnn::cudnnCreateFilterDescriptor(&mut w),
            )?;
            dnn_ok(
                "cudnnSetFilter4dDescriptor",
                dnn::cudnnSetFilter4dDescriptor(
                    w,
                    dnn::cudnnDataType_t::CUDNN_DATA_FLOAT,
                    dnn::cudnnTensorFormat_t::CUDNN_TENSOR_NHWC,
                    g.o as i32,
                    g.c as i32,
                    g.k as i32,
                    g.k as i32,
                ),
            )?;
            dnn_ok(
                "cudnnCreateConvolutionDescriptor",
                dnn::cudnnCreateConvolutionDescriptor(&mut conv),
            )?;
            dnn_ok(
                "cudnnSetConvolution2dDescriptor",
                dnn::cudnnSetConvolution2dDescriptor(
                    conv,
                    g.p as i32,
                    g.p as i32,
                    g.s as i32,
                    g.s as i32,
                    1,
                    1,
                    dnn::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
                    dnn::cudnnDataType_t::CUDNN_DATA_FLOAT,
                ),
            )?;
            let math = match precision {
                Precision::Fp32 => dnn::cudnnMathType_t::CUDNN_FMA_MATH,
                _ => dnn::cudnnMathType_t::CUDNN_DEFAULT_MATH,
            };
            dnn_ok(
                "cudnnSetConvolutionMathType",
                dnn::cudnnSetConvolutionMathType(conv, math),
            )?;
        }
        let mut me = ConvDnn {
            x,
            y,
            w,
            conv,
            fwd: dnn::cudnnConvolutionFwdAlgo_t::CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM,
            bwd_data: None,
            bwd_filter: dnn::cudnnConvolutionBwdFilterAlgo_t::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0,
            wt,
        };
        if let Some(&(fwd, bwd_data, bwd_filter)) = found.get(&(*g, needs_dx)) {
            (me.fwd, me.bwd_data, me.bwd_filter) = (fwd, bwd_data, bwd_filter);
            return Ok(me);
        }
        // SAFETY: as above.
        unsafe {
            let mut n = 0;
            let mut perf = [std::mem::zeroed::<dnn::cudnnConvolutionFwdAlgoPerf_t>(); 10];
            dnn_ok(
                "cudnnFindConvolutionForwardAlgorithm",
                dnn::cudnnFindConvolutionForwardAlgorithm(
                    h,
                    x,
                    w,
                    conv,
                    y,
                    perf.len() as i32,
                    &mut n,
                    perf.as_mut_ptr(),
                ),
            )?;
            me.fwd = pick(&perf[..n as usize], |p| (p.status, p.memory, p.determinism))
                .map(|p| p.algo)
                .ok_or(CudaError::NoAlgorithm {
                    what: "forward",
                    geom: *g,
                })?;
            let mut perf = [std::mem::zeroed::<dnn::cudnnConvolutionBwdFilterAlgoPerf_t>(); 10];
            dnn_ok(
                "cudnnFindConvolutionBackwardFilterAlgorithm",
                dnn::cudnnFindConvolutionBackwardFilterAlgorithm(
                    h,
                    x,
                    y,
                    conv,
                    w,
                    perf.len() as i32,
                    &mut n,
                    perf.as_mut_ptr(),
                ),
            )?;
            me.bwd_filter = pick(&perf[..n as usize], |p| (p.status, p.memory, p.determinism))
                .map(|p| p.algo)
                .ok_or(CudaError::NoAlgorithm {
                    what: "backward-filter",
                    geom: *g,
                })?;
            if needs_dx {
                let mut perf = [std::mem::zeroed::<dnn::cudnnConvolutionBwdDataAlgoPerf_t>(); 10];
                dnn_ok(
                    "cudnnFindConvolutionBackwardDataAlgorithm",
                    dnn::cudnnFindConvolutionBackwardDataAlgorithm(
                        h,
                        w,
                        y,
                        conv,
                        x,
                        perf.len() as i32,
                        &mut n,
                        perf.as_mut_ptr(),
                    ),
                )?;
                me.bwd_data = Some(
                    pick(&perf[..n as usize], |p| (p.status, p.memory, p.determinism))
                        .map(|p| p.algo)
                        .ok_or(CudaError::NoAlgorithm {
                            what: "backward-data",
                            geom: *g,
                        })?,
                );
            }
        }
        found.insert((*g, needs_dx), (me.fwd, me.bwd_data, me.bwd_filter));
        Ok(me)
    }

    /// Workspace bytes of the chosen algorithms.
    fn workspace(&self, h: dnn::cudnnHandle_t) -> Result<usize, CudaError> {
        let (mut a, mut b, mut c) = (0, 0, 0);
        // SAFETY: size queries on our descriptors.
        unsafe {
            dnn_ok(
                "cudnnGetConvolutionForwardWorkspaceSize",
                dnn::cudnnGetConvolutionForwardWorkspaceSize(
                    h, self.x, self.w, self.conv, self.y, self.fwd, &mut a,
                ),
            )?;
            dnn_ok(
                "cudnnGetConvolutionBackwardFilterWorkspaceSize",
                dnn::cudnnGetConvolutionBackwardFilterWorkspaceSize(
                    h,
                    self.x,
                    self.y,
                    self.conv,
                    self.w,
                    self.bwd_filter,
                    &mut b,
                ),
            )?;
            if let Some(algo) = self.bwd_data {
                dnn_ok(
                    "cudnnGetConvolutionBackwardDataWorkspaceSize",
                    dnn::cudnnGetConvolutionBackwardDataWorkspaceSize(
                        h, self.w, self.y, self.conv, self.x, algo, &mut c,
                    ),
                )?;
            }
        }
        Ok(a.max(b).max(c))
    }
}

/// The first (fastest) successful algorithm within the workspace limit,
/// deterministic if any is.
fn pick<P: Copy>(
    perf: &[P],
    key: impl Fn(&P) -> (dnn::cudnnStatus_t, usize, dnn::cudnnDeterminism_t),
) -> Option<P> {
    let ok = |p: &&P| {
        let (s, m, _) = key(p);
        s == dnn::cudnnStatus_t::CUDNN_STATUS_SUCCESS && m <= WORKSPACE_LIMIT
    };
    perf.iter()
        .filter(ok)
        .find(|p| key(p).2 == dnn::cudnnDeterminism_t::CUDNN_DETERMINISTIC)
        .or_else(|| perf.iter().find(ok))
        .copied()
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

/// A model's training step on the GPU, planned for one batch and input size.
pub struct CudaEngine {
    plan: Plan,
    precision: Precision,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    k: Kernels,
    dnn: dnn::cudnnHandle_t,
    blas: blas::cublasHandle_t,
    convs: Vec<Option<ConvDnn>>,
    arena: Dev<f32>,
    params: Dev<f32>,
    grads: Dev<f32>,
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
    skip: Dev<i32>,
    loss_host: Vec<f32>,
    has_velocity: bool,
    /// The step captured as a CUDA graph, with the (lr bits, first step)
    /// it was captured for.
    graph: Option<(u32, bool, cudarc::driver::CudaGraph)>,
    /// Replay each training step as a CUDA graph (captured at the first
    /// step and again whenever the learning rate changes).
    pub graphs: bool,
    /// SGD settings.
    pub sgd: SgdSettings,
}

impl std::fmt::Debug for CudaEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaEngine")
            .field("ops", &self.plan.ops.len())
            .field("precision", &self.precision)
            .field("device_bytes", &self.device_bytes())
            .finish()
    }
}

impl Drop for CudaEngine {
    fn drop(&mut self) {
        self.convs.clear();
        // SAFETY: the handles are ours, created in `new`, destroyed once.
        unsafe {
            dnn::cudnnDestroy(self.dnn);
            blas::cublasDestroy_v2(self.blas);
        }
    }
}

impl CudaEngine {
    /// The plan, parameters, running statistics and momentum of `host`,
    /// on GPU `ordinal`.
    pub fn new(host: &Engine, ordinal: usize, precision: Precision) -> Result<Self, CudaError> {
        if precision == Precision::Bf16 {
            return Err(CudaError::Unsupported(precision));
        }
        check_libraries(true)?;
        let plan = host.plan.without_scratch();
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
        let mut me = CudaEngine {
            arena: z32(plan.arena_len)?,
            params: z32(plan.params_len)?,
            grads: z32(plan.params_len)?,
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
            graph: None,
            graphs: false,
            loss_host: vec![0.0; plan.batch],
            has_velocity: false,
            sgd: host.sgd,
            convs,
            dnn: h,
            blas: b,
            k,
            precision,
            plan,
            ctx,
            stream,
        };
        me.upload(host)?;
        Ok(me)
    }

    /// Copies `host`'s parameters, running statistics and momentum in.
    pub fn upload(&mut self, host: &Engine) -> Result<(), CudaError> {
        self.htod(&host.params, self.params.ptr)?;
        self.htod(&host.states, self.states.ptr)?;
        self.htod(&host.velocity, self.velocity.ptr)?;
        self.has_velocity = host.has_velocity;
        self.sgd = host.sgd;
        self.stream.synchronize()?;
        Ok(())
    }

    /// Copies the parameters, running statistics, momentum and the last
    /// step's gradients into `host` (whose [`Engine::write_to`],
    /// [`Engine::gradients`] and [`Engine::momentum`] then give them).
    pub fn download(&self, host: &mut Engine) -> Result<(), CudaError> {
        self.dtoh(self.params.ptr, &mut host.params)?;
        self.dtoh(self.grads.ptr, &mut host.grads)?;
        self.dtoh(self.velocity.ptr, &mut host.velocity)?;
        self.dtoh(self.states.ptr, &mut host.states)?;
        host.has_velocity = self.has_velocity;
        Ok(())
    }

    /// The plan (without the CPU's scratch).
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// The precision.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The GPU's name.
    pub fn device_name(&self) -> String {
        self.ctx.name().unwrap_or_else(|e| format!("({e:?})"))
    }

    /// Bytes of device memory the engine allocated (arena, parameters,
    /// gradients, momentum, statistics, weight copies, workspace).
    pub fn device_bytes(&self) -> usize {
        self.arena.bytes()
            + 3 * self.params.bytes()
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

    fn check(&self, images: &[f32], labels: Option<&[u32]>) -> Result<(), EngineError> {
        super::check_batch(&self.plan, images, labels)
    }

    /// out (cols x rows) = in (rows x cols) transposed.
    fn transpose(
        &self,
        input: CUdeviceptr,
        out: CUdeviceptr,
        rows: usize,
        cols: usize,
    ) -> Result<(), CudaError> {
        let (r, c) = (rows as i32, cols as i32);
        let cfg = LaunchConfig {
            grid_dim: (cols.div_ceil(32) as u32, rows.div_ceil(32) as u32, 1),
            block_dim: (32, 8, 1),
            shared_mem_bytes: 0,
        };
        let mut l = self.stream.launch_builder(&self.k.transpose);
        l.arg(&input).arg(&out).arg(&r).arg(&c);
        // SAFETY: both buffers hold rows * cols floats (the callers').
        unsafe { l.launch(cfg) }?;
        Ok(())
    }

    /// Every op forward, in order, on the input already uploaded.
    fn forward(&self, train: bool) -> Result<(), CudaError> {
        for (op, conv) in self.plan.ops.iter().zip(&self.convs) {
            if let (Op::Conv { g, w, .. }, Some(cd)) = (op, conv) {
                self.transpose(self.param(*w), self.wt.at(cd.wt), g.cols(), g.o)?;
            }
        }
        for (op, conv) in self.plan.ops.iter().zip(&self.convs) {
            self.forward_op(op, conv.as_ref(), train)?;
        }
        Ok(())
    }

    fn forward_op(&self, op: &Op, conv: Option<&ConvDnn>, train: bool) -> Result<(), CudaError> {
        let s = &self.stream;
        match *op {
            Op::Conv { x, y, .. } => {
                let cd = conv.expect("every conv has its descriptors");
                let (alpha, beta) = (1f32, 0f32);
                // SAFETY: the descriptors describe these buffers (the plan's).
                unsafe {
                    dnn_ok(
                        "cudnnConvolutionForward",
                        dnn::cudnnConvolutionForward(
                            self.dnn,
                            &alpha as *const f32 as *const c_void,
                            cd.x,
                            self.buf(x) as *const c_void,
                            cd.w,
                            self.wt.at(cd.wt) as *const c_void,
                            cd.conv,
                            cd.fwd,
                            self.workspace.ptr as *mut c_void,
                            self.workspace.len,
                            &beta as *const f32 as *const c_void,
                            cd.y,
                            self.buf(y) as *mut c_void,
                        ),
                    )?;
                }
            }
            Op::BatchNorm {
                rows,
                c,
                x,
                y,
                gamma,
                beta,
                mean,
                var,
                momentum,
                epsilon,
                residual,
                relu,
                saved,
                ..
            } => {
                let (xp, yp, sp) = (self.buf(x), self.buf(y), self.buf(saved));
                let (ci, ri) = (c as i32, rows as i32);
                let small = LaunchConfig {
                    grid_dim: (c.div_ceil(128) as u32, 1, 1),
                    block_dim: (128, 1, 1),
                    shared_mem_bytes: 0,
                };
                if train {
                    let (per, chunks) = bn_chunks(rows);
                    let (per, chunks_i) = (per as i32, chunks as i32);
                    let cfg = LaunchConfig {
                        grid_dim: (c.div_ceil(32) as u32, chunks as u32, 1),
                        block_dim: (32, 8, 1),
                        shared_mem_bytes: 0,
                    };
                    let pp = self.partial.ptr;
                    for mode in [0i32, 1] {
                        let mut l = s.launch_builder(&self.k.bn_sums);
                        l.arg(&xp)
                            .arg(&sp)
                            .arg(&pp)
                            .arg(&ri)
                            .arg(&ci)
                            .arg(&per)
                            .arg(&mode);
                        // SAFETY: x holds rows * c floats, partial chunks * c.
                        unsafe { l.launch(cfg) }?;
                        if mode == 0 {
                            let mut l = s.launch_builder(&self.k.bn_mean);
                            let m64 = self.mean64.ptr;
                            l.arg(&pp)
                                .arg(&m64)
                                .arg(&sp)
                                .arg(&chunks_i)
                                .arg(&ci)
                                .arg(&ri);
                            // SAFETY: per-channel, c threads.
                            unsafe { l.launch(small) }?;
                        }
                    }
                    let (rm, rv, m64) = (self.state(mean), self.state(var), self.mean64.ptr);
                    let mut l = s.launch_builder(&self.k.bn_var);
                    l.arg(&pp)
                        .arg(&m64)
                        .arg(&sp)
                        .arg(&rm)
                        .arg(&rv)
                        .arg(&chunks_i)
                        .arg(&ci)
                        .arg(&ri)
                        .arg(&momentum)
                        .arg(&epsilon);
                    // SAFETY: per-channel, c threads.
                    unsafe { l.launch(small) }?;
                } else {
                    let (rm, rv) = (self.state(mean), self.state(var));
                    let mut l = s.launch_builder(&self.k.bn_eval_stats);
                    l.arg(&rm).arg(&rv).arg(&sp).arg(&ci).arg(&epsilon);
                    // SAFETY: per-channel, c threads.
                    unsafe { l.launch(small) }?;
                }
                let res: CUdeviceptr = residual.map_or(0, |(r, _)| self.buf(r));
                let (g, b) = (self.param(gamma), self.param(beta));
                let n = (rows * c) as i64;
                let relu = relu as i32;
                let mut l = s.launch_builder(&self.k.bn_apply);
                l.arg(&xp)
                    .arg(&yp)
                    .arg(&res)
                    .arg(&sp)
                    .arg(&g)
                    .arg(&b)
                    .arg(&n)
                    .arg(&ci)
                    .arg(&relu);
                // SAFETY: x, y and the residual hold rows * c floats.
                unsafe { l.launch(elementwise(rows * c)) }?;
            }
            Op::MaxPool {
                g, x, y, argmax, ..
            } => {
                let (xp, yp, ap) = (self.buf(x), self.buf(y), self.buf(argmax));
                let d = dims(&g);
                let mut l = s.launch_builder(&self.k.maxpool_fwd);
                l.arg(&xp).arg(&yp).arg(&ap);
                for v in &d {
                    l.arg(v);
                }
                // SAFETY: the plan's buffers for this geometry.
                unsafe { l.launch(elementwise(g.b * g.oh * g.ow * g.c)) }?;
            }
            Op::ShortcutA { g, x, y, .. } => {
                let (xp, yp) = (self.buf(x), self.buf(y));
                let d = shortcut_dims(&g);
                let mut l = s.launch_builder(&self.k.shortcut_fwd);
                l.arg(&xp).arg(&yp);
                for v in &d {
                    l.arg(v);
                }
                // SAFETY: the plan's buffers for this geometry.
                unsafe { l.launch(elementwise(g.b * g.oh * g.ow * g.o)) }?;
            }
            Op::AvgPool { b, hw, c, x, y, .. } => {
                let (xp, yp) = (self.buf(x), self.buf(y));
                let (bi, hwi, ci) = (b as i32, hw as i32, c as i32);
                let mut l = s.launch_builder(&self.k.avgpool_fwd);
                l.arg(&xp).arg(&yp).arg(&bi).arg(&hwi).arg(&ci);
                // SAFETY: x holds b * hw * c floats, y b * c.
                unsafe { l.launch(elementwise(b * c)) }?;
            }
            Op::Linear {
                b,
                c,
                n,
                x,
                y,
                w,
                bias,
                ..
            } => {
                let (xp, yp, wp, bp) = (self.buf(x), self.buf(y), self.param(w), self.param(bias));
                let (bi, ni) = (b as i32, n as i32);
                let mut l = s.launch_builder(&self.k.bias_rows);
                l.arg(&bp).arg(&yp).arg(&bi).arg(&ni);
                // SAFETY: y holds b * n floats.
                unsafe { l.launch(elementwise(b * n)) }?;
                // Row-major y (b x n) += x (b x c) W (c x n): column-major
                // y^T = W^T x^T, W^T being W's row-major storage.
                self.sgemm((false, false), (n, b, c), (wp, n), (xp, c), 1.0, (yp, n))?;
            }
        }
        Ok(())
    }

    /// Column-major `C (m x n) = op(A) op(B) + beta C` (cuBLAS's sgemm).
    #[allow(clippy::too_many_arguments)]
    fn sgemm(
        &self,
        (ta, tb): (bool, bool),
        (m, n, k): (usize, usize, usize),
        (a, lda): (CUdeviceptr, usize),
        (b, ldb): (CUdeviceptr, usize),
        beta: f32,
        (c, ldc): (CUdeviceptr, usize),
    ) -> Result<(), CudaError> {
        let op = |t: bool| {
            if t {
                blas::cublasOperation_t::CUBLAS_OP_T
            } else {
                blas::cublasOperation_t::CUBLAS_OP_N
            }
        };
        let alpha = 1f32;
        // SAFETY: the callers' buffers have the sizes these dimensions say.
        unsafe {
            blas_ok(
                "cublasSgemm",
                blas::cublasSgemm_v2(
                    self.blas,
                    op(ta),
                    op(tb),
                    m as i32,
                    n as i32,
                    k as i32,
                    &alpha,
                    a as *const f32,
                    lda as i32,
                    b as *const f32,
                    ldb as i32,
                    &beta,
                    c as *mut f32,
                    ldc as i32,
                ),
            )
        }
    }

    /// The loss kernel: per-row losses and the logits' gradient.
    fn loss_and_dlogits(&self) -> Result<(), CudaError> {
        let (z, dz, lp, lab) = (
            self.buf(self.plan.logits),
            self.buf(self.plan.dlogits),
            self.loss.ptr,
            self.labels.ptr,
        );
        let (n, b) = (self.plan.classes as i32, self.plan.batch as i32);
        let mut l = self.stream.launch_builder(&self.k.softmax_ce);
        l.arg(&z).arg(&lab).arg(&dz).arg(&lp).arg(&n).arg(&b);
        let cfg = LaunchConfig {
            grid_dim: (self.plan.batch as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: logits and their gradient hold b * n floats, the loss b.
        unsafe { l.launch(cfg) }?;
        Ok(())
    }

    fn backward(&self) -> Result<(), CudaError> {
        for (op, conv) in self.plan.ops.iter().zip(&self.convs).rev() {
            self.backward_op(op, conv.as_ref())?;
        }
        Ok(())
    }

    fn backward_op(&self, op: &Op, conv: Option<&ConvDnn>) -> Result<(), CudaError> {
        let s = &self.stream;
        let acc = |d: GradOut| d.accumulate as i32;
        match *op {
            Op::Conv {
                g, x, w, dx, dy, ..
            } => {
                let cd = conv.expect("every conv has its descriptors");
                let (one, zero) = (1f32, 0f32);
                // SAFETY: the descriptors describe these buffers (the plan's).
                unsafe {
                    dnn_ok(
                        "cudnnConvolutionBackwardFilter",
                        dnn::cudnnConvolutionBackwardFilter(
                            self.dnn,
                            &one as *const f32 as *const c_void,
                            cd.x,
                            self.buf(x) as *const c_void,
                            cd.y,
                            self.buf(dy) as *const c_void,
                            cd.conv,
                            cd.bwd_filter,
                            self.workspace.ptr as *mut c_void,
                            self.workspace.len,
                            &zero as *const f32 as *const c_void,
                            cd.w,
                            self.dwt.ptr as *mut c_void,
                        ),
                    )?;
                }
                self.transpose(self.dwt.ptr, self.grad(w), g.o, g.cols())?;
                if let (Some(d), Some(algo)) = (dx, cd.bwd_data) {
                    let beta = if d.accumulate { 1f32 } else { 0f32 };
                    // SAFETY: as above.
                    unsafe {
                        dnn_ok(
                            "cudnnConvolutionBackwardData",
                            dnn::cudnnConvolutionBackwardData(
                                self.dnn,
                                &one as *const f32 as *const c_void,
                                cd.w,
                                self.wt.at(cd.wt) as *const c_void,
                                cd.y,
                                self.buf(dy) as *const c_void,
                                cd.conv,
                                algo,
                                self.workspace.ptr as *mut c_void,
                                self.workspace.len,
                                &beta as *const f32 as *const c_void,
                                cd.x,
                                self.buf(d.buf) as *mut c_void,
                            ),
                        )?;
                    }
                }
            }
            Op::BatchNorm {
                rows,
                c,
                x,
                y,
                gamma,
                beta,
                residual,
                relu,
                dx,
                dy,
                saved,
                ..
            } => {
                let (xp, yp, dyp, sp, pp) = (
                    self.buf(x),
                    self.buf(y),
                    self.buf(dy),
                    self.buf(saved),
                    self.partial.ptr,
                );
                let (per, chunks) = bn_chunks(rows);
                let (ci, ri, per, chunks_i, relu) = (
                    c as i32,
                    rows as i32,
                    per as i32,
                    chunks as i32,
                    relu as i32,
                );
                let cfg = LaunchConfig {
                    grid_dim: (c.div_ceil(32) as u32, chunks as u32, 1),
                    block_dim: (32, 8, 1),
                    shared_mem_bytes: 0,
                };
                let mut l = s.launch_builder(&self.k.bn_bwd_sums);
                l.arg(&xp)
                    .arg(&yp)
                    .arg(&dyp)
                    .arg(&sp)
                    .arg(&pp)
                    .arg(&ri)
                    .arg(&ci)
                    .arg(&per)
                    .arg(&relu);
                // SAFETY: x, y, dy hold rows * c floats, partial chunks * 2c.
                unsafe { l.launch(cfg) }?;
                let (gp, dg, db, cp) = (
                    self.param(gamma),
                    self.grad(gamma),
                    self.grad(beta),
                    self.coef.ptr,
                );
                let mut l = s.launch_builder(&self.k.bn_bwd_final);
                l.arg(&pp)
                    .arg(&sp)
                    .arg(&gp)
                    .arg(&dg)
                    .arg(&db)
                    .arg(&cp)
                    .arg(&chunks_i)
                    .arg(&ci)
                    .arg(&ri);
                let small = LaunchConfig {
                    grid_dim: (c.div_ceil(128) as u32, 1, 1),
                    block_dim: (128, 1, 1),
                    shared_mem_bytes: 0,
                };
                // SAFETY: per-channel, c threads.
                unsafe { l.launch(small) }?;
                let dres = residual.and_then(|(_, d)| d);
                let (dxp, dxa) = dx.map_or((0, 0), |d| (self.buf(d.buf), acc(d)));
                let (drp, dra) = dres.map_or((0, 0), |d| (self.buf(d.buf), acc(d)));
                if dxp == 0 && drp == 0 {
                    return Ok(());
                }
                let n = (rows * c) as i64;
                let mut l = s.launch_builder(&self.k.bn_bwd_apply);
                l.arg(&xp)
                    .arg(&yp)
                    .arg(&dyp)
                    .arg(&sp)
                    .arg(&cp)
                    .arg(&dxp)
                    .arg(&dxa)
                    .arg(&drp)
                    .arg(&dra)
                    .arg(&n)
                    .arg(&ci)
                    .arg(&relu);
                // SAFETY: every buffer holds rows * c floats.
                unsafe { l.launch(elementwise(rows * c)) }?;
            }
            Op::MaxPool {
                g, dx, dy, argmax, ..
            } => {
                let Some(d) = dx else { return Ok(()) };
                let (dyp, ap, dxp, a) = (self.buf(dy), self.buf(argmax), self.buf(d.buf), acc(d));
                let dm = dims(&g);
                let mut l = s.launch_builder(&self.k.maxpool_bwd);
                l.arg(&dyp).arg(&ap).arg(&dxp).arg(&a);
                for v in &dm {
                    l.arg(v);
                }
                // SAFETY: the plan's buffers for this geometry.
                unsafe { l.launch(elementwise(g.b * g.h * g.w * g.c)) }?;
            }
            Op::ShortcutA { g, dx, dy, .. } => {
                let Some(d) = dx else { return Ok(()) };
                let (dyp, dxp, a) = (self.buf(dy), self.buf(d.buf), acc(d));
                let dm = shortcut_dims(&g);
                let mut l = s.launch_builder(&self.k.shortcut_bwd);
                l.arg(&dyp).arg(&dxp).arg(&a);
                for v in &dm {
                    l.arg(v);
                }
                // SAFETY: the plan's buffers for this geometry.
                unsafe { l.launch(elementwise(g.b * g.h * g.w * g.c)) }?;
            }
            Op::AvgPool {
                b, hw, c, dx, dy, ..
            } => {
                let Some(d) = dx else { return Ok(()) };
                let (dyp, dxp, a) = (self.buf(dy), self.buf(d.buf), acc(d));
                let (bi, hwi, ci) = (b as i32, hw as i32, c as i32);
                let mut l = s.launch_builder(&self.k.avgpool_bwd);
                l.arg(&dyp).arg(&dxp).arg(&a).arg(&bi).arg(&hwi).arg(&ci);
                // SAFETY: dy holds b * c floats, dx b * hw * c.
                unsafe { l.launch(elementwise(b * hw * c)) }?;
            }
            Op::Linear {
                b,
                c,
                n,
                x,
                w,
                bias,
                dx,
                dy,
                ..
            } => {
                let (xp, dyp, wp) = (self.buf(x), self.buf(dy), self.param(w));
                // dW (c x n, row-major) = x^T dy: column-major dW^T = dy^T x.
                self.sgemm(
                    (false, true),
                    (n, c, b),
                    (dyp, n),
                    (xp, c),
                    0.0,
                    (self.grad(w), n),
                )?;
                let (db, bi, ni) = (self.grad(bias), b as i32, n as i32);
                let mut l = s.launch_builder(&self.k.col_sums);
                l.arg(&dyp).arg(&db).arg(&bi).arg(&ni);
                // SAFETY: dy holds b * n floats, the bias gradient n.
                unsafe { l.launch(elementwise(n)) }?;
                if let Some(d) = dx {
                    // dx (b x c) = dy W^T: column-major dx^T = W dy^T.
                    let beta = if d.accumulate { 1.0 } else { 0.0 };
                    self.sgemm(
                        (true, false),
                        (c, b, n),
                        (wp, n),
                        (dyp, n),
                        beta,
                        (self.buf(d.buf), c),
                    )?;
                }
            }
        }
        Ok(())
    }

    /// The step's kernels after the upload: forward, loss, backward and
    /// (with `update`) SGD, which the GPU skips when the loss is not finite.
    fn step_ops(&self, update: Option<(f32, bool)>) -> Result<(), CudaError> {
        self.forward(true)?;
        self.loss_and_dlogits()?;
        self.backward()?;
        let Some((lr, first)) = update else {
            return Ok(());
        };
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
        let s = self.sgd;
        let (p, g, v) = (self.params.ptr, self.grads.ptr, self.velocity.ptr);
        let n = self.plan.params_len as i64;
        let first = first as i32;
        let mut l = self.stream.launch_builder(&self.k.sgd);
        l.arg(&p)
            .arg(&g)
            .arg(&v)
            .arg(&n)
            .arg(&lr)
            .arg(&s.momentum)
            .arg(&s.weight_decay)
            .arg(&first)
            .arg(&sk);
        // SAFETY: the three arrays hold params_len floats.
        unsafe { l.launch(elementwise(self.plan.params_len)) }?;
        Ok(())
    }

    fn upload_batch(&self, images: &[f32], labels: &[u32]) -> Result<(), CudaError> {
        self.check(images, Some(labels))?;
        self.htod(labels, self.labels.ptr)?;
        self.htod(images, self.buf(self.plan.x))
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

    /// The step's kernels captured as a graph (the update at `lr`).
    fn capture(&self, lr: f32, first: bool) -> Result<cudarc::driver::CudaGraph, CudaError> {
        use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
        self.stream
            .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)?;
        let ops = self.step_ops(Some((lr, first)));
        let graph = self.stream.end_capture(CUgraphInstantiate_flags(0));
        ops?;
        graph?.ok_or_else(|| CudaError::Driver("an empty graph was captured".into()))
    }

    /// Forward in training mode, the loss (mean softmax cross-entropy) and
    /// every gradient (computed whatever the loss).
    pub fn forward_backward(&mut self, images: &[f32], labels: &[u32]) -> Result<f32, CudaError> {
        self.upload_batch(images, labels)?;
        self.step_ops(None)?;
        self.read_loss()
    }

    /// One SGD step at learning rate `lr` (the update skipped when the
    /// loss is not finite, as the trainer does); returns the loss. With
    /// [`CudaEngine::graphs`], the step's kernels run as one CUDA graph.
    pub fn train_step(
        &mut self,
        images: &[f32],
        labels: &[u32],
        lr: f32,
    ) -> Result<f32, CudaError> {
        self.upload_batch(images, labels)?;
        let first = !self.has_velocity;
        let key = (lr.to_bits(), first);
        if self.graphs && self.graph.as_ref().map(|g| (g.0, g.1)) != Some(key) {
            self.graph = None;
            match self.capture(lr, first) {
                Ok(g) => self.graph = Some((key.0, key.1, g)),
                Err(e) => {
                    log::warn!("CUDA graph capture failed ({e}); running kernel by kernel");
                    self.graphs = false;
                }
            }
        }
        match (&self.graph, self.graphs) {
            (Some((_, _, g)), true) => g.launch()?,
            _ => self.step_ops(Some((lr, first)))?,
        }
        let loss = self.read_loss()?;
        if loss.is_finite() {
            self.has_velocity = true;
        }
        Ok(loss)
    }

    /// Evaluation forward (running statistics): the logits, `batch x classes`.
    pub fn eval(&mut self, images: &[f32]) -> Result<Vec<f32>, CudaError> {
        self.check(images, None)?;
        self.htod(images, self.buf(self.plan.x))?;
        self.forward(false)?;
        self.logits()
    }

    /// The logits of the last forward pass, `batch x classes`.
    pub fn logits(&self) -> Result<Vec<f32>, CudaError> {
        let mut out = vec![0f32; self.plan.batch * self.plan.classes];
        self.dtoh(self.buf(self.plan.logits), &mut out)?;
        Ok(out)
    }

    /// Waits for the GPU to finish what was queued.
    pub fn synchronize(&self) -> Result<(), CudaError> {
        self.stream.synchronize()?;
        Ok(())
    }
}

/// Max pool kernel arguments: b, h, w, c, oh, ow, k, s, p.
fn dims(g: &ConvGeom) -> [i32; 9] {
    [g.b, g.h, g.w, g.c, g.oh, g.ow, g.k, g.s, g.p].map(|v| v as i32)
}

/// Shortcut kernel arguments: b, h, w, c, oh, ow, o, s.
fn shortcut_dims(g: &ConvGeom) -> [i32; 8] {
    [g.b, g.h, g.w, g.c, g.oh, g.ow, g.o, g.s].map(|v| v as i32)
}

#[cfg(test)]
mod tests {
    use super::*;
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
        let host = Engine::new(&model, 2, (32, 32), 1).unwrap();
        let e = CudaEngine::new(&host, 0, Precision::Fp32).unwrap_err();
        assert!(matches!(e, CudaError::MissingLibrary(_)), "{e}");
    }

    #[test]
    fn bf16_is_refused_until_built() {
        let dev = dfdx::prelude::Cpu::default();
        let model = crate::model::cifar::ResNet20::<10, f32, dfdx::prelude::Cpu>::build(&dev);
        let host = Engine::new(&model, 2, (32, 32), 1).unwrap();
        let e = CudaEngine::new(&host, 0, Precision::Bf16).unwrap_err();
        assert!(matches!(e, CudaError::Unsupported(Precision::Bf16)), "{e}");
    }
}
