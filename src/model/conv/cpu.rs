//! The CPU im2col as one tape op: forward copies every tap's channel row
//! into the `(B*OH*OW, K*K*C)` column matrix, backward adds the column
//! gradients back into the input gradient (col2im). Both run on all cores:
//! forward splits by output row, backward by image (an image's columns only
//! touch that image's input, so the scatter-add needs no atomics).
//!
//! Written with dfdx's public API only: the op is generic over the device
//! and element types so that `Conv2d::forward` can call it, but it runs only
//! for `f32` on the [`Cpu`] (checked by `TypeId`), where the tensors and the
//! gradients are downcast to their CPU types to reach the buffers.

use super::super::dispatch::same;
use dfdx::prelude::*;
use rayon::prelude::*;
use std::any::Any;
use std::cell::RefCell;

/// Shapes of one convolution's im2col.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Batch.
    pub b: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Channels.
    pub c: usize,
    /// Window side.
    pub k: usize,
    /// Stride.
    pub s: usize,
    /// Zero padding on each side.
    pub p: usize,
    /// Output height.
    pub oh: usize,
    /// Output width.
    pub ow: usize,
}

impl Geometry {
    /// The geometry of a `k`x`k` window, stride `s`, padding `p` over `(b, h, w, c)`.
    pub fn new(b: usize, h: usize, w: usize, c: usize, k: usize, s: usize, p: usize) -> Self {
        let (oh, ow) = (super::conv_out(h, k, s, p), super::conv_out(w, k, s, p));
        Geometry {
            b,
            h,
            w,
            c,
            k,
            s,
            p,
            oh,
            ow,
        }
    }

    /// Length of one column-matrix row: `K*K*C`.
    pub fn row_len(&self) -> usize {
        self.k * self.k * self.c
    }

    /// Input row `y` (or column `x`) of output position `o`, tap `t`, if inside the image.
    #[inline]
    fn source(o: usize, t: usize, s: usize, p: usize, n: usize) -> Option<usize> {
        (o * s + t).checked_sub(p).filter(|&i| i < n)
    }
}

/// `cols[(n, oy, ox), (ky, kx, c)] = x[n, oy*s+ky-p, ox*s+kx-p, c]`, zero outside.
pub fn im2col<E: Copy + Default + Send + Sync>(x: &[E], cols: &mut [E], g: Geometry) {
    assert_eq!(x.len(), g.b * g.h * g.w * g.c, "im2col input size");
    assert_eq!(
        cols.len(),
        g.b * g.oh * g.ow * g.row_len(),
        "im2col output size"
    );
    let (c, k) = (g.c, g.k);
    // One chunk per output image row: (n, oy) → OW rows of the column matrix.
    cols.par_chunks_mut(g.ow * g.row_len())
        .enumerate()
        .for_each(|(row, out)| {
            let (n, oy) = (row / g.oh, row % g.oh);
            let image = &x[n * g.h * g.w * c..(n + 1) * g.h * g.w * c];
            for (ox, col) in out.chunks_exact_mut(g.row_len()).enumerate() {
                for ky in 0..k {
                    let y = Geometry::source(oy, ky, g.s, g.p, g.h);
                    for kx in 0..k {
                        let dst = &mut col[(ky * k + kx) * c..(ky * k + kx + 1) * c];
                        match (y, Geometry::source(ox, kx, g.s, g.p, g.w)) {
                            (Some(y), Some(xx)) => {
                                let at = (y * g.w + xx) * c;
                                dst.copy_from_slice(&image[at..at + c]);
                            }
                            _ => dst.fill(E::default()),
                        }
                    }
                }
            }
        });
}

/// The adjoint of [`im2col`]: `dx[n, y, x, c] += Σ dcols` over the taps that read it.
pub fn col2im<E: Dtype + Send + Sync>(dcols: &[E], dx: &mut [E], g: Geometry) {
    assert_eq!(dx.len(), g.b * g.h * g.w * g.c, "col2im input size");
    assert_eq!(
        dcols.len(),
        g.b * g.oh * g.ow * g.row_len(),
        "col2im output size"
    );
    let (c, k) = (g.c, g.k);
    let per_image = g.oh * g.ow * g.row_len();
    dx.par_chunks_mut(g.h * g.w * c)
        .zip(dcols.par_chunks(per_image))
        .for_each(|(image, cols)| {
            for (pos, col) in cols.chunks_exact(g.row_len()).enumerate() {
                let (oy, ox) = (pos / g.ow, pos % g.ow);
                for ky in 0..k {
                    let Some(y) = Geometry::source(oy, ky, g.s, g.p, g.h) else {
                        continue;
                    };
                    for kx in 0..k {
                        let Some(xx) = Geometry::source(ox, kx, g.s, g.p, g.w) else {
                            continue;
                        };
                        let at = (y * g.w + xx) * c;
                        let src = &col[(ky * k + kx) * c..(ky * k + kx + 1) * c];
                        for (d, &v) in image[at..at + c].iter_mut().zip(src) {
                            *d += v;
                        }
                    }
                }
            }
        });
}

thread_local! {
    /// Reused buffers for the input copy and the columns: fresh buffers of
    /// this size are page-faulted in on every call (and then left in dfdx's
    /// allocation cache, which only a same-size request would take back).
    /// One pair per thread that runs convolutions, so no two callers share
    /// them or wait on a lock.
    static SCRATCH: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// im2col of NHWC `x` as a tape op: `(B, H, W, C)` → `(B*OH*OW, K*K*C)`
/// (`x`'s shape only has to hold `g`'s number of elements).
///
/// # Panics
/// If `D` is not [`Cpu`], `E` not `f32`, or the geometry does not match `x`.
pub fn im2col_op<Sh: Shape, E: Dtype, D: Device<E>, T: Tape<E, D>>(
    x: Tensor<Sh, E, D, T>,
    g: Geometry,
) -> Tensor<(usize, usize), E, D, T> {
    let (x, mut tape) = x.split_tape();
    let x: Tensor<Sh, f32, Cpu> = same(x);
    let shape = (g.b * g.oh * g.ow, g.row_len());
    // The output comes from dfdx's allocator (so it returns to its cache);
    // im2col runs into the scratch in parallel, then one copy fills it.
    let mut out: Tensor<(usize, usize), f32, Cpu> = x.device().zeros_like(&shape);
    SCRATCH.with_borrow_mut(|(input, cols)| {
        input.resize(x.shape().num_elements(), 0.0);
        x.copy_into(input);
        cols.resize(shape.0 * shape.1, 0.0);
        im2col(input, cols, g);
        out.copy_from(cols);
    });
    let handles = (x, out.clone());
    tape.add_backward_op(move |grads: &mut Gradients<E, D>| {
        let grads: &mut Gradients<f32, Cpu> = (grads as &mut dyn Any)
            .downcast_mut()
            .expect("CPU f32 gradients");
        let (x, out) = &handles;
        let run = |grads: &mut Gradients<f32, Cpu>| -> Result<(), CpuError> {
            // Borrow the output gradient by moving its buffer out for the call.
            let dcols = std::mem::take(&mut **grads.get_or_alloc_mut(out)?);
            col2im(&dcols, grads.get_or_alloc_mut(x)?, g);
            **grads.get_or_alloc_mut(out)? = dcols;
            Ok(())
        };
        run(grads).map_err(same::<CpuError, D::Err>)
    });
    same::<Tensor<(usize, usize), f32, Cpu>, Tensor<(usize, usize), E, D>>(out).put_tape(tape)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// im2col then col2im with all-ones gradients counts how many taps read each pixel.
    #[test]
    fn col2im_counts_the_taps_that_read_each_pixel() {
        let g = Geometry::new(2, 4, 5, 2, 3, 1, 1);
        let dcols = vec![1f32; g.b * g.oh * g.ow * g.row_len()];
        let mut dx = vec![0f32; g.b * g.h * g.w * g.c];
        col2im(&dcols, &mut dx, g);
        // Corner pixels are read by 4 windows, edge pixels by 6, inner ones by 9.
        let at = |y: usize, x: usize| dx[(y * g.w + x) * g.c];
        assert_eq!(
            (at(0, 0), at(0, 2), at(1, 1), at(3, 4)),
            (4.0, 6.0, 9.0, 4.0)
        );
        assert!(dx.chunks(2).all(|p| p[0] == p[1]));
    }

    #[test]
    fn im2col_puts_zeros_in_the_padding() {
        let g = Geometry::new(1, 2, 2, 1, 3, 2, 1);
        let x = [1f32, 2., 3., 4.];
        let mut cols = vec![f32::NAN; g.oh * g.ow * g.row_len()];
        im2col(&x, &mut cols, g);
        assert_eq!((g.oh, g.ow), (1, 1));
        assert_eq!(cols, [0., 0., 0., 0., 1., 2., 0., 3., 4.]);
    }
}
