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
use resnet_imagenet::train::schedule::Schedule;
use resnet_imagenet::train::{self, TrainConfig, TrainError};
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
    /// SGD momentum, in [0, 1).
    #[arg(long, default_value_t = 0.9, value_parser = momentum)]
    momentum: f64,
    /// Weight decay, at least 0.
    #[arg(long, default_value_t = 1e-4, value_parser = non_negative)]
    weight_decay: f64,
    /// `plateau` (divide by 10 when the val error stalls; the paper's, the default) or `step` (at --milestones).
    #[arg(long)]
    schedule: Option<String>,
    /// Plateau: epochs without improvement before the lr falls.
    #[arg(long, default_value_t = 5)]
    patience: usize,
    /// Plateau: smallest improvement of the val top-1 error that counts (0..1).
    #[arg(long, default_value_t = 1e-3, value_parser = non_negative)]
    threshold: f64,
    /// Step: epochs at which the lr falls; values below 1 are fractions of the run (0.5,0.75: the CIFAR recipe).
    #[arg(long, value_delimiter = ',')]
    milestones: Option<Vec<f64>>,
    /// Linear warm-up, epochs (at least 0).
    #[arg(long, default_value_t = 0.0, value_parser = non_negative)]
    warmup: f64,
    /// Seed (initialisation and data order).
    #[arg(long, default_value_t = 0)]
    seed: u64,
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
    #[arg(long, default_value = "cpu")]
    device: String,
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
    match job.config().device.as_str() {
        #[cfg(feature = "cuda")]
        "cuda" => zoo::with_network(&model, classes, TrainWith(job, train::cuda_device(seed)?))?,
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

fn config(a: &TrainArgs) -> anyhow::Result<TrainConfig> {
    if let Some(r) = &a.resume {
        // The checkpoint's run, continued in the folder given (not the one
        // it was written in: a copied run continues in the copy); only
        // these may change.
        let mut c = train::checkpoint_config(r)?;
        if let Some(e) = a.epochs {
            c.epochs = e;
        }
        if let Some(w) = a.workers {
            c.workers = w;
        }
        c.out = match &a.out {
            Some(o) => o.clone(),
            None => train::checkpoint::run_folder(r)?,
        };
        c.max_steps = a.max_steps;
        c.debug_nan_at_step = a.debug_nan_at_step;
        return Ok(c);
    }
    let sample = a.data.is_none();
    let data = match &a.data {
        Some(d) => d.clone(),
        None => packed_sample()?,
    };
    // The sample job: ResNet-18 on 58 photos, 64x64 crops, a few minutes on a CPU.
    let model = a.model.clone().unwrap_or_else(|| "resnet18".to_string());
    let mut c = TrainConfig::paper(data, &model);
    let cifar = zoo::family(&model) == Some(Family::Cifar);
    if zoo::family(&model).is_none() {
        anyhow::bail!(zoo::ZooError::UnknownModel { name: model });
    }
    if sample {
        c.batch_size = 16;
        c.epochs = 30;
        c.crop = 64;
        c.lr = 0.05;
        c.schedule = Schedule::Step {
            milestones: vec![20.0, 27.0],
            factor: 0.1,
        };
        c.out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/sample-run");
    } else {
        c.out = PathBuf::from("runs").join(&model);
    }
    if let Some(b) = a.batch_size {
        c.batch_size = b;
    }
    if let Some(e) = a.epochs {
        c.epochs = e;
    }
    if let Some(crop) = a.crop {
        c.crop = crop;
    }
    c.lr = match a.lr {
        Some(lr) => lr,
        None if sample => c.lr,
        None if cifar => 0.1,
        None => 0.1 * c.batch_size as f64 / 256.0,
    };
    c.scale = match &a.scale {
        Some(s) => (s[0], s[1]),
        None => ((256 * c.crop).div_ceil(224), (480 * c.crop).div_ceil(224)),
    };
    c.eval_resize = if cifar {
        c.crop
    } else {
        (256 * c.crop).div_ceil(224)
    };
    c.max_steps = a.max_steps;
    c.momentum = a.momentum;
    c.weight_decay = a.weight_decay;
    let schedule = match (&a.schedule, &a.milestones) {
        (Some(s), _) => s.as_str(),
        (None, Some(_)) => "step",
        (None, None) if sample => "sample",
        (None, None) => "plateau",
    };
    c.schedule = match schedule {
        "sample" => c.schedule,
        "plateau" => Schedule::Plateau {
            patience: a.patience,
            threshold: a.threshold,
            factor: 0.1,
        },
        "step" => {
            let m = a
                .milestones
                .clone()
                .context("--schedule step needs --milestones")?;
            let epochs = c.epochs as f64;
            Schedule::Step {
                milestones: m
                    .iter()
                    .map(|&v| if v < 1.0 { v * epochs } else { v })
                    .collect(),
                factor: 0.1,
            }
        }
        other => anyhow::bail!("--schedule {other:?}: expected plateau or step"),
    };
    c.warmup_epochs = a.warmup;
    c.seed = a.seed;
    if let Some(w) = a.workers {
        c.workers = w;
    }
    c.zero_init_last_bn = a.zero_init_residual;
    c.checkpoint_every = a.checkpoint_every;
    c.final_eval = !a.no_final_eval;
    if let Some(o) = &a.out {
        c.out = o.clone();
    }
    c.device = a.device.clone();
    c.debug_nan_at_step = a.debug_nan_at_step;
    Ok(c)
}

fn pct(x: f64) -> String {
    format!("{:.1}%", 100.0 * x)
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Some(Command::Plot { log, output }) => {
            let png = output.unwrap_or_else(|| log.with_file_name("curves.png"));
            train::log::plot(&log, &png, "training curves")?;
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
                let line = |name: &str, a: &train::metrics::Accuracy| {
                    println!(
                        "{name:<12} top-1 error {}  top-5 error {}  loss {:.4}  ({} images)",
                        pct(a.top1_error()),
                        pct(a.top5_error()),
                        a.loss(),
                        a.n
                    )
                };
                line("centre crop", &r.center);
                if let Some(t) = &r.ten_crop {
                    line("ten-crop", t);
                }
                if let Some(m) = &r.multiscale {
                    line(&format!("scales {:?}", r.scales), m);
                }
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
    let cfg = config(&a)?;
    let progress = if a.quiet || a.json {
        ProgressMode::Hidden
    } else {
        ProgressMode::Auto
    };
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
    match train::prepare(cfg, a.resume.as_deref(), progress).and_then(train_job) {
        Ok(r) => {
            if a.json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!(
                    "{} steps, {:.1} training images/s",
                    r.steps, r.images_per_sec
                );
                if let Some(e) = &r.last_epoch {
                    println!(
                        "validation (centre crop, {} images): top-1 accuracy {} (error {}), top-5 accuracy {}",
                        e.val_images,
                        pct(1.0 - e.val_top1_error),
                        pct(e.val_top1_error),
                        pct(1.0 - e.val_top5_error)
                    );
                }
                if let Some(f) = &r.final_eval {
                    println!(
                        "ten-crop top-1 error {}, top-5 {}; multi-scale {:?} top-1 error {}, top-5 {}",
                        pct(f.ten_crop_top1_error),
                        pct(f.ten_crop_top5_error),
                        f.scales,
                        pct(f.multiscale_top1_error),
                        pct(f.multiscale_top5_error)
                    );
                }
                println!("log: {}", r.log.display());
                if let Some(p) = &r.plot {
                    println!("plot: {}", p.display());
                }
                if let Some(c) = &r.checkpoint {
                    println!("checkpoint: {}", c.display());
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e @ TrainError::NonFinite { .. }) => {
            eprintln!("error: {e}");
            Ok(ExitCode::from(1))
        }
        Err(e) => Err(e.into()),
    }
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
