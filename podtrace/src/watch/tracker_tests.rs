use std::collections::HashMap;

use super::*;
use crate::target::{LabelSelector, Sandbox};

fn sandbox(ns: &str, name: &str, uid: &str, app: &str) -> Sandbox {
    Sandbox {
        id: format!("sb-{uid}"),
        name: name.into(),
        namespace: ns.into(),
        uid: uid.into(),
        ready: true,
        ip: None,
        pid: Some(100),
        host_network: false,
        netns_path: None,
        created_at_ns: 0,
        labels: HashMap::from([("app".to_string(), app.to_string())]),
        attempt: 0,
    }
}

fn link(ifindex: u32) -> HostLink {
    HostLink {
        ifindex,
        name: format!("veth{ifindex}"),
        peer_is_target: true,
    }
}

fn pod(ns: &str, name: &str, uid: &str, app: &str, ifindex: u32) -> PodView {
    PodView {
        sandbox: sandbox(ns, name, uid, app),
        link: Ok(link(ifindex)),
    }
}

fn veth(ifindex: u32) -> LinkEvent {
    LinkEvent::New(LinkInfo {
        index: ifindex,
        name: format!("veth{ifindex}"),
        peer_netnsid: Some(1),
    })
}

fn app(selector: &str, namespace: Option<&str>) -> Selection {
    Selection::Pods {
        query: PodQuery::Labels {
            selector: Some(LabelSelector::parse(selector).unwrap()),
            namespace: namespace.map(String::from),
        },
        single: false,
        follow: false,
    }
}

/// The changes, in short: "+uid@ifindex", "?ifindex", "-ifindex", "xkey", "!".
fn short(changes: &[Change]) -> Vec<String> {
    changes
        .iter()
        .map(|c| match c {
            Change::Add(t) => format!("+{}@{}", t.key, t.link.ifindex),
            Change::Provisional(l) => format!("?{}", l.ifindex),
            Change::Discard(i) => format!("-{i}"),
            Change::Remove { key, .. } => format!("x{key}"),
            Change::Exhausted(_) => "!".into(),
        })
        .collect()
}

#[test]
fn a_selector_takes_matching_ready_pods_of_its_namespace() {
    let mut t = Tracker::new(app("app=web", Some("prod")));
    let now = Instant::now();
    let mut other_ns = pod("staging", "web-1", "u3", "web", 12);
    other_ns.sandbox.ready = true;
    let mut not_ready = pod("prod", "web-2", "u4", "web", 13);
    not_ready.sandbox.ready = false;
    let pods = [
        pod("prod", "web-1", "u1", "web", 10),
        pod("prod", "db-0", "u2", "db", 11),
        other_ns,
        not_ready,
    ];
    assert_eq!(short(&t.on_pods(&pods, now)), ["+u1@10"]);
    // Nothing new the second time.
    assert!(t.on_pods(&pods, now).is_empty());
}

#[test]
fn a_new_veth_is_held_until_the_runtime_says_whose_it_is() {
    let mut t = Tracker::new(app("app=web", None));
    let now = Instant::now();
    assert_eq!(
        short(&t.on_links(vec![veth(20), veth(21)], now)),
        ["?20", "?21"]
    );
    // A host link without a peer elsewhere is nobody's pod.
    let plain = LinkEvent::New(LinkInfo {
        index: 22,
        name: "dummy0".into(),
        peer_netnsid: None,
    });
    assert!(t.on_links(vec![plain], now).is_empty());
    assert_eq!(t.next_poll(now), Some(now + FAST_POLL));
    let pods = [
        pod("prod", "web-1", "u1", "web", 20),
        pod("prod", "db-0", "u2", "db", 21),
    ];
    assert_eq!(short(&t.on_pods(&pods, now)), ["-21", "+u1@20"]);
    assert_eq!(t.next_poll(now), Some(now + POLL));
    // The db pod's veth is not held again when it changes.
    assert!(t.on_links(vec![veth(21)], now).is_empty());
}

#[test]
fn provisional_links_nobody_claims_are_dropped() {
    let mut t = Tracker::new(app("app=web", None));
    let start = Instant::now();
    t.on_links(vec![veth(30)], start);
    assert!(t.on_pods(&[], start + Duration::from_secs(1)).is_empty());
    let later = start + PROVISIONAL_FOR;
    assert_eq!(short(&t.on_pods(&[], later)), ["-30"]);
    // A veth that goes away while provisional is dropped too.
    t.on_links(vec![veth(31)], later);
    assert_eq!(
        short(&t.on_links(vec![LinkEvent::Gone(31)], later)),
        ["-31"]
    );
}

#[test]
fn pods_leave_when_their_veth_goes_and_the_selection_goes_on() {
    let mut t = Tracker::new(app("app=web", None));
    let now = Instant::now();
    let pods = [
        pod("prod", "web-1", "u1", "web", 10),
        pod("prod", "web-2", "u2", "web", 11),
    ];
    t.on_pods(&pods, now);
    assert_eq!(short(&t.on_links(vec![LinkEvent::Gone(10)], now)), ["xu1"]);
    assert_eq!(short(&t.on_links(vec![LinkEvent::Gone(11)], now)), ["xu2"]);
    // Still open: a pod that comes later joins.
    assert_eq!(short(&t.on_links(vec![veth(12)], now)), ["?12"]);
}

#[test]
fn a_re_created_sandbox_keeps_the_pod_on_its_new_veth() {
    let mut t = Tracker::new(app("app=web", None));
    let now = Instant::now();
    t.on_pods(&[pod("prod", "web-1", "u1", "web", 10)], now);
    let mut again = pod("prod", "web-1", "u1", "web", 15);
    again.sandbox.id = "sb-u1-attempt-1".into();
    again.sandbox.attempt = 1;
    assert_eq!(short(&t.on_pods(&[again], now)), ["+u1@15"]);
    // The old veth going away is no news any more.
    assert!(t.on_links(vec![LinkEvent::Gone(10)], now).is_empty());
}

#[test]
fn a_single_pod_ends_the_capture_unless_followed() {
    let single = |follow| Selection::Pods {
        query: PodQuery::Names(vec![("prod".into(), "db-0".into())]),
        single: true,
        follow,
    };
    let now = Instant::now();
    let mut t = Tracker::new(single(false));
    assert_eq!(
        short(&t.on_pods(&[pod("prod", "db-0", "u1", "db", 10)], now)),
        ["+u1@10"]
    );
    // Joined: no polling, no provisional links.
    assert_eq!(t.next_poll(now), None);
    assert!(t.on_links(vec![veth(11)], now).is_empty());
    assert_eq!(
        short(&t.on_links(vec![LinkEvent::Gone(10)], now)),
        ["xu1", "!"]
    );

    let mut t = Tracker::new(single(true));
    t.on_pods(&[pod("prod", "db-0", "u1", "db", 10)], now);
    assert_eq!(short(&t.on_links(vec![LinkEvent::Gone(10)], now)), ["xu1"]);
    // The next pod of that name is a new pod (uid): it joins.
    assert_eq!(short(&t.on_links(vec![veth(12)], now)), ["?12"]);
    assert_eq!(
        short(&t.on_pods(&[pod("prod", "db-0", "u9", "db", 12)], now)),
        ["+u9@12"]
    );
}

#[test]
fn host_links_end_the_capture_when_gone() {
    let target = Target::link(link(5), "interface veth5".into());
    let mut t = Tracker::new(Selection::Links(vec![(target.clone(), "gone".into())]));
    t.joined(&target, "interface veth5 is gone".into());
    let now = Instant::now();
    assert_eq!(t.next_poll(now), None);
    assert!(t.on_links(vec![veth(6)], now).is_empty());
    assert_eq!(
        short(&t.on_links(vec![LinkEvent::Gone(5)], now)),
        ["xlink/5", "!"]
    );
}

#[test]
fn a_resync_finds_what_the_lost_events_said() {
    let mut t = Tracker::new(app("app=web", None));
    let now = Instant::now();
    t.on_pods(&[pod("prod", "web-1", "u1", "web", 10)], now);
    let present = vec![LinkInfo {
        index: 40,
        name: "veth40".into(),
        peer_netnsid: Some(2),
    }];
    assert_eq!(
        short(&t.on_links(vec![LinkEvent::Resync(present)], now)),
        ["xu1", "?40"]
    );
}
