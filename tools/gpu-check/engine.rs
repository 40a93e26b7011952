//! `gpu-check` of the engine's CUDA backend (a build with `--features cuda`).

use crate::args::Cli;
use anyhow::Context;
use resnet_imagenet::engine::cuda::Precision;
use resnet_imagenet::measure::engine_gpu::{self, EngineCheck, Record};
use std::io::Write;
use std::process::ExitCode;

pub fn main(cli: &Cli) -> anyhow::Result<ExitCode> {
    if let Some(cc) = cli.compile_kernels {
        let ptx =
            resnet_imagenet::engine::cuda::compile_kernels((cc / 10) as i32, (cc % 10) as i32)?;
        println!(
            "kernels compiled for compute_{cc}: {} bytes of PTX",
            ptx.to_src().len()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let names = |v: &[String]| v.iter().filter(|n| !n.is_empty()).cloned().collect();
    let modes = cli
        .modes
        .iter()
        .map(|m| m.parse::<Precision>().map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let check = EngineCheck {
        compare: names(&cli.compare),
        compare_batch: cli.compare_batch,
        compare_side: cli.compare_side,
        compare_steps: cli.compare_steps,
        time: names(&cli.time),
        batch_sizes: cli.batch_sizes.clone(),
        side: cli.side,
        modes,
        warmup: cli.warmup,
        min_steps: cli.min_steps,
        max_seconds: cli.max_seconds,
        ordinal: 0,
        graphs: !cli.no_graphs,
    };
    let mut json = match &cli.json {
        Some(p) => Some(std::fs::File::create(p).with_context(|| format!("{}", p.display()))?),
        None => None,
    };
    let mut write_error = None;
    let passed = engine_gpu::run(&check, &mut |r| {
        println!("{}", line(r));
        if let Some(f) = &mut json {
            let text = serde_json::to_string(r).expect("records serialise");
            if let Err(e) = writeln!(f, "{text}") {
                write_error.get_or_insert(e);
            }
        }
    });
    if let Some(e) = write_error {
        anyhow::bail!("the --json file is incomplete: {e}");
    }
    if !passed {
        eprintln!("gpu-check: a comparison exceeded its threshold or failed");
    }
    Ok(ExitCode::from(if passed { 0 } else { 1 }))
}

fn line(r: &Record) -> String {
    match r {
        Record::EngineCompare {
            model,
            mode,
            batch,
            side,
            steps,
            logits,
            loss,
            gradients,
            after_steps,
            eval_logits,
            sensitivity,
            passed,
            ..
        } => format!(
            "compare {model} {mode} b{batch} {side}px: logits {logits:.1e}, loss {loss:.1e}, \
             gradients {:.1e} (worst {:.1e} {}), after {steps} steps {:.1e} (worst {:.1e} {}), \
             eval logits {eval_logits:.1e}; own f32 sensitivity {:.1e}/{:.1e}/{:.1e}: {}",
            gradients.rel,
            gradients.worst.1,
            gradients.worst.0,
            after_steps.rel,
            after_steps.worst.1,
            after_steps.worst.0,
            sensitivity.0,
            sensitivity.1,
            sensitivity.2,
            if *passed { "PASS" } else { "FAIL" }
        ),
        Record::EngineTime {
            model,
            mode,
            batch,
            side,
            median_s,
            images_per_sec,
            steps,
            memory_bytes,
            setup_s,
            gpu,
            graphs,
        } => format!(
            "time {model} {mode} b{batch} {side}px: {:.2} ms/step, {images_per_sec:.0} img/s \
             ({steps} steps{}), {:.0} MiB, setup {setup_s:.1} s, {gpu}",
            median_s * 1e3,
            if *graphs { ", CUDA graph" } else { "" },
            *memory_bytes as f64 / (1 << 20) as f64
        ),
        Record::EngineFailed { what, error } => format!("FAILED {what}: {error}"),
    }
}
