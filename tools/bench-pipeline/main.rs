//! `bench-pipeline`: the loader's throughput beside the decode-only ceiling.
//!
//! Exit codes: 0 ok; 2 error.

mod args;

use anyhow::Context;
use clap::Parser;
use resnet_imagenet::measure::loader_bench::Row;
use resnet_imagenet::plot::{Chart, Series};
use std::process::ExitCode;

use args::Cli;

fn main() -> ExitCode {
    let cli = Cli::parse();
    cli.verbosity.init_logger();
    resnet_imagenet::cli::main("bench-pipeline", || run(cli).map(|()| ExitCode::SUCCESS))
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let bench = cli.bench();
    if let Some(dir) = &cli.dump_png {
        let n = bench.dump_png(dir, cli.images)?;
        eprintln!("wrote {n} samples to {}", dir.display());
        return Ok(());
    }
    let report = bench.run(|w, r, runs| {
        if !cli.json {
            eprint!("\rworkers {w}: run {r}/{runs}");
        }
    })?;
    if !cli.json {
        eprint!("\r");
    }
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
                    color: None,
                },
                Series {
                    label: "decode-only ceiling".into(),
                    points: pts(|r| r.decode_ceiling_images_per_sec),
                    width: 2,
                    markers: true,
                    color: None,
                },
            ],
        )
        .context("plotting")?;
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
        report.page_cache.cached_fraction_before * 100.0,
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }
}
