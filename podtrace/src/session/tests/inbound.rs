//! Packets a CNI delivers into a pod past its host veth: detected from
//! the (fake) counters, reported once, and taken at the pod's eth0 with no
//! packet written twice while the hooks change.

use pcap_file::pcapng::blocks::{
    enhanced_packet::EnhancedPacketOption, interface_statistics::InterfaceStatisticsOption,
};
use podtrace_common::HOOK_ETH0_INGRESS;

use super::*;
use crate::{ring::monotonic_ns, session::handover::TRANSIT_NS};

/// A record of `ifindex` at `hook`, stamped `ts`, whose bytes are `bytes`.
fn feed_at(s: &mut Session<FakeAttacher>, ifindex: u32, hook: u8, ts: u64, bytes: &[u8]) {
    let record = Record {
        header: RecordHeader {
            ts_ns: ts,
            ifindex,
            orig_len: bytes.len() as u32,
            cap_len: bytes.len() as u32,
            hook,
            _pad: [0; 3],
        },
        data: bytes,
    };
    s.record(&record, &Clock::with_offset(0)).unwrap();
}

/// A statistics block: isb_osdrop, its comment, isb_ifrecv.
type Isb = (Option<u64>, Option<String>, u64);

/// Packets ("in"/"out" and their bytes) and the statistics blocks of the
/// file.
fn file(path: &Path) -> (Vec<String>, Vec<Isb>) {
    let mut reader = PcapNgReader::new(std::fs::File::open(path).unwrap()).unwrap();
    let (mut packets, mut stats) = (Vec::new(), Vec::new());
    while let Some(block) = reader.next_block() {
        match block.unwrap() {
            Block::EnhancedPacket(epb) => {
                let dir = match epb.options.first() {
                    Some(EnhancedPacketOption::Flags(1)) => "in",
                    _ => "out",
                };
                packets.push(format!("{dir} {}", String::from_utf8_lossy(&epb.data)));
            }
            Block::InterfaceStatistics(isb) => {
                let mut osdrop = None;
                let mut comment = None;
                let mut recv = 0;
                for o in isb.options {
                    match o {
                        InterfaceStatisticsOption::IsbOsDrop(n) => osdrop = Some(n),
                        InterfaceStatisticsOption::IsbIfRecv(n) => recv = n,
                        InterfaceStatisticsOption::Comment(c) => comment = Some(c.into_owned()),
                        _ => {}
                    }
                }
                stats.push((osdrop, comment, recv));
            }
            _ => {}
        }
    }
    (packets, stats)
}

fn one_pod(s: &mut Session<FakeAttacher>, tracker: &mut Tracker, ifindex: u32) {
    apply(
        s,
        tracker.on_pods(&[pod("prod", "b", "ub", "web", ifindex)], Instant::now()),
    );
}

#[test]
fn packets_past_the_veth_are_reported_once_and_counted_never_mode() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("n.pcapng");
    let (mut s, kernel, probe) = session_with(&path, u64::MAX, Fallback::Never);
    let mut tracker = Tracker::new(web_selector());
    // Before the capture: 3 packets skipped the veth. Not this capture's.
    probe.delivered(10, 4, 3);
    one_pod(&mut s, &mut tracker, 10);
    assert!(kernel.0.borrow().hooks[&10].egress, "never: at the veth");
    // ARP and the host's traffic cross the veth: no alarm.
    probe.delivered(10, 6, 0);
    s.check_inbound(monotonic_ns(), monotonic_ns());
    assert!(s.take_notes().is_empty());
    probe.delivered(10, 1, 5);
    s.check_inbound(monotonic_ns(), monotonic_ns());
    let notes = s.take_notes();
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert!(
        notes[0].starts_with("warning: pod prod/b: 5 packet(s) reached its eth0 without crossing host veth veth10 (a CNI redirect such as Cilium's bpf_redirect_peer); they are not captured (--redirect-fallback never)"),
        "{}",
        notes[0]
    );
    // Said once; the count goes on (the last look is at the stop).
    probe.delivered(10, 0, 2);
    s.check_inbound(monotonic_ns(), monotonic_ns());
    assert!(s.take_notes().is_empty());
    probe.delivered(10, 0, 1);
    s.detach_all();
    assert!(kernel.0.borrow().eth0.is_empty());
    let (missed, notes) = s.missed();
    assert_eq!(missed, 8);
    assert_eq!(notes.len(), 1);
    assert!(notes[0].starts_with("pod prod/b: 8 packet(s) reached the pod's eth0"));
    s.finish().unwrap();
    let (_, stats) = file(&path);
    let (osdrop, comment, _) = &stats[0];
    assert_eq!(*osdrop, Some(8));
    assert!(comment
        .as_deref()
        .unwrap()
        .contains("not in the capture: --redirect-fallback never"));
}

#[test]
fn no_packet_past_the_veth_no_warning() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.pcapng");
    let (mut s, kernel, probe) = session_with(&path, u64::MAX, Fallback::Auto);
    let mut tracker = Tracker::new(web_selector());
    one_pod(&mut s, &mut tracker, 10);
    for _ in 0..5 {
        probe.delivered(10, 9, 0);
        s.check_inbound(monotonic_ns(), monotonic_ns());
    }
    s.detach_all();
    assert!(s.take_notes().is_empty());
    assert!(kernel.0.borrow().eth0.is_empty());
    assert_eq!(s.missed(), (0, vec![]));
    s.finish().unwrap();
    assert_eq!(file(&path).1, [(Some(0), None, 0)]);
}

#[test]
fn auto_moves_the_pod_to_its_eth0_writing_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.pcapng");
    let (mut s, kernel, probe) = session_with(&path, u64::MAX, Fallback::Auto);
    let mut tracker = Tracker::new(web_selector());
    one_pod(&mut s, &mut tracker, 10);
    let t = monotonic_ns();
    feed_at(&mut s, 10, HOOK_EGRESS, t, b"host1");
    probe.delivered(10, 1, 2);
    s.check_inbound(t, t);
    let notes = s.take_notes();
    assert!(
        notes[0].ends_with("; podtrace captures them at the pod's eth0 from now on"),
        "{notes:?}"
    );
    assert!(kernel.0.borrow().eth0.is_empty(), "armed first");
    // Arming: what the egress hook writes is remembered.
    feed_at(&mut s, 10, HOOK_EGRESS, t + 1000, b"host2");
    feed_at(&mut s, 10, HOOK_INGRESS, t + 2000, b"reply");
    s.check_inbound(t + TRANSIT_NS / 2, t + TRANSIT_NS / 2);
    assert!(kernel.0.borrow().eth0.is_empty());
    probe.delivered(10, 0, 1);
    let switch = monotonic_ns().max(t + TRANSIT_NS);
    s.check_inbound(switch, switch);
    assert_eq!(kernel.0.borrow().eth0, [10]);
    assert!(!kernel.0.borrow().hooks[&10].egress, "egress hook detached");
    // host2 was in flight: it reaches eth0 too, and is not written again;
    // a redirected packet is.
    let after = monotonic_ns();
    feed_at(&mut s, 10, HOOK_ETH0_INGRESS, t + 5000, b"host2");
    feed_at(&mut s, 10, HOOK_ETH0_INGRESS, after, b"redirected");
    feed_at(&mut s, 10, HOOK_ETH0_INGRESS, after + 1, b"host3");
    kernel.saw(10, 7, 0);
    let later = monotonic_ns() + 2 * TRANSIT_NS;
    s.check_inbound(later, later);
    // Settled: the same bytes again are a new packet.
    feed_at(&mut s, 10, HOOK_ETH0_INGRESS, later, b"host2");
    kernel.saw(10, 1, 0);
    s.detach_all();
    let (missed, notes) = s.missed();
    assert_eq!(missed, 3, "what skipped the veth before the eth0 hook");
    assert!(
        notes[0].contains("3 packet(s) reached the pod's eth0"),
        "{notes:?}"
    );
    s.finish().unwrap();
    let (packets, stats) = file(&path);
    assert_eq!(
        packets,
        [
            "in host1",
            "in host2",
            "out reply",
            "in redirected",
            "in host3",
            "in host2"
        ]
    );
    let (osdrop, comment, recv) = &stats[0];
    assert_eq!(*osdrop, Some(3));
    // 8 seen by the kernel, one of them twice.
    assert_eq!(*recv, 7);
    let comment = comment.as_deref().unwrap();
    assert!(
        comment.contains(
            "what the pod received was captured at its own eth0; before that, 3 packet(s)"
        ),
        "{comment}"
    );
}

#[test]
fn once_one_pod_skips_its_veth_every_pod_moves_to_its_eth0() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.pcapng");
    let (mut s, kernel, probe) = session_with(&path, u64::MAX, Fallback::Auto);
    let mut tracker = Tracker::new(web_selector());
    let now = Instant::now();
    apply(
        &mut s,
        tracker.on_pods(
            &[
                pod("prod", "a", "ua", "web", 10),
                pod("prod", "b", "ub", "web", 11),
            ],
            now,
        ),
    );
    probe.delivered(11, 0, 1);
    let t = monotonic_ns();
    s.check_inbound(t, t);
    assert_eq!(s.take_notes().len(), 1, "only b's packets skipped its veth");
    s.check_inbound(t + TRANSIT_NS + 1, t + TRANSIT_NS + 1);
    let mut hooked = kernel.0.borrow().eth0.clone();
    hooked.sort();
    assert_eq!(hooked, [10, 11]);
    // A pod that joins now is hooked at its eth0 at once, without egress.
    apply(
        &mut s,
        tracker.on_pods(
            &[
                pod("prod", "a", "ua", "web", 10),
                pod("prod", "b", "ub", "web", 11),
                pod("prod", "c", "uc", "web", 12),
            ],
            now,
        ),
    );
    let k = kernel.0.borrow();
    assert_eq!(k.eth0.last(), Some(&12));
    assert!(k.hooks[&12].ingress && !k.hooks[&12].egress);
}

#[test]
fn always_takes_inbound_at_eth0_from_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.pcapng");
    let (mut s, kernel, _) = session_with(&path, u64::MAX, Fallback::Always);
    let mut tracker = Tracker::new(web_selector());
    one_pod(&mut s, &mut tracker, 10);
    {
        let k = kernel.0.borrow();
        assert_eq!(k.eth0, [10]);
        assert!(k.hooks[&10].ingress && !k.hooks[&10].egress);
    }
    feed_at(&mut s, 10, HOOK_ETH0_INGRESS, 5, b"in");
    feed_at(&mut s, 10, HOOK_INGRESS, 6, b"out");
    s.detach_all();
    s.finish().unwrap();
    let (packets, stats) = file(&path);
    assert_eq!(packets, ["in in", "out out"]);
    assert_eq!(stats[0].0, Some(0));
    assert!(stats[0]
        .1
        .as_deref()
        .unwrap()
        .starts_with("what the pod received was captured at its own eth0"));
}

#[test]
fn always_fails_when_eth0_cannot_be_hooked_auto_stays_on_the_veth() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, kernel, _) = session_with(&dir.path().join("f.pcapng"), u64::MAX, Fallback::Always);
    kernel.0.borrow_mut().eth0_fails = Some("no TCX".into());
    let target = pod("prod", "b", "ub", "web", 10).target().unwrap();
    assert!(s.apply(Change::Add(target.clone())).is_err());
    assert_eq!(kernel.0.borrow().detached, [10], "nothing left attached");

    let (mut s, kernel, probe) =
        session_with(&dir.path().join("g.pcapng"), u64::MAX, Fallback::Auto);
    kernel.0.borrow_mut().eth0_fails = Some("no TCX".into());
    // Packets skipped its veth before: auto wants its eth0 at once.
    probe.delivered(10, 0, 4);
    s.apply(Change::Add(target)).unwrap();
    assert!(kernel.0.borrow().hooks[&10].egress, "back on the veth");
    let notes = s.take_notes();
    assert!(notes[0].contains("cannot hook its eth0"), "{notes:?}");
    probe.delivered(10, 0, 2);
    s.check_inbound(monotonic_ns(), monotonic_ns());
    let notes = s.take_notes();
    assert!(
        notes[0].contains("2 packet(s) reached its eth0")
            && notes[0].contains("they are not captured"),
        "{notes:?}"
    );
    s.detach_all();
    assert_eq!(s.missed().0, 2);
}

#[test]
fn targets_without_a_namespace_or_inbound_are_not_watched() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, kernel, probe) =
        session_with(&dir.path().join("i.pcapng"), u64::MAX, Fallback::Always);
    let link = HostLink {
        ifindex: 5,
        name: "eth9".into(),
        peer_is_target: false,
    };
    s.apply(Change::Add(Target::link(link, "interface eth9".into())))
        .unwrap();
    assert!(kernel.0.borrow().eth0.is_empty());
    assert!(probe.0.borrow().is_empty(), "not watched");
}
