//! Writing files so that a crash or a full disk never leaves a half-written
//! one where a complete one is expected: write a temporary file beside it,
//! fsync, rename over the destination, fsync the folder. Used for shards,
//! manifests, checkpoints and model files alike.

use std::fs::File;
use std::io::Write;
use std::path::Path;

/// Suffix of files being written (a pack's resume deletes them).
pub const TMP_SUFFIX: &str = ".tmp";

/// Writes `bytes` to `path` atomically: after a failure (a full disk, say)
/// the previous file at `path`, if any, is intact.
pub fn write_file_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_file_name(format!(
        "{}{TMP_SUFFIX}",
        path.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    ));
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result?;
    sync_dir(path.parent().unwrap_or(Path::new(".")));
    Ok(())
}

/// Makes a rename durable (best effort: not every platform can open a folder).
pub fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}
