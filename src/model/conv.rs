//! 2-D convolution on stable Rust, from dfdx's public tensor ops only, so
//! autodiff works through dfdx's tape on every device.
//!
//! Activations are channels-last, `(B, H, W, C)`; the weight keeps PyTorch's
//! `[O, C, K, K]` layout (so torchvision checkpoints map one to one).
//! Windows are centred (`K = 2P + 1`, checked at compile time), so the
//! output sides follow from the stride alone, at the type level
//! ([`super::shape`]).
//!
//! Forward is an im2col, `(B*OH*OW, K*K*C)`, multiplied by the weight
//! permuted to `(K*K*C, O)`; the result is already the next layer's
//! `(B, OH, OW, O)` input. A 1x1 stride-1 convolution is a plain matmul.
//! - On the CPU (`f32`) the im2col and its adjoint (col2im, a scatter-add)
//!   are one custom tape op ([`cpu`]): both run on all cores (rayon), skip
//!   the padding taps and need no index. dfdx's gather and its backward are
//!   single-threaded and were a third of a ResNet-20 step.
//! - Elsewhere ([`Conv2d::forward_gather`]) the input viewed as `(B*H*W, C)`
//!   rows is gathered by an index computed once per input size and cached;
//!   padding taps gather a clamped row and are multiplied by a 0/1 mask (no
//!   concatenation, which dfdx compiles at run time on CUDA; on the CPU,
//!   where this path only serves the tests, they gather an appended zero row).

use super::dispatch;
use super::shape::{Act, Halvable, Spatial, Stride, out_side};
use dfdx::prelude::*;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

pub mod cpu;

/// The output side of stride `S` for input side `X`.
pub type Out<const S: usize, X> = <Stride<S> as Spatial>::Out<X>;

/// Output side of a convolution or pooling window.
pub const fn conv_out(n: usize, k: usize, s: usize, p: usize) -> usize {
    (n + 2 * p - k) / s + 1
}

/// The gather index (and padding mask) for one input size.
#[derive(Debug)]
pub struct Im2Col<E: Dtype, D: Storage<usize> + Storage<E>> {
    /// Row of `(B*H*W, C)` for every (output position, tap), tap-major within a position.
    pub idx: Tensor<(usize,), usize, D>,
    /// 1 where the tap is inside the image, 0 in the padding (None without padding).
    pub mask: Option<Tensor<(usize,), E, D>>,
    /// On the CPU: the index with padding taps pointing at an appended zero
    /// row (row `B*H*W`), which replaces the mask multiplication.
    pub zero_idx: Option<Tensor<(usize,), usize, D>>,
    /// Output height.
    pub oh: usize,
    /// Output width.
    pub ow: usize,
}

/// Builds the im2col index for `(b, h, w)` inputs, window `k`, stride `s`, padding `p`.
pub fn im2col_index(
    b: usize,
    h: usize,
    w: usize,
    k: usize,
    s: usize,
    p: usize,
) -> (Vec<usize>, Option<Vec<f32>>, usize, usize) {
    let (oh, ow) = (conv_out(h, k, s, p), conv_out(w, k, s, p));
    let mut idx = Vec::with_capacity(b * oh * ow * k * k);
    let mut mask = Vec::with_capacity(if p > 0 { idx.capacity() } else { 0 });
    for n in 0..b {
        for oy in 0..oh {
            for ox in 0..ow {
                for ky in 0..k {
                    for kx in 0..k {
                        let y = (oy * s + ky) as isize - p as isize;
                        let x = (ox * s + kx) as isize - p as isize;
                        let inside = y >= 0 && x >= 0 && (y as usize) < h && (x as usize) < w;
                        let (yc, xc) = (
                            y.clamp(0, h as isize - 1) as usize,
                            x.clamp(0, w as isize - 1) as usize,
                        );
                        idx.push((n * h + yc) * w + xc);
                        if p > 0 {
                            mask.push(if inside { 1.0 } else { 0.0 });
                        }
                    }
                }
            }
        }
    }
    (idx, (p > 0).then_some(mask), oh, ow)
}

/// Indices a convolution computes once: im2col per input size, and (off the
/// CPU) the weight permutation.
struct Indices<E: Dtype, D: Storage<usize> + Storage<E>> {
    im2col: HashMap<(usize, usize, usize), Arc<Im2Col<E, D>>>,
    weight: Option<Tensor<(usize,), usize, D>>,
}

impl<E: Dtype, D: Storage<usize> + Storage<E>> Default for Indices<E, D> {
    fn default() -> Self {
        Indices {
            im2col: HashMap::new(),
            weight: None,
        }
    }
}

impl<E: Dtype, D: Storage<usize> + Storage<E>> std::fmt::Debug for Indices<E, D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Indices")
            .field("im2col_sizes", &self.im2col.keys().collect::<Vec<_>>())
            .finish()
    }
}

type Cache<E, D> = Arc<Mutex<Indices<E, D>>>;

/// For each element of the `(K*K*C, O)` weight matrix (row `(ky*K + kx)*C + c`,
/// column `o`), its position in the `[O, C, K, K]` weight.
pub fn weight_permutation(o: usize, c: usize, k: usize) -> Vec<usize> {
    let mut idx = Vec::with_capacity(o * c * k * k);
    for ky in 0..k {
        for kx in 0..k {
            for ci in 0..c {
                for oi in 0..o {
                    idx.push(((oi * c + ci) * k + ky) * k + kx);
                }
            }
        }
    }
    idx
}

/// A bias-free 2-D convolution (ResNets put BatchNorm after every conv).
#[derive(Debug, Clone)]
pub struct Conv2d<
    const C: usize,
    const O: usize,
    const K: usize,
    const S: usize,
    const P: usize,
    E: Dtype,
    D: Storage<E> + Storage<usize>,
> {
    /// `[O, C, K, K]`, PyTorch's layout.
    pub weight: Tensor<Rank4<O, C, K, K>, E, D>,
    cache: Cache<E, D>,
}

impl<
    const C: usize,
    const O: usize,
    const K: usize,
    const S: usize,
    const P: usize,
    E: Dtype,
    D: Device<E>,
> Conv2d<C, O, K, S, P, E, D>
{
    /// Wraps an existing weight.
    pub fn from_weight(weight: Tensor<Rank4<O, C, K, K>, E, D>) -> Self {
        Conv2d {
            weight,
            cache: Default::default(),
        }
    }

    fn index(&self, dev: &D, b: usize, h: usize, w: usize) -> Arc<Im2Col<E, D>> {
        let mut cache = self.cache.lock().expect("im2col cache");
        Arc::clone(cache.im2col.entry((b, h, w)).or_insert_with(|| {
            let (idx, mask, oh, ow) = im2col_index(b, h, w, K, S, P);
            let m = idx.len();
            // The CPU concatenates a zero row (cheap there); other devices keep the
            // mask, since dfdx compiles its CUDA concat kernel at run time.
            let on_cpu = dispatch::is_cpu::<D>();
            let zero_idx = match (&mask, on_cpu) {
                (Some(mk), true) => {
                    let zero_row = b * h * w;
                    let z: Vec<usize> = idx
                        .iter()
                        .zip(mk)
                        .map(|(&i, &inside)| if inside > 0.0 { i } else { zero_row })
                        .collect();
                    Some(dev.tensor_from_vec(z, (m,)))
                }
                _ => None,
            };
            let mask = if zero_idx.is_some() { None } else { mask };
            let mask = mask.map(|v| {
                let v: Vec<E> = v
                    .into_iter()
                    .map(|x| E::from_f32(x).expect("0 or 1"))
                    .collect();
                dev.tensor_from_vec(v, (m,))
            });
            Arc::new(Im2Col {
                idx: dev.tensor_from_vec(idx, (m,)),
                mask,
                zero_idx,
                oh,
                ow,
            })
        }))
    }

    /// Forward on NHWC input `(B, H, W, C)` → `(B, OH, OW, O)`; the sides
    /// map by the stride at the type level (see [`super::shape`]).
    pub fn forward<B: Dim, H: Halvable, W: Halvable, T: Tape<E, D>>(
        &self,
        x: Tensor<(B, H, W, Const<C>), E, D, T>,
    ) -> Act<B, Out<S, H>, Out<S, W>, O, E, D, T>
    where
        Stride<S>: Spatial,
    {
        const { assert!(K == 2 * P + 1, "ResNet windows are centred: K = 2P + 1") };
        let pointwise = K == 1 && S == 1 && P == 0;
        if pointwise || !dispatch::is_cpu_f32::<E, D>() {
            return self.forward_gather(x);
        }
        let (b, h, w, _) = *x.shape();
        let g = cpu::Geometry::new(b.size(), h.size(), w.size(), C, K, S, P);
        let shape = (
            b,
            out_side::<Stride<S>, H>(g.oh),
            out_side::<Stride<S>, W>(g.ow),
            Const,
        );
        cpu::im2col_op(x, g)
            .matmul(self.weight_matrix::<T>())
            .reshape_like(&shape)
    }

    /// The weight as `(K*K*C, O)`, rows in (ky, kx, c) order to match the
    /// im2col columns: a permute and copy on the CPU, a gather elsewhere
    /// (dfdx compiles the CUDA kernel that copies a permuted tensor at run
    /// time, with headers from the build machine).
    fn weight_matrix<T: Tape<E, D>>(&self) -> Tensor<(usize, Const<O>), E, D, T> {
        if dispatch::is_cpu::<D>() {
            self.weight_matrix_permuted()
        } else {
            self.weight_matrix_gathered()
        }
    }

    /// [`Self::weight_matrix`] by dfdx's permute and reshape.
    pub fn weight_matrix_permuted<T: Tape<E, D>>(&self) -> Tensor<(usize, Const<O>), E, D, T> {
        self.weight
            .retaped::<T>()
            .permute::<Rank4<K, K, C, O>, Axes4<2, 3, 1, 0>>()
            .reshape_like(&(K * K * C, Const::<O>))
    }

    /// [`Self::weight_matrix`] by a gather with a cached index.
    pub fn weight_matrix_gathered<T: Tape<E, D>>(&self) -> Tensor<(usize, Const<O>), E, D, T> {
        let n = O * C * K * K;
        let idx = {
            let mut cache = self.cache.lock().expect("conv index cache");
            let dev = self.weight.device();
            cache
                .weight
                .get_or_insert_with(|| dev.tensor_from_vec(weight_permutation(O, C, K), (n,)))
                .clone()
        };
        let flat: Tensor<(usize,), E, D, T> = self.weight.retaped::<T>().reshape_like(&(n,));
        flat.gather(idx).reshape_like(&(K * K * C, Const::<O>))
    }

    /// The device-generic im2col by `gather` (used on CUDA; public so the
    /// tests can compare it with the CPU op).
    pub fn forward_gather<B: Dim, H: Halvable, W: Halvable, T: Tape<E, D>>(
        &self,
        x: Tensor<(B, H, W, Const<C>), E, D, T>,
    ) -> Act<B, Out<S, H>, Out<S, W>, O, E, D, T>
    where
        Stride<S>: Spatial,
    {
        let (b, hd, wd, _) = *x.shape();
        let (h, w) = (hd.size(), wd.size());
        let dev = x.device().clone();
        let bn = b.size();
        let wmat = self.weight_matrix::<T>();
        let rows = x.reshape_like(&(bn * h * w, Const::<C>));
        if K == 1 && S == 1 && P == 0 {
            let wmat = wmat.reshape_like(&(Const::<C>, Const::<O>));
            let shape = (
                b,
                out_side::<Stride<S>, H>(h),
                out_side::<Stride<S>, W>(w),
                Const,
            );
            return rows.matmul(wmat).reshape_like(&shape);
        }
        let ix = self.index(&dev, bn, h, w);
        let m = ix.idx.shape().0;
        let taps: Tensor<(usize, Const<C>), E, D, T> = if let Some(zi) = &ix.zero_idx {
            let zero: Tensor<(usize, Const<C>), E, D> = dev.zeros_like(&(1usize, Const::<C>));
            let ext: Tensor<(usize, Const<C>), E, D, T> = (rows, zero).concat_along(Axis::<0>);
            ext.gather(zi.clone())
        } else {
            let taps = rows.gather(ix.idx.clone());
            match &ix.mask {
                Some(mask) => taps * mask.clone().broadcast_like(&(m, Const::<C>)),
                None => taps,
            }
        };
        let cols = taps.reshape_like(&(bn * ix.oh * ix.ow, K * K * C));
        let shape = (
            b,
            out_side::<Stride<S>, H>(ix.oh),
            out_side::<Stride<S>, W>(ix.ow),
            Const,
        );
        cols.matmul(wmat).reshape_like(&shape)
    }
}

impl<const C: usize, const O: usize, const K: usize, const S: usize, const P: usize, E, D>
    TensorCollection<E, D> for Conv2d<C, O, K, S, P, E, D>
where
    E: Dtype + num_traits::Float,
    D: Device<E>,
    rand_distr::StandardNormal: rand_distr::Distribution<E>,
{
    type To<E2: Dtype, D2: Device<E2>> = Conv2d<C, O, K, S, P, E2, D2>;

    fn iter_tensors<V: ModuleVisitor<Self, E, D>>(
        visitor: &mut V,
    ) -> Result<Option<Self::To<V::E2, V::D2>>, V::Err> {
        visitor.visit_fields(
            Self::tensor(
                "weight",
                |s| &s.weight,
                |s| &mut s.weight,
                // He et al. 2015 ("Delving deep"): N(0, 2 / fan) with fan = K*K*O, torchvision's "fan_out".
                TensorOptions::reset_with(|t| {
                    let std = E::from_f64((2.0 / (K * K * O) as f64).sqrt()).expect("f64 to E");
                    t.try_fill_with_distr(rand_distr::Normal::new(E::zero(), std).expect("std > 0"))
                }),
            ),
            |weight| Conv2d {
                weight,
                cache: Default::default(),
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Naive f64 convolution, NHWC input, [O, C, K, K] weight.
    #[allow(clippy::too_many_arguments)]
    fn naive(
        x: &[f64],
        w: &[f64],
        (b, h, wd, c): (usize, usize, usize, usize),
        o: usize,
        k: usize,
        s: usize,
        p: usize,
    ) -> Vec<f64> {
        let (oh, ow) = (conv_out(h, k, s, p), conv_out(wd, k, s, p));
        let mut out = vec![0f64; b * oh * ow * o];
        for n in 0..b {
            for oy in 0..oh {
                for ox in 0..ow {
                    for oc in 0..o {
                        let mut acc = 0.0;
                        for ky in 0..k {
                            for kx in 0..k {
                                let (y, xx) = (
                                    (oy * s + ky) as isize - p as isize,
                                    (ox * s + kx) as isize - p as isize,
                                );
                                if y < 0 || xx < 0 || y as usize >= h || xx as usize >= wd {
                                    continue;
                                }
                                for ci in 0..c {
                                    acc += x[((n * h + y as usize) * wd + xx as usize) * c + ci]
                                        * w[((oc * c + ci) * k + ky) * k + kx];
                                }
                            }
                        }
                        out[((n * oh + oy) * ow + ox) * o + oc] = acc;
                    }
                }
            }
        }
        out
    }

    fn max_rel(a: &[f32], b: &[f64]) -> f64 {
        let scale = b.iter().map(|v| v.abs()).fold(0.0, f64::max).max(1e-12);
        a.iter()
            .zip(b)
            .map(|(x, y)| (*x as f64 - y).abs())
            .fold(0.0, f64::max)
            / scale
    }

    /// Forward, input gradient and weight gradient against the f64
    /// reference: loss = sum(out * r), whose gradients are exact adjoints
    /// computed with the naive convolution's own loops.
    fn check<const C: usize, const O: usize, const K: usize, const S: usize, const P: usize>(
        b: usize,
        h: usize,
        w: usize,
    ) where
        Stride<S>: Spatial,
    {
        let dev: Cpu = Default::default();
        let mut rng =
            rand_pcg::Pcg64::seed_from_u64((C * 131 + O * 17 + K * 7 + S * 3 + P + h) as u64);
        let xv: Vec<f32> = (0..b * h * w * C)
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        let wv: Vec<f32> = (0..O * C * K * K)
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        let (oh, ow) = (conv_out(h, K, S, P), conv_out(w, K, S, P));
        let rv: Vec<f32> = (0..b * oh * ow * O)
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        let conv: Conv2d<C, O, K, S, P, f32, Cpu> =
            Conv2d::from_weight(dev.tensor_from_vec(wv.clone(), Rank4::<O, C, K, K>::default()));
        let xd: Vec<f64> = xv.iter().map(|&v| v as f64).collect();
        let wd: Vec<f64> = wv.iter().map(|&v| v as f64).collect();
        let rd: Vec<f64> = rv.iter().map(|&v| v as f64).collect();
        let want = naive(&xd, &wd, (b, h, w, C), O, K, S, P);
        // Reference gradients: dL/dx and dL/dw by the adjoint loops.
        let (mut gx, mut gw) = (vec![0f64; xd.len()], vec![0f64; wd.len()]);
        for n in 0..b {
            for oy in 0..oh {
                for ox in 0..ow {
                    for oc in 0..O {
                        let g = rd[((n * oh + oy) * ow + ox) * O + oc];
                        for ky in 0..K {
                            for kx in 0..K {
                                let (yy, xx) = (
                                    (oy * S + ky) as isize - P as isize,
                                    (ox * S + kx) as isize - P as isize,
                                );
                                if yy < 0 || xx < 0 || yy as usize >= h || xx as usize >= w {
                                    continue;
                                }
                                for c in 0..C {
                                    let xi = ((n * h + yy as usize) * w + xx as usize) * C + c;
                                    let wi = ((oc * C + c) * K + ky) * K + kx;
                                    gx[xi] += g * wd[wi];
                                    gw[wi] += g * xd[xi];
                                }
                            }
                        }
                    }
                }
            }
        }
        let r = dev.tensor_from_vec(rv, (b, oh, ow, Const::<O>));
        // The CPU im2col op, the gather path as the CPU runs it (an appended
        // zero row) and as CUDA runs it (a padding mask, a gathered weight).
        for path in ["cpu op", "gather, zero row", "gather, device-generic"] {
            let x = dev.tensor_from_vec(xv.clone(), (b, h, w, Const::<C>));
            let fresh: Conv2d<C, O, K, S, P, f32, Cpu> = Conv2d::from_weight(conv.weight.clone()); // own index cache
            let y = match path {
                "cpu op" => conv.forward(x.leaky_trace()),
                "gather, zero row" => fresh.forward_gather(x.leaky_trace()),
                _ => dispatch::with_generic_ops(|| fresh.forward(x.leaky_trace())),
            };
            assert_eq!((y.shape().1.size(), y.shape().2.size()), (oh, ow));
            let y = y.reshape_like(&(b, oh, ow, Const::<O>));
            let fwd = max_rel(&y.as_vec(), &want);
            let grads = (y * r.clone()).sum().backward();
            let ex = max_rel(&grads.get(&x).as_vec(), &gx);
            let ew = max_rel(&grads.get(&conv.weight).as_vec(), &gw);
            let tol = 2e-6;
            assert!(
                fwd < tol && ex < tol && ew < tol,
                "C{C} O{O} K{K} S{S} P{P} {h}x{w} {path}: forward {fwd:e}, dx {ex:e}, dw {ew:e}"
            );
        }
    }

    #[test]
    fn conv_matches_the_f64_reference_in_value_and_gradients() {
        check::<3, 8, 7, 2, 3>(2, 17, 15); // ResNet's stem
        check::<4, 5, 3, 1, 1>(2, 9, 8);
        check::<6, 4, 3, 2, 1>(2, 9, 10);
        check::<5, 7, 1, 1, 0>(3, 6, 5); // the plain-matmul path
        check::<5, 7, 1, 2, 0>(2, 7, 6); // projection shortcut
        check::<2, 3, 5, 1, 2>(1, 5, 5);
        check::<3, 2, 5, 2, 2>(2, 11, 12);
        check::<16, 16, 3, 1, 1>(2, 8, 8);
    }

    #[test]
    fn gathered_weight_matrix_equals_the_permuted_one_in_value_and_gradient() {
        let dev: Cpu = Cpu::seed_from_u64(3);
        let conv: Conv2d<3, 5, 3, 1, 1, f32, Cpu> =
            Conv2d::from_weight(dev.sample_normal::<Rank4<5, 3, 3, 3>>());
        let r: Tensor<(usize, Const<5>), f32, Cpu> = dev.sample_normal_like(&(27, Const));
        let a = conv.weight_matrix_permuted::<OwnedTape<f32, Cpu>>();
        let b = conv.weight_matrix_gathered::<OwnedTape<f32, Cpu>>();
        assert_eq!(
            a.retaped::<NoneTape>().as_vec(),
            b.retaped::<NoneTape>().as_vec()
        );
        let ga = (a * r.clone()).sum().backward();
        let gb = (b * r).sum().backward();
        assert_eq!(ga.get(&conv.weight).as_vec(), gb.get(&conv.weight).as_vec());
    }
}
