//! Text output on real traffic, with tcpdump as the oracle: one podtrace
//! prints text while another, chained beside it on the same veth, writes a
//! pcap file; `tcpdump -n -r` of that file must print the same lines, the
//! direction column left out. Only the times may differ, by microseconds:
//! each instance's program stamps the packet as it runs. (The unit tests compare crafted frames; this
//! is what a kernel really sends: Linux's TCP options, ARP, neighbour
//! discovery, ICMP errors.)

use std::{
    net::{IpAddr, TcpStream, UdpSocket},
    process::Command,
    time::Duration,
};

use anyhow::{ensure, Context, Result};
use podtrace_tests::{netns::TestNet, run::Capture, sh, traffic};

use crate::capture::{assert_released, tempdir};

pub fn text_matches_tcpdump_on_real_traffic() -> Result<()> {
    let net = TestNet::new()?;
    let (host6, ns6) = net.enable_ipv6()?;
    // Let the MLD reports of IPv6 coming up pass before the captures start.
    std::thread::sleep(Duration::from_secs(3));
    let dir = tempdir()?;
    let file = dir.path().join("t.pcap");
    let text = Capture::start(&["capture", "-i", &net.host_if])?;
    let pcap = Capture::start(&["capture", "-i", &net.host_if, "-w", file.to_str().unwrap()])?;

    sh(&["ip", "neigh", "flush", "dev", &net.host_if])?;
    net.ping(2, 56)?;
    sh(&[
        "busybox",
        "ping6",
        "-q",
        "-c",
        "2",
        "-W",
        "2",
        &ns6.to_string(),
    ])?;
    let (host, ns) = (IpAddr::V4(net.host_ip), IpAddr::V4(net.ns_ip));
    traffic::tcp_exchange(
        &net,
        (ns, 9000).into(),
        &traffic::pattern(5000, 1),
        &traffic::pattern(700, 2),
    )?;
    traffic::tcp_exchange(&net, (IpAddr::V6(ns6), 9000).into(), b"v6 request", b"ok")?;
    // Nobody listens on 9001 (a reset), nor on UDP 9998 (ICMP unreachable).
    let _ = TcpStream::connect_timeout(&(ns, 9001).into(), Duration::from_secs(2));
    let sock = UdpSocket::bind((host, 0))?;
    sock.send_to(b"to nobody", (ns, 9998))?;
    let sock6 = UdpSocket::bind((IpAddr::V6(host6), 0))?;
    sock6.send_to(b"to nobody, v6", (IpAddr::V6(ns6), 9998))?;
    std::thread::sleep(Duration::from_millis(300));

    let pcap = pcap.stop(libc::SIGINT)?;
    let text = text.stop(libc::SIGINT)?;
    for done in [&pcap, &text] {
        ensure!(done.status.success(), "{}", done.stderr);
        ensure!(done.summary()?.1 == 0, "lost packets: {}", done.stderr);
    }
    let out = Command::new("tcpdump")
        .args(["-n", "-r"])
        .arg(&file)
        .output()
        .context("running tcpdump")?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // tcpdump's hex dumps of what it does not decode are left out.
    let want: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with('\t'))
        .map(|l| l.trim_end().to_owned())
        .collect();
    let got: Vec<String> = text
        .stdout
        .lines()
        .map(|l| {
            let (time, rest) = l.split_at(16);
            let rest = rest
                .strip_prefix("In  ")
                .or_else(|| rest.strip_prefix("Out "))
                .with_context(|| format!("no direction in {l:?}"))?;
            Ok(format!("{time}{rest}").trim_end().to_owned())
        })
        .collect::<Result<_>>()?;
    ensure!(want.len() > 20, "too little traffic: {want:?}");
    let differences: Vec<String> = got
        .iter()
        .zip(&want)
        .filter(|(g, w)| !same_line(g, w))
        .map(|(g, w)| format!("podtrace {g}\ntcpdump  {w}"))
        .collect();
    ensure!(
        got.len() == want.len() && differences.is_empty(),
        "podtrace printed {} lines, tcpdump {}; differing:\n{}",
        got.len(),
        want.len(),
        differences.join("\n")
    );
    // What the lines must show at all: each kind of packet sent.
    for needle in [
        "ARP, Request who-has",
        "ICMP echo request, id",
        "ICMP6, echo request, id",
        "ICMP6, neighbor solicitation, who has",
        "Flags [S], seq",
        "options [mss",
        "Flags [R.], seq 0, ack ",
        "udp port 9998 unreachable",
        "unreachable port",
    ] {
        ensure!(
            got.iter().any(|l| l.contains(needle)),
            "no {needle:?} in:\n{}",
            got.join("\n")
        );
    }
    assert_released(&text, &net.host_if)?;
    assert_released(&pcap, &net.host_if)
}

/// Equal but for the times (`HH:MM:SS.ffffff `), which may differ by less
/// than a millisecond.
fn same_line(a: &str, b: &str) -> bool {
    let time = |line: &str| -> Option<(f64, String)> {
        let (t, rest) = line.split_once(' ')?;
        let mut parts = t.split(':').map(str::parse::<f64>);
        let (h, m, s) = (
            parts.next()?.ok()?,
            parts.next()?.ok()?,
            parts.next()?.ok()?,
        );
        (t.len() == 15).then(|| (h * 3600.0 + m * 60.0 + s, rest.to_owned()))
    };
    match (time(a), time(b)) {
        (Some((ta, ra)), Some((tb, rb))) => ra == rb && (ta - tb).abs() < 0.001,
        _ => false,
    }
}
