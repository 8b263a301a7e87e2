//! Text output: one line per packet, worded as `tcpdump -n` words it, with
//! the direction (`In`, into the pod, or `Out`) after the time, as tcpdump
//! shows it on a Linux cooked capture:
//!
//! `12:00:01.123456 In  IP 10.245.0.1.41000 > 10.245.0.5.9000: Flags [S], seq 1, win 64240, length 0`
//!
//! For ARP, IPv4, IPv6, TCP, UDP, ICMP and ICMPv6 a line is tcpdump's,
//! truncation marks (`[|tcp]`) and relative TCP sequence numbers included;
//! the tests print the same frames with `tcpdump -n -r` and compare. What
//! tcpdump decodes above those (DNS, HTTP, … chosen by port) podtrace does
//! not: its lines end at the transport layer. `-v` is podtrace's own: the
//! IP header's ttl, id and length on the same line.

/// `write!` to a `String`, which cannot fail.
macro_rules! put {
    ($out:expr, $($arg:tt)*) => {{
        let _ = ::std::fmt::Write::write_fmt($out, format_args!($($arg)*));
    }};
}

mod icmp;
mod net;
mod tcp;

use std::{
    collections::HashMap,
    fmt::{self, Write as _},
    io::Write,
    net::{Ipv4Addr, Ipv6Addr},
};

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
    format: Formatter,
    /// Interface (pod) names, printed when several can appear.
    names: Option<HashMap<InterfaceId, String>>,
}

impl TextSink {
    /// `named`: print each packet's interface (pod) after the time, where
    /// `tcpdump -i any` prints the interface.
    pub fn new(out: Box<dyn Write + Send>, style: TextStyle, named: bool) -> Self {
        Self {
            out,
            line: String::with_capacity(160),
            format: Formatter::new(style),
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
        self.format.line_on(&mut self.line, packet, name);
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

/// Turns packets into lines. Holds what tcpdump remembers between packets:
/// each TCP conversation's first sequence numbers.
pub struct Formatter {
    style: TextStyle,
    tcp: tcp::Conversations,
}

impl Formatter {
    pub fn new(style: TextStyle) -> Self {
        Self {
            style,
            tcp: tcp::Conversations::default(),
        }
    }

    /// Appends the line for `packet` (without newline) to `out`.
    pub fn line(&mut self, out: &mut String, packet: &Packet<'_>) {
        self.line_on(out, packet, None);
    }

    /// [`Self::line`] with the packet's interface (pod) name after the time.
    pub fn line_on(&mut self, out: &mut String, packet: &Packet<'_>, interface: Option<&str>) {
        let secs_of_day = local_seconds_of_day(packet.ts.as_secs());
        put!(
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
        put!(
            out,
            "{} ",
            match packet.direction {
                Direction::In => "In ",
                Direction::Out => "Out",
            }
        );
        let mut line = Line {
            out,
            style: self.style,
            tcp: &mut self.tcp,
        };
        if let Err(cut) = line.ethernet(Bytes(packet.data), packet.orig_len as usize) {
            put!(line.out, " [|{}]", cut.0);
        }
    }
}

/// The line being written and what the layers need to write it.
struct Line<'a> {
    out: &'a mut String,
    style: TextStyle,
    tcp: &'a mut tcp::Conversations,
}

/// The capture ended inside a header of this protocol: the line so far,
/// then ` [|proto]`, as tcpdump marks it.
#[derive(Debug, PartialEq, Eq)]
struct Cut(&'static str);

/// The captured bytes of one layer onwards. Reads past them are a [`Cut`]
/// of the layer reading.
#[derive(Clone, Copy)]
struct Bytes<'a>(&'a [u8]);

impl<'a> Bytes<'a> {
    fn len(self) -> usize {
        self.0.len()
    }

    fn has(self, n: usize) -> bool {
        self.0.len() >= n
    }

    fn u8(self, at: usize, layer: &'static str) -> Result<u8, Cut> {
        self.0.get(at).copied().ok_or(Cut(layer))
    }

    fn array<const N: usize>(self, at: usize, layer: &'static str) -> Result<[u8; N], Cut> {
        self.0
            .get(at..at + N)
            .map(|b| b.try_into().expect("N bytes"))
            .ok_or(Cut(layer))
    }

    fn be16(self, at: usize, layer: &'static str) -> Result<u16, Cut> {
        self.array(at, layer).map(u16::from_be_bytes)
    }

    fn be32(self, at: usize, layer: &'static str) -> Result<u32, Cut> {
        self.array(at, layer).map(u32::from_be_bytes)
    }

    fn ipv4(self, at: usize, layer: &'static str) -> Result<Ipv4Addr, Cut> {
        self.array::<4>(at, layer).map(Ipv4Addr::from)
    }

    fn ipv6(self, at: usize, layer: &'static str) -> Result<Ipv6Addr, Cut> {
        self.array::<16>(at, layer).map(Ipv6Addr::from)
    }

    fn hw(self, at: usize, len: usize, layer: &'static str) -> Result<Hw<'a>, Cut> {
        self.0.get(at..at + len).map(Hw).ok_or(Cut(layer))
    }

    /// The bytes from `at` on (none past the end).
    fn from(self, at: usize) -> Self {
        Self(self.0.get(at..).unwrap_or_default())
    }

    /// At most the first `n` bytes: what lies beyond a header's length
    /// (Ethernet padding) is not the packet's.
    fn take(self, n: usize) -> Self {
        Self(&self.0[..n.min(self.0.len())])
    }
}

/// A hardware address, `02:00:00:00:00:0a`.
struct Hw<'a>(&'a [u8]);

impl fmt::Display for Hw<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_char(':')?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

const ETHER_HEADER: usize = 14;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_ARP: u16 = 0x0806;
const ETHERTYPE_IPV6: u16 = 0x86dd;
/// 802.1Q, 802.1ad and the older QinQ types: tcpdump skips them silently.
const VLAN_TYPES: [u16; 4] = [0x8100, 0x88a8, 0x9100, 0x9200];

impl Line<'_> {
    /// `length` is the frame's length on the wire.
    fn ethernet(&mut self, frame: Bytes<'_>, length: usize) -> Result<(), Cut> {
        if !frame.has(ETHER_HEADER) {
            return Err(Cut("ether"));
        }
        let mut at = 12;
        let mut ethertype = frame.be16(at, "ether")?;
        while VLAN_TYPES.contains(&ethertype) {
            if !frame.has(at + 2 + 4) {
                return Err(Cut("vlan"));
            }
            at += 4;
            ethertype = frame.be16(at, "ether")?;
        }
        let header = at + 2;
        let (payload, length) = (frame.from(header), length.saturating_sub(header));
        match ethertype {
            ETHERTYPE_IPV4 => self.ipv4(payload, length),
            ETHERTYPE_IPV6 => self.ipv6(payload, length),
            ETHERTYPE_ARP => self.arp(payload, length),
            // 802.3 length fields (LLC) and everything else tcpdump may
            // know: named by number, as tcpdump names types it does not.
            other => {
                let (dst, src) = (frame.hw(0, 6, "ether")?, frame.hw(6, 6, "ether")?);
                let kind = if self.style == TextStyle::Quiet {
                    format!("Unknown Ethertype ({other:#06x})")
                } else {
                    format!("ethertype Unknown ({other:#06x})")
                };
                put!(
                    self.out,
                    "{src} > {dst}, {kind}, length {}:",
                    length + header
                );
                Ok(())
            }
        }
    }
}

/// Seconds since local midnight, as tcpdump prints times.
fn local_seconds_of_day(epoch_secs: u64) -> u64 {
    let tm = super::local_time(epoch_secs);
    (tm.tm_hour * 3600 + tm.tm_min * 60 + tm.tm_sec) as u64
}

#[cfg(test)]
mod tests;
