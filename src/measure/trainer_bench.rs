//! What `bench-trainer` runs: SGD steps of one model on a synthetic batch,
//! with the planned engine or the dfdx path, and the machine's fp32 matrix
//! product peak (a gemm on the same threads) to set them against.

use super::median;
use super::timing::{self, Timing};
use crate::dist::{Communicator, Local};
use crate::engine::precision::Kernels;
use crate::engine::{Engine, Precision, Target, cpu};
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
    /// The engine's precision (dfdx: fp32 only).
    pub precision: Precision,
}

/// The result, as `bench-trainer --json` prints it (plus the PyTorch fields
/// the binary adds).
#[derive(Debug, Clone, Serialize)]
pub struct TrainerRun {
    /// Model.
    pub model: String,
    /// Trainer timed.
    pub engine: EngineKind,
    /// Its precision.
    pub precision: Precision,
    /// The kernels that ran, in words (the engine's; dfdx: its own).
    pub kernels: String,
    /// The matrix-product instruction sets of this CPU.
    pub cpu_kernels: String,
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
    /// Ranks (processes) the global batch was split over.
    pub ranks: usize,
    /// Median seconds per step from the first gradient bucket's allreduce
    /// starting to the last one's end (0 with one rank).
    pub allreduce_s: f64,
    /// Median seconds per step waiting for the allreduce after backward:
    /// the part not hidden under it.
    pub allreduce_wait_s: f64,
    /// Median seconds of an allreduce of the whole gradient on its own
    /// (nothing to hide under): what the step would pay without overlap.
    pub allreduce_alone_s: f64,
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
    /// The batch or trainer cannot be split over the ranks.
    #[error("{0}")]
    Ranks(String),
}

/// Runs `bench` (on the calling thread's rayon pool for dfdx: set its size
/// before; the engine makes its own pool of `bench.threads`).
pub fn run(bench: &TrainerBench) -> Result<TrainerRun, TrainerBenchError> {
    run_on(bench, &mut Local)
}

/// [`run`] as one rank of `comm`: the engine steps on this rank's share of
/// the batch (`batch_size / ranks` images) and averages gradients with the
/// others, as `train-resnet` does under `mpirun`.
pub fn run_on(
    bench: &TrainerBench,
    comm: &mut dyn Communicator,
) -> Result<TrainerRun, TrainerBenchError> {
    let world = comm.world_size();
    if !bench.batch_size.is_multiple_of(world) {
        return Err(TrainerBenchError::Ranks(format!(
            "batch {} does not divide among {world} ranks",
            bench.batch_size
        )));
    }
    if bench.precision != Precision::Fp32 && bench.engine == EngineKind::Dfdx {
        return Err(TrainerBenchError::Ranks(
            "dfdx runs fp32 only: bf16 is the engine's (--engine engine)".into(),
        ));
    }
    if world > 1 && bench.engine == EngineKind::Dfdx {
        return Err(TrainerBenchError::Ranks(
            "several ranks run the engine only (--engine engine)".into(),
        ));
    }
    zoo::with_standard_network::<Cpu, _>(&bench.model, Run(bench, comm))?
}

/// Seconds of each of `reps` allreduces (sums) of `floats` floats over the
/// ranks of `comm`, after one untimed; as the gradient buckets are reduced
/// (non-blocking start, then wait).
pub fn allreduce_times(comm: &mut dyn Communicator, floats: usize, reps: usize) -> Vec<f64> {
    let send = vec![1.0f32; floats];
    let mut recv = vec![0.0f32; floats];
    (0..=reps)
        .map(|_| {
            comm.barrier();
            let t0 = Instant::now();
            // SAFETY: both buffers live and are untouched until wait_all.
            unsafe { comm.start_sum(send.as_ptr(), recv.as_mut_ptr(), floats) };
            comm.wait_all();
            t0.elapsed().as_secs_f64()
        })
        .skip(1)
        .collect()
}

struct Run<'a, 'c>(&'a TrainerBench, &'c mut dyn Communicator);

impl NetworkUser<Cpu> for Run<'_, '_> {
    type Output = Result<TrainerRun, TrainerBenchError>;
    fn run<M: Network<Cpu>>(self) -> Self::Output {
        let (b, comm) = (self.0, self.1);
        let (world, rank) = (comm.world_size(), comm.rank());
        let share = b.batch_size / world;
        let dev = crate::train::cpu_device(0);
        let model = M::build(&dev);
        // The plan also counts the work (and checks the settings and the
        // memory, before anything large is allocated) for dfdx.
        let mut engine = Engine::build(
            &model,
            share,
            (b.size, b.size),
            Target::Cpu { threads: b.threads },
            b.precision,
        )?;
        let kernels = match b.engine {
            EngineKind::Engine => engine.describe(),
            EngineKind::Dfdx => "dfdx's cpu kernels (gemm crate)".into(),
        };
        let (x, labels) = synthetic(share, b.size, M::CLASSES, 7 + rank as u64);
        let flops = engine.plan().flops_per_step() * world as f64;
        let mut profile = Vec::new();
        let (mut reduce, mut wait, mut alone) = (Vec::new(), Vec::new(), 0.0);
        let (step_s, arena) = match b.engine {
            EngineKind::Engine => {
                for _ in 0..b.warmup {
                    engine.train_step_on(&x, &labels, 0.01, comm)?;
                }
                let times = (0..b.steps)
                    .map(|_| {
                        let t0 = Instant::now();
                        let s = engine.train_step_on(&x, &labels, 0.01, comm)?;
                        reduce.push(s.allreduce_s);
                        wait.push(s.wait_s);
                        Ok(t0.elapsed().as_secs_f64())
                    })
                    .collect::<Result<Vec<_>, crate::engine::EngineError>>()?;
                engine.start_profile();
                engine.train_step_on(&x, &labels, 0.01, comm)?;
                profile = engine.profile();
                if world > 1 {
                    alone = median(&allreduce_times(comm, engine.plan().params_len, 5));
                }
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
            precision: b.precision,
            kernels,
            cpu_kernels: Kernels::detect().cpu(),
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
            ranks: world,
            allreduce_s: if reduce.is_empty() {
                0.0
            } else {
                median(&reduce)
            },
            allreduce_wait_s: if wait.is_empty() { 0.0 } else { median(&wait) },
            allreduce_alone_s: alone,
        })
    }
}

/// The matrix-product peak of this machine on `threads` threads: GFLOP/s
/// of an `n x n x n` product by the engine's own fp32
/// [`crate::engine::cpu::sgemm`] (at 1024^3 as fast as the `gemm` crate,
/// `cargo bench --bench sgemm`), or by its bf16 `kernel`
/// ([`crate::engine::cpu::bf16gemm`]), median of `reps` after one warm-up.
pub fn gemm_peak(
    threads: usize,
    n: usize,
    reps: usize,
    kernel: Option<cpu::bf16gemm::Bf16Kernel>,
) -> f64 {
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
                let (am, bm) = (cpu::sgemm::row_major(&a, n), cpu::sgemm::row_major(&b, n));
                match kernel {
                    None => cpu::sgemm::matmul(&mut c, false, am, bm, (n, n, n), threads),
                    Some(k) => cpu::bf16gemm::matmul(k, &mut c, false, am, bm, (n, n, n), threads),
                }
                t0.elapsed().as_secs_f64()
            })
            .skip(1)
            .collect()
    });
    std::hint::black_box(&c);
    2.0 * (n * n * n) as f64 / median(&times) / 1e9
}
