//! What the session counts: each interface's statistics (its links'
//! kernel counters, less what a handover saw twice, plus what skipped its
//! veth) and the capture's totals.

use super::{
    bypass::{Bypass, Inbound},
    Attacher, Session,
};
use crate::{
    attach::KernelCounters,
    sink::{InterfaceId, Stats},
};

impl<A: Attacher> Session<A> {
    /// The target of interface `id` left host link `ifindex`: what was
    /// said about its packets that skipped it is kept for its statistics.
    pub(super) fn leave_inbound(&mut self, id: InterfaceId, ifindex: u32) {
        if let Some(report) = self.unwatch_inbound(ifindex) {
            let member = &mut self.members[id as usize];
            member.left_bypass = Some(report.after(member.left_bypass.take()));
        }
    }

    /// What the interface's links said about packets that skipped them.
    fn bypass(&self, id: InterfaceId) -> Option<Bypass> {
        let member = &self.members[id as usize];
        let live = member
            .ifindex
            .and_then(|i| self.inbound.get(&i))
            .map(Inbound::report);
        let left = member.left_bypass.clone();
        match live {
            Some(live) => Some(live.after(left)),
            None => left,
        }
    }

    /// Packets that reached pods past their veth and are not in the
    /// capture, and a line about each pod that had some.
    pub fn missed(&self) -> (u64, Vec<String>) {
        let mut total = 0;
        let mut notes = Vec::new();
        for id in 0..self.members.len() {
            if let Some(b) = self.bypass(id as InterfaceId) {
                total += b.missed;
                notes.extend(b.note);
            }
        }
        (total, notes)
    }

    /// An interface's counts, as its statistics block carries them.
    pub(super) fn stats(&self, id: InterfaceId) -> Stats {
        let member = &self.members[id as usize];
        let mut kernel = member.retired;
        if let Some(ifindex) = member.ifindex {
            kernel += self.attacher.counters(ifindex);
        }
        let bypass = self.bypass(id);
        Stats {
            // A packet both hooks saw during a handover was received once.
            received: kernel.seen.saturating_sub(member.deduped),
            dropped: kernel.lost,
            filtered: kernel.filtered,
            started_ns: member.started_ns,
            missed: bypass.as_ref().map(|b| b.missed),
            comment: bypass.and_then(|b| b.comment),
        }
    }

    /// The kernel's counts over the capture's interfaces (provisional
    /// links that were discarded left out).
    pub fn totals(&self) -> KernelCounters {
        let mut total = self.attacher.unattributed();
        for (id, _) in self.members.iter().enumerate() {
            let s = self.stats(id as InterfaceId);
            total += KernelCounters {
                seen: s.received,
                lost: s.dropped,
                filtered: s.filtered,
            };
        }
        total
    }

    /// Packets written per interface so far, by key (tests, -v).
    pub fn written(&self) -> impl Iterator<Item = (&str, u64)> {
        self.members.iter().map(|m| (m.key.as_str(), m.written))
    }

    /// How many targets are in the capture now.
    pub fn live(&self) -> usize {
        self.by_key.len()
    }
}
