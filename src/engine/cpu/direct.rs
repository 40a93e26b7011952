//! Direct `k x k` convolution of one NHWC image, without im2col, for
//! x86_64 with AVX2 and FMA (checked at run time; elsewhere the caller
//! lowers to columns and multiplies).
//!
//! Why: the narrow layers of the CIFAR nets (16-64 channels) spend as long
//! writing and re-reading their nine-fold columns, and gemm packing them
//! again, as multiplying. Here the image is copied once into a zero-padded
//! buffer and each output tile of 6 pixels x 16 channels keeps its twelve
//! accumulators in registers while it walks the window's taps and input
//! channels, reading the input where it lies and the weight row of 16
//! outputs once per 6 pixels (on AVX-512, 16-lane tiles of up to 64
//! channels). The same kernel computes a stride-1 conv's input gradient
//! through [`ConvGeom::input_gradient_conv`], and a sibling the weight
//! gradient.
//!
//! Each output element's sum runs in one fixed order (taps, then input
//! channels), whatever the thread count.

use super::sgemm::{self, Isa};
use super::values::Values;
use crate::engine::plan::ConvGeom;

/// Output channels per tile (two 8-lane registers).
const OB: usize = 16;
/// Output pixels per tile.
const PX: usize = 6;

/// Whether the direct kernel runs on this CPU for this geometry.
pub fn available(g: &ConvGeom) -> bool {
    g.o.is_multiple_of(OB) && g.c > 0 && cpu_has_avx2_fma() && setting() != Setting::Off
}

/// Whether the weight gradient uses the kernel (unless `RESNET_DIRECT_CONV`
/// says `0` or `forward`).
pub fn for_weight_gradient() -> bool {
    setting() == Setting::All
}

/// Whether the input gradient may use the kernel too (unless
/// `RESNET_DIRECT_CONV` says `0` or `forward`).
pub fn for_input_gradient() -> bool {
    setting() == Setting::All
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Setting {
    All,
    ForwardOnly,
    Off,
}

/// The forward pass and both gradients use the kernel where it applies.
/// `RESNET_DIRECT_CONV=0` in the environment switches it off (im2col and
/// gemm everywhere), `=forward` keeps it for the forward pass only (for
/// A/B timing and for checking a result against the im2col path).
///
/// (Until 2026-12-05 the gradients stayed on im2col because plain-18 ended
/// 2.9e-4 from dfdx after 3 free-running SGD steps with them. That was the
/// network, not the kernels: after one step plain-18 sits where one
/// rounding of its weights moves dfdx's own gradient by 1.8%, and the two
/// engine paths part by the same 1e-4..3e-4. tests/engine.rs now compares
/// each step from shared weights.)
fn setting() -> Setting {
    static S: std::sync::OnceLock<Setting> = std::sync::OnceLock::new();
    *S.get_or_init(|| match std::env::var("RESNET_DIRECT_CONV").as_deref() {
        Ok("0") => Setting::Off,
        Ok("forward") => Setting::ForwardOnly,
        _ => Setting::All,
    })
}

/// Floats of the padded copy of one input image.
pub fn padded_len(g: &ConvGeom) -> usize {
    (g.h + 2 * g.p) * (g.w + 2 * g.p) * g.c
}

fn cpu_has_avx2_fma() -> bool {
    sgemm::best_isa() != Isa::Portable
}

/// Whether the AVX-512 kernels run (`RESNET_DIRECT_AVX512=0` keeps AVX2,
/// for A/B timing; both give the same bits: each output is the same chain
/// of fused multiply-adds, lane by lane).
fn cpu_has_avx512() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| {
        sgemm::best_isa() == Isa::Avx512
            && std::env::var("RESNET_DIRECT_AVX512").as_deref() != Ok("0")
    })
}

/// `y (oh x ow x o) [+]= conv(x (h x w x c), w (k*k*c x o, row-major))`
/// for one image, `pad` holding at least [`padded_len`] floats.
///
/// # Panics
/// If [`available`] is false for `g` or a slice is too short.
pub fn conv_image(
    x: &[f32],
    w: &[f32],
    y: &mut [f32],
    g: &ConvGeom,
    accumulate: bool,
    pad: &mut [f32],
) {
    assert!(w.len() >= g.cols() * g.o && y.len() >= g.oh * g.ow * g.o);
    let wp = pad_image(Values::F32(x), g, pad);
    #[cfg(target_arch = "x86_64")]
    // SAFETY: AVX2 and FMA are present (`available`), AVX-512F where
    // `cpu_has_avx512` says so; every index the kernel reads or writes is
    // inside the slices (the asserts here and in `pad_image`).
    unsafe {
        if cpu_has_avx512() {
            avx512::conv_padded(pad, w, y, g, wp, accumulate)
        } else {
            avx2::conv_padded(pad, w, y, g, wp, accumulate)
        }
    }
    // Unreachable elsewhere: `pad_image` asserted `available`.
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (wp, accumulate);
}

/// `dw (k*k*c x o) += the weight gradient of one image`: for each tap `t`,
/// input channel `ci` and output channel `co`, the sum over output
/// positions of `x[pos + t][ci] * dy[pos][co]`, `pad` holding at least
/// [`padded_len`] floats. Each sum runs over the positions in order.
///
/// # Panics
/// If [`available`] is false for `g` or a slice is too short.
pub fn weight_gradient_image(x: Values, dy: &[f32], dw: &mut [f32], g: &ConvGeom, pad: &mut [f32]) {
    assert!(dw.len() >= g.cols() * g.o && dy.len() >= g.oh * g.ow * g.o);
    let wp = pad_image(x, g, pad);
    #[cfg(target_arch = "x86_64")]
    // SAFETY: AVX2 and FMA are present (`available`), AVX-512F where
    // `cpu_has_avx512` says so; every index read or written is inside the
    // slices (the asserts here and in `pad_image`).
    unsafe {
        if cpu_has_avx512() {
            avx512::weight_gradient_padded(pad, dy, dw, g, wp)
        } else {
            avx2::weight_gradient_padded(pad, dy, dw, g, wp)
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = wp;
}

/// 16-lane registers across the output channels of a tile of the AVX-512
/// kernels (here and in [`super::direct16`]).
#[cfg(target_arch = "x86_64")]
pub(super) fn lanes(o: usize) -> usize {
    if o.is_multiple_of(64) {
        4
    } else if o.is_multiple_of(32) {
        2
    } else {
        1
    }
}

/// Pixels (conv) or input channels (weight gradient) per tile of the
/// AVX-512 kernels with `v` registers across the outputs: 8-16
/// accumulators of the 32 registers.
#[cfg(target_arch = "x86_64")]
pub(super) fn per_tile(v: usize) -> usize {
    if v == 4 { 4 } else { 8 }
}

/// Copies image `x` into `pad` with `g.p` zeros around it; returns the
/// padded width. Checks what the kernels rely on.
fn pad_image(x: Values, g: &ConvGeom, pad: &mut [f32]) -> usize {
    assert!(available(g), "direct conv unavailable for {g:?}");
    let (hp, wp, c) = (g.h + 2 * g.p, g.w + 2 * g.p, g.c);
    assert!(x.len() >= g.h * g.w * c && pad.len() >= hp * wp * c);
    // The window never leaves the padded image: (ow - 1) * s + k <= wp.
    assert!((g.ow - 1) * g.s + g.k <= wp && (g.oh - 1) * g.s + g.k <= hp);
    let pad = &mut pad[..hp * wp * c];
    if g.p > 0 {
        pad.fill(0.0);
    }
    for iy in 0..g.h {
        x.read(
            iy * g.w * c,
            &mut pad[((iy + g.p) * wp + g.p) * c..][..g.w * c],
        );
    }
    wp
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{OB, PX};
    use crate::engine::plan::ConvGeom;
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn conv_padded(
        xp: &[f32],
        w: &[f32],
        y: &mut [f32],
        g: &ConvGeom,
        wp: usize,
        accumulate: bool,
    ) {
        let (xp, w, y) = (xp.as_ptr(), w.as_ptr(), y.as_mut_ptr());
        for oy in 0..g.oh {
            for ob in (0..g.o).step_by(OB) {
                let mut ox = 0;
                while ox < g.ow {
                    let n = (g.ow - ox).min(PX);
                    let at = (oy, ox, ob);
                    // SAFETY: as the caller's; the tile's pixels are
                    // ox..ox + n < ow.
                    unsafe {
                        match n {
                            6 => tile::<6>(xp, w, y, g, wp, at, accumulate),
                            5 => tile::<5>(xp, w, y, g, wp, at, accumulate),
                            4 => tile::<4>(xp, w, y, g, wp, at, accumulate),
                            3 => tile::<3>(xp, w, y, g, wp, at, accumulate),
                            2 => tile::<2>(xp, w, y, g, wp, at, accumulate),
                            _ => tile::<1>(xp, w, y, g, wp, at, accumulate),
                        }
                    }
                    ox += n;
                }
            }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn weight_gradient_padded(
        xp: &[f32],
        dy: &[f32],
        dw: &mut [f32],
        g: &ConvGeom,
        wp: usize,
    ) {
        let (xp, dy, dw) = (xp.as_ptr(), dy.as_ptr(), dw.as_mut_ptr());
        for ky in 0..g.k {
            for kx in 0..g.k {
                let mut ci = 0;
                while ci < g.c {
                    let n = (g.c - ci).min(CB);
                    for ob in (0..g.o).step_by(OB) {
                        let at = (ky, kx, ci, ob);
                        // SAFETY: as the caller's; channels ci..ci + n < c.
                        unsafe {
                            match n {
                                6 => wgrad_tile::<6>(xp, dy, dw, g, wp, at),
                                5 => wgrad_tile::<5>(xp, dy, dw, g, wp, at),
                                4 => wgrad_tile::<4>(xp, dy, dw, g, wp, at),
                                3 => wgrad_tile::<3>(xp, dy, dw, g, wp, at),
                                2 => wgrad_tile::<2>(xp, dy, dw, g, wp, at),
                                _ => wgrad_tile::<1>(xp, dy, dw, g, wp, at),
                            }
                        }
                    }
                    ci += n;
                }
            }
        }
    }

    /// Input channels per weight-gradient tile.
    const CB: usize = 6;

    /// dW rows `(tap (ky, kx), ci..ci + C)` x channels `ob..ob + 16`, summed
    /// over every output position of the image, added to `dw`.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn wgrad_tile<const C: usize>(
        xp: *const f32,
        dy: *const f32,
        dw: *mut f32,
        g: &ConvGeom,
        wp: usize,
        (ky, kx, ci, ob): (usize, usize, usize, usize),
    ) {
        let (c, o, s) = (g.c, g.o, g.s);
        let mut acc = [[_mm256_setzero_ps(); 2]; C];
        for oy in 0..g.oh {
            // SAFETY (all pointer arithmetic below): inside the slices, see
            // `weight_gradient_padded` and `super::weight_gradient_image`.
            unsafe {
                let xr = xp.add(((oy * s + ky) * wp + kx) * c + ci);
                let dr = dy.add(oy * g.ow * o + ob);
                for ox in 0..g.ow {
                    let xv = xr.add(ox * s * c);
                    let d0 = _mm256_loadu_ps(dr.add(ox * o));
                    let d1 = _mm256_loadu_ps(dr.add(ox * o + 8));
                    for (j, acc) in acc.iter_mut().enumerate() {
                        let a = _mm256_broadcast_ss(&*xv.add(j));
                        acc[0] = _mm256_fmadd_ps(a, d0, acc[0]);
                        acc[1] = _mm256_fmadd_ps(a, d1, acc[1]);
                    }
                }
            }
        }
        for (j, acc) in acc.iter().enumerate() {
            // SAFETY: row (ky * k + kx) * c + ci + j < k * k * c, channels < o.
            unsafe {
                let p = dw.add(((ky * g.k + kx) * c + ci + j) * o + ob);
                _mm256_storeu_ps(p, _mm256_add_ps(_mm256_loadu_ps(p), acc[0]));
                _mm256_storeu_ps(p.add(8), _mm256_add_ps(_mm256_loadu_ps(p.add(8)), acc[1]));
            }
        }
    }

    /// `P` output pixels `(oy, ox..ox + P)` x channels `ob..ob + 16`.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile<const P: usize>(
        xp: *const f32,
        w: *const f32,
        y: *mut f32,
        g: &ConvGeom,
        wp: usize,
        (oy, ox, ob): (usize, usize, usize),
        accumulate: bool,
    ) {
        let (c, o, k, s) = (g.c, g.o, g.k, g.s);
        let mut acc = [[_mm256_setzero_ps(); 2]; P];
        for ky in 0..k {
            for kx in 0..k {
                // SAFETY (all pointer arithmetic below): inside the slices,
                // see `conv_padded` and `super::conv_image`.
                unsafe {
                    let xr = xp.add(((oy * s + ky) * wp + ox * s + kx) * c);
                    let wr = w.add((ky * k + kx) * c * o + ob);
                    for ci in 0..c {
                        let b0 = _mm256_loadu_ps(wr.add(ci * o));
                        let b1 = _mm256_loadu_ps(wr.add(ci * o + 8));
                        for (p, acc) in acc.iter_mut().enumerate() {
                            let a = _mm256_broadcast_ss(&*xr.add(p * s * c + ci));
                            acc[0] = _mm256_fmadd_ps(a, b0, acc[0]);
                            acc[1] = _mm256_fmadd_ps(a, b1, acc[1]);
                        }
                    }
                }
            }
        }
        for (p, acc) in acc.iter().enumerate() {
            // SAFETY: output pixel (oy, ox + p) < (oh, ow), channels < o.
            unsafe {
                let yp = y.add((oy * g.ow + ox + p) * o + ob);
                let (mut v0, mut v1) = (acc[0], acc[1]);
                if accumulate {
                    v0 = _mm256_add_ps(v0, _mm256_loadu_ps(yp));
                    v1 = _mm256_add_ps(v1, _mm256_loadu_ps(yp.add(8)));
                }
                _mm256_storeu_ps(yp, v0);
                _mm256_storeu_ps(yp.add(8), v1);
            }
        }
    }
}

/// The same kernels on 16-lane registers: a tile is `P` pixels x `16 V`
/// output channels (`V` = 4, 2 or 1 as `o` allows), its `P V` accumulators
/// in registers, each input value broadcast once per tile row of weights.
/// The weight-gradient tile is `C` input channels x `16 V` outputs. Every
/// output element is the same sequence of fused multiply-adds as in
/// [`avx2`], so both give the same bits.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{lanes, per_tile};
    use crate::engine::plan::ConvGeom;
    use std::arch::x86_64::*;

    /// A conv tile's inputs: padded image, weight, output, geometry, padded
    /// width, `(oy, ox, ob)`, whether to add to the output.
    type TileArgs<'a> = (
        *const f32,
        *const f32,
        *mut f32,
        &'a ConvGeom,
        usize,
        (usize, usize, usize),
        bool,
    );
    /// A weight-gradient tile's inputs: padded image, dy, dW, geometry,
    /// padded width, `(ky, kx, ci, ob)`.
    type WgradArgs<'a> = (
        *const f32,
        *const f32,
        *mut f32,
        &'a ConvGeom,
        usize,
        (usize, usize, usize, usize),
    );

    /// Calls `$f::<V, N>` for the `N` (a literal of the list) equal to `$n`.
    macro_rules! by_count {
        ($n:expr, $f:ident::<$v:literal>, [$($c:literal)*], $args:expr) => {
            match $n {
                $($c => $f::<$v, $c>($args),)*
                _ => unreachable!("tile of {} outside the kernel's sizes", $n),
            }
        };
    }

    /// Calls `$f::<V, N>` for `V = $v` registers and a tile of `N = $n`
    /// (pixels or input channels, at most [`per_tile`]`(V)`).
    macro_rules! by_lanes {
        ($v:expr, $n:expr, $f:ident, $args:expr) => {
            match $v {
                4 => by_count!($n, $f::<4>, [1 2 3 4], $args),
                2 => by_count!($n, $f::<2>, [1 2 3 4 5 6 7 8], $args),
                _ => by_count!($n, $f::<1>, [1 2 3 4 5 6 7 8], $args),
            }
        };
    }

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn conv_padded(
        xp: &[f32],
        w: &[f32],
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
                    // ox..ox + n < ow, its channels ob..ob + 16 v <= o.
                    unsafe { by_lanes!(v, n, tile, a) }
                    ox += n;
                }
            }
        }
    }

    /// `P` output pixels `(oy, ox..ox + P)` x channels `ob..ob + 16 V`.
    #[target_feature(enable = "avx512f")]
    unsafe fn tile<const V: usize, const P: usize>(
        (xp, w, y, g, wp, (oy, ox, ob), accumulate): TileArgs,
    ) {
        let (c, o, k, s) = (g.c, g.o, g.k, g.s);
        let mut acc = [[_mm512_setzero_ps(); V]; P];
        for ky in 0..k {
            for kx in 0..k {
                // SAFETY (all pointer arithmetic below): inside the slices,
                // see `conv_padded` and `super::conv_image`.
                unsafe {
                    let xr = xp.add(((oy * s + ky) * wp + ox * s + kx) * c);
                    let wr = w.add((ky * k + kx) * c * o + ob);
                    for ci in 0..c {
                        let mut b = [_mm512_setzero_ps(); V];
                        for (j, b) in b.iter_mut().enumerate() {
                            *b = _mm512_loadu_ps(wr.add(ci * o + 16 * j));
                        }
                        for (p, acc) in acc.iter_mut().enumerate() {
                            let a = _mm512_set1_ps(*xr.add(p * s * c + ci));
                            for (acc, &b) in acc.iter_mut().zip(&b) {
                                *acc = _mm512_fmadd_ps(a, b, *acc);
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
                        _mm512_add_ps(v, _mm512_loadu_ps(yp))
                    } else {
                        v
                    };
                    _mm512_storeu_ps(yp, v);
                }
            }
        }
    }

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn weight_gradient_padded(
        xp: &[f32],
        dy: &[f32],
        dw: &mut [f32],
        g: &ConvGeom,
        wp: usize,
    ) {
        let (xp, dy, dw) = (xp.as_ptr(), dy.as_ptr(), dw.as_mut_ptr());
        let v = lanes(g.o);
        let cb = per_tile(v);
        for ky in 0..g.k {
            for kx in 0..g.k {
                let mut ci = 0;
                while ci < g.c {
                    let n = (g.c - ci).min(cb);
                    for ob in (0..g.o).step_by(16 * v) {
                        let a = (xp, dy, dw, g, wp, (ky, kx, ci, ob));
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
    /// summed over every output position of the image, added to `dw`.
    #[target_feature(enable = "avx512f")]
    unsafe fn wgrad_tile<const V: usize, const C: usize>(
        (xp, dy, dw, g, wp, (ky, kx, ci, ob)): WgradArgs,
    ) {
        let (c, o, s) = (g.c, g.o, g.s);
        let mut acc = [[_mm512_setzero_ps(); V]; C];
        for oy in 0..g.oh {
            // SAFETY (all pointer arithmetic below): inside the slices, see
            // `weight_gradient_padded` and `super::weight_gradient_image`.
            unsafe {
                let xr = xp.add(((oy * s + ky) * wp + kx) * c + ci);
                let dr = dy.add(oy * g.ow * o + ob);
                for ox in 0..g.ow {
                    let xv = xr.add(ox * s * c);
                    let mut d = [_mm512_setzero_ps(); V];
                    for (j, d) in d.iter_mut().enumerate() {
                        *d = _mm512_loadu_ps(dr.add(ox * o + 16 * j));
                    }
                    for (i, acc) in acc.iter_mut().enumerate() {
                        let a = _mm512_set1_ps(*xv.add(i));
                        for (acc, &d) in acc.iter_mut().zip(&d) {
                            *acc = _mm512_fmadd_ps(a, d, *acc);
                        }
                    }
                }
            }
        }
        for (i, acc) in acc.iter().enumerate() {
            for (j, &v) in acc.iter().enumerate() {
                // SAFETY: row (ky * k + kx) * c + ci + i < k * k * c, channels < o.
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

    /// The plain definition, in f64.
    fn reference(x: &[f32], w: &[f32], g: &ConvGeom) -> Vec<f64> {
        let mut y = vec![0f64; g.oh * g.ow * g.o];
        for oy in 0..g.oh {
            for ox in 0..g.ow {
                for ky in 0..g.k {
                    for kx in 0..g.k {
                        let iy = (oy * g.s + ky) as isize - g.p as isize;
                        let ix = (ox * g.s + kx) as isize - g.p as isize;
                        if iy < 0 || ix < 0 || iy as usize >= g.h || ix as usize >= g.w {
                            continue;
                        }
                        for ci in 0..g.c {
                            let xv = x[(iy as usize * g.w + ix as usize) * g.c + ci] as f64;
                            for co in 0..g.o {
                                let wv = w[((ky * g.k + kx) * g.c + ci) * g.o + co] as f64;
                                y[(oy * g.ow + ox) * g.o + co] += xv * wv;
                            }
                        }
                    }
                }
            }
        }
        y
    }

    #[test]
    fn direct_conv_equals_the_definition() {
        // (h, w, c, o, k, s, p): the CIFAR 3x3s, strides, a 7x7 stem, odd
        // widths (tiles of 1-6 pixels), no padding.
        let cases = [
            (8, 8, 16, 16, 3, 1, 1),
            (7, 11, 5, 32, 3, 2, 1),
            (13, 9, 3, 16, 7, 2, 3),
            (5, 5, 17, 48, 3, 1, 0),
            (4, 1, 2, 16, 1, 1, 0),
            // 64 and 128 outputs (four 16-lane registers per tile), odd
            // input channels, tiles of 1-4 pixels.
            (6, 10, 9, 64, 3, 1, 1),
            (9, 13, 20, 128, 3, 2, 1),
            (3, 3, 64, 64, 1, 1, 0),
        ];
        for (h, w, c, o, k, s, p) in cases {
            let g = ConvGeom::new(1, (h, w, c), o, (k, s, p));
            if !available(&g) {
                eprintln!("no AVX2+FMA here: direct conv not tested");
                return;
            }
            let mut r = 0x2545_f491_u32;
            let mut rand = || {
                r ^= r << 13;
                r ^= r >> 17;
                r ^= r << 5;
                (r as f32 / u32::MAX as f32) - 0.5
            };
            let x: Vec<f32> = (0..h * w * c).map(|_| rand()).collect();
            let wt: Vec<f32> = (0..g.cols() * o).map(|_| rand()).collect();
            let want = reference(&x, &wt, &g);
            let mut pad = vec![f32::NAN; padded_len(&g)];
            let mut y = vec![0.0; g.oh * g.ow * o];
            conv_image(&x, &wt, &mut y, &g, false, &mut pad);
            let err = |y: &[f32], scale: f64| {
                y.iter()
                    .zip(&want)
                    .map(|(&a, &b)| (a as f64 - scale * b).abs())
                    .fold(0.0, f64::max)
            };
            assert!(err(&y, 1.0) < 1e-4, "{g:?}: {}", err(&y, 1.0));
            // Accumulating adds the same again.
            conv_image(&x, &wt, &mut y, &g, true, &mut pad);
            assert!(err(&y, 2.0) < 2e-4, "{g:?} accumulate: {}", err(&y, 2.0));
            // The weight gradient of dy = y against the definition in f64.
            let dy: Vec<f32> = (0..g.oh * g.ow * o).map(|_| rand()).collect();
            let mut want_dw = vec![0f64; g.cols() * o];
            for oy in 0..g.oh {
                for ox in 0..g.ow {
                    for ky in 0..g.k {
                        for kx in 0..g.k {
                            let iy = (oy * g.s + ky) as isize - g.p as isize;
                            let ix = (ox * g.s + kx) as isize - g.p as isize;
                            if iy < 0 || ix < 0 || iy as usize >= g.h || ix as usize >= g.w {
                                continue;
                            }
                            for ci in 0..g.c {
                                let xv = x[(iy as usize * g.w + ix as usize) * g.c + ci] as f64;
                                for co in 0..o {
                                    want_dw[((ky * g.k + kx) * g.c + ci) * o + co] +=
                                        xv * dy[(oy * g.ow + ox) * o + co] as f64;
                                }
                            }
                        }
                    }
                }
            }
            let mut dw = vec![1.0f32; g.cols() * o];
            weight_gradient_image(Values::F32(&x), &dy, &mut dw, &g, &mut pad);
            let e = dw
                .iter()
                .zip(&want_dw)
                .map(|(&a, &b)| (a as f64 - 1.0 - b).abs())
                .fold(0.0, f64::max);
            assert!(e < 1e-4, "{g:?} weight gradient: {e}");
            same_bits_as_avx2(&x, &wt, &dy, &g, &y, &dw);
        }
    }

    /// Where the AVX-512 kernels ran, the AVX2 ones give the same bits
    /// (`y` is twice the conv, `dw` the gradient added to ones).
    fn same_bits_as_avx2(x: &[f32], w: &[f32], dy: &[f32], g: &ConvGeom, y: &[f32], dw: &[f32]) {
        #[cfg(target_arch = "x86_64")]
        if cpu_has_avx512() {
            let mut pad = vec![f32::NAN; padded_len(g)];
            let wp = pad_image(Values::F32(x), g, &mut pad);
            let mut y2 = vec![0.0; y.len()];
            let mut dw2 = vec![1.0f32; dw.len()];
            // SAFETY: as in `conv_image` and `weight_gradient_image`.
            unsafe {
                avx2::conv_padded(&pad, w, &mut y2, g, wp, false);
                avx2::conv_padded(&pad, w, &mut y2, g, wp, true);
                avx2::weight_gradient_padded(&pad, dy, &mut dw2, g, wp);
            }
            let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(y), bits(&y2), "{g:?}: AVX-512 and AVX2 outputs differ");
            assert_eq!(
                bits(dw),
                bits(&dw2),
                "{g:?}: AVX-512 and AVX2 weight gradients differ"
            );
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (x, w, dy, g, y, dw);
    }
}
