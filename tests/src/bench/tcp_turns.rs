//! Table 5d: what podtrace costs one TCP stream (with a filter matching
//! nothing, and without a filter as the check), measured in turns inside one
//! iperf3 stream: podtrace is started and stopped again and
//! again while the stream runs, and each stretch with podtrace attached is
//! compared with the stretches without it just before and after.
//!
//! Why not separate runs (table 5a): the goal is 1%, and on this VM the
//! throughput of one stream drifts by several percent from one run to the
//! next (the host's other guests; which CPU the scheduler puts the client
//! and server on). Within seconds it drifts much less, so comparing
//! neighbours cancels the drift, and many short turns give a median that
//! means something at the 1% level. The client and the server are pinned
//! to different CPUs: left to the scheduler, a stream flips between ~35
//! and ~27 Gbit/s as the two land on one CPU or two, and podtrace's start
//! or stop could flip it. Intervals while podtrace starts
//! (loading and verifying its programs) or stops are left out: that is not
//! the filter's cost.

use std::{
    fmt::Write as _,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{ensure, Context, Result};

use super::{
    procs::{line_reader, pause, CaptureSpec, CaptureStats, Guarded, Running},
    report::{fmt_opt, median, runs_list},
    Bench,
};

/// iperf3's report interval (`-i`), seconds.
const INTERVAL: f64 = 0.25;
/// The stream's first seconds are left out (TCP slow start).
const WARMUP: f64 = 1.5;
/// Left out after podtrace says it captures, and after it exits.
const AFTER_READY: f64 = 0.1;
const AFTER_EXIT: f64 = 0.3;

/// How many turns, and how long podtrace is attached and detached in each.
#[derive(Debug, Clone, Copy)]
pub struct TurnsPlan {
    pub turns: usize,
    pub on: Duration,
    pub off: Duration,
}

impl TurnsPlan {
    pub fn new(quick: bool) -> Self {
        if quick {
            Self {
                turns: 2,
                on: Duration::from_secs(2),
                off: Duration::from_secs(2),
            }
        } else {
            // ~7 s a turn with podtrace's start and stop: ~4.5 minutes.
            // Shorter turns follow the drift more closely, more of them
            // narrow the median's confidence interval.
            Self {
                turns: 40,
                on: Duration::from_secs(3),
                off: Duration::from_secs(3),
            }
        }
    }
}

/// One iperf3 report interval; times in seconds since the stream began.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Interval {
    pub start: f64,
    pub end: f64,
    pub mbps: f64,
}

/// A stretch of time, seconds since the stream began.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Span {
    pub start: f64,
    pub end: f64,
}

impl Span {
    fn holds(&self, i: &Interval) -> bool {
        self.start <= i.start && i.end <= self.end
    }

    fn overlaps(&self, i: &Interval) -> bool {
        i.start < self.end && self.start < i.end
    }
}

/// One turn: podtrace's process lived over `alive` and captured over
/// `attached` (from "capturing on" to the stop signal).
#[derive(Debug, Clone, Copy)]
pub struct Turn {
    pub alive: Span,
    pub attached: Span,
}

/// One turn's comparison: mean Mbit/s attached and detached around it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pair {
    pub on: f64,
    pub off: f64,
}

impl Pair {
    pub fn ratio(&self) -> f64 {
        self.on / self.off
    }
}

/// One row of table 5d.
#[derive(Debug, Clone, Default)]
pub struct Turns {
    pub plan: Option<TurnsPlan>,
    pub pairs: Vec<Pair>,
    /// podtrace's counts of each turn (every one must have matched nothing).
    pub captures: Vec<CaptureStats>,
    /// Hypervisor steal over the whole stream, in ticks of all CPUs.
    pub steal_ticks: u64,
    pub seconds: f64,
}

impl Turns {
    /// Median of the turns' attached/detached ratios, percent.
    pub fn median_pct(&self) -> Option<f64> {
        median(self.ratios()).map(|r| r * 100.0)
    }

    pub fn ratios(&self) -> Vec<f64> {
        self.pairs.iter().map(Pair::ratio).collect()
    }

    /// A distribution-free ~95% confidence interval of the median ratio,
    /// percent: the order statistics n/2 ± 0.98·√n (needs 6+ turns).
    pub fn median_ci_pct(&self) -> Option<(f64, f64)> {
        let mut r = self.ratios();
        let n = r.len();
        if n < 6 {
            return None;
        }
        r.sort_by(f64::total_cmp);
        let half = 0.98 * (n as f64).sqrt();
        let lo = ((n as f64 / 2.0 - half).floor() as usize).min(n - 1);
        let hi = ((n as f64 / 2.0 + half).ceil() as usize).min(n - 1);
        Some((r[lo] * 100.0, r[hi] * 100.0))
    }
}

/// Whether the turns show the stream kept at least some percentage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The whole confidence interval of the median is at or above it.
    Shown,
    /// The whole interval is below it.
    Refuted,
    /// The interval spans it: the noise is larger than the question.
    Unresolved,
    /// Too few turns (a quick run): the median alone.
    MedianOnly(bool),
    NoData,
}

impl Verdict {
    pub fn cell(self) -> &'static str {
        match self {
            Self::Shown | Self::MedianOnly(true) => "yes",
            Self::Refuted | Self::MedianOnly(false) => "**no**",
            Self::Unresolved => "**not shown**: the confidence interval spans the goal",
            Self::NoData => "—",
        }
    }
}

impl Verdict {
    /// From a confidence interval of an estimate, or the estimate alone
    /// when there is no interval; all in percent.
    pub fn of(ci: Option<(f64, f64)>, point: f64, goal_pct: f64) -> Self {
        match ci {
            Some((lo, _)) if lo >= goal_pct => Self::Shown,
            Some((_, hi)) if hi < goal_pct => Self::Refuted,
            Some(_) => Self::Unresolved,
            None => Self::MedianOnly(point >= goal_pct),
        }
    }
}

impl Turns {
    pub fn verdict(&self, goal_pct: f64) -> Verdict {
        match self.median_pct() {
            Some(m) => Verdict::of(self.median_ci_pct(), m, goal_pct),
            None => Verdict::NoData,
        }
    }
}

/// An interval line of iperf3's text output (`-f m`), e.g.
/// `[  5]   0.50-0.75   sec   776 MBytes  26048 Mbits/sec  225    424 KBytes`;
/// not the summary lines, which end in "sender" or "receiver".
pub fn parse_interval(line: &str) -> Option<Interval> {
    if line.contains("sender") || line.contains("receiver") {
        return None;
    }
    let words: Vec<&str> = line.split_whitespace().collect();
    let sec = words.iter().position(|w| *w == "sec")?;
    let (start, end) = words.get(sec.checked_sub(1)?)?.split_once('-')?;
    let unit = words.iter().position(|w| *w == "Mbits/sec")?;
    Some(Interval {
        start: start.parse().ok()?,
        end: end.parse().ok()?,
        mbps: words.get(unit.checked_sub(1)?)?.parse().ok()?,
    })
}

/// Compares every turn's attached intervals with the detached ones between
/// it and its neighbours. Intervals that touch podtrace's start or stop, or
/// the stream's warm-up, count for neither. A turn without both a detached
/// stretch before and after it is left out.
pub fn pairs(intervals: &[Interval], turns: &[Turn]) -> Vec<Pair> {
    let busy = |i: &Interval| {
        turns.iter().any(|t| {
            Span {
                start: t.alive.start,
                end: t.alive.end + AFTER_EXIT,
            }
            .overlaps(i)
        })
    };
    let off: Vec<&Interval> = intervals
        .iter()
        .filter(|i| i.start >= WARMUP && !busy(i))
        .collect();
    let mean_between = |from: f64, to: f64| {
        let v: Vec<f64> = off
            .iter()
            .filter(|i| i.start >= from && i.end <= to)
            .map(|i| i.mbps)
            .collect();
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    };
    let mut out = Vec::new();
    for (n, t) in turns.iter().enumerate() {
        let attached = Span {
            start: t.attached.start + AFTER_READY,
            end: t.attached.end,
        };
        let on: Vec<f64> = intervals
            .iter()
            .filter(|i| attached.holds(i))
            .map(|i| i.mbps)
            .collect();
        let before_from = n.checked_sub(1).map_or(0.0, |p| turns[p].alive.end);
        let after_to = turns.get(n + 1).map_or(f64::MAX, |next| next.alive.start);
        let before = mean_between(before_from, t.alive.start);
        let after = mean_between(t.alive.end, after_to);
        if let (false, Some(b), Some(a)) = (on.is_empty(), before, after) {
            out.push(Pair {
                on: on.iter().sum::<f64>() / on.len() as f64,
                off: (b + a) / 2.0,
            });
        }
    }
    out
}

/// Steal ticks of all CPUs so far (/proc/stat, "cpu" line, 8th value).
pub(super) fn steal_ticks() -> Result<u64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let cpu = stat.lines().next().context("empty /proc/stat")?;
    cpu.split_whitespace()
        .nth(8)
        .and_then(|s| s.parse().ok())
        .context("no steal in /proc/stat")
}

impl Bench<'_> {
    /// One iperf3 stream; `spec` started and stopped `plan.turns` times
    /// while it runs, detached for `plan.off` before, between and after.
    pub(super) fn tcp_turns(&mut self, spec: CaptureSpec, plan: TurnsPlan) -> Result<Turns> {
        self.pinned_server(|bench, pinned| bench.stream_in_turns(spec, plan, pinned))
    }

    /// Runs `f` with the first iperf3 server pinned to the last CPU (the
    /// client goes on CPU 0: see [`Self::stream_client`]); `f` learns
    /// whether there were CPUs enough to pin.
    pub(super) fn pinned_server<T>(
        &mut self,
        f: impl FnOnce(&mut Self, bool) -> Result<T>,
    ) -> Result<T> {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        if cpus < 2 {
            return f(self, false);
        }
        let server_cpu = (cpus - 1).to_string();
        let server = self.servers.pid(0).to_string();
        let pin_server = ["taskset", "-a", "-p", "-c", &server_cpu, &server];
        self.note_command(
            "pin the iperf3 server (for the TCP turns and switches only)",
            &pin_server.map(String::from),
        );
        crate::sh(&pin_server)?;
        let result = f(self, true);
        let all = format!("0-{}", cpus - 1);
        crate::sh(&["taskset", "-a", "-p", "-c", &all, &server])?;
        result
    }

    /// One iperf3 TCP client to the first server for `secs`, on CPU 0 if
    /// `pinned`, reporting every `interval` seconds in Mbit/s if asked.
    pub(super) fn stream_client(
        &self,
        secs: u32,
        interval: Option<f64>,
        pinned: bool,
    ) -> Vec<String> {
        let mut client: Vec<String> = Vec::new();
        if pinned {
            client.extend(["taskset", "-c", "0"].map(String::from));
        }
        client.extend([
            "iperf3".into(),
            "-c".into(),
            self.net.ns_ip.to_string(),
            "-p".into(),
            self.servers.ports[0].to_string(),
            "-t".into(),
            secs.to_string(),
        ]);
        if let Some(interval) = interval {
            client.extend([
                "-i".into(),
                interval.to_string(),
                "--forceflush".into(),
                "-f".into(),
                "m".into(),
            ]);
        }
        client
    }

    fn stream_in_turns(
        &mut self,
        spec: CaptureSpec,
        plan: TurnsPlan,
        pinned: bool,
    ) -> Result<Turns> {
        let file = self.scratch.0.join("turns.pcap");
        let argv = spec.argv(&self.opts.podtrace, &self.net.host_if, &file);
        self.note_command(&spec.what(), &argv);
        // Long enough for the turns with slow starts; stopped after them.
        let per_turn = plan.on + plan.off + Duration::from_secs(3);
        let secs = (WARMUP + 5.0 + (plan.off + per_turn * plan.turns as u32).as_secs_f64()).ceil();
        let client = self.stream_client(secs as u32, Some(INTERVAL), pinned);
        self.note_command(
            &format!("iperf3 TCP, one long stream, reports every {INTERVAL} s"),
            &client,
        );
        self.wait_quiet()?;

        let steal_before = steal_ticks()?;
        let base = Instant::now();
        let mut cmd = Command::new(&client[0]);
        cmd.args(&client[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut iperf = Guarded::spawn(&mut cmd)?;
        let stdout = iperf.0.stdout.take().context("iperf3's stdout")?;
        let lines = line_reader(stdout, |line| (Instant::now(), line));
        let since = |t: Instant| t.duration_since(base).as_secs_f64();

        pause(Duration::from_secs_f64(WARMUP) + plan.off)?;
        let mut turns = Vec::new();
        let mut captures = Vec::new();
        for _ in 0..plan.turns {
            let _ = std::fs::remove_file(&file);
            let spawned = Instant::now();
            let running = Running::start(&argv)?;
            let ready = Instant::now();
            pause(plan.on)?;
            let stopping = Instant::now();
            captures.push(running.stop()?);
            turns.push(Turn {
                alive: Span {
                    start: since(spawned),
                    end: since(Instant::now()),
                },
                attached: Span {
                    start: since(ready),
                    end: since(stopping),
                },
            });
            pause(plan.off)?;
        }
        let seconds = since(Instant::now());
        iperf.signal(libc::SIGINT);
        iperf.wait(Duration::from_secs(10))?;
        let steal_ticks = steal_ticks()? - steal_before;
        let _ = std::fs::remove_file(&file);

        let stamped: Vec<(f64, Interval)> = lines
            .iter()
            .filter_map(|(at, line)| Some((since(at), parse_interval(&line)?)))
            .collect();
        ensure!(!stamped.is_empty(), "iperf3 reported no interval");
        // iperf3's clock starts when it connects, a little after `base`; a
        // line arrives just after its interval ends, so the smallest gap is
        // where iperf3's zero lies on ours.
        let zero = stamped
            .iter()
            .map(|(at, i)| at - i.end)
            .fold(f64::MAX, f64::min);
        let shift = |s: Span| Span {
            start: s.start - zero,
            end: s.end - zero,
        };
        let turns: Vec<Turn> = turns
            .into_iter()
            .map(|t| Turn {
                alive: shift(t.alive),
                attached: shift(t.attached),
            })
            .collect();
        let intervals: Vec<Interval> = stamped.into_iter().map(|(_, i)| i).collect();
        Ok(Turns {
            plan: Some(plan),
            pairs: pairs(&intervals, &turns),
            captures,
            steal_ticks,
            seconds,
        })
    }
}

/// Table 5d: one row per setup, each its own stream; the first setup's
/// plan describes all.
pub fn render(rows: &[(String, &Turns)], o: &mut String) {
    let Some(plan) = rows.first().and_then(|(_, t)| t.plan) else {
        return;
    };
    let _ = writeln!(
        o,
        "\n### 5d. TCP in turns: podtrace attached and detached in turns inside one iperf3 stream\n\n\
         Separate runs (table 5a) differ by more than the 1% goal on this VM, so the goal is \
         measured inside one stream instead: podtrace is started, left attached for {on} s, \
         stopped, and left off for {off} s, {turns} times, while iperf3 reports every {INTERVAL} s \
         (client and server pinned to different CPUs, podtrace not). \
         Each turn's mean attached rate is divided by the mean detached rate of the stretches \
         just before and after it, so the slow drift of the stream cancels. Intervals touching \
         podtrace's start (loading and verifying its programs) or exit, and the stream's first \
         {WARMUP} s, count for neither side. The row without a filter checks the method: \
         podtrace then copies every packet, a cost table 5a sees too, and the turns must see \
         it as well.\n\n\
         | setup | turns compared | attached, Gbit/s (mean) | detached, Gbit/s (mean) | attached / detached, median | 95% confidence interval of the median | mean | stream, s | hypervisor steal, ticks |\n\
         |---|---:|---:|---:|---:|---|---:|---:|---:|",
        on = plan.on.as_secs(),
        off = plan.off.as_secs(),
        turns = plan.turns,
    );
    let mean = |v: Vec<f64>| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
    for (label, t) in rows {
        let gbps = |f: fn(&Pair) -> f64| mean(t.pairs.iter().map(|p| f(p) / 1e3).collect());
        let _ = writeln!(
            o,
            "| {label} | {} | {} | {} | {}% | {} | {}% | {:.0} | {} |",
            t.pairs.len(),
            fmt_opt(gbps(|p| p.on), 2),
            fmt_opt(gbps(|p| p.off), 2),
            fmt_opt(t.median_pct(), 2),
            t.median_ci_pct()
                .map_or("—".into(), |(lo, hi)| format!("{lo:.2}–{hi:.2}%")),
            fmt_opt(mean(t.ratios().iter().map(|r| r * 100.0).collect()), 2),
            t.seconds,
            t.steal_ticks,
        );
    }
    let _ = writeln!(o);
    for (label, t) in rows {
        let _ = writeln!(
            o,
            "- {label}, every turn, attached / detached in %: {}",
            runs_list(t.ratios().iter().map(|r| r * 100.0), 1)
        );
    }
}

#[cfg(test)]
mod tests;
