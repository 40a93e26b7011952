//! The one progress-bar helper: hidden when stderr is not a terminal or the
//! caller asked for quiet (`--json`), so logs and pipes stay clean.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;

/// Whether bars are drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProgressMode {
    /// Draw on stderr when it is a terminal.
    #[default]
    Auto,
    /// Never draw.
    Hidden,
}

/// A bar of `len` items with rate and ETA, prefixed by `msg`.
pub fn progress_bar(len: u64, msg: &str, mode: ProgressMode) -> ProgressBar {
    if mode == ProgressMode::Hidden || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix:>6} [{elapsed_precise}] {wide_bar} {pos}/{len} {per_sec} {msg} ETA {eta}",
        )
        .expect("valid template"),
    );
    bar.set_prefix(msg.to_string());
    bar
}
