//! Checks and timings of training on a device against a reference device:
//! the same weights and batch through both (logits, loss, every gradient,
//! the weights after a few SGD steps), timed training steps on synthetic
//! input, and training fed by the real loader with the time spent waiting
//! for data. `gpu-check` runs them with the CPU as the reference and CUDA
//! as the device; everything here is generic, so the tests run it CPU
//! against CPU.
//!
//! Errors are norm-wise, `‖x − ref‖ / ‖ref‖`, per tensor and over all
//! tensors taken as one vector.

use super::{Sgd, onehot, sgd_step};
use crate::loader::Loader;
use crate::model::state::{assign_tensors, named_grads, named_tensors, scale_last_bn};
use crate::model::zoo::{Input, Logits, Network};
use dfdx::prelude::*;
use dfdx::tensor::Synchronize;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::collections::HashMap;
use std::time::Instant;

/// Error bounds of [`compare`] for a well-conditioned problem (float32 on
/// both devices, different summation orders); see [`Comparison::passed`].
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Thresholds {
    /// Logits and loss.
    pub output: f64,
    /// All gradients together (one vector of every parameter's gradient).
    pub gradients: f64,
    /// Each parameter's gradient on its own (looser: the gradient of a
    /// BatchNorm bias is a sum that cancels, and one max-pool window or
    /// ReLU whose input sits within rounding of a tie moves it visibly).
    pub gradient_tensor: f64,
    /// All tensors together after the SGD steps.
    pub after_steps: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            output: 1e-4,
            gradients: 1e-3,
            gradient_tensor: 1e-2,
            after_steps: 1e-3,
        }
    }
}

/// `‖x − reference‖ / ‖reference‖` (in f64; infinite when `x` has a
/// non-finite value or the lengths differ; the absolute error when the
/// reference is zero).
pub fn rel_err(x: &[f32], reference: &[f32]) -> f64 {
    ratio(squares(x, reference))
}

/// `(‖x − reference‖², ‖reference‖²)`, or None where `rel_err` is infinite.
fn squares(x: &[f32], reference: &[f32]) -> Option<(f64, f64)> {
    if x.len() != reference.len() || x.iter().any(|v| !v.is_finite()) {
        return None;
    }
    let (mut d, mut r) = (0f64, 0f64);
    for (&a, &b) in x.iter().zip(reference) {
        d += (a as f64 - b as f64).powi(2);
        r += (b as f64).powi(2);
    }
    Some((d, r))
}

fn ratio(squares: Option<(f64, f64)>) -> f64 {
    match squares {
        None => f64::INFINITY,
        Some((d, r)) if r > 0.0 => (d / r).sqrt(),
        Some((d, _)) => d.sqrt(),
    }
}

/// One tensor's error.
#[derive(Debug, Clone, Serialize)]
pub struct TensorError {
    /// dfdx path.
    pub path: String,
    /// Relative error.
    pub rel: f64,
    /// Norm of the reference.
    pub norm: f64,
}

/// Differences from the reference run.
#[derive(Debug, Clone, Serialize)]
pub struct Differences {
    /// Logits after one training-mode forward.
    pub logits: f64,
    /// Cross-entropy loss.
    pub loss: f64,
    /// All gradients as one vector.
    pub gradients_all: f64,
    /// All tensors after the SGD steps as one vector.
    pub after_steps_all: f64,
    /// Every parameter's gradient, in module order.
    pub gradients: Vec<TensorError>,
    /// Every tensor (BatchNorm statistics too) after the SGD steps.
    pub after_steps: Vec<TensorError>,
}

fn worst(v: &[TensorError]) -> Option<&TensorError> {
    v.iter().max_by(|a, b| a.rel.total_cmp(&b.rel))
}

impl Differences {
    /// The largest gradient difference.
    pub fn worst_gradient(&self) -> Option<&TensorError> {
        worst(&self.gradients)
    }
    /// The largest difference after the SGD steps.
    pub fn worst_after_steps(&self) -> Option<&TensorError> {
        worst(&self.after_steps)
    }
}

/// The result of [`compare`].
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    /// Model name (as given).
    pub model: String,
    /// Batch used.
    pub batch: usize,
    /// Image side.
    pub side: usize,
    /// The scale given to each residual branch's last BatchNorm (None: as built).
    pub last_bn_scale: Option<f32>,
    /// The test device against the reference.
    pub test: Differences,
    /// The reference against itself with the input scaled by `1 + 1e-6`.
    pub sensitivity: Differences,
    /// SGD steps taken for `after_steps`.
    pub steps: usize,
    /// Bounds.
    pub thresholds: Thresholds,
}

impl Comparison {
    /// Whether each difference is within its threshold, or within 4x the
    /// problem's own sensitivity to a 1e-6 change of the input (a chaotic
    /// network cannot agree more closely in float32).
    pub fn passed(&self) -> bool {
        let (t, s, d) = (&self.thresholds, &self.sensitivity, &self.test);
        let ok = |err: f64, bound: f64, sens: f64| err <= bound.max(4.0 * sens);
        let w = |e: Option<&TensorError>| e.map_or(0.0, |e| e.rel);
        ok(d.logits, t.output, s.logits)
            && ok(d.loss, t.output, s.loss)
            && ok(d.gradients_all, t.gradients, s.gradients_all)
            && ok(
                w(d.worst_gradient()),
                t.gradient_tensor,
                w(s.worst_gradient()),
            )
            && ok(d.after_steps_all, t.after_steps, s.after_steps_all)
    }
}

/// Random NHWC input (normal) and labels, the same on every device.
fn synthetic(batch: usize, side: usize, classes: usize, seed: u64) -> (Vec<f32>, Vec<u32>) {
    let mut rng = rand_pcg::Pcg64Mcg::seed_from_u64(seed);
    let x = Cpu::seed_from_u64(seed)
        .sample_normal_like(&(batch * side * side * 3,))
        .as_vec();
    let y = (0..batch)
        .map(|_| rng.random_range(0..classes as u32))
        .collect();
    (x, y)
}

/// Each tensor's error, and the error of all of them taken as one vector
/// (infinite if a tensor is missing, mis-sized or not finite).
fn errors(
    test: &[(String, Vec<f32>)],
    reference: &[(String, Vec<f32>)],
) -> (Vec<TensorError>, f64) {
    let test: HashMap<&str, &Vec<f32>> = test.iter().map(|(p, v)| (p.as_str(), v)).collect();
    let mut total = Some((0f64, 0f64));
    let each = reference
        .iter()
        .map(|(path, r)| {
            let sq = test.get(path.as_str()).and_then(|t| squares(t, r));
            total = total.zip(sq).map(|((d, n), (dt, nt))| (d + dt, n + nt));
            let norm = r.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
            TensorError {
                path: path.clone(),
                rel: ratio(sq),
                norm,
            }
        })
        .collect();
    (each, ratio(total))
}

fn all_tensors<D: Device<f32>, M: Network<D>>(m: &M) -> Vec<(String, Vec<f32>)> {
    named_tensors(m)
        .into_iter()
        .map(|t| (t.path, t.data))
        .collect()
}

/// What [`compare`] runs.
#[derive(Debug, Clone, Copy)]
pub struct Setup {
    /// Images in the batch.
    pub batch: usize,
    /// Image side.
    pub side: usize,
    /// SGD steps before comparing every tensor.
    pub steps: usize,
    /// Seed of the input and labels.
    pub seed: u64,
    /// Set each residual branch's last BatchNorm scale to this before
    /// copying the weights (0.1 makes a fresh ResNet-50 well conditioned).
    pub last_bn_scale: Option<f32>,
}

/// What one side of a comparison computed.
struct Side {
    logits: Vec<f32>,
    loss: Vec<f32>,
    grads: Vec<(String, Vec<f32>)>,
    after: Vec<(String, Vec<f32>)>,
}

/// Learning rate of the comparison's SGD steps (small enough that a few
/// steps on one random batch stay smooth).
const COMPARE_LR: f32 = 0.01;

#[allow(clippy::too_many_arguments)]
fn run_side<N: Network<D>, D: Device<f32>>(
    model: &mut N,
    dev: &D,
    x: &[f32],
    labels: &[u32],
    (batch, side): (usize, usize),
    steps: usize,
    wrap: &dyn Fn(&mut dyn FnMut()),
) -> Side {
    let mut out = None;
    wrap(&mut || {
        let classes = N::CLASSES;
        let xt: Input<D> = dev.tensor_from_vec(x.to_vec(), (batch, side, side, Const::<3>));
        let logits = model.forward_train(xt.traced(Gradients::leaky()));
        let lv = logits.retaped::<NoneTape>().as_vec();
        let y = dev.tensor_from_vec(onehot(labels, classes), (batch, classes));
        let loss = cross_entropy_with_logits_loss(logits, y);
        let l = loss.as_vec();
        let grads = named_grads(model, &loss.backward());
        let mut sgd = Sgd::<D>::new(0.9, 1e-4);
        for _ in 0..steps {
            sgd_step(
                model,
                &mut sgd,
                dev,
                x,
                (batch, side, side),
                labels,
                COMPARE_LR,
            );
        }
        out = Some(Side {
            logits: lv,
            loss: l,
            grads,
            after: all_tensors(model),
        });
    });
    out.expect("wrap runs its function")
}

/// Builds model `M` on `reference` (seeded by the device), copies every
/// tensor to its twin on `test`, and compares one training-mode forward and
/// backward on a random batch, then every tensor after `steps` SGD steps
/// (lr 0.01, momentum 0.9, weight decay 1e-4).
///
/// The same is measured between the reference and itself on the input
/// scaled by `1 + 1e-6` ([`Comparison::sensitivity`]): how far the problem
/// itself moves under a rounding-sized change. A freshly initialised
/// ResNet-50 is chaotic there (its gradients move by ~2%; ResNet-18's by
/// ~1e-5), so no float32 implementation can agree more closely than that.
pub fn compare<M, R, T>(name: &str, reference: &R, test: &T, setup: Setup) -> Comparison
where
    R: Device<f32>,
    T: Device<f32>,
    M: Network<R>,
    <M as TensorCollection<f32, R>>::To<f32, T>: Network<T>,
{
    compare_wrapped::<M, R, T>(name, reference, test, setup, &|f| f())
}

/// [`compare`], with every computation of the test side run inside
/// `wrap` (e.g. [`crate::model::conv::cpu::with_generic_ops`]).
pub fn compare_wrapped<M, R, T>(
    name: &str,
    reference: &R,
    test: &T,
    setup: Setup,
    wrap: &dyn Fn(&mut dyn FnMut()),
) -> Comparison
where
    R: Device<f32>,
    T: Device<f32>,
    M: Network<R>,
    <M as TensorCollection<f32, R>>::To<f32, T>: Network<T>,
{
    let Setup {
        batch,
        side,
        steps,
        seed,
        last_bn_scale,
    } = setup;
    let mut a = M::build(reference);
    if let Some(v) = last_bn_scale {
        scale_last_bn(&mut a, v);
    }
    let mut b = <M as TensorCollection<f32, R>>::To::<f32, T>::build(test);
    let mut c = M::build(reference);
    let values: HashMap<String, Vec<f32>> = all_tensors(&a).into_iter().collect();
    let mut source = |path: &str, _: &[usize]| Ok(values.get(path).cloned());
    assign_tensors(&mut b, &mut source).expect("same model on both devices");
    assign_tensors(&mut c, &mut source).expect("same model");

    let (x, labels) = synthetic(batch, side, M::CLASSES, seed);
    let nudged: Vec<f32> = x.iter().map(|v| v * (1.0 + 1e-6)).collect();
    let bs = (batch, side);
    let ra = run_side(&mut a, reference, &x, &labels, bs, steps, &|f| f());
    let rb = run_side(&mut b, test, &x, &labels, bs, steps, wrap);
    let rc = run_side(&mut c, reference, &nudged, &labels, bs, steps, &|f| f());
    let diff = |t: &Side| {
        let (gradients, gradients_all) = errors(&t.grads, &ra.grads);
        let (after_steps, after_steps_all) = errors(&t.after, &ra.after);
        Differences {
            logits: rel_err(&t.logits, &ra.logits),
            loss: rel_err(&t.loss, &ra.loss),
            gradients_all,
            after_steps_all,
            gradients,
            after_steps,
        }
    };
    Comparison {
        model: name.to_string(),
        batch,
        side,
        last_bn_scale,
        test: diff(&rb),
        sensitivity: diff(&rc),
        steps,
        thresholds: Thresholds::default(),
    }
}

/// How long [`time_steps`] runs.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Untimed steps first (allocation, kernel loading, index building).
    pub warmup: usize,
    /// Timed steps at least...
    pub min_steps: usize,
    /// ...and at most.
    pub max_steps: usize,
    /// Stop timing after this many seconds (once `min_steps` are done).
    pub max_seconds: f64,
}

/// Timed training steps of one model and batch size.
#[derive(Debug, Clone, Serialize)]
pub struct StepTimes {
    /// Model name.
    pub model: String,
    /// Images per step.
    pub batch: usize,
    /// Image side.
    pub side: usize,
    /// Seconds of each timed step.
    pub step_s: Vec<f64>,
    /// Median step.
    pub median_s: f64,
    /// `batch / median_s`.
    pub images_per_sec: f64,
    /// Median forward and loss (read back).
    pub forward_s: f64,
    /// Median backward.
    pub backward_s: f64,
    /// Median SGD update.
    pub update_s: f64,
    /// Device memory in use after the steps, bytes, minus before the model
    /// was built (where the device reports it). dfdx keeps freed buffers in
    /// its cache, so this is the high-water mark of the step.
    pub memory_bytes: Option<u64>,
}

use crate::bench::median;

/// Times SGD steps (forward, loss read back, backward, update: each timed) of a fresh
/// `M` on a synthetic batch kept on the device, waiting for the device
/// (`sync`) before each clock reading. `memory` reads the device's memory in use.
pub fn time_steps<M: Network<D>, D: Device<f32> + Synchronize>(
    name: &str,
    dev: &D,
    batch: usize,
    side: usize,
    timing: Timing,
    memory: &dyn Fn() -> Option<u64>,
) -> StepTimes {
    let before = memory();
    let mut model = M::build(dev);
    let mut sgd = Sgd::<D>::new(0.9, 1e-4);
    let (xv, labels) = synthetic(batch, side, M::CLASSES, 7);
    let x: Input<D> = dev.tensor_from_vec(xv, (batch, side, side, Const::<3>));
    let y: Logits<D> = dev.tensor_from_vec(onehot(&labels, M::CLASSES), (batch, M::CLASSES));
    // One step, with the device drained after the forward (the loss is read
    // back), the backward and the update, for the time of each part.
    let step = |model: &mut M, sgd: &mut Sgd<D>| {
        let t0 = Instant::now();
        let logits = model.forward_train(x.clone().traced(Gradients::leaky()));
        let loss = cross_entropy_with_logits_loss(logits, y.clone());
        let value = loss.as_vec()[0];
        assert!(value.is_finite(), "{name} b{batch}: loss {value}");
        let t1 = Instant::now();
        let grads = loss.backward();
        dev.synchronize();
        let t2 = Instant::now();
        sgd.update(model, &grads, 0.01);
        dev.synchronize();
        let t3 = Instant::now();
        [t0, t1, t2, t3]
            .windows(2)
            .map(|w| (w[1] - w[0]).as_secs_f64())
            .collect::<Vec<_>>()
    };
    for _ in 0..timing.warmup {
        step(&mut model, &mut sgd);
    }
    let (mut parts, start) = (Vec::new(), Instant::now());
    while parts.len() < timing.max_steps
        && (parts.len() < timing.min_steps || start.elapsed().as_secs_f64() < timing.max_seconds)
    {
        parts.push(step(&mut model, &mut sgd));
    }
    let times: Vec<f64> = parts.iter().map(|p| p.iter().sum()).collect();
    let part = |i: usize| median(&parts.iter().map(|p| p[i]).collect::<Vec<_>>());
    let after = memory();
    let median_s = median(&times);
    StepTimes {
        model: name.to_string(),
        batch,
        side,
        images_per_sec: batch as f64 / median_s,
        median_s,
        forward_s: part(0),
        backward_s: part(1),
        update_s: part(2),
        step_s: times,
        memory_bytes: after.zip(before).map(|(a, b)| a.saturating_sub(b)),
    }
}

/// Training fed by the real loader.
#[derive(Debug, Clone, Serialize)]
pub struct LoaderTraining {
    /// Model name.
    pub model: String,
    /// Images per step.
    pub batch: usize,
    /// Loader threads.
    pub workers: usize,
    /// Steps timed (after `warmup` untimed ones).
    pub steps: usize,
    /// Seconds from the first timed batch request to the last step's end.
    pub wall_s: f64,
    /// Seconds spent waiting for the next batch.
    pub wait_s: f64,
    /// `wait_s / wall_s`: the fraction of time the model waited for data.
    pub wait_fraction: f64,
    /// Images trained per second.
    pub images_per_sec: f64,
    /// The loader alone over as many batches (no training): images per second.
    pub loader_alone_images_per_sec: f64,
}

/// Trains a fresh `M` on batches from `loader` (epochs chained) for
/// `warmup + steps` steps, timing the waits for data; then times the loader
/// alone over `steps` batches.
pub fn time_loader_training<M: Network<D>, D: Device<f32> + Synchronize>(
    name: &str,
    dev: &D,
    loader: &Loader,
    warmup: usize,
    steps: usize,
) -> Result<LoaderTraining, crate::error::LoadError> {
    let mut model = M::build(dev);
    let mut sgd = Sgd::<D>::new(0.9, 1e-4);
    let (mut wait, mut done, mut epoch_no) = (0f64, 0usize, 0u64);
    let mut start = Instant::now();
    'outer: loop {
        for batch in loader.epoch(epoch_no) {
            if done == warmup {
                dev.synchronize();
                (start, wait) = (Instant::now(), 0.0);
            }
            let t0 = Instant::now();
            let batch = batch?;
            wait += t0.elapsed().as_secs_f64();
            let [n, h, w, _] = batch.shape();
            sgd_step(
                &mut model,
                &mut sgd,
                dev,
                batch.images(),
                (n, h, w),
                batch.labels(),
                0.01,
            );
            done += 1;
            if done == warmup + steps {
                break 'outer;
            }
        }
        epoch_no += 1;
    }
    dev.synchronize();
    let wall_s = start.elapsed().as_secs_f64();
    let batch = loader.batch_size();
    let (mut got, t0) = (0usize, Instant::now());
    'alone: for e in 100.. {
        for b in loader.epoch(e) {
            got += b?.labels().len();
            if got >= steps * batch {
                break 'alone;
            }
        }
    }
    let alone = got as f64 / t0.elapsed().as_secs_f64();
    Ok(LoaderTraining {
        model: name.to_string(),
        batch,
        workers: loader.workers(),
        steps,
        wall_s,
        wait_s: wait,
        wait_fraction: wait / wall_s,
        images_per_sec: (steps * batch) as f64 / wall_s,
        loader_alone_images_per_sec: alone,
    })
}

/// Forward + backward time of the pieces of a ResNet layer on one
/// activation, `(batch, 56, 56, 64)` (ResNet-50's first stage): where a
/// step's time goes on a device.
#[derive(Debug, Clone, Serialize)]
pub struct OpTimes {
    /// Images in the activation.
    pub batch: usize,
    /// (piece, median seconds of forward + backward).
    pub ops: Vec<(String, f64)>,
}

/// Times the pieces of a 3x3, 64-channel layer at 56x56: the whole
/// convolution, its im2col gather alone, its matrix product alone, the
/// convolution with BatchNorm, and a ReLU. Each is forward, a sum and the
/// backward pass, synchronised, median of `reps` after two warm-ups.
pub fn time_ops<D: Device<f32> + Synchronize>(dev: &D, batch: usize, reps: usize) -> OpTimes {
    use crate::model::conv::{Conv2d, im2col_index};
    use crate::model::resnet::{ConvBn, Layer};
    let median_of = |f: &mut dyn FnMut()| {
        for _ in 0..2 {
            f();
        }
        dev.synchronize();
        let t: Vec<f64> = (0..reps.max(1))
            .map(|_| {
                let t0 = Instant::now();
                f();
                dev.synchronize();
                t0.elapsed().as_secs_f64()
            })
            .collect();
        median(&t)
    };
    let (h, w) = (56usize, 56usize);
    let x: Tensor<(usize, usize, usize, Const<64>), f32, D> =
        dev.sample_normal_like(&(batch, h, w, Const));
    let mut ops = Vec::new();
    let conv: Conv2d<64, 64, 3, 1, 1, f32, D> =
        Conv2d::from_weight(dev.sample_normal::<Rank4<64, 64, 3, 3>>());
    ops.push((
        "conv 3x3 (the model's path: CPU op or gather, then matmul)".to_string(),
        median_of(&mut || {
            let _ = conv
                .forward(x.clone().traced(Gradients::leaky()))
                .sum()
                .backward();
        }),
    ));
    let (idx, _, _, _) = im2col_index(batch, h, w, 3, 1, 1);
    let m = idx.len();
    let idx: Tensor<(usize,), usize, D> = dev.tensor_from_vec(idx, (m,));
    let rows = x.clone().reshape_like(&(batch * h * w, Const::<64>));
    ops.push((
        "im2col gather alone".to_string(),
        median_of(&mut || {
            let _ = rows
                .clone()
                .traced(Gradients::leaky())
                .gather(idx.clone())
                .sum()
                .backward();
        }),
    ));
    let cols: Tensor<(usize, usize), f32, D> = dev.sample_normal_like(&(batch * h * w, 576));
    let wm: Tensor<(usize, Const<64>), f32, D> = dev.sample_normal_like(&(576, Const));
    ops.push((
        "matmul alone (B*56*56 x 576) x (576 x 64)".to_string(),
        median_of(&mut || {
            let _ = cols
                .clone()
                .traced(Gradients::leaky())
                .matmul(wm.clone())
                .sum()
                .backward();
        }),
    ));
    let mut convbn: ConvBn<64, 64, 3, 1, 1, f32, D> = dfdx::nn::BuildModule::build(dev);
    ops.push((
        "conv 3x3 + BatchNorm (training)".to_string(),
        median_of(&mut || {
            let _ = convbn
                .fwd(x.clone().traced(Gradients::leaky()))
                .sum()
                .backward();
        }),
    ));
    ops.push((
        "ReLU".to_string(),
        median_of(&mut || {
            let _ = x.clone().traced(Gradients::leaky()).relu().sum().backward();
        }),
    ));
    OpTimes { batch, ops }
}
