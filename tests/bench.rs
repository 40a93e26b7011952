//! `bench-pipeline` and the measurement helpers: the numbers add up.

use crate::util::packed_sample;
use assert_cmd::Command;
use resnet_imagenet::loader::LoaderBuilder;
use resnet_imagenet::measure as bench;
use resnet_imagenet::reader::Dataset;
use std::sync::Arc;
use std::time::Duration;

#[test]
fn loader_counters_add_up() {
    let ds = Arc::new(Dataset::open(packed_sample().join("train")).unwrap());
    let loader = LoaderBuilder::new()
        .batch_size(8)
        .workers(2)
        .profile(true)
        .build(Arc::clone(&ds))
        .unwrap();
    // 7 batches per epoch: 2 warm-up + 4 timed stay inside epoch 0.
    let (run, consumer) =
        bench::run_loader(&loader, 0, 2, 4, Some(Duration::from_millis(2))).unwrap();
    assert_eq!(run.images, 32, "images counted = images produced");
    // Samples processed in the timed window differ from those handed out by at
    // most the prefetch (3 batches of 8) at either end.
    assert!(
        run.stages.samples.abs_diff(32) <= 24,
        "{}",
        run.stages.samples
    );
    // Over a whole epoch they are equal.
    let mut epoch = loader.epoch(1);
    let produced: usize = epoch.by_ref().map(|b| b.unwrap().len()).sum();
    assert_eq!(epoch.stage_times().samples as usize, produced);
    assert_eq!(produced, ds.len());
    let busy = run.stages.read + run.stages.decode + run.stages.resize + run.stages.normalize;
    assert!(busy > 0.0);
    // Work done during the timed part can have started during warm-up (prefetch),
    // so allow the prefetch's share on top of wall x threads.
    assert!(
        busy <= (run.seconds + 1.0) * 2.0,
        "stage times {busy} vs wall {}",
        run.seconds
    );
    assert!(run.images_per_sec > 0.0 && run.cpu_seconds_per_image > 0.0);
    assert!(
        consumer.step_ms > 1.9 && consumer.wait_fraction >= 0.0 && consumer.wait_fraction <= 1.0
    );
    let idx: Vec<u32> = (0..ds.len() as u32).collect();
    let c = bench::decode_ceiling(&ds, &idx, 2);
    assert_eq!(c.images, ds.len() as u64);
    assert!(bench::peak_rss_bytes() > 1 << 20);
    let shards: Vec<_> = ds.shards().iter().map(|s| s.path().to_path_buf()).collect();
    let f = bench::cached_fraction(&shards).unwrap();
    assert!((0.0..=1.0).contains(&f));
}

#[test]
fn cli_json_has_the_promised_fields_and_dump_png_writes_pictures() {
    let data = packed_sample().join("train");
    let out = Command::cargo_bin("bench-pipeline")
        .unwrap()
        .args([
            "--data",
            &data.display().to_string(),
            "--workers",
            "1,2",
            "--batch-size",
            "8",
        ])
        .args([
            "--batches",
            "3",
            "--warmup",
            "1",
            "--repeat",
            "1",
            "--json",
            "--consumer-ms",
            "1",
        ])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    for key in [
        "images",
        "workers",
        "images_per_sec",
        "decode_ceiling_images_per_sec",
        "peak_rss_bytes",
    ] {
        assert!(v[key].is_number(), "{key} in {v}");
    }
    assert_eq!(v["images"], 24);
    assert_eq!(v["workers"], 2);
    assert_eq!(v["scaling"].as_array().unwrap().len(), 2);
    assert!(v["consumer"]["fraction_waited"].is_number());

    let dir = tempfile::tempdir().unwrap();
    Command::cargo_bin("bench-pipeline")
        .unwrap()
        .args([
            "--data",
            &data.display().to_string(),
            "--dump-png",
            &dir.path().display().to_string(),
        ])
        .args(["--images", "5"])
        .assert()
        .success();
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names.len(), 5);
    assert!(
        names[0].starts_with("0000_rec") && names[0].contains("_S") && names[0].contains("_flip"),
        "{names:?}"
    );
    let img = image::open(dir.path().join(&names[0])).unwrap();
    assert_eq!((img.width(), img.height()), (224, 224));
}
