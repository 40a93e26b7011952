//! `gpu-check`'s arguments.

use clap::Parser;
use resnet_imagenet::cli::parse::{at_least_1, positive};
use resnet_imagenet::measure::device_check::{CheckPlan, LoaderCheck};
use resnet_imagenet::measure::parity::Setup;
use resnet_imagenet::measure::timing::Timing;
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
    #[arg(long, default_value_t = 4, value_parser = at_least_1)]
    pub compare_batch: usize,
    /// Image side of the comparison.
    #[arg(long, default_value_t = 224, value_parser = at_least_1)]
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
    #[arg(long, value_delimiter = ',', default_value = "32,64,128", value_parser = at_least_1)]
    pub batch_sizes: Vec<usize>,
    /// Image side of the timed steps.
    #[arg(long, default_value_t = 224, value_parser = at_least_1)]
    pub side: usize,
    /// Untimed steps first.
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
    /// Timed steps at least.
    #[arg(long, default_value_t = 5, value_parser = at_least_1)]
    pub min_steps: usize,
    /// Timed steps at most.
    #[arg(long, default_value_t = 30, value_parser = at_least_1)]
    pub max_steps: usize,
    /// Stop timing a size after this many seconds (past min-steps).
    #[arg(long, default_value_t = 15.0, value_parser = positive)]
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
    #[arg(long, default_value_t = 64, value_parser = at_least_1)]
    pub loader_batch: usize,
    /// Timed steps from --data.
    #[arg(long, default_value_t = 20, value_parser = at_least_1)]
    pub loader_steps: usize,
    /// Loader threads [default: all cores].
    #[arg(long, value_parser = at_least_1)]
    pub workers: Option<usize>,
    /// Precisions of the CUDA engine to compare and time (fp32, tf32).
    #[arg(long, value_delimiter = ',', default_value = "fp32,tf32")]
    pub modes: Vec<String>,
    /// Run the CUDA engine's steps one kernel at a time, not as CUDA graphs.
    #[arg(long)]
    pub no_graphs: bool,
    /// Only compile the CUDA engine's kernels with NVRTC (no GPU needed)
    /// for this compute capability (e.g. 90) and exit.
    #[arg(long)]
    pub compile_kernels: Option<u32>,
    /// Also write every result as a JSON line here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

impl Cli {
    /// The library's plan for these arguments ("" in a model list: none).
    pub fn plan(&self) -> CheckPlan {
        let names = |v: &[String]| v.iter().filter(|n| !n.is_empty()).cloned().collect();
        CheckPlan {
            compare: names(&self.compare),
            compare_setup: Setup {
                batch: self.compare_batch,
                side: self.compare_side,
                steps: self.compare_steps,
                seed: 1,
                last_bn_scale: None,
            },
            compare_last_bn_scale: self.compare_last_bn_scale,
            time: names(&self.time),
            batch_sizes: self.batch_sizes.clone(),
            side: self.side,
            timing: Timing {
                warmup: self.warmup,
                min_steps: self.min_steps,
                max_steps: self.max_steps,
                max_seconds: self.max_seconds,
            },
            ops_batch: self.ops_batch,
            loader: self.data.as_ref().map(|data| LoaderCheck {
                data: data.clone(),
                model: self.loader_model.clone(),
                batch: self.loader_batch,
                steps: self.loader_steps,
                workers: self.workers,
            }),
        }
    }
}
