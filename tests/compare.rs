//! The plain-vs-residual comparison on the bundled sample: two tiny runs,
//! the figure and the table, and a second call that resumes instead of
//! retraining.

use crate::util::packed_sample;
use assert_cmd::Command;
use resnet_imagenet::progress::ProgressMode;
use resnet_imagenet::train::compare::{Comparison, TEN_CROP_FILE};

#[test]
fn the_comparison_trains_both_kinds_then_draws_and_tabulates_them() {
    let dir = tempfile::tempdir().unwrap();
    let c = Comparison {
        data: packed_sample().to_owned(),
        out: dir.path().to_owned(),
        depths: vec![20],
        epochs: 1,
        batch_size: 16,
        lr: 0.05,
        seed: 0,
        workers: 2,
        max_steps: None,
        checkpoint_every: 2,
        report_only: false,
    };
    let r = c.run(ProgressMode::Hidden).unwrap();
    let names: Vec<&str> = r.iter().map(|r| r.model.as_str()).collect();
    assert_eq!(names, ["plain20", "resnet20"]);
    for n in &r {
        assert_eq!((n.epochs, n.steps), (1, 3), "{}", n.model);
        assert!(n.test_error.is_some() && n.ten_crop_test_error.is_some());
        assert!(n.train_error_last_epoch.is_some() && n.images_per_sec > 0.0);
    }
    let png = image::open(dir.path().join("degradation.png")).unwrap();
    assert_eq!((png.width(), png.height()), (1800, 600));
    let md = std::fs::read_to_string(dir.path().join("degradation.md")).unwrap();
    assert!(md.contains("| plain20 | 1 | 3 |"), "{md}");
    assert!(
        md.contains("| resnet20 | 1 | 3 |") && md.contains("8.75"),
        "{md}"
    );

    // Called again: every run is finished, so nothing trains, and the
    // ten-crop test kept beside each log is read, not run again.
    let kept = dir.path().join("resnet20").join(TEN_CROP_FILE);
    let json = std::fs::read_to_string(&kept).unwrap();
    assert!(json.contains("\"step\":3"), "{json}");
    assert!(json.contains("\"views\":\"padded\""), "{json}");
    std::fs::write(&kept, r#"{"step":3,"views":"padded","top1_error":0.125}"#).unwrap();
    let again = c.run(ProgressMode::Hidden).unwrap();
    assert_eq!(again.iter().map(|r| r.steps).collect::<Vec<_>>(), [3, 3]);
    assert_eq!(again[0].ten_crop_test_error, r[0].ten_crop_test_error);
    assert_eq!(again[1].ten_crop_test_error, Some(0.125));
    // A result of another kind of ten crops (no "views": the resize-to-36
    // crops of 2026-12-05) is measured again.
    std::fs::write(&kept, r#"{"step":3,"top1_error":0.125}"#).unwrap();
    let third = c.run(ProgressMode::Hidden).unwrap();
    assert_eq!(third[1].ten_crop_test_error, r[1].ten_crop_test_error);
    let lines = std::fs::read_to_string(dir.path().join("resnet20/log.jsonl")).unwrap();
    assert_eq!(lines.matches("\"type\":\"step\"").count(), 3);

    // A report of a set under way: only the runs that exist, plain first.
    std::fs::remove_dir_all(dir.path().join("plain20")).unwrap();
    let report = Comparison {
        depths: vec![56, 20],
        report_only: true,
        ..c.clone()
    };
    let r = report.run(ProgressMode::Hidden).unwrap();
    assert_eq!(
        r.iter().map(|r| r.model.as_str()).collect::<Vec<_>>(),
        ["resnet20"]
    );
    assert!(
        !dir.path().join("resnet56").exists(),
        "a report trains nothing"
    );
    let empty = tempfile::tempdir().unwrap();
    let none = Comparison {
        out: empty.path().to_owned(),
        ..report
    };
    let err = none.run(ProgressMode::Hidden).unwrap_err().to_string();
    assert!(err.contains("no finished or started runs"), "{err}");
}

#[test]
fn runs_train_in_pairs_in_the_order_of_the_depths() {
    let names: Vec<String> = resnet_imagenet::train::compare::networks(&[20, 56])
        .into_iter()
        .map(|n| n.0)
        .collect();
    assert_eq!(names, ["plain20", "resnet20", "plain56", "resnet56"]);
}

#[test]
fn a_depth_that_is_not_6n_plus_2_is_an_error() {
    Command::cargo_bin("reproduce-degradation")
        .unwrap()
        .args(["--data", "/nonexistent", "--depths", "20,21"])
        .assert()
        .failure()
        .stderr(predicates::str::contains("depth 21"));
}
