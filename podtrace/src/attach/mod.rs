//! Loading the eBPF object and attaching its two TC programs to host links.
//!
//! Attachment prefers TCX links: they are owned by a file descriptor, so the
//! kernel detaches them even if podtrace is killed, and they coexist with
//! other programs by construction. Kernels without TCX get a direct-action
//! cls_bpf filter on the clsact qdisc, added next to whatever filters are
//! already there; filters a killed podtrace left behind are removed first.

mod clsact;
mod eth0;
mod links;
mod native;
mod slots;
mod tcx;

use std::{
    collections::HashMap,
    os::fd::{AsFd, BorrowedFd},
};

use aya::{
    maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf},
    programs::{SchedClassifier, TcAttachType},
    Ebpf, EbpfLoader,
};
use podtrace_common::FilterInsn;

use self::slots::Slots;

pub use self::native::test_run;
use crate::error_chain;

/// The compiled eBPF object, built by `cargo xtask build-ebpf`.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("PODTRACE_EBPF_OBJECT"));

const INGRESS_PROGRAM: &str = "podtrace_ingress";
const EGRESS_PROGRAM: &str = "podtrace_egress";
/// Counts what a translated filter rejects (tail-called by it).
const REJECTED_PROGRAM: &str = "podtrace_rejected";

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
    #[error("cannot capture more than {max} links at once")]
    TooManyLinks { max: usize },
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

impl std::ops::AddAssign for KernelCounters {
    fn add_assign(&mut self, other: Self) {
        self.seen += other.seen;
        self.lost += other.lost;
        self.filtered += other.filtered;
    }
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
    /// Most links attached at once, each with counters of its own.
    pub links: u32,
}

/// The loaded programs and where they are attached. Dropping it detaches all.
pub struct Programs {
    ebpf: Ebpf,
    /// By ifindex.
    attached: HashMap<u32, links::Attached>,
    /// Written into the names of clsact filters (see [`clsact`]).
    owner: Option<clsact::Owner>,
    slots: Slots,
    filters: Option<native::FilterPrograms>,
    /// Whether the filter runs translated or interpreted (None: no filter).
    pub engine_used: Option<FilterEngine>,
    /// How the last attach was done, for -v and tests.
    pub mode_used: Option<TcMode>,
    /// The eth0 programs are loaded and in `CAPTURE`.
    eth0_ready: bool,
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
            .map_max_entries("COUNTERS", Slots::counter_entries(opts.links))
            .map_max_entries("LINK_SLOTS_MORE", opts.links.max(1))
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
                program.set(i as u32, insn, 0).map_err(AttachError::load)?;
            }
        }
        let programs: &[&'static str] = if translated {
            &[INGRESS_PROGRAM, EGRESS_PROGRAM, REJECTED_PROGRAM]
        } else {
            &[INGRESS_PROGRAM, EGRESS_PROGRAM]
        };
        for &name in programs {
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
        let mut take = |name| ebpf.take_map(name).ok_or(AttachError::Missing(name));
        let slots = Slots::new(
            Array::try_from(take("LINK_SLOTS")?).map_err(AttachError::load)?,
            BpfHashMap::try_from(take("LINK_SLOTS_MORE")?).map_err(AttachError::load)?,
            PerCpuArray::try_from(take("COUNTERS")?).map_err(AttachError::load)?,
            opts.links,
        )?;
        let engine_used = match (&filters, opts.filter.is_empty()) {
            (_, true) => None,
            (Some(_), _) => Some(FilterEngine::Native),
            (None, _) => Some(FilterEngine::Interpreter),
        };
        Ok(Self {
            ebpf,
            attached: HashMap::new(),
            owner: None,
            slots,
            filters,
            engine_used,
            mode_used: None,
            eth0_ready: false,
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

    /// The program attached at `hook`: the translated filter in front, or
    /// the capture program itself.
    pub fn entry(&self, hook: TcAttachType) -> Result<BorrowedFd<'_>, AttachError> {
        let ingress = hook == TcAttachType::Ingress;
        if let Some(filters) = &self.filters {
            let fd = if ingress {
                &filters.ingress
            } else {
                &filters.egress
            };
            return Ok(fd.as_fd());
        }
        self.program_fd(if ingress {
            INGRESS_PROGRAM
        } else {
            EGRESS_PROGRAM
        })
    }

    /// The fd of one of the object's programs, loaded.
    fn program_fd(&self, name: &'static str) -> Result<BorrowedFd<'_>, AttachError> {
        let prog: &SchedClassifier = self
            .ebpf
            .program(name)
            .ok_or(AttachError::Missing(name))?
            .try_into()
            .map_err(AttachError::load)?;
        prog.fd().map(|fd| fd.as_fd()).map_err(AttachError::load)
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

    /// Packets counted without a known link (never expected).
    pub fn unattributed_counters(&self) -> KernelCounters {
        self.slots.unattributed()
    }
}

impl Drop for Programs {
    fn drop(&mut self) {
        self.detach_all();
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
