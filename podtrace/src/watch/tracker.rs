//! What the watcher decides, as plain logic: given link events and the
//! runtime's pods, which targets join and leave the capture.
//!
//! A new veth (a link whose peer is in another namespace) may be a pod
//! that is starting: the runtime lists its sandbox only once the sandbox
//! is ready (~75 ms after the veth here), and its containers send their
//! first packets soon after. So the veth is attached at once,
//! provisionally, and the runtime is polled fast until it says whose veth
//! it is: a selected pod's (it joins, with what it already sent) or not
//! (it is discarded).

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use super::pods::PodView;
use crate::{
    link::{HostLink, LinkEvent, LinkInfo},
    session::{Change, Target},
    target::PodQuery,
};

/// How long a provisional link waits for the runtime to claim it.
pub const PROVISIONAL_FOR: Duration = Duration::from_secs(10);
/// Poll interval while a provisional link is young: the runtime lists a
/// pod ~75 ms after its veth, its app starts ~80 ms later.
pub const FAST_POLL: Duration = Duration::from_millis(25);
/// Poll interval while a provisional link waits longer (a slow start).
pub const SLOW_START_POLL: Duration = Duration::from_millis(250);
/// For how long a provisional link is polled for fast.
const FAST_FOR: Duration = Duration::from_secs(1);
/// Poll interval otherwise: pods that become ready without a new veth,
/// pods whose link could not be resolved yet.
pub const POLL: Duration = Duration::from_secs(2);

/// What the capture takes.
#[derive(Debug, Clone)]
pub enum Selection {
    /// Fixed host links (`-i`, `--pid`, `--netns`), until they are gone.
    Links(Vec<(Target, String)>),
    /// Pods the runtime lists. `single`: one pod (today's capture), which
    /// ends the capture when it goes, unless `follow`.
    Pods {
        query: PodQuery,
        single: bool,
        follow: bool,
    },
}

#[derive(Debug)]
struct Member {
    ifindex: u32,
    /// Said when it leaves.
    gone: String,
}

#[derive(Debug)]
pub struct Tracker {
    selection: Selection,
    members: HashMap<String, Member>,
    /// Provisional links, since when.
    provisional: HashMap<u32, Instant>,
    /// Links the runtime says are other pods': not provisional again.
    others: HashSet<u32>,
    /// Pods whose link could not be resolved, said once each.
    noted: HashSet<String>,
}

impl Tracker {
    pub fn new(selection: Selection) -> Self {
        Self {
            selection,
            members: HashMap::new(),
            provisional: HashMap::new(),
            others: HashSet::new(),
            noted: HashSet::new(),
        }
    }

    /// Records targets the capture starts with (already resolved).
    pub fn joined(&mut self, target: &Target, gone: String) {
        self.members.insert(
            target.key.clone(),
            Member {
                ifindex: target.link.ifindex,
                gone,
            },
        );
    }

    /// Whether a pod that is not a member yet may join.
    fn open(&self) -> bool {
        match &self.selection {
            Selection::Links(_) => false,
            Selection::Pods { single, follow, .. } => {
                !*single || *follow || self.members.is_empty()
            }
        }
    }

    /// Whether the capture ends when its members are all gone.
    fn ends_when_empty(&self) -> bool {
        match &self.selection {
            Selection::Links(_) => true,
            Selection::Pods { single, follow, .. } => *single && !*follow,
        }
    }

    /// When the runtime should be asked next (`None`: never).
    pub fn next_poll(&self, last: Instant) -> Option<Instant> {
        if !self.open() {
            return None;
        }
        let youngest = self.provisional.values().max();
        Some(match youngest {
            Some(since) if since.elapsed() < FAST_FOR => last + FAST_POLL,
            Some(_) => last + SLOW_START_POLL,
            None => last + POLL,
        })
    }

    pub fn on_links(&mut self, events: Vec<LinkEvent>, now: Instant) -> Vec<Change> {
        let mut changes = Vec::new();
        for event in events {
            match event {
                LinkEvent::New(info) => self.link_new(&info, now, &mut changes),
                LinkEvent::Gone(ifindex) => self.link_gone(ifindex, &mut changes),
                LinkEvent::Resync(links) => {
                    let present: HashSet<u32> = links.iter().map(|l| l.index).collect();
                    let gone: Vec<u32> = self
                        .members
                        .values()
                        .map(|m| m.ifindex)
                        .chain(self.provisional.keys().copied())
                        .filter(|i| !present.contains(i))
                        .collect();
                    for ifindex in gone {
                        self.link_gone(ifindex, &mut changes);
                    }
                    // New veths that came while events were lost may be
                    // starting pods too; the runtime sorts them out.
                    for info in &links {
                        self.link_new(info, now, &mut changes);
                    }
                }
            }
        }
        changes
    }

    fn is_member_link(&self, ifindex: u32) -> bool {
        self.members.values().any(|m| m.ifindex == ifindex)
    }

    fn link_new(&mut self, info: &LinkInfo, now: Instant, changes: &mut Vec<Change>) {
        let ifindex = info.index;
        if info.peer_netnsid.is_none()
            || !self.open()
            || self.provisional.contains_key(&ifindex)
            || self.others.contains(&ifindex)
            || self.is_member_link(ifindex)
        {
            return;
        }
        self.provisional.insert(ifindex, now);
        changes.push(Change::Provisional(HostLink {
            ifindex,
            name: info.name.clone(),
            peer_is_target: true,
        }));
    }

    fn link_gone(&mut self, ifindex: u32, changes: &mut Vec<Change>) {
        self.others.remove(&ifindex);
        if self.provisional.remove(&ifindex).is_some() {
            changes.push(Change::Discard(ifindex));
        }
        let left: Vec<String> = self
            .members
            .iter()
            .filter(|(_, m)| m.ifindex == ifindex)
            .map(|(k, _)| k.clone())
            .collect();
        for key in left {
            let member = self.members.remove(&key).expect("listed above");
            changes.push(Change::Remove {
                key,
                reason: member.gone.clone(),
            });
            if self.members.is_empty() && self.ends_when_empty() {
                changes.push(Change::Exhausted(member.gone));
            }
        }
    }

    pub fn on_pods(&mut self, pods: &[PodView], now: Instant) -> Vec<Change> {
        let Selection::Pods { query, .. } = &self.selection else {
            return Vec::new();
        };
        let query = query.clone();
        let mut changes = Vec::new();
        let mut ready = HashSet::new();
        // In name order: interfaces are numbered as the pods are listed.
        let mut pods: Vec<&PodView> = pods.iter().filter(|p| p.sandbox.ready).collect();
        pods.sort_by(|a, b| {
            (&a.sandbox.namespace, &a.sandbox.name).cmp(&(&b.sandbox.namespace, &b.sandbox.name))
        });
        for pod in pods {
            let wanted = query.matches(&pod.sandbox)
                && (self.members.contains_key(&pod.sandbox.uid) || self.open());
            match (&pod.link, wanted) {
                (Ok(link), true) => {
                    ready.insert(pod.sandbox.uid.clone());
                    self.provisional.remove(&link.ifindex);
                    self.join(pod, link, &mut changes);
                }
                (Ok(link), false) => {
                    if self.provisional.remove(&link.ifindex).is_some() {
                        changes.push(Change::Discard(link.ifindex));
                    }
                    self.others.insert(link.ifindex);
                }
                (Err(why), true) => {
                    let pod_name = pod.sandbox.pod_name();
                    if self.noted.insert(pod.sandbox.id.clone()) {
                        eprintln!("podtrace: pod {pod_name} is not captured: {why}");
                    }
                }
                (Err(_), false) => {}
            }
        }
        // Members whose pod has no ready sandbox any more (a link going
        // away says so first, as a rule).
        let stale: Vec<u32> = self
            .members
            .iter()
            .filter(|(key, _)| !ready.contains(*key))
            .map(|(_, m)| m.ifindex)
            .collect();
        for ifindex in stale {
            self.link_gone(ifindex, &mut changes);
        }
        let expired: Vec<u32> = self
            .provisional
            .iter()
            .filter(|(_, since)| now.duration_since(**since) >= PROVISIONAL_FOR)
            .map(|(i, _)| *i)
            .collect();
        for ifindex in expired {
            self.provisional.remove(&ifindex);
            changes.push(Change::Discard(ifindex));
        }
        changes
    }

    fn join(&mut self, pod: &PodView, link: &HostLink, changes: &mut Vec<Change>) {
        let uid = &pod.sandbox.uid;
        if self
            .members
            .get(uid)
            .is_some_and(|m| m.ifindex == link.ifindex)
        {
            return;
        }
        let Some(target) = pod.target() else {
            return;
        };
        self.members.insert(
            uid.clone(),
            Member {
                ifindex: link.ifindex,
                gone: format!("pod {} was deleted", pod.sandbox.pod_name()),
            },
        );
        changes.push(Change::Add(target));
    }

    /// How many targets are in the capture.
    pub fn members(&self) -> usize {
        self.members.len()
    }
}

#[cfg(test)]
#[path = "tracker_tests.rs"]
mod tests;
