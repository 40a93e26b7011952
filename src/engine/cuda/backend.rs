//! The CUDA backend as the engine sees it: copies in and out, the step's
//! parts, the whole single-process step as a replayed CUDA graph, and the
//! data-parallel backward (NCCL where it is, host memory otherwise).

use super::{Cuda, CudaError, Dev};
use crate::dist::Communicator;
use crate::engine::backend::{Backend, Flat, Reduction};
use crate::engine::data_parallel::Buckets;
use crate::engine::plan::Plan;
use crate::engine::{EngineError, SgdSettings};

impl Backend for Cuda {
    fn describe(&self) -> String {
        format!(
            "cuda:{} {} ({}{})",
            self.ordinal,
            self.device_name(),
            self.precision,
            if self.graphs { ", CUDA graphs" } else { "" }
        )
    }

    fn plan(&self) -> &Plan {
        &self.plan
    }

    fn read(&self, which: Flat, dst: &mut [f32]) -> Result<(), EngineError> {
        let src = self.flat(which);
        if src.len != dst.len() {
            return Err(EngineError::TensorSize {
                path: format!("{which:?}"),
                expected: src.len,
                got: dst.len(),
            });
        }
        Ok(self.dtoh(src.ptr, dst)?)
    }

    fn write(&mut self, which: Flat, src: &[f32]) -> Result<(), EngineError> {
        let dst = self.flat(which);
        if src.len() != dst.len {
            return Err(EngineError::TensorSize {
                path: format!("{which:?}"),
                expected: dst.len,
                got: src.len(),
            });
        }
        self.htod(src, dst.ptr)?;
        self.stream.synchronize().map_err(CudaError::from)?;
        Ok(())
    }

    fn forward(&mut self, images: &[f32], train: bool) -> Result<(), EngineError> {
        crate::engine::check_batch(&self.plan, images, None)?;
        self.htod(images, self.buf(self.plan.x))?;
        Ok(self.run_forward(train)?)
    }

    fn loss(&mut self, labels: &[u32]) -> Result<f32, EngineError> {
        crate::engine::check_labels(&self.plan, labels)?;
        self.htod(labels, self.labels.ptr)?;
        self.loss_and_dlogits()?;
        Ok(self.read_loss()?)
    }

    fn backward(
        &mut self,
        reduce: Option<(&mut dyn Communicator, &Buckets)>,
    ) -> Result<Reduction, EngineError> {
        let Some((comm, buckets)) = reduce else {
            self.run_backward()?;
            return Ok(Reduction::default());
        };
        if self.summed.len != self.plan.params_len {
            self.summed = Dev::zeros(&self.stream, self.plan.params_len)?;
        }
        #[cfg(feature = "mpi")]
        if self.nccl.is_some() {
            return Ok(self.backward_nccl(buckets)?);
        }
        let _ = buckets;
        Ok(self.backward_through_host(comm)?)
    }

    fn sgd(
        &mut self,
        lr: f32,
        settings: SgdSettings,
        scale: f32,
        first: bool,
        summed: bool,
    ) -> Result<(), EngineError> {
        let grads = if summed { &self.summed } else { &self.grads };
        if grads.len != self.plan.params_len {
            return Err(EngineError::Backend(
                "SGD on summed gradients before any data-parallel backward".into(),
            ));
        }
        Ok(self.launch_sgd((lr, settings, scale, first), grads.ptr, self.no_skip.ptr)?)
    }

    fn logits(&self) -> Result<Vec<f32>, EngineError> {
        let mut out = vec![0f32; self.plan.batch * self.plan.classes];
        self.dtoh(self.buf(self.plan.logits), &mut out)?;
        Ok(out)
    }

    fn train_step(
        &mut self,
        images: &[f32],
        labels: &[u32],
        lr: f32,
        settings: SgdSettings,
        first: bool,
    ) -> Result<f32, EngineError> {
        crate::engine::check_batch(&self.plan, images, Some(labels))?;
        self.htod(labels, self.labels.ptr)?;
        self.htod(images, self.buf(self.plan.x))?;
        let key = (
            lr.to_bits(),
            settings.momentum.to_bits(),
            settings.weight_decay.to_bits(),
            first,
        );
        if self.graphs && self.graph.as_ref().map(|g| g.0) != Some(key) {
            self.graph = None;
            match self.capture(lr, settings, first) {
                Ok(g) => self.graph = Some((key, g)),
                Err(e) => {
                    log::warn!("CUDA graph capture failed ({e}); running kernel by kernel");
                    self.graphs = false;
                }
            }
        }
        match (&self.graph, self.graphs) {
            (Some((_, g)), true) => g.launch().map_err(CudaError::from)?,
            _ => self.step_ops(lr, settings, first)?,
        }
        Ok(self.read_loss()?)
    }

    fn join(&mut self, comm: &dyn Communicator) -> Result<(), EngineError> {
        #[cfg(feature = "mpi")]
        if comm.world_size() > 1 && self.nccl.is_none() {
            self.nccl = super::nccl::Nccl::join(&self.ctx, comm)?;
        }
        let _ = comm;
        Ok(())
    }

    fn buffer(&self, name: &str) -> Option<Vec<f32>> {
        let b = self.plan.bufs.iter().find(|b| b.name == name)?;
        let mut out = vec![0f32; b.len];
        self.dtoh(self.arena.at(b.offset), &mut out).ok()?;
        Some(out)
    }
}
