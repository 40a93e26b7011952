//! The engine's bf16 matrix product, `C [+]= A B` with A and B rounded to
//! bf16 (round to nearest even) and every product accumulated in fp32, on
//! the CPU's bf16 dot-product instructions: AMX tiles (`TDPBF16PS`, 32 x 32
//! tiles of C in four tile registers) or AVX512-BF16 (`VDPBF16PS`, 12 x 32
//! tiles in 24 vector registers), chosen at run time ([`native`]).
//!
//! Both instructions multiply *pairs*: a 32-bit lane holds two bf16 values
//! adjacent in k, so the packed operands hold `u32` pairs (the lower half
//! the even k). B is packed in pairs of rows ("VNNI" order); A's pairs are
//! adjacent in its rows. The blocking, threading and packing are
//! [`super::sgemm`]'s (k blocks fixed by k alone, threads split only C), so
//! a result does not depend on the thread count here either. Packing
//! converts along the direction an operand is contiguous in (AVX-512 where
//! the CPU has it; 16 x 16 tiles transposed where the layout runs the
//! other way), and a convolution's left operand can be packed straight
//! from its input, a window at a time ([`matmul_im2col`]): its im2col
//! columns are never made.
//!
//! Each native kernel has a *model*: the instruction's definition in plain
//! Rust, reading the same packed layout. The models run on any CPU (slowly)
//! and are what the packing, blocking and edge handling are tested with on
//! machines without the instructions; on a machine with them the native
//! kernels are tested against the f64 definition and the models.
//!
//! Linux hands a process the AMX tile state only on request
//! (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`); without it the
//! first tile instruction dies with SIGILL. [`native`] asks once and falls
//! back to AVX512-BF16 or fp32 when refused.

use super::conv::{Position, tap_runs};
use super::sgemm::{self, Mat};
use super::values::{AsF32, Values, to_bf16};
use crate::engine::plan::ConvGeom;
use crate::engine::precision::{Kernels, round_bf16};
use std::cell::RefCell;
use std::mem::MaybeUninit;
use std::ops::Range;

/// Largest k block (elements; a multiple of every kernel's [`Layout::KSTEP`]).
const KC: usize = 512;
/// Rows of A packed at once (a multiple of every kernel's `MR`).
const MC: usize = 192;
/// Columns of B packed at once (a multiple of every kernel's `NR`).
const NC: usize = 512;

/// A bf16 dot-product kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Bf16Kernel {
    /// AMX: `TDPBF16PS` on 16 x 16 tiles of C, four at once.
    Amx,
    /// AVX512-BF16: `VDPBF16PS` on 12 x 32 register tiles.
    Avx512Bf16,
    /// [`Bf16Kernel::Amx`]'s instruction in plain Rust, same layout (tests).
    AmxModel,
    /// [`Bf16Kernel::Avx512Bf16`]'s instruction in plain Rust, same layout (tests).
    Avx512Bf16Model,
}

impl Bf16Kernel {
    /// Every kernel: the native ones, then their models.
    pub const ALL: [Bf16Kernel; 4] = [
        Bf16Kernel::Amx,
        Bf16Kernel::Avx512Bf16,
        Bf16Kernel::AmxModel,
        Bf16Kernel::Avx512Bf16Model,
    ];

    /// Its name in `RESNET_BF16_KERNEL` and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Bf16Kernel::Amx => "amx",
            Bf16Kernel::Avx512Bf16 => "avx512bf16",
            Bf16Kernel::AmxModel => "amx-model",
            Bf16Kernel::Avx512Bf16Model => "avx512bf16-model",
        }
    }

    /// Whether it runs on this CPU (for AMX: and the OS lent this process
    /// the tile state). The models run everywhere.
    pub fn runs_here(self) -> bool {
        match self {
            Bf16Kernel::Amx => Kernels::detect().amx_bf16 && amx_permission().is_ok(),
            Bf16Kernel::Avx512Bf16 => Kernels::detect().avx512_bf16,
            Bf16Kernel::AmxModel | Bf16Kernel::Avx512Bf16Model => true,
        }
    }

    /// For tests: whether a test of it can run here. If not, says so and
    /// why on stderr, or panics when `RESNET_REQUIRE_BF16` names it
    /// (`amx,avx512bf16`, on a machine that must run them: a skipped test
    /// must not pass for a passed one there).
    pub fn testable(self) -> bool {
        let Some(why) = self.why_not() else {
            return true;
        };
        let required = std::env::var("RESNET_REQUIRE_BF16").unwrap_or_default();
        assert!(
            !required.split(',').any(|k| k.trim() == self.name()),
            "RESNET_REQUIRE_BF16 requires {} but it cannot run: {why}",
            self.name()
        );
        eprintln!("skipped {}: {why}", self.name());
        false
    }

    /// Why it does not run here, in words (`None` if it does).
    pub fn why_not(self) -> Option<String> {
        if self.runs_here() {
            return None;
        }
        let k = Kernels::detect();
        Some(match self {
            Bf16Kernel::Amx if k.amx_bf16 => match amx_permission() {
                Err(why) => why.clone(),
                Ok(()) => unreachable!("runs_here said it runs"),
            },
            _ => format!(
                "this CPU has no {} (it has: {})",
                match self {
                    Bf16Kernel::Amx => "AMX-BF16",
                    _ => "AVX512-BF16",
                },
                k.cpu()
            ),
        })
    }
}

/// The fastest bf16 kernel this machine runs, if any: AMX, then
/// AVX512-BF16. `RESNET_BF16_KERNEL=fp32` says none (bf16 operands
/// multiplied by the fp32 kernels, for A/B timing), `=amx` or
/// `=avx512bf16` asks for one (refused with the reason if it cannot run).
pub fn native() -> Result<Option<Bf16Kernel>, String> {
    match std::env::var("RESNET_BF16_KERNEL").as_deref() {
        Ok("fp32") => Ok(None),
        Ok("amx") => ask(Bf16Kernel::Amx),
        Ok("avx512bf16") => ask(Bf16Kernel::Avx512Bf16),
        Ok(other) if !other.is_empty() => Err(format!(
            "RESNET_BF16_KERNEL={other:?}: expected amx, avx512bf16 or fp32"
        )),
        _ => Ok([Bf16Kernel::Amx, Bf16Kernel::Avx512Bf16]
            .into_iter()
            .find(|k| k.runs_here())),
    }
}

/// Whether `RESNET_BF16_KERNEL` names the kernel (or none): then
/// [`native`]'s answer stands whatever the network.
pub fn kernel_named() -> bool {
    std::env::var("RESNET_BF16_KERNEL").is_ok_and(|v| !v.is_empty())
}

fn ask(k: Bf16Kernel) -> Result<Option<Bf16Kernel>, String> {
    match k.why_not() {
        None => Ok(Some(k)),
        Some(why) => Err(format!("RESNET_BF16_KERNEL={}: {why}", k.name())),
    }
}

/// Asks Linux, once per process, for the AMX tile-data state
/// (`ARCH_REQ_XCOMP_PERM` = 0x1023, `XFEATURE_XTILEDATA` = 18). The
/// permission covers every thread of the process, present and future.
/// Err: why not, in words.
fn amx_permission() -> &'static Result<(), String> {
    static OK: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    OK.get_or_init(|| {
        #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
        {
            const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
            const XFEATURE_XTILEDATA: libc::c_long = 18;
            // SAFETY: arch_prctl with this code only changes the process's
            // permitted xstate features; it reads and writes no memory of ours.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_arch_prctl,
                    ARCH_REQ_XCOMP_PERM,
                    XFEATURE_XTILEDATA,
                )
            };
            if r == 0 {
                Ok(())
            } else {
                Err(format!(
                    "Linux refused this process the AMX tile state (arch_prctl ARCH_REQ_XCOMP_PERM: {}; AMX needs Linux 5.16 or later)",
                    std::io::Error::last_os_error()
                ))
            }
        }
        #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
        Err("AMX is used on Linux x86_64 only (the tile state is asked for with arch_prctl)".into())
    })
}

/// `dst (m x n, row-major) = [dst +] round(a) (m x k) * round(b) (k x n)`,
/// `round` to bf16, products exact and summed in fp32, on up to `threads`
/// threads of the current rayon pool.
///
/// # Panics
/// If an operand's last element lies outside its slice, or `kernel` does
/// not run here.
pub fn matmul(
    kernel: Bf16Kernel,
    dst: &mut [f32],
    accumulate: bool,
    a: Mat,
    b: Mat,
    (m, n, k): (usize, usize, usize),
    threads: usize,
) {
    if sgemm::checked(dst, accumulate, a, b, (m, n, k)) {
        multiply(
            kernel,
            dst,
            accumulate,
            Lhs::Mat(a),
            Rhs::F32(b),
            (m, n, k),
            threads,
        );
    }
}

/// [`matmul`] of the im2col matrix of `x` (NHWC, geometry `g`: rows the
/// output positions, columns the window's taps by channels) and `w` (`k*k*c
/// x o`): `dst (rows x o) = [dst +] im2col(x) w`, bf16 operands, with the
/// columns never made: each row's pairs are read from `x` as A is packed
/// (from 16 bits, copied as they lie).
/// Bit for bit [`matmul`] of the columns. Needs `g.c` even (a pair never
/// spans two taps; [`fuses_im2col`]).
///
/// # Panics
/// If `g.c` is odd, `x`, `w` or `dst` is shorter than `g` says, or `kernel`
/// does not run here.
pub fn matmul_im2col(
    kernel: Bf16Kernel,
    dst: &mut [f32],
    accumulate: bool,
    x: Values,
    g: &ConvGeom,
    w: Mat,
    threads: usize,
) {
    assert!(fuses_im2col(g), "matmul_im2col: {} channels (odd)", g.c);
    let mnk = (g.rows(), g.o, g.cols());
    if sgemm::checked_im2col(dst, accumulate, x.len(), g, w, mnk) {
        let a = Lhs::Im2col { x, g: *g };
        multiply(kernel, dst, accumulate, a, Rhs::F32(w), mnk, threads);
    }
}

/// [`matmul`] with C rounded to bf16 as it is stored, into 16 bits: `dst
/// (m x n) = round_bf16(a b)`, the bits of [`matmul`] then rounded
/// ([`crate::engine::precision::round_bf16`]), with no f32 C written: each
/// tile is made in a buffer of this thread's and rounded from there. Needs
/// a product of one k block ([`stores_bf16`]).
///
/// # Panics
/// If `k` is more than one block, an operand's last element lies outside
/// its slice, or `kernel` does not run here.
pub fn matmul_bf16_out(
    kernel: Bf16Kernel,
    dst: &mut [u16],
    a: Lhs,
    b: Mat,
    (m, n, k): (usize, usize, usize),
    threads: usize,
) {
    assert!(
        stores_bf16(k),
        "matmul_bf16_out: depth {k} is more than one block"
    );
    assert!(
        dst.len() >= m * n,
        "matmul_bf16_out: C holds {} < {m} x {n}",
        dst.len()
    );
    match a {
        Lhs::Mat(a) => sgemm::check_operands(a, b, (m, n, k)),
        Lhs::Im2col { x, g } => {
            assert!(fuses_im2col(&g), "matmul_bf16_out: {} channels (odd)", g.c);
            assert_eq!(
                (m, k),
                (g.rows(), g.cols()),
                "matmul_bf16_out: im2col's shape"
            );
            sgemm::checked_im2col(&mut [], true, x.len(), &g, b, (0, n, k));
        }
        Lhs::Im2colT { .. } | Lhs::Mat16(_) => {
            panic!("matmul_bf16_out: a weight gradient's operand")
        }
    }
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        dst[..m * n].fill(0);
        return;
    }
    let c = Out::Bf16(super::SendPtr(dst.as_mut_ptr()));
    // SAFETY: C's m x n elements lie inside `dst`, which this call borrows
    // mutably; the operands hold theirs (checked above).
    unsafe { multiply_raw(kernel, c, n, false, a, Rhs::F32(b), (m, n, k), threads) }
}

/// `dst (m x n) = a b` of any left and right operand, one thread (a part
/// of a weight gradient).
///
/// # Panics
/// If an operand's last element lies outside its slice (a [`Lhs::Mat`]
/// and [`Rhs::F32`] are checked; the others index their slices), `dst` is
/// short, or `kernel` does not run here.
pub(super) fn matmul_lhs(
    kernel: Bf16Kernel,
    dst: &mut [f32],
    a: Lhs,
    b: Rhs,
    (m, n, k): (usize, usize, usize),
) {
    assert!(
        dst.len() >= m * n,
        "matmul: C holds {} < {m} x {n}",
        dst.len()
    );
    if let (Lhs::Mat(a), Rhs::F32(b)) = (a, b) {
        return matmul(kernel, dst, false, a, b, (m, n, k), 1);
    }
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        dst[..m * n].fill(0.0);
        return;
    }
    if let Lhs::Mat(a) = a {
        assert!(a.holds(m, k), "matmul: A short");
    }
    if let Rhs::Bf16(b) = b {
        assert!(b.holds(k, n), "matmul: B short");
    }
    multiply(kernel, dst, false, a, b, (m, n, k), 1)
}

/// Whether [`matmul_bf16_out`] takes a product of depth `k`: one k block.
pub fn stores_bf16(k: usize) -> bool {
    k <= KC
}

/// Whether [`matmul_im2col`] takes a convolution of geometry `g`: an even
/// number of channels.
pub fn fuses_im2col(g: &ConvGeom) -> bool {
    g.c.is_multiple_of(2)
}

/// [`matmul`] of the transpose of `x`'s im2col matrix under `g` (its
/// columns `first..first + m`, as rows) and `dy`'s first `n` columns
/// (`g.rows()` rows): `dst (m x n) = [dst +] im2col(x)[.., first..first +
/// m]^T dy[.., ..n]`, rows `first..` of a convolution's weight gradient
/// (or of a block of its columns) with the columns never made: each
/// output position's values are read from `x` as A is packed. Bit for bit
/// [`matmul`] of the columns' transpose. Any channel count (the pairs run
/// along the output positions).
///
/// # Panics
/// If `first + m > g.cols()`, `x`, `dy` or `dst` is shorter than `g`
/// says, or `kernel` does not run here.
#[allow(clippy::too_many_arguments)]
pub fn matmul_im2col_t(
    kernel: Bf16Kernel,
    dst: &mut [f32],
    accumulate: bool,
    x: Values,
    g: &ConvGeom,
    (first, m): (usize, usize),
    (dy, n): (Rhs, usize),
    threads: usize,
) {
    assert!(
        first + m <= g.cols(),
        "matmul_im2col_t: columns {first}..{} of {}",
        first + m,
        g.cols()
    );
    let mnk = (m, n, g.rows());
    let dy_mat = match dy {
        Rhs::F32(dy) => dy,
        Rhs::Bf16(dy) => {
            let k = g.rows();
            assert!(
                m == 0 || n == 0 || k == 0 || dy.holds(k, n),
                "matmul_im2col_t: dy is shorter than {k} x {n}"
            );
            // Checked: any matrix the check can index.
            Mat {
                data: &[0.0],
                rs: 0,
                cs: 0,
            }
        }
    };
    if sgemm::checked_im2col(dst, accumulate, x.len(), g, dy_mat, mnk) {
        let a = Lhs::Im2colT { x, g: *g, first };
        multiply(kernel, dst, accumulate, a, dy, mnk, threads);
    }
}

/// The checked product of [`matmul`], [`matmul_im2col`] and
/// [`matmul_im2col_t`] on `kernel`.
///
/// # Panics
/// If `kernel` does not run here.
fn multiply(
    kernel: Bf16Kernel,
    dst: &mut [f32],
    accumulate: bool,
    a: Lhs,
    b: Rhs,
    (m, n, k): (usize, usize, usize),
    threads: usize,
) {
    let c = Out::F32(super::SendPtr(dst.as_mut_ptr()));
    // SAFETY: the callers checked C's m x n elements inside `dst`, which
    // this call borrows mutably.
    unsafe { multiply_raw(kernel, c, n, accumulate, a, b, (m, n, k), threads) }
}

/// `C = A B` on `kernel`, one thread, C's `m` rows of `n` at row stride
/// `ldc` from `c`: one block of a product whose blocks other threads write
/// beside it (a weight gradient's columns).
///
/// # Safety
/// `ldc >= n`; C's elements lie inside one allocation that nothing else
/// reads or writes during the call; `a` and `b` hold their `m x k` and
/// `k x n` elements; `m`, `n`, `k` are not zero.
///
/// # Panics
/// If `kernel` does not run here.
pub(super) unsafe fn multiply_into(
    kernel: Bf16Kernel,
    c: super::SendPtr,
    ldc: usize,
    a: Lhs,
    b: Rhs,
    mnk: (usize, usize, usize),
) {
    // SAFETY: the caller's contract.
    unsafe { multiply_raw(kernel, Out::F32(c), ldc, false, a, b, mnk, 1) }
}

/// # Safety
/// As [`multiply_into`].
#[allow(clippy::too_many_arguments)]
unsafe fn multiply_raw(
    kernel: Bf16Kernel,
    c: Out,
    ldc: usize,
    accumulate: bool,
    a: Lhs,
    b: Rhs,
    (m, n, k): (usize, usize, usize),
    threads: usize,
) {
    if let Some(why) = kernel.why_not() {
        panic!("bf16 gemm: kernel {}: {why}", kernel.name());
    }
    let job = &Job {
        c,
        accumulate,
        a,
        b,
        k,
        n,
        ldc,
    };
    match kernel {
        #[cfg(target_arch = "x86_64")]
        Bf16Kernel::Amx => run::<x86::Amx>(job, m, threads),
        #[cfg(target_arch = "x86_64")]
        Bf16Kernel::Avx512Bf16 if job.a.rows_along_k() => {
            run::<x86::Avx512Bf16<VnniRowLayout>>(job, m, threads)
        }
        #[cfg(target_arch = "x86_64")]
        Bf16Kernel::Avx512Bf16 => run::<x86::Avx512Bf16<VnniLayout>>(job, m, threads),
        Bf16Kernel::AmxModel => run::<Model<AmxLayout>>(job, m, threads),
        Bf16Kernel::Avx512Bf16Model if job.a.rows_along_k() => {
            run::<Model<VnniRowLayout>>(job, m, threads)
        }
        Bf16Kernel::Avx512Bf16Model => run::<Model<VnniLayout>>(job, m, threads),
        #[allow(unreachable_patterns)]
        _ => unreachable!("runs_here checked"),
    }
}

/// Packs a product's operands as [`matmul`] with `kernel` does, on the
/// same blocks and threads, and multiplies nothing (C is untouched): the
/// time its packing takes, for benchmarks, on any CPU. `by_element`: the
/// one-pair-at-a-time definition of the packing instead.
#[doc(hidden)]
pub fn pack_only(
    kernel: Bf16Kernel,
    a: Lhs,
    b: Rhs,
    (m, n, k): (usize, usize, usize),
    threads: usize,
    by_element: bool,
) {
    let mut c = [0f32; 0];
    let job = Job {
        c: Out::F32(super::SendPtr(c.as_mut_ptr())),
        accumulate: false,
        a,
        b,
        k,
        n,
        ldc: n,
    };
    match (kernel, by_element) {
        (Bf16Kernel::Amx | Bf16Kernel::AmxModel, false) => {
            run::<PackOnly<AmxLayout, false>>(&job, m, threads)
        }
        (Bf16Kernel::Amx | Bf16Kernel::AmxModel, true) => {
            run::<PackOnly<AmxLayout, true>>(&job, m, threads)
        }
        (_, false) if a.rows_along_k() => run::<PackOnly<VnniRowLayout, false>>(&job, m, threads),
        (_, false) => run::<PackOnly<VnniLayout, false>>(&job, m, threads),
        (_, true) => run::<PackOnly<VnniLayout, true>>(&job, m, threads),
    }
}

/// A convolution's forward operands made ready as the engine does it on a
/// bf16 kernel, and multiplied by nothing (benchmarks): with `cols`, the
/// im2col columns made there (on the current pool) and packed; without,
/// the windows packed from `x` where they lie ([`matmul_im2col`]).
#[doc(hidden)]
pub fn pack_conv_only(
    kernel: Bf16Kernel,
    x: Values,
    g: &ConvGeom,
    w: Mat,
    cols: Option<&mut [f32]>,
    threads: usize,
) {
    let mnk = (g.rows(), g.o, g.cols());
    match cols {
        Some(cols) => {
            super::conv::im2col(x, g, cols);
            let a = sgemm::row_major(cols, g.cols());
            pack_only(kernel, Lhs::Mat(a), Rhs::F32(w), mnk, threads, false)
        }
        None => {
            let a = Lhs::Im2col { x, g: *g };
            pack_only(kernel, a, Rhs::F32(w), mnk, threads, false)
        }
    }
}

/// A kernel that only packs ([`pack_only`]).
struct PackOnly<L, const BY_ELEMENT: bool>(std::marker::PhantomData<L>);

impl<L: Layout, const E: bool> Dot for PackOnly<L, E> {
    type L = L;
    const BY_ELEMENT: bool = E;
    unsafe fn tile(
        _pairs: usize,
        a: *const u32,
        b: *const u32,
        _c: *mut f32,
        _ldc: usize,
        _add: bool,
        _edge: (usize, usize),
    ) {
        std::hint::black_box((a, b));
    }
}

/// Makes this thread's packing buffers now, so no product allocates later.
pub fn reserve() {
    with_packing(|_| ());
}

/// A matrix of bf16 values in 16 bits (bit patterns), as [`Mat`] is of
/// f32: element `(i, j)` at `data[i * rs + j * cs]`.
#[derive(Clone, Copy)]
pub struct Mat16<'a> {
    /// The elements.
    pub data: &'a [u16],
    /// Row stride.
    pub rs: usize,
    /// Column stride.
    pub cs: usize,
}

impl Mat16<'_> {
    /// Whether its `rows x cols` elements (both not zero) lie in `data`.
    fn holds(self, rows: usize, cols: usize) -> bool {
        (rows - 1) * self.rs + (cols - 1) * self.cs < self.data.len()
    }
}

/// The right operand of a bf16 product: f32 values (rounded as they are
/// packed) or bf16 ones in 16 bits (packed as they are).
#[derive(Clone, Copy)]
pub enum Rhs<'a> {
    /// f32.
    F32(Mat<'a>),
    /// 16 bits.
    Bf16(Mat16<'a>),
}

impl<'a> Rhs<'a> {
    /// The matrix, if of f32.
    pub fn as_f32(self) -> Option<Mat<'a>> {
        match self {
            Rhs::F32(m) => Some(m),
            Rhs::Bf16(_) => None,
        }
    }
}

/// The left operand of a bf16 product.
#[derive(Clone, Copy)]
pub enum Lhs<'a> {
    /// A matrix.
    Mat(Mat<'a>),
    /// A matrix in 16 bits (as packed for B: [`Rhs::Bf16`]).
    Mat16(Mat16<'a>),
    /// The im2col matrix of `x` (NHWC) under `g`, read where it lies
    /// ([`matmul_im2col`]).
    Im2col {
        /// The convolution's input (`c` even).
        x: Values<'a>,
        /// Its geometry.
        g: ConvGeom,
    },
    /// The transpose of that matrix from its column `first` on
    /// ([`matmul_im2col_t`]): row `i` is column `first + i`.
    Im2colT {
        /// The convolution's input, as stored.
        x: Values<'a>,
        /// Its geometry (`c` even).
        g: ConvGeom,
        /// The im2col column of A's row 0.
        first: usize,
    },
}

/// Where a product's C lies, and how it is stored.
#[derive(Clone, Copy)]
enum Out {
    /// f32, added to or stored.
    F32(super::SendPtr),
    /// Rounded to bf16 and stored in 16 bits ([`matmul_bf16_out`]).
    Bf16(super::SendPtr<u16>),
}

/// One product: `C (row stride ldc) [+]= A B`, all but its row count.
struct Job<'a> {
    c: Out,
    accumulate: bool,
    a: Lhs<'a>,
    b: Rhs<'a>,
    k: usize,
    n: usize,
    ldc: usize,
}

/// How a kernel's `MR x NR` tile reads its packed operands.
trait Layout {
    const MR: usize;
    const NR: usize;
    /// Where pair `p` (k = 2p, 2p+1) of row `i` lies in an A strip of
    /// `pairs` pairs (which only a layout whose rows run along the pairs
    /// needs).
    fn a_at(p: usize, i: usize, pairs: usize) -> usize;
    /// Where pair `p` of column `j` lies in a B strip.
    fn b_at(p: usize, j: usize) -> usize;
    /// `a_at(p, i, _)` is contiguous over runs of this many rows `i` (from a
    /// multiple of it), and over runs of [`Layout::A_RUN_P`] pairs `p`.
    const A_RUN_I: usize;
    /// See [`Layout::A_RUN_I`].
    const A_RUN_P: usize;
    /// `b_at(p, j)` is contiguous over runs of this many columns `j`, and
    /// over runs of [`Layout::B_RUN_P`] pairs `p`.
    const B_RUN_J: usize;
    /// See [`Layout::B_RUN_J`].
    const B_RUN_P: usize;
    /// k blocks are padded to a multiple of this many elements.
    const KSTEP: usize;
    /// Order of the additions in the instruction, as the Intel SDM defines it.
    const ORDER: Order;
}

/// How a bf16 dot-product instruction adds its products to C.
#[derive(PartialEq, Eq)]
enum Order {
    /// `VDPBF16PS`, per pair: `c += a.hi * b.hi`, then `c += a.lo * b.lo`.
    UpperFirst,
    /// `TDPBF16PS`, per 16 pairs (one tile's depth): the lower halves'
    /// products summed from zero, the upper halves' likewise, then `c +=
    /// lower + upper` (the AMX kernel starts a whole 32 x 32 tile of C
    /// from C when it adds to C, an edge tile from zero).
    TileSums,
}

/// A kernel on pairs.
trait Dot {
    type L: Layout;
    /// Pack one pair at a time ([`Strips::pack_by_element`]; benchmarks).
    const BY_ELEMENT: bool = false;
    /// Run on a thread before its first tile of a product.
    ///
    /// # Safety
    /// The CPU has the kernel's features.
    unsafe fn begin() {}
    /// Run on a thread after its last tile of a product.
    ///
    /// # Safety
    /// As [`Dot::begin`], after it.
    unsafe fn end() {}
    /// `C[i][j] = [C[i][j] +] sum_p dot(a pair (p, i), b pair (p, j))` for
    /// `i < mr`, `j < nr` of the tile at `c` (row stride `ldc`).
    ///
    /// # Safety
    /// `a` holds `pairs * L::MR` and `b` `pairs * L::NR` pairs, `pairs` is a
    /// multiple of `L::KSTEP / 2`, `mr <= L::MR`, `nr <= L::NR`, the tile lies
    /// inside C's allocation, [`Dot::begin`] ran on this thread, and the
    /// CPU has the kernel's features.
    unsafe fn tile(
        pairs: usize,
        a: *const u32,
        b: *const u32,
        c: *mut f32,
        ldc: usize,
        add: bool,
        edge: (usize, usize),
    );
}

fn run<K: Dot>(job: &Job, m: usize, threads: usize) {
    sgemm::for_each_part(
        m,
        job.n,
        job.k,
        (K::L::MR, K::L::NR),
        threads,
        |rows, cols| {
            with_packing(|p| {
                // SAFETY: `matmul` checked that the kernel runs here.
                unsafe { K::begin() };
                block::<K>(job, rows, cols, p);
                // SAFETY: after `begin`, on this thread.
                unsafe { K::end() };
            })
        },
    );
}

/// The k blocks of a product of depth `k`: near-equal, each a multiple of
/// `kstep` but the last, at most [`KC`] (a function of `k` and the kernel).
fn k_step(k: usize, kstep: usize) -> usize {
    k.div_ceil(k.div_ceil(KC)).next_multiple_of(kstep)
}

/// The part `rows x cols` of C, on this thread.
fn block<K: Dot>(job: &Job, rows: Range<usize>, cols: Range<usize>, pack: &mut Packing) {
    let (k, ldc) = (job.k, job.ldc);
    let step = k_step(k, K::L::KSTEP);
    // A 16-bit C's tile, made here in f32 and rounded as it is stored.
    let mut tile = [0f32; TILE_MAX];
    assert!(K::L::MR * K::L::NR <= TILE_MAX);
    assert!(
        matches!(job.c, Out::F32(_)) || step >= k,
        "a 16-bit C of one k block"
    );
    for p0 in (0..k).step_by(step) {
        let kc = step.min(k - p0);
        let pairs = kc.next_multiple_of(K::L::KSTEP) / 2;
        let add = job.accumulate || p0 > 0;
        for c0 in cols.clone().step_by(NC) {
            let nc = NC.min(cols.end - c0);
            pack_b::<K::L>(pack.b(), job.b, (p0, kc), (c0, nc), pairs, K::BY_ELEMENT);
            for r0 in rows.clone().step_by(MC) {
                let mc = MC.min(rows.end - r0);
                pack_a::<K::L>(pack.a(), job.a, (r0, mc), (p0, kc), pairs, K::BY_ELEMENT);
                let (a, b) = pack.both();
                let (mr_max, nr_max) = (K::L::MR, K::L::NR);
                for ir in (0..mc).step_by(mr_max) {
                    let mr = mr_max.min(mc - ir);
                    let ap = a[ir * pairs..][..mr_max * pairs].as_ptr();
                    for jr in (0..nc).step_by(nr_max) {
                        let nr = nr_max.min(nc - jr);
                        let bp = b[jr * pairs..][..nr_max * pairs].as_ptr();
                        let at = (r0 + ir) * ldc + c0 + jr;
                        let edge = (mr, nr);
                        // SAFETY: the strips hold pairs * MR and pairs * NR
                        // pairs (sliced above), pairs is a multiple of
                        // KSTEP / 2; the tile's rows r0+ir..+mr and columns
                        // c0+jr..+nr lie inside C (m x n, checked by
                        // `matmul`), and this task alone writes them; `run`
                        // ran `begin` on this thread; a 16-bit C is made in
                        // `tile` (MR x NR, row stride NR), one k block.
                        unsafe {
                            match job.c {
                                Out::F32(c) => {
                                    K::tile(pairs, ap, bp, c.get().add(at), ldc, add, edge)
                                }
                                Out::Bf16(c) => {
                                    K::tile(pairs, ap, bp, tile.as_mut_ptr(), nr_max, false, edge);
                                    narrow_tile(
                                        &tile[..mr * nr_max],
                                        nr_max,
                                        c.get().add(at),
                                        ldc,
                                        nr,
                                    );
                                }
                            }
                        };
                    }
                }
            }
        }
    }
}

/// Most elements of a kernel's tile (AMX's 32 x 32).
const TILE_MAX: usize = 32 * 32;

/// The first `nr` columns of the rows of `tile` (row stride `ld`), each
/// rounded to bf16, into the 16-bit C at `c` (row stride `ldc`).
///
/// # Safety
/// Those rows and columns of C lie inside one allocation that this thread
/// alone writes.
unsafe fn narrow_tile(tile: &[f32], ld: usize, c: *mut u16, ldc: usize, nr: usize) {
    for (i, row) in tile.chunks(ld).enumerate() {
        // SAFETY: row i's first nr elements lie inside C (the caller's
        // contract).
        let dst = unsafe { std::slice::from_raw_parts_mut(c.add(i * ldc), nr) };
        narrow(dst, &row[..nr]);
    }
}

/// `src` rounded to bf16, as bit patterns, into `dst` (as long).
pub(super) fn narrow(dst: &mut [u16], src: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F.
        return unsafe { x86::narrow(dst, src) };
    }
    dst.iter_mut().zip(src).for_each(|(d, &v)| *d = to_bf16(v));
}

/// Two values as one pair of bf16: `lo` (the even k) in the lower half.
#[inline(always)]
pub(super) fn pair(lo: f32, hi: f32) -> u32 {
    (round_bf16(lo).to_bits() >> 16) | (round_bf16(hi).to_bits() & 0xffff_0000)
}

/// A's rows `r0..r0 + mc`, columns `p0..p0 + kc` into `MR`-tall strips of
/// `pairs` pairs each (strip `q` at `q * MR * pairs`, laid out by
/// [`Layout::a_at`]); rows past the block and k past `kc` are zero.
fn pack_a<L: Layout>(
    dst: &mut [u32],
    a: Lhs,
    rows: (usize, usize),
    ks: (usize, usize),
    pairs: usize,
    by_element: bool,
) {
    let strips = Strips {
        width: L::MR,
        at: move |p, i| L::a_at(p, i, pairs),
        run_i: L::A_RUN_I,
        run_p: L::A_RUN_P,
    };
    match (a, by_element) {
        (Lhs::Mat(a), true) => strips.pack_by_element(dst, a, rows, ks, pairs),
        (a, _) => strips.pack(dst, a, rows, ks, pairs),
    }
}

/// B's rows `p0..p0 + kc`, columns `c0..c0 + nc` into `NR`-wide strips of
/// `pairs` pairs of rows each (strip `q` at `q * NR * pairs`, laid out by
/// [`Layout::b_at`]): B's transpose packed as A is.
fn pack_b<L: Layout>(
    dst: &mut [u32],
    b: Rhs,
    ks: (usize, usize),
    cols: (usize, usize),
    pairs: usize,
    by_element: bool,
) {
    let strips = Strips {
        width: L::NR,
        at: L::b_at,
        run_i: L::B_RUN_J,
        run_p: L::B_RUN_P,
    };
    match b {
        Rhs::F32(b) => {
            let bt = Mat {
                data: b.data,
                rs: b.cs,
                cs: b.rs,
            };
            if by_element {
                strips.pack_by_element(dst, bt, cols, ks, pairs)
            } else {
                strips.pack(dst, Lhs::Mat(bt), cols, ks, pairs)
            }
        }
        Rhs::Bf16(b) => {
            let bt = Mat16 {
                data: b.data,
                rs: b.cs,
                cs: b.rs,
            };
            strips.pack(dst, Lhs::Mat16(bt), cols, ks, pairs)
        }
    }
}

/// How an operand is packed: strips of `width` rows of pairs, pair `p` of
/// row `i` at `at(p, i)`, which is contiguous over `run_i` consecutive rows
/// (from a multiple of `run_i`) and over `run_p` consecutive pairs (from a
/// multiple of `run_p`).
#[derive(Clone, Copy)]
struct Strips<F> {
    width: usize,
    at: F,
    run_i: usize,
    run_p: usize,
}

/// Rows and pairs of the tile a transposing pack converts at once.
const T: usize = 16;

/// Most rows whose columns are gathered at once ([`Lhs::Im2colT`]): a
/// block of A's rows.
const GATHER: usize = MC;

impl<F: Fn(usize, usize) -> usize + Copy> Strips<F> {
    /// `x`'s rows `r0..r0 + mc`, columns `p0..p0 + kc` into strips of
    /// `pairs` pairs each (strip `q` at `q * width * pairs`); rows past the
    /// block and k past `kc` are zero. Same result as
    /// [`Strips::pack_by_element`]; it converts along whichever direction
    /// `x` is contiguous in (vector loads and rounding), then stores whole
    /// runs where the layout is contiguous the same way and goes through a
    /// 16 x 16 tile where it is not. On AVX-512 CPUs (F, BW, VL) compiled
    /// for them.
    fn pack(self, dst: &mut [u32], x: Lhs, rows: (usize, usize), ks: (usize, usize), pairs: usize) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vl")
        {
            // SAFETY: the CPU has AVX-512F, BW and VL.
            return unsafe { self.pack_avx512(dst, x, rows, ks, pairs) };
        }
        self.pack_runs::<false>(dst, x, rows, ks, pairs)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    fn pack_avx512(
        self,
        dst: &mut [u32],
        x: Lhs,
        rows: (usize, usize),
        ks: (usize, usize),
        pairs: usize,
    ) {
        self.pack_runs::<true>(dst, x, rows, ks, pairs)
    }

    /// [`Strips::pack`]; `AVX512`: with AVX-512F, BW and VL (only inside a
    /// function compiled for them, on a CPU that has them).
    #[inline(always)]
    fn pack_runs<const AVX512: bool>(
        self,
        dst: &mut [u32],
        x: Lhs,
        (r0, mc): (usize, usize),
        ks: (usize, usize),
        pairs: usize,
    ) {
        let width = self.width;
        if let Lhs::Im2colT { x, g, first } = x {
            // Every strip's columns gathered at once: a position's window
            // is found once per block, not once per strip.
            assert!(mc <= GATHER, "a block of {mc} rows");
            return self.pack_im2col_t::<AVX512>(dst, (x, &g, first), (r0, mc), ks, pairs);
        }
        // An im2col matrix's columns are the same taps in every strip.
        let taps = match x {
            Lhs::Im2col { g, .. } => Some(Taps::new(&g, ks.0, ks.1)),
            _ => None,
        };
        for (q, strip) in dst[..mc.div_ceil(width) * width * pairs]
            .chunks_exact_mut(width * pairs)
            .enumerate()
        {
            let rows = (r0 + q * width, width.min(mc - q * width));
            match (x, &taps) {
                (Lhs::Mat(x), _) => self.strip_of_mat::<AVX512>(strip, x, rows, ks, pairs),
                (Lhs::Mat16(x), _) => self.strip_of_mat16(strip, x, rows, ks, pairs),
                (Lhs::Im2col { x, g }, Some(taps)) => {
                    self.strip_of_im2col::<AVX512>(strip, (x, &g, taps), rows, ks.1, pairs)
                }
                (Lhs::Im2col { .. }, None) => unreachable!("taps made above"),
                (Lhs::Im2colT { .. }, _) => unreachable!("packed above"),
            }
        }
    }

    /// One strip of [`Strips::pack_runs`]: `x`'s rows `top..top + rows`.
    #[inline(always)]
    fn strip_of_mat<const AVX512: bool>(
        self,
        strip: &mut [u32],
        x: Mat,
        (top, rows): (usize, usize),
        (p0, kc): (usize, usize),
        pairs: usize,
    ) {
        let (at, whole) = (self.at, kc / 2);
        if x.rs == 1 {
            // Each column's rows are contiguous.
            let col = |c: usize| &x.data[top + (p0 + c) * x.cs..][..rows];
            for pb in (0..whole).step_by(T) {
                self.pack_columns::<AVX512, f32>(strip, rows, (pb, T.min(whole - pb)), col);
            }
        } else if x.cs == 1 {
            // Each row's k are contiguous: its pairs are adjacent values.
            let fill = |i: usize, pb: usize, d: &mut [u32]| {
                adjacent_pairs(d, &x.data[(top + i) * x.rs + p0 + 2 * pb..][..2 * d.len()])
            };
            self.pack_filled::<AVX512>(strip, (0, rows), whole, fill);
        } else {
            for i in 0..rows {
                let row = (top + i) * x.rs + p0 * x.cs;
                for p in 0..whole {
                    let e = row + 2 * p * x.cs;
                    strip[at(p, i)] = pair(x.data[e], x.data[e + x.cs]);
                }
            }
        }
        let odd = |i: usize| x.data[(top + i) * x.rs + (p0 + kc - 1) * x.cs];
        self.pad(strip, (rows, kc), pairs, odd);
    }

    /// [`Strips::strip_of_mat`] of a matrix in 16 bits: its pairs copied
    /// (interleaved where they run across rows), nothing to round.
    #[inline(always)]
    fn strip_of_mat16(
        self,
        strip: &mut [u32],
        x: Mat16,
        (top, rows): (usize, usize),
        (p0, kc): (usize, usize),
        pairs: usize,
    ) {
        let (at, whole) = (self.at, kc / 2);
        let pair = |lo: u16, hi: u16| lo as u32 | (hi as u32) << 16;
        if x.rs == 1 {
            // Each column's rows are contiguous.
            let col = |c: usize| &x.data[top + (p0 + c) * x.cs..][..rows];
            for pb in (0..whole).step_by(T) {
                self.pack_columns::<false, u16>(strip, rows, (pb, T.min(whole - pb)), col);
            }
        } else {
            for i in 0..rows {
                let row = (top + i) * x.rs + p0 * x.cs;
                for p in 0..whole {
                    let e = row + 2 * p * x.cs;
                    strip[at(p, i)] = pair(x.data[e], x.data[e + x.cs]);
                }
            }
        }
        let odd = |i: usize| {
            let b = x.data[(top + i) * x.rs + (p0 + kc - 1) * x.cs];
            f32::from_bits((b as u32) << 16)
        };
        self.pad(strip, (rows, kc), pairs, odd);
    }

    /// One strip of [`Strips::pack_runs`] of the im2col matrix of `x` under
    /// `g` ([`Lhs::Im2col`]), `kc` of its columns (`taps`): its rows
    /// (output positions) `top..top + rows`.
    #[inline(always)]
    fn strip_of_im2col<const AVX512: bool>(
        self,
        strip: &mut [u32],
        (x, g, taps): (Values, &ConvGeom, &Taps),
        (top, rows): (usize, usize),
        kc: usize,
        pairs: usize,
    ) {
        let whole = kc / 2;
        // The same taps at every position, which steps along the map.
        let mut at = Position::new(g, top);
        if self.run_p >= whole {
            // Each row's pairs are contiguous in the strip: made there.
            for i in 0..rows {
                taps.pairs(x, g, at, &mut strip[(self.at)(0, i)..][..whole]);
                at.step(g);
            }
        } else {
            // Up to 16 rows' pairs at a time made in `rows16`, then placed.
            let mut rows16 = [0u32; T * KC / 2];
            for i0 in (0..rows).step_by(T) {
                let ni = T.min(rows - i0);
                for row in rows16.chunks_exact_mut(whole).take(ni) {
                    taps.pairs(x, g, at, row);
                    at.step(g);
                }
                let fill = |i: usize, pb: usize, d: &mut [u32]| {
                    d.copy_from_slice(&rows16[(i - i0) * whole + pb..][..d.len()])
                };
                self.pack_filled::<AVX512>(strip, (i0, ni), whole, fill);
            }
        }
        // k is even (c is): no odd last pair.
        self.pad(strip, (rows, kc), pairs, |_| 0.0);
    }

    /// [`Strips::pack_runs`] of the transposed im2col matrix of `x` under
    /// `g` from column `first` ([`Lhs::Im2colT`]): its rows (im2col
    /// columns) `first + r0..first + r0 + mc` (`mc` <= [`GATHER`]), its
    /// columns the output positions from `p0`.
    #[inline(always)]
    fn pack_im2col_t<const AVX512: bool>(
        self,
        dst: &mut [u32],
        (x, g, first): (Values, &ConvGeom, usize),
        (r0, mc): (usize, usize),
        (p0, kc): (usize, usize),
        pairs: usize,
    ) {
        match x {
            Values::F32(_) => {
                self.pack_im2col_t_of::<AVX512, f32>(dst, (x, g, first), (r0, mc), (p0, kc), pairs)
            }
            Values::Bf16(x16) if self.run_i >= self.width => {
                self.pack_im2col_t_16::<AVX512>(dst, (x16, g, first), (r0, mc), (p0, kc), pairs)
            }
            Values::Bf16(_) => {
                self.pack_im2col_t_of::<AVX512, u16>(dst, (x, g, first), (r0, mc), (p0, kc), pairs)
            }
        }
    }

    /// [`Strips::pack_im2col_t`] of a 16-bit input on a layout whose
    /// strips keep a pair's rows together (`run_i >= width`): each pair of
    /// output positions' tap runs are paired straight from `x` into the
    /// strips they fall in, nothing gathered first.
    #[inline(always)]
    fn pack_im2col_t_16<const AVX512: bool>(
        self,
        dst: &mut [u32],
        (x, g, first): (&[u16], &ConvGeom, usize),
        (r0, mc): (usize, usize),
        (p0, kc): (usize, usize),
        pairs: usize,
    ) {
        let (width, whole) = (self.width, kc / 2);
        let dst = &mut dst[..mc.div_ceil(width) * width * pairs];
        let taps = Taps::new(g, first + r0, mc);
        let zeros = [0u16; GATHER];
        let mut at = Position::new(g, p0);
        for p in 0..whole {
            let at1 = {
                let mut a = at;
                a.step(g);
                a
            };
            for &(out, tap, ch, n) in taps.runs() {
                let read = |a: Position| match a.source(g, tap, ch) {
                    Some(src) => &x[src..][..n],
                    None => &zeros[..n],
                };
                let (lo, hi) = (read(at), read(at1));
                // Rows out..out + n, a strip's part at a time.
                let (mut q, mut i) = (out / width, out % width);
                let mut done = 0;
                while done < n {
                    let len = (width - i).min(n - done);
                    let d = &mut dst[q * width * pairs + (self.at)(p, i)..][..len];
                    u16::pairs::<AVX512>(d, &lo[done..][..len], &hi[done..][..len]);
                    (q, i, done) = (q + 1, 0, done + len);
                }
            }
            at = at1;
            at.step(g);
        }
        let mut last = [0u16; GATHER];
        if kc % 2 == 1 {
            taps.gather(Values::Bf16(x), g, at, &mut last[..mc]);
        }
        let strips = (0..mc.div_ceil(width)).map(|q| (q * width, width.min(mc - q * width)));
        for ((top, rows), strip) in strips.zip(dst.chunks_exact_mut(width * pairs)) {
            self.pad(strip, (rows, kc), pairs, |i| last[top + i].f32());
        }
    }

    /// [`Strips::pack_im2col_t`] through columns of `E`: f32, or the 16
    /// bits of a 16-bit input as they lie (no widening, no rounding).
    #[inline(always)]
    fn pack_im2col_t_of<const AVX512: bool, E: Half>(
        self,
        dst: &mut [u32],
        (x, g, first): (Values, &ConvGeom, usize),
        (r0, mc): (usize, usize),
        (p0, kc): (usize, usize),
        pairs: usize,
    ) {
        let (width, whole) = (self.width, kc / 2);
        let dst = &mut dst[..mc.div_ceil(width) * width * pairs];
        // The same few taps at every output position, which step along
        // the map.
        let taps = Taps::new(g, first + r0, mc);
        let mut at = Position::new(g, p0);
        let strips =
            || (0..mc.div_ceil(width)).map(move |q| (q * width, width.min(mc - q * width)));
        // 16 pairs of columns of all the block's rows gathered at a time,
        // then each strip's packed as a matrix's contiguous columns are.
        let mut block = [E::default(); 2 * T * GATHER];
        for pb in (0..whole).step_by(T) {
            let np = T.min(whole - pb);
            for col in block.chunks_exact_mut(mc).take(2 * np) {
                taps.gather(x, g, at, col);
                at.step(g);
            }
            for ((top, rows), strip) in strips().zip(dst.chunks_exact_mut(width * pairs)) {
                let col = |c: usize| &block[(c - 2 * pb) * mc + top..][..rows];
                self.pack_columns::<AVX512, E>(strip, rows, (pb, np), col);
            }
        }
        let mut last = [E::default(); GATHER];
        if kc % 2 == 1 {
            taps.gather(x, g, at, &mut last[..mc]);
        }
        for ((top, rows), strip) in strips().zip(dst.chunks_exact_mut(width * pairs)) {
            self.pad(strip, (rows, kc), pairs, |i| last[top + i].f32());
        }
    }

    /// Pairs `pb..pb + np` (`np` <= 16) of a strip's `rows` rows, pair `p`
    /// from the operand's columns `2p` and `2p + 1`, which `col(c)` gives
    /// (the strip's `rows` values of column `c`, contiguous): stored whole
    /// where the layout runs along the rows, else by 16 x 16 tiles
    /// transposed.
    #[inline(always)]
    fn pack_columns<'c, const AVX512: bool, E: Half + 'c>(
        self,
        strip: &mut [u32],
        rows: usize,
        (pb, np): (usize, usize),
        col: impl Fn(usize) -> &'c [E],
    ) {
        let at = self.at;
        if self.run_i > 1 {
            for p in pb..pb + np {
                let (c0, c1) = (col(2 * p), col(2 * p + 1));
                // (Not `step_by`: it divides, once per pair here.)
                let mut i0 = 0;
                while i0 < rows {
                    let n = self.run_i.min(rows - i0);
                    let (d, lo, hi) =
                        (&mut strip[at(p, i0)..][..n], &c0[i0..][..n], &c1[i0..][..n]);
                    E::pairs::<AVX512>(d, lo, hi);
                    i0 += n;
                }
            }
        } else {
            // Pairs p.. of rows i.. as a tile t[p][i], transposed to run
            // along p.
            let mut t = [0u32; T * T];
            for i0 in (0..rows).step_by(T) {
                let ni = T.min(rows - i0);
                for (pp, t) in t.chunks_exact_mut(T).take(np).enumerate() {
                    let (c0, c1) = (col(2 * (pb + pp)), col(2 * (pb + pp) + 1));
                    E::pairs::<AVX512>(&mut t[..ni], &c0[i0..][..ni], &c1[i0..][..ni]);
                }
                let tt = transpose::<AVX512>(&t);
                for (ii, row) in tt.chunks_exact(T).take(ni).enumerate() {
                    self.place_run(strip, (pb, i0 + ii), &row[..np], false);
                }
            }
        }
    }

    /// Rows `first..first + rows` of a strip (`first` a multiple of 16),
    /// `whole` pairs each, from `fill(i, pb, dst)`, which writes pairs
    /// `pb..pb + dst.len()` of the strip's row `i`: straight into the strip
    /// where the layout runs along the pairs, else by 16 x 16 tiles
    /// transposed.
    #[inline(always)]
    fn pack_filled<const AVX512: bool>(
        self,
        strip: &mut [u32],
        (first, rows): (usize, usize),
        whole: usize,
        fill: impl Fn(usize, usize, &mut [u32]),
    ) {
        let at = self.at;
        if self.run_p > 1 {
            for i in first..first + rows {
                for pb in (0..whole).step_by(self.run_p) {
                    let n = self.run_p.min(whole - pb);
                    fill(i, pb, &mut strip[at(pb, i)..][..n]);
                }
            }
        } else {
            // Rows i.. of pairs p.. as a tile t[i][p], transposed to run
            // along i.
            let mut t = [0u32; T * T];
            for i0 in (first..first + rows).step_by(T) {
                let ni = T.min(first + rows - i0);
                for pb in (0..whole).step_by(T) {
                    let np = T.min(whole - pb);
                    for (ii, t) in t.chunks_exact_mut(T).take(ni).enumerate() {
                        fill(i0 + ii, pb, &mut t[..np]);
                    }
                    let tt = transpose::<AVX512>(&t);
                    for (pp, col) in tt.chunks_exact(T).take(np).enumerate() {
                        self.place_run(strip, (pb + pp, i0), &col[..ni], true);
                    }
                }
            }
        }
    }

    /// `run` as the pairs `(p, i)`, `(p + 1, i)`, ... (`along_i`: `(p, i)`,
    /// `(p, i + 1)`, ...): one copy where the layout keeps them contiguous
    /// (the run starts a run of the layout's and fits in it), else one by one.
    #[inline(always)]
    fn place_run(self, strip: &mut [u32], (p, i): (usize, usize), run: &[u32], along_i: bool) {
        let (start, layout_run) = if along_i {
            (i, self.run_i)
        } else {
            (p, self.run_p)
        };
        let at = (self.at)(p, i);
        if start % layout_run + run.len() <= layout_run {
            strip[at..][..run.len()].copy_from_slice(run);
        } else {
            for (n, &v) in run.iter().enumerate() {
                let (p, i) = if along_i { (p, i + n) } else { (p + n, i) };
                strip[(self.at)(p, i)] = v;
            }
        }
    }

    /// An odd k's last pair, the padding of k, and the rows past the block.
    /// `odd(i)`: row `i`'s last value when `kc` is odd.
    #[inline(always)]
    fn pad(
        self,
        strip: &mut [u32],
        (rows, kc): (usize, usize),
        pairs: usize,
        odd: impl Fn(usize) -> f32,
    ) {
        let whole = kc / 2;
        for i in 0..self.width {
            for p in whole..pairs {
                let lo = if i < rows && 2 * p < kc { odd(i) } else { 0.0 };
                strip[(self.at)(p, i)] = pair(lo, 0.0);
            }
            if i >= rows {
                for p in 0..whole {
                    strip[(self.at)(p, i)] = 0;
                }
            }
        }
    }

    /// The definition of [`Strips::pack`], one pair at a time (its tests,
    /// and the baseline of its benchmark).
    fn pack_by_element(
        self,
        dst: &mut [u32],
        x: Mat,
        (r0, mc): (usize, usize),
        (p0, kc): (usize, usize),
        pairs: usize,
    ) {
        let width = self.width;
        for (q, strip) in dst[..mc.div_ceil(width) * width * pairs]
            .chunks_exact_mut(width * pairs)
            .enumerate()
        {
            let (top, rows) = (r0 + q * width, width.min(mc - q * width));
            for i in 0..rows {
                for p in 0..kc / 2 {
                    let e = (top + i) * x.rs + (p0 + 2 * p) * x.cs;
                    strip[(self.at)(p, i)] = pair(x.data[e], x.data[e + x.cs]);
                }
            }
            let odd = |i: usize| x.data[(top + i) * x.rs + (p0 + kc - 1) * x.cs];
            self.pad(strip, (rows, kc), pairs, odd);
        }
    }
}

/// Columns `k0..k0 + len` (`len` <= [`KC`]) of an im2col matrix as runs
/// of one tap each: `(at, (tap row, tap column), first channel, n)`
/// ([`tap_runs`]): worked out once for every output position.
struct Taps {
    /// The first `count` are written.
    runs: [MaybeUninit<TapRun>; TAP_RUNS],
    count: usize,
}

/// A run of [`Taps`]: `(at, (tap row, tap column), first channel, n)`.
type TapRun = (usize, (usize, usize), usize, usize);

/// Most runs of [`Taps`]: one a tap when a tap holds one channel, and one
/// more for a part tap at each end.
const TAP_RUNS: usize = KC + 2;

impl Taps {
    /// The taps of columns `k0..k0 + len` under `g`.
    fn new(g: &ConvGeom, k0: usize, len: usize) -> Self {
        // Not zeroed first: the array is as large as a few rows' pairs.
        let mut taps = Taps {
            runs: [const { MaybeUninit::uninit() }; TAP_RUNS],
            count: 0,
        };
        tap_runs(g, (k0, len), |at, tap, ch, n| {
            taps.runs[taps.count].write((at, tap, ch, n));
            taps.count += 1;
        });
        taps
    }

    /// The runs.
    #[inline(always)]
    fn runs(&self) -> &[TapRun] {
        // SAFETY: the first `count` are written (`new`), and
        // `MaybeUninit<T>` has `T`'s layout.
        unsafe { std::slice::from_raw_parts(self.runs.as_ptr().cast(), self.count) }
    }

    /// These columns (`len` even, from an even `k0`, `g.c` even: no pair
    /// spans two taps) of the im2col row of output position `at` as pairs,
    /// from `x` (zeros where a tap lies in the padding), into `dst`.
    #[inline(always)]
    fn pairs(&self, x: Values, g: &ConvGeom, at: Position, dst: &mut [u32]) {
        for &(out, tap, ch, n) in self.runs() {
            let d = &mut dst[out / 2..][..n / 2];
            match (at.source(g, tap, ch), x) {
                (Some(src), Values::F32(x)) => adjacent_pairs(d, &x[src..][..n]),
                (Some(src), Values::Bf16(x)) => copy_pairs(d, &x[src..][..n]),
                (None, _) => d.fill(0),
            }
        }
    }

    /// These columns of the im2col row of output position `at`, from `x`
    /// (zeros where a tap lies in the padding), into `dst`.
    #[inline(always)]
    fn gather<E: Half>(&self, x: Values, g: &ConvGeom, at: Position, dst: &mut [E]) {
        for &(out, tap, ch, n) in self.runs() {
            let d = &mut dst[out..][..n];
            match at.source(g, tap, ch) {
                Some(src) => E::read(x, src, d),
                None => d.fill(E::default()),
            }
        }
    }
}

/// The `T x T` tile `t` (row-major) transposed; `AVX512`: with AVX-512F
/// shuffles (only inside a function compiled for it, on a CPU that has it).
#[inline(always)]
fn transpose<const AVX512: bool>(t: &[u32; T * T]) -> [u32; T * T] {
    #[cfg(target_arch = "x86_64")]
    if AVX512 {
        // SAFETY: the caller's contract: AVX-512F is enabled and present.
        return unsafe { x86::transpose_16x16(t) };
    }
    let mut out = [0u32; T * T];
    for (i, row) in t.chunks_exact(T).enumerate() {
        for (j, &v) in row.iter().enumerate() {
            out[j * T + i] = v;
        }
    }
    out
}

/// `dst[i] = pair(lo[i], hi[i])` (a loop the compiler vectorises).
#[inline(always)]
pub(super) fn pairs_of(dst: &mut [u32], lo: &[f32], hi: &[f32]) {
    for (d, (&lo, &hi)) in dst.iter_mut().zip(lo.iter().zip(hi)) {
        *d = pair(lo, hi);
    }
}

/// `dst[p] = pair(src[2p], src[2p + 1])` (a loop the compiler vectorises).
#[inline(always)]
pub(super) fn adjacent_pairs(dst: &mut [u32], src: &[f32]) {
    for (d, v) in dst.iter_mut().zip(src.chunks_exact(2)) {
        *d = pair(v[0], v[1]);
    }
}

/// What a strip's pairs are made from: f32 values (rounded to bf16 as
/// they are paired) or bf16 ones in 16 bits (paired as they lie).
trait Half: AsF32 + Default + 'static {
    /// `dst[i]` = the pair `(lo[i], hi[i])`; `AVX512`: with AVX-512F, BW
    /// and VL (only inside a function compiled for them, on a CPU that has
    /// them).
    fn pairs<const AVX512: bool>(dst: &mut [u32], lo: &[Self], hi: &[Self]);
    /// `x[at..at + dst.len()]` as this element.
    fn read(x: Values, at: usize, dst: &mut [Self]);
}

impl Half for f32 {
    #[inline(always)]
    fn pairs<const AVX512: bool>(dst: &mut [u32], lo: &[f32], hi: &[f32]) {
        #[cfg(target_arch = "x86_64")]
        if AVX512 {
            // SAFETY: `AVX512` is set only inside a function compiled for
            // AVX-512F, on a CPU that has it.
            return unsafe { x86::pairs_of(dst, lo, hi) };
        }
        pairs_of(dst, lo, hi)
    }

    #[inline(always)]
    fn read(x: Values, at: usize, dst: &mut [f32]) {
        x.read(at, dst)
    }
}

impl Half for u16 {
    #[inline(always)]
    fn pairs<const AVX512: bool>(dst: &mut [u32], lo: &[u16], hi: &[u16]) {
        #[cfg(target_arch = "x86_64")]
        if AVX512 {
            // SAFETY: `AVX512` is set only inside a function compiled for
            // AVX-512F, BW and VL, on a CPU that has them.
            return unsafe { x86::pairs16(dst, lo, hi) };
        }
        dst.iter_mut()
            .zip(lo.iter().zip(hi))
            .for_each(|(d, (&lo, &hi))| *d = lo as u32 | (hi as u32) << 16);
    }

    #[inline(always)]
    fn read(x: Values, at: usize, dst: &mut [u16]) {
        match x {
            // A loop, not `copy_from_slice`: the runs are a few dozen
            // values, shorter than a call to `memmove` is worth.
            Values::Bf16(v) => {
                let n = dst.len();
                dst.iter_mut().zip(&v[at..][..n]).for_each(|(d, &v)| *d = v)
            }
            Values::F32(v) => {
                let n = dst.len();
                dst.iter_mut()
                    .zip(&v[at..][..n])
                    .for_each(|(d, &v)| *d = to_bf16(v))
            }
        }
    }
}

/// `dst[p]` = the pair `src[2p], src[2p + 1]` of bf16 values in 16 bits,
/// the lower half the first: on a little-endian CPU, the bits as they lie.
#[inline(always)]
fn copy_pairs(dst: &mut [u32], src: &[u16]) {
    let src = &src[..2 * dst.len()];
    if cfg!(target_endian = "little") {
        for (p, d) in dst.iter_mut().enumerate() {
            // SAFETY: 2p + 1 < src.len() (sliced above); an unaligned read
            // of the two values' four bytes.
            *d = unsafe { src.as_ptr().add(2 * p).cast::<u32>().read_unaligned() };
        }
    } else {
        for (d, h) in dst.iter_mut().zip(src.chunks_exact(2)) {
            *d = h[0] as u32 | (h[1] as u32) << 16;
        }
    }
}

/// One thread's packing buffers (pairs), 64-byte aligned.
struct Packing {
    a: super::Aligned,
    b: super::Aligned,
}

impl Packing {
    fn a(&mut self) -> &mut [u32] {
        as_u32(&mut self.a)
    }
    fn b(&mut self) -> &mut [u32] {
        as_u32(&mut self.b)
    }
    fn both(&mut self) -> (&[u32], &[u32]) {
        (as_u32(&mut self.a), as_u32(&mut self.b))
    }
}

pub(super) fn as_u32(v: &mut [f32]) -> &mut [u32] {
    // SAFETY: f32 and u32 have the same size and alignment, and every bit
    // pattern is a valid value of both.
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr().cast(), v.len()) }
}

thread_local! {
    static PACKING: RefCell<Option<Packing>> = const { RefCell::new(None) };
}

fn with_packing<R>(f: impl FnOnce(&mut Packing) -> R) -> R {
    PACKING.with(|p| {
        let mut p = p.borrow_mut();
        f(p.get_or_insert_with(|| Packing {
            a: super::Aligned::zeros(MC * KC / 2),
            b: super::Aligned::zeros(KC / 2 * NC),
        }))
    })
}

/// The bf16 halves of a pair as f32: (lower, upper).
#[inline(always)]
fn halves(v: u32) -> (f32, f32) {
    (f32::from_bits(v << 16), f32::from_bits(v & 0xffff_0000))
}

/// Adds the `mr x nr` corner of `acc` (row stride `NR`) to, or stores it
/// in, the tile of C at `c`.
///
/// # Safety
/// The tile lies inside C's allocation.
unsafe fn store(
    acc: &[f32],
    nr_max: usize,
    c: *mut f32,
    ldc: usize,
    add: bool,
    (mr, nr): (usize, usize),
) {
    for (i, row) in acc.chunks_exact(nr_max).take(mr).enumerate() {
        // SAFETY: row i of the tile lies inside C (the caller's contract).
        let dst = unsafe { std::slice::from_raw_parts_mut(c.add(i * ldc), nr) };
        for (d, &v) in dst.iter_mut().zip(row) {
            *d = if add { *d + v } else { v };
        }
    }
}

/// The AMX layout: per 16 pairs (one tile's depth), A's 32 rows as two
/// 16 x 16 tiles of pairs (row-major: row `i` holds its 16 pairs), B's 32
/// columns as two tiles of 16 rows of pairs x 16 columns (VNNI).
struct AmxLayout;

impl Layout for AmxLayout {
    const MR: usize = 32;
    const NR: usize = 32;
    fn a_at(p: usize, i: usize, _pairs: usize) -> usize {
        (p / 16) * 32 * 16 + i * 16 + p % 16
    }
    fn b_at(p: usize, j: usize) -> usize {
        (p / 16) * 16 * 32 + (j / 16) * 256 + (p % 16) * 16 + j % 16
    }
    const A_RUN_I: usize = 1;
    const A_RUN_P: usize = 16;
    const B_RUN_J: usize = 16;
    const B_RUN_P: usize = 1;
    const KSTEP: usize = 32;
    const ORDER: Order = Order::TileSums;
}

/// The AVX512-BF16 layout: A strips of 12 rows of pairs, pair-major (`p *
/// 12 + i`: one broadcast per row and pair); B strips of 32 columns of
/// pairs, pair-major (`p * 32 + j`: two 16-lane loads per pair).
struct VnniLayout;

impl Layout for VnniLayout {
    const MR: usize = 12;
    const NR: usize = 32;
    fn a_at(p: usize, i: usize, _pairs: usize) -> usize {
        p * 12 + i
    }
    fn b_at(p: usize, j: usize) -> usize {
        p * 32 + j
    }
    const A_RUN_I: usize = 12;
    const A_RUN_P: usize = 1;
    const B_RUN_J: usize = 32;
    const B_RUN_P: usize = 1;
    const KSTEP: usize = 2;
    const ORDER: Order = Order::UpperFirst;
}

/// [`VnniLayout`] with each A strip's rows along the pairs (`i * pairs +
/// p`): where A's rows are contiguous along k (a matrix stored by rows, the
/// im2col rows of an NHWC input) they are packed as runs, with no
/// transposition; the kernel broadcasts from 12 rows. The same sums in the
/// same order as [`VnniLayout`]'s, so the same bits.
struct VnniRowLayout;

impl Layout for VnniRowLayout {
    const MR: usize = 12;
    const NR: usize = 32;
    fn a_at(p: usize, i: usize, pairs: usize) -> usize {
        i * pairs + p
    }
    fn b_at(p: usize, j: usize) -> usize {
        p * 32 + j
    }
    const A_RUN_I: usize = 1;
    const A_RUN_P: usize = usize::MAX;
    const B_RUN_J: usize = 32;
    const B_RUN_P: usize = 1;
    const KSTEP: usize = 2;
    const ORDER: Order = Order::UpperFirst;
}

impl Lhs<'_> {
    /// Whether each row's k are contiguous (packed best in
    /// [`VnniRowLayout`]).
    fn rows_along_k(&self) -> bool {
        match self {
            Lhs::Mat(m) => m.cs == 1 && m.rs != 1,
            Lhs::Mat16(m) => m.cs == 1 && m.rs != 1,
            Lhs::Im2col { .. } => true,
            Lhs::Im2colT { .. } => false,
        }
    }
}

/// A bf16 dot-product instruction as the Intel SDM defines it, in plain
/// Rust on its kernel's layout `L`, additions in its [`Order`], each
/// rounded to fp32 (a product of two bf16 is exact in fp32). Denormals are
/// not flushed here (the instructions flush them; the engine's values are
/// far from them).
struct Model<L>(std::marker::PhantomData<L>);

impl<L: Layout> Dot for Model<L> {
    type L = L;
    unsafe fn tile(
        pairs: usize,
        a: *const u32,
        b: *const u32,
        c: *mut f32,
        ldc: usize,
        add: bool,
        edge: (usize, usize),
    ) {
        // SAFETY: the caller's contract (sizes of a and b).
        let (a, b) = unsafe {
            (
                std::slice::from_raw_parts(a, pairs * L::MR),
                std::slice::from_raw_parts(b, pairs * L::NR),
            )
        };
        let mut acc = [0f32; 32 * 32];
        // The AMX kernel loads a whole tile of C into its accumulators.
        let from_c = L::ORDER == Order::TileSums && add && edge == (L::MR, L::NR);
        if from_c {
            for (i, row) in acc.chunks_exact_mut(L::NR).take(L::MR).enumerate() {
                // SAFETY: the whole tile lies inside C (the caller's contract).
                row.copy_from_slice(unsafe { std::slice::from_raw_parts(c.add(i * ldc), L::NR) });
            }
        }
        for i in 0..L::MR {
            for j in 0..L::NR {
                let dot = |p: usize| {
                    let a = a[L::a_at(p, i, pairs)];
                    let ((a0, a1), (b0, b1)) = (halves(a), halves(b[L::b_at(p, j)]));
                    (a0 * b0, a1 * b1)
                };
                let c = &mut acc[i * L::NR + j];
                match L::ORDER {
                    Order::UpperFirst => {
                        for p in 0..pairs {
                            let (lo, hi) = dot(p);
                            *c += hi;
                            *c += lo;
                        }
                    }
                    Order::TileSums => {
                        for p0 in (0..pairs).step_by(16) {
                            let (mut lo, mut hi) = (0f32, 0f32);
                            for p in p0..p0 + 16 {
                                let (l, h) = dot(p);
                                lo += l;
                                hi += h;
                            }
                            *c += lo + hi;
                        }
                    }
                }
            }
        }
        // SAFETY: the caller's contract (the tile lies inside C).
        unsafe { store(&acc, L::NR, c, ldc, add && !from_c, edge) }
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) mod x86 {
    use super::{AmxLayout, Dot, Layout, store};
    use crate::engine::cpu::sgemm::x86::store_12x32;
    use std::arch::asm;
    use std::arch::x86_64::*;

    /// The 16-lane steps over `n` values: the first value of each, and the
    /// mask of its lanes below `n` (all 16 but in the last).
    #[inline(always)]
    fn lanes16(n: usize) -> impl Iterator<Item = (usize, __mmask16)> {
        (0..n)
            .step_by(16)
            .map(move |i0| (i0, (u32::MAX >> (32 - (n - i0).min(16))) as u16))
    }

    /// [`super::pairs_of`] on 16 lanes at a time (masked loads and
    /// stores: the runs are 12 or 32 pairs long, which the compiler leaves
    /// to scalar code). The same bits: [`super::round_bf16`] on integer
    /// lanes, NaNs made quiet.
    ///
    /// # Safety
    /// The CPU has AVX-512F.
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub unsafe fn pairs_of(dst: &mut [u32], lo: &[f32], hi: &[f32]) {
        let n = dst.len();
        assert!(lo.len() >= n && hi.len() >= n);
        for (i0, k) in lanes16(n) {
            // SAFETY: the lanes `k` keeps, from i0, lie inside the slices
            // (checked above); masked-off lanes are not touched.
            unsafe {
                let l = round(_mm512_maskz_loadu_ps(k, lo.as_ptr().add(i0)));
                let h = round(_mm512_maskz_loadu_ps(k, hi.as_ptr().add(i0)));
                let v = _mm512_or_si512(_mm512_srli_epi32(l, 16), h);
                _mm512_mask_storeu_epi32(dst.as_mut_ptr().add(i0).cast(), k, v);
            }
        }
    }

    /// `dst[i] = lo[i] | hi[i] << 16`, 16 lanes at a time (masked: the
    /// runs are 12 or 32 pairs long).
    ///
    /// # Safety
    /// The CPU has AVX-512F, BW and VL.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    #[inline]
    pub unsafe fn pairs16(dst: &mut [u32], lo: &[u16], hi: &[u16]) {
        let n = dst.len();
        assert!(lo.len() >= n && hi.len() >= n);
        for (i0, k) in lanes16(n) {
            // SAFETY: the lanes `k` keeps, from i0, lie inside the slices
            // (checked above); masked-off lanes are not touched.
            unsafe {
                let l =
                    _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(k, lo.as_ptr().add(i0).cast()));
                let h =
                    _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(k, hi.as_ptr().add(i0).cast()));
                let v = _mm512_or_si512(l, _mm512_slli_epi32(h, 16));
                _mm512_mask_storeu_epi32(dst.as_mut_ptr().add(i0).cast(), k, v);
            }
        }
    }

    /// [`super::round_bf16`] on 16 lanes, as bits (the lower half zero).
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn round(x: __m512) -> __m512i {
        let bits = _mm512_castps_si512(x);
        let lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
        let up = _mm512_add_epi32(_mm512_add_epi32(bits, _mm512_set1_epi32(0x7fff)), lsb);
        let nan = _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
        let quiet = _mm512_or_si512(bits, _mm512_set1_epi32(0x0040_0000));
        _mm512_and_si512(
            _mm512_mask_blend_epi32(nan, up, quiet),
            _mm512_set1_epi32(0xffff_0000u32 as i32),
        )
    }

    /// [`super::adjacent_pairs`] on 16 values at a time: [`narrow`] into
    /// the pairs' halves. The same bits.
    ///
    /// # Safety
    /// The CPU has AVX-512F.
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub unsafe fn adjacent_pairs(dst: &mut [u32], src: &[f32]) {
        let n = 2 * dst.len();
        // SAFETY: `dst`'s n halves are its memory as u16 (same
        // allocation, alignment 4 >= 2), borrowed mutably here.
        let halves = unsafe { std::slice::from_raw_parts_mut(dst.as_mut_ptr().cast(), n) };
        // SAFETY: the CPU has AVX-512F (the caller's contract).
        unsafe { narrow(halves, &src[..n]) }
    }

    /// [`super::narrow`] on 16 values at a time (rounded, narrowed to 16
    /// bits as they are stored). The same bits.
    ///
    /// # Safety
    /// The CPU has AVX-512F.
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub unsafe fn narrow(dst: &mut [u16], src: &[f32]) {
        let n = dst.len();
        assert!(src.len() >= n);
        let out = dst.as_mut_ptr();
        for (i0, k) in lanes16(n) {
            // SAFETY: the values `k` keeps, from i0, lie inside `src` and
            // `dst` (checked above); masked-off lanes are not touched.
            unsafe {
                let v =
                    _mm512_srli_epi32(round(_mm512_maskz_loadu_ps(k, src.as_ptr().add(i0))), 16);
                _mm512_mask_cvtepi32_storeu_epi16(out.add(i0).cast(), k, v);
            }
        }
    }

    /// A 16 x 16 tile of 32-bit values (row-major) transposed (see
    /// [`transpose_16x16_regs`]).
    ///
    /// # Safety
    /// The CPU has AVX-512F.
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub(super) unsafe fn transpose_16x16(t: &[u32; 256]) -> [u32; 256] {
        let mut r = [_mm512_setzero_si512(); 16];
        for (i, r) in r.iter_mut().enumerate() {
            // SAFETY: row i is 16 values inside `t`.
            *r = unsafe { _mm512_loadu_si512(t.as_ptr().add(16 * i).cast()) };
        }
        let r = transpose_16x16_regs(r);
        let mut out = [0u32; 256];
        for (i, r) in r.iter().enumerate() {
            // SAFETY: row i is 16 values inside `out`.
            unsafe { _mm512_storeu_si512(out.as_mut_ptr().add(16 * i).cast(), *r) };
        }
        out
    }

    /// Sixteen registers of 16 32-bit lanes (a 16 x 16 tile, row `i` in
    /// register `i`) transposed: 32-bit, then 64-bit interleaves within
    /// 128-bit lanes, then two rounds of 128-bit lane shuffles (64 shuffles
    /// for 256 values).
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub(in crate::engine::cpu) fn transpose_16x16_regs(mut r: [__m512i; 16]) -> [__m512i; 16] {
        let mut u = [_mm512_setzero_si512(); 16];
        for i in 0..8 {
            u[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
            u[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
        }
        for i in 0..4 {
            let b = 4 * i;
            r[b] = _mm512_unpacklo_epi64(u[b], u[b + 2]);
            r[b + 1] = _mm512_unpackhi_epi64(u[b], u[b + 2]);
            r[b + 2] = _mm512_unpacklo_epi64(u[b + 1], u[b + 3]);
            r[b + 3] = _mm512_unpackhi_epi64(u[b + 1], u[b + 3]);
        }
        for h in 0..2 {
            for i in 0..4 {
                let b = 8 * h + i;
                u[b] = _mm512_shuffle_i32x4::<0x88>(r[b], r[b + 4]);
                u[b + 4] = _mm512_shuffle_i32x4::<0xdd>(r[b], r[b + 4]);
            }
        }
        for i in 0..8 {
            r[i] = _mm512_shuffle_i32x4::<0x88>(u[i], u[i + 8]);
            r[i + 8] = _mm512_shuffle_i32x4::<0xdd>(u[i], u[i + 8]);
        }
        r
    }

    /// The tile configuration every AMX product uses: palette 1, tiles 0-7
    /// of 16 rows x 64 bytes (C: 16 x 16 fp32; A: 16 rows x 16 pairs; B:
    /// 16 rows of pairs x 16 columns).
    #[repr(C, align(64))]
    struct TileConfig([u8; 64]);

    static TILES: TileConfig = {
        let mut c = [0u8; 64];
        c[0] = 1;
        let mut t = 0;
        while t < 8 {
            c[16 + 2 * t] = 64; // bytes per row (u16, little-endian)
            c[48 + t] = 16; // rows
            t += 1;
        }
        TileConfig(c)
    };

    /// 32 x 32 tiles of C in tmm0-3 (rows 0-15 / 16-31 x columns 0-15 /
    /// 16-31), A's two row tiles in tmm4-5, B's two column tiles in tmm6-7:
    /// four `TDPBF16PS` per 16 pairs of depth, each 16 x 16 x 32 products.
    pub struct Amx;

    impl Dot for Amx {
        type L = AmxLayout;
        unsafe fn begin() {
            // SAFETY: the CPU has AMX and the process its tile state (the
            // caller's contract); the configuration is 64 valid bytes.
            unsafe { asm!("ldtilecfg [{}]", in(reg) &TILES, options(nostack, readonly)) };
        }
        unsafe fn end() {
            // SAFETY: as in `begin`; releasing tiles has no operands.
            unsafe { asm!("tilerelease", options(nostack, nomem)) };
        }
        unsafe fn tile(
            pairs: usize,
            a: *const u32,
            b: *const u32,
            c: *mut f32,
            ldc: usize,
            add: bool,
            edge: (usize, usize),
        ) {
            #[repr(C, align(64))]
            struct Out([f32; 32 * 32]);
            let full = edge == (32, 32);
            // A whole tile of C is loaded into the accumulators (or they
            // are zeroed) and stored back in place; an edge tile is summed
            // from zero into `out` and its corner added to C after.
            let mut out = std::mem::MaybeUninit::<Out>::uninit();
            let (dst, stride) = if full {
                (c, 4 * ldc)
            } else {
                (out.as_mut_ptr().cast::<f32>(), 128)
            };
            let load = full && add;
            // SAFETY: per chunk, A's and B's 2048 bytes lie inside the
            // strips (pairs * 32 pairs each, pairs a multiple of 16: the
            // caller's contract); `dst` is 32 rows of 128 bytes `stride`
            // apart (a whole tile of C, or `out`); `begin` configured
            // tiles 0-7 on this thread. Memory operands are written
            // base + index*1: a bare [base] would assemble with no index
            // (stride 0).
            unsafe {
                asm!(
                    "test {load}, {load}",
                    "jz 3f",
                    "tileloadd tmm0, [{lo} + {st}*1]",
                    "tileloadd tmm1, [{lo} + {st}*1 + 64]",
                    "tileloadd tmm2, [{hi} + {st}*1]",
                    "tileloadd tmm3, [{hi} + {st}*1 + 64]",
                    "jmp 2f",
                    "3:",
                    "tilezero tmm0",
                    "tilezero tmm1",
                    "tilezero tmm2",
                    "tilezero tmm3",
                    "2:",
                    "tileloadd tmm4, [{a} + {s64}*1]",
                    "tileloadd tmm6, [{b} + {s64}*1]",
                    "tdpbf16ps tmm0, tmm4, tmm6",
                    "tileloadd tmm7, [{b} + {s64}*1 + 1024]",
                    "tdpbf16ps tmm1, tmm4, tmm7",
                    "tileloadd tmm5, [{a} + {s64}*1 + 1024]",
                    "tdpbf16ps tmm2, tmm5, tmm6",
                    "tdpbf16ps tmm3, tmm5, tmm7",
                    "add {a}, 2048",
                    "add {b}, 2048",
                    "dec {n}",
                    "jnz 2b",
                    "tilestored [{lo} + {st}*1], tmm0",
                    "tilestored [{lo} + {st}*1 + 64], tmm1",
                    "tilestored [{hi} + {st}*1], tmm2",
                    "tilestored [{hi} + {st}*1 + 64], tmm3",
                    load = in(reg) load as usize,
                    a = inout(reg) a => _,
                    b = inout(reg) b => _,
                    n = inout(reg) pairs / 16 => _,
                    lo = in(reg) dst,
                    hi = in(reg) dst.add(16 * stride / 4),
                    st = in(reg) stride,
                    s64 = in(reg) 64usize,
                    out("tmm0") _, out("tmm1") _, out("tmm2") _, out("tmm3") _,
                    out("tmm4") _, out("tmm5") _, out("tmm6") _, out("tmm7") _,
                    options(nostack),
                );
                if !full {
                    // The four tile stores wrote all of `out`.
                    store(&out.assume_init_ref().0, 32, c, ldc, add, edge);
                }
            }
        }
    }

    /// 12 rows x 32 columns: 24 accumulators of 16 lanes, one `VDPBF16PS`
    /// per row, column half and pair; A's strips on layout `L`
    /// ([`super::VnniLayout`] or [`super::VnniRowLayout`]).
    pub struct Avx512Bf16<L>(std::marker::PhantomData<L>);

    impl<L: Layout> Dot for Avx512Bf16<L> {
        type L = L;
        unsafe fn tile(
            pairs: usize,
            a: *const u32,
            b: *const u32,
            c: *mut f32,
            ldc: usize,
            add: bool,
            edge: (usize, usize),
        ) {
            // SAFETY: the caller's contract.
            unsafe { tile_avx512bf16::<L>(pairs, a, b, c, ldc, add, edge) }
        }
    }

    /// The 12 x 32 tile of [`Avx512Bf16`] on layout `L` (12 rows, B's
    /// pairs 32 columns each, in runs of 16).
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn tile_avx512bf16<L: Layout>(
        pairs: usize,
        a: *const u32,
        b: *const u32,
        c: *mut f32,
        ldc: usize,
        add: bool,
        edge: (usize, usize),
    ) {
        const { assert!(L::MR == 12 && L::NR == 32 && L::B_RUN_J.is_multiple_of(16)) };
        let mut acc = [_mm512_setzero_ps(); 24];
        for p in 0..pairs {
            // SAFETY: p < pairs, so the reads lie inside the strips.
            unsafe {
                let (b0, b1) = (b.add(L::b_at(p, 0)), b.add(L::b_at(p, 16)));
                let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(b0.cast()));
                let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(b1.cast()));
                for i in 0..12 {
                    let ai = *a.add(L::a_at(p, i, pairs)) as i32;
                    let ai: __m512bh = std::mem::transmute(_mm512_set1_epi32(ai));
                    acc[2 * i] = _mm512_dpbf16_ps(acc[2 * i], b0, ai);
                    acc[2 * i + 1] = _mm512_dpbf16_ps(acc[2 * i + 1], b1, ai);
                }
            }
        }
        // SAFETY: the caller's contract (the tile lies inside C).
        unsafe { store_12x32(&acc, c, ldc, add, edge) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::cpu::sgemm::{row_major, transposed};
    use crate::engine::cpu::values::to_bf16;

    /// The AVX-512 pair conversions give the bits of the scalar ones: ties
    /// to even, carries into the exponent, infinities, NaNs, denormals,
    /// every run length to 35 (masked tails).
    #[test]
    fn vector_pairs_are_the_scalar_pairs() {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            let specials = [
                1.0f32,
                f32::from_bits(0x3f80_8000),
                f32::from_bits(0x3f81_8000),
                f32::from_bits(0x3f80_7fff),
                f32::from_bits(0x7f7f_ffff),
                f32::INFINITY,
                f32::NEG_INFINITY,
                f32::NAN,
                f32::from_bits(0x7f80_0001),
                f32::from_bits(0xff80_4000),
                1e-40,
                -0.0,
                -3.3e-3,
            ];
            let mut r = 17u32;
            let lo: Vec<f32> = (0..35)
                .map(|i| match specials.get(i) {
                    Some(&v) => v,
                    None => {
                        r = r.wrapping_mul(747_796_405).wrapping_add(2_891_336_453);
                        f32::from_bits(r)
                    }
                })
                .collect();
            let hi: Vec<f32> = lo.iter().rev().copied().collect();
            for n in 0..=35 {
                let (mut a, mut b) = (vec![7u32; n + 1], vec![7u32; n + 1]);
                pairs_of(&mut a[..n], &lo, &hi);
                // SAFETY: the CPU has AVX-512F (checked).
                unsafe { x86::pairs_of(&mut b[..n], &lo, &hi) };
                assert_eq!(a, b, "{n} pairs");
                let both: Vec<f32> = lo.iter().chain(&hi).chain(&lo).copied().collect();
                let (mut a, mut b) = (vec![7u32; n + 1], vec![7u32; n + 1]);
                adjacent_pairs(&mut a[..n], &both[1..]);
                // SAFETY: as above.
                unsafe { x86::adjacent_pairs(&mut b[..n], &both[1..]) };
                assert_eq!(a, b, "{n} adjacent pairs");
            }
        }
    }

    /// The definition in f64 on the operands rounded to bf16, and the sum
    /// of the products' magnitudes (the scale of fp32's rounding).
    fn reference(a: Mat, b: Mat, (m, n, k): (usize, usize, usize)) -> (Vec<f64>, Vec<f64>) {
        let mut c = vec![0f64; m * n];
        let mut size = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                for p in 0..k {
                    let x = round_bf16(a.data[i * a.rs + p * a.cs]) as f64
                        * round_bf16(b.data[p * b.rs + j * b.cs]) as f64;
                    c[i * n + j] += x;
                    size[i * n + j] += x.abs();
                }
            }
        }
        (c, size)
    }

    fn values(len: usize, seed: u32) -> Vec<f32> {
        (0..len as u32)
            .map(|i| {
                ((i.wrapping_mul(2654435761).wrapping_add(seed) >> 8) % 20001) as f32 / 10000.0
                    - 1.0
            })
            .collect()
    }

    /// `kernel` on shapes that cover edge tiles in both directions, odd and
    /// padded depths, several k blocks, every layout of each operand and
    /// accumulation, on 1 and 3 threads: within fp32's rounding of the f64
    /// definition on the bf16-rounded operands, and 1 and 3 threads give
    /// the same bits. The bound is 8 sqrt(k) fp32 roundings (eps) of the
    /// products' magnitudes, a multiple of the typical error of k fp32
    /// additions (the worst case, k eps, would let an operand truncated
    /// instead of rounded pass at large k). Observed once, by hand, on
    /// 784 x 64 x 576 and 64 x 64 x 100 products: both models within
    /// 2.5e-8..3.6e-8 of the magnitudes, against the 2.3e-5 and 9.6e-6
    /// this bound allows there.
    fn check(kernel: Bf16Kernel, shapes: &[(usize, usize, usize)]) {
        if !kernel.testable() {
            return;
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        for &(m, n, k) in shapes {
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
                let (want, size) = reference(a, b, (m, n, k));
                let start = values(m * n, 3);
                for accumulate in [false, true] {
                    let mut bits: Option<Vec<f32>> = None;
                    for threads in [1, 3] {
                        let mut c = start.clone();
                        pool.install(|| {
                            matmul(kernel, &mut c, accumulate, a, b, (m, n, k), threads)
                        });
                        for (i, &got) in c.iter().enumerate() {
                            let w = want[i] + if accumulate { start[i] as f64 } else { 0.0 };
                            let tol = tolerance(k, size[i] + if accumulate { 1.0 } else { 0.0 });
                            assert!(
                                (got as f64 - w).abs() <= tol,
                                "{} {m}x{n}x{k} ta {ta} tb {tb} acc {accumulate} t {threads}: C[{i}] = {got}, want {w}",
                                kernel.name()
                            );
                        }
                        match &bits {
                            None => bits = Some(c),
                            Some(b) => assert_eq!(b, &c, "{} {m}x{n}x{k} threads", kernel.name()),
                        }
                    }
                }
            }
        }
    }

    /// Rounding of a sum of `k` products whose magnitudes add up to `size`.
    fn tolerance(k: usize, size: f64) -> f64 {
        8.0 * ((k + 1) as f64).sqrt() * f32::EPSILON as f64 * size
    }

    const SHAPES: [(usize, usize, usize); 7] = [
        (1, 1, 1),
        (5, 7, 3),
        (13, 33, 17),
        (40, 70, 1100),
        (200, 20, 385),
        (250, 530, 64),
        (33, 600, 31),
    ];

    #[test]
    fn the_amx_model_equals_the_definition() {
        check(Bf16Kernel::AmxModel, &SHAPES);
    }

    #[test]
    fn the_avx512_bf16_model_equals_the_definition() {
        check(Bf16Kernel::Avx512Bf16Model, &SHAPES);
    }

    #[test]
    fn amx_equals_the_definition() {
        check(Bf16Kernel::Amx, &SHAPES);
    }

    #[test]
    fn avx512_bf16_equals_the_definition() {
        check(Bf16Kernel::Avx512Bf16, &SHAPES);
    }

    /// On a CPU with the instruction, the native kernel and its model
    /// agree to fp32 rounding on a ResNet-shaped product (the native order
    /// of additions inside one instruction is the hardware's).
    #[test]
    fn native_kernels_agree_with_their_models() {
        for (native, model) in [
            (Bf16Kernel::Amx, Bf16Kernel::AmxModel),
            (Bf16Kernel::Avx512Bf16, Bf16Kernel::Avx512Bf16Model),
        ] {
            if !native.testable() {
                continue;
            }
            let (m, n, k) = (784, 64, 576);
            let (ad, bd) = (values(m * k, 5), values(k * n, 6));
            let (a, b) = (row_major(&ad, k), row_major(&bd, n));
            let (mut x, mut y) = (vec![0f32; m * n], vec![0f32; m * n]);
            matmul(native, &mut x, false, a, b, (m, n, k), 2);
            matmul(model, &mut y, false, a, b, (m, n, k), 2);
            let (_, size) = reference(a, b, (m, n, k));
            for (i, (&p, &q)) in x.iter().zip(&y).enumerate() {
                let tol = tolerance(k, size[i]);
                assert!(
                    (p as f64 - q as f64).abs() <= tol,
                    "{}: C[{i}] {p} vs model {q}",
                    native.name()
                );
            }
        }
    }

    /// A product stored in 16 bits is the f32 product rounded, bit for
    /// bit, on every kernel that runs here, edge tiles and 1 and 3
    /// threads included; a depth of more than one k block is refused.
    #[test]
    fn a_product_stored_in_16_bits_is_the_f32_product_rounded() {
        for kernel in Bf16Kernel::ALL {
            if !kernel.testable() {
                eprintln!("{}: not tested here: {:?}", kernel.name(), kernel.why_not());
                continue;
            }
            for (m, n, k) in [(50, 70, 64), (13, 33, 7), (200, 256, 512), (1, 1, 1)] {
                let (ad, bd) = (values(m * k, 3), values(k * n, 4));
                let (a, b) = (row_major(&ad, k), row_major(&bd, n));
                let mut c = vec![0f32; m * n];
                matmul(kernel, &mut c, false, a, b, (m, n, k), 2);
                for threads in [1, 3] {
                    let mut c16 = vec![0xdeadu16; m * n + 1];
                    matmul_bf16_out(kernel, &mut c16, Lhs::Mat(a), b, (m, n, k), threads);
                    for (i, (&w, &v)) in c16.iter().zip(&c).enumerate() {
                        assert_eq!(
                            w,
                            (round_bf16(v).to_bits() >> 16) as u16,
                            "{} {m}x{n}x{k} on {threads}: C[{i}]",
                            kernel.name()
                        );
                    }
                    assert_eq!(c16[m * n], 0xdead, "written past C");
                }
            }
        }
        assert!(stores_bf16(KC) && !stores_bf16(KC + 1));
        let r = std::panic::catch_unwind(|| {
            let (ad, bd) = (values(KC + 2, 1), values(KC + 2, 2));
            let mut c16 = vec![0u16; 1];
            let (a, b) = (row_major(&ad, KC + 2), row_major(&bd, 1));
            let a = Lhs::Mat(a);
            matmul_bf16_out(Bf16Kernel::AmxModel, &mut c16, a, b, (1, 1, KC + 2), 1)
        });
        assert!(r.is_err(), "two k blocks into 16 bits");
    }

    #[test]
    fn an_empty_k_clears_or_keeps_c() {
        let mut c = vec![1.0f32; 6];
        let (a, b) = (row_major(&[], 0), row_major(&[], 3));
        matmul(Bf16Kernel::AmxModel, &mut c, true, a, b, (2, 3, 0), 1);
        assert_eq!(c, vec![1.0; 6]);
        matmul(Bf16Kernel::AmxModel, &mut c, false, a, b, (2, 3, 0), 1);
        assert_eq!(c, vec![0.0; 6]);
    }

    #[test]
    fn the_amx_layout_places_every_pair_once() {
        let (pairs, mr, nr) = (48, AmxLayout::MR, AmxLayout::NR);
        let mut seen = vec![false; pairs * mr];
        for p in 0..pairs {
            for i in 0..mr {
                assert!(!std::mem::replace(
                    &mut seen[AmxLayout::a_at(p, i, pairs)],
                    true
                ));
            }
        }
        let mut seen = vec![false; pairs * nr];
        for p in 0..pairs {
            for j in 0..nr {
                assert!(!std::mem::replace(&mut seen[AmxLayout::b_at(p, j)], true));
            }
        }
    }

    /// Each layout's declared runs are contiguous.
    #[test]
    fn the_layouts_runs_are_contiguous() {
        fn check(width: usize, at: fn(usize, usize) -> usize, run_i: usize, run_p: usize) {
            for p in 0..48 {
                for i in 0..width {
                    if (i + 1) % run_i != 0 {
                        assert_eq!(at(p, i + 1), at(p, i) + 1, "rows: pair {p} row {i}");
                    }
                    if (p + 1) % run_p != 0 {
                        assert_eq!(at(p + 1, i), at(p, i) + 1, "pairs: pair {p} row {i}");
                    }
                }
            }
        }
        check(
            AmxLayout::MR,
            |p, i| AmxLayout::a_at(p, i, 48),
            AmxLayout::A_RUN_I,
            AmxLayout::A_RUN_P,
        );
        check(
            AmxLayout::NR,
            AmxLayout::b_at,
            AmxLayout::B_RUN_J,
            AmxLayout::B_RUN_P,
        );
        check(
            VnniLayout::MR,
            |p, i| VnniLayout::a_at(p, i, 48),
            VnniLayout::A_RUN_I,
            VnniLayout::A_RUN_P,
        );
        check(
            VnniLayout::NR,
            VnniLayout::b_at,
            VnniLayout::B_RUN_J,
            VnniLayout::B_RUN_P,
        );
        check(
            VnniRowLayout::MR,
            |p, i| VnniRowLayout::a_at(p, i, 48),
            VnniRowLayout::A_RUN_I,
            VnniRowLayout::A_RUN_P,
        );
    }

    /// The vectorised packing gives the bits of the one-pair-at-a-time
    /// definition (which rounds each value with `round_bf16`), for every
    /// layout, as A and as B, from row-major, transposed and strided
    /// operands, on blocks with partial strips, odd and padded depths and
    /// offsets, with NaN, infinities, halfway cases and denormals among the
    /// values; the AVX-512 build and the portable one alike. Every element
    /// of the packed block is written (the buffers start as garbage).
    #[test]
    fn packing_equals_packing_by_element() {
        let specials = [
            f32::NAN,
            -f32::NAN,
            f32::from_bits(0x7f80_0001), // signalling NaN
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::from_bits(0x3f80_8000), // halfway, even below: rounds down
            f32::from_bits(0x3f81_8000), // halfway, odd below: rounds up
            f32::from_bits(0x7f7f_ffff), // rounds to infinity
            f32::from_bits(0x0000_8001), // denormal
            -0.0,
        ];
        let mut v = values(64 * 200, 7);
        for (i, x) in v.iter_mut().enumerate().filter(|(i, _)| i % 37 == 3) {
            *x = specials[i % specials.len()];
        }
        // (block rows r0, mc), (k p0, kc), operand rows x columns
        let cases = [
            ((0, 64), (0, 64)),
            ((3, 45), (5, 33)),
            ((0, 7), (0, 1)),
            ((16, 40), (2, 96)),
            ((1, 12), (0, 100)),
        ];
        let (rows, cols) = (64, 100);
        for ((r0, mc), (p0, kc)) in cases {
            let mats = [
                ("row-major", row_major(&v[..rows * cols], cols)),
                ("transposed", transposed(&v[..rows * cols], rows)),
                (
                    "strided",
                    Mat {
                        data: &v[..2 * rows * cols],
                        rs: 2 * cols,
                        cs: 2,
                    },
                ),
            ];
            for (what, x) in mats {
                check_packing(
                    what,
                    x,
                    (r0, mc),
                    (p0, kc),
                    AmxLayout::MR,
                    AmxLayout::a_at,
                    (AmxLayout::A_RUN_I, AmxLayout::A_RUN_P),
                    16,
                );
                check_packing(
                    what,
                    x,
                    (r0, mc),
                    (p0, kc),
                    AmxLayout::NR,
                    |p, i, _| AmxLayout::b_at(p, i),
                    (AmxLayout::B_RUN_J, AmxLayout::B_RUN_P),
                    16,
                );
                check_packing(
                    what,
                    x,
                    (r0, mc),
                    (p0, kc),
                    VnniLayout::MR,
                    VnniLayout::a_at,
                    (VnniLayout::A_RUN_I, VnniLayout::A_RUN_P),
                    1,
                );
                check_packing(
                    what,
                    x,
                    (r0, mc),
                    (p0, kc),
                    VnniRowLayout::MR,
                    VnniRowLayout::a_at,
                    (VnniRowLayout::A_RUN_I, VnniRowLayout::A_RUN_P),
                    1,
                );
                check_packing(
                    what,
                    x,
                    (r0, mc),
                    (p0, kc),
                    VnniLayout::NR,
                    |p, i, _| VnniLayout::b_at(p, i),
                    (VnniLayout::B_RUN_J, VnniLayout::B_RUN_P),
                    1,
                );
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn check_packing(
        what: &str,
        x: Mat,
        rows: (usize, usize),
        ks: (usize, usize),
        width: usize,
        at: fn(usize, usize, usize) -> usize,
        (run_i, run_p): (usize, usize),
        kstep_pairs: usize,
    ) {
        let pairs = ks.1.div_ceil(2).next_multiple_of(kstep_pairs);
        let strips = Strips {
            width,
            at: move |p, i| at(p, i, pairs),
            run_i,
            run_p,
        };
        let len = rows.1.div_ceil(width) * width * pairs;
        let garbage = || vec![0xdead_beef_u32; len + 5];
        let mut want = garbage();
        strips.pack_by_element(&mut want, x, rows, ks, pairs);
        assert!(
            want[..len].iter().all(|&w| w != 0xdead_beef),
            "{what}: the definition leaves holes"
        );
        assert!(
            want[len..].iter().all(|&w| w == 0xdead_beef),
            "{what}: the definition writes past the block"
        );
        let mut got = garbage();
        strips.pack(&mut got, Lhs::Mat(x), rows, ks, pairs);
        assert_eq!(got, want, "{what}: width {width}, rows {rows:?}, k {ks:?}");
        let mut got = garbage();
        strips.pack_runs::<false>(&mut got, Lhs::Mat(x), rows, ks, pairs);
        assert_eq!(
            got, want,
            "{what} (portable): width {width}, rows {rows:?}, k {ks:?}"
        );
    }

    /// The AVX-512 tile transpose is the transpose (where the CPU has AVX-512F).
    #[test]
    fn tiles_transpose() {
        let t: [u32; T * T] = std::array::from_fn(|i| i as u32 * 2654435761);
        let want = transpose::<false>(&t);
        for i in 0..T {
            for j in 0..T {
                assert_eq!(want[j * T + i], t[i * T + j]);
            }
        }
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F.
            assert_eq!(unsafe { x86::transpose_16x16(&t) }, want);
        } else {
            eprintln!("AVX-512 transpose: not tested: this CPU has no AVX-512F");
        }
    }

    /// For each geometry `(batch, (h, w, c), o, (k, s, p))`: `f(g, x,
    /// cols, kernel)` with an input `x`, the im2col columns made from it,
    /// and each bf16 kernel testable here (models, and the native kernels
    /// where they run).
    #[allow(clippy::type_complexity)]
    fn for_each_conv(
        geoms: &[(usize, (usize, usize, usize), usize, (usize, usize, usize))],
        mut f: impl FnMut(&ConvGeom, &[f32], &[f32], Bf16Kernel),
    ) {
        for &(b, hwc, o, ksp) in geoms {
            let g = ConvGeom::new(b, hwc, o, ksp);
            let x = values(b * hwc.0 * hwc.1 * hwc.2, 3);
            let mut cols = vec![0f32; g.rows() * g.cols()];
            crate::engine::cpu::conv::im2col(Values::F32(&x), &g, &mut cols);
            for kernel in Bf16Kernel::ALL {
                if kernel.testable() {
                    f(&g, &x, &cols, kernel);
                }
            }
        }
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    /// A product of im2col columns read where they lie gives the bits of
    /// the same product of the columns made: both layouts, windows with
    /// padding and strides, channel counts not a multiple of a tile's
    /// pairs, several k blocks, accumulating, 1 and 3 threads.
    #[test]
    fn im2col_read_in_place_equals_the_columns_made() {
        let geoms = [
            (2, (5, 7, 16), 24, (3, 1, 1)),
            (1, (9, 9, 64), 40, (3, 2, 1)),
            (2, (8, 8, 32), 16, (1, 2, 0)),
            (1, (12, 12, 4), 8, (7, 2, 3)),
            (1, (3, 5, 66), 33, (3, 1, 1)),
            (2, (6, 6, 48), 40, (1, 1, 0)),
        ];
        for_each_conv(&geoms, |g, x, cols, kernel| {
            let (o, kc) = (g.o, g.cols());
            let w = values(kc * o, 4);
            for (accumulate, threads) in [(false, 1), (true, 3)] {
                let start = values(g.rows() * o, 5);
                let (mut want, mut got) = (start.clone(), start);
                let (a, wm) = (row_major(cols, kc), row_major(&w, o));
                matmul(
                    kernel,
                    &mut want,
                    accumulate,
                    a,
                    wm,
                    (g.rows(), o, kc),
                    threads,
                );
                let mut got16 = got.clone();
                matmul_im2col(kernel, &mut got, accumulate, Values::F32(x), g, wm, threads);
                assert!(bits(&got) == bits(&want), "{}: {g:?}", kernel.name());
                // The input already in 16 bits: the same bits.
                let x16: Vec<u16> = x
                    .iter()
                    .map(|&v| super::super::values::to_bf16(v))
                    .collect();
                let x16 = Values::Bf16(&x16);
                matmul_im2col(kernel, &mut got16, accumulate, x16, g, wm, threads);
                assert!(
                    bits(&got16) == bits(&want),
                    "{} from 16 bits: {g:?}",
                    kernel.name()
                );
                // And stored in 16 bits, the product rounded, where one k
                // block holds it.
                if !accumulate && stores_bf16(kc) {
                    let mut out = vec![0u16; g.rows() * o];
                    let a = Lhs::Im2col { x: x16, g: *g };
                    matmul_bf16_out(kernel, &mut out, a, wm, (g.rows(), o, kc), threads);
                    let want16: Vec<u16> = want
                        .iter()
                        .map(|&v| super::super::values::to_bf16(v))
                        .collect();
                    assert!(out == want16, "{} into 16 bits: {g:?}", kernel.name());
                }
            }
        });
    }

    /// The same of the weight gradient's transposed im2col matrix
    /// ([`matmul_im2col_t`]).
    #[test]
    fn im2col_transposed_read_in_place_equals_the_columns_made() {
        // Odd and even output positions (the product's depth), several k
        // blocks (over 512 positions; 529: an odd last block), strides,
        // padding, a window wider than the map, two channels (a strip of
        // 32 rows from an odd column spans 17 taps), odd channel counts
        // (an RGB stem, one channel: 32 taps in a strip).
        let geoms = [
            (2, (5, 7, 16), 24, (3, 1, 1)),
            (1, (9, 9, 64), 40, (3, 2, 1)),
            (3, (14, 13, 8), 16, (3, 1, 1)),
            (1, (23, 23, 4), 8, (3, 1, 1)),
            (1, (12, 12, 4), 8, (7, 2, 3)),
            (1, (3, 5, 66), 33, (3, 1, 1)),
            (2, (2, 2, 4), 8, (3, 1, 1)),
            (2, (4, 4, 2), 3, (1, 1, 0)),
            (1, (6, 6, 2), 4, (5, 1, 2)),
            (2, (15, 15, 3), 8, (7, 2, 3)),
            (1, (9, 9, 1), 4, (7, 1, 3)),
        ];
        for_each_conv(&geoms, |g, x, cols, kernel| {
            let (o, kc) = (g.o, g.cols());
            let dy = values(g.rows() * o, 4);
            // The whole gradient, and blocks of im2col columns as the
            // engine's weight gradient takes them (any first, any height).
            let tail = kc.min(5);
            let blocks = [
                (0, kc),
                (kc / 3, kc - kc / 3),
                (1, kc / 2),
                (1, kc - 1),
                (kc - tail, tail),
            ];
            for (first, m) in blocks {
                for (accumulate, threads) in [(false, 1), (true, 3)] {
                    let start = values(m * o, 5);
                    let (mut want, got) = (start.clone(), start);
                    let (a, dym) = (transposed(&cols[first..], kc), row_major(&dy, o));
                    matmul(
                        kernel,
                        &mut want,
                        accumulate,
                        a,
                        dym,
                        (m, o, g.rows()),
                        threads,
                    );
                    let block = (first, m);
                    // x as f32, and as the bf16 it is rounded to, in 16
                    // bits (a bf16 step's saved activations).
                    let x16: Vec<u16> = x.iter().map(|&v| to_bf16(v)).collect();
                    // dy likewise.
                    let dy16: Vec<u16> = dy.iter().map(|&v| to_bf16(v)).collect();
                    let dy16 = Rhs::Bf16(Mat16 {
                        data: &dy16,
                        rs: g.o,
                        cs: 1,
                    });
                    let inputs = [
                        (Values::F32(x), Rhs::F32(dym)),
                        (Values::Bf16(&x16), Rhs::F32(dym)),
                        (Values::Bf16(&x16), dy16),
                    ];
                    for (x, dy) in inputs {
                        let mut got = got.clone();
                        matmul_im2col_t(
                            kernel,
                            &mut got,
                            accumulate,
                            x,
                            g,
                            block,
                            (dy, g.o),
                            threads,
                        );
                        assert!(
                            bits(&got) == bits(&want),
                            "{}: {g:?}, columns {first}..+{m}, x {}",
                            kernel.name(),
                            matches!(x, Values::F32(_))
                                .then_some("f32")
                                .unwrap_or("bf16")
                        );
                    }
                }
            }
        });
    }
}
