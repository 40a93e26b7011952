//! The devices a run trains on.

#[cfg(feature = "dfdx-cuda")]
use super::TrainError;
#[cfg(feature = "dfdx-cuda")]
use dfdx::prelude::Cuda;
use dfdx::prelude::*;

/// The CPU device for a run: seeded, with dfdx's allocation cache on
/// (without it every step page-faults in fresh buffers: ResNet-20, batch 128,
/// 3.3 s/step without, 1.7 s with, on the 2-core machine of BENCHMARKS.md).
pub fn cpu_device(seed: u64) -> Cpu {
    let dev = Cpu::seed_from_u64(seed);
    dev.enable_cache();
    dev
}

/// The first CUDA device for a run, seeded, with the allocation cache on.
///
/// Asks the driver first: cudarc 0.9 (under dfdx) unwraps the driver's
/// answer, so a machine without a GPU would otherwise panic, not fail.
#[cfg(feature = "dfdx-cuda")]
pub fn cuda_device(seed: u64) -> Result<Cuda, TrainError> {
    use cudarc09::driver::result;
    let no_gpu = TrainError::NoGpu;
    result::init().map_err(|e| no_gpu(format!("no usable CUDA driver ({e:?})")))?;
    match result::device::get_count() {
        Ok(n) if n > 0 => {}
        Ok(_) => return Err(no_gpu("the driver sees no GPU".into())),
        Err(e) => return Err(no_gpu(format!("cannot count GPUs ({e:?})"))),
    }
    let dev = Cuda::try_seed_from_u64(seed).map_err(|e| no_gpu(format!("device 0: {e:?}")))?;
    dev.enable_cache();
    Ok(dev)
}

/// Device memory in use on the current CUDA context (total - free), bytes.
#[cfg(feature = "dfdx-cuda")]
pub fn cuda_memory_used() -> Option<u64> {
    cudarc09::driver::result::mem_get_info()
        .ok()
        .map(|(free, total)| (total - free) as u64)
}
