//! What every binary in `tools/` shares: `-q/--quiet` and `-v/--verbose`
//! for the log level, treating a closed stdout (`| head`) as success, and
//! the value parsers of their arguments.

use std::process::ExitCode;

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

/// The `main` of every binary: runs `run` and maps what it returns to the
/// exit code. An error is printed as `tool: error: ...` (with its causes)
/// and exits 2; a closed stdout (`| head`), whether it surfaced as an error
/// or as `println!`'s panic, exits 0 quietly.
pub fn main(tool: &str, run: impl FnOnce() -> anyhow::Result<ExitCode>) -> ExitCode {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !is_print_to_closed_pipe(info.payload()) {
            hook(info)
        }
    }));
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)) {
        Ok(Ok(code)) => code,
        Ok(Err(e)) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("{tool}: error: {}", message(&e));
            ExitCode::from(2)
        }
        Err(panic) if is_print_to_closed_pipe(&*panic) => ExitCode::SUCCESS,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// An error and its causes, `a: b: c`, leaving out a cause whose text
/// the message already has (many errors embed their source's text).
pub fn message(err: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in err.chain() {
        let c = cause.to_string();
        if text.is_empty() {
            text = c;
        } else if !text.contains(&c) {
            text = format!("{text}: {c}");
        }
    }
    text
}

/// Whether a panic is `println!` failing on a closed pipe.
fn is_print_to_closed_pipe(payload: &(dyn std::any::Any + Send)) -> bool {
    let m = crate::error::panic_message(payload);
    m.starts_with("failed printing to stdout") && m.contains("Broken pipe")
}

/// clap value parsers shared by the binaries (`value_parser = cli::parse::positive`).
/// Their `Err` is clap's message text.
pub mod parse {
    /// A count that must be at least 1.
    pub fn at_least_1(s: &str) -> Result<usize, String> {
        match s.parse::<usize>() {
            Ok(0) => Err("must be at least 1".into()),
            Ok(v) => Ok(v),
            Err(e) => Err(e.to_string()),
        }
    }

    fn number(s: &str, ok: impl Fn(f64) -> bool, what: &str) -> Result<f64, String> {
        let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
        if v.is_finite() && ok(v) {
            Ok(v)
        } else {
            Err(format!("must be {what}, got {s}"))
        }
    }

    /// A finite number above 0.
    pub fn positive(s: &str) -> Result<f64, String> {
        number(s, |v| v > 0.0, "above 0")
    }

    /// A finite number, at least 0.
    pub fn non_negative(s: &str) -> Result<f64, String> {
        number(s, |v| v >= 0.0, "at least 0")
    }

    /// A number in [0, 1) (momentum).
    pub fn unit_interval(s: &str) -> Result<f64, String> {
        number(s, |v| (0.0..1.0).contains(&v), "in [0, 1)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_parsers_refuse_what_they_name() {
        use parse::*;
        assert_eq!(at_least_1("3"), Ok(3));
        assert!(at_least_1("0").unwrap_err().contains("at least 1"));
        assert!(at_least_1("-1").is_err());
        assert_eq!(positive("0.5"), Ok(0.5));
        for bad in ["0", "-1", "nan", "inf", "x"] {
            assert!(positive(bad).is_err(), "{bad}");
        }
        assert_eq!(non_negative("0"), Ok(0.0));
        assert!(non_negative("-0.1").is_err());
        assert_eq!(unit_interval("0.9"), Ok(0.9));
        assert!(unit_interval("1").unwrap_err().contains("[0, 1)"));
    }

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

    #[test]
    fn messages_name_each_cause_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "gone");
        #[derive(Debug, thiserror::Error)]
        #[error("open x: {0}")]
        struct Embeds(#[source] std::io::Error);
        let e = anyhow::Error::from(Embeds(io)).context("train split");
        assert_eq!(message(&e), "train split: open x: gone");
        let e = anyhow::anyhow!("inner").context("outer");
        assert_eq!(message(&e), "outer: inner");
    }
}
