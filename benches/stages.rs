//! Per-stage benches on real photos from the bundled sample:
//! `cargo bench --bench stages`. One group per stage, throughput in images.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use resnet_imagenet::augment::{CropResizer, Normalization, Normalizer, TrainAugment, sample_rng};
use resnet_imagenet::decode::{decode_rgb, decode_rgb_region};
use std::hint::black_box;
use std::path::Path;

/// Real-photo JPEGs of the sample (RGB, already <= 480 on the shorter side).
fn photos() -> Vec<Vec<u8>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("datasets/sample/train");
    let mut out = Vec::new();
    for class in std::fs::read_dir(root).unwrap() {
        for f in std::fs::read_dir(class.unwrap().path()).unwrap() {
            let p = f.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            // The plain views only: _2, _3, _4 (crops of real photos, 266..593 px wide).
            if ["_2.JPEG", "_3.JPEG", "_4.JPEG"]
                .iter()
                .any(|s| name.ends_with(s))
            {
                out.push(std::fs::read(p).unwrap());
            }
        }
    }
    out.sort();
    out
}

fn stages(c: &mut Criterion) {
    let jpegs = photos();
    let decoded: Vec<(Vec<u8>, u32, u32)> = jpegs
        .iter()
        .map(|j| {
            let mut buf = Vec::new();
            let info = decode_rgb(j, &mut buf).unwrap();
            (buf, info.width, info.height)
        })
        .collect();
    let n = jpegs.len() as u64;
    let aug = TrainAugment::default();
    let mean = vec![120f32; 64 * 64 * 3];
    let norm = Normalizer::new(Normalization::PerPixelMean, 224, &mean, 64, [60.0; 3]);

    let mut g = c.benchmark_group("stage");
    g.throughput(Throughput::Elements(n));
    g.bench_function("decode", |b| {
        let mut buf = Vec::new();
        b.iter(|| {
            for j in &jpegs {
                black_box(decode_rgb(j, &mut buf).unwrap());
            }
        })
    });
    // What the loader decodes: only the region of a training crop (the
    // whole image where the decoder cannot cut, e.g. zune-jpeg).
    g.bench_function("decode_train_region", |b| {
        let mut buf = Vec::new();
        let r = CropResizer::new(224);
        let mut epoch = 0;
        b.iter(|| {
            epoch += 1;
            for (i, j) in jpegs.iter().enumerate() {
                black_box(
                    decode_rgb_region(j, &mut buf, |w, h| {
                        let (_, bx) = aug.draw(w, h, &mut sample_rng(0, epoch, i as u64));
                        r.source_region(&[bx], w, h)
                    })
                    .unwrap(),
                );
            }
        })
    });
    g.bench_function("crop_resize", |b| {
        let mut r = CropResizer::new(224);
        let mut epoch = 0;
        b.iter(|| {
            epoch += 1;
            for (i, (rgb, w, h)) in decoded.iter().enumerate() {
                let (_, bx) = aug.draw(*w, *h, &mut sample_rng(0, epoch, i as u64));
                black_box(r.crop_resize(rgb, *w, *h, &bx).unwrap());
            }
        })
    });
    g.bench_function("flip_normalize", |b| {
        let crop: Vec<u8> = (0..224 * 224 * 3).map(|i| (i % 251) as u8).collect();
        // A batch-sized output, as in the loader (not cache-resident).
        let mut out = vec![0f32; 64 * 3 * 224 * 224];
        let mut k = 0usize;
        b.iter(|| {
            for i in 0..n as usize {
                k = (k + 1) % 64;
                let o = &mut out[k * 3 * 224 * 224..(k + 1) * 3 * 224 * 224];
                norm.write_chw(&crop, i % 2 == 0, [0.0; 3], o);
            }
            black_box(&out);
        })
    });
    g.bench_function("whole_sample", |b| {
        let mut buf = Vec::new();
        let mut r = CropResizer::new(224);
        let mut out = vec![0f32; 3 * 224 * 224];
        let mut epoch = 0;
        b.iter(|| {
            epoch += 1;
            for (i, j) in jpegs.iter().enumerate() {
                // As the loader does it: draw, decode the region, resize within it.
                let mut bx = Default::default();
                let (_, region) = decode_rgb_region(j, &mut buf, |w, h| {
                    bx = aug.draw(w, h, &mut sample_rng(0, epoch, i as u64)).1;
                    r.source_region(&[bx], w, h)
                })
                .unwrap();
                let px = r
                    .crop_resize(&buf, region.width, region.height, &bx.within(&region))
                    .unwrap();
                norm.write_chw(px, bx.flip, [0.0; 3], &mut out);
            }
            black_box(&out);
        })
    });
    g.finish();
}

criterion_group!(benches, stages);
criterion_main!(benches);
