//! NCCL between the ranks of a data-parallel run (features `cuda` and
//! `mpi`): the gradients' sums stay on the GPUs.
//!
//! NCCL's 128-byte unique id is made on rank 0 and handed to the others
//! over the host communicator (MPI); the ranks first agree that each can
//! load libnccl, since `ncclCommInitRank` is collective (a rank that never
//! calls it would leave the others waiting). Sums run on a stream of their
//! own, each bucket's after an event recorded when backward has produced
//! it, so they overlap the rest of backward; the compute stream waits for
//! the last one before SGD.

use super::CudaError;
use crate::dist::Communicator;
use cudarc::driver::sys::CUdeviceptr;
use cudarc::driver::{CudaContext, CudaStream};
use cudarc::nccl::{result, sys};
use std::sync::Arc;

/// This rank's NCCL communicator and the stream its sums run on.
pub(super) struct Nccl {
    comm: sys::ncclComm_t,
    pub(super) stream: Arc<CudaStream>,
}

// SAFETY: the communicator is used from the thread that owns the backend
// only (the backend is moved between threads, never shared).
unsafe impl Send for Nccl {}

impl Drop for Nccl {
    fn drop(&mut self) {
        // SAFETY: ours, created in `join`, destroyed once; the stream is
        // synchronised first so no sum is in flight.
        unsafe {
            let _ = self.stream.synchronize();
            let _ = result::comm_destroy(self.comm);
        }
    }
}

impl Nccl {
    /// Joins the ranks of `comm` on `ctx`'s GPU; `Ok(None)` where some
    /// rank cannot load libnccl (every rank then sums through the host).
    pub(super) fn join(
        ctx: &Arc<CudaContext>,
        comm: &dyn Communicator,
    ) -> Result<Option<Self>, CudaError> {
        // SAFETY: only tries to load the library.
        let present = unsafe { sys::is_culib_present() };
        let mut missing = [if present { 0.0 } else { 1.0 }];
        comm.sum_f64(&mut missing);
        if missing[0] != 0.0 {
            log::warn!(
                "{} rank(s) cannot load libnccl: gradients are summed through host memory",
                missing[0]
            );
            return Ok(None);
        }
        let mine = if comm.rank() == 0 {
            let id = result::get_uniqueid().map_err(|e| CudaError::Nccl(format!("{e:?}")))?;
            id.internal.iter().map(|&c| c as u8).collect()
        } else {
            vec![0u8; 128]
        };
        let all = comm.all_gather(&mine);
        let mut internal = [0 as std::ffi::c_char; 128];
        for (d, &s) in internal.iter_mut().zip(&all[0]) {
            *d = s as std::ffi::c_char;
        }
        ctx.bind_to_thread()?;
        let stream = ctx.new_stream()?;
        let mut raw = std::mem::MaybeUninit::uninit();
        // SAFETY: `raw` receives the communicator; every rank calls this
        // with the same id and world size (collective).
        let comm = unsafe {
            result::comm_init_rank(
                raw.as_mut_ptr(),
                comm.world_size() as i32,
                sys::ncclUniqueId { internal },
                comm.rank() as i32,
            )
            .map_err(|e| CudaError::Nccl(format!("ncclCommInitRank: {e:?}")))?;
            raw.assume_init()
        };
        Ok(Some(Nccl { comm, stream }))
    }

    /// Queues the sum over the ranks of `len` floats at `send` into `recv`
    /// on the communicator's stream.
    ///
    /// # Safety
    /// Both are device allocations of at least `len` floats that nothing
    /// else writes until the stream has passed this sum.
    pub(super) unsafe fn start_sum(
        &self,
        send: CUdeviceptr,
        recv: CUdeviceptr,
        len: usize,
    ) -> Result<(), CudaError> {
        // SAFETY: as the caller promises.
        unsafe {
            result::all_reduce(
                send as *const std::ffi::c_void,
                recv as *mut std::ffi::c_void,
                len,
                sys::ncclDataType_t::ncclFloat32,
                sys::ncclRedOp_t::ncclSum,
                self.comm,
                self.stream.cu_stream() as _,
            )
        }
        .map_err(|e| CudaError::Nccl(format!("ncclAllReduce: {e:?}")))?;
        Ok(())
    }
}
