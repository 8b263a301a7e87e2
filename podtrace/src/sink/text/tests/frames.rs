//! The frames the text tests print: what a pod's veth carries, and the
//! odd cases tcpdump words in its own way (truncation, bad lengths,
//! unknown types), built by hand so that malformed ones can be made too.

pub(super) const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
pub(super) const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];
pub(super) const HOST: [u8; 4] = [10, 245, 0, 1];
pub(super) const POD: [u8; 4] = [10, 245, 0, 5];
pub(super) const HOST6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
pub(super) const POD6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
/// fe80::200:ff:fe00:a, and a multicast group: compressed the RFC 5952 way.
pub(super) const LINK6: [u8; 16] = [
    0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xfe, 0, 0, 0x0a,
];
pub(super) const MLD_GROUP: [u8; 16] = [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0, 0, 2];
/// One zero group between others: not compressed.
pub(super) const ODD6: [u8; 16] = [0xfd, 0, 0, 0, 0, 1, 0, 2, 0, 3, 0, 4, 0, 5, 0, 6];

pub(super) const FIN: u8 = 0x01;
pub(super) const SYN: u8 = 0x02;
pub(super) const RST: u8 = 0x04;
pub(super) const PSH: u8 = 0x08;
pub(super) const ACK: u8 = 0x10;
pub(super) const URG: u8 = 0x20;
pub(super) const ECE: u8 = 0x40;
pub(super) const CWR: u8 = 0x80;

pub(super) fn eth(ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = [MAC_B, MAC_A].concat();
    f.extend(ethertype.to_be_bytes());
    f.extend(payload);
    f
}

pub(super) fn ipv4_with(
    src: [u8; 4],
    dst: [u8; 4],
    proto: u8,
    options: &[u8],
    frag: u16,
    payload: &[u8],
) -> Vec<u8> {
    let header = 20 + options.len();
    let mut p = vec![0x40 | (header / 4) as u8, 0];
    p.extend(((header + payload.len()) as u16).to_be_bytes());
    p.extend([0x12, 0x34]);
    p.extend(frag.to_be_bytes());
    p.extend([64, proto, 0, 0]);
    p.extend(src);
    p.extend(dst);
    p.extend(options);
    p.extend(payload);
    p
}

pub(super) fn ipv4(src: [u8; 4], dst: [u8; 4], proto: u8, payload: &[u8]) -> Vec<u8> {
    eth(0x0800, &ipv4_with(src, dst, proto, &[], 0x4000, payload))
}

pub(super) fn ipv6_packet(src: [u8; 16], dst: [u8; 16], next: u8, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x60, 0, 0, 0];
    p.extend((payload.len() as u16).to_be_bytes());
    p.extend([next, 64]);
    p.extend(src);
    p.extend(dst);
    p.extend(payload);
    p
}

pub(super) fn ipv6(src: [u8; 16], dst: [u8; 16], next: u8, payload: &[u8]) -> Vec<u8> {
    eth(0x86dd, &ipv6_packet(src, dst, next, payload))
}

pub(super) struct Tcp<'a> {
    ports: (u16, u16),
    seq: u32,
    ack: u32,
    flags: u8,
    win: u16,
    options: &'a [u8],
    data: &'a [u8],
}

impl Tcp<'_> {
    fn bytes(&self) -> Vec<u8> {
        let header = 20 + self.options.len();
        let mut t = Vec::new();
        t.extend(self.ports.0.to_be_bytes());
        t.extend(self.ports.1.to_be_bytes());
        t.extend(self.seq.to_be_bytes());
        t.extend(self.ack.to_be_bytes());
        t.extend([((header / 4) as u8) << 4, self.flags]);
        t.extend(self.win.to_be_bytes());
        t.extend([0, 0, 0, 7]); // checksum, urgent pointer
        t.extend(self.options);
        t.extend(self.data);
        t
    }
}

pub(super) fn tcp(
    ports: (u16, u16),
    seq: u32,
    ack: u32,
    flags: u8,
    options: &[u8],
    data: &[u8],
) -> Vec<u8> {
    Tcp {
        ports,
        seq,
        ack,
        flags,
        win: 502,
        options,
        data,
    }
    .bytes()
}

pub(super) fn udp(ports: (u16, u16), data: &[u8]) -> Vec<u8> {
    let mut u = Vec::new();
    u.extend(ports.0.to_be_bytes());
    u.extend(ports.1.to_be_bytes());
    u.extend((8 + data.len() as u16).to_be_bytes());
    u.extend([0, 0]);
    u.extend(data);
    u
}

pub(super) fn icmp(kind: u8, code: u8, rest: [u8; 4], data: &[u8]) -> Vec<u8> {
    let mut m = vec![kind, code, 0, 0];
    m.extend(rest);
    m.extend(data);
    m
}

pub(super) fn arp(op: u16, sender: ([u8; 6], [u8; 4]), target: ([u8; 6], [u8; 4])) -> Vec<u8> {
    let mut a = vec![0, 1, 8, 0, 6, 4];
    a.extend(op.to_be_bytes());
    a.extend(sender.0);
    a.extend(sender.1);
    a.extend(target.0);
    a.extend(target.1);
    eth(0x0806, &a)
}

/// mss 1460, sackOK, TS val 1000 ecr 0, nop, wscale 7: a Linux SYN's.
pub(super) fn syn_options() -> Vec<u8> {
    let mut o = vec![2, 4, 0x05, 0xb4, 4, 2, 8, 10];
    o.extend(1000u32.to_be_bytes());
    o.extend(0u32.to_be_bytes());
    o.extend([1, 3, 3, 7]);
    o
}

/// nop, nop, TS val `val` ecr `ecr`.
pub(super) fn ts(val: u32, ecr: u32) -> Vec<u8> {
    let mut o = vec![1, 1, 8, 10];
    o.extend(val.to_be_bytes());
    o.extend(ecr.to_be_bytes());
    o
}

/// A frame, its length on the wire (when the capture kept less), and a
/// name for failure messages.
#[derive(Clone)]
pub(super) struct Frame {
    pub name: &'static str,
    pub data: Vec<u8>,
    pub orig_len: Option<usize>,
}

pub(super) fn frame(name: &'static str, data: Vec<u8>) -> Frame {
    Frame {
        name,
        data,
        orig_len: None,
    }
}

/// `frame` captured with only `snaplen` bytes kept.
pub(super) fn cut(name: &'static str, data: Vec<u8>, snaplen: usize) -> Frame {
    let orig_len = Some(data.len());
    Frame {
        name,
        data: data[..snaplen].to_vec(),
        orig_len,
    }
}

pub(super) fn tcp_frames() -> Vec<Frame> {
    let (client, server) = ((41000, 9000), (9000, 41000));
    let syn_opts = syn_options();
    let data = b"GET / HTTP/1.0\r\n\r\n";
    let mut sack = vec![1, 1, 5, 18];
    for edge in [5201u32, 5301, 5401, 5501] {
        sack.extend(edge.to_be_bytes());
    }
    let v4 = |ports, seq, ack, flags, opts: &[u8], data: &[u8]| {
        ipv4(HOST, POD, 6, &tcp(ports, seq, ack, flags, opts, data))
    };
    let back = |ports, seq, ack, flags, opts: &[u8], data: &[u8]| {
        ipv4(POD, HOST, 6, &tcp(ports, seq, ack, flags, opts, data))
    };
    let big_data = ipv4(
        HOST,
        POD,
        6,
        &tcp(client, 1020, 5102, PSH | ACK, &ts(9, 9), &[7; 300]),
    );
    vec![
        frame("syn", v4(client, 1000, 0, SYN, &syn_opts, &[])),
        frame(
            "syn-ack",
            back(server, 5000, 1001, SYN | ACK, &syn_opts, &[]),
        ),
        frame("ack", v4(client, 1001, 5001, ACK, &ts(1001, 2000), &[])),
        frame(
            "request",
            v4(client, 1001, 5001, PSH | ACK, &ts(1002, 2000), data),
        ),
        frame(
            "response",
            back(server, 5001, 1019, PSH | ACK, &ts(2001, 1002), &[b'x'; 100]),
        ),
        frame(
            "fin",
            v4(client, 1019, 5101, FIN | ACK, &ts(1003, 2001), &[]),
        ),
        frame("fin back", back(server, 5101, 1020, FIN | ACK, &[], &[])),
        frame("sack", v4(client, 1020, 5102, ACK, &sack, &[])),
        cut("payload cut by the snaplen", big_data.clone(), 96),
        cut("cut at the ports", big_data.clone(), 14 + 20 + 2),
        cut("cut in the header", big_data.clone(), 14 + 20 + 10),
        cut("cut after the header", big_data.clone(), 14 + 20 + 20),
        cut(
            "cut in the first option",
            v4(client, 1, 0, SYN, &syn_opts, &[]),
            14 + 20 + 22,
        ),
        cut(
            "cut in a later option",
            v4(client, 1, 0, SYN, &syn_opts, &[]),
            14 + 20 + 30,
        ),
        cut(
            "cut in the options' kinds",
            v4(client, 1, 0, SYN, &syn_opts, &[]),
            14 + 20 + 24,
        ),
        frame("closed port", v4((41001, 9001), 77, 0, SYN, &[], &[])),
        frame("reset", back((9001, 41001), 0, 78, RST | ACK, &[], &[])),
        frame("bare reset", v4((41002, 9000), 123, 0, RST, &[], &[])),
        frame(
            "urgent, ecn",
            v4(
                (41003, 9000),
                55,
                66,
                URG | ACK | ECE | CWR | PSH,
                &[],
                b"abc",
            ),
        ),
        frame("no flags", v4((41003, 9000), 55, 66, 0, &[], &[])),
        // Picked up mid-stream: the first packet seen sets the base.
        // ... with sequence numbers that wrap past 2^32.
        frame(
            "mid-stream",
            v4((2000, 9000), u32::MAX - 5, 7, ACK, &[], &[1; 10]),
        ),
        frame(
            "mid-stream 2",
            v4((2000, 9000), 4, 7, PSH | ACK, &[], &[1; 10]),
        ),
        frame("mid-stream back", back((9000, 2000), 7, 14, ACK, &[], &[])),
        frame("same ports", v4((9000, 9000), 10, 20, ACK, &[], &[])),
        frame("same ports back", back((9000, 9000), 20, 11, ACK, &[], &[])),
        frame(
            "same ports 2",
            v4((9000, 9000), 11, 21, PSH | ACK, &[], b"hi"),
        ),
        frame(
            "eol",
            v4((41004, 9000), 1, 0, SYN, &[2, 4, 5, 0xb4, 0, 0, 0, 0], &[]),
        ),
        frame(
            "unknown option",
            v4((41004, 9000), 1, 0, SYN, &[99, 4, 0xab, 0xcd], &[]),
        ),
        frame(
            "bad option length",
            v4((41004, 9000), 1, 0, SYN, &[2, 9, 5, 0xb4], &[]),
        ),
        frame(
            "option longer than its kind",
            v4((41004, 9000), 1, 0, SYN, &[3, 4, 7, 0], &[]),
        ),
        frame("short header", {
            let mut t = tcp((41005, 9000), 1, 0, SYN, &[], &[]);
            t[12] = 0x40;
            ipv4(HOST, POD, 6, &t)
        }),
        frame(
            "v6 syn",
            ipv6(HOST6, POD6, 6, &tcp(client, 1000, 0, SYN, &syn_opts, &[])),
        ),
        frame(
            "v6 syn-ack",
            ipv6(
                POD6,
                HOST6,
                6,
                &tcp(server, 5000, 1001, SYN | ACK, &syn_opts, &[]),
            ),
        ),
        frame(
            "v6 ack",
            ipv6(HOST6, POD6, 6, &tcp(client, 1001, 5001, ACK, &[], &[])),
        ),
        frame(
            "v6 data",
            ipv6(
                HOST6,
                POD6,
                6,
                &tcp(client, 1001, 5001, PSH | ACK, &[], b"v6 data"),
            ),
        ),
    ]
}

pub(super) fn udp_frames() -> Vec<Frame> {
    let ports = (40001, 9999);
    let mut bad_len = udp(ports, b"hello");
    bad_len[5] = 200;
    let mut tiny_len = udp(ports, b"hello");
    tiny_len[5] = 4;
    let datagram = ipv4(HOST, POD, 17, &udp(ports, &[3; 100]));
    let mut dest_opts = vec![17, 0, 1, 4, 0, 0, 0, 0];
    dest_opts.extend(udp(ports, b"after options"));
    vec![
        frame("udp", ipv4(HOST, POD, 17, &udp(ports, b"hello"))),
        frame("udp back", ipv4(POD, HOST, 17, &udp((9999, 40001), &[]))),
        frame("udp bad length", ipv4(HOST, POD, 17, &bad_len)),
        frame("udp length below 8", ipv4(HOST, POD, 17, &tiny_len)),
        cut("udp cut at the ports", datagram.clone(), 14 + 20 + 2),
        cut("udp cut in the header", datagram.clone(), 14 + 20 + 6),
        cut("udp payload cut", datagram, 60),
        frame("udp v6", ipv6(HOST6, POD6, 17, &udp(ports, b"v6"))),
        frame(
            "udp v6 odd address",
            ipv6(ODD6, POD6, 17, &udp(ports, b"v6")),
        ),
        frame(
            "udp after destination options",
            ipv6(HOST6, POD6, 60, &dest_opts),
        ),
        frame("first fragment", {
            let mut d = udp(ports, &[5; 1000]);
            d.truncate(400);
            eth(0x0800, &ipv4_with(HOST, POD, 17, &[], 0x2000, &d))
        }),
        frame(
            "later fragment",
            eth(0x0800, &ipv4_with(HOST, POD, 17, &[], 0x0032, &[5; 100])),
        ),
        frame(
            "ip options",
            eth(
                0x0800,
                &ipv4_with(HOST, POD, 17, &[1, 1, 1, 0], 0, &udp(ports, b"opt")),
            ),
        ),
        frame(
            "ip-in-ip",
            ipv4(
                HOST,
                POD,
                4,
                &ipv4_with(POD, HOST, 17, &[], 0, &udp(ports, b"in")),
            ),
        ),
        frame("unknown protocol", ipv4(HOST, POD, 253, &[9; 20])),
        frame("unknown next header", ipv6(HOST6, POD6, 253, &[9; 20])),
        frame("ip missing bytes", {
            let mut f = ipv4(HOST, POD, 17, &udp(ports, b"short"));
            f[16..18].copy_from_slice(&1000u16.to_be_bytes());
            f
        }),
        frame("vlan", {
            let mut f = ipv4(HOST, POD, 17, &udp(ports, b"tagged"));
            f.splice(12..12, [0x81, 0x00, 0x00, 0x0a]);
            f
        }),
        frame("qinq", {
            let mut f = ipv4(HOST, POD, 17, &udp(ports, b"tagged twice"));
            f.splice(12..12, [0x88, 0xa8, 0x00, 0x64, 0x81, 0x00, 0x00, 0x0a]);
            f
        }),
        frame("other ethertype", eth(0x88b5, &[0x71; 46])),
        frame("runt", vec![1, 2, 3]),
        cut(
            "ip cut in its header",
            ipv4(HOST, POD, 17, &udp(ports, b"x")),
            14 + 12,
        ),
    ]
}

pub(super) fn icmp_frames() -> Vec<Frame> {
    let quoted = ipv4_with(POD, HOST, 17, &[], 0, &udp((7005, 7003), &[0; 20]));
    let quoted_tcp = ipv4_with(POD, HOST, 6, &[], 0, &tcp((7005, 80), 1, 0, SYN, &[], &[]));
    let q = &quoted[..28];
    let error = |kind, code, rest, q: &[u8]| ipv4(HOST, POD, 1, &icmp(kind, code, rest, q));
    let echo = ipv4(HOST, POD, 1, &icmp(8, 0, [0x12, 0x34, 0, 7], &[0; 56]));
    vec![
        frame("echo", echo.clone()),
        frame(
            "echo reply",
            ipv4(POD, HOST, 1, &icmp(0, 0, [0x12, 0x34, 0, 7], &[0; 56])),
        ),
        cut("echo cut before its seq", echo.clone(), 14 + 20 + 6),
        cut("echo cut in its type", echo, 14 + 20),
        frame("port unreachable", error(3, 3, [0; 4], q)),
        frame(
            "tcp port unreachable",
            error(3, 3, [0; 4], &quoted_tcp[..28]),
        ),
        frame("net unreachable", error(3, 0, [0; 4], q)),
        frame("host unreachable", error(3, 1, [0; 4], q)),
        frame("protocol unreachable", error(3, 2, [0; 4], q)),
        frame("need to frag", error(3, 4, [0, 0, 0x05, 0x78], q)),
        frame("need to frag, no mtu", error(3, 4, [0; 4], q)),
        frame("admin prohibited", error(3, 13, [0; 4], q)),
        frame("unreachable code 99", error(3, 99, [0; 4], q)),
        cut(
            "port unreachable cut",
            error(3, 3, [0; 4], q),
            14 + 20 + 8 + 20,
        ),
        frame("redirect", error(5, 1, [10, 245, 0, 9], q)),
        frame("time exceeded", error(11, 0, [0; 4], q)),
        frame("reassembly time exceeded", error(11, 1, [0; 4], q)),
        frame("parameter problem", error(12, 0, [21, 0, 0, 0], q)),
        frame("parameter problem code 1", error(12, 1, [0; 4], q)),
        frame(
            "time stamp",
            ipv4(HOST, POD, 1, &icmp(13, 0, [0, 1, 0, 2], &[0; 12])),
        ),
        frame("source quench", error(4, 0, [0; 4], q)),
        frame(
            "address mask request",
            ipv4(HOST, POD, 1, &icmp(17, 0, [0; 4], &[0; 4])),
        ),
        frame(
            "address mask reply",
            ipv4(HOST, POD, 1, &icmp(18, 0, [0; 4], &[255, 255, 255, 0])),
        ),
        frame(
            "icmp type 42",
            ipv4(HOST, POD, 1, &icmp(42, 0, [0; 4], &[])),
        ),
    ]
}

pub(super) fn icmp6_frames() -> Vec<Frame> {
    let quoted = ipv6_packet(POD6, HOST6, 17, &udp((7005, 7003), b"z"));
    let quoted_tcp = ipv6_packet(POD6, HOST6, 6, &tcp((7005, 80), 1, 0, SYN, &[], &[]));
    let m = |kind, code, rest: [u8; 4], body: &[u8]| {
        ipv6(HOST6, POD6, 58, &icmp(kind, code, rest, body))
    };
    let mut ns = POD6.to_vec();
    ns.extend([1, 1]);
    ns.extend(MAC_A);
    let mut report = vec![4, 0, 0, 0];
    report.extend(MLD_GROUP);
    let mut hbh = vec![58, 0, 5, 2, 0, 0, 1, 0];
    hbh.extend(icmp(143, 0, [0, 0, 0, 1], &report));
    let mut all_nodes = [0u8; 16];
    all_nodes[..2].copy_from_slice(&[0xff, 0x02]);
    all_nodes[15] = 1;
    let mut query = MLD_GROUP.to_vec();
    query.extend([0, 0, 0, 2]);
    query.extend([HOST6, POD6].concat());
    let echo = m(128, 0, [0, 1, 0, 2], &[b'a'; 56]);
    vec![
        frame("v6 echo", echo.clone()),
        frame(
            "v6 echo reply",
            ipv6(POD6, HOST6, 58, &icmp(129, 0, [0, 1, 0, 2], &[b'a'; 56])),
        ),
        cut("v6 echo cut", echo, 14 + 40 + 6),
        frame("neighbor solicitation", m(135, 0, [0; 4], &ns)),
        frame(
            "neighbor advertisement",
            ipv6(POD6, HOST6, 58, &icmp(136, 0, [0x60, 0, 0, 0], &ns)),
        ),
        frame(
            "router solicitation",
            ipv6(LINK6, all_nodes, 58, &icmp(133, 0, [0; 4], &[])),
        ),
        frame("router advertisement", m(134, 0, [64, 0, 7, 8], &[0; 8])),
        frame("redirect", m(137, 0, [0; 4], &[POD6, HOST6].concat())),
        frame("packet too big", m(2, 0, [0, 0, 5, 0], &quoted)),
        frame("time exceeded", m(3, 0, [0; 4], &quoted)),
        frame("reassembly time exceeded", m(3, 1, [0; 4], &quoted)),
        frame("parameter problem", m(4, 1, [0, 0, 0, 6], &quoted)),
        frame("v6 port unreachable", m(1, 4, [0; 4], &quoted)),
        frame("v6 tcp port unreachable", m(1, 4, [0; 4], &quoted_tcp)),
        frame("v6 address unreachable", m(1, 3, [0; 4], &quoted)),
        frame("v6 no route", m(1, 0, [0; 4], &quoted)),
        frame("v6 beyond scope", m(1, 2, [0; 4], &quoted)),
        frame("mld v2 report", m(143, 0, [0, 0, 0, 1], &report)),
        frame(
            "mld v2 report after hop-by-hop",
            ipv6(
                LINK6,
                [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x16],
                0,
                &hbh,
            ),
        ),
        frame(
            "mld v1 query",
            ipv6(
                LINK6,
                all_nodes,
                58,
                &icmp(130, 0, [0, 10, 0, 0], &MLD_GROUP),
            ),
        ),
        frame(
            "mld v2 query",
            ipv6(LINK6, all_nodes, 58, &icmp(130, 0, [0, 10, 0, 0], &query)),
        ),
        frame("mld v1 report", m(131, 0, [0; 4], &MLD_GROUP)),
        frame("icmp6 type 250", m(250, 0, [1, 2, 3, 4], &[5; 8])),
    ]
}

pub(super) fn arp_frames() -> Vec<Frame> {
    let request = arp(1, (MAC_A, HOST), ([0; 6], POD));
    let mut padded = arp(2, (MAC_B, POD), (MAC_A, HOST));
    padded.resize(60, 0);
    vec![
        frame("arp request", request.clone()),
        frame(
            "arp request, target known",
            arp(1, (MAC_A, HOST), (MAC_B, POD)),
        ),
        frame("arp reply", arp(2, (MAC_B, POD), (MAC_A, HOST))),
        frame("arp reply, padded", padded),
        frame("rarp request", arp(3, (MAC_A, [0; 4]), (MAC_A, [0; 4]))),
        frame("rarp reply", arp(4, (MAC_B, POD), (MAC_A, HOST))),
        cut("arp cut", request, 14 + 20),
    ]
}

pub(super) fn all_frames() -> Vec<Frame> {
    [
        tcp_frames(),
        udp_frames(),
        icmp_frames(),
        icmp6_frames(),
        arp_frames(),
    ]
    .concat()
}
