//! `bench-trainer`: seconds per SGD step of a zoo model on the CPU (the
//! planned engine, or `--engine dfdx`), beside PyTorch on the same network,
//! machine and threads (`--pytorch`, alternating rounds, medians), and the
//! achieved GFLOP/s beside this machine's gemm peak on the same threads (in
//! bf16 on a CPU with a bf16 kernel, that kernel's peak).
//!
//! `--json` prints one object: the median round's `TrainerRun` fields
//! (`model`, `engine`, `batch_size`, `size`, `threads`, `s_per_step`,
//! `images_per_sec`, `peak_rss_bytes`, `gflops_per_sec`, ...) plus
//! `rounds_s_per_step`, `gemm_peak_gflops`, `gemm_peak_kernel`, `peak_fraction` and, with
//! `--pytorch`, `pytorch_s_per_step`, `pytorch_rounds_s_per_step`,
//! `pytorch` (its version and oneDNN's) and `ratio` (PyTorch's seconds per
//! step over ours: above 1, ours is faster).
//!
//! Under `mpirun -np N` (built with `--features mpi`) the batch is split
//! over N ranks, each on `--threads` threads, with the gradients averaged
//! as in training; the JSON adds `ranks`, `allreduce_s` (first bucket
//! started to last sum done, backward running meanwhile),
//! `allreduce_wait_s` (the part not hidden under backward),
//! `allreduce_alone_s` (the whole gradient's allreduce on its own), and
//! `--allreduce-floats F` also times a sum of F floats over the ranks
//! (`allreduce_floats`, `allreduce_only_s`, `allreduce_bus_gbps`). Rank 0 prints.

mod args;

use anyhow::{Context, bail};
use args::Cli;
use clap::Parser;
use resnet_imagenet::dist::{self, Communicator};
use resnet_imagenet::engine::Precision;
use resnet_imagenet::engine::cpu::bf16gemm;
use resnet_imagenet::measure::{median, trainer_bench};
use std::process::{Command, ExitCode};

/// Runs the PyTorch side once (with `peak`, its fp32 and bf16 matrix
/// products too); its JSON object.
fn pytorch(cli: &Cli, threads: usize, peak: bool) -> anyhow::Result<serde_json::Value> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tools/pytorch-bench.py");
    let out = Command::new(&cli.python)
        .arg(script)
        .args(["--model", &cli.model])
        .args(["--batch-size", &cli.batch_size.to_string()])
        .args(["--size", &cli.size.to_string()])
        .args(["--steps", &cli.steps.to_string()])
        .args(["--warmup", &cli.warmup.to_string()])
        .args(["--threads", &threads.to_string()])
        .args(["--mode", cli.pytorch_mode()])
        .args(peak.then_some("--peak"))
        .output()
        .with_context(|| format!("running {} {script}", cli.python))?;
    if !out.status.success() {
        bail!(
            "{script} failed ({}): {} (torch from PyPI: pip install torch; --python or PYTHON names the interpreter)",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    serde_json::from_slice(&out.stdout).with_context(|| format!("{script}'s output"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    cli.verbosity.init_logger();
    let mut comm = match dist::from_environment() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("bench-trainer: error: {e}");
            return ExitCode::from(2);
        }
    };
    let code = resnet_imagenet::cli::main("bench-trainer", || bench(&cli, &mut *comm));
    if comm.world_size() > 1 && code != ExitCode::SUCCESS {
        comm.abort(2);
    }
    code
}

fn bench(cli: &Cli, comm: &mut dyn Communicator) -> anyhow::Result<ExitCode> {
    let (world, rank0) = (comm.world_size(), comm.rank() == 0);
    if world > 1 && cli.pytorch {
        bail!("--pytorch times one process: run it without mpirun");
    }
    let threads = cli
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    // dfdx's ops run on the global pool.
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global();
    // The peak of the kernel the step multiplies with (an error in
    // RESNET_BF16_KERNEL is reported by the engine's build).
    let peak_kernel = match cli.precision {
        Precision::Bf16 => bf16gemm::native().ok().flatten(),
        Precision::Fp32 => None,
    };
    let peak = trainer_bench::gemm_peak(threads, 1024, 5, peak_kernel);
    let peak_name = peak_kernel.map_or("fp32", |k| k.name());
    let bench = cli.bench(threads);
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    let mut allreduce = Vec::new();
    for round in 0..cli.rounds {
        let r = trainer_bench::run_on(&bench, comm)?;
        if let Some(f) = cli.allreduce_floats {
            allreduce.extend(trainer_bench::allreduce_times(comm, f, 5));
        }
        if !cli.json && rank0 {
            println!("round {}: ours {:.4} s/step", round + 1, r.s_per_step);
        }
        ours.push(r);
        if cli.pytorch {
            let t = pytorch(cli, threads, round == 0)?;
            if !cli.json {
                println!("round {}: pytorch {:.4} s/step", round + 1, t["s_per_step"]);
            }
            theirs.push(t);
        }
    }
    let ours_s: Vec<f64> = ours.iter().map(|r| r.s_per_step).collect();
    let median_run = &ours[resnet_imagenet::measure::median_index(&ours_s)];
    let mut out = serde_json::to_value(median_run)?;
    out["rounds_s_per_step"] = serde_json::json!(ours_s);
    out["gemm_peak_gflops"] = serde_json::json!(peak);
    out["gemm_peak_kernel"] = serde_json::json!(peak_name);
    out["peak_fraction"] = serde_json::json!(median_run.gflops_per_sec / peak);
    if let Some(f) = cli.allreduce_floats {
        let t = median(&allreduce);
        // Bus bandwidth as nccl-tests defines it: 2(n-1)/n of the buffer
        // crosses each rank's link in a ring allreduce.
        let bus = 2.0 * (world as f64 - 1.0) / world as f64 * (4 * f) as f64 / t / 1e9;
        out["allreduce_floats"] = serde_json::json!(f);
        out["allreduce_only_s"] = serde_json::json!(t);
        out["allreduce_bus_gbps"] = serde_json::json!(bus);
    }
    if !rank0 {
        return Ok(ExitCode::SUCCESS);
    }
    if cli.pytorch {
        let ts: Vec<f64> = theirs
            .iter()
            .filter_map(|t| t["s_per_step"].as_f64())
            .collect();
        let pt = median(&ts);
        out["pytorch_s_per_step"] = serde_json::json!(pt);
        out["pytorch_rounds_s_per_step"] = serde_json::json!(ts);
        out["pytorch"] = serde_json::json!({
            "torch": theirs[0]["torch"],
            "onednn": theirs[0]["onednn"],
            "mode": cli.pytorch_mode(),
            "peak_rss_bytes": theirs.iter().filter_map(|t| t["peak_rss_bytes"].as_u64()).max(),
            "matmul_gflops": theirs[0]["matmul_gflops"],
        });
        out["ratio"] = serde_json::json!(pt / median_run.s_per_step);
    }
    if cli.json {
        println!("{out}");
    } else {
        let r = median_run;
        println!(
            "{} b{} {s}x{s}, {} threads, {:?} {}: {:.4} s/step, {:.1} img/s, {:.1} GFLOP/s ({:.0}% of the {:.1} GFLOP/s {} gemm peak), peak RSS {:.0} MiB",
            r.model,
            r.batch_size,
            r.threads,
            r.engine,
            r.precision,
            r.s_per_step,
            r.images_per_sec,
            r.gflops_per_sec,
            100.0 * r.gflops_per_sec / peak,
            peak,
            peak_name,
            r.peak_rss_bytes as f64 / (1 << 20) as f64,
            s = r.size
        );
        println!("kernels: {}; this CPU has {}", r.kernels, r.cpu_kernels);
        for (what, s) in &r.profile {
            println!("  {what}: {:.1} ms", s * 1e3);
        }
        if world > 1 {
            println!(
                "{world} ranks: allreduce {:.1} ms/step, {:.1} ms of it waited for after backward ({:.0}% hidden)",
                r.allreduce_s * 1e3,
                r.allreduce_wait_s * 1e3,
                100.0 * (1.0 - r.allreduce_wait_s / r.allreduce_s.max(1e-12))
            );
        }
        if let Some(t) = out["allreduce_only_s"].as_f64() {
            println!(
                "allreduce of {} floats over {world} ranks: {:.1} ms ({:.2} GB/s bus bandwidth)",
                out["allreduce_floats"],
                t * 1e3,
                out["allreduce_bus_gbps"].as_f64().unwrap_or(0.0)
            );
        }
        if let Some(ratio) = out["ratio"].as_f64() {
            println!(
                "pytorch ({}) {:.4} s/step: ours/pytorch speed = {ratio:.2}",
                cli.pytorch_mode(),
                out["pytorch_s_per_step"]
            );
            if let Some(m) = out["pytorch"]["matmul_gflops"].as_object() {
                println!(
                    "1024^3 matrix products in PyTorch on {} threads: fp32 {:.0} GFLOP/s, bf16 {:.0} GFLOP/s",
                    r.threads,
                    m["fp32"].as_f64().unwrap_or(0.0),
                    m["bf16"].as_f64().unwrap_or(0.0)
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::Cli;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }
}
