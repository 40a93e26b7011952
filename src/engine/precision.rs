//! Reduced precision: bf16 operands with fp32 accumulation, as PyTorch's
//! bf16 autocast computes them.
//!
//! In [`Precision::Bf16`] the master weights, their gradients, the
//! momentum, BatchNorm (its statistics, scale and shift) and the loss stay
//! fp32; each convolution and the classifier multiply operands rounded to
//! bf16 (round to nearest, ties to even): the weights (rounded by the
//! bf16 kernels as they pack them; for the fp32 kernels, a rounded copy
//! made after every update), the input activations (rounded where they are
//! stored, so the weight gradient sees the same bf16 values as the forward
//! product) and the output gradient; the products are accumulated in fp32.
//! A product of two bf16 values is exact in fp32 (8 + 8 significant bits),
//! so any fp32 kernel that multiplies bf16-rounded operands computes what a
//! bf16 dot-product instruction (AVX512-BF16's `VDPBF16PS`, AMX's
//! `TDPBF16PS`) does, up to the order of the fp32 additions (and denormals,
//! which the instructions flush to zero).
//!
//! Which kernels run is chosen by [`crate::engine::cpu::bf16gemm::native`]
//! from what [`Kernels::detect`] finds: AMX tiles, else AVX512-BF16 dot
//! products, else the fp32 AVX-512 / AVX2 kernels on the rounded operands
//! (the numerics of bf16, the speed of fp32).

use serde::{Deserialize, Serialize};

/// The arithmetic of convolutions and the classifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[derive(clap::ValueEnum)]
pub enum Precision {
    /// fp32 operands and accumulation.
    #[default]
    Fp32,
    /// bf16 operands (round to nearest even), fp32 accumulation; weights,
    /// momentum, BatchNorm and the loss in fp32 (PyTorch's bf16 autocast).
    Bf16,
}

impl Precision {
    /// Its name: `fp32` or `bf16`.
    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16",
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "fp32" => Ok(Precision::Fp32),
            "bf16" => Ok(Precision::Bf16),
            other => Err(format!("precision {other:?}: expected fp32 or bf16")),
        }
    }
}

/// `x` rounded to the nearest bf16 value (ties to even), as an f32 whose
/// low 16 bits are zero. NaN stays NaN (quiet); infinities and values that
/// round past the largest bf16 become infinities, as in a hardware convert.
#[inline(always)]
pub fn round_bf16(x: f32) -> f32 {
    let bits = x.to_bits();
    let lsb = (bits >> 16) & 1;
    let rounded = f32::from_bits(bits.wrapping_add(0x7fff + lsb) & 0xffff_0000);
    // A select, not a branch, so that loops over it vectorise.
    let quiet_nan = f32::from_bits((bits | 0x0040_0000) & 0xffff_0000);
    if x.is_nan() { quiet_nan } else { rounded }
}

/// [`round_bf16`] over `v`, in place (a loop the compiler vectorises; on
/// large buffers split among the calling rayon pool's threads).
pub fn round_slice_bf16(v: &mut [f32]) {
    use rayon::prelude::*;
    const CHUNK: usize = 1 << 15;
    if v.len() <= CHUNK {
        round_chunk(v);
    } else {
        v.par_chunks_mut(CHUNK).for_each(round_chunk);
    }
}

fn round_chunk(v: &mut [f32]) {
    super::cpu::simd::vectorised(
        #[inline(always)]
        || v.iter_mut().for_each(|x| *x = round_bf16(*x)),
    );
}

/// Whether every value of `v` is a bf16 value (low 16 bits zero).
pub fn is_bf16(v: &[f32]) -> bool {
    v.iter().all(|x| x.to_bits() & 0xffff == 0)
}

/// The matrix-product instruction sets this CPU has, as CPUID tells them
/// (the standard library's detection of AMX is not stable).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Kernels {
    /// AMX tiles with bf16 products (`TDPBF16PS`).
    pub amx_bf16: bool,
    /// AVX512-BF16 (`VDPBF16PS`).
    pub avx512_bf16: bool,
    /// AVX-512F.
    pub avx512f: bool,
    /// AVX2 with FMA.
    pub avx2_fma: bool,
}

impl Kernels {
    /// This CPU's (asked once: CPUID may trap to the hypervisor in a VM).
    pub fn detect() -> Self {
        static KERNELS: std::sync::OnceLock<Kernels> = std::sync::OnceLock::new();
        *KERNELS.get_or_init(Self::ask_cpu)
    }

    fn ask_cpu() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::__cpuid_count;
            // Leaf 7 is read only when leaf 0 says it exists.
            let max = __cpuid_count(0, 0).eax;
            let (l7_edx, l71_eax) = if max >= 7 {
                (__cpuid_count(7, 0).edx, __cpuid_count(7, 1).eax)
            } else {
                (0, 0)
            };
            // The OS must also save the tile state (XCR0 bits 17, 18);
            // `ARCH_REQ_XCOMP_PERM` is asked for by the kernel that uses it.
            Kernels {
                amx_bf16: l7_edx & (1 << 22) != 0 && l7_edx & (1 << 24) != 0,
                avx512_bf16: l71_eax & (1 << 5) != 0 && is_x86_feature_detected!("avx512f"),
                avx512f: is_x86_feature_detected!("avx512f"),
                avx2_fma: is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        Kernels::default()
    }

    /// What the CPU has, best first, e.g. `"AVX-512 (no AVX512-BF16, no AMX)"`.
    pub fn cpu(&self) -> String {
        let mut has = Vec::new();
        if self.amx_bf16 {
            has.push("AMX-BF16");
        }
        if self.avx512_bf16 {
            has.push("AVX512-BF16");
        }
        if self.avx512f {
            has.push("AVX-512");
        }
        if self.avx2_fma {
            has.push("AVX2");
        }
        if has.is_empty() {
            "no x86 vector extensions".into()
        } else {
            has.join(", ")
        }
    }

    /// The kernels a step in `precision` runs here, in words: `fp32_isa`
    /// the fp32 kernels, `bf16` the bf16 kernel if one multiplies.
    pub fn running(
        &self,
        precision: Precision,
        fp32_isa: &str,
        bf16: Option<crate::engine::cpu::bf16gemm::Bf16Kernel>,
    ) -> String {
        use crate::engine::cpu::bf16gemm::Bf16Kernel;
        match (precision, bf16) {
            (Precision::Fp32, _) => format!("fp32 {fp32_isa}"),
            (Precision::Bf16, Some(k)) => format!(
                "bf16 {}, fp32 accumulation",
                match k {
                    Bf16Kernel::Amx => "AMX tiles (TDPBF16PS)",
                    Bf16Kernel::Avx512Bf16 =>
                        match crate::engine::cpu::direct16::Dot16::for_kernel(k) {
                            Some(_) =>
                                "AVX512-BF16 (VDPBF16PS), small convolutions on its direct kernel",
                            None => "AVX512-BF16 (VDPBF16PS)",
                        },
                    Bf16Kernel::AmxModel => "TDPBF16PS model in plain Rust (test)",
                    Bf16Kernel::Avx512Bf16Model => "VDPBF16PS model in plain Rust (test)",
                }
            ),
            (Precision::Bf16, None) => format!(
                "bf16 operands rounded, fp32 {fp32_isa} products ({})",
                if self.amx_bf16 || self.avx512_bf16 {
                    "its bf16 instructions unused: RESNET_BF16_KERNEL=fp32, or the OS refused AMX, or RESNET_DIRECT_BF16=0 and the network's convolutions are mostly small ones, which the direct fp32 kernels compute faster"
                } else {
                    "this CPU has no bf16 instructions"
                }
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference: the nearest bf16 by comparing distances in f64.
    fn nearest(x: f32) -> f32 {
        let lo = f32::from_bits(x.to_bits() & 0xffff_0000);
        let hi = f32::from_bits((x.to_bits() & 0xffff_0000).wrapping_add(0x1_0000));
        let (dl, dh) = ((x as f64 - lo as f64).abs(), (hi as f64 - x as f64).abs());
        if dl < dh || (dl == dh && (lo.to_bits() >> 16) & 1 == 0) {
            lo
        } else {
            hi
        }
    }

    #[test]
    fn rounds_to_nearest_even_like_a_reference() {
        let mut state = 0x9e37_79b9u32;
        let mut xs: Vec<f32> = (0..200_000)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                f32::from_bits(state)
            })
            .filter(|x| x.is_finite() && x.abs() < 3.0e38)
            .collect();
        // Exact ties, both parities, both signs, and values near 1.
        xs.extend([
            f32::from_bits(0x3f80_8000),
            f32::from_bits(0x3f81_8000),
            f32::from_bits(0xbf80_8000),
            1.0,
            -0.0,
            1.0 + f32::EPSILON,
            f32::MIN_POSITIVE,
            1e-40,
        ]);
        for &x in &xs {
            let want = nearest(x);
            assert_eq!(round_bf16(x).to_bits(), want.to_bits(), "{x:e}");
        }
        let mut v = xs.clone();
        round_slice_bf16(&mut v);
        assert!(
            v.iter()
                .zip(&xs)
                .all(|(r, &x)| r.to_bits() == nearest(x).to_bits())
        );
        assert!(is_bf16(&v));
        // Ties go to even.
        assert_eq!(
            round_bf16(f32::from_bits(0x3f80_8000)).to_bits(),
            0x3f80_0000
        );
        assert_eq!(
            round_bf16(f32::from_bits(0x3f81_8000)).to_bits(),
            0x3f82_0000
        );
    }

    #[test]
    fn specials_stay_what_they_are() {
        let mut v = vec![
            f32::NAN,
            -f32::NAN,
            f32::from_bits(0x7fff_ffff),
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::MAX,
            0.0,
        ];
        round_slice_bf16(&mut v);
        assert!(v[0].is_nan() && v[1].is_nan() && v[2].is_nan());
        assert_eq!(v[3], f32::INFINITY);
        assert_eq!(v[4], f32::NEG_INFINITY);
        assert_eq!(v[5], f32::INFINITY, "past the largest bf16");
        assert_eq!(v[6], 0.0);
        assert!(round_bf16(f32::NAN).is_nan());
        assert!(round_bf16(f32::from_bits(0x7fff_ffff)).is_nan());
    }

    #[test]
    fn names_parse_and_print() {
        for p in [Precision::Fp32, Precision::Bf16] {
            assert_eq!(p.name().parse::<Precision>().unwrap(), p);
        }
        assert!("fp16".parse::<Precision>().unwrap_err().contains("fp16"));
    }
}
