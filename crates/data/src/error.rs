//! The data half's errors, one enum per stage, wrapped by [`Error`].

use std::path::PathBuf;

/// What can be wrong with the bytes of a shard. Produced by the pure parser in
/// [`crate::format`], so it never names a file: [`ReadError`] adds that.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FormatError {
    /// The file does not start with [`crate::format::MAGIC`].
    #[error("bad magic: not a resnet-imagenet shard")]
    BadMagic,
    /// The shard was written by a format version this build does not read.
    #[error("unsupported format version {found} (this build reads {expected})")]
    UnsupportedVersion {
        /// Version in the header.
        found: u32,
        /// Version this build reads.
        expected: u32,
    },
    /// A section or record reaches past the end of the data.
    #[error("truncated: {what} needs bytes {offset}..{end} but the shard has {len}")]
    Truncated {
        /// Which part was cut off.
        what: &'static str,
        /// Where it starts.
        offset: u64,
        /// Where it ends.
        end: u64,
        /// Bytes available.
        len: u64,
    },
    /// A checksum did not match.
    #[error("checksum mismatch in {what}: stored {stored:08x}, computed {computed:08x}")]
    Checksum {
        /// Which part (header, index, meta, stats, record).
        what: &'static str,
        /// CRC-32 stored in the file.
        stored: u32,
        /// CRC-32 of the bytes present.
        computed: u32,
    },
    /// A field holds a value the format does not allow.
    #[error("invalid {field}: {detail}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// Why it is invalid.
        detail: String,
    },
}

/// An error opening or reading a shard or a packed dataset folder.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// The file could not be opened or mapped.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The shard's header, index or metadata is malformed.
    #[error("{path}: {source}")]
    Format {
        /// The shard.
        path: PathBuf,
        /// What is wrong.
        source: FormatError,
    },
    /// One record is malformed or fails its checksum.
    #[error("{path}: record {index}: {source}")]
    Record {
        /// The shard.
        path: PathBuf,
        /// Record index inside the shard.
        index: usize,
        /// What is wrong.
        source: FormatError,
    },
    /// A record index past the end of the shard or dataset.
    #[error("record {index} out of range ({len} records)")]
    OutOfRange {
        /// The index asked for.
        index: usize,
        /// How many records there are.
        len: usize,
    },
    /// A loader setting that cannot apply to this dataset (a rank outside
    /// the world size, an epoch with no batch to give).
    #[error("{what}: {detail}")]
    Settings {
        /// The setting.
        what: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// The dataset folder's manifest is missing, malformed, or disagrees with its shards.
    #[error("{path}: {detail}")]
    Manifest {
        /// The manifest or shard concerned.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
}

/// An error while packing a folder of images into shards.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PackError {
    /// Reading the input tree or writing the output failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The input tree is not a layout `pack-imagenet` understands.
    #[error("{path}: {detail}")]
    Layout {
        /// The folder or file concerned.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// `--strict` was given and an input file could not be packed.
    #[error("{path}: {reason} (--strict)")]
    BadFile {
        /// The input file.
        path: PathBuf,
        /// Why it was rejected.
        reason: String,
    },
    /// The output folder holds shards of a different pack (other inputs or settings).
    #[error(
        "{path}: holds shards of a different input or settings; pass --overwrite or choose another output"
    )]
    Mismatch {
        /// The output folder.
        path: PathBuf,
    },
    /// Existing output could not be read back (resume).
    #[error(transparent)]
    Read(#[from] ReadError),
}

impl PackError {
    /// Maps an I/O error on `path`: `.map_err(PackError::io(path))`.
    pub fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> PackError + '_ {
        move |source| PackError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// The message of a caught panic payload (`&str` or `String`), empty otherwise.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_default()
}

/// The data crate's error: every stage's.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// See [`FormatError`].
    #[error(transparent)]
    Format(#[from] FormatError),
    /// See [`ReadError`].
    #[error(transparent)]
    Read(#[from] ReadError),
    /// See [`PackError`].
    #[error(transparent)]
    Pack(#[from] PackError),
    /// See [`LoadError`].
    #[error(transparent)]
    Load(#[from] LoadError),
    /// See [`crate::decode::DecodeError`].
    #[error(transparent)]
    Decode(#[from] crate::decode::DecodeError),
    /// See [`crate::augment::AugmentError`].
    #[error(transparent)]
    Augment(#[from] crate::augment::AugmentError),
    /// See [`crate::pack::import::IdxError`].
    #[error(transparent)]
    Idx(#[from] crate::pack::import::IdxError),
}

/// `Result` with the crate-level [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why the loader could not produce a sample.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadErrorKind {
    /// The record could not be read or failed its checksum.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// The record's bytes did not decode (a bug: `pack-imagenet` decoded every record once).
    #[error(transparent)]
    Decode(#[from] crate::decode::DecodeError),
    /// Resizing failed.
    #[error("resize: {0}")]
    Resize(#[from] crate::augment::ResizeError),
    /// A worker panicked while processing the sample.
    #[error("worker panicked: {0}")]
    Panic(String),
}

impl From<crate::augment::AugmentError> for LoadErrorKind {
    fn from(e: crate::augment::AugmentError) -> Self {
        use crate::augment::AugmentError;
        match e {
            AugmentError::Decode(e) => LoadErrorKind::Decode(e),
            AugmentError::Resize(e) => LoadErrorKind::Resize(e),
        }
    }
}

/// A sample the loader could not produce, naming the shard and the record.
#[derive(Debug, thiserror::Error)]
#[error("{shard}: record {record} (dataset index {index}): {kind}")]
pub struct LoadError {
    /// The shard file.
    pub shard: PathBuf,
    /// Record index inside the shard.
    pub record: usize,
    /// Global index in the split.
    pub index: usize,
    /// What went wrong.
    #[source]
    pub kind: LoadErrorKind,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every stage's error converts into the crate's with `?` and keeps its message.
    #[test]
    fn every_stage_error_is_wrapped_by_the_crate_error() {
        fn wrap(e: impl Into<Error> + std::fmt::Display) -> (String, Error) {
            (e.to_string(), e.into())
        }
        use crate::decode::DecodeError;
        let cases = [
            wrap(FormatError::BadMagic),
            wrap(ReadError::OutOfRange { index: 3, len: 2 }),
            wrap(DecodeError::Truncated),
            wrap(crate::augment::AugmentError::Decode(DecodeError::Truncated)),
            wrap(crate::pack::import::IdxError::Io(
                std::io::ErrorKind::UnexpectedEof.into(),
            )),
        ];
        for (message, e) in &cases {
            assert_eq!(&e.to_string(), message);
        }
        assert!(matches!(cases[2].1, Error::Decode(_)));
    }
}
