//! The engine against the dfdx reference on the same weights and batch:
//! logits and loss, every gradient, the BatchNorm running statistics, every
//! tensor after SGD steps, evaluation; and independence from the thread count.
//!
//! Bounds (relative, norm-wise): logits and loss 1e-5; gradients 1e-4 as one
//! vector, 1e-3 any tensor; every tensor after each of 3 SGD steps taken
//! from the same weights and momentum 1e-4, the momentum 1e-3. The ImageNet nets run
//! with each residual branch's last BatchNorm scale at 0.1: at scale 1 a fresh
//! deep ResNet is chaotic (its gradients move by ~2% when its input moves by
//! 1e-6, `gpu-check`'s sensitivity line), so no float32 implementation could
//! agree more closely than that.

use dfdx::prelude::*;
use resnet_imagenet::engine::Engine;
use resnet_imagenet::measure::parity::{rel_err, synthetic};
use resnet_imagenet::model::cifar::{Plain20, ResNet20};
use resnet_imagenet::model::resnet::*;
use resnet_imagenet::model::state::{named_grads, named_tensors, scale_last_bn};
use resnet_imagenet::model::zoo::{Input, Logits, Network};
use resnet_imagenet::train::sgd::Sgd;
use resnet_imagenet::train::sgd_step;

fn all(v: &[(String, Vec<f32>)]) -> Vec<f32> {
    v.iter().flat_map(|(_, d)| d.iter().copied()).collect()
}

fn worst(a: &[(String, Vec<f32>)], b: &[(String, Vec<f32>)]) -> (f64, String) {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|((pa, va), (pb, vb))| {
            assert_eq!(pa, pb);
            (rel_err(va, vb), pa.clone())
        })
        .fold((0.0, String::new()), |w, e| if e.0 > w.0 { e } else { w })
}

fn tensors<M: Network<Cpu>>(m: &M) -> Vec<(String, Vec<f32>)> {
    named_tensors(m)
        .into_iter()
        .map(|t| (t.path, t.data))
        .collect()
}

/// Checks one model type at `batch` images of `side`.
fn matches_dfdx<M: Network<Cpu> + Clone>(
    name: &str,
    batch: usize,
    side: usize,
    last_bn_scale: Option<f32>,
) {
    let dev = Cpu::seed_from_u64(3);
    let mut reference = M::build(&dev);
    if let Some(v) = last_bn_scale {
        scale_last_bn(&mut reference, v);
    }
    let mut engine = Engine::new(&reference, batch, (side, side), 2).unwrap();
    let (x, labels) = synthetic(batch, side, M::CLASSES, 11);
    let onehot: Vec<f32> = labels
        .iter()
        .flat_map(|&l| (0..M::CLASSES).map(move |j| if j == l as usize { 1.0 } else { 0.0 }))
        .collect();

    // One forward and backward.
    let xt: Input<Cpu> = dev.tensor_from_vec(x.clone(), (batch, side, side, Const::<3>));
    let logits = reference.forward_train(xt.traced(Gradients::leaky()));
    let want_logits = logits.retaped::<NoneTape>().as_vec();
    let y: Logits<Cpu> = dev.tensor_from_vec(onehot, (batch, M::CLASSES));
    let loss = cross_entropy_with_logits_loss(logits, y);
    let want_loss = loss.as_vec()[0];
    let grads = loss.backward();
    let want_grads = named_grads(&reference, &grads);
    let got_loss = engine.forward_backward(&x, &labels).unwrap();
    let mut got_grads = engine.gradients().unwrap();
    got_grads.sort_by(|a, b| a.0.cmp(&b.0));
    let mut want_grads = want_grads;
    want_grads.sort_by(|a, b| a.0.cmp(&b.0));
    let e = rel_err(&engine.logits().unwrap(), &want_logits);
    assert!(e < 1e-5, "{name}: logits differ by {e:.1e}");
    let e = rel_err(&[got_loss], &[want_loss]);
    assert!(e < 1e-5, "{name}: loss {got_loss} vs {want_loss}");
    let e = rel_err(&all(&got_grads), &all(&want_grads));
    let (w, at) = worst(&got_grads, &want_grads);
    eprintln!("{name}: gradients {e:.1e}, worst {w:.1e} at {at}");
    assert!(
        e < 1e-4 && w < 1e-3,
        "{name}: gradients {e:.1e}, worst {w:.1e} at {at}"
    );
    // Running statistics (and the unchanged parameters).
    let mut copy = M::build(&dev);
    engine.write_to(&mut copy).unwrap();
    let (w, at) = worst(&tensors(&copy), &tensors(&reference));
    assert!(w < 1e-5, "{name}: running statistics {w:.1e} at {at}");

    // Three SGD steps, each from the same weights, statistics and momentum
    // on both sides (the engine re-read from dfdx before each), then every
    // tensor and the momentum. Letting the two runs drift apart for three
    // steps measures the network, not the engine: plain-18 here reaches,
    // after one step, weights where one rounding (relative 2^-24) of every
    // weight moves dfdx's own gradient by 1.8% in 2 of 6 draws of the
    // signs (by 1e-5 in the others), so two float32 implementations that
    // sum in different orders part there by 1e-4..3e-4 after 3 steps (the
    // engine's two conv paths against each other as well as against dfdx).
    let mut sgd = Sgd::new(0.9, 1e-4);
    for step in 0..3 {
        engine.read_from(&reference).unwrap();
        engine.set_momentum(&sgd.buffers()).unwrap();
        sgd_step(
            &mut reference,
            &mut sgd,
            &dev,
            &x,
            (batch, side, side),
            &labels,
            0.01,
        );
        engine.train_step(&x, &labels, 0.01).unwrap();
        engine.write_to(&mut copy).unwrap();
        let (got, want) = (tensors(&copy), tensors(&reference));
        let e = rel_err(&all(&got), &all(&want));
        let (w, at) = worst(&got, &want);
        assert!(
            e < 1e-4,
            "{name}: step {step} from the same weights: {e:.1e} (worst {w:.1e} at {at})"
        );
        let got: Vec<(String, Vec<f32>)> = engine.momentum().unwrap().into_iter().collect();
        let want: Vec<(String, Vec<f32>)> = sgd.buffers().into_iter().collect();
        let m = rel_err(&all(&got), &all(&want));
        assert!(m < 1e-3, "{name}: step {step}: momentum differs by {m:.1e}");
        eprintln!("{name}: step {step}: tensors {e:.1e}, momentum {m:.1e}");
    }

    // Evaluation (running statistics) on the same weights: the engine's,
    // copied into dfdx (eval after training is where small differences in
    // the weights grow most: ResNet-34C's eval logits move ~1e-2 from the
    // ~1e-4 the 3 steps leave).
    let xt: Input<Cpu> = dev.tensor_from_vec(x.clone(), (batch, side, side, Const::<3>));
    let want = copy.forward_eval(xt).as_vec();
    let e = rel_err(&engine.eval(&x).unwrap(), &want);
    assert!(e < 1e-4, "{name}: eval logits differ by {e:.1e}");
}

#[test]
fn cifar_resnet20_and_plain20_match_dfdx() {
    matches_dfdx::<ResNet20<10, f32, Cpu>>("resnet20", 4, 16, None);
    matches_dfdx::<Plain20<10, f32, Cpu>>("plain20", 4, 16, None);
    // 17 images: 16 conv groups of 2, the last 7 empty.
    matches_dfdx::<ResNet20<10, f32, Cpu>>("resnet20 b17", 17, 8, None);
}

#[test]
fn basic_block_nets_match_dfdx() {
    let s = Some(0.1);
    matches_dfdx::<ResNet18<10, f32, Cpu>>("resnet18", 4, 64, s);
    // At 32x32 the last stage's maps are 1x1: its 3x3 convs run on the
    // centre tap alone (`ConvGeom::single_tap`).
    // (At batch 4 BatchNorm over 4 pixels of a 1x1 map is too
    // ill-conditioned to compare two float orders; batch 16 is not.)
    matches_dfdx::<ResNet18<10, f32, Cpu>>("resnet18 at 32", 16, 32, s);
    matches_dfdx::<ResNet34A<10, f32, Cpu>>("resnet34a", 4, 64, s);
    matches_dfdx::<ResNet34C<10, f32, Cpu>>("resnet34c", 4, 64, s);
    matches_dfdx::<Plain18<10, f32, Cpu>>("plain18", 4, 64, s);
}

#[test]
fn bottleneck_nets_match_dfdx() {
    let s = Some(0.1);
    matches_dfdx::<ResNet50<10, f32, Cpu>>("resnet50", 2, 64, s);
    matches_dfdx::<ResNet50V15<10, f32, Cpu>>("resnet50-v1.5", 2, 64, s);
    // The last stage's 3x3 convs on their centre tap again (batch 8: see
    // ResNet-18 at 32 above).
    matches_dfdx::<ResNet50V15<10, f32, Cpu>>("resnet50-v1.5 at 32", 8, 32, s);
}

/// The engine's momentum is the dfdx trainer's SGD buffers (same paths,
/// layout and values), and a second engine given the first one's weights
/// and momentum continues with the same bits (what a resume does).
#[test]
fn momentum_matches_sgd_and_restores_exactly() {
    let dev = Cpu::seed_from_u64(8);
    let mut reference = ResNet20::<10, f32, Cpu>::build(&dev);
    let (x, labels) = synthetic(4, 16, 10, 4);
    let mut a = Engine::new(&reference, 4, (16, 16), 2).unwrap();
    assert!(
        a.momentum().unwrap().is_empty(),
        "no momentum before the first step"
    );
    let mut sgd = Sgd::new(0.9, 1e-4);
    for _ in 0..2 {
        sgd_step(
            &mut reference,
            &mut sgd,
            &dev,
            &x,
            (4, 16, 16),
            &labels,
            0.01,
        );
        a.train_step(&x, &labels, 0.01).unwrap();
    }
    let (got, want) = (a.momentum().unwrap(), sgd.buffers());
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    let got: Vec<(String, Vec<f32>)> = got.into_iter().collect();
    let want: Vec<(String, Vec<f32>)> = want.into_iter().collect();
    let e = rel_err(&all(&got), &all(&want));
    assert!(e < 1e-4, "momentum differs by {e:.1e}");

    let mut m = reference.clone();
    a.write_to(&mut m).unwrap();
    let mut b = Engine::new(&m, 4, (16, 16), 2).unwrap();
    b.set_momentum(&a.momentum().unwrap()).unwrap();
    for _ in 0..2 {
        let (la, lb) = (
            a.train_step(&x, &labels, 0.01).unwrap(),
            b.train_step(&x, &labels, 0.01).unwrap(),
        );
        assert_eq!(la.to_bits(), lb.to_bits());
    }
    let (mut ma, mut mb) = (m.clone(), m);
    a.write_to(&mut ma).unwrap();
    b.write_to(&mut mb).unwrap();
    assert_eq!(all(&tensors(&ma)), all(&tensors(&mb)));

    // Momentum for some parameters only is refused, not half-restored.
    let mut part = a.momentum().unwrap();
    let first = part.keys().next().unwrap().clone();
    part.remove(&first);
    let e = b.set_momentum(&part).unwrap_err().to_string();
    assert!(e.contains(&first), "{e}");
}

/// Evaluation of any number of images: chunks of the plan's batch, the
/// last one padded, each image's logits those of a full-batch pass.
#[test]
fn eval_rows_runs_any_number_of_images() {
    let dev = Cpu::seed_from_u64(9);
    let model = ResNet20::<10, f32, Cpu>::build(&dev);
    let (x, _) = synthetic(4, 16, 10, 5);
    let mut e = Engine::new(&model, 4, (16, 16), 2).unwrap();
    let full = e.eval(&x).unwrap().to_vec();
    // 7 images: the 4, then 3 of them again (a padded chunk).
    let per = 16 * 16 * 3;
    let seven: Vec<f32> = x.iter().chain(&x[..3 * per]).copied().collect();
    let got = e.eval_rows(&seven, 7).unwrap();
    assert_eq!(got.len(), 70);
    assert_eq!(&got[..40], &full[..]);
    assert_eq!(&got[40..], &full[..30]);
    assert!(e.eval_rows(&seven[1..], 7).is_err());
}

/// The same steps on 1 and on 2 threads give the same bits (32 images of
/// 16x16: the first stage's weight gradients are split in two chunks and
/// its BatchNorm sums in eight).
#[test]
fn results_do_not_depend_on_the_thread_count() {
    let dev = Cpu::seed_from_u64(5);
    let model = ResNet20::<10, f32, Cpu>::build(&dev);
    let (x, labels) = synthetic(32, 16, 10, 2);
    let run = |threads| {
        let mut e = Engine::new(&model, 32, (16, 16), threads).unwrap();
        let losses: Vec<u32> = (0..3)
            .map(|_| e.train_step(&x, &labels, 0.1).unwrap().to_bits())
            .collect();
        let mut m = model.clone();
        e.write_to(&mut m).unwrap();
        (
            losses,
            all(&tensors(&m))
                .iter()
                .map(|v| v.to_bits())
                .collect::<Vec<_>>(),
        )
    };
    let (a, b, c) = (run(1), run(2), run(2));
    assert_eq!(a, b, "1 vs 2 threads");
    assert_eq!(b, c, "2 threads twice");
}

#[test]
fn bad_inputs_are_errors() {
    let dev = Cpu::seed_from_u64(5);
    let model = ResNet20::<10, f32, Cpu>::build(&dev);
    let mut e = Engine::new(&model, 2, (8, 8), 1).unwrap();
    let x = vec![0.0; 2 * 8 * 8 * 3];
    assert!(
        e.train_step(&x[1..], &[0, 1], 0.1)
            .unwrap_err()
            .to_string()
            .contains("2 images of 8x8x3")
    );
    assert!(
        e.train_step(&x, &[0, 10], 0.1)
            .unwrap_err()
            .to_string()
            .contains("label 10 of 10")
    );
    assert!(
        e.train_step(&x, &[0], 0.1)
            .unwrap_err()
            .to_string()
            .contains("1 labels")
    );
    // One image of 4x4: the last stage's BatchNorm sees one value per channel.
    let err = Engine::new(&model, 1, (4, 4), 1).unwrap_err();
    assert!(
        err.to_string().contains("training needs at least 2"),
        "{err}"
    );
}

/// What the CUDA backend runs: the plan without the CPU's convolution
/// scratch, its buffers placed anew, never two live ones in one place.
#[test]
fn a_plan_without_scratch_keeps_every_buffer_apart() {
    use resnet_imagenet::engine::plan::Op;
    let dev = Cpu::default();
    let model = ResNet18::<10, f32, Cpu>::build(&dev);
    let e = Engine::new(&model, 2, (64, 64), 1).unwrap();
    let full = e.plan();
    let p = full.without_scratch();
    assert!(
        p.arena_len < full.arena_len,
        "{} vs {}",
        p.arena_len,
        full.arena_len
    );
    assert_eq!(p.ops.len(), full.ops.len());
    for op in &p.ops {
        if let Op::Conv { cols, bcols, .. } = op {
            assert!(cols.is_none() && bcols.is_none());
        }
    }
    let live: Vec<_> = p.bufs.iter().filter(|b| b.life.0 <= b.life.1).collect();
    for (i, a) in live.iter().enumerate() {
        assert!(
            a.offset + a.len <= p.arena_len,
            "{} outside the arena",
            a.name
        );
        for b in &live[i + 1..] {
            let together = a.life.0 <= b.life.1 && b.life.0 <= a.life.1;
            let shared = a.offset < b.offset + b.len && b.offset < a.offset + a.len;
            assert!(!(together && shared), "{} and {} overlap", a.name, b.name);
        }
    }
    // Every buffer the ops still use has a place; the scratch has none.
    let scratch = full
        .ops
        .iter()
        .filter_map(|op| match op {
            Op::Conv { cols, bcols, .. } => Some([*cols, *bcols]),
            _ => None,
        })
        .flatten()
        .flatten()
        .collect::<Vec<_>>();
    for id in scratch {
        let b = &p.bufs[id];
        assert!(b.life.0 > b.life.1, "scratch {} still placed", b.name);
    }
}
