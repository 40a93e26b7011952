//! A loader worker: takes jobs, runs the augmentation pipeline into the
//! job's batch slot, reports the slot done (or the record's error).

use super::batch::OutputKind;
use super::epoch::{Done, Job};
use super::{OnError, Shared, StageTimes};
use crate::augment::{Out, Scratch, Stage, sample_rng};
use crate::error::{LoadError, LoadErrorKind};
use crossbeam::channel::{Receiver, Sender};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

#[derive(Default)]
pub(super) struct StageCounters {
    samples: AtomicU64,
    read: AtomicU64,
    decode: AtomicU64,
    resize: AtomicU64,
    normalize: AtomicU64,
    skipped: AtomicU64,
}

impl StageCounters {
    pub(super) fn snapshot(&self) -> StageTimes {
        let s = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64 * 1e-9;
        StageTimes {
            samples: self.samples.load(Ordering::Relaxed),
            read: s(&self.read),
            decode: s(&self.decode),
            resize: s(&self.resize),
            normalize: s(&self.normalize),
            wait: 0.0,
            skipped: self.skipped.load(Ordering::Relaxed),
        }
    }
}

/// Produces all views of record `index` into `out`; returns the label.
fn process(
    shared: &Shared,
    scratch: &mut Scratch,
    epoch: u64,
    index: usize,
    out: Out<'_>,
    counters: Option<&StageCounters>,
) -> Result<u32, LoadErrorKind> {
    let mut t = Instant::now();
    let mut clock = |counter: Option<&AtomicU64>| {
        if let Some(c) = counter {
            let now = Instant::now();
            c.fetch_add((now - t).as_nanos() as u64, Ordering::Relaxed);
            t = now;
        }
    };
    let record = shared.record(index)?;
    clock(counters.map(|c| &c.read));
    let mut rng = sample_rng(shared.cfg.seed, epoch, index as u64);
    shared
        .pipeline
        .apply(scratch, record.bytes, &mut rng, out, &mut |stage| {
            clock(counters.map(|c| match stage {
                Stage::Decode => &c.decode,
                Stage::Resize => &c.resize,
                Stage::Normalize => &c.normalize,
            }))
        })?;
    if let Some(c) = counters {
        c.samples.fetch_add(1, Ordering::Relaxed);
    }
    Ok(record.label)
}

pub(super) fn load_error(shared: &Shared, index: usize, kind: LoadErrorKind) -> LoadError {
    let (shard, record) = shared.dataset.locate(index).unwrap_or((0, index));
    LoadError {
        shard: shared
            .dataset
            .shards()
            .get(shard)
            .map(|s| s.path().to_path_buf())
            .unwrap_or_default(),
        record,
        index,
        kind,
    }
}

pub(super) fn worker(
    shared: Arc<Shared>,
    epoch: u64,
    jobs: Receiver<Job>,
    done: Sender<Done>,
    stop: Arc<AtomicBool>,
    counters: Arc<StageCounters>,
) {
    let mut w = Scratch::new(shared.cfg.augment.crop_size());
    let profile = shared.cfg.profile.then_some(&*counters);
    let len = shared.dataset.len();
    for job in jobs {
        if stop.load(Ordering::Relaxed) {
            continue; // drain quickly
        }
        // Try the record, then (OnError::Skip) the records after it.
        let tries = if shared.cfg.on_error == OnError::Skip {
            16.min(len)
        } else {
            1
        };
        let mut result = Err(LoadErrorKind::Panic("no attempt".into()));
        let mut used = job.index as usize;
        for t in 0..tries {
            used = (job.index as usize + t) % len;
            let attempt = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                // SAFETY: this job is the only writer of its slot, and the
                // consumer reads the batch only after every slot reported done.
                let out = match shared.cfg.output {
                    OutputKind::F32Chw => Out::F32Chw(unsafe { job.mem.slot_f32(job.slot) }),
                    OutputKind::F32Hwc => Out::F32Hwc(unsafe { job.mem.slot_f32(job.slot) }),
                    OutputKind::U8Hwc => Out::U8Hwc(unsafe { job.mem.slot_u8(job.slot) }),
                };
                process(&shared, &mut w, epoch, used, out, profile)
            }));
            result = match attempt {
                Ok(r) => r,
                Err(panic) => {
                    w = Scratch::new(shared.cfg.augment.crop_size());
                    let msg = crate::error::panic_message(&*panic);
                    Err(LoadErrorKind::Panic(msg))
                }
            };
            match &result {
                Ok(_) => break,
                Err(e) if tries > 1 => {
                    let (shard, record) = shared.dataset.locate(used).unwrap_or((0, used));
                    log::warn!(
                        "shard {shard} record {record} (index {used}): {e}; using the next record"
                    );
                }
                Err(_) => {}
            }
        }
        match result {
            Ok(label) => {
                // SAFETY: as above.
                unsafe { job.mem.set_meta(job.slot, label, job.index) };
                if used != job.index as usize {
                    counters.skipped.fetch_add(1, Ordering::Relaxed);
                }
                if job.mem.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
                    let _ = done.send(Done::Batch(job.batch));
                }
            }
            Err(kind) => {
                let _ = done.send(Done::Failed(
                    job.batch,
                    load_error(&shared, job.index as usize, kind),
                ));
            }
        }
    }
}
