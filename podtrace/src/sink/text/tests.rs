//! The oracle is tcpdump itself: every frame of `frames` is written to a pcap
//! file, printed by `tcpdump -n -r` (and `-q`), and by podtrace's
//! formatter, and the lines must be equal once podtrace's direction column
//! is left out. tcpdump's hex dumps of what it does not decode (lines that
//! start with a tab) are left out too: podtrace prints no bytes.

mod frames;

use std::{fmt::Write as _, path::Path, process::Command, time::Duration};

use self::frames::*;
use super::*;

/// Frame `i` was captured i s after 2023-11-14 22:13:20.5 UTC, plus a few
/// ns that both must drop (microseconds are printed, not rounded).
fn timestamp(i: usize) -> Duration {
    Duration::new(1_700_000_000 + i as u64, 500_000_999)
}

/// A nanosecond pcap file of `frames`, Ethernet.
fn write_pcap(path: &Path, frames: &[Frame]) {
    let mut out = Vec::new();
    out.extend(0xa1b2_3c4du32.to_le_bytes());
    out.extend(2u16.to_le_bytes());
    out.extend(4u16.to_le_bytes());
    out.extend([0; 8]);
    out.extend(262_144u32.to_le_bytes());
    out.extend(1u32.to_le_bytes());
    for (i, f) in frames.iter().enumerate() {
        let ts = timestamp(i);
        out.extend((ts.as_secs() as u32).to_le_bytes());
        out.extend(ts.subsec_nanos().to_le_bytes());
        out.extend((f.data.len() as u32).to_le_bytes());
        out.extend((f.orig_len.unwrap_or(f.data.len()) as u32).to_le_bytes());
        out.extend(&f.data);
    }
    std::fs::write(path, out).unwrap();
}

/// `tcpdump -n -r file [extra]`, one line per packet (hex dumps left out).
fn tcpdump(path: &Path, extra: &[&str]) -> Vec<String> {
    let out = Command::new("tcpdump")
        .args(["-n", "-r"])
        .arg(path)
        .args(extra)
        .output()
        .unwrap_or_else(|e| {
            panic!("tcpdump, the oracle of this test, did not run ({e}): install it (cargo xtask setup)")
        });
    assert!(
        out.status.success(),
        "tcpdump: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with('\t'))
        .map(|l| l.trim_end().to_owned())
        .collect()
}

/// podtrace's lines for `frames`, without the direction column.
fn podtrace(frames: &[Frame], style: TextStyle) -> Vec<String> {
    let mut formatter = Formatter::new(style);
    frames
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let mut line = String::new();
            let direction = if i % 2 == 0 {
                Direction::In
            } else {
                Direction::Out
            };
            formatter.line(
                &mut line,
                &Packet {
                    ts: timestamp(i),
                    interface: 1,
                    direction,
                    orig_len: f.orig_len.unwrap_or(f.data.len()) as u32,
                    data: &f.data,
                },
            );
            let column = match direction {
                Direction::In => "In  ",
                Direction::Out => "Out ",
            };
            assert_eq!(&line[16..20], column, "{line}");
            line.replace_range(16..20, "");
            line.trim_end().to_owned()
        })
        .collect()
}

fn compare(style: TextStyle, flags: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("frames.pcap");
    let frames = all_frames();
    write_pcap(&path, &frames);
    let want = tcpdump(&path, flags);
    let got = podtrace(&frames, style);
    assert_eq!(
        want.len(),
        frames.len(),
        "tcpdump printed:\n{}",
        want.join("\n")
    );
    let mut differences = String::new();
    for ((f, got), want) in frames.iter().zip(&got).zip(&want) {
        if got != want {
            let _ = write!(
                differences,
                "\n{}:\n  podtrace {got}\n  tcpdump  {want}",
                f.name
            );
        }
    }
    assert!(
        differences.is_empty(),
        "podtrace {style:?} differs from tcpdump -n {flags:?}:{differences}"
    );
}

#[test]
fn lines_are_tcpdumps() {
    compare(TextStyle::Normal, &[]);
}

#[test]
fn quiet_lines_are_tcpdump_qs() {
    compare(TextStyle::Quiet, &["-q"]);
}

/// Past the table's bound, remembered conversations are forgotten and
/// start again from their next packet, rather than memory growing forever.
#[test]
fn remembered_conversations_are_bounded() {
    let mut f = Formatter::new(TextStyle::Normal);
    let line = |f: &mut Formatter, port: u16, seq: u32| {
        let frame = ipv4(HOST, POD, 6, &tcp((port, 9000), seq, 1, ACK, &[], &[1]));
        let mut out = String::new();
        f.line(
            &mut out,
            &Packet {
                ts: Duration::ZERO,
                interface: 1,
                direction: Direction::In,
                orig_len: frame.len() as u32,
                data: &frame,
            },
        );
        out
    };
    assert!(line(&mut f, 10_000, 500).contains("seq 500:501"));
    assert!(line(&mut f, 10_000, 501).contains("seq 1:2"));
    for i in 1..tcp::MAX_CONVERSATIONS {
        let (a, b) = ((i >> 16) as u8, i as u16);
        let frame = ipv4([10, 1, a, 1], POD, 6, &tcp((b, 9000), 1, 1, ACK, &[], &[]));
        let mut out = String::new();
        f.line(
            &mut out,
            &Packet {
                ts: Duration::ZERO,
                interface: 1,
                direction: Direction::In,
                orig_len: frame.len() as u32,
                data: &frame,
            },
        );
    }
    assert_eq!(f.tcp.len(), tcp::MAX_CONVERSATIONS);
    // One more conversation: the table starts over.
    assert!(line(&mut f, 10_001, 700).contains("seq 700:701"));
    assert_eq!(f.tcp.len(), 1);
    assert!(line(&mut f, 10_000, 502).contains("seq 502:503"));
}

/// `-v` is podtrace's own: tcpdump's `-v` spreads a packet over two lines
/// and checks checksums. The IP header's fields go after the family.
#[test]
fn verbose_lines_show_the_ip_header() {
    let mut f = Formatter::new(TextStyle::Verbose);
    let mut line = |frame: Vec<u8>| {
        let mut out = String::new();
        f.line(
            &mut out,
            &Packet {
                ts: timestamp(0),
                interface: 1,
                direction: Direction::Out,
                orig_len: frame.len() as u32,
                data: &frame,
            },
        );
        out[16..].to_owned()
    };
    assert_eq!(
        line(ipv4(HOST, POD, 17, &udp((40001, 9999), b"hello"))),
        "Out IP (ttl 64, id 4660, length 33) 10.245.0.1.40001 > 10.245.0.5.9999: UDP, length 5"
    );
    assert_eq!(
        line(ipv6(HOST6, POD6, 17, &udp((40001, 9999), b"v6"))),
        "Out IP6 (hlim 64, payload length 10) fd00::1.40001 > fd00::2.9999: UDP, length 2"
    );
}
