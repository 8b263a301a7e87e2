//! Ring reader: drains the eBPF ring buffer and decodes its records.
//!
//! The programs submit without waking us (BPF_RB_NO_WAKEUP) unless the ring
//! is filling up, so the reader drains on a short timer and on readiness.
//! Records are decoded in place: the packet bytes handed to sinks borrow the
//! ring's memory until the callback returns.

use std::{
    os::fd::AsRawFd,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use aya::maps::{MapData, RingBuf};
use podtrace_common::{RecordHeader, HOOK_EGRESS, HOOK_INGRESS, RECORD_HEADER_LEN};
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
    /// host end of a target's veth the view flips.
    pub fn from_hook(hook: u8, peer_is_target: bool) -> Option<Self> {
        let host_view = match hook {
            HOOK_INGRESS => Self::In,
            HOOK_EGRESS => Self::Out,
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
        let ns = (i128::from(monotonic_ns) + self.offset_ns).max(0);
        Duration::new((ns / 1_000_000_000) as u64, (ns % 1_000_000_000) as u32)
    }

    pub fn now_wall() -> Duration {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
    }
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
    ring: AsyncFd<RingBuf<MapData>>,
    /// Records the decoder rejected (never expected; counted, not fatal).
    pub malformed: u64,
}

impl RingReader {
    pub fn new(ring: RingBuf<MapData>) -> std::io::Result<Self> {
        debug_assert!(ring.as_raw_fd() >= 0);
        Ok(Self {
            // SAFETY: the AsyncFd owns the ring, so its fd outlives the registration.
            ring: unsafe { AsyncFd::register(ring) }.map_err(std::io::Error::from)?,
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
        let ring = self.ring.get_mut();
        while let Some(item) = ring.next() {
            match decode(&item) {
                Ok(record) => {
                    n += 1;
                    if !f(record)? {
                        break;
                    }
                }
                Err(_) => self.malformed += 1,
            }
        }
        Ok(n)
    }
}

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
