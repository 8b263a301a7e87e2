//! TCP as tcpdump prints it: flags, sequence numbers relative to each
//! conversation's first ones, options.

use std::{collections::HashMap, net::IpAddr};

use super::{net::Ip, Bytes, Cut, Line, TextStyle};

const L: &str = "tcp";
const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const ACK: u8 = 0x10;
const URG: u8 = 0x20;
/// tcpdump's order: `[S.]`, `[FP.]`, `[R.]`, `[P.UEW]`.
const FLAG_NAMES: [(u8, char); 8] = [
    (FIN, 'F'),
    (SYN, 'S'),
    (RST, 'R'),
    (0x08, 'P'),
    (ACK, '.'),
    (URG, 'U'),
    (0x40, 'E'),
    (0x80, 'W'),
];

/// Conversations remembered at most: tcpdump remembers every one, which a
/// capture of days on a busy pod cannot afford. Past this many the table
/// starts over, and the next packet of each conversation is printed with
/// absolute numbers again, as tcpdump prints a conversation's first one.
pub(super) const MAX_CONVERSATIONS: usize = 1 << 16;

/// The first sequence numbers of each TCP conversation seen with ACK set,
/// so that later ones print relative to them (tcpdump without `-S`).
#[derive(Default)]
pub(super) struct Conversations {
    bases: HashMap<Key, Base>,
}

/// Both directions of a conversation share one key: tcpdump orders the
/// ends by port, then by address.
#[derive(Hash, PartialEq, Eq)]
struct Key {
    src: IpAddr,
    dst: IpAddr,
    ports: u32,
}

#[derive(Clone, Copy, Default)]
struct Base {
    seq: u32,
    ack: u32,
}

impl Conversations {
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.bases.len()
    }

    /// The numbers to print for a packet with ACK set, and the base its
    /// SACK blocks are relative to; records a new conversation (or, on a
    /// SYN, a new start of it).
    fn relative(&mut self, ip: &Ip, ports: (u16, u16), seq: u32, ack: u32, syn: bool) -> Numbers {
        let (sport, dport) = ports;
        let rev = sport > dport || (sport == dport && octets(ip.src) > octets(ip.dst));
        let key = if rev {
            Key {
                src: ip.dst,
                dst: ip.src,
                ports: u32::from(dport) << 16 | u32::from(sport),
            }
        } else {
            Key {
                src: ip.src,
                dst: ip.dst,
                ports: u32::from(sport) << 16 | u32::from(dport),
            }
        };
        let known = self.bases.get(&key).copied();
        let (seq, ack, base) = match known {
            Some(base) if !syn => {
                let (s, a) = if rev {
                    (base.ack, base.seq)
                } else {
                    (base.seq, base.ack)
                };
                (seq.wrapping_sub(s), ack.wrapping_sub(a), base)
            }
            _ => {
                let base = if rev {
                    Base {
                        seq: ack.wrapping_sub(1),
                        ack: seq,
                    }
                } else {
                    Base {
                        seq,
                        ack: ack.wrapping_sub(1),
                    }
                };
                if known.is_none() && self.bases.len() >= MAX_CONVERSATIONS {
                    self.bases.clear();
                }
                self.bases.insert(key, base);
                (seq, ack, base)
            }
        };
        let sack_base = if rev { base.seq } else { base.ack };
        Numbers {
            seq,
            ack,
            sack_base,
        }
    }
}

fn octets(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

struct Numbers {
    seq: u32,
    ack: u32,
    sack_base: u32,
}

impl Line<'_> {
    /// `length`: the TCP segment's length from the IP header.
    pub(super) fn tcp(&mut self, ip: Ip, tcp: Bytes<'_>, length: usize) -> Result<(), Cut> {
        if !tcp.has(4) {
            put!(self.out, "{} > {}:", ip.src, ip.dst);
            return Err(Cut(L));
        }
        let ports = (tcp.be16(0, L)?, tcp.be16(2, L)?);
        ip.ports(self, ports.0, ports.1);
        if !tcp.has(20) {
            return Err(Cut(L));
        }
        let header = usize::from(tcp.u8(12, L)? >> 4) * 4;
        // tcpdump's lengths are unsigned: a header longer than the segment wraps.
        let data = (length as u32).wrapping_sub(header as u32);
        if header < 20 {
            put!(
                self.out,
                " tcp {data} [bad hdr length {header} - too short, < 20]"
            );
            return Ok(());
        }
        if self.style == TextStyle::Quiet {
            put!(self.out, "tcp {data}");
            if header > length {
                put!(
                    self.out,
                    " [bad hdr length {header} - too long, > {length}]"
                );
            }
            return Ok(());
        }
        let flags = tcp.u8(13, L)?;
        let names: String = FLAG_NAMES
            .iter()
            .filter(|(bit, _)| flags & bit != 0)
            .map(|(_, c)| c)
            .collect();
        let names = if names.is_empty() { "none" } else { &names };
        put!(self.out, "Flags [{names}]");
        let (seq, ack) = (tcp.be32(4, L)?, tcp.be32(8, L)?);
        let numbers = if flags & ACK != 0 {
            self.tcp.relative(&ip, ports, seq, ack, flags & SYN != 0)
        } else {
            Numbers {
                seq,
                ack,
                sack_base: 0,
            }
        };
        if header > length {
            put!(
                self.out,
                " [bad hdr length {header} - too long, > {length}]"
            );
            return Ok(());
        }
        if data > 0 || flags & (SYN | FIN | RST) != 0 {
            put!(self.out, ", seq {}", numbers.seq);
            if data > 0 {
                put!(self.out, ":{}", numbers.seq.wrapping_add(data));
            }
        }
        if flags & ACK != 0 {
            put!(self.out, ", ack {}", numbers.ack);
        }
        put!(self.out, ", win {}", tcp.be16(14, L)?);
        if flags & URG != 0 {
            put!(self.out, ", urg {}", tcp.be16(18, L)?);
        }
        if header > 20 && !self.tcp_options(tcp.from(20), header - 20, numbers.sack_base)? {
            return Ok(());
        }
        put!(self.out, ", length {data}");
        Ok(())
    }

    /// `, options [...]`; false when tcpdump stops the line inside them (a
    /// malformed option, or one cut in its data).
    fn tcp_options(
        &mut self,
        opts: Bytes<'_>,
        mut left: usize,
        sack_base: u32,
    ) -> Result<bool, Cut> {
        self.out.push_str(", options [");
        let mut at = 0;
        let mut first = true;
        while left > 0 {
            if !first {
                self.out.push(',');
            }
            let kind = opts.u8(at, L)?;
            at += 1;
            let len = if kind <= 1 {
                1
            } else {
                let len = usize::from(opts.u8(at, L)?);
                at += 1;
                if len < 2 || len > left {
                    return Ok(self.bad_option(first));
                }
                left -= 1;
                len
            };
            left -= 1;
            self.out.push_str(&option_name(kind));
            // Bytes the option's data needs, as tcpdump's LENCHECK.
            let need = |n: usize| {
                if n > left {
                    Err(true)
                } else if !opts.has(at + n) {
                    Err(false)
                } else {
                    Ok(())
                }
            };
            let printed = match kind {
                2 => need(2).map(|()| {
                    put!(self.out, " {}", opts.be16(at, L).unwrap_or(0));
                    2
                }),
                3 => need(1).map(|()| {
                    put!(self.out, " {}", opts.0[at]);
                    1
                }),
                5 => self.sack(opts, at, len - 2, sack_base, &need),
                6 | 7 | 11 | 12 | 13 => need(4).map(|()| {
                    put!(self.out, " {}", opts.be32(at, L).unwrap_or(0));
                    4
                }),
                8 => need(8).map(|()| {
                    let word = |i| opts.be32(at + i, L).unwrap_or(0);
                    put!(self.out, " val {} ecr {}", word(0), word(4));
                    8
                }),
                0 | 1 | 4 => Ok(0),
                _ => {
                    let n = len - 2;
                    if n > 0 {
                        self.out.push_str(" 0x");
                    }
                    (0..n)
                        .try_for_each(|i| {
                            need(i + 1).map(|()| put!(self.out, "{:02x}", opts.0[at + i]))
                        })
                        .map(|()| n)
                }
            };
            let used = match printed {
                Ok(used) => used,
                Err(true) => return Ok(self.bad_option(first)),
                Err(false) => {
                    put!(self.out, " [|{L}]");
                    if !first {
                        self.out.push('>');
                    }
                    return Ok(false);
                }
            };
            at += used;
            left -= used;
            let expected = used + if kind <= 1 { 1 } else { 2 };
            if expected != len {
                put!(self.out, "[len {len}]");
            }
            first = false;
            if kind == 0 {
                break;
            }
        }
        self.out.push(']');
        Ok(true)
    }

    /// ` 2 {201:301}{401:501}`: selective acknowledgements, relative like
    /// the ack number.
    fn sack(
        &mut self,
        opts: Bytes<'_>,
        at: usize,
        n: usize,
        base: u32,
        need: &dyn Fn(usize) -> Result<(), bool>,
    ) -> Result<usize, bool> {
        if !n.is_multiple_of(8) {
            self.out.push_str(" invalid sack");
            return Ok(n);
        }
        put!(self.out, " {} ", n / 8);
        for i in (0..n).step_by(8) {
            need(i + 8)?;
            let word = |j| opts.be32(at + j, L).unwrap_or(0).wrapping_sub(base);
            put!(self.out, "{{{}:{}}}", word(i), word(i + 4));
        }
        Ok(n)
    }

    fn bad_option(&mut self, first: bool) -> bool {
        self.out.push_str("[bad opt]");
        if !first {
            self.out.push(']');
        }
        false
    }
}

fn option_name(kind: u8) -> String {
    let name = match kind {
        0 => "eol",
        1 => "nop",
        2 => "mss",
        3 => "wscale",
        4 => "sackOK",
        5 => "sack",
        6 => "echo",
        7 => "echoreply",
        8 => "TS",
        11 => "cc",
        12 => "ccnew",
        13 => "",
        19 => "md5",
        20 => "scps",
        28 => "uto",
        29 => "tcp-ao",
        30 => "mptcp",
        34 => "tfo",
        254 => "exp",
        n => return format!("unknown-{n}"),
    };
    name.to_owned()
}
