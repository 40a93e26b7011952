//! `gpu-check`: is training on the device right, and how fast is it?
//!
//! 1. `--compare`: the same weights and batch on the CPU and on the device:
//!    logits, loss, every gradient, and every tensor after SGD steps (errors
//!    norm-wise; thresholds in `train::parity::Thresholds`).
//! 2. `--time`: training steps on a synthetic batch kept on the device, for
//!    each model and batch size: median step, images/s, device memory.
//! 3. `--data`: training fed by the real loader from packed shards, with
//!    the fraction of the time spent waiting for data.
//!
//! Any model of the zoo, at its family's standard class count (ImageNet
//! 1000, CIFAR-10).
//!
//! Built with `--features cuda` it checks the engine's CUDA backend:
//! `--compare` models on the GPU against the CPU engine, `--time` models
//! timed, each in every precision of `--modes` (`measure::engine_gpu`).
//! Built with `--features dfdx-cuda`, dfdx's own CUDA device against dfdx
//! on the CPU (`measure::device_check`); with neither, the CPU against
//! itself (a dry run of that check).
//! Prints a line per result and, with `--json FILE`, writes JSON lines.
//!
//! Exit codes: 0 all comparisons within thresholds; 1 one was not; 2 error.

mod args;
#[cfg(feature = "cuda")]
mod engine;
mod report;

use anyhow::Context;
use args::Cli;
use clap::Parser;
use report::Out;
use resnet_imagenet::measure::device_check;
use resnet_imagenet::train;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse();
    cli.verbosity.init_logger();
    #[cfg(feature = "cuda")]
    return resnet_imagenet::cli::main("gpu-check", || engine::main(&cli));
    #[allow(unreachable_code)]
    resnet_imagenet::cli::main("gpu-check", || {
        let plan = cli.plan();
        let s = &plan.compare_setup;
        let mut out = Out {
            json: None,
            json_error: None,
            device: if cfg!(feature = "dfdx-cuda") {
                "cuda"
            } else {
                "cpu"
            },
            compare: (s.batch, s.side, s.steps),
        };
        if let Some(p) = &cli.json {
            out.json = Some(std::fs::File::create(p).with_context(|| format!("{}", p.display()))?);
        }
        let cpu = train::cpu_device(0);
        let mut emit = |r| out.emit(r);
        #[cfg(feature = "dfdx-cuda")]
        let passed = {
            let dev = train::cuda_device(0)?;
            device_check::run(&plan, &cpu, &dev, &train::cuda_memory_used, &mut emit)?
        };
        #[cfg(not(feature = "dfdx-cuda"))]
        let passed = {
            eprintln!("gpu-check: built without the cuda feature: checking the CPU against itself");
            let dev = train::cpu_device(0);
            device_check::run(&plan, &cpu, &dev, &|| None, &mut emit)?
        };
        if let Some(e) = &out.json_error {
            anyhow::bail!("the --json file is incomplete: {e}");
        }
        if !passed {
            eprintln!("gpu-check: a comparison exceeded its threshold or failed");
        }
        Ok(ExitCode::from(if passed { 0 } else { 1 }))
    })
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
