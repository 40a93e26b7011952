//! `resnet_imagenet._native`: the packer and the streaming loader of
//! `resnet-imagenet-data` for Python. The Python package (`py_src/`) wraps
//! it; nothing here is meant to be called directly.
//!
//! A batch's pixels are never copied: [`Images`] owns the loader's batch
//! and shows its buffer through NumPy's `__array_interface__`, so the
//! array (and a torch tensor made from it) is a view whose base is the
//! `Images`; when the last view is freed the batch's buffer goes back to
//! the loader's pool.

use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};
use resnet_imagenet_data::loader::{
    Batch, Epoch, Loader, LoaderBuilder, LoaderState, Next, OutputKind,
};
use resnet_imagenet_data::pack::{PackOptions, pack as pack_folder};
use resnet_imagenet_data::progress::ProgressMode;
use resnet_imagenet_data::reader::Dataset;
use resnet_imagenet_data::sampler::Distributed;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pyo3::create_exception!(
    _native,
    LoaderError,
    PyRuntimeError,
    "A record could not be loaded (the message names the shard and the record)."
);

/// One batch's images, owned until the last NumPy view of them is freed.
#[pyclass(module = "resnet_imagenet._native", frozen)]
struct Images {
    batch: Batch,
}

#[pymethods]
impl Images {
    /// NumPy's array interface (version 3) over the batch's buffer:
    /// `[B, 3, S, S]` float32 (or `[B, S, S, 3]` uint8), C order, writable.
    #[getter]
    fn __array_interface__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        let shape = self.batch.shape();
        let (ptr, typestr) = if self.batch.images_u8().is_empty() {
            (self.batch.images().as_ptr() as usize, "<f4")
        } else {
            (self.batch.images_u8().as_ptr() as usize, "|u1")
        };
        d.set_item("shape", PyTuple::new(py, shape)?)?;
        d.set_item("typestr", typestr)?;
        d.set_item("data", (ptr, false))?;
        d.set_item("version", 3)?;
        Ok(d)
    }

    /// The batch's index in its epoch.
    #[getter]
    fn index(&self) -> usize {
        self.batch.index()
    }
}

/// A loader over one packed split.
#[pyclass(module = "resnet_imagenet._native")]
struct NativeLoader {
    loader: Loader,
    seed: u64,
    epoch: Option<Epoch>,
    classes: Vec<(String, String)>,
}

fn value_error(arg: &str, why: impl std::fmt::Display) -> PyErr {
    PyValueError::new_err(format!("{arg}: {why}"))
}

#[pymethods]
impl NativeLoader {
    #[new]
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (path, batch_size, workers, seed, augment, crop, rank, world_size, output, drop_last))]
    fn new(
        path: PathBuf,
        batch_size: usize,
        workers: usize,
        seed: u64,
        augment: &str,
        crop: u32,
        rank: usize,
        world_size: usize,
        output: &str,
        drop_last: bool,
    ) -> PyResult<Self> {
        if batch_size == 0 {
            return Err(value_error("batch_size", "must be at least 1"));
        }
        if world_size == 0 || rank >= world_size {
            return Err(value_error(
                "rank",
                format!("{rank} of world_size {world_size}: need 0 <= rank < world_size"),
            ));
        }
        if crop == 0 {
            return Err(value_error("crop", "must be at least 1"));
        }
        let ds = Dataset::open(&path).map_err(|e| value_error("path", e))?;
        let classes = ds
            .manifest()
            .classes
            .iter()
            .map(|c| (c.wnid.clone(), c.name.clone()))
            .collect();
        let output = match output {
            "float32" => OutputKind::F32Chw,
            "uint8" => OutputKind::U8Hwc,
            other => {
                return Err(value_error(
                    "output",
                    format!("{other:?}: expected \"float32\" or \"uint8\""),
                ));
            }
        };
        let (b, remainder) = LoaderBuilder::new()
            .batch_size(batch_size)
            .workers(workers.max(1))
            .seed(seed)
            .drop_last(drop_last)
            .output(output)
            .augment_named(augment, crop)
            .map_err(|e| value_error("augment", e))?;
        let b = b.distributed(Distributed {
            rank,
            world_size,
            remainder,
        });
        let loader = b.build(Arc::new(ds)).map_err(|e| value_error("path", e))?;
        Ok(NativeLoader {
            loader,
            seed,
            epoch: None,
            classes,
        })
    }

    /// Batches per epoch (of this rank).
    fn batches_per_epoch(&self) -> usize {
        self.loader.batches_per_epoch()
    }

    /// Records in the split.
    fn records(&self) -> usize {
        self.loader.dataset().len()
    }

    /// `(wnid, name)` of every class, by label.
    fn classes(&self) -> Vec<(String, String)> {
        self.classes.clone()
    }

    /// Starts epoch `epoch` after its first `position` batches (workers
    /// begin filling the next batches at once).
    fn start(&mut self, epoch: u64, position: usize) -> PyResult<()> {
        self.epoch = None;
        let state = LoaderState {
            seed: self.seed,
            epoch,
            position,
        };
        let e = self
            .loader
            .resume(state)
            .map_err(|e| value_error("state", e))?;
        self.epoch = Some(e);
        Ok(())
    }

    /// The next batch of the started epoch as `(images, labels)`, labels
    /// as little-endian int64 bytes; `None` at its end. The GIL is
    /// released while waiting, and the wait is cut into slices between
    /// which Python's signal handlers run, so Ctrl-C stops it promptly
    /// (`KeyboardInterrupt`; the caller's `stop` then joins the workers).
    fn next_batch(&mut self, py: Python<'_>) -> PyResult<Option<(Images, Vec<u8>)>> {
        let Some(epoch) = self.epoch.as_mut() else {
            return Err(PyRuntimeError::new_err("no epoch started"));
        };
        let next = loop {
            match py.detach(|| epoch.next_within(Duration::from_millis(50))) {
                Next::Pending => py.check_signals()?,
                ready_or_end => break ready_or_end,
            }
        };
        match next {
            Next::End | Next::Pending => {
                self.epoch = None;
                Ok(None)
            }
            Next::Ready(Err(e)) => {
                self.epoch = None;
                Err(LoaderError::new_err(e.to_string()))
            }
            Next::Ready(Ok(batch)) => {
                let labels = batch
                    .labels()
                    .iter()
                    .flat_map(|&l| (l as i64).to_le_bytes())
                    .collect();
                Ok(Some((Images { batch }, labels)))
            }
        }
    }

    /// Stops the epoch in progress (its workers end).
    fn stop(&mut self) {
        self.epoch = None;
    }
}

/// Packs a class-per-folder tree (`input/train/<class>/*`, `input/val/...`)
/// into shards under `output`; returns each split's summary as JSON.
#[pyfunction]
#[pyo3(signature = (input, output, threads, strict, overwrite, progress))]
fn pack(
    py: Python<'_>,
    input: PathBuf,
    output: PathBuf,
    threads: usize,
    strict: bool,
    overwrite: bool,
    progress: bool,
) -> PyResult<String> {
    let opts = PackOptions {
        threads,
        strict,
        overwrite,
        progress: if progress {
            ProgressMode::Auto
        } else {
            ProgressMode::Hidden
        },
        ..PackOptions::default()
    };
    let summary = py
        .detach(|| pack_folder(&input, &output, &opts))
        .map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
    serde_json::to_string(&summary).map_err(|e| PyRuntimeError::new_err(e.to_string()))
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<NativeLoader>()?;
    m.add_class::<Images>()?;
    m.add_function(wrap_pyfunction!(pack, m)?)?;
    m.add("LoaderError", m.py().get_type::<LoaderError>())?;
    Ok(())
}
