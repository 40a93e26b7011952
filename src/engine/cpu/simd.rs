//! The element-wise loops (BatchNorm, rounding to bf16, widening) compiled
//! for the widest vectors the CPU has.
//!
//! The crate builds for baseline x86-64, so a loop the compiler vectorises
//! outside the product kernels runs on SSE2's four lanes. [`vectorised`]
//! runs a closure inside a function compiled for AVX-512 (or AVX2), where
//! the closure and the `#[inline(always)]` loops it calls are inlined and
//! vectorised again, 16 (or 8) lanes wide, chosen at run time. Only the
//! width changes: the compiler never fuses a multiply and an add, nor
//! reorders a sum, without being asked, so every result has the bits it has
//! on SSE2 (the tests compare against the same code compiled plainly).

/// The widest vectors of this CPU the element-wise loops use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Width {
    /// AVX-512 (F, BW, VL, DQ): 16 lanes of f32.
    Avx512,
    /// AVX2: 8 lanes.
    Avx2,
    /// The build's baseline (SSE2 on x86-64).
    Baseline,
}

impl Width {
    /// This CPU's, or the baseline where `RESNET_SIMD=baseline` (for A/B
    /// timings), read once.
    pub fn here() -> Width {
        static WIDTH: std::sync::OnceLock<Width> = std::sync::OnceLock::new();
        *WIDTH.get_or_init(|| {
            if std::env::var("RESNET_SIMD").is_ok_and(|v| v == "baseline") {
                return Width::Baseline;
            }
            cpu()
        })
    }
}

/// The widest this CPU has, detected once.
fn cpu() -> Width {
    static CPU: std::sync::OnceLock<Width> = std::sync::OnceLock::new();
    *CPU.get_or_init(detect)
}

#[cfg(target_arch = "x86_64")]
fn detect() -> Width {
    use std::arch::is_x86_feature_detected as has;
    if has!("avx512f") && has!("avx512bw") && has!("avx512vl") && has!("avx512dq") {
        Width::Avx512
    } else if has!("avx2") {
        Width::Avx2
    } else {
        Width::Baseline
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> Width {
    Width::Baseline
}

/// `f()`, compiled for [`Width::here`]. `f` should be a closure calling
/// `#[inline(always)]` loops (a function the compiler does not inline into
/// it runs as the baseline compiled it).
#[inline(always)]
pub fn vectorised<R>(f: impl FnOnce() -> R) -> R {
    at(Width::here(), f)
}

/// `f()`, compiled for `width` (which this CPU must have; the baseline
/// otherwise).
#[inline(always)]
pub fn at<R>(width: Width, f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    match width {
        // SAFETY: `detect` found the features on this CPU.
        Width::Avx512 if cpu() == Width::Avx512 => return unsafe { x86::avx512(f) },
        // SAFETY: as above; an AVX-512 CPU has AVX2.
        Width::Avx2 if cpu() != Width::Baseline => return unsafe { x86::avx2(f) },
        _ => {}
    }
    let _ = width;
    f()
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
    pub(super) unsafe fn avx512<R>(f: impl FnOnce() -> R) -> R {
        f()
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn avx2<R>(f: impl FnOnce() -> R) -> R {
        f()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::precision::round_bf16;

    /// Rounding to bf16 and a BatchNorm-like row loop give the same bits at
    /// every width this CPU has as compiled plainly, NaNs, infinities,
    /// ties and denormals included.
    #[test]
    fn every_width_gives_the_baseline_bits() {
        let mut r = 7u32;
        let x: Vec<f32> = (0..4099)
            .map(|i| match i % 97 {
                0 => f32::NAN,
                1 => f32::INFINITY,
                2 => f32::from_bits(0x3f80_8000),
                3 => 1e-40,
                _ => {
                    r = r.wrapping_mul(747_796_405).wrapping_add(2_891_336_453);
                    f32::from_bits(r & 0xbfff_ffff)
                }
            })
            .collect();
        #[inline(always)]
        fn work(x: &[f32], y: &mut [f32]) {
            for (y, &x) in y.iter_mut().zip(x) {
                *y = round_bf16((x - 0.25) * 1.5 + 0.125).max(0.0);
            }
        }
        let mut base = vec![0f32; x.len()];
        work(&x, &mut base);
        for width in [Width::Avx512, Width::Avx2, Width::Baseline] {
            let mut y = vec![0f32; x.len()];
            at(width, || work(&x, &mut y));
            let same = y.iter().zip(&base).all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "{width:?} differs from the baseline");
        }
        if cpu() == Width::Baseline {
            println!("skipped the AVX2 and AVX-512 widths: this CPU has neither");
        }
    }
}
