//! Images built locally, since nothing can be pulled: docker-archive tars for `ctr import`.
//!
//! - the sandbox image: `/pause`, compiled from `tests/assets/pause.c` with `gcc -Os -static`;
//! - the app image: `/bin/busybox` from busybox-static (`/bin/sh` links to it) and
//!   `/www/index.html` for `busybox httpd -h /www`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::{BUSYBOX_IMAGE, INDEX_HTML, PAUSE_IMAGE};

const PAUSE_C: &str = include_str!("../../assets/pause.c");

/// Paths of the built image archives.
pub(crate) struct Images {
    pub pause: PathBuf,
    pub busybox: PathBuf,
}

/// One file of an image layer.
enum Item<'a> {
    Dir(&'a str),
    File(&'a str, Vec<u8>, u32),
    Symlink(&'a str, &'a str),
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
        &[Item::File("pause", std::fs::read(&binary)?, 0o755)],
        &["/pause"],
    )?;
    let busybox = dir.join("busybox.tar");
    let busybox_binary = std::fs::read("/bin/busybox").context("reading /bin/busybox")?;
    archive(
        &busybox,
        BUSYBOX_IMAGE,
        &[
            Item::Dir("bin"),
            Item::File("bin/busybox", busybox_binary, 0o755),
            Item::Symlink("bin/sh", "busybox"),
            Item::Dir("tmp"),
            Item::Dir("www"),
            Item::File("www/index.html", INDEX_HTML.as_bytes().to_vec(), 0o644),
        ],
        &["/bin/sh"],
    )?;
    Ok(Images { pause, busybox })
}

/// Writes a docker-archive: `manifest.json`, the image config, one layer.
fn archive(out: &Path, name: &str, items: &[Item<'_>], cmd: &[&str]) -> Result<()> {
    let layer = tar_of(items)?;
    let layer_hex = hex(&Sha256::digest(&layer));
    let config = json!({
        "architecture": go_arch(),
        "os": "linux",
        "config": { "Cmd": cmd, "Env": ["PATH=/bin"], "WorkingDir": "/" },
        "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{layer_hex}")] },
    })
    .to_string()
    .into_bytes();
    let config_name = format!("{}.json", hex(&Sha256::digest(&config)));
    let layer_name = format!("{layer_hex}/layer.tar");
    let manifest = json!([{
        "Config": config_name,
        "RepoTags": [name],
        "Layers": [layer_name],
    }])
    .to_string()
    .into_bytes();
    let image = tar_of(&[
        Item::File("manifest.json", manifest, 0o644),
        Item::File(&config_name, config, 0o644),
        Item::Dir(&layer_hex),
        Item::File(&layer_name, layer, 0o644),
    ])?;
    std::fs::write(out, image).with_context(|| format!("writing {}", out.display()))
}

/// A tar of the items, owned by root, dated at the epoch (reproducible).
fn tar_of(items: &[Item<'_>]) -> Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    for item in items {
        let mut header = tar::Header::new_ustar();
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        match item {
            Item::Dir(path) => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(0o755);
                header.set_size(0);
                builder.append_data(&mut header, path, std::io::empty())?;
            }
            Item::File(path, data, mode) => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(*mode);
                header.set_size(data.len() as u64);
                builder.append_data(&mut header, path, data.as_slice())?;
            }
            Item::Symlink(path, target) => {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_mode(0o777);
                header.set_size(0);
                builder.append_link(&mut header, path, target)?;
            }
        }
    }
    Ok(builder.into_inner()?)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The Go architecture name OCI configs use.
fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        other => other,
    }
}
