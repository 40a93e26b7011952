//! `train-resnet`'s arguments, and what they mean for the library.

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use resnet_imagenet::cli::parse;
use resnet_imagenet::engine::Precision;
use resnet_imagenet::train::{self, Choices, DeviceKind, EngineKind, ScheduleKind, Start};
use std::path::PathBuf;

/// Train ResNets (He et al. 2015) on packed ImageNet-style shards.
#[derive(Parser, Debug)]
#[command(version, about, long_about, args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub train: TrainArgs,
    /// -v/--verbose (the log level; `--quiet` also hides the progress bar).
    #[arg(long, short, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

#[derive(Subcommand, Debug)]
pub enum Command {
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
        #[arg(long, value_parser = parse::at_least_1)]
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
pub struct TrainArgs {
    /// Packed data root with train/ and val/ [default: the bundled sample, packed into target/].
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Model (see --list-models).
    #[arg(long, short)]
    pub model: Option<String>,
    /// List the models and exit.
    #[arg(long)]
    pub list_models: bool,
    /// Print the model's layers, parameters and multiply-adds, and exit.
    #[arg(long)]
    pub summary: bool,
    /// Classes for --summary.
    #[arg(long, default_value_t = 1000)]
    pub classes: usize,
    /// Input side for --summary [default: the model's crop].
    #[arg(long)]
    pub size: Option<usize>,
    /// Images per step, at least 1 [default: 256; CIFAR models 128].
    #[arg(long, short, value_parser = parse::at_least_1)]
    pub batch_size: Option<usize>,
    /// Epochs, at least 1.
    #[arg(long, short, value_parser = parse::at_least_1)]
    pub epochs: Option<usize>,
    /// Stop after this many steps in all (checkpointing the position), at least 1.
    #[arg(long, value_parser = parse::at_least_1)]
    pub max_steps: Option<usize>,
    /// Learning rate, above 0 [default: 0.1 x batch / 256; CIFAR models 0.1].
    #[arg(long, value_parser = parse::positive)]
    pub lr: Option<f64>,
    /// SGD momentum, in [0, 1) [default: 0.9].
    #[arg(long, value_parser = parse::unit_interval)]
    pub momentum: Option<f64>,
    /// Weight decay, at least 0 [default: 0.0001].
    #[arg(long, value_parser = parse::non_negative)]
    pub weight_decay: Option<f64>,
    /// `plateau` (divide by 10 when the val error stalls; the paper's, the default) or `step` (at --milestones).
    #[arg(long, value_enum)]
    pub schedule: Option<ScheduleKind>,
    /// Plateau: epochs without improvement before the lr falls [default: 5].
    #[arg(long)]
    pub patience: Option<usize>,
    /// Plateau: smallest improvement of the val top-1 error that counts (at least 0) [default: 0.001].
    #[arg(long, value_parser = parse::non_negative)]
    pub threshold: Option<f64>,
    /// Step: epochs at which the lr falls; values below 1 are fractions of the run (0.5,0.75: the CIFAR recipe).
    #[arg(long, value_delimiter = ',')]
    pub milestones: Option<Vec<f64>>,
    /// Linear warm-up, epochs (at least 0) [default: 0].
    #[arg(long, value_parser = parse::non_negative)]
    pub warmup: Option<f64>,
    /// Seed (initialisation and data order) [default: 0].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Loader threads, at least 1 [default: all cores].
    #[arg(long, short, value_parser = parse::at_least_1)]
    pub workers: Option<usize>,
    /// Training crop side, at least 1 [default: 224; CIFAR models 32].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub crop: Option<u32>,
    /// Shorter-side range of the scale augmentation, MIN,MAX [default: 256,480 scaled to the crop].
    #[arg(long, value_delimiter = ',', num_args = 2)]
    pub scale: Option<Vec<u32>>,
    /// Zero-init the last BN of each residual branch.
    #[arg(long)]
    pub zero_init_residual: bool,
    /// Also checkpoint every N steps.
    #[arg(long, default_value_t = 0)]
    pub checkpoint_every: usize,
    /// Checkpoints kept (checkpoints/last and the ones before it), at least 1 [default: 2].
    #[arg(long, value_parser = parse::at_least_1)]
    pub keep_checkpoints: Option<usize>,
    /// Skip the final ten-crop and multi-scale evaluation.
    #[arg(long)]
    pub no_final_eval: bool,
    /// Output folder (log.jsonl, curves.png, checkpoints/) [default: runs/<model>].
    #[arg(long, short)]
    pub out: Option<PathBuf>,
    /// Continue a run exactly (its folder, or a checkpoint folder), with its
    /// saved settings; --epochs, --max-steps, --workers and --out may change.
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// `cpu`, or `cuda` (the engine: a build with --features cuda; with
    /// --engine dfdx, --features dfdx-cuda).
    #[arg(long, value_enum, default_value_t = DeviceKind::Cpu)]
    pub device: DeviceKind,
    /// `engine` (the planned engine, the default on every device) or
    /// `dfdx` (the reference).
    #[arg(long, value_enum)]
    pub engine: Option<EngineKind>,
    /// `fp32`, or `bf16`: convolutions and the classifier on bf16 operands
    /// with fp32 accumulation, weights, momentum, BatchNorm and loss in fp32
    /// (PyTorch's bf16 autocast; the engine only) [default: fp32]. A resumed
    /// run keeps its own.
    #[arg(long, value_enum, conflicts_with = "resume")]
    pub precision: Option<Precision>,
    /// No progress bar, and only errors logged.
    #[arg(long, short)]
    pub quiet: bool,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Testing aid: pretend the loss is NaN at this step.
    #[arg(long, hide = true)]
    pub debug_nan_at_step: Option<usize>,
    /// Testing aid: panic on the last rank at this step.
    #[arg(long, hide = true)]
    pub debug_panic_at_step: Option<usize>,
}

impl TrainArgs {
    /// How the run starts: resumed with what may change, or new from the choices.
    pub fn start(&self) -> anyhow::Result<Start> {
        let a = self;
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
                None => resnet_imagenet::sample::bundled_sample()
                    .context("packing the bundled sample")?,
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
            engine: a.engine,
            precision: a.precision,
            keep_checkpoints: a.keep_checkpoints,
        };
        Ok(Start::New(choices.config()?))
    }
}
