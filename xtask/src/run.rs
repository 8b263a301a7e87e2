//! The tasks that build, test, demonstrate and measure podtrace.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use crate::{
    dist, ebpf,
    process::{cmd, status, workspace},
    setup,
};

fn is_root() -> bool {
    // SAFETY: no preconditions.
    unsafe { libc_geteuid() == 0 }
}

extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

/// The podtrace binary the end-to-end tests and the demo run.
fn podtrace_bin(profile: &str) -> PathBuf {
    workspace().join("target").join(profile).join("podtrace")
}

pub fn build() -> Result<()> {
    ebpf::build()?;
    status(cmd("cargo", ["build", "--release", "-p", "podtrace"]))
}

/// Unit tests, then (unless `unit_only`) the end-to-end tests, which then
/// must run: the e2e binary fails every test whose prerequisites are
/// missing, in CI or not. Only `--unit` leaves them out, and says so.
pub fn test(unit_only: bool, filter: &[String]) -> Result<()> {
    if !unit_only && !is_root() {
        bail!("the end-to-end tests need root (real pods, real eBPF); run as root, or `cargo xtask test --unit` for the unit tests only");
    }
    if is_root() {
        setup::apt()?;
    }
    ebpf::build()?;
    status(cmd(
        "cargo",
        ["test", "--workspace", "--exclude", "podtrace-tests"],
    ))?;
    // podtrace-tests' own unit tests (the benchmark's arithmetic and
    // parsing) and doc examples, without its e2e target.
    status(cmd(
        "cargo",
        ["test", "-p", "podtrace-tests", "--lib", "--bins"],
    ))?;
    status(cmd("cargo", ["test", "-p", "podtrace-tests", "--doc"]))?;
    if unit_only {
        eprintln!("xtask: unit tests only; the end-to-end tests were not run");
        return Ok(());
    }
    status(cmd("cargo", ["build", "-p", "podtrace"]))?;
    let mut e2e = cmd(
        "cargo",
        ["test", "-p", "podtrace-tests", "--test", "e2e", "--"],
    );
    if runs_dist_tests(filter)? {
        // The static binary and its image, which the dist and agent tests run (cached).
        let image = dist::image()?;
        e2e.env("PODTRACE_DIST_BIN", dist::binary_path())
            .env("PODTRACE_IMAGE_TAR", image)
            .env("PODTRACE_IMAGE_NAME", dist::image_name());
    }
    e2e.args(filter).env("PODTRACE_BIN", podtrace_bin("debug"));
    status(&mut e2e)
}

/// Whether the end-to-end tests that `filter` selects include those of the static binary and
/// the image (modules `dist` and `agent`), which need them built: asked of the test binary.
fn runs_dist_tests(filter: &[String]) -> Result<bool> {
    if filter.is_empty() {
        return Ok(true);
    }
    let mut list = cmd(
        "cargo",
        [
            "test",
            "-q",
            "-p",
            "podtrace-tests",
            "--test",
            "e2e",
            "--",
            "--list",
        ],
    );
    let out = list
        .args(filter)
        .output()
        .context("listing the e2e tests")?;
    if !out.status.success() {
        bail!(
            "listing the e2e tests failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.ends_with(": test"))
        .any(|l| l.starts_with("dist::") || l.starts_with("agent::")))
}

pub fn demo() -> Result<()> {
    run_tests_bin(
        "podtrace-demo",
        &[],
        "the demo needs root: it starts a throwaway containerd node and attaches eBPF programs",
    )
}

/// Builds everything (release) and runs one of podtrace-tests' programs
/// against the release podtrace binary.
fn run_tests_bin(bin: &str, args: &[std::ffi::OsString], needs_root: &str) -> Result<()> {
    if !is_root() {
        bail!("{needs_root}");
    }
    setup::apt()?;
    build()?;
    let mut run = cmd(
        "cargo",
        [
            "run",
            "--quiet",
            "--release",
            "-p",
            "podtrace-tests",
            "--bin",
            bin,
            "--",
        ],
    );
    run.args(args).env("PODTRACE_BIN", podtrace_bin("release"));
    status(&mut run)
}

pub fn lint() -> Result<()> {
    ebpf::build()?;
    status(cmd("cargo", ["fmt", "--all", "--check"]))?;
    status(cmd(
        "cargo",
        [
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
    ))?;
    let mut ebpf_fmt = cmd("cargo", ["+nightly", "fmt", "--check"]);
    ebpf_fmt.current_dir(workspace().join("podtrace-ebpf"));
    status(&mut ebpf_fmt)
}

pub fn bench(quick: bool, out: Option<PathBuf>, only: Option<String>) -> Result<()> {
    let out = match out {
        Some(path) => std::env::current_dir()?.join(path),
        None => workspace().join("BENCHMARKS.md"),
    };
    let mut args = vec!["--out".into(), out.into_os_string()];
    if quick {
        args.push("--quick".into());
    }
    if let Some(only) = only {
        args.extend(["--only".into(), only.into()]);
    }
    run_tests_bin(
        "podtrace-bench",
        &args,
        "the benchmark needs root: it makes a network namespace and attaches eBPF programs",
    )
}
