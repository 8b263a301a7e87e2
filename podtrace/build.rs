//! Embeds the eBPF object built by `cargo xtask build-ebpf`, and links libpcap: the system's
//! shared library, or for a musl target (`cargo xtask dist`) the static one xtask builds from
//! source, found in `$PODTRACE_LIBPCAP_DIR`.

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
    link_libpcap();
}

fn link_libpcap() {
    println!("cargo:rerun-if-env-changed=PODTRACE_LIBPCAP_DIR");
    if std::env::var("CARGO_CFG_TARGET_ENV").as_deref() != Ok("musl") {
        println!("cargo:rustc-link-lib=pcap");
        return;
    }
    // A static binary: the distribution's libpcap.so pulls in glibc (and dbus, systemd).
    let Some(dir) = std::env::var_os("PODTRACE_LIBPCAP_DIR") else {
        eprintln!(
            "error: a musl build links libpcap statically from $PODTRACE_LIBPCAP_DIR; \
             build with: cargo xtask dist"
        );
        std::process::exit(1);
    };
    let dir = PathBuf::from(dir);
    println!("cargo:rerun-if-changed={}", dir.join("libpcap.a").display());
    println!("cargo:rustc-link-search=native={}", dir.display());
    println!("cargo:rustc-link-lib=static=pcap");
}
