//! `pack-imagenet`'s arguments, and the pack options they mean.

use clap::Parser;
use resnet_imagenet::cli::{Verbosity, parse};
use resnet_imagenet::pack::PackOptions;
use resnet_imagenet::pack::walk::{ClassSource, WalkOptions};
use resnet_imagenet::progress::ProgressMode;
use std::path::PathBuf;

/// Pack an ImageNet folder (train/<wnid>/*.JPEG, val/ with its ground truth,
/// or any class-per-folder tree) into memory-mapped shards: parallel,
/// deterministic, resumable, and with every bad file reported.
///
/// Symbolic links are followed, each real folder at most once (a link loop
/// adds nothing); the output folder is never read as input, even inside ROOT.
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
pub struct Cli {
    /// Input root: holds train/ and/or val/, or is itself a class-per-folder tree.
    #[arg(long, short, required_unless_present = "verify", value_name = "ROOT")]
    pub input: Option<PathBuf>,

    /// Output folder; each split goes to DIR/<split>.
    #[arg(long, short, required_unless_present_any = ["verify", "decode_only"], value_name = "DIR")]
    pub output: Option<PathBuf>,

    /// Check every shard, index and record checksum under DIR; exit 1 if anything is wrong.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["input", "output"])]
    pub verify: Option<PathBuf>,

    /// Worker threads, at least 1 [default: all cores].
    #[arg(long, short = 'j', value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub threads: Option<u64>,

    /// Threads reading input files ahead of the workers (many hide a slow
    /// disk's or network storage's latency; they only wait).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub readers: u64,

    /// Drop the input files from the page cache first (posix_fadvise
    /// DONTNEED), for a cold-read number, as `bench-pipeline --cold` does.
    #[arg(long)]
    pub cold: bool,

    /// Print the summary as one JSON object on stdout (no progress bar).
    #[arg(long)]
    pub json: bool,

    /// Shorter-side limit for train images (larger ones are resized to it).
    #[arg(long, default_value_t = 480, value_parser = clap::value_parser!(u32).range(1..))]
    pub train_max_side: u32,

    /// Shorter-side limit for val images.
    #[arg(long, default_value_t = 640, value_parser = clap::value_parser!(u32).range(1..))]
    pub val_max_side: u32,

    /// An RGB JPEG up to this many percent above its split's limit keeps
    /// its bytes instead of being resized and re-encoded (0: strict limit).
    #[arg(long, default_value_t = resnet_imagenet::pack::encode::DEFAULT_KEEP_SLACK_PERCENT, value_parser = clap::value_parser!(u32).range(0..=100))]
    pub keep_slack: u32,

    /// JPEG quality for re-encoded images.
    #[arg(long, default_value_t = 95, value_parser = clap::value_parser!(u8).range(1..=100))]
    pub quality: u8,

    /// Target shard size, in MiB (more than 0).
    #[arg(long, default_value_t = 256.0, value_parser = parse::positive)]
    pub shard_mib: f64,

    /// Side of the per-pixel mean image computed at pack time (1..=1024).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub mean_size: u32,

    /// Class list: `folders` (sorted folder names, as torchvision's ImageFolder),
    /// `imagenet` (the 1000 ILSVRC2012 classes), or a file of `wnid [name]` lines.
    #[arg(long, default_value = "folders")]
    pub classes: String,

    /// Ground truth for a flat val folder (LOC_val_solution.csv, the devkit's
    /// ILSVRC2012_validation_ground_truth.txt, or `file,wnid` lines)
    /// [default: looked for beside the input, else the bundled ILSVRC2012 labels].
    #[arg(long, value_name = "FILE")]
    pub val_labels: Option<PathBuf>,

    /// Split name when the input is a bare class-per-folder tree.
    #[arg(long, default_value = "train")]
    pub split: String,

    /// Fail on the first file that cannot be packed instead of skipping it.
    #[arg(long)]
    pub strict: bool,

    /// Replace existing output of a different pack (other inputs or settings).
    #[arg(long)]
    pub overwrite: bool,

    /// Only read and decode every input file with the same threads, and report
    /// the rate: the floor packing cannot beat.
    #[arg(long)]
    pub decode_only: bool,

    #[command(flatten)]
    pub verbosity: Verbosity,
}

impl Cli {
    /// The library's options for these arguments.
    pub fn options(&self) -> anyhow::Result<PackOptions> {
        let cli = self;
        let classes = match cli.classes.as_str() {
            "folders" => ClassSource::Folders,
            "imagenet" => ClassSource::Imagenet,
            path => {
                let p = PathBuf::from(path);
                anyhow::ensure!(
                    p.is_file(),
                    "--classes: `{path}` is neither folders, imagenet, nor a file"
                );
                ClassSource::File(p)
            }
        };
        let defaults = PackOptions::default();
        Ok(PackOptions {
            threads: cli.threads.map_or(defaults.threads, |t| t as usize),
            readers: cli.readers as usize,
            train_max_side: cli.train_max_side,
            val_max_side: cli.val_max_side,
            keep_slack_percent: cli.keep_slack,
            quality: cli.quality,
            shard_bytes: (cli.shard_mib * 1024.0 * 1024.0) as u64,
            mean_size: cli.mean_size,
            strict: cli.strict,
            overwrite: cli.overwrite,
            walk: WalkOptions {
                classes,
                val_labels: cli.val_labels.clone(),
                bare_split_name: Some(cli.split.clone()),
                exclude: Vec::new(),
            },
            progress: if cli.json {
                ProgressMode::Hidden
            } else {
                ProgressMode::Auto
            },
        })
    }
}
