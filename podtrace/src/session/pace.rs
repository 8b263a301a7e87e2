//! When to drain the ring next. The programs submit without waking us (see
//! podtrace-ebpf's module doc), so a timer drains the ring; while nothing
//! arrives, e.g. under a filter that matches nothing, the timer slows down so
//! an idle capture does not wake 33 times a second on a busy node.

use std::time::Duration;

/// The drain interval while packets arrive. Each wakeup has a fixed cost (a
/// cold cache, mostly): at 300 kpps a 10 ms tick cost ~60 ns of CPU per
/// packet, 30 ms ~52 ns, longer no better (see BENCHMARKS.md). The programs
/// force a wakeup once the ring is a quarter full, so a burst never waits.
pub const BUSY: Duration = Duration::from_millis(30);

/// The slowest drain interval, reached after ~200 ms without packets: the
/// first packet after a quiet spell is written at most this late (tcpdump
/// waits up to 1 s for its ring block).
pub const IDLE: Duration = Duration::from_millis(240);

/// The interval doubles after every drain that found nothing and falls back
/// to [`BUSY`] as soon as one finds a record.
#[derive(Debug, Clone, Copy)]
pub struct DrainPace {
    next: Duration,
}

impl Default for DrainPace {
    fn default() -> Self {
        Self { next: BUSY }
    }
}

impl DrainPace {
    /// The wait before the next drain, given how many records this one read.
    pub fn after(&mut self, records: u64) -> Duration {
        self.next = if records > 0 {
            BUSY
        } else {
            (self.next * 2).min(IDLE)
        };
        self.next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slows_down_while_idle_and_snaps_back_on_traffic() {
        let mut pace = DrainPace::default();
        let idle: Vec<_> = (0..5).map(|_| pace.after(0).as_millis()).collect();
        assert_eq!(idle, [60, 120, 240, 240, 240]);
        assert_eq!(pace.after(1), BUSY);
        assert_eq!(pace.after(0).as_millis(), 60);
    }

    #[test]
    fn stays_busy_while_records_arrive() {
        let mut pace = DrainPace::default();
        assert!((0..10).all(|_| pace.after(3) == BUSY));
    }
}
