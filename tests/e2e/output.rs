//! What users do with a capture: pcapng in Wireshark, a live pipe, packets
//! as soon as they come (rotated files and a full disk: `files`).

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::UdpSocket,
    path::Path,
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use pcap_file::pcapng::{
    blocks::interface_statistics::InterfaceStatisticsOption, Block, PcapNgReader,
};
use podtrace_tests::{
    netns::{link_packets, TestNet},
    node::PodSpec,
    run::{self, Capture},
    sh, tshark,
};

use crate::{
    capture::{assert_released, tempdir},
    pods::{endpoint, http_get, TestPod},
};

/// frame.packet_flags_direction as tshark 4.0 prints it.
const INBOUND: &str = "0x00000001";
const OUTBOUND: &str = "0x00000002";

/// `podtrace capture web -w web.pcapng`: the pod is named on the interface,
/// each packet carries its direction, the statistics block its counts.
pub fn pcapng_names_the_pod_and_marks_directions() -> Result<()> {
    let web = TestPod::run(PodSpec::new("web5"))?;
    let dir = tempdir()?;
    let file = dir.path().join("web.pcapng");
    let ep = endpoint()?;
    let capture = Capture::start(&[
        "capture",
        "web5",
        "--runtime-endpoint",
        &ep,
        "-w",
        file.to_str().unwrap(),
    ])?;
    let counted = link_packets(&web.veth())?;
    http_get(web.ip())?;
    http_get(web.ip())?;
    // The connections' last ACKs may trail the answers by a moment.
    std::thread::sleep(Duration::from_millis(200));
    let counted = link_packets(&web.veth())? - counted;
    let done = capture.stop(libc::SIGINT)?;
    ensure!(done.status.success(), "{}", done.stderr);
    let (captured, lost) = done.summary()?;
    // An independent count: the veth's own.
    ensure!(
        captured == counted,
        "captured {captured}, the pod's veth counted {counted}"
    );

    let rows = tshark::fields(
        &file,
        "",
        &["frame.interface_name", "frame.interface_description"],
    )?;
    ensure!(
        rows.len() as u64 == captured,
        "{} frames, summary says {captured}",
        rows.len()
    );
    let want_desc = format!(
        "pod default/web5 (uid {}) via host veth {}",
        web.pod.uid,
        web.veth()
    );
    for row in &rows {
        ensure!(
            row[0] == "default/web5" && row[1].starts_with(&want_desc),
            "interface {row:?}"
        );
    }
    let requests = tshark::fields(
        &file,
        "http.request",
        &["frame.packet_flags_direction", "ip.dst"],
    )?;
    let responses = tshark::fields(
        &file,
        "http.response",
        &["frame.packet_flags_direction", "ip.src"],
    )?;
    let pod = web.ip().to_string();
    ensure!(
        requests.len() == 2 && requests.iter().all(|r| r[..] == [INBOUND, pod.as_str()]),
        "requests {requests:?}"
    );
    ensure!(
        responses.len() == 2 && responses.iter().all(|r| r[..] == [OUTBOUND, pod.as_str()]),
        "responses {responses:?}"
    );
    // Every packet from the pod is outbound, every packet to it inbound.
    let wrong = tshark::count(
        &file,
        &format!("(ip.src=={pod} && frame.packet_flags_direction!=2) || (ip.dst=={pod} && frame.packet_flags_direction!=1)"),
    )?;
    ensure!(wrong == 0, "{wrong} packets with the wrong direction");

    let (recv, drop) = interface_statistics(&file)?;
    ensure!(
        (recv, drop) == (captured, lost),
        "ISB recv/drop {recv}/{drop}, summary {captured}/{lost}"
    );
    assert_released(&done, &web.veth())
}

/// (isb_ifrecv, isb_ifdrop) of the file's statistics block.
pub(crate) fn interface_statistics(file: &Path) -> Result<(u64, u64)> {
    let mut reader = PcapNgReader::new(std::fs::File::open(file)?)?;
    let (mut recv, mut drop) = (None, None);
    while let Some(block) = reader.next_block() {
        if let Block::InterfaceStatistics(isb) = block? {
            for option in isb.options {
                match option {
                    InterfaceStatisticsOption::IsbIfRecv(n) => recv = Some(n),
                    InterfaceStatisticsOption::IsbIfDrop(n) => drop = Some(n),
                    _ => {}
                }
            }
        }
    }
    Ok((
        recv.context("no isb_ifrecv")?,
        drop.context("no isb_ifdrop")?,
    ))
}

/// -Q in / -Q out keep only the stated direction, from the pod's view.
pub fn direction_filter() -> Result<()> {
    let web = TestPod::run(PodSpec::new("web6"))?;
    let ep = endpoint()?;
    let pod = web.ip().to_string();
    let dir = tempdir()?;
    for (q, field, http) in [
        ("in", "ip.dst", "http.request"),
        ("out", "ip.src", "http.response"),
    ] {
        let file = dir.path().join(format!("{q}.pcap"));
        let capture = Capture::start(&[
            "capture",
            "web6",
            "-Q",
            q,
            "--runtime-endpoint",
            &ep,
            "-w",
            file.to_str().unwrap(),
        ])?;
        http_get(web.ip())?;
        http_get(web.ip())?;
        let done = capture.stop(libc::SIGINT)?;
        ensure!(done.status.success(), "-Q {q}: {}", done.stderr);
        ensure!(tshark::count(&file, http)? == 2, "-Q {q}: want 2 {http}");
        let rows = tshark::fields(&file, "ip", &[field])?;
        ensure!(
            !rows.is_empty() && rows.iter().all(|r| r[0] == pod),
            "-Q {q}: {field} not always the pod: {rows:?}"
        );
        assert_released(&done, &web.veth())?;
    }
    Ok(())
}

/// `-w -` streams: a reader sees packets while the capture runs, `| tshark -r -`
/// works, and a reader that goes away ends the capture quietly.
pub fn live_pipe() -> Result<()> {
    let net = TestNet::new()?;
    let (mut capture, mut out) =
        Capture::start_streaming(&["capture", "-i", &net.host_if, "-w", "-"])?;
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        // pcap header (24 bytes), then one record header (16) and its data.
        let mut head = [0u8; 40];
        let got = out.read_exact(&mut head).map(|()| head);
        let _ = tx.send(got);
        out // dropped by the test below: closes the pipe
    });
    net.ping(1, 56)?;
    let head = rx
        .recv_timeout(Duration::from_secs(5))
        .context("no packet on the pipe within 5 s")??;
    ensure!(
        head[..4] == [0x4d, 0x3c, 0xb2, 0xa1],
        "not a nanosecond pcap stream: {:02x?}",
        &head[..4]
    );
    ensure!(
        capture.running(),
        "the packet arrived only after podtrace exited"
    );
    drop(reader.join().unwrap());
    // The next write hits the closed pipe.
    net.ping(2, 56)?;
    let done = capture.wait(Duration::from_secs(10))?;
    ensure!(
        done.status.success(),
        "closed pipe: exit {:?}: {}",
        done.status.code(),
        done.stderr
    );
    ensure!(
        !done.stderr.to_lowercase().contains("broken pipe"),
        "noise: {}",
        done.stderr
    );
    assert_released(&done, &net.host_if)?;

    let pipeline = format!(
        "{} capture -i {} -w - -c 4 | tshark -r - -Y icmp",
        run::bin().display(),
        net.host_if
    );
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(sh(&["sh", "-c", &pipeline]));
    });
    std::thread::sleep(Duration::from_millis(800));
    net.ping(2, 56)?;
    let out = rx
        .recv_timeout(Duration::from_secs(10))
        .context("pipeline did not end")??;
    ensure!(out.lines().count() == 4, "tshark -r - printed:\n{out}");
    Ok(())
}

/// Single datagrams sent after quiet spells, and how long each took to
/// reach the output: more than the idle drain tick (240 ms) apart, so a
/// capture that only drained on its tick would show up to 240 ms.
const QUIET: Duration = Duration::from_millis(700);
const SINGLES: usize = 5;
/// Far above a wakeup's latency, far below the idle tick: five packets
/// that waited for the tick would all land under it by chance once in
/// ~2000 runs ((50/240)^5).
const IMMEDIATE_WITHIN: Duration = Duration::from_millis(50);

/// `--immediate-mode` hands each packet over as soon as the kernel has it;
/// text on a terminal gets that without asking, as with tcpdump.
pub fn immediate_mode() -> Result<()> {
    let net = TestNet::new()?;
    net.pin_neighbours()?;
    let dir = tempdir()?;
    let file = dir.path().join("i.pcap");
    let path = file.to_str().unwrap();
    let capture = Capture::start(&[
        "capture",
        "-i",
        &net.host_if,
        "--immediate-mode",
        "-w",
        path,
    ])?;
    let size = || std::fs::metadata(&file).map_or(0, |m| m.len());
    let mut waits = Vec::new();
    for _ in 0..SINGLES {
        std::thread::sleep(QUIET);
        let before = size();
        waits.push(time_to_output(&net, || size() > before)?);
    }
    let done = capture.stop(libc::SIGINT)?;
    ensure!(done.status.success(), "{}", done.stderr);
    ensure!(
        waits.iter().all(|w| *w < IMMEDIATE_WITHIN),
        "--immediate-mode -w FILE: packets reached the file after {waits:?}"
    );

    // Text on a terminal: script(1) gives podtrace a pty for its stdout.
    let command = format!("{} capture -i {}", run::bin().display(), net.host_if);
    let mut script = Command::new("script")
        .args(["-qfec", &command, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting script(1)")?;
    let (tx, rx) = mpsc::channel();
    let out = script.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let result = (|| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !rx
            .recv_timeout(Duration::from_secs(20))?
            .contains("capturing on")
        {
            ensure!(
                Instant::now() < deadline,
                "podtrace did not start under script(1)"
            );
        }
        let mut waits = Vec::new();
        for _ in 0..SINGLES {
            std::thread::sleep(QUIET);
            while rx.try_recv().is_ok() {}
            waits.push(time_to_output(&net, || rx.try_recv().is_ok())?);
        }
        ensure!(
            waits.iter().all(|w| *w < IMMEDIATE_WITHIN),
            "text on a terminal: lines appeared after {waits:?}"
        );
        Ok(())
    })();
    // Ctrl-C on the terminal: SIGINT for podtrace, which then exits.
    let stopped = script
        .stdin
        .take()
        .map(|mut tty| tty.write_all(b"\x03"))
        .transpose();
    let deadline = Instant::now() + Duration::from_secs(10);
    while script.try_wait()?.is_none() {
        if Instant::now() > deadline {
            let _ = script.kill();
            let _ = script.wait();
            bail!("podtrace under script(1) did not stop on Ctrl-C");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    stopped?;
    result
}

/// Sends one datagram into `net` and waits (polling every 0.5 ms, at most
/// 2 s) until `arrived` says it reached the output.
fn time_to_output(net: &TestNet, mut arrived: impl FnMut() -> bool) -> Result<Duration> {
    let sent = Instant::now();
    send_udp(net, 1, 100)?;
    while !arrived() {
        ensure!(
            sent.elapsed() < Duration::from_secs(2),
            "the packet did not reach the output in 2 s"
        );
        std::thread::sleep(Duration::from_micros(500));
    }
    Ok(sent.elapsed())
}

pub(crate) fn send_udp(net: &TestNet, count: usize, size: usize) -> Result<()> {
    let sock = UdpSocket::bind((net.host_ip, 0))?;
    let payload = vec![0x5a; size];
    for _ in 0..count {
        sock.send_to(&payload, (net.ns_ip, 9999))?;
    }
    Ok(())
}
