//! Sinks: where decoded packets go (pcap, pcapng, text), with tcpdump-style
//! rotation around the file formats.
//!
//! Sinks see plain [`Packet`]s, never the kernel or the ring, so each one is
//! tested with made-up packets.

mod file;
mod pcap;
mod pcapng;
mod rotate;
mod text;

use std::{
    io,
    path::{Path, PathBuf},
    time::Duration,
};

pub use self::{
    file::RecordFile,
    pcap::PcapSink,
    pcapng::PcapNgSink,
    rotate::{file_name, RotatingSink, Rotation},
    text::{Formatter, TextSink, TextStyle},
};
use crate::ring::Direction;

/// A captured interface, numbered by the capture in the order interfaces
/// appear (a pod, or a host interface); sinks map it to their own numbers.
pub type InterfaceId = u32;

/// A packet on its way to a sink.
#[derive(Debug, Clone, Copy)]
pub struct Packet<'a> {
    /// Wall-clock time since the Unix epoch.
    pub ts: Duration,
    /// Announced to the sink with [`Sink::add_interface`] before.
    pub interface: InterfaceId,
    pub direction: Direction,
    /// Length on the wire; `data` may be shorter (snaplen).
    pub orig_len: u32,
    pub data: &'a [u8],
}

/// A captured interface, as file formats that describe interfaces show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    /// Short name: "prod/web" for a pod, the interface name otherwise.
    pub name: String,
    /// Everything that identifies it: pod, uid, host veth, ifindex.
    pub description: String,
}

/// One interface's counts (pcapng's Interface Statistics Block), written
/// when it leaves the capture and at the end.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Packets the kernel programs saw.
    pub received: u64,
    /// Packets they could not deliver (ring full).
    pub dropped: u64,
    /// Packets the capture filter rejected.
    pub filtered: u64,
    /// When the interface joined the capture, nanoseconds since the epoch.
    pub started_ns: u64,
    /// Packets the interface's pod received that the capture could not
    /// see (its CNI delivered them past the host veth); `None` where that
    /// was not watched.
    pub missed: Option<u64>,
    /// Something a reader should know about these numbers.
    pub comment: Option<String>,
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

/// The file format of `-w`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Pcap,
    Pcapng,
}

impl Format {
    /// pcapng for `*.pcapng` names, classic pcap otherwise (like Wireshark's tools).
    pub fn for_path(path: &Path) -> Self {
        if path.extension().is_some_and(|e| e == "pcapng") {
            Self::Pcapng
        } else {
            Self::Pcap
        }
    }
}

/// Everything needed to open the sink.
#[derive(Debug, Clone)]
pub struct SinkOptions {
    pub output: Output,
    pub format: Format,
    pub snaplen: u32,
    pub rotation: Rotation,
    pub text: TextStyle,
    /// Whether packets of several interfaces can meet in the output: text
    /// then names each packet's interface (pod), as `tcpdump -i any` does.
    pub many_interfaces: bool,
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
    /// A new interface, before its first packet.
    fn add_interface(&mut self, _id: InterfaceId, _iface: &Interface) -> Result<(), SinkError> {
        Ok(())
    }
    /// An interface left the capture (after its last packet): its counts.
    fn remove_interface(&mut self, _id: InterfaceId, _stats: &Stats) -> Result<(), SinkError> {
        Ok(())
    }
    fn write(&mut self, packet: &Packet<'_>) -> Result<(), SinkError>;
    /// Makes everything written so far visible to readers.
    fn flush(&mut self) -> Result<(), SinkError>;
    /// Bytes written to the current file (for -C).
    fn bytes_written(&self) -> u64 {
        0
    }
    /// End of the capture: the counts of the interfaces still in it, where
    /// the format has room for them.
    fn finish(&mut self, _live: &[(InterfaceId, Stats)]) -> Result<(), SinkError> {
        self.flush()
    }
    /// The sink wants no more packets (`-G … -W N` reached N files).
    fn done(&self) -> bool {
        false
    }
}

/// Opens the sink the options ask for.
pub fn open(opts: &SinkOptions) -> Result<Box<dyn Sink>, SinkError> {
    match &opts.output {
        Output::File(path) if opts.rotation.is_active() => {
            let rotation = opts.rotation;
            let opts = opts.clone();
            let open = Box::new(move |name: &Path| file_sink(&opts, RecordFile::create(name)?));
            Ok(Box::new(RotatingSink::new(path, rotation, open)?))
        }
        Output::File(path) => file_sink(opts, RecordFile::create(path)?),
        Output::Stdout => file_sink(opts, RecordFile::stdout()),
        Output::Text => Ok(Box::new(TextSink::new(
            Box::new(io::stdout()),
            opts.text,
            opts.many_interfaces,
        ))),
    }
}

fn file_sink(opts: &SinkOptions, out: RecordFile) -> Result<Box<dyn Sink>, SinkError> {
    Ok(match opts.format {
        Format::Pcap => Box::new(PcapSink::new(out, opts.snaplen)?),
        Format::Pcapng => Box::new(PcapNgSink::new(out, opts.snaplen)?),
    })
}

/// The local time of a moment given in seconds since the epoch
/// (localtime_r(3)), for file names and text timestamps.
pub(crate) fn local_time(epoch_secs: u64) -> libc::tm {
    broken_down(epoch_secs, false)
}

/// The UTC time of a moment given in seconds since the epoch (gmtime_r(3)).
pub(crate) fn utc_time(epoch_secs: u64) -> libc::tm {
    broken_down(epoch_secs, true)
}

fn broken_down(epoch_secs: u64, utc: bool) -> libc::tm {
    // Typed by the callee's parameter: musl's time_t is being retyped.
    let t = epoch_secs as _;
    // SAFETY: a zeroed tm is valid; both functions get valid pointers.
    unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        if utc {
            libc::gmtime_r(&t, &mut tm);
        } else {
            libc::localtime_r(&t, &mut tm);
        }
        tm
    }
}

/// Now, in nanoseconds since the epoch.
pub(crate) fn now_ns() -> u64 {
    crate::ring::Clock::now_wall().as_nanos() as u64
}
