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

/// Bytes of memory this process can still allocate without swapping: the
/// kernel's `MemAvailable`, or what is left under the cgroup's limit if that
/// is lower. `None` where neither can be read (not Linux).
pub fn available_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib = meminfo.lines().find_map(|l| {
        let rest = l.strip_prefix("MemAvailable:")?;
        rest.trim()
            .trim_end_matches("kB")
            .trim()
            .parse::<u64>()
            .ok()
    })?;
    let mut available = kib * 1024;
    let read = |p: &str| -> Option<u64> { std::fs::read_to_string(p).ok()?.trim().parse().ok() };
    if let (Some(max), Some(cur)) = (
        read("/sys/fs/cgroup/memory.max"),
        read("/sys/fs/cgroup/memory.current"),
    ) {
        available = available.min(max.saturating_sub(cur));
    }
    Some(available)
}
