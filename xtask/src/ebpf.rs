//! Building the eBPF object.

use std::path::PathBuf;

use anyhow::Result;

use crate::{
    process::{cmd, status, workspace},
    setup,
};

/// Where `podtrace/build.rs` expects the object.
pub fn object_path() -> PathBuf {
    workspace().join("podtrace-ebpf/target/bpfel-unknown-none/release/podtrace")
}

pub fn build() -> Result<()> {
    setup::rust_src()?;
    let linker = setup::bpf_linker()?;
    let dir = workspace().join("podtrace-ebpf");
    let mut build = cmd("cargo", ["+nightly", "build", "--release", "--locked"]);
    build
        .current_dir(&dir)
        .env("CARGO_TARGET_BPFEL_UNKNOWN_NONE_LINKER", &linker)
        // Set by an outer `cargo xtask`; must not leak into the nightly build.
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO")
        .env_remove("RUSTC");
    status(&mut build)?;
    eprintln!("xtask: eBPF object at {}", object_path().display());
    Ok(())
}
