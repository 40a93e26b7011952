//! `measure::parity` and `gpu-check` on the CPU (the CUDA side runs on a
//! lent GPU: see tools/cuda/device.sh and BENCHMARKS.md).

use crate::util::packed_sample;
use assert_cmd::Command;
use dfdx::prelude::Cpu;
use resnet_imagenet::measure::parity::{self, Setup, rel_err};
use resnet_imagenet::measure::timing::{self, Timing};
use resnet_imagenet::model::cifar::ResNet20;
use resnet_imagenet::model::resnet::ResNet18;
use resnet_imagenet::model::state::named_tensors;
use resnet_imagenet::reader::Dataset;
use resnet_imagenet::train::{self, TrainConfig};
use std::sync::Arc;

#[test]
fn relative_error_is_normwise_and_flags_non_finite_values() {
    assert_eq!(rel_err(&[1.0, 2.0], &[1.0, 2.0]), 0.0);
    let e = rel_err(&[3.0, 4.0 + 0.05], &[3.0, 4.0]);
    assert!((e - 0.01).abs() < 1e-6, "{e}");
    assert_eq!(rel_err(&[f32::NAN, 1.0], &[1.0, 1.0]), f64::INFINITY);
    assert_eq!(rel_err(&[1.0], &[1.0, 1.0]), f64::INFINITY);
    assert_eq!(rel_err(&[0.5], &[0.0]), 0.5); // absolute where the reference is 0
}

#[test]
fn comparing_two_cpus_copies_every_weight_and_finds_no_difference() {
    let (a, b) = (train::cpu_device(1), train::cpu_device(2)); // different seeds: the copy matters
    type M = ResNet20<10, f32, Cpu>;
    let setup = Setup {
        batch: 2,
        side: 32,
        steps: 2,
        seed: 5,
        last_bn_scale: None,
    };
    let c = parity::compare::<M, Cpu, Cpu>("resnet20", &a, &b, setup);
    let model: M = dfdx::nn::BuildModule::build(&a);
    let tensors = named_tensors(&model);
    let trainable = tensors.iter().filter(|t| t.trainable).count();
    for d in [&c.test, &c.sensitivity] {
        assert_eq!(d.gradients.len(), trainable);
        assert_eq!(d.after_steps.len(), tensors.len()); // BatchNorm statistics too
        assert!(d.gradients.iter().all(|g| g.norm > 0.0));
    }
    let d = &c.test;
    assert_eq!((d.logits, d.loss), (0.0, 0.0));
    assert!(
        d.gradients
            .iter()
            .chain(&d.after_steps)
            .all(|e| e.rel == 0.0)
    );
    // The nudged input moves the result a little, not by nothing, not by much.
    let s = &c.sensitivity;
    assert!(s.logits > 0.0 && s.logits < 1e-4, "{}", s.logits);
    assert!(s.worst_gradient().unwrap().rel < 1e-3);
    assert!(c.passed());
}

#[test]
fn step_timing_respects_its_bounds() {
    let dev = train::cpu_device(0);
    let timing = Timing {
        warmup: 1,
        min_steps: 2,
        max_steps: 3,
        max_seconds: 0.0,
    };
    let t =
        timing::time_steps::<ResNet18<10, f32, Cpu>, Cpu>("resnet18", &dev, 2, 32, timing, &|| {
            None
        });
    assert_eq!(t.step_s.len(), 2); // min_steps, since max_seconds is 0
    assert!(t.step_s.iter().all(|&s| s > 0.0));
    assert!((t.images_per_sec - 2.0 / t.median_s).abs() < 1e-9);
    assert_eq!(t.memory_bytes, None);
}

#[test]
fn loader_fed_training_counts_its_steps_and_waits() {
    let dev = train::cpu_device(0);
    let mut cfg = TrainConfig::paper(packed_sample(), "resnet20");
    cfg.batch_size = 8;
    cfg.workers = 2;
    let ds = Arc::new(Dataset::open(packed_sample().join("train")).unwrap());
    let loader = train::train_loader(&cfg, ds, Default::default()).unwrap();
    // More steps than an epoch has batches: epochs are chained.
    let steps = loader.batches_per_epoch() + 2;
    let r = timing::time_loader_training::<ResNet20<12, f32, Cpu>, Cpu>(
        "resnet20", &dev, &loader, 1, steps,
    )
    .unwrap();
    assert_eq!((r.steps, r.batch, r.workers), (steps, 8, 2));
    assert!(r.wait_s >= 0.0 && r.wait_s <= r.wall_s);
    assert!((0.0..=1.0).contains(&r.wait_fraction));
    assert!((r.images_per_sec - (steps * 8) as f64 / r.wall_s).abs() < 1e-6);
    assert!(r.loader_alone_images_per_sec > 0.0);
}

#[test]
fn gpu_check_dry_run_on_the_cpu_writes_its_records() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("r.jsonl");
    #[rustfmt::skip]
    let args = [
        "--compare", "resnet18", "--compare-batch", "2", "--compare-side", "64", "--compare-steps", "1",
        "--time", "resnet18", "--batch-sizes", "2", "--side", "32",
        "--warmup", "0", "--min-steps", "1", "--max-steps", "1",
    ];
    Command::cargo_bin("gpu-check")
        .unwrap()
        .args(args)
        .arg("--json")
        .arg(&json)
        .assert()
        .success()
        .stdout(predicates::str::contains("PASS"));
    let kinds: Vec<String> = std::fs::read_to_string(&json)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["kind"].to_string())
        .collect();
    assert_eq!(kinds, ["\"compare\"", "\"time\""]);
    Command::cargo_bin("gpu-check")
        .unwrap()
        .args(["--compare", "vgg16"])
        .assert()
        .code(2)
        .stderr(predicates::str::contains("resnet50"));
}

/// Any model of the zoo (issue 14: the tool had its own three-model table),
/// CIFAR ones at 10 classes; a part that panics (BatchNorm over a 1x1x1
/// batch) is a `failed` record and the run goes on to the next model.
#[test]
fn gpu_check_runs_any_zoo_model_and_reports_a_failed_part() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("r.jsonl");
    #[rustfmt::skip]
    let args = [
        "--compare", "plain20", "--compare-batch", "2", "--compare-side", "32", "--compare-steps", "1",
        "--time", "resnet34a,resnet20", "--batch-sizes", "1", "--side", "32",
        "--warmup", "0", "--min-steps", "1", "--max-steps", "1",
    ];
    let out = Command::cargo_bin("gpu-check")
        .unwrap()
        .args(args)
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    let records: Vec<serde_json::Value> = std::fs::read_to_string(&json)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kinds: Vec<&str> = records
        .iter()
        .map(|r| r["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["compare", "failed", "time"], "{stdout}");
    assert_eq!(records[0]["model"], "plain20");
    assert!(
        records[1]["what"]
            .as_str()
            .unwrap()
            .starts_with("time resnet34a b1")
    );
    assert_eq!(records[2]["model"], "resnet20");
    assert!(
        stdout.contains("time resnet34a b1 (larger batches skipped): FAILED"),
        "{stdout}"
    );
}

/// `--data` with more classes than the model has outputs is a setting error.
#[test]
fn gpu_check_refuses_data_with_more_classes_than_the_model() {
    Command::cargo_bin("gpu-check")
        .unwrap()
        .args([
            "--compare",
            "",
            "--time",
            "",
            "--loader-model",
            "resnet20",
            "--data",
        ])
        .arg(packed_sample().join("train"))
        .assert()
        .code(2)
        .stderr(predicates::str::contains(
            "12 classes, but resnet20 is built with 10 outputs",
        ));
}

/// The CUDA code path (dfdx ops only: gather im2col with a padding mask,
/// gathered weight, dfdx's BatchNorm) run on the CPU against the CPU's own
/// ops, over a whole bottleneck ResNet whose residual branches end in
/// BatchNorm scale 0.1 (well conditioned: at scale 1 a fresh ResNet-50 moves
/// its gradients by ~2% when the input moves by 1e-6, which no float32
/// comparison can beat). The bounds are looser than on CUDA: dfdx's CPU
/// BatchNorm sums in float32, one value after another (the CPU op sums in
/// float64), which alone moves the gradients by ~7e-4 here; the convolution
/// paths agree to the bit (see conv.rs's tests for each against float64).
#[test]
fn the_device_generic_path_agrees_with_the_cpu_ops() {
    use resnet_imagenet::model::dispatch::with_generic_ops;
    use resnet_imagenet::model::resnet::ResNet50;
    let (a, b) = (train::cpu_device(1), train::cpu_device(2));
    let setup = Setup {
        batch: 2,
        side: 64,
        steps: 2,
        seed: 5,
        last_bn_scale: Some(0.1),
    };
    let c = parity::compare_wrapped::<ResNet50<10, f32, Cpu>, Cpu, Cpu>(
        "resnet50",
        &a,
        &b,
        setup,
        &|f| with_generic_ops(f),
    );
    let (d, s) = (&c.test, &c.sensitivity);
    let (g, a) = (d.worst_gradient().unwrap(), d.worst_after_steps().unwrap());
    eprintln!(
        "generic vs CPU ops: logits {:e}, gradient {:e} ({}), after steps {:e} ({}); input x (1 + 1e-6): gradient {:e}",
        d.logits,
        g.rel,
        g.path,
        a.rel,
        a.path,
        s.worst_gradient().unwrap().rel
    );
    assert!(d.logits < 1e-5, "{}", d.logits);
    assert!(g.rel < 3e-3, "{}", g.rel);
    assert!(d.gradients_all < 1e-3, "{}", d.gradients_all);
    assert!(a.rel < 3e-2, "{}", a.rel);
}
