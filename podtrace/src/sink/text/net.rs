//! ARP, IPv4 and IPv6 (with the extension headers tcpdump names), UDP, and
//! the hand-off to each transport.

use std::net::IpAddr;

use super::{Bytes, Cut, Line, TextStyle};

pub(super) const PROTO_ICMP: u8 = 1;
pub(super) const PROTO_TCP: u8 = 6;
pub(super) const PROTO_UDP: u8 = 17;
pub(super) const PROTO_ICMPV6: u8 = 58;
const PROTO_IPIP: u8 = 4;
const PROTO_IPV6: u8 = 41;
const PROTO_DCCP: u8 = 33;
const PROTO_SCTP: u8 = 132;
const EXT_HOP_BY_HOP: u8 = 0;
const EXT_DEST_OPTS: u8 = 60;

/// The IP header a transport header came in: its addresses, and whether
/// the transport header follows the fixed header directly (tcpdump prints
/// the addresses with the ports only then).
#[derive(Clone, Copy)]
pub(super) struct Ip {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub direct: bool,
    /// A first fragment: lengths in the transport header exceed it.
    pub fragmented: bool,
}

impl Ip {
    /// `a.p > b.q: `, or `p > q: ` after IPv6 extension headers (whose
    /// line already holds the addresses).
    pub fn ports(self, line: &mut Line<'_>, sport: u16, dport: u16) {
        if self.direct {
            put!(line.out, "{}.{sport} > {}.{dport}: ", self.src, self.dst);
        } else {
            put!(line.out, "{sport} > {dport}: ");
        }
    }

    /// `a > b: ` for a transport whose ports are not captured.
    pub fn addresses(self, line: &mut Line<'_>) {
        if self.direct {
            put!(line.out, "{} > {}: ", self.src, self.dst);
        }
    }
}

impl Line<'_> {
    /// `length`: the ARP packet's length on the wire.
    pub(super) fn arp(&mut self, arp: Bytes<'_>, length: usize) -> Result<(), Cut> {
        const L: &str = "arp";
        let (hrd, pro) = (arp.be16(0, L)?, arp.be16(2, L)?);
        let (hln, pln) = (usize::from(arp.u8(4, L)?), usize::from(arp.u8(5, L)?));
        let op = arp.be16(6, L)?;
        let (sha, spa) = (8, 8 + hln);
        let (tha, tpa) = (8 + hln + pln, 8 + 2 * hln + pln);
        if !arp.has(tpa + pln) {
            return Err(Cut(L));
        }
        self.out.push_str("ARP, ");
        // IPv4 (or "trailer") addresses are the only ones tcpdump spells out.
        if !matches!(pro, 0x0800 | 0x1000) || pln != 4 || hln == 0 {
            let hardware = match hrd {
                1 => "Ethernet".to_owned(),
                n => format!("Unknown Hardware ({n})"),
            };
            let protocol = match pro {
                0x86dd => "IPv6".to_owned(),
                n => format!("Unknown Protocol ({n:#06x})"),
            };
            put!(
                self.out,
                "{hardware} (len {hln}), {protocol} (len {pln}), length {length}"
            );
            return Ok(());
        }
        let ip = |at| arp.ipv4(at, L);
        let hw = |at| arp.hw(at, hln, L);
        match op {
            1 => {
                put!(self.out, "Request who-has {}", ip(tpa)?);
                if arp.0[tha..tha + hln].iter().any(|b| *b != 0) {
                    put!(self.out, " ({})", hw(tha)?);
                }
                put!(self.out, " tell {}", ip(spa)?);
            }
            2 => put!(self.out, "Reply {} is-at {}", ip(spa)?, hw(sha)?),
            3 => put!(
                self.out,
                "Reverse Request who-is {} tell {}",
                hw(tha)?,
                hw(sha)?
            ),
            4 => put!(self.out, "Reverse Reply {} at {}", hw(tha)?, ip(tpa)?),
            8 => put!(
                self.out,
                "Inverse Request who-is {} tell {}",
                hw(tha)?,
                hw(sha)?
            ),
            9 => put!(self.out, "Inverse Reply {} at {}", hw(sha)?, ip(spa)?),
            // tcpdump dumps the bytes of operations it does not know.
            n => {
                put!(self.out, "Unknown ({n})");
                return Ok(());
            }
        }
        put!(self.out, ", length {length}");
        Ok(())
    }

    /// `length`: the IP packet's length on the wire (frame minus link header).
    pub(super) fn ipv4(&mut self, ip: Bytes<'_>, length: usize) -> Result<(), Cut> {
        const L: &str = "ip";
        let version = ip.u8(0, L)? >> 4;
        if version != 4 {
            put!(self.out, "IP{version} (invalid)");
            return Ok(());
        }
        self.out.push_str("IP ");
        if !ip.has(20) {
            return Err(Cut(L));
        }
        if length < 20 {
            put!(self.out, "truncated-ip {length}");
            return Ok(());
        }
        let header = usize::from(ip.u8(0, L)? & 0x0f) * 4;
        if header < 20 {
            put!(self.out, "bad-hlen {header}");
            return Ok(());
        }
        let total = usize::from(ip.be16(2, L)?);
        if length < total {
            put!(
                self.out,
                "truncated-ip - {} bytes missing! ",
                total - length
            );
        }
        if total < header {
            put!(self.out, "bad-len {total}");
            return Ok(());
        }
        if self.style == TextStyle::Verbose {
            put!(
                self.out,
                "(ttl {}, id {}, length {total}) ",
                ip.u8(8, L)?,
                ip.be16(4, L)?
            );
        }
        let ip = ip.take(total);
        let fragment = ip.be16(6, L)?;
        let proto = ip.u8(9, L)?;
        let (src, dst) = (ip.ipv4(12, L)?, ip.ipv4(16, L)?);
        if fragment & 0x1fff != 0 {
            // Not the first fragment: no transport header to show.
            put!(self.out, "{src} > {dst}: ip-proto-{proto}");
            return Ok(());
        }
        let at = Ip {
            src: src.into(),
            dst: dst.into(),
            direct: true,
            fragmented: fragment & 0x2000 != 0,
        };
        if !matches!(proto, PROTO_TCP | PROTO_UDP | PROTO_SCTP | PROTO_DCCP) {
            at.addresses(self);
        }
        if !ip.has(header) {
            put!(
                self.out,
                " [remaining caplen({}) < header length({header})]",
                ip.len()
            );
            return Err(Cut(L));
        }
        self.transport(proto, at, ip.from(header), total - header, 4)
    }

    /// `length`: the IPv6 packet's length on the wire.
    pub(super) fn ipv6(&mut self, ip: Bytes<'_>, length: usize) -> Result<(), Cut> {
        const L: &str = "ip6";
        if !ip.has(40) {
            return Err(Cut(L));
        }
        if length < 40 {
            put!(self.out, "truncated-ip6 {length}");
            return Ok(());
        }
        self.out.push_str("IP6 ");
        let version = ip.u8(0, L)? >> 4;
        if version != 6 {
            put!(self.out, "version error: {version} != 6");
            return Ok(());
        }
        let payload = usize::from(ip.be16(4, L)?);
        let total = payload + 40;
        if length < total {
            put!(
                self.out,
                "truncated-ip6 - {} bytes missing!",
                total - length
            );
        }
        let mut next = ip.u8(6, L)?;
        if self.style == TextStyle::Verbose {
            put!(
                self.out,
                "(hlim {}, payload length {payload}) ",
                ip.u8(7, L)?
            );
        }
        let ip = ip.take(total);
        let (src, dst) = (ip.ipv6(8, L)?, ip.ipv6(24, L)?);
        let mut at = Ip {
            src: src.into(),
            dst: dst.into(),
            direct: true,
            fragmented: false,
        };
        if !matches!(next, PROTO_TCP | PROTO_UDP | PROTO_SCTP | PROTO_DCCP) {
            at.addresses(self);
        }
        // Hop-by-hop and destination options: named, then skipped.
        let mut offset = 40;
        while matches!(next, EXT_HOP_BY_HOP | EXT_DEST_OPTS) {
            let (layer, name) = match next {
                EXT_HOP_BY_HOP => ("hbhopt", "HBH "),
                _ => ("dstopt", "DSTOPT "),
            };
            let len = (usize::from(ip.u8(offset + 1, layer)?) + 1) * 8;
            if !ip.has(offset + len) {
                return Err(Cut(layer));
            }
            self.out.push_str(name);
            next = ip.u8(offset, layer)?;
            offset += len;
            at.direct = false;
        }
        self.transport(next, at, ip.from(offset), total.saturating_sub(offset), 6)
    }

    /// The payload of an IP packet whose header says `proto`; `length`
    /// comes from that header.
    fn transport(
        &mut self,
        proto: u8,
        ip: Ip,
        payload: Bytes<'_>,
        length: usize,
        version: u8,
    ) -> Result<(), Cut> {
        match proto {
            PROTO_TCP => self.tcp(ip, payload, length),
            PROTO_UDP => self.udp(ip, payload, length),
            PROTO_ICMP if version == 4 => self.icmp(payload, length),
            PROTO_ICMPV6 if version == 6 => self.icmp6(payload, length),
            PROTO_IPIP => self.ipv4(payload, length),
            PROTO_IPV6 => self.ipv6(payload, length),
            other => {
                put!(self.out, " ip-proto-{other} {length}");
                Ok(())
            }
        }
    }

    fn udp(&mut self, ip: Ip, udp: Bytes<'_>, length: usize) -> Result<(), Cut> {
        const L: &str = "udp";
        if !udp.has(4) {
            ip.addresses(self);
            return Err(Cut(L));
        }
        let (sport, dport) = (udp.be16(0, L)?, udp.be16(2, L)?);
        ip.ports(self, sport, dport);
        if length < 8 {
            put!(self.out, "truncated-udp {length}");
            return Ok(());
        }
        let udp_len = usize::from(udp.be16(4, L)?);
        if udp_len < 8 {
            put!(self.out, "truncated-udplength {udp_len}");
            return Ok(());
        }
        if !udp.has(8) {
            return Err(Cut(L));
        }
        let (data, available) = (udp_len - 8, length - 8);
        if data > available && !ip.fragmented {
            put!(self.out, "UDP, bad length {data} > {available}");
        } else {
            put!(self.out, "UDP, length {data}");
        }
        Ok(())
    }
}
