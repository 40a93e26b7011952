//! ResNet building blocks on dfdx 0.13, stable Rust only.
//!
//! dfdx's own `Conv2D` and pooling need its `nightly` feature, so these
//! layers are built from its public, stable tensor ops (`gather`, `matmul`,
//! `max`, `mean`), and autodiff goes through dfdx's tape on any device.
//! Activations are NHWC: `(B, H, W, Const<C>)`, spatial sizes `usize`.
//!
//! Done: [`Conv2d`] (checked against an f64 reference in value and both
//! gradients), [`max_pool`], [`global_avg_pool`]. Not yet: BatchNorm
//! wiring, the residual blocks and the ResNet-18..152 / CIFAR models (see
//! the README's status table).

pub mod cifar;
pub mod conv;
pub mod pool;
pub mod resnet;
pub mod state;
pub mod summary;
pub mod zoo;

pub use conv::{Conv2d, conv_out};
pub use pool::{global_avg_pool, max_pool};
