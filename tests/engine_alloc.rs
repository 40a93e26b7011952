//! Allocations in the engine's steady state, counted by a global allocator
//! (its own test binary: the count is process-wide).
//!
//! The engine allocates nothing after its first step: arena, parameters,
//! gradients, momentum and reduction scratch are planned once, and the
//! matrix product (`engine::cpu::sgemm`) packs into per-thread buffers made on
//! every pool thread when the engine is built. The test counts the
//! allocations of three steps after two warm-up steps (none), checks that
//! the live bytes do not grow, and prints the time spent in the allocator.
//!
//! History: until 2026-12-05 the products ran on the `gemm` crate (0.19),
//! which allocates its packing buffers inside every call: ResNet-20 (b16,
//! 16x16) made 102 allocations per step, ResNet-50 (b2, 64x64) 724, 0.1% of
//! the step's thread time. Made lazily, gemm's per-thread slab also
//! appeared mid-run on CI's 2-core machine whenever work stealing first
//! handed a product to the second thread (+2 MiB); per-thread buffers made
//! lazily would do the same, hence the engine makes them at start.

use dfdx::prelude::*;
use resnet_imagenet::engine::cpu::Cpu as CpuBackend;
use resnet_imagenet::engine::cpu::bf16gemm::Bf16Kernel;
use resnet_imagenet::engine::precision::Precision;
use resnet_imagenet::engine::{Engine, Target};
use resnet_imagenet::measure::parity::synthetic;
use resnet_imagenet::model::cifar::ResNet20;
use resnet_imagenet::model::lower::Lower;
use resnet_imagenet::model::resnet::ResNet50;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Instant;

struct Counting;
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);
static LIVE: AtomicIsize = AtomicIsize::new(0);
/// Nanoseconds spent inside the allocator, all threads together.
static NANOS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to the system allocator, counting.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let t = Instant::now();
        ALLOCATIONS.fetch_add(1, Relaxed);
        LIVE.fetch_add(l.size() as isize, Relaxed);
        let p = unsafe { System.alloc(l) };
        NANOS.fetch_add(t.elapsed().as_nanos() as u64, Relaxed);
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        let t = Instant::now();
        LIVE.fetch_sub(l.size() as isize, Relaxed);
        unsafe { System.dealloc(p, l) };
        NANOS.fetch_add(t.elapsed().as_nanos() as u64, Relaxed);
    }
}

#[global_allocator]
static A: Counting = Counting;

/// Two warm-up steps, then three counted: returns the allocations per step.
fn steady_state<M: Lower + TensorCollection<f32, Cpu>>(
    name: &str,
    model: &M,
    (batch, side, classes): (usize, usize, usize),
    precision: Precision,
) -> usize {
    let target = Target::Cpu { threads: 2 };
    let e = Engine::build(model, batch, (side, side), target, precision).unwrap();
    counted(&format!("{name} {precision:?}"), e, (batch, side, classes))
}

/// [`steady_state`] of an engine made.
fn counted(name: &str, mut e: Engine, (batch, side, classes): (usize, usize, usize)) -> usize {
    let name = &format!("{name} ({})", e.describe());
    let (x, labels) = synthetic(batch, side, classes, 1);
    let gemm_calls: usize = e
        .plan()
        .ops
        .iter()
        .map(|op| resnet_imagenet::engine::cpu::gemm_calls(op, 2))
        .sum();
    for _ in 0..2 {
        e.train_step(&x, &labels, 0.1).unwrap();
    }
    let (n0, live0, ns0) = (
        ALLOCATIONS.load(Relaxed),
        LIVE.load(Relaxed),
        NANOS.load(Relaxed),
    );
    let t = Instant::now();
    for _ in 0..3 {
        e.train_step(&x, &labels, 0.1).unwrap();
    }
    let step_ns = t.elapsed().as_nanos() as f64 / 3.0;
    let per_step = (ALLOCATIONS.load(Relaxed) - n0) / 3;
    let grown = LIVE.load(Relaxed) - live0;
    let alloc_ns = (NANOS.load(Relaxed) - ns0) as f64 / 3.0;
    // What the allocations cost, as a share of the step's thread time.
    println!(
        "{name}: {per_step} allocations per step, {gemm_calls} gemm calls; \
         live bytes grew by {grown}; {:.0} us in the allocator per {:.1} ms step \
         ({:.3}% of 2 threads' time)",
        alloc_ns / 1e3,
        step_ns / 1e6,
        100.0 * alloc_ns / (2.0 * step_ns)
    );
    assert_eq!(per_step, 0, "{name}: {per_step} allocations per step");
    assert!(grown <= 0, "{name}: live bytes grew by {grown}");
    per_step
}

// One test: the counters are process-wide.
#[test]
fn the_steady_state_allocates_nothing_and_holds_no_more_memory() {
    let dev = Cpu::seed_from_u64(0);
    // bf16 on this CPU's fastest kernel (on AVX512-BF16 the CIFAR net's
    // convolutions run on the direct VDPBF16PS kernels).
    for precision in [Precision::Fp32, Precision::Bf16] {
        let r20 = ResNet20::<10, f32, Cpu>::build(&dev);
        steady_state("resnet20 b16 16x16", &r20, (16, 16, 10), precision);
        let r50 = ResNet50::<10, f32, Cpu>::build(&dev);
        steady_state("resnet50 b2 64x64", &r50, (2, 64, 10), precision);
    }
    // The VDPBF16PS model (any CPU): its products and its direct kernels'.
    let r20 = ResNet20::<10, f32, Cpu>::build(&dev);
    let plan = Engine::lower(&r20, 8, (16, 16)).unwrap();
    let kernel = Some(Bf16Kernel::Avx512Bf16Model);
    let cpu = CpuBackend::with_kernel(plan, 2, Precision::Bf16, kernel).unwrap();
    let e = Engine::with_backend(&r20, Box::new(cpu)).unwrap();
    counted("resnet20 b8 16x16 Bf16 model", e, (8, 16, 10));
}
