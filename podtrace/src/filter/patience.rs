//! Waiting for libpcap. Its optimizer cannot be interrupted, and on filters
//! of thousands of terms it runs for minutes and grows to gigabytes (5,000
//! `host` terms: still running after 20 CPU-minutes, at 2.7 GB). So the
//! compilation runs on a thread of its own while the caller watches for
//! SIGINT, SIGTERM and SIGHUP and for a deadline, and says what it is
//! waiting for once the wait gets long. Giving up leaves that thread to end
//! with the process: nothing is loaded or attached yet.
//!
//! Compiling without the optimizer is no way out: it is slow too on such
//! filters (its long jumps are laid out again and again) and its programs
//! are several times longer, past the 4096 instructions allowed at ~140
//! `host` terms. Measured here with libpcap 1.10.3, `host` terms (optimized
//! vs not): 200 in 3.5 s → 960 instructions vs 0.6 s → 5938; 400 in 25 s →
//! 2159 vs 2.7 s → 11938; 800 in 299 s → 4559 vs 17 s → 23938.

use std::{
    sync::{
        atomic::{AtomicI32, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use super::{compile, Filter, FilterError};

/// When to say that libpcap is still at it.
const NOTE_AFTER: Duration = Duration::from_secs(3);

/// The signals that stop a capture, and so a compilation.
const STOP_SIGNALS: [(libc::c_int, &str); 3] = [
    (libc::SIGINT, "SIGINT"),
    (libc::SIGTERM, "SIGTERM"),
    (libc::SIGHUP, "SIGHUP"),
];

/// The last stop signal received while handlers are installed; 0 for none.
static RECEIVED: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_stop_signal(signal: libc::c_int) {
    RECEIVED.store(signal, Ordering::Relaxed);
}

/// [`compile`], given up on a stop signal or at `deadline` (the end of
/// `--duration`, counted from the start of the run). After
/// [`NOTE_AFTER`], `note` is called once with the time waited so far.
pub fn compile_patiently(
    expression: &str,
    snaplen: u32,
    deadline: Option<Instant>,
    note: impl FnOnce(Duration),
) -> Result<Filter, FilterError> {
    let started = Instant::now();
    let _handlers = Handlers::install();
    let (tx, rx) = mpsc::channel();
    let owned = expression.to_owned();
    std::thread::Builder::new()
        .name("libpcap".into())
        .spawn(move || {
            let _ = tx.send(compile(&owned, snaplen));
        })
        .map_err(|_| FilterError::Pcap)?;
    let mut note = Some(note);
    loop {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(result) => return result,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            // The thread panicked: libpcap failed us.
            Err(mpsc::RecvTimeoutError::Disconnected) => return Err(FilterError::Pcap),
        }
        let signal = RECEIVED.swap(0, Ordering::Relaxed);
        if let Some((_, name)) = STOP_SIGNALS.iter().find(|(s, _)| *s == signal) {
            return Err(FilterError::Interrupted { signal: name });
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(FilterError::DurationElapsed {
                waited: started.elapsed(),
            });
        }
        if started.elapsed() >= NOTE_AFTER {
            if let Some(note) = note.take() {
                note(started.elapsed());
            }
        }
    }
}

/// Our handlers for the stop signals while they are installed, the
/// previous ones (the defaults) afterwards; a signal ignored from the start
/// (`nohup`) stays ignored.
struct Handlers {
    previous: Vec<(libc::c_int, libc::sigaction)>,
}

impl Handlers {
    fn install() -> Self {
        RECEIVED.store(0, Ordering::Relaxed);
        let mut previous = Vec::new();
        for (signal, _) in STOP_SIGNALS {
            // SAFETY: sigaction with valid pointers; the handler only
            // stores to an atomic, which is async-signal-safe.
            unsafe {
                let mut old: libc::sigaction = std::mem::zeroed();
                if libc::sigaction(signal, std::ptr::null(), &mut old) != 0
                    || old.sa_sigaction == libc::SIG_IGN
                {
                    continue;
                }
                let mut ours: libc::sigaction = std::mem::zeroed();
                ours.sa_sigaction = on_stop_signal as extern "C" fn(libc::c_int) as usize;
                libc::sigemptyset(&mut ours.sa_mask);
                if libc::sigaction(signal, &ours, std::ptr::null_mut()) == 0 {
                    previous.push((signal, old));
                }
            }
        }
        Self { previous }
    }
}

impl Drop for Handlers {
    fn drop(&mut self) {
        for (signal, old) in &self.previous {
            // SAFETY: restoring the disposition read in `install`.
            unsafe { libc::sigaction(*signal, old, std::ptr::null_mut()) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quick_filter_compiles_as_usual() {
        let mut noted = false;
        let f = compile_patiently("udp port 53", 262_144, None, |_| noted = true).unwrap();
        assert_eq!(f.insns, compile("udp port 53", 262_144).unwrap().insns);
        assert!(!noted);
        let err = compile_patiently("udp prt 53", 262_144, None, |_| {}).unwrap_err();
        assert!(matches!(err, FilterError::Invalid { .. }), "{err}");
    }

    #[test]
    fn a_deadline_ends_the_wait() {
        // Over 50 ms of optimizing (~0.5 s here): the deadline, already
        // past, ends the first wait for it. (The e2e suite stops real
        // minute-long compilations.)
        let hosts: Vec<String> = (0..120).map(|i| format!("host 10.9.0.{i}")).collect();
        let started = Instant::now();
        let err =
            compile_patiently(&hosts.join(" or "), 262_144, Some(started), |_| {}).unwrap_err();
        assert!(matches!(err, FilterError::DurationElapsed { .. }), "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        assert!(!err.is_bad_input());
    }
}
