//! [`Communicator`] over MPI (rsmpi): the job's `MPI_COMM_WORLD`.
//!
//! Blocking collectives go through rsmpi's safe API. The gradient buckets
//! use `MPI_Iallreduce` through rsmpi's raw bindings, since a bucket's
//! request outlives any borrow the safe API could express (backward keeps
//! writing other gradients while it is in flight); the engine keeps both
//! ranges untouched until [`Communicator::wait_all`].
//!
//! MPI is initialised with `MPI_THREAD_SERIALIZED`: only one thread calls
//! it at a time (the engine's overlapped backward calls it between ops,
//! from the thread that runs the step, never from its pool). Errors in MPI are fatal to the job
//! (`MPI_ERRORS_ARE_FATAL`, MPI's default), so no rank waits for a dead one.

use super::{Communicator, DistError};
use mpi::collective::{CommunicatorCollectives, SystemOperation};
use mpi::datatype::PartitionMut;
use mpi::environment::Universe;
use mpi::ffi;
use mpi::raw::AsRaw;
use mpi::topology::{Communicator as _, SimpleCommunicator};
use mpi::{Count, Threading};
use std::os::raw::c_int;

/// `MPI_COMM_WORLD`, and the gradient sums in flight.
pub struct Mpi {
    world: SimpleCommunicator,
    pending: Vec<ffi::MPI_Request>,
    // Last: MPI_Finalize runs when this is dropped, after the rest.
    _universe: Universe,
}

impl std::fmt::Debug for Mpi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mpi")
            .field("rank", &self.rank())
            .field("world_size", &self.world_size())
            .finish()
    }
}

impl Mpi {
    /// Initialises MPI (once per process).
    pub fn init() -> Result<Self, DistError> {
        let (universe, level) = mpi::initialize_with_threading(Threading::Serialized)
            .ok_or_else(|| DistError::Init("MPI was already initialised".into()))?;
        if level < Threading::Serialized {
            return Err(DistError::Init(format!(
                "the MPI library gives thread level {level:?}; the engine needs Serialized"
            )));
        }
        Ok(Mpi {
            world: universe.world(),
            pending: Vec::new(),
            _universe: universe,
        })
    }
}

impl Mpi {
    /// Blocking element-wise sum over the ranks, in place.
    fn sum<T: mpi::datatype::Equivalence + Clone>(&self, values: &mut [T]) {
        let send = values.to_vec();
        self.world
            .all_reduce_into(&send[..], values, SystemOperation::sum());
    }
}

impl Communicator for Mpi {
    fn rank(&self) -> usize {
        self.world.rank() as usize
    }

    fn world_size(&self) -> usize {
        self.world.size() as usize
    }

    fn sum_f64(&self, values: &mut [f64]) {
        self.sum(values)
    }

    fn sum_f32(&self, values: &mut [f32]) {
        self.sum(values)
    }

    fn all_gather(&self, bytes: &[u8]) -> Vec<Vec<u8>> {
        let n = self.world_size();
        let mut lens = vec![0 as Count; n];
        self.world
            .all_gather_into(&(bytes.len() as Count), &mut lens[..]);
        let displs: Vec<Count> = lens
            .iter()
            .scan(0, |at, &l| {
                let d = *at;
                *at += l;
                Some(d)
            })
            .collect();
        let total: usize = lens.iter().map(|&l| l as usize).sum();
        let mut buf = vec![0u8; total];
        {
            let mut part = PartitionMut::new(&mut buf[..], &lens[..], &displs[..]);
            self.world.all_gather_varcount_into(bytes, &mut part);
        }
        lens.iter()
            .zip(&displs)
            .map(|(&l, &d)| buf[d as usize..(d + l) as usize].to_vec())
            .collect()
    }

    unsafe fn start_sum(&mut self, send: *const f32, recv: *mut f32, len: usize) {
        let count = c_int::try_from(len).expect("a bucket holds fewer than 2^31 floats");
        // SAFETY: MPI_REQUEST_NULL is a plain value; the buffers are valid
        // and untouched until wait_all (the caller's contract), and the
        // request is completed by progress/wait_all.
        unsafe {
            let mut req = ffi::RSMPI_REQUEST_NULL;
            ffi::MPI_Iallreduce(
                send.cast(),
                recv.cast(),
                count,
                ffi::RSMPI_FLOAT,
                ffi::RSMPI_SUM,
                self.world.as_raw(),
                &mut req,
            );
            self.pending.push(req);
        }
    }

    fn progress(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let mut flag: c_int = 0;
        // SAFETY: the requests are live (or already MPI_REQUEST_NULL).
        unsafe {
            ffi::MPI_Testall(
                self.pending.len() as c_int,
                self.pending.as_mut_ptr(),
                &mut flag,
                ffi::RSMPI_STATUSES_IGNORE,
            );
        }
    }

    fn wait_all(&mut self) -> f64 {
        if self.pending.is_empty() {
            return 0.0;
        }
        let t0 = std::time::Instant::now();
        // SAFETY: as in progress.
        unsafe {
            ffi::MPI_Waitall(
                self.pending.len() as c_int,
                self.pending.as_mut_ptr(),
                ffi::RSMPI_STATUSES_IGNORE,
            );
        }
        self.pending.clear();
        t0.elapsed().as_secs_f64()
    }

    fn barrier(&self) {
        self.world.barrier();
    }

    fn abort(&self, code: i32) -> ! {
        self.world.abort(code)
    }
}
