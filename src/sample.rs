//! The bundled sample: `datasets/sample` of this repository (12 ImageNet
//! classes of real photos and the odd files a real folder has).

use crate::error::PackError;
use crate::pack::{PackOptions, pack};
use std::path::{Path, PathBuf};

/// The bundled sample, packed once into `target/sample-packed`; returns
/// that folder.
pub fn bundled_sample() -> Result<PathBuf, PackError> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let input = root.join("datasets/sample");
    let out = root.join("target/sample-packed");
    if !(out.join("train/manifest.json").is_file() && out.join("val/manifest.json").is_file()) {
        eprintln!("packing {} into {} (once)", input.display(), out.display());
        pack(&input, &out, &PackOptions::default())?;
    }
    Ok(out)
}
