//! Decoding is right or an error: the odd JPEGs of libjpeg's, libjxl's and
//! Pillow's test suites (`datasets/odd-jpeg`, with Pillow's decode of each
//! reduced to a grid of cell means in `reference.tsv`), decoded by this
//! build's decoder and packed into shards, against that independent decode.
//!
//! Regression for issue 15: zune-jpeg turned libjxl's non-interleaved files
//! into green stripes (mean |diff| 137) and shifted the colours of a
//! luma-subsampled one, and pack reported success.

use resnet_imagenet::decode::{decode_rgb, jpeg_decoder_name, jpeg_simd};
use resnet_imagenet::pack::{PackOptions, pack};
use resnet_imagenet::progress::ProgressMode;
use resnet_imagenet::reader::Dataset;
use std::path::{Path, PathBuf};

fn odd_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("datasets/odd-jpeg")
}

/// One line of `reference.tsv`.
struct Reference {
    name: String,
    width: u32,
    height: u32,
    grid: (usize, usize),
    cells: Vec<f64>,
}

/// Pillow's decodes, with the lines of `reference-c.tsv` in place of their
/// files' in a build whose libjpeg-turbo runs its C code (no nasm, or
/// `JSIMD_FORCENONE=1`): libjpeg-turbo's own C and SIMD code decode those
/// files differently (Pillow's too, with `JSIMD_FORCENONE=1`).
fn references(dir: &Path) -> Vec<Reference> {
    let mut out = read_references(&dir.join("reference.tsv"));
    if cfg!(feature = "libjpeg-turbo") && !jpeg_simd() {
        for c in read_references(&dir.join("reference-c.tsv")) {
            let r = out.iter_mut().find(|r| r.name == c.name).unwrap();
            *r = c;
        }
    }
    assert!(!out.is_empty());
    out
}

fn read_references(path: &Path) -> Vec<Reference> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut out = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let f: Vec<&str> = line.split('\t').collect();
        if f[4] == "error" {
            continue; // Pillow refuses it too
        }
        let (gh, gw) = f[4].split_once('x').unwrap();
        out.push(Reference {
            name: f[0].to_string(),
            width: f[1].parse().unwrap(),
            height: f[2].parse().unwrap(),
            grid: (gh.parse().unwrap(), gw.parse().unwrap()),
            cells: f[5].split(',').map(|v| v.parse().unwrap()).collect(),
        });
    }
    out
}

/// Cell means of an RGB8 image over a `gh x gw` grid (as the script computes them).
fn cells(rgb: &[u8], w: usize, h: usize, (gh, gw): (usize, usize)) -> Vec<f64> {
    let mut out = Vec::with_capacity(gh * gw * 3);
    for i in 0..gh {
        let (r0, r1) = (i * h / gh, (i + 1) * h / gh);
        for j in 0..gw {
            let (c0, c1) = (j * w / gw, (j + 1) * w / gw);
            let mut sum = [0.0f64; 3];
            for y in r0..r1 {
                for x in c0..c1 {
                    for (c, s) in sum.iter_mut().enumerate() {
                        *s += rgb[(y * w + x) * 3 + c] as f64;
                    }
                }
            }
            let n = ((r1 - r0) * (c1 - c0)) as f64;
            out.extend(sum.map(|s| s / n));
        }
    }
    out
}

/// (mean, max) absolute difference between two cell grids.
fn diff(a: &[f64], b: &[f64]) -> (f64, f64) {
    assert_eq!(a.len(), b.len());
    let d: Vec<f64> = a.iter().zip(b).map(|(x, y)| (x - y).abs()).collect();
    let max = d.iter().cloned().fold(0.0, f64::max);
    (d.iter().sum::<f64>() / d.len() as f64, max)
}

/// Every file decodes to Pillow's picture, or is an error: never a wrong
/// picture. With the default decoder (libjpeg-turbo) every one decodes.
#[test]
fn every_odd_jpeg_decodes_to_the_independent_decode_or_is_refused() {
    let dir = odd_dir();
    let mut out = Vec::new();
    let mut refused = Vec::new();
    let mut wrong = Vec::new();
    for r in references(&dir) {
        let bytes = std::fs::read(dir.join(&r.name)).unwrap();
        match decode_rgb(&bytes, &mut out) {
            Ok(info) => {
                assert_eq!((info.width, info.height), (r.width, r.height), "{}", r.name);
                let got = cells(&out, r.width as usize, r.height as usize, r.grid);
                let (mean, max) = diff(&got, &r.cells);
                // Two libjpeg builds agree to a fraction of a level; a wrong
                // decode is off by tens (stripes: 137, colour shift: 60).
                if !(mean < 1.0 && max < 6.0) {
                    wrong.push(format!("{}: mean |diff| {mean:.2}, max {max:.2}", r.name));
                }
            }
            // An error is allowed (the zune-jpeg build refuses what it
            // cannot decode correctly, and rejects a truncated APP14).
            Err(e) => refused.push(format!("{}: {e}", r.name)),
        }
    }
    assert!(
        wrong.is_empty(),
        "decoded by {} to a different picture than Pillow's:\n{}",
        jpeg_decoder_name(),
        wrong.join("\n")
    );
    if cfg!(feature = "libjpeg-turbo") {
        assert!(refused.is_empty(), "libjpeg-turbo refused {refused:?}");
    }
}

/// Pack the odd files as one class and check every record (the original
/// bytes or a re-encode: resized past the limit, CMYK and grayscale
/// converted) against Pillow's decode of its input; every file is either a
/// correct record or skipped with its reason.
#[test]
fn every_packed_odd_jpeg_is_the_independent_decode() {
    let src = odd_dir();
    let refs = references(&src);
    let input = tempfile::tempdir().unwrap();
    let class = input.path().join("odd");
    std::fs::create_dir_all(&class).unwrap();
    for r in &refs {
        std::fs::copy(src.join(&r.name), class.join(&r.name)).unwrap();
    }
    let out = tempfile::tempdir().unwrap();
    let opts = PackOptions {
        threads: 2,
        train_max_side: 160, // re-encode most of them
        progress: ProgressMode::Hidden,
        ..Default::default()
    };
    let summary = pack(input.path(), out.path(), &opts).unwrap();
    let skipped: Vec<String> = summary[0]
        .skipped
        .iter()
        .map(|s| s.path.trim_start_matches("odd/").to_string())
        .collect();
    let ds = Dataset::open(out.path().join("train")).unwrap();
    let packed: Vec<&Reference> = refs.iter().filter(|r| !skipped.contains(&r.name)).collect();
    assert_eq!(ds.len(), packed.len(), "skipped: {skipped:?}");
    if cfg!(feature = "libjpeg-turbo") {
        assert!(skipped.is_empty(), "skipped: {:?}", summary[0].skipped);
    }
    let mut pixels = Vec::new();
    let mut reencoded = 0;
    for (i, r) in packed.iter().enumerate() {
        let rec = ds.record_checked(i).unwrap();
        let info = decode_rgb(rec.bytes, &mut pixels).unwrap();
        assert_eq!((info.width, info.height), (rec.width, rec.height));
        let grid = (
            r.grid.0.min(info.height as usize),
            r.grid.1.min(info.width as usize),
        );
        if grid != r.grid {
            continue; // a tiny image's grid does not survive a resize
        }
        reencoded += usize::from(!rec.origin.is_original());
        let got = cells(&pixels, info.width as usize, info.height as usize, grid);
        let (mean, max) = diff(&got, &r.cells);
        // An original record must be the input's picture; a re-encoded one
        // differs by its resize (cell borders move by a fraction of a source
        // pixel) and its q95 4:2:0 encoding (chroma bleeds across sharp
        // colour edges of small synthetic images: up to ~60 levels in one
        // cell of Pillow's 100x100 CMYK sample), never by tens on average as
        // a wrong decode does (stripes: 137, colour shift: 60).
        let (mean_limit, max_limit) = if rec.origin.is_original() {
            (1.0, 6.0)
        } else {
            (4.0, 80.0)
        };
        assert!(
            mean < mean_limit && max < max_limit,
            "record {i} ({}, origin {:?}): mean |diff| {mean:.2}, max {max:.2} against Pillow's decode of the input",
            r.name,
            rec.origin
        );
    }
    assert!(
        reencoded >= 5,
        "only {reencoded} re-encoded records checked"
    );
}
