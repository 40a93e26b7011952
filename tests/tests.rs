//! Integration tests, one binary (see Cargo.toml `autotests = false`).

mod bench;
mod checkpoints;
mod cli;
mod compare;
mod device_check;
#[cfg(feature = "mpi")]
mod distributed;
mod engine;
mod loader;
mod model;
mod odd_jpeg;
mod pack;
mod precision;
mod regression;
mod train;
mod util;
