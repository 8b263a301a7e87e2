//! tcpdump's file rotation: `-C` (size, millions of bytes), `-G` (seconds,
//! strftime names), `-W` (a ring of N files with -C; stop after N files with
//! -G), with tcpdump's file names. A packet is never split or repeated across
//! files: the decision is made before each packet is written. Every new file
//! starts by describing the interfaces in the capture at that moment, so each
//! file stands alone.

use std::{
    collections::BTreeMap,
    ffi::{OsStr, OsString},
    os::unix::ffi::{OsStrExt, OsStringExt},
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use super::{Interface, InterfaceId, Packet, Sink, SinkError, Stats};

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

type OpenFile = Box<dyn FnMut(&Path) -> Result<Box<dyn Sink>, SinkError>>;

pub struct RotatingSink {
    base: PathBuf,
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
    /// The interfaces in the capture now, restated in every new file.
    live: BTreeMap<InterfaceId, Interface>,
}

impl RotatingSink {
    pub fn new(base: &Path, rotation: Rotation, mut open: OpenFile) -> Result<Self, SinkError> {
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
            live: BTreeMap::new(),
        })
    }

    fn rotate(&mut self, time: Duration) -> Result<(), SinkError> {
        self.current.flush()?;
        let name = file_name(&self.base, &self.rotation, time, self.count);
        self.current = (self.open)(&name)?;
        for (&id, iface) in &self.live {
            self.current.add_interface(id, iface)?;
        }
        Ok(())
    }
}

impl Sink for RotatingSink {
    fn add_interface(&mut self, id: InterfaceId, iface: &Interface) -> Result<(), SinkError> {
        self.live.insert(id, iface.clone());
        self.current.add_interface(id, iface)
    }

    fn remove_interface(&mut self, id: InterfaceId, stats: &Stats) -> Result<(), SinkError> {
        self.live.remove(&id);
        self.current.remove_interface(id, stats)
    }

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

    fn finish(&mut self, live: &[(InterfaceId, Stats)]) -> Result<(), SinkError> {
        self.current.finish(live)
    }

    fn done(&self) -> bool {
        self.done
    }
}

/// tcpdump's name for file number `count`: the -w name (strftime-expanded
/// with -G), then the count — none for the first file unless -W asks for a
/// fixed width. Names are bytes, as paths are.
pub fn file_name(base: &Path, rotation: &Rotation, time: Duration, count: u32) -> PathBuf {
    let stem = match rotation.interval {
        Some(_) => strftime(base.as_os_str(), time),
        None => base.as_os_str().to_owned(),
    };
    let width = rotation
        .max_files
        .map_or(0, |n| n.saturating_sub(1).max(1).to_string().len());
    let mut name = stem.into_vec();
    if count != 0 || width != 0 {
        name.extend_from_slice(format!("{count:0width$}").as_bytes());
    }
    PathBuf::from(OsString::from_vec(name))
}

/// strftime(3) in local time, on bytes.
fn strftime(format: &OsStr, time: Duration) -> OsString {
    let Ok(cfmt) = std::ffi::CString::new(format.as_bytes()) else {
        return format.to_owned();
    };
    let tm = super::local_time(time.as_secs());
    // SAFETY: strftime gets valid pointers and the buffer's real size.
    unsafe {
        let mut buf = vec![0u8; 4096];
        let n = libc::strftime(buf.as_mut_ptr().cast(), buf.len(), cfmt.as_ptr(), &tm);
        buf.truncate(n);
        OsString::from_vec(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_name(base: &str, rotation: &Rotation, time: Duration, count: u32) -> String {
        super::file_name(Path::new(base), rotation, time, count)
            .to_string_lossy()
            .into_owned()
    }

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

    #[test]
    fn names_are_bytes_not_text() {
        let base = Path::new(OsStr::from_bytes(b"cap-\xff-%H.pcap"));
        let r = rot(None, Some(60), Some(3));
        let name = super::file_name(base, &r, Duration::from_secs(3600 * 5), 2);
        assert_eq!(name.as_os_str().as_bytes(), b"cap-\xff-05.pcap2");
    }

    /// Records what a file sink is asked to do.
    #[derive(Default)]
    struct Log(std::rc::Rc<std::cell::RefCell<Vec<String>>>);

    impl Sink for Log {
        fn add_interface(&mut self, id: InterfaceId, iface: &Interface) -> Result<(), SinkError> {
            self.0.borrow_mut().push(format!("add {id} {}", iface.name));
            Ok(())
        }
        fn remove_interface(&mut self, id: InterfaceId, _: &Stats) -> Result<(), SinkError> {
            self.0.borrow_mut().push(format!("remove {id}"));
            Ok(())
        }
        fn write(&mut self, p: &Packet<'_>) -> Result<(), SinkError> {
            self.0.borrow_mut().push(format!("packet {}", p.interface));
            Ok(())
        }
        fn flush(&mut self) -> Result<(), SinkError> {
            Ok(())
        }
        fn bytes_written(&self) -> u64 {
            // Over -C 1 after every packet.
            self.0
                .borrow()
                .iter()
                .filter(|l| l.starts_with("packet"))
                .count() as u64
                * 2_000_000
        }
    }

    #[test]
    fn every_new_file_describes_the_interfaces_in_the_capture() {
        let files = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
        let opened = files.clone();
        let open: OpenFile = Box::new(move |name| {
            let log = Log::default();
            opened.borrow_mut().push((name.to_owned(), log.0.clone()));
            Ok(Box::new(log))
        });
        let mut sink = RotatingSink::new(Path::new("r"), rot(Some(1), None, None), open).unwrap();
        let iface = |name: &str| Interface {
            name: name.into(),
            description: String::new(),
        };
        let packet = |interface| Packet {
            ts: Duration::ZERO,
            interface,
            direction: crate::ring::Direction::In,
            orig_len: 1,
            data: &[0],
        };
        sink.add_interface(0, &iface("a/one")).unwrap();
        sink.add_interface(1, &iface("a/two")).unwrap();
        sink.write(&packet(0)).unwrap();
        sink.remove_interface(0, &Stats::default()).unwrap();
        sink.write(&packet(1)).unwrap();
        let files = files.borrow();
        let logs: Vec<(String, Vec<String>)> = files
            .iter()
            .map(|(name, log)| (name.display().to_string(), log.borrow().clone()))
            .collect();
        assert_eq!(
            logs,
            [
                (
                    "r".into(),
                    vec![
                        "add 0 a/one".into(),
                        "add 1 a/two".into(),
                        "packet 0".into(),
                        "remove 0".into()
                    ]
                ),
                ("r1".into(), vec!["add 1 a/two".into(), "packet 1".into()]),
            ]
        );
    }
}
