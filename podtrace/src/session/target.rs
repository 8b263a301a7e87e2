//! What the session is told and what it attaches with: targets, the
//! watcher's changes, and the [`Attacher`] seam over the loaded programs.

use std::path::{Path, PathBuf};

use crate::{
    attach::{AttachError, Hooks, KernelCounters, Programs, TcMode},
    link::HostLink,
    sink::Interface,
};

/// Something to capture: a pod (through its current host link), or a host
/// interface, process or network namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Names the target across its links: the pod uid, or the link.
    pub key: String,
    pub link: HostLink,
    /// For messages: "pod prod/web", "interface eth0".
    pub label: String,
    /// How file formats that describe interfaces (pcapng) show it.
    pub interface: Interface,
    /// The network namespace at the far end of the link (a pod's
    /// `/proc/PID/ns/net`, a `--netns` path): where its eth0 can be hooked.
    pub netns: Option<PathBuf>,
}

impl Target {
    /// A host link captured as itself (`-i`, `--pid`, `--netns`).
    pub fn link(link: HostLink, label: String) -> Self {
        let interface = Interface {
            name: link.name.clone(),
            description: format!(
                "{label} (host interface {}, ifindex {})",
                link.name, link.ifindex
            ),
        };
        Self {
            key: format!("link/{}", link.ifindex),
            link,
            label,
            interface,
            netns: None,
        }
    }

    /// The same target, whose link's far end is in the namespace at `netns`.
    pub fn in_netns(mut self, netns: PathBuf) -> Self {
        self.netns = Some(netns);
        self
    }
}

/// What a watcher tells the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Capture this target: a new one, a provisional link claimed, or a
    /// known target on a new link (its pod's sandbox was re-created).
    Add(Target),
    /// Attach this link now and hold its packets: it may be a target.
    Provisional(HostLink),
    /// A provisional link is no target: detach it, drop what it held.
    Discard(u32),
    /// The target is gone: detach, write its statistics.
    Remove { key: String, reason: String },
    /// Nothing can join any more (a single pod was deleted): stop.
    Exhausted(String),
}

/// Attaches the capture programs to links and reads their counts;
/// implemented by [`Programs`], and by a fake in the tests.
pub trait Attacher {
    fn attach(
        &mut self,
        link: &HostLink,
        hooks: Hooks,
        mode: TcMode,
    ) -> Result<TcMode, AttachError>;
    /// Detaches, returning the link's final counts.
    fn detach(&mut self, ifindex: u32) -> KernelCounters;
    fn counters(&self, ifindex: u32) -> KernelCounters;
    fn unattributed(&self) -> KernelCounters;
    /// Hooks the ingress of the eth0 at the far end of an attached link,
    /// inside `netns`; its packets count as the link's. Returns eth0's
    /// ifindex in its namespace.
    fn hook_eth0(&mut self, link: &HostLink, netns: &Path) -> Result<u32, AttachError>;
    /// Detaches the egress hook of an attached link.
    fn unhook_egress(&mut self, ifindex: u32);
    /// Attaches the egress hook of a link attached without it.
    fn add_egress(&mut self, link: &HostLink, mode: TcMode) -> Result<TcMode, AttachError>;
}

impl Attacher for Programs {
    fn attach(
        &mut self,
        link: &HostLink,
        hooks: Hooks,
        mode: TcMode,
    ) -> Result<TcMode, AttachError> {
        Programs::attach(self, link, hooks, mode)
    }
    fn detach(&mut self, ifindex: u32) -> KernelCounters {
        Programs::detach(self, ifindex)
    }
    fn counters(&self, ifindex: u32) -> KernelCounters {
        self.link_counters(ifindex)
    }
    fn unattributed(&self) -> KernelCounters {
        self.unattributed_counters()
    }
    fn hook_eth0(&mut self, link: &HostLink, netns: &Path) -> Result<u32, AttachError> {
        Programs::hook_eth0(self, link, netns)
    }
    fn unhook_egress(&mut self, ifindex: u32) {
        Programs::unhook_egress(self, ifindex);
    }
    fn add_egress(&mut self, link: &HostLink, mode: TcMode) -> Result<TcMode, AttachError> {
        Programs::add_egress(self, link, mode)
    }
}
