//! Link events: the host's links appearing and going away, as rtnetlink
//! announces them (RTNLGRP_LINK), so a new pod's veth is known the moment
//! the CNI plugin moves it into the host namespace, not at the next poll.

use std::{io, os::fd::AsRawFd};

use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use tokio::io::unix::AsyncFd;

use super::{netlink, LinkInfo};

/// rtnetlink's multicast group of link changes (RTMGRP_LINK).
const RTMGRP_LINK: u32 = 1;

/// What happened to the host's links.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    /// A link appeared, or changed (renamed, moved, set up).
    New(LinkInfo),
    /// The link with this ifindex is gone.
    Gone(u32),
    /// Events were lost (the socket overflowed): every link there is now.
    Resync(Vec<LinkInfo>),
}

/// A subscription to the host namespace's link events.
pub struct LinkMonitor {
    socket: AsyncFd<Socket>,
    buf: Vec<u8>,
}

impl LinkMonitor {
    pub fn open() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind(&SocketAddr::new(0, RTMGRP_LINK))?;
        socket.set_non_blocking(true)?;
        // A burst of pods (50 at once) makes a few hundred messages.
        let _ = socket.set_rx_buf_sz(4 << 20);
        Ok(Self {
            // SAFETY: the AsyncFd owns the socket, so the fd outlives the registration.
            socket: unsafe { AsyncFd::register(socket) }?,
            buf: vec![0; 64 << 10],
        })
    }

    /// The next batch of events; waits for at least one.
    pub async fn next(&mut self) -> io::Result<Vec<LinkEvent>> {
        loop {
            let mut guard = self.socket.readable().await?;
            let fd = guard.get_inner().as_raw_fd();
            // SAFETY: a plain recv into our own buffer of its real size.
            let n = unsafe {
                libc::recv(
                    fd,
                    self.buf.as_mut_ptr().cast(),
                    self.buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n < 0 {
                let err = io::Error::last_os_error();
                match err.raw_os_error() {
                    Some(libc::EAGAIN) => {
                        guard.clear_ready();
                        continue;
                    }
                    Some(libc::EINTR) => continue,
                    // The kernel dropped events for us: start over from a dump.
                    Some(libc::ENOBUFS) => {
                        return Ok(vec![LinkEvent::Resync(netlink::dump_links()?)])
                    }
                    _ => return Err(err),
                }
            }
            let events = parse(&self.buf[..n as usize]);
            if !events.is_empty() {
                return Ok(events);
            }
        }
    }
}

/// The link events in one datagram of rtnetlink messages.
pub fn parse(mut data: &[u8]) -> Vec<LinkEvent> {
    let mut events = Vec::new();
    while !data.is_empty() {
        let Ok(msg) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(data) else {
            break;
        };
        let len = (msg.header.length as usize).min(data.len());
        match msg.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => {
                events.push(LinkEvent::New(netlink::link_info(link)));
            }
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(link)) => {
                events.push(LinkEvent::Gone(link.header.index));
            }
            _ => {}
        }
        if len == 0 {
            break;
        }
        data = &data[len.next_multiple_of(4).min(data.len())..];
    }
    events
}

#[cfg(test)]
mod tests {
    use netlink_packet_core::NetlinkHeader;
    use netlink_packet_route::link::{LinkAttribute, LinkMessage};

    use super::*;

    fn message(msg: RouteNetlinkMessage) -> Vec<u8> {
        let mut packet = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::from(msg));
        packet.finalize();
        let mut buf = vec![0; packet.buffer_len()];
        packet.serialize(&mut buf);
        buf
    }

    #[test]
    fn new_and_deleted_links_in_one_datagram() {
        let mut veth = LinkMessage::default();
        veth.header.index = 42;
        veth.attributes = vec![
            LinkAttribute::IfName("veth1234".into()),
            LinkAttribute::LinkNetNsId(3),
        ];
        let mut gone = LinkMessage::default();
        gone.header.index = 7;
        let mut data = message(RouteNetlinkMessage::NewLink(veth));
        data.extend(message(RouteNetlinkMessage::DelLink(gone)));
        assert_eq!(
            parse(&data),
            [
                LinkEvent::New(LinkInfo {
                    index: 42,
                    name: "veth1234".into(),
                    peer_netnsid: Some(3)
                }),
                LinkEvent::Gone(7),
            ]
        );
    }
}
