//! Link discovery: which host interface carries a target's traffic.
//!
//! A pod (or any process in its own network namespace) talks to the host
//! through a veth pair. The host end is what podtrace attaches to. Two
//! independent ways find it, without entering the namespace:
//!
//! * `iflink`: `/proc/PID/root/sys/class/net/eth0/iflink`, read from the host
//!   through the process's own sysfs mount, is the ifindex of eth0's peer in
//!   the host namespace;
//! * netlink: the host's nsid for the target namespace (RTM_GETNSID) matched
//!   against every host link's IFLA_LINK_NETNSID.
//!
//! With a pid both are used and must agree; with only a namespace path the
//! netlink way is all there is.

mod events;
mod netlink;
mod path;

use std::{
    fs, io,
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
};

pub use events::{LinkEvent, LinkMonitor};
pub use netlink::{dump_links, LinkInfo};
pub use path::{PathCounts, PathReader, PodPath};

/// The interface inside the target namespace whose peer we look for.
pub const POD_IFACE: &str = "eth0";

/// A host interface to capture on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostLink {
    pub ifindex: u32,
    pub name: String,
    /// The far end of this link is the target (a pod's eth0): its ingress is
    /// what the target sends, its egress what the target receives.
    pub peer_is_target: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("interface {0} not found")]
    InterfaceNotFound(String),
    #[error("no process with pid {0}")]
    PidNotFound(u32),
    #[error("network namespace {0} not found")]
    NetnsNotFound(PathBuf),
    #[error("{0} is not a network namespace")]
    NotANetns(PathBuf),
    #[error("{what} is in podtrace's own (host) network namespace: its traffic is the node's, capture a host interface with -i")]
    HostNetns { what: String },
    #[error("{what} has no veth peer in the host network namespace (ipvlan/macvlan or a namespace without links to the host?): capture from inside it, or pick a host interface with -i")]
    NoVethPeer { what: String },
    #[error("{what} has {} links to the host ({}): pick one with -i", .names.len(), .names.join(", "))]
    AmbiguousPeers { what: String, names: Vec<String> },
    #[error("{what}: {POD_IFACE}'s iflink names host ifindex {iflink}, but netlink finds the namespace's peer(s) at {}: refusing to guess", .netlink.join(", "))]
    Disagree {
        what: String,
        iflink: u32,
        netlink: Vec<String>,
    },
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("unexpected contents in {path}: {contents:?}")]
    Parse { path: PathBuf, contents: String },
    #[error("netlink request failed: {0}")]
    Netlink(#[source] io::Error),
}

impl LinkError {
    /// Whether the user named something that does not fit (exit 2) rather
    /// than the system failing (exit 1).
    pub fn is_bad_target(&self) -> bool {
        !matches!(self, Self::Read { .. } | Self::Netlink(_))
    }
}

/// A host interface by name.
pub fn by_name(name: &str) -> Result<HostLink, LinkError> {
    let links = netlink::dump_links().map_err(LinkError::Netlink)?;
    links
        .iter()
        .find(|l| l.name == name)
        .map(|l| HostLink {
            ifindex: l.index,
            name: l.name.clone(),
            peer_is_target: false,
        })
        .ok_or_else(|| LinkError::InterfaceNotFound(name.to_owned()))
}

/// The host end of the veth whose other end is eth0 of process `pid`.
pub fn by_pid(pid: u32) -> Result<HostLink, LinkError> {
    HostLinks::dump()?.by_pid(pid)
}

/// The host's links, dumped once for many lookups (a watcher resolving
/// fifty pods asks the kernel once, not fifty times).
pub struct HostLinks(Vec<LinkInfo>);

impl HostLinks {
    pub fn dump() -> Result<Self, LinkError> {
        // Dumping fills IFLA_LINK_NETNSID, which is what makes the kernel
        // assign an nsid to a peer namespace that has none yet: before any
        // nsid is asked for.
        netlink::dump_links().map(Self).map_err(LinkError::Netlink)
    }

    /// [`by_pid`] against this snapshot.
    pub fn by_pid(&self, pid: u32) -> Result<HostLink, LinkError> {
        by_pid_in(&self.0, pid)
    }
}

fn by_pid_in(links: &[LinkInfo], pid: u32) -> Result<HostLink, LinkError> {
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    if !proc_dir.exists() {
        return Err(LinkError::PidNotFound(pid));
    }
    let what = format!("process {pid}");
    let netns = proc_dir.join("ns/net");
    let iflink_path = proc_dir.join(format!("root/sys/class/net/{POD_IFACE}/iflink"));
    // Resolve the namespace first: a process in the host namespace would make
    // the iflink path read the host's own eth0.
    let peers = netns_peers(links, &netns, &what)?;
    let iflink = match fs::read_to_string(&iflink_path) {
        Ok(contents) => Some(parse_ifindex(&contents).ok_or_else(|| LinkError::Parse {
            path: iflink_path.clone(),
            contents,
        })?),
        // No eth0, or no sysfs of its own: the netlink answer stands alone.
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(source) => {
            return Err(LinkError::Read {
                path: iflink_path,
                source,
            })
        }
    };
    reconcile(&what, iflink, &peers)
}

/// The host end of the veth whose other end lives in the namespace at `path`.
pub fn by_netns(path: &Path) -> Result<HostLink, LinkError> {
    let what = format!("network namespace {}", path.display());
    let links = HostLinks::dump()?;
    let peers = netns_peers(&links.0, path, &what)?;
    reconcile(&what, None, &peers)
}

/// Host links (of a dump taken before) whose peer is in the namespace at `path`.
fn netns_peers(links: &[LinkInfo], path: &Path, what: &str) -> Result<Vec<LinkInfo>, LinkError> {
    let file = fs::File::open(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => LinkError::NetnsNotFound(path.to_owned()),
        _ => LinkError::Read {
            path: path.to_owned(),
            source: e,
        },
    })?;
    let meta = file.metadata().map_err(|source| LinkError::Read {
        path: path.to_owned(),
        source,
    })?;
    let own = fs::metadata("/proc/self/ns/net").map_err(|source| LinkError::Read {
        path: "/proc/self/ns/net".into(),
        source,
    })?;
    if (meta.dev(), meta.ino()) == (own.dev(), own.ino()) {
        return Err(LinkError::HostNetns { what: what.into() });
    }
    let nsid = match netlink::nsid_of_fd(file.as_raw_fd()) {
        Ok(nsid) => nsid,
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            return Err(LinkError::NotANetns(path.to_owned()))
        }
        Err(e) => return Err(LinkError::Netlink(e)),
    };
    Ok(match nsid {
        Some(nsid) => peers_in(links, nsid).cloned().collect(),
        None => Vec::new(),
    })
}

/// Host links whose peer is in the namespace the host knows as `nsid`.
pub fn peers_in(links: &[LinkInfo], nsid: i32) -> impl Iterator<Item = &LinkInfo> {
    links.iter().filter(move |l| l.peer_netnsid == Some(nsid))
}

/// Combines the iflink answer (if any) with the netlink one.
pub fn reconcile(
    what: &str,
    iflink: Option<u32>,
    peers: &[LinkInfo],
) -> Result<HostLink, LinkError> {
    let chosen = match (iflink, peers) {
        (_, []) => return Err(LinkError::NoVethPeer { what: what.into() }),
        (Some(index), _) => {
            peers
                .iter()
                .find(|l| l.index == index)
                .ok_or_else(|| LinkError::Disagree {
                    what: what.into(),
                    iflink: index,
                    netlink: peers.iter().map(LinkInfo::describe).collect(),
                })?
        }
        (None, [only]) => only,
        (None, many) => {
            return Err(LinkError::AmbiguousPeers {
                what: what.into(),
                names: many.iter().map(|l| l.name.clone()).collect(),
            })
        }
    };
    Ok(HostLink {
        ifindex: chosen.index,
        name: chosen.name.clone(),
        peer_is_target: true,
    })
}

/// Parses the contents of a sysfs `ifindex`/`iflink` file.
pub fn parse_ifindex(contents: &str) -> Option<u32> {
    contents.trim().parse().ok().filter(|&i| i > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(index: u32, name: &str, nsid: Option<i32>) -> LinkInfo {
        LinkInfo {
            index,
            name: name.into(),
            peer_netnsid: nsid,
        }
    }

    #[test]
    fn parses_sysfs_ifindex() {
        assert_eq!(parse_ifindex("17\n"), Some(17));
        assert_eq!(parse_ifindex(" 3 "), Some(3));
        assert_eq!(parse_ifindex("0\n"), None);
        assert_eq!(parse_ifindex("eth0"), None);
        assert_eq!(parse_ifindex(""), None);
    }

    #[test]
    fn peers_are_matched_by_nsid() {
        let links = [
            link(1, "lo", None),
            link(5, "veth1", Some(0)),
            link(6, "veth2", Some(1)),
            link(7, "veth3", Some(1)),
        ];
        let names: Vec<_> = peers_in(&links, 1).map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["veth2", "veth3"]);
        assert_eq!(peers_in(&links, 9).count(), 0);
    }

    #[test]
    fn iflink_and_netlink_agree() {
        let peers = [link(6, "veth2", Some(1)), link(7, "veth3", Some(1))];
        let got = reconcile("p", Some(7), &peers).unwrap();
        assert_eq!(
            got,
            HostLink {
                ifindex: 7,
                name: "veth3".into(),
                peer_is_target: true
            }
        );
    }

    #[test]
    fn disagreement_is_an_error() {
        let peers = [link(6, "veth2", Some(1))];
        let err = reconcile("process 9", Some(2), &peers).unwrap_err();
        assert!(matches!(err, LinkError::Disagree { iflink: 2, .. }));
        assert!(err.to_string().contains("veth2 (ifindex 6)"), "{err}");
    }

    #[test]
    fn netlink_alone_needs_exactly_one_peer() {
        let one = [link(6, "veth2", Some(1))];
        assert_eq!(reconcile("n", None, &one).unwrap().name, "veth2");
        let two = [link(6, "a", Some(1)), link(7, "b", Some(1))];
        let err = reconcile("n", None, &two).unwrap_err();
        assert_eq!(
            err.to_string(),
            "n has 2 links to the host (a, b): pick one with -i"
        );
        let err = reconcile("n", Some(3), &[]).unwrap_err();
        assert!(matches!(err, LinkError::NoVethPeer { .. }));
    }
}
