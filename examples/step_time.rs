//! Seconds per training step (forward, backward, the trainer's SGD update) on the CPU:
//! `cargo run --release --example step_time -- [resnet18|resnet50|resnet20] BATCH SIZE STEPS`
//! (`NO_CACHE=1`: without dfdx's allocation cache).
//! Prints each step's time and the median, after one untimed step (which
//! builds the im2col indices). The step is `measure::timing::time_steps`,
//! the one `gpu-check --time` runs: the trainer's `sgd_step`.

use dfdx::prelude::*;
use resnet_imagenet::measure::timing::{Timing, time_steps};
use resnet_imagenet::model::cifar::ResNet20;
use resnet_imagenet::model::resnet::{ResNet18, ResNet50};
use resnet_imagenet::model::zoo::{Network, ZooError, family};
use std::process::ExitCode;

fn time<M: Network<Cpu>>(name: &str, batch: usize, side: usize, steps: usize) {
    let dev: Cpu = Cpu::seed_from_u64(0);
    if std::env::var_os("NO_CACHE").is_none() {
        dev.enable_cache(); // reuse freed buffers instead of fresh (page-faulting) allocations
    }
    let timing = Timing {
        warmup: 1,
        min_steps: steps,
        max_steps: steps,
        max_seconds: f64::INFINITY,
    };
    let t = time_steps::<M, Cpu>(name, &dev, batch, side, timing, &|| None);
    for (step, s) in t.step_s.iter().enumerate() {
        println!("step {}: {s:.3} s", step + 1);
    }
    println!(
        "median {:.3} s/step over {} steps",
        t.median_s,
        t.step_s.len()
    );
}

fn main() -> ExitCode {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let number = |i: usize, default: usize| a.get(i).map_or(Ok(default), |s| s.parse());
    let (Ok(b), Ok(s), Ok(steps)) = (number(1, 32), number(2, 32), number(3, 6)) else {
        eprintln!("usage: step_time [resnet18|resnet50|resnet20] BATCH SIZE STEPS");
        return ExitCode::from(2);
    };
    // Three of the zoo's types: each one compiled here is a whole
    // forward/backward instantiation, and this example builds with the tests.
    match a.first().map(String::as_str).unwrap_or("resnet18") {
        "resnet18" => time::<ResNet18<1000, f32, Cpu>>("resnet18", b, s, steps),
        "resnet50" => time::<ResNet50<1000, f32, Cpu>>("resnet50", b, s, steps),
        "resnet20" => time::<ResNet20<10, f32, Cpu>>("resnet20", b, s, steps),
        other => {
            match family(other) {
                Some(_) => eprintln!("step_time is built for resnet18, resnet50 and resnet20 only"),
                None => eprintln!("{}", ZooError::UnknownModel { name: other.into() }),
            }
            return ExitCode::from(2);
        }
    }
    ExitCode::SUCCESS
}
