//! ResNet building blocks on dfdx 0.13, stable Rust only.
//!
//! dfdx's own `Conv2D` and pooling need its `nightly` feature, so these
//! layers are built from its public, stable tensor ops (`gather`, `matmul`,
//! `max`, `mean`), and autodiff goes through dfdx's tape on any device.
//! Activations are NHWC: `(B, H, W, Const<C>)`, spatial sizes `usize` or
//! `Const` ([`shape`]: a size mismatch between `Const` layers is a compile error).
//!
//! - [`conv`], [`pool`], [`batchnorm`]: the layers, checked against f64 references in value and gradients.
//! - [`dispatch`]: which ops take the custom CPU path and which dfdx's generic one.
//! - [`blocks`]: convolution + BatchNorm, every residual and plain block (shortcut options A/B/C), stages.
//! - [`resnet`]: the ImageNet ResNets of Table 1 (v1, v1.5, options A/B/C, plain).
//! - [`cifar`]: the paper's CIFAR ResNets and plain nets (option A).
//! - [`lower`]: each block lowers itself into the engine's plan ([`crate::engine`]).
//! - [`state`]: named tensors, torchvision names, safetensors in and out.
//! - [`summary`]: per-layer output shapes, parameters and multiply-adds.
//! - [`zoo`]: every model by name behind the [`zoo::Network`] trait the trainer uses.

pub mod batchnorm;
pub mod blocks;
pub mod cifar;
pub mod conv;
pub mod dispatch;
pub mod lower;
pub mod pool;
pub mod resnet;
pub mod shape;
pub mod state;
pub mod summary;
pub mod zoo;

pub use conv::{Conv2d, conv_out};
pub use pool::{global_avg_pool, max_pool};
