//! Section 7 (issue 18): what watching for packets that skip a pod's host
//! veth costs, and what the hook at a pod's own eth0 costs.
//!
//! - 7a: the kernel's cost per packet of each hook, without traffic
//!   (BPF_PROG_TEST_RUN on one 64-byte UDP frame, as table 5c): the host
//!   veth's egress program, against the eth0 hook (its per-pod stub, a tail
//!   call, the same capture).
//! - 7b: one comparison of a pod's counters (two rtnetlink requests), the
//!   whole of detection: nothing runs per packet.
//! - 7c: a UDP 64 B flood into the benchmark's namespace with podtrace
//!   capturing it as a host interface (`-i`, no detection), as a namespace
//!   (`--netns`, detection on), and with what it receives taken at its eth0
//!   (`--redirect-fallback always`); and with another namespace's eth0
//!   hooked while this one is flooded: the rest of the node's traffic.

use std::{collections::HashMap, fmt::Write as _, time::Instant};

use anyhow::{ensure, Context, Result};
use aya::programs::TcAttachType;
use etherparse::PacketBuilder;
use podtrace::{
    attach::{self, FilterEngine, LoadOptions, Programs},
    link::{self, PathReader},
};

use super::{
    iperf::{self, Load},
    procs::{self, Running},
    report::{fmt_opt, median, runs_list},
    rotated, Bench, Plan, UDP_SNAPLEN,
};
use crate::netns::TestNet;

/// Runs per test-run measurement (the kernel reports the mean), and
/// measurements per row (the lowest mean is kept); a tenth and one in a
/// quick run. The ring holds every record of a measurement.
const REPEAT: u32 = 100_000;
const ROUNDS: usize = 5;
/// Counter comparisons timed for 7b.
const CHECKS: u32 = 2_000;
/// Datagram size of 7c's flood.
const FLOOD_LEN: u32 = 64;
/// Where BPF_PROG_TEST_RUN says a packet came in.
const LOOPBACK_IFINDEX: u32 = 1;

/// The setups of 7c.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Setup {
    Nothing,
    /// `-i VETH`: a host interface, not watched.
    Iface,
    /// `--netns PATH`: watched, taken at the veth (nothing skips it).
    Netns,
    /// `--netns PATH --redirect-fallback always`: taken at its eth0.
    Eth0,
    /// Another namespace's eth0 hooked; this one's traffic not captured.
    OtherEth0,
}

impl Setup {
    pub const ALL: [Self; 5] = [
        Self::Nothing,
        Self::Iface,
        Self::Netns,
        Self::Eth0,
        Self::OtherEth0,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Self::Nothing => "flood into the pod, nothing attached",
            Self::Iface => "podtrace -i VETH (not watched)",
            Self::Netns => "podtrace --netns NS (watched; nothing skips the veth)",
            Self::Eth0 => "podtrace --netns NS --redirect-fallback always (eth0 hook)",
            Self::OtherEth0 => "another pod's eth0 hooked, this one's traffic not captured",
        }
    }
}

/// One 7c run.
#[derive(Debug, Clone, Copy)]
pub struct Flood {
    pub received_kpps: f64,
    pub captured: Option<u64>,
    pub lost: Option<u64>,
    pub cpu_s_per_mpkt: Option<f64>,
}

/// Section 7's measurements.
#[derive(Debug, Clone, Default)]
pub struct Results {
    pub measured: bool,
    pub quick: bool,
    /// 7a: (label, ns per packet).
    pub hooks: Vec<(String, u32)>,
    /// 7b: µs per comparison of one pod's counters.
    pub check_us: Option<f64>,
    pub floods: HashMap<Setup, Vec<Flood>>,
}

/// 7a's rows.
const VETH_EGRESS: &str = "host veth egress: podtrace_egress";
const ETH0_HOOK: &str = "pod's eth0: stub + tail call + podtrace_eth0";
/// 7b's row.
const CHECK: &str = "comparing one pod's counters (eth0 rx, veth tx)";

/// Every row label of section 7.
pub fn row_labels() -> Vec<String> {
    let mut rows: Vec<String> = vec![VETH_EGRESS.into(), ETH0_HOOK.into(), CHECK.into()];
    rows.extend(Setup::ALL.map(|s| s.label().to_owned()));
    rows
}

fn frame() -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4([10, 246, 250, 1], [10, 246, 250, 2], 64)
        .udp(40000, 5201)
        .write(&mut buf, &[0u8; 64])?;
    Ok(buf)
}

/// Lowest mean ns per run of one hook, each round on freshly loaded
/// programs. Nothing drains the ring here, and past a quarter full every
/// record forces a wakeup (an irq_work, ~2 µs on this VM), which a capture
/// being drained does not pay: the ring is sized so that all of a round's
/// records stay under that quarter.
fn hook_cost(eth0: bool, repeat: u32, rounds: usize) -> Result<u32> {
    let frame = frame()?;
    let mut best = u32::MAX;
    for _ in 0..rounds {
        let mut programs = Programs::load(LoadOptions {
            snaplen: UDP_SNAPLEN,
            ring_bytes: (repeat * 256 * 4).next_power_of_two(),
            filter: &[],
            engine: FilterEngine::Auto,
            slow_loads_only: false,
            immediate: false,
            links: 1,
        })?;
        programs.load_eth0()?;
        programs.count_link(LOOPBACK_IFINDEX)?;
        let (verdict, ns) = if eth0 {
            programs.eth0_test_run(LOOPBACK_IFINDEX, &frame, repeat)?
        } else {
            let prog = programs.entry(TcAttachType::Egress)?;
            attach::test_run(prog, &frame, repeat)?
        };
        ensure!(verdict == -1, "verdict {verdict}, not TCX_NEXT");
        let counts = programs.link_counters(LOOPBACK_IFINDEX);
        ensure!(
            counts.seen == u64::from(repeat) && counts.lost == 0,
            "the hook saw {} of {repeat} runs, lost {}",
            counts.seen,
            counts.lost
        );
        best = best.min(ns);
    }
    Ok(best)
}

impl Bench<'_> {
    /// Section 7.
    pub(super) fn redirect(&mut self, out: &mut Results) -> Result<()> {
        out.measured = true;
        out.quick = self.opts.quick;
        let (repeat, rounds, checks) = if self.opts.quick {
            (REPEAT / 10, 1, CHECKS / 10)
        } else {
            (REPEAT, ROUNDS, CHECKS)
        };
        for (label, eth0) in [(VETH_EGRESS, false), (ETH0_HOOK, true)] {
            let ns = hook_cost(eth0, repeat, rounds).context(label)?;
            eprintln!("bench:   {label}: {ns} ns per packet");
            out.hooks.push((label.into(), ns));
        }

        let netns = self.net.netns_path();
        let veth = link::by_name(&self.net.host_if)?;
        let mut reader = PathReader::open()?;
        reader.watch(veth.ifindex, &netns)?;
        let started = Instant::now();
        for _ in 0..checks {
            reader.sample(veth.ifindex)?;
        }
        let us = started.elapsed().as_secs_f64() * 1e6 / f64::from(checks);
        eprintln!("bench:   {CHECK}: {us:.1} us");
        out.check_us = Some(us);

        // The other pod: a namespace of its own, on a net number the test
        // networks' lock gives out.
        let other = TestNet::new().context("a second namespace")?;
        for run in 0..self.plan.runs {
            for &setup in rotated(&Setup::ALL, run) {
                let flood = self.flood(setup, &netns, &other)?;
                eprintln!(
                    "bench:   {}: {:.1} kpps received, {:?} captured, {:?} CPU s per Mpkt",
                    setup.label(),
                    flood.received_kpps,
                    flood.captured,
                    flood.cpu_s_per_mpkt
                );
                out.floods.entry(setup).or_default().push(flood);
            }
        }
        Ok(())
    }

    fn flood(&mut self, setup: Setup, netns: &std::path::Path, other: &TestNet) -> Result<Flood> {
        procs::check_interrupted()?;
        let file = self.scratch.0.join("redirect.pcap");
        let _ = std::fs::remove_file(&file);
        let podtrace = self.opts.podtrace.display().to_string();
        let mut argv: Vec<String> = vec![podtrace, "capture".into()];
        let target: Vec<String> = match setup {
            Setup::Nothing => Vec::new(),
            Setup::Iface => vec!["-i".into(), self.net.host_if.clone()],
            Setup::Netns => vec!["--netns".into(), netns.display().to_string()],
            Setup::Eth0 => vec![
                "--netns".into(),
                netns.display().to_string(),
                "--redirect-fallback".into(),
                "always".into(),
            ],
            Setup::OtherEth0 => vec![
                "--netns".into(),
                other.netns_path().display().to_string(),
                "--redirect-fallback".into(),
                "always".into(),
            ],
        };
        argv.extend(target);
        argv.extend([
            "-w".into(),
            file.display().to_string(),
            "-s".into(),
            UDP_SNAPLEN.to_string(),
        ]);
        let running = match setup {
            Setup::Nothing => None,
            _ => {
                self.note_command(setup.label(), &argv);
                Some(Running::start(&argv)?)
            }
        };
        let load = Load::Udp {
            pps: 0,
            len: FLOOD_LEN,
        };
        let ns_ip = self.net.ns_ip.to_string();
        let client = iperf::client_argv(&ns_ip, self.servers.ports[0], self.plan.udp_secs, load, 1);
        let traffic = iperf::run_clients(&[client], self.plan.udp_secs)?;
        let stats = match running {
            Some(running) => {
                procs::pause(self.plan.settle)?;
                Some(running.stop()?)
            }
            None => None,
        };
        let _ = std::fs::remove_file(&file);
        let mpkts = traffic.received as f64 / 1e6;
        Ok(Flood {
            received_kpps: traffic.received_pps() / 1e3,
            captured: stats.map(|s| s.captured),
            lost: stats.map(|s| s.lost),
            cpu_s_per_mpkt: stats
                .filter(|_| mpkts > 0.0)
                .map(|s| s.cpu.as_secs_f64() / mpkts),
        })
    }
}

/// Section 7's tables.
pub fn render(r: &Results, plan: Plan, o: &mut String) {
    if !r.measured {
        return;
    }
    let (repeat, rounds) = if r.quick {
        (REPEAT / 10, 1)
    } else {
        (REPEAT, ROUNDS)
    };
    let _ = writeln!(
        o,
        "\n## 7. Packets that skip the host veth (issue 18)\n\n\
         A CNI that delivers packets straight into a pod's eth0 (Cilium's bpf_redirect_peer) \
         bypasses the host veth's egress hook. podtrace compares the pod's eth0 rx count with \
         the veth's tx count every 250 ms (detection: nothing runs per packet), and takes what \
         such a pod receives at a TCX hook on its eth0 instead.\n\n\
         ### 7a. Kernel cost per packet of each hook (BPF_PROG_TEST_RUN, no traffic)\n\n\
         Each program run {repeat} times in a row by the kernel on one 64-byte UDP frame, \
         copied to the ring (-s {UDP_SNAPLEN}); lowest mean of {rounds} measurement(s). \
         Includes BPF_PROG_TEST_RUN's own per-run cost.\n\n\
         | hook | ns per packet |\n|---|---:|"
    );
    for (label, ns) in &r.hooks {
        let _ = writeln!(o, "| {label} | {ns} |");
    }
    let _ = writeln!(
        o,
        "\n### 7b. Detection\n\n\
         Two RTM_GETLINK requests over one netlink socket (the pod's eth0 through \
         IFLA_TARGET_NETNSID, then the host veth), timed in-process on the benchmark's \
         namespace; podtrace makes one comparison per watched pod every 250 ms, and none once \
         the pod's eth0 is hooked.\n\n\
         | what | µs per comparison | CPU per watched pod, % of one CPU |\n|---|---:|---:|"
    );
    if let Some(us) = r.check_us {
        let _ = writeln!(o, "| {CHECK} | {us:.1} | {:.4} |", us * 4.0 / 1e4);
    }
    let _ = writeln!(
        o,
        "\n### 7c. UDP {FLOOD_LEN} B flood into the pod ({} s, 1 sender unthrottled, -s {UDP_SNAPLEN}, {} run(s) each)\n\n\
         The namespace is the pod: the flood crosses its host veth's egress, then its eth0's \
         ingress. The last row hooks another namespace's eth0 and captures nothing of this \
         traffic: what a pod's eth0 hook costs the rest of the node.\n\n\
         | setup | received kpps | % of nothing | captured | reported loss | CPU s per Mpkt | runs, received kpps |\n\
         |---|---:|---:|---:|---:|---:|---|",
        plan.udp_secs, plan.runs
    );
    let nothing = r
        .floods
        .get(&Setup::Nothing)
        .and_then(|v| median(v.iter().map(|f| f.received_kpps).collect()));
    for setup in Setup::ALL {
        let runs = r.floods.get(&setup).cloned().unwrap_or_default();
        let kpps = median(runs.iter().map(|f| f.received_kpps).collect());
        let pct = kpps.zip(nothing).map(|(k, n)| 100.0 * k / n);
        let worst = |get: fn(&Flood) -> Option<u64>| match setup {
            Setup::Nothing => "—".to_string(),
            _ => runs
                .iter()
                .filter_map(get)
                .max()
                .map_or("—".into(), |n| n.to_string()),
        };
        let (captured, lost) = (worst(|f| f.captured), worst(|f| f.lost));
        let cpu = median(runs.iter().filter_map(|f| f.cpu_s_per_mpkt).collect());
        let cpu = match setup {
            Setup::Nothing => "—".to_string(),
            _ => fmt_opt(cpu, 3),
        };
        let _ = writeln!(
            o,
            "| {} | {} | {} | {captured} | {lost} | {cpu} | {} |",
            setup.label(),
            fmt_opt(kpps, 1),
            fmt_opt(pct, 1),
            runs_list(runs.iter().map(|f| f.received_kpps), 1)
        );
    }
}
