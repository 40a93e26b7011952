//! `train-resnet`: train a ResNet from packed shards with the paper's recipe.
//!
//! With no arguments it packs the bundled sample (once) and trains a small
//! ResNet on it for a few minutes on the CPU.
//!
//! Exit codes: 0 ok; 1 the run stopped on a training problem (NaN loss); 2 error.

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use dfdx::prelude::*;
use resnet_imagenet::model::summary;
use resnet_imagenet::model::zoo::{self, CLASS_COUNTS, Family, MODELS, Network, NetworkUser};
use resnet_imagenet::pack::{self, PackOptions};
use resnet_imagenet::progress::ProgressMode;
use resnet_imagenet::train::{self, Choices, DeviceKind, ScheduleKind, Start, TrainError};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Train ResNets (He et al. 2015) on packed ImageNet-style shards.
#[derive(Parser, Debug)]
#[command(version, about, long_about, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    train: TrainArgs,
    /// -v/--verbose (the log level; `--quiet` also hides the progress bar).
    #[arg(long, short, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Evaluate a checkpoint: centre crop, ten-crop and multi-scale testing.
    Eval {
        /// A run folder (uses checkpoints/last) or a checkpoint folder.
        #[arg(long)]
        checkpoint: PathBuf,
        /// Packed data root with val/ [default: the data the checkpoint was trained on].
        #[arg(long)]
        data: Option<PathBuf>,
        /// Shorter sides for multi-scale testing [default: 224,256,384,480,640 scaled to the crop].
        #[arg(long, value_delimiter = ',')]
        scales: Option<Vec<u32>>,
        /// Loader threads, at least 1 [default: all cores].
        #[arg(long, value_parser = at_least_1)]
        workers: Option<usize>,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Draw the curves of a run's log.jsonl as a PNG.
    Plot {
        /// The log.
        log: PathBuf,
        /// Output PNG [default: curves.png beside the log].
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
}

#[derive(Args, Debug)]
struct TrainArgs {
    /// Packed data root with train/ and val/ [default: the bundled sample, packed into target/].
    #[arg(long)]
    data: Option<PathBuf>,
    /// Model (see --list-models).
    #[arg(long, short)]
    model: Option<String>,
    /// List the models and exit.
    #[arg(long)]
    list_models: bool,
    /// Print the model's layers, parameters and multiply-adds, and exit.
    #[arg(long)]
    summary: bool,
    /// Classes for --summary.
    #[arg(long, default_value_t = 1000)]
    classes: usize,
    /// Input side for --summary [default: the model's crop].
    #[arg(long)]
    size: Option<usize>,
    /// Images per step, at least 1 [default: 256; CIFAR models 128].
    #[arg(long, short, value_parser = at_least_1)]
    batch_size: Option<usize>,
    /// Epochs, at least 1.
    #[arg(long, short, value_parser = at_least_1)]
    epochs: Option<usize>,
    /// Stop after this many steps in all (checkpointing the position), at least 1.
    #[arg(long, value_parser = at_least_1)]
    max_steps: Option<usize>,
    /// Learning rate, above 0 [default: 0.1 x batch / 256; CIFAR models 0.1].
    #[arg(long, value_parser = positive)]
    lr: Option<f64>,
    /// SGD momentum, in [0, 1) [default: 0.9].
    #[arg(long, value_parser = momentum)]
    momentum: Option<f64>,
    /// Weight decay, at least 0 [default: 0.0001].
    #[arg(long, value_parser = non_negative)]
    weight_decay: Option<f64>,
    /// `plateau` (divide by 10 when the val error stalls; the paper's, the default) or `step` (at --milestones).
    #[arg(long, value_enum)]
    schedule: Option<ScheduleKind>,
    /// Plateau: epochs without improvement before the lr falls [default: 5].
    #[arg(long)]
    patience: Option<usize>,
    /// Plateau: smallest improvement of the val top-1 error that counts (0..1) [default: 0.001].
    #[arg(long, value_parser = non_negative)]
    threshold: Option<f64>,
    /// Step: epochs at which the lr falls; values below 1 are fractions of the run (0.5,0.75: the CIFAR recipe).
    #[arg(long, value_delimiter = ',')]
    milestones: Option<Vec<f64>>,
    /// Linear warm-up, epochs (at least 0) [default: 0].
    #[arg(long, value_parser = non_negative)]
    warmup: Option<f64>,
    /// Seed (initialisation and data order) [default: 0].
    #[arg(long)]
    seed: Option<u64>,
    /// Loader threads, at least 1 [default: all cores].
    #[arg(long, short, value_parser = at_least_1)]
    workers: Option<usize>,
    /// Training crop side, at least 1 [default: 224; CIFAR models 32].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    crop: Option<u32>,
    /// Shorter-side range of the scale augmentation, MIN,MAX [default: 256,480 scaled to the crop].
    #[arg(long, value_delimiter = ',', num_args = 2)]
    scale: Option<Vec<u32>>,
    /// Zero-init the last BN of each residual branch.
    #[arg(long)]
    zero_init_residual: bool,
    /// Also checkpoint every N steps.
    #[arg(long, default_value_t = 0)]
    checkpoint_every: usize,
    /// Skip the final ten-crop and multi-scale evaluation.
    #[arg(long)]
    no_final_eval: bool,
    /// Output folder (log.jsonl, curves.png, checkpoints/) [default: runs/<model>].
    #[arg(long, short)]
    out: Option<PathBuf>,
    /// Continue a run exactly (its folder, or a checkpoint folder), with its
    /// saved settings; --epochs, --max-steps, --workers and --out may change.
    #[arg(long)]
    resume: Option<PathBuf>,
    /// `cpu`, or `cuda` (built with --features cuda).
    #[arg(long, value_enum, default_value_t = DeviceKind::Cpu)]
    device: DeviceKind,
    /// No progress bar, and only errors logged.
    #[arg(long, short)]
    quiet: bool,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// Testing aid: pretend the loss is NaN at this step.
    #[arg(long, hide = true)]
    debug_nan_at_step: Option<usize>,
}

/// A count that must be at least 1.
fn at_least_1(s: &str) -> Result<usize, String> {
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

fn positive(s: &str) -> Result<f64, String> {
    number(s, |v| v > 0.0, "above 0")
}

fn non_negative(s: &str) -> Result<f64, String> {
    number(s, |v| v >= 0.0, "at least 0")
}

fn momentum(s: &str) -> Result<f64, String> {
    number(s, |v| (0.0..1.0).contains(&v), "in [0, 1)")
}

/// Trains with the model type the dispatch picked.
struct TrainWith<D>(train::Job, D);

impl<D: Device<f32>> NetworkUser<D> for TrainWith<D> {
    type Output = Result<train::TrainReport, TrainError>;
    fn run<M: Network<D>>(self) -> Self::Output {
        train::run::<M, D>(self.0, self.1)
    }
}

/// Evaluates with the model type the dispatch picked.
struct EvalWith(train::EvalJob);

impl NetworkUser<Cpu> for EvalWith {
    type Output = Result<train::EvalReport, TrainError>;
    fn run<M: Network<Cpu>>(self) -> Self::Output {
        train::evaluate_job::<M>(self.0)
    }
}

/// Prints the per-layer table of the picked model type.
struct SummaryOf(usize);

impl NetworkUser<Cpu> for SummaryOf {
    type Output = String;
    fn run<M: Network<Cpu>>(self) -> String {
        summary::table(&M::build(&Cpu::default()), self.0, self.0)
    }
}

fn train_job(job: train::Job) -> Result<train::TrainReport, TrainError> {
    let (model, classes, seed) = (job.model().to_string(), job.classes(), job.config().seed);
    match job.config().device {
        #[cfg(feature = "cuda")]
        DeviceKind::Cuda => {
            zoo::with_network(&model, classes, TrainWith(job, train::cuda_device(seed)?))?
        }
        _ => zoo::with_network(&model, classes, TrainWith(job, train::cpu_device(seed)))?,
    }
}

/// The bundled sample, packed once into target/sample-packed.
fn packed_sample() -> anyhow::Result<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let input = root.join("datasets/sample");
    let out = root.join("target/sample-packed");
    if !(out.join("train/manifest.json").is_file() && out.join("val/manifest.json").is_file()) {
        eprintln!("packing {} into {} (once)", input.display(), out.display());
        pack::pack(&input, &out, &PackOptions::default()).context("packing the bundled sample")?;
    }
    Ok(out)
}

/// How the run starts: resumed with what may change, or new from the choices.
fn start(a: &TrainArgs) -> anyhow::Result<Start> {
    if let Some(from) = &a.resume {
        return Ok(Start::Resume(train::Resume {
            from: from.clone(),
            epochs: a.epochs,
            max_steps: a.max_steps,
            workers: a.workers,
            out: a.out.clone(),
        }));
    }
    let choices = Choices {
        sample: a.data.is_none(),
        data: match &a.data {
            Some(d) => d.clone(),
            None => packed_sample()?,
        },
        model: a.model.clone(),
        batch_size: a.batch_size,
        epochs: a.epochs,
        max_steps: a.max_steps,
        lr: a.lr,
        momentum: a.momentum,
        weight_decay: a.weight_decay,
        schedule: a.schedule,
        patience: a.patience,
        threshold: a.threshold,
        milestones: a.milestones.clone(),
        warmup_epochs: a.warmup,
        seed: a.seed,
        workers: a.workers,
        crop: a.crop,
        scale: a.scale.as_ref().map(|s| (s[0], s[1])),
        zero_init_last_bn: a.zero_init_residual,
        checkpoint_every: a.checkpoint_every,
        no_final_eval: a.no_final_eval,
        out: a.out.clone(),
        device: a.device,
    };
    Ok(Start::New(choices.config()?))
}

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
            let (model, classes) = (job.model().to_string(), job.classes());
            let r = zoo::with_network(&model, classes, EvalWith(job))??;
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
        print!("{}", zoo::with_network(model, a.classes, SummaryOf(size))?);
        return Ok(ExitCode::SUCCESS);
    }
    let progress = if a.quiet || a.json {
        ProgressMode::Hidden
    } else {
        ProgressMode::Auto
    };
    let mut job = train::prepare(start(&a)?, progress)?;
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
    match train_job(job) {
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
    match run(cli) {
        Ok(code) => code,
        Err(e) if resnet_imagenet::cli::is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
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
