//! `gpu-check`'s arguments.

use clap::Parser;
use std::path::PathBuf;

/// Check training on the device against the CPU and time it.
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
pub struct Cli {
    #[command(flatten)]
    pub verbosity: resnet_imagenet::cli::Verbosity,

    /// Models to compare with the CPU ("" for none).
    #[arg(long, value_delimiter = ',', default_value = "resnet18,resnet50")]
    pub compare: Vec<String>,
    /// Batch of the comparison.
    #[arg(long, default_value_t = 4)]
    pub compare_batch: usize,
    /// Image side of the comparison.
    #[arg(long, default_value_t = 224)]
    pub compare_side: usize,
    /// SGD steps before comparing every tensor.
    #[arg(long, default_value_t = 3)]
    pub compare_steps: usize,
    /// Also compare with each residual branch's last BatchNorm scale set to
    /// this (a fresh ResNet-50 is chaotic: 0.1 makes it well conditioned).
    #[arg(long)]
    pub compare_last_bn_scale: Option<f32>,
    /// Models to time on synthetic input ("" for none).
    #[arg(long, value_delimiter = ',', default_value = "resnet50,resnet18")]
    pub time: Vec<String>,
    /// Batch sizes to time (ascending; a size that fails ends the model's sweep).
    #[arg(long, value_delimiter = ',', default_value = "32,64,128")]
    pub batch_sizes: Vec<usize>,
    /// Image side of the timed steps.
    #[arg(long, default_value_t = 224)]
    pub side: usize,
    /// Untimed steps first.
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
    /// Timed steps at least.
    #[arg(long, default_value_t = 5)]
    pub min_steps: usize,
    /// Timed steps at most.
    #[arg(long, default_value_t = 30)]
    pub max_steps: usize,
    /// Stop timing a size after this many seconds (past min-steps).
    #[arg(long, default_value_t = 15.0)]
    pub max_seconds: f64,
    /// Time the pieces of a ResNet-50 first-stage layer at this batch (0: skip).
    #[arg(long, default_value_t = 0)]
    pub ops_batch: usize,
    /// A packed split (e.g. shards/train): train from it with the real loader.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Model trained from --data.
    #[arg(long, default_value = "resnet50")]
    pub loader_model: String,
    /// Batch trained from --data.
    #[arg(long, default_value_t = 64)]
    pub loader_batch: usize,
    /// Timed steps from --data.
    #[arg(long, default_value_t = 20)]
    pub loader_steps: usize,
    /// Loader threads [default: all cores].
    #[arg(long)]
    pub workers: Option<usize>,
    /// Also write every result as a JSON line here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}
