//! Loading the eBPF object and attaching its two TC programs to host links.
//!
//! Attachment prefers TCX links: they are owned by a file descriptor, so the
//! kernel detaches them even if podtrace is killed, and they coexist with
//! other programs by construction. Kernels without TCX get a direct-action
//! cls_bpf filter on the clsact qdisc, added next to whatever filters are
//! already there; filters a killed podtrace left behind are removed first.

mod clsact;
mod native;

use std::{collections::HashMap, os::fd::AsFd};

use aya::{
    maps::{Array, MapData, PerCpuArray, RingBuf},
    programs::{
        links::LinkOrder,
        tc::{self, SchedClassifierLinkId, TcAttachOptions},
        SchedClassifier, TcAttachType,
    },
    Ebpf, EbpfLoader,
};
use podtrace_common::{FilterInsn, COUNTER_FILTERED, COUNTER_LOST, COUNTER_PASSED};

pub use self::native::test_run;
use crate::{error_chain, link::HostLink};

/// The compiled eBPF object, built by `cargo xtask build-ebpf`.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("PODTRACE_EBPF_OBJECT"));

const INGRESS_PROGRAM: &str = "podtrace_ingress";
const EGRESS_PROGRAM: &str = "podtrace_egress";

/// How programs are attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum TcMode {
    /// TCX if the kernel has it, else a clsact filter.
    #[default]
    Auto,
    /// TCX links only (Linux >= 6.6).
    Tcx,
    /// A cls_bpf filter on the clsact qdisc (any kernel with clsact).
    Clsact,
}

/// How the kernel runs a capture filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum FilterEngine {
    /// Translated if the verifier takes it, else interpreted.
    #[default]
    Auto,
    /// Translated to native eBPF: a program in front of the capture programs.
    Native,
    /// The classic-BPF interpreter inside the capture programs.
    Interpreter,
}

/// Which TC hooks to attach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hooks {
    pub ingress: bool,
    pub egress: bool,
}

impl Hooks {
    pub const BOTH: Self = Self {
        ingress: true,
        egress: true,
    };

    /// The hooks that see `wanted` traffic of a link. On the host end of a
    /// target's veth, what goes into the target leaves the host (egress).
    pub fn for_direction(wanted: DirectionFilter, peer_is_target: bool) -> Self {
        let (inbound, outbound) = match wanted {
            DirectionFilter::In => (true, false),
            DirectionFilter::Out => (false, true),
            DirectionFilter::InOut => (true, true),
        };
        if peer_is_target {
            Self {
                ingress: outbound,
                egress: inbound,
            }
        } else {
            Self {
                ingress: inbound,
                egress: outbound,
            }
        }
    }
}

/// `-Q in|out|inout`, like tcpdump, from the target's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum DirectionFilter {
    /// Only packets going into the target.
    In,
    /// Only packets the target sends.
    Out,
    #[default]
    #[value(name = "inout")]
    InOut,
}

#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("cannot load podtrace's eBPF programs")]
    Load(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("cannot attach to {iface} ({hook}): {reason}")]
    Attach {
        iface: String,
        hook: &'static str,
        reason: String,
    },
    /// The filter could not run translated (the interpreter can take over).
    #[error("cannot load the translated filter")]
    Translate(#[source] native::NativeError),
    #[error("eBPF object is missing {0}")]
    Missing(&'static str),
}

impl AttachError {
    fn load(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Load(Box::new(e))
    }
}

/// Kernel-side counters summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelCounters {
    pub seen: u64,
    pub lost: u64,
    pub filtered: u64,
}

/// Settings baked into the programs at load time.
#[derive(Debug, Clone, Copy)]
pub struct LoadOptions<'a> {
    pub snaplen: u32,
    /// Ring buffer size in bytes: a power of two, a multiple of the page size.
    pub ring_bytes: u32,
    /// The classic-BPF filter to run in the kernel; empty for none.
    pub filter: &'a [FilterInsn],
    pub engine: FilterEngine,
    /// Tests: a translated filter reads every packet byte with
    /// `bpf_skb_load_bytes`, as it does past the linear head of an skb.
    pub slow_loads_only: bool,
    /// Wake userspace for every record, not only once the ring is a
    /// quarter full.
    pub immediate: bool,
}

/// One program attached at one hook of a link.
enum Hooked {
    Tcx {
        hook: TcAttachType,
        id: SchedClassifierLinkId,
    },
    Clsact {
        hook: clsact::Hook,
        priority: u16,
        handle: u32,
        name: String,
    },
}

/// A link and what is attached to it.
struct Attached {
    link: HostLink,
    hooks: Vec<Hooked>,
}

/// The loaded programs and where they are attached. Dropping it detaches all.
pub struct Programs {
    ebpf: Ebpf,
    /// By ifindex.
    attached: HashMap<u32, Attached>,
    /// Every link attached so far, kept after detaching: records still in
    /// the ring name them.
    known: HashMap<u32, HostLink>,
    /// Written into the names of clsact filters (see [`clsact`]).
    owner: Option<clsact::Owner>,
    counters: PerCpuArray<MapData, u64>,
    filters: Option<native::FilterPrograms>,
    /// Whether the filter runs translated or interpreted (None: no filter).
    pub engine_used: Option<FilterEngine>,
    /// How the last attach was done, for -v and tests.
    pub mode_used: Option<TcMode>,
}

impl Programs {
    pub fn load(opts: LoadOptions<'_>) -> Result<Self, AttachError> {
        if opts.filter.is_empty() {
            return Self::load_object(opts, false);
        }
        if opts.engine != FilterEngine::Interpreter {
            match Self::load_object(opts, true) {
                Err(e @ AttachError::Translate(_)) if opts.engine == FilterEngine::Auto => {
                    crate::verbose(format_args!(
                        "{}; interpreting the filter instead",
                        error_chain(&e)
                    ))
                }
                other => return other,
            }
        }
        Self::load_object(opts, false)
    }

    /// Loads the ELF object: with the filter interpreted in the capture
    /// programs, or without it when `translated` (it then runs in front).
    fn load_object(opts: LoadOptions<'_>, translated: bool) -> Result<Self, AttachError> {
        // Userspace drains on a timer; wake it early once a quarter is full
        // (0: at every record, as "unread data >= 0" always holds).
        let wakeup_bytes = if opts.immediate {
            0
        } else {
            u64::from(opts.ring_bytes / 4)
        };
        let interpreted: &[FilterInsn] = if translated { &[] } else { opts.filter };
        // A constant for the verifier: 0 removes the interpreter from the programs.
        let filter_len = interpreted.len() as u32;
        let mut ebpf = EbpfLoader::new()
            .override_global("SNAPLEN", &opts.snaplen, true)
            .override_global("WAKEUP_BYTES", &wakeup_bytes, true)
            .override_global("FILTER_LEN", &filter_len, true)
            .map_max_entries("EVENTS", opts.ring_bytes)
            .map_max_entries("FILTER", filter_len.max(1))
            .load(EBPF_OBJECT)
            .map_err(AttachError::load)?;
        // Filled before any program is attached: no packet sees a partial filter.
        if !interpreted.is_empty() {
            let map = ebpf
                .map_mut("FILTER")
                .ok_or(AttachError::Missing("FILTER"))?;
            let mut program: Array<_, FilterInsn> =
                Array::try_from(map).map_err(AttachError::load)?;
            for (i, insn) in interpreted.iter().enumerate() {
                program
                    .set(i as u32, insn, 0)
                    .map_err(AttachError::load)?;
            }
        }
        for name in [INGRESS_PROGRAM, EGRESS_PROGRAM] {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(name)
                .ok_or(AttachError::Missing(name))?
                .try_into()
                .map_err(AttachError::load)?;
            prog.load().map_err(AttachError::load)?;
            if let Some(n) = prog
                .info()
                .ok()
                .and_then(|i| i.verified_instruction_count())
            {
                crate::verbose(format_args!("{name}: verifier processed {n} instructions"));
            }
        }
        let filters = if translated {
            let filters =
                native::load_filter_programs(&mut ebpf, opts.filter, opts.slow_loads_only)
                    .map_err(AttachError::Translate)?;
            Some(filters)
        } else {
            None
        };
        let counters = ebpf
            .take_map("COUNTERS")
            .ok_or(AttachError::Missing("COUNTERS"))?;
        let counters = PerCpuArray::try_from(counters).map_err(AttachError::load)?;
        let engine_used = match (&filters, opts.filter.is_empty()) {
            (_, true) => None,
            (Some(_), _) => Some(FilterEngine::Native),
            (None, _) => Some(FilterEngine::Interpreter),
        };
        Ok(Self {
            ebpf,
            attached: HashMap::new(),
            known: HashMap::new(),
            owner: None,
            counters,
            filters,
            engine_used,
            mode_used: None,
        })
    }

    /// The ring buffer the programs write to; call once.
    pub fn take_ring(&mut self) -> Result<RingBuf<MapData>, AttachError> {
        let map = self
            .ebpf
            .take_map("EVENTS")
            .ok_or(AttachError::Missing("EVENTS"))?;
        RingBuf::try_from(map).map_err(AttachError::load)
    }

    /// Attaches the selected hooks of `link`; on failure nothing of it
    /// stays attached. Stale filters a killed podtrace left on the link are
    /// removed first, whatever the mode.
    pub fn attach(
        &mut self,
        link: &HostLink,
        hooks: Hooks,
        mode: TcMode,
    ) -> Result<TcMode, AttachError> {
        self.detach(link.ifindex);
        let wanted = [
            (hooks.ingress, TcAttachType::Ingress),
            (hooks.egress, TcAttachType::Egress),
        ];
        let mut attached = Attached {
            link: link.clone(),
            hooks: Vec::new(),
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
        self.known.insert(link.ifindex, link.clone());
        self.mode_used = Some(used);
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
        let prog = self.entry(hook)?;
        // First in the chain: see packets before other programs (a CNI's
        // redirect, say) can end it; our verdict lets everything through.
        let tcx = prog.attach_with_options(
            &link.name,
            hook,
            TcAttachOptions::TcxOrder(LinkOrder::first()),
        );
        match (tcx, mode) {
            (Ok(id), _) => Ok((Hooked::Tcx { hook, id }, TcMode::Tcx)),
            (Err(e), TcMode::Auto) => {
                crate::verbose(format_args!("TCX attach failed ({e}), using clsact"));
                Ok((
                    self.attach_clsact(link, hook).map_err(fail)?,
                    TcMode::Clsact,
                ))
            }
            (Err(e), _) => Err(fail(error_chain(&e))),
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
        let prog = self.entry(hook).map_err(|e| e.to_string())?;
        let fd = prog.fd().map_err(|e| error_chain(&e))?;
        let tc_hook = clsact_hook(hook);
        let (priority, handle) = clsact::add(link.ifindex, tc_hook, &fd.as_fd(), &name)
            .map_err(|e| format!("cannot add a tc filter: {e}"))?;
        Ok(Hooked::Clsact {
            hook: tc_hook,
            priority,
            handle,
            name,
        })
    }

    /// Detaches everything attached to the link with this ifindex.
    pub fn detach(&mut self, ifindex: u32) {
        if let Some(attached) = self.attached.remove(&ifindex) {
            self.release(attached);
        }
    }

    fn release(&mut self, attached: Attached) {
        let iface = &attached.link.name;
        for hooked in attached.hooks {
            // The interface may be gone already (pod deleted): nothing to undo.
            let result = match hooked {
                Hooked::Tcx { hook, id } => self
                    .entry(hook)
                    .map_err(|e| e.to_string())
                    .and_then(|prog| prog.detach(id).map_err(|e| error_chain(&e))),
                Hooked::Clsact {
                    hook,
                    priority,
                    handle,
                    name,
                } => clsact::remove(attached.link.ifindex, hook, priority, handle, &name)
                    .map(drop)
                    .map_err(|e| e.to_string()),
            };
            if let Err(e) = result {
                crate::verbose(format_args!("detach from {iface}: {e}"));
            }
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

    /// The link with this ifindex, attached now or before.
    pub fn link(&self, ifindex: u32) -> Option<&HostLink> {
        self.known.get(&ifindex)
    }

    /// The program attached at `hook`: the translated filter in front, or
    /// the capture program itself.
    pub fn entry(&mut self, hook: TcAttachType) -> Result<&mut SchedClassifier, AttachError> {
        let ingress = hook == TcAttachType::Ingress;
        if let Some(filters) = &mut self.filters {
            return Ok(if ingress {
                &mut filters.ingress
            } else {
                &mut filters.egress
            });
        }
        let name = if ingress {
            INGRESS_PROGRAM
        } else {
            EGRESS_PROGRAM
        };
        self.ebpf
            .program_mut(name)
            .ok_or(AttachError::Missing(name))?
            .try_into()
            .map_err(AttachError::load)
    }

    /// The kernel name of the program attached at `hook`.
    fn entry_name(&self, hook: TcAttachType) -> &'static str {
        match (self.filters.is_some(), hook == TcAttachType::Ingress) {
            (true, true) => native::INGRESS_NAME,
            (true, false) => native::EGRESS_NAME,
            (false, true) => INGRESS_PROGRAM,
            (false, false) => EGRESS_PROGRAM,
        }
    }

    pub fn counters(&self) -> KernelCounters {
        let sum = |index: u32| -> u64 {
            self.counters
                .get(&index, 0)
                .map(|values| values.iter().sum())
                .unwrap_or(0)
        };
        KernelCounters {
            seen: sum(COUNTER_PASSED) + sum(COUNTER_FILTERED),
            lost: sum(COUNTER_LOST),
            filtered: sum(COUNTER_FILTERED),
        }
    }
}

impl Drop for Programs {
    fn drop(&mut self) {
        self.detach_all();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direction_picks_hooks() {
        let pod_in = Hooks::for_direction(DirectionFilter::In, true);
        assert_eq!((pod_in.ingress, pod_in.egress), (false, true));
        let pod_out = Hooks::for_direction(DirectionFilter::Out, true);
        assert_eq!((pod_out.ingress, pod_out.egress), (true, false));
        let iface_in = Hooks::for_direction(DirectionFilter::In, false);
        assert_eq!((iface_in.ingress, iface_in.egress), (true, false));
        assert_eq!(
            Hooks::for_direction(DirectionFilter::InOut, true),
            Hooks::BOTH
        );
    }
}
