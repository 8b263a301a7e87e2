//! Sinks: where decoded packets go (pcap file, text lines).
//!
//! Sinks see plain [`Packet`]s, never the kernel or the ring, so each one is
//! tested with made-up packets.

mod file;
mod pcap;
mod text;

use std::{io, path::PathBuf, time::Duration};

pub use self::{file::RecordFile, pcap::PcapSink, text::TextSink};
use crate::ring::Direction;

/// A packet on its way to a sink.
#[derive(Debug, Clone, Copy)]
pub struct Packet<'a> {
    /// Wall-clock time since the Unix epoch.
    pub ts: Duration,
    pub ifindex: u32,
    pub direction: Direction,
    /// Length on the wire; `data` may be shorter (snaplen).
    pub orig_len: u32,
    pub data: &'a [u8],
}

/// Where packets are written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// `-w FILE`
    File(PathBuf),
    /// `-w -`
    Stdout,
    /// No `-w`: one text line per packet on stdout.
    Text,
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("cannot open {path} for writing: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("write error on {target}: {source}")]
    Write { target: String, source: io::Error },
}

impl SinkError {
    /// The reader went away (`podtrace ... | head`): a normal end.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, Self::Write { source, .. } if source.kind() == io::ErrorKind::BrokenPipe)
    }
}

/// A destination for captured packets.
pub trait Sink {
    fn write(&mut self, packet: &Packet<'_>) -> Result<(), SinkError>;
    /// Makes everything written so far visible to readers.
    fn flush(&mut self) -> Result<(), SinkError>;
}

/// Opens the sink `output` asks for.
pub fn open(output: &Output, snaplen: u32) -> Result<Box<dyn Sink>, SinkError> {
    Ok(match output {
        Output::File(path) => Box::new(PcapSink::new(RecordFile::create(path)?, snaplen)?),
        Output::Stdout => Box::new(PcapSink::new(RecordFile::stdout(), snaplen)?),
        Output::Text => Box::new(TextSink::new(Box::new(io::stdout()))),
    })
}
