//! Installing prerequisites. Each step checks first and does nothing when
//! the thing is already there.

use std::{env, fs, os::unix::fs::symlink, path::PathBuf, process::Command};

use anyhow::{bail, Context, Result};

use crate::process::{cmd, status};

/// Debian packages for building (protoc for the CRI client), the test node
/// (containerd, runc, CNI plugins, busybox, gcc for the pause image), the
/// tests' readers and traffic (tshark, tcpdump, iperf3, bpftool) and the
/// foreign TC program of the coexistence tests (clang), script(1) for a
/// terminal (bsdutils; essential on Debian, listed for the tests' sake), and
/// for `cargo xtask dist` the static libpcap's build (musl-gcc, flex, bison,
/// make) and file(1), which the dist tests ask whether the binary is static.
pub const APT_PACKAGES: &[&str] = &[
    "protobuf-compiler",
    "libpcap-dev",
    "gcc",
    "libc6-dev",
    "iproute2",
    "containerd",
    "runc",
    "containernetworking-plugins",
    "busybox-static",
    "tshark",
    "tcpdump",
    "iperf3",
    "bpftool",
    "clang",
    "bsdutils",
    "musl-tools",
    "flex",
    "bison",
    "make",
    "file",
];

const BPF_LINKER_VERSION: &str = "0.13.0";

pub fn all() -> Result<()> {
    apt()?;
    rust_src()?;
    bpf_linker()?;
    Ok(())
}

/// Installs the missing Debian packages (needs root).
pub fn apt() -> Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| !dpkg_installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing Debian packages: {}", missing.join(" "));
    status(cmd("apt-get", ["update", "-q"]))?;
    let mut install = cmd(
        "apt-get",
        ["install", "-y", "-q", "--no-install-recommends"],
    );
    install
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive");
    status(&mut install)
}

fn dpkg_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

/// The nightly toolchain with rust-src (`-Z build-std=core`).
pub fn rust_src() -> Result<()> {
    let sysroot = nightly_sysroot()?;
    if sysroot.join("lib/rustlib/src/rust/library/core").exists() {
        return Ok(());
    }
    eprintln!("xtask: adding rust-src to the nightly toolchain");
    status(cmd(
        "rustup",
        ["component", "add", "rust-src", "--toolchain", "nightly"],
    ))
}

fn nightly_sysroot() -> Result<PathBuf> {
    let out = Command::new("rustc")
        .args(["+nightly", "--print", "sysroot"])
        .output()
        .context("running rustc +nightly (is rustup installed?)")?;
    if !out.status.success() {
        bail!(
            "no nightly toolchain: the eBPF crate needs one (`rustup toolchain install nightly`)\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(PathBuf::from(String::from_utf8(out.stdout)?.trim()))
}

/// Where tools built here are cached across clones.
pub fn tools_dir() -> PathBuf {
    env::var_os("PODTRACE_TOOLS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env::var_os("HOME").unwrap_or_else(|| "/root".into()))
                .join(".cache/podtrace")
        })
}

/// bpf-linker, built against nightly's own libLLVM (no LLVM package of the
/// right version exists here). Returns the binary's path.
pub fn bpf_linker() -> Result<PathBuf> {
    let sysroot = nightly_sysroot()?;
    let libllvm = fs::read_dir(sysroot.join("lib"))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so.") && n.contains("-rust-"))
        })
        .context("the nightly toolchain ships no libLLVM.so.*-rust-*")?;
    let llvm_name = libllvm.file_name().unwrap().to_string_lossy().into_owned();
    // One build per libLLVM: a different nightly needs its own linker.
    let root = tools_dir().join(format!("bpf-linker-{BPF_LINKER_VERSION}-{llvm_name}"));
    let linker = root.join("bin/bpf-linker");
    if linker.exists()
        && Command::new(&linker)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    {
        return Ok(linker);
    }
    let major = llvm_major(&llvm_name).context("cannot tell libLLVM's major version")?;
    eprintln!(
        "xtask: building bpf-linker {BPF_LINKER_VERSION} against {llvm_name} (a few minutes, once)"
    );
    // The linker's rpath is PREFIX/lib, so the symlinks live next to it for good.
    let prefix = root.join("llvm");
    let lib = prefix.join("lib");
    fs::create_dir_all(&lib)?;
    for name in ["libLLVM.so", llvm_name.as_str()] {
        let link = lib.join(name);
        let _ = fs::remove_file(&link);
        symlink(&libllvm, &link).with_context(|| format!("linking {}", link.display()))?;
    }
    let mut install = cmd("cargo", ["+nightly", "install", "--locked", "--force"]);
    install
        .arg(format!("bpf-linker@{BPF_LINKER_VERSION}"))
        .args([
            "--no-default-features",
            "--features",
            &format!("llvm-{major}"),
        ])
        .arg("--root")
        .arg(&root)
        .env("LLVM_PREFIX", &prefix);
    status(&mut install)?;
    if !linker.exists() {
        bail!("bpf-linker was not installed at {}", linker.display());
    }
    Ok(linker)
}

/// `libLLVM.so.22.1-rust-1.97.0-nightly` → 22
fn llvm_major(name: &str) -> Option<u32> {
    name.strip_prefix("libLLVM.so.")?
        .split('.')
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn llvm_major_from_file_name() {
        assert_eq!(
            super::llvm_major("libLLVM.so.22.1-rust-1.97.0-nightly"),
            Some(22)
        );
        assert_eq!(super::llvm_major("libLLVM.so"), None);
    }
}
