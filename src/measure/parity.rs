//! Training on a device checked against a reference device: the same
//! weights and batch through both (logits, loss, every gradient, the
//! weights after a few SGD steps). `gpu-check` runs them with the CPU as the reference and CUDA
//! as the device; everything here is generic, so the tests run it CPU
//! against CPU.
//!
//! Errors are norm-wise, `‖x − ref‖ / ‖ref‖`, per tensor and over all
//! tensors taken as one vector.

use crate::model::state::{assign_tensors, named_grads, named_tensors, scale_last_bn};
use crate::model::zoo::{Input, Network};
use crate::train::sgd::Sgd;
use crate::train::sgd_step;
use crate::train::stepper::onehot;
use dfdx::prelude::*;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::collections::HashMap;

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

/// Random NHWC input (normal) and labels, the same on every device and run.
pub fn synthetic(batch: usize, side: usize, classes: usize, seed: u64) -> (Vec<f32>, Vec<u32>) {
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
/// `wrap` (e.g. [`crate::model::dispatch::with_generic_ops`]).
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
