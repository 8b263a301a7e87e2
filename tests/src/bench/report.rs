//! The Markdown report: machine, method, exact commands, one table per
//! measurement (medians, ratios, every run), and the goals checked.

use std::{collections::HashMap, fmt::Write as _, path::PathBuf, process::Command, time::Duration};

use super::{
    filters::{self, FilterResults},
    procs::{CaptureSpec, Tool},
    workload::WorkloadResults,
    FirstPacket, LossFree, Options, Plan, RunResult, FULL, SENDERS, SMALL_BUFFER_KIB, UDP_LENS,
    UDP_SNAPLEN,
};

type UdpKey = (u32, u16, Tool);

pub struct Report {
    quick: bool,
    plan: Plan,
    podtrace: PathBuf,
    pub tcp: HashMap<CaptureSpec, Vec<RunResult>>,
    pub udp: HashMap<UdpKey, Vec<RunResult>>,
    pub loss_free: HashMap<UdpKey, Vec<LossFree>>,
    pub small: HashMap<Tool, Vec<RunResult>>,
    pub first_packet: HashMap<FirstPacket, Vec<Duration>>,
    pub filters: FilterResults,
    pub workload: WorkloadResults,
    pub redirect: super::redirect::Results,
    pub commands: Vec<(String, String)>,
    pub retried: usize,
}

const TCP_SPECS: [(Tool, u32); 5] = [
    (Tool::Nothing, 0),
    (Tool::Tcpdump, 96),
    (Tool::Podtrace, 96),
    (Tool::Tcpdump, FULL),
    (Tool::Podtrace, FULL),
];
const TOOLS: [Tool; 3] = [Tool::Nothing, Tool::Tcpdump, Tool::Podtrace];

fn tcp_spec(tool: Tool, snaplen: u32) -> CaptureSpec {
    CaptureSpec {
        tool,
        snaplen,
        buffer_kib: None,
        filter: None,
    }
}

pub fn tcp_label(s: CaptureSpec) -> String {
    match s.tool {
        Tool::Nothing => "TCP, nothing attached".into(),
        tool => format!("TCP, {} -s {}", tool.name(), s.snaplen),
    }
}

pub fn udp_label(len: u32, senders: u16, tool: Tool) -> String {
    let senders = match senders {
        1 => "1 sender".to_string(),
        n => format!("{n} senders"),
    };
    format!("UDP {len} B, {senders}, {}", tool.name())
}

pub fn small_label(tool: Tool) -> String {
    format!("{} -B {SMALL_BUFFER_KIB}", tool.name())
}

pub fn first_packet_label(who: FirstPacket) -> &'static str {
    match who {
        FirstPacket::Podtrace => "podtrace capture --pid PID",
        FirstPacket::NsenterTcpdump => "nsenter -t PID -n tcpdump -U",
        FirstPacket::NsenterTcpdumpImmediate => "nsenter -t PID -n tcpdump -U --immediate-mode",
    }
}

const GOALS: [&str; 6] = [
    "receiver rate with podtrace >= 98% of nothing attached",
    "receiver rate with podtrace >= with tcpdump",
    "podtrace CPU per packet <= half of tcpdump's",
    "TCP overhead of podtrace -s 96 < 5%",
    "podtrace loses nothing at full sender speed",
    "podtrace's reported loss = missing from its file",
];

/// The first cell of every row the report has, for checking it is complete.
pub fn row_labels() -> Vec<String> {
    let mut rows: Vec<String> = TCP_SPECS
        .iter()
        .map(|&(t, s)| tcp_label(tcp_spec(t, s)))
        .collect();
    for senders in SENDERS {
        for len in UDP_LENS {
            rows.extend(TOOLS.iter().map(|&t| udp_label(len, senders, t)));
        }
    }
    rows.extend([Tool::Tcpdump, Tool::Podtrace].map(small_label));
    rows.extend(FirstPacket::ALL.map(|w| first_packet_label(w).to_owned()));
    rows.extend(filters::row_labels());
    rows.extend(super::workload::row_labels());
    rows.extend(super::redirect::row_labels());
    rows.extend(GOALS.map(String::from));
    rows
}

/// The tool's reported loss is exactly what is missing from its file.
fn reported_equals_missing(r: &RunResult) -> bool {
    r.capture
        .zip(r.missing_all())
        .is_some_and(|(c, m)| c.lost as i64 == m)
}

pub(super) fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

pub(super) fn fmt_opt(v: Option<f64>, decimals: usize) -> String {
    v.map_or_else(|| "—".into(), |v| format!("{v:.decimals$}"))
}

pub(super) fn runs_list(v: impl IntoIterator<Item = f64>, decimals: usize) -> String {
    v.into_iter()
        .map(|x| format!("{x:.decimals$}"))
        .collect::<Vec<_>>()
        .join(" / ")
}

fn sh_line(args: &[&str]) -> String {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .ok()
        .map(|o| {
            let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
            s.push_str(&String::from_utf8_lossy(&o.stderr));
            s.lines().next().unwrap_or("").trim().to_owned()
        })
        .unwrap_or_default()
}

fn machine() -> Vec<(&'static str, String)> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "unknown".into());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or_else(
            || "unknown".into(),
            |kib| format!("{:.1} GiB", kib / 1048576.0),
        );
    vec![
        ("CPUs (nproc)", sh_line(&["nproc"])),
        ("CPU model", model),
        ("memory", mem),
        ("kernel (uname -r)", sh_line(&["uname", "-r"])),
        ("tcpdump", sh_line(&["tcpdump", "--version"])),
        ("iperf3", sh_line(&["iperf3", "--version"])),
    ]
}

impl Report {
    pub fn new(opts: &Options, plan: Plan) -> Self {
        Self {
            quick: opts.quick,
            plan,
            podtrace: opts.podtrace.clone(),
            tcp: HashMap::new(),
            udp: HashMap::new(),
            loss_free: HashMap::new(),
            small: HashMap::new(),
            first_packet: HashMap::new(),
            filters: FilterResults::default(),
            workload: WorkloadResults::default(),
            redirect: Default::default(),
            commands: Vec::new(),
            retried: 0,
        }
    }

    fn tcp_gbps(&self, s: CaptureSpec) -> Option<f64> {
        median(
            self.tcp
                .get(&s)?
                .iter()
                .map(|r| r.traffic.bits_per_second / 1e9)
                .collect(),
        )
    }

    fn udp_runs(&self, key: UdpKey) -> &[RunResult] {
        self.udp.get(&key).map_or(&[], Vec::as_slice)
    }

    fn received_kpps(&self, key: UdpKey) -> Option<f64> {
        median(
            self.udp_runs(key)
                .iter()
                .map(|r| r.traffic.received_pps() / 1e3)
                .collect(),
        )
    }

    /// Capture CPU seconds per million packets the tool wrote.
    fn cpu_per_mpkt(&self, key: UdpKey) -> Option<f64> {
        median(
            self.udp_runs(key)
                .iter()
                .filter_map(|r| {
                    let c = r.capture?;
                    (c.captured > 0).then(|| c.cpu.as_secs_f64() / c.captured as f64 * 1e6)
                })
                .collect(),
        )
    }

    pub fn render(&self) -> String {
        let mut o = String::new();
        let date = sh_line(&["date", "-u", "+%Y-%m-%d %H:%M UTC"]);
        let commit = sh_line(&[
            "git",
            "-C",
            env!("CARGO_MANIFEST_DIR"),
            "describe",
            "--always",
            "--dirty",
        ]);
        let _ = writeln!(o, "# Benchmarks: podtrace vs tcpdump\n");
        if self.quick {
            let _ = writeln!(
                o,
                "> **QUICK RUN** (`--quick`): one short run of each measurement. It checks that \
                 the benchmark works; its numbers are not for comparison.\n"
            );
        }
        let _ = writeln!(
            o,
            "Written by `cargo xtask bench{}` on {date}, podtrace {commit} ({}).\n",
            if self.quick { " --quick" } else { "" },
            self.podtrace.display()
        );
        let _ = writeln!(o, "## Machine\n\n| | |\n|---|---|");
        for (k, v) in machine() {
            let _ = writeln!(o, "| {k} | {v} |");
        }
        self.method(&mut o);
        self.tcp_table(&mut o);
        self.udp_table(&mut o);
        self.small_table(&mut o);
        self.first_packet_table(&mut o);
        self.filters.render(&mut o, self.plan);
        self.workload.render(&mut o);
        super::redirect::render(&self.redirect, self.plan, &mut o);
        self.goals(&mut o);
        let _ = write!(o, "\n{}", include_str!("notes.md"));
        o
    }

    fn method(&self, o: &mut String) {
        let p = self.plan;
        let _ = writeln!(
            o,
            "\n## Method\n\n\
             - A network namespace joined to the host by a veth pair (host end `10.246.N.1`, \
             namespace `10.246.N.2`), made by the benchmark and removed on every exit. iperf3 \
             servers run in the namespace, clients on the host: every test packet crosses the host \
             veth's egress, where podtrace's TC program and tcpdump's packet socket see it, in the \
             sender's context.\n\
             - The tool under test captures the host veth into a file in {}; it is started, and \
             counted as ready when it prints \"listening on\" / \"capturing on\", before the traffic.\n\
             - Each figure is the median of {} run(s); the setups compared are interleaved, run by \
             run, in rotating order. Runs: TCP {} s, UDP {} s, loss-free search steps {} s.\n\
             - **Loss** is counted twice: what the tool reports when stopped (tcpdump: \"packets \
             dropped by kernel\"; podtrace: \"lost in kernel\"), and datagrams iperf3 sent \
             (its JSON `sum_sent.packets`) minus the test datagrams in the file (`tcpdump -r \
             --count`, filtered on source address, the servers' ports and the UDP length, so \
             iperf3's control traffic is left out). Tools are stopped {:.1} s after the traffic, \
             because tcpdump only hands over its ring every second and loses the rest at SIGINT.\n\
             - **CPU** is utime + stime of the capture process from `/proc/PID/stat`, from ready \
             to just before SIGINT (so loading and the final drain are excluded), divided by the \
             packets the tool wrote. Kernel-side work done in the sender's context (TC program, \
             packet socket copy) is not in it: it shows up as a lower packet rate instead.\n\
             - **Peak RSS** is `VmHWM` from `/proc/PID/status` just before SIGINT.\n\
             - **Loss-free rate**: an unthrottled run first; if it lost nothing, the sender was the \
             limit and its rate is shown as `>= rate`; otherwise the rate is halved between 0 and \
             the unthrottled rate {} times (`iperf3 -b`), and the highest rate that lost nothing \
             is shown; the search stops early when paced iperf3 cannot reach the rate asked \
             for (pacing costs it more than sending flat out).\n\
             - **Time to first packet**: a sleeper in the namespace provides the PID; a UDP \
             datagram goes into the namespace every 2 ms; the time is from spawning the command \
             to the file holding a whole first packet (polled every 0.5 ms).",
            std::env::temp_dir().display(),
            p.runs,
            p.tcp_secs,
            p.udp_secs,
            p.step_secs,
            p.settle.as_secs_f64(),
            p.search_steps,
        );
        let all: Vec<&RunResult> = self
            .tcp
            .values()
            .chain(self.udp.values())
            .chain(self.small.values())
            .flatten()
            .chain(self.filters.runs())
            .collect();
        let busy = all.iter().filter(|r| r.busy_start).count();
        let disturbed = all.iter().filter(|r| r.foreign_load > 0.10).count();
        let worst = all.iter().map(|r| r.foreign_load).fold(0.0, f64::max);
        let _ = writeln!(
            o,
            "- The machine is shared: before each run the benchmark waits (up to a minute) for it \
             to be quiet (< 15% CPU busy over 1 s), and a run during which other processes used \
             more than 10% of a CPU (their utime + stime in /proc) is repeated, up to twice \
             (not in quick runs). {} run(s) were repeated; {busy} of the {} runs kept started on \
             a busy machine, {disturbed} were still disturbed (worst: other processes used {:.0}% \
             of a CPU).",
            self.retried,
            all.len(),
            worst * 100.0
        );
        let _ = writeln!(o, "\n## Commands\n\n| what | command |\n|---|---|");
        for (what, cmd) in &self.commands {
            let _ = writeln!(o, "| {what} | `{cmd}` |");
        }
    }

    fn tcp_table(&self, o: &mut String) {
        let _ = writeln!(
            o,
            "\n## 1. TCP throughput through the veth (iperf3, one stream, {} s)\n\n\
             | setup | Gbit/s | % of nothing | reported loss | capture CPU s | peak RSS MiB | runs, Gbit/s |\n\
             |---|---:|---:|---:|---:|---:|---|",
            self.plan.tcp_secs
        );
        let base = self.tcp_gbps(tcp_spec(Tool::Nothing, 0));
        for (tool, snaplen) in TCP_SPECS {
            let s = tcp_spec(tool, snaplen);
            let runs = self.tcp.get(&s).map_or(&[][..], Vec::as_slice);
            let gbps = self.tcp_gbps(s);
            let pct = gbps.zip(base).map(|(g, b)| g / b * 100.0);
            let caps: Vec<_> = runs.iter().filter_map(|r| r.capture).collect();
            let lost = median(caps.iter().map(|c| c.lost as f64).collect());
            let cpu = median(caps.iter().map(|c| c.cpu.as_secs_f64()).collect());
            let rss = median(
                caps.iter()
                    .map(|c| c.peak_rss_kib as f64 / 1024.0)
                    .collect(),
            );
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} | {} | {} |",
                tcp_label(s),
                fmt_opt(gbps, 2),
                fmt_opt(pct, 1),
                fmt_opt(lost, 0),
                fmt_opt(cpu, 2),
                fmt_opt(rss, 1),
                runs_list(runs.iter().map(|r| r.traffic.bits_per_second / 1e9), 2),
            );
        }
    }

    fn udp_table(&self, o: &mut String) {
        let _ = writeln!(
            o,
            "\n## 2. UDP packet rate (iperf3 -u, senders unthrottled, {} s; capture -s {UDP_SNAPLEN})\n\n\
             \"received\" is what the iperf3 servers got; \"% of nothing\" compares it with no capture \
             attached. \"reported loss\" and \"missing from file\" are medians over the runs.\n\n\
             | setup | sent kpps | received kpps | received, % of nothing | reported loss | missing from file | highest loss-free kpps | CPU s per Mpkt | peak RSS MiB | runs, received kpps |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
            self.plan.udp_secs
        );
        for senders in SENDERS {
            for len in UDP_LENS {
                let base = self.received_kpps((len, senders, Tool::Nothing));
                for tool in TOOLS {
                    let key = (len, senders, tool);
                    let runs = self.udp_runs(key);
                    let sent = median(runs.iter().map(|r| r.traffic.sent_pps() / 1e3).collect());
                    let received = self.received_kpps(key);
                    let pct = received.zip(base).map(|(r, b)| r / b * 100.0);
                    let caps: Vec<_> = runs.iter().filter_map(|r| r.capture).collect();
                    let lost = median(caps.iter().map(|c| c.lost as f64).collect());
                    let missing = median(
                        runs.iter()
                            .filter_map(|r| r.missing())
                            .map(|m| m as f64)
                            .collect(),
                    );
                    let rss = median(
                        caps.iter()
                            .map(|c| c.peak_rss_kib as f64 / 1024.0)
                            .collect(),
                    );
                    let loss_free = self.loss_free.get(&key).and_then(|v| {
                        let pps = median(v.iter().map(|l| l.pps / 1e3).collect())?;
                        let all_limited = v.iter().all(|l| l.sender_limited);
                        let capped = v
                            .iter()
                            .filter_map(|l| l.lossy_above)
                            .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.min(x))));
                        Some(match (all_limited, capped) {
                            (true, _) => format!(">= {pps:.1}"),
                            (false, Some(lossy)) => format!(
                                "{pps:.1} (paced iperf3 went no faster; unthrottled lost at {:.1})",
                                lossy / 1e3
                            ),
                            (false, None) => format!("{pps:.1}"),
                        })
                    });
                    let _ = writeln!(
                        o,
                        "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                        udp_label(len, senders, tool),
                        fmt_opt(sent, 1),
                        fmt_opt(received, 1),
                        fmt_opt(pct, 1),
                        fmt_opt(lost, 0),
                        fmt_opt(missing, 0),
                        loss_free.unwrap_or_else(|| "—".into()),
                        fmt_opt(self.cpu_per_mpkt(key), 3),
                        fmt_opt(rss, 1),
                        runs_list(runs.iter().map(|r| r.traffic.received_pps() / 1e3), 1),
                    );
                }
            }
        }
    }

    fn small_table(&self, o: &mut String) {
        let _ = writeln!(
            o,
            "\n## 3. Loss accounting with a buffer too small on purpose (-B {SMALL_BUFFER_KIB} KiB, \
             UDP 64 B, {} senders unthrottled)\n\n\
             \"crossed the veth\" is every packet the veth's own counters saw while the tool ran \
             (tx_packets + tx_dropped + rx_packets), iperf3's control packets included; \
             \"missing\" is that minus every packet in the file. The test datagrams alone: sent \
             minus in the file.\n\n\
             | setup | test datagrams sent | test datagrams missing | crossed the veth | missing from file | reported loss | reported = missing | runs, missing / reported |\n\
             |---|---:|---:|---:|---:|---:|---|---|",
            SENDERS.iter().max().unwrap()
        );
        for tool in [Tool::Tcpdump, Tool::Podtrace] {
            let runs = self.small.get(&tool).map_or(&[][..], Vec::as_slice);
            let m =
                |f: &dyn Fn(&RunResult) -> Option<f64>| median(runs.iter().filter_map(f).collect());
            let equal = !runs.is_empty() && runs.iter().all(reported_equals_missing);
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                small_label(tool),
                fmt_opt(m(&|r| Some(r.traffic.sent as f64)), 0),
                fmt_opt(m(&|r| r.missing().map(|n| n as f64)), 0),
                fmt_opt(m(&|r| r.crossed.map(|n| n as f64)), 0),
                fmt_opt(m(&|r| r.missing_all().map(|n| n as f64)), 0),
                fmt_opt(m(&|r| r.capture.map(|c| c.lost as f64)), 0),
                if equal { "yes, every run" } else { "**no**" },
                runs.iter()
                    .map(|r| format!(
                        "{} / {}",
                        r.missing_all().unwrap_or(-1),
                        r.capture.map_or(-1, |c| c.lost as i64)
                    ))
                    .collect::<Vec<_>>()
                    .join(", "),
            );
        }
    }

    fn first_packet_table(&self, o: &mut String) {
        let _ = writeln!(
            o,
            "\n## 4. Time to first packet (command start → first packet in the file)\n\n\
             | setup | median ms | runs, ms |\n|---|---:|---|"
        );
        for who in FirstPacket::ALL {
            let runs: Vec<f64> = self
                .first_packet
                .get(&who)
                .map(|v| v.iter().map(|d| d.as_secs_f64() * 1e3).collect())
                .unwrap_or_default();
            let _ = writeln!(
                o,
                "| {} | {} | {} |",
                first_packet_label(who),
                fmt_opt(median(runs.clone()), 1),
                runs_list(runs, 1)
            );
        }
    }

    fn goals(&self, o: &mut String) {
        let _ = writeln!(
            o,
            "\n## Goals (issue 7), from the medians above\n\n| goal | measured | met |\n|---|---|---|"
        );
        let yes = |ok: bool| if ok { "yes" } else { "**no**" };
        let one = 1;
        let mut row = |goal: &str, measured: String, ok: Option<bool>| {
            let met = ok.map_or("—", yes);
            let _ = writeln!(o, "| {goal} | {measured} | {met} |");
        };

        let pct = |len, tool| {
            self.received_kpps((len, one, tool))
                .zip(self.received_kpps((len, one, Tool::Nothing)))
                .map(|(r, b)| r / b * 100.0)
        };
        let per_len = |f: &dyn Fn(u32) -> (String, Option<bool>)| {
            let parts: Vec<_> = UDP_LENS.iter().map(|&len| f(len)).collect();
            let text = parts
                .iter()
                .map(|(t, _)| t.clone())
                .collect::<Vec<_>>()
                .join("; ");
            let ok = parts
                .iter()
                .try_fold(true, |acc, (_, ok)| Some(acc && (*ok)?));
            (text, ok)
        };

        let (text, ok) = per_len(&|len| {
            let p = pct(len, Tool::Podtrace);
            (format!("{len} B: {}%", fmt_opt(p, 1)), p.map(|p| p >= 98.0))
        });
        row(GOALS[0], text, ok);

        let (text, ok) = per_len(&|len| {
            let p = self.received_kpps((len, one, Tool::Podtrace));
            let t = self.received_kpps((len, one, Tool::Tcpdump));
            (
                format!("{len} B: {} vs {} kpps", fmt_opt(p, 1), fmt_opt(t, 1)),
                p.zip(t).map(|(p, t)| p >= t),
            )
        });
        row(GOALS[1], text, ok);

        let (text, ok) = per_len(&|len| {
            let p = self.cpu_per_mpkt((len, one, Tool::Podtrace));
            let t = self.cpu_per_mpkt((len, one, Tool::Tcpdump));
            (
                format!("{len} B: {} vs {} s/Mpkt", fmt_opt(p, 3), fmt_opt(t, 3)),
                p.zip(t).map(|(p, t)| p <= t / 2.0),
            )
        });
        row(GOALS[2], text, ok);

        let base = self.tcp_gbps(tcp_spec(Tool::Nothing, 0));
        let p96 = self.tcp_gbps(tcp_spec(Tool::Podtrace, 96));
        let overhead = p96.zip(base).map(|(p, b)| (1.0 - p / b) * 100.0);
        row(
            GOALS[3],
            format!("{}%", fmt_opt(overhead, 1)),
            overhead.map(|x| x < 5.0),
        );

        let full_runs: Vec<&RunResult> = UDP_LENS
            .iter()
            .flat_map(|&len| self.udp_runs((len, one, Tool::Podtrace)))
            .collect();
        let lossless = full_runs.iter().filter(|r| r.lossless()).count();
        row(
            GOALS[4],
            format!(
                "{lossless} of {} runs (1 sender) lost nothing",
                full_runs.len()
            ),
            (!full_runs.is_empty()).then_some(lossless == full_runs.len()),
        );

        let small = self
            .small
            .get(&Tool::Podtrace)
            .map_or(&[][..], Vec::as_slice);
        let equal = small.iter().filter(|r| reported_equals_missing(r)).count();
        let lost: u64 = small.iter().filter_map(|r| r.capture).map(|c| c.lost).sum();
        row(
            GOALS[5],
            format!(
                "{equal} of {} runs equal ({lost} lost in all, -B {SMALL_BUFFER_KIB})",
                small.len()
            ),
            (!small.is_empty()).then_some(equal == small.len()),
        );
    }
}
