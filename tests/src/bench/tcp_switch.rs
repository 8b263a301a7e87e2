//! Table 5d: what podtrace costs one TCP stream with a filter matching
//! nothing, measured by moving its programs on and off the stream's path
//! every 20 ms inside the stream.
//!
//! Why: on this VM the throughput of a stream moves by tens of percent from
//! one second to the next (other guests on the host), so stretches seconds
//! apart (table 5a) cannot resolve 1%. That noise is slow next to 20 ms, so
//! 20-ms phases of one kind and the other, interleaved, see the same
//! conditions. podtrace runs the whole time, as a user runs it;
//! [`HookMover`] moves its programs' TCX links between interfaces without
//! reloading anything. Throughput is the stream's veth's own byte counter,
//! read just after each move and just before the next, so the moves' own
//! system calls count for neither side.
//!
//! The stream runs on CPU 0 alone and the thread that moves the programs on
//! the other CPU: every packet's work, podtrace's programs included, is
//! paid by the CPU that limits the stream, and the moves do not take turns
//! with it.
//!
//! Rows (`filters::switch_rows`): podtrace vs nothing (the goal), split into
//! the programs in the stream's path (vs on an idle veth) and beside it (on
//! an idle veth vs nowhere: TC's static keys); and two checks of the
//! method: no filter (every packet copied, a cost it must see) and two idle
//! veths (nothing differs, so it must see nothing).
//!
//! How the phases become an estimate: [`super::estimate`].

use std::{
    fmt::Write as _,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

use super::{
    estimate::{estimate, phases, Estimate, Sample},
    hook_mover::{HookMover, RcuExpedited},
    iperf::{client_argv, Load},
    procs::{
        check_interrupted, cpu_time, foreign_cpu, foreign_ticks, pause, steal_ticks, CaptureSpec,
        CaptureStats, Guarded, Running,
    },
    report::fmt_opt,
    Bench,
};
use crate::netns::TestNet;

/// The stream's first seconds are left out (TCP slow start).
const WARMUP: Duration = Duration::from_millis(1500);

#[derive(Debug, Clone, Copy)]
pub struct SwitchPlan {
    /// How long each phase (on or off) lasts.
    pub phase: Duration,
    /// Phases in all (half of them on).
    pub phases: usize,
    pub batches: usize,
}

/// Minutes of the goal's row in a full run: resolves about ±0.15% here.
pub const GOAL_MINUTES: u32 = 20;

impl SwitchPlan {
    /// `goal_minutes`: set for the row the goal is read from, which runs
    /// that long in batches of 24 s; the others run 4 minutes, which
    /// resolves about ±0.35% here.
    pub fn new(quick: bool, goal_minutes: Option<u32>) -> Self {
        let phase = Duration::from_millis(20);
        let per_second = (1000 / phase.as_millis()) as usize;
        let (phases, batches) = match (quick, goal_minutes) {
            // Enough batches for an interval (a wide one), ~5 s a row.
            (true, _) => (240, 6),
            (false, Some(m)) => {
                let secs = m.max(1) as usize * 60;
                (secs * per_second, (secs / 24).max(2))
            }
            // 20 batches of 12 s.
            (false, None) => (240 * per_second, 20),
        };
        Self {
            phase,
            phases,
            batches,
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

/// One row of table 5d.
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

/// The calling thread kept on one CPU while this lives.
struct ThreadOn(libc::cpu_set_t);

impl ThreadOn {
    fn cpu(cpu: usize) -> Result<Self> {
        // SAFETY: cpu_set_t is plain data; both calls get valid pointers
        // and the set's own size, for the calling thread (pid 0).
        unsafe {
            let mut old: libc::cpu_set_t = std::mem::zeroed();
            let size = std::mem::size_of::<libc::cpu_set_t>();
            if libc::sched_getaffinity(0, size, &mut old) != 0 {
                return Err(std::io::Error::last_os_error()).context("sched_getaffinity");
            }
            let mut one: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut one);
            if libc::sched_setaffinity(0, size, &one) != 0 {
                return Err(std::io::Error::last_os_error()).context("sched_setaffinity");
            }
            Ok(Self(old))
        }
    }
}

impl Drop for ThreadOn {
    fn drop(&mut self) {
        // SAFETY: as in `cpu`, with the set saved there.
        unsafe {
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &self.0);
        }
    }
}

fn tx_bytes(iface: &str) -> Result<u64> {
    let path = format!("/sys/class/net/{iface}/statistics/tx_bytes");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    Ok(text.trim().parse()?)
}

impl Bench<'_> {
    /// One iperf3 stream with client and server on CPU 0, this thread
    /// (which reads the counters and moves the programs) on the last CPU;
    /// `spec` runs the whole time with its programs moved between
    /// `layout.a` (odd phases) and `layout.b`.
    ///
    /// The stream on one CPU: every packet's work, podtrace's programs
    /// included, is then paid by the CPU that limits the stream (with
    /// client and server on two CPUs, part of it lands on the one with time
    /// to spare), and the moves' system calls run on the other CPU instead
    /// of taking turns with the stream.
    pub(super) fn tcp_switched(
        &mut self,
        spec: CaptureSpec,
        layout: Layout,
        plan: SwitchPlan,
    ) -> Result<Switched> {
        let cpus = thread::available_parallelism().map_or(1, |n| n.get());
        let server = self.servers.pid(0).to_string();
        let pin_server = ["taskset", "-a", "-p", "-c", "0", &server];
        self.note_command(
            "pin the iperf3 server to CPU 0 (table 5d only)",
            &pin_server.map(String::from),
        );
        crate::sh(&pin_server)?;
        let result = (|| {
            let _away = (cpus > 1).then(|| ThreadOn::cpu(cpus - 1)).transpose()?;
            self.stream_switched(spec, layout, plan)
        })();
        let all = format!("0-{}", cpus - 1);
        crate::sh(&["taskset", "-a", "-p", "-c", &all, &server])?;
        result
    }

    fn stream_switched(
        &mut self,
        spec: CaptureSpec,
        layout: Layout,
        plan: SwitchPlan,
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
        let mut client: Vec<String> = ["taskset", "-c", "0"].map(String::from).into();
        let server = (self.net.ns_ip.to_string(), self.servers.ports[0]);
        client.extend(client_argv(&server.0, server.1, secs, Load::Tcp, 1));
        self.note_command("iperf3 TCP, one long stream (table 5d)", &client);
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

/// Table 5d: one row per setup, each its own stream.
pub fn render(rows: &[(String, &Switched)], o: &mut String) {
    let Some(plan) = rows.first().and_then(|(_, t)| t.plan) else {
        return;
    };
    let _ = writeln!(
        o,
        "\n### 5d. TCP with podtrace's programs moved every {ms} ms inside one stream\n\n\
         The stream's throughput moves by tens of percent from one second to the next here, \
         but slowly next to {ms} ms. So podtrace is started once and runs all along, and the \
         benchmark moves its two programs' TCX links every {ms} ms between two places, A in odd \
         phases and B in even ones: the same programs, maps and process (`bpftool link detach` \
         of podtrace's own links, then links of the benchmark's, first in the chain as podtrace \
         attaches them; each move attaches at the new place before detaching from the old, and \
         `/sys/kernel/rcu_expedited` is 1 meanwhile, or a move would wait ~25 ms for RCU). The \
         stream's veth's `tx_bytes` is read just after every move and just before the next, so \
         the moves themselves count for neither side. Each row's phases are cut into batches \
         of consecutive phases (the goal's row runs longest: the interval narrows with the \
         square root of the time); each batch gives bytes per second in A over \
         bytes per second in B, and the table shows the mean of those ratios with a 95% \
         confidence interval (Student's t over the batches). Client and server are pinned to CPU \
         0, so every packet's work is paid by the CPU that limits the stream; the benchmark's \
         thread that reads the counter and moves the programs runs on the other CPU; podtrace \
         is not pinned.\n\n\
         - **podtrace vs nothing** is the goal's row: the programs on the stream's veth, or \
         attached nowhere.\n\
         - **in the path** and **beside the path** split it: the programs on the stream's veth \
         vs on an idle veth (moves both ways do the same work), and on an idle veth vs nowhere \
         (what enabling TC costs the machine: while any TC program is attached anywhere, every \
         packet of every device passes a check of its device's TC hook).\n\
         - **no filter** checks that the method sees a cost that is there (every packet copied).\n\
         - **nothing differs** (two idle veths) checks that it sees none where there is none.\n\n\
         | setup | A (odd phases) | B (even phases) | A, Gbit/s | B, Gbit/s | A / B, mean of batches | 95% confidence interval | seconds | batches | captured | filtered | podtrace CPU, % of one | move into A / into B, µs | other processes, CPU s | hypervisor steal, ticks |\n\
         |---|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---|---:|---:|",
        ms = plan.phase.as_millis(),
    );
    for (label, s) in rows {
        let est = s.estimate();
        let (a, b) = s.gbps();
        let c = s.capture;
        let place = |p: Option<Place>| p.map_or("—", Place::name);
        let _ = writeln!(
            o,
            "| {label} | {} | {} | {} | {} | {}% | {} | {:.0} | {} | {} | {} | {} | {} / {} | {:.1} | {} |",
            place(s.layout.map(|l| l.a)),
            place(s.layout.map(|l| l.b)),
            fmt_opt(a, 2),
            fmt_opt(b, 2),
            fmt_opt(est.map(|e| e.mean * 100.0), 2),
            est.map_or("—".into(), |e| e.ci_text()),
            s.seconds(),
            est.map_or(0, |e| e.batches),
            c.map_or("—".into(), |c| c.captured.to_string()),
            match c {
                None => "—".into(),
                Some(c) => c.filtered.map_or("no filter".into(), |f| f.to_string()),
            },
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
