//! A capture session: one set of loaded programs, one ring, one sink, and
//! targets that join and leave while it runs. One pod captured once is the
//! simple case: one target that joins at the start.
//!
//! Targets come as [`Change`]s from a watcher (see [`crate::watch`]). Each
//! target is an interface of the capture (a pcapng IDB named `ns/pod`),
//! counted on its own: the kernel counts per link ([`Attacher`]), the
//! session per interface. A link that may turn out to be a target (a new
//! veth whose pod the runtime does not list yet) is attached *provisionally*
//! so a pod's first packets are not missed; its packets are held until the
//! watcher says whose it is, then written or dropped.
//!
//! A pod's packets that its CNI delivers past the host veth are detected,
//! and taken at the pod's own eth0, by [`inbound`].
//!
//! [`Session`] is plain logic over an [`Attacher`], a [`PathProbe`] and a
//! [`Sink`], fed records by the loop in [`run`]; the tests drive it with
//! fakes.

mod bypass;
mod handover;
mod held;
mod inbound;
mod pace;
mod run;
mod stats;
mod target;
#[cfg(test)]
mod tests;

use std::collections::HashMap;

use podtrace_common::{HOOK_EGRESS, HOOK_ETH0_INGRESS};

pub use self::{
    bypass::Bypass,
    inbound::{Fallback, PathProbe, CHECK_EVERY},
    run::{run, CaptureError, CapturePlan, StopReason, Summary},
    target::{Attacher, Change, Target},
};
use self::{bypass::Inbound, held::Held};
use crate::{
    attach::{AttachError, DirectionFilter, Hooks, KernelCounters, TcMode},
    link::HostLink,
    ring::{Clock, Direction, Record},
    sink::{InterfaceId, Packet, Sink, SinkError, Stats},
};

/// Where the records of one link go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// To this interface; directions flip on a target's veth.
    To {
        interface: InterfaceId,
        peer_is_target: bool,
    },
    /// Into the link's hold, until the watcher decides.
    Held { peer_is_target: bool },
    /// Nowhere: a discarded provisional link's leftovers.
    Dropped,
}

/// One interface of the capture.
#[derive(Debug)]
struct Member {
    key: String,
    label: String,
    /// The link captured now; None once the target left.
    ifindex: Option<u32>,
    /// Counts of the links it no longer uses.
    retired: KernelCounters,
    written: u64,
    started_ns: u64,
    /// Packets seen at both hooks during a handover, written once.
    deduped: u64,
    /// What the links it left said about packets that skipped them.
    left_bypass: Option<Bypass>,
}

/// How the session attaches and stops.
#[derive(Debug, Clone, Copy)]
pub struct SessionOptions {
    pub direction: DirectionFilter,
    pub tc_mode: TcMode,
    /// Stop after this many packets written (`-c`).
    pub limit: u64,
    pub fallback: Fallback,
}

pub struct Session<A: Attacher> {
    attacher: A,
    sink: Box<dyn Sink>,
    opts: SessionOptions,
    members: Vec<Member>,
    /// Interface of each target key still in the capture.
    by_key: HashMap<String, InterfaceId>,
    /// Every link seen, kept after it leaves: its records may still be in
    /// the ring (ifindexes are not reused soon).
    routes: HashMap<u32, Route>,
    /// Records come in runs from one link: the last lookup, cached.
    last_route: Option<(u32, Route)>,
    held: HashMap<u32, Held>,
    /// Interfaces that left, whose statistics wait for the next drain.
    leaving: Vec<InterfaceId>,
    /// Counts of provisional links that were discarded: not any
    /// interface's, and not the capture's.
    discarded: KernelCounters,
    probe: Box<dyn PathProbe>,
    /// Pods whose inbound packets are watched, by host link.
    inbound: HashMap<u32, Inbound>,
    /// Pods moving to their eth0 hook now (records then get a closer look).
    handovers: usize,
    /// Some pod's packets skipped its veth: the CNI redirects.
    redirects_seen: bool,
    /// Lines to show the user, taken by the loop.
    notes: Vec<String>,
    pub captured: u64,
    pub bytes: u64,
    /// How the last link was attached, for the start line.
    pub mode_used: Option<TcMode>,
    stop: Option<StopReason>,
}

impl<A: Attacher> Session<A> {
    pub fn new(
        attacher: A,
        sink: Box<dyn Sink>,
        probe: Box<dyn PathProbe>,
        opts: SessionOptions,
    ) -> Self {
        Self {
            attacher,
            sink,
            opts,
            members: Vec::new(),
            by_key: HashMap::new(),
            routes: HashMap::new(),
            last_route: None,
            held: HashMap::new(),
            leaving: Vec::new(),
            discarded: KernelCounters::default(),
            probe,
            inbound: HashMap::new(),
            handovers: 0,
            redirects_seen: false,
            notes: Vec::new(),
            captured: 0,
            bytes: 0,
            mode_used: None,
            stop: None,
        }
    }

    /// Why the session should stop, once it should.
    pub fn stop_reason(&self) -> Option<&StopReason> {
        self.stop.as_ref()
    }

    /// Applies a watcher's change. An attach error leaves the session as
    /// it was (the caller decides whether it is fatal).
    pub fn apply(&mut self, change: Change) -> Result<(), ApplyError> {
        match change {
            Change::Add(target) => self.add(target)?,
            Change::Provisional(link) => self.provisional(link)?,
            Change::Discard(ifindex) => self.discard(ifindex),
            Change::Remove { key, reason } => self.remove(&key, &reason),
            Change::Exhausted(why) => self.stop = Some(StopReason::TargetGone(why)),
        }
        Ok(())
    }

    fn set_route(&mut self, ifindex: u32, route: Route) {
        self.routes.insert(ifindex, route);
        self.last_route = None;
    }

    fn attach(&mut self, link: &HostLink) -> Result<(), AttachError> {
        let hooks = Hooks::for_direction(self.opts.direction, link.peer_is_target);
        self.mode_used = Some(self.attacher.attach(link, hooks, self.opts.tc_mode)?);
        Ok(())
    }

    fn add(&mut self, target: Target) -> Result<(), ApplyError> {
        let ifindex = target.link.ifindex;
        let peer_is_target = target.link.peer_is_target;
        if let Some(&id) = self.by_key.get(&target.key) {
            let member = &mut self.members[id as usize];
            if member.ifindex == Some(ifindex) {
                return Ok(());
            }
            // The pod's sandbox was re-created: same interface, new link.
            if let Some(old) = member.ifindex.take() {
                member.retired += self.attacher.detach(old);
                self.leave_inbound(id, old);
            }
            crate::verbose(format_args!(
                "{}: now on host link {} (ifindex {ifindex})",
                target.label, target.link.name
            ));
        }
        let held = self.held.remove(&ifindex);
        let plan = self.plan_inbound(&target);
        let blind = match &held {
            None => match self.attach_target(&target, plan.as_ref()) {
                Ok(blind) => blind,
                Err(e) => {
                    self.probe.forget(ifindex);
                    return Err(e.into());
                }
            },
            Some(_) => None,
        };
        let id = match self.by_key.get(&target.key) {
            Some(&id) => id,
            None => {
                let id = self.members.len() as InterfaceId;
                self.sink.add_interface(id, &target.interface)?;
                self.members.push(Member {
                    key: target.key.clone(),
                    label: target.label.clone(),
                    ifindex: None,
                    retired: KernelCounters::default(),
                    written: 0,
                    started_ns: crate::sink::now_ns(),
                    deduped: 0,
                    left_bypass: None,
                });
                self.by_key.insert(target.key.clone(), id);
                id
            }
        };
        self.members[id as usize].ifindex = Some(ifindex);
        if let Some(plan) = plan {
            self.watch_inbound(&target, plan, blind, held.is_some());
        }
        self.set_route(
            ifindex,
            Route::To {
                interface: id,
                peer_is_target,
            },
        );
        if let Some(held) = held {
            // What the link carried before anyone knew whose it was.
            self.members[id as usize].retired.lost += held.dropped();
            for packet in held.packets(id) {
                self.write(&packet.as_packet())?;
            }
        }
        Ok(())
    }

    fn provisional(&mut self, link: HostLink) -> Result<(), ApplyError> {
        let ifindex = link.ifindex;
        if self.routes.contains_key(&ifindex) || self.held.contains_key(&ifindex) {
            return Ok(());
        }
        self.attach(&link)?;
        self.held.insert(ifindex, Held::default());
        self.set_route(
            ifindex,
            Route::Held {
                peer_is_target: link.peer_is_target,
            },
        );
        Ok(())
    }

    fn discard(&mut self, ifindex: u32) {
        if self.held.remove(&ifindex).is_some() {
            self.discarded += self.attacher.detach(ifindex);
            self.set_route(ifindex, Route::Dropped);
        }
    }

    fn remove(&mut self, key: &str, reason: &str) {
        let Some(id) = self.by_key.remove(key) else {
            return;
        };
        let member = &mut self.members[id as usize];
        if let Some(ifindex) = member.ifindex.take() {
            member.retired += self.attacher.detach(ifindex);
            self.leave_inbound(id, ifindex);
        }
        let member = &self.members[id as usize];
        crate::verbose(format_args!("{}: {reason}", member.label));
        // Its records may still be in the ring: statistics after the drain.
        self.leaving.push(id);
    }

    /// Hands one ring record on; false once no more are wanted (`-c`, or
    /// the sink's file limit).
    pub fn record(&mut self, record: &Record<'_>, clock: &Clock) -> Result<bool, SinkError> {
        if self.stop.is_some() {
            return Ok(false);
        }
        let ifindex = record.header.ifindex;
        let route = match self.last_route {
            Some((last, route)) if last == ifindex => route,
            _ => {
                let route = self.routes.get(&ifindex).copied().unwrap_or(Route::Dropped);
                self.last_route = Some((ifindex, route));
                route
            }
        };
        let (interface, peer_is_target) = match route {
            Route::To {
                interface,
                peer_is_target,
            } => (interface, peer_is_target),
            Route::Held { peer_is_target } => {
                if let (Some(held), Some(direction)) = (
                    self.held.get_mut(&ifindex),
                    Direction::from_hook(record.header.hook, peer_is_target),
                ) {
                    held.push(clock.to_wall(record.header.ts_ns), direction, record);
                }
                return Ok(true);
            }
            Route::Dropped => return Ok(true),
        };
        if self.handovers > 0 && self.handed_over_twice(record, interface) {
            return Ok(true);
        }
        let Some(direction) = Direction::from_hook(record.header.hook, peer_is_target) else {
            return Ok(true);
        };
        self.write(&Packet {
            ts: clock.to_wall(record.header.ts_ns),
            interface,
            direction,
            orig_len: record.header.orig_len,
            data: record.data,
        })?;
        Ok(self.stop.is_none())
    }

    /// During a pod's handover: remembers what its veth's egress hook
    /// wrote, and whether its eth0 hook's record is one of those.
    fn handed_over_twice(&mut self, record: &Record<'_>, interface: InterfaceId) -> bool {
        let hook = record.header.hook;
        if hook != HOOK_EGRESS && hook != HOOK_ETH0_INGRESS {
            return false;
        }
        let Some(inbound) = self.inbound.get_mut(&record.header.ifindex) else {
            return false;
        };
        let bypass::Taken::Handover(handover) = &mut inbound.taken else {
            return false;
        };
        let digest = handover::digest(record.header.orig_len, record.data);
        if hook == HOOK_EGRESS {
            handover.egress_copy(record.header.ts_ns, digest);
            return false;
        }
        let twice = handover.is_duplicate(record.header.ts_ns, digest);
        if twice {
            self.members[interface as usize].deduped += 1;
        }
        twice
    }

    fn write(&mut self, packet: &Packet<'_>) -> Result<(), SinkError> {
        if self.stop.is_some() {
            return Ok(());
        }
        self.sink.write(packet)?;
        if self.sink.done() {
            // Rotation reached its file limit: this one was not written.
            self.stop = Some(StopReason::FileLimit);
            return Ok(());
        }
        self.captured += 1;
        self.bytes += packet.data.len() as u64;
        self.members[packet.interface as usize].written += 1;
        if self.captured >= self.opts.limit {
            self.stop = Some(StopReason::Count);
        }
        Ok(())
    }

    /// After a drain: flushes what was written, and writes the statistics
    /// of the interfaces that left (their last records are in now).
    pub fn settle(&mut self, wrote: bool) -> Result<(), SinkError> {
        for id in std::mem::take(&mut self.leaving) {
            let stats = self.stats(id);
            self.sink.remove_interface(id, &stats)?;
        }
        if wrote {
            self.sink.flush()?;
        }
        Ok(())
    }

    /// Detaches from every link (first step of every stop), after a last
    /// look at the counters of the pods watched at their veth.
    pub fn detach_all(&mut self) {
        self.sample_all_inbound();
        for member in &mut self.members {
            if let Some(ifindex) = member.ifindex {
                member.retired += self.attacher.detach(ifindex);
            }
        }
        for ifindex in std::mem::take(&mut self.held).into_keys() {
            self.discarded += self.attacher.detach(ifindex);
        }
    }

    /// The end: statistics of the interfaces still in the capture.
    pub fn finish(&mut self) -> Result<(), SinkError> {
        self.settle(false)?;
        let live: Vec<(InterfaceId, Stats)> = self
            .by_key
            .values()
            .map(|&id| (id, self.stats(id)))
            .collect();
        self.sink.finish(&live)
    }
}

/// A change that could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Attach(#[from] AttachError),
    #[error(transparent)]
    Sink(#[from] SinkError),
}
