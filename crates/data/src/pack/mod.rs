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
mod floor;
pub mod import;
mod pool;
mod resume;
pub mod walk;
pub mod writer;

use crate::error::PackError;
use crate::format::manifest::{MANIFEST_FILE, MEAN_IMAGE_FILE, PackSettings};
use crate::format::{DatasetStats, FORMAT_VERSION, Manifest, STATS_SCALARS, SkippedFile};
use crate::progress::ProgressMode;
use encode::EncodeOptions;
use pool::run_workers;
use resume::{Progress, fingerprint, resume_state};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Instant;
use walk::{SplitInputs, WalkOptions};

pub use floor::{FloorReport, decode_floor};
pub use pool::DELAY_ENV;
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
    /// How far above its split's limit, in percent, an RGB JPEG's shorter
    /// side may be and its bytes still be kept as they are (default 5: a
    /// 500-pixel ILSVRC2012 photo is kept, not re-encoded at 480; 0 makes
    /// the limit strict).
    pub keep_slack_percent: u32,
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
}

impl Default for PackOptions {
    fn default() -> Self {
        PackOptions {
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            readers: 16,
            train_max_side: 480,
            val_max_side: 640,
            keep_slack_percent: encode::DEFAULT_KEEP_SLACK_PERCENT,
            quality: 95,
            shard_bytes: 256 << 20,
            mean_size: 64,
            strict: false,
            overwrite: false,
            walk: WalkOptions::default(),
            progress: ProgressMode::Auto,
        }
    }
}

impl PackOptions {
    /// The encode options for `split`.
    pub fn encode_options(&self, split: &str) -> EncodeOptions {
        let max_side = if split == "val" {
            self.val_max_side
        } else {
            self.train_max_side
        };
        EncodeOptions {
            max_side,
            keep_up_to: EncodeOptions::keep_limit(max_side, self.keep_slack_percent),
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
        if self.keep_slack_percent > 100 {
            return bad("keep slack must be in 0..=100 percent");
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
            keep_up_to: enc.keep_up_to,
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
