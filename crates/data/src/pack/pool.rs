//! The packing worker pool: readers read ahead, workers decode and
//! re-encode out of order, and one writer appends records to shards strictly
//! in input order.

use super::PackOptions;
use super::encode::{EncodeOptions, Encoder, PackedImage, SkipReason};
use super::resume::Progress;
use super::walk::SplitInputs;
use super::writer::ShardWriter;
use crate::error::PackError;
use crate::format::{ShardMeta, SkippedFile};
use crate::progress::progress_bar;
use crate::reader::ShardReader;
use std::collections::BTreeMap;
use std::path::Path;

/// Runs the worker pool over the files from `state.next_input` on,
/// writing shards in order. Returns the input bytes read.
pub(super) fn run_workers(
    split: &SplitInputs,
    dir: &Path,
    opts: &PackOptions,
    enc: &EncodeOptions,
    fp: &str,
    state: &mut Progress,
) -> Result<u64, PackError> {
    let files = &split.files;
    let first = state.next_input;
    let end = files.len();
    let bar = progress_bar(end as u64, &split.name, opts.progress);
    bar.set_position(first as u64);
    let window = opts.threads * WINDOW_PER_THREAD;
    let delay = std::env::var(DELAY_ENV)
        .ok()
        .and_then(|ms| ms.parse().ok())
        .map(std::time::Duration::from_millis);
    let (job_tx, job_rx) = crossbeam::channel::unbounded::<usize>();
    let (data_tx, data_rx) = crossbeam::channel::unbounded::<(usize, std::io::Result<Vec<u8>>)>();
    let (res_tx, res_rx) =
        crossbeam::channel::unbounded::<(usize, Result<PackedImage, SkipReason>, u64)>();
    let mut bytes_in = 0u64;
    let result = crossbeam::thread::scope(|s| -> Result<(), PackError> {
        for _ in 0..opts.readers {
            let (job_rx, data_tx) = (job_rx.clone(), data_tx.clone());
            s.spawn(move |_| {
                for i in job_rx {
                    if data_tx.send((i, std::fs::read(&files[i].path))).is_err() {
                        break;
                    }
                }
            });
        }
        drop(data_tx);
        for _ in 0..opts.threads {
            let data_rx = data_rx.clone();
            let res_tx = res_tx.clone();
            s.spawn(move |_| {
                let mut encoder = Encoder::default();
                for (i, data) in data_rx {
                    let (r, n) = pack_one(data, &mut encoder, enc);
                    if res_tx.send((i, r, n)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(res_tx);
        let mut next_job = first;
        while next_job < end && next_job < first + window {
            job_tx.send(next_job).expect("workers alive");
            next_job += 1;
        }
        let mut pending = BTreeMap::new();
        let mut next = first;
        let mut shard = OpenShard {
            dir,
            split,
            fp,
            enc,
            writer: None,
            start: first,
            skipped: Vec::new(),
        };
        while next < end {
            let (i, r, n) = res_rx.recv().expect("a worker result");
            pending.insert(i, (r, n));
            while let Some((r, n)) = pending.remove(&next) {
                bytes_in += n;
                let file = &files[next];
                match r {
                    Ok(img) => {
                        let full = shard.writer.as_ref().is_some_and(|w| {
                            !w.is_empty()
                                && w.len() + img.bytes.len() as u64 + 64 > opts.shard_bytes
                        });
                        if full {
                            shard.finish(next, state)?;
                        }
                        shard.writer(state)?.push(&img, file.label)?;
                        if let Some(d) = delay {
                            std::thread::sleep(d);
                        }
                    }
                    Err(reason) => {
                        let reason = reason.to_string();
                        if opts.strict {
                            return Err(PackError::BadFile {
                                path: file.path.clone(),
                                reason,
                            });
                        }
                        log::warn!("skipping {}: {reason}", file.rel);
                        shard.skipped.push(SkippedFile {
                            path: file.rel.clone(),
                            reason,
                        });
                    }
                }
                next += 1;
                bar.set_position(next as u64);
                if next_job < end {
                    job_tx.send(next_job).expect("workers alive");
                    next_job += 1;
                }
            }
        }
        drop(job_tx);
        // The last shard covers the trailing skipped files too; a split where
        // nothing could be packed still gets one (empty) shard for the record.
        if shard.writer.is_some() || !shard.skipped.is_empty() || state.shards.is_empty() {
            shard.finish(end, state)?;
        }
        Ok(())
    });
    bar.finish_and_clear();
    match result {
        Ok(r) => r?,
        Err(panic) => std::panic::resume_unwind(panic),
    }
    Ok(bytes_in)
}

/// The shard being written: its writer (once it has a record), the first
/// input it covers, and the files skipped since the previous shard.
struct OpenShard<'a> {
    dir: &'a Path,
    split: &'a SplitInputs,
    fp: &'a str,
    enc: &'a EncodeOptions,
    writer: Option<ShardWriter>,
    start: usize,
    skipped: Vec<SkippedFile>,
}

impl OpenShard<'_> {
    /// The writer, created on first use as the next shard of `state`.
    fn writer(&mut self, state: &Progress) -> Result<&mut ShardWriter, PackError> {
        if self.writer.is_none() {
            let w = ShardWriter::create(self.dir, state.shards.len() as u32, self.enc.mean_size)?;
            self.writer = Some(w);
        }
        Ok(self.writer.as_mut().expect("just set"))
    }

    /// Publishes the shard as covering inputs `start..end` (possibly with no
    /// record: only skips), reads it back into `state`, and opens the next.
    fn finish(&mut self, end: usize, state: &mut Progress) -> Result<(), PackError> {
        self.writer(state)?;
        let w = self.writer.take().expect("just created");
        let meta = ShardMeta {
            split: self.split.name.clone(),
            shard_index: state.shards.len() as u32,
            first_record: state.records,
            input_start: self.start as u64,
            input_end: end as u64,
            skipped: std::mem::take(&mut self.skipped),
            mean_size: self.enc.mean_size,
            fingerprint: self.fp.to_string(),
        };
        let entry = w.finish(&meta)?;
        // Read the published shard back: its stats and labels feed the totals
        // exactly as they would when a later run resumes after it.
        let shard = ShardReader::open(self.dir.join(&entry.name))?;
        let stats = shard.stats();
        state.add_shard(
            entry,
            shard.meta(),
            &stats,
            shard.entries().iter().map(|e| e.label),
        );
        self.start = end;
        Ok(())
    }
}

/// An environment variable for tests that interrupt a pack: milliseconds to
/// sleep after each record written. Not an option: nothing a user sets.
pub const DELAY_ENV: &str = "RNIM_TEST_PACK_DELAY_MS";

/// Files in flight per worker thread: enough that one slow image (a large
/// one re-encoded) does not leave the other workers idle while the records
/// after it wait for their turn to be written.
const WINDOW_PER_THREAD: usize = 32;

fn pack_one(
    read: std::io::Result<Vec<u8>>,
    encoder: &mut Encoder,
    enc: &EncodeOptions,
) -> (Result<PackedImage, SkipReason>, u64) {
    let bytes = match read {
        Ok(b) => b,
        Err(e) => return (Err(SkipReason::Unreadable(e)), 0),
    };
    let n = bytes.len() as u64;
    // A decoder panic on a hostile file must not take the pack down: it
    // becomes a skip with the reason, and the worker gets fresh scratch.
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| encoder.encode(&bytes, enc)));
    match r {
        Ok(r) => (r, n),
        Err(panic) => {
            *encoder = Encoder::default();
            let msg = crate::error::panic_message(&*panic);
            (Err(SkipReason::DecoderPanic(msg)), n)
        }
    }
}
