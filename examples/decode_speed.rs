//! Single-thread decode speed of this crate's decoder, file by file, in the
//! same way `tjbench` measures libjpeg-turbo (repeat each file for a fixed
//! time, report megapixels per second): `decode_speed SECONDS FILE...`.
//! Prints `file megapixels_per_sec` lines and the harmonic aggregate.

use resnet_imagenet::decode::{decode_rgb, jpeg_decoder_name};
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let secs: f64 = args[0].parse().expect("SECONDS");
    let mut buf = Vec::new();
    let (mut pixels, mut time) = (0f64, 0f64);
    for f in &args[1..] {
        let data = std::fs::read(f).unwrap();
        let info = decode_rgb(&data, &mut buf).unwrap(); // warm-up
        let px = (info.width * info.height) as f64;
        let t0 = Instant::now();
        let mut n = 0u64;
        while t0.elapsed().as_secs_f64() < secs {
            decode_rgb(&data, &mut buf).unwrap();
            n += 1;
        }
        let per = t0.elapsed().as_secs_f64() / n as f64;
        println!("{f} {:.1}", px / per / 1e6);
        pixels += px;
        time += per;
    }
    println!(
        "aggregate {:.1} Mpixels/s over {} files ({})",
        pixels / time / 1e6,
        args.len() - 1,
        jpeg_decoder_name()
    );
}
