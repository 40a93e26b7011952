//! Measurement in one place: medians, process statistics, the page cache,
//! the loader's benchmark against its decode-only ceiling ([`pipeline`]),
//! the CPU-vs-device parity check ([`parity`]), the training-step
//! timings ([`timing`]), `gpu-check`'s run of both ([`device_check`]) and
//! `bench-trainer`'s ([`trainer_bench`]).
//!
//! Every report struct here (`LoaderRun`, `CeilingRun`, `ConsumerReport`,
//! `Comparison`, `StepTimes`, `LoaderTraining`, `OpTimes`) derives
//! `Serialize`: its JSON form is its fields, by these names, in seconds,
//! bytes and images per second. `bench-pipeline --json` writes one object
//! ([`loader_bench::PipelineReport`]) and `gpu-check --json` one JSON Lines record
//! per part, each with a `type` field (`comparison`, `time`, `loader`, `ops`,
//! `failed`).

pub mod device_check;
#[cfg(feature = "cuda")]
pub mod engine_gpu;
pub mod parity;
pub mod timing;
pub mod trainer_bench;

// The loader's half lives in the data crate.
pub use resnet_imagenet_data::measure::{
    CeilingRun, ConsumerReport, LoaderRun, cached_fraction, cpu_seconds, decode_ceiling,
    drop_from_cache, loader_bench, median, median_index, page_cache, peak_rss_bytes, pipeline,
    run_loader,
};
