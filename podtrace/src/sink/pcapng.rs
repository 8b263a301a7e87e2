//! pcapng: an Interface Description Block per captured interface naming the
//! pod (written when the interface joins, mid-file if need be), nanosecond
//! timestamps, the direction in every Enhanced Packet Block, and an
//! Interface Statistics Block with that interface's own kernel counts when it
//! leaves and at the end (so the loss is in the file, not only on stderr).

use std::{borrow::Cow, collections::HashMap};

use pcap_file::{
    pcapng::{
        blocks::{
            enhanced_packet::{EnhancedPacketBlock, EnhancedPacketOption},
            interface_description::{InterfaceDescriptionBlock, InterfaceDescriptionOption},
            interface_statistics::{InterfaceStatisticsBlock, InterfaceStatisticsOption},
            section_header::{SectionHeaderBlock, SectionHeaderOption},
            PcapNgBlock,
        },
        PcapNgWriter,
    },
    DataLink, Endianness,
};

use super::{pcap::pcap_io, Interface, InterfaceId, Packet, RecordFile, Sink, SinkError, Stats};
use crate::ring::Direction;

/// epb_flags direction bits (pcapng spec): 01 inbound, 10 outbound.
const EPB_INBOUND: u32 = 0b01;
const EPB_OUTBOUND: u32 = 0b10;
/// if_tsresol: 10^-9 s.
const NANOSECONDS: u8 = 9;

pub struct PcapNgSink {
    writer: PcapNgWriter<RecordFile>,
    /// The capture's interface id → this file's interface number (the
    /// order of its IDBs), for interfaces still in the capture.
    ids: HashMap<InterfaceId, u32>,
    /// IDBs written to this file so far.
    described: u32,
    snaplen: u32,
}

impl PcapNgSink {
    /// Writes the section header; interfaces follow as they are added.
    pub fn new(out: RecordFile, snaplen: u32) -> Result<Self, SinkError> {
        let name = out.name().to_owned();
        let fail = |e| SinkError::Write {
            target: name.clone(),
            source: pcap_io(e),
        };
        let section = SectionHeaderBlock {
            endianness: Endianness::native(),
            major_version: 1,
            minor_version: 0,
            section_length: -1,
            options: vec![
                SectionHeaderOption::Hardware(Cow::Owned(std::env::consts::ARCH.to_owned())),
                SectionHeaderOption::OS(Cow::Owned(os_description())),
                SectionHeaderOption::UserApplication(Cow::Owned(format!(
                    "podtrace {}",
                    env!("CARGO_PKG_VERSION")
                ))),
                // pcapng has no host field; Wireshark shows the comment.
                SectionHeaderOption::Comment(Cow::Owned(format!(
                    "captured on node {}",
                    hostname()
                ))),
            ],
        };
        let mut writer = PcapNgWriter::with_section_header(out, section).map_err(fail)?;
        writer.get_mut().end_record();
        // Readers of a pipe need the header blocks now.
        writer.get_mut().flush()?;
        Ok(Self {
            writer,
            ids: HashMap::new(),
            described: 0,
            snaplen,
        })
    }

    fn block<'a>(&mut self, block: impl PcapNgBlock<'a>) -> Result<(), SinkError> {
        match self.writer.write_pcapng_block(block) {
            Ok(_) => {
                self.writer.get_mut().end_record();
                Ok(())
            }
            Err(e) => Err(self.writer.get_mut().fail(pcap_io(e))),
        }
    }

    fn statistics(&mut self, interface_id: u32, stats: &Stats) -> Result<(), SinkError> {
        let now = super::now_ns();
        let mut options = vec![
            InterfaceStatisticsOption::IsbStartTime(stats.started_ns),
            InterfaceStatisticsOption::IsbEndTime(now),
            InterfaceStatisticsOption::IsbIfRecv(stats.received),
            InterfaceStatisticsOption::IsbIfDrop(stats.dropped),
            InterfaceStatisticsOption::IsbFilterAccept(stats.received - stats.filtered),
        ];
        // "Dropped by the operating system" before podtrace could see them:
        // Wireshark shows it with the interface's statistics.
        if let Some(missed) = stats.missed {
            options.push(InterfaceStatisticsOption::IsbOsDrop(missed));
        }
        if let Some(comment) = &stats.comment {
            options.push(InterfaceStatisticsOption::Comment(Cow::Owned(
                comment.clone(),
            )));
        }
        self.block(InterfaceStatisticsBlock {
            interface_id,
            timestamp: now,
            options,
        })
    }
}

impl Sink for PcapNgSink {
    fn add_interface(&mut self, id: InterfaceId, iface: &Interface) -> Result<(), SinkError> {
        self.block(InterfaceDescriptionBlock {
            linktype: DataLink::ETHERNET,
            snaplen: self.snaplen,
            options: vec![
                InterfaceDescriptionOption::IfName(Cow::Owned(iface.name.clone())),
                InterfaceDescriptionOption::IfDescription(Cow::Owned(iface.description.clone())),
                InterfaceDescriptionOption::IfTsResol(NANOSECONDS),
            ],
        })?;
        self.ids.insert(id, self.described);
        self.described += 1;
        Ok(())
    }

    fn remove_interface(&mut self, id: InterfaceId, stats: &Stats) -> Result<(), SinkError> {
        match self.ids.remove(&id) {
            Some(interface_id) => self.statistics(interface_id, stats),
            None => Ok(()),
        }
    }

    fn write(&mut self, packet: &Packet<'_>) -> Result<(), SinkError> {
        // The session adds every interface before its packets.
        let Some(&interface_id) = self.ids.get(&packet.interface) else {
            return Err(SinkError::Write {
                target: self.writer.get_ref().name().to_owned(),
                source: std::io::Error::other(format!(
                    "packet of interface {} that was never described",
                    packet.interface
                )),
            });
        };
        let len = packet.data.len().min(self.snaplen as usize);
        let flags = match packet.direction {
            Direction::In => EPB_INBOUND,
            Direction::Out => EPB_OUTBOUND,
        };
        self.block(EnhancedPacketBlock {
            interface_id,
            timestamp: packet.ts,
            original_len: packet.orig_len.max(len as u32),
            data: Cow::Borrowed(&packet.data[..len]),
            options: vec![EnhancedPacketOption::Flags(flags)],
        })
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        self.writer.get_mut().flush()
    }

    fn bytes_written(&self) -> u64 {
        self.writer.get_ref().bytes_written()
    }

    fn finish(&mut self, live: &[(InterfaceId, Stats)]) -> Result<(), SinkError> {
        for (id, stats) in live {
            self.remove_interface(*id, stats)?;
        }
        self.flush()
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

/// "Linux 6.18.44" from uname, for the section header.
fn os_description() -> String {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("Linux {}", release.trim())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use pcap_file::pcapng::{Block, PcapNgReader};

    use super::*;

    fn packet(interface: InterfaceId, direction: Direction) -> Packet<'static> {
        Packet {
            ts: Duration::new(1_700_000_000, 5),
            interface,
            direction,
            orig_len: 60,
            data: &[0xab; 60],
        }
    }

    fn iface(name: &str) -> Interface {
        Interface {
            name: name.into(),
            description: format!("pod {name} uid u-1 via host veth veth1 (ifindex 7)"),
        }
    }

    /// (block kind, interface number, detail) for each block after the
    /// section header: IDB names, EPB flags, ISB received counts.
    fn blocks(path: &std::path::Path) -> Vec<(&'static str, u32, String)> {
        let mut reader = PcapNgReader::new(std::fs::File::open(path).unwrap()).unwrap();
        let comment = format!("captured on node {}", hostname());
        assert!(reader
            .section()
            .options
            .contains(&SectionHeaderOption::Comment(comment.into())));
        let mut out = Vec::new();
        let mut idbs = 0;
        while let Some(block) = reader.next_block() {
            match block.unwrap() {
                Block::InterfaceDescription(idb) => {
                    assert!(idb
                        .options
                        .contains(&InterfaceDescriptionOption::IfTsResol(9)));
                    let name = idb.options.iter().find_map(|o| match o {
                        InterfaceDescriptionOption::IfName(n) => Some(n.to_string()),
                        _ => None,
                    });
                    out.push(("idb", idbs, name.unwrap()));
                    idbs += 1;
                }
                Block::EnhancedPacket(epb) => {
                    assert_eq!(epb.timestamp, Duration::new(1_700_000_000, 5));
                    let flags = epb.options.iter().find_map(|o| match o {
                        EnhancedPacketOption::Flags(f) => Some(*f),
                        _ => None,
                    });
                    out.push(("epb", epb.interface_id, format!("{:?}", flags.unwrap())));
                }
                Block::InterfaceStatistics(isb) => {
                    let get = |want: fn(&InterfaceStatisticsOption) -> Option<u64>| {
                        isb.options.iter().find_map(want).unwrap()
                    };
                    let recv = get(|o| match o {
                        InterfaceStatisticsOption::IsbIfRecv(n) => Some(*n),
                        _ => None,
                    });
                    let drop = get(|o| match o {
                        InterfaceStatisticsOption::IsbIfDrop(n) => Some(*n),
                        _ => None,
                    });
                    let accept = get(|o| match o {
                        InterfaceStatisticsOption::IsbFilterAccept(n) => Some(*n),
                        _ => None,
                    });
                    out.push(("isb", isb.interface_id, format!("{recv}/{drop}/{accept}")));
                }
                _ => {}
            }
        }
        out
    }

    #[test]
    fn interfaces_join_and_leave_with_their_own_statistics() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.pcapng");
        let mut sink = PcapNgSink::new(RecordFile::create(&path).unwrap(), 65535).unwrap();
        // The capture's ids need not be this file's interface numbers.
        sink.add_interface(10, &iface("prod/web-1")).unwrap();
        sink.write(&packet(10, Direction::In)).unwrap();
        sink.add_interface(11, &iface("prod/web-2")).unwrap();
        sink.write(&packet(11, Direction::Out)).unwrap();
        sink.write(&packet(10, Direction::Out)).unwrap();
        let left = Stats {
            received: 5,
            dropped: 2,
            filtered: 1,
            ..Default::default()
        };
        sink.remove_interface(10, &left).unwrap();
        let live = Stats {
            received: 1,
            ..Default::default()
        };
        sink.finish(&[(11, live)]).unwrap();
        assert_eq!(
            blocks(&path),
            [
                ("idb", 0, "prod/web-1".into()),
                ("epb", 0, format!("{EPB_INBOUND}")),
                ("idb", 1, "prod/web-2".into()),
                ("epb", 1, format!("{EPB_OUTBOUND}")),
                ("epb", 0, format!("{EPB_OUTBOUND}")),
                ("isb", 0, "5/2/4".into()),
                ("isb", 1, "1/0/1".into()),
            ]
        );
    }

    #[test]
    fn a_packet_of_an_unknown_interface_is_an_error_not_misfiled() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.pcapng");
        let mut sink = PcapNgSink::new(RecordFile::create(&path).unwrap(), 65535).unwrap();
        sink.add_interface(0, &iface("a/b")).unwrap();
        assert!(sink.write(&packet(1, Direction::In)).is_err());
    }
}
