//! Moving a running podtrace's TC programs from one interface to another,
//! from outside, in about a millisecond: podtrace's own TCX links are
//! detached once (`bpftool link detach`), and the benchmark then attaches
//! the same programs through links of its own. The programs, their maps
//! (ring, counters, the filter's tail-call array) and podtrace's process
//! stay exactly as podtrace made them; only where the links are changes.
//! Starting and stopping podtrace takes tens of milliseconds of loading
//! and verifying, which is why table 5d does this instead.

use std::{
    borrow::Cow,
    time::{Duration, Instant},
};

use anyhow::{ensure, Context, Result};
use aya::programs::{
    links::{LinkOrder, LinkType},
    loaded_links,
    tc::{SchedClassifierLinkId, TcAttachOptions},
    SchedClassifier, TcAttachType,
};

/// One hook's program and the benchmark's link to it, while attached.
struct Hook {
    attach_type: TcAttachType,
    program: SchedClassifier,
    link: Option<SchedClassifierLinkId>,
}

/// podtrace's programs, taken over; attached to one of `places` or none.
pub struct HookMover {
    hooks: Vec<Hook>,
    places: Vec<String>,
    at: Option<usize>,
    /// Time spent moving and moves made, under two tallies the caller
    /// names (table 5d: the parity of the phase a move starts).
    spent: [Duration; 2],
    moves: [u32; 2],
}

const HOOKS: [TcAttachType; 2] = [TcAttachType::Ingress, TcAttachType::Egress];

impl HookMover {
    /// Takes over the TCX programs on `iface` (podtrace's; nothing else
    /// may be there) and leaves them attached nowhere. They can then be
    /// moved to any of `places`, first in its TCX chains, as podtrace
    /// attaches them.
    pub fn take_over(iface: &str, places: Vec<String>) -> Result<Self> {
        let mut hooks = Vec::new();
        let mut ids = Vec::new();
        for attach_type in HOOKS {
            let (_, programs) = SchedClassifier::query_tcx(iface, attach_type)
                .with_context(|| format!("querying the TCX programs on {iface}"))?;
            ensure!(
                programs.len() <= 1,
                "{} TCX programs on {iface} {attach_type:?}: only podtrace's may be there",
                programs.len()
            );
            for info in programs {
                ids.push(info.id());
                let program =
                    SchedClassifier::from_program_info(info, Cow::Borrowed("podtrace's program"))
                        .context("taking podtrace's program")?;
                hooks.push(Hook {
                    attach_type,
                    program,
                    link: None,
                });
            }
        }
        ensure!(!hooks.is_empty(), "no TCX program on {iface}");
        for link in loaded_links() {
            let link = link.context("listing BPF links")?;
            if link.link_type().ok() == Some(LinkType::Tcx) && ids.contains(&link.program_id()) {
                let id = link.id().to_string();
                crate::sh(&["bpftool", "link", "detach", "id", &id])
                    .context("detaching podtrace's link")?;
            }
        }
        for attach_type in HOOKS {
            let (_, left) = SchedClassifier::query_tcx(iface, attach_type)?;
            ensure!(
                left.is_empty(),
                "podtrace's program is still on {iface} {attach_type:?}"
            );
        }
        Ok(Self {
            hooks,
            places,
            at: None,
            spent: [Duration::ZERO; 2],
            moves: [0; 2],
        })
    }

    /// Moves every hook's program to `places[to]` (or off, for `None`):
    /// each is attached at its new place before it is detached from the
    /// old, so a move between two places costs the same both ways (and
    /// the kernel's static keys for TC stay on). The time it took is added
    /// to `spent[tally]`.
    pub fn move_to(&mut self, to: Option<usize>, tally: usize) -> Result<()> {
        let start = Instant::now();
        if to != self.at {
            for hook in &mut self.hooks {
                let old = hook.link.take();
                if let Some(place) = to {
                    let options = TcAttachOptions::TcxOrder(LinkOrder::first());
                    let iface = &self.places[place];
                    hook.link = Some(
                        hook.program
                            .attach_with_options(iface, hook.attach_type, options)
                            .with_context(|| format!("attaching to {iface}"))?,
                    );
                }
                if let Some(old) = old {
                    hook.program.detach(old)?;
                }
            }
            self.at = to;
        }
        self.spent[tally] += start.elapsed();
        self.moves[tally] += 1;
        Ok(())
    }

    /// Mean time of one move counted under `tally`.
    pub fn mean(&self, tally: usize) -> Duration {
        self.spent[tally] / self.moves[tally].max(1)
    }
}

impl Drop for HookMover {
    fn drop(&mut self) {
        let _ = self.move_to(None, 0);
    }
}

/// `/sys/kernel/rcu_expedited` set to 1 while this lives. Every TCX attach
/// and detach waits for an RCU grace period under the RTNL lock (the
/// kernel's tcx_entry_sync): ~12 ms each here, so moving two hooks took
/// ~25 ms, longer than a phase, and the second hook moved a grace period
/// after the first. Expedited grace periods take microseconds (an IPI to
/// each CPU, at every move, whichever way).
pub struct RcuExpedited(Option<String>);

const RCU_EXPEDITED: &str = "/sys/kernel/rcu_expedited";

impl RcuExpedited {
    pub fn new() -> Result<Self> {
        let old = std::fs::read_to_string(RCU_EXPEDITED)
            .with_context(|| format!("reading {RCU_EXPEDITED}"))?;
        std::fs::write(RCU_EXPEDITED, "1").with_context(|| format!("writing {RCU_EXPEDITED}"))?;
        Ok(Self(Some(old.trim().to_owned())))
    }
}

impl Drop for RcuExpedited {
    fn drop(&mut self) {
        if let Some(old) = self.0.take() {
            let _ = std::fs::write(RCU_EXPEDITED, old);
        }
    }
}
