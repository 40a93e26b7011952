//! Measuring the loader: its throughput beside the decode-only ceiling of
//! the same records with the same threads, per-stage times, memory, and
//! whether a consumer at a fixed rate ever waits (what `bench-pipeline` runs).

use super::cpu_seconds;
use crate::error::ReadError;
use crate::loader::{Loader, StageTimes};
use crate::reader::Dataset;
use serde::Serialize;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// One loader run.
#[derive(Debug, Clone, Serialize)]
pub struct LoaderRun {
    /// Worker threads.
    pub workers: usize,
    /// Images produced in the timed part (after warm-up).
    pub images: u64,
    /// Batches in the timed part.
    pub batches: u64,
    /// Wall time of the timed part.
    pub seconds: f64,
    /// Images per second.
    pub images_per_sec: f64,
    /// Encoded megabytes (10^6) per second read from the shards.
    pub mb_per_sec: f64,
    /// CPU seconds (user + system, whole process) per image.
    pub cpu_seconds_per_image: f64,
    /// Per-stage times summed over workers, for the timed part.
    pub stages: StageTimes,
}

/// The decode-only ceiling.
#[derive(Debug, Clone, Serialize)]
pub struct CeilingRun {
    /// Threads.
    pub threads: usize,
    /// Records decoded.
    pub images: u64,
    /// Records that could not be read or decoded.
    pub failed: u64,
    /// Wall time.
    pub seconds: f64,
    /// Images per second.
    pub images_per_sec: f64,
}

/// Runs `batches` batches of `loader` after `warmup` batches (epochs roll
/// over as needed, starting at `epoch`). Counts images from the batches
/// themselves, so the number is what a consumer received. A record the
/// loader cannot load is the error it gives (naming shard and record), and
/// so is a loader whose epochs have no batch.
pub fn run_loader(
    loader: &Loader,
    epoch: u64,
    warmup: usize,
    batches: usize,
    consumer: Option<Duration>,
) -> crate::Result<(LoaderRun, ConsumerReport)> {
    let ds = loader.dataset();
    let workers = loader.workers();
    if loader.batches_per_epoch() == 0 {
        return Err(ReadError::Settings {
            what: "benchmark",
            detail: format!(
                "an epoch of this loader has no batch ({} records for this rank, batch size {})",
                loader.samples_per_epoch(),
                loader.batch_size()
            ),
        }
        .into());
    }
    let mut it = loader.epoch(epoch);
    let mut next_epoch = epoch + 1;
    let mut next = |it: &mut crate::loader::Epoch| -> crate::Result<crate::loader::Batch> {
        loop {
            match it.next() {
                Some(b) => return Ok(b?),
                None => {
                    *it = loader.epoch(next_epoch);
                    next_epoch += 1;
                }
            }
        }
    };
    for _ in 0..warmup {
        drop(next(&mut it)?);
    }
    let stages0 = it.stage_times();
    let epoch0 = it.state().epoch;
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    let (mut images, mut bytes) = (0u64, 0u64);
    let mut consumer_report = ConsumerReport::default();
    for _ in 0..batches {
        let w0 = Instant::now();
        let b = next(&mut it)?;
        let waited = w0.elapsed();
        images += (b.len() * b.views()) as u64;
        bytes += b
            .indices()
            .iter()
            .map(|&i| ds.record(i as usize).map_or(0, |r| r.bytes.len() as u64))
            .sum::<u64>();
        if let Some(step) = consumer {
            consumer_report.record(waited, step);
            spin_sleep(step);
        }
        drop(b);
    }
    let seconds = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    // Stage times: the difference over the timed part (only meaningful when
    // the timed part stayed in one epoch; otherwise the new epoch's counters).
    let s1 = it.stage_times();
    let stages = if it.state().epoch == epoch0 {
        diff(&s1, &stages0)
    } else {
        s1
    };
    consumer_report.finish(seconds, batches);
    Ok((
        LoaderRun {
            workers,
            images,
            batches: batches as u64,
            seconds,
            images_per_sec: images as f64 / seconds.max(1e-9),
            mb_per_sec: bytes as f64 / 1e6 / seconds.max(1e-9),
            cpu_seconds_per_image: cpu / images.max(1) as f64,
            stages,
        },
        consumer_report,
    ))
}

fn diff(a: &StageTimes, b: &StageTimes) -> StageTimes {
    StageTimes {
        samples: a.samples - b.samples,
        read: a.read - b.read,
        decode: a.decode - b.decode,
        resize: a.resize - b.resize,
        normalize: a.normalize - b.normalize,
        wait: a.wait - b.wait,
        skipped: a.skipped - b.skipped,
    }
}

/// Decodes the records `indices` of `ds` with `threads` threads and nothing
/// else: the same decoder the loader uses, on the same bytes. A record that
/// cannot be read or decoded is counted in `failed`, not in `images`.
pub fn decode_ceiling(ds: &Dataset, indices: &[u32], threads: usize) -> CeilingRun {
    let next = AtomicUsize::new(0);
    let failed = AtomicUsize::new(0);
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| {
                let mut buf = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&idx) = indices.get(i) else { break };
                    let ok = ds.record(idx as usize).is_ok_and(|r| {
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            crate::decode::decode_rgb(r.bytes, &mut buf).is_ok()
                        }))
                        .unwrap_or(false)
                    });
                    if !ok {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    let seconds = t0.elapsed().as_secs_f64();
    let failed = failed.into_inner() as u64;
    let images = indices.len() as u64 - failed;
    CeilingRun {
        threads: threads.max(1),
        images,
        failed,
        seconds,
        images_per_sec: images as f64 / seconds.max(1e-9),
    }
}

/// What a consumer taking a fixed time per batch saw.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ConsumerReport {
    /// Simulated step time, ms (0 = consumer off).
    pub step_ms: f64,
    /// Batches for which `next()` blocked more than 1 ms.
    pub batches_waited: u64,
    /// Fraction of batches that waited.
    pub fraction_waited: f64,
    /// Total time blocked in `next()`, seconds.
    pub wait_seconds: f64,
    /// Fraction of the wall time spent waiting for data (the GPU idle share).
    pub wait_fraction: f64,
}

impl ConsumerReport {
    fn record(&mut self, waited: Duration, step: Duration) {
        self.step_ms = step.as_secs_f64() * 1e3;
        self.wait_seconds += waited.as_secs_f64();
        if waited > Duration::from_millis(1) {
            self.batches_waited += 1;
        }
    }

    fn finish(&mut self, wall: f64, batches: usize) {
        self.fraction_waited = self.batches_waited as f64 / batches.max(1) as f64;
        self.wait_fraction = self.wait_seconds / wall.max(1e-9);
    }
}

/// Sleeps precisely (a simulated GPU step), without burning a core.
fn spin_sleep(d: Duration) {
    let end = Instant::now() + d;
    if d > Duration::from_millis(2) {
        std::thread::sleep(d - Duration::from_millis(1));
    }
    while Instant::now() < end {
        std::hint::spin_loop();
    }
}
