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

use anyhow::Context;
use clap::Parser;
use dfdx::prelude::*;
use dfdx::tensor::{Cache, Synchronize};
use resnet_imagenet::measure::parity::{self, Comparison};
use resnet_imagenet::measure::timing::{self, Timing};
use resnet_imagenet::train::{self, TrainConfig};
use serde::Serialize;
use std::io::Write;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::process::ExitCode;

/// Check training on the device against the CPU and time it.
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
struct Cli {
    #[command(flatten)]
    verbosity: resnet_imagenet::cli::Verbosity,

    /// Models to compare with the CPU ("" for none).
    #[arg(long, value_delimiter = ',', default_value = "resnet18,resnet50")]
    compare: Vec<String>,
    /// Batch of the comparison.
    #[arg(long, default_value_t = 4)]
    compare_batch: usize,
    /// Image side of the comparison.
    #[arg(long, default_value_t = 224)]
    compare_side: usize,
    /// SGD steps before comparing every tensor.
    #[arg(long, default_value_t = 3)]
    compare_steps: usize,
    /// Also compare with each residual branch's last BatchNorm scale set to
    /// this (a fresh ResNet-50 is chaotic: 0.1 makes it well conditioned).
    #[arg(long)]
    compare_last_bn_scale: Option<f32>,
    /// Models to time on synthetic input ("" for none).
    #[arg(long, value_delimiter = ',', default_value = "resnet50,resnet18")]
    time: Vec<String>,
    /// Batch sizes to time (ascending; a size that fails ends the model's sweep).
    #[arg(long, value_delimiter = ',', default_value = "32,64,128")]
    batch_sizes: Vec<usize>,
    /// Image side of the timed steps.
    #[arg(long, default_value_t = 224)]
    side: usize,
    /// Untimed steps first.
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// Timed steps at least.
    #[arg(long, default_value_t = 5)]
    min_steps: usize,
    /// Timed steps at most.
    #[arg(long, default_value_t = 30)]
    max_steps: usize,
    /// Stop timing a size after this many seconds (past min-steps).
    #[arg(long, default_value_t = 15.0)]
    max_seconds: f64,
    /// Time the pieces of a ResNet-50 first-stage layer at this batch (0: skip).
    #[arg(long, default_value_t = 0)]
    ops_batch: usize,
    /// A packed split (e.g. shards/train): train from it with the real loader.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Model trained from --data.
    #[arg(long, default_value = "resnet50")]
    loader_model: String,
    /// Batch trained from --data.
    #[arg(long, default_value_t = 64)]
    loader_batch: usize,
    /// Timed steps from --data.
    #[arg(long, default_value_t = 20)]
    loader_steps: usize,
    /// Loader threads [default: all cores].
    #[arg(long)]
    workers: Option<usize>,
    /// Also write every result as a JSON line here.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// What `--json` writes: one record per line.
#[derive(Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Record {
    Compare(Comparison),
    Time(timing::StepTimes),
    Loader(timing::LoaderTraining),
    Ops(timing::OpTimes),
    Failed { what: String, error: String },
}

struct Out {
    json: Option<std::fs::File>,
    /// The first failed `--json` write (the run goes on; the exit code says so).
    json_error: Option<String>,
}

impl Out {
    fn record(&mut self, r: &Record) {
        if let Some(f) = &mut self.json {
            let written = serde_json::to_string(r)
                .map_err(|e| e.to_string())
                .and_then(|line| writeln!(f, "{line}").map_err(|e| e.to_string()));
            if let Err(e) = written {
                eprintln!("gpu-check: writing --json: {e}; no more records are written there");
                self.json = None;
                self.json_error.get_or_insert(e);
            }
        }
    }

    /// Prints and records a part that panicked.
    fn failed(&mut self, what: String, error: String) {
        println!("{what}: FAILED: {error}");
        self.record(&Record::Failed { what, error });
    }
}

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
            other => Err(format!(
                "gpu-check knows resnet18, resnet34 and resnet50, not {other:?}"
            )),
        }
    };
}

fn mib(b: Option<u64>) -> String {
    b.map_or("n/a".into(), |b| {
        format!("{:.0} MiB", b as f64 / (1 << 20) as f64)
    })
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
                let w = |x: Option<&parity::TensorError>| {
                    x.map_or("-".into(), |x| format!("{:.1e} ({})", x.rel, x.path))
                };
                let verdict = if c.passed() { ": PASS" } else { ": FAIL" };
                let lines = [
                    (
                        &c.test,
                        format!("compare {label} b{b} {s}x{s} cpu vs {device}"),
                        verdict,
                    ),
                    (
                        &c.sensitivity,
                        "  cpu vs cpu on input x (1 + 1e-6)".into(),
                        "",
                    ),
                ];
                for (d, what, verdict) in lines {
                    println!(
                        "{what}: logits {:.1e}, loss {:.1e}, gradients {:.1e} (worst {}), after {k} steps {:.1e} (worst {}){verdict}",
                        d.logits,
                        d.loss,
                        d.gradients_all,
                        w(d.worst_gradient()),
                        d.after_steps_all,
                        w(d.worst_after_steps()),
                    );
                }
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
                    println!(
                        "time {name} b{b} {s}x{s} on {device}: {:.1} ms/step (forward {:.1}, backward {:.1}, update {:.1}), {:.1} img/s (median of {}), memory {}",
                        t.median_s * 1e3,
                        t.forward_s * 1e3,
                        t.backward_s * 1e3,
                        t.update_s * 1e3,
                        t.images_per_sec,
                        t.step_s.len(),
                        mib(t.memory_bytes),
                        s = cli.side
                    );
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
                for (op, s) in &t.ops {
                    println!(
                        "op b{} 56x56x64 on {device}: {op}: {:.2} ms",
                        t.batch,
                        s * 1e3
                    );
                }
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
                println!(
                    "loader+train {name} b{} on {device}, {} workers: {:.1} img/s, waited for data {:.1}% of {:.1} s; loader alone {:.0} img/s",
                    l.batch,
                    l.workers,
                    l.images_per_sec,
                    100.0 * l.wait_fraction,
                    l.wall_s,
                    l.loader_alone_images_per_sec
                );
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
    let mut out = Out {
        json: None,
        json_error: None,
    };
    let result = (|| -> anyhow::Result<bool> {
        if let Some(p) = &cli.json {
            out.json = Some(std::fs::File::create(p).with_context(|| format!("{}", p.display()))?);
        }
        #[cfg(feature = "cuda")]
        {
            let dev = train::cuda_device(0)?;
            run(&cli, &dev, "cuda", &train::cuda_memory_used, &mut out)
        }
        #[cfg(not(feature = "cuda"))]
        {
            eprintln!("gpu-check: built without the cuda feature: checking the CPU against itself");
            let dev = train::cpu_device(0);
            run(&cli, &dev, "cpu", &|| None, &mut out)
        }
    })();
    if let (Ok(_), Some(e)) = (&result, &out.json_error) {
        eprintln!("gpu-check: the --json file is incomplete: {e}");
        return ExitCode::from(2);
    }
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("gpu-check: a comparison exceeded its threshold or failed");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("gpu-check: {e:#}");
            ExitCode::from(2)
        }
    }
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
