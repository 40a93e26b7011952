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
//! outputs once per 6 pixels. The same kernel can compute a stride-1
//! conv's input gradient through [`ConvGeom::input_gradient_conv`] (off by
//! default, see [`for_input_gradient`]).
//!
//! Each output element's sum runs in one fixed order (taps, then input
//! channels), whatever the thread count.

use super::plan::ConvGeom;

/// Output channels per tile (two 8-lane registers).
const OB: usize = 16;
/// Output pixels per tile.
const PX: usize = 6;

/// Whether the direct kernel runs on this CPU for this geometry.
pub fn available(g: &ConvGeom) -> bool {
    g.o.is_multiple_of(OB) && g.c > 0 && cpu_has_avx2_fma() && setting() != Setting::Off
}

/// Whether the weight gradient uses the kernel (`RESNET_DIRECT_CONV=all`).
pub fn for_weight_gradient() -> bool {
    setting() == Setting::All
}

/// Whether the input gradient may use the kernel too (`RESNET_DIRECT_CONV=all`).
pub fn for_input_gradient() -> bool {
    setting() == Setting::All
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Setting {
    All,
    ForwardOnly,
    Off,
}

/// The forward pass uses the kernel; the gradients do not by default:
/// with either of them through it (each kernel equal to the definition in
/// f64, `tests` below), plain-18's parameters after 3 SGD steps differed
/// from dfdx's by 2.9e-4 (bn1.bias by 1e-1), against under 1e-4 through
/// im2col and a net float32 sensitivity of 2.6e-7 (tests/engine.rs
/// `basic_block_nets_match_dfdx`; step-1 gradients agree within 1.4e-5);
/// the cause is not found yet. With both, ResNet-20 b128 steps in 0.17 s
/// instead of 0.22 on the AVX-512 EPYC of 2026-12-04.
/// `RESNET_DIRECT_CONV=0` in the environment switches the kernel off,
/// `=forward` keeps it for the forward pass only (the default), `=all`
/// uses it for both gradients too (for A/B timing and for
/// checking a result against the im2col path).
fn setting() -> Setting {
    static S: std::sync::OnceLock<Setting> = std::sync::OnceLock::new();
    *S.get_or_init(|| match std::env::var("RESNET_DIRECT_CONV").as_deref() {
        Ok("0") => Setting::Off,
        Ok("all") => Setting::All,
        _ => Setting::ForwardOnly,
    })
}

/// Floats of the padded copy of one input image.
pub fn padded_len(g: &ConvGeom) -> usize {
    (g.h + 2 * g.p) * (g.w + 2 * g.p) * g.c
}

fn cpu_has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *HAS.get_or_init(|| {
            std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
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
    let wp = pad_image(x, g, pad);
    #[cfg(target_arch = "x86_64")]
    // SAFETY: AVX2 and FMA are present (`available`); every index the
    // kernel reads or writes is inside the slices (the asserts here and in
    // `pad_image`).
    unsafe {
        avx2::conv_padded(pad, w, y, g, wp, accumulate)
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
pub fn weight_gradient_image(x: &[f32], dy: &[f32], dw: &mut [f32], g: &ConvGeom, pad: &mut [f32]) {
    assert!(dw.len() >= g.cols() * g.o && dy.len() >= g.oh * g.ow * g.o);
    let wp = pad_image(x, g, pad);
    #[cfg(target_arch = "x86_64")]
    // SAFETY: AVX2 and FMA are present (`available`); every index read or
    // written is inside the slices (the asserts here and in `pad_image`).
    unsafe {
        avx2::weight_gradient_padded(pad, dy, dw, g, wp)
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = wp;
}

/// Copies image `x` into `pad` with `g.p` zeros around it; returns the
/// padded width. Checks what the kernels rely on.
fn pad_image(x: &[f32], g: &ConvGeom, pad: &mut [f32]) -> usize {
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
        let row = &x[iy * g.w * c..][..g.w * c];
        pad[((iy + g.p) * wp + g.p) * c..][..g.w * c].copy_from_slice(row);
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
            weight_gradient_image(&x, &dy, &mut dw, &g, &mut pad);
            let e = dw
                .iter()
                .zip(&want_dw)
                .map(|(&a, &b)| (a as f64 - 1.0 - b).abs())
                .fold(0.0, f64::max);
            assert!(e < 1e-4, "{g:?} weight gradient: {e}");
        }
    }
}
