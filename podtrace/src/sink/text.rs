//! tcpdump-like text: one line per packet, numeric addresses, no lookups.
//!
//! `12:00:01.123456 veth1a2b In  IP 10.245.0.1.41000 > 10.245.0.5.8080: Flags [S], seq 1, win 64240, length 0`

use std::{collections::HashMap, fmt::Write as _, io::Write};

use etherparse::{LaxNetSlice, LaxSlicedPacket, TransportSlice};

use super::{Interface, InterfaceId, Packet, Sink, SinkError};
use crate::ring::Direction;

/// How much each line says (tcpdump's -q and -v).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TextStyle {
    /// Addresses, ports, protocol and length only.
    Quiet,
    #[default]
    Normal,
    /// Also the IP header: ttl, id, total length.
    Verbose,
}

pub struct TextSink {
    out: Box<dyn Write + Send>,
    line: String,
    style: TextStyle,
    /// Interface (pod) names, printed when several can appear.
    names: Option<HashMap<InterfaceId, String>>,
}

impl TextSink {
    /// `named`: print each packet's interface (pod) after the time, as
    /// `tcpdump -i any` prints the interface.
    pub fn new(out: Box<dyn Write + Send>, style: TextStyle, named: bool) -> Self {
        Self {
            out,
            line: String::with_capacity(160),
            style,
            names: named.then(HashMap::new),
        }
    }
}

impl Sink for TextSink {
    fn add_interface(&mut self, id: InterfaceId, iface: &Interface) -> Result<(), SinkError> {
        if let Some(names) = &mut self.names {
            names.insert(id, iface.name.clone());
        }
        Ok(())
    }

    fn write(&mut self, packet: &Packet<'_>) -> Result<(), SinkError> {
        self.line.clear();
        let name = self
            .names
            .as_ref()
            .map(|names| names.get(&packet.interface).map_or("?", String::as_str));
        format_line_on(&mut self.line, packet, name, self.style);
        self.line.push('\n');
        self.out
            .write_all(self.line.as_bytes())
            .map_err(|source| SinkError::Write {
                target: "standard output".into(),
                source,
            })
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        self.out.flush().map_err(|source| SinkError::Write {
            target: "standard output".into(),
            source,
        })
    }
}

/// Appends the text form of `packet` (without newline) to `out`.
pub fn format_line(out: &mut String, packet: &Packet<'_>, style: TextStyle) {
    format_line_on(out, packet, None, style);
}

/// [`format_line`] with the packet's interface (pod) name after the time.
pub fn format_line_on(
    out: &mut String,
    packet: &Packet<'_>,
    interface: Option<&str>,
    style: TextStyle,
) {
    let secs_of_day = local_seconds_of_day(packet.ts.as_secs());
    let _ = write!(
        out,
        "{:02}:{:02}:{:02}.{:06} ",
        secs_of_day / 3600,
        secs_of_day / 60 % 60,
        secs_of_day % 60,
        packet.ts.subsec_micros(),
    );
    if let Some(name) = interface {
        out.push_str(name);
        out.push(' ');
    }
    let _ = write!(
        out,
        "{} ",
        match packet.direction {
            Direction::In => "In ",
            Direction::Out => "Out",
        }
    );
    describe(out, packet.data, packet.orig_len, style);
}

fn describe(out: &mut String, data: &[u8], orig_len: u32, style: TextStyle) {
    let Ok(parsed) = LaxSlicedPacket::from_ethernet(data) else {
        let _ = write!(out, "truncated frame, length {orig_len}");
        return;
    };
    // Lengths come from the headers, not the captured bytes: with a short
    // snaplen the payload is cut but its length is still known.
    let (src, dst, family, l4_len) = match &parsed.net {
        Some(LaxNetSlice::Ipv4(ip)) => {
            let h = ip.header();
            let family = if style == TextStyle::Verbose {
                format!(
                    "IP (ttl {}, id {}, length {})",
                    h.ttl(),
                    h.identification(),
                    h.total_len()
                )
            } else {
                "IP".to_owned()
            };
            let l4_len = usize::from(h.total_len()).saturating_sub(usize::from(h.ihl()) * 4);
            (
                h.source_addr().to_string(),
                h.destination_addr().to_string(),
                family,
                l4_len,
            )
        }
        Some(LaxNetSlice::Ipv6(ip)) => {
            let h = ip.header();
            let family = if style == TextStyle::Verbose {
                format!(
                    "IP6 (hlim {}, payload length {})",
                    h.hop_limit(),
                    h.payload_length()
                )
            } else {
                "IP6".to_owned()
            };
            let l4_len = usize::from(h.payload_length());
            (
                h.source_addr().to_string(),
                h.destination_addr().to_string(),
                family,
                l4_len,
            )
        }
        Some(LaxNetSlice::Arp(arp)) => {
            let ip = |b: &[u8]| match <[u8; 4]>::try_from(b) {
                Ok(a) => std::net::Ipv4Addr::from(a).to_string(),
                Err(_) => format!("{b:02x?}"),
            };
            let (sender, target) = (
                ip(arp.sender_protocol_addr()),
                ip(arp.target_protocol_addr()),
            );
            let _ = match arp.operation().0 {
                1 => write!(out, "ARP, Request who-has {target} tell {sender}"),
                2 => write!(
                    out,
                    "ARP, Reply {sender} is-at {}",
                    mac(arp.sender_hw_addr())
                ),
                op => write!(out, "ARP, operation {op}"),
            };
            let _ = write!(out, ", length {orig_len}");
            return;
        }
        None => {
            let ethertype = data.get(12..14).map_or_else(
                || "unknown".into(),
                |b| format!("{:#06x}", u16::from_be_bytes([b[0], b[1]])),
            );
            let _ = write!(out, "ethertype {ethertype}, length {orig_len}");
            return;
        }
    };
    let tcp_len =
        |tcp: &etherparse::TcpSlice<'_>| l4_len.saturating_sub(usize::from(tcp.data_offset()) * 4);
    let _ = match &parsed.transport {
        Some(TransportSlice::Tcp(tcp)) if style == TextStyle::Quiet => write!(
            out,
            "{family} {src}.{} > {dst}.{}: tcp {}",
            tcp.source_port(),
            tcp.destination_port(),
            tcp_len(tcp)
        ),
        Some(TransportSlice::Udp(udp)) if style == TextStyle::Quiet => write!(
            out,
            "{family} {src}.{} > {dst}.{}: udp {}",
            udp.source_port(),
            udp.destination_port(),
            udp.length().saturating_sub(8)
        ),
        Some(TransportSlice::Tcp(tcp)) => write!(
            out,
            "{family} {src}.{} > {dst}.{}: Flags [{}], seq {}, ack {}, win {}, length {}",
            tcp.source_port(),
            tcp.destination_port(),
            tcp_flags(tcp.syn(), tcp.fin(), tcp.rst(), tcp.psh(), tcp.ack()),
            tcp.sequence_number(),
            tcp.acknowledgment_number(),
            tcp.window_size(),
            tcp_len(tcp),
        ),
        Some(TransportSlice::Udp(udp)) => write!(
            out,
            "{family} {src}.{} > {dst}.{}: UDP, length {}",
            udp.source_port(),
            udp.destination_port(),
            udp.length().saturating_sub(8),
        ),
        Some(TransportSlice::Icmpv4(icmp)) => {
            let kind = match icmp.type_u8() {
                0 => "echo reply".to_string(),
                8 => "echo request".to_string(),
                3 => "destination unreachable".to_string(),
                t => format!("type {t}"),
            };
            write!(out, "{family} {src} > {dst}: ICMP {kind}, length {l4_len}")
        }
        Some(TransportSlice::Icmpv6(icmp)) => {
            write!(
                out,
                "{family} {src} > {dst}: ICMP6, type {}, length {l4_len}",
                icmp.type_u8()
            )
        }
        _ => write!(out, "{family} {src} > {dst}: length {orig_len}"),
    };
}

/// Seconds since local midnight, as tcpdump prints times.
fn local_seconds_of_day(epoch_secs: u64) -> u64 {
    let t = epoch_secs as libc::time_t;
    // SAFETY: zeroed tm is valid; localtime_r gets valid pointers.
    let tm = unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        libc::localtime_r(&t, &mut tm);
        tm
    };
    (tm.tm_hour * 3600 + tm.tm_min * 60 + tm.tm_sec) as u64
}

fn tcp_flags(syn: bool, fin: bool, rst: bool, psh: bool, ack: bool) -> String {
    let mut s = String::new();
    for (on, c) in [(syn, 'S'), (fin, 'F'), (rst, 'R'), (psh, 'P'), (ack, '.')] {
        if on {
            s.push(c);
        }
    }
    if s.is_empty() {
        s.push_str("none");
    }
    s
}

fn mac(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use etherparse::PacketBuilder;

    use super::*;

    const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
    const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];
    const HOST: [u8; 4] = [10, 245, 0, 1];
    const POD: [u8; 4] = [10, 245, 0, 5];

    fn arp(op: u8, sender: [u8; 4], target: [u8; 4]) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&[0xff; 6]);
        f.extend_from_slice(&MAC_B);
        f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, op]);
        f.extend_from_slice(&MAC_B);
        f.extend_from_slice(&sender);
        f.extend_from_slice(&[0; 6]);
        f.extend_from_slice(&target);
        f
    }

    /// A fixed set of frames covering what the decoder knows, with the
    /// direction each was "seen" in and its captured length.
    fn fixture() -> Vec<(Vec<u8>, Direction, Option<usize>)> {
        macro_rules! build {
            ($builder:expr, $payload:expr $(,)?) => {{
                let mut out = Vec::new();
                $builder.write(&mut out, $payload).unwrap();
                out
            }};
        }
        let eth = || PacketBuilder::ethernet2(MAC_A, MAC_B);
        let request = b"GET / HTTP/1.0\r\n\r\n";
        let data_segment = build!(
            eth()
                .ipv4(HOST, POD, 64)
                .tcp(41000, 8080, 8, 502)
                .psh()
                .ack(1001),
            request
        );
        vec![
            (
                build!(
                    eth().ipv4(HOST, POD, 64).tcp(41000, 8080, 7, 64240).syn(),
                    &[],
                ),
                Direction::In,
                None,
            ),
            (data_segment.clone(), Direction::In, None),
            // The same segment cut by a 60-byte snaplen: its length is still known.
            (data_segment, Direction::In, Some(60)),
            (
                build!(
                    eth()
                        .ipv4(POD, HOST, 64)
                        .tcp(8080, 41000, 1001, 509)
                        .fin()
                        .ack(26),
                    &[],
                ),
                Direction::Out,
                None,
            ),
            (
                build!(eth().ipv4(POD, HOST, 64).udp(5353, 53), b"hello"),
                Direction::Out,
                None,
            ),
            (
                build!(
                    eth().ipv4(POD, HOST, 64).icmpv4_echo_request(1, 1),
                    &[0; 56],
                ),
                Direction::Out,
                None,
            ),
            (
                build!(eth().ipv4(HOST, POD, 64).icmpv4_echo_reply(1, 1), &[0; 56]),
                Direction::In,
                None,
            ),
            (arp(1, POD, HOST), Direction::Out, None),
            (arp(2, HOST, POD), Direction::In, None),
            (
                build!(
                    eth()
                        .ipv6(
                            [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
                            [0xfd; 16],
                            64,
                        )
                        .udp(546, 547),
                    b"v6",
                ),
                Direction::Out,
                None,
            ),
            (vec![1, 2, 3], Direction::In, None),
        ]
    }

    fn render(style: TextStyle) -> String {
        let mut all = String::new();
        for (i, (frame, direction, caplen)) in fixture().iter().enumerate() {
            let data = &frame[..caplen.unwrap_or(frame.len()).min(frame.len())];
            let packet = Packet {
                ts: Duration::new(3600 * 13 + 61 + i as u64, 5_000_000),
                interface: 1,
                direction: *direction,
                orig_len: frame.len() as u32,
                data,
            };
            format_line(&mut all, &packet, style);
            all.push('\n');
        }
        all
    }

    /// Golden test: `UPDATE_GOLDEN=1 cargo test -p podtrace text` rewrites the
    /// file; review the diff like any other change.
    #[test]
    fn text_output_matches_golden_file() {
        std::env::set_var("TZ", "UTC");
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/src/sink/testdata/text.golden");
        let got = [TextStyle::Normal, TextStyle::Quiet, TextStyle::Verbose]
            .map(|style| format!("## {style:?}\n{}", render(style)))
            .join("");
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::write(path, &got).unwrap();
        }
        let want = std::fs::read_to_string(path).unwrap();
        assert_eq!(got, want, "text output changed; see {path}");
    }
}
