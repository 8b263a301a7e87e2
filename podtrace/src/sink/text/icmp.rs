//! ICMP and ICMPv6: the message named as tcpdump names it, with the
//! fields tcpdump shows without `-v` (echo id and seq, the unreachable
//! address and port, the neighbour discovery target).

use super::{
    net::{PROTO_TCP, PROTO_UDP},
    Bytes, Cut, Line,
};

impl Line<'_> {
    /// `length`: the ICMP message's length from the IP header.
    pub(super) fn icmp(&mut self, icmp: Bytes<'_>, length: usize) -> Result<(), Cut> {
        const L: &str = "icmp";
        let (kind, code) = (icmp.u8(0, L)?, icmp.u8(1, L)?);
        // The IP header an error message quotes, after its 8 bytes.
        let quoted = icmp.from(8);
        let inner_dst = || quoted.ipv4(16, L);
        let text = match kind {
            0 | 8 => format!(
                "echo {}, id {}, seq {}",
                if kind == 8 { "request" } else { "reply" },
                icmp.be16(4, L)?,
                icmp.be16(6, L)?
            ),
            3 => match code {
                0 => format!("net {} unreachable", inner_dst()?),
                1 => format!("host {} unreachable", inner_dst()?),
                2 => format!("{} protocol {} unreachable", inner_dst()?, quoted.u8(9, L)?),
                3 => {
                    let proto = quoted.u8(9, L)?;
                    let header = usize::from(quoted.u8(0, L)? & 0x0f) * 4;
                    let port = quoted.be16(header + 2, L)?;
                    let dst = inner_dst()?;
                    match proto {
                        PROTO_TCP => format!("{dst} tcp port {port} unreachable"),
                        PROTO_UDP => format!("{dst} udp port {port} unreachable"),
                        p => format!("{dst} protocol {p} port {port} unreachable"),
                    }
                }
                4 => match icmp.be16(6, L)? {
                    0 => format!("{} unreachable - need to frag", inner_dst()?),
                    mtu => format!("{} unreachable - need to frag (mtu {mtu})", inner_dst()?),
                },
                5 => format!("{} unreachable - source route failed", inner_dst()?),
                6 => format!("net {} unreachable - unknown", inner_dst()?),
                7 => format!("host {} unreachable - unknown", inner_dst()?),
                8 => format!("{} unreachable - source host isolated", inner_dst()?),
                9 => format!("net {} unreachable - admin prohibited", inner_dst()?),
                10 => format!("host {} unreachable - admin prohibited", inner_dst()?),
                11 => format!("net {} unreachable - tos prohibited", inner_dst()?),
                12 => format!("host {} unreachable - tos prohibited", inner_dst()?),
                13 => format!(
                    "host {} unreachable - admin prohibited filter",
                    inner_dst()?
                ),
                14 => format!(
                    "host {} unreachable - host precedence violation",
                    inner_dst()?
                ),
                15 => format!("host {} unreachable - precedence cutoff", inner_dst()?),
                c => format!("{} unreachable - #{c}", inner_dst()?),
            },
            5 => {
                let (dst, gateway) = (inner_dst()?, icmp.ipv4(4, L)?);
                match code {
                    0 => format!("redirect {dst} to net {gateway}"),
                    1 => format!("redirect {dst} to host {gateway}"),
                    2 => format!("redirect-tos {dst} to net {gateway}"),
                    3 => format!("redirect-tos {dst} to host {gateway}"),
                    c => format!("redirect-#{c} {dst} to {gateway}"),
                }
            }
            11 => {
                inner_dst()?;
                match code {
                    0 => "time exceeded in-transit".to_owned(),
                    1 => "ip reassembly time exceeded".to_owned(),
                    c => format!("time exceeded-#{c}"),
                }
            }
            12 => match code {
                0 => format!("parameter problem - octet {}", icmp.u8(4, L)?),
                c => format!("parameter problem - code {c}"),
            },
            13 => format!(
                "time stamp query id {} seq {}",
                icmp.be16(4, L)?,
                icmp.be16(6, L)?
            ),
            18 => format!("address mask is {:#010x}", icmp.be32(8, L)?),
            4 => "source quench".to_owned(),
            10 => "router solicitation".to_owned(),
            15 => "information request".to_owned(),
            16 => "information reply".to_owned(),
            17 => "address mask request".to_owned(),
            // Router advertisements and time stamp replies tcpdump spells
            // out field by field; podtrace names them only.
            9 => "router advertisement".to_owned(),
            14 => "time stamp reply".to_owned(),
            t => format!("type-#{t}"),
        };
        put!(self.out, "ICMP {text}, length {length}");
        Ok(())
    }

    /// `length`: the ICMPv6 message's length from the IP header.
    pub(super) fn icmp6(&mut self, icmp: Bytes<'_>, length: usize) -> Result<(), Cut> {
        const L: &str = "icmp6";
        if length == 0 {
            self.out.push_str("ICMP6, length 0 (invalid)");
            return Ok(());
        }
        let kind = icmp.u8(0, L)?;
        put!(self.out, "ICMP6, {}", icmp6_name(kind));
        let code = icmp.u8(1, L)?;
        // The packet an error message quotes, after its 8 bytes.
        let quoted = icmp.from(8);
        match kind {
            1 => {
                let reason = match code {
                    0 => "unreachable route",
                    1 => " unreachable prohibited",
                    2 => "beyond scope",
                    3 => "unreachable address",
                    4 => "unreachable port",
                    // tcpdump dumps the rest of the message in hex here.
                    c => {
                        put!(self.out, ", unknown unreach code ({c})");
                        return Ok(());
                    }
                };
                put!(self.out, ", {reason}");
                match code {
                    0 | 1 | 3 => put!(self.out, " {}", quoted.ipv6(24, L)?),
                    2 => put!(
                        self.out,
                        " {}, source address {}",
                        quoted.ipv6(24, L)?,
                        quoted.ipv6(8, L)?
                    ),
                    _ => {
                        // The port of the quoted packet's transport header,
                        // which follows its fixed header directly here.
                        let dst = quoted.ipv6(24, L)?;
                        let proto = quoted.u8(6, L)?;
                        let port = quoted.be16(40 + 2, L)?;
                        match proto {
                            PROTO_TCP => put!(self.out, ", {dst} tcp port {port}"),
                            PROTO_UDP => put!(self.out, ", {dst} udp port {port}"),
                            p => put!(self.out, ", {dst} protocol {p} port {port} unreachable"),
                        }
                    }
                }
            }
            2 => put!(self.out, ", mtu {}", icmp.be32(4, L)?),
            3 => match code {
                0 => put!(self.out, " for {}", quoted.ipv6(24, L)?),
                1 => self.out.push_str(" (reassembly)"),
                c => put!(self.out, ", unknown code ({c})"),
            },
            4 => {
                quoted.ipv6(24, L)?;
                let pointer = icmp.be32(4, L)?;
                match code {
                    0 => put!(self.out, ", erroneous - octet {pointer}"),
                    1 => put!(self.out, ", next header - octet {pointer}"),
                    2 => put!(self.out, ", option - octet {pointer}"),
                    3 => put!(self.out, ", incomplete header chain - octet {pointer}"),
                    c => put!(self.out, ", code-#{c}"),
                }
            }
            128 | 129 => put!(
                self.out,
                ", id {}, seq {}",
                icmp.be16(4, L)?,
                icmp.be16(6, L)?
            ),
            130 if length == 24 => self.mld(icmp)?,
            130 if length >= 28 => {
                put!(self.out, " v2 [gaddr {}", icmp.ipv6(8, L)?);
                match icmp.be16(26, L)? {
                    0 => {}
                    n if length < 28 + 16 * usize::from(n) => {
                        self.out.push_str(" [invalid number of sources]")
                    }
                    n => put!(self.out, ", {n} source(s)"),
                }
                self.out.push(']');
            }
            130 => put!(self.out, " unknown-version (len {length}) "),
            131 | 132 => self.mld(icmp)?,
            133 | 134 | 141 | 142 => {}
            135 => put!(self.out, ", who has {}", icmp.ipv6(8, L)?),
            136 => put!(self.out, ", tgt is {}", icmp.ipv6(8, L)?),
            137 => put!(self.out, ", {} to {}", icmp.ipv6(24, L)?, icmp.ipv6(8, L)?),
            143 if length < 8 => {
                put!(self.out, " [invalid len {length}]");
            }
            143 => put!(self.out, ", {} group record(s)", icmp.be16(6, L)?),
            // tcpdump dumps the bytes of messages it does not decode.
            _ => {}
        }
        put!(self.out, ", length {length}");
        Ok(())
    }

    /// MLDv1: `max resp delay: 0 addr: ff02::1` (nothing when cut short).
    fn mld(&mut self, icmp: Bytes<'_>) -> Result<(), Cut> {
        if icmp.has(24) {
            put!(
                self.out,
                "max resp delay: {} addr: {}",
                icmp.be16(4, "icmp6")?,
                icmp.ipv6(8, "icmp6")?
            );
        }
        Ok(())
    }
}

fn icmp6_name(kind: u8) -> String {
    let name = match kind {
        1 => "destination unreachable",
        2 => "packet too big",
        3 => "time exceeded in-transit",
        4 => "parameter problem",
        128 => "echo request",
        129 => "echo reply",
        130 => "multicast listener query",
        131 => "multicast listener report",
        132 => "multicast listener done",
        133 => "router solicitation",
        134 => "router advertisement",
        135 => "neighbor solicitation",
        136 => "neighbor advertisement",
        137 => "redirect",
        138 => "router renumbering",
        141 => "inverse neighbor solicitation",
        142 => "inverse neighbor advertisement",
        143 => "multicast listener report v2",
        144 => "ha discovery request",
        145 => "ha discovery reply",
        146 => "mobile router solicitation",
        147 => "mobile router advertisement",
        139 => "who-are-you request",
        140 => "who-are-you reply",
        200 => "mtrace response",
        201 => "mtrace message",
        155 => "RPL",
        n => return format!("unknown icmp6 type ({n})"),
    };
    name.to_owned()
}
