//! The two rtnetlink requests link discovery needs: dump the host's links,
//! and ask for the nsid of a namespace given by fd.

use std::io;

use netlink_packet_route::{
    link::{LinkAttribute, LinkMessage},
    nsid::{NsidAttribute, NsidMessage},
    RouteNetlinkMessage,
};

use crate::rtnl::{request, Kind};

/// What link discovery needs to know about one host link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    pub index: u32,
    pub name: String,
    /// IFLA_LINK_NETNSID: the host's nsid for the namespace of the peer.
    pub peer_netnsid: Option<i32>,
}

impl LinkInfo {
    pub fn describe(&self) -> String {
        format!("{} (ifindex {})", self.name, self.index)
    }
}

/// All links of the calling process's network namespace.
pub fn dump_links() -> io::Result<Vec<LinkInfo>> {
    let replies = request(
        RouteNetlinkMessage::GetLink(LinkMessage::default()),
        Kind::Dump,
    )?;
    Ok(replies
        .into_iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewLink(link) => Some(link_info(link)),
            _ => None,
        })
        .collect())
}

pub(super) fn link_info(msg: LinkMessage) -> LinkInfo {
    let mut info = LinkInfo {
        index: msg.header.index,
        name: String::new(),
        peer_netnsid: None,
    };
    for attr in msg.attributes {
        match attr {
            LinkAttribute::IfName(name) => info.name = name,
            LinkAttribute::LinkNetNsId(id) => info.peer_netnsid = Some(id),
            _ => {}
        }
    }
    info
}

/// The nsid the calling namespace has assigned to the namespace behind `fd`,
/// or `None` if it has none (no link connects the two).
pub fn nsid_of_fd(fd: i32) -> io::Result<Option<i32>> {
    let mut msg = NsidMessage::default();
    msg.attributes.push(NsidAttribute::Fd(fd as u32));
    let replies = request(RouteNetlinkMessage::GetNsId(msg), Kind::Get)?;
    for reply in replies {
        if let RouteNetlinkMessage::NewNsId(msg) = reply {
            for attr in msg.attributes {
                if let NsidAttribute::Id(id) = attr {
                    return Ok((id >= 0).then_some(id));
                }
            }
        }
    }
    Err(io::Error::other("RTM_GETNSID reply without an id"))
}
