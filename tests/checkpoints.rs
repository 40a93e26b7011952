//! Checkpoints that cannot be silently wrong: checksums checked by
//! `--resume` and `eval`, the last K kept, and a plan too large for memory
//! refused before anything is allocated.

use crate::util::packed_sample;
use assert_cmd::Command;
use std::path::Path;

/// Trains ResNet-20 on the packed sample for `steps`, checkpointing every 2.
fn train(out: &Path, steps: usize, extra: &[&str]) {
    Command::cargo_bin("train-resnet")
        .unwrap()
        .arg("--data")
        .arg(packed_sample())
        .args(["--model", "resnet20", "-b", "8", "--workers", "1", "-q"])
        .args(["--max-steps", &steps.to_string(), "--checkpoint-every", "2"])
        .args(extra)
        .arg("--out")
        .arg(out)
        .assert()
        .success();
}

fn resume(from: &Path, steps: usize) -> std::process::Output {
    Command::cargo_bin("train-resnet")
        .unwrap()
        .arg("--resume")
        .arg(from)
        .args(["--max-steps", &steps.to_string(), "-q"])
        .output()
        .unwrap()
}

#[test]
fn a_damaged_checkpoint_is_refused_naming_the_file_and_the_newest_intact_one() {
    let run = tempfile::tempdir().unwrap();
    train(run.path(), 4, &[]);
    let ckpts = run.path().join("checkpoints");
    let last = ckpts.join("last");
    let older = ckpts.join("step-00000002");
    assert!(
        older.join("state.json").is_file(),
        "the previous checkpoint is kept"
    );
    let sums = std::fs::read_to_string(last.join("SHA256SUMS")).unwrap();
    assert!(sums.contains("  model.safetensors") && sums.contains("  state.json"));

    // One flipped byte in the middle of the model's weights.
    let model = last.join("model.safetensors");
    let mut bytes = std::fs::read(&model).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x10;
    std::fs::write(&model, &bytes).unwrap();
    for out in [
        resume(run.path(), 6),
        Command::cargo_bin("train-resnet")
            .unwrap()
            .args(["eval", "--checkpoint"])
            .arg(run.path())
            .output()
            .unwrap(),
    ] {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains("model.safetensors is damaged"), "{stderr}");
        assert!(stderr.contains("step-00000002"), "{stderr}");
    }
    // The named one resumes.
    let out = resume(&older, 3);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A truncated momentum file, and a changed number in state.json.
    let run = tempfile::tempdir().unwrap();
    train(run.path(), 2, &[]);
    let last = run.path().join("checkpoints/last");
    let optim = last.join("optim.safetensors");
    let len = std::fs::metadata(&optim).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&optim)
        .unwrap()
        .set_len(len - 100)
        .unwrap();
    let out = resume(run.path(), 3);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("optim.safetensors is damaged"), "{stderr}");
    assert!(stderr.contains("no intact checkpoint"), "{stderr}");

    let run = tempfile::tempdir().unwrap();
    train(run.path(), 2, &[]);
    let state = run.path().join("checkpoints/last/state.json");
    let text = std::fs::read_to_string(&state).unwrap();
    std::fs::write(&state, text.replace("\"step\": 2", "\"step\": 3")).unwrap();
    let out = resume(run.path(), 3);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("state.json is damaged"), "{stderr}");
}

#[test]
fn only_the_last_k_checkpoints_are_kept() {
    let run = tempfile::tempdir().unwrap();
    train(run.path(), 8, &["--keep-checkpoints", "3"]);
    let mut names: Vec<String> = std::fs::read_dir(run.path().join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    // Saved at steps 2, 4, 6, 7 (the end of the 7-step epoch) and 8.
    assert_eq!(names, ["last", "step-00000006", "step-00000007"]);
    let run = tempfile::tempdir().unwrap();
    train(run.path(), 4, &["--keep-checkpoints", "1"]);
    assert_eq!(
        std::fs::read_dir(run.path().join("checkpoints"))
            .unwrap()
            .count(),
        1
    );
}

/// `bench-trainer --model resnet50 --batch-size 100000` died with
/// "memory allocation of 60211200000 bytes failed" (SIGABRT).
#[test]
fn a_plan_larger_than_memory_is_an_error_before_allocating() {
    let out = Command::cargo_bin("bench-trainer")
        .unwrap()
        .args([
            "--model",
            "resnet50",
            "--batch-size",
            "100000",
            "--size",
            "224",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("needs") && stderr.contains("bytes") && stderr.contains("--batch-size"),
        "{stderr}"
    );
    let out = Command::cargo_bin("train-resnet")
        .unwrap()
        .arg("--data")
        .arg(packed_sample())
        .args(["--model", "resnet50", "-b", "100000", "--crop", "224", "-q"])
        .arg("--out")
        .arg(tempfile::tempdir().unwrap().path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("needs") && stderr.contains("bytes"),
        "{stderr}"
    );
}
