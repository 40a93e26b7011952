//! Reading packed data: memory-mapped shards and whole split folders.
//!
//! [`ShardReader::open`] maps a shard and validates its header, index and
//! metadata ([`crate::format::ShardLayout::parse`]) before any record is
//! handed out; records are zero-copy slices of the mapping. [`Dataset::open`]
//! opens a split folder through its manifest and addresses records by a
//! global index.

use crate::error::{FormatError, ReadError};
use crate::format::manifest::{MANIFEST_FILE, Manifest};
use crate::format::{FORMAT_VERSION, IndexEntry, Origin, ShardLayout, ShardMeta};
use memmap2::Mmap;
use std::fs::File;
use std::path::{Path, PathBuf};

/// One record: the encoded image bytes (borrowed from the mapping) and its index entry.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    /// Encoded bytes.
    pub bytes: &'a [u8],
    /// Class label.
    pub label: u32,
    /// Stored width.
    pub width: u32,
    /// Stored height.
    pub height: u32,
    /// What the packer did to the input.
    pub origin: Origin,
}

/// A memory-mapped, validated shard.
#[derive(Debug)]
pub struct ShardReader {
    path: PathBuf,
    map: Mmap,
    layout: ShardLayout,
}

impl ShardReader {
    /// Maps `path` and validates its structure.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, ReadError> {
        let path = path.as_ref().to_path_buf();
        let io = |source| ReadError::Io {
            path: path.clone(),
            source,
        };
        let file = File::open(&path).map_err(io)?;
        // SAFETY: the mapping is read-only and private to this process. If
        // another process truncates or rewrites the file while it is mapped,
        // reads may see changed bytes or fault (SIGBUS); shards are written
        // once, atomically (temp file + rename), and never modified in place,
        // so this only happens if a user edits the files under a running job.
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        let layout = ShardLayout::parse(&map).map_err(|source| ReadError::Format {
            path: path.clone(),
            source,
        })?;
        Ok(ShardReader { path, map, layout })
    }

    /// The shard's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.layout.entries.len()
    }

    /// Whether the shard holds no records.
    pub fn is_empty(&self) -> bool {
        self.layout.entries.is_empty()
    }

    /// The shard's metadata.
    pub fn meta(&self) -> &ShardMeta {
        &self.layout.meta
    }

    /// The index entries.
    pub fn entries(&self) -> &[IndexEntry] {
        &self.layout.entries
    }

    /// The whole mapped file.
    pub fn bytes(&self) -> &[u8] {
        &self.map
    }

    /// The stats section (running sums, then the mean-image sums).
    pub fn stats(&self) -> Vec<f64> {
        self.layout.stats(&self.map)
    }

    /// Record `i`, without checking its checksum.
    pub fn record(&self, i: usize) -> Result<Record<'_>, ReadError> {
        let e = self.layout.entries.get(i).ok_or(ReadError::OutOfRange {
            index: i,
            len: self.len(),
        })?;
        // parse() checked that every entry lies inside the mapping.
        let bytes = self
            .layout
            .record(&self.map, i)
            .ok_or_else(|| ReadError::Record {
                path: self.path.clone(),
                index: i,
                source: FormatError::Invalid {
                    field: "offset",
                    detail: "outside the file".into(),
                },
            })?;
        Ok(Record {
            bytes,
            label: e.label,
            width: e.width,
            height: e.height,
            origin: e.origin,
        })
    }

    /// Asks the kernel to start reading record `i`'s bytes into the page
    /// cache and returns at once (`madvise(MADV_WILLNEED)` on its pages), so
    /// that a later [`Self::record`] finds them there: the loader's
    /// readahead of the records of the batches it will hand out next.
    /// A hint: a record out of range, or a kernel that ignores it, changes
    /// nothing but the speed.
    pub fn prefetch_record(&self, i: usize) {
        #[cfg(unix)]
        if let Some(e) = self.layout.entries.get(i) {
            let _ =
                self.map
                    .advise_range(memmap2::Advice::WillNeed, e.offset as usize, e.len as usize);
        }
        #[cfg(not(unix))]
        let _ = i;
    }

    /// Record `i`, after checking its CRC-32.
    pub fn record_checked(&self, i: usize) -> Result<Record<'_>, ReadError> {
        self.verify_record(i)?;
        self.record(i)
    }

    /// Checks record `i`'s CRC-32.
    pub fn verify_record(&self, i: usize) -> Result<(), ReadError> {
        if i >= self.len() {
            return Err(ReadError::OutOfRange {
                index: i,
                len: self.len(),
            });
        }
        self.layout
            .verify_record(&self.map, i)
            .map_err(|source| ReadError::Record {
                path: self.path.clone(),
                index: i,
                source,
            })
    }
}

/// A packed split: its manifest and its open shards.
#[derive(Debug)]
pub struct Dataset {
    dir: PathBuf,
    manifest: Manifest,
    shards: Vec<ShardReader>,
    /// `starts[k]` = global index of shard k's first record; one extra entry = total.
    starts: Vec<usize>,
}

impl Dataset {
    /// Opens the split folder `dir` (holding `manifest.json`), mapping and
    /// validating every shard and checking it against the manifest.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, ReadError> {
        let dir = dir.as_ref().to_path_buf();
        let manifest = read_manifest(&dir)?;
        let mut shards = Vec::with_capacity(manifest.shards.len());
        let mut starts = vec![0usize];
        for entry in &manifest.shards {
            let path = dir.join(&entry.name);
            let shard = ShardReader::open(&path)?;
            if shard.len() as u64 != entry.records || shard.bytes().len() as u64 != entry.bytes {
                return Err(ReadError::Manifest {
                    path,
                    detail: format!(
                        "manifest says {} records / {} bytes, the shard has {} / {}",
                        entry.records,
                        entry.bytes,
                        shard.len(),
                        shard.bytes().len()
                    ),
                });
            }
            if shard.meta().fingerprint != manifest.fingerprint {
                return Err(ReadError::Manifest {
                    path,
                    detail: "shard belongs to a different pack (fingerprint differs)".into(),
                });
            }
            starts.push(starts.last().copied().unwrap_or(0) + shard.len());
            shards.push(shard);
        }
        let problems = manifest_problems(&manifest, &shards);
        if let Some(detail) = problems.into_iter().next() {
            return Err(ReadError::Manifest {
                path: dir.join(MANIFEST_FILE),
                detail,
            });
        }
        Ok(Dataset {
            dir,
            manifest,
            shards,
            starts,
        })
    }

    /// The split folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The shards, in order.
    pub fn shards(&self) -> &[ShardReader] {
        &self.shards
    }

    /// Total number of records.
    pub fn len(&self) -> usize {
        *self.starts.last().unwrap_or(&0)
    }

    /// Whether the split holds no records.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of classes.
    pub fn num_classes(&self) -> usize {
        self.manifest.classes.len()
    }

    /// Maps a global record index to (shard, index in shard).
    pub fn locate(&self, index: usize) -> Result<(usize, usize), ReadError> {
        if index >= self.len() {
            return Err(ReadError::OutOfRange {
                index,
                len: self.len(),
            });
        }
        let shard = self.starts.partition_point(|&s| s <= index) - 1;
        Ok((shard, index - self.starts[shard]))
    }

    /// Record `index` (global), without checking its checksum.
    pub fn record(&self, index: usize) -> Result<Record<'_>, ReadError> {
        let (s, i) = self.locate(index)?;
        self.shards[s].record(i)
    }

    /// Starts reading record `index` (global) ahead of use
    /// ([`ShardReader::prefetch_record`]).
    pub fn prefetch_record(&self, index: usize) {
        if let Ok((s, i)) = self.locate(index) {
            self.shards[s].prefetch_record(i);
        }
    }

    /// Record `index` (global), after checking its checksum.
    pub fn record_checked(&self, index: usize) -> Result<Record<'_>, ReadError> {
        let (s, i) = self.locate(index)?;
        self.shards[s].record_checked(i)
    }

    /// The per-pixel mean image (HWC, f32, 0..255), `mean_size` square.
    pub fn mean_image(&self) -> Result<Vec<f32>, ReadError> {
        let path = self.dir.join(&self.manifest.stats.mean_image_file);
        let bytes = std::fs::read(&path).map_err(|source| ReadError::Io {
            path: path.clone(),
            source,
        })?;
        let n = (self.manifest.stats.mean_size as usize).pow(2) * 3;
        if bytes.len() != n * 4 {
            return Err(ReadError::Manifest {
                path,
                detail: format!("mean image has {} bytes, expected {}", bytes.len(), n * 4),
            });
        }
        Ok(bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect())
    }
}

/// What is wrong between a manifest and its (opened) shards: the record
/// count, the class list against every record's label, and the per-class
/// counts. Empty when they agree.
fn manifest_problems(manifest: &Manifest, shards: &[ShardReader]) -> Vec<String> {
    let mut problems = Vec::new();
    let total: u64 = shards.iter().map(|s| s.len() as u64).sum();
    if total != manifest.records {
        problems.push(format!(
            "says {} records, its shards hold {total}",
            manifest.records
        ));
    }
    let classes = manifest.classes.len();
    if classes == 0 {
        problems.push("has an empty class list".into());
    }
    let mut counts = vec![0u64; classes];
    let mut out_of_range = 0u64;
    let mut first_bad = None;
    for (k, shard) in shards.iter().enumerate() {
        for (i, e) in shard.entries().iter().enumerate() {
            match counts.get_mut(e.label as usize) {
                Some(c) => *c += 1,
                None => {
                    out_of_range += 1;
                    first_bad.get_or_insert((k, i, e.label));
                }
            }
        }
    }
    if let Some((k, i, label)) = first_bad {
        problems.push(format!(
            "lists {classes} classes, but {out_of_range} records have a label outside 0..{classes} (first: {} record {i}, label {label})",
            shards[k].path().display()
        ));
    }
    if manifest.class_counts.len() != classes {
        problems.push(format!(
            "has {} class counts for {classes} classes",
            manifest.class_counts.len()
        ));
    } else if out_of_range == 0 && manifest.class_counts != counts {
        let c = (0..classes)
            .find(|&c| manifest.class_counts[c] != counts[c])
            .unwrap_or(0);
        problems.push(format!(
            "class counts differ from the shards' labels (class {c} `{}`: manifest {}, shards {})",
            manifest.classes[c].wnid, manifest.class_counts[c], counts[c]
        ));
    }
    problems
}

/// Reads and checks `dir/manifest.json`.
pub fn read_manifest(dir: &Path) -> Result<Manifest, ReadError> {
    let path = dir.join(MANIFEST_FILE);
    let text = std::fs::read(&path).map_err(|source| ReadError::Io {
        path: path.clone(),
        source,
    })?;
    let manifest: Manifest = serde_json::from_slice(&text).map_err(|e| ReadError::Manifest {
        path: path.clone(),
        detail: e.to_string(),
    })?;
    if manifest.format_version != FORMAT_VERSION {
        return Err(ReadError::Manifest {
            path,
            detail: format!(
                "format version {} (this build reads {FORMAT_VERSION})",
                manifest.format_version
            ),
        });
    }
    Ok(manifest)
}

/// One problem found by [`verify_dataset`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file concerned.
    pub path: PathBuf,
    /// What is wrong.
    pub detail: String,
}

/// What [`verify_dataset`] checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Split folders checked.
    pub splits: usize,
    /// Shards checked.
    pub shards: usize,
    /// Records whose checksum was checked.
    pub records: u64,
    /// Everything found wrong (empty = all good).
    pub problems: Vec<Problem>,
}

/// Checks every split under `root` (either a split folder holding
/// `manifest.json`, or a folder of split folders): each shard's structure,
/// whole-file checksum and size against the manifest, every record's
/// checksum, and the manifest against the shards (record count, class list
/// against every label, per-class counts). Collects all problems instead of stopping at the first.
pub fn verify_dataset(root: &Path) -> Result<VerifyReport, ReadError> {
    let mut splits = Vec::new();
    if root.join(MANIFEST_FILE).is_file() {
        splits.push(root.to_path_buf());
    } else {
        let rd = std::fs::read_dir(root).map_err(|source| ReadError::Io {
            path: root.to_path_buf(),
            source,
        })?;
        for e in rd.flatten() {
            if e.path().join(MANIFEST_FILE).is_file() {
                splits.push(e.path());
            }
        }
        splits.sort();
    }
    if splits.is_empty() {
        return Err(ReadError::Manifest {
            path: root.to_path_buf(),
            detail: format!("no {MANIFEST_FILE} here or in any subfolder"),
        });
    }
    let mut report = VerifyReport::default();
    for dir in splits {
        report.splits += 1;
        let manifest = match read_manifest(&dir) {
            Ok(m) => m,
            Err(e) => {
                report.problems.push(Problem {
                    path: dir.join(MANIFEST_FILE),
                    detail: e.to_string(),
                });
                continue;
            }
        };
        let mut opened = Vec::new();
        for entry in &manifest.shards {
            report.shards += 1;
            let path = dir.join(&entry.name);
            let shard = match ShardReader::open(&path) {
                Ok(s) => s,
                Err(e) => {
                    report.problems.push(Problem {
                        path,
                        detail: e.to_string(),
                    });
                    continue;
                }
            };
            let mut problem = |detail: String| {
                report.problems.push(Problem {
                    path: path.clone(),
                    detail,
                })
            };
            let crc = crc32fast::hash(shard.bytes());
            if crc != entry.crc32 || shard.bytes().len() as u64 != entry.bytes {
                problem(format!(
                    "file checksum/size {crc:08x}/{} differ from the manifest's {:08x}/{}",
                    shard.bytes().len(),
                    entry.crc32,
                    entry.bytes
                ));
            }
            if shard.meta().fingerprint != manifest.fingerprint {
                problem("belongs to a different pack (fingerprint differs)".into());
            }
            for i in 0..shard.len() {
                report.records += 1;
                if let Err(e) = shard.verify_record(i) {
                    problem(e.to_string());
                }
            }
            opened.push(shard);
        }
        if opened.len() == manifest.shards.len() {
            for detail in manifest_problems(&manifest, &opened) {
                report.problems.push(Problem {
                    path: dir.join(MANIFEST_FILE),
                    detail,
                });
            }
        }
    }
    Ok(report)
}
