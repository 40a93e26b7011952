//! What every binary in `tools/` shares: `-q/--quiet` and `-v/--verbose`
//! for the log level, and treating a closed stdout (`| head`) as success.

/// `-q/--quiet` and `-v/--verbose` (flatten into a binary's arguments).
#[derive(Debug, Clone, Copy, Default, clap::Args)]
pub struct Verbosity {
    /// Only errors on stderr.
    #[arg(long, short, global = true)]
    pub quiet: bool,
    /// More logging (-v info, -vv debug).
    #[arg(long, short, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

impl Verbosity {
    /// The log level these flags ask for (`RUST_LOG` still overrides it).
    pub fn level(&self) -> &'static str {
        match (self.quiet, self.verbose) {
            (true, _) => "error",
            (false, 0) => "warn",
            (false, 1) => "info",
            _ => "debug",
        }
    }

    /// Starts the logger at [`Self::level`].
    pub fn init_logger(&self) {
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(self.level()))
            .format_timestamp(None)
            .init();
    }
}

/// Whether `err` comes from writing to a closed pipe: the reader has what it
/// wanted (`... --json | head`), so the tool exits 0 quietly.
pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_and_broken_pipes() {
        let v = |quiet, verbose| Verbosity { quiet, verbose }.level();
        assert_eq!(
            (v(false, 0), v(false, 1), v(false, 2), v(true, 2)),
            ("warn", "info", "debug", "error")
        );
        let pipe = anyhow::Error::from(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        assert!(is_broken_pipe(&pipe.context("writing the report")));
        assert!(!is_broken_pipe(&anyhow::anyhow!("other")));
    }
}
