//! Live progress on stderr for long captures to a file, when stderr is a
//! terminal: packets, bytes, rate, lost. Nothing at all otherwise.

use std::{
    io::{IsTerminal, Write},
    time::{Duration, Instant},
};

const EVERY: Duration = Duration::from_secs(1);

pub struct Progress {
    enabled: bool,
    started: Instant,
    last: Instant,
    shown: bool,
}

impl Progress {
    /// Shown only for file output (text output is the display itself).
    pub fn new(to_file: bool) -> Self {
        let now = Instant::now();
        Self {
            enabled: to_file && std::io::stderr().is_terminal(),
            started: now,
            last: now,
            shown: false,
        }
    }

    /// Redraws the line at most once a second.
    pub fn update(&mut self, packets: u64, bytes: u64, lost: impl FnOnce() -> u64) {
        if !self.enabled || self.last.elapsed() < EVERY {
            return;
        }
        self.last = Instant::now();
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        eprint!(
            "\r\x1b[K{}",
            line(packets, bytes, packets as f64 / secs, lost())
        );
        let _ = std::io::stderr().flush();
        self.shown = true;
    }

    /// Clears the line before the summary is printed.
    pub fn clear(&mut self) {
        if self.shown {
            eprint!("\r\x1b[K");
            self.shown = false;
        }
    }
}

fn line(packets: u64, bytes: u64, rate: f64, lost: u64) -> String {
    format!(
        "{packets} packets, {} captured, {rate:.0} packets/s, {lost} lost",
        human_bytes(bytes)
    )
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_line() {
        assert_eq!(
            line(1500, 3 << 20, 250.4, 0),
            "1500 packets, 3.0 MiB captured, 250 packets/s, 0 lost"
        );
        assert_eq!(human_bytes(512), "512 B");
    }
}
