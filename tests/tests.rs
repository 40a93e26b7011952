//! Integration tests, one binary (see Cargo.toml `autotests = false`).

mod loader;
mod pack;
mod util;
