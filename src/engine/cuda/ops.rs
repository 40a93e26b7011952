//! Each op of the plan forward and backward on the GPU: convolutions
//! through cuDNN, the classifier through cuBLAS, everything else in the
//! kernels of `kernels.cu`.

use super::conv::ConvDnn;
use super::{Cuda, CudaError, blas_ok, bn_chunks, dnn_ok, elementwise};
use crate::engine::plan::{ConvGeom, GradOut, Op};
use cudarc::cublas::sys as blas;
use cudarc::cudnn::sys as dnn;
use cudarc::driver::sys::CUdeviceptr;
use cudarc::driver::{LaunchConfig, PushKernelArg};
use std::ffi::c_void;

impl Cuda {
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
    pub(super) fn run_forward(&self, train: bool) -> Result<(), CudaError> {
        self.ctx.bind_to_thread()?;
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
    pub(super) fn loss_and_dlogits(&self) -> Result<(), CudaError> {
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

    pub(super) fn run_backward(&self) -> Result<(), CudaError> {
        self.ctx.bind_to_thread()?;
        for (op, conv) in self.plan.ops.iter().zip(&self.convs).rev() {
            self.backward_op(op, conv.as_ref())?;
        }
        Ok(())
    }

    pub(super) fn backward_op(&self, op: &Op, conv: Option<&ConvDnn>) -> Result<(), CudaError> {
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
}

/// Max pool kernel arguments: b, h, w, c, oh, ow, k, s, p.
fn dims(g: &ConvGeom) -> [i32; 9] {
    [g.b, g.h, g.w, g.c, g.oh, g.ow, g.k, g.s, g.p].map(|v| v as i32)
}

/// Shortcut kernel arguments: b, h, w, c, oh, ow, o, s.
fn shortcut_dims(g: &ConvGeom) -> [i32; 8] {
    [g.b, g.h, g.w, g.c, g.oh, g.ow, g.o, g.s].map(|v| v as i32)
}
