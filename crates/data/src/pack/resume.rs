//! Resuming a pack: which finished shards of an earlier run belong to this
//! one (same fingerprint, in sequence), and the totals they carry.

use super::encode::EncodeOptions;
use super::walk::SplitInputs;
use super::writer::{self, shard_name};
use crate::error::{PackError, ReadError};
use crate::format::{self, FORMAT_VERSION, ShardEntry, ShardMeta, SkippedFile};
use crate::reader::ShardReader;
use sha2::Digest;
use std::path::Path;

/// Hash of everything that determines a split's bytes.
pub(super) fn fingerprint(split: &SplitInputs, enc: &EncodeOptions, shard_bytes: u64) -> String {
    let mut h = sha2::Sha256::new();
    h.update(format!(
        "rnim v{FORMAT_VERSION}\n{}\n{}\n{}\n{}\n{}\nkeep {}\nthumbnail area-averaged\n",
        split.name, enc.max_side, enc.quality, enc.mean_size, shard_bytes, enc.keep_up_to
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
pub(super) struct Progress {
    pub(super) shards: Vec<ShardEntry>,
    pub(super) skipped: Vec<SkippedFile>,
    pub(super) stats: Vec<f64>,
    pub(super) class_counts: Vec<u64>,
    /// Next input index to process.
    pub(super) next_input: usize,
    /// Records written so far.
    pub(super) records: u64,
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

    pub(super) fn add_shard(
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
pub(super) fn resume_state(
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
    // A shard that does not continue the sequence goes, with all after it.
    let remove = |path: &Path, why: std::fmt::Arguments| -> Result<(), PackError> {
        log::warn!("{}: {why}", path.display());
        std::fs::remove_file(path).map_err(PackError::io(path))
    };
    for name in names {
        let path = dir.join(&name);
        if broken || name != shard_name(k) {
            remove(
                &path,
                format_args!("not part of the finished sequence; removing"),
            )?;
            broken = true;
            continue;
        }
        let shard = match ShardReader::open(&path) {
            Ok(s) => s,
            Err(ReadError::Format { source, .. }) => {
                remove(
                    &path,
                    format_args!("unreadable ({source}); removing it and the shards after it"),
                )?;
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
            drop(shard); // unmapped before it is removed
            remove(
                &path,
                format_args!("out of sequence; removing it and the shards after it"),
            )?;
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
