//! Regressions of issue 15 ("nothing silently wrong"): each of these gave a
//! wrong result with no error before its fix.

use crate::util::{copy_tree, packed_sample, sample};
use assert_cmd::Command;
use resnet_imagenet::pack::{self, PackOptions};
use resnet_imagenet::progress::ProgressMode;
use resnet_imagenet::reader::{Dataset, verify_dataset};
use std::path::Path;

fn opts() -> PackOptions {
    PackOptions {
        threads: 2,
        mean_size: 8,
        progress: ProgressMode::Hidden,
        ..PackOptions::default()
    }
}

/// A two-class tree of sample photos.
fn small_tree(root: &Path) {
    for (class, src) in [("n02486410", "n02486410_1"), ("n07747607", "n07747607_1")] {
        let d = root.join(class);
        std::fs::create_dir_all(&d).unwrap();
        let from = sample()
            .join("train")
            .join(class)
            .join(format!("{src}.JPEG"));
        std::fs::copy(&from, d.join("a.JPEG")).unwrap();
        std::fs::copy(&from, d.join("b.JPEG")).unwrap();
    }
}

fn edit_manifest(split: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = split.join("manifest.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(&path, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
}

/// `--verify` said "all good" when the manifest's record count or class
/// list was wrong, and train-resnet then panicked on a label past the list.
#[test]
fn a_manifest_that_disagrees_with_its_shards_is_found_and_refused() {
    type Edit = fn(&mut serde_json::Value);
    let cases: [(&str, Edit); 3] = [
        ("says 57 records", |v| v["records"] = 57.into()),
        ("label outside 0..10", |v| {
            let c = v["classes"].as_array_mut().unwrap();
            c.truncate(10);
            v["class_counts"].as_array_mut().unwrap().truncate(10);
        }),
        ("class counts differ", |v| {
            v["class_counts"][0] = 99.into();
        }),
    ];
    for (want, edit) in cases {
        let dir = tempfile::tempdir().unwrap();
        copy_tree(packed_sample(), dir.path());
        edit_manifest(&dir.path().join("train"), edit);
        let report = verify_dataset(dir.path()).unwrap();
        assert!(
            report.problems.iter().any(|p| p.detail.contains(want)),
            "{want}: {:?}",
            report.problems
        );
        let e = Dataset::open(dir.path().join("train"))
            .unwrap_err()
            .to_string();
        assert!(e.contains(want) && e.contains("manifest.json"), "{e}");
        Command::cargo_bin("pack-imagenet")
            .unwrap()
            .arg("--verify")
            .arg(dir.path())
            .assert()
            .code(1)
            .stderr(predicates::str::contains(want));
        // The trainer stops with the reason before its first step, no panic.
        Command::cargo_bin("train-resnet")
            .unwrap()
            .arg("--data")
            .arg(dir.path())
            .args(["--model", "resnet20", "-b", "8", "--epochs", "1", "--quiet"])
            .arg("--out")
            .arg(dir.path().join("run"))
            .assert()
            .code(2)
            .stderr(predicates::str::contains(want));
    }
}

/// `ln -s . loop` inside a class folder packed the same image 41 times.
#[cfg(unix)]
#[test]
fn a_symlink_loop_adds_nothing_and_a_linked_folder_counts_once() {
    let input = tempfile::tempdir().unwrap();
    small_tree(input.path());
    let class = input.path().join("n02486410");
    std::os::unix::fs::symlink(".", class.join("loop")).unwrap();
    std::os::unix::fs::symlink(&class, class.join("again")).unwrap();
    let out = tempfile::tempdir().unwrap();
    let s = pack::pack(input.path(), out.path(), &opts()).unwrap();
    assert_eq!((s[0].files, s[0].packed), (4, 4), "{:?}", s[0].skipped);
}

/// An output folder inside the input tree was packed as input on the
/// next run (its shards counted as skipped "not an image" files).
#[test]
fn an_output_folder_inside_the_input_is_never_input() {
    let input = tempfile::tempdir().unwrap();
    small_tree(input.path());
    // Inside a class folder, and as a would-be class folder of its own.
    for out in [
        input.path().join("n02486410/packed"),
        input.path().join("packed"),
    ] {
        for _ in 0..2 {
            let s = pack::pack(input.path(), &out, &opts()).unwrap();
            assert_eq!(s[0].files, 4, "{}: {:?}", out.display(), s[0].skipped);
            assert!(s[0].skipped.is_empty());
            assert_eq!(Dataset::open(out.join("train")).unwrap().num_classes(), 2);
        }
        std::fs::remove_dir_all(&out).unwrap();
    }
}

/// Two non-UTF-8 names showed as the same name; a name with a newline
/// split its row of skipped.tsv.
#[cfg(target_os = "linux")]
#[test]
fn odd_file_names_are_kept_exactly_and_the_report_stays_one_row_each() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let input = tempfile::tempdir().unwrap();
    small_tree(input.path());
    let class = input.path().join("n07747607");
    for name in [
        &b"bad\xff.JPEG"[..],
        b"bad\xfe.JPEG",
        b"two\nlines\tand tab.txt",
    ] {
        std::fs::write(class.join(OsStr::from_bytes(name)), b"not an image").unwrap();
    }
    let out = tempfile::tempdir().unwrap();
    let s = pack::pack(input.path(), out.path(), &opts()).unwrap();
    let mut names: Vec<&str> = s[0].skipped.iter().map(|k| k.path.as_str()).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "n07747607/bad\\xFE.JPEG",
            "n07747607/bad\\xFF.JPEG",
            "n07747607/two\nlines\tand tab.txt"
        ]
    );
    let tsv = std::fs::read_to_string(out.path().join("train/skipped.tsv")).unwrap();
    let rows: Vec<&str> = tsv.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(rows.len(), 3, "{tsv}");
    assert!(rows.iter().all(|r| r.split('\t').count() == 2), "{tsv}");
    assert!(
        tsv.contains("n07747607/two\\nlines\\tand tab.txt\t"),
        "{tsv}"
    );
    assert!(tsv.contains("n07747607/bad\\\\xFF.JPEG\t"), "{tsv}");
}

/// `--batch-size 1` at crop 32 panicked in BatchNorm (ResNet-18's last
/// stage is 1x1 there: one value per channel); now a setting error.
#[test]
fn a_batch_batchnorm_cannot_normalise_is_refused() {
    let out = Command::cargo_bin("train-resnet")
        .unwrap()
        .arg("--data")
        .arg(packed_sample())
        .args([
            "--model",
            "resnet18",
            "-b",
            "1",
            "--crop",
            "32",
            "--max-steps",
            "1",
        ])
        .args(["--no-final-eval", "-q", "--out"])
        .arg(tempfile::tempdir().unwrap().path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("batch size 1") && stderr.contains("BatchNorm"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// `--batch-size 0` trained with lr 0 and `--lr=-1` to a loss of 498, both
/// exiting 0; `pack-imagenet --threads 0` silently used one thread.
#[test]
fn nonsense_numbers_are_refused_by_the_command_line() {
    for args in [
        &["--batch-size", "0"][..],
        &["--lr=-1"],
        &["--lr", "0"],
        &["--epochs", "0"],
        &["--workers", "0"],
        &["--momentum", "1.5"],
        &["--weight-decay=-0.1"],
    ] {
        Command::cargo_bin("train-resnet")
            .unwrap()
            .args(["--data", "/nonexistent", "--model", "resnet20"])
            .args(args)
            .assert()
            .code(2)
            .stderr(predicates::str::contains(
                args[0].split('=').next().unwrap(),
            ));
    }
    for args in [
        &["--threads", "0"][..],
        &["--readers", "0"],
        &["--shard-mib", "0"],
        &["--mean-size", "0"],
    ] {
        Command::cargo_bin("pack-imagenet")
            .unwrap()
            .args(["--input", "/nonexistent", "--output", "/nonexistent"])
            .args(args)
            .assert()
            .code(2)
            .stderr(predicates::str::contains(args[0]));
    }
}

/// The library refuses them too, for callers that do not go through the CLI.
#[test]
fn a_train_config_with_nonsense_numbers_is_an_error() {
    use resnet_imagenet::train::TrainConfig;
    let good = TrainConfig::paper(packed_sample(), "resnet20");
    assert!(good.validate().is_ok());
    for (edit, want) in [
        (
            (|c: &mut TrainConfig| c.batch_size = 0) as fn(&mut TrainConfig),
            "batch size",
        ),
        (|c| c.lr = -1.0, "lr"),
        (|c| c.lr = f64::NAN, "lr"),
        (|c| c.momentum = 1.0, "momentum"),
        (|c| c.scale = (300, 200), "scale"),
    ] {
        let mut c = good.clone();
        edit(&mut c);
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains(want), "{e}");
    }
}
