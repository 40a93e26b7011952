//! The loader's measurement: medians, process statistics, the page
//! cache, and the loader against its decode-only ceiling ([`pipeline`],
//! [`loader_bench`]: what `bench-pipeline` runs).
//!
//! Every report struct here (`LoaderRun`, `CeilingRun`, `ConsumerReport`,
//! [`loader_bench::PipelineReport`]) derives `Serialize`: its JSON form is
//! its fields, by these names, in seconds, bytes and images per second.

pub mod loader_bench;
pub mod page_cache;
pub mod pipeline;

pub use page_cache::{cached_fraction, drop_from_cache};
pub use pipeline::{CeilingRun, ConsumerReport, LoaderRun, decode_ceiling, run_loader};

/// User + system CPU seconds of this process so far.
pub fn cpu_seconds() -> f64 {
    let u = rusage();
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// Peak resident set size of this process, bytes.
pub fn peak_rss_bytes() -> u64 {
    rusage().ru_maxrss as u64 * 1024 // kilobytes on Linux
}

fn rusage() -> libc::rusage {
    // SAFETY: getrusage fills the zeroed struct we own; RUSAGE_SELF is always valid.
    unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut u);
        u
    }
}

/// The median of `values`: the middle one, or the mean of the middle two
/// (NaN when there are none). The one median of the crate's benchmarks.
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => v[n / 2],
        _ => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The index of the median element of `values` by value (the lower middle
/// one for an even count): "the median run" of a set of timed runs, whose
/// other measurements (per-stage times) are then reported. 0 when empty.
pub fn median_index(values: &[f64]) -> usize {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    order
        .get(values.len().saturating_sub(1) / 2)
        .copied()
        .unwrap_or(0)
}

#[cfg(test)]
mod median_tests {
    use super::{median, median_index};

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(&[]).is_nan());
        // By value, not by position in time.
        assert_eq!(median_index(&[9.0, 1.0, 5.0]), 2);
        assert_eq!(median_index(&[4.0, 1.0, 3.0, 2.0]), 3);
        assert_eq!(median_index(&[]), 0);
    }
}
