//! `cargo xtask bench`: podtrace against tcpdump (and against nothing at all)
//! on a veth it creates, with iperf3 traffic between addresses it owns.
//!
//! Every figure is the median of several runs (one in `--quick` mode), and
//! the runs of the setups being compared are interleaved, so a disturbance
//! (another build on the machine) hits them alike. The report lists every
//! run, so the spread is visible next to the median.
//!
//! Loss is counted twice: what the tool reports (tcpdump's "dropped by
//! kernel", podtrace's "lost in kernel") and what is missing from its file
//! compared with what iperf3 sent (datagrams of the test's exact length to
//! the test's ports, so iperf3's own control packets are not counted).

mod estimate;
mod filter_cost;
mod filters;
mod first_packet;
mod hook_mover;
mod iperf;
mod procs;
mod redirect;
mod report;
mod tcp_switch;
mod throughput;
mod workload;

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

pub use self::{
    filters::MATCHED_NOTHING, first_packet::FirstPacket, report::row_labels,
    tcp_switch::GOAL_MINUTES,
};
use self::{
    iperf::{run_clients, Load, Servers, Traffic},
    procs::{
        check_interrupted, count_in_file, pause, CaptureSpec, CaptureStats, Running, Scratch, Tool,
    },
    report::Report,
};
use crate::netns::TestNet;

/// tcpdump's (and podtrace's) "whole packet" snapshot length.
pub const FULL: u32 = 262_144;
/// Snapshot length of the UDP packet-rate runs.
pub const UDP_SNAPLEN: u32 = 96;
/// UDP datagram sizes (iperf3 -l).
pub const UDP_LENS: [u32; 2] = [64, 1400];
/// Sender counts: one iperf3 client, and several at once to outrun a capture.
pub const SENDERS: [u16; 2] = [1, 2];
/// The ring/buffer size of the small-buffer runs, KiB (both tools' -B).
pub const SMALL_BUFFER_KIB: u32 = 64;
const FIRST_PORT: u16 = 5301;
/// Other processes' CPU use (in CPUs) above which a run is repeated.
const MAX_FOREIGN_LOAD: f64 = 0.10;

/// What `podtrace-bench` was asked to do.
#[derive(Debug, Clone)]
pub struct Options {
    /// One short run of everything.
    pub quick: bool,
    /// Where the Markdown report goes.
    pub out: PathBuf,
    /// The benchmark's network: namespace pbench-N, 10.246.N.0/24.
    pub net_id: u8,
    /// The podtrace binary under test.
    pub podtrace: PathBuf,
    /// Only these sections (see [`SECTIONS`]); all when empty. For work on
    /// one measurement: the report's other tables stay empty.
    pub only: Vec<String>,
    /// Minutes of table 5d's goal row (full runs).
    pub goal_minutes: u32,
}

/// The sections `--only` picks from, in the order they run.
pub const SECTIONS: [&str; 10] = [
    "tcp",
    "udp",
    "small-buffers",
    "filter-tcp",
    "filter-cost",
    "filter-switch",
    "filter-udp",
    "first-packet",
    "workload",
    "redirect",
];

impl Options {
    /// Whether section `name` runs.
    pub fn runs(&self, name: &str) -> bool {
        debug_assert!(SECTIONS.contains(&name), "{name}");
        self.only.is_empty() || self.only.iter().any(|o| o == name)
    }
}

/// How long and how often, for a full or a quick run.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub runs: usize,
    pub tcp_secs: u32,
    pub udp_secs: u32,
    /// Length of each run of the loss-free rate search.
    pub step_secs: u32,
    /// Halvings of the loss-free rate search.
    pub search_steps: u32,
    /// Wait after the traffic before stopping a tool: tcpdump hands its ring
    /// to userspace at most every second, and loses what it has not read
    /// when stopped (environment.md).
    pub settle: Duration,
}

impl Plan {
    pub fn new(quick: bool) -> Self {
        if quick {
            Self {
                runs: 1,
                tcp_secs: 1,
                udp_secs: 1,
                step_secs: 1,
                search_steps: 1,
                settle: Duration::from_millis(1200),
            }
        } else {
            Self {
                runs: 3,
                tcp_secs: 10,
                udp_secs: 10,
                step_secs: 5,
                search_steps: 4,
                settle: Duration::from_millis(1500),
            }
        }
    }
}

/// One timed run: the traffic, and the tool's view of it.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunResult {
    pub traffic: Traffic,
    pub capture: Option<CaptureStats>,
    /// Test datagrams found in the tool's file (UDP runs).
    pub in_file: Option<u64>,
    /// Packets of any kind that crossed the veth while the tool ran (its
    /// counters), and packets of any kind in the file.
    pub crossed: Option<u64>,
    pub in_file_all: Option<u64>,
    /// The machine was busy with something else when the run started.
    pub busy_start: bool,
    /// CPUs' worth of other processes running during the traffic (0.25 =
    /// a quarter of one CPU).
    pub foreign_load: f64,
}

impl RunResult {
    /// Test datagrams sent but not in the file.
    pub fn missing(&self) -> Option<i64> {
        Some(self.traffic.sent as i64 - self.in_file? as i64)
    }

    /// Packets of any kind (iperf3's control traffic too) that crossed the
    /// veth but are not in the file.
    pub fn missing_all(&self) -> Option<i64> {
        Some(self.crossed? as i64 - self.in_file_all? as i64)
    }

    /// No loss by any count.
    pub fn lossless(&self) -> bool {
        self.capture.is_some_and(|c| c.lost == 0)
            && self.missing() == Some(0)
            && self.missing_all() == Some(0)
    }
}

/// The outcome of a loss-free rate search.
#[derive(Debug, Clone, Copy)]
pub struct LossFree {
    /// Highest sent rate with no loss, packets/s (0 if none was found).
    pub pps: f64,
    /// No loss even with the senders unthrottled: the real limit is higher.
    pub sender_limited: bool,
    /// The paced senders (`iperf3 -b`) fell short of the rate asked for
    /// without loss, while unthrottled ones lost at this rate: the limit lies
    /// between `pps` and this.
    pub lossy_above: Option<f64>,
}

/// Runs the whole benchmark and writes the report; returns its text.
pub fn run(opts: &Options) -> Result<String> {
    procs::catch_signals();
    let plan = Plan::new(opts.quick);
    let mut report = Report::new(opts, plan);
    let mut bench = Bench::new(opts, plan)?;

    if opts.runs("tcp") {
        eprintln!("bench: TCP throughput");
        bench.tcp(&mut report)?;
    }
    if opts.runs("udp") {
        eprintln!("bench: UDP at full sender speed and loss-free rates");
        bench.udp(&mut report)?;
    }
    if opts.runs("small-buffers") {
        eprintln!("bench: small buffers");
        bench.small_buffers(&mut report)?;
    }
    eprintln!("bench: filters matching nothing");
    bench.filters(&mut report.filters)?;
    if opts.runs("first-packet") {
        eprintln!("bench: time to first packet");
        bench.first_packet(&mut report)?;
    }
    if opts.runs("redirect") {
        eprintln!("bench: packets that skip the host veth: detection, the eth0 hook");
        bench.redirect(&mut report.redirect)?;
    }

    if opts.runs("workload") {
        eprintln!("bench: workload capture (a node of 50 pods)");
        workload::run(&opts.podtrace, plan, &mut report.workload)?;
    }

    report.commands = std::mem::take(&mut bench.commands);
    report.retried = bench.retried;
    let text = report.render();
    std::fs::write(&opts.out, &text).with_context(|| format!("writing {}", opts.out.display()))?;
    Ok(text)
}

struct Bench<'a> {
    opts: &'a Options,
    plan: Plan,
    // Field order is drop order: servers before the namespace they live in.
    servers: Servers,
    net: TestNet,
    scratch: Scratch,
    /// One example of every command line used, for the report.
    commands: Vec<(String, String)>,
    /// Runs repeated because other processes disturbed them.
    retried: usize,
}

impl<'a> Bench<'a> {
    fn new(opts: &'a Options, plan: Plan) -> Result<Self> {
        for tool in ["iperf3", "tcpdump", "nsenter", "ss"] {
            if crate::sh(&["sh", "-c", &format!("command -v {tool}")]).is_err() {
                bail!("{tool} is not installed (cargo xtask setup installs it)");
            }
        }
        if !opts.podtrace.exists() {
            bail!("{} does not exist", opts.podtrace.display());
        }
        kill_leftovers(&format!("pbench-{}", opts.net_id));
        let net = TestNet::named("pbench", opts.net_id)?;
        let servers = Servers::start(
            &net.name,
            &net.ns_ip.to_string(),
            FIRST_PORT,
            *SENDERS.iter().max().unwrap(),
        )?;
        Ok(Self {
            opts,
            plan,
            servers,
            net,
            scratch: Scratch::new()?,
            commands: Vec::new(),
            retried: 0,
        })
    }

    fn note_command(&mut self, what: &str, argv: &[String]) {
        if !self.commands.iter().any(|(w, _)| w == what) {
            self.commands.push((what.to_owned(), argv.join(" ")));
        }
    }

    /// Starts `spec`, runs `load` from `senders` clients for `secs`, stops
    /// the tool and counts its file.
    fn run_once(
        &mut self,
        spec: CaptureSpec,
        load: Load,
        senders: u16,
        secs: u32,
    ) -> Result<RunResult> {
        check_interrupted()?;
        let file = self.scratch.0.join("capture.pcap");
        let _ = std::fs::remove_file(&file);
        let argv = spec.argv(&self.opts.podtrace, &self.net.host_if, &file);
        let busy_start = self.wait_quiet()?;
        let running = match spec.tool {
            Tool::Nothing => None,
            _ => {
                self.note_command(&spec.what(), &argv);
                Some(Running::start(&argv)?)
            }
        };
        let crossed_before = procs::veth_packets(&self.net.host_if)?;
        let foreign_before = procs::foreign_ticks();
        let traffic_start = Instant::now();
        let ns_ip = self.net.ns_ip.to_string();
        let clients: Vec<Vec<String>> = self.servers.ports[..usize::from(senders)]
            .iter()
            .map(|&port| iperf::client_argv(&ns_ip, port, secs, load, senders))
            .collect();
        let what = match load {
            Load::Tcp => "iperf3 TCP".to_string(),
            Load::Udp { pps: 0, len } => format!("iperf3 UDP {len} B, unthrottled"),
            Load::Udp { len, .. } => format!("iperf3 UDP {len} B, at a rate (search)"),
        };
        if senders > 1 {
            let all = clients.iter().map(|c| c.join(" ")).collect::<Vec<_>>();
            self.note_command(
                &format!("{what}, {senders} senders at once"),
                &[all.join(" & ")],
            );
        } else {
            self.note_command(&what, &clients[0]);
        }
        let traffic = run_clients(&clients, secs)?;
        let foreign_load = procs::foreign_cpu(&foreign_before, &procs::foreign_ticks())
            / traffic_start.elapsed().as_secs_f64();
        let (capture, crossed) = match running {
            Some(running) => {
                pause(self.plan.settle)?;
                let crossed = procs::veth_packets(&self.net.host_if)? - crossed_before;
                (Some(running.stop()?), Some(crossed))
            }
            None => (None, None),
        };
        let in_file_all = match capture {
            Some(_) => {
                self.note_command(
                    "count every packet in the file",
                    &["tcpdump", "-n", "-r", "FILE", "--count"].map(String::from),
                );
                self.note_command(
                    "packets that crossed the veth",
                    &[format!(
                        "/sys/class/net/{}/statistics/{{tx_packets,tx_dropped,rx_packets}}, after minus before",
                        self.net.host_if
                    )],
                );
                Some(count_in_file(&file, "")?)
            }
            None => None,
        };
        let in_file = match (load, capture.is_some()) {
            (Load::Udp { len, .. }, true) => {
                let last = FIRST_PORT + senders - 1;
                let filter = format!(
                    "ip src {} and udp dst portrange {FIRST_PORT}-{last} and udp[4:2] = {}",
                    self.net.host_ip,
                    len + 8
                );
                self.note_command(
                    "count test datagrams in the file",
                    &[
                        "tcpdump",
                        "-n",
                        "-r",
                        "FILE",
                        "--count",
                        &format!("'{filter}'"),
                    ]
                    .map(String::from),
                );
                Some(count_in_file(&file, &filter)?)
            }
            _ => None,
        };
        let _ = std::fs::remove_file(&file);
        Ok(RunResult {
            traffic,
            capture,
            in_file,
            crossed,
            in_file_all,
            busy_start,
            foreign_load,
        })
    }

    /// [`Self::run_once`], again (up to twice more, full runs only) when
    /// other processes used more than a tenth of a CPU during the traffic:
    /// the numbers would be theirs as much as the tool's.
    fn run(&mut self, spec: CaptureSpec, load: Load, senders: u16, secs: u32) -> Result<RunResult> {
        let mut r = self.run_once(spec, load, senders, secs)?;
        for _ in 0..2 {
            if self.opts.quick || r.foreign_load <= MAX_FOREIGN_LOAD {
                break;
            }
            eprintln!(
                "bench:   other processes used {:.0}% of a CPU during that run: again",
                r.foreign_load * 100.0
            );
            self.retried += 1;
            r = self.run_once(spec, load, senders, secs)?;
        }
        Ok(r)
    }

    /// Waits (full runs only, at most a minute) until the machine is quiet:
    /// less than 15% of its CPU busy over a second. Returns whether it was
    /// still busy.
    fn wait_quiet(&mut self) -> Result<bool> {
        if self.opts.quick {
            return Ok(false);
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let busy = procs::cpu_busy_percent(Duration::from_secs(1))?;
            if busy < 15.0 {
                return Ok(false);
            }
            if Instant::now() > deadline {
                eprintln!("bench:   machine still busy ({busy:.0}% CPU), running anyway");
                return Ok(true);
            }
        }
    }
}

/// `items` starting at a different one each run, so no setup always runs
/// first (or right after a heavy one).
fn rotated<T>(items: &[T], run: usize) -> impl Iterator<Item = &T> {
    let k = run % items.len();
    items[k..].iter().chain(&items[..k])
}

/// Processes a killed earlier run left in its namespace (iperf3 servers,
/// sleepers): the namespace itself is removed by `TestNet::named`.
fn kill_leftovers(netns: &str) {
    let Ok(pids) = crate::sh(&["ip", "netns", "pids", netns]) else {
        return;
    };
    for pid in pids
        .split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
    {
        // SAFETY: plain kill(2) of a process inside our own benchmark namespace.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}
