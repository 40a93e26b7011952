//! cuDNN's side of a convolution: descriptors (NHWC), the algorithms
//! chosen once per shape with `cudnnFind*` (the fastest deterministic one
//! within the workspace limit), the workspace each needs.

use super::{CudaError, Precision, WORKSPACE_LIMIT, dnn_ok};
use crate::engine::plan::ConvGeom;
use cudarc::cudnn::sys as dnn;

/// The algorithms found for each (geometry, input gradient needed): a
/// shape is searched once however often the network repeats it.
pub(super) type AlgoCache = std::collections::HashMap<
    (ConvGeom, bool),
    (
        dnn::cudnnConvolutionFwdAlgo_t,
        Option<dnn::cudnnConvolutionBwdDataAlgo_t>,
        dnn::cudnnConvolutionBwdFilterAlgo_t,
    ),
>;

/// One convolution's cuDNN descriptors and algorithms.
pub(super) struct ConvDnn {
    pub(super) x: dnn::cudnnTensorDescriptor_t,
    pub(super) y: dnn::cudnnTensorDescriptor_t,
    pub(super) w: dnn::cudnnFilterDescriptor_t,
    pub(super) conv: dnn::cudnnConvolutionDescriptor_t,
    pub(super) fwd: dnn::cudnnConvolutionFwdAlgo_t,
    pub(super) bwd_data: Option<dnn::cudnnConvolutionBwdDataAlgo_t>,
    pub(super) bwd_filter: dnn::cudnnConvolutionBwdFilterAlgo_t,
    /// Offset of its `[o][k][k][c]` weight in the transposed-weight buffer.
    pub(super) wt: usize,
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
    pub(super) fn new(
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
    pub(super) fn workspace(&self, h: dnn::cudnnHandle_t) -> Result<usize, CudaError> {
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
