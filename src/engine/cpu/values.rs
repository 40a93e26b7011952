//! Activations as the arena stores them: f32, or bf16 in 16 bits (a bf16
//! step's activations kept for backward,
//! [`crate::engine::plan::Plan::with_16_bit_activations`]), read as f32.

use crate::engine::precision::round_bf16;

/// A stored activation.
#[derive(Debug, Clone, Copy)]
pub enum Values<'a> {
    /// 32-bit floats.
    F32(&'a [f32]),
    /// bf16 bit patterns (the high half of the f32 they stand for).
    Bf16(&'a [u16]),
}

impl Values<'_> {
    /// Elements.
    pub fn len(self) -> usize {
        match self {
            Values::F32(v) => v.len(),
            Values::Bf16(v) => v.len(),
        }
    }

    /// Whether there are none.
    pub fn is_empty(self) -> bool {
        self.len() == 0
    }

    /// Elements `range`.
    pub fn slice(self, range: std::ops::Range<usize>) -> Self {
        match self {
            Values::F32(v) => Values::F32(&v[range]),
            Values::Bf16(v) => Values::Bf16(&v[range]),
        }
    }

    /// Elements `at..at + dst.len()` into `dst`, as f32.
    ///
    /// # Panics
    /// If they are not all there.
    #[inline(always)]
    pub fn read(self, at: usize, dst: &mut [f32]) {
        match self {
            Values::F32(v) => dst.copy_from_slice(&v[at..at + dst.len()]),
            Values::Bf16(v) => widen(&v[at..at + dst.len()], dst),
        }
    }
}

/// The f32 a bf16 bit pattern stands for.
#[inline(always)]
pub fn from_bf16(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

/// `x` rounded to bf16 (to nearest, ties to even; [`round_bf16`]), as its
/// bit pattern.
#[inline(always)]
pub fn to_bf16(x: f32) -> u16 {
    (round_bf16(x).to_bits() >> 16) as u16
}

/// `src` as f32 into `dst` (the same length); a loop the compiler
/// vectorises.
#[inline(always)]
pub fn widen(src: &[u16], dst: &mut [f32]) {
    dst.iter_mut()
        .zip(src)
        .for_each(|(d, &s)| *d = from_bf16(s));
}

/// An element type loops over activations are written for, read as f32.
pub trait AsF32: Copy + Send + Sync {
    /// The value.
    fn f32(self) -> f32;
}

impl AsF32 for f32 {
    #[inline(always)]
    fn f32(self) -> f32 {
        self
    }
}

impl AsF32 for u16 {
    #[inline(always)]
    fn f32(self) -> f32 {
        from_bf16(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_bits_round_trip_and_widen_exactly() {
        for x in [
            0.0f32,
            -0.0,
            1.0,
            -2.5,
            1e-30,
            3.0e38,
            f32::INFINITY,
            0.1,
            -7.3e-5,
        ] {
            let r = round_bf16(x);
            assert_eq!(from_bf16(to_bf16(x)).to_bits(), r.to_bits(), "{x}");
        }
        assert!(from_bf16(to_bf16(f32::NAN)).is_nan());
        let src: Vec<u16> = (0..37u16).map(|i| 0x3f80 + i * 3).collect();
        let mut dst = vec![0f32; 37];
        Values::Bf16(&src).read(0, &mut dst);
        assert!(
            dst.iter()
                .zip(&src)
                .all(|(d, &s)| d.to_bits() == (s as u32) << 16)
        );
        let f: Vec<f32> = (0..10).map(|i| i as f32 * 0.5).collect();
        let mut out = [0f32; 4];
        Values::F32(&f).read(3, &mut out);
        assert_eq!(out, [1.5, 2.0, 2.5, 3.0]);
    }
}
