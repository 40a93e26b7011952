//! The shard file format: pure parsing and serialisation, no I/O.
//!
//! A packed split is a folder holding shard files `shard-NNNNN.rnim`, a
//! `manifest.json` (see [`manifest`]) and the mean image. Each shard is one
//! file laid out as follows; every integer is little-endian.
//!
//! ```text
//! offset  size  field
//! ------  ----  ------------------------------------------------------------
//!      0     8  magic            b"RNIMSHRD"
//!      8     4  version u32      = 1 (FORMAT_VERSION)
//!     12     4  header_size u32  = 128
//!     16     8  record_count u64
//!     24     8  index_offset u64  start of the record index
//!     32     8  index_len u64     = record_count * 32
//!     40     8  meta_offset u64   start of the shard metadata (UTF-8 JSON, ShardMeta)
//!     48     8  meta_len u64
//!     56     8  stats_offset u64  start of the pixel statistics (f64, see below)
//!     64     8  stats_len u64
//!     72     4  alignment u32     records start at multiples of this (64)
//!     76     4  index_crc32 u32   CRC-32 (IEEE) of the index bytes
//!     80     4  meta_crc32 u32
//!     84     4  stats_crc32 u32
//!     88    36  reserved, zero
//!    124     4  header_crc32 u32  CRC-32 of bytes 0..124
//!    128     …  records, each starting at a multiple of `alignment`, zero padding between
//!      …     …  index: record_count entries of 32 bytes (8-byte aligned)
//!      …     …  meta JSON
//!      …     …  stats: f64 values (8-byte aligned)
//! ```
//!
//! Index entry (32 bytes):
//!
//! ```text
//!  0  8  offset u64   absolute offset of the record in the file
//!  8  4  len u32      record length in bytes
//! 12  4  label u32    class label (index into the manifest's class list)
//! 16  4  width u32    pixels of the stored image
//! 20  4  height u32
//! 24  4  crc32 u32    CRC-32 of the record bytes
//! 28  1  encoding u8  1 = JPEG (baseline or progressive, 3-channel YCbCr/RGB)
//! 29  1  origin u8    bit flags, see [`Origin`]: 0 = the original file's bytes
//! 30  2  reserved, zero
//! ```
//!
//! Stats: `3 * 3 + 3 + 1` running sums followed by the per-pixel sum image,
//! all f64, computed on every packed image squashed to `mean_size x mean_size`
//! (from the meta JSON): `[count, sum_r, sum_g, sum_b, sum_rr, sum_rg, sum_rb,
//! sum_gg, sum_gb, sum_bb, pixels, 0, 0]` (13 values; `count` images,
//! `pixels` pixels), then `mean_size * mean_size * 3` sums in HWC order. Sums,
//! not means, so that shards combine exactly (and in a fixed order) into the
//! dataset's mean image, per-channel mean/std and colour covariance.
//!
//! The records area runs from `header_size` to `index_offset`; every record
//! must lie inside it. [`ShardLayout::parse`] checks all of this and the
//! header, index and meta checksums before any record is handed out; the
//! record checksum is checked on request ([`ShardLayout::verify_record`]),
//! since it costs a pass over the bytes.

pub mod manifest;

use crate::error::FormatError;
use serde::{Deserialize, Serialize};

pub use manifest::{ClassInfo, DatasetStats, Manifest, ShardEntry, SkippedFile};

/// First eight bytes of every shard.
pub const MAGIC: [u8; 8] = *b"RNIMSHRD";
/// The format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Size of the fixed header.
pub const HEADER_SIZE: usize = 128;
/// Size of one index entry.
pub const INDEX_ENTRY_SIZE: usize = 32;
/// Default record alignment (a cache line).
pub const DEFAULT_ALIGNMENT: u32 = 64;
/// Number of f64 running sums before the mean-image sums in the stats section.
pub const STATS_SCALARS: usize = 13;

/// How a record's bytes are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[repr(u8)]
pub enum Encoding {
    /// A JPEG file with three colour components.
    Jpeg = 1,
}

impl Encoding {
    fn from_u8(v: u8) -> Result<Self, FormatError> {
        match v {
            1 => Ok(Encoding::Jpeg),
            other => Err(FormatError::Invalid {
                field: "encoding",
                detail: format!("unknown encoding {other}"),
            }),
        }
    }
}

/// What was done to an input file to make its record (bit flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash, Serialize, Deserialize)]
pub struct Origin(pub u8);

impl Origin {
    /// The original bytes, unchanged.
    pub const ORIGINAL: Origin = Origin(0);
    /// Resized so that its shorter side equals the pack's limit, then re-encoded.
    pub const RESIZED: u8 = 1;
    /// The input was grayscale, converted to RGB.
    pub const FROM_GRAY: u8 = 2;
    /// The input was a CMYK (or YCCK) JPEG, converted to RGB.
    pub const FROM_CMYK: u8 = 4;
    /// The input was not a JPEG (PNG, ...) whatever its name said.
    pub const FROM_OTHER_FORMAT: u8 = 8;
    /// The input had an alpha channel or other colour type, converted to RGB.
    pub const FROM_OTHER_COLOR: u8 = 16;
    const ALL: u8 = 31;

    /// Whether the record holds the input file's bytes unchanged.
    pub fn is_original(self) -> bool {
        self.0 == 0
    }
    /// Whether flag `bit` is set.
    pub fn has(self, bit: u8) -> bool {
        self.0 & bit != 0
    }
    /// Human-readable list of the flags, e.g. `"resized+from-cmyk"`.
    pub fn describe(self) -> String {
        if self.is_original() {
            return "original".into();
        }
        let names = [
            (Self::RESIZED, "resized"),
            (Self::FROM_GRAY, "from-gray"),
            (Self::FROM_CMYK, "from-cmyk"),
            (Self::FROM_OTHER_FORMAT, "from-other-format"),
            (Self::FROM_OTHER_COLOR, "from-other-color"),
        ];
        names
            .iter()
            .filter(|(b, _)| self.has(*b))
            .map(|(_, n)| *n)
            .collect::<Vec<_>>()
            .join("+")
    }
}

/// One entry of the record index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    /// Absolute offset of the record.
    pub offset: u64,
    /// Record length in bytes.
    pub len: u32,
    /// Class label.
    pub label: u32,
    /// Stored image width.
    pub width: u32,
    /// Stored image height.
    pub height: u32,
    /// CRC-32 of the record bytes.
    pub crc32: u32,
    /// Encoding of the record bytes.
    pub encoding: Encoding,
    /// What was done to the input.
    pub origin: Origin,
}

impl IndexEntry {
    /// Serialises the entry into its 32 bytes.
    pub fn to_bytes(&self) -> [u8; INDEX_ENTRY_SIZE] {
        let mut b = [0u8; INDEX_ENTRY_SIZE];
        b[0..8].copy_from_slice(&self.offset.to_le_bytes());
        b[8..12].copy_from_slice(&self.len.to_le_bytes());
        b[12..16].copy_from_slice(&self.label.to_le_bytes());
        b[16..20].copy_from_slice(&self.width.to_le_bytes());
        b[20..24].copy_from_slice(&self.height.to_le_bytes());
        b[24..28].copy_from_slice(&self.crc32.to_le_bytes());
        b[28] = self.encoding as u8;
        b[29] = self.origin.0;
        b
    }

    /// Parses one 32-byte entry (fields only; bounds are checked by [`ShardLayout::parse`]).
    pub fn from_bytes(b: &[u8; INDEX_ENTRY_SIZE]) -> Result<Self, FormatError> {
        let origin = b[29];
        if origin & !Origin::ALL != 0 {
            return Err(FormatError::Invalid {
                field: "origin",
                detail: format!("unknown flags {origin:#x}"),
            });
        }
        if b[30] != 0 || b[31] != 0 {
            return Err(FormatError::Invalid {
                field: "index entry",
                detail: "reserved bytes are not zero".into(),
            });
        }
        Ok(IndexEntry {
            offset: u64_at(b, 0),
            len: u32_at(b, 8),
            label: u32_at(b, 12),
            width: u32_at(b, 16),
            height: u32_at(b, 20),
            crc32: u32_at(b, 24),
            encoding: Encoding::from_u8(b[28])?,
            origin: Origin(origin),
        })
    }
}

/// Per-shard metadata, stored as JSON inside the shard.
///
/// It makes each shard self-describing, which is what lets an interrupted
/// pack resume: the input range a finished shard covers and the files it
/// skipped are read back from the shard itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardMeta {
    /// Split name (`train`, `val`, ...).
    pub split: String,
    /// Position of this shard in the split.
    pub shard_index: u32,
    /// Global index (within the split) of this shard's first record.
    pub first_record: u64,
    /// First input file (index in the pack's sorted input list) this shard covers.
    pub input_start: u64,
    /// One past the last input file this shard covers.
    pub input_end: u64,
    /// Input files in `input_start..input_end` that were not packed.
    pub skipped: Vec<SkippedFile>,
    /// Side of the square mean image whose sums the stats section holds.
    pub mean_size: u32,
    /// Fingerprint of the pack inputs and settings (see `pack`), so that a
    /// resume never mixes shards of different packs.
    pub fingerprint: String,
}

/// The parsed fixed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Number of records.
    pub record_count: u64,
    /// Offset of the index.
    pub index_offset: u64,
    /// Length of the index in bytes.
    pub index_len: u64,
    /// Offset of the meta JSON.
    pub meta_offset: u64,
    /// Length of the meta JSON.
    pub meta_len: u64,
    /// Offset of the stats section.
    pub stats_offset: u64,
    /// Length of the stats section.
    pub stats_len: u64,
    /// Record alignment.
    pub alignment: u32,
    /// CRC-32 of the index.
    pub index_crc32: u32,
    /// CRC-32 of the meta JSON.
    pub meta_crc32: u32,
    /// CRC-32 of the stats section.
    pub stats_crc32: u32,
}

impl Header {
    /// Serialises the header into its 128 bytes, computing the header checksum.
    pub fn to_bytes(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&(HEADER_SIZE as u32).to_le_bytes());
        b[16..24].copy_from_slice(&self.record_count.to_le_bytes());
        b[24..32].copy_from_slice(&self.index_offset.to_le_bytes());
        b[32..40].copy_from_slice(&self.index_len.to_le_bytes());
        b[40..48].copy_from_slice(&self.meta_offset.to_le_bytes());
        b[48..56].copy_from_slice(&self.meta_len.to_le_bytes());
        b[56..64].copy_from_slice(&self.stats_offset.to_le_bytes());
        b[64..72].copy_from_slice(&self.stats_len.to_le_bytes());
        b[72..76].copy_from_slice(&self.alignment.to_le_bytes());
        b[76..80].copy_from_slice(&self.index_crc32.to_le_bytes());
        b[80..84].copy_from_slice(&self.meta_crc32.to_le_bytes());
        b[84..88].copy_from_slice(&self.stats_crc32.to_le_bytes());
        let crc = crc32fast::hash(&b[..124]);
        b[124..128].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Parses and checks the fixed header at the start of `data`.
    pub fn parse(data: &[u8]) -> Result<Self, FormatError> {
        if data.len() < 8 || data[0..8] != MAGIC {
            return Err(if data.len() < 8 && MAGIC.starts_with(data) {
                truncated("header", 0, HEADER_SIZE as u64, data.len())
            } else {
                FormatError::BadMagic
            });
        }
        if data.len() < HEADER_SIZE {
            return Err(truncated("header", 0, HEADER_SIZE as u64, data.len()));
        }
        let b = &data[..HEADER_SIZE];
        let version = u32_at(b, 8);
        if version != FORMAT_VERSION {
            return Err(FormatError::UnsupportedVersion {
                found: version,
                expected: FORMAT_VERSION,
            });
        }
        let stored = u32_at(b, 124);
        let computed = crc32fast::hash(&b[..124]);
        if stored != computed {
            return Err(FormatError::Checksum {
                what: "header",
                stored,
                computed,
            });
        }
        let header_size = u32_at(b, 12);
        if header_size as usize != HEADER_SIZE {
            return Err(invalid(
                "header_size",
                format!("{header_size}, expected {HEADER_SIZE}"),
            ));
        }
        Ok(Header {
            record_count: u64_at(b, 16),
            index_offset: u64_at(b, 24),
            index_len: u64_at(b, 32),
            meta_offset: u64_at(b, 40),
            meta_len: u64_at(b, 48),
            stats_offset: u64_at(b, 56),
            stats_len: u64_at(b, 64),
            alignment: u32_at(b, 72),
            index_crc32: u32_at(b, 76),
            meta_crc32: u32_at(b, 80),
            stats_crc32: u32_at(b, 84),
        })
    }
}

/// A validated view of a shard's structure: header, index and metadata.
///
/// Built by [`ShardLayout::parse`] from the whole file's bytes; after that,
/// every record offset is known to lie inside the records area, so handing
/// out `&data[entry.offset..entry.offset + entry.len]` cannot go out of bounds.
#[derive(Debug, Clone)]
pub struct ShardLayout {
    /// The fixed header.
    pub header: Header,
    /// The record index.
    pub entries: Vec<IndexEntry>,
    /// The shard metadata.
    pub meta: ShardMeta,
}

impl ShardLayout {
    /// Parses and validates a whole shard held in `data`. Never panics; any
    /// inconsistency is an error.
    pub fn parse(data: &[u8]) -> Result<Self, FormatError> {
        let header = Header::parse(data)?;
        let len = data.len();
        let index = section(data, "index", header.index_offset, header.index_len)?;
        let meta_bytes = section(data, "meta", header.meta_offset, header.meta_len)?;
        let stats = section(data, "stats", header.stats_offset, header.stats_len)?;
        if header.alignment == 0
            || !header.alignment.is_power_of_two()
            || header.alignment > 1 << 20
        {
            return Err(invalid(
                "alignment",
                format!("{} is not a power of two <= 1 MiB", header.alignment),
            ));
        }
        let expected_index_len = header.record_count.checked_mul(INDEX_ENTRY_SIZE as u64);
        if expected_index_len != Some(header.index_len) {
            return Err(invalid(
                "index_len",
                format!(
                    "{} bytes for {} records",
                    header.index_len, header.record_count
                ),
            ));
        }
        if header.index_offset < HEADER_SIZE as u64 || header.index_offset % 8 != 0 {
            return Err(invalid("index_offset", format!("{}", header.index_offset)));
        }
        if header.stats_offset % 8 != 0 || header.stats_len % 8 != 0 {
            return Err(invalid("stats", "not 8-byte aligned".into()));
        }
        // The sections follow the records area, in order, without overlap.
        if header.meta_offset < header.index_offset + header.index_len
            || header.stats_offset < header.meta_offset + header.meta_len
        {
            return Err(invalid(
                "layout",
                "sections overlap or are out of order".into(),
            ));
        }
        check_crc("index", header.index_crc32, index)?;
        check_crc("meta", header.meta_crc32, meta_bytes)?;
        check_crc("stats", header.stats_crc32, stats)?;
        let meta: ShardMeta =
            serde_json::from_slice(meta_bytes).map_err(|e| invalid("meta", e.to_string()))?;
        let expected_stats = stats_len_for(meta.mean_size);
        if Some(header.stats_len) != expected_stats {
            return Err(invalid(
                "stats_len",
                format!(
                    "{} bytes for mean_size {}",
                    header.stats_len, meta.mean_size
                ),
            ));
        }
        let mut entries = Vec::with_capacity(header.record_count as usize);
        let records_end = header.index_offset;
        let mut prev_end = HEADER_SIZE as u64;
        for (i, chunk) in index.chunks_exact(INDEX_ENTRY_SIZE).enumerate() {
            let chunk: &[u8; INDEX_ENTRY_SIZE] = chunk.try_into().expect("chunks_exact");
            let e = IndexEntry::from_bytes(chunk).map_err(|err| match err {
                FormatError::Invalid { field, detail } => FormatError::Invalid {
                    field,
                    detail: format!("record {i}: {detail}"),
                },
                other => other,
            })?;
            let end = e.offset.checked_add(e.len as u64);
            if e.offset < prev_end
                || e.offset % header.alignment as u64 != 0
                || end.is_none_or(|end| end > records_end)
            {
                return Err(invalid(
                    "index entry",
                    format!(
                        "record {i} at {}..+{} is outside the records area {}..{} or out of order",
                        e.offset, e.len, prev_end, records_end
                    ),
                ));
            }
            if e.width == 0 || e.height == 0 {
                return Err(invalid(
                    "index entry",
                    format!("record {i} has a zero dimension"),
                ));
            }
            prev_end = e.offset + e.len as u64;
            entries.push(e);
        }
        debug_assert!(len as u64 >= records_end);
        Ok(ShardLayout {
            header,
            entries,
            meta,
        })
    }

    /// The bytes of record `i` of the shard `data` this layout was parsed from.
    pub fn record<'a>(&self, data: &'a [u8], i: usize) -> Option<&'a [u8]> {
        let e = self.entries.get(i)?;
        data.get(e.offset as usize..e.offset as usize + e.len as usize)
    }

    /// Checks record `i`'s CRC-32.
    pub fn verify_record(&self, data: &[u8], i: usize) -> Result<(), FormatError> {
        let e = self
            .entries
            .get(i)
            .ok_or_else(|| invalid("record", format!("no record {i}")))?;
        let bytes = self
            .record(data, i)
            .ok_or_else(|| truncated("record", e.offset, e.offset + e.len as u64, data.len()))?;
        check_crc("record", e.crc32, bytes)
    }

    /// The stats section decoded as f64 values.
    pub fn stats(&self, data: &[u8]) -> Vec<f64> {
        let s = &data[self.header.stats_offset as usize
            ..(self.header.stats_offset + self.header.stats_len) as usize];
        s.chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect()
    }
}

/// Length in bytes of the stats section for a mean image of side `mean_size`.
pub fn stats_len_for(mean_size: u32) -> Option<u64> {
    let n = (mean_size as u64)
        .checked_mul(mean_size as u64)?
        .checked_mul(3)?;
    n.checked_add(STATS_SCALARS as u64)?.checked_mul(8)
}

/// Rounds `x` up to a multiple of `align` (a power of two).
pub fn align_up(x: u64, align: u64) -> u64 {
    (x + align - 1) & !(align - 1)
}

fn section<'a>(
    data: &'a [u8],
    what: &'static str,
    offset: u64,
    len: u64,
) -> Result<&'a [u8], FormatError> {
    let end = offset
        .checked_add(len)
        .ok_or_else(|| invalid(what, "offset + length overflows".into()))?;
    if end > data.len() as u64 {
        return Err(truncated(what, offset, end, data.len()));
    }
    Ok(&data[offset as usize..end as usize])
}

fn check_crc(what: &'static str, stored: u32, bytes: &[u8]) -> Result<(), FormatError> {
    let computed = crc32fast::hash(bytes);
    if stored == computed {
        Ok(())
    } else {
        Err(FormatError::Checksum {
            what,
            stored,
            computed,
        })
    }
}

fn truncated(what: &'static str, offset: u64, end: u64, len: usize) -> FormatError {
    FormatError::Truncated {
        what,
        offset,
        end,
        len: len as u64,
    }
}

fn invalid(field: &'static str, detail: String) -> FormatError {
    FormatError::Invalid { field, detail }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Serialises a complete shard (header, records, index, meta, stats) into
/// bytes, for tests and small tools; the packer streams the same layout
/// through [`crate::pack::ShardWriter`].
pub fn serialize_shard(
    records: &[(IndexEntry, &[u8])],
    meta: &ShardMeta,
    stats: &[f64],
) -> Vec<u8> {
    let mut out = vec![0u8; HEADER_SIZE];
    let align = DEFAULT_ALIGNMENT as u64;
    let mut entries = Vec::with_capacity(records.len());
    for (e, bytes) in records {
        let offset = align_up(out.len() as u64, align);
        out.resize(offset as usize, 0);
        out.extend_from_slice(bytes);
        entries.push(IndexEntry {
            offset,
            len: bytes.len() as u32,
            crc32: crc32fast::hash(bytes),
            ..*e
        });
    }
    finish_shard(&mut out, &entries, meta, stats);
    out
}

/// Appends index, meta and stats to `out` (which holds the header
/// placeholder and the records) and writes the header in place.
pub fn finish_shard(out: &mut Vec<u8>, entries: &[IndexEntry], meta: &ShardMeta, stats: &[f64]) {
    let header = append_trailer(out.len() as u64, entries, meta, stats, |b| {
        out.extend_from_slice(b)
    });
    out[..HEADER_SIZE].copy_from_slice(&header.to_bytes());
}

/// Emits the index, meta and stats sections through `emit`, given the
/// current end of the records area, and returns the header describing them.
/// Shared by the in-memory and the streaming writer so they agree byte for byte.
pub fn append_trailer(
    records_end: u64,
    entries: &[IndexEntry],
    meta: &ShardMeta,
    stats: &[f64],
    mut emit: impl FnMut(&[u8]),
) -> Header {
    let index_offset = align_up(records_end, 8);
    emit(&vec![0u8; (index_offset - records_end) as usize]);
    let mut index = Vec::with_capacity(entries.len() * INDEX_ENTRY_SIZE);
    for e in entries {
        index.extend_from_slice(&e.to_bytes());
    }
    emit(&index);
    let meta_offset = index_offset + index.len() as u64;
    let meta_json = serde_json::to_vec(meta).expect("ShardMeta serialises");
    emit(&meta_json);
    let meta_end = meta_offset + meta_json.len() as u64;
    let stats_offset = align_up(meta_end, 8);
    emit(&vec![0u8; (stats_offset - meta_end) as usize]);
    let mut stats_bytes = Vec::with_capacity(stats.len() * 8);
    for v in stats {
        stats_bytes.extend_from_slice(&v.to_le_bytes());
    }
    emit(&stats_bytes);
    Header {
        record_count: entries.len() as u64,
        index_offset,
        index_len: index.len() as u64,
        meta_offset,
        meta_len: meta_json.len() as u64,
        stats_offset,
        stats_len: stats_bytes.len() as u64,
        alignment: DEFAULT_ALIGNMENT,
        index_crc32: crc32fast::hash(&index),
        meta_crc32: crc32fast::hash(&meta_json),
        stats_crc32: crc32fast::hash(&stats_bytes),
    }
}

#[cfg(test)]
mod tests;
