//! The engine's fp32 matrix product, `C [+]= A B`: packed and blocked as in
//! GotoBLAS and BLIS, with AVX-512 and AVX2+FMA microkernels (chosen at run
//! time) and a portable one.
//!
//! Why our own (the `gemm` crate did this until 2026-12-05): gemm allocates
//! its packing buffers inside every call and cannot take a caller's, so a
//! training step made 100-700 allocations. Here each thread's packing
//! buffers are made once ([`reserve`], which the engine runs on every pool
//! thread when it starts) and reused, and the engine's steady state
//! allocates nothing (tests/engine_alloc.rs counts it). On this project's
//! shapes it runs at 0.82-0.96 of gemm 0.19's speed, not tuned yet
//! (`benches/sgemm.rs`, BENCHMARKS.md).
//!
//! Blocking: k in near-equal blocks of at most [`KC`] (a function of k
//! alone). For each k block, B's `KC x NC` block is packed into `NR`-wide
//! strips (the streamed operand, from L2) and A's `MC x KC` block into
//! `MR`-tall strips (the broadcast operand: one strip stays in L1 while it
//! meets every strip of B). The microkernel keeps its `MR x NR` tile of C in
//! registers over the whole k block, then adds it to C (or stores it).
//!
//! Threads split the rows of C (or its columns, when C is short and wide)
//! into one contiguous run of whole tiles each, never k. Each element of C
//! is therefore the same chain of fused multiply-adds, added to C block by
//! block in the same order, whatever the thread count; the AVX-512 and AVX2
//! kernels give the same bits too.

use super::SendPtr;
use super::conv::{Position, tap_runs};
use super::values::Values;
use crate::engine::plan::ConvGeom;
use rayon::prelude::*;
use std::cell::RefCell;
use std::ops::Range;

/// A matrix operand: element `(i, j)` is `data[i * rs + j * cs]`.
#[derive(Clone, Copy)]
pub struct Mat<'a> {
    pub(crate) data: &'a [f32],
    pub(crate) rs: usize,
    pub(crate) cs: usize,
}

impl Mat<'_> {
    /// Whether its `rows x cols` elements (both not zero) lie in `data`.
    pub(crate) fn holds(self, rows: usize, cols: usize) -> bool {
        (rows - 1) * self.rs + (cols - 1) * self.cs < self.data.len()
    }
}

/// `data` as a row-major matrix of `cols` columns.
pub fn row_major(data: &[f32], cols: usize) -> Mat<'_> {
    Mat {
        data,
        rs: cols,
        cs: 1,
    }
}

/// The transpose of `data` read as a row-major matrix of `cols` columns.
pub fn transposed(data: &[f32], cols: usize) -> Mat<'_> {
    Mat {
        data,
        rs: 1,
        cs: cols,
    }
}

/// Largest k block.
const KC: usize = 384;
/// Rows of A packed at once (a multiple of every kernel's `MR`).
const MC: usize = 192;
/// Columns of B packed at once (a multiple of every kernel's `NR`).
const NC: usize = 512;
/// Products of fewer multiply-adds than this run on one thread.
const PARALLEL_MIN: usize = 1 << 18;

/// The instruction sets a kernel is written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// 12 x 32 tiles in 16-lane registers.
    Avx512,
    /// 6 x 16 tiles in 8-lane registers, with fused multiply-add.
    Avx2,
    /// 4 x 16 tiles in plain Rust.
    Portable,
}

/// The best kernel this CPU runs (the engine's one CPU check: the direct
/// convolution kernels ask it too).
pub fn best_isa() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        static ISA: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
        *ISA.get_or_init(|| {
            use std::arch::is_x86_feature_detected as has;
            match (has!("avx2") && has!("fma"), has!("avx512f")) {
                (true, true) => Isa::Avx512,
                (true, false) => Isa::Avx2,
                (false, _) => Isa::Portable,
            }
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        Isa::Portable
    }
}

/// Every kernel this CPU runs, best first.
pub fn available_isas() -> Vec<Isa> {
    ALL.into_iter().filter(|&i| runs_here(i)).collect()
}

const ALL: [Isa; 3] = [Isa::Avx512, Isa::Avx2, Isa::Portable];

/// Whether this CPU runs `isa`'s kernel.
pub fn runs_here(isa: Isa) -> bool {
    let rank = |i: Isa| ALL.iter().position(|&x| x == i);
    rank(isa) >= rank(best_isa())
}

/// `dst (m x n, row-major) = [dst +] a (m x k) * b (k x n)` on up to
/// `threads` threads of the current rayon pool.
///
/// # Panics
/// If an operand's last element lies outside its slice.
pub fn matmul(
    dst: &mut [f32],
    accumulate: bool,
    a: Mat,
    b: Mat,
    mnk: (usize, usize, usize),
    threads: usize,
) {
    matmul_with(best_isa(), dst, accumulate, a, b, mnk, threads)
}

/// [`matmul`] with a given kernel (one [`available_isas`] lists).
pub fn matmul_with(
    isa: Isa,
    dst: &mut [f32],
    accumulate: bool,
    a: Mat,
    b: Mat,
    (m, n, k): (usize, usize, usize),
    threads: usize,
) {
    if !checked(dst, accumulate, a, b, (m, n, k)) {
        return;
    }
    multiply(isa, dst, accumulate, Lhs::Mat(a), b, (m, n, k), threads)
}

/// `dst (rows x o) = [dst +] im2col(x) w` for a convolution of geometry
/// `g` (`x` NHWC, `w` `k*k*c x o`) with the columns never made: each
/// strip of A is packed from the windows where they lie in `x` (zeros in
/// the padding). Bit for bit [`matmul`] of the columns.
///
/// # Panics
/// If `x`, `w` or `dst` is shorter than `g` says.
pub fn matmul_im2col(
    dst: &mut [f32],
    accumulate: bool,
    x: &[f32],
    g: &ConvGeom,
    w: Mat,
    threads: usize,
) {
    let mnk = (g.rows(), g.o, g.cols());
    if checked_im2col(dst, accumulate, x.len(), g, w, mnk) {
        let a = Lhs::Im2col { x, g: *g };
        multiply(best_isa(), dst, accumulate, a, w, mnk, threads)
    }
}

/// `dst (m x n) = [dst +] im2col(x)[.., first..first + m]^T dy[.., ..n]`:
/// rows `first..` of a convolution's weight gradient (`dy`: `g.rows()`
/// rows; its first `n` columns, all `g.o` of them or a block of dW's)
/// with the columns never made: each output position's values are read
/// from `x` (as stored) as A is packed. Bit for bit [`matmul`] of the
/// columns' transpose.
///
/// # Panics
/// If `first + m > g.cols()`, or `x`, `dy` or `dst` is shorter than `g`
/// says.
#[allow(clippy::too_many_arguments)]
pub fn matmul_im2col_t(
    dst: &mut [f32],
    accumulate: bool,
    x: Values,
    g: &ConvGeom,
    (first, m): (usize, usize),
    (dy, n): (Mat, usize),
    threads: usize,
) {
    assert!(
        first + m <= g.cols(),
        "matmul_im2col_t: columns {first}..{} of {}",
        first + m,
        g.cols()
    );
    let mnk = (m, n, g.rows());
    if checked_im2col(dst, accumulate, x.len(), g, dy, mnk) {
        let a = Lhs::Im2colT { x, g: *g, first };
        multiply(best_isa(), dst, accumulate, a, dy, mnk, threads)
    }
}

/// [`checked`] for a product whose A is the im2col matrix of an `x` of
/// `x_len` floats under `g`.
///
/// # Panics
/// If `x` is shorter than `g` says, or as [`checked`].
pub(super) fn checked_im2col(
    dst: &mut [f32],
    accumulate: bool,
    x_len: usize,
    g: &ConvGeom,
    b: Mat,
    mnk: (usize, usize, usize),
) -> bool {
    assert!(
        x_len >= g.b * g.h * g.w * g.c,
        "im2col product: x holds {} < {} x {} x {} x {}",
        x_len,
        g.b,
        g.h,
        g.w,
        g.c
    );
    // A matrix `checked` can always index (A is x, checked above).
    let any_a = Mat {
        data: &[0.0],
        rs: 0,
        cs: 0,
    };
    checked(dst, accumulate, any_a, b, mnk)
}

/// The checked product `dst [+]= a b` on `isa`'s kernel.
fn multiply(
    isa: Isa,
    dst: &mut [f32],
    accumulate: bool,
    a: Lhs,
    b: Mat,
    (m, n, k): (usize, usize, usize),
    threads: usize,
) {
    assert!(runs_here(isa), "sgemm: {isa:?} does not run here");
    // SAFETY: `checked` found C's m x n elements inside `dst`, which this
    // call borrows mutably.
    unsafe {
        multiply_raw(
            isa,
            SendPtr(dst.as_mut_ptr()),
            n,
            accumulate,
            a,
            b,
            (m, n, k),
            threads,
        )
    }
}

/// `C [+]= A B` on this CPU's best kernel, one thread, C's `m` rows of `n`
/// at row stride `ldc` from `c`: one block of a product whose blocks other
/// threads write beside it (a weight gradient's columns).
///
/// # Safety
/// `ldc >= n`; C's elements lie inside one allocation that nothing else
/// reads or writes during the call; `a` and `b` hold their `m x k` and
/// `k x n` elements; `m`, `n`, `k` are not zero.
pub(super) unsafe fn multiply_into(
    c: SendPtr,
    ldc: usize,
    a: Lhs,
    b: Mat,
    mnk: (usize, usize, usize),
) {
    // SAFETY: the caller's contract.
    unsafe { multiply_raw(best_isa(), c, ldc, false, a, b, mnk, 1) }
}

/// # Safety
/// As [`multiply_into`], and `isa` runs here.
#[allow(clippy::too_many_arguments)]
unsafe fn multiply_raw(
    isa: Isa,
    c: SendPtr,
    ldc: usize,
    accumulate: bool,
    a: Lhs,
    b: Mat,
    (m, n, k): (usize, usize, usize),
    threads: usize,
) {
    let job = Job {
        c,
        accumulate,
        a,
        b,
        k,
        n,
        ldc,
    };
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => run::<x86::Avx512>(&job, m, threads),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => run::<x86::Avx2>(&job, m, threads),
        _ => run::<Portable>(&job, m, threads),
    }
}

/// Checks that the operands of `dst (m x n) [+]= a (m x k) b (k x n)` hold
/// their elements and does an empty product (`m`, `n` or `k` zero): false
/// when nothing is left to multiply.
///
/// # Panics
/// If an operand's last element lies outside its slice.
pub(super) fn checked(
    dst: &mut [f32],
    accumulate: bool,
    a: Mat,
    b: Mat,
    (m, n, k): (usize, usize, usize),
) -> bool {
    if m == 0 || n == 0 {
        return false;
    }
    assert!(
        dst.len() >= m * n,
        "matmul: C holds {} < {m} x {n}",
        dst.len()
    );
    check_operands(a, b, (m, n, k));
    if k == 0 {
        if !accumulate {
            dst[..m * n].fill(0.0);
        }
        return false;
    }
    true
}

/// Checks that `a` holds its `m x k` and `b` its `k x n` elements (none
/// if `k` is 0).
///
/// # Panics
/// If one does not.
pub(super) fn check_operands(a: Mat, b: Mat, (m, n, k): (usize, usize, usize)) {
    assert!(
        m == 0 || n == 0 || k == 0 || (a.holds(m, k) && b.holds(k, n)),
        "matmul: an operand is shorter than {m} x {k} x {n}"
    );
}

/// Makes this thread's packing buffers now (the engine runs it on each
/// pool thread when it starts), so no product allocates later.
pub fn reserve() {
    with_packing(|_| ());
}

/// The left operand of a product.
#[derive(Clone, Copy)]
pub(super) enum Lhs<'a> {
    /// A matrix.
    Mat(Mat<'a>),
    /// The im2col matrix of `x` (NHWC) under `g`, read where it lies
    /// ([`matmul_im2col`]).
    Im2col { x: &'a [f32], g: ConvGeom },
    /// The transpose of that matrix from its column `first` on, `x` as
    /// stored ([`matmul_im2col_t`]): row `i` is column `first + i`.
    Im2colT {
        x: Values<'a>,
        g: ConvGeom,
        first: usize,
    },
}

/// One product: `C (row stride ldc) [+]= A B`, all but its row count.
struct Job<'a> {
    c: SendPtr,
    accumulate: bool,
    a: Lhs<'a>,
    b: Mat<'a>,
    k: usize,
    n: usize,
    ldc: usize,
}

/// An `MR x NR` microkernel.
trait Kernel {
    const MR: usize;
    const NR: usize;
    /// `C[i][j] = [C[i][j] +] sum_p a[p * MR + i] * b[p * NR + j]` for
    /// `i < mr`, `j < nr` of the tile at `c` (row stride `ldc`), the sum a
    /// chain of fused multiply-adds from `p = 0`, added to C after.
    ///
    /// # Safety
    /// `a` holds `kc * MR` and `b` `kc * NR` floats, `mr <= MR`,
    /// `nr <= NR`, the `mr x nr` tile lies inside C's allocation, and the
    /// CPU has the kernel's features.
    unsafe fn tile(
        kc: usize,
        a: *const f32,
        b: *const f32,
        c: *mut f32,
        ldc: usize,
        add: bool,
        edge: (usize, usize),
    );

    /// `MR` whole rows of A side by side: `strip[p * MR + i] = rows[i][p]`
    /// for `p < strip.len() / MR` (each row at least that long).
    #[inline(always)]
    fn pack_rows(rows: &[&[f32]], strip: &mut [f32]) {
        pack_rows_scalar(Self::MR, rows, strip, 0);
    }
}

/// [`Kernel::pack_rows`] from column `from` on, one element at a time.
#[inline(always)]
fn pack_rows_scalar(mr: usize, rows: &[&[f32]], strip: &mut [f32], from: usize) {
    let rows = &rows[..mr];
    for (p, s) in strip.chunks_exact_mut(mr).enumerate().skip(from) {
        for (d, r) in s.iter_mut().zip(rows) {
            *d = r[p];
        }
    }
}

fn run<K: Kernel>(job: &Job, m: usize, threads: usize) {
    for_each_part(m, job.n, job.k, (K::MR, K::NR), threads, |rows, cols| {
        with_packing(|p| block::<K>(job, rows, cols, p))
    });
}

/// Calls `f(rows, cols)` for each thread's part of an `m x n` product of
/// depth `k` in `mr x nr` tiles: the longer side split into one
/// contiguous run of whole tiles per thread (k never split), on the
/// current rayon pool; small products on this thread alone.
pub(super) fn for_each_part(
    m: usize,
    n: usize,
    k: usize,
    (mr, nr): (usize, usize),
    threads: usize,
    f: impl Fn(Range<usize>, Range<usize>) + Sync,
) {
    let whole = |tiles: usize, t: usize, len: usize| (tiles * t).min(len);
    let (mt, nt) = (m.div_ceil(mr), n.div_ceil(nr));
    let threads = if m * n * k >= PARALLEL_MIN {
        threads.max(1)
    } else {
        1
    };
    // Split by rows, each thread packs all of B and its rows of A; by
    // columns, all of A and its columns of B: rows where A is the taller
    // (or B too narrow to give each thread two tiles). ResNet-50's late
    // stages (392 rows, 512-2048 columns at b8) go by columns: bf16 step
    // 0.685 -> 0.665 s (medians of 3 alternated, AMD EPYC, 2026-12-07).
    let by_rows = m >= n || nt < 2 * threads;
    let parts = threads.min(if by_rows { mt } else { nt });
    if parts <= 1 {
        f(0..m, 0..n);
        return;
    }
    let per = (if by_rows { mt } else { nt }).div_ceil(parts);
    (0..parts).into_par_iter().for_each(|t| {
        let (rows, cols) = if by_rows {
            (whole(t * per, mr, m)..whole((t + 1) * per, mr, m), 0..n)
        } else {
            (0..m, whole(t * per, nr, n)..whole((t + 1) * per, nr, n))
        };
        if !rows.is_empty() && !cols.is_empty() {
            f(rows, cols);
        }
    });
}

/// The part `rows x cols` of C, on this thread.
fn block<K: Kernel>(job: &Job, rows: Range<usize>, cols: Range<usize>, pack: &mut Packing) {
    let (k, ldc) = (job.k, job.ldc);
    let step = k.div_ceil(k.div_ceil(KC));
    for p0 in (0..k).step_by(step) {
        let kc = step.min(k - p0);
        let add = job.accumulate || p0 > 0;
        for c0 in cols.clone().step_by(NC) {
            let nc = NC.min(cols.end - c0);
            pack_b::<K>(&mut pack.b, job.b, (p0, kc), (c0, nc));
            for r0 in rows.clone().step_by(MC) {
                let mc = MC.min(rows.end - r0);
                pack_a::<K>(&mut pack.a, job.a, (r0, mc), (p0, kc));
                for ir in (0..mc).step_by(K::MR) {
                    let mr = K::MR.min(mc - ir);
                    let ap = pack.a[ir * kc..][..K::MR * kc].as_ptr();
                    for jr in (0..nc).step_by(K::NR) {
                        let nr = K::NR.min(nc - jr);
                        let bp = pack.b[jr * kc..][..K::NR * kc].as_ptr();
                        let at = (r0 + ir) * ldc + c0 + jr;
                        // SAFETY: the strips hold kc * MR and kc * NR floats
                        // (sliced above); the tile's rows r0+ir..+mr and
                        // columns c0+jr..+nr lie inside C (m x n, checked by
                        // `matmul`), and this task alone writes them; `run`
                        // picked K for this CPU.
                        unsafe { K::tile(kc, ap, bp, job.c.get().add(at), ldc, add, (mr, nr)) };
                    }
                }
            }
        }
    }
}

/// A's rows `r0..r0 + mc`, columns `p0..p0 + kc` into `MR`-tall strips:
/// strip `q`, column `p`, row `i` at `(q * kc + p) * MR + i`, rows past the
/// block zero.
fn pack_a<K: Kernel>(dst: &mut [f32], a: Lhs, rows: (usize, usize), ks: (usize, usize)) {
    match a {
        Lhs::Mat(a) => pack_mat_a::<K>(dst, a, rows, ks),
        Lhs::Im2col { x, g } => pack_im2col_a::<K>(dst, x, &g, rows, ks),
        Lhs::Im2colT { x, g, first } => {
            pack_im2col_t_a::<K>(dst, x, &g, (first + rows.0, rows.1), ks)
        }
    }
}

/// [`pack_a`] of the transposed im2col matrix of `x` under `g`, its rows
/// `(r0, mc)` the matrix's columns: each strip's columns (output positions
/// `p0..p0 + kc`) one at a time, a position's `MR` values gathered from the
/// runs of `x` they lie in (one, where the strip's columns stay in one tap).
fn pack_im2col_t_a<K: Kernel>(
    dst: &mut [f32],
    x: Values,
    g: &ConvGeom,
    (r0, mc): (usize, usize),
    (p0, kc): (usize, usize),
) {
    let mr = K::MR;
    for (q, strip) in dst[..mc.div_ceil(mr) * mr * kc]
        .chunks_exact_mut(mr * kc)
        .enumerate()
    {
        let (top, rows) = (r0 + q * mr, mr.min(mc - q * mr));
        // The runs of one tap each among the strip's columns.
        let mut runs = [(0, (0, 0), 0, 0); 12];
        let mut count = 0;
        tap_runs(g, (top, rows), |at, tap, ch, n| {
            runs[count] = (at, tap, ch, n);
            count += 1;
        });
        let mut pos = Position::new(g, p0);
        match (x, count == 1 && rows == mr) {
            (Values::F32(x), true) => {
                let (_, tap, ch, _) = runs[0];
                for s in strip.chunks_exact_mut(mr) {
                    match pos.source(g, tap, ch) {
                        // A copy of constant length (no call to memcpy).
                        Some(src) => s.copy_from_slice(&x[src..][..mr]),
                        None => s.fill(0.0),
                    }
                    pos.step(g);
                }
            }
            _ => {
                for s in strip.chunks_exact_mut(mr) {
                    for &(at, tap, ch, n) in &runs[..count] {
                        let d = &mut s[at..at + n];
                        match pos.source(g, tap, ch) {
                            Some(src) => x.read(src, d),
                            None => d.fill(0.0),
                        }
                    }
                    s[rows..].fill(0.0);
                    pos.step(g);
                }
            }
        }
    }
}

/// Zeros for a run of A's columns that lies in a convolution's padding.
static ZEROS: [f32; KC] = [0.0; KC];

/// [`pack_a`] of the im2col matrix of `x` under `g`: each strip's columns
/// a tap at a time, a strip of whole rows by the kernel's transposition of
/// the rows' runs in `x` (or [`ZEROS`]).
fn pack_im2col_a<K: Kernel>(
    dst: &mut [f32],
    x: &[f32],
    g: &ConvGeom,
    (r0, mc): (usize, usize),
    (p0, kc): (usize, usize),
) {
    let mr = K::MR;
    for (q, strip) in dst[..mc.div_ceil(mr) * mr * kc]
        .chunks_exact_mut(mr * kc)
        .enumerate()
    {
        let (top, rows) = (r0 + q * mr, mr.min(mc - q * mr));
        let mut at = [Position::new(g, top); 12];
        for i in 1..rows {
            at[i] = at[i - 1];
            at[i].step(g);
        }
        tap_runs(g, (p0, kc), |first, tap, ch, n| {
            let part = &mut strip[first * mr..(first + n) * mr];
            let run = |i: usize| match at[i].source(g, tap, ch) {
                Some(src) => &x[src..][..n],
                None => &ZEROS[..n],
            };
            if rows == mr {
                let mut src = [&ZEROS[..0]; 12];
                for (i, s) in src.iter_mut().enumerate().take(mr) {
                    *s = run(i);
                }
                K::pack_rows(&src[..mr], part);
            } else {
                for i in 0..mr {
                    let src = if i < rows { run(i) } else { &ZEROS[..n] };
                    for (p, s) in part.chunks_exact_mut(mr).enumerate() {
                        s[i] = src[p];
                    }
                }
            }
        });
    }
}

/// [`pack_a`] of a matrix.
fn pack_mat_a<K: Kernel>(
    dst: &mut [f32],
    a: Mat,
    (r0, mc): (usize, usize),
    (p0, kc): (usize, usize),
) {
    let mr = K::MR;
    debug_assert!(mr <= 12);
    for (q, strip) in dst[..mc.div_ceil(mr) * mr * kc]
        .chunks_exact_mut(mr * kc)
        .enumerate()
    {
        let (top, rows) = (r0 + q * mr, mr.min(mc - q * mr));
        if a.rs == 1 {
            // Columns are contiguous.
            for (p, s) in strip.chunks_exact_mut(mr).enumerate() {
                let column = &a.data[top + (p0 + p) * a.cs..];
                if rows == mr {
                    // A copy of constant length (no call to memcpy).
                    s.copy_from_slice(&column[..mr]);
                } else {
                    s[..rows].copy_from_slice(&column[..rows]);
                    s[rows..].fill(0.0);
                }
            }
        } else if a.cs == 1 && rows == mr {
            // Rows are contiguous: the kernel's transposition.
            let mut src = [&a.data[..0]; 12];
            for (i, r) in src.iter_mut().enumerate().take(mr) {
                *r = &a.data[(top + i) * a.rs + p0..][..kc];
            }
            K::pack_rows(&src[..mr], strip);
        } else if a.cs == 1 {
            // Rows are contiguous: read the strip's rows side by side.
            let mut src = [&a.data[..0]; 12];
            for (i, r) in src.iter_mut().enumerate().take(rows) {
                *r = &a.data[(top + i) * a.rs + p0..][..kc];
            }
            for (p, s) in strip.chunks_exact_mut(mr).enumerate() {
                for i in 0..rows {
                    // SAFETY: i < rows <= MR = s.len() and p < kc = src[i].len().
                    unsafe { *s.get_unchecked_mut(i) = *src.get_unchecked(i).get_unchecked(p) };
                }
                s[rows..].fill(0.0);
            }
        } else {
            for i in 0..rows {
                let row = (top + i) * a.rs + p0 * a.cs;
                for (p, s) in strip.chunks_exact_mut(mr).enumerate() {
                    s[i] = a.data[row + p * a.cs];
                }
            }
            if rows < mr {
                strip.chunks_exact_mut(mr).for_each(|s| s[rows..].fill(0.0));
            }
        }
    }
}

/// B's rows `p0..p0 + kc`, columns `c0..c0 + nc` into `NR`-wide strips:
/// strip `q`, row `p`, column `j` at `(q * kc + p) * NR + j`, columns past
/// the block zero.
fn pack_b<K: Kernel>(dst: &mut [f32], b: Mat, (p0, kc): (usize, usize), (c0, nc): (usize, usize)) {
    let nr = K::NR;
    for (q, strip) in dst[..nc.div_ceil(nr) * nr * kc]
        .chunks_exact_mut(nr * kc)
        .enumerate()
    {
        let (left, cols) = (c0 + q * nr, nr.min(nc - q * nr));
        if b.cs == 1 {
            // Rows are contiguous.
            for (p, s) in strip.chunks_exact_mut(nr).enumerate() {
                s[..cols].copy_from_slice(&b.data[(p0 + p) * b.rs + left..][..cols]);
                s[cols..].fill(0.0);
            }
        } else {
            for j in 0..cols {
                let col = p0 * b.rs + (left + j) * b.cs;
                for (p, s) in strip.chunks_exact_mut(nr).enumerate() {
                    s[j] = b.data[col + p * b.rs];
                }
            }
            if cols < nr {
                strip.chunks_exact_mut(nr).for_each(|s| s[cols..].fill(0.0));
            }
        }
    }
}

/// One thread's packing buffers, 64-byte aligned.
struct Packing {
    a: super::Aligned,
    b: super::Aligned,
}

thread_local! {
    static PACKING: RefCell<Option<Packing>> = const { RefCell::new(None) };
}

fn with_packing<R>(f: impl FnOnce(&mut Packing) -> R) -> R {
    PACKING.with(|p| {
        let mut p = p.borrow_mut();
        f(p.get_or_insert_with(|| Packing {
            a: super::Aligned::zeros(MC * KC),
            b: super::Aligned::zeros(KC * NC),
        }))
    })
}

/// Plain Rust, for CPUs without AVX2 (the compiler vectorizes it to SSE).
struct Portable;

impl Kernel for Portable {
    const MR: usize = 4;
    const NR: usize = 16;
    unsafe fn tile(
        kc: usize,
        a: *const f32,
        b: *const f32,
        c: *mut f32,
        ldc: usize,
        add: bool,
        (mr, nr): (usize, usize),
    ) {
        // SAFETY: the caller's contract (sizes of a, b and the tile).
        let (a, b) = unsafe {
            (
                std::slice::from_raw_parts(a, kc * 4),
                std::slice::from_raw_parts(b, kc * 16),
            )
        };
        let mut acc = [[0f32; 16]; 4];
        for (ap, bp) in a.chunks_exact(4).zip(b.chunks_exact(16)) {
            for (row, &ai) in acc.iter_mut().zip(ap) {
                for (r, &bj) in row.iter_mut().zip(bp) {
                    *r += ai * bj;
                }
            }
        }
        for (i, row) in acc.iter().enumerate().take(mr) {
            // SAFETY: row i of the tile lies inside C.
            let dst = unsafe { std::slice::from_raw_parts_mut(c.add(i * ldc), nr) };
            for (d, &v) in dst.iter_mut().zip(row) {
                *d = if add { *d + v } else { v };
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) mod x86 {
    use super::Kernel;
    use std::arch::x86_64::*;

    /// 12 rows x 32 columns: 24 accumulators of 16 lanes.
    pub struct Avx512;

    impl Kernel for Avx512 {
        const MR: usize = 12;
        const NR: usize = 32;
        unsafe fn tile(
            kc: usize,
            a: *const f32,
            b: *const f32,
            c: *mut f32,
            ldc: usize,
            add: bool,
            edge: (usize, usize),
        ) {
            // SAFETY: the caller's contract.
            unsafe { tile_avx512(kc, a, b, c, ldc, add, edge) }
        }

        #[inline(always)]
        fn pack_rows(rows: &[&[f32]], strip: &mut [f32]) {
            // SAFETY: this kernel runs only where AVX-512F is present.
            unsafe { pack_rows_avx512(rows, strip) }
        }
    }

    /// [`Kernel::pack_rows`] of 12 rows: 16 columns at a time, the 12 rows
    /// (and four zero rows) transposed in registers, each column's 12
    /// values stored with a mask; the last `kc % 16` columns one by one.
    #[target_feature(enable = "avx512f")]
    fn pack_rows_avx512(rows: &[&[f32]], strip: &mut [f32]) {
        let rows = &rows[..12];
        let kc = strip.len() / 12;
        assert!(
            rows.iter().all(|r| r.len() >= kc),
            "a row shorter than the strip"
        );
        let whole = kc / 16 * 16;
        for p in (0..whole).step_by(16) {
            let mut r = [_mm512_setzero_si512(); 16];
            for (r, row) in r.iter_mut().zip(rows) {
                // SAFETY: p + 16 <= kc <= row.len().
                *r = unsafe { _mm512_loadu_si512(row.as_ptr().add(p).cast()) };
            }
            let t = crate::engine::cpu::bf16gemm::x86::transpose_16x16_regs(r);
            for (q, t) in t.iter().enumerate() {
                // SAFETY: column p + q < kc: its 12 values lie inside the strip.
                unsafe {
                    _mm512_mask_storeu_epi32(
                        strip.as_mut_ptr().add((p + q) * 12).cast(),
                        0x0fff,
                        *t,
                    )
                };
            }
        }
        super::pack_rows_scalar(12, rows, strip, whole);
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn tile_avx512(
        kc: usize,
        a: *const f32,
        b: *const f32,
        c: *mut f32,
        ldc: usize,
        add: bool,
        (mr, nr): (usize, usize),
    ) {
        let mut acc = [_mm512_setzero_ps(); 24];
        for p in 0..kc {
            // SAFETY: p < kc, so the reads lie inside the strips.
            unsafe {
                let (b0, b1) = (
                    _mm512_loadu_ps(b.add(p * 32)),
                    _mm512_loadu_ps(b.add(p * 32 + 16)),
                );
                let ap = a.add(p * 12);
                for i in 0..12 {
                    let ai = _mm512_set1_ps(*ap.add(i));
                    acc[2 * i] = _mm512_fmadd_ps(ai, b0, acc[2 * i]);
                    acc[2 * i + 1] = _mm512_fmadd_ps(ai, b1, acc[2 * i + 1]);
                }
            }
        }
        // SAFETY: the caller's contract (the tile lies inside C).
        unsafe { store_12x32(&acc, c, ldc, add, (mr, nr)) }
    }

    /// Adds the `mr x nr` corner of a 12 x 32 tile held in 24 registers
    /// (row `i`: `acc[2i]`, `acc[2i + 1]`) to, or stores it in, C at `c`.
    ///
    /// Not a `#[target_feature]` function but always inlined, into the
    /// AVX-512 tiles that call it: so the accumulators stay in registers
    /// (called, the compiler spilled all 24 to a zeroed stack array at
    /// every tile).
    ///
    /// # Safety
    /// The tile's `mr x nr` corner lies inside C; the CPU has AVX-512F.
    #[inline(always)]
    pub(in crate::engine::cpu) unsafe fn store_12x32(
        acc: &[__m512; 24],
        c: *mut f32,
        ldc: usize,
        add: bool,
        (mr, nr): (usize, usize),
    ) {
        // Lanes of the two column vectors inside the tile.
        let lanes = |v: usize| (1u32 << nr.saturating_sub(16 * v).min(16)) - 1;
        let (m0, m1) = (lanes(0) as __mmask16, lanes(1) as __mmask16);
        for i in 0..12 {
            if i == mr {
                break;
            }
            // SAFETY: the masked lanes of row i lie inside C.
            unsafe {
                let row = c.add(i * ldc);
                let (mut v0, mut v1) = (acc[2 * i], acc[2 * i + 1]);
                if add {
                    v0 = _mm512_add_ps(_mm512_maskz_loadu_ps(m0, row), v0);
                    v1 = _mm512_add_ps(_mm512_maskz_loadu_ps(m1, row.add(16)), v1);
                }
                _mm512_mask_storeu_ps(row, m0, v0);
                _mm512_mask_storeu_ps(row.add(16), m1, v1);
            }
        }
    }

    /// 6 rows x 16 columns: 12 accumulators of 8 lanes.
    pub struct Avx2;

    impl Kernel for Avx2 {
        const MR: usize = 6;
        const NR: usize = 16;
        unsafe fn tile(
            kc: usize,
            a: *const f32,
            b: *const f32,
            c: *mut f32,
            ldc: usize,
            add: bool,
            edge: (usize, usize),
        ) {
            // SAFETY: the caller's contract.
            unsafe { tile_avx2(kc, a, b, c, ldc, add, edge) }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn tile_avx2(
        kc: usize,
        a: *const f32,
        b: *const f32,
        c: *mut f32,
        ldc: usize,
        add: bool,
        (mr, nr): (usize, usize),
    ) {
        let mut acc = [_mm256_setzero_ps(); 12];
        for p in 0..kc {
            // SAFETY: p < kc, so the reads lie inside the strips.
            unsafe {
                let (b0, b1) = (
                    _mm256_loadu_ps(b.add(p * 16)),
                    _mm256_loadu_ps(b.add(p * 16 + 8)),
                );
                let ap = a.add(p * 6);
                for i in 0..6 {
                    let ai = _mm256_set1_ps(*ap.add(i));
                    acc[2 * i] = _mm256_fmadd_ps(ai, b0, acc[2 * i]);
                    acc[2 * i + 1] = _mm256_fmadd_ps(ai, b1, acc[2 * i + 1]);
                }
            }
        }
        if nr == 16 {
            for i in 0..6 {
                if i == mr {
                    break;
                }
                // SAFETY: row i of the tile lies inside C.
                unsafe {
                    let row = c.add(i * ldc);
                    let (mut v0, mut v1) = (acc[2 * i], acc[2 * i + 1]);
                    if add {
                        v0 = _mm256_add_ps(_mm256_loadu_ps(row), v0);
                        v1 = _mm256_add_ps(_mm256_loadu_ps(row.add(8)), v1);
                    }
                    _mm256_storeu_ps(row, v0);
                    _mm256_storeu_ps(row.add(8), v1);
                }
            }
            return;
        }
        // An edge tile: through memory, the valid lanes only.
        let mut spill = [0f32; 16];
        for i in 0..6 {
            if i == mr {
                break;
            }
            // SAFETY: spill holds 16 floats; columns j < nr of row i lie
            // inside C.
            unsafe {
                _mm256_storeu_ps(spill.as_mut_ptr(), acc[2 * i]);
                _mm256_storeu_ps(spill.as_mut_ptr().add(8), acc[2 * i + 1]);
                let row = c.add(i * ldc);
                for (j, &v) in spill[..nr].iter().enumerate() {
                    *row.add(j) = if add { *row.add(j) + v } else { v };
                }
            }
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    fn reference(a: Mat, b: Mat, (m, n, k): (usize, usize, usize)) -> Vec<f64> {
        let mut c = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k)
                    .map(|p| {
                        a.data[i * a.rs + p * a.cs] as f64 * b.data[p * b.rs + j * b.cs] as f64
                    })
                    .sum();
            }
        }
        c
    }

    /// Deterministic test values in [-1, 1] (also the engine ops' tests).
    pub(in crate::engine::cpu) fn values(len: usize, seed: u32) -> Vec<f32> {
        (0..len as u32)
            .map(|i| {
                ((i.wrapping_mul(2654435761).wrapping_add(seed) >> 8) % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    /// Every kernel this CPU runs, on shapes that cover edge tiles, several
    /// k blocks, both layouts of each operand and accumulation, on 1 and 3
    /// threads: equal to the f64 definition, and 1 and 3 threads give the
    /// same bits.
    #[test]
    fn every_kernel_equals_the_definition_and_threads_do_not_change_bits() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        let shapes = [
            (1, 1, 1),
            (5, 7, 3),
            (13, 33, 17),
            (40, 70, 800),
            (200, 20, 385),
            (600, 530, 64),
            (30, 1100, 50),
        ];
        for &(m, n, k) in &shapes {
            for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                let (ad, bd) = (values(m * k, 1), values(k * n, 2));
                let a = if ta {
                    transposed(&ad, m)
                } else {
                    row_major(&ad, k)
                };
                let b = if tb {
                    transposed(&bd, k)
                } else {
                    row_major(&bd, n)
                };
                let want = reference(a, b, (m, n, k));
                let start = values(m * n, 3);
                let mut bits = None;
                for isa in available_isas() {
                    for threads in [1, 3] {
                        for accumulate in [false, true] {
                            let mut c = start.clone();
                            pool.install(|| {
                                matmul_with(isa, &mut c, accumulate, a, b, (m, n, k), threads)
                            });
                            for (i, (&got, &w)) in c.iter().zip(&want).enumerate() {
                                let w = w + if accumulate { start[i] as f64 } else { 0.0 };
                                let tol = 1e-5 * (k as f64).sqrt() * (1.0 + w.abs());
                                assert!(
                                    (got as f64 - w).abs() <= tol,
                                    "{isa:?} {m}x{n}x{k} ta {ta} tb {tb} acc {accumulate} t {threads}: C[{i}] = {got}, want {w}"
                                );
                            }
                            if accumulate && isa != Isa::Portable {
                                // AVX-512 and AVX2, any thread count: one result.
                                match &bits {
                                    None => bits = Some(c),
                                    Some(b) => assert_eq!(b, &c, "{isa:?} {m}x{n}x{k} t {threads}"),
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// Windows with padding and strides, channel counts that split a strip
    /// of A across taps (1, 3, 4, 66) or fill it (16, 64), several k
    /// blocks (over 384 columns or positions), edge strips.
    /// Batch, (height, width, channels), outputs, (kernel, stride, padding).
    type Conv = (usize, (usize, usize, usize), usize, (usize, usize, usize));
    const CONVS: [Conv; 9] = [
        (2, (5, 7, 16), 24, (3, 1, 1)),
        (1, (9, 9, 64), 40, (3, 2, 1)),
        (2, (8, 8, 32), 16, (1, 2, 0)),
        (1, (12, 12, 4), 8, (7, 2, 3)),
        (1, (3, 5, 66), 33, (3, 1, 1)),
        (3, (14, 13, 8), 16, (3, 1, 1)),
        (2, (15, 15, 3), 8, (7, 2, 3)),
        (1, (9, 9, 1), 4, (7, 1, 3)),
        (1, (23, 23, 48), 20, (3, 1, 1)),
    ];

    pub(in crate::engine::cpu) fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    /// A product of im2col columns read where they lie gives the bits of
    /// the product of the columns made, on every kernel, accumulating or
    /// not, on 1 and 3 threads.
    #[test]
    fn im2col_read_in_place_equals_the_columns_made() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        for (b, hwc, o, ksp) in CONVS {
            let g = ConvGeom::new(b, hwc, o, ksp);
            let x = values(b * hwc.0 * hwc.1 * hwc.2, 3);
            let mut cols = vec![0f32; g.rows() * g.cols()];
            super::super::conv::im2col(Values::F32(&x), &g, &mut cols);
            let (kc, w) = (g.cols(), values(g.cols() * o, 4));
            let (a, wm, mnk) = (row_major(&cols, kc), row_major(&w, o), (g.rows(), o, kc));
            for isa in available_isas() {
                for (accumulate, threads) in [(false, 1), (true, 3)] {
                    let start = values(g.rows() * o, 5);
                    let (mut want, mut got) = (start.clone(), start);
                    pool.install(|| {
                        matmul_with(isa, &mut want, accumulate, a, wm, mnk, threads);
                        assert!(checked_im2col(&mut got, accumulate, x.len(), &g, wm, mnk));
                        let a = Lhs::Im2col { x: &x, g };
                        multiply(isa, &mut got, accumulate, a, wm, mnk, threads);
                    });
                    assert!(bits(&got) == bits(&want), "{isa:?} {g:?} t {threads}");
                }
            }
        }
    }

    /// The same of the weight gradient's transposed im2col matrix, whole
    /// and in blocks of its columns as the engine takes them, from `x` as
    /// f32 and in 16 bits.
    #[test]
    fn im2col_transposed_read_in_place_equals_the_columns_made() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        for (b, hwc, o, ksp) in CONVS {
            let g = ConvGeom::new(b, hwc, o, ksp);
            let x = values(b * hwc.0 * hwc.1 * hwc.2, 3);
            let x16: Vec<u16> = x
                .iter()
                .map(|&v| super::super::values::to_bf16(v))
                .collect();
            let (kc, dy) = (g.cols(), values(g.rows() * o, 4));
            let tail = kc.min(5);
            let blocks = [
                (0, kc),
                (kc / 3, kc - kc / 3),
                (1, kc / 2),
                (kc - tail, tail),
            ];
            for x in [Values::F32(&x), Values::Bf16(&x16)] {
                let mut cols = vec![0f32; g.rows() * kc];
                super::super::conv::im2col(x, &g, &mut cols);
                for (first, m) in blocks {
                    let (a, dym, mnk) = (
                        transposed(&cols[first..], kc),
                        row_major(&dy, o),
                        (m, o, g.rows()),
                    );
                    for isa in available_isas() {
                        for (accumulate, threads) in [(false, 1), (true, 3)] {
                            let start = values(m * o, 5);
                            let (mut want, mut got) = (start.clone(), start);
                            pool.install(|| {
                                matmul_with(isa, &mut want, accumulate, a, dym, mnk, threads);
                                assert!(checked_im2col(
                                    &mut got,
                                    accumulate,
                                    x.len(),
                                    &g,
                                    dym,
                                    mnk
                                ));
                                let a = Lhs::Im2colT { x, g, first };
                                multiply(isa, &mut got, accumulate, a, dym, mnk, threads);
                            });
                            assert!(
                                bits(&got) == bits(&want),
                                "{isa:?} {g:?} columns {first}..+{m} t {threads}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn an_empty_k_clears_or_keeps_c() {
        let mut c = vec![1.0f32; 6];
        matmul(
            &mut c,
            true,
            row_major(&[], 0),
            row_major(&[], 3),
            (2, 3, 0),
            1,
        );
        assert_eq!(c, vec![1.0; 6]);
        matmul(
            &mut c,
            false,
            row_major(&[], 0),
            row_major(&[], 3),
            (2, 3, 0),
            1,
        );
        assert_eq!(c, vec![0.0; 6]);
    }
}
