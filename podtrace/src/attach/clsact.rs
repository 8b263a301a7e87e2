//! cls_bpf filters on the clsact qdisc, for kernels without TCX (and
//! `--tc-mode clsact`), managed over rtnetlink by podtrace itself.
//!
//! Unlike TCX links, a filter outlives the process that added it, and tc
//! knows filters only by (priority, handle), which the kernel hands out
//! again once a filter is gone. So every filter podtrace adds carries its
//! owner in its name (`podtrace_ingress@pid:…,start:…,pidns:…`):
//! - a filter is removed by its owner, after checking that the (priority,
//!   handle) it was given still holds its own name;
//! - a filter whose owner is provably dead (same pid namespace, and that pid
//!   no longer runs or started at another time) is stale and removed by the
//!   next podtrace, in any tc mode;
//! - anyone else's filter, a live podtrace's included, is never touched.

use std::{fs, io, os::fd::AsRawFd, os::unix::fs::MetadataExt};

use netlink_packet_core::{NLM_F_CREATE, NLM_F_ECHO, NLM_F_EXCL};
use netlink_packet_route::{
    tc::{TcAttribute, TcBpfFlags, TcFilterBpfOption, TcHandle, TcHeader, TcMessage, TcOption},
    AddressFamily, RouteNetlinkMessage,
};

use crate::rtnl::{request, Kind};

/// ETH_P_ALL in network byte order, the protocol of every filter we add.
const ALL_PROTOCOLS: u16 = (libc::ETH_P_ALL as u16).to_be();

/// A filter as the kernel lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    pub priority: u16,
    pub handle: u32,
    pub name: String,
}

/// One of the two clsact hooks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Ingress,
    Egress,
}

impl Hook {
    fn parent(self) -> TcHandle {
        TcHandle {
            major: TcHandle::CLSACT.major,
            minor: match self {
                Hook::Ingress => TcHandle::MIN_INGRESS,
                Hook::Egress => TcHandle::MIN_EGRESS,
            },
        }
    }
}

/// Who added a filter, as written into its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub pid: u32,
    /// Start time of that pid, clock ticks after boot (/proc/PID/stat field 22).
    pub start: u64,
    /// Inode of the pid namespace the pid belongs to.
    pub pidns: u64,
}

impl Owner {
    /// This process.
    pub fn me() -> io::Result<Self> {
        let pid = std::process::id();
        let start = start_time(pid)?.ok_or_else(|| io::Error::other("/proc/self vanished"))?;
        Ok(Self {
            pid,
            start,
            pidns: own_pidns()?,
        })
    }

    /// The name of `program`'s filter when this owner adds it.
    pub fn filter_name(&self, program: &str) -> String {
        format!(
            "{program}@pid:{},start:{},pidns:{}",
            self.pid, self.start, self.pidns
        )
    }

    /// The owner recorded in a podtrace filter name, if it is one.
    pub fn parse(name: &str) -> Option<Self> {
        let (program, owner) = name.split_once('@')?;
        if !program.starts_with("podtrace") {
            return None;
        }
        let mut fields = owner.split(',');
        let mut field = |key: &str| -> Option<u64> {
            fields
                .next()?
                .strip_prefix(key)?
                .strip_prefix(':')?
                .parse()
                .ok()
        };
        let owner = Self {
            pid: u32::try_from(field("pid")?).ok()?,
            start: field("start")?,
            pidns: field("pidns")?,
        };
        fields.next().is_none().then_some(owner)
    }

    /// Whether this owner is known to have exited. A pid of another pid
    /// namespace cannot be checked from here: not provably dead.
    pub fn is_dead(&self) -> bool {
        match own_pidns() {
            Ok(ours) if ours == self.pidns => {}
            _ => return false,
        }
        match start_time(self.pid) {
            Ok(Some(start)) => start != self.start,
            Ok(None) => true,
            Err(_) => false,
        }
    }
}

/// Start time of `pid` in clock ticks after boot; `None` when no such process.
fn start_time(pid: u32) -> io::Result<Option<u64>> {
    let stat = match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    parse_start_time(&stat)
        .map(Some)
        .ok_or_else(|| io::Error::other(format!("unexpected /proc/{pid}/stat")))
}

/// Field 22 of a /proc/PID/stat line; the command (field 2) may hold
/// spaces and parentheses, so fields are counted after its last ')'.
fn parse_start_time(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

fn own_pidns() -> io::Result<u64> {
    Ok(fs::metadata("/proc/self/ns/pid")?.ino())
}

fn message(ifindex: u32, hook: Hook) -> TcMessage {
    let mut msg = TcMessage::default();
    msg.header = TcHeader {
        family: AddressFamily::Unspec,
        index: ifindex as i32,
        handle: TcHandle::UNSPEC,
        parent: hook.parent(),
        info: 0,
    };
    msg
}

/// Adds a direct-action filter running `prog` at `hook` of `ifindex`, with
/// a priority and handle the kernel picks; returns them.
pub fn add(ifindex: u32, hook: Hook, prog: &impl AsRawFd, name: &str) -> io::Result<(u16, u32)> {
    let mut msg = message(ifindex, hook);
    // Priority 0: the kernel picks one free on this hook.
    msg.header.info = u32::from(ALL_PROTOCOLS);
    msg.attributes = vec![
        TcAttribute::Kind("bpf".into()),
        TcAttribute::Options(vec![
            TcOption::Bpf(TcFilterBpfOption::ProgFd(prog.as_raw_fd() as u32)),
            TcOption::Bpf(TcFilterBpfOption::ProgName(name.into())),
            TcOption::Bpf(TcFilterBpfOption::Flags(TcBpfFlags::DirectAction)),
        ]),
    ];
    let replies = request(
        RouteNetlinkMessage::NewTrafficFilter(msg),
        Kind::Change {
            extra_flags: NLM_F_CREATE | NLM_F_EXCL | NLM_F_ECHO,
        },
    )?;
    replies
        .into_iter()
        .find_map(|reply| match reply {
            RouteNetlinkMessage::NewTrafficFilter(m) => {
                Some(((m.header.info >> 16) as u16, handle_of(&m.header)))
            }
            _ => None,
        })
        .ok_or_else(|| io::Error::other("the kernel did not echo the new tc filter"))
}

fn handle_of(header: &TcHeader) -> u32 {
    header.handle.into()
}

/// The bpf filters at `hook` of `ifindex`.
pub fn list(ifindex: u32, hook: Hook) -> io::Result<Vec<Filter>> {
    let replies = request(
        RouteNetlinkMessage::GetTrafficFilter(message(ifindex, hook)),
        Kind::Dump,
    )?;
    let mut filters = Vec::new();
    for reply in replies {
        let RouteNetlinkMessage::NewTrafficFilter(m) = reply else {
            continue;
        };
        let name = m.attributes.iter().find_map(|a| match a {
            TcAttribute::Options(options) => options.iter().find_map(|o| match o {
                TcOption::Bpf(TcFilterBpfOption::ProgName(name)) => Some(name.clone()),
                _ => None,
            }),
            _ => None,
        });
        // The first message of each priority describes the chain, not a filter.
        if let Some(name) = name {
            filters.push(Filter {
                priority: (m.header.info >> 16) as u16,
                handle: handle_of(&m.header),
                name,
            });
        }
    }
    Ok(filters)
}

/// Removes the filter at (`priority`, `handle`) if it is still named `name`:
/// once a filter is gone, the kernel may give its place to someone else's.
/// Returns whether it was there.
pub fn remove(
    ifindex: u32,
    hook: Hook,
    priority: u16,
    handle: u32,
    name: &str,
) -> io::Result<bool> {
    let ours = list(ifindex, hook)?
        .into_iter()
        .any(|f| f.priority == priority && f.handle == handle && f.name == name);
    if !ours {
        return Ok(false);
    }
    let mut msg = message(ifindex, hook);
    msg.header.handle = TcHandle::from(handle);
    msg.header.info = (u32::from(priority) << 16) | u32::from(ALL_PROTOCOLS);
    match request(
        RouteNetlinkMessage::DelTrafficFilter(msg),
        Kind::Change { extra_flags: 0 },
    ) {
        Ok(_) => Ok(true),
        // Removed meanwhile, or the interface went away.
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::ENOENT | libc::ENODEV | libc::EINVAL)
            ) =>
        {
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// Removes the podtrace filters at `hook` of `ifindex` whose owners are
/// dead; returns their names.
pub fn remove_stale(ifindex: u32, hook: Hook) -> io::Result<Vec<String>> {
    let mut removed = Vec::new();
    for f in list(ifindex, hook)? {
        if Owner::parse(&f.name).is_some_and(|o| o.is_dead())
            && remove(ifindex, hook, f.priority, f.handle, &f.name)?
        {
            removed.push(f.name);
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_round_trips_through_the_name() {
        let owner = Owner {
            pid: 4242,
            start: 987654,
            pidns: 4026531836,
        };
        let name = owner.filter_name("podtrace_ingress");
        assert_eq!(
            name,
            "podtrace_ingress@pid:4242,start:987654,pidns:4026531836"
        );
        assert_eq!(Owner::parse(&name), Some(owner));
    }

    #[test]
    fn foreign_and_malformed_names_have_no_owner() {
        for name in [
            "podtrace_ingress",
            "cilium_ingress@pid:1,start:2,pidns:3",
            "podtrace_egress@pid:1,start:2",
            "podtrace_egress@pid:1,start:2,pidns:3,x:4",
            "podtrace_egress@pid:x,start:2,pidns:3",
            "podtrace_egress@start:2,pid:1,pidns:3",
        ] {
            assert_eq!(Owner::parse(name), None, "{name}");
        }
    }

    #[test]
    fn start_time_skips_a_command_with_spaces_and_parens() {
        let stat = "77 (a b) c) S 1 77 77 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 123456 1000 50";
        assert_eq!(parse_start_time(stat), Some(123456));
        assert_eq!(parse_start_time("garbage"), None);
    }

    #[test]
    fn liveness_of_this_process_and_of_an_exited_one() {
        let me = Owner::me().unwrap();
        assert!(!me.is_dead());
        let restarted = Owner {
            start: me.start + 1,
            ..me
        };
        assert!(restarted.is_dead(), "same pid, other start time");
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        let gone = Owner { pid, ..me };
        assert!(gone.is_dead());
        let elsewhere = Owner {
            pidns: me.pidns + 1,
            ..gone
        };
        assert!(!elsewhere.is_dead(), "another pid namespace: not provable");
    }
}
