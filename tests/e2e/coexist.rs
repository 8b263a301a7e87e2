//! podtrace next to other TC programs (a CNI's, say): they keep running
//! while podtrace captures and are untouched when it exits; podtrace leaves
//! nothing behind, even when killed.

use std::{
    net::UdpSocket,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{ensure, Context, Result};
use aya::{
    programs::{SchedClassifier, TcAttachType},
    Ebpf,
};
use podtrace_tests::{netns::TestNet, run::Capture, sh, tshark};

use crate::capture::{assert_released, tempdir};

const PORTS: [u16; 3] = [7777, 7778, 7779];
const PER_PORT: usize = 10;

/// Compiles tests/assets/drop_udp_port.c for `port` into `dir`.
fn foreign_object(dir: &Path, port: u16) -> Result<PathBuf> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/drop_udp_port.c");
    let out = dir.join(format!("drop{port}.o"));
    sh(&[
        "clang",
        "-O2",
        "-g",
        "-target",
        "bpf",
        "-I/usr/include/x86_64-linux-gnu",
        &format!("-DDROP_PORT={port}"),
        "-c",
        src.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ])?;
    Ok(out)
}

/// A foreign program attached with TCX (appended, as a CNI would), kept
/// attached while the returned handle lives.
fn attach_foreign_tcx(object: &Path, iface: &str) -> Result<Ebpf> {
    let mut ebpf = Ebpf::load_file(object).context("loading the foreign program")?;
    let prog: &mut SchedClassifier = ebpf
        .program_mut("drop_udp_port")
        .context("no program")?
        .try_into()?;
    prog.load()?;
    prog.attach(iface, TcAttachType::Ingress)?;
    Ok(ebpf)
}

/// Sends PER_PORT datagrams to each port from the namespace to the host;
/// returns how many the host received on each.
fn send_and_count(net: &TestNet) -> Result<[usize; 3]> {
    let receivers: Vec<UdpSocket> = PORTS
        .iter()
        .map(|&p| UdpSocket::bind((net.host_ip, p)))
        .collect::<Result<_, _>>()?;
    net.within(|| -> Result<()> {
        let sock = UdpSocket::bind((net.ns_ip, 0))?;
        for &port in &PORTS {
            for _ in 0..PER_PORT {
                sock.send_to(b"foreign?", (net.host_ip, port))?;
            }
        }
        Ok(())
    })??;
    let mut counts = [0; 3];
    for (i, r) in receivers.iter().enumerate() {
        r.set_read_timeout(Some(Duration::from_millis(300)))?;
        let mut buf = [0; 64];
        while r.recv(&mut buf).is_ok() {
            counts[i] += 1;
        }
    }
    Ok(counts)
}

fn captured_per_port(file: &Path) -> Result<[usize; 3]> {
    let mut out = [0; 3];
    for (i, port) in PORTS.iter().enumerate() {
        out[i] = tshark::count(file, &format!("udp.dstport=={port}"))?;
    }
    Ok(out)
}

/// TCX: one foreign program attached before podtrace starts, one after;
/// both keep dropping their port while podtrace captures everything.
pub fn tcx_foreign_programs_keep_running() -> Result<()> {
    let net = TestNet::new()?;
    let dir = tempdir()?;
    let before = attach_foreign_tcx(&foreign_object(dir.path(), PORTS[0])?, &net.host_if)?;
    ensure!(
        send_and_count(&net)? == [0, PER_PORT, PER_PORT],
        "foreign program 1 not dropping"
    );

    let file = dir.path().join("c.pcap");
    let capture = Capture::start(&["capture", "-i", &net.host_if, "-w", file.to_str().unwrap()])?;
    let after = attach_foreign_tcx(&foreign_object(dir.path(), PORTS[1])?, &net.host_if)?;
    let received = send_and_count(&net)?;
    let done = capture.stop(libc::SIGINT)?;
    ensure!(done.status.success(), "{}", done.stderr);
    ensure!(
        received == [0, 0, PER_PORT],
        "while capturing the host received {received:?}"
    );
    let captured = captured_per_port(&file)?;
    ensure!(
        captured == [PER_PORT; 3],
        "podtrace captured {captured:?} (it runs first)"
    );

    // Untouched after podtrace exits: still attached, still dropping.
    let (_, programs) = SchedClassifier::query_tcx(&net.host_if, TcAttachType::Ingress)?;
    ensure!(
        programs.len() == 2,
        "{} programs attached after exit, want the 2 foreign",
        programs.len()
    );
    ensure!(
        send_and_count(&net)? == [0, 0, PER_PORT],
        "foreign programs stopped working"
    );
    drop((before, after));
    assert_released(&done, &net.host_if)
}

fn tc_filters(iface: &str) -> Result<String> {
    sh(&["tc", "filter", "show", "dev", iface, "ingress"])
}

/// clsact: a foreign cls_bpf filter (added with tc) keeps working while
/// podtrace's filter sits next to it, and stays when podtrace leaves.
pub fn clsact_mode_keeps_foreign_filters() -> Result<()> {
    let net = TestNet::new()?;
    let dir = tempdir()?;
    let object = foreign_object(dir.path(), PORTS[0])?;
    sh(&["tc", "qdisc", "add", "dev", &net.host_if, "clsact"])?;
    sh(&[
        "tc",
        "filter",
        "add",
        "dev",
        &net.host_if,
        "ingress",
        "bpf",
        "da",
        "obj",
        object.to_str().unwrap(),
        "sec",
        "classifier",
    ])?;

    let file = dir.path().join("l.pcap");
    let capture = Capture::start(&[
        "capture",
        "-i",
        &net.host_if,
        "--tc-mode",
        "clsact",
        "-w",
        file.to_str().unwrap(),
    ])?;
    ensure!(
        capture_uses_clsact(&net.host_if)?,
        "podtrace's filter is not on the clsact qdisc"
    );
    let received = send_and_count(&net)?;
    let done = capture.stop(libc::SIGINT)?;
    ensure!(done.status.success(), "{}", done.stderr);
    ensure!(
        received == [0, PER_PORT, PER_PORT],
        "while capturing the host received {received:?}"
    );
    ensure!(
        captured_per_port(&file)? == [PER_PORT; 3],
        "podtrace missed packets"
    );

    let filters = tc_filters(&net.host_if)?;
    ensure!(
        !filters.contains("podtrace"),
        "podtrace filter left behind:\n{filters}"
    );
    ensure!(
        filters.contains("drop_udp_port"),
        "foreign filter removed:\n{filters}"
    );
    ensure!(
        send_and_count(&net)? == [0, PER_PORT, PER_PORT],
        "foreign filter stopped working"
    );
    assert_released(&done, &net.host_if)
}

/// One of podtrace's cls_bpf filters (capture or translated filter program).
fn capture_uses_clsact(iface: &str) -> Result<bool> {
    Ok(tc_filters(iface)?.contains("podtrace_"))
}

pub fn sigkill_leaves_nothing_attached_tcx() -> Result<()> {
    let net = TestNet::new()?;
    let capture = Capture::start(&["capture", "-i", &net.host_if, "-w", "/dev/null"])?;
    let killed = capture.stop(libc::SIGKILL)?;
    assert_released(&killed, &net.host_if)?;
    let (_, programs) = SchedClassifier::query_tcx(&net.host_if, TcAttachType::Ingress)?;
    ensure!(
        programs.is_empty(),
        "{} TCX programs still attached",
        programs.len()
    );
    Ok(())
}

/// A killed podtrace cannot remove a clsact filter; the next start does,
/// whether the killed one attached its capture programs or, with a capture
/// filter, the translated filter programs in front of them.
pub fn sigkill_clsact_cleaned_by_next_start() -> Result<()> {
    let net = TestNet::new()?;
    let base = [
        "capture",
        "-i",
        &net.host_if,
        "--tc-mode",
        "clsact",
        "-w",
        "/dev/null",
    ];
    let with_filter = [&base[..], &["--filter-engine", "native", "--", "udp"]].concat();
    for killed_args in [&base[..], &with_filter[..]] {
        let killed = Capture::start(killed_args)?.stop(libc::SIGKILL)?;
        ensure!(
            capture_uses_clsact(&net.host_if)?,
            "expected the killed run's filter to remain ({killed_args:?})"
        );
        let done = Capture::start(&base)?.stop(libc::SIGINT)?;
        ensure!(done.status.success(), "{}", done.stderr);
        let filters = tc_filters(&net.host_if)?;
        ensure!(
            !filters.contains("podtrace"),
            "stale filter not cleaned after {killed_args:?}:\n{filters}"
        );
        assert_released(&done, &net.host_if)?;
        // The killed run's programs were held only by its filter, now removed.
        assert_released(&killed, &net.host_if)?;
    }
    Ok(())
}
