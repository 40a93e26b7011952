//! Integration tests, one binary (see Cargo.toml `autotests = false`).

mod bench;
mod loader;
mod model;
mod pack;
mod train;
mod util;
