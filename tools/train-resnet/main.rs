//! `train-resnet`: train a ResNet from packed shards with the paper's recipe.
//!
//! With no arguments it packs the bundled sample (once) and trains a small
//! ResNet on it for a few minutes on the CPU.
//!
//! Exit codes: 0 ok; 1 the run stopped on a training problem (NaN loss); 2 error.
//!
//! Started by `mpirun -np N` (built with `--features mpi`), each process is
//! one rank of a data-parallel run; a rank that fails or panics ends the
//! whole job (MPI_Abort, or SIGABRT that `mpirun` passes on), so no rank is
//! left waiting in a collective.

mod args;

use anyhow::Context;
use args::{Cli, Command};
use clap::Parser;
use resnet_imagenet::dist::{self, Communicator};
use resnet_imagenet::model::zoo::{self, CLASS_COUNTS, Family, MODELS};
use resnet_imagenet::progress::ProgressMode;
use resnet_imagenet::train::{self, TrainError};
use std::process::ExitCode;

fn run(cli: Cli, comm: &mut dyn Communicator) -> anyhow::Result<ExitCode> {
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
    let rank0 = comm.rank() == 0;
    let mut job = train::prepare(
        a.start()?,
        if rank0 {
            progress
        } else {
            ProgressMode::Hidden
        },
    )?;
    job.inject_nan_at_step(a.debug_nan_at_step);
    job.inject_panic_at_step(a.debug_panic_at_step);
    let cfg = job.config();
    if comm.world_size() > 1 && rank0 {
        eprintln!(
            "{} ranks, {} images per rank per step",
            comm.world_size(),
            cfg.batch_size / comm.world_size()
        );
    }
    if rank0 {
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
    }
    match train::train_on(job, comm) {
        Ok(_) if !rank0 => {}
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
    // Only a training run joins the ranks of a job (plot, eval, --list-models
    // and --summary run alone).
    let trains = cli.command.is_none() && !cli.train.list_models && !cli.train.summary;
    let mut comm: Box<dyn Communicator> = if trains {
        match dist::from_environment() {
            Ok(c) => c,
            Err(e) => {
                eprintln!("train-resnet: error: {e}");
                return ExitCode::from(2);
            }
        }
    } else {
        Box::new(dist::Local)
    };
    let (rank, world) = (comm.rank(), comm.world_size());
    if world == 1 {
        return resnet_imagenet::cli::main("train-resnet", || run(cli, &mut *comm));
    }
    // A panic must not unwind into MPI_Finalize (the other ranks would wait
    // in their next collective forever): say which rank, then abort, which
    // mpirun turns into the end of the job.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        hook(info);
        eprintln!("train-resnet: rank {rank} of {world} panicked; aborting the job");
        std::process::abort();
    }));
    let tool = format!("train-resnet (rank {rank} of {world})");
    let code = resnet_imagenet::cli::main(&tool, || run(cli, &mut *comm));
    if code != ExitCode::SUCCESS {
        // The other ranks may be inside a collective: end them all.
        comm.abort(if code == ExitCode::from(1) { 1 } else { 2 });
    }
    code
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
