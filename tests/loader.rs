//! The streaming loader on the packed real-photo sample.

use crate::util::{copy_tree, packed_sample, within};
use resnet_imagenet::augment::{EvalCrop, TrainAugment};
use resnet_imagenet::loader::{Loader, LoaderBuilder, Next, OnError, OutputKind};
use resnet_imagenet::reader::Dataset;
use resnet_imagenet::sampler::{Distributed, Remainder};
use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

fn train_set() -> Arc<Dataset> {
    Arc::new(Dataset::open(packed_sample().join("train")).unwrap())
}

fn loader(workers: usize, b: LoaderBuilder) -> Loader {
    b.workers(workers).build(train_set()).unwrap()
}

/// Everything a batch holds, for comparisons.
fn collect(l: &Loader, epoch: u64) -> Vec<(Vec<f32>, Vec<u32>, Vec<u32>)> {
    l.epoch(epoch)
        .map(|b| {
            let b = b.unwrap();
            (
                b.images().to_vec(),
                b.labels().to_vec(),
                b.indices().to_vec(),
            )
        })
        .collect()
}

#[test]
fn batches_are_bit_identical_whatever_the_workers() {
    let base = || LoaderBuilder::new().batch_size(8).seed(5);
    let one = loader(1, base().prefetch(1));
    let three = loader(3, base().prefetch(4));
    for epoch in [0, 1] {
        let (a, b) = (collect(&one, epoch), collect(&three, epoch));
        assert_eq!(a.len(), 7, "56 records / 8");
        assert!(a == b, "epoch {epoch} differs between 1 and 3 workers");
    }
    assert!(collect(&one, 0) != collect(&one, 1), "epochs differ");
}

#[test]
fn an_epoch_visits_every_record_once_with_its_label() {
    let ds = train_set();
    let l = loader(2, LoaderBuilder::new().batch_size(10).seed(1));
    let mut seen = Vec::new();
    for b in l.epoch(3) {
        let b = b.unwrap();
        assert_eq!(b.shape(), [b.len(), 3, 224, 224]);
        assert!(b.images().iter().all(|v| v.is_finite()));
        for (&i, &label) in b.indices().iter().zip(b.labels()) {
            assert_eq!(ds.record(i as usize).unwrap().label, label);
            seen.push(i);
        }
    }
    assert_eq!(seen.len(), 56);
    assert_eq!(seen.iter().copied().collect::<HashSet<_>>().len(), 56);
    assert_ne!(seen, (0..56).collect::<Vec<u32>>(), "shuffled");
}

#[test]
fn distributed_ranks_share_the_epoch() {
    let mut all = Vec::new();
    let mut lens = HashSet::new();
    for rank in 0..3 {
        let l = loader(
            2,
            LoaderBuilder::new()
                .batch_size(4)
                .seed(9)
                .distributed(Distributed {
                    rank,
                    world_size: 3,
                    remainder: Remainder::Pad,
                }),
        );
        let idx: Vec<u32> = l
            .epoch(0)
            .flat_map(|b| b.unwrap().indices().to_vec())
            .collect();
        lens.insert(idx.len());
        all.extend(idx);
    }
    assert_eq!(lens, HashSet::from([19]), "ceil(56 / 3) each");
    assert_eq!(
        all.iter().copied().collect::<HashSet<_>>().len(),
        56,
        "together they cover the epoch"
    );
}

#[test]
fn resume_mid_epoch_equals_an_uninterrupted_run() {
    let build = || loader(2, LoaderBuilder::new().batch_size(6).seed(77));
    let full = collect(&build(), 2);
    let l = build();
    let mut epoch = l.epoch(2);
    let first: Vec<_> = (0..4)
        .map(|_| epoch.next().unwrap().unwrap().indices().to_vec())
        .collect();
    let state = epoch.state();
    assert_eq!(state.position, 4);
    drop(epoch); // the process "stops" here
    let saved = serde_json::to_string(&state).unwrap();
    let restarted = build();
    let rest: Vec<_> = restarted
        .resume(serde_json::from_str(&saved).unwrap())
        .unwrap()
        .map(|b| {
            let b = b.unwrap();
            (
                b.images().to_vec(),
                b.labels().to_vec(),
                b.indices().to_vec(),
            )
        })
        .collect();
    assert_eq!(
        first,
        full[..4].iter().map(|x| x.2.clone()).collect::<Vec<_>>()
    );
    assert!(
        rest == full[4..],
        "resumed batches equal the uninterrupted ones"
    );
    let err = build()
        .resume(resnet_imagenet::loader::LoaderState { seed: 1, ..state })
        .err()
        .expect("another seed is refused")
        .to_string();
    assert!(err.contains("seed 1"), "{err}");
    let err = build()
        .resume(resnet_imagenet::loader::LoaderState {
            position: 10_000,
            ..state
        })
        .err()
        .expect("a position past the epoch is refused")
        .to_string();
    assert!(err.contains("position 10000"), "{err}");
}

#[test]
fn training_parameters_are_in_range_on_real_records() {
    let l = loader(1, LoaderBuilder::new().batch_size(8).seed(3));
    for i in 0..l.dataset().len() {
        let p = l.sample_params(0, i).unwrap().unwrap();
        let r = l.dataset().record(i).unwrap();
        assert!((256..=480).contains(&p.s));
        let (rw, rh) = resnet_imagenet::augment::crop::resized_dims(r.width, r.height, p.s);
        assert!(
            p.crop_x + 224 <= rw && p.crop_y + 224 <= rh,
            "{p:?} in {rw}x{rh}"
        );
    }
}

#[test]
fn ten_crop_views_and_their_mirrors() {
    let val = Arc::new(Dataset::open(packed_sample().join("val")).unwrap());
    let l = LoaderBuilder::new()
        .batch_size(5)
        .workers(2)
        .eval(EvalCrop::TenCrop {
            resize: 256,
            crop: 224,
        })
        .build(val)
        .unwrap();
    let b = l.epoch(0).next().unwrap().unwrap();
    assert_eq!(b.shape(), [50, 3, 224, 224]);
    assert_eq!(b.indices(), &[0, 1, 2, 3, 4], "evaluation is sequential");
    let n = 224 * 224;
    let view = |r: usize, v: usize| &b.images()[(r * 10 + v) * 3 * n..(r * 10 + v + 1) * 3 * n];
    // View 5 is view 0 mirrored: with the per-pixel mean the mean image is not
    // mirrored, so compare the de-normalised pictures.
    let norm = l.normalizer();
    let (a, m) = (norm.to_rgb8(view(2, 0)), norm.to_rgb8(view(2, 5)));
    for y in 0..224 {
        for x in 0..224 {
            for c in 0..3 {
                assert_eq!(a[(y * 224 + x) * 3 + c], m[(y * 224 + 223 - x) * 3 + c]);
            }
        }
    }
    assert!(view(2, 1) != view(2, 4), "corners differ");
}

/// The CIFAR nets' ten-crop: the image at the crop size, shifted by the
/// training padding to the four corners, and mirrored; the padding is zero
/// and each shifted view shows the centre view's pixels moved.
#[test]
fn padded_ten_crop_views_are_the_training_shifts() {
    let val = Arc::new(Dataset::open(packed_sample().join("val")).unwrap());
    let l = LoaderBuilder::new()
        .batch_size(3)
        .workers(2)
        .eval(EvalCrop::PaddedTenCrop { pad: 4, crop: 32 })
        .build(val)
        .unwrap();
    let b = l.epoch(0).next().unwrap().unwrap();
    assert_eq!(b.shape(), [30, 3, 32, 32]);
    let n = 32 * 32;
    let at = |r: usize, v: usize, c: usize, y: isize, x: isize| {
        b.images()[(r * 10 + v) * 3 * n + c * n + (y * 32 + x) as usize]
    };
    for r in 0..3 {
        // (dx, dy) of views 1-4: output (x, y) shows centre pixel (x+dx, y+dy).
        for (v, (dx, dy)) in [(-4, -4), (4, -4), (-4, 4), (4, 4)].into_iter().enumerate() {
            for c in 0..3 {
                for y in 0..32 {
                    for x in 0..32 {
                        let (sx, sy) = (x + dx, y + dy);
                        let want = if (0..32).contains(&sx) && (0..32).contains(&sy) {
                            at(r, 0, c, sy, sx)
                        } else {
                            0.0
                        };
                        assert_eq!(at(r, v + 1, c, y, x), want, "record {r} view {}", v + 1);
                        // Views 5-9 are views 0-4 mirrored.
                        assert_eq!(at(r, v + 6, c, y, 31 - x), at(r, v + 1, c, y, x));
                        assert_eq!(at(r, 5, c, y, 31 - x), at(r, 0, c, y, x));
                    }
                }
            }
        }
        // The centre view is real pixels, not padding.
        let centre = &b.images()[r * 30 * n..][..3 * n];
        assert!(centre.iter().filter(|v| **v != 0.0).count() > 2 * n);
    }
}

#[test]
fn u8_output_is_the_same_picture() {
    let b = || LoaderBuilder::new().batch_size(4).seed(2);
    let f = loader(2, b());
    let u = loader(2, b().output(OutputKind::U8Hwc));
    let bf = f.epoch(0).next().unwrap().unwrap();
    let bu = u.epoch(0).next().unwrap().unwrap();
    assert_eq!(bu.shape(), [4, 224, 224, 3]);
    assert!(bu.images().is_empty() && bf.images_u8().is_empty());
    let n = 3 * 224 * 224;
    for i in 0..4 {
        let pic = f.normalizer().to_rgb8(&bf.images()[i * n..(i + 1) * n]);
        let raw = &bu.images_u8()[i * n..(i + 1) * n];
        let max = pic
            .iter()
            .zip(raw)
            .map(|(a, b)| (*a as i32 - *b as i32).abs())
            .max()
            .unwrap();
        assert!(max <= 1, "rounding only");
    }
}

#[test]
fn dropping_an_epoch_mid_way_stops_promptly() {
    within(30, || {
        let l = loader(2, LoaderBuilder::new().batch_size(2).prefetch(8).seed(1));
        for _ in 0..5 {
            let mut e = l.epoch(0);
            let _ = e.next().unwrap().unwrap();
            drop(e); // joins the workers
        }
        // A batch may outlive its epoch.
        let mut e = l.epoch(1);
        let kept = e.next().unwrap().unwrap();
        drop(e);
        assert_eq!(kept.len(), 2);
    });
}

#[test]
fn waiting_in_slices_yields_the_same_batches_as_the_iterator() {
    let b = || LoaderBuilder::new().batch_size(8).seed(3);
    let want = collect(&loader(2, b()), 0);
    let l = loader(2, b());
    let mut e = l.epoch(0);
    // Whether a batch is ready at any one call depends on scheduling (a
    // loaded machine may deschedule this thread until the workers are far
    // ahead), so each call may say either; a zero wait included.
    let mut got = Vec::new();
    let mut wait = Duration::ZERO;
    loop {
        let next = e.next_within(wait);
        wait = Duration::from_millis(1);
        match next {
            Next::Pending => {}
            Next::End => break,
            Next::Ready(b) => {
                let b = b.unwrap();
                got.push((
                    b.images().to_vec(),
                    b.labels().to_vec(),
                    b.indices().to_vec(),
                ));
            }
        }
    }
    assert!(got == want, "the same batches, in order");
    assert!(matches!(e.next_within(Duration::ZERO), Next::End));
}

fn corrupt_copy(dir: &Path, record: usize) -> Arc<Dataset> {
    copy_tree(&packed_sample().join("train"), dir);
    let shard = dir.join("shard-00000.rnim");
    let s = resnet_imagenet::reader::ShardReader::open(&shard).unwrap();
    let e = s.entries()[record];
    drop(s);
    let mut bytes = std::fs::read(&shard).unwrap();
    // Destroy the image: overwrite its middle with garbage and its end marker.
    let start = e.offset as usize + 4;
    for b in &mut bytes[start..start + e.len as usize - 4] {
        *b = 0xFF;
    }
    std::fs::write(&shard, bytes).unwrap();
    Arc::new(Dataset::open(dir).unwrap())
}

/// Regression (issue 15): one flipped byte inside a record's entropy-coded
/// data still decodes (to a wrong picture), so only the record's checksum
/// can tell; the loader checks it by default.
#[test]
fn a_flipped_byte_in_a_record_is_caught_by_default() {
    within(60, || {
        let dir = tempfile::tempdir().unwrap();
        copy_tree(&packed_sample().join("train"), dir.path());
        let shard = dir.path().join("shard-00000.rnim");
        let s = resnet_imagenet::reader::ShardReader::open(&shard).unwrap();
        let e = s.entries()[7];
        drop(s);
        let mut bytes = std::fs::read(&shard).unwrap();
        let at = e.offset as usize + e.len as usize * 2 / 3;
        bytes[at] ^= 0x10;
        std::fs::write(&shard, bytes).unwrap();
        let ds = Arc::new(Dataset::open(dir.path()).unwrap());
        // The corruption is silent to the decoder...
        let mut rgb = Vec::new();
        assert!(resnet_imagenet::decode::decode_rgb(ds.record(7).unwrap().bytes, &mut rgb).is_ok());
        let unchecked = LoaderBuilder::new()
            .batch_size(8)
            .workers(2)
            .verify_checksums(false)
            .build(Arc::clone(&ds))
            .unwrap();
        assert!(unchecked.epoch(0).all(|r| r.is_ok()));
        // ...but not to the default loader.
        let default = LoaderBuilder::new()
            .batch_size(8)
            .workers(2)
            .build(Arc::clone(&ds))
            .unwrap();
        let err = default
            .epoch(0)
            .find_map(|r| r.err())
            .expect("the corrupt record is an error")
            .to_string();
        assert!(
            err.contains("shard-00000.rnim")
                && err.contains("record 7")
                && err.contains("checksum"),
            "{err}"
        );
        let lenient = LoaderBuilder::new()
            .batch_size(8)
            .workers(2)
            .on_error(OnError::Skip)
            .build(ds)
            .unwrap();
        let mut epoch = lenient.epoch(0);
        let n: usize = epoch.by_ref().map(|b| b.unwrap().len()).sum();
        assert_eq!(n, 56);
        assert_eq!(epoch.stage_times().skipped, 1);
    });
}

/// Regression (issue 14): a corrupt record panicked `bench-pipeline`, and a
/// rank outside the world size asserted in the sampler; both are errors now.
#[test]
fn a_corrupt_record_or_a_bad_rank_is_an_error_not_a_panic() {
    within(120, || {
        let dir = tempfile::tempdir().unwrap();
        let ds = corrupt_copy(dir.path(), 5);
        let loader = LoaderBuilder::new()
            .batch_size(8)
            .workers(2)
            .build(Arc::clone(&ds))
            .unwrap();
        let err = resnet_imagenet::measure::run_loader(&loader, 0, 0, 8, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("record 5"), "{err}");
        let idx: Vec<u32> = (0..ds.len() as u32).collect();
        let c = resnet_imagenet::measure::decode_ceiling(&ds, &idx, 2);
        assert_eq!((c.failed, c.images), (1, ds.len() as u64 - 1));
        let out = assert_cmd::Command::cargo_bin("bench-pipeline")
            .unwrap()
            .args([
                "--data",
                dir.path().to_str().unwrap(),
                "--workers",
                "1",
                "--repeat",
                "1",
            ])
            .assert()
            .code(2)
            .get_output()
            .stderr
            .clone();
        let stderr = String::from_utf8_lossy(&out);
        assert!(
            stderr.contains("record 5") && !stderr.contains("panicked"),
            "{stderr}"
        );
        for (rank, world_size) in [(2, 2), (0, 0)] {
            let dist = Distributed {
                rank,
                world_size,
                ..Default::default()
            };
            let err = LoaderBuilder::new()
                .distributed(dist)
                .build(Arc::clone(&ds))
                .unwrap_err()
                .to_string();
            assert!(err.contains("rank") && err.contains("world size"), "{err}");
        }
    });
}

#[test]
fn a_bad_record_is_an_error_naming_it_or_is_skipped_and_counted() {
    within(60, || {
        let dir = tempfile::tempdir().unwrap();
        let ds = corrupt_copy(dir.path(), 5);
        let strict = LoaderBuilder::new()
            .batch_size(8)
            .workers(2)
            .verify_checksums(true)
            .build(Arc::clone(&ds))
            .unwrap();
        let results: Vec<_> = strict.epoch(0).collect();
        let err = results
            .iter()
            .find_map(|r| r.as_ref().err())
            .expect("an error")
            .to_string();
        assert!(
            err.contains("shard-00000.rnim") && err.contains("record 5"),
            "{err}"
        );
        assert!(
            results.last().unwrap().is_err(),
            "the epoch ends at the error"
        );

        // Without checksum verification the decoder itself must refuse the garbage.
        let unchecked = LoaderBuilder::new()
            .batch_size(8)
            .workers(2)
            .verify_checksums(false)
            .build(Arc::clone(&ds))
            .unwrap();
        assert!(unchecked.epoch(0).any(|r| r.is_err()));

        let lenient = LoaderBuilder::new()
            .batch_size(8)
            .workers(2)
            .verify_checksums(true)
            .on_error(OnError::Skip)
            .build(ds)
            .unwrap();
        let mut epoch = lenient.epoch(0);
        let n: usize = epoch.by_ref().map(|b| b.unwrap().len()).sum();
        assert_eq!(n, 56, "every slot filled");
        assert_eq!(epoch.stage_times().skipped, 1);
    });
}

#[test]
fn profiling_counts_every_sample_and_stage_times_fit_in_wall_time() {
    let l = loader(2, LoaderBuilder::new().batch_size(8).seed(4).profile(true));
    let t0 = std::time::Instant::now();
    let mut e = l.epoch(0);
    let n: usize = e.by_ref().map(|b| b.unwrap().len()).sum();
    let wall = t0.elapsed().as_secs_f64();
    let t = e.stage_times();
    assert_eq!(t.samples as usize, n);
    let busy = t.read + t.decode + t.resize + t.normalize;
    assert!(busy > 0.0 && t.decode > 0.0 && t.resize > 0.0);
    assert!(
        busy <= wall * 2.0 * 1.05,
        "stage times {busy} exceed wall {wall} x 2 workers"
    );
}

#[test]
fn train_augmentation_options_apply() {
    let t = TrainAugment {
        scale: (40, 64),
        crop: 32,
        flip: false,
        lighting_std: 0.1,
    };
    let first = |t: TrainAugment| {
        let l = loader(2, LoaderBuilder::new().batch_size(16).train(t));
        let b = l.epoch(0).next().unwrap().unwrap();
        (b.shape(), b.images().to_vec(), b.indices().to_vec())
    };
    let (shape, lit, idx) = first(t);
    assert_eq!(shape, [16, 3, 32, 32]);
    // Same seed, same crops: lighting noise is the only difference, and it
    // moves every pixel of an image by the same per-channel amount.
    let (_, plain, idx0) = first(TrainAugment {
        lighting_std: 0.0,
        ..t
    });
    assert_eq!(idx, idx0);
    let n = 32 * 32;
    let mut moved = 0;
    for img in 0..16 {
        for c in 0..3 {
            let at = (img * 3 + c) * n;
            let d: Vec<f32> = (at..at + n).map(|i| lit[i] - plain[i]).collect();
            assert!(
                d.iter().all(|x| (x - d[0]).abs() < 1e-3),
                "one shift per channel"
            );
            moved += usize::from(d[0].abs() > 1e-4);
        }
    }
    assert!(moved > 40, "lighting moved {moved} of 48 image channels");
    // No flip: the same crop twice over (flip: true would mirror about half).
    assert_eq!(first(t).1, lit);
}

#[test]
fn cifar_augmentation_pads_crops_and_flips() {
    use resnet_imagenet::augment::CifarAugment;
    let l = loader(
        2,
        LoaderBuilder::new()
            .batch_size(16)
            .seed(11)
            .cifar(CifarAugment::default()),
    );
    let b = l.epoch(0).next().unwrap().unwrap();
    assert_eq!(b.shape(), [16, 3, 32, 32]);
    let n = 32 * 32;
    let mut flips = 0;
    for (k, &index) in b.indices().iter().enumerate() {
        let p = l.sample_params(0, index as usize).unwrap().unwrap();
        assert!(p.crop_x <= 8 && p.crop_y <= 8);
        flips += p.flip as u32;
        let img = &b.images()[k * 3 * n..(k + 1) * 3 * n];
        let (dx, dy) = (p.crop_x as i32 - 4, p.crop_y as i32 - 4);
        for c in 0..3 {
            for y in 0..32i32 {
                for x in 0..32i32 {
                    let cx = if p.flip { 31 - x } else { x };
                    let outside = !(0..32).contains(&(cx + dx)) || !(0..32).contains(&(y + dy));
                    let v = img[(c as usize) * n + (y * 32 + x) as usize];
                    if outside {
                        assert_eq!(v, 0.0, "padding is zero after normalisation");
                    }
                }
            }
        }
        // Inside values are real pixels.
        assert!(img.iter().filter(|v| **v != 0.0).count() > n);
    }
    assert!(flips > 0 && flips < 16);
}

#[test]
fn whole_images_at_every_test_scale() {
    let val = Arc::new(Dataset::open(packed_sample().join("val")).unwrap());
    let l = LoaderBuilder::new()
        .eval(EvalCrop::default())
        .build(Arc::clone(&val))
        .unwrap();
    for short in [224, 256, 384, 480, 640] {
        for i in 0..val.len() {
            let r = val.record(i).unwrap();
            let (f, label) = l.whole_image(i, short).unwrap();
            let data = l
                .whole_normalizer()
                .hwc(&f.pixels, f.width, f.height, false);
            assert_eq!(f.width.min(f.height), short);
            assert_eq!(data.len(), 3 * (f.width * f.height) as usize);
            assert_eq!(label, r.label);
            let aspect = r.width as f64 / r.height as f64;
            assert!((f.width as f64 / f.height as f64 - aspect).abs() < 0.01);
            assert!(data.iter().all(|v| v.is_finite()));
        }
    }
}

/// Each training sample is exactly the plain recipe done by hand: decode the
/// whole record, draw its parameters from (seed, epoch, index), crop-resize,
/// flip and normalise. (The loader itself decodes only the crop's region.)
#[test]
fn training_samples_equal_the_whole_image_recipe() {
    use resnet_imagenet::augment::{CropResizer, sample_rng};
    use resnet_imagenet::decode::decode_rgb;
    let ds = train_set();
    let l = loader(2, LoaderBuilder::new().batch_size(8).seed(9));
    let aug = TrainAugment::default();
    let mut resizer = CropResizer::new(224);
    let (mut rgb, mut want) = (Vec::new(), vec![0f32; 3 * 224 * 224]);
    let mut n = 0;
    for b in l.epoch(2) {
        let b = b.unwrap();
        for (k, &i) in b.indices().iter().enumerate() {
            let r = ds.record(i as usize).unwrap();
            let info = decode_rgb(r.bytes, &mut rgb).unwrap();
            let (_, bx) = aug.draw(info.width, info.height, &mut sample_rng(9, 2, i as u64));
            let px = resizer
                .crop_resize(&rgb, info.width, info.height, &bx)
                .unwrap();
            l.normalizer().write_chw(px, bx.flip, [0.0; 3], &mut want);
            let got = &b.images()[k * want.len()..(k + 1) * want.len()];
            assert!(got == &want[..], "record {i}");
            n += 1;
        }
    }
    assert_eq!(n, 56);
}

/// Batch buffers are reused, within an epoch and across epochs: memory
/// stays bounded by the prefetch depth however many epochs run (and a new
/// epoch's first batches do not write into freshly faulted pages).
#[test]
fn batch_buffers_are_reused_across_epochs() {
    let l = loader(2, LoaderBuilder::new().batch_size(4).prefetch(2).seed(3));
    assert_eq!(l.epoch(0).count(), 14);
    let after_one = l.batch_buffers();
    assert!(
        (1..=3).contains(&after_one),
        "{after_one} buffers for prefetch 2"
    );
    for epoch in 1..4 {
        assert_eq!(l.epoch(epoch).count(), 14);
    }
    assert_eq!(l.batch_buffers(), after_one);
}
