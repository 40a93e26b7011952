//! Convolutions by lowering: im2col / col2im, and the grouped convolution
//! (fixed groups of images, cache-sized tiles of columns multiplied where
//! they were made) forward and backward.

use super::bf16gemm::as_u32;
use super::ops::{Gemm, row_major, transposed};
use super::values::Values;
use super::{SendPtr, direct, direct16};
use crate::engine::plan::ConvGeom;
use rayon::prelude::*;

/// Where tap `tap`'s `c x o` block lies in a `[k, k, c, o]` weight.
pub(super) fn tap_block(g: &ConvGeom, tap: usize) -> std::ops::Range<usize> {
    tap * g.c * g.o..(tap + 1) * g.c * g.o
}

/// Calls `f(tap, pixel)` for each tap `ky * k + kx` of output `(oy, ox)`'s
/// window that falls inside the image, `pixel = iy * w + ix`.
#[inline(always)]
pub(super) fn for_each_tap(g: &ConvGeom, oy: usize, ox: usize, mut f: impl FnMut(usize, usize)) {
    for ky in 0..g.k {
        let iy = (oy * g.s + ky) as isize - g.p as isize;
        if iy < 0 || iy as usize >= g.h {
            continue;
        }
        for kx in 0..g.k {
            let ix = (ox * g.s + kx) as isize - g.p as isize;
            if ix >= 0 && (ix as usize) < g.w {
                f(ky * g.k + kx, iy as usize * g.w + ix as usize);
            }
        }
    }
}

/// An output position of a convolution: image `n`, row `oy`, column `ox`.
#[derive(Clone, Copy)]
pub(super) struct Position {
    n: usize,
    oy: usize,
    ox: usize,
}

impl Position {
    /// Output position `r` (row `r` of the im2col matrix) under `g`.
    pub(super) fn new(g: &ConvGeom, r: usize) -> Self {
        let pos = r % (g.oh * g.ow);
        Position {
            n: r / (g.oh * g.ow),
            oy: pos / g.ow,
            ox: pos % g.ow,
        }
    }

    /// Where channel `ch` of tap `(ty, tx)` of this position's window lies
    /// in the input, `None` in the padding.
    #[inline(always)]
    pub(super) fn source(self, g: &ConvGeom, (ty, tx): (usize, usize), ch: usize) -> Option<usize> {
        // Above or left of the map wraps to past its end.
        let iy = (self.oy * g.s + ty).wrapping_sub(g.p);
        let ix = (self.ox * g.s + tx).wrapping_sub(g.p);
        (iy < g.h && ix < g.w).then(|| ((self.n * g.h + iy) * g.w + ix) * g.c + ch)
    }

    /// The next position (row `r + 1`).
    #[inline(always)]
    pub(super) fn step(&mut self, g: &ConvGeom) {
        self.ox += 1;
        if self.ox == g.ow {
            self.ox = 0;
            self.oy += 1;
            if self.oy == g.oh {
                self.oy = 0;
                self.n += 1;
            }
        }
    }
}

/// Columns `k0..k0 + len` of an im2col matrix under `g` (a window's taps
/// by channels) as runs within one tap each: `f(at, (ty, tx), ch, n)` for
/// the `n` columns from `k0 + at`, tap row `ty`, tap column `tx`, channels
/// from `ch`.
#[inline(always)]
pub(super) fn tap_runs(
    g: &ConvGeom,
    (k0, len): (usize, usize),
    mut f: impl FnMut(usize, (usize, usize), usize, usize),
) {
    let (mut k, end) = (k0, k0 + len);
    while k < end {
        let (tap, ch) = (k / g.c, k % g.c);
        let n = (g.c - ch).min(end - k);
        f(k - k0, (tap / g.k, tap % g.k), ch, n);
        k += n;
    }
}

/// im2col of rows `r0..r0 + dst.len() / kc` (row `(n, oy, ox)` is the
/// window's `k*k` taps of `c` channels, zeros in the padding) into `dst`.
fn im2col_rows(x: Values, g: &ConvGeom, r0: usize, dst: &mut [f32]) {
    let (kc, c) = (g.cols(), g.c);
    for (i, dst) in dst.chunks_exact_mut(kc).enumerate() {
        let r = r0 + i;
        let (n, pos) = (r / (g.oh * g.ow), r % (g.oh * g.ow));
        let (oy, ox) = (pos / g.ow, pos % g.ow);
        for ky in 0..g.k {
            let iy = (oy * g.s + ky) as isize - g.p as isize;
            for kx in 0..g.k {
                let ix = (ox * g.s + kx) as isize - g.p as isize;
                let d = &mut dst[(ky * g.k + kx) * c..][..c];
                if iy < 0 || ix < 0 || iy as usize >= g.h || ix as usize >= g.w {
                    d.fill(0.0);
                } else {
                    let at = ((n * g.h + iy as usize) * g.w + ix as usize) * c;
                    x.read(at, d);
                }
            }
        }
    }
}

/// im2col of the whole batch, a row of outputs per task.
pub(super) fn im2col(x: Values, g: &ConvGeom, cols: &mut [f32]) {
    let kc = g.cols();
    cols[..g.rows() * kc]
        .par_chunks_mut(kc * g.ow)
        .enumerate()
        .for_each(|(row, out)| im2col_rows(x, g, row * g.ow, out));
}

/// The adjoint of [`im2col_rows`] for rows `r0..` of one image (`pos` the
/// row's position in the image): scatter-adds the columns into that
/// image's `dxi`.
fn col2im_rows(src: &[f32], g: &ConvGeom, pos0: usize, dxi: &mut [f32]) {
    let (kc, c) = (g.cols(), g.c);
    for (i, src) in src.chunks_exact(kc).enumerate() {
        let pos = pos0 + i;
        for_each_tap(g, pos / g.ow, pos % g.ow, |tap, pixel| {
            let d = &mut dxi[pixel * c..][..c];
            let s = &src[tap * c..][..c];
            d.iter_mut().zip(s).for_each(|(d, s)| *d += s);
        });
    }
}

/// The adjoint of [`im2col`]: scatter-adds the columns into `dx`, one image per task.
pub(super) fn col2im(dcols: &[f32], g: &ConvGeom, dx: &mut [f32], accumulate: bool) {
    let per_image = g.oh * g.ow * g.cols();
    dx.par_chunks_mut(g.h * g.w * g.c)
        .zip(dcols[..g.rows() * g.cols()].par_chunks(per_image))
        .for_each(|(dxi, cols)| {
            if !accumulate {
                dxi.fill(0.0);
            }
            col2im_rows(cols, g, 0, dxi);
        });
}

/// Calls `f(group, scratch, tiles)` for each image group of a grouped conv
/// in parallel, `tiles` its `(image, first row in the image, rows)` in order.
fn for_each_group(
    g: &ConvGeom,
    scratch: &mut [f32],
    per_group: usize,
    f: impl Fn(usize, &mut [f32], &mut dyn Iterator<Item = (usize, usize, usize)>) + Sync,
) {
    let (ipg, t, per_image) = (g.images_per_group(), g.tile_rows(), g.oh * g.ow);
    scratch[..g.groups() * per_group]
        .par_chunks_mut(per_group)
        .enumerate()
        .for_each(|(gi, s)| {
            let images = gi * ipg..((gi + 1) * ipg).min(g.b);
            let mut tiles = images.flat_map(|n| {
                (0..per_image)
                    .step_by(t)
                    .map(move |p| (n, p, t.min(per_image - p)))
            });
            f(gi, s, &mut tiles)
        });
}

/// Forward of a grouped conv (see [`ConvGeom::grouped`]).
pub(super) fn conv_grouped_forward(
    x: &[f32],
    w: &[f32],
    y: &mut [f32],
    g: &ConvGeom,
    scratch: &mut [f32],
    gemm: Gemm,
) {
    let (kc, o, per_image) = (g.cols(), g.o, g.oh * g.ow);
    let tile = g.tile_rows() * kc;
    let ys = SendPtr(y.as_mut_ptr());
    if let Some(dot) = gemm.direct16()
        && direct16::available(g)
        && direct16::padded_len(g) <= tile
    {
        let (groups, packed) = scratch.split_at_mut(g.groups() * tile);
        let packed = as_u32(&mut packed[..direct16::packed_len(g)]);
        direct16::pack_weight(w, g, packed);
        let packed = &*packed;
        let (ipg, len) = (g.images_per_group(), g.h * g.w * g.c);
        for_each_group(g, groups, tile, |gi, pad, _| {
            for n in gi * ipg..((gi + 1) * ipg).min(g.b) {
                // SAFETY: image n's output belongs to this group alone.
                let yi = unsafe {
                    std::slice::from_raw_parts_mut(ys.get().add(n * per_image * o), per_image * o)
                };
                let xi = Values::F32(&x[n * len..][..len]);
                direct16::conv_image(dot, xi, packed, yi, g, false, as_u32(pad));
            }
        });
        return;
    }
    if gemm.direct() && direct::available(g) && direct::padded_len(g) <= tile {
        let (ipg, len) = (g.images_per_group(), g.h * g.w * g.c);
        for_each_group(g, scratch, tile, |gi, pad, _| {
            for n in gi * ipg..((gi + 1) * ipg).min(g.b) {
                // SAFETY: image n's output belongs to this group alone.
                let yi = unsafe {
                    std::slice::from_raw_parts_mut(ys.get().add(n * per_image * o), per_image * o)
                };
                direct::conv_image(&x[n * len..][..len], w, yi, g, false, pad);
            }
        });
        return;
    }
    for_each_group(g, scratch, tile, |_, cols, tiles| {
        for (n, p, rows) in tiles {
            let r0 = n * per_image + p;
            let cols = &mut cols[..rows * kc];
            im2col_rows(Values::F32(x), g, r0, cols);
            // SAFETY: each tile's rows of y belong to one group alone.
            let yt = unsafe { std::slice::from_raw_parts_mut(ys.get().add(r0 * o), rows * o) };
            gemm.matmul(
                yt,
                false,
                row_major(cols, kc),
                row_major(w, o),
                (rows, o, kc),
                1,
            );
        }
    });
}

/// The weight of [`ConvGeom::input_gradient_conv`]:
/// `wf[(tap * o + co) * c + ci] = w[(flip(tap) * c + ci) * o + co]`,
/// `flip` the window turned by 180 degrees.
///
/// Each tap's block is a transpose: made 32 rows by 16 channels at a time
/// (the rows' reads share cache lines), blocks of rows in parallel (a
/// ResNet-50 stage-4 3x3 weight is 9 MiB).
pub(super) fn flip_weight(w: &[f32], g: &ConvGeom, wf: &mut [f32]) {
    const ROWS: usize = 32;
    let (kk, c, o) = (g.k * g.k, g.c, g.o);
    if c == 0 {
        return;
    }
    let w = &w[..kk * c * o];
    wf[..kk * o * c]
        .par_chunks_mut(ROWS * c)
        .enumerate()
        .for_each(|(b, dst)| {
            for c0 in (0..c).step_by(16) {
                let cs = c0..(c0 + 16).min(c);
                for (i, row) in dst.chunks_exact_mut(c).enumerate() {
                    let (tap, co) = ((b * ROWS + i) / o, (b * ROWS + i) % o);
                    let src = &w[(kk - 1 - tap) * c * o + co..];
                    for ci in cs.clone() {
                        row[ci] = src[ci * o];
                    }
                }
            }
        });
}

/// Backward of a grouped conv: dW, and dx (written or added to) if asked.
#[allow(clippy::too_many_arguments)]
pub(super) fn conv_grouped_backward(
    g: &ConvGeom,
    (x, dy): (Values, &[f32]),
    w: &[f32],
    dw: &mut [f32],
    dx: Option<(&mut [f32], bool)>,
    scratch: &mut [f32],
    gemm: Gemm,
) {
    let (kc, o, per_image) = (g.cols(), g.o, g.oh * g.ow);
    let tile = g.tile_rows() * kc;
    let per_group = tile + kc * o;
    let (groups_s, rest) = scratch.split_at_mut(g.groups() * per_group);
    let (wf, packed) = rest.split_at_mut(kc * o);
    let gd = g.input_gradient_conv();
    if gd.is_some() && dx.is_some() {
        flip_weight(w, g, wf);
    }
    let dot16 = gemm.direct16();
    // dx on the direct bf16 kernel: the flipped weight packed in pairs.
    let dx16 = match (dot16, &gd) {
        (Some(dot), Some(gd))
            if dx.is_some() && direct16::available(gd) && direct16::padded_len(gd) <= tile =>
        {
            let packed = as_u32(&mut packed[..direct16::packed_len(gd)]);
            direct16::pack_weight(wf, gd, packed);
            Some((dot, &*packed))
        }
        _ => None,
    };
    let wf = &*wf;
    let dxp = dx.map(|(d, acc)| (SendPtr(d.as_mut_ptr()), acc));
    let wt = transposed(w, o);
    let ipg = g.images_per_group();
    // dW directly when no dx needs the columns (a stride-1 conv's dx is the
    // input-gradient conv, or there is no dx).
    let direct_dw = (gd.is_some() || dxp.is_none())
        && gemm.direct()
        && direct::for_weight_gradient()
        && direct::available(g)
        && direct::padded_len(g) <= tile;
    // dW on the direct bf16 kernel, on the same condition.
    let dw16 = dot16
        .filter(|_| (gd.is_some() || dxp.is_none()) && direct16::weight_gradient_fits(g, tile));
    for_each_group(g, groups_s, per_group, |gi, s, tiles| {
        let (cols, dwg) = s.split_at_mut(tile);
        let mut first = true;
        let images = gi * ipg..((gi + 1) * ipg).min(g.b);
        if direct_dw {
            let dwg = &mut dwg[..kc * o];
            dwg.fill(0.0);
            let len = g.h * g.w * g.c;
            for n in images.clone() {
                let dyi = &dy[n * per_image * o..][..per_image * o];
                direct::weight_gradient_image(x.slice(n * len..(n + 1) * len), dyi, dwg, g, cols);
            }
        }
        if let Some(dot) = dw16 {
            let dwg = &mut dwg[..kc * o];
            dwg.fill(0.0);
            let len = g.h * g.w * g.c;
            for n in images.clone() {
                let dyi = &dy[n * per_image * o..][..per_image * o];
                let xi = x.slice(n * len..(n + 1) * len);
                direct16::weight_gradient_image(dot, xi, dyi, dwg, g, as_u32(cols));
            }
        }
        for (n, p, rows) in tiles.filter(|_| !direct_dw && dw16.is_none()) {
            let r0 = n * per_image + p;
            let cols = &mut cols[..rows * kc];
            im2col_rows(x, g, r0, cols);
            let dyt = &dy[r0 * o..(r0 + rows) * o];
            gemm.matmul(
                dwg,
                !first,
                transposed(cols, kc),
                row_major(dyt, o),
                (kc, o, rows),
                1,
            );
            first = false;
            if gd.is_some() {
                continue;
            }
            // dx by columns: dcols = dy W^T, scattered back.
            if let Some((d, accumulate)) = dxp {
                gemm.matmul(cols, false, row_major(dyt, o), wt, (rows, kc, o), 1);
                let len = g.h * g.w * g.c;
                // SAFETY: image n's gradient belongs to this group alone.
                let dxi = unsafe { std::slice::from_raw_parts_mut(d.get().add(n * len), len) };
                if p == 0 && !accumulate {
                    dxi.fill(0.0);
                }
                col2im_rows(cols, g, p, dxi);
            }
        }
        // dx as the forward of the input-gradient conv, over its own tiles.
        if let (Some(gd), Some((d, accumulate))) = (&gd, dxp) {
            let (kd, c, hw) = (gd.cols(), g.c, g.h * g.w);
            let td = (tile / kd).clamp(1, hw);
            if let Some((dot, packed)) = dx16 {
                for n in images {
                    // SAFETY: image n's gradient belongs to this group alone.
                    let dxi =
                        unsafe { std::slice::from_raw_parts_mut(d.get().add(n * hw * c), hw * c) };
                    let dyi = Values::F32(&dy[n * per_image * o..][..per_image * o]);
                    direct16::conv_image(dot, dyi, packed, dxi, gd, accumulate, as_u32(cols));
                }
                return;
            }
            if gemm.direct()
                && direct::for_input_gradient()
                && direct::available(gd)
                && direct::padded_len(gd) <= tile
            {
                for n in images {
                    // SAFETY: image n's gradient belongs to this group alone.
                    let dxi =
                        unsafe { std::slice::from_raw_parts_mut(d.get().add(n * hw * c), hw * c) };
                    let dyi = &dy[n * per_image * o..][..per_image * o];
                    direct::conv_image(dyi, wf, dxi, gd, accumulate, cols);
                }
                return;
            }
            for n in images {
                for p in (0..hw).step_by(td) {
                    let rows = td.min(hw - p);
                    let r0 = n * hw + p;
                    let cols = &mut cols[..rows * kd];
                    im2col_rows(Values::F32(dy), gd, r0, cols);
                    // SAFETY: image n's gradient belongs to this group alone.
                    let dxt =
                        unsafe { std::slice::from_raw_parts_mut(d.get().add(r0 * c), rows * c) };
                    gemm.matmul(
                        dxt,
                        accumulate,
                        row_major(cols, kd),
                        row_major(wf, c),
                        (rows, c, kd),
                        1,
                    );
                }
            }
        }
    });
    // dW: the groups' sums, added in group order.
    let groups = &groups_s[..];
    dw[..kc * o]
        .par_chunks_mut(4096)
        .enumerate()
        .for_each(|(i, d)| {
            let at = i * 4096;
            d.fill(0.0);
            for gs in groups.chunks_exact(per_group) {
                let part = &gs[tile + at..tile + at + d.len()];
                d.iter_mut().zip(part).for_each(|(d, v)| *d += v);
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The flipped weight is its definition, element by element: channel
    /// counts past and short of a 16-channel block, outputs short of and
    /// past a 32-row block (rows of two taps in one block), 1x1 to 5x5.
    #[test]
    fn flip_weight_is_its_definition() {
        for (c, o, k) in [
            (3, 5, 3),
            (16, 32, 3),
            (20, 40, 3),
            (33, 7, 5),
            (1, 1, 1),
            (64, 64, 1),
        ] {
            let g = ConvGeom::new(1, (6, 6, c), o, (k, 1, k / 2));
            let kk = k * k;
            let w: Vec<f32> = (0..kk * c * o).map(|i| i as f32).collect();
            let mut wf = vec![f32::NAN; kk * c * o];
            flip_weight(&w, &g, &mut wf);
            for tap in 0..kk {
                for co in 0..o {
                    for ci in 0..c {
                        assert_eq!(
                            wf[(tap * o + co) * c + ci],
                            w[((kk - 1 - tap) * c + ci) * o + co],
                            "c {c} o {o} k {k}: tap {tap}, out {co}, in {ci}"
                        );
                    }
                }
            }
        }
    }
}
