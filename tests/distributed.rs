//! Data-parallel training over MPI (feature `mpi`): each test starts a job
//! with Debian's OpenMPI `mpirun` under a time limit, so a hang fails the
//! test instead of the suite.

use crate::util::packed_sample;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// `mpirun` for `np` local ranks, as root and beyond the core count.
fn mpirun() -> Command {
    let mut c = Command::new("timeout");
    c.args([
        "-k",
        "5",
        "120",
        "mpirun",
        "--allow-run-as-root",
        "--oversubscribe",
    ]);
    c.env("RESNET_THREADS", "1");
    c
}

fn exe(name: &str) -> PathBuf {
    assert_cmd::cargo::cargo_bin(name)
}

/// `train-resnet` arguments for ResNet-20 on the packed sample.
fn train_args(out: &Path, steps: usize, batch: usize) -> Vec<String> {
    let mut a: Vec<String> = ["--data"].map(String::from).to_vec();
    a.push(packed_sample().display().to_string());
    a.extend(["--model", "resnet20", "--workers", "1", "-q", "--max-steps"].map(String::from));
    a.push(steps.to_string());
    a.push("--batch-size".into());
    a.push(batch.to_string());
    a.push("--out".into());
    a.push(out.display().to_string());
    a
}

fn train(np: usize, args: &[String]) -> Output {
    mpirun()
        .args(["-np", &np.to_string()])
        .arg(exe("train-resnet"))
        .args(args)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn log(out: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out.join("log.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The command: two ranks on the bundled sample, and the
/// parameter checksums of both ranks in the log, equal.
#[test]
fn two_ranks_train_the_sample_with_equal_parameters() {
    let run = tempfile::tempdir().unwrap();
    let o = train(2, &train_args(run.path(), 4, 8));
    assert!(o.status.success(), "{}", text(&o));
    let log = log(run.path());
    let sums: Vec<&serde_json::Value> = log
        .iter()
        .filter(|r| r["type"] == "checkpoint")
        .map(|r| &r["param_checksums"])
        .collect();
    assert!(!sums.is_empty());
    for s in sums {
        let s = s.as_array().unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0], s[1]);
    }
    assert_eq!(log.iter().filter(|r| r["type"] == "step").count(), 4);
    let st: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(run.path().join("checkpoints/last/state.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(st["world_size"], 2);
}

/// The child side of the gradient test, run by `mpirun` on this test
/// binary: each rank steps on its half of a fixed batch and writes the
/// averaged gradients of step 1 and the parameters after step 3.
#[test]
fn mpi_child_data_parallel_steps() {
    let Ok(dir) = std::env::var("RESNET_MPI_TEST_OUT") else {
        return; // Only as a child of the test below.
    };
    use resnet_imagenet::dist::{Communicator, mpi::Mpi};
    use resnet_imagenet::engine::Engine;
    let mut comm = Mpi::init().unwrap();
    let (rank, world) = (comm.rank(), comm.world_size());
    let (engine, x, labels) = reference_setup();
    let mut e = engine;
    let per = x.len() / 8;
    let share = |r: usize| {
        (
            &x[r * 4 * per..(r + 1) * 4 * per],
            &labels[r * 4..(r + 1) * 4],
        )
    };
    let (xs, ls) = share(rank);
    for step in 0..3 {
        let s = e.train_step_on(xs, ls, 0.1, &mut comm).unwrap();
        assert!(s.all_finite);
        if step == 0 {
            let g = e.averaged_gradients(world).unwrap();
            std::fs::write(
                Path::new(&dir).join(format!("grads{rank}.json")),
                serde_json::to_vec(&g).unwrap(),
            )
            .unwrap();
        }
    }
    let params: Vec<u8> = e
        .parameters()
        .unwrap()
        .iter()
        .flat_map(|(_, v)| v.iter().flat_map(|f| f.to_le_bytes()))
        .collect();
    std::fs::write(Path::new(&dir).join(format!("params{rank}.bin")), params).unwrap();
    let _: &Engine = &e;
}

/// ResNet-20 planned for 4 images of 32x32 (one rank's share of 8), on
/// one thread, and the 8 images.
fn reference_setup() -> (resnet_imagenet::engine::Engine, Vec<f32>, Vec<u32>) {
    use dfdx::prelude::*;
    use resnet_imagenet::model::cifar::ResNet20;
    let dev = resnet_imagenet::train::cpu_device(3);
    let m: ResNet20<10, f32, Cpu> = BuildModule::build(&dev);
    let e = resnet_imagenet::engine::Engine::new(&m, 4, (32, 32), 1).unwrap();
    let (x, labels) = resnet_imagenet::measure::parity::synthetic(8, 32, 10, 11);
    (e, x, labels)
}

/// Two ranks' averaged gradients equal one process computing both shares
/// one after the other and averaging them (1e-6), and after 3 steps both
/// ranks hold the same parameters, bit for bit.
#[test]
fn two_rank_gradients_equal_the_average_of_the_shares() {
    let dir = tempfile::tempdir().unwrap();
    let me = std::env::current_exe().unwrap();
    let o = mpirun()
        .args(["-np", "2", "-x", "RESNET_MPI_TEST_OUT"])
        .env("RESNET_MPI_TEST_OUT", dir.path())
        .arg(&me)
        .args(["--exact", "distributed::mpi_child_data_parallel_steps"])
        .args(["--nocapture", "--test-threads", "1"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));

    let (mut e, x, labels) = reference_setup();
    let per = x.len() / 8;
    let mut sum: Vec<(String, Vec<f32>)> = Vec::new();
    for r in 0..2 {
        e.forward_backward(
            &x[r * 4 * per..(r + 1) * 4 * per],
            &labels[r * 4..(r + 1) * 4],
        )
        .unwrap();
        let g = e.gradients().unwrap();
        if sum.is_empty() {
            sum = g;
        } else {
            for ((_, a), (_, b)) in sum.iter_mut().zip(&g) {
                for (a, b) in a.iter_mut().zip(b) {
                    *a += b;
                }
            }
        }
    }
    for rank in 0..2 {
        let got: Vec<(String, Vec<f32>)> = serde_json::from_slice(
            &std::fs::read(dir.path().join(format!("grads{rank}.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(got.len(), sum.len());
        for ((name, want), (gname, got)) in sum.iter().zip(&got) {
            assert_eq!(name, gname);
            for (w, g) in want.iter().zip(got) {
                let w = w * 0.5;
                assert!(
                    (w - g).abs() <= 1e-6 * w.abs().max(1.0),
                    "{name}: rank {rank} {g} vs the shares' average {w}"
                );
            }
        }
    }
    let p0 = std::fs::read(dir.path().join("params0.bin")).unwrap();
    let p1 = std::fs::read(dir.path().join("params1.bin")).unwrap();
    assert!(!p0.is_empty());
    assert!(p0 == p1, "the ranks' parameters differ after 3 steps");
}

/// Resumed with the same world size, a 2-rank run continues exactly (the
/// same losses, bit for bit, as the uninterrupted run); with another, it
/// is refused with an error that says so.
#[test]
fn a_two_rank_run_resumes_exactly_and_only_on_two_ranks() {
    let whole = tempfile::tempdir().unwrap();
    let o = train(2, &train_args(whole.path(), 9, 8));
    assert!(o.status.success(), "{}", text(&o));
    let split = tempfile::tempdir().unwrap();
    let o = train(2, &train_args(split.path(), 4, 8));
    assert!(o.status.success(), "{}", text(&o));
    let resume = |np: usize| {
        train(
            np,
            &[
                "--resume".to_string(),
                split.path().display().to_string(),
                "--max-steps".into(),
                "9".into(),
                "-q".into(),
            ],
        )
    };
    let o = resume(1);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("2 rank(s), this one has 1"),
        "{}",
        text(&o)
    );
    let o = resume(2);
    assert!(o.status.success(), "{}", text(&o));
    let losses = |d: &Path| -> Vec<(u64, String)> {
        log(d)
            .iter()
            .filter(|r| r["type"] == "step")
            .map(|r| (r["step"].as_u64().unwrap(), r["loss"].to_string()))
            .collect()
    };
    let (a, b) = (losses(whole.path()), losses(split.path()));
    assert_eq!(a.len(), 9);
    assert_eq!(
        a, b,
        "the resumed run's losses differ from the uninterrupted run's"
    );
}

/// Ranks started with different settings fail at start, naming the
/// difference; a global batch that does not divide among the ranks is an
/// error.
#[test]
fn ranks_started_differently_fail_naming_the_difference() {
    let run = tempfile::tempdir().unwrap();
    let mut other = train_args(run.path(), 2, 8);
    let i = other.iter().position(|a| a == "resnet20").unwrap();
    other[i] = "resnet32".into();
    let o = mpirun()
        .args(["-np", "1"])
        .arg(exe("train-resnet"))
        .args(train_args(run.path(), 2, 8))
        .args([":", "-np", "1"])
        .arg(exe("train-resnet"))
        .args(&other)
        .output()
        .unwrap();
    assert_ne!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        text(&o).contains(
            "rank 1 differs from rank 0: model is resnet32 on rank 1, resnet20 on rank 0"
        ),
        "{}",
        text(&o)
    );
    let o = train(2, &train_args(run.path(), 2, 9));
    assert_ne!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        text(&o).contains("--batch-size 9 does not divide among 2 ranks"),
        "{}",
        text(&o)
    );
}

/// A rank that panics ends the job: every rank exits (no hang), with a
/// message naming the rank.
#[test]
fn a_rank_that_panics_ends_the_job() {
    let run = tempfile::tempdir().unwrap();
    let mut args = train_args(run.path(), 6, 8);
    args.extend(["--debug-panic-at-step".into(), "3".into()]);
    let t0 = Instant::now();
    let o = train(2, &args);
    assert!(t0.elapsed() < Duration::from_secs(60));
    assert_ne!(o.status.code(), Some(0), "{}", text(&o));
    assert_ne!(o.status.code(), Some(124), "timed out: {}", text(&o));
    assert!(text(&o).contains("rank 1 of 2 panicked"), "{}", text(&o));
}

/// A NaN loss on one rank stops every rank
/// before backward, with the training-problem exit code; every rank names
/// the NaN (OpenMPI's output forwarding lost one rank's last line here
/// once in ~10 runs, when its `show_help` failed with "Out of resource").
#[test]
fn a_nan_loss_on_one_rank_stops_every_rank() {
    let run = tempfile::tempdir().unwrap();
    let mut args = train_args(run.path(), 6, 8);
    args.extend(["--debug-nan-at-step".into(), "3".into()]);
    let o = train(2, &args);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("loss is NaN at step 3"), "{}", text(&o));
}

/// `kill -9` of one rank ends every other rank within 60 s with a message
/// naming it, and the last checkpoint resumes.
#[test]
fn killing_a_rank_ends_the_job_and_the_last_checkpoint_resumes() {
    let run = tempfile::tempdir().unwrap();
    let mut args = train_args(run.path(), 100_000, 8);
    args.extend(["--checkpoint-every".into(), "2".into()]);
    let child = mpirun()
        .args(["-np", "2"])
        .arg(exe("train-resnet"))
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for a checkpoint to exist.
    let state = run.path().join("checkpoints/last/state.json");
    let t0 = Instant::now();
    while !state.is_file() {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no checkpoint after 60 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Rank 1: the process whose environment says so.
    let rank1 = (0..200)
        .find_map(|_| {
            let pid = std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
                let env = std::fs::read(e.path().join("environ")).ok()?;
                let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
                let ours =
                    String::from_utf8_lossy(&cmd).contains(&run.path().display().to_string());
                let rank1 = String::from_utf8_lossy(&env).contains("OMPI_COMM_WORLD_RANK=1\0");
                (ours && rank1).then(|| e.file_name().to_string_lossy().into_owned())
            });
            if pid.is_none() {
                std::thread::sleep(Duration::from_millis(50));
            }
            pid
        })
        .expect("rank 1's process");
    let t_kill = Instant::now();
    assert!(
        Command::new("kill")
            .args(["-9", &rank1])
            .status()
            .unwrap()
            .success()
    );
    let o = child.wait_with_output().unwrap();
    assert!(t_kill.elapsed() < Duration::from_secs(60));
    assert_ne!(o.status.code(), Some(0));
    assert_ne!(o.status.code(), Some(124), "timed out: {}", text(&o));
    assert!(text(&o).contains("rank 1"), "{}", text(&o));
    // The last checkpoint is intact and resumes on two ranks.
    let st: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    let step = st["step"].as_u64().unwrap();
    let o = train(
        2,
        &[
            "--resume".to_string(),
            run.path().display().to_string(),
            "--max-steps".into(),
            (step + 2).to_string(),
            "-q".into(),
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
}

/// The final ten-crop and multi-scale test of an ImageNet net trained on
/// two ranks runs split across them, the counts summed: the same images
/// and the same results as one process evaluating the checkpoint.
#[test]
fn the_final_test_is_split_across_ranks_and_summed() {
    let run = tempfile::tempdir().unwrap();
    let mut args = train_args(run.path(), 1000, 16);
    let m = args.iter().position(|a| a == "resnet20").unwrap();
    args[m] = "resnet18".into();
    args.extend(["--crop", "32", "--epochs", "1"].map(String::from));
    let o = train(2, &args);
    assert!(o.status.success(), "{}", text(&o));
    let log = log(run.path());
    let last = log.last().unwrap();
    assert_eq!(last["type"], "final", "{last}");
    let job = resnet_imagenet::train::prepare_eval(run.path(), None, None, 1).unwrap();
    let one = resnet_imagenet::train::evaluate_checkpoint(job).unwrap();
    let (ten, ms) = (one.ten_crop.unwrap(), one.multiscale.unwrap());
    assert_eq!(last["images"], ten.n, "every validation image once");
    for (key, want) in [
        ("ten_crop_top1_error", ten.top1_error()),
        ("ten_crop_top5_error", ten.top5_error()),
        ("multiscale_top1_error", ms.top1_error()),
        ("multiscale_top5_error", ms.top5_error()),
    ] {
        let got = last[key].as_f64().unwrap();
        assert!(
            (got - want).abs() < 1e-9,
            "{key}: 2 ranks {got}, one process {want}"
        );
    }
}
