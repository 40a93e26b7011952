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
//! Built with `--features cuda` the device is the GPU; without, the CPU
//! (the checks then compare the CPU with itself: a dry run of the tool).
//! Prints a line per result and, with `--json FILE`, writes JSON lines.
//!
//! Exit codes: 0 all comparisons within thresholds; 1 one was not; 2 error.

mod args;
mod report;

use anyhow::Context;
use args::Cli;
use clap::Parser;
use dfdx::prelude::*;
use dfdx::tensor::{Cache, Synchronize};
use report::{Out, Record};
use resnet_imagenet::measure::parity;
use resnet_imagenet::measure::timing::{self, Timing};
use resnet_imagenet::train::{self, TrainConfig};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::process::ExitCode;

fn caught<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|e| resnet_imagenet::error::panic_message(&*e))
}

/// Runs `$body` with `$m` naming the model type constructor called `$name`
/// (used as `$m<1000, f32, Device>`).
macro_rules! with_model {
    ($name:expr, |$m:ident| $body:expr) => {
        match $name {
            "resnet18" => {
                use resnet_imagenet::model::resnet::ResNet18 as $m;
                Ok($body)
            }
            "resnet34" => {
                use resnet_imagenet::model::resnet::ResNet34 as $m;
                Ok($body)
            }
            "resnet50" => {
                use resnet_imagenet::model::resnet::ResNet50 as $m;
                Ok($body)
            }
            // Each model compiles its parity check and timings for two
            // devices: the tool compiles three of the zoo's, not all 23.
            other => Err(match resnet_imagenet::model::zoo::family(other) {
                Some(_) => format!(
                    "gpu-check is built for resnet18, resnet34 and resnet50 only, not {other:?}"
                ),
                None => resnet_imagenet::model::zoo::ZooError::UnknownModel { name: other.into() }
                    .to_string(),
            }),
        }
    };
}

fn run<D: Device<f32> + Synchronize + Cache>(
    cli: &Cli,
    dev: &D,
    device: &str,
    memory: &dyn Fn() -> Option<u64>,
    out: &mut Out,
) -> anyhow::Result<bool> {
    let mut all_passed = true;
    let cpu = train::cpu_device(0);
    let scales = std::iter::once(None).chain(cli.compare_last_bn_scale.map(Some));
    let runs: Vec<(&String, Option<f32>)> = scales
        .flat_map(|sc| {
            cli.compare
                .iter()
                .filter(|n| !n.is_empty())
                .map(move |n| (n, sc))
        })
        .collect();
    for (name, last_bn_scale) in runs {
        let (b, s, k) = (cli.compare_batch, cli.compare_side, cli.compare_steps);
        let setup = parity::Setup {
            batch: b,
            side: s,
            steps: k,
            seed: 1,
            last_bn_scale,
        };
        let label = match last_bn_scale {
            Some(v) => format!("{name} (last BatchNorm scale {v})"),
            None => name.clone(),
        };
        let r = with_model!(name.as_str(), |M| caught(|| {
            parity::compare::<M<1000, f32, Cpu>, Cpu, D>(&label, &cpu, dev, setup)
        }))
        .map_err(anyhow::Error::msg)?;
        match r {
            Ok(c) => {
                report::print_comparison(&c, &label, device, (b, s, k));
                all_passed &= c.passed();
                out.record(&Record::Compare(c));
            }
            Err(e) => {
                all_passed = false;
                out.failed(format!("compare {label}"), e);
            }
        }
    }
    let timing = Timing {
        warmup: cli.warmup,
        min_steps: cli.min_steps,
        max_steps: cli.max_steps,
        max_seconds: cli.max_seconds,
    };
    for name in cli.time.iter().filter(|n| !n.is_empty()) {
        for &b in &cli.batch_sizes {
            dev.empty_cache();
            let r = with_model!(name.as_str(), |M| caught(|| {
                timing::time_steps::<M<1000, f32, D>, D>(name, dev, b, cli.side, timing, memory)
            }))
            .map_err(anyhow::Error::msg)?;
            match r {
                Ok(t) => {
                    report::print_steps(&t, device);
                    out.record(&Record::Time(t));
                }
                Err(e) => {
                    out.failed(format!("time {name} b{b}"), e);
                    println!("time {name}: skipping larger batches");
                    break;
                }
            }
        }
    }
    if cli.ops_batch > 0 {
        dev.empty_cache();
        match caught(|| timing::time_ops(dev, cli.ops_batch, 10)) {
            Ok(t) => {
                report::print_ops(&t, device);
                out.record(&Record::Ops(t));
            }
            Err(e) => out.failed("ops".into(), e),
        }
    }
    if let Some(data) = &cli.data {
        dev.empty_cache();
        let ds = resnet_imagenet::reader::Dataset::open(data)
            .with_context(|| format!("open {}", data.display()))?;
        let mut cfg = TrainConfig::paper(data, &cli.loader_model);
        cfg.batch_size = cli.loader_batch;
        if let Some(w) = cli.workers {
            cfg.workers = w;
        }
        let loader = train::train_loader(&cfg, std::sync::Arc::new(ds))?;
        let name = cli.loader_model.as_str();
        let r = with_model!(name, |M| caught(|| {
            timing::time_loader_training::<M<1000, f32, D>, D>(
                name,
                dev,
                &loader,
                3,
                cli.loader_steps,
            )
        }))
        .map_err(anyhow::Error::msg)?;
        match r {
            Ok(Ok(l)) => {
                report::print_loader(&l, device);
                out.record(&Record::Loader(l));
            }
            Ok(Err(e)) => anyhow::bail!("loader: {e}"),
            Err(e) => out.failed(format!("loader+train {name}"), e),
        }
    }
    Ok(all_passed)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    cli.verbosity.init_logger();
    resnet_imagenet::cli::main("gpu-check", || {
        let mut out = Out {
            json: None,
            json_error: None,
        };
        if let Some(p) = &cli.json {
            out.json = Some(std::fs::File::create(p).with_context(|| format!("{}", p.display()))?);
        }
        #[cfg(feature = "cuda")]
        let passed = {
            let dev = train::cuda_device(0)?;
            run(&cli, &dev, "cuda", &train::cuda_memory_used, &mut out)?
        };
        #[cfg(not(feature = "cuda"))]
        let passed = {
            eprintln!("gpu-check: built without the cuda feature: checking the CPU against itself");
            let dev = train::cpu_device(0);
            run(&cli, &dev, "cpu", &|| None, &mut out)?
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
