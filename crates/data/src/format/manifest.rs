//! `manifest.json`: the description of one packed split (a folder of shards).
//!
//! Written last, atomically, by the packer; its presence means the split is
//! complete. Fields (JSON object):
//!
//! | field | meaning |
//! |---|---|
//! | `format_version` | shard format version ([`super::FORMAT_VERSION`]) |
//! | `split` | `train`, `val`, ... |
//! | `records` | total records in all shards |
//! | `shards` | `[{name, records, bytes, crc32}]` in order; `crc32` is of the whole file |
//! | `classes` | `[{wnid, name}]`; a record's label indexes this list |
//! | `class_counts` | records per label |
//! | `files_seen`, `skipped` | inputs found; those not packed, each `{path, reason}` (files_seen = records + skipped) |
//! | `stats` | per-channel mean/std (0..255 scale), RGB covariance, and the mean image file |
//! | `settings` | the pack settings (max side, quality, shard size, mean size) |
//! | `fingerprint` | hash of inputs and settings, shared with every shard's meta |

use serde::{Deserialize, Serialize};

/// One class.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassInfo {
    /// Folder name / WordNet id (e.g. `n01440764`).
    pub wnid: String,
    /// Human-readable name (from the ILSVRC2012 list when known, else the folder name).
    pub name: String,
}

/// An input file that was not packed, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedFile {
    /// The input path, relative to the pack's input root.
    pub path: String,
    /// Why it was skipped.
    pub reason: String,
}

/// One shard file of a split.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardEntry {
    /// File name inside the split folder.
    pub name: String,
    /// Number of records.
    pub records: u64,
    /// File size in bytes.
    pub bytes: u64,
    /// CRC-32 of the whole file.
    pub crc32: u32,
}

/// Pixel statistics of a split, computed at pack time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetStats {
    /// Per-channel (R, G, B) mean on the 0..255 scale.
    pub channel_mean: [f64; 3],
    /// Per-channel standard deviation on the 0..255 scale.
    pub channel_std: [f64; 3],
    /// RGB covariance matrix (0..255 scale), row-major; its eigenvectors give
    /// AlexNet's "PCA lighting" colour augmentation.
    pub rgb_covariance: [[f64; 3]; 3],
    /// File (in the split folder) holding the per-pixel mean image: raw
    /// little-endian f32, HWC, `mean_size x mean_size x 3`, 0..255 scale.
    pub mean_image_file: String,
    /// Side of the mean image.
    pub mean_size: u32,
    /// Images the statistics were computed over.
    pub images: u64,
}

/// Pack settings recorded with the data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackSettings {
    /// Images whose shorter side exceeds this are resized to it.
    pub max_side: u32,
    /// RGB JPEGs whose shorter side is at most this kept their bytes (0 in
    /// manifests written before 2026-12-05, whose packs kept them only up
    /// to `max_side`).
    #[serde(default)]
    pub keep_up_to: u32,
    /// JPEG quality for re-encoded images.
    pub quality: u8,
    /// Target shard size in bytes.
    pub shard_bytes: u64,
    /// Side of the mean image.
    pub mean_size: u32,
}

/// The manifest of one packed split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Shard format version.
    pub format_version: u32,
    /// Split name.
    pub split: String,
    /// Total records.
    pub records: u64,
    /// The shards, in order.
    pub shards: Vec<ShardEntry>,
    /// The classes; labels index this list.
    pub classes: Vec<ClassInfo>,
    /// Records per label.
    pub class_counts: Vec<u64>,
    /// Input files found.
    pub files_seen: u64,
    /// Input files not packed.
    pub skipped: Vec<SkippedFile>,
    /// Pixel statistics.
    pub stats: DatasetStats,
    /// Pack settings.
    pub settings: PackSettings,
    /// Fingerprint of inputs and settings.
    pub fingerprint: String,
}

/// File name of the manifest inside a split folder.
pub const MANIFEST_FILE: &str = "manifest.json";
/// File name of the mean image inside a split folder.
pub const MEAN_IMAGE_FILE: &str = "mean_image.f32";
