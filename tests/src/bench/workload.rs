//! Table 6: workload capture, on a private CRI node of real pods.
//!
//! - 6a: one UDP flood into one pod while podtrace holds that pod alone, or
//!   fifty pods of a selector (the flood's and 49 idle ones): the rate the
//!   pod's eth0 receives and podtrace's CPU per packet. What it shows is
//!   whether the per-link counter lookup and fifty links cost the flood
//!   anything. Each run also gives the time from starting podtrace to
//!   "capturing on" (every pod of the start attached), with TCX and with
//!   clsact, and podtrace's peak RSS.
//! - 6b: from a new pod's host veth appearing (the rtnetlink event) to
//!   podtrace's programs on both of its TC hooks (polled every 0.5 ms),
//!   for pods created during a capture.

use std::{
    fmt::Write as _,
    net::UdpSocket,
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use aya::programs::{SchedClassifier, TcAttachType};
use podtrace::link::{LinkEvent, LinkMonitor};

use super::{
    procs::{check_interrupted, pause, Running},
    report::{fmt_opt, median, runs_list},
    rotated, Plan,
};
use crate::node::{Node, Pod, PodSpec};

const NAMESPACE: &str = "bench";
const ATTACH_LABEL: &str = "a new pod's veth appearing → podtrace on both hooks";
const PODS: usize = 50;

/// What podtrace holds during a flood.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    Nothing,
    OnePod,
    FiftyPods,
    FiftyClsact,
}

impl Held {
    const ALL: [Self; 4] = [
        Self::Nothing,
        Self::OnePod,
        Self::FiftyPods,
        Self::FiftyClsact,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::Nothing => "nothing attached",
            Self::OnePod => "podtrace, 1 pod (the flood's)",
            Self::FiftyPods => "podtrace, 50 pods (the flood's and 49 idle)",
            Self::FiftyClsact => "podtrace --tc-mode clsact, 50 pods",
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Flood {
    pub held: Held,
    /// Packets the flood's pod received per second (its eth0's counter).
    pub received_pps: f64,
    pub sent_pps: f64,
    pub captured: u64,
    pub lost: u64,
    /// podtrace's CPU per captured packet, ns.
    pub cpu_ns: Option<f64>,
    /// From spawning podtrace to "capturing on", ms.
    pub ready_ms: Option<f64>,
    pub peak_rss_kib: Option<u64>,
}

#[derive(Debug, Default)]
pub struct WorkloadResults {
    pub ran: bool,
    pub floods: Vec<Flood>,
    /// Veth appearing → podtrace attached, ms, one per pod.
    pub attach_ms: Vec<f64>,
    pub commands: Vec<String>,
}

/// Runs 6a and 6b on a node of its own.
pub fn run(podtrace: &std::path::Path, plan: Plan, out: &mut WorkloadResults) -> Result<()> {
    out.ran = true;
    let node = Node::start()?;
    let endpoint = node.endpoint();
    let mut pods = Vec::new();
    for i in 0..PODS {
        let spec = PodSpec::new(&format!("wl-{i:02}"))
            .namespace(NAMESPACE)
            .label("app", "bench-wl");
        pods.push(node.run_pod(spec)?);
    }
    let base = |extra: &[&str]| -> Vec<String> {
        let mut v = vec![
            podtrace.display().to_string(),
            "capture".into(),
            "--runtime-endpoint".into(),
            endpoint.clone(),
            "-n".into(),
            NAMESPACE.into(),
            "-s".into(),
            "96".into(),
            "-w".into(),
            "/dev/null".into(),
            // The same writer for one pod and fifty.
            "--format".into(),
            "pcapng".into(),
        ];
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let one = base(&["wl-00"]);
    let fifty = base(&["-l", "app=bench-wl"]);
    let clsact = base(&["-l", "app=bench-wl", "--tc-mode", "clsact"]);
    out.commands.push(one.join(" "));
    out.commands.push(fifty.join(" "));
    out.commands.push(clsact.join(" "));
    let secs = plan.udp_secs;
    for run in 0..plan.runs {
        for &held in rotated(&Held::ALL, run) {
            let argv = match held {
                Held::Nothing => None,
                Held::OnePod => Some(&one),
                Held::FiftyPods => Some(&fifty),
                Held::FiftyClsact => Some(&clsact),
            };
            let flood = flood(&node, &pods[0], held, argv, secs)?;
            eprintln!(
                "bench:   {:<44} {:7.1} kpps received, {} ns CPU/packet",
                held.label(),
                flood.received_pps / 1e3,
                fmt_opt(flood.cpu_ns, 0)
            );
            out.floods.push(flood);
        }
    }
    let late = base(&["-l", "app=bench-late", "--wait"]);
    out.commands.push(late.join(" "));
    let count = if plan.runs == 1 { 5 } else { 20 };
    out.attach_ms = attach_latency(&node, &late, count)?;
    node.shutdown()
}

/// One flood of `secs` into `pod` with podtrace (`argv`) or without.
fn flood(
    node: &Node,
    pod: &Pod,
    held: Held,
    argv: Option<&Vec<String>>,
    secs: u32,
) -> Result<Flood> {
    check_interrupted()?;
    let spawned = Instant::now();
    let running = argv.map(|a| Running::start(a)).transpose()?;
    let ready_ms = running
        .as_ref()
        .map(|_| spawned.elapsed().as_secs_f64() * 1e3);
    let rx = || -> Result<u64> {
        let path = format!(
            "/proc/{}/root/sys/class/net/eth0/statistics/rx_packets",
            pod.pid
        );
        Ok(std::fs::read_to_string(&path)
            .with_context(|| format!("reading {path}"))?
            .trim()
            .parse()?)
    };
    let sock = UdpSocket::bind((node.gateway(), 0))?;
    let to = (pod.ip()?, 9);
    let payload = [0x42u8; 64];
    let before = rx()?;
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < Duration::from_secs(u64::from(secs)) {
        for _ in 0..256 {
            // A full socket buffer is the flood's own limit, not an error.
            if sock.send_to(&payload, to).is_ok() {
                sent += 1;
            }
        }
    }
    let took = start.elapsed().as_secs_f64();
    pause(Duration::from_millis(300))?;
    let received = rx()? - before;
    let (captured, lost, cpu_ns, peak_rss_kib) = match running {
        Some(r) => {
            let stats = r.stop()?;
            let ns = stats.cpu.as_nanos() as f64 / stats.captured.max(1) as f64;
            (
                stats.captured,
                stats.lost,
                Some(ns),
                Some(stats.peak_rss_kib),
            )
        }
        None => (0, 0, None, None),
    };
    Ok(Flood {
        held,
        received_pps: received as f64 / took,
        sent_pps: sent as f64 / took,
        captured,
        lost,
        cpu_ns,
        ready_ms,
        peak_rss_kib,
    })
}

/// Creates `count` pods one after another during a capture that waits for
/// them, and times each veth's appearance to podtrace's programs on it.
fn attach_latency(node: &Node, argv: &[String], count: usize) -> Result<Vec<f64>> {
    let running = Running::start(argv)?;
    let (tx, rx) = mpsc::channel::<Result<(String, Duration)>>();
    let stop = Arc::new(AtomicBool::new(false));
    let watching = stop.clone();
    let watcher = std::thread::spawn(move || watch_veths(&watching, &tx));
    let mut delays = Vec::new();
    let mut pods = Vec::new();
    let result = (|| -> Result<()> {
        for i in 0..count {
            check_interrupted()?;
            let spec = PodSpec::new(&format!("late-{i:02}"))
                .namespace(NAMESPACE)
                .label("app", "bench-late");
            pods.push(node.run_pod(spec)?);
            let (veth, delay) = rx
                .recv_timeout(Duration::from_secs(10))
                .context("no veth seen for the new pod")??;
            eprintln!(
                "bench:   pod {i:2}: {veth} attached {:.1} ms after it appeared",
                delay.as_secs_f64() * 1e3
            );
            delays.push(delay.as_secs_f64() * 1e3);
        }
        Ok(())
    })();
    stop.store(true, Ordering::Relaxed);
    for pod in &pods {
        node.remove_pod(pod)?;
    }
    running.stop()?;
    let _ = watcher.join();
    result.map(|()| delays)
}

/// For each new veth (a host link whose peer is in another namespace):
/// its name and the time from its rtnetlink event to podtrace's programs
/// on both hooks.
fn watch_veths(stop: &AtomicBool, tx: &mpsc::Sender<Result<(String, Duration)>>) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return drop(tx.send(Err(e.into()))),
    };
    runtime.block_on(async {
        let mut monitor = match LinkMonitor::open() {
            Ok(m) => m,
            Err(e) => return drop(tx.send(Err(e.into()))),
        };
        let mut seen = std::collections::HashSet::new();
        while !stop.load(Ordering::Relaxed) {
            let events = tokio::time::timeout(Duration::from_millis(200), monitor.next()).await;
            let Ok(Ok(events)) = events else { continue };
            for event in events {
                let LinkEvent::New(info) = event else {
                    continue;
                };
                if info.peer_netnsid.is_none() || !seen.insert(info.index) {
                    continue;
                }
                let appeared = Instant::now();
                let outcome = wait_attached(&info.name, appeared).map(|d| (info.name.clone(), d));
                if tx.send(outcome).is_err() {
                    return;
                }
            }
        }
    });
}

/// Polls the link's TCX hooks until podtrace's programs are on both.
fn wait_attached(iface: &str, since: Instant) -> Result<Duration> {
    let ours = |hook| -> bool {
        SchedClassifier::query_tcx(iface, hook).is_ok_and(|(_, progs)| {
            progs
                .iter()
                .any(|p| p.name_as_str().is_some_and(|n| n.starts_with("podtrace")))
        })
    };
    loop {
        if ours(TcAttachType::Ingress) && ours(TcAttachType::Egress) {
            return Ok(since.elapsed());
        }
        if since.elapsed() > Duration::from_secs(5) {
            bail!("podtrace did not attach to {iface} within 5 s");
        }
        std::thread::sleep(Duration::from_micros(500));
    }
}

/// The first cells of table 6's rows, for checking the report is complete.
pub fn row_labels() -> Vec<String> {
    let mut rows: Vec<String> = Held::ALL.iter().map(|h| h.label().to_owned()).collect();
    rows.push(ATTACH_LABEL.to_owned());
    rows
}

impl WorkloadResults {
    /// Table 6.
    pub fn render(&self, o: &mut String) {
        if !self.ran {
            return;
        }
        let _ = writeln!(
            o,
            "\n## 6. Workload capture (issue 16)\n\n\
             A private containerd node with {PODS} pods (`app=bench-wl`). \
             **6a**: one thread floods 64-byte UDP datagrams from the node's bridge \
             address into pod `wl-00`; \"received\" is what that pod's eth0 counted \
             (`/proc/PID/root/sys/class/net/eth0/statistics/rx_packets`), CPU is \
             podtrace's user+system time per packet it wrote (snaplen 96, to /dev/null). \
             \"Start\" is from spawning podtrace to its \"capturing on\" line, printed once \
             every pod of the start is attached; RSS is its VmHWM.\n\n\
             | setup | received kpps | sent kpps | podtrace CPU ns per packet | captured / lost | start ms | peak RSS MiB | runs, received kpps |\n\
             |---|---:|---:|---:|---|---:|---:|---|"
        );
        for held in Held::ALL {
            let runs: Vec<&Flood> = self.floods.iter().filter(|f| f.held == held).collect();
            let received: Vec<f64> = runs.iter().map(|f| f.received_pps / 1e3).collect();
            let sent: Vec<f64> = runs.iter().map(|f| f.sent_pps / 1e3).collect();
            let cpu: Vec<f64> = runs.iter().filter_map(|f| f.cpu_ns).collect();
            let ready: Vec<f64> = runs.iter().filter_map(|f| f.ready_ms).collect();
            let rss: Vec<f64> = runs
                .iter()
                .filter_map(|f| f.peak_rss_kib)
                .map(|k| k as f64 / 1024.0)
                .collect();
            let counts: Vec<String> = runs
                .iter()
                .map(|f| format!("{}/{}", f.captured, f.lost))
                .collect();
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                held.label(),
                fmt_opt(median(received.clone()), 1),
                fmt_opt(median(sent), 1),
                fmt_opt(median(cpu), 0),
                if held == Held::Nothing {
                    "-".into()
                } else {
                    counts.join(", ")
                },
                fmt_opt(median(ready), 0),
                fmt_opt(median(rss), 1),
                runs_list(received, 1)
            );
        }
        let mut sorted = self.attach_ms.clone();
        sorted.sort_by(f64::total_cmp);
        let _ = writeln!(
            o,
            "\n**6b**: pods created one after another during a capture started with \
             `--wait`; from the rtnetlink event of each pod's host veth (the bench listens \
             on RTMGRP_LINK) to podtrace's programs on both of its TCX hooks (polled every \
             0.5 ms). TCX attach waits an RCU grace period per hook.\n\n\
             | measurement | pods | median ms | max ms | each, ms |\n|---|---:|---:|---:|---|\n\
             | {ATTACH_LABEL} | {} | {} | {} | {} |",
            sorted.len(),
            fmt_opt(median(sorted.clone()), 1),
            fmt_opt(sorted.last().copied(), 1),
            runs_list(self.attach_ms.iter().copied(), 1)
        );
        let _ = writeln!(o, "\nCommands:\n");
        for c in &self.commands {
            let _ = writeln!(o, "    {c}");
        }
    }
}
