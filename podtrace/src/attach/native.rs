//! The translated filter programs (see [`crate::filter::translate`]):
//! loaded with raw `bpf(2)` calls, since aya loads programs from ELF objects
//! only, and held by their fds (attached with [`super::tcx`] or as clsact
//! filters, exactly like the capture programs).

use std::{
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd},
};

use aya::{
    maps::{Map, ProgramArray},
    programs::SchedClassifier,
    Ebpf,
};
use podtrace_common::{
    FilterInsn, CAPTURE_SLOT_EGRESS, CAPTURE_SLOT_ETH0, CAPTURE_SLOT_ETH0_REJECTED,
    CAPTURE_SLOT_INGRESS, CAPTURE_SLOT_REJECTED,
};

use super::{EGRESS_PROGRAM, INGRESS_PROGRAM, REJECTED_PROGRAM};
use crate::error_chain;
use crate::filter::translate::{self, Insn, Maps, Options, TranslateError};

/// Kernel name of the filter programs (15 characters at most).
pub const KERNEL_NAME: &str = "podtrace_filter";
/// Names of their cls_bpf filters in clsact mode, by hook.
pub const INGRESS_NAME: &str = "podtrace_filter_ingress";
pub const EGRESS_NAME: &str = "podtrace_filter_egress";
/// The one in front of pods' eth0 hooks (tail-called by their stubs).
pub const ETH0_NAME: &str = "podtrace_filter_eth0";

/// The translated filter programs, in front of the capture programs.
pub(super) struct FilterPrograms {
    pub ingress: OwnedFd,
    pub egress: OwnedFd,
    /// Translated when a pod's eth0 is first hooked.
    pub eth0: Option<OwnedFd>,
    filter: Vec<FilterInsn>,
    maps: Maps,
    direct_max: u32,
}

impl FilterPrograms {
    /// The filter in front of pods' eth0 hooks: the same filter, whose
    /// verdicts go to the eth0 capture programs.
    pub fn eth0(&mut self) -> Result<&OwnedFd, NativeError> {
        if self.eth0.is_none() {
            let opts = translate::Options {
                slot: CAPTURE_SLOT_ETH0,
                rejected: CAPTURE_SLOT_ETH0_REJECTED,
                direct_max: self.direct_max,
            };
            self.eth0 = Some(load(&self.filter, self.maps, opts, ETH0_NAME)?);
        }
        Ok(self.eth0.as_ref().expect("loaded above"))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NativeError {
    #[error(transparent)]
    Translate(#[from] TranslateError),
    #[error("the verifier refused the translated filter ({insns} instructions): {reason}")]
    Verifier { insns: usize, reason: String },
    #[error("cannot find the loaded filter program: {0}")]
    Lookup(String),
}

/// Translates and loads the filter for one hook; accepted packets are
/// tail-called into slot `opts.slot` of the `maps.capture` array.
pub fn load(
    filter: &[FilterInsn],
    maps: Maps,
    opts: Options,
    name: &'static str,
) -> Result<OwnedFd, NativeError> {
    let insns = translate::translate(filter, maps, opts)?;
    let fd = prog_load(&insns, KERNEL_NAME).map_err(|reason| NativeError::Verifier {
        insns: insns.len(),
        reason,
    })?;
    if let Ok(n) = verified_insns(fd.as_fd()) {
        crate::verbose(format_args!(
            "{name}: {} eBPF instructions, verifier processed {n}",
            insns.len()
        ));
    }
    Ok(fd)
}

/// Translates the filter into one program per hook that tail-calls the
/// capture programs, which go into `CAPTURE` first.
pub(super) fn load_filter_programs(
    ebpf: &mut Ebpf,
    filter: &[FilterInsn],
    slow_loads_only: bool,
) -> Result<FilterPrograms, NativeError> {
    let missing = |what: &str| NativeError::Lookup(format!("{what} is missing"));
    let map_fd = |name: &str| match ebpf.map(name) {
        Some(Map::ProgramArray(data) | Map::PerCpuArray(data)) => Ok(data.fd().as_fd().as_raw_fd()),
        _ => Err(missing(name)),
    };
    let maps = Maps {
        capture: map_fd("CAPTURE")?,
        counters: map_fd("COUNTERS")?,
    };
    let direct_max = if slow_loads_only {
        0
    } else {
        podtrace_common::FILTER_DIRECT_MAX
    };
    let load = |slot, name| {
        let opts = translate::Options {
            slot,
            rejected: CAPTURE_SLOT_REJECTED,
            direct_max,
        };
        load(filter, maps, opts, name)
    };
    let ingress = load(CAPTURE_SLOT_INGRESS, INGRESS_NAME)?;
    let egress = load(CAPTURE_SLOT_EGRESS, EGRESS_NAME)?;
    let mut fds = Vec::new();
    // In the order of podtrace-common's CAPTURE_SLOT_*.
    for name in [INGRESS_PROGRAM, EGRESS_PROGRAM, REJECTED_PROGRAM] {
        let prog: &SchedClassifier = ebpf
            .program(name)
            .and_then(|p| p.try_into().ok())
            .ok_or_else(|| missing(name))?;
        let fd = prog.fd().and_then(|fd| fd.try_clone().map_err(Into::into));
        fds.push(fd.map_err(|e| NativeError::Lookup(e.to_string()))?);
    }
    let mut slots: ProgramArray<_> = ebpf
        .map_mut("CAPTURE")
        .and_then(|m| ProgramArray::try_from(m).ok())
        .ok_or_else(|| missing("CAPTURE"))?;
    for (slot, fd) in fds.iter().enumerate() {
        slots
            .set(slot as u32, fd, 0)
            .map_err(|e| NativeError::Lookup(error_chain(&e)))?;
    }
    Ok(FilterPrograms {
        ingress,
        egress,
        eth0: None,
        filter: filter.to_vec(),
        maps,
        direct_max,
    })
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;

/// The head of `union bpf_attr` for BPF_PROG_LOAD; the kernel treats the
/// fields after it as zero.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
}

pub(super) fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a repr(C) prefix of union bpf_attr for `cmd`, and
    // every pointer in it outlives the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Loads a SCHED_CLS program named `kernel_name` (15 bytes at most); on
/// failure, the verifier's last words.
pub(super) fn prog_load(insns: &[Insn], kernel_name: &str) -> Result<OwnedFd, String> {
    let license = c"GPL";
    let mut name = [0u8; 16];
    name[..kernel_name.len()].copy_from_slice(kernel_name.as_bytes());
    let attr = |log: &mut [u8]| ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_SCHED_CLS,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: u32::from(!log.is_empty()),
        log_size: log.len() as u32,
        // The kernel refuses a log pointer without a log level and size.
        log_buf: if log.is_empty() {
            0
        } else {
            log.as_mut_ptr() as u64
        },
        prog_name: name,
        ..Default::default()
    };
    let first = bpf(BPF_PROG_LOAD, &mut attr(&mut []));
    let err = match first {
        // SAFETY: BPF_PROG_LOAD returned a new file descriptor we own.
        Ok(fd) => return Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) }),
        Err(e) => e,
    };
    // Again with the verifier's log, only to explain the refusal (the log
    // keeps its end when it overflows, which is where the reason is).
    let mut log = vec![0u8; 1 << 20];
    if let Ok(fd) = bpf(BPF_PROG_LOAD, &mut attr(&mut log)) {
        // SAFETY: a new file descriptor we own; closed at once.
        drop(unsafe { OwnedFd::from_raw_fd(fd as i32) });
    }
    let text = String::from_utf8_lossy(&log);
    let tail: Vec<&str> = text
        .trim_end_matches('\0')
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    let tail = tail[tail.len().saturating_sub(2)..].join(" / ");
    Err(if tail.is_empty() {
        err.to_string()
    } else {
        format!("{err}: {tail}")
    })
}

#[repr(C)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// How many instructions the verifier processed to accept a program
/// (`bpf_prog_info.verified_insns`, at byte 216; 0 before Linux 5.16).
fn verified_insns(fd: BorrowedFd<'_>) -> io::Result<u32> {
    let mut head = [0u32; 55];
    let mut attr = InfoAttr {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: std::mem::size_of_val(&head) as u32,
        info: head.as_mut_ptr() as u64,
    };
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(head[54])
}

#[repr(C)]
struct MapUpdateAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// Puts the program `prog` at `slot` of the program array `map` (aya's
/// `ProgramArray` takes only programs aya loaded).
pub(super) fn prog_array_set(map: RawFd, slot: u32, prog: BorrowedFd<'_>) -> io::Result<()> {
    let value = prog.as_raw_fd() as u32;
    let mut attr = MapUpdateAttr {
        map_fd: map as u32,
        _pad: 0,
        key: &slot as *const u32 as u64,
        value: &value as *const u32 as u64,
        flags: 0,
    };
    bpf(BPF_MAP_UPDATE_ELEM, &mut attr).map(drop)
}

#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
}

/// Runs a TC program once on `packet` (an Ethernet frame of at least 14
/// bytes) with BPF_PROG_TEST_RUN, `repeat` times; returns its verdict and
/// the mean run time in ns. For tests and benchmarks; nothing is sent.
pub fn test_run(prog: BorrowedFd<'_>, packet: &[u8], repeat: u32) -> io::Result<(i32, u32)> {
    let mut attr = TestRunAttr {
        prog_fd: prog.as_raw_fd() as u32,
        data_size_in: packet.len() as u32,
        data_in: packet.as_ptr() as u64,
        repeat,
        ..Default::default()
    };
    bpf(BPF_PROG_TEST_RUN, &mut attr)?;
    Ok((attr.retval as i32, attr.duration))
}
