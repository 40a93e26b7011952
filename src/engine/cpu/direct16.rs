//! Direct `k x k` convolution of one NHWC image on bf16 pairs with
//! AVX512-BF16 (`VDPBF16PS`), the bf16 twin of [`super::direct`].
//!
//! Why: the small convolutions of the CIFAR nets (16-64 channels) are too
//! narrow for the bf16 matrix product (a 16-channel output fills half of
//! its 12 x 32 tile, and the columns are made and packed for it), so on
//! AVX512-BF16 they ran on the fp32 direct kernels at the fp32 rate. Here
//! each `VDPBF16PS` multiplies 16 output channels by a *pair* of inputs:
//! twice the products of an fp32 FMA per instruction.
//!
//! The pairs run along what each sum runs over:
//! - forward (and a stride-1 conv's input gradient, the forward of
//!   [`ConvGeom::input_gradient_conv`]): pairs of adjacent input channels.
//!   NHWC keeps them adjacent, so the padded image is the input rounded to
//!   bf16 two channels per `u32` (an odd last channel paired with zero),
//!   and the weight is packed once per step as `[tap][channel pair][o]`
//!   pairs ([`pack_weight`]).
//! - weight gradient: pairs of adjacent output positions of a row. The
//!   input is packed per band of output rows as `x[pos]` beside
//!   `x[pos + stride]` for every padded position, `dy` as pairs of
//!   adjacent positions (an odd row's last paired with zero).
//!
//! Numerics: the operands are rounded to bf16 (nearest even; the engine's
//! bf16 operands are already rounded, so this is exact) and every product
//! is added to an fp32 sum as the instruction defines: per pair the upper
//! product, then the lower (Intel SDM; what [`super::bf16gemm`]'s
//! AVX512-BF16 model does). Each sum runs in one fixed order (taps, then
//! channel pairs; for dW bands of rows, then positions), whatever the
//! thread count. [`Dot16::Model`] is the same arithmetic in plain Rust on
//! the same packed layout: it runs everywhere (tests, and the engine on a
//! kernel model). It does not flush denormal inputs and outputs to zero
//! as the instruction does (the engine's values are far from them); on
//! the AMD EPYC tested (2026-12-07) the native kernel gave the model's
//! bits on every output of the tests.

use super::bf16gemm::{Bf16Kernel, adjacent_pairs, pair, pairs_of};
use super::values::Values;
use crate::engine::plan::ConvGeom;

/// Output channels per register.
const OB: usize = 16;

/// What computes the pairs' dot products.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dot16 {
    /// `VDPBF16PS` on 16-lane registers.
    Native,
    /// The instruction's arithmetic in plain Rust (same layout, same bits).
    Model,
}

impl Dot16 {
    /// The direct kernel standing in for `kernel`'s small convolutions:
    /// the AVX512-BF16 kernel's (unless `RESNET_DIRECT_BF16=0`, for A/B
    /// timing) and its model's. AMX keeps its tiles (not measured yet).
    pub fn for_kernel(kernel: Bf16Kernel) -> Option<Dot16> {
        // Read once (each convolution asks, every step: no allocation).
        static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        let on = *ON.get_or_init(|| std::env::var("RESNET_DIRECT_BF16").as_deref() != Ok("0"));
        match kernel {
            Bf16Kernel::Avx512Bf16 if on => Some(Dot16::Native),
            Bf16Kernel::Avx512Bf16Model if on => Some(Dot16::Model),
            _ => None,
        }
    }
}

/// Whether the direct bf16 kernels compute convolutions of geometry `g`:
/// whole registers of outputs, a window that stays inside the padded image.
pub fn available(g: &ConvGeom) -> bool {
    g.o.is_multiple_of(OB)
        && g.c > 0
        && g.k > 0
        && g.oh > 0
        && g.ow > 0
        && (g.ow - 1) * g.s + g.k <= g.w + 2 * g.p
        && (g.oh - 1) * g.s + g.k <= g.h + 2 * g.p
}

/// Channel pairs of an input of `c` channels.
fn pairs(c: usize) -> usize {
    c.div_ceil(2)
}

/// Pairs of `g`'s weight packed by [`pack_weight`].
pub fn packed_len(g: &ConvGeom) -> usize {
    g.k * g.k * pairs(g.c) * g.o
}

/// Pairs of one padded input image ([`conv_image`]'s `pad`).
pub fn padded_len(g: &ConvGeom) -> usize {
    (g.h + 2 * g.p) * (g.w + 2 * g.p) * pairs(g.c)
}

/// `w` (`[k, k, c, o]`, f32) as `[tap][channel pair][o]` pairs of bf16
/// (channel `2j` in the lower half; an odd last channel paired with zero).
///
/// # Panics
/// If `w` or `dst` is shorter than `g` says.
pub fn pack_weight(w: &[f32], g: &ConvGeom, dst: &mut [u32]) {
    let (c, o, cp) = (g.c, g.o, pairs(g.c));
    let (w, dst) = (&w[..g.cols() * o], &mut dst[..packed_len(g)]);
    for (tap, dst) in dst.chunks_exact_mut(cp * o).enumerate() {
        let w = &w[tap * c * o..][..c * o];
        for (j, dst) in dst.chunks_exact_mut(o).enumerate() {
            let lo = &w[2 * j * o..][..o];
            if 2 * j + 1 < c {
                fast_pairs_of(dst, lo, &w[(2 * j + 1) * o..][..o]);
            } else {
                dst.iter_mut().zip(lo).for_each(|(d, &l)| *d = pair(l, 0.0));
            }
        }
    }
}

/// [`pairs_of`] on AVX-512 where the CPU has it (the same bits).
fn fast_pairs_of(dst: &mut [u32], lo: &[f32], hi: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F.
        return unsafe { super::bf16gemm::x86::pairs_of(dst, lo, hi) };
    }
    pairs_of(dst, lo, hi)
}

/// [`adjacent_pairs`] on AVX-512 where the CPU has it (the same bits).
fn fast_adjacent_pairs(dst: &mut [u32], src: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F.
        return unsafe { super::bf16gemm::x86::adjacent_pairs(dst, src) };
    }
    adjacent_pairs(dst, src)
}

/// `w` pixels of `c` channels from `x[at..]` as channel pairs into `dst`.
fn row_pairs(x: Values, at: usize, (w, c): (usize, usize), dst: &mut [u32]) {
    let cp = pairs(c);
    let dst = &mut dst[..w * cp];
    match x {
        Values::F32(v) if c % 2 == 0 => fast_adjacent_pairs(dst, &v[at..at + w * c]),
        Values::Bf16(v) if c % 2 == 0 => {
            for (d, s) in dst.iter_mut().zip(v[at..at + w * c].chunks_exact(2)) {
                *d = s[0] as u32 | (s[1] as u32) << 16;
            }
        }
        _ => {
            let mut px = [0f32; 2];
            for (i, d) in dst.iter_mut().enumerate() {
                let (pixel, j) = (i / cp, i % cp);
                let n = if 2 * j + 1 < c { 2 } else { 1 };
                px[1] = 0.0;
                x.read(at + pixel * c + 2 * j, &mut px[..n]);
                *d = pair(px[0], px[1]);
            }
        }
    }
}

/// Copies image `x` into `pad` as channel pairs with `g.p` zeros around it;
/// returns the padded width.
fn pad_image(x: Values, g: &ConvGeom, pad: &mut [u32]) -> usize {
    assert!(available(g), "direct bf16 conv unavailable for {g:?}");
    let (hp, wp, cp) = (g.h + 2 * g.p, g.w + 2 * g.p, pairs(g.c));
    assert!(x.len() >= g.h * g.w * g.c && pad.len() >= hp * wp * cp);
    let pad = &mut pad[..hp * wp * cp];
    if g.p > 0 {
        pad.fill(0);
    }
    for iy in 0..g.h {
        let dst = &mut pad[((iy + g.p) * wp + g.p) * cp..][..g.w * cp];
        row_pairs(x, iy * g.w * g.c, (g.w, g.c), dst);
    }
    wp
}

/// `y (oh x ow x o) [+]= conv(x (h x w x c), w)` for one image, `w` packed
/// by [`pack_weight`], `pad` holding at least [`padded_len`] pairs.
///
/// # Panics
/// If [`available`] is false for `g`, a slice is too short, or `dot` is
/// native on a CPU without AVX512-BF16.
pub fn conv_image(
    dot: Dot16,
    x: Values,
    w: &[u32],
    y: &mut [f32],
    g: &ConvGeom,
    accumulate: bool,
    pad: &mut [u32],
) {
    assert!(w.len() >= packed_len(g) && y.len() >= g.oh * g.ow * g.o);
    let wp = pad_image(x, g, pad);
    let y = &mut y[..g.oh * g.ow * g.o];
    match dot {
        Dot16::Model => model::conv_padded(pad, w, y, g, wp, accumulate),
        Dot16::Native => {
            assert_native();
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the CPU has AVX-512F and AVX512-BF16 (asserted); every
            // index read or written lies inside the slices (the asserts
            // here and in `pad_image`, and `available`).
            unsafe {
                x86::conv_padded(pad, w, y, g, wp, accumulate)
            }
        }
    }
}

fn assert_native() {
    assert!(
        Bf16Kernel::Avx512Bf16.runs_here(),
        "the direct VDPBF16PS kernel needs AVX512-BF16, which this CPU lacks"
    );
}

/// Output rows per band of the weight gradient with `len` pairs of
/// scratch (0: not even one row fits).
fn band_rows(g: &ConvGeom, len: usize) -> usize {
    let (wp, s, qn) = (g.w + 2 * g.p, g.s, g.ow.div_ceil(2));
    // A row of f32, then (b - 1) s + k padded input rows and b rows of dy
    // pairs: `first` for b = 1, `per_row` for each more.
    let first = (wp + s) * g.c + g.k * wp * g.c + qn * g.o;
    let per_row = s * wp * g.c + qn * g.o;
    match len.checked_sub(first) {
        Some(more) => (more / per_row + 1).min(g.oh),
        None => 0,
    }
}

/// Whether [`weight_gradient_image`] fits `len` pairs of scratch.
pub fn weight_gradient_fits(g: &ConvGeom, len: usize) -> bool {
    available(g) && band_rows(g, len) > 0
}

/// `dw (k*k*c x o) += the weight gradient of one image`: for each tap,
/// input channel `ci` and output channel `co`, the sum over output
/// positions of `x[pos + tap][ci] * dy[pos][co]`, on pairs of adjacent
/// positions, in bands of output rows that fit `scratch` (each band's sums
/// added to `dw` in band order).
///
/// # Panics
/// If [`weight_gradient_fits`] is false for `g` and `scratch`, a slice is
/// too short, or `dot` is native on a CPU without AVX512-BF16.
pub fn weight_gradient_image(
    dot: Dot16,
    x: Values,
    dy: &[f32],
    dw: &mut [f32],
    g: &ConvGeom,
    scratch: &mut [u32],
) {
    assert!(
        weight_gradient_fits(g, scratch.len()),
        "{g:?}: scratch too small"
    );
    assert!(x.len() >= g.h * g.w * g.c && dy.len() >= g.oh * g.ow * g.o);
    assert!(dw.len() >= g.cols() * g.o);
    if dot == Dot16::Native {
        assert_native();
    }
    let (c, o, s, wp, qn) = (g.c, g.o, g.s, g.w + 2 * g.p, g.ow.div_ceil(2));
    let band = band_rows(g, scratch.len());
    let (row, rest) = scratch.split_at_mut((wp + s) * c);
    // SAFETY: u32 and f32 have the same size and alignment and every bit
    // pattern is a valid f32.
    let row: &mut [f32] =
        unsafe { std::slice::from_raw_parts_mut(row.as_mut_ptr().cast(), row.len()) };
    row.fill(0.0);
    for oy0 in (0..g.oh).step_by(band) {
        let rows = band.min(g.oh - oy0);
        let in_rows = (rows - 1) * s + g.k;
        let (xq, rest) = rest.split_at_mut(in_rows * wp * c);
        let dq = &mut rest[..rows * qn * o];
        // Input rows oy0 * s.. (padded coordinates): x[ix] beside x[ix + s].
        for (r, xq) in xq.chunks_exact_mut(wp * c).enumerate() {
            let iy = (oy0 * s + r).wrapping_sub(g.p);
            let inside = &mut row[g.p * c..][..g.w * c];
            if iy < g.h {
                x.read(iy * g.w * c, inside);
            } else {
                inside.fill(0.0);
            }
            fast_pairs_of(xq, &row[..wp * c], &row[s * c..][..wp * c]);
        }
        // dy rows oy0..: positions 2q and 2q + 1 (zero past the row's end).
        for (r, dq) in dq.chunks_exact_mut(qn * o).enumerate() {
            let dyr = &dy[(oy0 + r) * g.ow * o..][..g.ow * o];
            for (q, dq) in dq.chunks_exact_mut(o).enumerate() {
                let lo = &dyr[2 * q * o..][..o];
                if 2 * q + 1 < g.ow {
                    fast_pairs_of(dq, lo, &dyr[(2 * q + 1) * o..][..o]);
                } else {
                    dq.iter_mut().zip(lo).for_each(|(d, &l)| *d = pair(l, 0.0));
                }
            }
        }
        match dot {
            Dot16::Model => model::weight_gradient_band(xq, dq, dw, g, rows),
            #[cfg(target_arch = "x86_64")]
            // SAFETY: AVX-512F and AVX512-BF16 are present (asserted);
            // the band's input rows hold (rows - 1) s + k padded rows of
            // wp * c pairs and its dy rows * qn * o pairs (sliced above),
            // so every read lies inside them; dW holds k k c o floats.
            Dot16::Native => unsafe { x86::weight_gradient_band(xq, dq, dw, g, rows) },
            #[cfg(not(target_arch = "x86_64"))]
            Dot16::Native => unreachable!("asserted above"),
        }
    }
}

/// The bf16 halves of a pair as f32: (lower, upper).
#[inline(always)]
fn halves(v: u32) -> (f32, f32) {
    (f32::from_bits(v << 16), f32::from_bits(v & 0xffff_0000))
}

/// `acc + a.hi * b.hi + a.lo * b.lo`, each addition rounded to fp32 (the
/// products of two bf16 are exact): one lane of `VDPBF16PS`.
#[inline(always)]
fn dot_pair(acc: f32, a: u32, b: u32) -> f32 {
    let ((a0, a1), (b0, b1)) = (halves(a), halves(b));
    (acc + a1 * b1) + a0 * b0
}

/// The kernels' arithmetic in plain Rust, in their order.
mod model {
    use super::{ConvGeom, OB, dot_pair, pairs};

    pub(super) fn conv_padded(
        xp: &[u32],
        w: &[u32],
        y: &mut [f32],
        g: &ConvGeom,
        wp: usize,
        accumulate: bool,
    ) {
        let (cp, o, k, s) = (pairs(g.c), g.o, g.k, g.s);
        // 16 outputs at a time (o is a multiple of 16), on the stack.
        for (oy, ox, ob) in (0..g.oh).flat_map(|oy| {
            (0..g.ow).flat_map(move |ox| (0..o).step_by(OB).map(move |ob| (oy, ox, ob)))
        }) {
            let mut acc = [0f32; OB];
            for ky in 0..k {
                for kx in 0..k {
                    let xr = &xp[((oy * s + ky) * wp + ox * s + kx) * cp..][..cp];
                    let wr = &w[(ky * k + kx) * cp * o + ob..];
                    for (j, &a) in xr.iter().enumerate() {
                        for (acc, &b) in acc.iter_mut().zip(&wr[j * o..][..OB]) {
                            *acc = dot_pair(*acc, a, b);
                        }
                    }
                }
            }
            let yp = &mut y[(oy * g.ow + ox) * o + ob..][..OB];
            for (y, &a) in yp.iter_mut().zip(&acc) {
                *y = if accumulate { *y + a } else { a };
            }
        }
    }

    pub(super) fn weight_gradient_band(
        xq: &[u32],
        dq: &[u32],
        dw: &mut [f32],
        g: &ConvGeom,
        rows: usize,
    ) {
        let (c, o, k, s, wp, qn) = (g.c, g.o, g.k, g.s, g.w + 2 * g.p, g.ow.div_ceil(2));
        for ky in 0..k {
            for kx in 0..k {
                for ci in 0..c {
                    for ob in (0..o).step_by(OB) {
                        let mut acc = [0f32; OB];
                        for r in 0..rows {
                            for q in 0..qn {
                                let a = xq[((r * s + ky) * wp + 2 * q * s + kx) * c + ci];
                                let d = &dq[(r * qn + q) * o + ob..][..OB];
                                for (acc, &d) in acc.iter_mut().zip(d) {
                                    *acc = dot_pair(*acc, a, d);
                                }
                            }
                        }
                        let row = &mut dw[((ky * k + kx) * c + ci) * o + ob..][..OB];
                        row.iter_mut().zip(&acc).for_each(|(d, a)| *d += a);
                    }
                }
            }
        }
    }
}

/// The kernels on 16-lane registers: a forward tile is `P` pixels x `16 V`
/// output channels, a weight-gradient tile `C` input channels x `16 V`
/// outputs, their `P V` (`C V`) accumulators in registers.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{ConvGeom, pairs};
    // The fp32 direct kernels' register blocking.
    use crate::engine::cpu::direct::{lanes, per_tile};
    use std::arch::x86_64::*;

    /// Calls `$f::<V, N>` for `V = $v` registers and a tile of `N = $n`.
    macro_rules! by_lanes {
        ($v:expr, $n:expr, $f:ident, $args:expr) => {
            match ($v, $n) {
                (4, 1) => $f::<4, 1>($args),
                (4, 2) => $f::<4, 2>($args),
                (4, 3) => $f::<4, 3>($args),
                (4, 4) => $f::<4, 4>($args),
                (2, 1) => $f::<2, 1>($args),
                (2, 2) => $f::<2, 2>($args),
                (2, 3) => $f::<2, 3>($args),
                (2, 4) => $f::<2, 4>($args),
                (2, 5) => $f::<2, 5>($args),
                (2, 6) => $f::<2, 6>($args),
                (2, 7) => $f::<2, 7>($args),
                (2, 8) => $f::<2, 8>($args),
                (1, 1) => $f::<1, 1>($args),
                (1, 2) => $f::<1, 2>($args),
                (1, 3) => $f::<1, 3>($args),
                (1, 4) => $f::<1, 4>($args),
                (1, 5) => $f::<1, 5>($args),
                (1, 6) => $f::<1, 6>($args),
                (1, 7) => $f::<1, 7>($args),
                (1, 8) => $f::<1, 8>($args),
                (v, n) => unreachable!("tile of {v} registers x {n} outside the kernel's sizes"),
            }
        };
    }

    #[inline(always)]
    unsafe fn bcast(p: *const u32) -> __m512bh {
        // SAFETY: the caller's (p is readable); a pair is 32 bits.
        unsafe { std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(*p as i32)) }
    }

    #[inline(always)]
    fn zero() -> __m512bh {
        // SAFETY: both are 512 bits of plain data.
        unsafe { std::mem::transmute::<__m512i, __m512bh>(_mm512_setzero_si512()) }
    }

    #[inline(always)]
    unsafe fn load(p: *const u32) -> __m512bh {
        // SAFETY: the caller's (16 pairs readable from p).
        unsafe { std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(p.cast())) }
    }

    /// A forward tile's inputs: padded pairs, packed weight, output,
    /// geometry, padded width, `(oy, ox, ob)`, whether to add to `y`.
    type TileArgs<'a> = (
        *const u32,
        *const u32,
        *mut f32,
        &'a ConvGeom,
        usize,
        (usize, usize, usize),
        bool,
    );

    /// # Safety
    /// AVX-512F and AVX512-BF16; the slices as [`super::conv_image`]
    /// checked them.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn conv_padded(
        xp: &[u32],
        w: &[u32],
        y: &mut [f32],
        g: &ConvGeom,
        wp: usize,
        accumulate: bool,
    ) {
        let (xp, w, y) = (xp.as_ptr(), w.as_ptr(), y.as_mut_ptr());
        let v = lanes(g.o);
        let px = per_tile(v);
        for oy in 0..g.oh {
            for ob in (0..g.o).step_by(16 * v) {
                let mut ox = 0;
                while ox < g.ow {
                    let n = (g.ow - ox).min(px);
                    let a = (xp, w, y, g, wp, (oy, ox, ob), accumulate);
                    // SAFETY: as the caller's; the tile's pixels are
                    // ox..ox + n <= ow, its channels ob..ob + 16 v <= o.
                    unsafe { by_lanes!(v, n, tile, a) }
                    ox += n;
                }
            }
        }
    }

    /// `P` output pixels `(oy, ox..ox + P)` x channels `ob..ob + 16 V`.
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn tile<const V: usize, const P: usize>(
        (xp, w, y, g, wp, (oy, ox, ob), accumulate): TileArgs,
    ) {
        let (cp, o, k, s) = (pairs(g.c), g.o, g.k, g.s);
        let mut acc = [[_mm512_setzero_ps(); V]; P];
        for ky in 0..k {
            for kx in 0..k {
                // SAFETY (all pointer arithmetic below): inside the slices,
                // see `conv_padded` and `super::conv_image`.
                unsafe {
                    let xr = xp.add(((oy * s + ky) * wp + ox * s + kx) * cp);
                    let wr = w.add((ky * k + kx) * cp * o + ob);
                    for j in 0..cp {
                        let mut b: [__m512bh; V] = [zero(); V];
                        for (i, b) in b.iter_mut().enumerate() {
                            *b = load(wr.add(j * o + 16 * i));
                        }
                        for (p, acc) in acc.iter_mut().enumerate() {
                            let a = bcast(xr.add(p * s * cp + j));
                            for (acc, &b) in acc.iter_mut().zip(&b) {
                                *acc = _mm512_dpbf16_ps(*acc, b, a);
                            }
                        }
                    }
                }
            }
        }
        for (p, acc) in acc.iter().enumerate() {
            for (j, &v) in acc.iter().enumerate() {
                // SAFETY: output pixel (oy, ox + p) < (oh, ow), channels < o.
                unsafe {
                    let yp = y.add((oy * g.ow + ox + p) * o + ob + 16 * j);
                    let v = if accumulate {
                        _mm512_add_ps(_mm512_loadu_ps(yp), v)
                    } else {
                        v
                    };
                    _mm512_storeu_ps(yp, v);
                }
            }
        }
    }

    /// A weight-gradient tile's inputs: the band's input pairs, its dy
    /// pairs, dW, geometry, output rows in the band, `(ky, kx, ci, ob)`.
    type WgradArgs<'a> = (
        *const u32,
        *const u32,
        *mut f32,
        &'a ConvGeom,
        usize,
        (usize, usize, usize, usize),
    );

    /// # Safety
    /// AVX-512F and AVX512-BF16; the slices as
    /// [`super::weight_gradient_image`] made them.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn weight_gradient_band(
        xq: &[u32],
        dq: &[u32],
        dw: &mut [f32],
        g: &ConvGeom,
        rows: usize,
    ) {
        let (xq, dq, dw) = (xq.as_ptr(), dq.as_ptr(), dw.as_mut_ptr());
        let v = lanes(g.o);
        let cb = per_tile(v);
        for ky in 0..g.k {
            for kx in 0..g.k {
                let mut ci = 0;
                while ci < g.c {
                    let n = (g.c - ci).min(cb);
                    for ob in (0..g.o).step_by(16 * v) {
                        let a = (xq, dq, dw, g, rows, (ky, kx, ci, ob));
                        // SAFETY: as the caller's; channels ci..ci + n <= c,
                        // outputs ob..ob + 16 v <= o.
                        unsafe { by_lanes!(v, n, wgrad_tile, a) }
                    }
                    ci += n;
                }
            }
        }
    }

    /// dW rows `(tap (ky, kx), ci..ci + C)` x channels `ob..ob + 16 V`,
    /// summed over the band's positions two at a time, added to `dw`.
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn wgrad_tile<const V: usize, const C: usize>(
        (xq, dq, dw, g, rows, (ky, kx, ci, ob)): WgradArgs,
    ) {
        let (c, o, s, wp, qn) = (g.c, g.o, g.s, g.w + 2 * g.p, g.ow.div_ceil(2));
        let mut acc = [[_mm512_setzero_ps(); V]; C];
        for r in 0..rows {
            // SAFETY (all pointer arithmetic below): inside the band, see
            // `weight_gradient_band`.
            unsafe {
                let xr = xq.add(((r * s + ky) * wp + kx) * c + ci);
                let dr = dq.add(r * qn * o + ob);
                for q in 0..qn {
                    let xv = xr.add(2 * q * s * c);
                    let mut d: [__m512bh; V] = [zero(); V];
                    for (j, d) in d.iter_mut().enumerate() {
                        *d = load(dr.add(q * o + 16 * j));
                    }
                    for (i, acc) in acc.iter_mut().enumerate() {
                        let a = bcast(xv.add(i));
                        for (acc, &d) in acc.iter_mut().zip(&d) {
                            *acc = _mm512_dpbf16_ps(*acc, d, a);
                        }
                    }
                }
            }
        }
        for (i, acc) in acc.iter().enumerate() {
            for (j, &v) in acc.iter().enumerate() {
                // SAFETY: row (ky k + kx) c + ci + i < k k c, channels < o.
                unsafe {
                    let p = dw.add(((ky * g.k + kx) * c + ci + i) * o + ob + 16 * j);
                    _mm512_storeu_ps(p, _mm512_add_ps(_mm512_loadu_ps(p), v));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::cpu::values::to_bf16;
    use crate::engine::precision::round_bf16;

    fn rand_values(n: usize, seed: u32) -> Vec<f32> {
        let mut r = seed | 1;
        (0..n)
            .map(|_| {
                r ^= r << 13;
                r ^= r >> 17;
                r ^= r << 5;
                round_bf16((r as f32 / u32::MAX as f32) - 0.5)
            })
            .collect()
    }

    /// Calls `f(xi, wi, yi)` for each product of the definition: input
    /// element `xi` times weight element `wi`, into output element `yi`.
    fn for_each_product(g: &ConvGeom, mut f: impl FnMut(usize, usize, usize)) {
        for oy in 0..g.oh {
            for ox in 0..g.ow {
                for ky in 0..g.k {
                    for kx in 0..g.k {
                        let iy = (oy * g.s + ky).wrapping_sub(g.p);
                        let ix = (ox * g.s + kx).wrapping_sub(g.p);
                        if iy >= g.h || ix >= g.w {
                            continue;
                        }
                        for ci in 0..g.c {
                            for co in 0..g.o {
                                f(
                                    (iy * g.w + ix) * g.c + ci,
                                    ((ky * g.k + kx) * g.c + ci) * g.o + co,
                                    (oy * g.ow + ox) * g.o + co,
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    /// The definition in f64 (operands already bf16), and each output's
    /// sum of absolute products (the scale of its rounding error).
    fn reference(x: &[f32], w: &[f32], g: &ConvGeom) -> (Vec<f64>, Vec<f64>) {
        let mut y = vec![0f64; g.oh * g.ow * g.o];
        let mut size = vec![0f64; y.len()];
        for_each_product(g, |xi, wi, yi| {
            let p = x[xi] as f64 * w[wi] as f64;
            y[yi] += p;
            size[yi] += p.abs();
        });
        (y, size)
    }

    /// The weight gradient's definition likewise.
    fn weight_gradient_reference(x: &[f32], dy: &[f32], g: &ConvGeom) -> (Vec<f64>, Vec<f64>) {
        let mut dw = vec![0f64; g.cols() * g.o];
        let mut size = vec![0f64; dw.len()];
        for_each_product(g, |xi, wi, yi| {
            let p = x[xi] as f64 * dy[yi] as f64;
            dw[wi] += p;
            size[wi] += p.abs();
        });
        (dw, size)
    }

    /// An fp32 sum of n terms of total size `size` is within
    /// n * 2^-24 * size of the exact sum.
    fn close(got: f32, want: f64, size: f64, terms: usize) -> bool {
        (got as f64 - want).abs() <= (terms as f64 + 2.0) * f32::EPSILON as f64 * size + 1e-30
    }

    fn dots() -> Vec<Dot16> {
        if Bf16Kernel::Avx512Bf16.runs_here() {
            vec![Dot16::Model, Dot16::Native]
        } else {
            if std::env::var("RESNET_REQUIRE_BF16").is_ok_and(|v| v.contains("avx512bf16")) {
                panic!("RESNET_REQUIRE_BF16 names avx512bf16 but this CPU has no AVX512-BF16");
            }
            eprintln!("skipped the native direct VDPBF16PS kernel: this CPU has no AVX512-BF16");
            vec![Dot16::Model]
        }
    }

    // (h, w, c, o, k, s, p): the CIFAR 3x3s (16, 32, 64 channels), a
    // stride, a 7x7 stem with 3 channels (odd: a channel paired with
    // zero), odd widths (tiles of 1-8 pixels, a position paired with
    // zero), no padding, 128 outputs.
    const CASES: [(usize, usize, usize, usize, usize, usize, usize); 8] = [
        (8, 8, 16, 16, 3, 1, 1),
        (7, 11, 5, 32, 3, 2, 1),
        (13, 9, 3, 16, 7, 2, 3),
        (5, 5, 17, 48, 3, 1, 0),
        (6, 10, 9, 64, 3, 1, 1),
        (9, 13, 20, 128, 3, 2, 1),
        (4, 3, 64, 64, 3, 1, 1),
        (11, 7, 32, 32, 3, 1, 1),
    ];

    #[test]
    fn direct_bf16_conv_is_the_definition_on_bf16_operands() {
        for dot in dots() {
            for (i, &(h, w, c, o, k, s, p)) in CASES.iter().enumerate() {
                let g = ConvGeom::new(1, (h, w, c), o, (k, s, p));
                assert!(available(&g), "{g:?}");
                let x = rand_values(h * w * c, 7 + i as u32);
                let wt = rand_values(g.cols() * o, 99 + i as u32);
                let (want, size) = reference(&x, &wt, &g);
                let mut packed = vec![0u32; packed_len(&g)];
                pack_weight(&wt, &g, &mut packed);
                let mut pad = vec![u32::MAX; padded_len(&g)];
                let mut y = vec![f32::NAN; g.oh * g.ow * o];
                conv_image(dot, Values::F32(&x), &packed, &mut y, &g, false, &mut pad);
                let terms = g.cols() + 1;
                for (j, (&y, (&want, &size))) in y.iter().zip(want.iter().zip(&size)).enumerate() {
                    assert!(
                        close(y, want, size, terms),
                        "{dot:?} {g:?} y[{j}] {y} vs {want}"
                    );
                }
                // Accumulating adds the same sum to what is there.
                let mut y2 = y.clone();
                conv_image(dot, Values::F32(&x), &packed, &mut y2, &g, true, &mut pad);
                for (a, b) in y2.iter().zip(&y) {
                    assert_eq!(a.to_bits(), (b + b).to_bits(), "{dot:?} {g:?} accumulate");
                }
                // The same input stored in 16 bits gives the same bits.
                let x16: Vec<u16> = x.iter().map(|&v| to_bf16(v)).collect();
                let mut y3 = vec![0f32; y.len()];
                conv_image(
                    dot,
                    Values::Bf16(&x16),
                    &packed,
                    &mut y3,
                    &g,
                    false,
                    &mut pad,
                );
                assert!(y3.iter().zip(&y).all(|(a, b)| a.to_bits() == b.to_bits()));
            }
        }
    }

    #[test]
    fn direct_bf16_weight_gradient_is_the_definition_in_bands() {
        for dot in dots() {
            for (i, &(h, w, c, o, k, s, p)) in CASES.iter().enumerate() {
                let g = ConvGeom::new(1, (h, w, c), o, (k, s, p));
                let x = rand_values(h * w * c, 3 + i as u32);
                let dy = rand_values(g.oh * g.ow * o, 31 + i as u32);
                let (want, size) = weight_gradient_reference(&x, &dy, &g);
                let terms = g.oh * g.ow + 2;
                let whole = (g.w + 2 * g.p + g.s) * c
                    + ((g.oh - 1) * g.s + g.k) * (g.w + 2 * g.p) * c
                    + g.oh * g.ow.div_ceil(2) * o;
                assert_eq!(band_rows(&g, whole), g.oh, "{g:?}");
                assert_eq!(band_rows(&g, whole - 1), g.oh - 1, "{g:?}");
                let mut first: Option<Vec<f32>> = None;
                // The whole image in one band, in two, and a row at a time.
                let one_row =
                    whole - (g.oh - 1) * (g.s * (g.w + 2 * g.p) * c + g.ow.div_ceil(2) * o);
                assert_eq!(band_rows(&g, one_row), 1, "{g:?}");
                assert_eq!(band_rows(&g, one_row - 1), 0, "{g:?}");
                assert!(!weight_gradient_fits(&g, one_row - 1));
                for len in [whole, whole - 1, one_row] {
                    let mut scratch = vec![u32::MAX; len];
                    let mut dw = vec![1.0f32; g.cols() * o];
                    weight_gradient_image(dot, Values::F32(&x), &dy, &mut dw, &g, &mut scratch);
                    for (j, (&d, (&want, &size))) in
                        dw.iter().zip(want.iter().zip(&size)).enumerate()
                    {
                        assert!(
                            close(d - 1.0, want, size + 1.0, terms),
                            "{dot:?} {g:?} scratch {len}: dw[{j}] {} vs {want}",
                            d - 1.0
                        );
                    }
                    if len == whole {
                        first = Some(dw);
                    }
                }
                // Stored in 16 bits: the same bits.
                let x16: Vec<u16> = x.iter().map(|&v| to_bf16(v)).collect();
                let mut scratch = vec![0u32; whole];
                let mut dw = vec![1.0f32; g.cols() * o];
                weight_gradient_image(dot, Values::Bf16(&x16), &dy, &mut dw, &g, &mut scratch);
                let first = first.unwrap();
                assert!(
                    dw.iter()
                        .zip(&first)
                        .all(|(a, b)| a.to_bits() == b.to_bits())
                );
            }
        }
    }

    /// The grouped convolution of a batch on a bf16 kernel with a direct
    /// twin runs it: the output is each image's [`conv_image`]; dW is the
    /// groups' sums of [`weight_gradient_image`] added in group order; dx
    /// is the input-gradient conv's [`conv_image`] on the flipped weight
    /// (the scratch layout, the packing and the flip, checked bit for bit).
    #[test]
    fn grouped_convolutions_run_on_the_direct_kernel() {
        use crate::engine::cpu::conv::{conv_grouped_backward, conv_grouped_forward, flip_weight};
        use crate::engine::cpu::ops::Gemm;
        for dot in dots() {
            let kernel = match dot {
                Dot16::Native => Bf16Kernel::Avx512Bf16,
                Dot16::Model => Bf16Kernel::Avx512Bf16Model,
            };
            let gemm = Gemm::Bf16(kernel);
            assert_eq!(gemm.direct16(), Some(dot));
            let g = ConvGeom::new(3, (10, 9, 16), 32, (3, 1, 1));
            assert!(g.grouped() && g.groups() == 3);
            let (len, out) = (g.h * g.w * g.c, g.oh * g.ow * g.o);
            let x = rand_values(g.b * len, 1);
            let wt = rand_values(g.cols() * g.o, 2);
            let dy = rand_values(g.b * out, 3);
            let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            let mut packed = vec![0u32; packed_len(&g)];
            pack_weight(&wt, &g, &mut packed);
            let mut pad = vec![0u32; 1 << 16];
            // Forward.
            let mut scratch = vec![f32::NAN; g.group_scratch(false)];
            let mut y = vec![f32::NAN; g.b * out];
            conv_grouped_forward(&x, &wt, &mut y, &g, &mut scratch, gemm);
            let mut want = vec![0f32; g.b * out];
            for n in 0..g.b {
                let xi = Values::F32(&x[n * len..][..len]);
                conv_image(
                    dot,
                    xi,
                    &packed,
                    &mut want[n * out..][..out],
                    &g,
                    false,
                    &mut pad,
                );
            }
            assert_eq!(bits(&y), bits(&want), "{dot:?} forward");
            // Backward: dW, and dx added to what is there.
            let mut scratch = vec![f32::NAN; g.group_scratch(true)];
            let mut dw = vec![f32::NAN; g.cols() * g.o];
            let mut dx = vec![0.5f32; g.b * len];
            conv_grouped_backward(
                &g,
                (Values::F32(&x), &dy),
                &wt,
                &mut dw,
                Some((&mut dx, true)),
                &mut scratch,
                gemm,
            );
            let mut want_dw = vec![0f32; dw.len()];
            for n in 0..g.b {
                let mut part = vec![0f32; dw.len()];
                let xi = Values::F32(&x[n * len..][..len]);
                weight_gradient_image(dot, xi, &dy[n * out..][..out], &mut part, &g, &mut pad);
                want_dw.iter_mut().zip(&part).for_each(|(d, p)| *d += p);
            }
            assert_eq!(bits(&dw), bits(&want_dw), "{dot:?} weight gradient");
            let gd = g.input_gradient_conv().unwrap();
            let mut wf = vec![0f32; g.cols() * g.o];
            flip_weight(&wt, &g, &mut wf);
            let mut packed_f = vec![0u32; packed_len(&gd)];
            pack_weight(&wf, &gd, &mut packed_f);
            let mut want_dx = vec![0.5f32; g.b * len];
            for n in 0..g.b {
                let dyi = Values::F32(&dy[n * out..][..out]);
                let dxi = &mut want_dx[n * len..][..len];
                conv_image(dot, dyi, &packed_f, dxi, &gd, true, &mut pad);
            }
            assert_eq!(bits(&dx), bits(&want_dx), "{dot:?} input gradient");
        }
    }

    /// The native kernel against its model: the same sums in the same
    /// order, so the same values to within the hardware's own rounding of
    /// one instruction's pair (reported: how many bits agree).
    #[test]
    fn the_native_kernel_agrees_with_its_model() {
        if !dots().contains(&Dot16::Native) {
            return;
        }
        let (mut equal, mut total) = (0usize, 0usize);
        for (i, &(h, w, c, o, k, s, p)) in CASES.iter().enumerate() {
            let g = ConvGeom::new(1, (h, w, c), o, (k, s, p));
            let x = rand_values(h * w * c, 5 + i as u32);
            let wt = rand_values(g.cols() * o, 55 + i as u32);
            let mut packed = vec![0u32; packed_len(&g)];
            pack_weight(&wt, &g, &mut packed);
            let mut pad = vec![0u32; padded_len(&g)];
            let (mut a, mut b) = (vec![0f32; g.oh * g.ow * o], vec![0f32; g.oh * g.ow * o]);
            conv_image(
                Dot16::Native,
                Values::F32(&x),
                &packed,
                &mut a,
                &g,
                false,
                &mut pad,
            );
            conv_image(
                Dot16::Model,
                Values::F32(&x),
                &packed,
                &mut b,
                &g,
                false,
                &mut pad,
            );
            let (_, size) = reference(&x, &wt, &g);
            for ((&a, &b), &size) in a.iter().zip(&b).zip(&size) {
                assert!(
                    close(a, b as f64, size, 2 * g.cols() + 2),
                    "{g:?}: {a} vs model {b}"
                );
                equal += (a.to_bits() == b.to_bits()) as usize;
                total += 1;
            }
        }
        eprintln!("direct VDPBF16PS: {equal} of {total} outputs equal their model's bits");
    }
}
