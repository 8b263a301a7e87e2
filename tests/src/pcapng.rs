//! What a pcapng file says about its interfaces: their descriptions, their
//! statistics blocks, and the order of the blocks (tshark shows packets,
//! not statistics blocks).

use std::path::Path;

use anyhow::{Context, Result};
use pcap_file::pcapng::{
    blocks::{
        interface_description::InterfaceDescriptionOption,
        interface_statistics::InterfaceStatisticsOption,
    },
    Block, PcapNgReader,
};

/// One interface of a file, in the order of its description block.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub description: String,
    /// Enhanced packet blocks of this interface.
    pub packets: u64,
    /// Its statistics blocks: (isb_ifrecv, isb_ifdrop, isb_filteraccept).
    pub stats: Vec<(u64, u64, u64)>,
    /// Their isb_osdrop (packets its pod received past the capture), when
    /// present.
    pub osdrop: Vec<Option<u64>>,
    /// Their comments.
    pub comments: Vec<String>,
}

/// One block, in file order: `Packet(interface)` or `Stats(interface)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    Described(usize),
    Packet(usize),
    Stats(usize),
}

/// The interfaces of a pcapng file and its blocks in order.
pub fn read(path: &Path) -> Result<(Vec<Interface>, Vec<Seen>)> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut reader =
        PcapNgReader::new(file).with_context(|| format!("{} is not pcapng", path.display()))?;
    let mut interfaces: Vec<Interface> = Vec::new();
    let mut order = Vec::new();
    while let Some(block) = reader.next_block() {
        match block.with_context(|| format!("reading {}", path.display()))? {
            Block::InterfaceDescription(idb) => {
                let mut iface = Interface::default();
                for option in idb.options {
                    match option {
                        InterfaceDescriptionOption::IfName(n) => iface.name = n.into_owned(),
                        InterfaceDescriptionOption::IfDescription(d) => {
                            iface.description = d.into_owned()
                        }
                        _ => {}
                    }
                }
                order.push(Seen::Described(interfaces.len()));
                interfaces.push(iface);
            }
            Block::EnhancedPacket(epb) => {
                let id = epb.interface_id as usize;
                interfaces
                    .get_mut(id)
                    .context("a packet of an undescribed interface")?
                    .packets += 1;
                order.push(Seen::Packet(id));
            }
            Block::InterfaceStatistics(isb) => {
                let id = isb.interface_id as usize;
                let (mut recv, mut drop, mut accept) = (None, None, None);
                let mut osdrop = None;
                let mut comments = Vec::new();
                for option in isb.options {
                    match option {
                        InterfaceStatisticsOption::IsbIfRecv(n) => recv = Some(n),
                        InterfaceStatisticsOption::IsbIfDrop(n) => drop = Some(n),
                        InterfaceStatisticsOption::IsbFilterAccept(n) => accept = Some(n),
                        InterfaceStatisticsOption::IsbOsDrop(n) => osdrop = Some(n),
                        InterfaceStatisticsOption::Comment(c) => comments.push(c.into_owned()),
                        _ => {}
                    }
                }
                let stats = (
                    recv.context("isb without isb_ifrecv")?,
                    drop.context("isb without isb_ifdrop")?,
                    accept.context("isb without isb_filteraccept")?,
                );
                let iface = interfaces
                    .get_mut(id)
                    .context("statistics of an undescribed interface")?;
                iface.stats.push(stats);
                iface.osdrop.push(osdrop);
                iface.comments.extend(comments);
                order.push(Seen::Stats(id));
            }
            _ => {}
        }
    }
    Ok((interfaces, order))
}
