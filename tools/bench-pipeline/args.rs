//! `bench-pipeline`'s arguments, and the benchmark they describe.

use clap::Parser;
use resnet_imagenet::augment::{Augment, CifarAugment, EvalCrop, TrainAugment};
use resnet_imagenet::loader::OutputKind;
use resnet_imagenet::measure::loader_bench::PipelineBench;
use std::path::PathBuf;
use std::time::Duration;

/// Benchmark the streaming loader on packed shards, end to end, with the
/// decode-only throughput of the same records and threads (the ceiling)
/// beside every number.
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
pub struct Cli {
    #[command(flatten)]
    pub verbosity: resnet_imagenet::cli::Verbosity,

    /// A packed split folder (DIR/train).
    #[arg(long, short)]
    pub data: PathBuf,

    /// Worker threads; a list (1,2,4) sweeps and prints a scaling table [default: all cores].
    #[arg(long, short, value_delimiter = ',')]
    pub workers: Vec<usize>,

    /// Records per batch.
    #[arg(long, short, default_value_t = 64)]
    pub batch_size: usize,

    /// Timed batches per run [default: one epoch].
    #[arg(long)]
    pub batches: Option<usize>,

    /// Warm-up batches before timing.
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,

    /// Runs per worker count; medians are reported.
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,

    /// Evaluation augmentation (shorter side 256, centre 224) instead of training.
    #[arg(long)]
    pub eval: bool,

    /// The paper's CIFAR augmentation (pad 4, random 32x32 crop, flip) instead of the ImageNet one.
    #[arg(long, conflicts_with = "eval")]
    pub cifar: bool,

    /// Seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,

    /// Output raw u8 HWC crops (for normalising on the GPU) instead of normalised f32 CHW.
    #[arg(long)]
    pub u8: bool,

    /// Do not check each record's CRC-32 (the loader's default does): run
    /// once with and once without to see the check's cost.
    #[arg(long)]
    pub no_verify: bool,

    /// Do not read the next batches' records ahead (the loader's default
    /// does): run `--cold` once with and once without to see what it saves.
    #[arg(long)]
    pub no_readahead: bool,

    /// Drop the shards from the page cache first (posix_fadvise DONTNEED), for a cold-read number.
    #[arg(long)]
    pub cold: bool,

    /// Simulate a consumer (GPU step) taking this many ms per batch, and report how often it waited.
    #[arg(long, value_name = "MS")]
    pub consumer_ms: Option<f64>,

    /// Print one JSON object on stdout.
    #[arg(long)]
    pub json: bool,

    /// Write the first N augmented samples (see --images) as PNG files into DIR and exit.
    #[arg(long, value_name = "DIR")]
    pub dump_png: Option<PathBuf>,

    /// Draw throughput against workers, with the decode-only ceiling, to this PNG.
    #[arg(long, value_name = "FILE.png")]
    pub plot: Option<PathBuf>,

    /// Samples written by --dump-png.
    #[arg(long, default_value_t = 16)]
    pub images: usize,
}

impl Cli {
    /// The benchmark these arguments describe.
    pub fn bench(&self) -> PipelineBench {
        PipelineBench {
            data: self.data.clone(),
            workers: if self.workers.is_empty() {
                vec![std::thread::available_parallelism().map_or(1, |n| n.get())]
            } else {
                self.workers.clone()
            },
            batch_size: self.batch_size,
            batches: self.batches,
            warmup: self.warmup,
            repeat: self.repeat,
            augment: if self.eval {
                Augment::Eval(EvalCrop::default())
            } else if self.cifar {
                Augment::Cifar(CifarAugment::default())
            } else {
                Augment::Train(TrainAugment::default())
            },
            seed: self.seed,
            output: if self.u8 {
                OutputKind::U8Hwc
            } else {
                OutputKind::F32Chw
            },
            verify_checksums: !self.no_verify,
            read_ahead: !self.no_readahead,
            cold: self.cold,
            consumer: self.consumer_ms.map(|ms| Duration::from_secs_f64(ms / 1e3)),
        }
    }
}
