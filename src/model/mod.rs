//! ResNet building blocks on dfdx, stable Rust only (work in progress: the
//! convolution layer; see the README's status table).

pub mod conv;

pub use conv::{Conv2d, conv_out};
