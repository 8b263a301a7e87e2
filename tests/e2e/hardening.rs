//! Regressions from a hostile user's session (issue 15): symlinked output
//! names, two clsact captures on one interface, SIGHUP, oversized numbers.

use std::{os::unix::fs::PermissionsExt, path::Path, time::Duration};

use anyhow::{ensure, Context, Result};
use podtrace_tests::{
    netns::TestNet,
    run::{self, Capture, Finished},
    sh, tshark,
};

use crate::{
    capture::{assert_released, tempdir},
    errors::expect_error,
    output::{interface_statistics, send_udp},
};

const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n";

/// A file standing in for /etc/passwd, mode 0644.
fn victim(dir: &Path) -> Result<std::path::PathBuf> {
    let victim = dir.join("passwd");
    std::fs::write(&victim, PASSWD)?;
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o644))?;
    Ok(victim)
}

fn assert_untouched(victim: &Path) -> Result<()> {
    ensure!(
        std::fs::read_to_string(victim)? == PASSWD,
        "{} was written",
        victim.display()
    );
    let mode = std::fs::metadata(victim)?.permissions().mode() & 0o777;
    ensure!(mode == 0o644, "{} re-moded to {mode:o}", victim.display());
    Ok(())
}

/// The stop line of a run that ended with an error after capturing: exit
/// `code`, and the last stderr line names the cause.
fn expect_last_line(done: &Finished, code: i32, needle: &str) -> Result<()> {
    let last = done.stderr.lines().last().unwrap_or_default();
    ensure!(
        done.status.code() == Some(code) && last.contains(needle),
        "want exit {code} and a last line with {needle:?}; got {:?}:\n{}",
        done.status.code(),
        done.stderr
    );
    Ok(())
}

/// `-w` onto a symlink (to a stand-in for /etc/passwd) is refused in one
/// line, before anything is attached; so is a name rotation reaches.
pub fn output_symlinks_are_refused() -> Result<()> {
    let net = TestNet::new()?;
    let dir = tempdir()?;
    let victim = victim(dir.path())?;
    let link = dir.path().join("x.pcap");
    std::os::unix::fs::symlink(&victim, &link)?;
    let done = run::run(&[
        "capture",
        "-i",
        &net.host_if,
        "--duration",
        "0.3",
        "-w",
        link.to_str().unwrap(),
    ])?;
    expect_error(&done, 1, "x.pcap for writing: it is a symbolic link")?;
    assert_untouched(&victim)?;

    // Rotation: the second file's name is planted.
    let base = dir.path().join("r.pcap");
    std::os::unix::fs::symlink(&victim, dir.path().join("r.pcap1"))?;
    let capture = Capture::start(&[
        "capture",
        "-i",
        &net.host_if,
        "-C",
        "1",
        "-w",
        base.to_str().unwrap(),
    ])?;
    send_udp(&net, 3000, 1000)?;
    let done = capture.wait(Duration::from_secs(20))?;
    expect_last_line(&done, 1, "r.pcap1 for writing: it is a symbolic link")?;
    assert_untouched(&victim)?;
    // The first file is whole and holds the first megabyte's datagrams.
    let first = tshark::count(&base, "udp.dstport==9999")?;
    ensure!(
        (900..=1000).contains(&first),
        "{first} datagrams of 1000 B in the first 1 MB file"
    );
    assert_released(&done, &net.host_if)
}

/// How many captured datagrams carry each index (the payload's first 4 bytes).
fn indexes(file: &Path) -> Result<Vec<u32>> {
    // Not the port-unreachable errors quoting a datagram's first bytes.
    let rows = tshark::fields(file, "udp.dstport==9999 && !icmp", &["udp.payload"])?;
    rows.iter()
        .map(|r| {
            let hex = r.first().context("no payload")?;
            u32::from_str_radix(hex.get(..8).context("short payload")?, 16).context("payload index")
        })
        .collect()
}

fn send_indexed(net: &TestNet, range: std::ops::Range<u32>) -> Result<()> {
    let sock = std::net::UdpSocket::bind((net.host_ip, 0))?;
    for i in range {
        let mut payload = i.to_be_bytes().to_vec();
        payload.resize(64, 0);
        sock.send_to(&payload, (net.ns_ip, 9999))?;
        if i % 50 == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    Ok(())
}

/// Two `--tc-mode clsact` captures on one interface: starting the second,
/// stopping it, and killing a third leave the first attached, and each
/// file holds exactly the datagrams sent while its capture ran.
pub fn two_clsact_captures_are_both_exact() -> Result<()> {
    let net = TestNet::new()?;
    let dir = tempdir()?;
    let (a, b) = (dir.path().join("a.pcap"), dir.path().join("b.pcap"));
    let args = |file: &Path| {
        [
            "capture",
            "-i",
            &net.host_if,
            "--tc-mode",
            "clsact",
            "-w",
            file.to_str().unwrap(),
        ]
        .map(String::from)
    };
    let start = |file: &Path| {
        let args = args(file);
        Capture::start(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let first = start(&a)?;
    send_indexed(&net, 0..500)?;
    let second = start(&b)?;
    send_indexed(&net, 500..1000)?;
    let second = second.stop(libc::SIGINT)?;
    ensure!(second.status.success(), "{}", second.stderr);
    send_indexed(&net, 1000..1500)?;
    // A third one killed: its filter is stale; the next start removes it,
    // and only it.
    let killed = start(&dir.path().join("k.pcap"))?.stop(libc::SIGKILL)?;
    send_indexed(&net, 1500..2000)?;
    let fourth = start(&dir.path().join("d.pcap"))?.stop(libc::SIGINT)?;
    ensure!(fourth.status.success(), "{}", fourth.stderr);
    send_indexed(&net, 2000..2500)?;
    let first = first.stop(libc::SIGINT)?;
    ensure!(first.status.success(), "{}", first.stderr);

    let got_a = indexes(&a)?;
    ensure!(
        got_a == (0..2500).collect::<Vec<_>>(),
        "the first capture has {} datagrams, not 0..2500 in order ({:?}…)",
        got_a.len(),
        &got_a[..got_a.len().min(10)]
    );
    let total = tshark::count(&a, "")? as u64;
    ensure!(first.summary()? == (total, 0), "{}", first.stderr);
    let got_b = indexes(&b)?;
    ensure!(
        got_b == (500..1000).collect::<Vec<_>>(),
        "the second capture has {} datagrams, not 500..1000",
        got_b.len()
    );
    let filters = sh(&["tc", "filter", "show", "dev", &net.host_if, "ingress"])?
        + &sh(&["tc", "filter", "show", "dev", &net.host_if, "egress"])?;
    ensure!(!filters.contains("podtrace"), "left behind:\n{filters}");
    for done in [&first, &second, &killed, &fourth] {
        assert_released(done, &net.host_if)?;
    }
    Ok(())
}

/// A filter left by a killed clsact run is removed by the next start in
/// TCX mode too.
pub fn stale_clsact_filter_removed_in_tcx_mode() -> Result<()> {
    let net = TestNet::new()?;
    let clsact = [
        "capture",
        "-i",
        &net.host_if,
        "--tc-mode",
        "clsact",
        "-w",
        "/dev/null",
    ];
    let killed = Capture::start(&clsact)?.stop(libc::SIGKILL)?;
    let filters = sh(&["tc", "filter", "show", "dev", &net.host_if, "ingress"])?;
    ensure!(filters.contains("podtrace_"), "no stale filter:\n{filters}");
    let done = Capture::start(&[
        "capture",
        "-i",
        &net.host_if,
        "--tc-mode",
        "tcx",
        "-w",
        "/dev/null",
    ])?
    .stop(libc::SIGINT)?;
    ensure!(done.status.success(), "{}", done.stderr);
    assert_released(&killed, &net.host_if)?;
    assert_released(&done, &net.host_if)
}

/// SIGHUP (a dropped SSH session) stops like Ctrl-C: summary, statistics
/// block, filters removed. Under nohup it is ignored.
pub fn sighup_stops_cleanly_unless_ignored() -> Result<()> {
    let net = TestNet::new()?;
    let dir = tempdir()?;
    let file = dir.path().join("h.pcapng");
    let capture = Capture::start(&[
        "capture",
        "-i",
        &net.host_if,
        "--tc-mode",
        "clsact",
        "-w",
        file.to_str().unwrap(),
    ])?;
    send_indexed(&net, 0..100)?;
    let done = capture.stop(libc::SIGHUP)?;
    ensure!(done.status.success(), "{}", done.stderr);
    ensure!(indexes(&file)? == (0..100).collect::<Vec<_>>());
    let total = tshark::count(&file, "")? as u64;
    ensure!(done.summary()? == (total, 0), "{}", done.stderr);
    let (recv, drop) = interface_statistics(&file)?;
    ensure!(
        (recv, drop) == (total, 0),
        "statistics block says {recv}/{drop}, the file holds {total}"
    );
    assert_released(&done, &net.host_if)?;

    let ignored = Capture::start_via(
        &["nohup"],
        &["capture", "-i", &net.host_if, "-w", "/dev/null"],
    )?;
    // SAFETY: signalling our own child by pid.
    unsafe { libc::kill(ignored.pid() as i32, libc::SIGHUP) };
    std::thread::sleep(Duration::from_millis(500));
    let mut ignored = ignored;
    ensure!(ignored.running(), "podtrace under nohup died of SIGHUP");
    let done = ignored.stop(libc::SIGINT)?;
    ensure!(done.status.success(), "{}", done.stderr);
    assert_released(&done, &net.host_if)
}

/// Numbers too large for a Duration or a byte count: one line, exit 2.
pub fn oversized_numbers_are_refused() -> Result<()> {
    for (flag, value) in [
        ("--duration", "1e300"),
        ("-G", "99999999999"),
        ("-C", "18446744073709551615"),
    ] {
        let done = run::run(&["capture", "-i", "lo", "-w", "/dev/null", flag, value])?;
        expect_error(&done, 2, value)?;
    }
    Ok(())
}
