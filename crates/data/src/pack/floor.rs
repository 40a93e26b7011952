//! The decode-only floor: read and decode every file and nothing else.

use super::walk::InputFile;
use serde::Serialize;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

/// Result of [`decode_floor`]: the plain "read + decode every file" pass.
#[derive(Debug, Clone, Serialize)]
pub struct FloorReport {
    /// Files decoded successfully.
    pub images: u64,
    /// Files that failed to decode.
    pub failed: u64,
    /// Bytes read.
    pub bytes: u64,
    /// Wall time.
    pub seconds: f64,
    /// Decoded files per second.
    pub images_per_sec: f64,
    /// Input MB per second.
    pub mb_per_sec: f64,
    /// Threads used.
    pub threads: usize,
}

/// Reads and decodes every file with `threads` threads and does nothing
/// else: the floor that packing (which also converts, encodes and writes)
/// cannot beat.
pub fn decode_floor(files: &[InputFile], threads: usize) -> FloorReport {
    let next = AtomicUsize::new(0);
    let start = Instant::now();
    let totals = crossbeam::thread::scope(|s| {
        let handles: Vec<_> = (0..threads.max(1))
            .map(|_| {
                s.spawn(|_| {
                    let mut buf = Vec::new();
                    let (mut ok, mut failed, mut bytes) = (0u64, 0u64, 0u64);
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(f) = files.get(i) else { break };
                        match std::fs::read(&f.path) {
                            Ok(data) => {
                                bytes += data.len() as u64;
                                // A decoder panic on a hostile file is a failure, as in packing.
                                let decoded =
                                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                                        crate::decode::decode_rgb(&data, &mut buf).is_ok()
                                    }));
                                match decoded {
                                    Ok(true) => ok += 1,
                                    _ => failed += 1,
                                }
                            }
                            Err(_) => failed += 1,
                        }
                    }
                    (ok, failed, bytes)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("decode thread"))
            .fold((0, 0, 0), |a, b| (a.0 + b.0, a.1 + b.1, a.2 + b.2))
    })
    .expect("decode threads");
    let seconds = start.elapsed().as_secs_f64();
    FloorReport {
        images: totals.0,
        failed: totals.1,
        bytes: totals.2,
        seconds,
        images_per_sec: totals.0 as f64 / seconds.max(1e-9),
        mb_per_sec: totals.2 as f64 / 1e6 / seconds.max(1e-9),
        threads: threads.max(1),
    }
}
