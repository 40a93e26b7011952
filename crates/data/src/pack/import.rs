//! Importers: other real datasets → the ImageNet-style tree `pack-imagenet` reads.
//!
//! Fashion-MNIST (Debian's `dataset-fashion-mnist`: 60,000 train and 10,000
//! test 28x28 grayscale images in the IDX format) becomes
//! `OUT/train/<k>-<class>/NNNNN.JPEG` and `OUT/val/<k>-<class>/NNNNN.JPEG`,
//! each image zero-padded to 32x32 (as LeNet padded MNIST) and saved as an
//! RGB JPEG, so the paper's CIFAR networks and augmentation apply unchanged.
//! Folder names start with the class index, so sorted folder names give the
//! dataset's own labels.

use std::io::Read;
use std::path::Path;

/// Fashion-MNIST's classes, in label order.
pub const FASHION_MNIST_CLASSES: [&str; 10] = [
    "tshirt-top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle-boot",
];

/// Why an IDX file could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdxError {
    /// Reading or decompressing failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Not an IDX file of the expected kind.
    #[error("not an IDX {expected} file: {detail}")]
    Format {
        /// `images` or `labels`.
        expected: &'static str,
        /// What is wrong.
        detail: String,
    },
}

/// Images of an IDX3 file: count, rows, cols and the pixels (row-major).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxImages {
    /// Number of images.
    pub count: usize,
    /// Rows per image.
    pub rows: usize,
    /// Columns per image.
    pub cols: usize,
    /// `count * rows * cols` bytes.
    pub pixels: Vec<u8>,
}

fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

/// Parses an (uncompressed) IDX3 unsigned-byte image file.
pub fn parse_idx_images(data: &[u8]) -> Result<IdxImages, IdxError> {
    let bad = |detail: String| IdxError::Format {
        expected: "images",
        detail,
    };
    if data.len() < 16 || be_u32(data, 0) != 0x0000_0803 {
        return Err(bad("magic is not 0x00000803".into()));
    }
    let (count, rows, cols) = (
        be_u32(data, 4) as usize,
        be_u32(data, 8) as usize,
        be_u32(data, 12) as usize,
    );
    let need = count
        .checked_mul(rows)
        .and_then(|x| x.checked_mul(cols))
        .ok_or_else(|| bad("size overflows".into()))?;
    if data.len() - 16 != need {
        return Err(bad(format!(
            "{} pixel bytes for {count}x{rows}x{cols}",
            data.len() - 16
        )));
    }
    Ok(IdxImages {
        count,
        rows,
        cols,
        pixels: data[16..].to_vec(),
    })
}

/// Parses an (uncompressed) IDX1 unsigned-byte label file.
pub fn parse_idx_labels(data: &[u8]) -> Result<Vec<u8>, IdxError> {
    let bad = |detail: String| IdxError::Format {
        expected: "labels",
        detail,
    };
    if data.len() < 8 || be_u32(data, 0) != 0x0000_0801 {
        return Err(bad("magic is not 0x00000801".into()));
    }
    let count = be_u32(data, 4) as usize;
    if data.len() - 8 != count {
        return Err(bad(format!(
            "{} label bytes for {count} labels",
            data.len() - 8
        )));
    }
    Ok(data[8..].to_vec())
}

/// Reads a file, gunzipping it if it ends in `.gz`.
pub fn read_maybe_gz(path: &Path) -> Result<Vec<u8>, IdxError> {
    let raw = std::fs::read(path)?;
    if path.extension().is_some_and(|e| e == "gz") {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(raw.as_slice()).read_to_end(&mut out)?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// The image `i` zero-padded to `side x side` (centred) and replicated to RGB.
pub fn padded_rgb(images: &IdxImages, i: usize, side: usize) -> Vec<u8> {
    let (r, c) = (images.rows, images.cols);
    let (oy, ox) = ((side.saturating_sub(r)) / 2, (side.saturating_sub(c)) / 2);
    let img = &images.pixels[i * r * c..(i + 1) * r * c];
    let mut out = vec![0u8; side * side * 3];
    for y in 0..r.min(side) {
        for x in 0..c.min(side) {
            let v = img[y * c + x];
            out[((y + oy) * side + x + ox) * 3..][..3].fill(v);
        }
    }
    out
}

/// Writes Fashion-MNIST from `src` (holding `train-images-idx3-ubyte.gz`
/// etc.) as an ImageNet-style tree under `out`; at most `limit` images per
/// split when given. Returns (train, val) image counts.
pub fn fashion_mnist_to_tree(
    src: &Path,
    out: &Path,
    limit: Option<usize>,
) -> Result<(usize, usize), IdxError> {
    let mut counts = [0usize; 2];
    for (k, (split, prefix)) in [("train", "train"), ("val", "t10k")]
        .into_iter()
        .enumerate()
    {
        let images = parse_idx_images(&read_maybe_gz(
            &src.join(format!("{prefix}-images-idx3-ubyte.gz")),
        )?)?;
        let labels = parse_idx_labels(&read_maybe_gz(
            &src.join(format!("{prefix}-labels-idx1-ubyte.gz")),
        )?)?;
        if labels.len() != images.count {
            return Err(IdxError::Format {
                expected: "labels",
                detail: format!("{} labels for {} images", labels.len(), images.count),
            });
        }
        for (label, name) in FASHION_MNIST_CLASSES.iter().enumerate() {
            std::fs::create_dir_all(out.join(split).join(format!("{label}-{name}")))?;
        }
        let n = limit.map_or(images.count, |l| l.min(images.count));
        for (i, &label) in labels.iter().enumerate().take(n) {
            let label = label as usize;
            let Some(name) = FASHION_MNIST_CLASSES.get(label) else {
                return Err(IdxError::Format {
                    expected: "labels",
                    detail: format!("label {label} at {i}"),
                });
            };
            let rgb = padded_rgb(&images, i, 32);
            let jpeg =
                super::encode::encode_jpeg(&rgb, 32, 32, 95).map_err(std::io::Error::other)?;
            std::fs::write(
                out.join(split)
                    .join(format!("{label}-{name}"))
                    .join(format!("{i:05}.JPEG")),
                jpeg,
            )?;
        }
        counts[k] = n;
    }
    Ok((counts[0], counts[1]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idx_images(count: u32, rows: u32, cols: u32) -> Vec<u8> {
        let mut v = vec![0, 0, 8, 3];
        for x in [count, rows, cols] {
            v.extend_from_slice(&x.to_be_bytes());
        }
        v.extend((0..count * rows * cols).map(|i| (i % 256) as u8));
        v
    }

    #[test]
    fn idx_round_trip_and_errors() {
        let imgs = parse_idx_images(&idx_images(2, 3, 4)).unwrap();
        assert_eq!((imgs.count, imgs.rows, imgs.cols), (2, 3, 4));
        assert_eq!(imgs.pixels[12], 12);
        assert!(parse_idx_images(&idx_images(2, 3, 4)[..30]).is_err());
        assert!(parse_idx_images(b"\\x00\\x00\\x08\\x01xxxxxxxxxxxx").is_err());
        let mut l = vec![0, 0, 8, 1, 0, 0, 0, 3];
        l.extend([7, 8, 9]);
        assert_eq!(parse_idx_labels(&l).unwrap(), vec![7, 8, 9]);
        assert!(parse_idx_labels(&l[..10]).is_err());
    }

    #[test]
    fn padding_centres_the_image() {
        let imgs = parse_idx_images(&idx_images(1, 2, 2)).unwrap(); // pixels 0,1,2,3
        let rgb = padded_rgb(&imgs, 0, 4);
        // (1,1) holds pixel 0; (2,2) holds pixel 3; corners are zero.
        assert_eq!(&rgb[(4 + 1) * 3..(4 + 1) * 3 + 3], &[0, 0, 0]);
        assert_eq!(&rgb[(2 * 4 + 2) * 3..(2 * 4 + 2) * 3 + 3], &[3, 3, 3]);
        assert_eq!(&rgb[(4 + 2) * 3..(4 + 2) * 3 + 3], &[1, 1, 1]);
    }
}
