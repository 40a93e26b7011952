//! Timed training steps on synthetic input, training fed by the real loader
//! with the time spent waiting for data, and the pieces of one layer.

use super::median;
use super::parity::synthetic;
use crate::loader::Loader;
use crate::model::zoo::{Input, Logits, Network};
use crate::train::sgd::Sgd;
use crate::train::sgd_step;
use crate::train::stepper::onehot;
use dfdx::prelude::*;
use dfdx::tensor::Synchronize;
use serde::Serialize;
use std::time::Instant;

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
    use crate::model::blocks::{ConvBn, Layer};
    use crate::model::conv::{Conv2d, im2col_index};
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
