//! The packets of a provisional link, held until the watcher says whose
//! link it is: copied out of the ring (which must move on) into one growing
//! buffer, and handed back as packets of the interface that claims them.

use std::time::Duration;

use bytes::{Bytes, BytesMut};

use crate::{
    ring::{Direction, Record},
    sink::{InterfaceId, Packet},
};

/// Most bytes one link may hold: a pod's startup traffic (DNS, a first
/// connection) is far less; past this, packets are counted as lost.
const MAX_HELD_BYTES: usize = 4 << 20;

#[derive(Debug, Default)]
pub struct Held {
    data: BytesMut,
    packets: Vec<HeldPacket>,
    /// Packets that did not fit.
    dropped: u64,
}

#[derive(Debug)]
struct HeldPacket {
    ts: Duration,
    direction: Direction,
    orig_len: u32,
    len: usize,
}

impl Held {
    pub fn push(&mut self, ts: Duration, direction: Direction, record: &Record<'_>) {
        if self.data.len() + record.data.len() > MAX_HELD_BYTES {
            self.dropped += 1;
            return;
        }
        self.data.extend_from_slice(record.data);
        self.packets.push(HeldPacket {
            ts,
            direction,
            orig_len: record.header.orig_len,
            len: record.data.len(),
        });
    }

    /// Packets that could not be held (counted as lost by the interface).
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// The held packets, in the order they came, as packets of `interface`.
    pub fn packets(self, interface: InterfaceId) -> impl Iterator<Item = OwnedPacket> {
        let mut data: Bytes = self.data.freeze();
        self.packets.into_iter().map(move |p| OwnedPacket {
            ts: p.ts,
            interface,
            direction: p.direction,
            orig_len: p.orig_len,
            // Shares the one buffer: no copy per packet.
            data: data.split_to(p.len),
        })
    }
}

/// A [`Packet`] that owns its bytes.
#[derive(Debug, Clone)]
pub struct OwnedPacket {
    pub ts: Duration,
    pub interface: InterfaceId,
    pub direction: Direction,
    pub orig_len: u32,
    pub data: Bytes,
}

impl OwnedPacket {
    pub fn as_packet(&self) -> Packet<'_> {
        Packet {
            ts: self.ts,
            interface: self.interface,
            direction: self.direction,
            orig_len: self.orig_len,
            data: &self.data,
        }
    }
}

#[cfg(test)]
mod tests {
    use podtrace_common::RecordHeader;

    use super::*;

    fn record(data: &[u8]) -> Record<'_> {
        Record {
            header: RecordHeader {
                orig_len: data.len() as u32 + 10,
                cap_len: data.len() as u32,
                ..Default::default()
            },
            data,
        }
    }

    #[test]
    fn hands_back_what_it_held_in_order() {
        let mut held = Held::default();
        held.push(Duration::from_secs(1), Direction::Out, &record(b"first"));
        held.push(Duration::from_secs(2), Direction::In, &record(b"second!"));
        let got: Vec<_> = held.packets(7).collect();
        assert_eq!(got.len(), 2);
        let p = got[1].as_packet();
        assert_eq!(
            (p.interface, p.direction, p.orig_len),
            (7, Direction::In, 17)
        );
        assert_eq!(p.data, b"second!");
        assert_eq!(&got[0].data[..], b"first");
        assert_eq!(got[0].ts, Duration::from_secs(1));
    }

    #[test]
    fn counts_what_does_not_fit() {
        let mut held = Held::default();
        let big = vec![0u8; MAX_HELD_BYTES - 1];
        held.push(Duration::ZERO, Direction::Out, &record(&big));
        held.push(Duration::ZERO, Direction::Out, &record(b"xy"));
        held.push(Duration::ZERO, Direction::Out, &record(b"z"));
        assert_eq!(held.dropped(), 1);
        assert_eq!(held.packets(0).count(), 2);
    }
}
