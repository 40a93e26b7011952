//! `pack-imagenet`: an ImageNet-style folder → memory-mapped shards.
//!
//! Exit codes: 0 ok; 1 ran, but `--verify` found a problem (or `--strict`
//! met a bad file); 2 error.

mod args;

use anyhow::Context;
use clap::Parser;
use resnet_imagenet::error::PackError;
use resnet_imagenet::pack::walk;
use resnet_imagenet::pack::{self, PackOptions};
use resnet_imagenet::reader;
use std::io::Write;
use std::process::ExitCode;

use args::Cli;

fn main() -> ExitCode {
    let cli = Cli::parse();
    cli.verbosity.init_logger();
    resnet_imagenet::cli::main("pack-imagenet", || match run(&cli) {
        // --strict and a file that cannot be packed: exit 1, not 2.
        Err(e) if matches!(e.downcast_ref(), Some(PackError::BadFile { .. })) => {
            eprintln!("pack-imagenet: error: {e:#}");
            Ok(ExitCode::from(1))
        }
        r => r,
    })
}

fn run(cli: &Cli) -> anyhow::Result<ExitCode> {
    if let Some(dir) = &cli.verify {
        return verify(dir, cli.json);
    }
    let input = cli.input.as_ref().expect("clap requires --input");
    let opts = cli.options()?;
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
