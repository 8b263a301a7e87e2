//! Capturing a veth/netns/pid target and checking the file against what was sent.

use std::{
    net::UdpSocket,
    path::Path,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{ensure, Context, Result};
use aya::programs::{SchedClassifier, TcAttachType};
use podtrace_tests::{
    netns::{link_packets, TestNet},
    run::{self, Capture, Finished},
    traffic, tshark,
};

/// After a run: the programs it loaded are gone from the kernel, and
/// nothing of podtrace's is attached to `iface` (TCX or clsact). Scoped to
/// this run, so suites running side by side do not see each other.
pub fn assert_released(done: &Finished, iface: &str) -> Result<()> {
    ensure!(
        !done.prog_ids.is_empty(),
        "podtrace held no eBPF programs while capturing?"
    );
    // Program fds close as the process exits; give the kernel a moment.
    let mut left = done.prog_ids.clone();
    for _ in 0..50 {
        left.retain(|&id| run::prog_exists(id));
        if left.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    ensure!(
        left.is_empty(),
        "podtrace's programs {left:?} are still loaded"
    );
    let attached = attached_to(iface)?;
    ensure!(attached.is_empty(), "left on {iface}: {attached:?}");
    Ok(())
}

/// For a run that failed before or while attaching (so its programs were
/// never seen): nothing of podtrace's on either TC hook of `iface`, TCX or
/// clsact, and no podtrace program loaded since program id `since` that no
/// process holds (one left attached or pinned would be).
pub fn assert_nothing_attached(iface: &str, since: u32) -> Result<()> {
    let attached = attached_to(iface)?;
    ensure!(attached.is_empty(), "left on {iface}: {attached:?}");
    let orphans = run::orphan_programs(since)?;
    ensure!(
        orphans.is_empty(),
        "podtrace programs {orphans:?} outlived the run"
    );
    Ok(())
}

/// podtrace's programs on `iface`'s TCX hooks and its clsact filters.
fn attached_to(iface: &str) -> Result<Vec<String>> {
    let mut found = Vec::new();
    if !std::path::Path::new("/sys/class/net").join(iface).exists() {
        return Ok(found);
    }
    for (hook, name) in [
        (TcAttachType::Ingress, "ingress"),
        (TcAttachType::Egress, "egress"),
    ] {
        let (_, programs) = SchedClassifier::query_tcx(iface, hook)?;
        for p in programs {
            if p.name_as_str().is_some_and(|n| n.starts_with("podtrace")) {
                found.push(format!("TCX {name} program {}", p.id()));
            }
        }
        let filters = podtrace_tests::sh(&["tc", "filter", "show", "dev", iface, name])?;
        for line in filters.lines().filter(|l| l.contains("podtrace")) {
            found.push(format!("clsact {name} filter {}", line.trim()));
        }
    }
    Ok(found)
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Concatenated TCP payload from `src` in capture order, as bytes.
fn tcp_payload_from(file: &Path, src: &str) -> Result<Vec<u8>> {
    let rows = tshark::fields(
        file,
        &format!("ip.src=={src} && tcp.len>0"),
        &["tcp.payload"],
    )?;
    let mut out = Vec::new();
    for row in rows {
        let hex = row[0].replace(':', "");
        for i in (0..hex.len()).step_by(2) {
            out.push(u8::from_str_radix(&hex[i..i + 2], 16)?);
        }
    }
    Ok(out)
}

/// ICMP + TCP both ways on `net`, captured with `target_args`; the file
/// must hold exactly that (no ARP: neighbours are pinned; no IPv6), as many
/// packets as the veth's own counters saw, with sane timestamps.
fn icmp_and_tcp(net: &TestNet, target_args: &[&str]) -> Result<()> {
    net.pin_neighbours()?;
    let dir = tempdir()?;
    let file = dir.path().join("out.pcap");
    let mut args = vec!["capture"];
    args.extend_from_slice(target_args);
    args.extend_from_slice(&["-w", file.to_str().unwrap()]);
    let start = now();
    let capture = Capture::start(&args)?;
    let counted = link_packets(&net.host_if)?;
    net.ping(5, 56)?;
    let request = traffic::pattern(3000, 1);
    let reply = traffic::pattern(1200, 7);
    traffic::tcp_exchange(net, (net.ns_ip, 9000).into(), &request, &reply)?;
    // The last ACK of the close may trail the exchange by a moment.
    std::thread::sleep(Duration::from_millis(200));
    let counted = link_packets(&net.host_if)? - counted;
    let end = now();
    let done = capture.stop(libc::SIGINT)?;
    ensure!(done.status.success(), "podtrace failed: {}", done.stderr);
    let (captured, lost) = done.summary()?;
    ensure!(lost == 0, "lost {lost}");

    let (host, ns) = (net.host_ip.to_string(), net.ns_ip.to_string());
    let requests = tshark::count(&file, &format!("icmp.type==8 && ip.src=={host}"))?;
    let replies = tshark::count(&file, &format!("icmp.type==0 && ip.src=={ns}"))?;
    ensure!(
        (requests, replies) == (5, 5),
        "ICMP requests/replies {requests}/{replies}, want 5/5"
    );
    ensure!(
        tcp_payload_from(&file, &host)? == request,
        "host→ns TCP payload differs"
    );
    ensure!(
        tcp_payload_from(&file, &ns)? == reply,
        "ns→host TCP payload differs"
    );
    // One connection, opened and closed once each way, nothing sent twice,
    // and nothing else at all.
    for (what, filter, want) in [
        ("SYNs", "tcp.flags.syn==1 && tcp.flags.ack==0".to_owned(), 1),
        ("SYN-ACKs", "tcp.flags.syn==1 && tcp.flags.ack==1".to_owned(), 1),
        ("FINs from the host", format!("tcp.flags.fin==1 && ip.src=={host}"), 1),
        ("FINs from the namespace", format!("tcp.flags.fin==1 && ip.src=={ns}"), 1),
        ("resets", "tcp.flags.reset==1".to_owned(), 0),
        (
            "retransmissions or duplicates",
            "tcp.analysis.retransmission || tcp.analysis.fast_retransmission || tcp.analysis.duplicate_ack".to_owned(),
            0,
        ),
        ("TCP streams beyond the first", "tcp.stream > 0".to_owned(), 0),
        (
            "packets that are neither",
            format!("!(icmp.type==8 || icmp.type==0) && !(tcp.port==9000 && ip.addr=={ns} && ip.addr=={host})"),
            0,
        ),
    ] {
        let got = tshark::count(&file, &filter)?;
        ensure!(got == want, "{got} {what}, want {want}");
    }

    let times = tshark::fields(&file, "", &["frame.time_epoch"])?;
    ensure!(
        times.len() as u64 == captured,
        "file has {} packets, summary says {captured}",
        times.len()
    );
    ensure!(
        captured == counted,
        "captured {captured}, the veth's counters saw {counted}"
    );
    let times: Vec<f64> = times
        .iter()
        .map(|r| r[0].parse())
        .collect::<Result<_, _>>()?;
    ensure!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "timestamps go backwards: {times:?}"
    );
    ensure!(
        times.iter().all(|&t| t >= start - 0.5 && t <= end + 0.5),
        "timestamps outside [{start}, {end}]: {times:?}"
    );
    assert_released(&done, &net.host_if)
}

pub fn iface_icmp_and_tcp_both_directions() -> Result<()> {
    let net = TestNet::new()?;
    icmp_and_tcp(&net, &["-i", &net.host_if])
}

pub fn netns_target() -> Result<()> {
    let net = TestNet::new()?;
    icmp_and_tcp(&net, &["--netns", net.netns_path().to_str().unwrap()])
}

/// --pid, text output: directions are the target's (a ping to it is "In").
pub fn pid_target_text_directions() -> Result<()> {
    let mut net = TestNet::new()?;
    let pid = net.spawn_sleeper()?.to_string();
    icmp_and_tcp(&net, &["--pid", &pid])?;

    let capture = Capture::start(&["capture", "--pid", &pid, "-c", "6"])?;
    net.ping(3, 56)?;
    let done = capture.wait(Duration::from_secs(10))?;
    ensure!(done.status.success(), "{}", done.stderr);
    let lines: Vec<&str> = done.stdout.lines().filter(|l| l.contains("ICMP")).collect();
    ensure!(lines.len() == 6, "want 6 ICMP lines:\n{}", done.stdout);
    let (host, ns) = (net.host_ip, net.ns_ip);
    for line in lines {
        let ok = (line.contains(" In  ")
            && line.contains(&format!("{host} > {ns}: ICMP echo request")))
            || (line.contains(" Out ")
                && line.contains(&format!("{ns} > {host}: ICMP echo reply")));
        ensure!(ok, "wrong direction or text: {line}");
    }
    assert_released(&done, &net.host_if)
}

pub fn snaplen_is_honoured() -> Result<()> {
    let net = TestNet::new()?;
    let dir = tempdir()?;
    let file = dir.path().join("s.pcap");
    let capture = Capture::start(&[
        "capture",
        "-i",
        &net.host_if,
        "-s",
        "64",
        "-w",
        file.to_str().unwrap(),
    ])?;
    net.ping(3, 1000)?;
    let done = capture.stop(libc::SIGINT)?;
    ensure!(done.status.success(), "{}", done.stderr);
    let rows = tshark::fields(&file, "icmp", &["frame.len", "frame.cap_len"])?;
    ensure!(rows.len() == 6, "want 6 ICMP packets, got {}", rows.len());
    for row in rows {
        ensure!(
            row == ["1042", "64"],
            "frame.len/cap_len {row:?}, want 1042/64"
        );
    }
    Ok(())
}

/// Ctrl-C right after a burst: every packet sent before it is in the file.
pub fn sigint_after_burst_loses_nothing() -> Result<()> {
    const BURST: usize = 5000;
    let net = TestNet::new()?;
    let dir = tempdir()?;
    let file = dir.path().join("b.pcap");
    let capture = Capture::start(&["capture", "-i", &net.host_if, "-w", file.to_str().unwrap()])?;
    let sock = UdpSocket::bind((net.host_ip, 0))?;
    let payload = traffic::pattern(32, 3);
    for _ in 0..BURST {
        sock.send_to(&payload, (net.ns_ip, 9999))?;
    }
    // The egress hook ran inside send_to: every datagram is in the ring now.
    let done = capture.stop(libc::SIGINT)?;
    ensure!(done.status.success(), "{}", done.stderr);
    let got = tshark::count(&file, "udp.dstport==9999 && !icmp")?;
    ensure!(
        got == BURST,
        "{got} of {BURST} burst packets in the file ({})",
        done.stderr
    );
    Ok(())
}

pub fn count_and_duration_stop() -> Result<()> {
    let net = TestNet::new()?;
    // No ARP: the first packets are the pings'.
    net.pin_neighbours()?;
    let dir = tempdir()?;
    let file = dir.path().join("c.pcap");
    let capture = Capture::start(&[
        "capture",
        "-i",
        &net.host_if,
        "-c",
        "4",
        "-w",
        file.to_str().unwrap(),
    ])?;
    net.ping(4, 56)?;
    let first = capture.wait(Duration::from_secs(10))?;
    ensure!(
        first.status.success() && first.summary()?.0 == 4,
        "-c 4: {}",
        first.stderr
    );
    // The file holds the first 4 of the 8 packets: two pings and their replies.
    let types = tshark::fields(&file, "", &["icmp.type"])?;
    ensure!(
        types == [["8"], ["0"], ["8"], ["0"]],
        "-c 4 wrote {types:?}"
    );

    let started = std::time::Instant::now();
    let done = run::run(&[
        "capture",
        "-i",
        &net.host_if,
        "--duration",
        "1",
        "-w",
        "/dev/null",
    ])?;
    let took = started.elapsed();
    ensure!(done.status.success(), "{}", done.stderr);
    ensure!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(6),
        "--duration 1 took {took:?}"
    );
    assert_released(&first, &net.host_if)
}

pub fn sigterm_stops_cleanly() -> Result<()> {
    let net = TestNet::new()?;
    let dir = tempdir()?;
    let file = dir.path().join("t.pcap");
    let capture = Capture::start(&["capture", "-i", &net.host_if, "-w", file.to_str().unwrap()])?;
    net.ping(2, 56)?;
    let done = capture.stop(libc::SIGTERM)?;
    ensure!(done.status.success(), "{}", done.stderr);
    ensure!(
        tshark::count(&file, "icmp")? == 4,
        "want 4 ICMP packets after SIGTERM"
    );
    assert_released(&done, &net.host_if)
}

/// The namespace (and so the veth) disappears: podtrace stops by itself and
/// the file stays readable.
pub fn netns_deleted_mid_capture() -> Result<()> {
    let net = TestNet::new()?;
    let dir = tempdir()?;
    let file = dir.path().join("g.pcap");
    let path = net.netns_path();
    let capture = Capture::start(&[
        "capture",
        "--netns",
        path.to_str().unwrap(),
        "-w",
        file.to_str().unwrap(),
    ])?;
    net.ping(2, 56)?;
    let host_if = net.host_if.clone();
    drop(net);
    let done = capture.wait(Duration::from_secs(10))?;
    ensure!(done.status.success(), "{}", done.stderr);
    ensure!(
        done.stderr.contains("is gone"),
        "no 'gone' message: {}",
        done.stderr
    );
    ensure!(tshark::count(&file, "icmp")? == 4, "want 4 ICMP packets");
    assert_released(&done, &host_if)
}

/// A temporary directory removed when the test ends.
pub fn tempdir() -> Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix("podtrace-e2e-")
        .tempdir()
        .context("creating a temp dir")
}
