//! `pack-imagenet`: an ImageNet-style folder → memory-mapped shards.
//!
//! Exit codes: 0 ok; 1 ran, but `--verify` found a problem (or `--strict`
//! met a bad file); 2 error.

use anyhow::Context;
use clap::Parser;
use resnet_imagenet::cli::{Verbosity, is_broken_pipe};
use resnet_imagenet::error::PackError;
use resnet_imagenet::pack::walk::{self, ClassSource, WalkOptions};
use resnet_imagenet::pack::{self, PackOptions};
use resnet_imagenet::progress::ProgressMode;
use resnet_imagenet::reader;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Pack an ImageNet folder (train/<wnid>/*.JPEG, val/ with its ground truth,
/// or any class-per-folder tree) into memory-mapped shards: parallel,
/// deterministic, resumable, and with every bad file reported.
///
/// Symbolic links are followed, each real folder at most once (a link loop
/// adds nothing); the output folder is never read as input, even inside ROOT.
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
struct Cli {
    /// Input root: holds train/ and/or val/, or is itself a class-per-folder tree.
    #[arg(long, short, required_unless_present = "verify", value_name = "ROOT")]
    input: Option<PathBuf>,

    /// Output folder; each split goes to DIR/<split>.
    #[arg(long, short, required_unless_present_any = ["verify", "decode_only"], value_name = "DIR")]
    output: Option<PathBuf>,

    /// Check every shard, index and record checksum under DIR; exit 1 if anything is wrong.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["input", "output"])]
    verify: Option<PathBuf>,

    /// Worker threads, at least 1 [default: all cores].
    #[arg(long, short = 'j', value_parser = clap::value_parser!(u64).range(1..=4096))]
    threads: Option<u64>,

    /// Threads reading input files ahead of the workers (many hide a slow
    /// disk's or network storage's latency; they only wait).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=1024))]
    readers: u64,

    /// Drop the input files from the page cache first (posix_fadvise
    /// DONTNEED), for a cold-read number, as `bench-pipeline --cold` does.
    #[arg(long)]
    cold: bool,

    /// Print the summary as one JSON object on stdout (no progress bar).
    #[arg(long)]
    json: bool,

    /// Shorter-side limit for train images (larger ones are resized to it).
    #[arg(long, default_value_t = 480, value_parser = clap::value_parser!(u32).range(1..))]
    train_max_side: u32,

    /// Shorter-side limit for val images.
    #[arg(long, default_value_t = 640, value_parser = clap::value_parser!(u32).range(1..))]
    val_max_side: u32,

    /// JPEG quality for re-encoded images.
    #[arg(long, default_value_t = 95, value_parser = clap::value_parser!(u8).range(1..=100))]
    quality: u8,

    /// Target shard size, in MiB (more than 0).
    #[arg(long, default_value_t = 256.0, value_parser = positive_f64)]
    shard_mib: f64,

    /// Side of the per-pixel mean image computed at pack time (1..=1024).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=1024))]
    mean_size: u32,

    /// Class list: `folders` (sorted folder names, as torchvision's ImageFolder),
    /// `imagenet` (the 1000 ILSVRC2012 classes), or a file of `wnid [name]` lines.
    #[arg(long, default_value = "folders")]
    classes: String,

    /// Ground truth for a flat val folder (LOC_val_solution.csv, the devkit's
    /// ILSVRC2012_validation_ground_truth.txt, or `file,wnid` lines)
    /// [default: looked for beside the input, else the bundled ILSVRC2012 labels].
    #[arg(long, value_name = "FILE")]
    val_labels: Option<PathBuf>,

    /// Split name when the input is a bare class-per-folder tree.
    #[arg(long, default_value = "train")]
    split: String,

    /// Fail on the first file that cannot be packed instead of skipping it.
    #[arg(long)]
    strict: bool,

    /// Replace existing output of a different pack (other inputs or settings).
    #[arg(long)]
    overwrite: bool,

    /// Only read and decode every input file with the same threads, and report
    /// the rate: the floor packing cannot beat.
    #[arg(long)]
    decode_only: bool,

    #[command(flatten)]
    verbosity: Verbosity,

    /// Sleep this many ms per record written (for tests that interrupt a pack).
    #[arg(long, hide = true)]
    debug_delay_ms: Option<u64>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    cli.verbosity.init_logger();
    match run(&cli) {
        Ok(code) => code,
        Err(err) => {
            if is_broken_pipe(&err) {
                return ExitCode::SUCCESS;
            }
            eprintln!("pack-imagenet: error: {err:#}");
            if err
                .downcast_ref::<PackError>()
                .is_some_and(|e| matches!(e, PackError::BadFile { .. }))
            {
                ExitCode::from(1)
            } else {
                ExitCode::from(2)
            }
        }
    }
}

fn run(cli: &Cli) -> anyhow::Result<ExitCode> {
    if let Some(dir) = &cli.verify {
        return verify(dir, cli.json);
    }
    let input = cli.input.as_ref().expect("clap requires --input");
    let opts = options(cli)?;
    if cli.cold {
        let files: Vec<_> = walk::discover(input, &opts.walk)?
            .into_iter()
            .flat_map(|s| s.files.into_iter().map(|f| f.path))
            .collect();
        resnet_imagenet::measure::drop_from_cache(&files)
            .context("dropping the input files from the page cache")?;
    }
    if cli.decode_only {
        return decode_only(input, &opts, cli.json);
    }
    let output = cli.output.as_ref().expect("clap requires --output");
    let summaries = pack::pack(input, output, &opts)
        .with_context(|| format!("packing {} into {}", input.display(), output.display()))?;
    let mut out = std::io::stdout().lock();
    if cli.json {
        serde_json::to_writer_pretty(&mut out, &serde_json::json!({ "splits": summaries }))?;
        writeln!(out)?;
    } else {
        for s in &summaries {
            eprintln!(
                "{}: {} files, {} packed, {} skipped, {} shards ({} resumed), {:.1} MB -> {:.1} MB, {:.1} images/s, {:.1} MB/s -> {}",
                s.split,
                s.files,
                s.packed,
                s.skipped.len(),
                s.shards,
                s.resumed_shards,
                s.bytes_in as f64 / 1e6,
                s.bytes_out as f64 / 1e6,
                s.images_per_sec,
                s.mb_per_sec,
                s.output.display()
            );
            for k in &s.skipped {
                eprintln!("  skipped {}: {}", k.path, k.reason);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn options(cli: &Cli) -> anyhow::Result<PackOptions> {
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
        debug_delay: cli.debug_delay_ms.map(Duration::from_millis),
    })
}

/// A finite number above 0.
fn positive_f64(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if v.is_finite() && v > 0.0 {
        Ok(v)
    } else {
        Err(format!("must be a number above 0, got {v}"))
    }
}

fn decode_only(
    input: &std::path::Path,
    opts: &PackOptions,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let splits = walk::discover(input, &opts.walk)?;
    let files: Vec<_> = splits.into_iter().flat_map(|s| s.files).collect();
    let r = pack::decode_floor(&files, opts.threads);
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        eprintln!(
            "decode-only: {} images ({} failed), {:.1} MB in {:.2} s with {} threads: {:.1} images/s, {:.1} MB/s",
            r.images,
            r.failed,
            r.bytes as f64 / 1e6,
            r.seconds,
            r.threads,
            r.images_per_sec,
            r.mb_per_sec
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn verify(dir: &std::path::Path, json: bool) -> anyhow::Result<ExitCode> {
    let report =
        reader::verify_dataset(dir).with_context(|| format!("verifying {}", dir.display()))?;
    if json {
        let problems: Vec<_> = report
            .problems
            .iter()
            .map(|p| serde_json::json!({ "path": p.path, "problem": p.detail }))
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "splits": report.splits, "shards": report.shards, "records": report.records,
                "ok": report.problems.is_empty(), "problems": problems,
            }))?
        );
    } else {
        for p in &report.problems {
            eprintln!("{}: {}", p.path.display(), p.detail);
        }
        eprintln!(
            "verified {} splits, {} shards, {} records: {}",
            report.splits,
            report.shards,
            report.records,
            if report.problems.is_empty() {
                "all good".to_string()
            } else {
                format!("{} problems", report.problems.len())
            }
        );
    }
    Ok(if report.problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }
}
