//! TCX links made with `bpf(BPF_LINK_CREATE)` from a program's fd.
//!
//! aya attaches only the programs it holds, and it can take hold of an
//! already loaded program (the translated filters, the per-pod stubs) only
//! by looking it up by id, which needs CAP_SYS_ADMIN. A link made here
//! needs what any TCX attach needs (CAP_NET_ADMIN, CAP_BPF), and is owned
//! by its fd alone: closing it detaches the program, as does podtrace
//! dying, and nothing else can be replaced by it.

use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
};

use aya::programs::TcAttachType;

use super::native::bpf;

const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_TCX_INGRESS: u32 = 46;
const BPF_TCX_EGRESS: u32 = 47;
/// With no relative program: first in the chain.
const BPF_F_BEFORE: u32 = 1 << 3;

/// The head of `union bpf_attr` for BPF_LINK_CREATE with TCX.
#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
    relative_fd: u32,
    _pad: u32,
    expected_revision: u64,
}

/// A TCX link of `prog` at `hook` of the interface with `ifindex` in the
/// calling thread's network namespace, first in its chain: it sees packets
/// before a CNI's program can redirect them, and its verdict (TCX_NEXT)
/// lets them go on to the rest.
pub(super) fn link_create(
    prog: BorrowedFd<'_>,
    ifindex: u32,
    hook: TcAttachType,
) -> io::Result<OwnedFd> {
    let attach_type = match hook {
        TcAttachType::Ingress => BPF_TCX_INGRESS,
        TcAttachType::Egress => BPF_TCX_EGRESS,
        TcAttachType::Custom(_) => return Err(io::Error::from(io::ErrorKind::InvalidInput)),
    };
    let mut attr = LinkCreateAttr {
        prog_fd: prog.as_raw_fd() as u32,
        target_ifindex: ifindex,
        attach_type,
        flags: BPF_F_BEFORE,
        ..Default::default()
    };
    let fd = bpf(BPF_LINK_CREATE, &mut attr)?;
    // SAFETY: BPF_LINK_CREATE returned a new file descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}
