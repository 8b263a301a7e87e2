//! Classic pcap: nanosecond timestamps (magic a1b23c4d), Ethernet link type,
//! encoded by pcap-file.

use std::io::{self, Write};

use pcap_file::{pcap::PcapHeader, DataLink, Endianness, TsResolution};

use super::{Packet, RecordFile, Sink, SinkError};

pub struct PcapSink {
    out: RecordFile,
    snaplen: u32,
}

impl PcapSink {
    pub fn new(mut out: RecordFile, snaplen: u32) -> Result<Self, SinkError> {
        let header = PcapHeader {
            version_major: 2,
            version_minor: 4,
            ts_correction: 0,
            ts_accuracy: 0,
            snaplen,
            datalink: DataLink::ETHERNET,
            ts_resolution: TsResolution::NanoSecond,
            endianness: Endianness::Little,
        };
        out.record(|w| header.write_to(w).map(drop).map_err(pcap_io))?;
        // Readers of a pipe (`-w - | tshark -r -`) need the header now.
        out.flush()?;
        Ok(Self { out, snaplen })
    }
}

impl Sink for PcapSink {
    /// The 16-byte record header is encoded here rather than by pcap-file:
    /// this runs per packet, and its generic writer made several small
    /// writes through the buffered file per header.
    fn write(&mut self, packet: &Packet<'_>) -> Result<(), SinkError> {
        let data = &packet.data[..packet.data.len().min(self.snaplen as usize)];
        let len = data.len() as u32;
        let mut header = [0u8; 16];
        header[0..4].copy_from_slice(&(packet.ts.as_secs() as u32).to_le_bytes());
        header[4..8].copy_from_slice(&packet.ts.subsec_nanos().to_le_bytes());
        header[8..12].copy_from_slice(&len.to_le_bytes());
        header[12..16].copy_from_slice(&packet.orig_len.max(len).to_le_bytes());
        self.out.record(|w| {
            w.write_all(&header)?;
            w.write_all(data)
        })
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        self.out.flush()
    }

    fn bytes_written(&self) -> u64 {
        self.out.bytes_written()
    }
}

pub(super) fn pcap_io(e: pcap_file::PcapError) -> io::Error {
    match e {
        pcap_file::PcapError::IoError(e) => e,
        other => io::Error::other(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use pcap_file::pcap::PcapReader;

    use super::*;
    use crate::ring::Direction;

    #[test]
    fn record_header_matches_pcap_files_encoding() {
        use byteorder_slice::LittleEndian;
        use pcap_file::pcap::PcapPacket;

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.pcap");
        let mut sink = PcapSink::new(RecordFile::create(&path).unwrap(), 96).unwrap();
        let data = [7u8; 120];
        let ts = Duration::new(1_700_000_123, 999_999_999);
        sink.write(&Packet {
            ts,
            interface: 1,
            direction: Direction::In,
            orig_len: 1500,
            data: &data,
        })
        .unwrap();
        sink.flush().unwrap();
        let mut want = Vec::new();
        PcapPacket::new(ts, 1500, &data[..96])
            .write_to::<_, LittleEndian>(&mut want, TsResolution::NanoSecond, 96)
            .unwrap();
        let got = std::fs::read(&path).unwrap();
        assert_eq!(&got[24..], &want[..]);
    }

    #[test]
    fn writes_a_file_pcap_readers_parse() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.pcap");
        let mut sink = PcapSink::new(RecordFile::create(&path).unwrap(), 4).unwrap();
        let data = [0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff];
        let ts = Duration::new(1_700_000_000, 123_456_789);
        for (orig_len, direction) in [(6, Direction::In), (1500, Direction::Out)] {
            let packet = Packet {
                ts,
                interface: 3,
                direction,
                orig_len,
                data: &data,
            };
            sink.write(&packet).unwrap();
        }
        sink.flush().unwrap();

        let mut reader = PcapReader::new(std::fs::File::open(&path).unwrap()).unwrap();
        let header = reader.header();
        assert_eq!(header.ts_resolution, TsResolution::NanoSecond);
        assert_eq!(header.snaplen, 4);
        assert_eq!(header.datalink, DataLink::ETHERNET);
        // Raw packets: pcap-file 2.0's checked reader wrongly rejects
        // orig_len > snaplen, which tcpdump and Wireshark accept (and write).
        let first = reader.next_raw_packet().unwrap().unwrap();
        assert_eq!((first.ts_sec, first.ts_frac), (1_700_000_000, 123_456_789));
        assert_eq!((first.incl_len, first.orig_len), (4, 6));
        assert_eq!(&first.data[..], &data[..4], "snaplen honoured");
        let second = reader.next_raw_packet().unwrap().unwrap();
        assert_eq!((second.incl_len, second.orig_len), (4, 1500));
        assert!(reader.next_raw_packet().is_none());
    }
}
