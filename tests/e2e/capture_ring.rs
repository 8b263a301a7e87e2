//! The ring reader: records that wrap around the end of the ring buffer
//! (podtrace maps its data pages once and stitches those) arrive intact.

use std::{net::UdpSocket, time::Duration};

use anyhow::{ensure, Context, Result};
use podtrace_tests::{netns::TestNet, run::Capture, tshark};

use crate::capture::{assert_released, tempdir};

const PORT: u16 = 9444;
const DATAGRAMS: u32 = 3000;

/// Datagram `i`: its index, then bytes derived from it; sizes vary so that
/// records end at every offset of the ring.
fn payload(i: u32) -> Vec<u8> {
    let len = 100 + (i as usize * 37) % 1300;
    let mut p = i.to_be_bytes().to_vec();
    p.extend((4..len).map(|k| (k as u32).wrapping_mul(31).wrapping_add(i) as u8));
    p
}

/// A 64 KiB ring wraps around dozens of times under 2 MB of datagrams;
/// every datagram in the file must be byte for byte what was sent, and the
/// file plus the reported loss must account for all of them.
pub fn small_ring_wraps_records_intact() -> Result<()> {
    // Its own network, away from the ptest-N ones other suites may be using.
    let net = TestNet::named("pwrap", 248)?;
    let dir = tempdir()?;
    let file = dir.path().join("w.pcap");
    let capture = Capture::start(&[
        "capture",
        "-i",
        &net.host_if,
        "-B",
        "64",
        "-w",
        file.to_str().unwrap(),
    ])?;
    let sock = UdpSocket::bind((net.host_ip, 0))?;
    for i in 0..DATAGRAMS {
        sock.send_to(&payload(i), (net.ns_ip, PORT))?;
        // Gentle pacing: the point is wrapping, not overflowing.
        if i % 10 == 9 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let done = capture.stop(libc::SIGINT)?;
    ensure!(done.status.success(), "podtrace failed: {}", done.stderr);
    let (_, lost) = done.summary()?;
    let rows = tshark::fields(
        &file,
        &format!("udp.dstport=={PORT} && !icmp"),
        &["udp.payload"],
    )?;
    ensure!(
        rows.len() as u64 + lost >= u64::from(DATAGRAMS),
        "{} datagrams in the file and {lost} reported lost, {DATAGRAMS} sent",
        rows.len()
    );
    ensure!(rows.len() > 2000, "only {} datagrams captured", rows.len());
    for row in rows {
        let hex = row[0].replace(':', "");
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16))
            .collect::<Result<_, _>>()
            .context("tshark payload hex")?;
        let index = u32::from_be_bytes(bytes[..4].try_into()?);
        ensure!(
            index < DATAGRAMS && bytes == payload(index),
            "datagram {index} differs from what was sent"
        );
    }
    assert_released(&done, &net.host_if)
}
