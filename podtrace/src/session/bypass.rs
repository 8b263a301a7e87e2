//! What is known about a watched pod's packets that skip its host veth:
//! where what it receives is taken ([`Taken`]), the counts behind that
//! ([`Inbound`]), and what its statistics say ([`Bypass`]). The session's
//! decisions about them are in [`super::inbound`].

use std::{path::PathBuf, time::Duration};

use super::handover::Handover;
use crate::link::{HostLink, PathCounts};

/// Words for the likely cause, in every message about it.
pub(super) const CAUSE: &str = "a CNI redirect such as Cilium's bpf_redirect_peer";

/// Where what a pod receives is taken now.
#[derive(Debug)]
pub(super) enum Taken {
    /// At the host veth's egress; the veth's counters are watched.
    Veth,
    /// Moving to the eth0 hook.
    Handover(Handover),
    /// At the pod's eth0.
    Eth0,
}

/// One watched pod.
#[derive(Debug)]
pub(super) struct Inbound {
    pub link: HostLink,
    pub netns: PathBuf,
    pub label: String,
    pub baseline: PathCounts,
    /// Packets that skipped the veth since the baseline, at the last sample.
    pub skipped: u64,
    pub warned: bool,
    pub taken: Taken,
    /// `skipped` read just before and just after the eth0 hook was
    /// attached: what it missed lies between.
    pub before_eth0: Option<(u64, u64)>,
    /// When the eth0 hook took over (None: from the start).
    pub eth0_since: Option<Duration>,
    /// Why what skips the veth is not captured (never, or no eth0 hook).
    pub blind: Option<String>,
}

/// What a pod's statistics say about packets that skipped its veth.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bypass {
    /// Packets that reached the pod past the veth and are not in the
    /// capture (at least).
    pub missed: u64,
    /// For the pcapng comment.
    pub comment: Option<String>,
    /// For the end of the capture, when some were missed.
    pub note: Option<String>,
}

impl Bypass {
    /// This report after an `earlier` one of the same interface: the
    /// counts add up, the newer words win.
    pub(super) fn after(self, earlier: Option<Bypass>) -> Bypass {
        match earlier {
            Some(e) => Bypass {
                missed: e.missed + self.missed,
                comment: self.comment.or(e.comment),
                note: self.note.or(e.note),
            },
            None => self,
        }
    }
}

impl Inbound {
    pub(super) fn veth(&self) -> &str {
        &self.link.name
    }

    /// Packets that are not in the capture for skipping the veth: a range
    /// when some skipped it while the eth0 hook was being attached.
    fn missed(&self) -> (u64, u64) {
        match (&self.taken, self.before_eth0) {
            (Taken::Veth, _) => (self.skipped, self.skipped),
            (_, Some(range)) => range,
            (_, None) => (0, 0),
        }
    }

    pub(super) fn report(&self) -> Bypass {
        let (low, high) = self.missed();
        let count = if low == high {
            format!("{low}")
        } else {
            format!("{low} to {high}")
        };
        let missed_words = format!(
            "{count} packet(s) reached the pod's eth0 without crossing host veth {} ({CAUSE}) and are not in the capture",
            self.veth()
        );
        let why = self
            .blind
            .as_ref()
            .map_or(String::new(), |b| format!(": {b}"));
        let comment = match (&self.taken, self.eth0_since) {
            (Taken::Veth, _) if high == 0 => None,
            (Taken::Veth, _) => Some(format!("{missed_words}{why}")),
            (_, None) => Some(format!(
                "what the pod received was captured at its own eth0 (its CNI delivers packets there without crossing host veth {})",
                self.veth()
            )),
            (_, Some(since)) => Some(format!(
                "from {} on, what the pod received was captured at its own eth0; before that, {missed_words}",
                utc(since)
            )),
        };
        let note = (high > 0).then(|| format!("{}: {missed_words}{why}", self.label));
        Bypass {
            missed: low,
            comment,
            note,
        }
    }
}

/// `2026-01-02T03:04:05.678Z` for a wall-clock time since the epoch.
fn utc(since_epoch: Duration) -> String {
    let tm = crate::sink::utc_time(since_epoch.as_secs());
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec,
        since_epoch.subsec_millis()
    )
}
