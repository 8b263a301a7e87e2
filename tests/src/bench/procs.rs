//! The processes a benchmark run drives (the capture tool under test; the
//! iperf3 side is in `iperf`) and what /proc says about them. Every child is
//! killed when its handle drops.

use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Read},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};

use super::filters::NoMatch;

/// Set by SIGINT/SIGTERM/SIGHUP: every wait gives up, every guard cleans up.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Turns the usual termination signals into [`interrupted`] errors, so the
/// benchmark unwinds through its guards (namespace, servers, captures).
pub fn catch_signals() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
}

/// An error if a termination signal arrived.
pub fn check_interrupted() -> Result<()> {
    ensure!(!INTERRUPTED.load(Ordering::SeqCst), "interrupted");
    Ok(())
}

/// Sleeps, waking early (with an error) on a termination signal.
pub fn pause(d: Duration) -> Result<()> {
    let end = Instant::now() + d;
    loop {
        check_interrupted()?;
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        thread::sleep(left.min(Duration::from_millis(20)));
    }
}

/// A child killed (and reaped) when dropped.
pub struct Guarded(pub Child);

impl Guarded {
    pub fn spawn(cmd: &mut Command) -> Result<Self> {
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {:?}", cmd.get_program()))?;
        Ok(Self(child))
    }

    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Waits for the child to exit, at most `timeout`; kills it on timeout
    /// or on a termination signal.
    pub fn wait(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.0.try_wait()? {
                return Ok(status);
            }
            if let Err(e) = check_interrupted() {
                self.kill();
                return Err(e);
            }
            if Instant::now() > deadline {
                self.kill();
                bail!("{} did not exit within {timeout:?}", self.pid());
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: signalling our own, not yet reaped, child.
        unsafe { libc::kill(self.0.id() as i32, sig) };
    }

    fn kill(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Collects a pipe's lines on a thread, each through `tag` (e.g. stamped
/// with when it arrived); the receiver's iterator ends when the pipe closes.
pub fn line_reader<T: Send + 'static>(
    pipe: impl Read + Send + 'static,
    tag: fn(String) -> T,
) -> mpsc::Receiver<T> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            if tx.send(tag(line)).is_err() {
                break;
            }
        }
    });
    rx
}

/// Runs a command to completion (interruptibly); returns stdout, or fails
/// with stderr.
pub fn output(cmd: &mut Command, timeout: Duration) -> Result<String> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = Guarded::spawn(cmd)?;
    let mut out = child.0.stdout.take().unwrap();
    let mut err = child.0.stderr.take().unwrap();
    let out = thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err = thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let status = child.wait(timeout)?;
    let (out, err) = (
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    );
    if !status.success() {
        bail!(
            "{:?} failed ({status}): {}{}",
            cmd,
            err.trim(),
            // iperf3 -J reports its errors in the JSON on stdout.
            if err.trim().is_empty() {
                out.trim()
            } else {
                ""
            }
        );
    }
    Ok(out)
}

/// CPU time (user + system) a process has used so far, from /proc/PID/stat.
pub fn cpu_time(pid: u32) -> Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after "(comm)": state is field 3, utime 14, stime 15.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("odd /proc/PID/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    // SAFETY: no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok(Duration::from_nanos(ticks * 1_000_000_000 / hz))
}

/// Peak resident set size (VmHWM) in KiB, from /proc/PID/status.
pub fn peak_rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmHWM in /proc/PID/status")
}

/// A capture tool under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tool {
    Nothing,
    Tcpdump,
    Podtrace,
}

impl Tool {
    pub fn name(self) -> &'static str {
        match self {
            Self::Nothing => "nothing attached",
            Self::Tcpdump => "tcpdump",
            Self::Podtrace => "podtrace",
        }
    }
}

/// How to run a tool: snapshot length, an optional buffer size in KiB
/// (both tools' `-B` takes KiB) and an optional filter expression.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CaptureSpec {
    pub tool: Tool,
    pub snaplen: u32,
    pub buffer_kib: Option<u32>,
    pub filter: Option<NoMatch>,
}

impl CaptureSpec {
    /// Names the setup in the report's list of commands: one line per
    /// distinct option set.
    pub fn what(&self) -> String {
        let mut what = format!("{} -s {}", self.tool.name(), self.snaplen);
        if let Some(kib) = self.buffer_kib {
            what += &format!(" -B {kib}");
        }
        if let Some(filter) = self.filter {
            what += &format!(", {}", filter.label());
        }
        what
    }

    /// The exact command line for `iface` and `file`.
    pub fn argv(&self, podtrace: &Path, iface: &str, file: &Path) -> Vec<String> {
        let mut argv: Vec<String> = match self.tool {
            Tool::Nothing => return Vec::new(),
            Tool::Tcpdump => vec!["tcpdump".into()],
            Tool::Podtrace => vec![podtrace.display().to_string(), "capture".into()],
        };
        argv.extend([
            "-i".into(),
            iface.into(),
            "-w".into(),
            file.display().to_string(),
            "-s".into(),
            self.snaplen.to_string(),
        ]);
        if let Some(kib) = self.buffer_kib {
            argv.extend(["-B".into(), kib.to_string()]);
        }
        // The expression as trailing words, as tcpdump takes it.
        if let Some(filter) = self.filter {
            argv.extend(filter.words());
        }
        argv
    }
}

/// What a capture tool said and used.
#[derive(Debug, Clone, Copy, Default)]
pub struct CaptureStats {
    /// Packets the tool says it wrote.
    pub captured: u64,
    /// Packets the tool says it lost (tcpdump: "dropped by kernel";
    /// podtrace: "lost in kernel").
    pub lost: u64,
    /// Packets podtrace's filter rejected in the kernel ("F filtered"; only
    /// printed when a filter ran).
    pub filtered: Option<u64>,
    /// CPU time from "ready" until just before the stop signal.
    pub cpu: Duration,
    pub peak_rss_kib: u64,
}

/// A running capture tool.
pub struct Running {
    child: Guarded,
    stderr: mpsc::Receiver<String>,
    seen: Vec<String>,
    cpu_at_start: Duration,
}

impl Running {
    /// Starts `argv` and waits until it says it captures ("listening on",
    /// "capturing on").
    pub fn start(argv: &[String]) -> Result<Self> {
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = Guarded::spawn(&mut cmd)?;
        let stderr = line_reader(child.0.stderr.take().unwrap(), |line| line);
        let mut seen = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            check_interrupted()?;
            match stderr.recv_timeout(Duration::from_millis(20)) {
                Ok(line) => {
                    let ready = line.contains("listening on") || line.contains("capturing on");
                    seen.push(line);
                    if ready {
                        break;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = child.wait(Duration::from_secs(5))?;
                    bail!("{} exited ({status}): {}", argv[0], seen.join("\n"));
                }
            }
            ensure!(
                Instant::now() < deadline,
                "{} did not start: {}",
                argv[0],
                seen.join("\n")
            );
        }
        let cpu_at_start = cpu_time(child.pid())?;
        Ok(Self {
            child,
            stderr,
            seen,
            cpu_at_start,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// Reads CPU and peak RSS, stops the tool with SIGINT and parses its
    /// final counts.
    pub fn stop(mut self) -> Result<CaptureStats> {
        let pid = self.child.pid();
        let cpu = cpu_time(pid)?.saturating_sub(self.cpu_at_start);
        let peak_rss_kib = peak_rss_kib(pid)?;
        self.child.signal(libc::SIGINT);
        let status = self.child.wait(Duration::from_secs(60))?;
        self.seen.extend(self.stderr.iter());
        let text = self.seen.join("\n");
        ensure!(status.success(), "capture tool failed ({status}): {text}");
        let counts = parse_counts(&text)
            .with_context(|| format!("no packet counts in the tool's output:\n{text}"))?;
        Ok(CaptureStats {
            captured: counts.captured,
            lost: counts.lost,
            filtered: counts.filtered,
            cpu,
            peak_rss_kib,
        })
    }
}

/// The packet counts a tool prints when it stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub captured: u64,
    pub lost: u64,
    pub filtered: Option<u64>,
}

/// The counts in tcpdump's or podtrace's closing lines; podtrace's reads
/// "N packets captured, F filtered, M lost in kernel" (", F filtered" only
/// when a filter ran). tcpdump's "received by filter" is not a filtered count.
pub fn parse_counts(text: &str) -> Option<Counts> {
    let number_before = |line: &str, words: &str| -> Option<u64> {
        let at = line.find(words)?;
        line[..at].split_whitespace().last()?.parse().ok()
    };
    let mut captured = None;
    let mut lost = None;
    let mut filtered = None;
    for line in text.lines() {
        if let Some(n) = number_before(line, "packets captured") {
            captured = Some(n);
        }
        if let Some(n) = number_before(line, "lost in kernel") {
            lost = Some(n);
        }
        if let Some(n) = number_before(line, "packets dropped by kernel") {
            lost = Some(n);
        }
        if let Some(n) = number_before(line, " filtered") {
            filtered = Some(n);
        }
    }
    Some(Counts {
        captured: captured?,
        lost: lost?,
        filtered,
    })
}

/// Packets in a pcap file matching a tcpdump filter (`tcpdump -r --count`).
pub fn count_in_file(file: &Path, filter: &str) -> Result<u64> {
    let mut cmd = Command::new("tcpdump");
    cmd.args(["-n", "-r"]).arg(file).arg("--count");
    if !filter.is_empty() {
        cmd.arg(filter);
    }
    let out = output(&mut cmd, Duration::from_secs(300))?;
    out.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("tcpdump --count said {out:?}"))
}

/// Packets that crossed `iface`'s TC hooks so far, by its own counters:
/// sent (tx_packets), dropped by the veth after the egress hook
/// (tx_dropped, peer backlog full) and received (rx_packets, which a veth
/// counts once the packet is queued for the ingress path).
pub fn veth_packets(iface: &str) -> Result<u64> {
    let mut total = 0;
    for counter in ["tx_packets", "tx_dropped", "rx_packets"] {
        let path = format!("/sys/class/net/{iface}/statistics/{counter}");
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        total += text.trim().parse::<u64>()?;
    }
    Ok(total)
}

/// Percentage of all CPUs busy over `window` (from /proc/stat).
pub fn cpu_busy_percent(window: Duration) -> Result<f64> {
    fn sample() -> Result<(u64, u64)> {
        let stat = std::fs::read_to_string("/proc/stat")?;
        let line = stat.lines().next().context("empty /proc/stat")?;
        let v: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal ...
        let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
        let total: u64 = v.iter().take(8).sum();
        Ok((total, idle))
    }
    let (t0, i0) = sample()?;
    pause(window)?;
    let (t1, i1) = sample()?;
    let total = (t1 - t0).max(1) as f64;
    Ok(100.0 * (total - (i1 - i0) as f64) / total)
}

/// CPU time (clock ticks) of every user process that is not the benchmark
/// or one of its children (the tool, iperf3): what else runs on the machine.
/// Kernel threads are left out: softirq and writeback work there is the
/// benchmark's own traffic.
pub fn foreign_ticks() -> HashMap<u32, u64> {
    let me = std::process::id();
    let mut out = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ppid: u32 = f.get(1).and_then(|v| v.parse().ok()).unwrap_or(0);
        if pid == me || ppid == me || pid == 2 || ppid == 2 {
            continue;
        }
        let ticks = f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
            + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        out.insert(pid, ticks);
    }
    out
}

/// CPU seconds other processes used between two [`foreign_ticks`] snapshots
/// (processes that started in between count whole; ones that ended are missed).
pub fn foreign_cpu(before: &HashMap<u32, u64>, after: &HashMap<u32, u64>) -> f64 {
    // SAFETY: no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let ticks: u64 = after
        .iter()
        .map(|(pid, t)| t.saturating_sub(before.get(pid).copied().unwrap_or(0)))
        .sum();
    ticks as f64 / hz
}

/// Steal ticks of all CPUs so far (/proc/stat, "cpu" line, 8th value).
pub fn steal_ticks() -> Result<u64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let cpu = stat.lines().next().context("empty /proc/stat")?;
    cpu.split_whitespace()
        .nth(8)
        .and_then(|s| s.parse().ok())
        .context("no steal in /proc/stat")
}

/// A scratch directory for capture files, removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new() -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("podtrace-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        Ok(Self(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_from_both_tools() {
        let counts = |captured, lost, filtered| {
            Some(Counts {
                captured,
                lost,
                filtered,
            })
        };
        let tcpdump = "tcpdump: listening on x\n1955171 packets captured\n1955171 packets received by filter\n7 packets dropped by kernel";
        assert_eq!(parse_counts(tcpdump), counts(1955171, 7, None));
        let podtrace = "podtrace: capturing on x\n2229421 packets captured, 3 lost in kernel";
        assert_eq!(parse_counts(podtrace), counts(2229421, 3, None));
        let filtered =
            "podtrace: capturing on x\n0 packets captured, 812345 filtered, 0 lost in kernel";
        assert_eq!(parse_counts(filtered), counts(0, 0, Some(812345)));
        assert_eq!(parse_counts("nothing"), None);
    }
}
