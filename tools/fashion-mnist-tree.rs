//! `fashion-mnist-tree`: Debian's Fashion-MNIST → an ImageNet-style tree of
//! 32x32 RGB JPEGs (`OUT/train/<k>-<class>/`, `OUT/val/<k>-<class>/`) for
//! `pack-imagenet`. Exit codes: 0 ok, 2 error.

use anyhow::Context;
use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;

/// Convert Fashion-MNIST (IDX files, e.g. from `apt-get install
/// dataset-fashion-mnist`) into a class-per-folder tree of JPEGs.
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
struct Cli {
    /// Folder with train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-*.
    #[arg(long, default_value = "/usr/share/datasets/fashion-mnist")]
    input: PathBuf,
    /// Output root.
    #[arg(long, short)]
    output: PathBuf,
    /// At most this many images per split.
    #[arg(long)]
    limit: Option<usize>,
    #[command(flatten)]
    verbosity: resnet_imagenet::cli::Verbosity,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    cli.verbosity.init_logger();
    let run = || -> anyhow::Result<()> {
        let (train, val) = resnet_imagenet::pack::import::fashion_mnist_to_tree(
            &cli.input,
            &cli.output,
            cli.limit,
        )
        .with_context(|| format!("converting {}", cli.input.display()))?;
        if !cli.verbosity.quiet {
            eprintln!(
                "wrote {train} train and {val} val images under {}",
                cli.output.display()
            );
        }
        Ok(())
    };
    resnet_imagenet::cli::main("fashion-mnist-tree", || run().map(|()| ExitCode::SUCCESS))
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
