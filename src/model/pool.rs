//! Pooling on NHWC tensors from dfdx's public ops.
//!
//! Max pooling gathers each window's rows like the convolution does, adds
//! `-inf` to the taps that fall in the padding, and takes the max over the
//! window axis. (Gathering the nearest in-image row for a padded tap gives the
//! right value but a duplicate, and dfdx's `max` routes the gradient to every
//! element equal to the max, so the duplicate would double it.) The same
//! rule means a window with tied maxima (all-zero windows after a ReLU)
//! passes the gradient to each tied element, where PyTorch picks one.
//!
//! The window index and padding row of the last few input sizes stay on the
//! device (per thread), so a training step neither rebuilds nor uploads them.

use super::conv::{Out, conv_out, im2col_index};
use super::shape::{Act, Halvable, Spatial, Stride, out_side};
use dfdx::prelude::*;
use std::any::{Any, TypeId};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

/// Index, `-inf` padding row (None without padding), output sides.
type PoolIndex<E, D> = (
    Tensor<(usize,), usize, D>,
    Option<Tensor<(usize,), E, D>>,
    usize,
    usize,
);

/// (device type, dtype, batch, h, w, k, s, p). Keyed by the device's type,
/// not its instance: one GPU per thread (as the trainer runs).
type PoolKey = (TypeId, TypeId, [usize; 6]);

/// Input sizes kept per thread (training, evaluation and a last partial batch
/// fit; multi-scale testing of whole images of every size would not).
const POOL_CACHE_SIZES: usize = 8;

thread_local! {
    static POOL_INDEX: RefCell<HashMap<PoolKey, Rc<dyn Any>>> = RefCell::new(HashMap::new());
}

fn pool_index<E: Dtype, D: Device<E>>(dev: &D, dims: [usize; 6]) -> Rc<PoolIndex<E, D>> {
    let key = (TypeId::of::<D>(), TypeId::of::<E>(), dims);
    let hit = POOL_INDEX.with(|c| c.borrow().get(&key).cloned());
    if let Some(v) = hit.and_then(|v| v.downcast::<PoolIndex<E, D>>().ok()) {
        return v;
    }
    let [b, h, w, k, s, p] = dims;
    let (idx, mask, oh, ow) = im2col_index(b, h, w, k, s, p);
    let m = idx.len();
    let neg = E::from_f64(f64::NEG_INFINITY).expect("-inf");
    let pad = mask.map(|mask| {
        let pad: Vec<E> = mask
            .into_iter()
            .map(|v| if v > 0.0 { E::default() } else { neg })
            .collect();
        dev.tensor_from_vec(pad, (m,))
    });
    let v = Rc::new((dev.tensor_from_vec(idx, (m,)), pad, oh, ow));
    POOL_INDEX.with(|c| {
        let mut c = c.borrow_mut();
        if c.len() >= POOL_CACHE_SIZES {
            c.clear();
        }
        c.insert(key, v.clone() as Rc<dyn Any>);
    });
    v
}

/// Max pooling with window `K`, stride `S`, padding `P` (ResNet's stem: 3, 2, 1).
pub fn max_pool<
    const K: usize,
    const S: usize,
    const P: usize,
    B: Dim,
    H: Halvable,
    W: Halvable,
    const C: usize,
    E: Dtype,
    D: Device<E>,
    T: Tape<E, D>,
>(
    x: Tensor<(B, H, W, Const<C>), E, D, T>,
) -> Act<B, Out<S, H>, Out<S, W>, C, E, D, T>
where
    Stride<S>: Spatial,
{
    const { assert!(K == 2 * P + 1, "centred windows only: K = 2P + 1") };
    let (b, hd, wd, _) = *x.shape();
    let (h, w) = (hd.size(), wd.size());
    let dev = x.device().clone();
    let index = pool_index::<E, D>(&dev, [b.size(), h, w, K, S, P]);
    let (idx, pad, oh, ow) = &*index;
    let (oh, ow, m) = (*oh, *ow, idx.shape().0);
    debug_assert_eq!((oh, ow), (conv_out(h, K, S, P), conv_out(w, K, S, P)));
    let rows = x.reshape_like(&(b.size() * h * w, Const::<C>));
    let mut taps: Tensor<(usize, Const<C>), E, D, T> = rows.gather(idx.clone());
    if let Some(pad) = pad {
        taps = taps + pad.clone().broadcast_like(&(m, Const::<C>));
    }
    let windows = taps.reshape_like(&(b.size() * oh * ow, K * K, Const::<C>));
    let pooled: Tensor<(usize, Const<C>), E, D, T> = windows.max::<_, Axis<1>>();
    pooled.reshape_like(&(
        b,
        out_side::<Stride<S>, H>(oh),
        out_side::<Stride<S>, W>(ow),
        Const::<C>,
    ))
}

/// Global average pooling: `(B, H, W, C)` → `(B, C)`.
pub fn global_avg_pool<B: Dim, H: Dim, W: Dim, C: Dim, E: Dtype, D: Device<E>, T: Tape<E, D>>(
    x: Tensor<(B, H, W, C), E, D, T>,
) -> Tensor<(B, C), E, D, T> {
    x.mean::<_, Axes2<1, 2>>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn max_pool_matches_a_naive_pool_and_routes_gradients_to_the_max() {
        let dev: Cpu = Default::default();
        let (b, h, w) = (2, 9, 8);
        const C: usize = 3;
        let mut rng = rand_pcg::Pcg64::seed_from_u64(3);
        let xv: Vec<f32> = (0..b * h * w * C)
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        let x = dev.tensor_from_vec(xv.clone(), (b, h, w, Const::<C>));
        let y = max_pool::<3, 2, 1, _, _, _, C, _, _, _>(x.leaky_trace());
        let (oh, ow) = (conv_out(h, 3, 2, 1), conv_out(w, 3, 2, 1));
        assert_eq!((y.shape().1, y.shape().2), (oh, ow));
        let got = y.as_vec();
        let mut want_grad = vec![0f32; xv.len()];
        for n in 0..b {
            for oy in 0..oh {
                for ox in 0..ow {
                    for c in 0..C {
                        let mut best = (f32::NEG_INFINITY, 0);
                        for ky in 0..3 {
                            for kx in 0..3 {
                                let (yy, xx) =
                                    ((oy * 2 + ky) as isize - 1, (ox * 2 + kx) as isize - 1);
                                if yy < 0 || xx < 0 || yy as usize >= h || xx as usize >= w {
                                    continue;
                                }
                                let i = ((n * h + yy as usize) * w + xx as usize) * C + c;
                                if xv[i] > best.0 {
                                    best = (xv[i], i);
                                }
                            }
                        }
                        assert_eq!(got[((n * oh + oy) * ow + ox) * C + c], best.0);
                        want_grad[best.1] += 1.0;
                    }
                }
            }
        }
        let g = y.sum().backward();
        assert_eq!(g.get(&x).as_vec(), want_grad);
    }

    #[test]
    fn global_average() {
        let dev: Cpu = Default::default();
        let x = dev.tensor_from_vec(
            (0..2 * 2 * 3 * 2).map(|v| v as f32).collect(),
            (2usize, 2usize, 3usize, Const::<2>),
        );
        let y = global_avg_pool(x);
        assert_eq!(y.as_vec(), vec![5.0, 6.0, 17.0, 18.0]);
    }
}
