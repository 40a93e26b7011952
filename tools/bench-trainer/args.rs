//! `bench-trainer`'s arguments.

use clap::Parser;
use resnet_imagenet::cli::parse::at_least_1;
use resnet_imagenet::engine::Precision;
use resnet_imagenet::measure::trainer_bench::{EngineKind, TrainerBench};

/// Time SGD steps of a zoo model on a synthetic batch, on the CPU, beside
/// PyTorch on the same network, machine and threads (`--pytorch`).
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
pub struct Cli {
    #[command(flatten)]
    pub verbosity: resnet_imagenet::cli::Verbosity,

    /// Zoo model (ImageNet nets at 1000 classes, CIFAR nets at 10).
    #[arg(long, default_value = "resnet20")]
    pub model: String,
    /// Images per step.
    #[arg(long, short = 'b', default_value_t = 128, value_parser = at_least_1)]
    pub batch_size: usize,
    /// Image side.
    #[arg(long, default_value_t = 32, value_parser = at_least_1)]
    pub size: usize,
    /// Timed steps per round.
    #[arg(long, default_value_t = 6, value_parser = at_least_1)]
    pub steps: usize,
    /// Untimed steps first.
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Threads [default: all cores].
    #[arg(long, value_parser = at_least_1)]
    pub threads: Option<usize>,
    /// Which trainer.
    #[arg(long, value_enum, default_value_t = EngineKind::Engine)]
    pub engine: EngineKind,
    /// `fp32`, or `bf16` (bf16 operands, fp32 accumulation, as PyTorch's
    /// bf16 autocast; the engine only).
    #[arg(long, value_enum, default_value_t = Precision::Fp32)]
    pub precision: Precision,
    /// Also time the same network in PyTorch (tools/pytorch-bench.py), alternating rounds.
    #[arg(long)]
    pub pytorch: bool,
    /// PyTorch's mode [default: its fastest for --precision on CPUs:
    /// fp32-channels-last, or bf16-autocast-channels-last].
    #[arg(long, value_parser = ["fp32-nchw", "fp32-channels-last", "bf16-autocast-channels-last"])]
    pub pytorch_mode: Option<String>,
    /// Rounds (ours, then PyTorch with --pytorch); medians over them.
    #[arg(long, default_value_t = 3, value_parser = at_least_1)]
    pub rounds: usize,
    /// The Python with torch installed.
    #[arg(long, env = "PYTHON", default_value = "python3")]
    pub python: String,
    /// Also time an allreduce (sum) of this many floats over the ranks
    /// (ResNet-50's gradients: 25557032).
    #[arg(long, value_parser = at_least_1)]
    pub allreduce_floats: Option<usize>,
    /// Print one JSON object instead of lines.
    #[arg(long)]
    pub json: bool,
}

impl Cli {
    /// The library's settings.
    pub fn bench(&self, threads: usize) -> TrainerBench {
        TrainerBench {
            model: self.model.clone(),
            batch_size: self.batch_size,
            size: self.size,
            steps: self.steps,
            warmup: self.warmup,
            threads,
            engine: self.engine,
            precision: self.precision,
        }
    }

    /// PyTorch's mode to compare with.
    pub fn pytorch_mode(&self) -> &str {
        match (&self.pytorch_mode, self.precision) {
            (Some(m), _) => m,
            (None, Precision::Fp32) => "fp32-channels-last",
            (None, Precision::Bf16) => "bf16-autocast-channels-last",
        }
    }
}
