//! Collectives for data-parallel training, from an existing distributed
//! engine: a single process ([`Local`], every collective a no-op) or MPI
//! ([`mpi::Mpi`], feature `mpi`: rsmpi over the system's MPI, launched by
//! `mpirun -np N ...` or SLURM's `srun`).
//!
//! The trainer sees only [`Communicator`]: blocking sums of small vectors
//! (the loss, the accuracy counts, BatchNorm's running statistics), an
//! all-gather of bytes (the start-up agreement check, the parameter
//! checksums), and non-blocking sums of gradient buckets that the engine
//! starts while backward is still running ([`Communicator::start_sum`],
//! [`Communicator::progress`], [`Communicator::wait_all`]): DDP's and
//! Horovod's overlap. Every rank calls the collectives in the same order;
//! the engine fixes that order in its plan.

#[cfg(feature = "mpi")]
pub mod mpi;

/// Why the collectives could not start or disagree.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DistError {
    /// Started by a launcher for several ranks, but built without MPI.
    #[error(
        "started as one of {world} ranks ({var} is set) but this binary was built without the `mpi` feature: rebuild with `cargo build --release --features mpi`"
    )]
    NoMpi {
        /// The launcher's world size.
        world: usize,
        /// The variable that told it.
        var: &'static str,
    },
    /// MPI could not be initialised.
    #[error("MPI: {0}")]
    Init(String),
    /// The ranks were started differently.
    #[error("rank {rank} differs from rank 0: {what} is {theirs} on rank {rank}, {ours} on rank 0")]
    Mismatch {
        /// The rank that differs.
        rank: usize,
        /// What differs.
        what: String,
        /// Rank 0's value.
        ours: String,
        /// The other rank's value.
        theirs: String,
    },
}

/// A group of ranks that train one model together.
///
/// Gradient buckets are reduced with [`Communicator::start_sum`] into a
/// separate buffer, so backward may go on writing the gradients of other
/// parameters while a bucket is in flight.
pub trait Communicator {
    /// This process's rank, `0..world_size`.
    fn rank(&self) -> usize;
    /// Number of ranks.
    fn world_size(&self) -> usize;
    /// Element-wise sum over ranks, in place; every rank gets the same bits.
    fn sum_f64(&self, values: &mut [f64]);
    /// Element-wise sum over ranks, in place; every rank gets the same bits.
    fn sum_f32(&self, values: &mut [f32]);
    /// Every rank's `bytes`, in rank order, on every rank.
    fn all_gather(&self, bytes: &[u8]) -> Vec<Vec<u8>>;
    /// Starts summing `len` floats at `send` over ranks into `len` floats at
    /// `recv` without waiting; returns at once.
    ///
    /// # Safety
    /// Neither range may be read or written by anyone else, nor freed,
    /// until [`Communicator::wait_all`] has returned.
    unsafe fn start_sum(&mut self, send: *const f32, recv: *mut f32, len: usize);
    /// Lets the sums started so far advance (MPI moves a non-blocking
    /// collective on only while it is called); returns at once.
    fn progress(&mut self);
    /// Waits for every sum started; returns the seconds spent waiting.
    fn wait_all(&mut self) -> f64;
    /// Blocks until every rank has come here.
    fn barrier(&self);
    /// Ends every rank of the job with `code` (after a panic or an error on
    /// this rank), so that none is left waiting in a collective.
    fn abort(&self, code: i32) -> !;
}

/// One process: every collective is the identity.
#[derive(Debug, Default, Clone, Copy)]
pub struct Local;

impl Communicator for Local {
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        1
    }
    fn sum_f64(&self, _: &mut [f64]) {}
    fn sum_f32(&self, _: &mut [f32]) {}
    fn all_gather(&self, bytes: &[u8]) -> Vec<Vec<u8>> {
        vec![bytes.to_vec()]
    }
    unsafe fn start_sum(&mut self, send: *const f32, recv: *mut f32, len: usize) {
        if !std::ptr::eq(send, recv) {
            // SAFETY: the caller hands two valid, unshared ranges of `len`.
            unsafe { std::ptr::copy_nonoverlapping(send, recv, len) };
        }
    }
    fn progress(&mut self) {}
    fn wait_all(&mut self) -> f64 {
        0.0
    }
    fn barrier(&self) {}
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
}

/// The world size a launcher announced in the environment (OpenMPI's
/// `mpirun`, MPICH/Hydra and SLURM's PMI, PMIx), if any.
pub fn launcher_world_size() -> Option<(usize, &'static str)> {
    [
        "OMPI_COMM_WORLD_SIZE",
        "PMI_SIZE",
        "PMIX_SIZE",
        "MPI_LOCALNRANKS",
    ]
    .into_iter()
    .find_map(|var| {
        let n = std::env::var(var).ok()?.parse::<usize>().ok()?;
        Some((n, var))
    })
}

/// This rank's index among the ranks on its machine, as the launcher says
/// (0 if none does): the GPU a rank takes.
pub fn local_rank() -> usize {
    [
        "OMPI_COMM_WORLD_LOCAL_RANK",
        "MPI_LOCALRANKID",
        "SLURM_LOCALID",
    ]
    .into_iter()
    .find_map(|v| std::env::var(v).ok()?.parse::<usize>().ok())
    .unwrap_or(0)
}

/// Ranks the launcher started on this machine (1 when not launched).
pub fn local_ranks() -> usize {
    [
        "OMPI_COMM_WORLD_LOCAL_SIZE",
        "MPI_LOCALNRANKS",
        "SLURM_NTASKS_PER_NODE",
    ]
    .into_iter()
    .find_map(|v| std::env::var(v).ok()?.parse::<usize>().ok())
    .unwrap_or(1)
    .max(1)
}

/// Compute threads for each rank: this process's CPUs (its affinity, which
/// `mpirun` may have bound to cores) shared among the ranks on the machine
/// when the launcher left them unbound; `RESNET_THREADS` overrides.
pub fn threads_per_rank() -> usize {
    if let Some(n) = std::env::var("RESNET_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        return n.max(1);
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let machine = num_cpus_online();
    if cpus < machine {
        // Bound by the launcher: the CPUs given are this rank's.
        cpus
    } else {
        (cpus / local_ranks()).max(1)
    }
}

fn num_cpus_online() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    if n > 0 { n as usize } else { 1 }
}

/// The communicator this process was started for: MPI when a launcher
/// started it and the binary has the `mpi` feature, else
/// [`Local`]. A launcher's world of several ranks without the feature is
/// an error: each rank would train alone and write the same files.
pub fn from_environment() -> Result<Box<dyn Communicator>, DistError> {
    let launched = launcher_world_size();
    #[cfg(feature = "mpi")]
    {
        if launched.is_some() {
            return Ok(Box::new(mpi::Mpi::init()?));
        }
    }
    #[cfg(not(feature = "mpi"))]
    {
        if let Some((world, var)) = launched
            && world > 1
        {
            return Err(DistError::NoMpi { world, var });
        }
    }
    Ok(Box::new(Local))
}

/// Checks that every rank was started alike: `fields` are `(what, value)`
/// pairs (model, batch, data, code version, ...) in the same order on
/// every rank. All ranks exchange them, so every rank reports the same
/// first difference and none waits on another.
pub fn check_agreement(
    comm: &dyn Communicator,
    fields: &[(&str, String)],
) -> Result<(), DistError> {
    let mine = serde_json::to_vec(fields).expect("strings serialise");
    let all = comm.all_gather(&mine);
    let decode = |b: &[u8]| serde_json::from_slice::<Vec<(String, String)>>(b).unwrap_or_default();
    let ours = decode(&all[0]);
    for (rank, bytes) in all.iter().enumerate().skip(1) {
        let theirs = decode(bytes);
        for (i, (what, value)) in ours.iter().enumerate() {
            let other = theirs.get(i).map_or("(missing)", |(_, v)| v.as_str());
            if other != value {
                return Err(DistError::Mismatch {
                    rank,
                    what: what.clone(),
                    ours: value.clone(),
                    theirs: other.to_string(),
                });
            }
        }
        if theirs.len() != ours.len() {
            return Err(DistError::Mismatch {
                rank,
                what: "the start-up check's fields".into(),
                ours: ours.len().to_string(),
                theirs: theirs.len().to_string(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_is_the_identity() {
        let mut c = Local;
        let mut v = [1.5f64, -2.0];
        c.sum_f64(&mut v);
        assert_eq!(v, [1.5, -2.0]);
        let src = [1.0f32, 2.0, 3.0];
        let mut dst = [0.0f32; 3];
        unsafe { c.start_sum(src.as_ptr(), dst.as_mut_ptr(), 3) };
        assert_eq!(c.wait_all(), 0.0);
        assert_eq!(dst, src);
        assert_eq!(c.all_gather(b"x"), vec![b"x".to_vec()]);
        check_agreement(&c, &[("model", "resnet20".into())]).unwrap();
    }
}
