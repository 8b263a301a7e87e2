//! tcpdump's file rotation: `-C` (size, millions of bytes), `-G` (seconds,
//! strftime names), `-W` (a ring of N files with -C; stop after N files with
//! -G), with tcpdump's file names. A packet is never split or repeated across
//! files: the decision is made before each packet is written.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{Packet, Sink, SinkError, Stats};

/// What `-C`, `-G` and `-W` asked for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rotation {
    /// `-C MB`: start a new file once the current one exceeds this many bytes.
    pub size: Option<u64>,
    /// `-G SECS`: start a new file every interval (by packet time).
    pub interval: Option<Duration>,
    /// `-W N`.
    pub max_files: Option<u32>,
}

impl Rotation {
    pub fn is_active(&self) -> bool {
        self.size.is_some() || self.interval.is_some()
    }
}

type OpenFile = Box<dyn FnMut(&str) -> Result<Box<dyn Sink>, SinkError>>;

pub struct RotatingSink {
    base: String,
    rotation: Rotation,
    open: OpenFile,
    current: Box<dyn Sink>,
    /// The -C counter (reset when -G starts a new period).
    count: u32,
    /// Start of the current -G period (wall clock since the epoch).
    period_start: Duration,
    /// Files opened for -G periods, for `-G … -W N`.
    periods: u32,
    done: bool,
}

impl RotatingSink {
    pub fn new(base: &str, rotation: Rotation, mut open: OpenFile) -> Result<Self, SinkError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let first = file_name(base, &rotation, now, 0);
        Ok(Self {
            base: base.to_owned(),
            rotation,
            current: open(&first)?,
            open,
            count: 0,
            period_start: now,
            periods: 1,
            done: false,
        })
    }

    fn rotate(&mut self, time: Duration) -> Result<(), SinkError> {
        self.current.flush()?;
        let name = file_name(&self.base, &self.rotation, time, self.count);
        self.current = (self.open)(&name)?;
        Ok(())
    }
}

impl Sink for RotatingSink {
    fn write(&mut self, packet: &Packet<'_>) -> Result<(), SinkError> {
        if self.done {
            return Ok(());
        }
        if let Some(interval) = self.rotation.interval {
            if packet.ts >= self.period_start + interval {
                if self
                    .rotation
                    .max_files
                    .is_some_and(|max| self.periods >= max)
                {
                    self.done = true;
                    return Ok(());
                }
                self.periods += 1;
                self.count = 0;
                // Periods are aligned to when the last one started, as tcpdump does.
                while packet.ts >= self.period_start + interval {
                    self.period_start += interval;
                }
                self.rotate(packet.ts)?;
            }
        }
        if let Some(limit) = self.rotation.size {
            if self.current.bytes_written() > limit {
                self.count += 1;
                if let (Some(max), None) = (self.rotation.max_files, self.rotation.interval) {
                    self.count %= max;
                }
                self.rotate(packet.ts)?;
            }
        }
        self.current.write(packet)
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        self.current.flush()
    }

    fn finish(&mut self, stats: &Stats) -> Result<(), SinkError> {
        self.current.finish(stats)
    }

    fn done(&self) -> bool {
        self.done
    }
}

/// tcpdump's name for file number `count`: the -w name (strftime-expanded
/// with -G), then the count — none for the first file unless -W asks for a
/// fixed width.
pub fn file_name(base: &str, rotation: &Rotation, time: Duration, count: u32) -> String {
    let stem = match rotation.interval {
        Some(_) => strftime(base, time),
        None => base.to_owned(),
    };
    let width = rotation
        .max_files
        .map_or(0, |n| n.saturating_sub(1).max(1).to_string().len());
    if count == 0 && width == 0 {
        stem
    } else {
        format!("{stem}{count:0width$}")
    }
}

/// strftime(3) in local time.
fn strftime(format: &str, time: Duration) -> String {
    let Ok(cfmt) = std::ffi::CString::new(format) else {
        return format.to_owned();
    };
    let secs = time.as_secs() as libc::time_t;
    // SAFETY: zeroed tm is valid; localtime_r and strftime get valid pointers
    // and the buffer's real size.
    unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        libc::localtime_r(&secs, &mut tm);
        let mut buf = vec![0u8; 4096];
        let n = libc::strftime(buf.as_mut_ptr().cast(), buf.len(), cfmt.as_ptr(), &tm);
        buf.truncate(n);
        String::from_utf8_lossy(&buf).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rot(size: Option<u64>, interval: Option<u64>, max: Option<u32>) -> Rotation {
        Rotation {
            size,
            interval: interval.map(Duration::from_secs),
            max_files: max,
        }
    }

    #[test]
    fn size_rotation_names_like_tcpdump() {
        let r = rot(Some(1), None, None);
        let t = Duration::ZERO;
        assert_eq!(file_name("x.pcap", &r, t, 0), "x.pcap");
        assert_eq!(file_name("x.pcap", &r, t, 1), "x.pcap1");
        assert_eq!(file_name("x.pcap", &r, t, 12), "x.pcap12");
    }

    #[test]
    fn ring_of_files_is_zero_padded() {
        let t = Duration::ZERO;
        assert_eq!(file_name("x", &rot(Some(1), None, Some(3)), t, 0), "x0");
        assert_eq!(file_name("x", &rot(Some(1), None, Some(10)), t, 0), "x0");
        assert_eq!(file_name("x", &rot(Some(1), None, Some(11)), t, 3), "x03");
        assert_eq!(file_name("x", &rot(Some(1), None, Some(100)), t, 7), "x07");
    }

    #[test]
    fn time_rotation_expands_strftime() {
        std::env::set_var("TZ", "UTC");
        let r = rot(None, Some(60), None);
        let t = Duration::from_secs(1_700_000_000);
        assert_eq!(
            file_name("cap-%Y%m%d-%H%M%S.pcap", &r, t, 0),
            "cap-20231114-221320.pcap"
        );
        // Without -G the name is taken literally.
        assert_eq!(
            file_name("cap-%H.pcap", &rot(Some(1), None, None), t, 0),
            "cap-%H.pcap"
        );
    }
}
