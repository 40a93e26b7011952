//! Seconds per SGD training step (forward, backward, update) on the CPU:
//! `cargo run --release --example step_time -- [resnet18|resnet50|resnet20] BATCH SIZE STEPS`
//! (`NO_CACHE=1`: without dfdx's allocation cache).
//! Prints each step's time and the median (the first step, which builds the
//! im2col indices, is reported but excluded).

use dfdx::optim::{Momentum, Sgd, SgdConfig, WeightDecay};
use dfdx::prelude::*;
use resnet_imagenet::model::cifar::ResNet20;
use resnet_imagenet::model::resnet::{ResNet18, ResNet50};
use std::time::Instant;

macro_rules! run {
    ($model:ty, $n:expr, $b:expr, $s:expr, $steps:expr) => {{
        let dev: Cpu = Cpu::seed_from_u64(0);
        if std::env::var_os("NO_CACHE").is_none() {
            dev.enable_cache(); // reuse freed buffers instead of fresh (page-faulting) allocations
        }
        let mut model: $model = BuildModule::build(&dev);
        let mut opt = Sgd::new(
            &model,
            SgdConfig {
                lr: 0.1,
                momentum: Some(Momentum::Classic(0.9)),
                weight_decay: Some(WeightDecay::L2(1e-4)),
            },
        );
        let x = dev.sample_normal_like(&($b, $s, $s, Const::<3>));
        let labels: Vec<f32> = (0..$b * $n)
            .map(|i| if i % $n == (i / $n) % $n { 1.0 } else { 0.0 })
            .collect();
        let y = dev.tensor_from_vec(labels, ($b, Const::<$n>));
        let mut grads = model.alloc_grads();
        let mut times = Vec::new();
        for step in 0..$steps {
            let t0 = Instant::now();
            let logits = model.forward(x.clone().traced(grads));
            let loss = cross_entropy_with_logits_loss(logits, y.clone());
            grads = loss.backward();
            opt.update(&mut model, &grads).unwrap();
            model.zero_grads(&mut grads);
            let t = t0.elapsed().as_secs_f64();
            println!("step {step}: {t:.3} s");
            if step > 0 {
                times.push(t);
            }
        }
        times.sort_by(f64::total_cmp);
        if !times.is_empty() {
            println!(
                "median {:.3} s/step over {} steps",
                times[times.len() / 2],
                times.len()
            );
        }
    }};
}

fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let b: usize = a.get(1).map_or(32, |s| s.parse().unwrap());
    let s: usize = a.get(2).map_or(32, |s| s.parse().unwrap());
    let steps: usize = a.get(3).map_or(6, |s| s.parse().unwrap());
    match a.first().map(String::as_str).unwrap_or("resnet18") {
        "resnet18" => run!(ResNet18<1000, f32, Cpu>, 1000, b, s, steps),
        "resnet50" => run!(ResNet50<1000, f32, Cpu>, 1000, b, s, steps),
        "resnet20" => run!(ResNet20<10, f32, Cpu>, 10, b, s, steps),
        other => panic!("unknown model {other}"),
    }
}
