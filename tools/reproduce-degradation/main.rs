//! `reproduce-degradation`: the paper's plain-vs-residual comparison
//! (He et al. 2015, Fig. 6) on a packed data set: plain and residual CIFAR
//! nets of each depth with one recipe, seed and data, then the figure and
//! the table. Each run lives in OUT/<model> and resumes where it stopped,
//! so the set can be spread over several sittings: run the same command
//! again.

use clap::Parser;
use resnet_imagenet::cli::parse::{at_least_1, positive};
use resnet_imagenet::progress::ProgressMode;
use resnet_imagenet::train::compare::{Comparison, table};
use std::path::PathBuf;
use std::process::ExitCode;

/// Plain vs residual nets of several depths, trained alike; figure and table.
#[derive(Parser, Debug)]
#[command(name = "reproduce-degradation", version, about, long_about)]
struct Cli {
    #[command(flatten)]
    verbosity: resnet_imagenet::cli::Verbosity,
    /// Packed data root (train/ and val/ from pack-imagenet).
    #[arg(long)]
    data: PathBuf,
    /// Runs, figure (degradation.png) and table (degradation.md).
    #[arg(long, short, default_value = "runs/degradation")]
    out: PathBuf,
    /// Depths (6n+2), each as a plain and a residual net, trained in this
    /// order (plain then residual per depth).
    #[arg(long, value_delimiter = ',', default_value = "20,32,44,56")]
    depths: Vec<usize>,
    /// Epochs of every run (lr / 10 at 50% and 75%). 4 fits the default set
    /// into about four hours on Fashion-MNIST on a 2-core machine.
    #[arg(long, default_value_t = 4, value_parser = at_least_1)]
    epochs: usize,
    /// Images per step.
    #[arg(long, short = 'b', default_value_t = 128, value_parser = at_least_1)]
    batch_size: usize,
    /// Learning rate.
    #[arg(long, default_value_t = 0.1, value_parser = positive)]
    lr: f64,
    /// Seed of every run.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Loader threads.
    #[arg(long, short = 'w', default_value_t = 1, value_parser = at_least_1)]
    workers: usize,
    /// Stop each run after this many steps (run again to resume).
    #[arg(long, value_parser = at_least_1)]
    max_steps: Option<usize>,
    /// Also checkpoint every N steps (0: at epoch ends only): a sitting
    /// stopped mid-run (Ctrl-C, kill) loses at most N steps.
    #[arg(long, default_value_t = 100)]
    checkpoint_every: usize,
    /// Train nothing: draw and tabulate the runs already under --out.
    #[arg(long)]
    report: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    cli.verbosity.init_logger();
    resnet_imagenet::cli::main("reproduce-degradation", || {
        if let Some(d) = cli.depths.iter().find(|&&d| d < 8 || (d - 2) % 6 != 0) {
            anyhow::bail!("depth {d}: the CIFAR nets have depth 6n+2 (20, 32, 44, 56, 110)");
        }
        let c = Comparison {
            data: cli.data.clone(),
            out: cli.out.clone(),
            depths: cli.depths.clone(),
            epochs: cli.epochs,
            batch_size: cli.batch_size,
            lr: cli.lr,
            seed: cli.seed,
            workers: cli.workers,
            max_steps: cli.max_steps,
            checkpoint_every: cli.checkpoint_every,
            report_only: cli.report,
        };
        let progress = if cli.verbosity.quiet {
            ProgressMode::Hidden
        } else {
            ProgressMode::default()
        };
        let results = c.run(progress)?;
        print!("{}", table(&results));
        println!(
            "figure: {}\ntable: {}",
            c.out.join("degradation.png").display(),
            c.out.join("degradation.md").display()
        );
        Ok(ExitCode::SUCCESS)
    })
}
