//! `pack-imagenet` and the shard reader on the bundled real-photo sample.

use crate::util::{assert_same_tree, copy_tree, sample};
use assert_cmd::Command;
use resnet_imagenet::decode::decode_rgb;
use resnet_imagenet::format::Origin;
use resnet_imagenet::pack::walk::{ClassSource, WalkOptions};
use resnet_imagenet::pack::{self, PackOptions};
use resnet_imagenet::progress::ProgressMode;
use resnet_imagenet::reader::{Dataset, verify_dataset};
use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

fn opts(threads: usize, shard_bytes: u64) -> PackOptions {
    PackOptions {
        threads,
        shard_bytes,
        progress: ProgressMode::Hidden,
        mean_size: 32,
        ..PackOptions::default()
    }
}

fn pack_sample(out: &Path, o: &PackOptions) -> Vec<pack::SplitSummary> {
    pack::pack(&sample(), out, o).unwrap()
}

/// Mean of each channel of an RGB8 buffer.
fn channel_means(rgb: &[u8]) -> [f64; 3] {
    let mut s = [0f64; 3];
    for p in rgb.chunks_exact(3) {
        for c in 0..3 {
            s[c] += p[c] as f64;
        }
    }
    let n = (rgb.len() / 3) as f64;
    [s[0] / n, s[1] / n, s[2] / n]
}

#[test]
fn round_trip_every_record_and_every_oddity() {
    let dir = tempfile::tempdir().unwrap();
    let summaries = pack_sample(dir.path(), &opts(2, 1 << 20));
    let train = summaries.iter().find(|s| s.split == "train").unwrap();
    assert_eq!(
        train.files,
        train.packed + train.skipped.len() as u64,
        "no file dropped silently"
    );
    let reasons: HashMap<&str, &str> = train
        .skipped
        .iter()
        .map(|s| (s.path.as_str(), s.reason.as_str()))
        .collect();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(reasons["train/n02486410/n02486410_truncated.JPEG"].contains("truncated"));
    assert!(reasons["train/n03991062/n03991062_notanimage.JPEG"].contains("not an image"));

    let ds = Dataset::open(dir.path().join("train")).unwrap();
    assert_eq!(ds.len() as u64, train.packed);
    assert!(ds.shards().len() > 1, "1 MiB shards split the sample");
    let classes: Vec<String> = ds
        .manifest()
        .classes
        .iter()
        .map(|c| c.wnid.clone())
        .collect();
    let mut sorted = classes.clone();
    sorted.sort();
    assert_eq!(classes, sorted, "labels follow sorted wnids");
    assert_eq!(
        ds.manifest().classes[classes.iter().position(|w| w == "n02486410").unwrap()].name,
        "baboon"
    );

    // Walk the input in the packer's order and check each record against its file.
    let mut inputs: Vec<(String, u32)> = Vec::new();
    for (label, wnid) in classes.iter().enumerate() {
        let mut files: Vec<_> = std::fs::read_dir(sample().join("train").join(wnid))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        for f in files {
            let rel = format!("train/{wnid}/{}", f.file_name().unwrap().to_string_lossy());
            if !reasons.contains_key(rel.as_str()) {
                inputs.push((rel, label as u32));
            }
        }
    }
    assert_eq!(inputs.len(), ds.len());
    let mut buf = Vec::new();
    let mut by_name = HashMap::new();
    for (i, (rel, label)) in inputs.iter().enumerate() {
        let r = ds.record_checked(i).unwrap();
        assert_eq!(r.label, *label, "{rel}");
        let original = std::fs::read(sample().join(rel)).unwrap();
        if r.origin.is_original() {
            assert_eq!(r.bytes, original.as_slice(), "{rel}: original bytes kept");
        }
        let info = decode_rgb(r.bytes, &mut buf).unwrap();
        assert_eq!((info.width, info.height), (r.width, r.height), "{rel}");
        // 480 or, for a JPEG kept as it is, up to 5% more.
        let limit = if r.origin.is_original() { 504 } else { 480 };
        assert!(r.width.min(r.height) <= limit, "{rel}");
        by_name.insert(
            rel.rsplit('/').next().unwrap().to_string(),
            (r.origin, r.width, r.height, channel_means(&buf)),
        );
    }
    let origin = |n: &str| by_name[n].0;
    assert!(
        origin("n02123045_png.JPEG").has(Origin::FROM_OTHER_FORMAT),
        "PNG named .JPEG"
    );
    assert!(origin("n02486410_gray.JPEG").has(Origin::FROM_GRAY));
    assert!(origin("n07747607_cmyk.JPEG").has(Origin::FROM_CMYK));
    assert!(origin("n03877845_huge.JPEG").has(Origin::RESIZED));
    assert_eq!(
        (
            by_name["n03877845_huge.JPEG"].1,
            by_name["n03877845_huge.JPEG"].2
        ),
        (640, 480)
    );
    assert_eq!(
        (by_name["n03785016_1.JPEG"].1, by_name["n03785016_1.JPEG"].2),
        (741, 500),
        "a 741x500 photo is kept, not re-encoded at 480"
    );
    for kept in [
        "n03785016_1.JPEG",
        "n02356798_progressive.JPEG",
        "n07742313_restart.JPEG",
        "n04254680_exif.JPEG",
        "n07747607_tiny.JPEG",
        "n07747607_2.JPEG",
    ] {
        assert!(origin(kept).is_original(), "{kept} kept as is");
    }
    // Colour conversions are right, not merely present: the CMYK orange looks like
    // the RGB orange, the grayscale baboon has equal channels.
    let (cmyk, rgb) = (
        by_name["n07747607_cmyk.JPEG"].3,
        by_name["n07747607_1.JPEG"].3,
    );
    assert!(
        origin("n07747607_1.JPEG").has(Origin::RESIZED),
        "512x512 > 480"
    );
    for c in 0..3 {
        assert!(
            (cmyk[c] - rgb[c]).abs() < 12.0,
            "CMYK conversion: {cmyk:?} vs {rgb:?}"
        );
    }
    let gray = by_name["n02486410_gray.JPEG"].3;
    assert!((gray[0] - gray[1]).abs() < 1.0 && (gray[1] - gray[2]).abs() < 1.0);
    let png = by_name["n02123045_png.JPEG"].3;
    let png_as_jpeg = by_name["n02123045_1.JPEG"].3;
    for c in 0..3 {
        assert!((png[c] - png_as_jpeg[c]).abs() < 3.0);
    }

    // Statistics: a mean image of the right size and plausible channel stats.
    let m = &ds.manifest().stats;
    assert_eq!(m.images, ds.len() as u64);
    let mean = ds.mean_image().unwrap();
    assert_eq!(mean.len(), 32 * 32 * 3);
    for c in 0..3 {
        assert!((40.0..220.0).contains(&m.channel_mean[c]), "{m:?}");
        assert!((20.0..120.0).contains(&m.channel_std[c]), "{m:?}");
        let avg: f64 = mean
            .iter()
            .skip(c)
            .step_by(3)
            .map(|&v| v as f64)
            .sum::<f64>()
            / (32.0 * 32.0);
        assert!(
            (avg - m.channel_mean[c]).abs() < 0.5,
            "mean image averages to the channel mean"
        );
    }
    assert_eq!(
        ds.manifest().class_counts.iter().sum::<u64>(),
        ds.len() as u64
    );

    // Val: a flat folder labelled by LOC_val_solution.csv.
    let val = Dataset::open(dir.path().join("val")).unwrap();
    assert_eq!(val.len(), 12);
    let csv = std::fs::read_to_string(sample().join("LOC_val_solution.csv")).unwrap();
    for (i, line) in csv.lines().skip(1).enumerate() {
        let wnid = line.split(',').nth(1).unwrap().split(' ').next().unwrap();
        let r = val.record(i).unwrap();
        assert_eq!(val.manifest().classes[r.label as usize].wnid, wnid);
    }
    assert_eq!(val.manifest().settings.max_side, 640);
    let report = verify_dataset(dir.path()).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(report.records, (ds.len() + val.len()) as u64);
}

#[test]
fn deterministic_across_thread_counts() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let c = tempfile::tempdir().unwrap();
    pack_sample(a.path(), &opts(1, 300 << 10));
    pack_sample(b.path(), &opts(3, 300 << 10));
    let one_reader = PackOptions {
        readers: 1,
        ..opts(2, 300 << 10)
    };
    pack_sample(c.path(), &one_reader);
    assert_same_tree(a.path(), c.path());
    for (bad, what) in [
        (opts(0, 300 << 10), "threads"),
        (
            PackOptions {
                readers: 0,
                ..opts(1, 300 << 10)
            },
            "readers",
        ),
    ] {
        let e = pack::pack(&sample(), c.path(), &bad)
            .unwrap_err()
            .to_string();
        assert!(e.contains(what), "{e}");
    }
    assert!(
        Dataset::open(a.path().join("train"))
            .unwrap()
            .shards()
            .len()
            >= 4
    );
    assert_same_tree(a.path(), b.path());
}

#[test]
fn resume_after_a_crash_equals_an_uninterrupted_run() {
    let full = tempfile::tempdir().unwrap();
    let o = opts(2, 300 << 10);
    pack_sample(full.path(), &o);
    let shards = Dataset::open(full.path().join("train"))
        .unwrap()
        .shards()
        .len();
    assert!(shards >= 4);

    // The state a kill -9 leaves: some finished shards, a half-written temp
    // file, no manifest, and (worst case) a later shard cut short.
    let crashed = tempfile::tempdir().unwrap();
    copy_tree(full.path(), crashed.path());
    let t = crashed.path().join("train");
    std::fs::remove_file(t.join("manifest.json")).unwrap();
    for k in 2..shards {
        std::fs::remove_file(t.join(format!("shard-{k:05}.rnim"))).unwrap();
    }
    std::fs::write(t.join("shard-00002.rnim.tmp"), b"partial").unwrap();
    let s1 = std::fs::read(full.path().join("train/shard-00001.rnim")).unwrap();
    std::fs::write(t.join("shard-00001.rnim"), &s1[..s1.len() / 2]).unwrap();
    std::fs::remove_dir_all(crashed.path().join("val")).unwrap();

    let summaries = pack_sample(crashed.path(), &o);
    let train = summaries.iter().find(|s| s.split == "train").unwrap();
    assert_eq!(
        train.resumed_shards, 1,
        "shard 0 kept, the cut shard 1 redone"
    );
    assert_same_tree(full.path(), crashed.path());

    // Rerunning a finished pack does nothing and changes nothing.
    let again = pack_sample(crashed.path(), &o);
    assert!(
        again
            .iter()
            .all(|s| s.resumed_shards == s.shards && s.bytes_in == 0)
    );
    assert_same_tree(full.path(), crashed.path());
}

#[test]
fn other_settings_are_refused_without_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    pack_sample(dir.path(), &opts(2, 1 << 20));
    let mut other = opts(2, 1 << 20);
    other.quality = 80;
    let err = pack::pack(&sample(), dir.path(), &other).unwrap_err();
    assert!(
        err.to_string().contains("different input or settings"),
        "{err}"
    );
    other.overwrite = true;
    pack::pack(&sample(), dir.path(), &other).unwrap();
    assert_eq!(
        Dataset::open(dir.path().join("train"))
            .unwrap()
            .manifest()
            .settings
            .quality,
        80
    );
}

fn bin() -> Command {
    Command::cargo_bin("pack-imagenet").unwrap()
}

#[test]
fn cli_kill_9_then_rerun_resumes_to_identical_output() {
    let full = tempfile::tempdir().unwrap();
    let args = |out: &Path| {
        vec![
            "--input".to_string(),
            sample().display().to_string(),
            "--output".into(),
            out.display().to_string(),
            "--threads".into(),
            "2".into(),
            "--shard-mib".into(),
            "0.3".into(),
            "--mean-size".into(),
            "32".into(),
            "--quiet".into(),
        ]
    };
    bin().args(args(full.path())).assert().success();

    let killed = tempfile::tempdir().unwrap();
    let exe = assert_cmd::cargo::cargo_bin("pack-imagenet");
    let mut child = std::process::Command::new(exe)
        .args(args(killed.path()))
        .env(pack::DELAY_ENV, "40")
        .spawn()
        .unwrap();
    let target = killed.path().join("train/shard-00001.rnim");
    let t0 = Instant::now();
    while !target.exists() && t0.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(target.exists());
    assert!(
        !killed.path().join("train/manifest.json").exists(),
        "killed before the end"
    );

    let out = bin()
        .args(args(killed.path()))
        .arg("--json")
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert!(v["splits"][0]["resumed_shards"].as_u64().unwrap() >= 2);
    assert_same_tree(full.path(), killed.path());
}

#[test]
fn cli_json_summary_and_verify_detects_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let out = bin()
        .args([
            "--input",
            &sample().display().to_string(),
            "--output",
            &dir.path().display().to_string(),
        ])
        .args(["--json", "--mean-size", "16"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    let train = &v["splits"][0];
    assert_eq!(train["split"], "train");
    assert_eq!(train["files"], 58);
    assert_eq!(train["packed"], 56);
    assert_eq!(train["skipped"].as_array().unwrap().len(), 2);
    assert!(train["skipped"][0]["path"].is_string() && train["skipped"][0]["reason"].is_string());

    bin()
        .args(["--verify", &dir.path().display().to_string()])
        .assert()
        .code(0);

    // Flip one byte inside record 3's payload: verify names the shard and the record.
    let shard = dir.path().join("train/shard-00000.rnim");
    let ds = resnet_imagenet::reader::ShardReader::open(&shard).unwrap();
    let off = ds.entries()[3].offset as usize + 100;
    drop(ds);
    let mut bytes = std::fs::read(&shard).unwrap();
    bytes[off] ^= 0x40;
    std::fs::write(&shard, &bytes).unwrap();
    let err = bin()
        .args(["--verify", &dir.path().display().to_string()])
        .assert()
        .code(1)
        .get_output()
        .stderr
        .clone();
    let err = String::from_utf8(err).unwrap();
    assert!(
        err.contains("shard-00000.rnim") && err.contains("record 3"),
        "{err}"
    );
    let opened = Dataset::open(dir.path().join("train")).unwrap();
    assert!(
        opened
            .record_checked(3)
            .unwrap_err()
            .to_string()
            .contains("record 3")
    );
    assert!(opened.record(3).is_ok(), "unchecked reads stay zero-cost");

    // Truncate the val shard: opening fails with the shard named, verify exits 1.
    let vshard = dir.path().join("val/shard-00000.rnim");
    let vb = std::fs::read(&vshard).unwrap();
    std::fs::write(&vshard, &vb[..vb.len() - 1000]).unwrap();
    let e = Dataset::open(dir.path().join("val"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("val/shard-00000.rnim") && e.contains("truncated"),
        "{e}"
    );
    let err = bin()
        .args(["--verify", &dir.path().display().to_string()])
        .assert()
        .code(1)
        .get_output()
        .stderr
        .clone();
    assert!(
        String::from_utf8(err)
            .unwrap()
            .contains("val/shard-00000.rnim")
    );
}

#[test]
fn cli_strict_fails_on_the_first_bad_file() {
    let dir = tempfile::tempdir().unwrap();
    let err = bin()
        .args([
            "--input",
            &sample().display().to_string(),
            "--output",
            &dir.path().display().to_string(),
        ])
        .args(["--strict", "--quiet"])
        .assert()
        .code(1)
        .get_output()
        .stderr
        .clone();
    assert!(
        String::from_utf8(err)
            .unwrap()
            .contains("n02486410_truncated.JPEG")
    );
}

/// Builds a tiny tree from sample photos: `val/<names>` flat, plus a train folder.
fn imagenet_like_tree(root: &Path, val_names: &[&str]) {
    let photo = sample().join("train/n02486410/n02486410_1.JPEG");
    std::fs::create_dir_all(root.join("val")).unwrap();
    for n in val_names {
        std::fs::copy(&photo, root.join("val").join(n)).unwrap();
    }
}

#[test]
fn val_ground_truth_in_every_form() {
    let o = PackOptions {
        walk: WalkOptions {
            classes: ClassSource::Imagenet,
            ..Default::default()
        },
        ..opts(1, 1 << 20)
    };
    let names = [
        "ILSVRC2012_val_00000001.JPEG",
        "ILSVRC2012_val_00000002.JPEG",
        "extra.JPEG",
    ];
    // 1. No ground-truth file: the bundled ILSVRC2012 labels (65 = sea snake, 970 = alp).
    let root = tempfile::tempdir().unwrap();
    imagenet_like_tree(root.path(), &names);
    let out = tempfile::tempdir().unwrap();
    let s = pack::pack(root.path(), out.path(), &o).unwrap();
    assert_eq!(s[0].packed, 2);
    assert!(s[0].skipped[0].reason.contains("no ground-truth label"));
    let ds = Dataset::open(out.path().join("val")).unwrap();
    assert_eq!(
        (ds.record(0).unwrap().label, ds.record(1).unwrap().label),
        (65, 970)
    );
    assert_eq!(ds.num_classes(), 1000);

    // 2. The devkit form: ILSVRC2012_IDs in the devkit's order (490 and 361 are
    //    the devkit IDs of the first two val images), mapped through the bundled labels.
    std::fs::write(
        root.path().join("ILSVRC2012_validation_ground_truth.txt"),
        "490\n361\n",
    )
    .unwrap();
    let out2 = tempfile::tempdir().unwrap();
    pack::pack(root.path(), out2.path(), &o).unwrap();
    let ds2 = Dataset::open(out2.path().join("val")).unwrap();
    assert_eq!(
        (ds2.record(0).unwrap().label, ds2.record(1).unwrap().label),
        (65, 970)
    );
    // An inconsistent devkit file (one ID for two classes) is refused.
    std::fs::write(
        root.path().join("ILSVRC2012_validation_ground_truth.txt"),
        "490\n490\n",
    )
    .unwrap();
    let err = pack::pack(root.path(), tempfile::tempdir().unwrap().path(), &o).unwrap_err();
    assert!(err.to_string().contains("maps to both"), "{err}");
    std::fs::remove_file(root.path().join("ILSVRC2012_validation_ground_truth.txt")).unwrap();

    // 3. Kaggle's LOC_val_solution.csv wins over the bundled labels.
    std::fs::write(
        root.path().join("LOC_val_solution.csv"),
        "ImageId,PredictionString\nILSVRC2012_val_00000001,n01440764 1 2 3 4\nextra,n01443537 1 2 3 4 n01443537 5 6 7 8\n",
    )
    .unwrap();
    let out3 = tempfile::tempdir().unwrap();
    let s3 = pack::pack(root.path(), out3.path(), &o).unwrap();
    assert_eq!(s3[0].packed, 2);
    let ds3 = Dataset::open(out3.path().join("val")).unwrap();
    // Sorted by file name: ILSVRC2012_val_00000001 (tench, 0), extra (goldfish, 1).
    assert_eq!(
        (ds3.record(0).unwrap().label, ds3.record(1).unwrap().label),
        (0, 1)
    );

    // 4. Val already sorted into class folders.
    let sorted = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(sorted.path().join("val/n01443537")).unwrap();
    std::fs::copy(
        sample().join("train/n02486410/n02486410_1.JPEG"),
        sorted.path().join("val/n01443537/a.JPEG"),
    )
    .unwrap();
    let out4 = tempfile::tempdir().unwrap();
    pack::pack(sorted.path(), out4.path(), &o).unwrap();
    assert_eq!(
        Dataset::open(out4.path().join("val"))
            .unwrap()
            .record(0)
            .unwrap()
            .label,
        1
    );
}

#[test]
fn a_bare_class_tree_is_one_split() {
    let out = tempfile::tempdir().unwrap();
    let s = pack::pack(&sample().join("train"), out.path(), &opts(2, 1 << 20)).unwrap();
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].split, "train");
    assert_eq!(s[0].packed, 56);
    // Reports use paths relative to the given root.
    assert!(
        s[0].skipped
            .iter()
            .any(|k| k.path == "n03991062/n03991062_notanimage.JPEG")
    );
}

/// Fashion-MNIST, when Debian's `dataset-fashion-mnist` is installed (real
/// labeled data): convert 300 images per split, pack, and check the labels
/// survive the round trip. The IDX parsing itself is unit-tested on
/// synthetic files, so this adds the real data, not the only check.
#[test]
fn fashion_mnist_tree_packs_with_its_labels() {
    let src = Path::new("/usr/share/datasets/fashion-mnist");
    if !src.join("train-images-idx3-ubyte.gz").is_file() {
        eprintln!("dataset-fashion-mnist not installed; real-data part skipped");
        return;
    }
    let tree = tempfile::tempdir().unwrap();
    let (train, val) =
        resnet_imagenet::pack::import::fashion_mnist_to_tree(src, tree.path(), Some(300)).unwrap();
    assert_eq!((train, val), (300, 300));
    let out = tempfile::tempdir().unwrap();
    let s = pack::pack(tree.path(), out.path(), &opts(2, 1 << 20)).unwrap();
    assert_eq!(s.iter().map(|s| s.packed).sum::<u64>(), 600);
    let ds = Dataset::open(out.path().join("train")).unwrap();
    assert_eq!(ds.num_classes(), 10);
    assert_eq!(ds.manifest().classes[9].wnid, "9-ankle-boot");
    let labels = resnet_imagenet::pack::import::parse_idx_labels(
        &resnet_imagenet::pack::import::read_maybe_gz(&src.join("train-labels-idx1-ubyte.gz"))
            .unwrap(),
    )
    .unwrap();
    // Records are sorted by path (class folder, then index): check every label.
    let mut want: Vec<(u8, usize)> = labels[..300]
        .iter()
        .enumerate()
        .map(|(i, &l)| (l, i))
        .collect();
    want.sort();
    for (k, (label, _)) in want.iter().enumerate() {
        let r = ds.record(k).unwrap();
        assert_eq!(r.label, *label as u32);
        assert_eq!((r.width, r.height), (32, 32));
    }
}

/// With no keep slack the train limit is strict: every record's shorter
/// side is at most 480 and the 500-pixel photos are re-encoded at 480.
#[test]
fn no_keep_slack_makes_the_limit_strict() {
    let dir = tempfile::tempdir().unwrap();
    let o = PackOptions {
        keep_slack_percent: 0,
        ..opts(2, 64 << 20)
    };
    pack_sample(dir.path(), &o);
    let ds = Dataset::open(dir.path().join("train")).unwrap();
    let mut resized_500 = 0;
    for i in 0..ds.len() {
        let r = ds.record_checked(i).unwrap();
        assert!(
            r.width.min(r.height) <= 480,
            "record {i}: {}x{}",
            r.width,
            r.height
        );
        resized_500 +=
            usize::from(r.origin.has(Origin::RESIZED) && (r.width, r.height) == (480, 480));
    }
    assert!(resized_500 > 0, "the 500x500 photos are resized");
    assert_eq!(ds.manifest().settings.keep_up_to, 480);
}
