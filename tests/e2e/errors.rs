//! Every error a user can hit: one clear line on stderr, the right exit code,
//! nothing attached.

use anyhow::{ensure, Result};
use podtrace_tests::{
    netns::TestNet,
    run::{self, run_with_env, Finished},
    sh,
};

use crate::capture::{assert_nothing_attached, tempdir};

/// Exactly one stderr line containing `needle`, and exit `code`.
pub(crate) fn expect_error(done: &Finished, code: i32, needle: &str) -> Result<()> {
    let lines: Vec<&str> = done.stderr.lines().collect();
    ensure!(
        done.status.code() == Some(code) && lines.len() == 1 && lines[0].contains(needle),
        "want exit {code} and one line with {needle:?}; got {:?}:\n{}",
        done.status.code(),
        done.stderr
    );
    Ok(())
}

pub fn not_root() -> Result<()> {
    let done = run::run_unprivileged(&["capture", "-i", "lo"])?;
    expect_error(
        &done,
        1,
        "podtrace needs root (missing CAP_NET_ADMIN, CAP_BPF, CAP_PERFMON)",
    )
}

pub fn interface_not_found() -> Result<()> {
    expect_error(
        &run::run(&["capture", "-i", "nope0"])?,
        2,
        "interface nope0 not found",
    )
}

pub fn pid_not_found() -> Result<()> {
    // Above the kernel's pid_max limit (4194304): cannot exist.
    expect_error(
        &run::run(&["capture", "--pid", "4194400"])?,
        2,
        "no process with pid 4194400",
    )
}

pub fn netns_not_found() -> Result<()> {
    let done = run::run(&["capture", "--netns", "/run/netns/podtrace-none"])?;
    expect_error(
        &done,
        2,
        "network namespace /run/netns/podtrace-none not found",
    )
}

pub fn netns_without_veth_peer() -> Result<()> {
    let name = format!("ptest-lonely-{}", std::process::id());
    sh(&["ip", "netns", "add", &name])?;
    let done = run::run(&["capture", "--netns", &format!("/run/netns/{name}")]);
    sh(&["ip", "netns", "del", &name])?;
    expect_error(&done?, 2, "has no veth peer in the host network namespace")
}

pub fn pid_in_host_netns() -> Result<()> {
    let pid = std::process::id().to_string();
    expect_error(
        &run::run(&["capture", "--pid", &pid])?,
        2,
        "is in podtrace's own (host) network namespace",
    )
}

pub fn kernel_without_btf() -> Result<()> {
    let since = run::last_prog_id()?;
    let done = run_with_env(
        &["capture", "-i", "lo"],
        &[("PODTRACE_KERNEL_BTF", "/nonexistent/vmlinux")],
    )?;
    expect_error(
        &done,
        1,
        "this kernel has no BTF (/nonexistent/vmlinux is missing)",
    )?;
    assert_nothing_attached("lo", since)
}

pub fn unwritable_output() -> Result<()> {
    let net = TestNet::new()?;
    let since = run::last_prog_id()?;
    let done = run::run(&[
        "capture",
        "-i",
        &net.host_if,
        "-w",
        "/nonexistent-dir/x.pcap",
    ])?;
    expect_error(
        &done,
        1,
        "cannot open /nonexistent-dir/x.pcap for writing: No such file or directory",
    )?;
    // The output is opened before anything is loaded or attached.
    assert_nothing_attached(&net.host_if, since)
}

pub fn output_file_is_private() -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let net = TestNet::new()?;
    let dir = tempdir()?;
    let file = dir.path().join("p.pcap");
    let done = run::run(&[
        "capture",
        "-i",
        &net.host_if,
        "--duration",
        "0.3",
        "-w",
        file.to_str().unwrap(),
    ])?;
    ensure!(done.status.success(), "{}", done.stderr);
    let mode = std::fs::metadata(&file)?.permissions().mode() & 0o777;
    ensure!(mode == 0o600, "output mode {mode:o}, want 600");
    Ok(())
}

pub fn no_target() -> Result<()> {
    expect_error(&run::run(&["capture"])?, 2, "what should podtrace capture?")
}
