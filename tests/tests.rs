//! Integration tests, one binary (see Cargo.toml `autotests = false`).

mod bench;
mod device_check;
mod loader;
mod model;
mod pack;
mod train;
mod util;
