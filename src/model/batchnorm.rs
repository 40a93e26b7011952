//! Training-mode BatchNorm on the CPU as one tape op.
//!
//! dfdx's `BatchNorm1D::forward_mut` is built from about a dozen tensor ops
//! (mean, subtract, square, mean, add, sqrt, divide, broadcasts, multiply,
//! add), each a single-threaded pass over the activation, and as many in
//! backward. This op does the same computation in three parallel passes
//! forward (statistics, normalise, write) and two backward, with the same
//! semantics: batch statistics normalise, running statistics are updated
//! with `momentum` (unbiased variance, as dfdx and PyTorch do), and the
//! gradient flows through the batch statistics.
//!
//! Reductions are summed in fixed-size chunks combined in order, so the
//! result does not depend on the number of threads (bit-identical resumes).
//! Like the im2col op it runs only for `f32` on the [`Cpu`] and is reached
//! through dfdx's public API (see `conv::cpu`).

use super::dispatch::same;
use dfdx::nn::modules::BatchNorm1D;
use dfdx::prelude::*;
use rayon::prelude::*;
use std::any::Any;
use std::sync::Mutex;

/// Rows per reduction chunk (a fixed split keeps sums deterministic).
const CHUNK_ROWS: usize = 1024;

/// Buffers kept between steps: a fresh buffer of activation size costs page
/// faults on every call. `xhat` lives until backward, so there are several.
static POOL: Mutex<Vec<Vec<f32>>> = Mutex::new(Vec::new());

/// A buffer of `len` zeros-or-stale values from the pool, returned on drop.
struct Pooled(Vec<f32>);

impl Pooled {
    fn take(len: usize) -> Self {
        let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
        let mut v = match pool.iter().position(|v| v.capacity() == len) {
            Some(i) => pool.swap_remove(i),
            None => Vec::with_capacity(len),
        };
        v.resize(len, 0.0);
        Pooled(v)
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
        if pool.len() < 256 {
            pool.push(std::mem::take(&mut self.0));
        }
    }
}

/// Per-channel sums over `n` rows of `c` channels: `f(rows, acc)` adds one
/// chunk of rows (a range of row indices) into `acc` (`width * c` sums,
/// zeroed); chunks of [`CHUNK_ROWS`] run in parallel and are combined in
/// order, so the result does not depend on the number of threads.
fn chunk_sums(
    n: usize,
    width: usize,
    f: impl Fn(std::ops::Range<usize>, &mut [f64]) + Sync,
) -> Vec<f64> {
    let partial: Vec<Vec<f64>> = (0..n.div_ceil(CHUNK_ROWS))
        .into_par_iter()
        .map(|k| {
            let mut acc = vec![0f64; width];
            f(k * CHUNK_ROWS..((k + 1) * CHUNK_ROWS).min(n), &mut acc);
            acc
        })
        .collect();
    partial.iter().fold(vec![0f64; width], |mut total, p| {
        total.iter_mut().zip(p).for_each(|(t, v)| *t += v);
        total
    })
}

/// Per-channel sums of `f(acc, row)` over `rows` (length a multiple of `c`).
fn channel_sums(rows: &[f32], c: usize, f: impl Fn(&mut [f64], &[f32]) + Sync) -> Vec<f64> {
    chunk_sums(rows.len() / c, c, |r, acc| {
        for row in rows[r.start * c..r.end * c].chunks_exact(c) {
            f(acc, row);
        }
    })
}

/// Batch statistics `(mean, biased variance)` per channel of `(n, c)` rows.
pub fn batch_stats(x: &[f32], c: usize) -> (Vec<f64>, Vec<f64>) {
    let n = (x.len() / c) as f64;
    let sum = channel_sums(x, c, |acc, row| {
        acc.iter_mut().zip(row).for_each(|(a, &v)| *a += v as f64)
    });
    let mean: Vec<f64> = sum.iter().map(|s| s / n).collect();
    let sq = channel_sums(x, c, |acc, row| {
        for ((a, &v), m) in acc.iter_mut().zip(row).zip(&mean) {
            let d = v as f64 - m;
            *a += d * d;
        }
    });
    (mean, sq.iter().map(|s| s / n).collect())
}

/// `running = (1 - m) running + m * factor * stat`, per channel.
fn update_running<const C: usize, E: Dtype, D: Device<E>>(
    running: &mut Tensor<Rank1<C>, E, D>,
    stat: &[f64],
    m: f64,
    factor: f64,
) {
    let new: Vec<E> = running
        .as_vec()
        .iter()
        .zip(stat)
        .map(|(r, s)| {
            let r = r.to_f64().expect("finite running statistic");
            E::from_f64((1.0 - m) * r + m * factor * s).expect("f64 to E")
        })
        .collect();
    running.copy_from(&new);
}

/// `BatchNorm1D` in training mode on `(N, C)` rows (NHWC activations viewed
/// as rows), updating `bn`'s running statistics.
///
/// # Panics
/// If `E` is not `f32` or `D` not [`Cpu`].
pub fn train_forward<const C: usize, E: Dtype, D: Device<E>, T: Tape<E, D>>(
    bn: &mut BatchNorm1D<C, E, D>,
    x: Tensor<(usize, Const<C>), E, D, T>,
) -> Tensor<(usize, Const<C>), E, D, T> {
    let (x, mut tape) = x.split_tape();
    let x: Tensor<(usize, Const<C>), f32, Cpu> = same(x);
    let scale: Tensor<Rank1<C>, f32, Cpu> = same(bn.scale.clone());
    let bias: Tensor<Rank1<C>, f32, Cpu> = same(bn.bias.clone());
    let n = x.shape().0;
    assert!(
        n > 1,
        "BatchNorm needs more than one value per channel in training"
    );
    let mut xhat = Pooled::take(n * C);
    let xhat_buf = &mut xhat.0;
    x.copy_into(xhat_buf);
    let (mean, var) = batch_stats(xhat_buf, C);

    // Running statistics, as dfdx's axpy: r = (1 - m) r + m s (variance unbiased).
    let unbias = n as f64 / (n as f64 - 1.0);
    update_running(&mut bn.running_mean, &mean, bn.momentum, 1.0);
    update_running(&mut bn.running_var, &var, bn.momentum, unbias);

    // Normalise in place (xhat is kept for backward), then the affine output.
    let rstd: Vec<f32> = var
        .iter()
        .map(|v| (1.0 / (v + bn.epsilon).sqrt()) as f32)
        .collect();
    let mean: Vec<f32> = mean.iter().map(|&v| v as f32).collect();
    let (gamma, beta) = (scale.as_vec(), bias.as_vec());
    let mut y = Pooled::take(n * C);
    xhat_buf
        .par_chunks_mut(CHUNK_ROWS * C)
        .zip(y.0.par_chunks_mut(CHUNK_ROWS * C))
        .for_each(|(xs, ys)| {
            for (xr, yr) in xs.chunks_exact_mut(C).zip(ys.chunks_exact_mut(C)) {
                for c in 0..C {
                    let h = (xr[c] - mean[c]) * rstd[c];
                    xr[c] = h;
                    yr[c] = gamma[c] * h + beta[c];
                }
            }
        });
    let mut out: Tensor<(usize, Const<C>), f32, Cpu> = x.device().zeros_like(x.shape());
    out.copy_from(&y.0);
    drop(y);

    let handles = (x, out.clone(), scale, bias);
    tape.add_backward_op(move |grads: &mut Gradients<E, D>| {
        let grads: &mut Gradients<f32, Cpu> = (grads as &mut dyn Any)
            .downcast_mut()
            .expect("CPU f32 gradients");
        let (x, out, scale, bias) = &handles;
        let run = |grads: &mut Gradients<f32, Cpu>| -> Result<(), CpuError> {
            let dy = std::mem::take(&mut **grads.get_or_alloc_mut(out)?);
            // dbeta = sum dy, dgamma = sum dy * xhat.
            let xhat = &xhat.0;
            let sums = channel_sums_pairs(&dy, xhat, C);
            let (dbeta, dgamma): (Vec<f64>, Vec<f64>) = sums.into_iter().unzip();
            let k: Vec<f32> = gamma.iter().zip(&rstd).map(|(g, r)| g * r).collect();
            let inv_n = 1.0 / n as f64;
            let (mb, mg): (Vec<f32>, Vec<f32>) = dbeta
                .iter()
                .zip(&dgamma)
                .map(|(b, g)| ((b * inv_n) as f32, (g * inv_n) as f32))
                .unzip();
            // dx += gamma * rstd * (dy - mean(dy) - xhat * mean(dy * xhat)).
            let dx: &mut [f32] = grads.get_or_alloc_mut(x)?;
            dx.par_chunks_mut(CHUNK_ROWS * C)
                .zip(dy.par_chunks(CHUNK_ROWS * C))
                .zip(xhat.par_chunks(CHUNK_ROWS * C))
                .for_each(|((dxs, dys), hs)| {
                    for ((dxr, dyr), hr) in dxs
                        .chunks_exact_mut(C)
                        .zip(dys.chunks_exact(C))
                        .zip(hs.chunks_exact(C))
                    {
                        for c in 0..C {
                            dxr[c] += k[c] * (dyr[c] - mb[c] - hr[c] * mg[c]);
                        }
                    }
                });
            **grads.get_or_alloc_mut(out)? = dy;
            let g: &mut [f32] = grads.get_or_alloc_mut(scale)?;
            g.iter_mut().zip(&dgamma).for_each(|(g, v)| *g += *v as f32);
            let g: &mut [f32] = grads.get_or_alloc_mut(bias)?;
            g.iter_mut().zip(&dbeta).for_each(|(g, v)| *g += *v as f32);
            Ok(())
        };
        run(grads).map_err(same::<CpuError, D::Err>)
    });
    same::<Tensor<(usize, Const<C>), f32, Cpu>, Tensor<(usize, Const<C>), E, D>>(out).put_tape(tape)
}

/// Per-channel `(sum a, sum a * b)` over `(n, c)` rows, in fixed chunks.
fn channel_sums_pairs(a: &[f32], b: &[f32], c: usize) -> Vec<(f64, f64)> {
    let sums = chunk_sums(a.len() / c, 2 * c, |r, acc| {
        let (sa, sab) = acc.split_at_mut(c);
        let rows = r.start * c..r.end * c;
        for (ar, br) in a[rows.clone()].chunks_exact(c).zip(b[rows].chunks_exact(c)) {
            for (((s, p), &x), &y) in sa.iter_mut().zip(sab.iter_mut()).zip(ar).zip(br) {
                *s += x as f64;
                *p += (x * y) as f64;
            }
        }
    });
    sums[..c]
        .iter()
        .copied()
        .zip(sums[c..].iter().copied())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Output, running statistics and all three gradients against dfdx's own BatchNorm1D.
    #[test]
    fn matches_dfdx_batchnorm_in_values_statistics_and_gradients() {
        const C: usize = 5;
        let dev: Cpu = Cpu::seed_from_u64(7);
        for n in [3usize, 1000, 2500] {
            let mut ours: BatchNorm1D<C, f32, Cpu> = BuildModule::build(&dev);
            ours.scale = dev.sample_normal();
            ours.bias = dev.sample_normal();
            let mut theirs = ours.clone();
            let x: Tensor<(usize, Const<C>), f32, Cpu> = dev.sample_normal_like(&(n, Const));
            let x = x * 3.0 + 1.5;
            let r: Tensor<(usize, Const<C>), f32, Cpu> = dev.sample_normal_like(&(n, Const));
            let close = |a: Vec<f32>, b: Vec<f32>, what: &str| {
                let scale = b.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
                let err = a
                    .iter()
                    .zip(&b)
                    .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
                assert!(err / scale < 2e-5, "n {n}, {what}: {err} of {scale}");
            };
            let mut grads_ours = ours.alloc_grads();
            let mut grads_theirs = theirs.alloc_grads();
            for _ in 0..2 {
                let y1 = train_forward(&mut ours, x.clone().traced(grads_ours));
                let y2 = theirs.forward_mut(x.clone().traced(grads_theirs));
                close(y1.as_vec(), y2.as_vec(), "output");
                grads_ours = (y1 * r.clone()).sum().backward();
                grads_theirs = (y2 * r.clone()).sum().backward();
                close(
                    ours.running_mean.as_vec(),
                    theirs.running_mean.as_vec(),
                    "mean",
                );
                close(
                    ours.running_var.as_vec(),
                    theirs.running_var.as_vec(),
                    "var",
                );
            }
            // Two backward passes accumulated into the same leaf gradients.
            let g = |gr: &Gradients<f32, Cpu>, t: &Tensor<Rank1<C>, f32, Cpu>| gr.get(t).as_vec();
            close(
                g(&grads_ours, &ours.scale),
                g(&grads_theirs, &theirs.scale),
                "dscale",
            );
            close(
                g(&grads_ours, &ours.bias),
                g(&grads_theirs, &theirs.bias),
                "dbias",
            );
        }
    }

    /// Value and all gradients against a naive f64 BatchNorm, loss = sum(y * r).
    #[test]
    fn matches_a_naive_f64_batchnorm_over_several_shapes() {
        for (n, c) in [(5usize, 1usize), (7, 3), (1030, 4), (4100, 2)] {
            check_f64(n, c);
        }
    }

    fn check_f64(n: usize, c: usize) {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_pcg::Pcg64::seed_from_u64((n * 31 + c) as u64);
        let mut draw = |k: usize, lo: f32, hi: f32| -> Vec<f32> {
            (0..k).map(|_| rng.random_range(lo..hi)).collect()
        };
        let (xv, rv, gv, bv) = (
            draw(n * c, -2.0, 3.0),
            draw(n * c, -1.0, 1.0),
            draw(c, 0.5, 1.5),
            draw(c, -1.0, 1.0),
        );
        // Reference.
        let eps = 1e-5;
        let (mut y, mut dx, mut dg, mut db) = (
            vec![0f64; n * c],
            vec![0f64; n * c],
            vec![0f64; c],
            vec![0f64; c],
        );
        for ch in 0..c {
            let col: Vec<f64> = (0..n).map(|i| xv[i * c + ch] as f64).collect();
            let mean = col.iter().sum::<f64>() / n as f64;
            let var = col.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n as f64;
            let rstd = 1.0 / (var + eps).sqrt();
            let h: Vec<f64> = col.iter().map(|v| (v - mean) * rstd).collect();
            let g = gv[ch] as f64;
            let dy: Vec<f64> = (0..n).map(|i| rv[i * c + ch] as f64).collect();
            db[ch] = dy.iter().sum();
            dg[ch] = dy.iter().zip(&h).map(|(a, b)| a * b).sum();
            for i in 0..n {
                y[i * c + ch] = g * h[i] + bv[ch] as f64;
                dx[i * c + ch] = g * rstd * (dy[i] - db[ch] / n as f64 - h[i] * dg[ch] / n as f64);
            }
        }
        // Ours, through dfdx's tape; C is a const, so dispatch the few used here.
        macro_rules! run {
            ($C:literal) => {{
                let dev: Cpu = Default::default();
                let mut bn: BatchNorm1D<$C, f32, Cpu> = BuildModule::build(&dev);
                bn.scale = dev.tensor_from_vec(gv.clone(), (Const::<$C>,));
                bn.bias = dev.tensor_from_vec(bv.clone(), (Const::<$C>,));
                let x = dev.tensor_from_vec(xv.clone(), (n, Const::<$C>));
                let r = dev.tensor_from_vec(rv.clone(), (n, Const::<$C>));
                let out = train_forward(&mut bn, x.leaky_trace());
                let got = out.as_vec();
                let grads = (out * r).sum().backward();
                let gx = grads.get(&x).as_vec();
                let (gg, gb) = (grads.get(&bn.scale).as_vec(), grads.get(&bn.bias).as_vec());
                (got, gx, gg, gb)
            }};
        }
        let (got, gx, gg, gb) = match c {
            1 => run!(1),
            2 => run!(2),
            3 => run!(3),
            4 => run!(4),
            _ => unreachable!(),
        };
        let rel = |a: &[f32], b: &[f64]| {
            let scale = b.iter().fold(1e-12f64, |m, v| m.max(v.abs()));
            a.iter()
                .zip(b)
                .fold(0f64, |m, (x, y)| m.max((*x as f64 - y).abs()))
                / scale
        };
        let errs = [rel(&got, &y), rel(&gx, &dx), rel(&gg, &dg), rel(&gb, &db)];
        assert!(
            errs.iter().all(|e| *e < 1e-5),
            "n {n} c {c}: y, dx, dscale, dbias errors {errs:?}"
        );
    }

    #[test]
    fn input_gradient_matches_dfdx() {
        const C: usize = 3;
        let dev: Cpu = Cpu::seed_from_u64(1);
        let mut ours: BatchNorm1D<C, f32, Cpu> = BuildModule::build(&dev);
        ours.scale = dev.sample_normal();
        let mut theirs = ours.clone();
        let x: Tensor<(usize, Const<C>), f32, Cpu> = dev.sample_normal_like(&(1500, Const));
        let r: Tensor<(usize, Const<C>), f32, Cpu> = dev.sample_normal_like(&(1500, Const));
        let g1 = (train_forward(&mut ours, x.leaky_trace()) * r.clone())
            .sum()
            .backward();
        let g2 = (theirs.forward_mut(x.leaky_trace()) * r).sum().backward();
        let (a, b) = (g1.get(&x).as_vec(), g2.get(&x).as_vec());
        let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
        let err = a
            .iter()
            .zip(&b)
            .fold(0f32, |m, (p, q)| m.max((p - q).abs()));
        assert!(err / scale < 2e-5, "dx: {err} of {scale}");
    }
}
