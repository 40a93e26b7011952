//! Makes an ImageNet-like benchmark set from real photographs:
//! `cargo run --release --example photo_set -- OUT N SRC_DIR...`
//!
//! Every output is a random crop (35-100% of the area, aspect 3:4 to 4:3) of a
//! real photo found under the source folders, resized so that its longer side
//! is 500 px (ILSVRC2012's most common size: 500x375 / 500x333) or, for one in
//! ten, 300..1200 px, and saved as a quality-90 4:2:0 JPEG in `OUT/train/c<k>/`
//! (100 classes). Deterministic for a given source list.

use image::imageops::FilterType;
use rand::{Rng, SeedableRng};
use std::path::{Path, PathBuf};

fn photos(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = rd.flatten().map(|e| e.path()).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            photos(&p, out);
        } else if matches!(
            p.extension()
                .and_then(|e| e.to_str())
                .map(|e| e.to_ascii_lowercase())
                .as_deref(),
            Some("jpg" | "jpeg" | "png")
        ) {
            out.push(p);
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 3 {
        eprintln!("usage: photo_set OUT N SRC_DIR...");
        std::process::exit(2);
    }
    let out = PathBuf::from(&args[0]);
    let n: usize = args[1].parse().expect("N");
    let mut files = Vec::new();
    for d in &args[2..] {
        photos(Path::new(d), &mut files);
    }
    // Real photographs only: colour, at least 300 px on the shorter side.
    let sources: Vec<image::RgbImage> = files
        .iter()
        .filter_map(|p| image::open(p).ok())
        .filter(|img| img.width().min(img.height()) >= 300 && img.color().has_color())
        .map(|img| img.to_rgb8())
        .collect();
    assert!(!sources.is_empty(), "no photos found");
    eprintln!("{} source photos", sources.len());
    let mut rng = rand_pcg::Pcg64::seed_from_u64(2015);
    let mut bytes = 0u64;
    for i in 0..n {
        let src = &sources[rng.random_range(0..sources.len())];
        let (w, h) = (src.width() as f64, src.height() as f64);
        let area = rng.random_range(0.35..1.0) * w * h;
        let aspect: f64 = rng
            .random_range((3.0f64 / 4.0).ln()..(4.0f64 / 3.0).ln())
            .exp();
        let cw = (area * aspect).sqrt().min(w).max(64.0);
        let ch = (area / aspect).sqrt().min(h).max(64.0);
        let x = rng.random_range(0.0..=(w - cw));
        let y = rng.random_range(0.0..=(h - ch));
        let crop =
            image::imageops::crop_imm(src, x as u32, y as u32, cw as u32, ch as u32).to_image();
        let long = if rng.random_range(0..10) == 0 {
            rng.random_range(300..1200)
        } else {
            500
        };
        let scale = long as f64 / cw.max(ch);
        let (nw, nh) = (
            (cw * scale).round().max(1.0) as u32,
            (ch * scale).round().max(1.0) as u32,
        );
        let img = image::imageops::resize(&crop, nw, nh, FilterType::Triangle);
        let dir = out.join("train").join(format!("c{:03}", i % 100));
        std::fs::create_dir_all(&dir).unwrap();
        // 4:2:0, as libjpeg's default and most ILSVRC2012 files.
        let enc = resnet_imagenet::pack::encode::encode_jpeg(img.as_raw(), nw, nh, 90).unwrap();
        bytes += enc.len() as u64;
        std::fs::write(dir.join(format!("img_{i:06}.JPEG")), enc).unwrap();
    }
    eprintln!(
        "{n} images, {:.1} MB, {:.1} KB average",
        bytes as f64 / 1e6,
        bytes as f64 / n as f64 / 1e3
    );
}
