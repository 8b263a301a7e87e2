//! The watcher → session → sink path with no kernel: a fake runtime and
//! fake link events into the [`Tracker`], a fake [`Attacher`], and a real
//! pcapng file read back block by block.

use std::{cell::RefCell, collections::HashMap, path::Path, rc::Rc, time::Instant};

use pcap_file::pcapng::{
    blocks::{
        interface_description::InterfaceDescriptionOption,
        interface_statistics::InterfaceStatisticsOption,
    },
    Block, PcapNgReader,
};
use podtrace_common::{RecordHeader, HOOK_EGRESS, HOOK_INGRESS};

use super::*;
use crate::{
    link::{LinkEvent, LinkInfo, PathCounts},
    sink::{PcapNgSink, RecordFile},
    target::{LabelSelector, PodQuery, Sandbox},
    watch::{PodView, Selection, Tracker},
};

mod inbound;

/// Attach calls and per-link counts, shared with the test.
#[derive(Default)]
struct Kernel {
    attached: Vec<u32>,
    detached: Vec<u32>,
    counts: HashMap<u32, KernelCounters>,
    /// Hooks attached to each link now.
    hooks: HashMap<u32, Hooks>,
    /// Links whose pod's eth0 was hooked, in order.
    eth0: Vec<u32>,
    /// hook_eth0 fails with this.
    eth0_fails: Option<String>,
}

#[derive(Clone, Default)]
struct FakeAttacher(Rc<RefCell<Kernel>>);

impl Attacher for FakeAttacher {
    fn attach(
        &mut self,
        link: &HostLink,
        hooks: Hooks,
        mode: TcMode,
    ) -> Result<TcMode, AttachError> {
        let mut k = self.0.borrow_mut();
        k.attached.push(link.ifindex);
        k.hooks.insert(link.ifindex, hooks);
        Ok(mode)
    }
    fn hook_eth0(&mut self, link: &HostLink, _: &std::path::Path) -> Result<u32, AttachError> {
        let mut k = self.0.borrow_mut();
        if let Some(reason) = &k.eth0_fails {
            return Err(AttachError::Attach {
                iface: "eth0".into(),
                hook: "ingress",
                reason: reason.clone(),
            });
        }
        k.eth0.push(link.ifindex);
        Ok(2)
    }
    fn unhook_egress(&mut self, ifindex: u32) {
        if let Some(h) = self.0.borrow_mut().hooks.get_mut(&ifindex) {
            h.egress = false;
        }
    }
    fn add_egress(&mut self, link: &HostLink, mode: TcMode) -> Result<TcMode, AttachError> {
        if let Some(h) = self.0.borrow_mut().hooks.get_mut(&link.ifindex) {
            h.egress = true;
        }
        Ok(mode)
    }
    fn detach(&mut self, ifindex: u32) -> KernelCounters {
        let mut k = self.0.borrow_mut();
        k.detached.push(ifindex);
        k.hooks.remove(&ifindex);
        k.counts.remove(&ifindex).unwrap_or_default()
    }
    fn counters(&self, ifindex: u32) -> KernelCounters {
        self.0
            .borrow()
            .counts
            .get(&ifindex)
            .copied()
            .unwrap_or_default()
    }
    fn unattributed(&self) -> KernelCounters {
        KernelCounters::default()
    }
}

impl FakeAttacher {
    /// The kernel saw `seen` packets on the link (`lost` of them lost).
    fn saw(&self, ifindex: u32, seen: u64, lost: u64) {
        let mut k = self.0.borrow_mut();
        let c = k.counts.entry(ifindex).or_default();
        c.seen += seen;
        c.lost += lost;
    }
}

/// A pod's veth counters, as the test sets them: by host ifindex.
#[derive(Clone, Default)]
struct FakeProbe(Rc<RefCell<HashMap<u32, PathCounts>>>);

impl PathProbe for FakeProbe {
    fn watch(&mut self, ifindex: u32, _: &std::path::Path) -> Result<(), String> {
        self.0.borrow_mut().entry(ifindex).or_default();
        Ok(())
    }
    fn forget(&mut self, _: u32) {}
    fn sample(&mut self, ifindex: u32) -> std::io::Result<PathCounts> {
        Ok(self.0.borrow().get(&ifindex).copied().unwrap_or_default())
    }
    fn baseline(&mut self, ifindex: u32) -> std::io::Result<PathCounts> {
        self.sample(ifindex)
    }
}

impl FakeProbe {
    /// eth0 received `skipped` packets that did not cross the veth, and
    /// `crossed` that did.
    fn delivered(&self, ifindex: u32, crossed: u64, skipped: u64) {
        let mut counts = self.0.borrow_mut();
        let c = counts.entry(ifindex).or_default();
        c.crossed += crossed;
        c.received += crossed + skipped;
    }
}

fn session(path: &Path, limit: u64) -> (Session<FakeAttacher>, FakeAttacher) {
    let (s, attacher, _) = session_with(path, limit, Fallback::Auto);
    (s, attacher)
}

fn session_with(
    path: &Path,
    limit: u64,
    fallback: Fallback,
) -> (Session<FakeAttacher>, FakeAttacher, FakeProbe) {
    let attacher = FakeAttacher::default();
    let probe = FakeProbe::default();
    let sink = Box::new(PcapNgSink::new(RecordFile::create(path).unwrap(), 65535).unwrap());
    let opts = SessionOptions {
        direction: DirectionFilter::InOut,
        tc_mode: TcMode::Tcx,
        limit,
        fallback,
    };
    let s = Session::new(attacher.clone(), sink, Box::new(probe.clone()), opts);
    (s, attacher, probe)
}

fn sandbox(ns: &str, name: &str, uid: &str, app: &str) -> Sandbox {
    Sandbox {
        id: format!("sb-{uid}"),
        name: name.into(),
        namespace: ns.into(),
        uid: uid.into(),
        ready: true,
        ip: None,
        pid: Some(1),
        host_network: false,
        netns_path: None,
        created_at_ns: 0,
        labels: HashMap::from([("app".to_string(), app.to_string())]),
        attempt: 0,
    }
}

fn pod(ns: &str, name: &str, uid: &str, app: &str, ifindex: u32) -> PodView {
    PodView {
        sandbox: sandbox(ns, name, uid, app),
        link: Ok(HostLink {
            ifindex,
            name: format!("veth{ifindex}"),
            peer_is_target: true,
        }),
    }
}

/// A one-byte packet on a link: host ingress is what the pod sent.
fn feed(s: &mut Session<FakeAttacher>, ifindex: u32, hook: u8, byte: u8) -> bool {
    let data = [byte];
    let record = Record {
        header: RecordHeader {
            ts_ns: u64::from(byte),
            ifindex,
            orig_len: 1,
            cap_len: 1,
            hook,
            _pad: [0; 3],
        },
        data: &data,
    };
    s.record(&record, &Clock::with_offset(0)).unwrap()
}

fn apply(s: &mut Session<FakeAttacher>, changes: Vec<Change>) {
    for change in changes {
        s.apply(change).unwrap();
    }
}

/// The file's blocks in short: "idb N name", "epb N byte dir", "isb N recv/drop".
fn blocks(path: &Path) -> Vec<String> {
    let mut reader = PcapNgReader::new(std::fs::File::open(path).unwrap()).unwrap();
    let mut out = Vec::new();
    let mut idbs = 0;
    while let Some(block) = reader.next_block() {
        match block.unwrap() {
            Block::InterfaceDescription(idb) => {
                let name = idb.options.iter().find_map(|o| match o {
                    InterfaceDescriptionOption::IfName(n) => Some(n.to_string()),
                    _ => None,
                });
                out.push(format!("idb {idbs} {}", name.unwrap()));
                idbs += 1;
            }
            Block::EnhancedPacket(epb) => {
                let dir = match epb.options.first() {
                    Some(
                        pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketOption::Flags(1),
                    ) => "in",
                    _ => "out",
                };
                out.push(format!("epb {} {} {dir}", epb.interface_id, epb.data[0]));
            }
            Block::InterfaceStatistics(isb) => {
                let recv = isb.options.iter().find_map(|o| match o {
                    InterfaceStatisticsOption::IsbIfRecv(n) => Some(*n),
                    _ => None,
                });
                let drop = isb.options.iter().find_map(|o| match o {
                    InterfaceStatisticsOption::IsbIfDrop(n) => Some(*n),
                    _ => None,
                });
                out.push(format!(
                    "isb {} {}/{}",
                    isb.interface_id,
                    recv.unwrap(),
                    drop.unwrap()
                ));
            }
            _ => {}
        }
    }
    out
}

fn web_selector() -> Selection {
    Selection::Pods {
        query: PodQuery::Labels {
            selector: Some(LabelSelector::parse("app=web").unwrap()),
            namespace: None,
        },
        single: false,
        follow: false,
    }
}

#[test]
fn pods_join_and_leave_each_with_their_own_interface_and_counts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.pcapng");
    let (mut s, kernel) = session(&path, u64::MAX);
    let mut tracker = Tracker::new(web_selector());
    let now = Instant::now();
    let pods = [
        pod("prod", "web-1", "u1", "web", 10),
        pod("prod", "db-0", "u2", "db", 11),
        pod("staging", "web-1", "u3", "web", 12),
    ];
    apply(&mut s, tracker.on_pods(&pods, now));
    assert_eq!(kernel.0.borrow().attached, [10, 12]);
    feed(&mut s, 10, HOOK_EGRESS, 1);
    feed(&mut s, 12, HOOK_INGRESS, 2);
    // Not a member: never written.
    feed(&mut s, 11, HOOK_INGRESS, 99);
    kernel.saw(10, 3, 1);
    kernel.saw(12, 1, 0);
    // prod/web-1 is deleted; its last packet is still in the ring.
    apply(&mut s, tracker.on_links(vec![LinkEvent::Gone(10)], now));
    assert_eq!(kernel.0.borrow().detached, [10]);
    feed(&mut s, 10, HOOK_INGRESS, 3);
    s.settle(true).unwrap();
    feed(&mut s, 12, HOOK_EGRESS, 4);
    assert!(s.stop_reason().is_none(), "a selection goes on");
    s.detach_all();
    s.finish().unwrap();
    assert_eq!(
        blocks(&path),
        [
            "idb 0 prod/web-1",
            "idb 1 staging/web-1",
            "epb 0 1 in",
            "epb 1 2 out",
            "epb 0 3 out",
            "isb 0 3/1",
            "epb 1 4 in",
            "isb 1 1/0",
        ]
    );
    assert_eq!(s.captured, 4);
    assert_eq!(s.totals().seen, 4);
}

#[test]
fn a_starting_pods_first_packets_are_held_then_written_on_its_interface() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.pcapng");
    let (mut s, kernel) = session(&path, u64::MAX);
    let mut tracker = Tracker::new(web_selector());
    let now = Instant::now();
    let veth = |index| {
        LinkEvent::New(LinkInfo {
            index,
            name: format!("veth{index}"),
            peer_netnsid: Some(1),
        })
    };
    apply(&mut s, tracker.on_links(vec![veth(20), veth(21)], now));
    assert_eq!(kernel.0.borrow().attached, [20, 21]);
    // The app's DNS query, before the runtime lists the pod.
    feed(&mut s, 20, HOOK_INGRESS, 7);
    feed(&mut s, 21, HOOK_INGRESS, 8);
    kernel.saw(20, 1, 0);
    kernel.saw(21, 1, 0);
    let pods = [
        pod("prod", "web-9", "u9", "web", 20),
        pod("prod", "db-1", "u5", "db", 21),
    ];
    apply(&mut s, tracker.on_pods(&pods, now));
    // Claimed without attaching again; the db pod's link let go.
    assert_eq!(kernel.0.borrow().attached, [20, 21]);
    assert_eq!(kernel.0.borrow().detached, [21]);
    // Leftovers of the discarded link are dropped.
    feed(&mut s, 21, HOOK_INGRESS, 9);
    feed(&mut s, 20, HOOK_EGRESS, 10);
    kernel.saw(20, 1, 0);
    s.detach_all();
    s.finish().unwrap();
    assert_eq!(
        blocks(&path),
        [
            "idb 0 prod/web-9",
            "epb 0 7 out",
            "epb 0 10 in",
            "isb 0 2/0"
        ]
    );
    // The db pod's packet counts for nothing of the capture's.
    assert_eq!(s.totals().seen, 2);
}

#[test]
fn a_re_created_sandbox_stays_one_interface() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.pcapng");
    let (mut s, kernel) = session(&path, u64::MAX);
    let mut tracker = Tracker::new(web_selector());
    let now = Instant::now();
    apply(
        &mut s,
        tracker.on_pods(&[pod("prod", "web-1", "u1", "web", 10)], now),
    );
    feed(&mut s, 10, HOOK_INGRESS, 1);
    kernel.saw(10, 1, 0);
    let mut again = pod("prod", "web-1", "u1", "web", 30);
    again.sandbox.id = "sb-u1-1".into();
    apply(&mut s, tracker.on_pods(&[again], now));
    assert_eq!(kernel.0.borrow().detached, [10]);
    feed(&mut s, 30, HOOK_INGRESS, 2);
    kernel.saw(30, 1, 0);
    s.detach_all();
    s.finish().unwrap();
    assert_eq!(
        blocks(&path),
        [
            "idb 0 prod/web-1",
            "epb 0 1 out",
            "epb 0 2 out",
            "isb 0 2/0"
        ]
    );
}

#[test]
fn a_single_pod_deleted_stops_the_capture_with_its_statistics() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.pcapng");
    let (mut s, kernel) = session(&path, u64::MAX);
    let mut tracker = Tracker::new(Selection::Pods {
        query: PodQuery::Uid("u1".into()),
        single: true,
        follow: false,
    });
    let now = Instant::now();
    apply(
        &mut s,
        tracker.on_pods(&[pod("prod", "web-1", "u1", "web", 10)], now),
    );
    feed(&mut s, 10, HOOK_INGRESS, 1);
    kernel.saw(10, 1, 0);
    apply(&mut s, tracker.on_links(vec![LinkEvent::Gone(10)], now));
    assert_eq!(
        s.stop_reason(),
        Some(&StopReason::TargetGone("pod prod/web-1 was deleted".into()))
    );
    s.finish().unwrap();
    assert_eq!(
        blocks(&path),
        ["idb 0 prod/web-1", "epb 0 1 out", "isb 0 1/0"]
    );
}

#[test]
fn the_count_limit_spans_interfaces() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.pcapng");
    let (mut s, _) = session(&path, 3);
    let mut tracker = Tracker::new(web_selector());
    let pods = [
        pod("prod", "web-1", "u1", "web", 10),
        pod("prod", "web-2", "u2", "web", 11),
    ];
    apply(&mut s, tracker.on_pods(&pods, Instant::now()));
    assert!(feed(&mut s, 10, HOOK_INGRESS, 1));
    assert!(feed(&mut s, 11, HOOK_INGRESS, 2));
    assert!(!feed(&mut s, 10, HOOK_INGRESS, 3), "the third is the last");
    assert!(!feed(&mut s, 11, HOOK_INGRESS, 4));
    assert_eq!(s.stop_reason(), Some(&StopReason::Count));
    assert_eq!(s.captured, 3);
}

#[test]
fn summary_line_names_filtered_only_with_a_filter() {
    let mut summary = Summary {
        captured: 5,
        kernel: KernelCounters {
            seen: 9,
            lost: 1,
            filtered: 3,
        },
        reason: StopReason::Count,
        filtered: false,
        missed: 0,
        notes: Vec::new(),
    };
    assert_eq!(summary.line(), "5 packets captured, 1 lost in kernel");
    summary.filtered = true;
    assert_eq!(
        summary.line(),
        "5 packets captured, 3 filtered, 1 lost in kernel"
    );
    summary.missed = 4;
    assert_eq!(
        summary.line(),
        "5 packets captured, 3 filtered, 1 lost in kernel, 4 missed (delivered past the host veth)"
    );
}
