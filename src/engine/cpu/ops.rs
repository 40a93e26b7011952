//! Each op of the plan forward and backward on the CPU, NHWC, on all the
//! backend's threads (rayon), matrix products by [`super::sgemm`].
//!
//! Results do not depend on the number of threads: reductions run over
//! fixed chunks of rows whose partial sums (f64) are combined in order, the
//! scatter-adds (col2im, pooling) run one image per task, and the matrix
//! product splits only the output among threads, never the inner dimension.

use super::SendPtr;
use super::conv::{
    col2im, conv_grouped_backward, conv_grouped_forward, flip_weight, for_each_tap, im2col,
    tap_block,
};
use super::simd::vectorised;
use super::values::{AsF32, Values, to_bf16, widen};
use crate::engine::plan::{Buf, BufId, ConvGeom, Elem, GradOut, Op, Plan};
use crate::engine::precision::{round_bf16, round_slice_bf16};
use rayon::prelude::*;

/// Rows per reduction chunk.
pub const CHUNK_ROWS: usize = 1024;

/// The arena seen by one step: buffer `i` at `base + bufs[i].offset`.
pub struct Mem<'a> {
    base: *mut f32,
    bufs: &'a [Buf],
}

impl<'a> Mem<'a> {
    /// The arena `data` as placed by `plan`.
    pub fn new(data: &'a mut [f32], plan: &'a Plan) -> Self {
        assert!(data.len() >= plan.arena_len);
        Mem {
            base: data.as_mut_ptr(),
            bufs: &plan.bufs,
        }
    }

    fn r(&self, id: BufId) -> &'a [f32] {
        let b = &self.bufs[id];
        assert!(b.elem == Elem::F32, "{} read as f32", b.name);
        // SAFETY: the buffer lies inside the arena (checked in `new`:
        // `place` keeps every buffer below `arena_len`). Buffers whose lives
        // overlap never share memory, and an op writes only buffers other
        // than the ones it reads, so no `&mut` handed out for this op aliases it.
        unsafe { std::slice::from_raw_parts(self.base.add(b.offset), b.len) }
    }

    #[allow(clippy::mut_from_ref)]
    fn w(&self, id: BufId) -> &'a mut [f32] {
        let b = &self.bufs[id];
        assert!(b.elem == Elem::F32, "{} written as f32", b.name);
        // SAFETY: as in `r`; each op asks for each buffer it writes once.
        unsafe { std::slice::from_raw_parts_mut(self.base.add(b.offset), b.len) }
    }

    /// Buffer `id` as stored (f32 or 16 bits).
    fn values(&self, id: BufId) -> Values<'a> {
        let b = &self.bufs[id];
        match b.elem {
            Elem::F32 => Values::F32(self.r(id)),
            // SAFETY: as in `r`; a 16-bit buffer takes `b.floats()` floats
            // of the arena (4-byte aligned, so 2-byte aligned).
            Elem::Bf16 => Values::Bf16(unsafe {
                std::slice::from_raw_parts(self.base.add(b.offset).cast::<u16>(), b.len)
            }),
        }
    }

    /// 16-bit buffer `id`, to write.
    #[allow(clippy::mut_from_ref)]
    fn w16(&self, id: BufId) -> &'a mut [u16] {
        let b = &self.bufs[id];
        assert_eq!(b.elem, Elem::Bf16, "{} written as 16 bits", b.name);
        // SAFETY: as in `values`; each op asks for each buffer it writes once.
        unsafe { std::slice::from_raw_parts_mut(self.base.add(b.offset).cast::<u16>(), b.len) }
    }
}

/// What the ops read and write besides the arena.
pub struct Tensors<'a> {
    /// Parameters (flat).
    pub params: &'a [f32],
    /// The weights convolutions and the classifier multiply by: `params`
    /// in fp32 and on a bf16 kernel (which rounds as it packs), a
    /// bf16-rounded copy of it in bf16 on the fp32 kernels (same offsets).
    pub weights: &'a [f32],
    /// bf16 operands: convolution and classifier inputs and output
    /// gradients are rounded in place before their products
    /// ([`crate::engine::precision`]).
    pub bf16: bool,
    /// In bf16, by buffer: its writer stores it rounded (BatchNorm's
    /// output, max pooling of it, BatchNorm's input gradient where it is a
    /// convolution's output gradient), so the product that reads it needs
    /// no pass of its own ([`rounded_at_write`]).
    pub rounded: &'a [bool],
    /// By buffer: whether an op reads it as f32 in this step
    /// ([`read_as_f32`]).
    pub read_as_f32: &'a [bool],
    /// Their gradients (flat, same offsets).
    pub grads: &'a mut [f32],
    /// Running statistics (flat).
    pub states: &'a mut [f32],
    /// f64 partial sums of the reductions.
    pub partial: &'a mut [f64],
    /// Threads gemm may use.
    pub threads: usize,
    /// What multiplies.
    pub gemm: Gemm,
}

fn param<'a>(plan: &Plan, all: &'a [f32], id: usize) -> &'a [f32] {
    let s = &plan.params[id];
    &all[s.offset..s.offset + s.len]
}

fn param_mut<'a>(plan: &Plan, all: &'a mut [f32], id: usize) -> &'a mut [f32] {
    let s = &plan.params[id];
    &mut all[s.offset..s.offset + s.len]
}

/// Rounds buffer `id` to bf16 in place when `bf16`: an operand of a
/// product (an input activation, kept rounded for the weight gradient, or
/// an output gradient). Rounding is idempotent, so a buffer two products
/// read (a block's input, read by its first convolution and its
/// projection) is rounded once in effect.
fn operand(mem: &Mem, id: BufId, t: &Tensors) {
    if t.bf16 && !t.rounded[id] {
        round_slice_bf16(mem.w(id));
    }
}

/// Whether a convolution's forward reads its input from the 16-bit copy
/// its writer keeps, where the plan has one (`x_bf16`): a bf16 kernel that
/// reads the windows, not a small convolution on the direct kernels.
fn reads_16_bit_input(g: &ConvGeom, gemm: Gemm) -> bool {
    gemm.bf16().is_some() && gemm.reads_windows(g) && !g.grouped()
}

/// The buffers some op reads as f32 in a step whose products run on
/// `gemm`: a BatchNorm output with a 16-bit copy that none reads is not
/// written in f32 at all (every reader takes the copy).
pub fn read_as_f32(plan: &Plan, gemm: Gemm) -> Vec<bool> {
    let mut r = vec![false; plan.bufs.len()];
    for op in &plan.ops {
        match op {
            Op::Conv { g, x, x_bf16, .. } => {
                if x_bf16.is_none() || !reads_16_bit_input(g, gemm) {
                    r[*x] = true;
                }
            }
            Op::BatchNorm {
                x,
                y,
                relu,
                residual,
                x_bf16,
                y_bf16,
                residual_bf16,
                ..
            } => {
                if x_bf16.is_none() {
                    r[*x] = true;
                }
                if *relu && y_bf16.is_none() {
                    r[*y] = true;
                }
                if let (Some((res, _)), None) = (residual, residual_bf16) {
                    r[*res] = true;
                }
            }
            // Every other op reads its inputs as f32.
            other => {
                let (forward, backward) = other.uses();
                for b in forward.into_iter().chain(backward) {
                    r[b] = true;
                }
            }
        }
    }
    r
}

/// The buffers whose writer stores them rounded in bf16 (see
/// [`Tensors::rounded`]): every BatchNorm output (activations are bf16, as
/// in PyTorch's autocast), a max pool's output when its input is one, and
/// a convolution's output gradient, which only its BatchNorm writes.
pub fn rounded_at_write(plan: &Plan) -> Vec<bool> {
    let mut r = vec![false; plan.bufs.len()];
    let conv_dy: Vec<BufId> = plan
        .ops
        .iter()
        .filter_map(|op| match op {
            Op::Conv { dy, .. } => Some(*dy),
            _ => None,
        })
        .collect();
    for op in &plan.ops {
        match op {
            Op::BatchNorm { y, dx, .. } => {
                r[*y] = true;
                if let Some(GradOut {
                    buf,
                    accumulate: false,
                }) = dx
                    && conv_dy.contains(buf)
                {
                    r[*buf] = true;
                }
            }
            Op::MaxPool { x, y, .. } if r[*x] => r[*y] = true,
            _ => {}
        }
    }
    r
}

/// Partial-sum slots the plan's reductions need.
pub fn partial_len(plan: &Plan) -> usize {
    plan.ops
        .iter()
        .map(|op| match op {
            Op::BatchNorm { rows, c, .. } => rows.div_ceil(CHUNK_ROWS) * 2 * c,
            _ => 0,
        })
        .max()
        .unwrap_or(0)
}

use super::bf16gemm::{self, Bf16Kernel};
use super::direct16::Dot16;
use super::sgemm::{self, Mat};
pub(crate) use super::sgemm::{row_major, transposed};

/// What multiplies a step's matrices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gemm {
    /// The fp32 kernels ([`sgemm`]), on the operands as stored (in bf16,
    /// rounded before: the numerics of bf16, the speed of fp32).
    Fp32,
    /// A bf16 dot-product kernel ([`bf16gemm`]).
    Bf16(Bf16Kernel),
}

impl Gemm {
    /// `dst (m x n) = [dst +] a (m x k) * b (k x n)` on up to `threads`
    /// threads of the current pool.
    pub fn matmul(
        self,
        dst: &mut [f32],
        accumulate: bool,
        a: Mat,
        b: Mat,
        mnk: (usize, usize, usize),
        threads: usize,
    ) {
        match self {
            Gemm::Fp32 => sgemm::matmul(dst, accumulate, a, b, mnk, threads),
            Gemm::Bf16(k) => bf16gemm::matmul(k, dst, accumulate, a, b, mnk, threads),
        }
    }

    /// Whether [`Gemm::matmul_bf16_out`] takes a product of depth `k`: on
    /// a bf16 kernel, one of one k block.
    pub fn stores_bf16(self, k: usize) -> bool {
        matches!(self, Gemm::Bf16(_)) && bf16gemm::stores_bf16(k)
    }

    /// `dst (m x n) = round_bf16(a b)` in 16 bits, no f32 product written
    /// ([`bf16gemm::matmul_bf16_out`]): the bits of [`Gemm::matmul`]
    /// rounded.
    ///
    /// # Panics
    /// If not [`Gemm::stores_bf16`]`(k)`.
    pub fn matmul_bf16_out(
        self,
        dst: &mut [u16],
        a: bf16gemm::Lhs,
        b: Mat,
        mnk: (usize, usize, usize),
        threads: usize,
    ) {
        assert!(
            self.stores_bf16(mnk.2),
            "{self:?} stores no bf16 product of depth {}",
            mnk.2
        );
        if let Gemm::Bf16(k) = self {
            bf16gemm::matmul_bf16_out(k, dst, a, b, mnk, threads)
        }
    }

    /// `dst (rows x o) = [dst +] im2col(x) w` for a convolution of geometry
    /// `g` (`w`: `k*k*c x o`): where the kernel reads windows
    /// ([`Gemm::reads_windows`]) the columns are never made (`cols` may be
    /// `None`): it reads each window from `x` as it packs it (no columns
    /// written and read back; the same bits); otherwise they are made in
    /// `cols` and multiplied. A bf16 kernel reads `x` from 16 bits as well
    /// (the same bits as the f32 values they stand for).
    ///
    /// # Panics
    /// If the columns are to be made and `cols` is `None`, or the fp32
    /// kernel is given 16-bit values.
    #[allow(clippy::too_many_arguments)]
    pub fn conv(
        self,
        dst: &mut [f32],
        accumulate: bool,
        x: Values,
        g: &ConvGeom,
        w: &[f32],
        cols: Option<&mut [f32]>,
        threads: usize,
    ) {
        let w = row_major(w, g.o);
        match (self, x) {
            (Gemm::Fp32, Values::F32(x)) => sgemm::matmul_im2col(dst, accumulate, x, g, w, threads),
            (Gemm::Fp32, Values::Bf16(_)) => panic!("the fp32 kernels read f32 inputs"),
            (Gemm::Bf16(k), x) if self.reads_windows(g) => {
                bf16gemm::matmul_im2col(k, dst, accumulate, x, g, w, threads)
            }
            (Gemm::Bf16(_), x) => {
                let cols = cols
                    .expect("scratch for the columns of a bf16 product with an odd channel count");
                super::conv::im2col(x, g, cols);
                let kc = g.cols();
                self.matmul(
                    dst,
                    accumulate,
                    row_major(cols, kc),
                    w,
                    (g.rows(), g.o, kc),
                    threads,
                );
            }
        }
    }

    /// Whether the kernel reads a convolution's windows from its input
    /// where they lie (no columns made) in the forward product
    /// ([`Gemm::conv`]): the fp32 kernel always, a bf16 kernel with an even
    /// channel count. The weight gradient reads them in place on every
    /// kernel ([`weight_gradient`]).
    pub fn reads_windows(self, g: &ConvGeom) -> bool {
        match self {
            Gemm::Fp32 => true,
            Gemm::Bf16(_) => bf16gemm::fuses_im2col(g),
        }
    }

    /// The bf16 kernel, if the products run on one.
    pub fn bf16(self) -> Option<Bf16Kernel> {
        match self {
            Gemm::Bf16(k) => Some(k),
            Gemm::Fp32 => None,
        }
    }

    /// Whether the direct fp32 convolution kernels may stand in for a
    /// product (not when a bf16 kernel does the products).
    pub fn direct(self) -> bool {
        self == Gemm::Fp32
    }

    /// The direct bf16 convolution kernel standing in for a bf16 kernel's
    /// products on small convolutions ([`super::direct16`]), if any.
    pub fn direct16(self) -> Option<Dot16> {
        self.bf16().and_then(Dot16::for_kernel)
    }
}

/// Rows summed in f32 before their sum joins the f64 total (short enough
/// to keep f32's rounding small, long enough to stay vectorised).
const F32_ROWS: usize = 32;

/// Per-channel sums over `rows` rows into `out` (`width` each): `f(rows,
/// acc)` adds rows to `acc`, f32, in blocks of [`F32_ROWS`] whose sums are
/// added in f64; chunks of [`CHUNK_ROWS`] run in parallel into their own
/// slots of `partial` and are combined in order.
fn chunk_sums(
    rows: usize,
    width: usize,
    partial: &mut [f64],
    out: &mut [f64],
    f: impl Fn(std::ops::Range<usize>, &mut [f32]) + Sync,
) {
    let chunks = rows.div_ceil(CHUNK_ROWS);
    let partial = &mut partial[..chunks * width];
    partial
        .par_chunks_mut(width)
        .enumerate()
        .for_each(|(k, acc)| {
            vectorised(
                #[inline(always)]
                || {
                    acc.fill(0.0);
                    let mut local = [0f32; 2 * MAX_CHANNELS];
                    let local = &mut local[..width];
                    let end = ((k + 1) * CHUNK_ROWS).min(rows);
                    for start in (k * CHUNK_ROWS..end).step_by(F32_ROWS) {
                        local.fill(0.0);
                        f(start..(start + F32_ROWS).min(end), local);
                        acc.iter_mut()
                            .zip(&*local)
                            .for_each(|(a, &v)| *a += v as f64);
                    }
                },
            )
        });
    out[..width].fill(0.0);
    for p in partial.chunks_exact(width) {
        out.iter_mut().zip(p).for_each(|(o, v)| *o += v);
    }
}

/// Most channels a BatchNorm may have (the reductions keep their sums on the stack).
pub const MAX_CHANNELS: usize = 2048;

/// One op forward. `train`: batch statistics (and running averages updated).
pub fn forward(op: &Op, plan: &Plan, mem: &Mem, t: &mut Tensors, train: bool) {
    match *op {
        Op::Conv {
            g,
            x,
            y,
            w,
            cols,
            x_bf16,
            y_bf16,
            ..
        } => {
            operand(mem, x, t);
            let (xf, w) = (mem.r(x), param(plan, t.weights, w));
            // A bf16 kernel that reads the windows packs them from the
            // input's 16-bit copy where its writer keeps one: the same
            // bits, half the bytes, nothing to round.
            let xv = match x_bf16 {
                Some(b) if reads_16_bit_input(&g, t.gemm) => mem.values(b),
                _ => Values::F32(xf),
            };
            let mnk = (g.rows(), g.o, g.c);
            match g.single_tap() {
                _ if g.grouped() => {
                    let cols = mem.w(cols.expect("a grouped conv has scratch"));
                    conv_grouped_forward(xf, w, mem.w(y), &g, cols, t.gemm);
                }
                // Where the output is kept in 16 bits, rounded as it is
                // stored, if the product can.
                _ if y_bf16.is_some()
                    && t.gemm.stores_bf16(g.cols())
                    && t.gemm.reads_windows(&g) =>
                {
                    let y16 = mem.w16(y_bf16.expect("matched"));
                    let a = bf16gemm::Lhs::Im2col { x: xv, g };
                    let w = row_major(w, g.o);
                    t.gemm
                        .matmul_bf16_out(y16, a, w, (g.rows(), g.o, g.cols()), t.threads);
                    return;
                }
                // The input itself times the one tap's block.
                Some(tap) if matches!(xv, Values::F32(_)) => t.gemm.matmul(
                    mem.w(y),
                    false,
                    row_major(xf, g.c),
                    row_major(&w[tap_block(&g, tap)], g.o),
                    mnk,
                    t.threads,
                ),
                _ => {
                    let cols = cols.map(|c| mem.w(c));
                    t.gemm.conv(mem.w(y), false, xv, &g, w, cols, t.threads);
                }
            }
            if let Some(y16) = y_bf16 {
                round_rows(mem.r(y), mem.w16(y16), (g.rows(), g.o));
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
            x_bf16,
            y_bf16,
            residual_bf16,
            ..
        } => {
            let round = t.bf16 && t.rounded[y];
            // No f32 output where it has a 16-bit copy and nothing reads
            // the f32 one (read_as_f32).
            let f32_out = y_bf16.is_none() || t.read_as_f32[y];
            let out = Out {
                y: f32_out.then(|| mem.w(y)),
                y16: y_bf16.map(|b| mem.w16(b)),
                round,
            };
            let (x, saved) = (mem.r(x), mem.w(saved));
            // What is normalised (and what backward reads): the input, or
            // it rounded to bf16 and stored in 16 bits.
            let mut m64 = [0f64; MAX_CHANNELS];
            let mut sq = [0f64; MAX_CHANNELS];
            let (m64, sq) = (&mut m64[..c], &mut sq[..c]);
            // The input rounded to bf16 by its convolution, or as it is.
            let xs = match x_bf16 {
                Some(b) => mem.values(b),
                None => Values::F32(x),
            };
            let (gamma, beta) = (param(plan, t.params, gamma), param(plan, t.params, beta));
            let (ms, vs) = (&plan.states[mean], &plan.states[var]);
            let (scale, shift) = saved.split_at_mut(c);
            if train {
                match xs {
                    Values::F32(x) => moments(x, (rows, c), t.partial, m64, sq),
                    Values::Bf16(x) => moments(x, (rows, c), t.partial, m64, sq),
                }
                let n = rows as f64;
                let unbias = n / (n - 1.0);
                let states = &mut *t.states;
                for ch in 0..c {
                    let v = sq[ch] / n;
                    let rm = &mut states[ms.offset + ch];
                    *rm = ((1.0 - momentum) * *rm as f64 + momentum * m64[ch]) as f32;
                    let rv = &mut states[vs.offset + ch];
                    *rv = ((1.0 - momentum) * *rv as f64 + momentum * unbias * v) as f32;
                    scale[ch] = m64[ch] as f32; // the mean
                    shift[ch] = (1.0 / (v + epsilon).sqrt()) as f32; // 1/std
                }
            } else {
                let states = &*t.states;
                for ch in 0..c {
                    let rv = states[vs.offset + ch] as f64;
                    scale[ch] = states[ms.offset + ch];
                    shift[ch] = (1.0 / (rv + epsilon).sqrt()) as f32;
                }
            }
            let residual = residual.map(|r| mem.values(residual_bf16.unwrap_or(r.0)));
            let stats = (&*scale, &*shift);
            match xs {
                Values::F32(x) => normalize(x, out, c, residual, relu, stats, (gamma, beta)),
                Values::Bf16(x) => normalize(x, out, c, residual, relu, stats, (gamma, beta)),
            }
        }
        Op::MaxPool {
            g,
            x,
            y,
            argmax,
            y_bf16,
            ..
        } => {
            let (x, y, arg) = (mem.r(x), mem.w(y), mem.w(argmax));
            let (c, per_in, per_out) = (g.c, g.h * g.w * g.c, g.oh * g.ow * g.c);
            let y16 = y_bf16.map(|b| SendPtr(mem.w16(b).as_mut_ptr()));
            y.par_chunks_mut(per_out)
                .zip(arg.par_chunks_mut(per_out))
                .zip(x.par_chunks(per_in))
                .enumerate()
                .for_each(|(n, ((y, arg), x))| {
                    vectorised(
                        #[inline(always)]
                        || {
                            for oy in 0..g.oh {
                                for ox in 0..g.ow {
                                    let o = (oy * g.ow + ox) * c;
                                    let (yo, ao) = (&mut y[o..o + c], &mut arg[o..o + c]);
                                    yo.fill(f32::NEG_INFINITY);
                                    for_each_tap(
                                        &g,
                                        oy,
                                        ox,
                                        #[inline(always)]
                                        |_, pixel| {
                                            max_rows(yo, ao, &x[pixel * c..][..c], pixel * c)
                                        },
                                    );
                                }
                            }
                        },
                    );
                    if let Some(p) = y16 {
                        // SAFETY: image n's outputs belong to this task alone.
                        let d = unsafe {
                            std::slice::from_raw_parts_mut(p.get().add(n * per_out), y.len())
                        };
                        // The maxima of BatchNorm's outputs, bf16 values in a
                        // bf16 step, so rounding changes nothing; were they
                        // not, the convolution reading the f32 output rounds
                        // it in place before its product (`operand`), so
                        // forward and backward would still read the same.
                        d.iter_mut().zip(&*y).for_each(|(d, &y)| *d = to_bf16(y));
                    }
                });
        }
        Op::ShortcutA { g, x, y, .. } => {
            let (x, y) = (mem.r(x), mem.w(y));
            y.par_chunks_mut(g.oh * g.ow * g.o)
                .zip(x.par_chunks(g.h * g.w * g.c))
                .for_each(|(y, x)| {
                    for (pos, yo) in y.chunks_exact_mut(g.o).enumerate() {
                        let (oy, ox) = (pos / g.ow, pos % g.ow);
                        let at = ((oy * g.s) * g.w + ox * g.s) * g.c;
                        yo[..g.c].copy_from_slice(&x[at..at + g.c]);
                        yo[g.c..].fill(0.0);
                    }
                });
        }
        Op::AvgPool { hw, c, x, y, .. } => {
            let (x, y) = (mem.r(x), mem.w(y));
            let inv = 1.0 / hw as f32;
            y.par_chunks_mut(c)
                .zip(x.par_chunks(hw * c))
                .for_each(|(y, x)| {
                    y.fill(0.0);
                    for row in x.chunks_exact(c) {
                        y.iter_mut().zip(row).for_each(|(s, v)| *s += v);
                    }
                    y.iter_mut().for_each(|s| *s *= inv);
                });
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
            operand(mem, x, t);
            let y = mem.w(y);
            let bias = param(plan, t.params, bias);
            for row in y[..b * n].chunks_exact_mut(n) {
                row.copy_from_slice(bias);
            }
            t.gemm.matmul(
                y,
                true,
                row_major(mem.r(x), c),
                row_major(param(plan, t.weights, w), n),
                (b, n, c),
                t.threads,
            );
        }
    }
}

/// `y = max(y, x)` lane by lane, `arg` (the index `at + lane` as f32
/// bits) where `x` is greater (the first maximum wins; a NaN never does).
/// Selects, not branches, so the loop vectorises.
#[inline(always)]
fn max_rows(y: &mut [f32], arg: &mut [f32], x: &[f32], at: usize) {
    for (ch, ((y, a), &v)) in y.iter_mut().zip(arg.iter_mut()).zip(x).enumerate() {
        let up = v > *y;
        *y = if up { v } else { *y };
        *a = if up {
            f32::from_bits((at + ch) as u32)
        } else {
            *a
        };
    }
}

/// `x` (`rows x c`) rounded to bf16 into `x16`, on the pool.
fn round_rows(x: &[f32], x16: &mut [u16], (rows, c): (usize, usize)) {
    let (x, x16) = (&x[..rows * c], &mut x16[..rows * c]);
    x16.par_chunks_mut(CHUNK_ROWS * c)
        .zip(x.par_chunks(CHUNK_ROWS * c))
        .for_each(|(d, s)| {
            vectorised(
                #[inline(always)]
                || d.iter_mut().zip(s).for_each(|(d, &v)| *d = to_bf16(v)),
            )
        });
}

/// Per-channel mean of `x` (`rows x c`) into `mean` and sum of squared
/// deviations from it into `sq`, f64, in the fixed chunks of
/// [`chunk_sums`].
fn moments<X: AsF32>(
    x: &[X],
    (rows, c): (usize, usize),
    partial: &mut [f64],
    mean: &mut [f64],
    sq: &mut [f64],
) {
    chunk_sums(
        rows,
        c,
        partial,
        mean,
        #[inline(always)]
        |r, acc| {
            for row in x[r.start * c..r.end * c].chunks_exact(c) {
                acc.iter_mut().zip(row).for_each(|(a, &v)| *a += v.f32());
            }
        },
    );
    let n = rows as f64;
    mean.iter_mut().for_each(|m| *m /= n);
    let mut m32 = [0f32; MAX_CHANNELS];
    let m32 = &mut m32[..c];
    m32.iter_mut().zip(&*mean).for_each(|(a, &m)| *a = m as f32);
    let m32 = &*m32;
    chunk_sums(
        rows,
        c,
        partial,
        sq,
        #[inline(always)]
        |r, acc| {
            for row in x[r.start * c..r.end * c].chunks_exact(c) {
                for ((a, &v), &m) in acc.iter_mut().zip(row).zip(m32) {
                    let d = v.f32() - m;
                    *a += d * d;
                }
            }
        },
    );
}

/// Where BatchNorm's forward writes its output: `y` (unless nothing reads
/// it as f32), rounded to bf16 if `round`, and the same values in 16 bits
/// into `y16` if there is one (which needs `round`; and one of the two).
struct Out<'a> {
    y: Option<&'a mut [f32]>,
    y16: Option<&'a mut [u16]>,
    round: bool,
}

/// `y = (x - mean) * (rstd * gamma) + beta` (+ residual), ReLU'd if asked,
/// over rows of `c`, into `out`.
fn normalize<X: AsF32>(
    x: &[X],
    out: Out,
    c: usize,
    residual: Option<Values>,
    relu: bool,
    stats: (&[f32], &[f32]),
    affine: (&[f32], &[f32]),
) {
    match residual {
        None => normalize_with::<X, f32>(x, out, c, None, relu, stats, affine),
        Some(Values::F32(r)) => normalize_with(x, out, c, Some(r), relu, stats, affine),
        Some(Values::Bf16(r)) => normalize_with(x, out, c, Some(r), relu, stats, affine),
    }
}

/// [`normalize`] with the residual as stored.
fn normalize_with<X: AsF32, R: AsF32>(
    x: &[X],
    out: Out,
    c: usize,
    residual: Option<&[R]>,
    relu: bool,
    (mean, rstd): (&[f32], &[f32]),
    (gamma, beta): (&[f32], &[f32]),
) {
    let Out { y, y16, round } = out;
    assert!(round || y16.is_none(), "16-bit outputs of unrounded values");
    let mut k = [0f32; MAX_CHANNELS];
    let k = &mut k[..c];
    k.iter_mut()
        .zip(rstd.iter().zip(gamma))
        .for_each(|(k, (r, g))| *k = r * g);
    let (k, mean, beta) = (&*k, &mean[..c], &beta[..c]);
    let chunk = CHUNK_ROWS * c;
    let Some(y) = y else {
        // 16 bits alone: each row made in an f32 row here.
        let y16 = y16.expect("an output");
        return y16
            .par_chunks_mut(chunk)
            .zip(x.par_chunks(chunk))
            .enumerate()
            .for_each(|(i, (d, xs))| {
                let rs = residual.map(|r| &r[i * chunk..i * chunk + xs.len()]);
                vectorised(
                    #[inline(always)]
                    || {
                        let mut row = [0f32; MAX_CHANNELS];
                        let row = &mut row[..c];
                        for (j, (d, xr)) in
                            d.chunks_exact_mut(c).zip(xs.chunks_exact(c)).enumerate()
                        {
                            let rr = rs.map(|r| &r[j * c..(j + 1) * c]);
                            normalize_rows(row, Some(d), xr, rr, (mean, k, beta), relu, round)
                        }
                    },
                );
            });
    };
    let y16 = y16.map(|y| SendPtr(y.as_mut_ptr()));
    y.par_chunks_mut(chunk)
        .zip(x.par_chunks(chunk))
        .enumerate()
        .for_each(|(i, (ys, xs))| {
            let rs = residual.map(|r| &r[i * chunk..i * chunk + xs.len()]);
            // SAFETY: chunk i's elements of y16 (as long as y) belong to
            // this task alone.
            let d = y16.map(|p| unsafe {
                std::slice::from_raw_parts_mut(p.get().add(i * chunk), ys.len())
            });
            vectorised(
                #[inline(always)]
                || normalize_rows(ys, d, xs, rs, (mean, k, beta), relu, round),
            );
        });
}

/// Rows of [`normalize`] (`c = mean.len()` wide): `y = (x - mean) * k +
/// beta (+ r)`, ReLU'd if `relu`, rounded to bf16 if `round`, and, with
/// `y16` (then `round`), its bf16 bits there, each row as it is made (in
/// cache, not read back from memory). A function
/// of its own: its slices are arguments, which the compiler knows do not
/// overlap, and its flags values, so the loops vectorise; inlined only into
/// [`vectorised`].
#[inline(always)]
fn normalize_rows<X: AsF32, R: AsF32>(
    y: &mut [f32],
    mut y16: Option<&mut [u16]>,
    x: &[X],
    residual: Option<&[R]>,
    (mean, k, beta): (&[f32], &[f32], &[f32]),
    relu: bool,
    round: bool,
) {
    let c = mean.len();
    for (j, (yr, xr)) in y.chunks_exact_mut(c).zip(x.chunks_exact(c)).enumerate() {
        let lanes = yr.iter_mut().zip(xr).zip(mean.iter().zip(k).zip(beta));
        match residual {
            Some(r) => {
                let r = &r[j * c..(j + 1) * c];
                for (((y, &x), ((&m, &k), &b)), &r) in lanes.zip(r) {
                    let v = (x.f32() - m) * k + b + r.f32();
                    let v = if relu { v.max(0.0) } else { v };
                    *y = if round { round_bf16(v) } else { v };
                }
            }
            None => {
                for ((y, &x), ((&m, &k), &b)) in lanes {
                    let v = (x.f32() - m) * k + b;
                    let v = if relu { v.max(0.0) } else { v };
                    *y = if round { round_bf16(v) } else { v };
                }
            }
        }
        if let Some(d) = y16.as_deref_mut() {
            // Already bf16 values: their high halves.
            let d = &mut d[j * c..(j + 1) * c];
            d.iter_mut()
                .zip(&*yr)
                .for_each(|(d, y)| *d = (y.to_bits() >> 16) as u16);
        }
    }
}

/// Rows of the gradient of a BatchNorm's residual: `d [+]= g`, zero where
/// the ReLU (if `relu`) cut `y`. A function of its own, as
/// [`normalize_rows`].
#[inline(always)]
fn residual_gradient_rows<Y: AsF32>(
    d: &mut [f32],
    (y, g): (&[Y], &[f32]),
    relu: bool,
    accumulate: bool,
) {
    for ((d, &y), &g) in d.iter_mut().zip(y).zip(g) {
        // Loaded unconditionally (see input_gradient_rows_as).
        let (y, dv) = (y.f32(), *d);
        let g = if relu && y <= 0.0 { 0.0 } else { g };
        *d = if accumulate { dv + g } else { g };
    }
}

/// A BatchNorm's per-channel coefficients of its input gradient: `k =
/// gamma rstd`, the means of the gradient (`mb`) and of it times the
/// normalised input (`mg`), the batch's mean and 1/std.
#[derive(Clone, Copy)]
struct InputGradient<'a> {
    k: &'a [f32],
    mb: &'a [f32],
    mg: &'a [f32],
    mean: &'a [f32],
    rstd: &'a [f32],
}

/// Rows of a BatchNorm's input gradient (`c` wide): `d [+]= k (g - mb -
/// (x - mean) rstd mg)`, `g` zero where the ReLU (if `relu`) cut `y`,
/// rounded to bf16 if `round`. A function of its own, as
/// [`normalize_rows`]; each
/// combination of the flags compiled on its own and every operand loaded
/// unconditionally, so the loop has no branch and vectorises (with a load
/// under the ReLU's condition it ran scalar: ResNet-20 b128's BatchNorm
/// backward took 2-3x as long).
#[inline(always)]
fn input_gradient_rows<X: AsF32, Y: AsF32>(
    d: &mut [f32],
    xyg: (&[X], &[Y], &[f32]),
    co: InputGradient,
    flags: (bool, bool, bool),
) {
    macro_rules! with_flags {
        ($(($r:literal, $o:literal, $a:literal)),*) => {
            match flags {
                $(($r, $o, $a) => input_gradient_rows_as::<X, Y, $r, $o, $a>(d, xyg, co),)*
            }
        };
    }
    with_flags!(
        (false, false, false),
        (false, false, true),
        (false, true, false),
        (false, true, true),
        (true, false, false),
        (true, false, true),
        (true, true, false),
        (true, true, true)
    )
}

/// [`input_gradient_rows`] for one combination of its flags.
#[inline(always)]
fn input_gradient_rows_as<
    X: AsF32,
    Y: AsF32,
    const RELU: bool,
    const ROUND: bool,
    const ACC: bool,
>(
    d: &mut [f32],
    (x, y, g): (&[X], &[Y], &[f32]),
    co: InputGradient,
) {
    let c = co.k.len();
    let (k, mb, mg) = (co.k, &co.mb[..c], &co.mg[..c]);
    let (mean, rstd) = (&co.mean[..c], &co.rstd[..c]);
    for row in 0..d.len() / c {
        let d = &mut d[row * c..][..c];
        let (x, y, g) = (&x[row * c..][..c], &y[row * c..][..c], &g[row * c..][..c]);
        for i in 0..c {
            // Every operand loaded unconditionally: a load under a
            // condition keeps the loop scalar.
            let (xi, yi, gi, di) = (x[i].f32(), y[i].f32(), g[i], d[i]);
            let g = if RELU && yi <= 0.0 { 0.0 } else { gi };
            let v = k[i] * (g - mb[i] - (xi - mean[i]) * rstd[i] * mg[i]);
            let v = if ROUND { round_bf16(v) } else { v };
            d[i] = if ACC { di + v } else { v };
        }
    }
}

fn write(d: &mut f32, v: f32, accumulate: bool) {
    if accumulate {
        *d += v;
    } else {
        *d = v;
    }
}

/// One op backward: reads its output's gradient, writes (or adds to) its
/// inputs' gradients and writes its parameters' gradients.
pub fn backward(op: &Op, plan: &Plan, mem: &Mem, t: &mut Tensors) {
    match *op {
        Op::Conv {
            g,
            x,
            w,
            dx,
            dy,
            bcols,
            x_bf16,
            ..
        } if g.grouped() => {
            operand(mem, dy, t);
            conv_grouped_backward(
                &g,
                (mem.values(x_bf16.unwrap_or(x)), mem.r(dy)),
                param(plan, t.weights, w),
                param_mut(plan, t.grads, w),
                dx.map(|d| (mem.w(d.buf), d.accumulate)),
                mem.w(bcols.expect("a grouped conv has scratch")),
                t.gemm,
            )
        }
        Op::Conv {
            g,
            x,
            w,
            dx,
            dy,
            bcols,
            x_bf16,
            dy_bf16,
            ..
        } => {
            // dy from its 16-bit copy where its BatchNorm wrote that
            // instead ([`reads_16_bit_gradient`]).
            let dy = match dy_bf16 {
                Some(b) if reads_16_bit_gradient(t.gemm) => mem.values(b),
                _ => {
                    operand(mem, dy, t);
                    Values::F32(mem.r(dy))
                }
            };
            let x = mem.values(x_bf16.unwrap_or(x));
            let mut cols = bcols.map(|b| mem.w(b));
            let (rows, kc, o) = (g.rows(), g.cols(), g.o);
            let tap = g.single_tap();
            // dW (kc x o) = cols^T dy; of a single tap, that tap's block
            // (the others read only padding: zero).
            let dw = param_mut(plan, t.grads, w);
            match tap {
                // A pointwise conv's 16-bit input is its own columns: read
                // where it lies, as a window of one tap, not widened first.
                Some(_) if g.is_pointwise() && matches!(x, Values::Bf16(_)) => {
                    weight_gradient(t.gemm, dw, Columns::InPlace(x, g), dy, (rows, kc, o))
                }
                Some(tap) => {
                    dw.fill(0.0);
                    let x = match x {
                        Values::F32(x) => x,
                        Values::Bf16(x16) => {
                            let wide = cols
                                .as_deref_mut()
                                .expect("a single tap read from 16 bits has scratch to widen it");
                            let wide = &mut wide[..x16.len()];
                            wide.par_chunks_mut(1 << 15)
                                .zip(x16.par_chunks(1 << 15))
                                .for_each(|(d, s)| {
                                    vectorised(
                                        #[inline(always)]
                                        || widen(s, d),
                                    )
                                });
                            &*wide
                        }
                    };
                    let x = Columns::Made(x);
                    weight_gradient(t.gemm, &mut dw[tap_block(&g, tap)], x, dy, (rows, g.c, o));
                }
                None => weight_gradient(t.gemm, dw, Columns::InPlace(x, g), dy, (rows, kc, o)),
            }
            let Some(GradOut { buf, accumulate }) = dx else {
                return;
            };
            let w = param(plan, t.weights, w);
            let wt = transposed(w, o);
            let cols = match (tap, cols) {
                (None, Some(cols)) => Some(cols),
                (None, None) => panic!("a conv of several taps has backward scratch"),
                (Some(_), _) => None,
            };
            // `dst [+]= dy b` (rows x n): dy's rows along its channels.
            let dy_times = |dst: &mut [f32], accumulate: bool, b: Mat, n: usize| match dy {
                Values::F32(dy) => {
                    let a = row_major(dy, o);
                    t.gemm
                        .matmul(dst, accumulate, a, b, (rows, n, o), t.threads)
                }
                Values::Bf16(_) => {
                    // dy's rows as the windows of a pointwise convolution
                    // of o channels.
                    let kernel = t.gemm.bf16().expect("16-bit dy on a bf16 kernel");
                    let gp = ConvGeom::new(g.b, (g.oh, g.ow, o), n, (1, 1, 0));
                    bf16gemm::matmul_im2col(kernel, dst, accumulate, dy, &gp, b, t.threads)
                }
            };
            match cols {
                // dx = dy W^T (of the one tap's block).
                None => {
                    let tap = tap.expect("a conv without columns has a single tap");
                    let wt = transposed(&w[tap_block(&g, tap)], o);
                    dy_times(mem.w(buf), accumulate, wt, g.c)
                }
                // dx as the forward of the input-gradient conv.
                Some(cols) if g.input_gradient_conv().is_some() => {
                    let gd = g.input_gradient_conv().expect("checked");
                    let (dcols, wf) = cols.split_at_mut(cols.len() - kc * o);
                    flip_weight(w, &g, wf);
                    let dcols = Some(dcols).filter(|d| !d.is_empty());
                    t.gemm
                        .conv(mem.w(buf), accumulate, dy, &gd, wf, dcols, t.threads);
                }
                // dx by columns: dcols = dy W^T, scattered back.
                Some(cols) => {
                    dy_times(cols, false, wt, kc);
                    col2im(cols, &g, mem.w(buf), accumulate);
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
            x_bf16,
            y_bf16,
            dx_bf16,
            ..
        } => {
            let (x, y) = (
                mem.values(x_bf16.unwrap_or(x)),
                mem.values(y_bf16.unwrap_or(y)),
            );
            // dx in 16 bits instead, for a convolution that reads it so.
            let dx16 = dx_bf16
                .filter(|_| reads_16_bit_gradient(t.gemm))
                .map(|b| mem.w16(b));
            let bn = BnBackward {
                rows,
                c,
                relu,
                dy: mem.r(dy),
                saved: mem.r(saved),
                gamma: param(plan, t.params, gamma),
                grads: (gamma, beta),
                dx: dx
                    .filter(|_| dx16.is_none())
                    .map(|d| (mem.w(d.buf), d.accumulate)),
                dx16,
                dr: residual
                    .and_then(|(_, d)| d)
                    .map(|d| (mem.w(d.buf), d.accumulate)),
                // A convolution's output gradient, stored rounded (rounded_at_write).
                round_dx: t.bf16 && dx.is_some_and(|d| t.rounded[d.buf]),
            };
            match (x, y) {
                (Values::F32(x), Values::F32(y)) => bn.run(x, y, plan, t),
                (Values::Bf16(x), Values::F32(y)) => bn.run(x, y, plan, t),
                (Values::F32(x), Values::Bf16(y)) => bn.run(x, y, plan, t),
                (Values::Bf16(x), Values::Bf16(y)) => bn.run(x, y, plan, t),
            }
        }
        Op::MaxPool {
            g, dx, dy, argmax, ..
        } => {
            let Some(GradOut { buf, accumulate }) = dx else {
                return;
            };
            let (dy, arg, dx) = (mem.r(dy), mem.r(argmax), mem.w(buf));
            let (per_in, per_out) = (g.h * g.w * g.c, g.oh * g.ow * g.c);
            dx.par_chunks_mut(per_in)
                .zip(dy.par_chunks(per_out).zip(arg.par_chunks(per_out)))
                .for_each(|(dx, (dy, arg))| {
                    if !accumulate {
                        dx.fill(0.0);
                    }
                    for (d, a) in dy.iter().zip(arg) {
                        dx[a.to_bits() as usize] += d;
                    }
                });
        }
        Op::ShortcutA { g, dx, dy, .. } => {
            let Some(GradOut { buf, accumulate }) = dx else {
                return;
            };
            let (dy, dx) = (mem.r(dy), mem.w(buf));
            dx.par_chunks_mut(g.h * g.w * g.c)
                .zip(dy.par_chunks(g.oh * g.ow * g.o))
                .for_each(|(dx, dy)| {
                    if !accumulate {
                        dx.fill(0.0);
                    }
                    for (pos, d) in dy.chunks_exact(g.o).enumerate() {
                        let (oy, ox) = (pos / g.ow, pos % g.ow);
                        let at = ((oy * g.s) * g.w + ox * g.s) * g.c;
                        dx[at..at + g.c]
                            .iter_mut()
                            .zip(d)
                            .for_each(|(x, d)| *x += d);
                    }
                });
        }
        Op::AvgPool { hw, c, dx, dy, .. } => {
            let Some(GradOut { buf, accumulate }) = dx else {
                return;
            };
            let (dy, dx) = (mem.r(dy), mem.w(buf));
            let inv = 1.0 / hw as f32;
            dx.par_chunks_mut(hw * c)
                .zip(dy.par_chunks(c))
                .for_each(|(dx, dy)| {
                    for row in dx.chunks_exact_mut(c) {
                        for (d, g) in row.iter_mut().zip(dy) {
                            write(d, g * inv, accumulate);
                        }
                    }
                });
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
            operand(mem, dy, t);
            let (x, dy) = (mem.r(x), mem.r(dy));
            t.gemm.matmul(
                param_mut(plan, t.grads, w),
                false,
                transposed(x, c),
                row_major(dy, n),
                (c, n, b),
                t.threads,
            );
            let db = param_mut(plan, t.grads, bias);
            db.fill(0.0);
            for row in dy[..b * n].chunks_exact(n) {
                db.iter_mut().zip(row).for_each(|(d, v)| *d += v);
            }
            if let Some(GradOut { buf, accumulate }) = dx {
                let wt = transposed(param(plan, t.weights, w), n);
                t.gemm.matmul(
                    mem.w(buf),
                    accumulate,
                    row_major(dy, n),
                    wt,
                    (b, c, n),
                    t.threads,
                );
            }
        }
    }
}

/// A BatchNorm's backward (with its add and ReLU): its operands but the
/// input and output, which [`BnBackward::run`] takes as stored.
struct BnBackward<'a> {
    rows: usize,
    c: usize,
    relu: bool,
    dy: &'a [f32],
    saved: &'a [f32],
    gamma: &'a [f32],
    /// The gradients' parameters (gamma, beta).
    grads: (usize, usize),
    dx: Option<(&'a mut [f32], bool)>,
    /// The input's gradient rounded to bf16 in 16 bits, instead of `dx`
    /// (written, never added to).
    dx16: Option<&'a mut [u16]>,
    /// The residual's gradient.
    dr: Option<(&'a mut [f32], bool)>,
    round_dx: bool,
}

impl BnBackward<'_> {
    /// Writes the gradients of gamma and beta, and of the input and the
    /// residual (written or added to), from the input `x` and the output
    /// `y` (for the ReLU).
    fn run<X: AsF32, Y: AsF32>(self, x: &[X], y: &[Y], plan: &Plan, t: &mut Tensors) {
        let BnBackward {
            rows,
            c,
            relu,
            dy,
            saved,
            gamma: gam,
            grads: (gamma, beta),
            dx,
            dx16,
            dr,
            round_dx,
        } = self;
        let (mean, rstd) = saved.split_at(c);
        let mut sums = [0f64; 2 * MAX_CHANNELS];
        let sums = &mut sums[..2 * c];
        chunk_sums(
            rows,
            2 * c,
            t.partial,
            sums,
            #[inline(always)]
            |r, acc| {
                let (sg, sgh) = acc.split_at_mut(c);
                let span = r.start * c..r.end * c;
                let (mean, rstd) = (&mean[..c], &rstd[..c]);
                for ((xr, yr), dr) in x[span.clone()]
                    .chunks_exact(c)
                    .zip(y[span.clone()].chunks_exact(c))
                    .zip(dy[span].chunks_exact(c))
                {
                    let lanes = xr.iter().zip(yr).zip(dr).zip(mean.iter().zip(rstd));
                    for ((((&x, &y), &d), (&m, &r)), (sg, sgh)) in
                        lanes.zip(sg.iter_mut().zip(sgh.iter_mut()))
                    {
                        let g = if relu && y.f32() <= 0.0 { 0.0 } else { d };
                        *sg += g;
                        *sgh += g * ((x.f32() - m) * r);
                    }
                }
            },
        );
        let (sg, sgh) = sums.split_at(c);
        for ch in 0..c {
            param_mut(plan, t.grads, beta)[ch] = sg[ch] as f32;
            param_mut(plan, t.grads, gamma)[ch] = sgh[ch] as f32;
        }
        let inv_n = 1.0 / rows as f64;
        let mut coef = [0f32; 3 * MAX_CHANNELS];
        let (k, rest) = coef[..3 * c].split_at_mut(c);
        let (mb, mg) = rest.split_at_mut(c);
        for ch in 0..c {
            k[ch] = gam[ch] * rstd[ch];
            mb[ch] = (sg[ch] * inv_n) as f32;
            mg[ch] = (sgh[ch] * inv_n) as f32;
        }
        let co = InputGradient {
            k,
            mb,
            mg,
            mean: &mean[..c],
            rstd: &rstd[..c],
        };
        let chunk = CHUNK_ROWS * c;
        let dr = dr.map(|(d, acc)| (SendPtr(d.as_mut_ptr()), acc));
        let dxo = dx.map(|(d, acc)| (SendPtr(d.as_mut_ptr()), acc));
        let dx16 = dx16.map(|d| SendPtr(d.as_mut_ptr()));
        // Each chunk writes its own rows of dx and of the residual's gradient.
        (0..rows.div_ceil(CHUNK_ROWS))
            .into_par_iter()
            .for_each(|kk| {
                let start = kk * chunk;
                let len = chunk.min(rows * c - start);
                // SAFETY: chunk `kk` covers elements start..start+len of
                // each gradient (both `rows * c` long), disjoint from every
                // other chunk's.
                let part =
                    |p: SendPtr| unsafe { std::slice::from_raw_parts_mut(p.get().add(start), len) };
                let (xs, ys, dys) = (
                    &x[start..start + len],
                    &y[start..start + len],
                    &dy[start..start + len],
                );
                if let Some((p, acc)) = dr {
                    vectorised(
                        #[inline(always)]
                        || residual_gradient_rows(part(p), (ys, dys), relu, acc),
                    );
                }
                if let Some((p, acc)) = dxo {
                    let flags = (relu, round_dx, acc);
                    vectorised(
                        #[inline(always)]
                        || input_gradient_rows(part(p), (xs, ys, dys), co, flags),
                    );
                }
                if let Some(p) = dx16 {
                    // SAFETY: as `part`, of the 16-bit gradient (as long).
                    let d = unsafe { std::slice::from_raw_parts_mut(p.get().add(start), len) };
                    vectorised(
                        #[inline(always)]
                        || {
                            // Row by row through an f32 row, rounded, then
                            // narrowed (the bits of the rounded f32 dx).
                            let mut row = [0f32; MAX_CHANNELS];
                            let row = &mut row[..c];
                            for (r, d) in d.chunks_exact_mut(c).enumerate() {
                                let span = r * c..(r + 1) * c;
                                let xyg = (&xs[span.clone()], &ys[span.clone()], &dys[span]);
                                input_gradient_rows(row, xyg, co, (relu, true, false));
                                d.iter_mut().zip(&*row).for_each(|(d, &v)| *d = to_bf16(v));
                            }
                        },
                    );
                }
            });
    }
}

/// Whether a convolution's backward reads its output gradient from the
/// 16-bit copy its BatchNorm writes instead of the f32 one, where the plan
/// keeps one (`dy_bf16`): on a bf16 kernel. The BatchNorm asks the same.
fn reads_16_bit_gradient(gemm: Gemm) -> bool {
    gemm.bf16().is_some()
}

/// dW's rows or columns per part of [`weight_gradient`] (of `len`, among
/// `threads`): near-equal, each a multiple of 32 (every kernel's `MR` and
/// `NR` divides it but the VDPBF16PS kernel's `MR` of 12, whose tiles do
/// not change its bits), so the parts tile dW as one product does and give
/// its bits whatever the threads.
fn wgrad_part(len: usize, threads: usize) -> usize {
    len.div_ceil(threads.max(1))
        .next_multiple_of(32)
        .min(len)
        .max(1)
}

/// How [`weight_gradient`] splits dW (`kc x o`): into parts of rows (each
/// product packs all of `dy`, and its rows of the columns), or, where dW
/// has more columns than rows (and more than one part's), parts of columns
/// (each packs all of the columns, and its columns of `dy`): the split that
/// packs fewer values.
fn wgrad_by_columns(kc: usize, o: usize) -> bool {
    o > kc && o > 32
}

/// The parts of [`weight_gradient`] split by rows, in parallel: `(k0, m)`,
/// dW's rows `k0..k0 + m`.
fn wgrad_parts(kc: usize, threads: usize) -> impl IndexedParallelIterator<Item = (usize, usize)> {
    let part = wgrad_part(kc, threads);
    (0..kc.div_ceil(part))
        .into_par_iter()
        .map(move |i| (i * part, part.min(kc - i * part)))
}

/// The gemm calls one op makes in a training step (forward and backward)
/// on a pool of `threads`.
pub fn gemm_calls(op: &Op, threads: usize) -> usize {
    match op {
        Op::Conv { g, dx, .. } if g.grouped() => {
            let tiles = g.b * (g.oh * g.ow).div_ceil(g.tile_rows());
            tiles * (2 + dx.is_some() as usize)
        }
        Op::Conv { g, dx, .. } => {
            let (kc, o) = (g.depth(), g.o);
            let wgrad = if wgrad_by_columns(kc, o) {
                o.div_ceil(wgrad_part(o, threads))
            } else {
                kc.div_ceil(wgrad_part(kc, threads))
            };
            1 + wgrad + dx.is_some() as usize
        }
        Op::Linear { dx, .. } => 2 + dx.is_some() as usize,
        _ => 0,
    }
}

/// The left operand of a weight gradient, `cols (rows x kc)`.
#[derive(Clone, Copy)]
pub(super) enum Columns<'a> {
    /// The input itself, of a single-tap convolution: its own columns.
    Made(&'a [f32]),
    /// The im2col columns of the input under the geometry, never made: the
    /// kernel reads them where they lie ([`sgemm::matmul_im2col_t`],
    /// [`bf16gemm::matmul_im2col_t`]).
    InPlace(Values<'a>, ConvGeom),
}

/// `dw (kc x o) = cols^T (kc x rows) dy (rows x o)`, in one part of dW's
/// rows or columns ([`wgrad_by_columns`]) per thread of the current pool,
/// one single-threaded product per part in parallel: each part packs the
/// operand the parts share once (`dy`, or the columns), so the threads
/// pack it once each and no more. Each output element is one product over
/// all rows, on the tiles of one product ([`wgrad_part`]), so the result
/// does not depend on the threads. A bf16 kernel reads `dy` from 16 bits
/// as well (the same bits as the f32 values they stand for).
///
/// # Panics
/// If the fp32 kernel is given a 16-bit `dy`.
pub(super) fn weight_gradient(
    gemm: Gemm,
    dw: &mut [f32],
    cols: Columns,
    dy: Values,
    (rows, kc, o): (usize, usize, usize),
) {
    // dy's columns j0.. (row stride o) as a product's right operand.
    let dy_from = |j0: usize| match dy {
        Values::F32(d) => bf16gemm::Rhs::F32(Mat {
            data: &d[j0..],
            rs: o,
            cs: 1,
        }),
        Values::Bf16(d) => bf16gemm::Rhs::Bf16(bf16gemm::Mat16 {
            data: &d[j0..],
            rs: o,
            cs: 1,
        }),
    };
    fn f32_dy(b: bf16gemm::Rhs) -> Mat {
        b.as_f32().expect("the fp32 kernels read an f32 dy")
    }
    // dst (m x n, row stride n) = the columns k0..k0 + m of cols, transposed,
    // times dy's columns j0..j0 + n.
    let product = |dst: &mut [f32], (k0, m): (usize, usize), (j0, n): (usize, usize)| {
        let dy = dy_from(j0);
        match (cols, gemm) {
            (Columns::Made(cols), Gemm::Fp32) => {
                let a = transposed(&cols[k0..], kc);
                sgemm::matmul(dst, false, a, f32_dy(dy), (m, n, rows), 1)
            }
            (Columns::Made(cols), Gemm::Bf16(kernel)) => {
                let a = bf16gemm::Lhs::Mat(transposed(&cols[k0..], kc));
                bf16gemm::matmul_lhs(kernel, dst, a, dy, (m, n, rows))
            }
            (Columns::InPlace(x, g), Gemm::Fp32) => {
                sgemm::matmul_im2col_t(dst, false, x, &g, (k0, m), (f32_dy(dy), n), 1)
            }
            (Columns::InPlace(x, g), Gemm::Bf16(kernel)) => {
                bf16gemm::matmul_im2col_t(kernel, dst, false, x, &g, (k0, m), (dy, n), 1)
            }
        }
    };
    let threads = rayon::current_num_threads();
    if !wgrad_by_columns(kc, o) {
        dw[..kc * o]
            .par_chunks_mut(wgrad_part(kc, threads) * o)
            .zip(wgrad_parts(kc, threads))
            .for_each(|(dst, rows)| product(dst, rows, (0, o)));
        return;
    }
    // Each block writes its columns of dW where they lie (row stride o).
    assert!(
        dw.len() >= kc * o && dy.len() >= rows * o,
        "weight_gradient: dW or dy short"
    );
    match cols {
        Columns::Made(cols) => assert!(cols.len() >= rows * kc, "weight_gradient: columns short"),
        Columns::InPlace(x, g) => assert!(
            x.len() >= g.b * g.h * g.w * g.c && g.rows() == rows && g.cols() == kc,
            "weight_gradient: input short or of another geometry"
        ),
    }
    if rows == 0 {
        dw[..kc * o].fill(0.0);
        return;
    }
    let c = SendPtr(dw.as_mut_ptr());
    let block = wgrad_part(o, threads);
    (0..o.div_ceil(block)).into_par_iter().for_each(|i| {
        let (j0, n) = (i * block, block.min(o - i * block));
        let dy = dy_from(j0);
        // SAFETY: block i writes dW's columns j0..j0 + n of its kc rows
        // (row stride o >= n), inside `dw` (checked above, borrowed
        // mutably here) and apart from every other block's; the operands
        // hold their elements (checked above); kc, n and rows are not zero.
        unsafe {
            let c = SendPtr(c.get().add(j0));
            match (cols, gemm) {
                (Columns::Made(cols), Gemm::Fp32) => {
                    let a = sgemm::Lhs::Mat(transposed(cols, kc));
                    sgemm::multiply_into(c, o, a, f32_dy(dy), (kc, n, rows))
                }
                (Columns::Made(cols), Gemm::Bf16(k)) => {
                    let a = bf16gemm::Lhs::Mat(transposed(cols, kc));
                    bf16gemm::multiply_into(k, c, o, a, dy, (kc, n, rows))
                }
                (Columns::InPlace(x, g), Gemm::Fp32) => {
                    let a = sgemm::Lhs::Im2colT { x, g, first: 0 };
                    sgemm::multiply_into(c, o, a, f32_dy(dy), (kc, n, rows))
                }
                (Columns::InPlace(x, g), Gemm::Bf16(k)) => {
                    let a = bf16gemm::Lhs::Im2colT { x, g, first: 0 };
                    bf16gemm::multiply_into(k, c, o, a, dy, (kc, n, rows))
                }
            }
        }
    });
}

/// A wide convolution's weight-gradient operands made ready as its
/// backward does on a bf16 kernel, and multiplied by nothing (benchmarks):
/// with `cols`, the im2col columns made there and packed (transposed);
/// without, the windows packed from `x` where they lie. The same row
/// parts and threads (the current pool) as [`weight_gradient`] split by
/// rows (it splits by columns where dW has more columns than rows).
#[doc(hidden)]
pub fn pack_weight_gradient_only(
    kernel: Bf16Kernel,
    x: Values,
    g: &ConvGeom,
    dy: Values,
    cols: Option<&mut [f32]>,
) {
    let (rows, kc, o) = (g.rows(), g.cols(), g.o);
    let cols = cols.map(|cols| {
        im2col(x, g, cols);
        &*cols
    });
    wgrad_parts(kc, rayon::current_num_threads()).for_each(|(k0, m)| {
        let dy = match dy {
            Values::F32(d) => bf16gemm::Rhs::F32(row_major(d, o)),
            Values::Bf16(d) => bf16gemm::Rhs::Bf16(bf16gemm::Mat16 {
                data: d,
                rs: o,
                cs: 1,
            }),
        };
        let a = match cols {
            Some(cols) => bf16gemm::Lhs::Mat(transposed(&cols[k0..], kc)),
            None => bf16gemm::Lhs::Im2colT {
                x,
                g: *g,
                first: k0,
            },
        };
        bf16gemm::pack_only(kernel, a, dy, (m, o, rows), 1, false)
    });
}

/// Mean softmax cross-entropy of `logits` (`b x n`) against `labels`, and
/// its gradient `(softmax - onehot) / b` into `dlogits`.
pub fn softmax_cross_entropy(logits: &[f32], labels: &[u32], n: usize, dlogits: &mut [f32]) -> f32 {
    let b = labels.len();
    let mut total = 0f64;
    for ((z, d), &label) in logits
        .chunks_exact(n)
        .zip(dlogits.chunks_exact_mut(n))
        .zip(labels)
    {
        let m = z.iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v));
        let sum: f32 = z.iter().map(|&v| (v - m).exp()).sum();
        let lse = m + sum.ln();
        total += (lse - z[label as usize]) as f64;
        for (j, (d, &v)) in d.iter_mut().zip(z).enumerate() {
            let p = (v - lse).exp();
            *d = (p - if j == label as usize { 1.0 } else { 0.0 }) / b as f32;
        }
    }
    (total / b as f64) as f32
}

/// SGD with momentum and weight decay over every parameter (PyTorch's
/// formulation, see [`crate::train::sgd`]); `first`: the momentum buffers are empty.
pub fn sgd(
    params: &mut [f32],
    grads: &[f32],
    velocity: &mut [f32],
    (lr, momentum, decay, scale): (f32, f32, f32, f32),
    first: bool,
) {
    const CHUNK: usize = 1 << 14;
    params
        .par_chunks_mut(CHUNK)
        .zip(grads.par_chunks(CHUNK))
        .zip(velocity.par_chunks_mut(CHUNK))
        .for_each(|((p, g), v)| {
            for ((p, &g), v) in p.iter_mut().zip(g).zip(v) {
                let g = g * scale + decay * *p;
                *v = if first { g } else { momentum * *v + g };
                *p -= lr * *v;
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::cpu::conv::im2col;
    use crate::engine::cpu::sgemm::tests::{bits, values};

    /// Split by rows or by columns, made columns or windows read in place,
    /// the weight gradient gives the same bits on 1, 2 and 3 threads, the
    /// bits of one product of the columns' transpose and dy, on the fp32
    /// kernel and both bf16 models: its parts are whole 32-row or 32-column
    /// tiles of the one product (AMX's edge tiles add a k block's sum to C
    /// where whole tiles continue from C, so a part ending inside a tile
    /// would change its bits when there are several k blocks, over 512
    /// rows).
    #[test]
    fn weight_gradient_blocks_give_the_bits_of_one_product() {
        let pools = [1, 2, 3].map(|t| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(t)
                .build()
                .expect("a pool")
        });
        let gemms = [
            Gemm::Fp32,
            Gemm::Bf16(Bf16Kernel::AmxModel),
            Gemm::Bf16(Bf16Kernel::Avx512Bf16Model),
        ];
        // (batch, (h, w, c), o, (k, s, p)): more outputs than columns (split
        // by columns, o past one block), fewer (by rows), single tap; the
        // last three over 512 rows (several k blocks).
        let convs = [
            (2, (6, 5, 4), 96, (3, 1, 1)),
            (1, (7, 7, 8), 200, (1, 1, 0)),
            (2, (5, 5, 16), 40, (3, 2, 1)),
            (1, (9, 9, 64), 16, (1, 1, 0)),
            (2, (20, 20, 4), 64, (3, 1, 1)),
            (2, (20, 20, 16), 16, (3, 1, 1)),
            (1, (24, 24, 8), 200, (1, 1, 0)),
        ];
        for (b, hwc, o, ksp) in convs {
            let g = ConvGeom::new(b, hwc, o, ksp);
            let (rows, kc) = (g.rows(), g.cols());
            let x = values(b * hwc.0 * hwc.1 * hwc.2, 1);
            let dy = values(rows * o, 2);
            let mut cols = vec![0f32; rows * kc];
            im2col(Values::F32(&x), &g, &mut cols);
            let by_columns = wgrad_by_columns(kc, o);
            assert_eq!(by_columns, o > kc && o > 32, "{g:?}");
            for gemm in gemms {
                let mut want = vec![0f32; kc * o];
                let a = transposed(&cols, kc);
                gemm.matmul(&mut want, false, a, row_major(&dy, o), (kc, o, rows), 1);
                let inputs = [Columns::Made(&cols), Columns::InPlace(Values::F32(&x), g)];
                // dy also in 16 bits, rounded, on a bf16 kernel: the same bits.
                let dy16: Vec<u16> = dy.iter().map(|&v| to_bf16(v)).collect();
                let dys = match gemm {
                    Gemm::Fp32 => vec![Values::F32(&dy)],
                    Gemm::Bf16(_) => vec![Values::F32(&dy), Values::Bf16(&dy16)],
                };
                let cases = dys
                    .iter()
                    .flat_map(|&d| inputs.iter().map(move |&c| (c, d)));
                for (i, (columns, dy)) in cases.enumerate() {
                    let got = pools.each_ref().map(|pool| {
                        let mut got = vec![f32::NAN; kc * o];
                        pool.install(|| {
                            weight_gradient(gemm, &mut got, columns, dy, (rows, kc, o))
                        });
                        bits(&got)
                    });
                    for (t, got) in got.iter().enumerate() {
                        assert!(*got == bits(&want), "{g:?} {gemm:?} input {i}, pool {t}");
                    }
                }
            }
        }
    }
}
