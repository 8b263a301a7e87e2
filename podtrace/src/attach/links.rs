//! Attaching the programs to links and detaching them: TCX links first,
//! else clsact filters (see [`super::clsact`] for how those are owned).

use std::os::fd::OwnedFd;

use aya::programs::{tc, TcAttachType};

use super::{clsact, eth0::Eth0Hook, tcx, AttachError, Hooks, KernelCounters, Programs, TcMode};
use crate::{error_chain, link::HostLink};

/// One program attached at one hook of a link.
pub(super) enum Hooked {
    /// Closing the link's fd detaches it.
    Tcx { hook: TcAttachType, link: OwnedFd },
    Clsact {
        hook: clsact::Hook,
        priority: u16,
        handle: u32,
        name: String,
    },
}

impl Hooked {
    /// Whether this is the egress of a TCX or clsact attachment.
    pub(super) fn is_egress(&self) -> bool {
        match self {
            Self::Tcx { hook, .. } => *hook == TcAttachType::Egress,
            Self::Clsact { hook, .. } => *hook == clsact::Hook::Egress,
        }
    }
}

/// A link and what is attached to it.
pub(super) struct Attached {
    pub link: HostLink,
    pub hooks: Vec<Hooked>,
    /// The hook at the pod's own eth0, if it has one.
    pub eth0: Option<Eth0Hook>,
}

impl Programs {
    /// Attaches the selected hooks of `link`, counting its packets in a
    /// slot of their own; on failure nothing of it stays attached. Stale
    /// filters a killed podtrace left on the link are removed first,
    /// whatever the mode. Returns the mode used.
    pub fn attach(
        &mut self,
        link: &HostLink,
        hooks: Hooks,
        mode: TcMode,
    ) -> Result<TcMode, AttachError> {
        self.detach(link.ifindex);
        // Before the programs: their first packet on the link counts there.
        self.slots.assign(link.ifindex)?;
        let wanted = [
            (hooks.ingress, TcAttachType::Ingress),
            (hooks.egress, TcAttachType::Egress),
        ];
        let mut attached = Attached {
            link: link.clone(),
            hooks: Vec::new(),
            eth0: None,
        };
        let mut used = mode;
        for (on, hook) in wanted {
            remove_stale(link, hook);
            if !on {
                continue;
            }
            match self.attach_one(link, hook, mode) {
                Ok((hooked, mode)) => {
                    attached.hooks.push(hooked);
                    used = mode;
                }
                Err(e) => {
                    self.release(attached);
                    return Err(e);
                }
            }
        }
        self.attached.insert(link.ifindex, attached);
        self.mode_used = Some(used);
        Ok(used)
    }

    /// Attaches the egress hook to a link attached without it (when its
    /// pod's eth0 could not be hooked instead).
    pub fn add_egress(&mut self, link: &HostLink, mode: TcMode) -> Result<TcMode, AttachError> {
        if !self.attached.contains_key(&link.ifindex) {
            return Err(AttachError::Attach {
                iface: link.name.clone(),
                hook: "egress",
                reason: "the link is not attached".into(),
            });
        }
        let (hooked, used) = self.attach_one(link, TcAttachType::Egress, mode)?;
        if let Some(attached) = self.attached.get_mut(&link.ifindex) {
            attached.hooks.push(hooked);
        }
        Ok(used)
    }

    fn attach_one(
        &mut self,
        link: &HostLink,
        hook: TcAttachType,
        mode: TcMode,
    ) -> Result<(Hooked, TcMode), AttachError> {
        let fail = |reason: String| AttachError::Attach {
            iface: link.name.clone(),
            hook: hook_name(hook),
            reason,
        };
        if mode == TcMode::Clsact {
            return Ok((
                self.attach_clsact(link, hook).map_err(fail)?,
                TcMode::Clsact,
            ));
        }
        let tcx = tcx::link_create(self.entry(hook)?, link.ifindex, hook);
        match (tcx, mode) {
            (Ok(link), _) => Ok((Hooked::Tcx { hook, link }, TcMode::Tcx)),
            (Err(e), TcMode::Auto) => {
                crate::verbose(format_args!("TCX attach failed ({e}), using clsact"));
                Ok((
                    self.attach_clsact(link, hook).map_err(fail)?,
                    TcMode::Clsact,
                ))
            }
            (Err(e), _) => Err(fail(format!("TCX link: {e}"))),
        }
    }

    /// A cls_bpf filter on the clsact qdisc, named after its owner.
    fn attach_clsact(&mut self, link: &HostLink, hook: TcAttachType) -> Result<Hooked, String> {
        // An existing clsact qdisc (ours from before, or a CNI's) is fine.
        if let Err(e) = tc::qdisc_add_clsact(&link.name) {
            if !is_already_exists(&e) {
                return Err(format!("cannot add clsact qdisc: {}", error_chain(&e)));
            }
        }
        let owner = match self.owner {
            Some(owner) => owner,
            None => *self.owner.insert(
                clsact::Owner::me().map_err(|e| format!("cannot name the filter's owner: {e}"))?,
            ),
        };
        let name = owner.filter_name(self.entry_name(hook));
        let fd = self.entry(hook).map_err(|e| e.to_string())?;
        let tc_hook = clsact_hook(hook);
        let (priority, handle) = clsact::add(link.ifindex, tc_hook, &fd, &name)
            .map_err(|e| format!("cannot add a tc filter: {e}"))?;
        Ok(Hooked::Clsact {
            hook: tc_hook,
            priority,
            handle,
            name,
        })
    }

    /// Detaches everything attached to the link with this ifindex and
    /// returns its final counts (zero for a link not attached).
    pub fn detach(&mut self, ifindex: u32) -> KernelCounters {
        match self.attached.remove(&ifindex) {
            Some(attached) => self.release(attached),
            None => KernelCounters::default(),
        }
    }

    /// Detaches, then takes the link's counts: once a TCX link is gone no
    /// program of ours runs on it any more.
    fn release(&mut self, attached: Attached) -> KernelCounters {
        let iface = &attached.link.name;
        // Closing its link detaches the eth0 hook (a pod deleted took it along).
        drop(attached.eth0);
        for hooked in attached.hooks {
            // The interface may be gone already (pod deleted): nothing to undo.
            if let Err(e) = self.release_hook(attached.link.ifindex, hooked) {
                crate::verbose(format_args!("detach from {iface}: {e}"));
            }
        }
        self.slots.release(attached.link.ifindex)
    }

    /// Detaches one hook of the link with this ifindex.
    pub(super) fn release_hook(&mut self, ifindex: u32, hooked: Hooked) -> Result<(), String> {
        match hooked {
            Hooked::Tcx { link, .. } => {
                drop(link);
                Ok(())
            }
            Hooked::Clsact {
                hook,
                priority,
                handle,
                name,
            } => clsact::remove(ifindex, hook, priority, handle, &name)
                .map(drop)
                .map_err(|e| e.to_string()),
        }
    }

    /// Detaches every program; safe to call more than once.
    pub fn detach_all(&mut self) {
        let ifindexes: Vec<u32> = self.attached.keys().copied().collect();
        for ifindex in ifindexes {
            self.detach(ifindex);
        }
    }

    /// The links programs are attached to now.
    pub fn links(&self) -> impl Iterator<Item = &HostLink> {
        self.attached.values().map(|a| &a.link)
    }

    /// Gives a link a counter slot without attaching to it: test runs
    /// (BPF_PROG_TEST_RUN, on the loopback's ifindex) then count as packets
    /// on an attached link do, and [`Self::link_counters`] reads them.
    pub fn count_link(&mut self, ifindex: u32) -> Result<(), AttachError> {
        self.slots.assign(ifindex).map(drop)
    }

    /// The counts so far of an attached link.
    pub fn link_counters(&self, ifindex: u32) -> KernelCounters {
        self.slots.counters_of(ifindex)
    }
}

/// Removes the filters a killed podtrace left at `hook` of `link` (only
/// those whose owner is provably dead; see [`clsact`]).
fn remove_stale(link: &HostLink, hook: TcAttachType) {
    // No clsact qdisc, no filters: the dump fails, and nothing is stale.
    if let Ok(removed) = clsact::remove_stale(link.ifindex, clsact_hook(hook)) {
        for name in removed {
            crate::verbose(format_args!(
                "removed the stale filter {name} from {}",
                link.name
            ));
        }
    }
}

fn clsact_hook(hook: TcAttachType) -> clsact::Hook {
    match hook {
        TcAttachType::Ingress => clsact::Hook::Ingress,
        _ => clsact::Hook::Egress,
    }
}

fn is_already_exists(e: &tc::TcError) -> bool {
    match e {
        tc::TcError::AlreadyAttached => true,
        other => {
            let text = error_chain(other);
            text.contains("File exists") || text.contains("Exclusivity")
        }
    }
}

fn hook_name(hook: TcAttachType) -> &'static str {
    match hook {
        TcAttachType::Ingress => "ingress",
        TcAttachType::Egress => "egress",
        TcAttachType::Custom(_) => "custom",
    }
}
