//! Does everything a pod receives cross the host end of its veth? The kernel
//! already counts both sides: the packets the pod's eth0 received, and the
//! packets the host end sent it. A veth's receive count is its peer's send
//! count plus what was put into it directly — which is what a CNI's
//! `bpf_redirect_peer` (Cilium, Calico's eBPF dataplane) does, and nothing
//! else on a bridge/routed pod network. So `eth0 received − veth sent` is
//! the number of packets that reached the pod without crossing its veth:
//! ARP, the host's own traffic and drops cancel out.
//!
//! Both counts come over rtnetlink from the host, without entering the
//! pod: the host veth by its ifindex, eth0 by its ifindex in the pod's
//! namespace (the veth's IFLA_LINK) with IFLA_TARGET_NETNSID (the veth's
//! IFLA_LINK_NETNSID). Reading eth0 first and the veth second can only
//! undercount (a packet crossing in between counts on the veth only), so
//! a sample never raises a false alarm; a baseline is read the other way
//! round for the same reason.

use std::{collections::HashMap, fs, io, os::fd::AsRawFd, path::Path};

use netlink_packet_route::{
    link::{LinkAttribute, LinkMessage},
    RouteNetlinkMessage,
};

use super::{netlink, LinkError};
use crate::rtnl::Conn;

/// A pod's veth pair as seen from the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodPath {
    /// The host end's ifindex.
    pub host: u32,
    /// eth0's ifindex in the pod's namespace (meaningless on the host).
    pub eth0: u32,
    /// The host's id for the pod's namespace.
    pub nsid: i32,
}

/// Packets counted on each side of a pod's veth.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PathCounts {
    /// eth0's rx_packets.
    pub received: u64,
    /// The host end's tx_packets.
    pub crossed: u64,
}

impl PathCounts {
    /// Packets eth0 received that the veth did not send, since both
    /// counters started (the pair's creation).
    pub fn skipped(&self) -> u64 {
        self.received.saturating_sub(self.crossed)
    }

    /// Packets that skipped the veth between `baseline` and `self`.
    pub fn skipped_since(&self, baseline: &PathCounts) -> u64 {
        self.skipped().saturating_sub(baseline.skipped())
    }
}

/// What one link request tells.
struct Reply {
    peer_ifindex: Option<u32>,
    peer_netnsid: Option<i32>,
    rx_packets: u64,
    tx_packets: u64,
}

fn get_link(conn: &mut Conn, ifindex: u32, nsid: Option<i32>) -> io::Result<Reply> {
    let mut msg = LinkMessage::default();
    msg.header.index = ifindex;
    if let Some(nsid) = nsid {
        msg.attributes.push(LinkAttribute::IfNetnsId(nsid));
    }
    let RouteNetlinkMessage::NewLink(link) = conn.get(RouteNetlinkMessage::GetLink(msg))? else {
        return Err(io::Error::other("RTM_GETLINK without a link in reply"));
    };
    let mut reply = Reply {
        peer_ifindex: None,
        peer_netnsid: None,
        rx_packets: 0,
        tx_packets: 0,
    };
    for attr in link.attributes {
        match attr {
            LinkAttribute::Link(i) => reply.peer_ifindex = Some(i),
            LinkAttribute::LinkNetNsId(id) => reply.peer_netnsid = Some(id),
            LinkAttribute::Stats64(s) => {
                reply.rx_packets = s.rx_packets;
                reply.tx_packets = s.tx_packets;
            }
            _ => {}
        }
    }
    Ok(reply)
}

impl PodPath {
    /// The pair whose host end is `host_ifindex`.
    pub fn of(host_ifindex: u32) -> Result<Self, LinkError> {
        let what = format!("host link {host_ifindex}");
        let reply = Conn::open()
            .and_then(|mut conn| get_link(&mut conn, host_ifindex, None))
            .map_err(LinkError::Netlink)?;
        match (reply.peer_ifindex, reply.peer_netnsid) {
            (Some(eth0), Some(nsid)) if eth0 > 0 => Ok(Self {
                host: host_ifindex,
                eth0,
                nsid,
            }),
            _ => Err(LinkError::NoVethPeer { what }),
        }
    }

    /// [`Self::of`], checked to end in the namespace at `netns` (a pod's
    /// `/proc/PID/ns/net`, or a path given with --netns): the host's nsid
    /// for that namespace must be the pair's.
    pub fn of_in(host_ifindex: u32, netns: &Path) -> Result<Self, LinkError> {
        let path = Self::of(host_ifindex)?;
        let file = fs::File::open(netns).map_err(|source| LinkError::Read {
            path: netns.to_owned(),
            source,
        })?;
        match netlink::nsid_of_fd(file.as_raw_fd()).map_err(LinkError::Netlink)? {
            Some(nsid) if nsid == path.nsid => Ok(path),
            _ => Err(LinkError::NoVethPeer {
                what: format!(
                    "host link {host_ifindex} (its peer is not in {})",
                    netns.display()
                ),
            }),
        }
    }

    /// Both counts, eth0 first: may undercount what skipped the veth, never
    /// overcount.
    pub fn sample(&self, conn: &mut Conn) -> io::Result<PathCounts> {
        let received = get_link(conn, self.eth0, Some(self.nsid))?.rx_packets;
        let crossed = get_link(conn, self.host, None)?.tx_packets;
        Ok(PathCounts { received, crossed })
    }

    /// Both counts, the veth first: a baseline that may overstate what had
    /// skipped it so far, so that later samples never overcount.
    pub fn baseline(&self, conn: &mut Conn) -> io::Result<PathCounts> {
        let crossed = get_link(conn, self.host, None)?.tx_packets;
        let received = get_link(conn, self.eth0, Some(self.nsid))?.rx_packets;
        Ok(PathCounts { received, crossed })
    }
}

/// The counters of the pods a capture watches, over one netlink socket.
pub struct PathReader {
    conn: Conn,
    paths: HashMap<u32, PodPath>,
}

impl PathReader {
    pub fn open() -> io::Result<Self> {
        Ok(Self {
            conn: Conn::open()?,
            paths: HashMap::new(),
        })
    }

    /// Starts reading the pair of host link `ifindex`, whose other end is
    /// in the namespace at `netns`.
    pub fn watch(&mut self, ifindex: u32, netns: &Path) -> Result<PodPath, LinkError> {
        let path = PodPath::of_in(ifindex, netns)?;
        self.paths.insert(ifindex, path);
        Ok(path)
    }

    pub fn forget(&mut self, ifindex: u32) {
        self.paths.remove(&ifindex);
    }

    fn path(&self, ifindex: u32) -> io::Result<PodPath> {
        self.paths
            .get(&ifindex)
            .copied()
            .ok_or_else(|| io::Error::other(format!("host link {ifindex} is not watched")))
    }

    /// See [`PodPath::sample`].
    pub fn sample(&mut self, ifindex: u32) -> io::Result<PathCounts> {
        self.path(ifindex)?.sample(&mut self.conn)
    }

    /// See [`PodPath::baseline`].
    pub fn baseline(&mut self, ifindex: u32) -> io::Result<PathCounts> {
        self.path(ifindex)?.baseline(&mut self.conn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skipped_counts_what_the_veth_did_not_send() {
        let start = PathCounts {
            received: 10,
            crossed: 10,
        };
        let later = PathCounts {
            received: 25,
            crossed: 18,
        };
        assert_eq!(start.skipped(), 0);
        assert_eq!(later.skipped(), 7);
        assert_eq!(later.skipped_since(&start), 7);
        // A baseline read veth-first may be ahead: never a negative count.
        let ahead = PathCounts {
            received: 30,
            crossed: 20,
        };
        assert_eq!(later.skipped_since(&ahead), 0);
    }
}
