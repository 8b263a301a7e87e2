//! The session's loop: load, attach the first targets, drain the ring into
//! the sink while targets come and go, stop cleanly.
//!
//! Order on every way out (count, duration, signal, the last target gone,
//! write error): detach first so no new packets arrive, then drain what the
//! programs already put in the ring, then write the statistics and flush.
//! Nothing the programs saw before the stop is lost.

use std::time::Duration;

use tokio::{
    signal::unix::{signal, SignalKind},
    sync::mpsc::UnboundedReceiver,
    time::sleep_until,
};

use super::{
    inbound::CHECK_EVERY,
    pace::{self, DrainPace},
    ApplyError, Change, Fallback, Session, SessionOptions,
};
use crate::{
    attach::{
        AttachError, DirectionFilter, FilterEngine, KernelCounters, LoadOptions, Programs, TcMode,
    },
    filter::Filter,
    link::PathReader,
    progress::Progress,
    ring::{monotonic_ns, Clock, RingReader},
    sink::{self, Output, SinkError, SinkOptions},
};

/// Everything a capture needs, resolved from the command line.
#[derive(Debug, Clone)]
pub struct CapturePlan {
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
    /// Most links attached at once, each counted on its own.
    pub max_links: u32,
    /// What to do about packets a CNI delivers into pods past their veth.
    pub fallback: Fallback,
    /// The targets may be pods (or namespaces), whose eth0 may be hooked:
    /// not host interfaces (`-i`).
    pub pods: bool,
}

/// Why the capture ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    Count,
    Duration,
    /// `-G … -W N`: the N files are written.
    FileLimit,
    Signal(&'static str),
    /// What was captured is gone and nothing can replace it (a single pod
    /// deleted, a network namespace removed).
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
    /// Packets that reached pods past their host veth, not captured.
    pub missed: u64,
    /// One line about each pod that had such packets.
    pub notes: Vec<String>,
}

impl Summary {
    /// The line printed on stderr at exit.
    pub fn line(&self) -> String {
        let mut line = if self.filtered {
            format!(
                "{} packets captured, {} filtered, {} lost in kernel",
                self.captured, self.kernel.filtered, self.kernel.lost
            )
        } else {
            format!(
                "{} packets captured, {} lost in kernel",
                self.captured, self.kernel.lost
            )
        };
        if self.missed > 0 {
            line.push_str(&format!(
                ", {} missed (delivered past the host veth)",
                self.missed
            ));
        }
        line
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
    #[error("cannot read the pods' link counters: {0}")]
    Counters(std::io::Error),
}

impl From<ApplyError> for CaptureError {
    fn from(e: ApplyError) -> Self {
        match e {
            ApplyError::Attach(e) => Self::Attach(e),
            ApplyError::Sink(e) => Self::Sink(e),
        }
    }
}

/// Runs a capture to the end. `initial` are the targets there are at the
/// start (attaching one must work, or nothing runs); `changes` brings the
/// watcher's news while it runs. `on_start` is called once everything is
/// attached (the "capturing on" line).
pub async fn run(
    plan: CapturePlan,
    initial: Vec<Change>,
    mut changes: UnboundedReceiver<Change>,
    on_start: impl FnOnce(&Session<Programs>),
) -> Result<Summary, CaptureError> {
    // Open the output before touching the kernel: a bad path attaches nothing.
    let sink = sink::open(&plan.sink)?;
    let loading = std::time::Instant::now();
    let mut programs = Programs::load(LoadOptions {
        snaplen: plan.sink.snaplen,
        ring_bytes: plan.ring_bytes,
        filter: plan.filter.as_ref().map_or(&[], |f| &f.insns),
        engine: plan.filter_engine,
        slow_loads_only: false,
        immediate: plan.immediate,
        links: plan.max_links,
    })?;
    crate::verbose(format_args!(
        "programs loaded in {:.1} ms",
        loading.elapsed().as_secs_f64() * 1e3
    ));
    if let Some(engine) = programs.engine_used {
        crate::verbose(format_args!("filter engine: {engine:?}"));
    }
    if plan.fallback != Fallback::Never && plan.pods {
        programs.load_eth0()?;
    }
    let mut reader = RingReader::new(programs.take_ring()?).map_err(CaptureError::Ring)?;
    let probe = PathReader::open().map_err(CaptureError::Counters)?;
    let mut session = Session::new(
        programs,
        sink,
        Box::new(probe),
        SessionOptions {
            direction: plan.direction,
            tc_mode: plan.tc_mode,
            limit: plan.count.unwrap_or(u64::MAX),
            fallback: plan.fallback,
        },
    );
    let attaching = std::time::Instant::now();
    let targets = initial.len();
    for change in initial {
        session.apply(change)?;
    }
    crate::verbose(format_args!(
        "attached to {targets} target(s) in {:.1} ms",
        attaching.elapsed().as_secs_f64() * 1e3
    ));
    // Readers of a pipe see the interfaces at once.
    session.settle(true)?;
    say(&mut session);
    let clock = Clock::measure();
    let mut sigint = signal(SignalKind::interrupt()).map_err(CaptureError::Signal)?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(CaptureError::Signal)?;
    // A dropped SSH session hangs up a foreground capture: stop as on
    // Ctrl-C (tcpdump does too), unless started under nohup.
    let mut sighup = match hangup_ignored() {
        true => None,
        false => Some(signal(SignalKind::hangup()).map_err(CaptureError::Signal)?),
    };
    on_start(&session);

    let mut progress = Progress::new(plan.sink.output != Output::Text);
    let deadline = plan.duration.map(|d| tokio::time::Instant::now() + d);
    let mut pace = DrainPace::default();
    let mut next_drain = tokio::time::Instant::now() + pace::BUSY;
    let mut next_check = tokio::time::Instant::now() + CHECK_EVERY;
    let mut watching = true;

    let outcome: Result<StopReason, SinkError> = loop {
        tokio::select! {
            _ = sleep_until(next_drain) => {}
            _ = sleep_until(next_check) => {}
            ready = reader.readable() => ready.map_err(CaptureError::Ring)?,
            _ = sigint.recv() => break Ok(StopReason::Signal("SIGINT")),
            _ = sigterm.recv() => break Ok(StopReason::Signal("SIGTERM")),
            _ = recv(&mut sighup) => break Ok(StopReason::Signal("SIGHUP")),
            _ = sleep_until(deadline.unwrap_or_else(far_future)), if deadline.is_some() => {
                break Ok(StopReason::Duration)
            }
            change = changes.recv(), if watching => match change {
                Some(change) => apply_later(&mut session, change),
                // The watcher ended: the targets there are stay.
                None => watching = false,
            },
        }
        let drained_from = monotonic_ns();
        match drain(&mut reader, &mut session, &clock) {
            Ok(records) => next_drain = tokio::time::Instant::now() + pace.after(records),
            Err(e) => break Err(e),
        }
        if tokio::time::Instant::now() >= next_check {
            // After a drain: a handover ends only once its last records are in.
            session.check_inbound(monotonic_ns(), drained_from);
            next_check = tokio::time::Instant::now() + CHECK_EVERY;
        }
        say(&mut session);
        if let Some(reason) = session.stop_reason() {
            break Ok(reason.clone());
        }
        progress.update(session.captured, session.bytes, || session.totals().lost);
    };

    session.detach_all();
    let outcome = match outcome {
        // Whatever the programs put in the ring before detaching still counts.
        Ok(reason) => drain(&mut reader, &mut session, &clock).map(|_| reason),
        Err(e) => Err(e),
    };
    let reason = match outcome {
        Ok(reason) => reason,
        Err(e) if e.is_broken_pipe() => StopReason::BrokenPipe,
        Err(e) => return Err(e.into()),
    };
    progress.clear();
    if reason != StopReason::BrokenPipe {
        match session.finish() {
            Err(e) if e.is_broken_pipe() => {}
            other => other?,
        }
    }
    say(&mut session);
    let (missed, notes) = session.missed();
    Ok(Summary {
        captured: session.captured,
        kernel: session.totals(),
        reason,
        filtered: plan.filter.is_some(),
        missed,
        notes,
    })
}

/// Shows the session's warnings and notices.
fn say(session: &mut Session<Programs>) {
    for note in session.take_notes() {
        eprintln!("podtrace: {note}");
    }
}

/// A change while the capture runs: a target that cannot be attached is
/// reported and left out, the rest goes on.
fn apply_later(session: &mut Session<Programs>, change: Change) {
    let what = match &change {
        Change::Add(target) => target.label.clone(),
        Change::Provisional(link) => format!("host link {}", link.name),
        _ => String::new(),
    };
    if let Err(e) = session.apply(change) {
        eprintln!("podtrace: {what}: {}", crate::error_chain(&e));
    }
    say(session);
}

/// Drains the ring into the session; returns how many records it read.
fn drain(
    reader: &mut RingReader,
    session: &mut Session<Programs>,
    clock: &Clock,
) -> Result<u64, SinkError> {
    let before = session.captured;
    let records = reader.drain(|record| session.record(&record, clock))?;
    session.settle(session.captured != before)?;
    Ok(records)
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
