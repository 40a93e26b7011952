//! Allocations in the engine's steady state, counted by a global allocator
//! (its own test binary: the count is process-wide).
//!
//! The engine itself allocates nothing after its first step (arena,
//! parameters, gradients, momentum and reduction scratch are planned once).
//! What remains is the `gemm` crate (0.19): it allocates its packing
//! buffers inside every call. So the test bounds the steady-state count by
//! the step's gemm calls, and checks that the live bytes do not grow.
//! (ResNet-20 here, 2026-12-05: 934 allocations per step with the direct
//! kernels off, `RESNET_DIRECT_CONV=0`, 102 with them on: what is left is
//! the stride-2 convs' input gradient through columns and the classifier;
//! `cpu::gemm_calls` still counts the im2col path's calls, an upper bound.)

use dfdx::prelude::*;
use resnet_imagenet::engine::Engine;
use resnet_imagenet::measure::parity::synthetic;
use resnet_imagenet::model::cifar::ResNet20;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering::Relaxed};

struct Counting;
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);
static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator, counting.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Relaxed);
        LIVE.fetch_add(l.size() as isize, Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Relaxed);
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static A: Counting = Counting;

#[test]
fn steady_state_allocates_only_inside_gemm_and_holds_no_more_memory() {
    let model = ResNet20::<10, f32, Cpu>::build(&Cpu::seed_from_u64(0));
    let mut e = Engine::new(&model, 16, (16, 16), 2).unwrap();
    let (x, labels) = synthetic(16, 16, 10, 1);
    let gemm_calls: usize = e
        .plan()
        .ops
        .iter()
        .map(resnet_imagenet::engine::cpu::gemm_calls)
        .sum();
    for _ in 0..2 {
        e.train_step(&x, &labels, 0.1).unwrap();
    }
    let (n0, live0) = (ALLOCATIONS.load(Relaxed), LIVE.load(Relaxed));
    for _ in 0..3 {
        e.train_step(&x, &labels, 0.1).unwrap();
    }
    let per_step = (ALLOCATIONS.load(Relaxed) - n0) / 3;
    let grown = LIVE.load(Relaxed) - live0;
    println!(
        "{per_step} allocations per step, {gemm_calls} gemm calls; live bytes grew by {grown}"
    );
    assert!(
        per_step <= 3 * gemm_calls,
        "{per_step} allocations per step for {gemm_calls} gemm calls"
    );
    assert!(grown <= 0, "live bytes grew by {grown}");
}
