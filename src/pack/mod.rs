//! Packing: an ImageNet-style folder → memory-mapped shards.
//!
//! ```text
//! walk (sorted inputs, labels) ─▶ R readers ─▶ N workers: decode + convert + encode ─▶ reorder ─▶ ShardWriter
//! ```
//!
//! - **Deterministic**: workers take files out of order, but records are
//!   written strictly in input order and a shard ends only when the next
//!   record would push it past the target size, so the bytes depend on the
//!   inputs and settings alone, never on the thread count.
//! - **Resumable**: each shard records the input range it covers and the
//!   files it skipped (see [`crate::format::ShardMeta`]); a rerun keeps the
//!   finished shards of the same pack (same fingerprint), deletes partial
//!   `.tmp` files, and continues after the last finished shard. The result
//!   is identical to an uninterrupted run.
//! - **Honest**: every file found is either packed or listed as skipped with
//!   its reason (`files_seen = packed + skipped`); `strict` makes a skip fatal.
//! - **Reads ahead**: `readers` threads (default 16) read the files of the
//!   window ahead of the workers, so that on a cold disk or network storage
//!   many reads are in flight at once and the decoders wait on none.
//! - **Bounded memory**: at most `WINDOW_PER_THREAD * threads` files are in
//!   flight (read, being decoded, or waiting for their turn to be written).

#[cfg(feature = "libjpeg-turbo")]
mod compress;
pub mod encode;
pub mod import;
pub mod walk;
pub mod writer;

use crate::error::{PackError, ReadError};
use crate::format::manifest::{MANIFEST_FILE, MEAN_IMAGE_FILE, PackSettings};
use crate::format::{
    self, DatasetStats, FORMAT_VERSION, Manifest, STATS_SCALARS, ShardEntry, ShardMeta, SkippedFile,
};
use crate::progress::{ProgressMode, progress_bar};
use crate::reader::ShardReader;
use encode::{EncodeOptions, Encoder, PackedImage, SkipReason};
use serde::Serialize;
use sha2::Digest;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use walk::{InputFile, SplitInputs, WalkOptions};

pub use writer::{ShardWriter, shard_name};

/// Settings of a pack.
#[derive(Debug, Clone)]
pub struct PackOptions {
    /// Worker threads (default: all cores).
    pub threads: usize,
    /// Reader threads, reading input files ahead of the workers (default 16).
    pub readers: usize,
    /// Shorter-side limit for the train split (default 480, the largest training scale).
    pub train_max_side: u32,
    /// Shorter-side limit for the val split (default 640, the largest test scale).
    pub val_max_side: u32,
    /// JPEG quality of re-encoded images (default 95).
    pub quality: u8,
    /// Target shard size in bytes (default 256 MiB).
    pub shard_bytes: u64,
    /// Side of the mean image (default 64; the loader resizes it to the crop size).
    pub mean_size: u32,
    /// Fail on the first file that cannot be packed.
    pub strict: bool,
    /// Delete existing output of a different pack instead of failing.
    pub overwrite: bool,
    /// Where classes and val labels come from.
    pub walk: WalkOptions,
    /// Progress bars.
    pub progress: ProgressMode,
    /// Sleep this long per record written (for tests that interrupt a pack).
    pub debug_delay: Option<Duration>,
}

impl Default for PackOptions {
    fn default() -> Self {
        PackOptions {
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            readers: 16,
            train_max_side: 480,
            val_max_side: 640,
            quality: 95,
            shard_bytes: 256 << 20,
            mean_size: 64,
            strict: false,
            overwrite: false,
            walk: WalkOptions::default(),
            progress: ProgressMode::Auto,
            debug_delay: None,
        }
    }
}

impl PackOptions {
    /// The encode options for `split`.
    pub fn encode_options(&self, split: &str) -> EncodeOptions {
        EncodeOptions {
            max_side: if split == "val" {
                self.val_max_side
            } else {
                self.train_max_side
            },
            quality: self.quality,
            mean_size: self.mean_size,
        }
    }

    fn validate(&self) -> Result<(), PackError> {
        let bad = |detail: &str| {
            Err(PackError::Layout {
                path: PathBuf::new(),
                detail: detail.into(),
            })
        };
        if self.threads == 0 {
            return bad("threads must be at least 1");
        }
        if self.readers == 0 {
            return bad("readers must be at least 1");
        }
        if !(1..=100).contains(&self.quality) {
            return bad("quality must be in 1..=100");
        }
        if self.mean_size == 0 || self.mean_size > 1024 {
            return bad("mean size must be in 1..=1024");
        }
        if self.train_max_side == 0 || self.val_max_side == 0 {
            return bad("max side must be at least 1");
        }
        Ok(())
    }
}

/// What packing one split did. Serialised as the `--json` summary.
#[derive(Debug, Clone, Serialize)]
pub struct SplitSummary {
    /// Split name.
    pub split: String,
    /// Output folder.
    pub output: PathBuf,
    /// Files found.
    pub files: u64,
    /// Files packed (records).
    pub packed: u64,
    /// Files not packed, each with its reason.
    pub skipped: Vec<SkippedFile>,
    /// Shards in the split.
    pub shards: usize,
    /// Shards kept from an earlier, interrupted run.
    pub resumed_shards: usize,
    /// Input bytes read in this run.
    pub bytes_in: u64,
    /// Bytes of all shards.
    pub bytes_out: u64,
    /// Wall time of this run.
    pub seconds: f64,
    /// Files processed per second in this run.
    pub images_per_sec: f64,
    /// Input MB (10^6 bytes) per second in this run.
    pub mb_per_sec: f64,
}

/// Packs every split found under `input` into `output/<split>`.
pub fn pack(
    input: &Path,
    output: &Path,
    opts: &PackOptions,
) -> Result<Vec<SplitSummary>, PackError> {
    opts.validate()?;
    std::fs::create_dir_all(output).map_err(|source| PackError::Io {
        path: output.to_path_buf(),
        source,
    })?;
    // The output may lie inside the input tree: never pack it as input.
    let mut walk_opts = opts.walk.clone();
    walk_opts.exclude.push(output.to_path_buf());
    let splits = walk::discover(input, &walk_opts)?;
    splits
        .iter()
        .map(|s| pack_split(s, &output.join(&s.name), opts))
        .collect()
}

/// Hash of everything that determines a split's bytes.
fn fingerprint(split: &SplitInputs, enc: &EncodeOptions, shard_bytes: u64) -> String {
    let mut h = sha2::Sha256::new();
    h.update(format!(
        "rnim v{FORMAT_VERSION}\n{}\n{}\n{}\n{}\n{}\n",
        split.name, enc.max_side, enc.quality, enc.mean_size, shard_bytes
    ));
    for c in &split.classes {
        h.update(format!("class {}\t{}\n", c.wnid, c.name));
    }
    for f in &split.files {
        let size = std::fs::metadata(&f.path)
            .map(|m| m.len())
            .unwrap_or(u64::MAX);
        h.update(format!("{}\t{}\t{size}\n", f.rel, f.label));
    }
    let digest = h.finalize();
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// State carried over from finished shards (of an earlier run, or this one).
struct Progress {
    shards: Vec<ShardEntry>,
    skipped: Vec<SkippedFile>,
    stats: Vec<f64>,
    class_counts: Vec<u64>,
    /// Next input index to process.
    next_input: usize,
    /// Records written so far.
    records: u64,
}

impl Progress {
    fn new(num_classes: usize, mean_size: u32) -> Self {
        Progress {
            shards: Vec::new(),
            skipped: Vec::new(),
            stats: vec![0.0; format::stats_len_for(mean_size).expect("validated") as usize / 8],
            class_counts: vec![0; num_classes],
            next_input: 0,
            records: 0,
        }
    }

    fn add_shard(
        &mut self,
        entry: ShardEntry,
        meta: &ShardMeta,
        stats: &[f64],
        labels: impl Iterator<Item = u32>,
    ) {
        for (s, v) in self.stats.iter_mut().zip(stats) {
            *s += v;
        }
        for l in labels {
            if let Some(c) = self.class_counts.get_mut(l as usize) {
                *c += 1;
            }
        }
        self.records += entry.records;
        self.skipped.extend(meta.skipped.iter().cloned());
        self.next_input = meta.input_end as usize;
        self.shards.push(entry);
    }
}

/// Reads back the finished shards in `dir` that belong to this pack, in
/// order, deleting temporary files and anything after the first gap.
fn resume_state(
    dir: &Path,
    split: &SplitInputs,
    fp: &str,
    mean_size: u32,
) -> Result<Progress, PackError> {
    let mut state = Progress::new(split.classes.len(), mean_size);
    let mut names = Vec::new();
    for e in std::fs::read_dir(dir).map_err(PackError::io(dir))? {
        let e = e.map_err(PackError::io(dir))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(writer::TMP_SUFFIX) {
            std::fs::remove_file(e.path()).map_err(PackError::io(&e.path()))?;
        } else if name.starts_with("shard-") && name.ends_with(".rnim") {
            names.push(name);
        }
    }
    names.sort();
    let mut k = 0u32;
    let mut broken = false;
    for name in names {
        let path = dir.join(&name);
        if broken || name != shard_name(k) {
            log::warn!(
                "{}: not part of the finished sequence; removing",
                path.display()
            );
            std::fs::remove_file(&path).map_err(PackError::io(&path))?;
            broken = true;
            continue;
        }
        let shard = match ShardReader::open(&path) {
            Ok(s) => s,
            Err(ReadError::Format { source, .. }) => {
                log::warn!(
                    "{}: unreadable ({source}); removing it and the shards after it",
                    path.display()
                );
                std::fs::remove_file(&path).map_err(PackError::io(&path))?;
                broken = true;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let meta = shard.meta().clone();
        if meta.fingerprint != fp {
            return Err(PackError::Mismatch {
                path: dir.to_path_buf(),
            });
        }
        if meta.shard_index != k
            || meta.input_start as usize != state.next_input
            || meta.mean_size != mean_size
        {
            log::warn!(
                "{}: out of sequence; removing it and the shards after it",
                path.display()
            );
            drop(shard);
            std::fs::remove_file(&path).map_err(PackError::io(&path))?;
            broken = true;
            continue;
        }
        let entry = ShardEntry {
            name: name.clone(),
            records: shard.len() as u64,
            bytes: shard.bytes().len() as u64,
            crc32: crc32fast::hash(shard.bytes()),
        };
        let stats = shard.stats();
        state.add_shard(
            entry,
            &meta,
            &stats,
            shard.entries().iter().map(|e| e.label),
        );
        k += 1;
    }
    Ok(state)
}

/// Packs one split into `dir`.
pub fn pack_split(
    split: &SplitInputs,
    dir: &Path,
    opts: &PackOptions,
) -> Result<SplitSummary, PackError> {
    opts.validate()?;
    let start_time = Instant::now();
    let enc = opts.encode_options(&split.name);
    let fp = fingerprint(split, &enc, opts.shard_bytes);
    if opts.strict
        && let Some(u) = split.unlabeled.first()
    {
        return Err(PackError::BadFile {
            path: u.path.clone().into(),
            reason: u.reason.clone(),
        });
    }
    if opts.overwrite && dir.exists() {
        let existing = crate::reader::read_manifest(dir).ok();
        if existing.is_none_or(|m| m.fingerprint != fp) {
            std::fs::remove_dir_all(dir).map_err(PackError::io(dir))?;
        }
    }
    std::fs::create_dir_all(dir).map_err(PackError::io(dir))?;
    let mut state = resume_state(dir, split, &fp, enc.mean_size)?;
    let resumed_shards = state.shards.len();
    let total = split.files.len();
    let complete = state.next_input >= total && !state.shards.is_empty();
    let manifest_ok = crate::reader::read_manifest(dir).is_ok_and(|m| m.fingerprint == fp);
    let mut bytes_in = 0u64;
    let mut processed = 0usize;
    if !(complete && manifest_ok) {
        if resumed_shards > 0 {
            log::info!(
                "{}: resuming after {} finished shards ({} of {} files done)",
                split.name,
                resumed_shards,
                state.next_input,
                total
            );
        }
        // Writing the manifest last marks completion; remove a stale one first.
        let _ = std::fs::remove_file(dir.join(MANIFEST_FILE));
        processed = total - state.next_input.min(total);
        bytes_in = run_workers(split, dir, opts, &enc, &fp, &mut state)?;
        write_outputs(split, dir, opts, &enc, &fp, &state)?;
    }
    let seconds = start_time.elapsed().as_secs_f64();
    let mut skipped = split.unlabeled.clone();
    skipped.extend(state.skipped.iter().cloned());
    Ok(SplitSummary {
        split: split.name.clone(),
        output: dir.to_path_buf(),
        files: split.files_seen(),
        packed: state.records,
        skipped,
        shards: state.shards.len(),
        resumed_shards,
        bytes_in,
        bytes_out: state.shards.iter().map(|s| s.bytes).sum(),
        seconds,
        images_per_sec: processed as f64 / seconds.max(1e-9),
        mb_per_sec: bytes_in as f64 / 1e6 / seconds.max(1e-9),
    })
}

/// Runs the worker pool over the files from `state.next_input` on,
/// writing shards in order. Returns the input bytes read.
fn run_workers(
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
        let mut shard: Option<ShardWriter> = None;
        let mut shard_start = first;
        let mut shard_skipped: Vec<SkippedFile> = Vec::new();
        while next < end {
            let (i, r, n) = res_rx.recv().expect("a worker result");
            pending.insert(i, (r, n));
            while let Some((r, n)) = pending.remove(&next) {
                bytes_in += n;
                let file = &files[next];
                match r {
                    Ok(img) => {
                        let full = shard.as_ref().is_some_and(|w| {
                            !w.is_empty()
                                && w.len() + img.bytes.len() as u64 + 64 > opts.shard_bytes
                        });
                        if full {
                            let w = shard.take().expect("checked");
                            finish_shard(
                                w,
                                dir,
                                split,
                                fp,
                                enc,
                                state,
                                shard_start,
                                next,
                                &mut shard_skipped,
                            )?;
                            shard_start = next;
                        }
                        let w = match &mut shard {
                            Some(w) => w,
                            None => shard.insert(ShardWriter::create(
                                dir,
                                state.shards.len() as u32,
                                enc.mean_size,
                            )?),
                        };
                        w.push(&img, file.label)?;
                        if let Some(d) = opts.debug_delay {
                            std::thread::sleep(d);
                        }
                    }
                    Err(reason) => {
                        if opts.strict {
                            return Err(PackError::BadFile {
                                path: file.path.clone(),
                                reason,
                            });
                        }
                        log::warn!("skipping {}: {reason}", file.rel);
                        shard_skipped.push(SkippedFile {
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
        if shard.is_some() || !shard_skipped.is_empty() || state.shards.is_empty() {
            let w = match shard.take() {
                Some(w) => w,
                None => ShardWriter::create(dir, state.shards.len() as u32, enc.mean_size)?,
            };
            finish_shard(
                w,
                dir,
                split,
                fp,
                enc,
                state,
                shard_start,
                end,
                &mut shard_skipped,
            )?;
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

#[allow(clippy::too_many_arguments)]
fn finish_shard(
    w: ShardWriter,
    dir: &Path,
    split: &SplitInputs,
    fp: &str,
    enc: &EncodeOptions,
    state: &mut Progress,
    input_start: usize,
    input_end: usize,
    skipped: &mut Vec<SkippedFile>,
) -> Result<(), PackError> {
    let meta = ShardMeta {
        split: split.name.clone(),
        shard_index: state.shards.len() as u32,
        first_record: state.records,
        input_start: input_start as u64,
        input_end: input_end as u64,
        skipped: std::mem::take(skipped),
        mean_size: enc.mean_size,
        fingerprint: fp.to_string(),
    };
    let entry = w.finish(&meta)?;
    // Read the published shard back: its stats and labels feed the totals
    // exactly as they would when a later run resumes after it.
    let shard = ShardReader::open(dir.join(&entry.name))?;
    let stats = shard.stats();
    state.add_shard(
        entry,
        shard.meta(),
        &stats,
        shard.entries().iter().map(|e| e.label),
    );
    Ok(())
}

/// Turns the summed statistics into per-channel mean/std, covariance and the mean image.
pub fn stats_from_sums(sums: &[f64], mean_size: u32) -> (DatasetStats, Vec<f32>) {
    let images = sums[0];
    let px = sums[10].max(1.0);
    let m = [sums[1] / px, sums[2] / px, sums[3] / px];
    // sums[4..10] = rr, rg, rb, gg, gb, bb
    let second = |i: usize, j: usize| {
        let idx = match (i.min(j), i.max(j)) {
            (0, 0) => 4,
            (0, 1) => 5,
            (0, 2) => 6,
            (1, 1) => 7,
            (1, 2) => 8,
            _ => 9,
        };
        sums[idx] / px
    };
    let mut cov = [[0f64; 3]; 3];
    for (i, row) in cov.iter_mut().enumerate() {
        for (j, c) in row.iter_mut().enumerate() {
            *c = second(i, j) - m[i] * m[j];
        }
    }
    let std = [
        cov[0][0].max(0.0).sqrt(),
        cov[1][1].max(0.0).sqrt(),
        cov[2][2].max(0.0).sqrt(),
    ];
    let mean_image: Vec<f32> = sums[STATS_SCALARS..]
        .iter()
        .map(|&s| (s / images.max(1.0)) as f32)
        .collect();
    (
        DatasetStats {
            channel_mean: m,
            channel_std: std,
            rgb_covariance: cov,
            mean_image_file: MEAN_IMAGE_FILE.into(),
            mean_size,
            images: images as u64,
        },
        mean_image,
    )
}

fn write_outputs(
    split: &SplitInputs,
    dir: &Path,
    opts: &PackOptions,
    enc: &EncodeOptions,
    fp: &str,
    state: &Progress,
) -> Result<(), PackError> {
    let (stats, mean_image) = stats_from_sums(&state.stats, enc.mean_size);
    let mean_bytes: Vec<u8> = mean_image.iter().flat_map(|v| v.to_le_bytes()).collect();
    writer::write_atomic(&dir.join(MEAN_IMAGE_FILE), &mean_bytes)?;
    let mut skipped = split.unlabeled.clone();
    skipped.extend(state.skipped.iter().cloned());
    let mut report = String::from(
        "# path\treason (tab, newline, CR and backslash escaped as \\t \\n \\r \\\\)\n",
    );
    for s in &skipped {
        report.push_str(&format!(
            "{}\t{}\n",
            tsv_field(&s.path),
            tsv_field(&s.reason)
        ));
    }
    writer::write_atomic(&dir.join("skipped.tsv"), report.as_bytes())?;
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        split: split.name.clone(),
        records: state.records,
        shards: state.shards.clone(),
        classes: split.classes.clone(),
        class_counts: state.class_counts.clone(),
        files_seen: split.files_seen(),
        skipped,
        stats,
        settings: PackSettings {
            max_side: enc.max_side,
            quality: enc.quality,
            shard_bytes: opts.shard_bytes,
            mean_size: enc.mean_size,
        },
        fingerprint: fp.to_string(),
    };
    let json = serde_json::to_vec_pretty(&manifest).expect("manifest serialises");
    writer::write_atomic(&dir.join(MANIFEST_FILE), &json)
}

/// A TSV field: tab, newline, carriage return and backslash escaped, so
/// that every row is one line of exactly two fields.
pub fn tsv_field(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out
}

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
        Err(e) => return (Err(format!("unreadable: {e}")), 0),
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
            (Err(format!("decoder panicked: {msg}")), n)
        }
    }
}

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
