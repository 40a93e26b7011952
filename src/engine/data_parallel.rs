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
//! The sums land in a second gradient array, so the one backward writes is
//! never touched by MPI while an op still runs; SGD then reads the sums
//! scaled by `1 / world`.

use super::{Aligned, Engine, EngineError, check_batch, cpu};
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
    /// This rank's loss (mean over its share).
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
        self.buckets = Buckets::new(&self.plan, first, rest);
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
        check_batch(&self.plan, images, Some(labels))?;
        self.run_forward(images, true);
        let loss = self.loss_and_dlogits(labels);
        let mut bad = [if loss.is_finite() { 0.0 } else { 1.0 }];
        comm.sum_f64(&mut bad);
        if bad[0] != 0.0 {
            return Ok(StepStats {
                loss,
                all_finite: false,
                allreduce_s: 0.0,
                wait_s: 0.0,
            });
        }
        if self.reduced.len() != self.grads.len() {
            self.reduced = Aligned::zeros(self.grads.len());
        }
        let first_start = self.backward_overlapped(comm);
        let wait_s = comm.wait_all();
        let allreduce_s = first_start.map_or(0.0, |t| t.elapsed().as_secs_f64());
        let s = self.sgd;
        let first = !self.has_velocity;
        let scale = 1.0 / world as f32;
        let pool = self.pool.clone();
        pool.install(|| {
            cpu::sgd(
                &mut self.params,
                &self.reduced,
                &mut self.velocity,
                (lr, s.momentum, s.weight_decay, scale),
                first,
            )
        });
        self.has_velocity = true;
        Ok(StepStats {
            loss,
            all_finite: true,
            allreduce_s,
            wait_s,
        })
    }

    /// Backward, op by op on the engine's pool, starting each bucket's sum
    /// as soon as its gradients are final. Returns when the first started.
    fn backward_overlapped(&mut self, comm: &mut dyn Communicator) -> Option<std::time::Instant> {
        let pool = self.pool.clone();
        let n = self.plan.ops.len();
        let send = self.grads.as_ptr();
        let recv = self.reduced.as_mut_ptr();
        let mut next = 0;
        let mut first_start = None;
        for i in (0..n).rev() {
            let t0 = std::time::Instant::now();
            pool.install(|| {
                let mem = cpu::Mem::new(&mut self.arena, &self.plan);
                let mut t = cpu::Tensors {
                    params: &self.params,
                    grads: &mut self.grads,
                    states: &mut self.states,
                    partial: &mut self.partial,
                    threads: self.threads,
                };
                cpu::backward(&self.plan.ops[i], &self.plan, &mem, &mut t);
            });
            if let Some(p) = &mut self.profile {
                *p.entry((self.plan.ops[i].kind(), "backward")).or_default() +=
                    t0.elapsed().as_secs_f64();
            }
            while let Some(&(op, lo, hi)) = self.buckets.ranges.get(next)
                && op == i
            {
                first_start.get_or_insert_with(std::time::Instant::now);
                // SAFETY: backward writes each parameter's gradient in its
                // own op only, and ops later in backward own lower offsets
                // (Buckets::new checks), so nothing touches lo..hi of
                // `grads` again this step, nor `reduced` before wait_all.
                unsafe { comm.start_sum(send.add(lo), recv.add(lo), hi - lo) };
                next += 1;
            }
            comm.progress();
        }
        first_start
    }

    /// The gradients summed over ranks and divided by their number, by
    /// dfdx path and layout, after [`Engine::train_step_on`] with several
    /// ranks (with one, [`Engine::gradients`]).
    pub fn averaged_gradients(&self, world: usize) -> Vec<(String, Vec<f32>)> {
        if world == 1 {
            return self.gradients();
        }
        let scale = 1.0 / world as f32;
        let scaled: Vec<f32> = self.reduced.iter().map(|g| g * scale).collect();
        self.per_param(&scaled)
    }

    /// Averages the running statistics of BatchNorm over the ranks (in
    /// place, the same bits on every rank); nothing to do when no training
    /// step has changed them since the last call.
    pub fn average_statistics(&mut self, comm: &dyn Communicator) {
        let world = comm.world_size();
        if world == 1 || self.statistics_averaged {
            return;
        }
        self.statistics_averaged = true;
        comm.sum_f32(&mut self.states);
        let scale = 1.0 / world as f32;
        for v in &mut self.states {
            *v *= scale;
        }
    }

    /// CRC-32 of the parameters and the running statistics, as stored:
    /// equal on every rank of a data-parallel run (after
    /// [`Engine::average_statistics`]).
    pub fn checksum(&self) -> u32 {
        let mut h = crc32fast::Hasher::new();
        for v in self.params.iter().chain(self.states.iter()) {
            h.update(&v.to_le_bytes());
        }
        h.finalize()
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
