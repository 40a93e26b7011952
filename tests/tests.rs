//! Integration tests, one binary (see Cargo.toml `autotests = false`).

mod pack;
mod util;
