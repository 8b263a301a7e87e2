//! Table 5e: what podtrace's programs cost one TCP stream, measured by
//! moving them on and off the stream's path every few milliseconds.
//!
//! Why: on this VM the throughput of a stream moves by tens of percent from
//! one second to the next (other guests on the host), so stretches seconds
//! apart (tables 5a, 5d) cannot resolve 1%. Most of that noise is slow
//! next to 20 ms, so 20-ms phases of one kind and the other, interleaved,
//! see the same conditions. podtrace runs the whole time, as a user runs
//! it; [`HookMover`] moves its programs' links between interfaces without
//! reloading anything. Throughput is the stream's veth's own byte counter,
//! read at every move.
//!
//! Every move attaches at the new place before detaching from the old, so a
//! move from the stream's veth to an idle veth does the same work as the
//! move back: the goal's row compares those two places, and the difference
//! is only whether the programs are in the stream's path. A move to or from
//! "nowhere" is not symmetric (the kernel's TC static keys flip, attach and
//! detach differ), so the row that compares an idle veth with nowhere
//! (what else podtrace changes: static keys that send every packet of the
//! machine through a TC hook check, podtrace's own process) also carries
//! the benchmark's own asymmetry: an upper bound. The remaining rows check
//! the method: no filter (every packet copied: a cost it must see) and two
//! idle veths (nothing differs: it must see none).
//!
//! The estimate is a ratio of pooled rates (bytes over seconds, odd phases
//! against even ones) per batch of consecutive phases, averaged over the
//! batches, with a Student's t interval over the batch means: batches many
//! seconds long are nearly independent even though neighbouring phases are
//! not, and a ratio of sums has no 1/x bias from noisy denominators, as a
//! mean of per-phase ratios would.

use std::{
    fmt::Write as _,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

use super::{
    hook_mover::{HookMover, RcuExpedited},
    procs::{
        check_interrupted, cpu_time, foreign_cpu, foreign_ticks, pause, CaptureSpec, CaptureStats,
        Guarded, Running,
    },
    report::fmt_opt,
    tcp_turns::{steal_ticks, Verdict},
    Bench,
};
use crate::netns::TestNet;

/// The stream's first seconds are left out (TCP slow start).
const WARMUP: Duration = Duration::from_millis(1500);
/// Fewer batches than this: no interval, the mean alone.
const MIN_BATCHES: usize = 6;

#[derive(Debug, Clone, Copy)]
pub struct SwitchPlan {
    /// How long each phase (on or off) lasts.
    pub phase: Duration,
    /// Phases in all (half of them on).
    pub phases: usize,
    pub batches: usize,
}

impl SwitchPlan {
    pub fn new(quick: bool) -> Self {
        let phase = Duration::from_millis(20);
        if quick {
            Self {
                phase,
                phases: 100,
                batches: 2,
            }
        } else {
            // 4 minutes a row; 20 batches of 12 s.
            Self {
                phase,
                phases: 12_000,
                batches: 20,
            }
        }
    }

    pub fn seconds(&self) -> f64 {
        self.phase.as_secs_f64() * self.phases as f64
    }
}

/// Where podtrace's programs are during a phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// On the host veth the stream crosses.
    Stream,
    /// On the `n`th veth of a namespace of its own, with no traffic.
    Idle(usize),
    /// Attached nowhere.
    Off,
}

impl Place {
    pub fn name(self) -> &'static str {
        match self {
            Self::Stream => "the stream's veth",
            Self::Idle(0) => "an idle veth",
            Self::Idle(_) => "a second idle veth",
            Self::Off => "nowhere",
        }
    }
}

/// Where the programs are in odd phases (`a`, the "on" side of the ratio)
/// and in even ones (`b`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub a: Place,
    pub b: Place,
}

/// The stream's veth's byte counter, and when it was read (seconds since
/// the first phase began).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub at: f64,
    pub bytes: u64,
}

/// Each phase's (seconds, bytes), from samples read just after the move
/// that starts it and just before the next: the moves themselves (the
/// benchmark's syscalls and their IPIs, which differ between attach and
/// detach) count for neither side.
pub fn phases(samples: &[(Sample, Sample)]) -> Vec<(f64, u64)> {
    samples
        .iter()
        .map(|(start, end)| (end.at - start.at, end.bytes.saturating_sub(start.bytes)))
        .collect()
}

/// A batch's rate in odd phases over its rate in even ones (indices are
/// of the whole run, so a batch may start with either).
fn batch_ratio(phases: &[(f64, u64)], first: usize) -> Option<f64> {
    let (mut on, mut off) = ((0.0, 0u64), (0.0, 0u64));
    for (k, &(secs, bytes)) in phases.iter().enumerate() {
        let side = if (first + k) % 2 == 1 {
            &mut on
        } else {
            &mut off
        };
        side.0 += secs;
        side.1 += bytes;
    }
    let rate = |(secs, bytes): (f64, u64)| (secs > 0.0).then(|| bytes as f64 / secs);
    let (on, off) = (rate(on)?, rate(off)?);
    (off > 0.0).then(|| on / off)
}

/// The estimate of one row.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    /// Mean of the batches' odd/even ratios.
    pub mean: f64,
    /// 95% confidence interval of that mean (none with few batches).
    pub ci: Option<(f64, f64)>,
    pub batches: usize,
}

/// Splits the phases into `batches` runs of consecutive phases and
/// estimates the odd/even ratio (see the module doc).
pub fn estimate(phases: &[(f64, u64)], batches: usize) -> Option<Estimate> {
    let size = phases.len() / batches.max(1);
    if size < 2 {
        return None;
    }
    let ratios: Vec<f64> = (0..batches)
        .filter_map(|b| batch_ratio(&phases[b * size..(b + 1) * size], b * size))
        .collect();
    let n = ratios.len();
    if n == 0 {
        return None;
    }
    let mean = ratios.iter().sum::<f64>() / n as f64;
    let ci = (n >= MIN_BATCHES).then(|| {
        let var = ratios.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
        let half = t975(n - 1) * (var / n as f64).sqrt();
        (mean - half, mean + half)
    });
    Some(Estimate {
        mean,
        ci,
        batches: n,
    })
}

/// Student's t 97.5% quantile for `df` degrees of freedom (Cornish-Fisher
/// expansion around the normal quantile; within 0.1% of the tables for
/// df >= 5).
pub fn t975(df: usize) -> f64 {
    let z: f64 = 1.959_964;
    let n = df as f64;
    z + (z.powi(3) + z) / (4.0 * n)
        + (5.0 * z.powi(5) + 16.0 * z.powi(3) + 3.0 * z) / (96.0 * n * n)
        + (3.0 * z.powi(7) + 19.0 * z.powi(5) + 17.0 * z.powi(3) - 15.0 * z) / (384.0 * n.powi(3))
}

/// One row of table 5e.
#[derive(Debug, Clone, Default)]
pub struct Switched {
    pub plan: Option<SwitchPlan>,
    pub layout: Option<Layout>,
    pub phases: Vec<(f64, u64)>,
    pub capture: Option<CaptureStats>,
    /// podtrace's own CPU time over the phases.
    pub podtrace_cpu: Duration,
    /// Mean time of one move of both programs into `a` / into `b`.
    pub move_a: Duration,
    pub move_b: Duration,
    pub steal_ticks: u64,
    /// CPU seconds of other processes over the phases.
    pub foreign_cpu: f64,
}

impl Switched {
    pub fn estimate(&self) -> Option<Estimate> {
        estimate(&self.phases, self.plan?.batches)
    }

    pub fn verdict(&self, goal_pct: f64) -> Verdict {
        match self.estimate() {
            None => Verdict::NoData,
            Some(e) => Verdict::of(
                e.ci.map(|(lo, hi)| (lo * 100.0, hi * 100.0)),
                e.mean * 100.0,
                goal_pct,
            ),
        }
    }

    /// Seconds of the phases, in all.
    pub fn seconds(&self) -> f64 {
        self.phases.iter().map(|p| p.0).sum()
    }

    /// Mean Gbit/s of the odd (`a`) and the even (`b`) phases.
    pub fn gbps(&self) -> (Option<f64>, Option<f64>) {
        let side = |odd: usize| {
            let (secs, bytes) = self
                .phases
                .iter()
                .skip(odd)
                .step_by(2)
                .fold((0.0, 0u64), |a, p| (a.0 + p.0, a.1 + p.1));
            (secs > 0.0).then(|| bytes as f64 * 8.0 / secs / 1e9)
        };
        (side(1), side(0))
    }
}

fn tx_bytes(iface: &str) -> Result<u64> {
    let path = format!("/sys/class/net/{iface}/statistics/tx_bytes");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    Ok(text.trim().parse()?)
}

impl Bench<'_> {
    /// One pinned iperf3 stream; `spec` runs the whole time with its
    /// programs moved between `layout.a` (odd phases) and `layout.b`.
    pub(super) fn tcp_switched(
        &mut self,
        spec: CaptureSpec,
        layout: Layout,
        plan: SwitchPlan,
    ) -> Result<Switched> {
        self.pinned_server(|bench, pinned| bench.stream_switched(spec, layout, plan, pinned))
    }

    fn stream_switched(
        &mut self,
        spec: CaptureSpec,
        layout: Layout,
        plan: SwitchPlan,
        pinned: bool,
    ) -> Result<Switched> {
        let file = self.scratch.0.join("switched.pcap");
        let _ = std::fs::remove_file(&file);
        let argv = spec.argv(&self.opts.podtrace, &self.net.host_if, &file);
        self.note_command(&spec.what(), &argv);
        let idle_needed = [layout.a, layout.b]
            .iter()
            .filter_map(|p| match p {
                Place::Idle(n) => Some(n + 1),
                _ => None,
            })
            .max()
            .unwrap_or(0);
        let idle: Vec<TestNet> = (0..idle_needed)
            .map(|_| TestNet::new())
            .collect::<Result<_>>()?;
        let mut places = vec![self.net.host_if.clone()];
        places.extend(idle.iter().map(|n| n.host_if.clone()));
        let index = |p: Place| match p {
            Place::Stream => Some(0),
            Place::Idle(n) => Some(n + 1),
            Place::Off => None,
        };
        let secs = (WARMUP.as_secs_f64() + plan.seconds() + 5.0).ceil() as u32;
        let client = self.stream_client(secs, None, pinned);
        self.note_command("iperf3 TCP, one long stream (table 5e)", &client);
        self.wait_quiet()?;

        let running = Running::start(&argv)?;
        let _expedited = RcuExpedited::new()?;
        let mut mover = HookMover::take_over(&self.net.host_if, places)?;
        let mut cmd = Command::new(&client[0]);
        cmd.args(&client[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut iperf = Guarded::spawn(&mut cmd)?;
        mover.move_to(index(layout.b), 0)?;
        pause(WARMUP)?;

        let steal_before = steal_ticks()?;
        let foreign_before = foreign_ticks();
        let cpu_before = cpu_time(running.pid())?;
        let mut samples = Vec::with_capacity(plan.phases);
        let start = Instant::now();
        let sample = || -> Result<Sample> {
            Ok(Sample {
                at: start.elapsed().as_secs_f64(),
                bytes: tx_bytes(&self.net.host_if)?,
            })
        };
        let mut phase_start = None;
        for k in 0..=plan.phases {
            let due = start + plan.phase * k as u32;
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                thread::sleep(wait);
            }
            if let Some(begun) = phase_start.take() {
                samples.push((begun, sample()?));
            }
            if k == plan.phases {
                break;
            }
            // Phase k: odd phases at `a`, even ones at `b`.
            let place = if k % 2 == 1 { layout.a } else { layout.b };
            mover.move_to(index(place), k % 2)?;
            phase_start = Some(sample()?);
            if k % 50 == 0 {
                check_interrupted()?;
            }
        }
        let podtrace_cpu = cpu_time(running.pid())?.saturating_sub(cpu_before);
        let foreign_cpu = foreign_cpu(&foreign_before, &foreign_ticks());
        let steal_ticks = steal_ticks()? - steal_before;
        iperf.signal(libc::SIGINT);
        iperf.wait(Duration::from_secs(10))?;
        let (move_a, move_b) = (mover.mean(1), mover.mean(0));
        drop(mover);
        let capture = running.stop()?;
        let _ = std::fs::remove_file(&file);
        Ok(Switched {
            plan: Some(plan),
            layout: Some(layout),
            phases: phases(&samples),
            capture: Some(capture),
            podtrace_cpu,
            move_a,
            move_b,
            steal_ticks,
            foreign_cpu,
        })
    }
}

/// Table 5e: one row per setup, each its own stream.
pub fn render(rows: &[(String, &Switched)], o: &mut String) {
    let Some(plan) = rows.first().and_then(|(_, t)| t.plan) else {
        return;
    };
    let _ = writeln!(
        o,
        "\n### 5e. TCP with podtrace's programs moved every {ms} ms inside one stream\n\n\
         The stream's throughput moves by tens of percent from one second to the next here, \
         but slowly next to {ms} ms. So podtrace is started once and runs all along, and the \
         benchmark moves its two programs' TCX links every {ms} ms between two places, A in odd \
         phases and B in even ones: the same programs, maps and process (`bpftool link detach` \
         of podtrace's own links, then links of the benchmark's, first in the chain as podtrace \
         attaches them; each move attaches at the new place before detaching from the old, and \
         `/sys/kernel/rcu_expedited` is 1 meanwhile, or a move would wait ~25 ms for RCU). The \
         stream's veth's `tx_bytes` is read just after every move and just before the next, so \
         the moves themselves count for neither side. {phases} phases ({secs:.0} s) make \
         {batches} batches of consecutive phases; each batch gives bytes per second in A over \
         bytes per second in B, and the table shows the mean of those ratios with a 95% \
         confidence interval (Student's t over the batches). Client and server are pinned to \
         different CPUs, podtrace is not.\n\n\
         - **stream vs idle** is the goal's row: moves both ways do the same work, and the only \
         difference is whether the programs are in the stream's path.\n\
         - **no filter** checks that the method sees a cost that is there (every packet copied).\n\
         - **idle vs idle** checks that it sees none where there is none.\n\
         - **idle vs nowhere** is what else a running podtrace changes: TC's static keys (while \
         any TC program is attached, every packet on the machine passes a hook that checks its \
         device), podtrace's own process. Attaching and detaching do not cost the same, so this \
         row also carries the benchmark's own asymmetry: an upper bound.\n\n\
         | setup | A (odd phases) | B (even phases) | A, Gbit/s | B, Gbit/s | A / B, mean of batches | 95% confidence interval | batches | captured | filtered | podtrace CPU, % of one | move into A / into B, µs | other processes, CPU s | hypervisor steal, ticks |\n\
         |---|---|---|---:|---:|---:|---|---:|---:|---:|---:|---|---:|---:|",
        ms = plan.phase.as_millis(),
        phases = plan.phases,
        secs = plan.seconds(),
        batches = plan.batches,
    );
    for (label, s) in rows {
        let est = s.estimate();
        let (a, b) = s.gbps();
        let c = s.capture;
        let place = |p: Option<Place>| p.map_or("—", Place::name);
        let _ =
            writeln!(
            o,
            "| {label} | {} | {} | {} | {} | {}% | {} | {} | {} | {} | {} | {} / {} | {:.1} | {} |",
            place(s.layout.map(|l| l.a)),
            place(s.layout.map(|l| l.b)),
            fmt_opt(a, 2),
            fmt_opt(b, 2),
            fmt_opt(est.map(|e| e.mean * 100.0), 2),
            est.and_then(|e| e.ci).map_or("—".into(), |(lo, hi)| format!(
                "{:.2}–{:.2}%",
                lo * 100.0,
                hi * 100.0
            )),
            est.map_or(0, |e| e.batches),
            c.map_or("—".into(), |c| c.captured.to_string()),
            c.and_then(|c| c.filtered).map_or("—".into(), |f| f.to_string()),
            fmt_opt(
                (s.seconds() > 0.0).then(|| s.podtrace_cpu.as_secs_f64() / s.seconds() * 100.0),
                3
            ),
            s.move_a.as_micros(),
            s.move_b.as_micros(),
            s.foreign_cpu,
            s.steal_ticks,
        );
    }
}

#[cfg(test)]
mod tests;
