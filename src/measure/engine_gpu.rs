//! `gpu-check` for the engine's CUDA backend: the GPU against the CPU
//! engine on the same weights and batch, then training steps timed per
//! model, precision and batch size.
//!
//! The comparison: logits and loss of one training forward, every
//! parameter gradient (norm-wise relative error over all of them, and the
//! worst tensor), every parameter and running statistic after `steps` SGD
//! steps, and the evaluation logits after them. Beside each, the
//! network's own float32 sensitivity: the CPU engine against itself from
//! weights moved by one rounding (relative 2^-24). A result passes when its
//! error is under the precision's threshold ([`Thresholds::for_precision`])
//! or under 10x that sensitivity (a chaotic network amplifies any rounding).

use crate::engine::Engine;
use crate::engine::cuda::{Cuda, CudaError, Precision};
use crate::measure::median;
use crate::measure::parity::synthetic;
use crate::model::zoo::{self, Network, NetworkUser};
use dfdx::prelude::*;
use serde::Serialize;
use std::time::Instant;

/// What to run.
#[derive(Debug, Clone)]
pub struct EngineCheck {
    /// Models to compare with the CPU engine.
    pub compare: Vec<String>,
    /// Batch and image side of the comparison (CIFAR nets at 32 whatever this says).
    pub compare_batch: usize,
    /// Image side of the comparison of ImageNet nets.
    pub compare_side: usize,
    /// SGD steps before comparing every tensor.
    pub compare_steps: usize,
    /// Models to time.
    pub time: Vec<String>,
    /// Batch sizes to time.
    pub batch_sizes: Vec<usize>,
    /// Image side of the timed steps (CIFAR nets at 32).
    pub side: usize,
    /// Precisions, each compared and timed.
    pub modes: Vec<Precision>,
    /// Untimed steps first.
    pub warmup: usize,
    /// Timed steps at least.
    pub min_steps: usize,
    /// Stop timing after this many seconds (past `min_steps`).
    pub max_seconds: f64,
    /// GPU ordinal.
    pub ordinal: usize,
    /// Run the training steps as CUDA graphs.
    pub graphs: bool,
}

/// Pass marks of a comparison, by precision.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Thresholds {
    /// Logits and loss, relative.
    pub logits: f64,
    /// All gradients as one vector.
    pub gradients: f64,
    /// All parameters and statistics after the steps, as one vector.
    pub after_steps: f64,
}

impl Thresholds {
    /// fp32: a different summation order (1e-4 on logits, 1e-3 on
    /// gradients and after the steps); TF32: products rounded to 10
    /// mantissa bits (1e-2, 5e-2, 5e-2).
    pub fn for_precision(p: Precision) -> Self {
        match p {
            Precision::Fp32 => Thresholds {
                logits: 1e-4,
                gradients: 1e-3,
                after_steps: 1e-3,
            },
            _ => Thresholds {
                logits: 1e-2,
                gradients: 5e-2,
                after_steps: 5e-2,
            },
        }
    }
}

/// One error: norm-wise relative, and the worst tensor.
#[derive(Debug, Clone, Serialize)]
pub struct Err {
    /// ‖got − want‖ / ‖want‖ over all values.
    pub rel: f64,
    /// The tensor with the largest relative error, and that error.
    pub worst: (String, f64),
}

/// One line of `gpu-check`'s output.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Record {
    /// GPU against CPU.
    EngineCompare {
        /// Model.
        model: String,
        /// Precision.
        mode: Precision,
        /// Batch.
        batch: usize,
        /// Image side.
        side: usize,
        /// SGD steps.
        steps: usize,
        /// Logits of the first training forward.
        logits: f64,
        /// Its loss.
        loss: f64,
        /// Every gradient.
        gradients: Err,
        /// Every parameter and statistic after the steps.
        after_steps: Err,
        /// Evaluation logits after the steps.
        eval_logits: f64,
        /// The same on the CPU from weights moved by one rounding.
        sensitivity: (f64, f64, f64),
        /// The pass marks.
        thresholds: Thresholds,
        /// Whether every error passed.
        passed: bool,
    },
    /// Training steps timed on a synthetic batch.
    EngineTime {
        /// Model.
        model: String,
        /// Precision.
        mode: Precision,
        /// Batch.
        batch: usize,
        /// Image side.
        side: usize,
        /// Median step, seconds (host clock, synchronised by the loss read).
        median_s: f64,
        /// `batch / median_s`.
        images_per_sec: f64,
        /// Timed steps.
        steps: usize,
        /// Device memory the engine allocated.
        memory_bytes: usize,
        /// Seconds to plan and pick cuDNN algorithms.
        setup_s: f64,
        /// The GPU.
        gpu: String,
        /// Whether the steps ran as CUDA graphs.
        graphs: bool,
    },
    /// A model, precision or size that could not run.
    EngineFailed {
        /// What.
        what: String,
        /// Why.
        error: String,
    },
}

/// Runs `check`, handing each result to `emit`; true when every comparison passed.
pub fn run(check: &EngineCheck, emit: &mut dyn FnMut(&Record)) -> bool {
    let mut passed = true;
    for model in &check.compare {
        for &mode in &check.modes {
            let r = zoo::with_standard_network::<Cpu, _>(
                model,
                Compare {
                    check,
                    mode,
                    name: model,
                },
            )
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()));
            let rec = match r {
                Ok(rec) => rec,
                Err(error) => Record::EngineFailed {
                    what: format!("compare {model} {mode}"),
                    error,
                },
            };
            passed &= matches!(rec, Record::EngineCompare { passed: true, .. });
            emit(&rec);
        }
    }
    for model in &check.time {
        for &mode in &check.modes {
            for &batch in &check.batch_sizes {
                let r = zoo::with_standard_network::<Cpu, _>(
                    model,
                    Time {
                        check,
                        mode,
                        batch,
                        name: model,
                    },
                )
                .map_err(|e| e.to_string())
                .and_then(|r| r.map_err(|e| e.to_string()));
                let rec = r.unwrap_or_else(|error| Record::EngineFailed {
                    what: format!("time {model} {mode} b{batch}"),
                    error,
                });
                let failed = matches!(rec, Record::EngineFailed { .. });
                emit(&rec);
                if failed {
                    break;
                }
            }
        }
    }
    passed
}

fn side_of<M: Network<Cpu>>(side: usize) -> usize {
    if M::CLASSES == 10 { 32 } else { side }
}

fn rel(got: &[f32], want: &[f32]) -> f64 {
    let (mut d, mut n) = (0f64, 0f64);
    for (&a, &b) in got.iter().zip(want) {
        d += (a as f64 - b as f64).powi(2);
        n += (b as f64).powi(2);
    }
    if got.len() != want.len() {
        return f64::INFINITY;
    }
    (d / n.max(f64::MIN_POSITIVE)).sqrt()
}

fn err(got: &[(String, Vec<f32>)], want: &[(String, Vec<f32>)]) -> Err {
    let flat = |v: &[(String, Vec<f32>)]| {
        v.iter()
            .flat_map(|t| t.1.iter().copied())
            .collect::<Vec<f32>>()
    };
    let worst = got
        .iter()
        .zip(want)
        .map(|(g, w)| (g.0.clone(), rel(&g.1, &w.1)))
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap_or_default();
    Err {
        rel: rel(&flat(got), &flat(want)),
        worst,
    }
}

/// Every parameter and running statistic of `e`, by path.
fn tensors(e: &Engine) -> Result<Vec<(String, Vec<f32>)>, CudaError> {
    let mut v = e.parameters()?;
    v.extend(e.statistics()?);
    Ok(v)
}

/// `model` planned for `b` images of `side`, on the CUDA backend.
fn on_gpu<M: Network<Cpu>>(
    model: &M,
    (b, side): (usize, usize),
    c: &EngineCheck,
    mode: Precision,
) -> Result<(Engine, usize, String), CudaError> {
    let mut cuda = Cuda::new(Engine::lower(model, b, (side, side))?, c.ordinal, mode)?;
    cuda.graphs = c.graphs;
    let (bytes, name) = (cuda.device_bytes(), cuda.device_name());
    Ok((Engine::with_backend(model, Box::new(cuda))?, bytes, name))
}

struct Compare<'a> {
    check: &'a EngineCheck,
    name: &'a str,
    mode: Precision,
}

impl NetworkUser<Cpu> for Compare<'_> {
    type Output = Result<Record, CudaError>;
    fn run<M: Network<Cpu>>(self) -> Self::Output {
        let c = self.check;
        let (b, side, steps) = (
            c.compare_batch,
            side_of::<M>(c.compare_side),
            c.compare_steps,
        );
        let dev = crate::train::cpu_device(1);
        let model = M::build(&dev);
        let (x, labels) = synthetic(b, side, M::CLASSES, 11);
        let lr = 0.01;
        // One CPU run from the weights, one from the weights nudged.
        let cpu_run = |nudge: bool| -> Result<_, CudaError> {
            let mut e = Engine::new(&model, b, (side, side), 0)?;
            if nudge {
                e.nudge_parameters(f32::EPSILON / 2.0, 7)?;
            }
            let loss = e.forward_backward(&x, &labels)?;
            let (logits, grads) = (e.logits()?, e.gradients()?);
            for _ in 0..steps {
                e.train_step(&x, &labels, lr)?;
            }
            let eval = e.eval(&x)?;
            Ok((loss, logits, grads, tensors(&e)?, eval))
        };
        let want = cpu_run(false)?;
        let own = cpu_run(true)?;
        let (mut gpu, _, _) = on_gpu(&model, (b, side), c, self.mode)?;
        let loss = gpu.forward_backward(&x, &labels)?;
        let logits = gpu.logits()?;
        let grads = gpu.gradients()?;
        for _ in 0..steps {
            gpu.train_step(&x, &labels, lr)?;
        }
        let eval = gpu.eval(&x)?;
        let after = tensors(&gpu)?;
        let loss_rel = |a: f32| ((a as f64 - want.0 as f64) / want.0 as f64).abs();
        let t = Thresholds::for_precision(self.mode);
        let sensitivity = (
            rel(&own.1, &want.1),
            err(&own.2, &want.2).rel,
            err(&own.3, &want.3).rel,
        );
        let (lg, gr, af) = (
            rel(&logits, &want.1),
            err(&grads, &want.2),
            err(&after, &want.3),
        );
        let ok = |e: f64, mark: f64, own: f64| e.is_finite() && (e < mark || e < 10.0 * own);
        let passed = ok(lg, t.logits, sensitivity.0)
            && ok(loss_rel(loss), t.logits, sensitivity.0)
            && ok(gr.rel, t.gradients, sensitivity.1)
            && ok(af.rel, t.after_steps, sensitivity.2);
        Ok(Record::EngineCompare {
            model: self.name.to_string(),
            mode: self.mode,
            batch: b,
            side,
            steps,
            logits: lg,
            loss: loss_rel(loss),
            gradients: gr,
            after_steps: af,
            eval_logits: rel(&eval, &want.4),
            sensitivity,
            thresholds: t,
            passed,
        })
    }
}

struct Time<'a> {
    check: &'a EngineCheck,
    name: &'a str,
    mode: Precision,
    batch: usize,
}

impl NetworkUser<Cpu> for Time<'_> {
    type Output = Result<Record, CudaError>;
    fn run<M: Network<Cpu>>(self) -> Self::Output {
        let c = self.check;
        let (b, side) = (self.batch, side_of::<M>(c.side));
        let dev = crate::train::cpu_device(0);
        let model = M::build(&dev);
        let (x, labels) = synthetic(b, side, M::CLASSES, 7);
        let t0 = Instant::now();
        let (mut gpu, memory_bytes, name) = on_gpu(&model, (b, side), c, self.mode)?;
        let setup_s = t0.elapsed().as_secs_f64();
        for _ in 0..c.warmup {
            gpu.train_step(&x, &labels, 0.01)?;
        }
        let (start, mut times) = (Instant::now(), Vec::new());
        while times.len() < c.min_steps || start.elapsed().as_secs_f64() < c.max_seconds {
            let t = Instant::now();
            let loss = gpu.train_step(&x, &labels, 0.01)?;
            times.push(t.elapsed().as_secs_f64());
            if !loss.is_finite() {
                return Err(CudaError::Driver(format!("loss {loss} while timing")));
            }
            if times.len() >= 200 {
                break;
            }
        }
        let m = median(&times);
        Ok(Record::EngineTime {
            model: self.name.to_string(),
            mode: self.mode,
            batch: b,
            side,
            median_s: m,
            images_per_sec: b as f64 / m,
            steps: times.len(),
            memory_bytes,
            setup_s,
            gpu: name,
            // A failed capture falls back to kernel by kernel (and says so).
            graphs: gpu.describe().ends_with("CUDA graphs)"),
        })
    }
}
