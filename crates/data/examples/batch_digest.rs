//! Prints one line per batch of a packed split: its index, the CRC-32 of
//! its image bytes and its labels. The Python package's tests compare its
//! batches with these, bit for bit.
//!
//! ```text
//! batch_digest PATH BATCH SEED AUGMENT CROP OUTPUT RANK WORLD EPOCH
//! ```
//! (AUGMENT: train, center, ten_crop, cifar; OUTPUT: float32, uint8.)

use resnet_imagenet_data::loader::{LoaderBuilder, OutputKind};
use resnet_imagenet_data::reader::Dataset;
use resnet_imagenet_data::sampler::Distributed;
use std::sync::Arc;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    if a.len() != 9 {
        return Err(
            "usage: batch_digest PATH BATCH SEED AUGMENT CROP OUTPUT RANK WORLD EPOCH".into(),
        );
    }
    let (batch, seed, crop): (usize, u64, u32) = (a[1].parse()?, a[2].parse()?, a[4].parse()?);
    let (rank, world, epoch): (usize, usize, u64) = (a[6].parse()?, a[7].parse()?, a[8].parse()?);
    let output = match a[5].as_str() {
        "uint8" => OutputKind::U8Hwc,
        _ => OutputKind::F32Chw,
    };
    let (b, remainder) = LoaderBuilder::new()
        .batch_size(batch)
        .workers(2)
        .seed(seed)
        .output(output)
        .augment_named(&a[3], crop)?;
    let loader = b
        .distributed(Distributed {
            rank,
            world_size: world,
            remainder,
        })
        .build(Arc::new(Dataset::open(&a[0])?))?;
    for batch in loader.epoch(epoch) {
        let batch = batch?;
        let crc = if output == OutputKind::U8Hwc {
            crc32(batch.images_u8())
        } else {
            let bytes: Vec<u8> = batch
                .images()
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect();
            crc32(&bytes)
        };
        let labels: Vec<String> = batch.labels().iter().map(|l| l.to_string()).collect();
        println!("{} {crc:08x} {}", batch.index(), labels.join(","));
    }
    Ok(())
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(bytes);
    h.finalize()
}
