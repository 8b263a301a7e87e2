//! libpcap as a static library for musl, built from Debian's source package of the same
//! libpcap tcpdump uses here (1.10.3), so filters compile exactly as they do with the shared
//! library: only its optional capture back ends (dbus, rdma, netmap, bluetooth, usb, libnl) are
//! left out, none of which compiling a filter touches.
//!
//! The source comes through apt's own client with a private configuration (a `deb-src` entry,
//! lists and cache under the tools cache), so the system's apt sources are never changed; apt
//! checks the download against Debian's signed index, and the tarball is pinned by its hash.
//! Both the tarball and the built library are cached: a second run does nothing.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};

use crate::process::{cmd, status};
use crate::setup::tools_dir;

pub const VERSION: &str = "1.10.3";
/// sha256 of `libpcap_1.10.3.orig.tar.gz` (upstream's release tarball).
const ORIG_SHA256: &str = "2a8885c403516cf7b0933ed4b14d6caa30e02052489ebd414dc75ac52e7559e6";
/// The Debian release whose source package carries that version.
const SUITE: &str = "bookworm";

/// Everything optional off: the library compiles filters, it captures nothing here.
const CONFIGURE: &[&str] = &[
    "--disable-shared",
    "--with-pcap=linux",
    "--disable-usb",
    "--disable-netmap",
    "--disable-bluetooth",
    "--disable-dbus",
    "--disable-rdma",
    "--disable-remote",
    "--without-libnl",
    "--without-dpdk",
];

/// The directory holding `libpcap.a` built for musl, building it first if needed.
pub fn static_musl() -> Result<PathBuf> {
    let out = tools_dir().join(format!("libpcap-{VERSION}-musl"));
    let stamp = out.join("configure-flags");
    let flags = CONFIGURE.join(" ");
    if out.join("libpcap.a").exists() && fs::read_to_string(&stamp).ok().as_deref() == Some(&flags)
    {
        return Ok(out);
    }
    let tarball = source_tarball()?;
    eprintln!("xtask: building libpcap {VERSION} for musl (static, once)");
    let build = tools_dir().join("build-libpcap");
    let _ = fs::remove_dir_all(&build);
    fs::create_dir_all(&build)?;
    status(cmd("tar", ["xzf"]).arg(&tarball).arg("-C").arg(&build))?;
    let src = build.join(format!("libpcap-{VERSION}"));
    let headers = kernel_headers(&build)?;
    let cflags = format!("-O2 -fPIC -isystem {}", headers.display());
    let mut configure = std::process::Command::new(src.join("configure"));
    configure.args(CONFIGURE);
    configure
        .current_dir(&src)
        .env("CC", "musl-gcc")
        .env("CFLAGS", cflags);
    quiet(&mut configure, &build.join("configure.log"))?;
    let mut make = cmd("make", ["-j2", "libpcap.a"]);
    make.current_dir(&src);
    quiet(&mut make, &build.join("make.log"))?;
    fs::create_dir_all(&out)?;
    fs::copy(src.join("libpcap.a"), out.join("libpcap.a"))?;
    fs::write(&stamp, flags)?;
    fs::remove_dir_all(&build)?;
    Ok(out)
}

/// Runs a build step with its output in `log`, shown only when it fails.
fn quiet(c: &mut std::process::Command, log: &Path) -> Result<()> {
    let file = fs::File::create(log)?;
    c.stdout(file.try_clone()?).stderr(file);
    if let Err(err) = status(&mut *c) {
        let text = fs::read_to_string(log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(30).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!("{err}\n{}", tail.join("\n"));
    }
    Ok(())
}

/// musl-gcc searches musl's headers only; libpcap's Linux back end needs the kernel's
/// (linux-libc-dev, libc-independent): a directory of links to just those.
fn kernel_headers(build: &Path) -> Result<PathBuf> {
    let dir = build.join("kernel-headers");
    fs::create_dir_all(&dir)?;
    let arch = format!("/usr/include/{}-linux-gnu/asm", std::env::consts::ARCH);
    for (name, target) in [
        ("linux", "/usr/include/linux"),
        ("asm-generic", "/usr/include/asm-generic"),
        ("asm", arch.as_str()),
    ] {
        if !Path::new(target).exists() {
            bail!("{target} is missing (Debian package linux-libc-dev)");
        }
        std::os::unix::fs::symlink(target, dir.join(name))?;
    }
    Ok(dir)
}

/// `libpcap_VERSION.orig.tar.gz`, downloaded once with `apt-get source` and checked.
fn source_tarball() -> Result<PathBuf> {
    let dir = tools_dir().join("src");
    let tarball = dir.join(format!("libpcap_{VERSION}.orig.tar.gz"));
    if tarball.exists() && sha256(&tarball)? == ORIG_SHA256 {
        return Ok(tarball);
    }
    eprintln!("xtask: downloading Debian's libpcap {VERSION} source package");
    let apt = tools_dir().join("apt-src");
    let parts = apt.join("sources.list.d");
    for d in [
        parts.clone(),
        apt.join("lists/partial"),
        apt.join("cache/archives/partial"),
    ] {
        fs::create_dir_all(d)?;
    }
    fs::write(
        parts.join("podtrace-src.sources"),
        format!(
            "Types: deb-src\nURIs: {}\nSuites: {SUITE}\nComponents: main\n\
             Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n",
            debian_mirror()
        ),
    )?;
    let options = [
        "-q".to_string(),
        "-o".into(),
        "Dir::Etc::SourceList=/dev/null".into(),
        "-o".into(),
        format!("Dir::Etc::SourceParts={}", parts.display()),
        "-o".into(),
        format!("Dir::State::Lists={}", apt.join("lists").display()),
        "-o".into(),
        format!("Dir::Cache={}", apt.join("cache").display()),
        "-o".into(),
        // The download lands in a root-owned directory that apt's _apt user cannot write.
        "APT::Sandbox::User=root".into(),
    ];
    status(cmd("apt-get", &options).arg("update"))?;
    let download = apt.join("download");
    let _ = fs::remove_dir_all(&download);
    fs::create_dir_all(&download)?;
    let mut source = cmd("apt-get", &options);
    source
        .args(["source", "--download-only", "libpcap"])
        .current_dir(&download);
    status(&mut source)?;
    let fetched = download.join(tarball.file_name().unwrap());
    if !fetched.exists() {
        bail!(
            "apt-get source libpcap brought no {} (Debian {SUITE} moved to another version?)",
            fetched.display()
        );
    }
    let got = sha256(&fetched)?;
    if got != ORIG_SHA256 {
        bail!(
            "{} has sha256 {got}, expected {ORIG_SHA256}",
            fetched.display()
        );
    }
    fs::create_dir_all(&dir)?;
    fs::copy(&fetched, &tarball)?;
    // The private lists served this one download; the checked tarball is what is kept.
    fs::remove_dir_all(&apt)?;
    Ok(tarball)
}

/// The Debian mirror the system's apt uses, else deb.debian.org.
fn debian_mirror() -> String {
    let sources = fs::read_to_string("/etc/apt/sources.list.d/debian.sources").unwrap_or_default();
    sources
        .lines()
        .filter_map(|l| l.strip_prefix("URIs:"))
        .flat_map(str::split_whitespace)
        .find(|uri| uri.trim_end_matches('/').ends_with("/debian"))
        .unwrap_or("http://deb.debian.org/debian")
        .to_string()
}

/// The hex sha256 of a file (coreutils' sha256sum).
pub fn sha256(path: &Path) -> Result<String> {
    let out = cmd("sha256sum", [path])
        .output()
        .with_context(|| format!("running sha256sum {}", path.display()))?;
    if !out.status.success() {
        bail!("sha256sum {} failed", path.display());
    }
    let text = String::from_utf8(out.stdout)?;
    Ok(text
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string())
}
