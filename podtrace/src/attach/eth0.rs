//! The hook at a pod's own eth0, for what a CNI delivers there without
//! crossing the host end of the veth (see [`crate::link::PodPath`]).
//!
//! It is a TCX link at the ingress of eth0, inside the pod's network
//! namespace. TCX resolves a link's target ifindex in the namespace of the
//! thread that creates it, so a short-lived thread enters the pod's
//! namespace (`setns` on its `/proc/PID/ns/net` or `--netns` path), makes
//! the one `BPF_LINK_CREATE` call, returns to the host's namespace and
//! ends. That is all that touches the pod: no process runs in it, nothing
//! is mounted, no socket is opened there, and the link's file descriptor
//! is podtrace's like every other link (closing it, or podtrace dying,
//! detaches it). eth0's ifindex and the namespace are checked from the
//! host beforehand (the veth's IFLA_LINK and IFLA_LINK_NETNSID).
//!
//! eth0's ifindex says nothing on the host (every pod may have the same),
//! so the program attached there is a stub loaded for this pod alone: it
//! writes the pod's host link and counter slot into `POD_LINK` and
//! tail-calls `podtrace_eth0` (or the translated filter in front of it),
//! which records the packet as one of the host link, hook
//! `HOOK_ETH0_INGRESS`. Nothing else changes: same ring, same counters.

use std::{
    fs::File,
    io,
    os::fd::{AsFd, AsRawFd, OwnedFd},
    path::Path,
};

use aya::{
    maps::MapData,
    programs::{SchedClassifier, TcAttachType},
};
use podtrace_common::{CAPTURE_SLOT_ETH0, CAPTURE_SLOT_ETH0_ENTRY, CAPTURE_SLOT_ETH0_REJECTED};

use super::{native, tcx, AttachError, Programs};
use crate::{
    error_chain,
    filter::translate::Insn,
    link::{HostLink, PodPath},
};

const ETH0_PROGRAM: &str = "podtrace_eth0";
const ETH0_REJECTED_PROGRAM: &str = "podtrace_eth0_rejected";
/// Kernel name of the per-pod stubs.
const STUB_NAME: &str = "podtrace_pod";

/// A pod's eth0 hook; dropping it detaches it.
pub(super) struct Eth0Hook {
    /// The TCX link (podtrace's only reference to it).
    _link: OwnedFd,
    _stub: OwnedFd,
    /// eth0's ifindex in the pod's namespace.
    pub eth0: u32,
}

impl Programs {
    /// Hooks the ingress of the pod's eth0 (in `netns`) for the attached
    /// host link `link`: what it receives is captured there too, as
    /// packets of `link`. Returns eth0's ifindex in the pod.
    pub fn hook_eth0(&mut self, link: &HostLink, netns: &Path) -> Result<u32, AttachError> {
        let fail = |reason: String| AttachError::Attach {
            iface: format!("the eth0 of {}'s peer", link.name),
            hook: "ingress",
            reason,
        };
        if !self.attached.contains_key(&link.ifindex) {
            return Err(fail("its host link is not attached".into()));
        }
        let slot = self
            .slots
            .slot(link.ifindex)
            .ok_or_else(|| fail("its host link has no counters".into()))?;
        let path = PodPath::of_in(link.ifindex, netns).map_err(|e| fail(error_chain(&e)))?;
        self.prepare_eth0()?;
        let insns = stub(
            link.ifindex,
            slot,
            self.map_fd("POD_LINK")?,
            self.map_fd("CAPTURE")?,
        );
        let stub = native::prog_load(&insns, STUB_NAME).map_err(fail)?;
        let tcx = in_netns(netns, || {
            tcx::link_create(stub.as_fd(), path.eth0, TcAttachType::Ingress)
        })
        .map_err(|e| fail(e.to_string()))?;
        let attached = self.attached.get_mut(&link.ifindex).expect("checked above");
        attached.eth0 = Some(Eth0Hook {
            _link: tcx,
            _stub: stub,
            eth0: path.eth0,
        });
        Ok(path.eth0)
    }

    /// Detaches the egress hook of an attached link (its eth0 hook has
    /// taken over what the pod receives).
    pub fn unhook_egress(&mut self, ifindex: u32) {
        let Some(attached) = self.attached.get_mut(&ifindex) else {
            return;
        };
        let (egress, rest) = std::mem::take(&mut attached.hooks)
            .into_iter()
            .partition(|h| h.is_egress());
        attached.hooks = rest;
        let name = attached.link.name.clone();
        for hooked in egress {
            if let Err(e) = self.release_hook(ifindex, hooked) {
                crate::verbose(format_args!("detach from {name}: {e}"));
            }
        }
    }

    /// Loads the programs of pods' eth0 hooks, so that pods' eth0 can be
    /// hooked later. Call before [`Programs::take_ring`]: aya wrote the
    /// maps' descriptors into every program of the object when it loaded
    /// it, and the ring's goes with it.
    pub fn load_eth0(&mut self) -> Result<(), AttachError> {
        for name in [ETH0_PROGRAM, ETH0_REJECTED_PROGRAM] {
            let prog: &mut SchedClassifier = self
                .ebpf
                .program_mut(name)
                .ok_or(AttachError::Missing(name))?
                .try_into()
                .map_err(AttachError::load)?;
            prog.load().map_err(AttachError::load)?;
        }
        Ok(())
    }

    /// Puts the eth0 capture programs (and the filter in front of them,
    /// translated now) in `CAPTURE`, the first time a pod's eth0 is hooked.
    fn prepare_eth0(&mut self) -> Result<(), AttachError> {
        if self.eth0_ready {
            return Ok(());
        }
        let filter = match &mut self.filters {
            Some(filters) => {
                let fd = filters.eth0().map_err(AttachError::Translate)?;
                Some(fd.try_clone().map_err(AttachError::load)?)
            }
            None => None,
        };
        let capture = self.map_fd("CAPTURE")?;
        // Not loaded: load_eth0 was not called (a capture of host
        // interfaces, or --redirect-fallback never).
        let eth0 = self.program_fd(ETH0_PROGRAM)?;
        let entry = filter.as_ref().map_or(eth0, |fd| fd.as_fd());
        for (slot, fd) in [
            (CAPTURE_SLOT_ETH0, eth0),
            (
                CAPTURE_SLOT_ETH0_REJECTED,
                self.program_fd(ETH0_REJECTED_PROGRAM)?,
            ),
            (CAPTURE_SLOT_ETH0_ENTRY, entry),
        ] {
            native::prog_array_set(capture, slot, fd).map_err(AttachError::load)?;
        }
        self.eth0_ready = true;
        Ok(())
    }

    /// Runs the eth0 hook of a pod whose host link is `ifindex` (a link
    /// with counters: attached, or given them with `count_link`) on
    /// `packet`, `repeat` times, with BPF_PROG_TEST_RUN: the stub, the tail
    /// call and the capture, as for a packet at the pod's eth0. Returns the
    /// verdict and the mean ns per run. For benchmarks; nothing is attached.
    pub fn eth0_test_run(
        &mut self,
        ifindex: u32,
        packet: &[u8],
        repeat: u32,
    ) -> Result<(i32, u32), AttachError> {
        let slot = self
            .slots
            .slot(ifindex)
            .ok_or(AttachError::Missing("the link's counters"))?;
        self.prepare_eth0()?;
        let insns = stub(
            ifindex,
            slot,
            self.map_fd("POD_LINK")?,
            self.map_fd("CAPTURE")?,
        );
        let fail = |reason: String| AttachError::Attach {
            iface: format!("ifindex {ifindex}"),
            hook: "test run",
            reason,
        };
        let stub = native::prog_load(&insns, STUB_NAME).map_err(fail)?;
        native::test_run(stub.as_fd(), packet, repeat).map_err(|e| fail(e.to_string()))
    }

    /// The fd of one of the object's maps the stub refers to.
    fn map_fd(&self, name: &'static str) -> Result<i32, AttachError> {
        let data: &MapData = match self.ebpf.map(name).ok_or(AttachError::Missing(name))? {
            aya::maps::Map::PerCpuArray(d) | aya::maps::Map::ProgramArray(d) => d,
            _ => return Err(AttachError::Missing(name)),
        };
        Ok(data.fd().as_fd().as_raw_fd())
    }

    /// eth0's ifindex in its pod, if the link's eth0 is hooked.
    pub fn eth0_hooked(&self, ifindex: u32) -> Option<u32> {
        self.attached.get(&ifindex)?.eth0.as_ref().map(|h| h.eth0)
    }
}

/// eBPF opcodes the stub needs (`struct bpf_insn` codes).
const LD_IMM64: u8 = 0x18;
const MOV64_REG: u8 = 0xbf;
const MOV64_IMM: u8 = 0xb7;
const MOV32_IMM: u8 = 0xb4;
const ADD64_IMM: u8 = 0x07;
const ST_W: u8 = 0x62;
const JEQ_IMM: u8 = 0x15;
const CALL: u8 = 0x85;
const EXIT: u8 = 0x95;
const PSEUDO_MAP_FD: u8 = 1;
const MAP_LOOKUP_ELEM: i32 = 1;
const TAIL_CALL: i32 = 12;
const TCX_NEXT: i32 = -1;

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: dst | (src << 4),
        off,
        imm,
    }
}

/// The stub of the pod whose host link is `ifindex`, counted in `slot`:
///
/// ```text
/// r6 = r1                                  ; the skb
/// *(u32 *)(r10 - 4) = 0
/// r0 = map_lookup_elem(POD_LINK, r10 - 4)  ; this CPU's entry
/// if r0 == 0 goto out
/// *(u32 *)(r0 + 0) = ifindex
/// *(u32 *)(r0 + 4) = slot
/// tail_call(r6, CAPTURE, CAPTURE_SLOT_ETH0_ENTRY)
/// out: return TCX_NEXT
/// ```
fn stub(ifindex: u32, slot: u32, pod_link: i32, capture: i32) -> Vec<Insn> {
    vec![
        insn(MOV64_REG, 6, 1, 0, 0),
        insn(ST_W, 10, 0, -4, 0),
        insn(LD_IMM64, 1, PSEUDO_MAP_FD, 0, pod_link),
        insn(0, 0, 0, 0, 0),
        insn(MOV64_REG, 2, 10, 0, 0),
        insn(ADD64_IMM, 2, 0, 0, -4),
        insn(CALL, 0, 0, 0, MAP_LOOKUP_ELEM),
        insn(JEQ_IMM, 0, 0, 7, 0),
        insn(ST_W, 0, 0, 0, ifindex as i32),
        insn(ST_W, 0, 0, 4, slot as i32),
        insn(MOV64_REG, 1, 6, 0, 0),
        insn(LD_IMM64, 2, PSEUDO_MAP_FD, 0, capture),
        insn(0, 0, 0, 0, 0),
        insn(MOV32_IMM, 3, 0, 0, CAPTURE_SLOT_ETH0_ENTRY as i32),
        insn(CALL, 0, 0, 0, TAIL_CALL),
        insn(MOV64_IMM, 0, 0, 0, TCX_NEXT),
        insn(EXIT, 0, 0, 0, 0),
    ]
}

/// Runs `f` on a thread of its own inside the network namespace at
/// `netns`; the thread goes back to podtrace's namespace and ends. The
/// rest of podtrace never leaves the host's namespace.
fn in_netns<T: Send>(netns: &Path, f: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
    let target = File::open(netns)?;
    let home = File::open("/proc/thread-self/ns/net")?;
    let enter = |ns: &File| {
        // SAFETY: setns on an open namespace file; affects this thread only.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EPERM) {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    "entering the pod's network namespace (setns) needs CAP_SYS_ADMIN",
                ));
            }
            return Err(e);
        }
        Ok(())
    };
    std::thread::scope(|s| {
        s.spawn(|| {
            enter(&target)?;
            let out = f();
            // The thread ends next anyway; going back first keeps "only the
            // one call" true even if it did not.
            enter(&home)?;
            out
        })
        .join()
        .unwrap_or_else(|_| {
            Err(io::Error::other(
                "the thread in the pod's namespace panicked",
            ))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stub_jumps_to_its_exit() {
        let s = stub(7, 3, 10, 11);
        let jeq = s.iter().position(|i| i.code == JEQ_IMM).unwrap();
        let target = jeq + 1 + s[jeq].off as usize;
        assert_eq!(s[target].code, MOV64_IMM);
        assert_eq!(s[target].imm, TCX_NEXT);
        assert_eq!(s.last().unwrap().code, EXIT);
        assert!(s.iter().any(|i| i.code == ST_W && i.imm == 7));
    }
}
