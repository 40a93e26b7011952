//! The data-parallel step: each rank runs forward and backward on its
//! share of the global batch, the gradients are summed over ranks in
//! buckets while backward goes on, and every rank applies the same SGD
//! update to the same weights.
//!
//! - **Buckets** ([`Buckets`]): the flat gradient array cut into ranges
//!   in the order backward produces them (the last layers first), the first
//!   one small (1 MiB) and the rest up to 25 MiB, as DDP's defaults. A
//!   bucket's sum is started (non-blocking) right after the backward of
//!   the op that completes it, and MPI is given a chance to move it on after
//!   every later op; the plan fixes the order, so it is the same on every rank.
//! - **Agreement on the loss**: before backward, the ranks sum a non-finite
//!   flag; if any rank's loss is NaN or infinite, every rank skips backward
//!   and the update together (none is left waiting in a bucket's sum).
//! - **BatchNorm** normalises with each rank's own batch statistics (as
//!   DDP); [`Engine::average_statistics`] averages the running statistics
//!   over ranks before evaluation and checkpoints.
//!
//! The sums land in a second gradient array ([`super::Flat::Summed`]), so
//! the one backward writes is never touched by the collective while an op
//! still runs; SGD then reads the sums scaled by `1 / world`. This order
//! is the engine's, the same for every backend; each backend sums its
//! buckets with what fits its memory (the CPU through the communicator,
//! MPI; the CUDA backend through NCCL, joined over the communicator).

use super::{Engine, EngineError, Flat};
use crate::dist::Communicator;

/// DDP's first bucket: small, so the first sum starts early in backward.
pub const FIRST_BUCKET_BYTES: usize = 1 << 20;
/// DDP's `bucket_cap_mb` default.
pub const BUCKET_BYTES: usize = 25 << 20;

/// Where the gradient buckets are and when each is complete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Buckets {
    /// `(op index, lo, hi)`: after the backward of op `op index`, the
    /// gradients `lo..hi` of the flat array are final. In backward order.
    pub ranges: Vec<(usize, usize, usize)>,
}

impl Buckets {
    /// Cuts `plan`'s parameters into buckets of about `first` bytes, then
    /// `rest` bytes, in backward order. If some op's parameters do not lie
    /// above those of every op before it, it is one bucket, summed after
    /// backward (correct, without overlap).
    pub fn new(plan: &super::plan::Plan, first: usize, rest: usize) -> Self {
        let spans: Vec<Option<(usize, usize)>> = plan
            .ops
            .iter()
            .map(|op| {
                let ps = op.params();
                let lo = ps.iter().map(|&p| plan.params[p].offset).min()?;
                let hi = ps
                    .iter()
                    .map(|&p| plan.params[p].offset + plan.params[p].len)
                    .max()?;
                Some((lo, hi))
            })
            .collect();
        let mut ordered = true;
        let mut top = 0;
        for &(lo, hi) in spans.iter().flatten() {
            ordered &= lo >= top;
            top = hi;
        }
        let total = plan.params_len;
        if !ordered || total == 0 {
            return Buckets {
                ranges: vec![(0, 0, total)],
            };
        }
        let mut ranges = Vec::new();
        let mut hi = total;
        let mut cap = first;
        for (i, span) in spans.iter().enumerate().rev() {
            let Some((lo, _)) = span else { continue };
            if i > 0 && (hi - lo) * 4 >= cap {
                ranges.push((i, *lo, hi));
                hi = *lo;
                cap = rest;
            }
        }
        if hi > 0 {
            ranges.push((0, 0, hi));
        }
        Buckets { ranges }
    }
}

/// What a data-parallel step did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepStats {
    /// This rank's loss (mean over its share); if some rank's loss was not
    /// finite, the sum of the ranks' losses (NaN or infinite), the same on
    /// every rank, so that each names the cause when it stops.
    pub loss: f32,
    /// Whether every rank's loss was finite (if not, nothing was updated).
    pub all_finite: bool,
    /// Seconds from the first bucket's start to the last bucket's end.
    pub allreduce_s: f64,
    /// Seconds spent waiting for the sums after backward (not hidden).
    pub wait_s: f64,
}

impl Engine {
    /// The gradient buckets of this plan.
    pub fn buckets(&self) -> &Buckets {
        &self.buckets
    }

    /// Sets the bucket sizes (bytes) of the data-parallel step.
    pub fn set_bucket_bytes(&mut self, first: usize, rest: usize) {
        self.buckets = Buckets::new(self.plan(), first, rest);
    }

    /// One data-parallel SGD step on this rank's share (`images`,
    /// `labels`: the plan's batch) with the ranks of `comm`. With one rank
    /// it is exactly [`Engine::train_step`].
    pub fn train_step_on(
        &mut self,
        images: &[f32],
        labels: &[u32],
        lr: f32,
        comm: &mut dyn Communicator,
    ) -> Result<StepStats, EngineError> {
        let world = comm.world_size();
        if world == 1 {
            let loss = self.train_step(images, labels, lr)?;
            return Ok(StepStats {
                loss,
                all_finite: loss.is_finite(),
                allreduce_s: 0.0,
                wait_s: 0.0,
            });
        }
        if !self.joined {
            self.backend.join(comm)?;
            self.joined = true;
        }
        let loss = self.forward_loss(images, labels)?;
        // The ranks' losses summed: not finite if any is not.
        let mut sum = [loss as f64];
        comm.sum_f64(&mut sum);
        if !sum[0].is_finite() {
            return Ok(StepStats {
                loss: sum[0] as f32,
                all_finite: false,
                allreduce_s: 0.0,
                wait_s: 0.0,
            });
        }
        let r = self.backend.backward(Some((comm, &self.buckets)))?;
        let first = !self.has_velocity;
        let scale = 1.0 / world as f32;
        self.backend.sgd(lr, self.sgd, scale, first, true)?;
        self.has_velocity = true;
        Ok(StepStats {
            loss,
            all_finite: true,
            allreduce_s: r.allreduce_s,
            wait_s: r.wait_s,
        })
    }

    /// The gradients summed over ranks and divided by their number, by
    /// dfdx path and layout, after [`Engine::train_step_on`] with several
    /// ranks (with one, [`Engine::gradients`]).
    pub fn averaged_gradients(&self, world: usize) -> Result<Vec<(String, Vec<f32>)>, EngineError> {
        if world == 1 {
            return self.gradients();
        }
        let scale = 1.0 / world as f32;
        let scaled: Vec<f32> = self.flat(Flat::Summed)?.iter().map(|g| g * scale).collect();
        Ok(self.per_param(&scaled))
    }

    /// Averages the running statistics of BatchNorm over the ranks (in
    /// place, the same bits on every rank); nothing to do when no training
    /// step has changed them since the last call.
    pub fn average_statistics(&mut self, comm: &dyn Communicator) -> Result<(), EngineError> {
        let world = comm.world_size();
        if world == 1 || self.statistics_averaged {
            return Ok(());
        }
        let mut states = self.flat(Flat::States)?;
        comm.sum_f32(&mut states);
        let scale = 1.0 / world as f32;
        for v in &mut states {
            *v *= scale;
        }
        self.backend.write(Flat::States, &states)?;
        self.statistics_averaged = true;
        Ok(())
    }

    /// CRC-32 of the parameters and the running statistics, as stored:
    /// equal on every rank of a data-parallel run (after
    /// [`Engine::average_statistics`]).
    pub fn checksum(&self) -> Result<u32, EngineError> {
        let mut h = crc32fast::Hasher::new();
        for v in self
            .flat(Flat::Params)?
            .iter()
            .chain(&self.flat(Flat::States)?)
        {
            h.update(&v.to_le_bytes());
        }
        Ok(h.finalize())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::cifar::ResNet20;
    use dfdx::prelude::*;

    #[test]
    fn buckets_tile_the_gradients_in_backward_order() {
        let dev: Cpu = Default::default();
        let m: ResNet20<10, f32, Cpu> = BuildModule::build(&dev);
        let e = Engine::new(&m, 4, (32, 32), 1).unwrap();
        let plan = e.plan();
        for (first, rest) in [(1 << 20, 25 << 20), (4096, 65536), (1, 1)] {
            let b = Buckets::new(plan, first, rest);
            let mut hi = plan.params_len;
            let mut last_op = usize::MAX;
            for &(op, lo, h) in &b.ranges {
                assert_eq!(h, hi, "contiguous, highest first");
                assert!(lo < h && (op < last_op || last_op == usize::MAX));
                // Every parameter in lo..h belongs to an op at or after `op`.
                for (i, o) in plan.ops.iter().enumerate() {
                    for p in o.params() {
                        if plan.params[p].offset >= lo && plan.params[p].offset < h {
                            assert!(i >= op, "op {i} writes into a bucket started after op {op}");
                        }
                    }
                }
                hi = lo;
                last_op = op;
            }
            assert_eq!(hi, 0);
        }
        assert!(Buckets::new(plan, 1, 1).ranges.len() > 10);
        assert_eq!(Buckets::new(plan, 1 << 30, 1 << 30).ranges.len(), 1);
    }
}
