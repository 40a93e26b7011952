//! What every binary shares: `-q/--quiet` and `-v/--verbose`, a closed
//! stdout is success, and failures are exit codes with messages, not panics.

use crate::util::sample;
use assert_cmd::Command;
use std::process::Stdio;

const BINARIES: [&str; 5] = [
    "pack-imagenet",
    "bench-pipeline",
    "train-resnet",
    "gpu-check",
    "fashion-mnist-tree",
];

#[test]
fn every_binary_takes_quiet_and_verbose() {
    for bin in BINARIES {
        let out = Command::cargo_bin(bin)
            .unwrap()
            .arg("--help")
            .output()
            .unwrap();
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{bin} --help");
        assert!(
            help.contains("-q, --quiet") && help.contains("-v, --verbose"),
            "{bin}: {help}"
        );
    }
}

/// `train-resnet --list-models | head -0`: the reader is gone before the
/// first line; that is success, not `println!`'s panic.
#[test]
fn a_closed_stdout_is_success_not_a_panic() {
    let exe = assert_cmd::cargo::cargo_bin("train-resnet");
    let mut child = std::process::Command::new(exe)
        .arg("--list-models")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // close the read end
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// Regression (issue 14): a failed `--json` write panicked `gpu-check`.
#[cfg(target_os = "linux")]
#[test]
fn a_failed_json_write_is_an_error_not_a_panic() {
    #[rustfmt::skip]
    let args = [
        "--compare", "", "--time", "resnet18", "--batch-sizes", "2", "--side", "64",
        "--warmup", "0", "--min-steps", "1", "--max-steps", "1", "--json", "/dev/full",
    ];
    let out = Command::cargo_bin("gpu-check")
        .unwrap()
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--json file is incomplete") && !stderr.contains("panicked"),
        "{stderr}"
    );
}

/// `pack-imagenet --decode-only` over the sample, whose non-image fails to
/// decode (its truncated JPEG decodes, as Pillow's does): counted, no panic, exit 0.
#[test]
fn decode_only_counts_the_files_it_cannot_decode() {
    let out = Command::cargo_bin("pack-imagenet")
        .unwrap()
        .args(["--decode-only", "--json", "--threads", "2", "--input"])
        .arg(sample())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(r["images"].as_u64().unwrap() >= 20, "{r}");
    assert!(r["failed"].as_u64().unwrap() >= 1, "{r}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
