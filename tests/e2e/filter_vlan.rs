//! VLAN tags (issue 15). The kernel keeps a frame's outer 802.1Q/802.1ad
//! tag in skb metadata on receive and when a bridge forwards it, so the
//! bytes a TC program reads lack it. podtrace must write such frames as
//! libpcap does on Linux (tcpdump capturing live on the same interface is
//! the reference), and its filters, both engines, must select what
//! `tcpdump -r unfiltered.pcap EXPR` selects from that file.
//!
//! Two test namespaces A and B on a bridge; the captures are on B's host
//! veth, which sees tagged frames three ways: sent by A and forwarded by the
//! bridge (TC egress, tag in metadata), sent by B (TC ingress, tag in
//! metadata), and sent with AF_PACKET on the host veth itself (TC egress,
//! tag in the packet bytes). Single tags with and without priority bits,
//! priority tags (VID 0), QinQ (802.1ad over 802.1Q, and 802.1Q twice),
//! 0x9100 (never moved to metadata) and frames cut right after the tag.

use std::net::Ipv4Addr;

use anyhow::{ensure, Context, Result};
use etherparse::PacketBuilder;
use podtrace_tests::{
    netns::TestNet,
    pcap,
    run::Capture,
    traffic,
    vlan::{self, Bridge, Tcpdump},
};

use crate::{capture::tempdir, filter::differential_on};

/// Tags of the frames sent, outermost first: (TPID, TCI).
const TAGS: &[&[(u16, u16)]] = &[
    &[],
    &[(0x8100, 10)],
    &[(0x8100, 5 << 13 | 20)],
    &[(0x8100, 3 << 13)],
    &[(0x88a8, 100), (0x8100, 10)],
    &[(0x8100, 30), (0x8100, 10)],
    &[(0x9100, 10)],
];

/// Expressions about tags, and loads at, around and past them.
const EXPRESSIONS: &[&str] = &[
    "vlan",
    "not vlan",
    "vlan 10",
    "vlan 20",
    "vlan 0",
    "vlan 100 and vlan 10",
    "vlan 30 and vlan 10",
    "vlan and vlan",
    "vlan and udp",
    "vlan 10 and udp port 7001",
    "vlan and tcp[tcpflags] & tcp-syn != 0",
    "vlan and (arp or icmp)",
    "vlan and vlan and ip",
    "udp or arp",
    "ether[12:2] = 0x8100",
    "ether[12:2] = 0x88a8",
    "ether[14:2] & 0xfff = 10",
    "ether[14] >> 5 = 5",
    "ether[12] = 0x81 or ether[13] = 0xa8",
    "ether[12:4] = 0x8100000a",
    "ether[10:4] & 0xffff = 0x8100",
    "ether[9:4] & 0xff = 0x88",
    "ether[11:2] & 0xff = 0x81",
    "ether[13:4] = 0x00000a08",
    "ether[14:4] & 0xffff0000 = 0x000a0000",
    "ether[15:2] = 0x0a08",
    "ether[15:4] = 0x0a080045",
    "ether[(ether[0] & 1) + 14 : 2] & 0xfff = 10",
    "ether[(ether[0] & 1) + 11 : 4] & 0xffffff = 0x810000",
    "ether[(ether[0] & 1) + 10 : 2] != 0",
    "ether[(ether[0] & 1) + 15] = 0x0a",
    "ether[(ether[0] & 1) + 16 : 2] = 0x0800",
    "len = 20 or len = 22",
    "len > 80 and vlan",
    "ether[16:4] != 0",
    "ether src {a_mac} and vlan 10",
];

/// The tests' frames: IP to the other namespace, which has no route back
/// to answer, ARP for an address nobody has.
struct Frames {
    from_a: Vec<Vec<u8>>,
    from_b: Vec<Vec<u8>>,
    from_host: Vec<Vec<u8>>,
}

impl Frames {
    fn new(a: &TestNet, b: &TestNet) -> Result<Self> {
        let (a_mac, b_mac) = (vlan::mac(&a.ns_mac()?)?, vlan::mac(&b.ns_mac()?)?);
        let nobody = |net: &TestNet| {
            let o = net.ns_ip.octets();
            Ipv4Addr::new(o[0], o[1], o[2], 3).octets()
        };
        let base = |src_mac, dst_mac, src: [u8; 4], dst: &TestNet| -> Result<Vec<Vec<u8>>> {
            let (to, nobody) = (dst.ns_ip.octets(), nobody(dst));
            let dst = to;
            let ip = || PacketBuilder::ethernet2(src_mac, dst_mac).ipv4(src, dst, 64);
            let mut out = Vec::new();
            let mut frame = Vec::new();
            ip().udp(5000, 7001)
                .write(&mut frame, &traffic::pattern(64, 1))?;
            out.push(std::mem::take(&mut frame));
            ip().tcp(40000, 9000, 1, 64240)
                .syn()
                .write(&mut frame, &[])?;
            out.push(std::mem::take(&mut frame));
            ip().icmpv4_echo_request(7, 1)
                .write(&mut frame, &traffic::pattern(56, 2))?;
            out.push(std::mem::take(&mut frame));
            let mut arp = vec![0xff; 6];
            arp.extend(src_mac);
            arp.extend([0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 1]);
            arp.extend(src_mac);
            arp.extend(src);
            arp.extend([0; 6]);
            arp.extend(nobody);
            out.push(arp);
            Ok(out)
        };
        let every_tag = |frames: &[Vec<u8>]| -> Vec<Vec<u8>> {
            frames
                .iter()
                .flat_map(|f| TAGS.iter().map(move |tags| vlan::tagged(f, tags)))
                .collect()
        };
        let a_to_b = base(a_mac, b_mac, a.ns_ip.octets(), b)?;
        let mut from_a = every_tag(&a_to_b);
        // Cut 2 and 4 bytes after the tag and type (a veth drops a frame
        // that is nothing more).
        from_a.push(vlan::tagged(&a_to_b[0][..16], &[(0x8100, 10)]));
        from_a.push(vlan::tagged(&a_to_b[0][..18], &[(0x8100, 10)]));
        let b_to_a = base(b_mac, a_mac, b.ns_ip.octets(), a)?;
        let from_b = every_tag(&b_to_a[..1]);
        let from_host = every_tag(&a_to_b[..2]);
        Ok(Self {
            from_a,
            from_b,
            from_host,
        })
    }

    fn all(&self) -> impl Iterator<Item = &Vec<u8>> {
        self.from_a
            .iter()
            .chain(&self.from_b)
            .chain(&self.from_host)
    }

    /// Sends them: A's and B's from their eth0, the host's on B's host veth.
    fn send(&self, a: &TestNet, b: &TestNet) -> Result<()> {
        traffic::on_one_cpu(|| {
            a.within(|| vlan::send("eth0", &self.from_a))??;
            b.within(|| vlan::send("eth0", &self.from_b))??;
            vlan::send(&b.host_if, &self.from_host)
        })
    }
}

/// A, B and the bridge; the bridge goes first on drop. Neither namespace
/// forwards (a namespace may inherit forwarding from the host).
fn topology() -> Result<(TestNet, TestNet, Bridge)> {
    let a = TestNet::new()?;
    let b = TestNet::new()?;
    for net in [&a, &b] {
        net.in_ns(&["sysctl", "-qw", "net.ipv4.ip_forward=0"])?;
    }
    let bridge = Bridge::join(&[&b, &a])?;
    Ok((a, b, bridge))
}

/// podtrace's files equal tcpdump's, packet for packet and byte for byte,
/// at snap lengths that keep the whole frame, cut the tag, or end before
/// it (where libpcap puts no tag back); text output parses tagged frames.
pub fn tags_written_like_tcpdump() -> Result<()> {
    let (a, b, _bridge) = topology()?;
    let frames = Frames::new(&a, &b)?;
    let macs = [vlan::mac(&a.ns_mac()?)?, vlan::mac(&b.ns_mac()?)?];
    let dir = tempdir()?;
    let snaplens = [262_144u32, 16, 14, 10];
    let mut tcpdumps = Vec::new();
    let mut captures = Vec::new();
    for snaplen in snaplens {
        let file = |tool: &str| dir.path().join(format!("{tool}-{snaplen}.pcap"));
        tcpdumps.push(Tcpdump::start(&b.host_if, snaplen, &file("tcpdump"))?);
        let ours = file("podtrace");
        captures.push(Capture::start(&[
            "capture",
            "-i",
            &b.host_if,
            "-s",
            &snaplen.to_string(),
            "-w",
            ours.to_str().unwrap(),
        ])?);
    }
    let text = Capture::start(&["capture", "-i", &b.host_if])?;
    frames.send(&a, &b)?;
    for t in tcpdumps {
        t.stop()?;
    }
    let text = text.stop(libc::SIGINT)?;
    for (snaplen, capture) in snaplens.iter().zip(captures) {
        let done = capture.stop(libc::SIGINT)?;
        ensure!(done.status.success(), "{}", done.stderr);
        // The frames between A and B: captures start one after another, so
        // a stray multicast report may reach one and not the next.
        let read = |tool: &str| -> Result<Vec<pcap::Packet>> {
            let all = pcap::read(&dir.path().join(format!("{tool}-{snaplen}.pcap")))?;
            Ok(all
                .into_iter()
                .filter(|p| between(&p.data, &macs))
                .collect())
        };
        let (ours, theirs) = (read("podtrace")?, read("tcpdump")?);
        ensure!(
            theirs.len() >= frames.all().count(),
            "-s {snaplen}: tcpdump saw {} packets, {} were sent",
            theirs.len(),
            frames.all().count()
        );
        if let Some(i) = (0..ours.len().max(theirs.len())).find(|&i| ours.get(i) != theirs.get(i)) {
            anyhow::bail!(
                "-s {snaplen}: packet {i} differs from tcpdump's ({} vs {} packets):\n podtrace {:?}\n tcpdump  {:?}",
                ours.len(),
                theirs.len(),
                ours.get(i),
                theirs.get(i)
            );
        }
        if *snaplen == snaplens[0] {
            // Every frame sent is in the file whole, tags and all (next to
            // what else the kernel sent: the bridge's IGMP report, say).
            let mut got: Vec<&Vec<u8>> = ours.iter().map(|p| &p.data).collect();
            for frame in frames.all() {
                let at = got.iter().position(|g| *g == frame);
                let at =
                    at.with_context(|| format!("a frame sent is not in the file: {frame:02x?}"))?;
                got.remove(at);
            }
        }
    }
    // One line per packet, tagged IPv4 among them.
    ensure!(text.status.success(), "{}", text.stderr);
    let udp = format!("{}.5000 > ", a.ns_ip);
    let udp_lines = text.stdout.lines().filter(|l| l.contains(&udp)).count();
    ensure!(
        text.stdout.lines().count() >= frames.all().count() && udp_lines >= TAGS.len() * 2,
        "text output: {udp_lines} UDP lines of {}:\n{}",
        text.stdout.lines().count(),
        text.stdout
    );
    Ok(())
}

/// Whether `frame` (at least 10 bytes of it) goes between the MAC
/// addresses `macs`, or from one of them to all.
fn between(frame: &[u8], macs: &[[u8; 6]]) -> bool {
    frame.len() >= 10
        && (frame[..6] == [0xff; 6] || macs.iter().any(|m| frame[..6] == *m))
        && macs.iter().any(|m| frame[6..10] == m[..4])
}

/// Every expression above, on both engines, against tcpdump.
pub fn filters_match_tcpdump_on_tagged_frames() -> Result<()> {
    let (a, b, _bridge) = topology()?;
    let frames = Frames::new(&a, &b)?;
    let a_mac = a.ns_mac()?;
    let expressions: Vec<String> = EXPRESSIONS
        .iter()
        .map(|e| e.replace("{a_mac}", &a_mac))
        .collect();
    let send = || frames.send(&a, &b);
    for engine in ["native", "interpreter"] {
        let mut selected = Vec::new();
        for batch in expressions.chunks(18) {
            selected.extend(differential_on(&b.host_if, batch, engine, &send)?);
        }
        // `vlan` is about the first tag only: what the frame as written has.
        let tagged = frames
            .all()
            .filter(|f| matches!(u16::from_be_bytes([f[12], f[13]]), 0x8100 | 0x88a8 | 0x9100))
            .count();
        let count = |expr: &str| {
            selected
                .iter()
                .find(|(e, _, _)| e == expr)
                .map(|(_, n, _)| *n)
                .context(expr.to_owned())
        };
        ensure!(
            count("vlan")? == tagged && count("not vlan")? >= frames.all().count() - tagged,
            "{engine}: vlan {:?}, not vlan {:?}, {tagged} of {} frames sent tagged",
            count("vlan"),
            count("not vlan"),
            frames.all().count()
        );
        for expr in [
            "vlan 100 and vlan 10",
            "vlan 0",
            "ether[10:4] & 0xffff = 0x8100",
            "ether[15:4] = 0x0a080045",
            "ether[(ether[0] & 1) + 11 : 4] & 0xffffff = 0x810000",
            "len = 20 or len = 22",
        ] {
            ensure!(count(expr)? > 0, "{engine}: {expr:?} selected nothing");
        }
    }
    Ok(())
}
