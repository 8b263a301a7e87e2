//! Images built locally, since nothing can be pulled: archives for `ctr import`, written by
//! `oci-archive` (which `cargo xtask image` uses for podtrace's own image).
//!
//! - the sandbox image: `/pause`, compiled from `tests/assets/pause.c` with `gcc -Os -static`;
//! - the app image: `/bin/busybox` from busybox-static (`/bin/sh` links to it) and
//!   `/www/index.html` for `busybox httpd -h /www`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use oci_archive::{Entry, Image};

use super::{BUSYBOX_IMAGE, INDEX_HTML, PAUSE_IMAGE};

const PAUSE_C: &str = include_str!("../../assets/pause.c");

/// Paths of the built image archives.
pub(crate) struct Images {
    pub pause: PathBuf,
    pub busybox: PathBuf,
}

/// Builds both archives into `dir`.
pub(crate) fn build(dir: &Path) -> Result<Images> {
    std::fs::create_dir_all(dir)?;
    let source = dir.join("pause.c");
    let binary = dir.join("pause");
    std::fs::write(&source, PAUSE_C)?;
    let out = Command::new("gcc")
        .args(["-Os", "-static", "-s", "-o"])
        .arg(&binary)
        .arg(&source)
        .output()
        .context("running gcc")?;
    if !out.status.success() {
        bail!(
            "gcc -static pause.c failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let pause = dir.join("pause.tar");
    archive(
        &pause,
        PAUSE_IMAGE,
        vec![Entry::File("pause", std::fs::read(&binary)?, 0o755)],
        &["/pause"],
    )?;
    let busybox = dir.join("busybox.tar");
    let busybox_binary = std::fs::read("/bin/busybox").context("reading /bin/busybox")?;
    archive(
        &busybox,
        BUSYBOX_IMAGE,
        vec![
            Entry::Dir("bin"),
            Entry::File("bin/busybox", busybox_binary, 0o755),
            Entry::Symlink("bin/sh", "busybox"),
            Entry::Dir("tmp"),
            Entry::Dir("www"),
            Entry::File("www/index.html", INDEX_HTML.as_bytes().to_vec(), 0o644),
        ],
        &["/bin/sh"],
    )?;
    Ok(Images { pause, busybox })
}

/// Writes a one-layer image archive (an OCI layout that is also a docker-archive).
fn archive(out: &Path, name: &str, entries: Vec<Entry<'_>>, cmd: &[&str]) -> Result<()> {
    let image = Image {
        name,
        entries,
        entrypoint: Vec::new(),
        cmd: cmd.iter().map(|s| (*s).to_string()).collect(),
        env: vec!["PATH=/bin".to_string()],
        labels: Vec::new(),
    };
    oci_archive::write(&image, out)?;
    Ok(())
}
