//! The capture loop: load, attach, drain the ring into a sink, stop cleanly.
//!
//! Order on every way out (count, duration, signal, target gone, write
//! error): detach first so no new packets arrive, then drain what the
//! programs already put in the ring, then flush. Nothing the programs saw
//! before the stop is lost.

mod pace;

use std::{
    collections::HashMap,
    path::Path,
    time::{Duration, Instant},
};

use tokio::{
    signal::unix::{signal, SignalKind},
    time::sleep_until,
};

use self::pace::DrainPace;
use crate::{
    attach::{
        AttachError, DirectionFilter, FilterEngine, Hooks, KernelCounters, LoadOptions, Programs,
        TcMode,
    },
    filter::Filter,
    link::HostLink,
    progress::Progress,
    ring::{Clock, Direction, RingReader},
    sink::{self, Interface, Output, Packet, Sink, SinkError, SinkOptions, Stats},
};

/// How often we check that the captured interfaces still exist.
const LINK_CHECK_INTERVAL: Duration = Duration::from_millis(500);

/// One thing being captured: its host link and how to talk about it.
#[derive(Debug, Clone)]
pub struct Target {
    pub link: HostLink,
    /// For messages: "pod default/web", "interface eth0".
    pub label: String,
    /// Said when its link disappears mid-capture.
    pub gone: String,
    /// How file formats that describe interfaces (pcapng) show it.
    pub interface: Interface,
}

impl Target {
    pub fn new(link: HostLink, label: String) -> Self {
        let gone = format!("{label} is gone (host interface {} was removed)", link.name);
        let interface = Interface {
            ifindex: link.ifindex,
            name: link.name.clone(),
            description: format!(
                "{label} (host interface {}, ifindex {})",
                link.name, link.ifindex
            ),
        };
        Self {
            link,
            label,
            gone,
            interface,
        }
    }
}

/// Everything a capture needs, resolved from the command line.
#[derive(Debug, Clone)]
pub struct CapturePlan {
    pub targets: Vec<Target>,
    /// Output, format, rotation; its snaplen is also the kernel's.
    pub sink: SinkOptions,
    pub count: Option<u64>,
    pub duration: Option<Duration>,
    pub ring_bytes: u32,
    pub tc_mode: TcMode,
    pub filter_engine: FilterEngine,
    pub direction: DirectionFilter,
    /// Run in the kernel on every packet; `None` captures everything.
    pub filter: Option<Filter>,
    /// A wakeup per packet instead of a drain every tick (`--immediate-mode`).
    pub immediate: bool,
}

/// Why the capture ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    Count,
    Duration,
    /// `-G … -W N`: the N files are written.
    FileLimit,
    Signal(&'static str),
    /// Every captured interface disappeared (pod deleted, netns removed).
    TargetGone(String),
    /// The reader of our output went away (`| head`).
    BrokenPipe,
}

#[derive(Debug, Clone)]
pub struct Summary {
    pub captured: u64,
    pub kernel: KernelCounters,
    pub reason: StopReason,
    /// Whether a filter ran (the line then says how many it rejected).
    pub filtered: bool,
}

impl Summary {
    /// The line printed on stderr at exit.
    pub fn line(&self) -> String {
        if self.filtered {
            format!(
                "{} packets captured, {} filtered, {} lost in kernel",
                self.captured, self.kernel.filtered, self.kernel.lost
            )
        } else {
            format!(
                "{} packets captured, {} lost in kernel",
                self.captured, self.kernel.lost
            )
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error(transparent)]
    Attach(#[from] AttachError),
    #[error("cannot watch the ring buffer: {0}")]
    Ring(std::io::Error),
    #[error("cannot install signal handlers: {0}")]
    Signal(std::io::Error),
}

/// Runs a capture to the end; `on_start` is called once everything is
/// attached (the "listening on" message).
pub async fn run(
    plan: CapturePlan,
    on_start: impl FnOnce(&Programs),
) -> Result<Summary, CaptureError> {
    // Open the output before touching the kernel: a bad path attaches nothing.
    let mut sink = sink::open(&plan.sink)?;
    let started_ns = sink::now_ns();
    let mut programs = Programs::load(LoadOptions {
        snaplen: plan.sink.snaplen,
        ring_bytes: plan.ring_bytes,
        filter: plan.filter.as_ref().map_or(&[], |f| &f.insns),
        engine: plan.filter_engine,
        slow_loads_only: false,
        immediate: plan.immediate,
    })?;
    if let Some(engine) = programs.engine_used {
        crate::verbose(format_args!("filter engine: {engine:?}"));
    }
    let mut reader = RingReader::new(programs.take_ring()?).map_err(CaptureError::Ring)?;
    for target in &plan.targets {
        let hooks = Hooks::for_direction(plan.direction, target.link.peer_is_target);
        programs.attach(&target.link, hooks, plan.tc_mode)?;
    }
    let clock = Clock::measure();
    let mut sigint = signal(SignalKind::interrupt()).map_err(CaptureError::Signal)?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(CaptureError::Signal)?;
    // A dropped SSH session hangs up a foreground capture: stop as on
    // Ctrl-C (tcpdump does too), unless started under nohup.
    let mut sighup = match hangup_ignored() {
        true => None,
        false => Some(signal(SignalKind::hangup()).map_err(CaptureError::Signal)?),
    };
    on_start(&programs);

    let mut state = Drain {
        last_link: None,
        clock,
        captured: 0,
        bytes: 0,
        per_ifindex: Default::default(),
        limit: plan.count.unwrap_or(u64::MAX),
    };
    let mut progress = Progress::new(plan.sink.output != Output::Text);
    let deadline = plan.duration.map(|d| tokio::time::Instant::now() + d);
    let mut pace = DrainPace::default();
    let mut next_drain = tokio::time::Instant::now() + pace::BUSY;
    let mut last_link_check = Instant::now();

    let outcome: Result<StopReason, SinkError> = loop {
        tokio::select! {
            _ = sleep_until(next_drain) => {}
            ready = reader.readable() => ready.map_err(CaptureError::Ring)?,
            _ = sigint.recv() => break Ok(StopReason::Signal("SIGINT")),
            _ = sigterm.recv() => break Ok(StopReason::Signal("SIGTERM")),
            _ = recv(&mut sighup) => break Ok(StopReason::Signal("SIGHUP")),
            _ = sleep_until(deadline.unwrap_or_else(far_future)), if deadline.is_some() => {
                break Ok(StopReason::Duration)
            }
        }
        match state.drain(&mut reader, &programs, sink.as_mut()) {
            Ok(records) => next_drain = tokio::time::Instant::now() + pace.after(records),
            Err(e) => break Err(e),
        }
        if state.captured >= state.limit {
            break Ok(StopReason::Count);
        }
        if sink.done() {
            break Ok(StopReason::FileLimit);
        }
        progress.update(state.captured, state.bytes, || programs.counters().lost);
        if last_link_check.elapsed() >= LINK_CHECK_INTERVAL {
            last_link_check = Instant::now();
            if let Some(gone) = all_links_gone(&plan.targets) {
                break Ok(StopReason::TargetGone(gone));
            }
        }
    };

    programs.detach_all();
    let outcome = match outcome {
        // Whatever the programs put in the ring before detaching still counts.
        Ok(reason) => state
            .drain(&mut reader, &programs, sink.as_mut())
            .map(|_| reason),
        Err(e) => Err(e),
    };
    let reason = match outcome {
        Ok(reason) => reason,
        Err(e) if e.is_broken_pipe() => StopReason::BrokenPipe,
        Err(e) => return Err(e.into()),
    };
    progress.clear();
    let kernel = programs.counters();
    if reason != StopReason::BrokenPipe {
        let stats = Stats {
            received: kernel.seen,
            dropped: kernel.lost,
            filtered: kernel.filtered,
            started_ns,
            captured_per_ifindex: state.per_ifindex.totals(),
        };
        match sink.finish(&stats) {
            Err(e) if e.is_broken_pipe() => {}
            other => other?,
        }
    }
    Ok(Summary {
        captured: state.captured,
        kernel,
        reason,
        filtered: plan.filter.is_some(),
    })
}

struct Drain {
    /// The last record's ifindex and whether its peer is the target: records
    /// come in runs from one link, and hashing per packet showed in profiles.
    last_link: Option<(u32, bool)>,
    clock: Clock,
    captured: u64,
    bytes: u64,
    per_ifindex: PerIfindex,
    limit: u64,
}

/// Packets written per interface, for pcapng's statistics. Counted per run
/// of records from one interface, so the map is not touched per packet.
#[derive(Default)]
struct PerIfindex {
    done: HashMap<u32, u64>,
    run: Option<(u32, u64)>,
}

impl PerIfindex {
    fn add(&mut self, ifindex: u32) {
        match &mut self.run {
            Some((current, n)) if *current == ifindex => *n += 1,
            run => {
                if let Some((previous, n)) = run.replace((ifindex, 1)) {
                    *self.done.entry(previous).or_default() += n;
                }
            }
        }
    }

    fn totals(&self) -> HashMap<u32, u64> {
        let mut totals = self.done.clone();
        if let Some((ifindex, n)) = self.run {
            *totals.entry(ifindex).or_default() += n;
        }
        totals
    }
}

impl Drain {
    fn drain(
        &mut self,
        reader: &mut RingReader,
        programs: &Programs,
        sink: &mut dyn Sink,
    ) -> Result<u64, SinkError> {
        let before = self.captured;
        let records = reader.drain(|record| {
            if self.captured >= self.limit {
                return Ok(false);
            }
            let ifindex = record.header.ifindex;
            let peer_is_target = match self.last_link {
                Some((last, peer_is_target)) if last == ifindex => peer_is_target,
                _ => {
                    let peer_is_target = programs.link(ifindex).is_some_and(|l| l.peer_is_target);
                    self.last_link = Some((ifindex, peer_is_target));
                    peer_is_target
                }
            };
            let Some(direction) = Direction::from_hook(record.header.hook, peer_is_target) else {
                return Ok(true);
            };
            sink.write(&Packet {
                ts: self.clock.to_wall(record.header.ts_ns),
                ifindex: record.header.ifindex,
                direction,
                orig_len: record.header.orig_len,
                data: record.data,
            })?;
            if sink.done() {
                // Rotation reached its file limit: this one was not written.
                return Ok(false);
            }
            self.captured += 1;
            self.bytes += record.data.len() as u64;
            self.per_ifindex.add(record.header.ifindex);
            Ok(true)
        })?;
        if self.captured != before {
            sink.flush()?;
        }
        Ok(records)
    }
}

/// A message if none of the captured interfaces exists any more.
fn all_links_gone(targets: &[Target]) -> Option<String> {
    let exists = |l: &HostLink| {
        std::fs::read_to_string(Path::new("/sys/class/net").join(&l.name).join("ifindex"))
            .ok()
            .and_then(|s| crate::link::parse_ifindex(&s))
            == Some(l.ifindex)
    };
    if targets.iter().any(|t| exists(&t.link)) {
        return None;
    }
    Some(targets.first()?.gone.clone())
}

/// Whether SIGHUP was set to be ignored when podtrace started (`nohup`).
fn hangup_ignored() -> bool {
    // SAFETY: a query only (no new action); `old` is a valid out pointer.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(libc::SIGHUP, std::ptr::null(), &mut old) == 0
            && old.sa_sigaction == libc::SIG_IGN
    }
}

/// The next delivery of a signal that may not be watched at all.
async fn recv(signal: &mut Option<tokio::signal::unix::Signal>) {
    match signal {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending().await,
    }
}

fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(86400 * 365)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_ifindex_counts_runs_and_switches() {
        let mut counts = PerIfindex::default();
        for ifindex in [3, 3, 7, 3, 3, 3, 7] {
            counts.add(ifindex);
        }
        assert_eq!(counts.totals(), HashMap::from([(3, 5), (7, 2)]));
        assert!(PerIfindex::default().totals().is_empty());
    }

    #[test]
    fn summary_line_names_filtered_only_with_a_filter() {
        let mut summary = Summary {
            captured: 5,
            kernel: KernelCounters {
                seen: 9,
                lost: 1,
                filtered: 3,
            },
            reason: StopReason::Count,
            filtered: false,
        };
        assert_eq!(summary.line(), "5 packets captured, 1 lost in kernel");
        summary.filtered = true;
        assert_eq!(
            summary.line(),
            "5 packets captured, 3 filtered, 1 lost in kernel"
        );
    }
}
