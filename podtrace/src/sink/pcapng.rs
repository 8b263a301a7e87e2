//! pcapng: one Interface Description Block per captured interface naming the
//! pod, nanosecond timestamps, the direction in every Enhanced Packet Block,
//! and an Interface Statistics Block at the end carrying the kernel's counts
//! (so the loss is in the file, not only on stderr).

use std::{borrow::Cow, collections::HashMap};

use pcap_file::{
    pcapng::{
        blocks::{
            enhanced_packet::{EnhancedPacketBlock, EnhancedPacketOption},
            interface_description::{InterfaceDescriptionBlock, InterfaceDescriptionOption},
            interface_statistics::{InterfaceStatisticsBlock, InterfaceStatisticsOption},
            section_header::{SectionHeaderBlock, SectionHeaderOption},
        },
        PcapNgWriter,
    },
    DataLink, Endianness,
};

use super::{pcap::pcap_io, Interface, Packet, RecordFile, Sink, SinkError, Stats};
use crate::ring::Direction;

/// epb_flags direction bits (pcapng spec): 01 inbound, 10 outbound.
const EPB_INBOUND: u32 = 0b01;
const EPB_OUTBOUND: u32 = 0b10;
/// if_tsresol: 10^-9 s.
const NANOSECONDS: u8 = 9;

pub struct PcapNgSink {
    writer: PcapNgWriter<RecordFile>,
    /// ifindex → pcapng interface id (order of the IDBs).
    ids: HashMap<u32, u32>,
    snaplen: u32,
}

impl PcapNgSink {
    pub fn new(out: RecordFile, snaplen: u32, interfaces: &[Interface]) -> Result<Self, SinkError> {
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
        let mut ids = HashMap::new();
        for (id, iface) in interfaces.iter().enumerate() {
            let idb = InterfaceDescriptionBlock {
                linktype: DataLink::ETHERNET,
                snaplen,
                options: vec![
                    InterfaceDescriptionOption::IfName(Cow::Owned(iface.name.clone())),
                    InterfaceDescriptionOption::IfDescription(Cow::Owned(
                        iface.description.clone(),
                    )),
                    InterfaceDescriptionOption::IfTsResol(NANOSECONDS),
                ],
            };
            if let Err(e) = writer.write_pcapng_block(idb) {
                return Err(writer.get_mut().fail(pcap_io(e)));
            }
            writer.get_mut().end_record();
            ids.insert(iface.ifindex, id as u32);
        }
        // Readers of a pipe need the header blocks now.
        writer.get_mut().flush()?;
        Ok(Self {
            writer,
            ids,
            snaplen,
        })
    }
}

impl Sink for PcapNgSink {
    fn write(&mut self, packet: &Packet<'_>) -> Result<(), SinkError> {
        // Records of an interface not described (never expected) go to the first.
        let interface_id = self.ids.get(&packet.ifindex).copied().unwrap_or(0);
        let len = packet.data.len().min(self.snaplen as usize);
        let flags = match packet.direction {
            Direction::In => EPB_INBOUND,
            Direction::Out => EPB_OUTBOUND,
        };
        let epb = EnhancedPacketBlock {
            interface_id,
            timestamp: packet.ts,
            original_len: packet.orig_len.max(len as u32),
            data: Cow::Borrowed(&packet.data[..len]),
            options: vec![EnhancedPacketOption::Flags(flags)],
        };
        match self.writer.write_pcapng_block(epb) {
            Ok(_) => {
                self.writer.get_mut().end_record();
                Ok(())
            }
            Err(e) => Err(self.writer.get_mut().fail(pcap_io(e))),
        }
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        self.writer.get_mut().flush()
    }

    fn bytes_written(&self) -> u64 {
        self.writer.get_ref().bytes_written()
    }

    fn finish(&mut self, stats: &Stats) -> Result<(), SinkError> {
        let now = super::now_ns();
        for (&ifindex, &interface_id) in &self.ids {
            // The kernel counts for all links together; with one link (the
            // usual case) they are exactly that interface's.
            let (recv, drop, accept) = if self.ids.len() == 1 {
                (
                    stats.received,
                    stats.dropped,
                    stats.received - stats.filtered,
                )
            } else {
                let own = stats
                    .captured_per_ifindex
                    .get(&ifindex)
                    .copied()
                    .unwrap_or(0);
                (own, 0, own)
            };
            let isb = InterfaceStatisticsBlock {
                interface_id,
                timestamp: now,
                options: vec![
                    InterfaceStatisticsOption::IsbStartTime(stats.started_ns),
                    InterfaceStatisticsOption::IsbEndTime(now),
                    InterfaceStatisticsOption::IsbIfRecv(recv),
                    InterfaceStatisticsOption::IsbIfDrop(drop),
                    InterfaceStatisticsOption::IsbFilterAccept(accept),
                ],
            };
            match self.writer.write_pcapng_block(isb) {
                Ok(_) => self.writer.get_mut().end_record(),
                Err(e) => return Err(self.writer.get_mut().fail(pcap_io(e))),
            }
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

    #[test]
    fn blocks_carry_pod_identity_direction_and_stats() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.pcapng");
        let interfaces = [Interface {
            ifindex: 7,
            name: "prod/web".into(),
            description: "pod prod/web uid u-1 via host veth veth1 (ifindex 7)".into(),
        }];
        let mut sink =
            PcapNgSink::new(RecordFile::create(&path).unwrap(), 65535, &interfaces).unwrap();
        for direction in [Direction::In, Direction::Out] {
            let packet = Packet {
                ts: Duration::new(1_700_000_000, 5),
                ifindex: 7,
                direction,
                orig_len: 60,
                data: &[0xab; 60],
            };
            sink.write(&packet).unwrap();
        }
        let stats = Stats {
            received: 5,
            dropped: 2,
            filtered: 1,
            ..Default::default()
        };
        sink.finish(&stats).unwrap();

        let mut reader = PcapNgReader::new(std::fs::File::open(&path).unwrap()).unwrap();
        let comment = format!("captured on node {}", hostname());
        assert!(reader
            .section()
            .options
            .contains(&SectionHeaderOption::Comment(comment.into())));
        let mut flags = Vec::new();
        let mut seen_isb = false;
        while let Some(block) = reader.next_block() {
            match block.unwrap() {
                Block::InterfaceDescription(idb) => {
                    assert!(idb
                        .options
                        .contains(&InterfaceDescriptionOption::IfName("prod/web".into())));
                    assert!(idb
                        .options
                        .contains(&InterfaceDescriptionOption::IfTsResol(9)));
                }
                Block::EnhancedPacket(epb) => {
                    assert_eq!(epb.timestamp, Duration::new(1_700_000_000, 5));
                    flags.extend(epb.options.iter().filter_map(|o| match o {
                        EnhancedPacketOption::Flags(f) => Some(*f),
                        _ => None,
                    }));
                }
                Block::InterfaceStatistics(isb) => {
                    seen_isb = true;
                    assert!(isb
                        .options
                        .contains(&InterfaceStatisticsOption::IsbIfRecv(5)));
                    assert!(isb
                        .options
                        .contains(&InterfaceStatisticsOption::IsbIfDrop(2)));
                    assert!(isb
                        .options
                        .contains(&InterfaceStatisticsOption::IsbFilterAccept(4)));
                }
                _ => {}
            }
        }
        assert_eq!(flags, [EPB_INBOUND, EPB_OUTBOUND]);
        assert!(seen_isb);
    }
}
