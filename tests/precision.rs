//! bf16 (bf16 operands, fp32 accumulation, as PyTorch's bf16 autocast)
//! against fp32 on the same weights and batch, its independence from the
//! thread count, and `--precision` in the trainer: saved, kept on resume,
//! refused where it cannot run.
//!
//! Bounds (relative, norm-wise) of the bf16 step against the fp32 step on
//! the same weights and batch: logits and loss 3e-2 (bf16 keeps 8
//! significant bits); the gradients within 3x of how far fp32's own
//! gradients move when only the weights and the input are rounded to bf16
//! (the network's sensitivity to bf16 rounding, measured on the spot:
//! 1.7e-2 for ResNet-20, 1.3e-1 for ResNet-18 at batch 2, against 2.3e-2
//! and 1.3e-1 for the bf16 step), and above 1e-5 (or nothing was rounded);
//! every tensor after each of 3 SGD steps from the same weights and
//! momentum, 1e-3. The residual branches' last BatchNorm scale is 0.1, as
//! in tests/engine.rs.

use crate::util::packed_sample;
use assert_cmd::Command;
use dfdx::prelude::*;
use resnet_imagenet::engine::cpu::Cpu as CpuBackend;
use resnet_imagenet::engine::cpu::bf16gemm::Bf16Kernel;
use resnet_imagenet::engine::plan::Op;
use resnet_imagenet::engine::precision::{is_bf16, round_slice_bf16};
use resnet_imagenet::engine::{Engine, Flat, Precision, Target};
use resnet_imagenet::measure::parity::{rel_err, synthetic};
use resnet_imagenet::model::cifar::ResNet20;
use resnet_imagenet::model::resnet::ResNet18;
use resnet_imagenet::model::state::{named_tensors, scale_last_bn};
use resnet_imagenet::model::zoo::Network;

fn flat(v: &[(String, Vec<f32>)]) -> Vec<f32> {
    v.iter().flat_map(|(_, d)| d.iter().copied()).collect()
}

fn engine<M: Network<Cpu>>(
    m: &M,
    batch: usize,
    side: usize,
    p: Precision,
    threads: usize,
) -> Engine {
    Engine::build(m, batch, (side, side), Target::Cpu { threads }, p).unwrap()
}

fn bf16_against_fp32<M: Network<Cpu> + Clone>(name: &str, batch: usize, side: usize) {
    let dev = Cpu::seed_from_u64(4);
    let mut model = M::build(&dev);
    scale_last_bn(&mut model, 0.1);
    let (x, labels) = synthetic(batch, side, M::CLASSES, 9);
    let mut f = engine(&model, batch, side, Precision::Fp32, 2);
    let mut b = engine(&model, batch, side, Precision::Bf16, 2);
    assert_eq!(b.precision(), Precision::Bf16);
    let (lf, lb) = (
        f.forward_backward(&x, &labels).unwrap(),
        b.forward_backward(&x, &labels).unwrap(),
    );
    // The products read bf16 operands: the input, rounded in place.
    assert!(
        is_bf16(&b.buffer("input").unwrap()),
        "{name}: input not rounded"
    );
    assert!(!is_bf16(&f.buffer("input").unwrap()));
    let e_logits = rel_err(&b.logits().unwrap(), &f.logits().unwrap());
    let e_loss = rel_err(&[lb], &[lf]);
    let gf = flat(&f.gradients().unwrap());
    let e_grads = rel_err(&flat(&b.gradients().unwrap()), &gf);
    // The yardstick: how far fp32's own gradients move when only the
    // weights and the input are rounded to bf16 (where any bf16 run
    // starts, before a single product).
    let mut r = engine(&model, batch, side, Precision::Fp32, 2);
    let mut params = r.flat(Flat::Params).unwrap();
    round_slice_bf16(&mut params);
    r.set_flat(Flat::Params, &params).unwrap();
    let mut xr = x.clone();
    round_slice_bf16(&mut xr);
    r.forward_backward(&xr, &labels).unwrap();
    let e_rounded = rel_err(&flat(&r.gradients().unwrap()), &gf);
    eprintln!(
        "{name}: bf16 vs fp32: logits {e_logits:.1e}, loss {e_loss:.1e} ({lb} vs {lf}), gradients {e_grads:.1e}; fp32 from bf16-rounded weights and input: gradients {e_rounded:.1e}"
    );
    assert!(
        e_logits < 3e-2 && e_logits > 1e-5,
        "{name}: logits {e_logits:.1e}"
    );
    assert!(e_loss < 3e-2, "{name}: loss {e_loss:.1e}");
    assert!(
        e_grads > 1e-5,
        "{name}: gradients {e_grads:.1e}: not rounded?"
    );
    assert!(
        e_grads < 3.0 * e_rounded,
        "{name}: gradients {e_grads:.1e}, from rounding weights and input alone {e_rounded:.1e}"
    );
    // Three SGD steps from the same weights and momentum.
    for step in 0..3 {
        let mut same = model.clone();
        f.write_to(&mut same).unwrap();
        b.read_from(&same).unwrap();
        b.set_momentum(&f.momentum().unwrap()).unwrap();
        f.train_step(&x, &labels, 0.01).unwrap();
        b.train_step(&x, &labels, 0.01).unwrap();
        let mut mf = model.clone();
        let mut mb = model.clone();
        f.write_to(&mut mf).unwrap();
        b.write_to(&mut mb).unwrap();
        let all =
            |m: &M| -> Vec<f32> { named_tensors(m).into_iter().flat_map(|t| t.data).collect() };
        let e = rel_err(&all(&mb), &all(&mf));
        eprintln!("{name}: step {step}: tensors {e:.1e}");
        assert!(e < 1e-3, "{name}: step {step}: tensors differ by {e:.1e}");
    }
}

#[test]
fn a_bf16_step_is_the_fp32_step_within_bf16_rounding() {
    bf16_against_fp32::<ResNet20<10, f32, Cpu>>("resnet20", 16, 16);
    bf16_against_fp32::<ResNet18<1000, f32, Cpu>>("resnet18", 2, 64);
}

/// The engine on the CPU backend with its bf16 products on `kernel`
/// (`None`: the fp32 kernels on the rounded operands).
/// Whether the profiled step made a bf16-rounded copy of the weights.
fn copies_weights(e: &Engine) -> bool {
    e.profile()
        .iter()
        .any(|(op, _)| op.starts_with("bf16 weight copy"))
}

/// Bytes of the rounded copy of the weights bf16 on the fp32 kernels makes.
fn copy_bytes(plan: &resnet_imagenet::engine::plan::Plan) -> u64 {
    4 * plan.params_len as u64
}

fn on_kernel<M: Network<Cpu>>(
    m: &M,
    batch: usize,
    side: usize,
    kernel: Option<Bf16Kernel>,
) -> Engine {
    let plan = Engine::lower(m, batch, (side, side)).unwrap();
    let cpu = CpuBackend::with_kernel(plan, 2, Precision::Bf16, kernel).unwrap();
    Engine::with_backend(m, Box::new(cpu)).unwrap()
}

/// Every bf16 dot-product kernel (the native ones where this CPU has them,
/// their plain-Rust models everywhere) computes the bf16 step of the fp32
/// kernels on the same rounded operands, up to the order of its fp32
/// additions. Each product is checked tightly in the kernels' own tests
/// (`engine::cpu::bf16gemm`, within 8 sqrt(k) fp32 roundings); here the
/// whole step, where another order moves a few stored values across a
/// bf16 rounding boundary and the network amplifies that: ResNet-20 at
/// batch 8 on the AMX model (16 pairs summed per tile, then added) ends
/// 1.6e-3 from the fp32 kernels in its logits and 1.7e-2 in its gradients,
/// against 3.3e-2 between the bf16 and fp32 gradients. So: logits and loss
/// within 1e-2 (bf16's own bound is 3e-2), the weights after a step within
/// 3e-4 (ResNet-18 at batch 2 on the AMX model: 8.5e-5 with BatchNorm's
/// inputs in f32, 1.2e-4 rounded to bf16 as autocast stores them: its
/// last stage normalises 8 values per channel, which amplifies a rounding
/// moved by another order of additions), the gradients no further than
/// bf16 itself moves them from fp32 (measured on the spot). A wrong layout
/// or a lost operand is far outside all of these.
fn kernels_against_the_fp32_kernels<M: Network<Cpu> + Clone>(
    name: &str,
    batch: usize,
    side: usize,
) {
    let dev = Cpu::seed_from_u64(6);
    let mut model = M::build(&dev);
    scale_last_bn(&mut model, 0.1);
    let (x, labels) = synthetic(batch, side, M::CLASSES, 3);
    let mut reference = on_kernel(&model, batch, side, None);
    reference.start_profile();
    let lr = reference.forward_backward(&x, &labels).unwrap();
    assert!(
        copies_weights(&reference),
        "{name}: the fp32 kernels need rounded weights"
    );
    let (logits, grads) = (
        reference.logits().unwrap(),
        flat(&reference.gradients().unwrap()),
    );
    let mut fp32 = engine(&model, batch, side, Precision::Fp32, 2);
    fp32.forward_backward(&x, &labels).unwrap();
    let e_bf16 = rel_err(&grads, &flat(&fp32.gradients().unwrap()));
    reference.train_step(&x, &labels, 0.01).unwrap();
    let stepped = reference.flat(Flat::Params).unwrap();
    for kernel in Bf16Kernel::ALL {
        if !kernel.testable() {
            continue;
        }
        let mut e = on_kernel(&model, batch, side, Some(kernel));
        let says = match kernel {
            Bf16Kernel::Amx => "AMX tiles (TDPBF16PS)",
            Bf16Kernel::Avx512Bf16 => "AVX512-BF16 (VDPBF16PS)",
            Bf16Kernel::AmxModel => "TDPBF16PS model",
            Bf16Kernel::Avx512Bf16Model => "VDPBF16PS model",
        };
        assert!(e.describe().contains(says), "{}", e.describe());
        e.start_profile();
        let l = e.forward_backward(&x, &labels).unwrap();
        // It rounds the fp32 weights as it packs them: no rounded copy is
        // made, nor its memory counted. Both kernels read the wide
        // convolutions' windows in place (no columns forward, none for the
        // weight gradient): the rest of the memory is the same.
        assert!(!copies_weights(&e), "{name}: {}", kernel.name());
        let plan = Engine::lower(&model, batch, (side, side)).unwrap();
        let bytes = (
            CpuBackend::bytes_needed(&plan, Precision::Bf16, Some(kernel)),
            CpuBackend::bytes_needed(&plan, Precision::Bf16, None) - copy_bytes(&plan),
        );
        assert_eq!(bytes.0, bytes.1, "{name}");
        assert_eq!(
            e.plan().arena_bytes(),
            reference.plan().arena_bytes(),
            "{name}"
        );
        for plan in [e.plan(), reference.plan()] {
            for op in &plan.ops {
                if let Op::Conv { g, cols, .. } = op
                    && !g.grouped()
                    && g.single_tap().is_none()
                {
                    assert!(cols.is_none(), "{name}: forward columns of {g:?}");
                }
            }
        }
        let e_logits = rel_err(&e.logits().unwrap(), &logits);
        let e_loss = rel_err(&[l], &[lr]);
        let e_grads = rel_err(&flat(&e.gradients().unwrap()), &grads);
        e.train_step(&x, &labels, 0.01).unwrap();
        let e_step = rel_err(&e.flat(Flat::Params).unwrap(), &stepped);
        eprintln!(
            "{name}: {} vs fp32 kernels: logits {e_logits:.1e}, loss {e_loss:.1e}, gradients {e_grads:.1e} (bf16 vs fp32: {e_bf16:.1e}), after a step {e_step:.1e}",
            kernel.name()
        );
        for (what, err, bound) in [
            ("logits", e_logits, 1e-2),
            ("loss", e_loss, 1e-2),
            ("step", e_step, 3e-4),
        ] {
            assert!(err < bound, "{name}: {}: {what} {err:.1e}", kernel.name());
        }
        // Another order of additions moved something: the products did not
        // all run on the fp32 kernels (or the direct fp32 convolutions).
        assert!(
            e_grads > 0.0,
            "{name}: {}: the same gradients, bit for bit",
            kernel.name()
        );
        assert!(
            e_grads < e_bf16,
            "{name}: {}: gradients {e_grads:.1e}, bf16 itself {e_bf16:.1e}",
            kernel.name()
        );
    }
}

#[test]
fn bf16_kernels_compute_the_bf16_step_of_the_fp32_kernels() {
    kernels_against_the_fp32_kernels::<ResNet20<10, f32, Cpu>>("resnet20", 8, 16);
    kernels_against_the_fp32_kernels::<ResNet18<1000, f32, Cpu>>("resnet18", 2, 64);
}

#[test]
fn bf16_results_do_not_depend_on_the_thread_count() {
    let dev = Cpu::seed_from_u64(5);
    let model = ResNet20::<10, f32, Cpu>::build(&dev);
    let (x, labels) = synthetic(32, 16, 10, 2);
    let run = |threads| {
        let mut e = engine(&model, 32, 16, Precision::Bf16, threads);
        let losses: Vec<u32> = (0..3)
            .map(|_| e.train_step(&x, &labels, 0.1).unwrap().to_bits())
            .collect();
        let params = e.flat(Flat::Params).unwrap();
        (
            losses,
            params.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        )
    };
    let (a, b) = (run(1), run(2));
    assert_eq!(a, b, "1 vs 2 threads");
}

fn train(out: &std::path::Path, extra: &[&str]) -> std::process::Output {
    Command::cargo_bin("train-resnet")
        .unwrap()
        .arg("--data")
        .arg(packed_sample())
        .args(["--model", "resnet20", "-b", "8", "--workers", "1", "-q"])
        .args([
            "--max-steps",
            "2",
            "--checkpoint-every",
            "2",
            "--no-final-eval",
        ])
        .args(extra)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap()
}

/// The last checkpoint's `state.json` of the run in `dir`.
fn saved_state(dir: &std::path::Path) -> serde_json::Value {
    let path = dir.join("checkpoints/last/state.json");
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// `train-resnet --resume dir` with `args`.
fn resume(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::cargo_bin("train-resnet")
        .unwrap()
        .arg("--resume")
        .arg(dir)
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn the_trainer_saves_its_precision_and_a_resume_keeps_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = train(dir.path(), &["--precision", "bf16"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(saved_state(dir.path())["config"]["precision"], "bf16");
    // Resumed: still bf16 (the saved config), with more steps.
    let out = resume(dir.path(), &["--max-steps", "3", "-q"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let state = saved_state(dir.path());
    assert_eq!(state["config"]["precision"], "bf16");
    assert_eq!(state["step"], 3);
    // A resume cannot change it.
    let out = resume(dir.path(), &["--precision", "fp32", "-q"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--precision"));
}

#[test]
fn bf16_where_it_cannot_run_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = train(dir.path(), &["--precision", "bf16", "--engine", "dfdx"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("precision"));
    let out = train(dir.path(), &["--precision", "fp16"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("fp16"));
    // A bf16 kernel asked for by name that does not exist, or that this
    // machine cannot run: an error naming it, before any step.
    let mut asks = vec![("bogus", "expected amx, avx512bf16 or fp32".to_string())];
    for k in [Bf16Kernel::Amx, Bf16Kernel::Avx512Bf16] {
        if let Some(why) = k.why_not() {
            asks.push((k.name(), why));
        }
    }
    for (name, why) in asks {
        let run = tempfile::tempdir().unwrap();
        let out = Command::cargo_bin("train-resnet")
            .unwrap()
            .env("RESNET_BF16_KERNEL", name)
            .arg("--data")
            .arg(packed_sample())
            .args(["--model", "resnet20", "-b", "8", "--workers", "1", "-q"])
            .args(["--max-steps", "1", "--precision", "bf16", "--out"])
            .arg(run.path())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && out.status.code() != Some(101),
            "{name}: {:?} {err}",
            out.status
        );
        assert!(
            err.contains(&format!("RESNET_BF16_KERNEL={name:?}"))
                || err.contains(&format!("RESNET_BF16_KERNEL={name}")),
            "{name}: {err}"
        );
        assert!(err.contains(&why), "{name}: {err}");
    }
}

#[test]
fn every_product_operand_but_the_input_is_stored_rounded() {
    use resnet_imagenet::engine::cpu::ops::rounded_at_write;
    use resnet_imagenet::engine::plan::Op;
    use resnet_imagenet::model::resnet::ResNet50;
    let dev = Cpu::seed_from_u64(1);
    let check = |plan: &resnet_imagenet::engine::plan::Plan, name: &str| {
        let r = rounded_at_write(plan);
        for op in &plan.ops {
            if let Op::Conv { x, dy, .. } = op {
                assert!(
                    *x == plan.x || r[*x],
                    "{name}: a conv input is rounded by a pass"
                );
                assert!(
                    r[*dy],
                    "{name}: a conv output gradient is rounded by a pass"
                );
            }
        }
    };
    let m = ResNet50::<1000, f32, Cpu>::build(&dev);
    check(&Engine::lower(&m, 2, (64, 64)).unwrap(), "resnet50");
    let m = ResNet20::<10, f32, Cpu>::build(&dev);
    check(&Engine::lower(&m, 2, (32, 32)).unwrap(), "resnet20");
}

/// Everything a step leaves behind, bit for bit: the loss, the logits,
/// the gradients, and the parameters after a step.
fn step_bits(e: &mut Engine, x: &[f32], labels: &[u32]) -> Vec<u32> {
    let l = e.forward_backward(x, labels).unwrap();
    let mut v = vec![l.to_bits()];
    v.extend(e.logits().unwrap().iter().map(|f| f.to_bits()));
    v.extend(flat(&e.gradients().unwrap()).iter().map(|f| f.to_bits()));
    e.train_step(x, labels, 0.01).unwrap();
    v.extend(e.flat(Flat::Params).unwrap().iter().map(|f| f.to_bits()));
    v
}

/// A bf16 step keeps the activations backward reads in 16 bits: each
/// BatchNorm's input rounded to bf16 (as autocast stores a convolution's
/// output; that rounding is within bf16's bounds of fp32, checked by
/// `a_bf16_step_is_the_fp32_step_within_bf16_rounding`), and the outputs
/// of BatchNorm and max pooling that backward reads, which are bf16 values
/// already: the same bits in half the memory, so the step is the same bit
/// for bit with them in 32 bits or in 16, on the fp32 kernels and on a bf16
/// kernel's model (16-bit windows read in place), with grouped, wide and
/// single-tap convolutions (ResNet-18 at 32x32 ends on a 1x1 map;
/// ResNet-50's 1x1 convolutions). Their f32 buffers then live only in
/// forward, and the arena shrinks at each step. With everything in 16 bits
/// (`Stored16::ALL`) a bf16 kernel also reads each convolution's output
/// gradient from 16 bits, and a BatchNorm output that only such readers
/// take is not written in f32 at all: still the same bits.
fn stored_16_bit<M: Network<Cpu> + Clone>(name: &str, batch: usize, side: usize) {
    use resnet_imagenet::engine::plan::{Elem, Stored16};
    let dev = Cpu::seed_from_u64(8);
    let mut model = M::build(&dev);
    scale_last_bn(&mut model, 0.1);
    let (x, labels) = synthetic(batch, side, M::CLASSES, 4);
    let plan = Engine::lower(&model, batch, (side, side)).unwrap();
    let build = |stored, kernel| {
        let cpu = CpuBackend::with_storage(plan.clone(), 2, Precision::Bf16, kernel, stored);
        Engine::with_backend(&model, Box::new(cpu.unwrap())).unwrap()
    };
    let inputs = Stored16 {
        bn_inputs: true,
        outputs: false,
        gradients: false,
    };
    for kernel in [None, Some(Bf16Kernel::AmxModel)] {
        let which = kernel.map_or("fp32 kernels", |k| k.name());
        let (mut a, mut b) = (build(inputs, kernel), build(Stored16::ALL, kernel));
        assert!(
            step_bits(&mut a, &x, &labels) == step_bits(&mut b, &x, &labels),
            "{name} on {which}: 16-bit outputs changed the step"
        );
        // No f32 activation that has a 16-bit copy is read in backward.
        let p = b.plan();
        let n = p.ops.len();
        let mut copies = 0;
        for op in &p.ops {
            let kept = match op {
                Op::BatchNorm {
                    x,
                    x_bf16,
                    y,
                    y_bf16,
                    ..
                } => vec![(*x, *x_bf16), (*y, *y_bf16)],
                Op::MaxPool { y, y_bf16, .. } => vec![(*y, *y_bf16)],
                _ => continue,
            };
            for (f32_buf, copy) in kept {
                let Some(copy) = copy else { continue };
                copies += 1;
                assert_eq!(p.bufs[copy].elem, Elem::Bf16);
                assert!(
                    p.bufs[f32_buf].life.1 < n,
                    "{name}: {} read in backward",
                    p.bufs[f32_buf].name
                );
            }
        }
        assert!(copies > 0, "{name}: nothing kept in 16 bits");
        // Each 16-bit copy lives until its last reader in backward (op `i`
        // backward at time 2n - 1 - i).
        for (i, op) in p.ops.iter().enumerate() {
            let read = match op {
                Op::Conv { x_bf16, .. } => vec![*x_bf16],
                Op::BatchNorm {
                    x_bf16,
                    y_bf16,
                    relu,
                    ..
                } => vec![*x_bf16, y_bf16.filter(|_| *relu)],
                _ => continue,
            };
            for copy in read.into_iter().flatten() {
                let b = &p.bufs[copy];
                assert!(b.life.1 >= 2 * n - 1 - i, "{name}: {} dies early", b.name);
            }
        }
    }
    let arena = |stored| build(stored, None).plan().arena_bytes();
    let (none, inputs, all) = (arena(Stored16::NONE), arena(inputs), arena(Stored16::ALL));
    eprintln!(
        "{name} b{batch}@{side}: arena in bf16: all f32 {:.1} MiB, BatchNorm inputs in 16 bits {:.1}, outputs too {:.1}",
        none as f64 / 1048576.0,
        inputs as f64 / 1048576.0,
        all as f64 / 1048576.0
    );
    assert!(
        all < inputs && inputs < none,
        "{name}: {none} {inputs} {all}"
    );
    assert!(
        CpuBackend::bytes_needed(&plan, Precision::Bf16, None) - copy_bytes(&plan)
            < CpuBackend::bytes_needed(&plan, Precision::Fp32, None),
        "{name}"
    );
}

#[test]
fn bf16_keeps_activations_for_backward_in_16_bits() {
    use resnet_imagenet::model::resnet::ResNet50;
    stored_16_bit::<ResNet20<10, f32, Cpu>>("resnet20", 8, 16);
    stored_16_bit::<ResNet18<1000, f32, Cpu>>("resnet18", 2, 32);
    stored_16_bit::<ResNet18<1000, f32, Cpu>>("resnet18", 2, 64);
    stored_16_bit::<ResNet50<1000, f32, Cpu>>("resnet50", 2, 32);
}

/// The CIFAR nets' convolutions are mostly small ones (computed image
/// group by image group: on AVX512-BF16 their bf16 step runs them on the
/// direct `VDPBF16PS` kernels, or with `RESNET_DIRECT_BF16=0` on the
/// direct fp32 kernels over rounded operands, faster there than the bf16
/// product); ResNet-18 at 32x32 and ResNet-50 at 224x224 are not (their
/// bf16 step runs on the bf16 kernel).
#[test]
fn small_convolutions_are_told_apart() {
    use resnet_imagenet::model::resnet::ResNet50;
    let dev = Cpu::seed_from_u64(0);
    let r20 = ResNet20::<10, f32, Cpu>::build(&dev);
    assert!(
        Engine::lower(&r20, 8, (32, 32))
            .unwrap()
            .mostly_small_convs()
    );
    let r18 = ResNet18::<1000, f32, Cpu>::build(&dev);
    assert!(
        !Engine::lower(&r18, 8, (32, 32))
            .unwrap()
            .mostly_small_convs()
    );
    let r50 = ResNet50::<1000, f32, Cpu>::build(&dev);
    assert!(
        !Engine::lower(&r50, 1, (224, 224))
            .unwrap()
            .mostly_small_convs()
    );
}
