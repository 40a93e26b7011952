//! What `bench-pipeline` runs: the loader at each worker count, repeated,
//! beside the decode-only ceiling of the same records and threads, and the
//! report it prints (its JSON form is [`PipelineReport`]'s fields).

use super::pipeline::{CeilingRun, ConsumerReport, LoaderRun, decode_ceiling, run_loader};
use super::{median, median_index, page_cache, peak_rss_bytes};
use crate::augment::Augment;
use crate::loader::{LoaderBuilder, OutputKind};
use crate::reader::Dataset;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Why a benchmark could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BenchError {
    /// Opening or loading the data failed (names the shard and record).
    #[error(transparent)]
    Data(Box<crate::Error>),
    /// `cold` was asked for and the page cache could not be dropped.
    #[error("dropping the shards from the page cache: {0}")]
    PageCache(std::io::Error),
    /// The ceiling could not decode some records.
    #[error(
        "{failed} of {total} records could not be read or decoded (pack-imagenet --verify {} names them)",
        data.display()
    )]
    Undecodable {
        /// Records that failed.
        failed: u64,
        /// Records tried.
        total: usize,
        /// The split folder.
        data: PathBuf,
    },
    /// The split has no record to show.
    #[error("{}: the dataset is empty", .0.display())]
    Empty(PathBuf),
    /// A sample picture could not be written.
    #[error("{}: {source}", path.display())]
    Png {
        /// The file.
        path: PathBuf,
        /// The encoder's or the OS's error.
        source: image::ImageError,
    },
}

impl<E: Into<crate::Error>> From<E> for BenchError {
    fn from(e: E) -> Self {
        BenchError::Data(Box::new(e.into()))
    }
}

/// What to measure.
#[derive(Debug, Clone)]
pub struct PipelineBench {
    /// A packed split folder.
    pub data: PathBuf,
    /// Worker counts, one row each (the last is the headline).
    pub workers: Vec<usize>,
    /// Records per batch.
    pub batch_size: usize,
    /// Timed batches per run (None: one epoch).
    pub batches: Option<usize>,
    /// Untimed batches first.
    pub warmup: usize,
    /// Runs per worker count; medians are reported.
    pub repeat: usize,
    /// The augmentation.
    pub augment: Augment,
    /// Loader seed.
    pub seed: u64,
    /// Output layout.
    pub output: OutputKind,
    /// Check every record's CRC-32.
    pub verify_checksums: bool,
    /// Read the next batches' records ahead.
    pub read_ahead: bool,
    /// Drop the shards from the page cache before every run.
    pub cold: bool,
    /// A simulated consumer's time per batch.
    pub consumer: Option<Duration>,
}

/// One worker count: medians over the runs, and the runs.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Worker threads (also the ceiling's threads).
    pub workers: usize,
    /// Median loader throughput.
    pub images_per_sec: f64,
    /// Median decode-only throughput of the same records.
    pub decode_ceiling_images_per_sec: f64,
    /// `images_per_sec / decode_ceiling_images_per_sec`.
    pub ratio: f64,
    /// Every loader run, in the order run.
    pub runs: Vec<LoaderRun>,
    /// Every ceiling run, in the order run.
    pub ceiling_runs: Vec<CeilingRun>,
}

/// The page cache before the first run.
#[derive(Debug, Clone, Serialize)]
pub struct PageCache {
    /// Fraction of the shards' pages resident.
    pub cached_fraction_before: f64,
    /// Whether every run dropped them first.
    pub dropped: bool,
}

/// Worker seconds per image by stage, from the median run of the last row.
#[derive(Debug, Clone, Serialize)]
pub struct Stages {
    /// Locating the record and checking its CRC.
    pub read: f64,
    /// Decoding.
    pub decode: f64,
    /// Crop + resize.
    pub resize: f64,
    /// Flip + normalise.
    pub normalize: f64,
    /// The consumer's wait in `next()`.
    pub consumer_wait: f64,
}

/// The whole benchmark (`bench-pipeline --json` prints it).
#[derive(Debug, Clone, Serialize)]
pub struct PipelineReport {
    /// The split folder.
    pub data: PathBuf,
    /// [`augment_label`] of the augmentation.
    pub augment: &'static str,
    /// Whether records' CRCs were checked.
    pub verify_checksums: bool,
    /// Whether records were read ahead.
    pub read_ahead: bool,
    /// The JPEG decoder of this build.
    pub decoder: &'static str,
    /// Records per batch.
    pub batch_size: usize,
    /// Images of the median run of the last row.
    pub images: u64,
    /// Workers of the last row.
    pub workers: usize,
    /// Its median throughput.
    pub images_per_sec: f64,
    /// Its median encoded MB/s.
    pub mb_per_sec: f64,
    /// Its median CPU seconds per image.
    pub cpu_seconds_per_image: f64,
    /// Its median ceiling.
    pub decode_ceiling_images_per_sec: f64,
    /// Loader / ceiling.
    pub ratio_to_ceiling: f64,
    /// The process's peak resident memory.
    pub peak_rss_bytes: u64,
    /// The page cache before the first run.
    pub page_cache: PageCache,
    /// Per-stage times of the median run.
    pub stages_seconds_per_image: Stages,
    /// What the simulated consumer saw (last run).
    pub consumer: Option<ConsumerReport>,
    /// One row per worker count.
    pub scaling: Vec<Row>,
}

/// The report's name for an augmentation.
pub fn augment_label(a: &Augment) -> &'static str {
    match a {
        Augment::Train(_) => "train-paper",
        Augment::Cifar(_) => "train-cifar",
        Augment::Eval(_) => "eval-center-224",
    }
}

/// The run whose throughput is the median of `runs` (not the middle one in
/// the order they ran).
pub fn median_run(runs: &[LoaderRun]) -> &LoaderRun {
    let ips: Vec<f64> = runs.iter().map(|r| r.images_per_sec).collect();
    &runs[median_index(&ips)]
}

impl PipelineBench {
    /// The loader these settings describe, with `workers` threads.
    pub fn builder(&self, workers: usize) -> LoaderBuilder {
        LoaderBuilder::new()
            .batch_size(self.batch_size)
            .workers(workers)
            .seed(self.seed)
            .output(self.output)
            .verify_checksums(self.verify_checksums)
            .read_ahead(self.read_ahead)
            .profile(true)
            .augment(self.augment.clone())
    }

    fn shard_files(&self) -> Result<Vec<PathBuf>, BenchError> {
        let manifest = crate::reader::read_manifest(&self.data)?;
        Ok(manifest
            .shards
            .iter()
            .map(|s| self.data.join(&s.name))
            .collect())
    }

    /// Opens the split through a fresh mapping (pages mapped by a live one
    /// would stay cached), dropping it from the page cache first if `cold`.
    fn open(&self, shards: &[PathBuf]) -> Result<Arc<Dataset>, BenchError> {
        if self.cold {
            page_cache::drop_from_cache(shards).map_err(BenchError::PageCache)?;
        }
        Ok(Arc::new(Dataset::open(&self.data)?))
    }

    /// Runs every worker count `repeat` times; `progress(workers, run, runs)`
    /// is called before each run.
    pub fn run(
        &self,
        mut progress: impl FnMut(usize, usize, usize),
    ) -> Result<PipelineReport, BenchError> {
        let shards = self.shard_files()?;
        let cached = {
            let _ds = self.open(&shards)?;
            page_cache::cached_fraction(&shards).unwrap_or(f64::NAN)
        };
        let repeat = self.repeat.max(1);
        let mut rows = Vec::new();
        let mut last_consumer = None;
        for &w in &self.workers {
            let (mut runs, mut ceilings) = (Vec::new(), Vec::new());
            for r in 0..repeat {
                progress(w, r + 1, repeat);
                let loader = self.builder(w).build(self.open(&shards)?)?;
                let batches = self.batches.unwrap_or(loader.batches_per_epoch()).max(1);
                // The ceiling decodes as many records as the loader
                // produced, from the same epoch order.
                let order = loader.epoch_order(0);
                let n = (batches * self.batch_size).min(order.len().max(1));
                let (run, c) = run_loader(&loader, 0, self.warmup, batches, self.consumer)?;
                drop(loader);
                runs.push(run);
                last_consumer = self.consumer.map(|_| c);
                let idx: Vec<u32> = (0..n).map(|i| order[i % order.len()]).collect();
                let ceiling = decode_ceiling(&*self.open(&shards)?, &idx, w);
                if ceiling.failed > 0 {
                    return Err(BenchError::Undecodable {
                        failed: ceiling.failed,
                        total: idx.len(),
                        data: self.data.clone(),
                    });
                }
                ceilings.push(ceiling);
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
        let Some(top) = rows.last() else {
            return Err(BenchError::Empty(self.data.clone()));
        };
        let best = median_run(&top.runs);
        let per = |x: f64| x / best.stages.samples.max(1) as f64;
        let of_runs =
            |f: fn(&LoaderRun) -> f64| median(&top.runs.iter().map(f).collect::<Vec<_>>());
        Ok(PipelineReport {
            data: self.data.clone(),
            augment: augment_label(&self.augment),
            verify_checksums: self.verify_checksums,
            read_ahead: self.read_ahead,
            decoder: crate::decode::jpeg_decoder_name(),
            batch_size: self.batch_size,
            images: best.images,
            workers: top.workers,
            images_per_sec: top.images_per_sec,
            mb_per_sec: of_runs(|r| r.mb_per_sec),
            cpu_seconds_per_image: of_runs(|r| r.cpu_seconds_per_image),
            decode_ceiling_images_per_sec: top.decode_ceiling_images_per_sec,
            ratio_to_ceiling: top.ratio,
            peak_rss_bytes: peak_rss_bytes(),
            page_cache: PageCache {
                cached_fraction_before: cached,
                dropped: self.cold,
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
        })
    }

    /// Writes the first `n` samples of epoch 0 into `dir` as PNG files, as
    /// the network sees them before normalisation (raw u8 crops: scale,
    /// crop, flip and padding applied; the mean subtraction and lighting
    /// noise are not pictures). Returns how many were written.
    pub fn dump_png(&self, dir: &Path, n: usize) -> Result<usize, BenchError> {
        let png_err = |path: PathBuf| move |source| BenchError::Png { path, source };
        std::fs::create_dir_all(dir)
            .map_err(|e| png_err(dir.to_path_buf())(image::ImageError::IoError(e)))?;
        let loader = self
            .builder(1)
            .batch_size(n.max(1))
            .output(OutputKind::U8Hwc)
            .build(self.open(&self.shard_files()?)?)?;
        let size = loader.normalizer().size() as u32;
        let Some(batch) = loader.epoch(0).next() else {
            return Err(BenchError::Empty(self.data.clone()));
        };
        let batch = batch?;
        let one = (3 * size * size) as usize;
        let per = one * batch.views();
        for (k, (&index, &label)) in batch.indices().iter().zip(batch.labels()).enumerate() {
            let index = index as usize;
            let name = match loader.sample_params(0, index)? {
                Some(p) => format!(
                    "{k:04}_rec{index}_label{label}_S{}_x{}_y{}_flip{}.png",
                    p.s, p.crop_x, p.crop_y, p.flip as u8
                ),
                None => format!("{k:04}_rec{index}_label{label}_eval.png"),
            };
            let rgb = &batch.images_u8()[k * per..k * per + one];
            let path = dir.join(&name);
            image::save_buffer(&path, rgb, size, size, image::ExtendedColorType::Rgb8)
                .map_err(png_err(path.clone()))?;
        }
        Ok(batch.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::augment::{CifarAugment, EvalCrop, TrainAugment};
    use crate::loader::StageTimes;

    /// Regression (issue 14): `--cifar` was reported as `train-paper`.
    #[test]
    fn every_augmentation_has_its_own_label() {
        let labels = [
            augment_label(&Augment::Train(TrainAugment::default())),
            augment_label(&Augment::Cifar(CifarAugment::default())),
            augment_label(&Augment::Eval(EvalCrop::default())),
        ];
        assert_eq!(labels, ["train-paper", "train-cifar", "eval-center-224"]);
    }

    /// Regression (issue 14): "the median run" was `runs[len / 2]` in the
    /// order run, whatever its throughput.
    #[test]
    fn the_median_run_is_chosen_by_throughput_not_order() {
        let run = |ips: f64| LoaderRun {
            workers: 1,
            images: ips as u64,
            batches: 1,
            seconds: 1.0,
            images_per_sec: ips,
            mb_per_sec: 0.0,
            cpu_seconds_per_image: 0.0,
            stages: StageTimes::default(),
        };
        let runs = [run(300.0), run(100.0), run(200.0)];
        assert_eq!(median_run(&runs).images_per_sec, 200.0);
        let runs = [run(100.0), run(900.0), run(300.0), run(200.0), run(250.0)];
        assert_eq!(median_run(&runs).images_per_sec, 250.0);
    }
}
