//! An epoch in flight: jobs out to the workers, batches back in order.

use super::batch::{Batch, BatchMem};
use super::worker::{StageCounters, load_error, worker};
use super::{Loader, LoaderState, Shared, StageTimes};
use crate::error::{LoadError, LoadErrorKind};
use crossbeam::channel::{Receiver, Sender};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

impl Loader {
    pub(super) fn start(&self, epoch: u64, position: usize) -> Epoch {
        let s = &self.shared;
        let order = self.epoch_order(epoch);
        let b = s.cfg.batch_size;
        let n_batches = self.batches_per_epoch();
        let (job_tx, job_rx) = crossbeam::channel::unbounded::<Job>();
        let (done_tx, done_rx) = crossbeam::channel::unbounded::<Done>();
        let (pool_tx, pool_rx) = (s.pool_tx.clone(), s.pool_rx.clone());
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(StageCounters::default());
        let workers = (0..s.cfg.workers)
            .map(|_| {
                let (shared, job_rx, done_tx) = (Arc::clone(s), job_rx.clone(), done_tx.clone());
                let (stop, counters) = (Arc::clone(&stop), Arc::clone(&counters));
                std::thread::Builder::new()
                    .name("rnim-loader".into())
                    .spawn(move || worker(shared, epoch, job_rx, done_tx, stop, counters))
                    .expect("spawn loader worker")
            })
            .collect();
        Epoch {
            shared: Arc::clone(s),
            epoch,
            order,
            batch_size: b,
            n_batches,
            position,
            dispatched: position,
            read_ahead: position,
            in_flight: HashMap::new(),
            ready: BTreeMap::new(),
            job_tx: Some(job_tx),
            done_rx,
            pool_tx,
            pool_rx,
            stop,
            counters,
            workers,
            finished: false,
            wait: 0.0,
        }
    }
}

pub(super) struct Job {
    pub(super) mem: Arc<BatchMem>,
    pub(super) batch: usize,
    pub(super) slot: usize,
    pub(super) index: u32,
}

pub(super) enum Done {
    Batch(usize),
    Failed(usize, LoadError),
}

/// One epoch's batches, in order. Dropping it stops its workers.
pub struct Epoch {
    shared: Arc<Shared>,
    epoch: u64,
    order: Vec<u32>,
    batch_size: usize,
    n_batches: usize,
    position: usize,
    dispatched: usize,
    /// Batches before this one have had their records' reads started.
    read_ahead: usize,
    in_flight: HashMap<usize, Arc<BatchMem>>,
    /// Batches finished (Ok) or failed (Err), not yet yielded.
    ready: BTreeMap<usize, Result<(), LoadError>>,
    job_tx: Option<Sender<Job>>,
    done_rx: Receiver<Done>,
    pool_tx: Sender<Arc<BatchMem>>,
    pool_rx: Receiver<Arc<BatchMem>>,
    stop: Arc<AtomicBool>,
    counters: Arc<StageCounters>,
    workers: Vec<JoinHandle<()>>,
    finished: bool,
    wait: f64,
}

impl Epoch {
    /// Where this epoch is: save it to resume exactly here.
    pub fn state(&self) -> LoaderState {
        LoaderState {
            seed: self.shared.cfg.seed,
            epoch: self.epoch,
            position: self.position,
        }
    }

    /// Batches in the epoch.
    pub fn len(&self) -> usize {
        self.n_batches
    }

    /// Whether the epoch has no batches.
    pub fn is_empty(&self) -> bool {
        self.n_batches == 0
    }

    /// Per-stage times so far (zeros unless profiling is on; `wait` always).
    pub fn stage_times(&self) -> StageTimes {
        StageTimes {
            wait: self.wait,
            ..self.counters.snapshot()
        }
    }

    fn records_in(&self, batch: usize) -> &[u32] {
        let start = batch * self.batch_size;
        let end = (start + self.batch_size).min(self.order.len());
        &self.order[start..end]
    }

    /// Hands out jobs for batches ahead of the consumer, up to `prefetch`,
    /// and starts the disk reads of the `prefetch` batches after those
    /// (`madvise(MADV_WILLNEED)` on each record), so that on shards not in
    /// the page cache many reads are in flight at once instead of one per
    /// worker, each waited for. Bounded: at most `2 * prefetch` batches'
    /// records are asked for ahead of the consumer.
    fn dispatch(&mut self) {
        let prefetch = self.shared.cfg.prefetch;
        let ahead = if self.shared.cfg.read_ahead { 2 } else { 0 };
        let horizon = (self.position + ahead * prefetch).min(self.n_batches);
        while self.read_ahead < horizon {
            for &index in self.records_in(self.read_ahead) {
                self.shared.dataset.prefetch_record(index as usize);
            }
            self.read_ahead += 1;
        }
        while self.dispatched < self.n_batches && self.dispatched < self.position + prefetch {
            let mem = self.pool_rx.try_recv().unwrap_or_else(|_| {
                self.shared.buffers.fetch_add(1, Ordering::Relaxed);
                let views = self.shared.cfg.augment.views();
                let size = self.shared.pipeline.normalizer().size();
                Arc::new(BatchMem::new(
                    self.batch_size,
                    views,
                    3 * size * size,
                    self.shared.cfg.output,
                ))
            });
            let batch = self.dispatched;
            let records = self.records_in(batch).to_vec();
            debug_assert!(records.len() <= mem.capacity());
            mem.remaining.store(records.len(), Ordering::Release);
            self.in_flight.insert(batch, Arc::clone(&mem));
            let tx = self.job_tx.as_ref().expect("open while running");
            for (slot, index) in records.into_iter().enumerate() {
                let job = Job {
                    mem: Arc::clone(&mem),
                    batch,
                    slot,
                    index,
                };
                if tx.send(job).is_err() {
                    return; // workers gone: surfaces as a failure below
                }
            }
            self.dispatched += 1;
        }
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.job_tx = None;
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// What [`Epoch::next_within`] found.
pub enum Next {
    /// The next batch, or the error that ended the epoch.
    Ready(Result<Batch, LoadError>),
    /// The epoch is over.
    End,
    /// Not ready within the time given (ask again).
    Pending,
}

impl Epoch {
    /// The next batch if it is ready within `timeout`: lets a caller that
    /// must stay responsive (a Python loop that honours Ctrl-C, a progress
    /// display) wait in slices.
    pub fn next_within(&mut self, timeout: Duration) -> Next {
        self.next_until(Some(Instant::now() + timeout))
    }

    fn next_until(&mut self, deadline: Option<Instant>) -> Next {
        if self.finished || self.position >= self.n_batches {
            if !self.finished {
                self.finished = true;
                self.shutdown();
            }
            return Next::End;
        }
        self.dispatch();
        let t0 = Instant::now();
        while !self.ready.contains_key(&self.position) {
            let done = match deadline {
                None => self.done_rx.recv().map_err(|_| true),
                Some(d) => self
                    .done_rx
                    .recv_deadline(d)
                    .map_err(|e| e.is_disconnected()),
            };
            match done {
                Ok(Done::Batch(b)) => {
                    self.ready.insert(b, Ok(()));
                }
                Ok(Done::Failed(b, err)) => {
                    // Reported when the consumer reaches that batch; the first error wins.
                    self.ready.entry(b).or_insert(Err(err));
                }
                Err(false) => {
                    self.wait += t0.elapsed().as_secs_f64();
                    return Next::Pending;
                }
                Err(true) => {
                    // Every worker has exited without reporting this batch
                    // (a panic outside the per-sample guard): fail, don't hang.
                    self.finished = true;
                    self.shutdown();
                    let first =
                        self.records_in(self.position).first().copied().unwrap_or(0) as usize;
                    let kind = LoadErrorKind::Panic("all loader workers exited".into());
                    return Next::Ready(Err(load_error(&self.shared, first, kind)));
                }
            }
        }
        self.wait += t0.elapsed().as_secs_f64();
        if let Some(Err(err)) = self.ready.remove(&self.position) {
            self.finished = true;
            self.shutdown();
            return Next::Ready(Err(err));
        }
        let mem = self.in_flight.remove(&self.position).expect("dispatched");
        let batch = Batch {
            len: self.records_in(self.position).len(),
            mem: Some(mem),
            pool: self.pool_tx.clone(),
            index: self.position,
            size: self.shared.pipeline.normalizer().size(),
            kind: self.shared.cfg.output,
        };
        self.position += 1;
        self.dispatch(); // keep the workers busy while the consumer computes
        Next::Ready(Ok(batch))
    }
}

impl Iterator for Epoch {
    type Item = Result<Batch, LoadError>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.next_until(None) {
            Next::Ready(r) => Some(r),
            Next::End => None,
            Next::Pending => unreachable!("no deadline"),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.n_batches - self.position.min(self.n_batches);
        (left, Some(left))
    }
}

impl Drop for Epoch {
    fn drop(&mut self) {
        self.shutdown();
    }
}
