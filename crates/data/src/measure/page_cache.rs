//! The page cache: how much of a set of files it holds, and dropping them
//! from it (`bench-pipeline --cold`, `pack-imagenet --cold`).

use std::path::Path;

/// Fraction of the files' pages in the page cache (mincore), 0..1.
pub fn cached_fraction(files: &[impl AsRef<Path>]) -> std::io::Result<f64> {
    let page = page_size();
    let (mut resident, mut total) = (0usize, 0usize);
    for f in files {
        let file = std::fs::File::open(f)?;
        if file.metadata()?.len() == 0 {
            continue;
        }
        // SAFETY: a read-only private mapping, used only to ask the kernel
        // which pages are resident; no byte of it is read.
        let map = unsafe { memmap2::Mmap::map(&file)? };
        let pages = map.len().div_ceil(page);
        let mut vec = vec![0u8; pages];
        // SAFETY: `map` is a live mapping of `map.len()` bytes and `vec` has one byte per page.
        let rc = unsafe {
            libc::mincore(
                map.as_ptr() as *mut libc::c_void,
                map.len(),
                vec.as_mut_ptr(),
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        resident += vec.iter().filter(|&&v| v & 1 == 1).count();
        total += pages;
    }
    Ok(if total == 0 {
        1.0
    } else {
        resident as f64 / total as f64
    })
}

/// Asks the kernel to drop the files' clean pages from the page cache
/// (posix_fadvise DONTNEED). Pages mapped by a live mapping stay; call this
/// before opening the dataset.
pub fn drop_from_cache(files: &[impl AsRef<Path>]) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    for f in files {
        let file = std::fs::File::open(f)?;
        // SAFETY: a valid open descriptor; advice only, no memory is touched.
        let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        if rc != 0 {
            return Err(std::io::Error::from_raw_os_error(rc));
        }
    }
    Ok(())
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 { p as usize } else { 4096 }
}
