//! Ring reader: drains the eBPF ring buffer and decodes its records.
//!
//! The programs submit without waking us (BPF_RB_NO_WAKEUP) unless the ring
//! is filling up, so the reader drains on a short timer and on readiness.
//! Records are decoded in place: the packet bytes handed to sinks borrow the
//! ring's memory until the callback returns. The ring is read through our own
//! mapping of it ([`RingView`]), which releases space in batches.

use std::{
    os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd},
    sync::atomic::{AtomicU32, AtomicU64, Ordering},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use aya::maps::{MapData, RingBuf};
use podtrace_common::{
    RecordHeader, HOOK_EGRESS, HOOK_ETH0_INGRESS, HOOK_INGRESS, RECORD_HEADER_LEN,
};
use tokio::io::unix::AsyncFd;

/// Which way a packet went, from the capture target's point of view: for a
/// pod, as if tcpdump ran on the pod's eth0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    In,
    Out,
}

impl Direction {
    /// The direction of a packet seen at `hook` of a host interface; on the
    /// host end of a target's veth the view flips. The ingress of a pod's
    /// own eth0 is what it receives.
    pub fn from_hook(hook: u8, peer_is_target: bool) -> Option<Self> {
        let host_view = match hook {
            HOOK_INGRESS => Self::In,
            HOOK_EGRESS => Self::Out,
            HOOK_ETH0_INGRESS => return Some(Self::In),
            _ => return None,
        };
        Some(if peer_is_target {
            host_view.flip()
        } else {
            host_view
        })
    }

    fn flip(self) -> Self {
        match self {
            Self::In => Self::Out,
            Self::Out => Self::In,
        }
    }
}

/// One decoded ring record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    pub header: RecordHeader,
    pub data: &'a [u8],
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("ring record of {0} bytes is shorter than its header")]
    Short(usize),
    #[error("ring record claims {claimed} packet bytes but holds {held}")]
    Truncated { claimed: u32, held: usize },
}

/// Decodes one record as the eBPF side wrote it.
pub fn decode(bytes: &[u8]) -> Result<Record<'_>, DecodeError> {
    if bytes.len() < RECORD_HEADER_LEN {
        return Err(DecodeError::Short(bytes.len()));
    }
    // SAFETY: length checked; RecordHeader is plain old data, read unaligned.
    let header = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<RecordHeader>()) };
    let payload = &bytes[RECORD_HEADER_LEN..];
    let data = payload
        .get(..header.cap_len as usize)
        .ok_or(DecodeError::Truncated {
            claimed: header.cap_len,
            held: payload.len(),
        })?;
    Ok(Record { header, data })
}

/// Converts the kernel's monotonic timestamps to wall-clock time.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// realtime - monotonic, in nanoseconds.
    offset_ns: i128,
}

impl Clock {
    /// Measures the offset now, bracketing the realtime read between two
    /// monotonic reads and keeping the tightest of a few tries.
    pub fn measure() -> Self {
        let mut best: Option<(i128, i128)> = None;
        for _ in 0..5 {
            let before = clock_ns(libc::CLOCK_MONOTONIC);
            let real = clock_ns(libc::CLOCK_REALTIME);
            let after = clock_ns(libc::CLOCK_MONOTONIC);
            let span = after - before;
            let offset = real - (before + span / 2);
            if best.is_none_or(|(s, _)| span < s) {
                best = Some((span, offset));
            }
        }
        Self::with_offset(best.map_or(0, |(_, o)| o))
    }

    pub fn with_offset(offset_ns: i128) -> Self {
        Self { offset_ns }
    }

    /// Wall-clock time since the Unix epoch for a monotonic timestamp.
    pub fn to_wall(&self, monotonic_ns: u64) -> Duration {
        // Runs per packet: only the sum is i128; dividing an i128 is a
        // library call, dividing the u64 it fits in is one instruction.
        let ns = (i128::from(monotonic_ns) + self.offset_ns).clamp(0, i128::from(u64::MAX));
        Duration::from_nanos(ns as u64)
    }

    pub fn now_wall() -> Duration {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
    }
}

/// CLOCK_MONOTONIC now, in ns: the clock of the records' timestamps.
pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC) as u64
}

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid clock id and out pointer.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

/// The ring buffer, readable from tokio.
pub struct RingReader {
    /// The map's fd, which tokio watches for the kernel's wakeups.
    ring: AsyncFd<OwnedFd>,
    view: RingView,
    /// Records the decoder rejected (never expected; counted, not fatal).
    pub malformed: u64,
}

impl RingReader {
    pub fn new(ring: RingBuf<MapData>) -> std::io::Result<Self> {
        // Our own fd and mapping; aya's handle (and its mapping of the whole
        // ring, which would count twice in RSS) goes.
        let fd = ring.as_fd().try_clone_to_owned()?;
        drop(ring);
        let view = RingView::map(fd.as_fd())?;
        Ok(Self {
            // SAFETY: the AsyncFd owns the fd, so it outlives the registration.
            ring: unsafe { AsyncFd::register(fd) }.map_err(std::io::Error::from)?,
            view,
            malformed: 0,
        })
    }

    /// Waits until the kernel signals data (the ring is filling up).
    pub async fn readable(&self) -> std::io::Result<()> {
        let mut guard = self.ring.readable().await?;
        guard.clear_ready();
        Ok(())
    }

    /// Hands every record now in the ring to `f`, in ring order, until the
    /// ring is empty or `f` returns `false`. Returns how many were handed over.
    pub fn drain<E>(&mut self, mut f: impl FnMut(Record<'_>) -> Result<bool, E>) -> Result<u64, E> {
        let mut n = 0;
        let malformed = &mut self.malformed;
        self.view.consume(|bytes| match decode(bytes) {
            Ok(record) => {
                n += 1;
                f(record)
            }
            Err(_) => {
                *malformed += 1;
                Ok(true)
            }
        })?;
        Ok(n)
    }
}

/// The kernel's ring buffer layout (kernel/bpf/ringbuf.c): a consumer page
/// (`consumer_pos`, the only thing userspace writes), a producer page
/// (`producer_pos`), then the data pages, which the kernel lets us map twice
/// in a row so that a record wrapping around is contiguous. We map them once
/// (the kernel populates the whole mapping, so each copy is ring-sized RSS)
/// and copy the rare wrapping record. Each record: a u32 length with a busy
/// and a discard bit, a u32 page offset, the data, padded to 8 bytes.
const RINGBUF_BUSY_BIT: u32 = 1 << 31;
const RINGBUF_DISCARD_BIT: u32 = 1 << 30;
const RINGBUF_HDR_SZ: u64 = 8;

/// podtrace's own reader of the ring, instead of aya's iterator: aya
/// publishes the consumer position after every record, and that position
/// shares a cache line the producer (the TC program, on another CPU) reads
/// on every packet; here it is published every `release_every` bytes and at
/// the end of a drain. Records stay valid until then, which is what lets a
/// batch be decoded in place.
struct RingView {
    consumer: *mut u8,
    producer: *const u8,
    page: usize,
    size: u64,
    /// Our position: records before it are consumed.
    pos: u64,
    release_every: u64,
    /// A record that wraps around the end of the data pages, made whole.
    wrapped: Vec<u8>,
}

impl RingView {
    fn map(fd: BorrowedFd<'_>) -> std::io::Result<Self> {
        let size = u64::from(
            MapData::from_fd(fd.try_clone_to_owned()?)
                .and_then(|m| m.info())
                .map_err(std::io::Error::other)?
                .max_entries(),
        );
        // SAFETY: no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let mmap = |len: usize, prot: libc::c_int, offset: usize| {
            // SAFETY: a fresh shared mapping of the map's fd, checked below.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    prot,
                    libc::MAP_SHARED,
                    fd.as_raw_fd(),
                    offset as libc::off_t,
                )
            };
            if p == libc::MAP_FAILED {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(p.cast::<u8>())
            }
        };
        let consumer = mmap(page, libc::PROT_READ | libc::PROT_WRITE, 0)?;
        let producer = match mmap(page + size as usize, libc::PROT_READ, page) {
            Ok(p) => p,
            Err(e) => {
                // SAFETY: mapped just above with this length.
                unsafe { libc::munmap(consumer.cast(), page) };
                return Err(e);
            }
        };
        let mut view = Self {
            consumer,
            producer,
            page,
            size,
            pos: 0,
            release_every: (size / 16).max(RINGBUF_HDR_SZ),
            wrapped: Vec::new(),
        };
        view.pos = view.consumer_pos().load(Ordering::Acquire);
        Ok(view)
    }

    fn consumer_pos(&self) -> &AtomicU64 {
        // SAFETY: the page is mapped for our lifetime; offset 0 is the
        // kernel's 8-byte aligned `consumer_pos`.
        unsafe { &*self.consumer.cast::<AtomicU64>() }
    }

    fn producer_pos(&self) -> &AtomicU64 {
        // SAFETY: as for `consumer_pos`, on the producer page.
        unsafe { &*self.producer.cast::<AtomicU64>() }
    }

    /// Hands the bytes of every committed record to `f`, in order, until the
    /// ring is empty, a record is still being written, or `f` says stop.
    fn consume<E>(&mut self, mut f: impl FnMut(&[u8]) -> Result<bool, E>) -> Result<(), E> {
        let mask = self.size - 1;
        let size = self.size as usize;
        // SAFETY: the data pages follow the producer page in the mapping.
        let data = unsafe { self.producer.add(self.page) };
        let mut released = self.pos;
        let mut result = Ok(());
        'drain: loop {
            let end = self.producer_pos().load(Ordering::Acquire);
            if self.pos >= end {
                break;
            }
            while self.pos < end {
                let offset = (self.pos & mask) as usize;
                // SAFETY: offset < size, and 8-byte aligned as the kernel
                // aligns records, so the header lies within the data pages.
                let header = unsafe { &*data.add(offset).cast::<AtomicU32>() };
                let len_flags = header.load(Ordering::Acquire);
                if len_flags & RINGBUF_BUSY_BIT != 0 {
                    break 'drain;
                }
                let len = len_flags & !(RINGBUF_BUSY_BIT | RINGBUF_DISCARD_BIT);
                if u64::from(len) > self.size {
                    // Cannot happen with a sane kernel; never read past the map.
                    break 'drain;
                }
                let keep_going = if len_flags & RINGBUF_DISCARD_BIT == 0 {
                    // The record's bytes start after its header and may run
                    // past the end of the data pages, continuing at their start.
                    let start = offset + RINGBUF_HDR_SZ as usize;
                    let head = (len as usize).min(size - start);
                    // SAFETY: committed data, within the mapped data pages; the
                    // kernel leaves it alone until we release it.
                    let part = |at: usize, n: usize| unsafe {
                        std::slice::from_raw_parts(data.add(at), n)
                    };
                    if head == len as usize {
                        f(part(start, head))
                    } else {
                        self.wrapped.clear();
                        self.wrapped.extend_from_slice(part(start, head));
                        self.wrapped.extend_from_slice(part(0, len as usize - head));
                        f(&self.wrapped)
                    }
                } else {
                    Ok(true)
                };
                self.pos += (RINGBUF_HDR_SZ + u64::from(len)).next_multiple_of(8);
                if self.pos - released >= self.release_every {
                    self.consumer_pos().store(self.pos, Ordering::Release);
                    released = self.pos;
                }
                match keep_going {
                    Ok(true) => {}
                    Ok(false) => break 'drain,
                    Err(e) => {
                        result = Err(e);
                        break 'drain;
                    }
                }
            }
        }
        if self.pos != released {
            self.consumer_pos().store(self.pos, Ordering::Release);
        }
        result
    }
}

impl Drop for RingView {
    fn drop(&mut self) {
        // SAFETY: both were mapped in `map` with these lengths.
        unsafe {
            libc::munmap(self.consumer.cast(), self.page);
            libc::munmap(
                self.producer.cast_mut().cast(),
                self.page + self.size as usize,
            );
        }
    }
}

// SAFETY: the mappings are owned by the view and only used through `&mut self`.
unsafe impl Send for RingView {}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(header: RecordHeader, data: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; RECORD_HEADER_LEN];
        // SAFETY: out is RECORD_HEADER_LEN bytes.
        unsafe { std::ptr::write_unaligned(out.as_mut_ptr().cast(), header) };
        out.extend_from_slice(data);
        out
    }

    #[test]
    fn decodes_header_and_payload() {
        let header = RecordHeader {
            ts_ns: 42,
            ifindex: 7,
            orig_len: 1500,
            cap_len: 3,
            hook: HOOK_EGRESS,
            _pad: [0; 3],
        };
        // The ring pads records to 8 bytes: trailing bytes are not packet data.
        let bytes = encode(header, &[1, 2, 3, 0, 0, 0, 0, 0]);
        let record = decode(&bytes).unwrap();
        assert_eq!(record.header, header);
        assert_eq!(record.data, &[1, 2, 3]);
    }

    #[test]
    fn rejects_short_and_truncated_records() {
        assert_eq!(decode(&[0; 10]), Err(DecodeError::Short(10)));
        let header = RecordHeader {
            cap_len: 100,
            ..Default::default()
        };
        let bytes = encode(header, &[0; 10]);
        assert_eq!(
            decode(&bytes),
            Err(DecodeError::Truncated {
                claimed: 100,
                held: 10
            })
        );
    }

    #[test]
    fn direction_flips_on_a_targets_veth() {
        // Host ingress on the pod's veth is what the pod sent.
        assert_eq!(
            Direction::from_hook(HOOK_INGRESS, true),
            Some(Direction::Out)
        );
        assert_eq!(Direction::from_hook(HOOK_EGRESS, true), Some(Direction::In));
        assert_eq!(
            Direction::from_hook(HOOK_INGRESS, false),
            Some(Direction::In)
        );
        assert_eq!(
            Direction::from_hook(HOOK_EGRESS, false),
            Some(Direction::Out)
        );
        assert_eq!(Direction::from_hook(9, false), None);
    }

    #[test]
    fn clock_maps_monotonic_to_wall() {
        let clock = Clock::with_offset(1_000_000_000_500);
        assert_eq!(clock.to_wall(250), Duration::new(1000, 750));
        let measured = Clock::measure();
        let wall = measured.to_wall(clock_ns(libc::CLOCK_MONOTONIC) as u64);
        let diff = wall.abs_diff(Clock::now_wall());
        assert!(diff < Duration::from_millis(50), "{diff:?}");
    }
}
