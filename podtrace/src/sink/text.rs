//! tcpdump-like text: one line per packet, numeric addresses, no lookups.
//!
//! `12:00:01.123456 veth1a2b In  IP 10.245.0.1.41000 > 10.245.0.5.8080: Flags [S], seq 1, win 64240, length 0`

use std::{fmt::Write as _, io::Write};

use etherparse::{LaxNetSlice, LaxSlicedPacket, TransportSlice};

use super::{Packet, Sink, SinkError};
use crate::ring::Direction;

pub struct TextSink {
    out: Box<dyn Write + Send>,
    line: String,
}

impl TextSink {
    pub fn new(out: Box<dyn Write + Send>) -> Self {
        Self {
            out,
            line: String::with_capacity(160),
        }
    }
}

impl Sink for TextSink {
    fn write(&mut self, packet: &Packet<'_>) -> Result<(), SinkError> {
        self.line.clear();
        format_line(&mut self.line, packet);
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
pub fn format_line(out: &mut String, packet: &Packet<'_>) {
    let secs_of_day = packet.ts.as_secs() % 86_400;
    let _ = write!(
        out,
        "{:02}:{:02}:{:02}.{:06} {} ",
        secs_of_day / 3600,
        secs_of_day / 60 % 60,
        secs_of_day % 60,
        packet.ts.subsec_micros(),
        match packet.direction {
            Direction::In => "In ",
            Direction::Out => "Out",
        }
    );
    describe(out, packet.data, packet.orig_len);
}

fn describe(out: &mut String, data: &[u8], orig_len: u32) {
    let Ok(parsed) = LaxSlicedPacket::from_ethernet(data) else {
        let _ = write!(out, "truncated frame, length {orig_len}");
        return;
    };
    let (src, dst, family) = match &parsed.net {
        Some(LaxNetSlice::Ipv4(ip)) => {
            let h = ip.header();
            (
                h.source_addr().to_string(),
                h.destination_addr().to_string(),
                "IP",
            )
        }
        Some(LaxNetSlice::Ipv6(ip)) => {
            let h = ip.header();
            (
                h.source_addr().to_string(),
                h.destination_addr().to_string(),
                "IP6",
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
    let _ = match &parsed.transport {
        Some(TransportSlice::Tcp(tcp)) => write!(
            out,
            "{family} {src}.{} > {dst}.{}: Flags [{}], seq {}, ack {}, win {}, length {}",
            tcp.source_port(),
            tcp.destination_port(),
            tcp_flags(tcp.syn(), tcp.fin(), tcp.rst(), tcp.psh(), tcp.ack()),
            tcp.sequence_number(),
            tcp.acknowledgment_number(),
            tcp.window_size(),
            tcp.payload().len(),
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
            write!(
                out,
                "{family} {src} > {dst}: ICMP {kind}, length {}",
                icmp.slice().len()
            )
        }
        Some(TransportSlice::Icmpv6(icmp)) => {
            write!(
                out,
                "{family} {src} > {dst}: ICMP6, type {}, length {}",
                icmp.type_u8(),
                icmp.slice().len()
            )
        }
        _ => write!(out, "{family} {src} > {dst}: length {orig_len}"),
    };
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

    fn line(data: &[u8], direction: Direction) -> String {
        let mut s = String::new();
        let packet = Packet {
            ts: Duration::new(3600 * 13 + 61, 5_000_000),
            ifindex: 1,
            direction,
            orig_len: data.len() as u32,
            data,
        };
        format_line(&mut s, &packet);
        s
    }

    #[test]
    fn tcp_syn_line() {
        let mut data = Vec::new();
        PacketBuilder::ethernet2([1; 6], [2; 6])
            .ipv4([10, 245, 0, 1], [10, 245, 0, 5], 64)
            .tcp(41000, 8080, 7, 64240)
            .syn()
            .write(&mut data, &[])
            .unwrap();
        assert_eq!(
            line(&data, Direction::In),
            "13:01:01.005000 In  IP 10.245.0.1.41000 > 10.245.0.5.8080: Flags [S], seq 7, ack 0, win 64240, length 0"
        );
    }

    #[test]
    fn udp_and_icmp_lines() {
        let mut udp = Vec::new();
        PacketBuilder::ethernet2([1; 6], [2; 6])
            .ipv4([10, 245, 0, 5], [10, 245, 0, 1], 64)
            .udp(5353, 53)
            .write(&mut udp, b"hello")
            .unwrap();
        assert!(line(&udp, Direction::Out)
            .ends_with("Out IP 10.245.0.5.5353 > 10.245.0.1.53: UDP, length 5"));
        let mut icmp = Vec::new();
        PacketBuilder::ethernet2([1; 6], [2; 6])
            .ipv4([10, 245, 0, 5], [10, 245, 0, 1], 64)
            .icmpv4_echo_request(1, 1)
            .write(&mut icmp, &[0; 56])
            .unwrap();
        assert!(line(&icmp, Direction::Out).contains("ICMP echo request, length 64"));
    }

    #[test]
    fn garbage_does_not_panic() {
        assert!(line(&[1, 2, 3], Direction::In).contains("length 3"));
    }
}
