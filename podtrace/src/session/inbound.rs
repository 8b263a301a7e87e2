//! What a pod receives, and where the session takes it: at the egress of
//! its host veth, or at the ingress of the pod's own eth0 when its CNI
//! delivers packets there without crossing the veth (Cilium's
//! `bpf_redirect_peer`, Calico's eBPF dataplane).
//!
//! Detection costs the datapath nothing: the kernel counts both sides of
//! the veth, and the session compares the counts four times a second
//! ([`crate::link::PodPath`]). When they part, it warns once, and with
//! `--redirect-fallback auto` hooks the pod's eth0 ([`Attacher::hook_eth0`])
//! and moves what the pod receives there without writing a packet twice
//! ([`super::handover`]). On a capture where one pod's packets skip its
//! veth the CNI does it for every pod: pods that join later, and the
//! others already watched, get the eth0 hook as well.

use std::{
    io,
    path::{Path, PathBuf},
    time::Duration,
};

use super::{
    bypass::{Bypass, Inbound, Taken, CAUSE},
    handover::Handover,
    Attacher, Session, Target,
};
use crate::{
    attach::{AttachError, DirectionFilter},
    link::{HostLink, PathCounts, PathReader},
};

/// How often a watched pod's counters are compared.
pub const CHECK_EVERY: Duration = Duration::from_millis(250);

/// `--redirect-fallback`: what to do about packets a CNI delivers into a
/// pod without crossing its host veth.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Fallback {
    /// Capture them at the pod's eth0 as soon as any are seen.
    #[default]
    Auto,
    /// Take what pods receive at their eth0 from the start.
    Always,
    /// Only detect and report them.
    Never,
}

/// Reads the counters of pods' veths: [`PathReader`], or a fake in tests.
pub trait PathProbe {
    /// Starts watching host link `ifindex`, whose peer is in `netns`.
    fn watch(&mut self, ifindex: u32, netns: &Path) -> Result<(), String>;
    fn forget(&mut self, ifindex: u32);
    /// eth0 first, then the veth (see [`crate::link::PodPath::sample`]).
    fn sample(&mut self, ifindex: u32) -> io::Result<PathCounts>;
    /// The veth first, then eth0.
    fn baseline(&mut self, ifindex: u32) -> io::Result<PathCounts>;
}

impl PathProbe for PathReader {
    fn watch(&mut self, ifindex: u32, netns: &Path) -> Result<(), String> {
        PathReader::watch(self, ifindex, netns)
            .map(drop)
            .map_err(|e| e.to_string())
    }
    fn forget(&mut self, ifindex: u32) {
        PathReader::forget(self, ifindex);
    }
    fn sample(&mut self, ifindex: u32) -> io::Result<PathCounts> {
        PathReader::sample(self, ifindex)
    }
    fn baseline(&mut self, ifindex: u32) -> io::Result<PathCounts> {
        PathReader::baseline(self, ifindex)
    }
}

/// What to do about a joining target's inbound packets.
pub(super) struct Plan {
    netns: PathBuf,
    /// Take them at eth0 from the start.
    eth0: bool,
    /// What had skipped the veth before the capture (auto's reason).
    history: u64,
}

impl<A: Attacher> Session<A> {
    /// Whether `target`'s inbound packets are watched, and where they are
    /// taken from the start. Watching starts here (the probe resolves the
    /// pair from the host).
    pub(super) fn plan_inbound(&mut self, target: &Target) -> Option<Plan> {
        let netns = target.netns.clone()?;
        if !target.link.peer_is_target || self.opts.direction == DirectionFilter::Out {
            return None;
        }
        let ifindex = target.link.ifindex;
        if let Err(e) = self.probe.watch(ifindex, &netns) {
            crate::verbose(format_args!(
                "{}: packets that skip host veth {} cannot be watched: {e}",
                target.label, target.link.name
            ));
            return None;
        }
        let history = match self.probe.sample(ifindex) {
            Ok(counts) => counts.skipped(),
            Err(_) => 0,
        };
        // Its CNI redirected before: so it does for the other pods too.
        self.redirects_seen |= history > 0;
        let eth0 = match self.opts.fallback {
            Fallback::Always => true,
            Fallback::Never => false,
            Fallback::Auto => self.redirects_seen,
        };
        Some(Plan {
            netns,
            eth0,
            history,
        })
    }

    /// Attaches a joining target's host link, and its eth0 hook when the
    /// plan says so. With auto, an eth0 hook that cannot be made leaves
    /// the target on its veth (said once); with always, it is an error.
    pub(super) fn attach_target(
        &mut self,
        target: &Target,
        plan: Option<&Plan>,
    ) -> Result<Option<String>, AttachError> {
        let link = &target.link;
        let mut hooks =
            crate::attach::Hooks::for_direction(self.opts.direction, link.peer_is_target);
        let Some(plan) = plan.filter(|p| p.eth0) else {
            self.mode_used = Some(self.attacher.attach(link, hooks, self.opts.tc_mode)?);
            return Ok(None);
        };
        hooks.egress = false;
        self.mode_used = Some(self.attacher.attach(link, hooks, self.opts.tc_mode)?);
        match self.attacher.hook_eth0(link, &plan.netns) {
            Ok(eth0) => {
                crate::verbose(format_args!(
                    "{}: hooks: {}the ingress of its eth0 inside the pod (ifindex {eth0} there: what it receives), because {}",
                    target.label,
                    sends_at(link, hooks),
                    match (self.opts.fallback, plan.history) {
                        (Fallback::Always, _) => "of --redirect-fallback always".to_string(),
                        (_, 0) => format!(
                            "another pod's packets skipped its host veth ({CAUSE})"
                        ),
                        (_, n) => format!(
                            "{n} packet(s) reached it without crossing host veth {} before this capture ({CAUSE})",
                            link.name
                        ),
                    }
                ));
                Ok(None)
            }
            Err(e) if self.opts.fallback == Fallback::Always => {
                self.attacher.detach(link.ifindex);
                Err(e)
            }
            Err(e) => {
                let reason = format!("cannot hook its eth0 ({})", crate::error_chain(&e));
                if let Err(e) = self.attacher.add_egress(link, self.opts.tc_mode) {
                    self.attacher.detach(link.ifindex);
                    return Err(e);
                }
                self.notes.push(format!(
                    "warning: {}: its CNI delivers packets past host veth {} ({CAUSE}), and podtrace {reason}: they are not captured",
                    target.label, link.name
                ));
                Ok(Some(reason))
            }
        }
    }

    /// Starts watching a target that joined with `plan` (`blind`: the eth0
    /// hook it should have had could not be made). A provisional link
    /// claimed (`held`) had its egress hook attached already: if it is to
    /// be taken at eth0, it moves there by a handover.
    pub(super) fn watch_inbound(
        &mut self,
        target: &Target,
        plan: Plan,
        blind: Option<String>,
        held: bool,
    ) {
        let ifindex = target.link.ifindex;
        let baseline = self.probe.baseline(ifindex).unwrap_or_default();
        let taken = match (plan.eth0, held, &blind) {
            (true, false, None) => Taken::Eth0,
            (true, true, None) => {
                self.handovers += 1;
                Taken::Handover(Handover::arm(crate::ring::monotonic_ns()))
            }
            _ => Taken::Veth,
        };
        let blind = blind.or_else(|| {
            (self.opts.fallback == Fallback::Never).then(|| "--redirect-fallback never".into())
        });
        if matches!(taken, Taken::Veth) {
            let hooks = crate::attach::Hooks::for_direction(
                self.opts.direction,
                target.link.peer_is_target,
            );
            crate::verbose(format_args!(
                "{}: hooks: {}host veth {}'s egress (what it receives); the veth's counters are compared with its eth0's {} times a second for packets that skip the veth",
                target.label,
                sends_at(&target.link, hooks),
                target.link.name,
                1000 / CHECK_EVERY.as_millis()
            ));
        }
        self.inbound.insert(
            ifindex,
            Inbound {
                link: target.link.clone(),
                netns: plan.netns,
                label: target.label.clone(),
                baseline,
                skipped: 0,
                warned: false,
                taken,
                before_eth0: None,
                eth0_since: None,
                blind,
            },
        );
    }

    /// Stops watching the target on host link `ifindex` (it left, or moved
    /// to another link): a last sample, and its report kept for its
    /// statistics.
    pub(super) fn unwatch_inbound(&mut self, ifindex: u32) -> Option<Bypass> {
        self.sample_inbound(ifindex);
        let inbound = self.inbound.remove(&ifindex)?;
        if matches!(inbound.taken, Taken::Handover(_)) {
            self.handovers -= 1;
        }
        self.probe.forget(ifindex);
        Some(inbound.report())
    }

    /// Updates what skipped the veth of a pod watched at its veth.
    fn sample_inbound(&mut self, ifindex: u32) {
        let Some(inbound) = self.inbound.get_mut(&ifindex) else {
            return;
        };
        if !matches!(inbound.taken, Taken::Veth) {
            return;
        }
        // A pod deleted meanwhile: its last sample stands.
        if let Ok(now) = self.probe.sample(ifindex) {
            inbound.skipped = inbound.skipped.max(now.skipped_since(&inbound.baseline));
        }
    }

    /// The counts of every pod still watched at its veth, for the end.
    pub(super) fn sample_all_inbound(&mut self) {
        let ifindexes: Vec<u32> = self.inbound.keys().copied().collect();
        for ifindex in ifindexes {
            self.sample_inbound(ifindex);
        }
    }

    /// Compares the counters of the pods watched at their veth, warns of
    /// packets that skipped it, and moves pods to their eth0 hook.
    /// `now_ns`: monotonic now; `drained_from_ns`: when the last drain
    /// started (every record stamped before it has been seen).
    pub fn check_inbound(&mut self, now_ns: u64, drained_from_ns: u64) {
        let ifindexes: Vec<u32> = self.inbound.keys().copied().collect();
        for ifindex in &ifindexes {
            self.sample_inbound(*ifindex);
            let inbound = self.inbound.get_mut(ifindex).expect("listed above");
            if inbound.skipped > 0 && !inbound.warned {
                inbound.warned = true;
                self.redirects_seen = true;
                let what = match (&inbound.blind, self.opts.fallback) {
                    (Some(why), _) => format!("they are not captured ({why})"),
                    _ => "podtrace captures them at the pod's eth0 from now on".into(),
                };
                self.notes.push(format!(
                    "warning: {}: {} packet(s) reached its eth0 without crossing host veth {} ({CAUSE}); {what}",
                    inbound.label,
                    inbound.skipped,
                    inbound.link.name
                ));
            }
        }
        for ifindex in ifindexes {
            self.step_inbound(ifindex, now_ns, drained_from_ns);
        }
    }

    /// Moves one pod along: arm, switch, settle.
    fn step_inbound(&mut self, ifindex: u32, now_ns: u64, drained_from_ns: u64) {
        let auto = self.opts.fallback == Fallback::Auto;
        let redirects_seen = self.redirects_seen;
        let inbound = self.inbound.get_mut(&ifindex).expect("a watched link");
        match &mut inbound.taken {
            Taken::Veth if auto && redirects_seen && inbound.blind.is_none() => {
                inbound.taken = Taken::Handover(Handover::arm(now_ns));
                self.handovers += 1;
            }
            Taken::Handover(h) if h.egress_gone_at.is_none() && h.armed(now_ns) => {
                self.switch_to_eth0(ifindex);
            }
            Taken::Handover(h) if h.settled(drained_from_ns) => {
                crate::verbose(format_args!(
                    "{}: moved to its eth0 hook; {} packet(s) seen at both hooks meanwhile were written once",
                    inbound.label, h.duplicates
                ));
                inbound.taken = Taken::Eth0;
                self.handovers -= 1;
            }
            _ => {}
        }
    }

    /// Attaches the eth0 hook of an armed pod, then detaches its veth's
    /// egress hook.
    fn switch_to_eth0(&mut self, ifindex: u32) {
        let inbound = self.inbound.get_mut(&ifindex).expect("a watched link");
        let before = self
            .probe
            .sample(ifindex)
            .map_or(inbound.skipped, |c| c.skipped_since(&inbound.baseline));
        // Armed because another pod's packets skipped its veth, and some
        // of this one's did meanwhile.
        if before > 0 && !inbound.warned {
            inbound.warned = true;
            self.notes.push(format!(
                "warning: {}: {before} packet(s) reached its eth0 without crossing host veth {} ({CAUSE}); podtrace captures them at the pod's eth0 from now on",
                inbound.label, inbound.link.name
            ));
        }
        match self.attacher.hook_eth0(&inbound.link, &inbound.netns) {
            Ok(eth0) => {
                self.attacher.unhook_egress(ifindex);
                let gone = crate::ring::monotonic_ns();
                let after = self
                    .probe
                    .sample(ifindex)
                    .map_or(before, |c| c.skipped_since(&inbound.baseline));
                inbound.before_eth0 = Some((before, after.max(before)));
                inbound.skipped = after.max(before);
                inbound.eth0_since = Some(crate::ring::Clock::now_wall());
                if let Taken::Handover(h) = &mut inbound.taken {
                    h.egress_gone_at = Some(gone);
                }
                crate::verbose(format_args!(
                    "{}: eth0 hooked (ifindex {eth0} in the pod), host veth {}'s egress hook detached",
                    inbound.label, inbound.link.name
                ));
            }
            Err(e) => {
                let reason = format!("podtrace cannot hook its eth0: {}", crate::error_chain(&e));
                self.notes.push(format!(
                    "warning: {}: {reason}; packets that skip host veth {} are not captured",
                    inbound.label, inbound.link.name
                ));
                inbound.skipped = before;
                inbound.blind = Some(reason);
                inbound.taken = Taken::Veth;
                self.handovers -= 1;
            }
        }
    }

    /// Warnings and notices to show now, each one line.
    pub fn take_notes(&mut self) -> Vec<String> {
        std::mem::take(&mut self.notes)
    }
}

/// "host veth X's ingress (what it sends), " when that hook is attached.
fn sends_at(link: &HostLink, hooks: crate::attach::Hooks) -> String {
    if hooks.ingress {
        format!("host veth {}'s ingress (what it sends), ", link.name)
    } else {
        String::new()
    }
}
