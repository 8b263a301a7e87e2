//! One rtnetlink request and its replies: what link discovery (links,
//! nsids) and clsact attachment (tc filters) both send.

use std::io;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// How a request is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A dump: every reply until NLMSG_DONE.
    Dump,
    /// One object back (a get).
    Get,
    /// A change acknowledged by the kernel; `extra_flags` such as
    /// NLM_F_CREATE | NLM_F_EXCL | NLM_F_ECHO. Replies echoed before the
    /// ack are returned.
    Change { extra_flags: u16 },
}

/// Sends `msg` and collects the replies the request kind asks for.
pub fn request(msg: RouteNetlinkMessage, kind: Kind) -> io::Result<Vec<RouteNetlinkMessage>> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;

    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST
        | match kind {
            Kind::Dump => NLM_F_DUMP,
            Kind::Get => 0,
            Kind::Change { extra_flags } => NLM_F_ACK | extra_flags,
        };
    header.sequence_number = 1;
    let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(msg));
    packet.finalize();
    let mut buf = vec![0; packet.buffer_len()];
    packet.serialize(&mut buf);
    socket.send(&buf, 0)?;

    let mut replies = Vec::new();
    loop {
        let (data, _) = socket.recv_from_full()?;
        let mut offset = 0;
        while offset < data.len() {
            let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[offset..])
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            let len = reply.header.length as usize;
            match reply.payload {
                NetlinkPayload::InnerMessage(inner) => {
                    replies.push(inner);
                    if kind == Kind::Get {
                        return Ok(replies);
                    }
                }
                NetlinkPayload::Done(_) => return Ok(replies),
                // An error message with code 0 is the ack of a change.
                NetlinkPayload::Error(e) => match e.code {
                    Some(_) => return Err(e.to_io()),
                    None => return Ok(replies),
                },
                _ => {}
            }
            if len == 0 {
                break;
            }
            offset += len;
        }
    }
}

/// A socket kept open for gets asked again and again (a pod's counters,
/// four times a second): no socket to create and bind per request.
pub struct Conn {
    socket: Socket,
    buf: Vec<u8>,
    seq: u32,
}

impl Conn {
    pub fn open() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(Self {
            socket,
            buf: Vec::with_capacity(32 * 1024),
            seq: 0,
        })
    }

    /// Sends a get request and returns its one reply.
    pub fn get(&mut self, msg: RouteNetlinkMessage) -> io::Result<RouteNetlinkMessage> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST;
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        packet.finalize();
        self.buf.clear();
        self.buf.resize(packet.buffer_len(), 0);
        packet.serialize(&mut self.buf);
        self.socket.send(&self.buf, 0)?;
        loop {
            self.buf.clear();
            let n = self.socket.recv(&mut self.buf, 0)?;
            if n > self.buf.len() {
                return Err(io::Error::other("rtnetlink reply larger than the buffer"));
            }
            let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&self.buf)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            // A late reply to an earlier request that failed half-way.
            if reply.header.sequence_number != self.seq {
                continue;
            }
            return match reply.payload {
                NetlinkPayload::InnerMessage(inner) => Ok(inner),
                NetlinkPayload::Error(e) if e.code.is_some() => Err(e.to_io()),
                _ => Err(io::Error::other("unexpected rtnetlink reply")),
            };
        }
    }
}
