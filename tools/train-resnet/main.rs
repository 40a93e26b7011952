//! `train-resnet`: train a ResNet from packed shards with the paper's recipe.
//!
//! With no arguments it packs the bundled sample (once) and trains a small
//! ResNet on it for a few minutes on the CPU.
//!
//! Exit codes: 0 ok; 1 the run stopped on a training problem (NaN loss); 2 error.

mod args;

use anyhow::Context;
use args::{Cli, Command};
use clap::Parser;
use resnet_imagenet::model::zoo::{self, CLASS_COUNTS, Family, MODELS};
use resnet_imagenet::progress::ProgressMode;
use resnet_imagenet::train::{self, TrainError};
use std::process::ExitCode;

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Some(Command::Plot { log, output }) => {
            let png = output.unwrap_or_else(|| log.with_file_name("curves.png"));
            train::runlog::plot(&log, &png, "training curves")?;
            println!("wrote {}", png.display());
            return Ok(ExitCode::SUCCESS);
        }
        Some(Command::Eval {
            checkpoint,
            data,
            scales,
            workers,
            json,
        }) => {
            let workers = workers
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
            let job = train::prepare_eval(&checkpoint, data.as_deref(), scales, workers)?;
            let r = train::evaluate_checkpoint(job)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                print!("{r}");
            }
            return Ok(ExitCode::SUCCESS);
        }
        None => {}
    }
    let a = cli.train;
    if a.list_models {
        for (name, family, what) in MODELS {
            println!("{name:<16} {:<9} {what}", format!("{family:?}"));
        }
        println!("class counts compiled: {CLASS_COUNTS:?}");
        return Ok(ExitCode::SUCCESS);
    }
    if a.summary {
        let model = a.model.as_deref().context("--summary needs --model")?;
        let size = a.size.unwrap_or(match zoo::family(model) {
            Some(Family::Cifar) => 32,
            _ => 224,
        });
        print!("{}", zoo::summary_table(model, a.classes, size)?);
        return Ok(ExitCode::SUCCESS);
    }
    let progress = if a.quiet || a.json {
        ProgressMode::Hidden
    } else {
        ProgressMode::Auto
    };
    let mut job = train::prepare(a.start()?, progress)?;
    job.inject_nan_at_step(a.debug_nan_at_step);
    let cfg = job.config();
    eprintln!(
        "training {} on {} ({} epochs, batch {}, lr {}, crop {}) -> {}",
        cfg.model,
        cfg.data.display(),
        cfg.epochs,
        cfg.batch_size,
        cfg.lr,
        cfg.crop,
        cfg.out.display()
    );
    match train::train(job) {
        Ok(r) if a.json => println!("{}", serde_json::to_string_pretty(&r)?),
        Ok(r) => print!("{r}"),
        Err(e @ TrainError::NonFinite { .. }) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(1));
        }
        Err(e) => return Err(e.into()),
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    resnet_imagenet::cli::Verbosity {
        quiet: cli.train.quiet,
        verbose: cli.verbose,
    }
    .init_logger();
    // A full disk or a file-size limit should be an error from write(), not a signal.
    #[cfg(unix)]
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
    resnet_imagenet::cli::main("train-resnet", || run(cli))
}

#[cfg(test)]
mod tests {
    use super::Cli;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }
}
