//! `ShardWriter`: streams records into a temporary file and publishes it
//! atomically (fsync, rename, fsync the folder), so a crash never leaves a
//! file that looks like a complete shard.

use crate::error::PackError;
use crate::format::{
    self, DEFAULT_ALIGNMENT, Encoding, HEADER_SIZE, IndexEntry, STATS_SCALARS, ShardEntry,
    ShardMeta,
};
use crate::pack::encode::PackedImage;
use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Name of shard `k`.
pub fn shard_name(k: u32) -> String {
    format!("shard-{k:05}.rnim")
}

pub use crate::files::TMP_SUFFIX;
use crate::files::{sync_dir, write_file_atomic};

/// Writes one shard.
pub struct ShardWriter {
    tmp: PathBuf,
    dest: PathBuf,
    name: String,
    out: BufWriter<File>,
    /// CRC of everything after the header, in write order.
    body_crc: crc32fast::Hasher,
    pos: u64,
    entries: Vec<IndexEntry>,
    stats: Vec<f64>,
}

impl ShardWriter {
    /// Starts shard number `k` in `dir`, with statistics for a mean image of side `mean_size`.
    pub fn create(dir: &Path, k: u32, mean_size: u32) -> Result<Self, PackError> {
        let name = shard_name(k);
        let dest = dir.join(&name);
        let tmp = dir.join(format!("{name}{TMP_SUFFIX}"));
        let file = File::create(&tmp).map_err(PackError::io(&tmp))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        out.write_all(&[0u8; HEADER_SIZE])
            .map_err(PackError::io(&tmp))?;
        let n = format::stats_len_for(mean_size).expect("mean_size is validated") as usize / 8;
        Ok(ShardWriter {
            tmp,
            dest,
            name,
            out,
            body_crc: crc32fast::Hasher::new(),
            pos: HEADER_SIZE as u64,
            entries: Vec::new(),
            stats: vec![0.0; n],
        })
    }

    /// Bytes the shard would have if finished now (without index and meta).
    pub fn len(&self) -> u64 {
        self.pos
    }

    /// Records written so far.
    pub fn records(&self) -> usize {
        self.entries.len()
    }

    /// Whether no record was written yet.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn emit(&mut self, bytes: &[u8]) -> Result<(), PackError> {
        self.out
            .write_all(bytes)
            .map_err(PackError::io(&self.tmp))?;
        self.body_crc.update(bytes);
        self.pos += bytes.len() as u64;
        Ok(())
    }

    /// Appends one record and adds its statistics.
    pub fn push(&mut self, img: &PackedImage, label: u32) -> Result<(), PackError> {
        let offset = format::align_up(self.pos, DEFAULT_ALIGNMENT as u64);
        let pad = (offset - self.pos) as usize;
        self.emit(&[0u8; DEFAULT_ALIGNMENT as usize][..pad])?;
        self.emit(&img.bytes)?;
        let len = u32::try_from(img.bytes.len()).map_err(|_| PackError::Layout {
            path: self.tmp.clone(),
            detail: "record over 4 GiB".into(),
        })?;
        self.entries.push(IndexEntry {
            offset,
            len,
            label,
            width: img.width,
            height: img.height,
            crc32: crc32fast::hash(&img.bytes),
            encoding: Encoding::Jpeg,
            origin: img.origin,
        });
        let (scalars, mean) = self.stats.split_at_mut(STATS_SCALARS);
        scalars[0] += 1.0;
        for (s, v) in scalars[1..11].iter_mut().zip(img.sums.iter()) {
            *s += v;
        }
        for (s, &v) in mean.iter_mut().zip(img.thumb.iter()) {
            *s += v as f64;
        }
        Ok(())
    }

    /// Writes index, meta, stats and header, then publishes the file atomically.
    pub fn finish(mut self, meta: &ShardMeta) -> Result<ShardEntry, PackError> {
        let entries = std::mem::take(&mut self.entries);
        let stats = std::mem::take(&mut self.stats);
        let mut trailer = Vec::new();
        let header = format::append_trailer(self.pos, &entries, meta, &stats, |b| {
            trailer.extend_from_slice(b)
        });
        self.emit(&trailer)?;
        let header_bytes = header.to_bytes();
        let tmp = self.tmp.clone();
        let mut file = self.out.into_inner().map_err(|e| PackError::Io {
            path: tmp.clone(),
            source: e.into_error(),
        })?;
        file.seek(SeekFrom::Start(0)).map_err(PackError::io(&tmp))?;
        file.write_all(&header_bytes).map_err(PackError::io(&tmp))?;
        file.sync_all().map_err(PackError::io(&tmp))?;
        drop(file);
        std::fs::rename(&tmp, &self.dest).map_err(PackError::io(&self.dest))?;
        sync_dir(self.dest.parent().unwrap_or(Path::new(".")));
        let mut crc = crc32fast::Hasher::new();
        crc.update(&header_bytes);
        crc.combine(&self.body_crc);
        Ok(ShardEntry {
            name: self.name,
            records: entries.len() as u64,
            bytes: self.pos,
            crc32: crc.finalize(),
        })
    }
}

/// Writes `bytes` to `path` atomically: temp file, fsync, rename, fsync folder.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), PackError> {
    write_file_atomic(path, bytes).map_err(PackError::io(path))
}
