//! What `bench-trainer` runs: SGD steps of one model on a synthetic batch,
//! with the planned engine or the dfdx path, and the machine's fp32 matrix
//! product peak (a gemm on the same threads) to set them against.

use super::median;
use super::timing::{self, Timing};
use crate::engine::{Engine, cpu};
use crate::measure::parity::synthetic;
use crate::model::zoo::{self, Network, NetworkUser, ZooError};
use dfdx::prelude::*;
use serde::Serialize;
use std::time::Instant;

pub use crate::train::EngineKind;

/// One benchmark.
#[derive(Debug, Clone)]
pub struct TrainerBench {
    /// Zoo name (run at its family's standard class count).
    pub model: String,
    /// Images per step.
    pub batch_size: usize,
    /// Image side.
    pub size: usize,
    /// Timed steps (after `warmup`).
    pub steps: usize,
    /// Untimed steps first.
    pub warmup: usize,
    /// Threads.
    pub threads: usize,
    /// Which trainer.
    pub engine: EngineKind,
}

/// The result, as `bench-trainer --json` prints it (plus the PyTorch fields
/// the binary adds).
#[derive(Debug, Clone, Serialize)]
pub struct TrainerRun {
    /// Model.
    pub model: String,
    /// Trainer timed.
    pub engine: EngineKind,
    /// Images per step.
    pub batch_size: usize,
    /// Image side.
    pub size: usize,
    /// Threads.
    pub threads: usize,
    /// Seconds of each timed step.
    pub step_s: Vec<f64>,
    /// Median step.
    pub s_per_step: f64,
    /// `batch_size / s_per_step`.
    pub images_per_sec: f64,
    /// Peak resident set size of the process, bytes.
    pub peak_rss_bytes: u64,
    /// Floating-point operations of one step (convolutions and the
    /// classifier: forward, input gradient, weight gradient).
    pub flops_per_step: f64,
    /// `flops_per_step / s_per_step / 1e9`.
    pub gflops_per_sec: f64,
    /// The engine's arena, bytes (None for dfdx).
    pub arena_bytes: Option<usize>,
    /// The engine's seconds per step by op kind and direction, largest first
    /// (from one extra profiled step; empty for dfdx).
    pub profile: Vec<(String, f64)>,
}

/// Why the benchmark cannot run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrainerBenchError {
    /// Not a zoo model.
    #[error(transparent)]
    Zoo(#[from] ZooError),
    /// The engine refused the settings.
    #[error(transparent)]
    Engine(#[from] crate::engine::EngineError),
}

/// Runs `bench` (on the calling thread's rayon pool for dfdx: set its size
/// before; the engine makes its own pool of `bench.threads`).
pub fn run(bench: &TrainerBench) -> Result<TrainerRun, TrainerBenchError> {
    zoo::with_standard_network::<Cpu, _>(&bench.model, Run(bench))?
}

struct Run<'a>(&'a TrainerBench);

impl NetworkUser<Cpu> for Run<'_> {
    type Output = Result<TrainerRun, TrainerBenchError>;
    fn run<M: Network<Cpu>>(self) -> Self::Output {
        let b = self.0;
        let dev = crate::train::cpu_device(0);
        let model = M::build(&dev);
        let (x, labels) = synthetic(b.batch_size, b.size, M::CLASSES, 7);
        // The plan also counts the work (and checks the settings) for dfdx.
        let mut engine = Engine::new(&model, b.batch_size, (b.size, b.size), b.threads)?;
        let flops = engine.plan().flops_per_step();
        let mut profile = Vec::new();
        let (step_s, arena) = match b.engine {
            EngineKind::Engine => {
                for _ in 0..b.warmup {
                    engine.train_step(&x, &labels, 0.01)?;
                }
                let times = (0..b.steps)
                    .map(|_| {
                        let t0 = Instant::now();
                        engine
                            .train_step(&x, &labels, 0.01)
                            .map(|_| t0.elapsed().as_secs_f64())
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                engine.start_profile();
                engine.train_step(&x, &labels, 0.01)?;
                profile = engine.profile();
                (times, Some(engine.plan().arena_bytes()))
            }
            EngineKind::Dfdx => {
                drop(engine);
                let timing = Timing {
                    warmup: b.warmup,
                    min_steps: b.steps,
                    max_steps: b.steps,
                    max_seconds: f64::INFINITY,
                };
                let t = timing::time_steps::<M, Cpu>(
                    &b.model,
                    &dev,
                    b.batch_size,
                    b.size,
                    timing,
                    &|| None,
                );
                (t.step_s, None)
            }
        };
        let s = median(&step_s);
        Ok(TrainerRun {
            model: b.model.clone(),
            engine: b.engine,
            batch_size: b.batch_size,
            size: b.size,
            threads: b.threads,
            step_s,
            s_per_step: s,
            images_per_sec: b.batch_size as f64 / s,
            peak_rss_bytes: super::peak_rss_bytes(),
            flops_per_step: flops,
            gflops_per_sec: flops / s / 1e9,
            arena_bytes: arena,
            profile,
        })
    }
}

/// The fp32 matrix-product peak of this machine on `threads` threads:
/// GFLOP/s of an `n x n x n` product by the engine's own
/// [`crate::engine::sgemm`] (at 1024^3 as fast as the `gemm` crate,
/// `cargo bench --bench sgemm`), median of `reps` after one warm-up.
pub fn gemm_peak(threads: usize, n: usize, reps: usize) -> f64 {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("a thread pool");
    let a: Vec<f32> = (0..n * n).map(|i| (i % 7) as f32 * 0.1).collect();
    let b: Vec<f32> = (0..n * n).map(|i| (i % 5) as f32 * 0.1).collect();
    let mut c = vec![0f32; n * n];
    let times: Vec<f64> = pool.install(|| {
        (0..=reps)
            .map(|_| {
                let t0 = Instant::now();
                cpu::matmul(
                    &mut c,
                    false,
                    cpu::row_major(&a, n),
                    cpu::row_major(&b, n),
                    (n, n, n),
                    threads,
                );
                t0.elapsed().as_secs_f64()
            })
            .skip(1)
            .collect()
    });
    std::hint::black_box(&c);
    2.0 * (n * n * n) as f64 / median(&times) / 1e9
}
