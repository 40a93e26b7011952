//! Which code path a generic op takes: the custom CPU ops run for `f32` on
//! dfdx's [`Cpu`], everything else (CUDA, other element types, or the CPU
//! inside [`with_generic_ops`]) takes dfdx's generic ops.

use dfdx::prelude::Cpu;
use std::any::Any;

thread_local! {
    static GENERIC: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with the device-generic code paths on the CPU (this thread):
/// dfdx ops only, as on CUDA, instead of the custom CPU ops. A testing aid:
/// the CPU can then check the GPU's code path against its own.
pub fn with_generic_ops<T>(f: impl FnOnce() -> T) -> T {
    let before = GENERIC.replace(true);
    let out = f();
    GENERIC.set(before);
    out
}

/// Whether `D` is the CPU and the CPU-specific paths are on (see [`with_generic_ops`]).
pub fn is_cpu<D: 'static>() -> bool {
    std::any::TypeId::of::<D>() == std::any::TypeId::of::<Cpu>() && !GENERIC.get()
}

/// Whether `(E, D)` is `(f32, Cpu)`, where the custom CPU ops run.
pub fn is_cpu_f32<E: 'static, D: 'static>() -> bool {
    std::any::TypeId::of::<E>() == std::any::TypeId::of::<f32>() && is_cpu::<D>()
}

/// Moves `value` to type `To`, which must be its own type (checked at run
/// time): how the CPU ops reach the `f32`/[`Cpu`] types behind generic ones.
pub(crate) fn same<From: 'static, To: 'static>(value: From) -> To {
    let mut slot = Some(value);
    (&mut slot as &mut dyn Any)
        .downcast_mut::<Option<To>>()
        .and_then(Option::take)
        .expect("the custom CPU ops run only for f32 on the Cpu device")
}
