//! `cargo xtask dist`: podtrace as one static executable (musl, libpcap linked in, the eBPF
//! object embedded), `target/dist/podtrace-VERSION-x86_64-linux` with its `.sha256` beside it;
//! `cargo xtask image`: that binary alone in an image archive, `podtrace-VERSION-image.tar`.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use crate::{
    ebpf, libpcap,
    process::{cmd, status, workspace},
    setup,
};

pub const TARGET: &str = "x86_64-unknown-linux-musl";
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The cargo profile (Cargo.toml): release, stripped.
const PROFILE: &str = "release-static";
/// The image's name: what `ctr`/`docker`/`podman load` tag it with, and what the manifests in
/// deploy/ run.
pub fn image_name() -> String {
    format!("podtrace:{VERSION}")
}
/// Where the binary sits in the image (on its PATH, for `kubectl debug … -- podtrace …`).
const IMAGE_BINARY: &str = "usr/local/bin/podtrace";

pub fn dist_dir() -> PathBuf {
    workspace().join("target/dist")
}

pub fn binary_path() -> PathBuf {
    dist_dir().join(format!("podtrace-{VERSION}-x86_64-linux"))
}

pub fn image_path() -> PathBuf {
    dist_dir().join(format!("podtrace-{VERSION}-image.tar"))
}

/// Builds the static binary and its checksum; returns the binary's path.
pub fn binary() -> Result<PathBuf> {
    setup::apt()?;
    rust_target()?;
    let libpcap = libpcap::static_musl()?;
    ebpf::build()?;
    let mut build = cmd(
        "cargo",
        [
            "build",
            "--locked",
            "--profile",
            PROFILE,
            "-p",
            "podtrace",
            "--target",
            TARGET,
        ],
    );
    build
        .env("PODTRACE_LIBPCAP_DIR", &libpcap)
        // Static, and no glibc assumption anywhere: musl's own crt and libc.
        .env("CC_x86_64_unknown_linux_musl", "musl-gcc");
    status(&mut build)?;
    let built = workspace().join(format!("target/{TARGET}/{PROFILE}/podtrace"));
    check_static(&built)?;
    let out = binary_path();
    fs::create_dir_all(dist_dir())?;
    copy_if_changed(&built, &out)?;
    let name = out.file_name().unwrap().to_string_lossy().into_owned();
    let sum = format!("{}  {name}\n", libpcap::sha256(&out)?);
    fs::write(out.with_file_name(format!("{name}.sha256")), sum)?;
    eprintln!(
        "xtask: {} ({} bytes, static)",
        out.display(),
        fs::metadata(&out)?.len()
    );
    Ok(out)
}

/// Builds the image archive around the static binary; returns its path.
pub fn image() -> Result<PathBuf> {
    let binary = binary()?;
    let out = image_path();
    let image = oci_archive::Image {
        name: &image_name(),
        entries: vec![
            oci_archive::Entry::Dir("usr"),
            oci_archive::Entry::Dir("usr/local"),
            oci_archive::Entry::Dir("usr/local/bin"),
            oci_archive::Entry::File(IMAGE_BINARY, fs::read(&binary)?, 0o755),
        ],
        entrypoint: vec![format!("/{IMAGE_BINARY}")],
        cmd: vec!["--help".to_string()],
        env: vec!["PATH=/usr/local/bin:/usr/bin:/bin".to_string()],
        labels: vec![
            ("org.opencontainers.image.title".into(), "podtrace".into()),
            ("org.opencontainers.image.version".into(), VERSION.into()),
        ],
    };
    let written = oci_archive::write(&image, &out)?;
    eprintln!(
        "xtask: {} ({} bytes), image {} id {}",
        out.display(),
        fs::metadata(&out)?.len(),
        written.full_name,
        written.config_digest
    );
    Ok(out)
}

/// `rustup target add` for the musl target, once.
fn rust_target() -> Result<()> {
    let out = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .context("running rustup")?;
    if String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.trim() == TARGET)
    {
        return Ok(());
    }
    eprintln!("xtask: adding the {TARGET} target to the Rust toolchain");
    status(cmd("rustup", ["target", "add", TARGET]))
}

/// Refuses a binary with a program interpreter (a dynamic loader).
fn check_static(path: &Path) -> Result<()> {
    let out = Command::new("readelf")
        .arg("-lW")
        .arg(path)
        .output()
        .context("running readelf")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || text.contains("INTERP") {
        bail!("{} is not a static executable:\n{text}", path.display());
    }
    Ok(())
}

/// Copies unless `to` already has the same bytes (keeps its mtime, so nothing downstream
/// rebuilds).
fn copy_if_changed(from: &Path, to: &Path) -> Result<()> {
    let new = fs::read(from)?;
    if fs::read(to).ok().as_deref() != Some(new.as_slice()) {
        let tmp = to.with_extension("tmp");
        fs::write(&tmp, &new)?;
        fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        fs::rename(&tmp, to)?;
    }
    Ok(())
}
