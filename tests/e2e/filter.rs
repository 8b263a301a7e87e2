//! tcpdump filter expressions (issue 6): podtrace must select exactly the
//! packets `tcpdump -r unfiltered.pcap EXPR` selects, count what it rejects,
//! and refuse bad expressions before attaching anything.
//!
//! The differential tests run one unfiltered podtrace and one per expression
//! side by side on the same veth (TCX chains them), all started before the
//! traffic and stopped after it settles, so every instance sees the same
//! packets; the unfiltered file then gives tcpdump's answer.

use std::{
    net::Ipv6Addr,
    net::UdpSocket,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use aya::programs::{SchedClassifier, TcAttachType};
use etherparse::PacketBuilder;
use podtrace_tests::{
    netns::TestNet,
    pcap,
    run::{self, Capture, Finished},
    traffic, vlan,
};

use crate::{
    capture::{assert_nothing_attached, assert_released, tempdir},
    filter_engines::{ipip, with_ah, with_ip6_extensions},
};

/// Expressions checked against tcpdump; `{ns}`, `{host}`, `{ns6}`, `{host6}`,
/// `{ns_mac}` and `{host_mac}` are replaced with the test net's values.
pub const EXPRESSIONS: &[&str] = &[
    "host {ns}",
    "src host {host}",
    "dst host {ns} and not icmp",
    "net 10.246.0.0/16",
    "not net 10.0.0.0/8",
    "port 9000",
    "tcp port 9000 and not host 10.245.0.1",
    "udp port 7001",
    "portrange 7000-7010",
    "udp dst portrange 5000-7001",
    "src port 9000 or dst port 53",
    "tcp",
    "udp",
    "icmp",
    "arp",
    "ip",
    "ip6",
    "icmp6",
    "vlan",
    "vlan and udp",
    "ip proto 1 or ip6 and udp",
    "ether proto 0x0806",
    "ether broadcast",
    "ether host {host_mac}",
    "ether src {ns_mac} and not ip6",
    "ether[0] & 1 != 0",
    "tcp[tcpflags] & tcp-syn != 0",
    "tcp[tcpflags] & (tcp-fin|tcp-rst) != 0 and src host {ns}",
    "tcp[tcpflags] == tcp-ack",
    "icmp[icmptype] == icmp-echo",
    "icmp[icmptype] == icmp-echoreply or icmp[icmptype] == icmp-unreach",
    "ip[8] < 65",
    "ip[8] == 64 and ip[2:2] > 1000",
    "ip[6:2] & 0x1fff = 0 and udp",
    "len > 100",
    "greater 2000",
    "less 80",
    "len - 14 >= 1000 or len * 2 < 130",
    "len / 3 > 30 and len % 2 == 0",
    "(len >> 1) & 0x7 == 3 or (len << 2) ^ 0x55 > 4000",
    // Division by zero (X = 0 for TCP) rejects the packet, as in libpcap.
    "ip and len / (ip[9] - 6) != 123456",
    // Payload loads through X (IND), some past the linear part of GSO packets.
    "tcp[((tcp[12:1] & 0xf0) >> 2):4] = 0x47455420",
    "tcp[1500:4] != 0",
    "udp[8:2] = 0x0001",
    // Beyond the end of every packet: out-of-bounds loads reject.
    "ip[60000] = 0 or ether[70000:4] = 0",
    "(udp or icmp) and src host {ns}",
    "not (host {host} and tcp)",
    "not arp and not ip6 and not udp",
    "ip6 host {ns6}",
    "ip6 and (udp port 7001 or tcp port 9000)",
    "ip6[6] == 58 and ip6[40] == 128",
];

/// `protochain` (issue 15): libpcap compiles a loop over extension headers,
/// which only the interpreter runs: `auto` falls back to it, `native`
/// refuses the filter.
const PROTOCHAIN: &[&str] = &[
    "ip protochain 6",
    "ip protochain 17",
    "ip6 protochain 17",
    "ip6 protochain 58",
    "protochain 1",
    "ip protochain 17 and udp port 7001",
    "not ip6 protochain 6",
];

/// `--filter-engine` values; `native` fails rather than fall back.
const ENGINES: [&str; 2] = ["native", "interpreter"];

/// Instances running at once; beyond this, the traffic is repeated.
const BATCH: usize = 18;

/// Every expression above, against tcpdump, on IPv4, IPv6 and ARP traffic.
pub fn matches_tcpdump_on_mixed_traffic() -> Result<()> {
    let net = TestNet::new()?;
    let v6 = net.enable_ipv6()?;
    // Let its MLD reports fade out before the captures start (~2 s).
    std::thread::sleep(Duration::from_secs(3));
    let vars = Vars::of(&net, v6)?;
    let expressions: Vec<String> = EXPRESSIONS.iter().map(|e| vars.fill(e)).collect();
    ensure!(expressions.len() >= 30);
    // Both kernel engines, each on every expression; each expression must
    // meet packets it selects and packets it rejects, or a filter that kept
    // nothing (or everything) would agree with tcpdump by accident.
    for engine in ENGINES {
        for batch in expressions.chunks(BATCH) {
            let selected = differential(&net, Some(v6), batch, engine)?;
            selects_and_rejects(&selected)?;
        }
    }
    // protochain walks extension headers, which the mixed traffic lacks:
    // some packets with chains of them too, from the namespace.
    let looping: Vec<String> = PROTOCHAIN.iter().map(|e| e.to_string()).collect();
    let chains = header_chains(&net, v6)?;
    let traffic = || {
        traffic::on_one_cpu(|| {
            traffic::mixed(&net, Some(v6))?;
            net.within(|| vlan::send("eth0", &chains))?
        })
    };
    for engine in ["auto", "interpreter"] {
        let selected = differential_on(&net.host_if, &looping, engine, &traffic)?;
        selects_and_rejects(&selected)?;
    }
    // (With --duration, so that a podtrace that accepts it still ends.)
    let native = run::run(&[
        "capture",
        "-i",
        &net.host_if,
        "--filter-engine",
        "native",
        "--duration",
        "2",
        "-w",
        "/dev/null",
        PROTOCHAIN[0],
    ])?;
    ensure!(
        native.status.code() == Some(1)
            && native.stderr.lines().count() == 1
            && native.stderr.contains("loops")
            && native.stderr.contains("only the interpreter"),
        "--filter-engine native {:?}: {:?}, {}",
        PROTOCHAIN[0],
        native.status,
        native.stderr
    );
    Ok(())
}

/// Every (expression, selected, of all) selects some packets and rejects some.
fn selects_and_rejects(selected: &[(String, usize, usize)]) -> Result<()> {
    let one_sided: Vec<String> = selected
        .iter()
        .filter(|(_, n, all)| *n == 0 || n == all)
        .map(|(expr, n, all)| format!("{expr:?} selected {n} of {all}"))
        .collect();
    ensure!(
        one_sided.is_empty(),
        "the traffic does not exercise these both ways:\n{}",
        one_sided.join("\n")
    );
    Ok(())
}

/// UDP from the namespace to the host behind IPv4 AH headers and IPv6
/// extension header chains (the host has no SA for them: it drops the AH
/// ones; the UDP ones go to a closed port).
fn header_chains(net: &TestNet, (host6, ns6): (Ipv6Addr, Ipv6Addr)) -> Result<Vec<Vec<u8>>> {
    let (host_mac, ns_mac) = (vlan::mac(&net.host_mac()?)?, vlan::mac(&net.ns_mac()?)?);
    let mut udp4 = Vec::new();
    PacketBuilder::ethernet2(ns_mac, host_mac)
        .ipv4(net.ns_ip.octets(), net.host_ip.octets(), 64)
        .udp(7005, 7003)
        .write(&mut udp4, &traffic::pattern(40, 5))?;
    let mut udp6 = Vec::new();
    PacketBuilder::ethernet2(ns_mac, host_mac)
        .ipv6(ns6.octets(), host6.octets(), 64)
        .udp(7005, 7003)
        .write(&mut udp6, &traffic::pattern(40, 6))?;
    Ok(vec![
        with_ah(&udp4, 1),
        with_ah(&udp4, 3),
        with_ah(&ipip(&udp4), 2),
        with_ip6_extensions(&udp6, &[60]),
        with_ip6_extensions(&udp6, &[0, 60, 43, 44, 60]),
    ])
}

/// A filter of 100+ classic-BPF instructions loads and matches tcpdump.
pub fn long_filter_loads_and_matches() -> Result<()> {
    let net = TestNet::new()?;
    let mut hosts: Vec<String> = (100..130).map(|i| format!("host 10.246.250.{i}")).collect();
    hosts.push(format!("host {}", net.ns_ip));
    let long = hosts.join(" or ");
    let dump = run::run(&["capture", "-d", "-i", &net.host_if, &long])?;
    ensure!(dump.status.success(), "-d failed: {}", dump.stderr);
    let insns = dump.stdout.lines().count();
    ensure!(insns >= 100, "only {insns} instructions:\n{}", dump.stdout);
    // And one that is not about addresses at all, with an instruction per port.
    let ports: Vec<String> = (7000..7040).map(|p| format!("udp port {p}")).collect();
    let filters = [long, format!("tcp or {}", ports.join(" or "))];
    for engine in ENGINES {
        selects_and_rejects(&differential(&net, None, &filters, engine)?)?;
    }
    Ok(())
}

/// A filter of thousands of terms (a generated block list) keeps libpcap's
/// optimizer busy for minutes (issue 15). podtrace says so after a few
/// seconds, SIGINT, SIGTERM or SIGHUP stops it at once with one line, and `--duration` counts
/// the compilation: it ends on time, having attached nothing.
pub fn huge_filter_can_be_stopped() -> Result<()> {
    let net = TestNet::new()?;
    let dir = tempdir()?;
    let file = dir.path().join("blocklist");
    let hosts: Vec<String> = (0..3000)
        .map(|i| format!("host 10.{}.{}.{}", 100 + i / 65536, i / 256 % 256, i % 256))
        .collect();
    std::fs::write(&file, hosts.join(" or\n"))?;
    let file = file.to_str().unwrap();
    let base = ["capture", "-i", &net.host_if, "-w", "/dev/null", "-F", file];

    let mut run = Compiling::start(&base)?;
    let note = run.line(Duration::from_secs(10))?;
    ensure!(
        note.starts_with("podtrace: still compiling the filter after 3 s"),
        "{note:?}"
    );
    // SAFETY: signalling our own child by pid.
    unsafe { libc::kill(run.child.id() as i32, libc::SIGINT) };
    let stopped = Instant::now();
    let (status, rest) = run.finish(Duration::from_secs(3))?;
    ensure!(
        status.code() == Some(1)
            && rest
                == [
                    "podtrace: SIGINT while libpcap was compiling the filter; nothing was captured"
                ],
        "after SIGINT: {status}, {rest:?} ({:?} later)",
        stopped.elapsed()
    );
    // SIGTERM (kubectl delete, systemd) and SIGHUP (a dropped SSH session)
    // stop it the same way, before the note as well as after it.
    for (signal, name) in [(libc::SIGTERM, "SIGTERM"), (libc::SIGHUP, "SIGHUP")] {
        let run = Compiling::start(&base)?;
        std::thread::sleep(Duration::from_secs(1));
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(run.child.id() as i32, signal) };
        let stopped = Instant::now();
        let (status, lines) = run.finish(Duration::from_secs(3))?;
        let expected = format!(
            "podtrace: {name} while libpcap was compiling the filter; nothing was captured"
        );
        ensure!(
            status.code() == Some(1) && lines == [expected],
            "after {name}: {status}, {lines:?} ({:?} later)",
            stopped.elapsed()
        );
    }

    let started = Instant::now();
    let mut args = base.to_vec();
    args.extend(["--duration", "4"]);
    let run = Compiling::start(&args)?;
    let (status, lines) = run.finish(Duration::from_secs(8))?;
    let took = started.elapsed();
    ensure!(
        status.code() == Some(1)
            && took >= Duration::from_secs(4)
            && took < Duration::from_secs(6)
            && lines.len() == 2
            && lines[1].starts_with("podtrace: --duration ran out after "),
        "--duration 4: {status} after {took:?}: {lines:?}"
    );
    for hook in [TcAttachType::Ingress, TcAttachType::Egress] {
        let (_, programs) = SchedClassifier::query_tcx(&net.host_if, hook)?;
        ensure!(programs.is_empty(), "something attached to {}", net.host_if);
    }
    Ok(())
}

/// podtrace started with stderr read line by line; killed if left running.
struct Compiling {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Compiling {
    fn start(args: &[&str]) -> Result<Self> {
        use std::io::BufRead;
        let mut child = Command::new(run::bin())
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        let err = child.stderr.take().context("stderr")?;
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Ok(Self { child, lines })
    }

    /// The next line on stderr, within `timeout`.
    fn line(&mut self, timeout: Duration) -> Result<String> {
        self.lines
            .recv_timeout(timeout)
            .with_context(|| format!("no line on stderr within {timeout:?}"))
    }

    /// Its exit status and the rest of stderr, once it exits within `timeout`.
    fn finish(mut self, timeout: Duration) -> Result<(std::process::ExitStatus, Vec<String>)> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                std::thread::sleep(Duration::from_millis(50));
                return Ok((status, self.lines.try_iter().collect()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!(
            "still running after {timeout:?}; stderr so far: {:?}",
            self.lines.try_iter().collect::<Vec<_>>()
        )
    }
}

impl Drop for Compiling {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The filtered-out counter is exactly the number of packets not matching.
pub fn filtered_counter_counts_rejected_packets() -> Result<()> {
    const MATCHING: usize = 50;
    const OTHER_PORT: usize = 30;
    const FROM_NS: usize = 12;
    let net = TestNet::new()?;
    // No ARP on the wire (and IPv6 is off): only the datagrams below.
    net.pin_neighbours()?;
    let dir = tempdir()?;
    let file = dir.path().join("f.pcap");
    let capture = Capture::start(&[
        "capture",
        "-i",
        &net.host_if,
        "-w",
        file.to_str().unwrap(),
        "udp",
        "port",
        "7001",
    ])?;
    // Receivers everywhere, so no ICMP port-unreachable joins in.
    let receivers = net.within(|| [7001, 7002].map(|port| UdpSocket::bind((net.ns_ip, port))))?;
    let receivers: Vec<UdpSocket> = receivers.into_iter().collect::<Result<_, _>>()?;
    let host_rx = UdpSocket::bind((net.host_ip, 7003))?;
    let sock = UdpSocket::bind((net.host_ip, 0))?;
    // Interleaved: 5 matching of every 8.
    const _: () = assert!(MATCHING * 8 == (MATCHING + OTHER_PORT) * 5);
    for i in 0..MATCHING + OTHER_PORT {
        let port = if i % 8 < 5 { 7001 } else { 7002 };
        sock.send_to(&[i as u8; 20], (net.ns_ip, port))?;
    }
    net.within(|| -> Result<()> {
        let s = UdpSocket::bind((net.ns_ip, 0))?;
        for i in 0..FROM_NS {
            s.send_to(&[i as u8; 30], (net.host_ip, 7003))?;
        }
        Ok(())
    })??;
    std::thread::sleep(Duration::from_millis(200));
    let done = capture.stop(libc::SIGINT)?;
    drop((receivers, host_rx));
    ensure!(done.status.success(), "{}", done.stderr);
    let (captured, filtered, lost) = done.summary_filtered()?;
    let want_filtered = (OTHER_PORT + FROM_NS) as u64;
    ensure!(
        (captured, filtered, lost) == (MATCHING as u64, Some(want_filtered), 0),
        "want {MATCHING} captured, {want_filtered} filtered, 0 lost: {}",
        done.stderr
    );
    let packets = pcap::read(&file)?;
    ensure!(
        packets.len() == MATCHING,
        "{} packets in the file",
        packets.len()
    );
    assert_released(&done, &net.host_if)
}

/// A bad expression: libpcap's message on one line, exit 2, nothing loaded.
pub fn invalid_filter_attaches_nothing() -> Result<()> {
    let net = TestNet::new()?;
    let dir = tempdir()?;
    let file = dir.path().join("f");
    std::fs::write(&file, "udp # comment\n")?;
    let file = file.to_str().unwrap();
    let cases: [(&[&str], &str); 4] = [
        (
            &["tcp", "prt", "80"],
            "podtrace: invalid filter expression \"tcp prt 80\": syntax error",
        ),
        (
            &["port 99999"],
            "podtrace: invalid filter expression \"port 99999\": illegal port number 99999 > 65535",
        ),
        (
            &["-F", file, "tcp"],
            "podtrace: a filter expression was given both with -F and on the command line (\"tcp\")",
        ),
        (
            &["-F", "/nonexistent/filter"],
            "podtrace: cannot read filter file /nonexistent/filter: No such file or directory (os error 2)",
        ),
    ];
    for (filter, want) in cases {
        let since = run::last_prog_id()?;
        let mut args = vec!["capture", "-i", &net.host_if, "-w", "/dev/null"];
        args.extend_from_slice(filter);
        let done = run::run(&args)?;
        ensure!(
            done.status.code() == Some(2) && done.stderr == format!("{want}\n"),
            "{args:?}: want exit 2 and {want:?}; got {:?}: {:?}",
            done.status.code(),
            done.stderr
        );
        assert_nothing_attached(&net.host_if, since)?;
    }
    Ok(())
}

/// -d/-dd/-ddd print what tcpdump prints, need no root and attach nothing.
pub fn dump_matches_tcpdump_unprivileged() -> Result<()> {
    let expressions = [
        "tcp port 8080 and not host 10.245.0.1",
        "icmp[icmptype] == icmp-echo or arp",
        "vlan and ip6",
        "",
    ];
    for expr in expressions {
        for (flag, snaplen) in [("-d", "0"), ("-dd", "96"), ("-ddd", "262144")] {
            let tcpdump = Command::new("tcpdump")
                .args([flag, "-s", snaplen, expr])
                .output()?;
            ensure!(tcpdump.status.success(), "tcpdump {flag} {expr:?} failed");
            // As nobody, without capabilities, and naming no real target.
            let ours = Command::new("setpriv")
                .args([
                    "--reuid=65534",
                    "--regid=65534",
                    "--clear-groups",
                    "--inh-caps=-all",
                ])
                .arg(run::bin())
                .args(["capture", flag, "-s", snaplen, "--pid", "4194400", expr])
                .output()?;
            ensure!(
                ours.status.success() && ours.stdout == tcpdump.stdout,
                "podtrace {flag} -s {snaplen} {expr:?} differs from tcpdump:\n{}\nvs\n{}\n{}",
                String::from_utf8_lossy(&ours.stdout),
                String::from_utf8_lossy(&tcpdump.stdout),
                String::from_utf8_lossy(&ours.stderr),
            );
        }
    }
    Ok(())
}

/// Captures the test traffic with no filter and with each of `expressions`
/// at once, and checks each filtered file against tcpdump on the
/// unfiltered ones. Returns how many packets each expression selected, of
/// how many (tcpdump on the inner unfiltered capture).
///
/// Captures start one after another, so a stray packet (an IPv6 MLD report,
/// say) can reach some and not others. Hence two unfiltered captures: OUTER
/// starts first and stops last, INNER starts last and stops first, so each
/// filtered capture's window lies between theirs. Its packets must then be,
/// in order and byte for byte, some of what tcpdump selects from OUTER (no
/// packet extra, twice or out of order), holding all tcpdump selects from
/// INNER as one contiguous run. Not a contiguous run of OUTER's: a capture's
/// two hooks attach ~12 ms apart (a TCX attach waits an RCU grace period),
/// so at its edges a stray packet at one hook can be in it while a later
/// one at the other hook is not. Without stray packets (the usual case)
/// all three are equal.
fn differential(
    net: &TestNet,
    v6: Option<(Ipv6Addr, Ipv6Addr)>,
    expressions: &[String],
    engine: &str,
) -> Result<Vec<(String, usize, usize)>> {
    differential_on(&net.host_if, expressions, engine, &|| {
        traffic::on_one_cpu(|| traffic::mixed(net, v6))
    })
}

/// [`differential`] on interface `iface`, with the traffic `traffic` makes.
pub fn differential_on(
    iface: &str,
    expressions: &[String],
    engine: &str,
    traffic: &dyn Fn() -> Result<()>,
) -> Result<Vec<(String, usize, usize)>> {
    let dir = tempdir()?;
    let file = |name: &str| dir.path().join(format!("{name}.pcap"));
    let start = |name: &str, filter: Option<&str>| -> Result<Capture> {
        let out = file(name);
        // 4 MiB: room for the bulk transfer's 64 KB packets in every instance.
        let mut args = vec!["capture", "-i", iface, "-B", "4096"];
        args.extend(["-w", out.to_str().unwrap()]);
        if let Some(expr) = filter {
            args.extend(["--filter-engine", engine, "--", expr]);
        }
        Capture::start(&args).with_context(|| format!("starting {args:?}"))
    };
    let outer = start("outer", None)?;
    let filtered: Vec<Capture> = expressions
        .iter()
        .enumerate()
        .map(|(i, expr)| start(&i.to_string(), Some(expr)))
        .collect::<Result<_>>()?;
    let inner = start("inner", None)?;

    traffic()?;
    std::thread::sleep(Duration::from_millis(300));

    let inner = inner.stop(libc::SIGINT)?;
    for c in &filtered {
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(c.pid() as i32, libc::SIGINT) };
    }
    let filtered: Vec<Finished> = filtered
        .into_iter()
        .map(|c| c.wait(Duration::from_secs(20)))
        .collect::<Result<_>>()?;
    let outer = outer.stop(libc::SIGINT)?;
    for (d, has_filter) in [(&outer, false), (&inner, false)]
        .into_iter()
        .chain(filtered.iter().map(|d| (d, true)))
    {
        ensure!(d.status.success(), "a capture failed: {}", d.stderr);
        let (_, filtered, lost) = d.summary_filtered()?;
        ensure!(lost == 0, "a capture lost {lost}: {}", d.stderr);
        ensure!(filtered.is_some() == has_filter, "summary: {}", d.stderr);
    }
    let all = pcap::read(&file("inner"))?;
    ensure!(all.len() > 30, "too little traffic captured: {}", all.len());

    let mut failures = Vec::new();
    let mut selected = Vec::new();
    for (i, expr) in expressions.iter().enumerate() {
        let select = |name: &str| {
            let out = dir.path().join(format!("{name}-{i}.want"));
            tcpdump_select(&file(name), expr, &out)
        };
        let (most, least) = (select("outer")?, select("inner")?);
        let got = pcap::read(&file(&i.to_string()))?;
        selected.push((expr.clone(), least.len(), all.len()));
        if !(is_subsequence(&got, &most) && is_run_of(&least, &got)) {
            failures.push(format!(
                "{expr:?} ({engine}): podtrace kept {} packets, tcpdump {} (inner) / {} (outer){}",
                got.len(),
                least.len(),
                most.len(),
                first_difference(&got, &least)
            ));
        }
    }
    if !failures.is_empty() {
        bail!(
            "{} of {} filters differ from tcpdump ({} packets in all):\n{}",
            failures.len(),
            expressions.len(),
            all.len(),
            failures.join("\n")
        );
    }
    assert_released(&outer, iface)?;
    Ok(selected)
}

/// Whether `part` equals some contiguous run of `whole`.
fn is_run_of(part: &[pcap::Packet], whole: &[pcap::Packet]) -> bool {
    part.is_empty() || whole.windows(part.len()).any(|w| w == part)
}

/// Whether `part` is `whole` with some packets left out, order kept.
fn is_subsequence(part: &[pcap::Packet], whole: &[pcap::Packet]) -> bool {
    let mut rest = whole.iter();
    part.iter().all(|p| rest.any(|w| w == p))
}

fn first_difference(got: &[pcap::Packet], want: &[pcap::Packet]) -> String {
    match got.iter().zip(want).position(|(a, b)| a != b) {
        Some(i) => format!(", first difference at packet {i}"),
        None => String::new(),
    }
}

/// The packets of `file` that `tcpdump -r file EXPR` selects.
fn tcpdump_select(file: &Path, expr: &str, out: &Path) -> Result<Vec<pcap::Packet>> {
    let status = Command::new("tcpdump")
        .arg("-r")
        .arg(file)
        .arg("-w")
        .arg(out)
        .arg(expr)
        .output()?;
    ensure!(
        status.status.success(),
        "tcpdump -r … {expr:?}: {}",
        String::from_utf8_lossy(&status.stderr)
    );
    pcap::read(out)
}

/// Placeholders of [`EXPRESSIONS`].
pub struct Vars(pub Vec<(&'static str, String)>);

impl Vars {
    fn of(net: &TestNet, (host6, ns6): (Ipv6Addr, Ipv6Addr)) -> Result<Self> {
        Ok(Self(vec![
            ("{ns}", net.ns_ip.to_string()),
            ("{host}", net.host_ip.to_string()),
            ("{ns6}", ns6.to_string()),
            ("{host6}", host6.to_string()),
            ("{ns_mac}", net.ns_mac()?),
            ("{host_mac}", net.host_mac()?),
        ]))
    }

    pub fn fill(&self, expr: &str) -> String {
        self.0
            .iter()
            .fold(expr.to_owned(), |e, (name, value)| e.replace(name, value))
    }
}
