//! Section 5 (issue 6): what podtrace's in-kernel filter costs the traffic
//! when it matches nothing. Every packet then runs the filter and is only
//! counted ("filtered"), nothing is copied: what is left is the filter's
//! own price, paid in the sender's context at the veth's egress.
//!
//! TCP throughput is measured twice: in separate interleaved runs, like the
//! other tables, and with podtrace's programs moved on and off the stream's
//! path every 20 ms inside one stream (`tcp_switch`), which is what the goal
//! (within 1% of nothing attached, far less than the stream's own swings
//! from one second to the next on this VM) is checked against. The UDP
//! 64-byte flood
//! is the worst case per byte: one filter run per tiny packet, with a short
//! filter and with a long one.

use std::{collections::HashMap, fmt::Write as _, process::Command, time::Duration};

use anyhow::{ensure, Result};
use podtrace::attach::FilterEngine;

use super::{
    estimate::Estimate,
    iperf::Load,
    procs::{self, CaptureSpec, CaptureStats, Tool},
    report::{fmt_opt, median, runs_list},
    rotated,
    tcp_switch::{Layout, Place, SwitchPlan, Switched},
    Bench, Plan, RunResult, UDP_SNAPLEN,
};

/// TCP runs of each setup in a full run (a quick run makes one): 3 × 3
/// setups of ~12 s each; the goal is checked in table 5d.
const TCP_RUNS: usize = 3;
/// Datagram size of the flood (iperf3 -l), as in table 2.
const FLOOD_LEN: u32 = 64;
/// The short filter. The time-to-first-packet datagrams go to port 9, but
/// that section never runs at the same time.
const SHORT: &str = "udp port 9";
/// The long filter is `host A or host B or …` over this many addresses of
/// TEST-NET-1 (192.0.2.0/24, RFC 5737: documentation only, nothing here
/// uses it). libpcap compiles it to about three instructions per address,
/// and compares every IPv4 packet with each address, as source and as
/// destination, before rejecting it.
const LONG_HOSTS: u32 = 40;
/// Issue 6 asks for a filter of at least this many instructions.
const LONG_MIN_INSNS: usize = 100;
/// TCP goal: throughput with a filter matching nothing at least this many
/// percent of nothing attached ("within 1%").
const TCP_GOAL_PCT: f64 = 99.0;
/// What issue 6's interpreter spike kept of the bare UDP 64 B rate, percent:
/// the bar to beat.
const SPIKE_SHORT_PCT: f64 = 85.0;
const SPIKE_LONG_PCT: f64 = 58.0;
/// The label of the check that the filters matched nothing (the e2e smoke
/// test requires it, even in a quick run).
pub const MATCHED_NOTHING: &str = "the filters matched no packet";

/// The filters measured; none matches a packet of the test traffic. Short
/// and Long run translated to native eBPF (podtrace's default); the
/// interpreted ones are there to show what translation gained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NoMatch {
    Short,
    Long,
    ShortInterpreted,
    LongInterpreted,
}

impl NoMatch {
    /// The distinct expressions.
    pub const ALL: [Self; 2] = [Self::Short, Self::Long];

    /// The expression this runs (the interpreted variants run the same).
    pub fn base(self) -> Self {
        match self {
            Self::Short | Self::ShortInterpreted => Self::Short,
            Self::Long | Self::LongInterpreted => Self::Long,
        }
    }

    /// The kernel engine this runs with.
    pub fn engine(self) -> FilterEngine {
        match self {
            Self::Short | Self::Long => FilterEngine::Native,
            Self::ShortInterpreted | Self::LongInterpreted => FilterEngine::Interpreter,
        }
    }

    /// podtrace's `--filter-engine` value for [`Self::engine`].
    fn engine_arg(self) -> &'static str {
        match self.engine() {
            FilterEngine::Interpreter => "interpreter",
            _ => "native",
        }
    }

    pub fn expression(self) -> String {
        match self.base() {
            Self::Short => SHORT.into(),
            _ => (0..LONG_HOSTS)
                .map(|i| format!("host 192.0.2.{}", 100 + i))
                .collect::<Vec<_>>()
                .join(" or "),
        }
    }

    /// The engine option and the expression as trailing command-line words
    /// (`native` fails rather than fall back to the interpreter).
    pub fn words(self) -> Vec<String> {
        let mut words = vec![
            "--filter-engine".into(),
            self.engine_arg().into(),
            "--".into(),
        ];
        words.extend(self.expression().split_whitespace().map(String::from));
        words
    }

    pub fn label(self) -> String {
        let engine = match self {
            Self::Short | Self::Long => "",
            _ => ", interpreted",
        };
        match self.base() {
            Self::Short => format!("short filter `{SHORT}`{engine}"),
            _ => format!("long filter ({LONG_HOSTS} hosts){engine}"),
        }
    }
}

/// What section 5 measured.
#[derive(Debug, Default)]
pub struct FilterResults {
    pub tcp: HashMap<CaptureSpec, Vec<RunResult>>,
    pub udp: HashMap<CaptureSpec, Vec<RunResult>>,
    /// Each filter's length in cBPF instructions (`podtrace capture -d`).
    pub insns: HashMap<NoMatch, usize>,
    /// Table 5c.
    pub cost: super::filter_cost::Costs,
    /// Table 5d, by row (see [`switch_rows`]).
    pub switched: Vec<Switched>,
}

/// Table 5d's row the TCP goal is checked against.
const GOAL_ROW: &str = "podtrace vs nothing";

/// The rows of table 5d: a label, the filter, where the programs are in
/// odd and in even phases. The first is the goal's; the second and fourth
/// split it in two; the third and fifth check the method.
fn switch_rows() -> [(&'static str, Option<NoMatch>, Layout); 5] {
    let layout = |a, b| Layout { a, b };
    let short = Some(NoMatch::Short);
    [
        (GOAL_ROW, short, layout(Place::Stream, Place::Off)),
        ("in the path", short, layout(Place::Stream, Place::Idle(0))),
        ("no filter", None, layout(Place::Stream, Place::Off)),
        ("beside the path", short, layout(Place::Idle(0), Place::Off)),
        (
            "nothing differs",
            short,
            layout(Place::Idle(0), Place::Idle(1)),
        ),
    ]
}

fn switch_label(name: &str, filter: Option<NoMatch>) -> String {
    format!("{name}: {}", setup_name(podtrace(filter)))
}

const NOTHING: CaptureSpec = CaptureSpec {
    tool: Tool::Nothing,
    snaplen: 0,
    buffer_kib: None,
    filter: None,
};

/// podtrace as in the `-s 96` rows of tables 1 and 2, plus `filter`.
fn podtrace(filter: Option<NoMatch>) -> CaptureSpec {
    CaptureSpec {
        tool: Tool::Podtrace,
        snaplen: UDP_SNAPLEN,
        buffer_kib: None,
        filter,
    }
}

fn tcp_setups() -> [CaptureSpec; 3] {
    [NOTHING, podtrace(Some(NoMatch::Short)), podtrace(None)]
}

fn udp_setups() -> [CaptureSpec; 6] {
    [
        NOTHING,
        podtrace(None),
        podtrace(Some(NoMatch::Short)),
        podtrace(Some(NoMatch::Long)),
        podtrace(Some(NoMatch::ShortInterpreted)),
        podtrace(Some(NoMatch::LongInterpreted)),
    ]
}

fn setup_name(s: CaptureSpec) -> String {
    match (s.tool, s.filter) {
        (Tool::Nothing, _) => "nothing attached".into(),
        (_, None) => format!("podtrace -s {}, no filter", s.snaplen),
        (_, Some(f)) => format!("podtrace -s {}, {}", s.snaplen, f.label()),
    }
}

pub fn tcp_label(s: CaptureSpec) -> String {
    format!("TCP vs filters, {}", setup_name(s))
}

pub fn udp_label(s: CaptureSpec) -> String {
    format!("UDP {FLOOD_LEN} B vs filters, {}", setup_name(s))
}

fn goal_labels() -> [String; 4] {
    [
        format!(
            "TCP with a filter matching nothing (`{SHORT}`) within {:.0}% of nothing attached",
            100.0 - TCP_GOAL_PCT
        ),
        format!(
            "UDP {FLOOD_LEN} B received with the short filter > {SPIKE_SHORT_PCT:.0}% of nothing (spike)"
        ),
        format!(
            "UDP {FLOOD_LEN} B received with the long ({LONG_MIN_INSNS}+ instruction) filter > {SPIKE_LONG_PCT:.0}% of nothing (spike)"
        ),
        MATCHED_NOTHING.into(),
    ]
}

/// The first cell of every row of section 5.
pub fn row_labels() -> Vec<String> {
    let mut rows: Vec<String> = tcp_setups().into_iter().map(tcp_label).collect();
    rows.extend(udp_setups().into_iter().map(udp_label));
    rows.extend(
        switch_rows()
            .iter()
            .map(|(name, filter, _)| switch_label(name, *filter)),
    );
    rows.extend(goal_labels());
    rows
}

impl Bench<'_> {
    /// The filters' lengths, then the TCP runs and the UDP flood runs of
    /// every setup, interleaved.
    pub(super) fn filters(&mut self, out: &mut FilterResults) -> Result<()> {
        for filter in NoMatch::ALL {
            let n = self.filter_insns(filter)?;
            eprintln!("bench:   {}: {n} cBPF instructions", filter.label());
            out.insns.insert(filter, n);
        }
        let long = out.insns[&NoMatch::Long];
        ensure!(
            long >= LONG_MIN_INSNS,
            "the long filter is only {long} instructions (issue 6 asks for {LONG_MIN_INSNS}+)"
        );
        if self.opts.runs("filter-cost") {
            out.cost = super::filter_cost::measure(self.opts.quick)?;
        }
        if self.opts.runs("filter-tcp") {
            self.filter_tcp_runs(out)?;
        }
        if self.opts.runs("filter-switch") {
            for (name, filter, layout) in switch_rows() {
                let goal = (name == GOAL_ROW).then_some(self.opts.goal_minutes);
                let plan = SwitchPlan::new(self.opts.quick, goal);
                let row = self.tcp_switched(podtrace(filter), layout, plan)?;
                let est = row.estimate();
                eprintln!(
                    "bench:   TCP, programs moved every {} ms, {}: A/B {}%, 95% CI {}",
                    plan.phase.as_millis(),
                    switch_label(name, filter),
                    fmt_opt(est.map(|e| e.mean * 100.0), 2),
                    est.map_or("—".into(), |e| e.ci_text()),
                );
                out.switched.push(row);
            }
        }
        if self.opts.runs("filter-udp") {
            self.filter_udp_runs(out)?;
        }
        Ok(())
    }

    fn filter_tcp_runs(&mut self, out: &mut FilterResults) -> Result<()> {
        let tcp_runs = if self.opts.quick {
            self.plan.runs
        } else {
            TCP_RUNS
        };
        let setups = tcp_setups();
        for run in 0..tcp_runs {
            for &s in rotated(&setups, run) {
                let r = self.run(s, Load::Tcp, 1, self.plan.tcp_secs)?;
                let rate = format!("{:6.2} Gbit/s", r.traffic.bits_per_second / 1e9);
                log_run(&tcp_label(s), &rate, &r);
                out.tcp.entry(s).or_default().push(r);
            }
        }
        Ok(())
    }

    fn filter_udp_runs(&mut self, out: &mut FilterResults) -> Result<()> {
        let setups = udp_setups();
        let load = Load::Udp {
            len: FLOOD_LEN,
            pps: 0,
        };
        for run in 0..self.plan.runs {
            for &s in rotated(&setups, run) {
                let r = self.run(s, load, 1, self.plan.udp_secs)?;
                let rate = format!("received {:7.1} kpps", r.traffic.received_pps() / 1e3);
                log_run(&udp_label(s), &rate, &r);
                out.udp.entry(s).or_default().push(r);
            }
        }
        Ok(())
    }

    /// The lines `podtrace capture -d` prints for `filter`: one per cBPF
    /// instruction, as with tcpdump -d. Measured, because libpcap decides.
    fn filter_insns(&mut self, filter: NoMatch) -> Result<usize> {
        let mut argv = vec![
            self.opts.podtrace.display().to_string(),
            "capture".into(),
            "-d".into(),
            "-i".into(),
            self.net.host_if.clone(),
        ];
        argv.extend(filter.words());
        let mut shown = argv.clone();
        shown.extend(["|".into(), "wc".into(), "-l".into()]);
        self.note_command(
            &format!("cBPF instructions of the {}", filter.label()),
            &shown,
        );
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..]);
        let dump = procs::output(&mut cmd, Duration::from_secs(60))?;
        Ok(dump.lines().filter(|l| !l.trim().is_empty()).count())
    }
}

fn log_run(label: &str, rate: &str, r: &RunResult) {
    let counts = match r.capture {
        Some(c) => format!(
            ", captured {}, filtered {}, crossed the veth {}",
            c.captured,
            c.filtered.map_or_else(|| "-".into(), |n| n.to_string()),
            r.crossed.unwrap_or(0)
        ),
        None => String::new(),
    };
    eprintln!("bench:   {label:<48} {rate}{counts}");
}

/// A filter run matched nothing: nothing captured, nothing in the file,
/// and every packet that crossed the veth was rejected (podtrace counts a
/// little longer than the traffic runs, so "filtered" may be larger).
fn matched_nothing(r: &RunResult) -> bool {
    r.capture
        .is_some_and(|c| c.captured == 0 && c.filtered.zip(r.crossed).is_some_and(|(f, x)| f >= x))
        && r.in_file_all == Some(0)
}

/// Medians of what podtrace counted, as table cells: captured, packets in
/// the file, filtered, crossed the veth.
fn count_cells(s: CaptureSpec, runs: &[RunResult]) -> [String; 4] {
    let m = |f: &dyn Fn(&RunResult) -> Option<u64>| {
        fmt_opt(
            median(runs.iter().filter_map(f).map(|n| n as f64).collect()),
            0,
        )
    };
    let filtered = match s.filter {
        Some(_) => m(&|r| r.capture?.filtered),
        None if s.tool == Tool::Nothing => "—".into(),
        None => "no filter".into(),
    };
    [
        m(&|r| r.capture.map(|c| c.captured)),
        m(&|r| r.in_file_all),
        filtered,
        m(&|r| r.crossed),
    ]
}

mod report;

#[cfg(test)]
mod tests;
