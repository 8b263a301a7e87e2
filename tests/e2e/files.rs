//! Rotated files and a full disk: which packets each file holds, to the
//! byte, computed from the datagrams sent.

use std::{
    net::UdpSocket,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{ensure, Result};
use podtrace_tests::{
    netns::TestNet,
    pcap,
    run::{self, Capture},
    sh, tshark,
};

use crate::{
    capture::{assert_released, tempdir},
    errors::expect_error,
    output::send_udp,
};

fn files_in(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .map(|e| Ok(e?.path()))
        .collect::<Result<_>>()?;
    files.sort();
    Ok(files)
}

/// Captures `SENT` UDP datagrams of `DATAGRAM` bytes, each starting with
/// its index, into `dir/NAME` with the rotation options `rotate`; returns
/// the files made, sorted. Those datagrams are the only traffic: no ARP
/// (neighbours pinned), no ICMP (a receiver is bound), no IPv6.
fn rotated_capture(net: &TestNet, dir: &Path, name: &str, rotate: &[&str]) -> Result<Vec<PathBuf>> {
    net.pin_neighbours()?;
    let receiver = net.within(|| UdpSocket::bind((net.ns_ip, 9999)))??;
    let sub = dir.join(format!("{name}.d"));
    std::fs::create_dir(&sub)?;
    let base = sub.join(name);
    let mut args = vec!["capture", "-i", &net.host_if, "-w", base.to_str().unwrap()];
    args.extend_from_slice(rotate);
    let capture = Capture::start(&args)?;
    let sock = UdpSocket::bind((net.host_ip, 0))?;
    for i in 0..SENT as u32 {
        let mut payload = vec![0x5a; DATAGRAM];
        payload[..4].copy_from_slice(&i.to_be_bytes());
        sock.send_to(&payload, (net.ns_ip, 9999))?;
    }
    let done = capture.stop(libc::SIGINT)?;
    drop(receiver);
    ensure!(done.status.success(), "{rotate:?}: {}", done.stderr);
    ensure!(
        done.summary()? == (SENT as u64, 0),
        "{rotate:?}: {}",
        done.stderr
    );
    files_in(&sub)
}

/// The datagram indexes in `file`, checking each packet is a whole datagram
/// of the test (tshark must also read the file).
fn indexes(file: &Path) -> Result<Vec<u32>> {
    let packets = pcap::read(file)?;
    ensure!(
        tshark::count(file, "udp.dstport==9999")? == packets.len(),
        "tshark disagrees about {}",
        file.display()
    );
    packets
        .iter()
        .map(|p| {
            ensure!(
                p.data.len() == RECORD - 16 && p.data[36..38] == 9999u16.to_be_bytes(),
                "{}: a packet that is not a test datagram",
                file.display()
            );
            Ok(u32::from_be_bytes(p.data[42..46].try_into()?))
        })
        .collect()
}

fn names(files: &[PathBuf]) -> Vec<String> {
    files
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into())
        .collect()
}

const SENT: usize = 3000;
/// UDP payload bytes of each datagram.
const DATAGRAM: usize = 1000;
/// Bytes of a datagram's pcap record: its header, Ethernet, IPv4, UDP, data.
const RECORD: usize = 16 + 14 + 20 + 8 + DATAGRAM;
/// A pcap file header.
const PCAP_HEADER: usize = 24;

/// -C 1 (million bytes): like tcpdump, a file takes packets until it is
/// over the limit, and the next packet opens the next file.
fn per_file(limit: usize) -> usize {
    (limit - PCAP_HEADER) / RECORD + 1
}

/// -C (size), -C -W (ring), -G (time, strftime names), -G -W (stop after N).
pub fn rotation() -> Result<()> {
    let net = TestNet::new()?;
    let dir = tempdir()?;

    // 946 datagrams fill a file past 1,000,000 bytes: 946, 946, 946, 162.
    let per = per_file(1_000_000);
    let sizes: Vec<usize> = (0..SENT)
        .step_by(per)
        .map(|first| (SENT - first).min(per))
        .collect();
    let files = rotated_capture(&net, dir.path(), "r.pcap", &["-C", "1"])?;
    let want_names: Vec<String> = (0..sizes.len())
        .map(|i| match i {
            0 => "r.pcap".to_owned(),
            i => format!("r.pcap{i}"),
        })
        .collect();
    ensure!(names(&files) == want_names, "files {:?}", names(&files));
    let mut next = 0;
    for (f, &n) in files.iter().zip(&sizes) {
        let size = std::fs::metadata(f)?.len() as usize;
        ensure!(
            size == PCAP_HEADER + n * RECORD,
            "{} is {size} bytes, want {n} datagrams",
            f.display()
        );
        let got = indexes(f)?;
        ensure!(
            got == (next..next + n as u32).collect::<Vec<_>>(),
            "{} holds datagrams {:?}..{:?}, want {next}..{}",
            f.display(),
            got.first(),
            got.last(),
            next + n as u32
        );
        next += n as u32;
    }

    // A ring of 2: r0, r1, r0, r1 over the four parts; the last two stay.
    let files = rotated_capture(&net, dir.path(), "r", &["-C", "1", "-W", "2"])?;
    ensure!(
        names(&files) == ["r0", "r1"],
        "ring of 2: {:?}",
        names(&files)
    );
    let parts = sizes.len();
    let first_kept = (parts - 2) * per;
    let want_r0: Vec<u32> = (first_kept as u32..(first_kept + per) as u32).collect();
    let want_r1: Vec<u32> = ((first_kept + per) as u32..SENT as u32).collect();
    ensure!(
        indexes(&files[0])? == want_r0 && indexes(&files[1])? == want_r1,
        "ring of 2 kept the wrong datagrams"
    );

    let by_time = dir.path().join("time");
    std::fs::create_dir(&by_time)?;
    let base = by_time.join("t-%s.pcap");
    let capture = Capture::start(&[
        "capture",
        "-i",
        &net.host_if,
        "-G",
        "1",
        "-W",
        "2",
        "-w",
        base.to_str().unwrap(),
    ])?;
    let mut pings = 0;
    while capture_is_running(&capture) && pings < 40 {
        net.ping(1, 56)?;
        pings += 1;
        std::thread::sleep(Duration::from_millis(150));
    }
    let done = capture.wait(Duration::from_secs(10))?;
    ensure!(
        done.status.success(),
        "-G 1 -W 2 should end by itself: {}",
        done.stderr
    );
    let files = files_in(&by_time)?;
    ensure!(files.len() == 2, "-G 1 -W 2 made {files:?}");
    for f in &files {
        let name = f.file_name().unwrap().to_string_lossy();
        ensure!(
            name.starts_with("t-") && !name.contains('%'),
            "strftime not applied: {name}"
        );
        ensure!(tshark::count(f, "icmp.type==8")? > 0, "{name} has no pings");
    }
    assert_released(&done, &net.host_if)
}

fn capture_is_running(capture: &Capture) -> bool {
    std::path::Path::new(&format!("/proc/{}", capture.pid())).exists()
}

/// A full disk: one clear line, exit 1, the file valid up to its last
/// packet, and holding as many packets as fit.
pub fn disk_full_keeps_file_valid() -> Result<()> {
    /// The tmpfs's size: its pages hold the file's bytes.
    const TMPFS: usize = 256 * 1024;
    let net = TestNet::new()?;
    net.pin_neighbours()?;
    let receiver = net.within(|| UdpSocket::bind((net.ns_ip, 9999)))??;
    let dir = tempdir()?;
    let mnt = dir.path().join("small");
    std::fs::create_dir(&mnt)?;
    sh(&[
        "mount",
        "-t",
        "tmpfs",
        "-o",
        &format!("size={TMPFS}"),
        "podtrace-test",
        mnt.to_str().unwrap(),
    ])?;
    let result = (|| -> Result<()> {
        let file = mnt.join("full.pcap");
        let capture =
            Capture::start(&["capture", "-i", &net.host_if, "-w", file.to_str().unwrap()])?;
        send_udp(&net, 1000, DATAGRAM)?;
        let done = capture.wait(Duration::from_secs(10))?;
        expect_error(&done_without_start_line(done), 1, "No space left on device")?;
        let out = std::process::Command::new("tshark")
            .arg("-r")
            .arg(&file)
            .output()?;
        let err = String::from_utf8_lossy(&out.stderr);
        ensure!(
            out.status.success() && !err.contains("cut short"),
            "tshark: {err}"
        );
        // Whole records up to the last one that fits, then nothing.
        let fit = (TMPFS - PCAP_HEADER) / RECORD;
        let packets = String::from_utf8_lossy(&out.stdout).lines().count();
        ensure!(packets == fit, "{packets} packets kept, {fit} fit");
        let size = std::fs::metadata(&file)?.len() as usize;
        ensure!(
            size == PCAP_HEADER + fit * RECORD,
            "the file is {size} bytes"
        );
        Ok(())
    })();
    drop(receiver);
    sh(&["umount", mnt.to_str().unwrap()])?;
    result
}

/// The run's stderr without the "capturing on" line, for one-line error checks.
fn done_without_start_line(mut done: run::Finished) -> run::Finished {
    done.stderr = done
        .stderr
        .lines()
        .filter(|l| !l.contains("capturing on"))
        .collect::<Vec<_>>()
        .join("\n");
    done
}
