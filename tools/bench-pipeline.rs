//! `bench-pipeline`: the loader's throughput beside the decode-only ceiling.
//!
//! Exit codes: 0 ok; 2 error.

use anyhow::Context;
use clap::Parser;
use resnet_imagenet::augment::{CifarAugment, EvalCrop, TrainAugment};
use resnet_imagenet::loader::{LoaderBuilder, OutputKind};
use resnet_imagenet::measure::{self as bench, CeilingRun, ConsumerReport, LoaderRun, median};
use resnet_imagenet::plot::{Chart, Series};
use resnet_imagenet::reader::Dataset;
use serde::Serialize;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// Benchmark the streaming loader on packed shards, end to end, with the
/// decode-only throughput of the same records and threads (the ceiling)
/// beside every number.
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
struct Cli {
    #[command(flatten)]
    verbosity: resnet_imagenet::cli::Verbosity,

    /// A packed split folder (DIR/train).
    #[arg(long, short)]
    data: PathBuf,

    /// Worker threads; a list (1,2,4) sweeps and prints a scaling table [default: all cores].
    #[arg(long, short, value_delimiter = ',')]
    workers: Vec<usize>,

    /// Records per batch.
    #[arg(long, short, default_value_t = 64)]
    batch_size: usize,

    /// Timed batches per run [default: one epoch].
    #[arg(long)]
    batches: Option<usize>,

    /// Warm-up batches before timing.
    #[arg(long, default_value_t = 2)]
    warmup: usize,

    /// Runs per worker count; medians are reported.
    #[arg(long, default_value_t = 3)]
    repeat: usize,

    /// Evaluation augmentation (shorter side 256, centre 224) instead of training.
    #[arg(long)]
    eval: bool,

    /// The paper's CIFAR augmentation (pad 4, random 32x32 crop, flip) instead of the ImageNet one.
    #[arg(long, conflicts_with = "eval")]
    cifar: bool,

    /// Seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,

    /// Output raw u8 HWC crops (for normalising on the GPU) instead of normalised f32 CHW.
    #[arg(long)]
    u8: bool,

    /// Do not check each record's CRC-32 (the loader's default does): run
    /// once with and once without to see the check's cost.
    #[arg(long)]
    no_verify: bool,

    /// Do not read the next batches' records ahead (the loader's default
    /// does): run `--cold` once with and once without to see what it saves.
    #[arg(long)]
    no_readahead: bool,

    /// Drop the shards from the page cache first (posix_fadvise DONTNEED), for a cold-read number.
    #[arg(long)]
    cold: bool,

    /// Simulate a consumer (GPU step) taking this many ms per batch, and report how often it waited.
    #[arg(long, value_name = "MS")]
    consumer_ms: Option<f64>,

    /// Print one JSON object on stdout.
    #[arg(long)]
    json: bool,

    /// Write the first N augmented samples (see --images) as PNG files into DIR and exit.
    #[arg(long, value_name = "DIR")]
    dump_png: Option<PathBuf>,

    /// Draw throughput against workers, with the decode-only ceiling, to this PNG.
    #[arg(long, value_name = "FILE.png")]
    plot: Option<PathBuf>,

    /// Samples written by --dump-png.
    #[arg(long, default_value_t = 16)]
    images: usize,
}

#[derive(Serialize)]
struct Row {
    workers: usize,
    images_per_sec: f64,
    decode_ceiling_images_per_sec: f64,
    ratio: f64,
    runs: Vec<LoaderRun>,
    ceiling_runs: Vec<CeilingRun>,
}

#[derive(Serialize)]
struct Report {
    data: PathBuf,
    augment: &'static str,
    verify_checksums: bool,
    read_ahead: bool,
    decoder: &'static str,
    batch_size: usize,
    images: u64,
    workers: usize,
    images_per_sec: f64,
    mb_per_sec: f64,
    cpu_seconds_per_image: f64,
    decode_ceiling_images_per_sec: f64,
    ratio_to_ceiling: f64,
    peak_rss_bytes: u64,
    page_cache: PageCache,
    stages_seconds_per_image: Stages,
    consumer: Option<ConsumerReport>,
    scaling: Vec<Row>,
}

#[derive(Serialize)]
struct PageCache {
    cached_fraction_before: f64,
    dropped: bool,
}

#[derive(Serialize)]
struct Stages {
    read: f64,
    decode: f64,
    resize: f64,
    normalize: f64,
    consumer_wait: f64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    cli.verbosity.init_logger();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if resnet_imagenet::cli::is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-pipeline: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let shard_files: Vec<PathBuf> = resnet_imagenet::reader::read_manifest(&cli.data)
        .with_context(|| format!("reading {}", cli.data.display()))?
        .shards
        .iter()
        .map(|s| cli.data.join(&s.name))
        .collect();
    // With --cold, every run (loader and ceiling alike) starts on shards
    // dropped from the page cache, through a fresh mapping (pages mapped by
    // a live mapping would stay).
    let open = || -> anyhow::Result<Arc<Dataset>> {
        if cli.cold {
            bench::drop_from_cache(&shard_files)
                .context("dropping the shards from the page cache")?;
        }
        let ds =
            Dataset::open(&cli.data).with_context(|| format!("opening {}", cli.data.display()))?;
        Ok(Arc::new(ds))
    };
    let cached = {
        let ds = open()?;
        let cached = bench::cached_fraction(&shard_files).unwrap_or(f64::NAN);
        drop(ds);
        cached
    };
    let builder = |workers: usize| {
        let b = LoaderBuilder::new()
            .batch_size(cli.batch_size)
            .workers(workers)
            .seed(cli.seed)
            .output(if cli.u8 {
                OutputKind::U8Hwc
            } else {
                OutputKind::F32Chw
            })
            .verify_checksums(!cli.no_verify)
            .read_ahead(!cli.no_readahead)
            .profile(true);
        if cli.eval {
            b.eval(EvalCrop::default())
        } else if cli.cifar {
            b.cifar(CifarAugment::default())
        } else {
            b.train(TrainAugment::default())
        }
    };
    if let Some(dir) = &cli.dump_png {
        return dump_png(builder(1), open()?, dir, cli.images);
    }
    let workers = if cli.workers.is_empty() {
        vec![std::thread::available_parallelism().map_or(1, |n| n.get())]
    } else {
        cli.workers.clone()
    };
    let consumer = cli.consumer_ms.map(|ms| Duration::from_secs_f64(ms / 1e3));
    let mut rows = Vec::new();
    let mut last_consumer = None;
    for &w in &workers {
        let mut runs = Vec::new();
        let mut ceilings = Vec::new();
        for r in 0..cli.repeat.max(1) {
            if !cli.json {
                eprint!("\rworkers {w}: run {}/{}", r + 1, cli.repeat.max(1));
            }
            let loader = builder(w).build(open()?)?;
            let batches = cli.batches.unwrap_or(loader.batches_per_epoch()).max(1);
            // The ceiling decodes as many records as the loader produced, from the same epoch order.
            let order = loader.epoch_order(0);
            let n = (batches * cli.batch_size).min(order.len().max(1));
            let (run, c) = bench::run_loader(&loader, 0, cli.warmup, batches, consumer)?;
            drop(loader);
            runs.push(run);
            last_consumer = consumer.map(|_| c);
            let idx: Vec<u32> = (0..n).map(|i| order[i % order.len()]).collect();
            let ceiling = bench::decode_ceiling(&*open()?, &idx, w);
            anyhow::ensure!(
                ceiling.failed == 0,
                "{} of {} records could not be read or decoded (pack-imagenet --verify {} names them)",
                ceiling.failed,
                idx.len(),
                cli.data.display()
            );
            ceilings.push(ceiling);
        }
        if !cli.json {
            eprint!("\r");
        }
        let ips = median(&runs.iter().map(|r| r.images_per_sec).collect::<Vec<_>>());
        let ceil = median(
            &ceilings
                .iter()
                .map(|r| r.images_per_sec)
                .collect::<Vec<_>>(),
        );
        rows.push(Row {
            workers: w,
            images_per_sec: ips,
            decode_ceiling_images_per_sec: ceil,
            ratio: ips / ceil,
            runs,
            ceiling_runs: ceilings,
        });
    }
    let top = rows.last().expect("at least one worker count");
    let ips: Vec<f64> = top.runs.iter().map(|r| r.images_per_sec).collect();
    let best = &top.runs[bench::median_index(&ips)];
    let per = |x: f64| x / best.stages.samples.max(1) as f64;
    let report = Report {
        data: cli.data.clone(),
        decoder: resnet_imagenet::decode::jpeg_decoder_name(),
        augment: if cli.eval {
            "eval-center-224"
        } else if cli.cifar {
            "train-cifar"
        } else {
            "train-paper"
        },
        verify_checksums: !cli.no_verify,
        read_ahead: !cli.no_readahead,
        batch_size: cli.batch_size,
        images: best.images,
        workers: top.workers,
        images_per_sec: top.images_per_sec,
        mb_per_sec: median(&top.runs.iter().map(|r| r.mb_per_sec).collect::<Vec<_>>()),
        cpu_seconds_per_image: median(
            &top.runs
                .iter()
                .map(|r| r.cpu_seconds_per_image)
                .collect::<Vec<_>>(),
        ),
        decode_ceiling_images_per_sec: top.decode_ceiling_images_per_sec,
        ratio_to_ceiling: top.ratio,
        peak_rss_bytes: bench::peak_rss_bytes(),
        page_cache: PageCache {
            cached_fraction_before: cached,
            dropped: cli.cold,
        },
        stages_seconds_per_image: Stages {
            read: per(best.stages.read),
            decode: per(best.stages.decode),
            resize: per(best.stages.resize),
            normalize: per(best.stages.normalize),
            consumer_wait: best.stages.wait / best.images.max(1) as f64,
        },
        consumer: last_consumer,
        scaling: rows,
    };
    if let Some(path) = &cli.plot {
        let pts = |f: fn(&Row) -> f64| {
            report
                .scaling
                .iter()
                .map(|r| (r.workers as f64, f(r)))
                .collect()
        };
        let title = format!("loader vs decode-only ceiling ({})", report.augment);
        let chart = Chart {
            title: &title,
            x_label: "workers",
            y_label: "images/s",
            integer_x: true,
        };
        resnet_imagenet::plot::line_chart(
            path,
            &chart,
            &[
                Series {
                    label: "loader".into(),
                    points: pts(|r| r.images_per_sec),
                    width: 3,
                    markers: true,
                },
                Series {
                    label: "decode-only ceiling".into(),
                    points: pts(|r| r.decode_ceiling_images_per_sec),
                    width: 2,
                    markers: true,
                },
            ],
        )
        .map_err(|e| anyhow::anyhow!("plotting to {}: {e}", path.display()))?;
    }
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    eprintln!(
        "{} ({}, JPEG decoder {}, batch {}, page cache {:.0}% warm{}):",
        report.data.display(),
        report.augment,
        report.decoder,
        report.batch_size,
        cached * 100.0,
        if cli.cold { ", dropped first" } else { "" }
    );
    eprintln!("workers  loader img/s  decode-only img/s  ratio");
    for r in &report.scaling {
        eprintln!(
            "{:>7}  {:>12.1}  {:>17.1}  {:>5.2}",
            r.workers, r.images_per_sec, r.decode_ceiling_images_per_sec, r.ratio
        );
    }
    let s = &report.stages_seconds_per_image;
    let busy = s.read + s.decode + s.resize + s.normalize;
    eprintln!(
        "read ({}): {:.1}% of the workers' time",
        if report.verify_checksums {
            "locate + CRC-32 check"
        } else {
            "locate only, --no-verify"
        },
        100.0 * s.read / busy
    );
    eprintln!(
        "per image (worker ms): read {:.3}, decode {:.3}, resize {:.3}, flip+normalise {:.3}; consumer wait {:.3} ms; {:.2} CPU-ms/image; {:.1} MB/s; peak RSS {:.0} MiB",
        s.read * 1e3,
        s.decode * 1e3,
        s.resize * 1e3,
        s.normalize * 1e3,
        s.consumer_wait * 1e3,
        report.cpu_seconds_per_image * 1e3,
        report.mb_per_sec,
        report.peak_rss_bytes as f64 / (1 << 20) as f64
    );
    if let Some(c) = &report.consumer {
        eprintln!(
            "consumer at {:.1} ms/batch: waited on {} batches ({:.1}%), {:.1}% of the time idle",
            c.step_ms,
            c.batches_waited,
            c.fraction_waited * 100.0,
            c.wait_fraction * 100.0
        );
    }
    Ok(())
}

/// Writes the first `n` samples of epoch 0 as the network sees them before
/// normalisation (raw u8 crops: scale, crop, flip and padding applied; the
/// mean subtraction and lighting noise are not pictures).
fn dump_png(
    builder: LoaderBuilder,
    ds: Arc<Dataset>,
    dir: &std::path::Path,
    n: usize,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let loader = builder
        .batch_size(n.max(1))
        .output(OutputKind::U8Hwc)
        .build(ds)?;
    let size = loader.normalizer().size() as u32;
    let Some(batch) = loader.epoch(0).next() else {
        anyhow::bail!("the dataset is empty");
    };
    let batch = batch?;
    let per = (3 * size * size) as usize * batch.views();
    for (k, (&index, &label)) in batch.indices().iter().zip(batch.labels()).enumerate() {
        let index = index as usize;
        let name = match loader.sample_params(0, index)? {
            Some(p) => format!(
                "{k:04}_rec{index}_label{label}_S{}_x{}_y{}_flip{}.png",
                p.s, p.crop_x, p.crop_y, p.flip as u8
            ),
            None => format!("{k:04}_rec{index}_label{label}_eval.png"),
        };
        let rgb = &batch.images_u8()[k * per..k * per + (3 * size * size) as usize];
        image::save_buffer(
            dir.join(&name),
            rgb,
            size,
            size,
            image::ExtendedColorType::Rgb8,
        )
        .with_context(|| format!("writing {name}"))?;
    }
    eprintln!("wrote {} samples to {}", batch.len(), dir.display());
    Ok(())
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
