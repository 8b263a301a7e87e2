//! The distributed forms of podtrace, built by `cargo xtask test` as `cargo xtask dist` and
//! `cargo xtask image` build them: the static binary and the image archive.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    sync::Mutex,
};

use anyhow::{bail, ensure, Context, Result};
use podtrace_tests::{netns::TestNet, run::Capture, sh, traffic, tshark};
use sha2::{Digest, Sha256};

use crate::{capture::tempdir, pods};

fn env_path(var: &str) -> Result<PathBuf> {
    let path = std::env::var_os(var)
        .map(PathBuf::from)
        .with_context(|| format!("{var} is not set: run the tests with cargo xtask test, which builds the dist binary and the image"))?;
    ensure!(path.exists(), "{} ({var}) does not exist", path.display());
    Ok(path)
}

/// `target/dist/podtrace-VERSION-x86_64-linux`.
pub(crate) fn dist_bin() -> Result<PathBuf> {
    env_path("PODTRACE_DIST_BIN")
}

/// `target/dist/podtrace-VERSION-image.tar`.
pub(crate) fn image_tar() -> Result<PathBuf> {
    env_path("PODTRACE_IMAGE_TAR")
}

/// `podtrace:VERSION`, the name the image archive carries.
pub(crate) fn image_name() -> Result<String> {
    std::env::var("PODTRACE_IMAGE_NAME")
        .context("PODTRACE_IMAGE_NAME is not set: run the tests with cargo xtask test")
}

fn hex_sha256(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether an ELF64 little-endian file has a PT_INTERP program header (a dynamic loader).
fn has_interp(elf: &[u8]) -> Result<bool> {
    ensure!(elf.len() > 64 && elf[..4] == *b"\x7fELF", "not an ELF file");
    ensure!(elf[4] == 2 && elf[5] == 1, "not a 64-bit little-endian ELF");
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into()?) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    const PT_INTERP: u32 = 3;
    for i in 0..phnum {
        let at = phoff + i * phentsize;
        let header = elf.get(at..at + 4).context("program header past the end")?;
        if u32::from_le_bytes(header.try_into()?) == PT_INTERP {
            return Ok(true);
        }
    }
    Ok(false)
}

pub fn binary_is_static() -> Result<()> {
    let bin = dist_bin()?;
    let kind = sh(&["file", "-b", bin.to_str().unwrap()])?;
    ensure!(
        kind.contains("statically linked") || kind.contains("static-pie linked"),
        "file(1) says {kind}"
    );
    let elf = fs::read(&bin)?;
    ensure!(
        !has_interp(&elf)?,
        "{} has a PT_INTERP header",
        bin.display()
    );
    // The checker itself: the test build of podtrace is dynamic.
    ensure!(
        has_interp(&fs::read(podtrace_tests::run::bin())?)?,
        "has_interp misses a dynamic binary's PT_INTERP"
    );
    let name = bin.file_name().unwrap().to_string_lossy().into_owned();
    let sum = fs::read_to_string(bin.with_file_name(format!("{name}.sha256")))?;
    ensure!(
        sum == format!("{}  {name}\n", hex_sha256(&elf)),
        "{name}.sha256 does not match: {sum:?}"
    );
    let version = sh(&[bin.to_str().unwrap(), "--version"])?;
    ensure!(
        version.trim() == format!("podtrace {}", env!("CARGO_PKG_VERSION")),
        "--version says {version:?}"
    );
    Ok(())
}

/// The binary alone in an empty directory, chrooted there with only /proc, /sys and
/// /sys/fs/bpf mounted (in a mount namespace of its own, so nothing is left mounted), captures
/// a veth to a file that tshark reads.
pub fn chroot_captures_a_veth() -> Result<()> {
    let root = tempdir()?;
    let r = root.path();
    fs::copy(dist_bin()?, r.join("podtrace"))?;
    fs::create_dir(r.join("proc"))?;
    fs::create_dir(r.join("sys"))?;
    let net = TestNet::new()?;
    let script = format!(
        "mount -t proc proc {r}/proc && mount -t sysfs sysfs {r}/sys && \
         mount -t bpf bpf {r}/sys/fs/bpf && exec chroot {r} /podtrace \"$@\"",
        r = r.display()
    );
    let mut command = Command::new("unshare");
    command
        .args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            &script,
            "sh",
        ])
        .args(["capture", "-i", &net.host_if, "-w", "/out.pcap"]);
    let capture = Capture::start_command(command)?;
    net.ping(4, 56)?;
    let request = traffic::pattern(2000, 3);
    let reply = traffic::pattern(900, 5);
    traffic::tcp_exchange(&net, (net.ns_ip, 9000).into(), &request, &reply)?;
    let done = capture.stop(libc::SIGINT)?;
    ensure!(
        done.status.success(),
        "podtrace in the chroot failed: {}",
        done.stderr
    );
    let (captured, lost) = done.summary()?;
    ensure!(lost == 0, "lost {lost}");
    let file = r.join("out.pcap");
    let (host, ns) = (net.host_ip.to_string(), net.ns_ip.to_string());
    let requests = tshark::count(&file, &format!("icmp.type==8 && ip.src=={host}"))?;
    let replies = tshark::count(&file, &format!("icmp.type==0 && ip.src=={ns}"))?;
    ensure!(
        (requests, replies) == (4, 4),
        "ICMP {requests}/{replies}, want 4/4"
    );
    let payload = tshark::count(&file, &format!("ip.src=={host} && tcp.len>0"))?;
    ensure!(payload > 0, "no TCP payload from the host in the capture");
    ensure!(
        tshark::count(&file, "")? as u64 == captured,
        "the file and the summary ({captured}) disagree"
    );
    // What the chroot holds afterwards: the binary, the mount points and the capture.
    let mut entries: Vec<String> = fs::read_dir(r)?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()?;
    entries.sort();
    ensure!(
        entries == ["out.pcap", "podtrace", "proc", "sys"],
        "chroot holds {entries:?}"
    );
    ensure!(
        sh(&[
            "sh",
            "-c",
            &format!("grep -c ' {} ' /proc/self/mountinfo || true", r.display())
        ])?
        .trim()
            == "0",
        "mounts of the chroot leaked into the host's mount namespace"
    );
    Ok(())
}

/// Imports the image into the shared test node once (what an operator's `ctr images import`
/// does); returns the name the node knows it by.
pub(crate) fn image_on_node() -> Result<String> {
    static IMPORTED: Mutex<bool> = Mutex::new(false);
    let mut imported = IMPORTED.lock().unwrap_or_else(|e| e.into_inner());
    let node = pods::node()?;
    let name = image_name()?;
    if !*imported {
        node.import_image(&image_tar()?)?;
        *imported = true;
    }
    Ok(name)
}

/// The archive's files by path.
fn archive_files(path: &Path) -> Result<std::collections::HashMap<String, Vec<u8>>> {
    let mut out = std::collections::HashMap::new();
    let mut archive = tar::Archive::new(fs::File::open(path)?);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let name = entry.path()?.display().to_string();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut data)?;
        out.insert(name, data);
    }
    Ok(out)
}

pub fn image_imports_into_containerd() -> Result<()> {
    let tar = image_tar()?;
    let name = image_on_node()?;
    let node = pods::node()?;
    let id = node
        .image_id(&name)?
        .with_context(|| format!("the node has no {name} after ctr images import"))?;
    // The id CRI reports is the digest of the archive's image config.
    let files = archive_files(&tar)?;
    let manifest: serde_json::Value = serde_json::from_slice(&files["manifest.json"])?;
    ensure!(
        manifest[0]["RepoTags"][0] == name.as_str(),
        "RepoTags {}",
        manifest[0]["RepoTags"]
    );
    let config = &files[manifest[0]["Config"].as_str().context("no Config")?];
    ensure!(
        id == format!("sha256:{}", hex_sha256(config)),
        "ImageStatus id {id} is not the archive's config"
    );
    // Its one layer holds the dist binary and nothing else.
    let layer_path = manifest[0]["Layers"][0].as_str().context("no layer")?;
    let mut layer = tar::Archive::new(files[layer_path].as_slice());
    let mut regular = Vec::new();
    for entry in layer.entries()? {
        let mut entry = entry?;
        if entry.header().entry_type().is_file() {
            let path = entry.path()?.display().to_string();
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut data)?;
            regular.push((path, data));
        }
    }
    let bin = fs::read(dist_bin()?)?;
    match regular.as_slice() {
        [(path, data)] if path == "usr/local/bin/podtrace" && *data == bin => Ok(()),
        other => bail!(
            "the layer holds {:?}, want only usr/local/bin/podtrace (the dist binary)",
            other.iter().map(|(p, d)| (p, d.len())).collect::<Vec<_>>()
        ),
    }
}
