//! Warns when the default JPEG decoder will be built without its SIMD code.
//!
//! libjpeg-turbo (feature `libjpeg-turbo`, built from source by mozjpeg-sys)
//! assembles its SIMD decoder with `nasm`; without nasm it builds C-only and
//! decodes 2.5x slower (still correctly). Cargo hides the warnings of
//! dependencies' build scripts, so the root package says it.

fn main() {
    println!("cargo:rerun-if-env-changed=PATH");
    println!("cargo:rerun-if-env-changed=NASM");
    if std::env::var_os("CARGO_FEATURE_LIBJPEG_TURBO").is_none() {
        return;
    }
    let nasm = std::env::var_os("NASM").unwrap_or_else(|| "nasm".into());
    let found = std::process::Command::new(&nasm)
        .arg("-v")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        println!(
            "cargo:warning=nasm not found: libjpeg-turbo builds without SIMD and decodes JPEGs 2.5x slower. \
             Install it (`apt-get update && apt-get install -y nasm`), then `cargo clean -p mozjpeg-sys` and rebuild."
        );
    }
}
