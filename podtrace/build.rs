//! Embeds the eBPF object built by `cargo xtask build-ebpf`.

use std::path::PathBuf;

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let object = manifest
        .join("../podtrace-ebpf/target/bpfel-unknown-none/release/podtrace")
        .canonicalize()
        .unwrap_or_else(|_| {
            eprintln!(
                "error: podtrace's eBPF object is missing (podtrace-ebpf/target/bpfel-unknown-none/release/podtrace).\n\
                 Build it first with: cargo xtask build-ebpf"
            );
            std::process::exit(1);
        });
    println!("cargo:rerun-if-changed={}", object.display());
    println!("cargo:rustc-env=PODTRACE_EBPF_OBJECT={}", object.display());
}
