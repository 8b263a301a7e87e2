//! Reading classic pcap files packet by packet, for byte-exact comparisons
//! (tshark's fields are too slow and lossy for that).

use std::path::Path;

use anyhow::{bail, ensure, Context, Result};

/// One packet of a pcap file: its length on the wire and the bytes kept.
/// Timestamps are left out: two captures of one packet differ there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    pub orig_len: u32,
    pub data: Vec<u8>,
}

/// Every packet of a pcap file (either byte order, µs or ns timestamps).
pub fn read(path: &Path) -> Result<Vec<Packet>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    ensure!(bytes.len() >= 24, "{} is not a pcap file", path.display());
    let magic = u32::from_le_bytes(bytes[..4].try_into()?);
    let word: fn([u8; 4]) -> u32 = match magic {
        0xa1b2_c3d4 | 0xa1b2_3c4d => u32::from_le_bytes,
        0xd4c3_b2a1 | 0x4d3c_b2a1 => u32::from_be_bytes,
        _ => bail!("{}: unknown pcap magic {magic:#x}", path.display()),
    };
    let at = |i: usize| -> Result<u32> {
        let b = bytes
            .get(i..i + 4)
            .context("truncated pcap record header")?;
        Ok(word(b.try_into()?))
    };
    let mut packets = Vec::new();
    let mut pos = 24;
    while pos < bytes.len() {
        let (incl, orig) = (at(pos + 8)? as usize, at(pos + 12)?);
        let data = bytes
            .get(pos + 16..pos + 16 + incl)
            .context("truncated pcap packet")?;
        packets.push(Packet {
            orig_len: orig,
            data: data.to_vec(),
        });
        pos += 16 + incl;
    }
    Ok(packets)
}
