//! Running the real podtrace binary the way a user would.

use std::{
    io::{BufRead, BufReader, Read},
    path::PathBuf,
    process::{Child, ChildStdout, Command, ExitStatus, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

/// The binary under test: `PODTRACE_BIN` (set by `cargo xtask test`), else
/// the workspace's debug build.
pub fn bin() -> PathBuf {
    std::env::var_os("PODTRACE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/podtrace")
        })
}

/// A finished podtrace run.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    /// eBPF programs the run held while capturing (empty for [`run`]).
    pub prog_ids: Vec<u32>,
}

impl Finished {
    /// (captured, lost) from the summary line, with or without a filter.
    pub fn summary(&self) -> Result<(u64, u64)> {
        let (captured, _, lost) = self.summary_filtered()?;
        Ok((captured, lost))
    }

    /// Packets that reached pods past their host veth and are not in the
    /// capture, as the summary line says (0 when it does not mention any).
    pub fn missed(&self) -> Result<u64> {
        let line = self.summary_line()?;
        Ok(match line.split_once(MISSED) {
            Some((head, _)) => head
                .rsplit(", ")
                .next()
                .and_then(|n| n.parse().ok())
                .with_context(|| format!("unexpected summary line {line:?}"))?,
            None => 0,
        })
    }

    fn summary_line(&self) -> Result<&str> {
        self.stderr
            .lines()
            .find(|l| l.contains("packets captured"))
            .with_context(|| format!("no summary line in stderr:\n{}", self.stderr))
    }

    /// (captured, filtered, lost) from the summary line; `filtered` is
    /// `None` when the run had no filter (the line does not mention it).
    pub fn summary_filtered(&self) -> Result<(u64, Option<u64>, u64)> {
        let line = self.summary_line()?;
        // ", N missed (…)" comes last, when there are any.
        let line = match line.split_once(MISSED) {
            Some((head, _)) => head.rsplit_once(", ").map_or(head, |(h, _)| h),
            None => line,
        };
        let nums: Vec<u64> = line
            .split_whitespace()
            .filter_map(|w| w.trim_end_matches(',').parse().ok())
            .collect();
        match nums[..] {
            [captured, lost]
                if line == format!("{captured} packets captured, {lost} lost in kernel") =>
            {
                Ok((captured, None, lost))
            }
            [captured, filtered, lost]
                if line
                    == format!(
                        "{captured} packets captured, {filtered} filtered, {lost} lost in kernel"
                    ) =>
            {
                Ok((captured, Some(filtered), lost))
            }
            _ => bail!("unexpected summary line {line:?}"),
        }
    }
}

/// How the summary line ends when packets reached pods past their veth.
const MISSED: &str = " missed (delivered past the host veth)";

/// Runs podtrace to completion (error paths, -c, --duration).
pub fn run(args: &[&str]) -> Result<Finished> {
    run_with_env(args, &[])
}

/// [`run`] with extra environment variables.
pub fn run_with_env(args: &[&str], env: &[(&str, &str)]) -> Result<Finished> {
    let out = Command::new(bin())
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", bin().display()))?;
    Ok(Finished {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        prog_ids: Vec::new(),
    })
}

/// Runs podtrace as user nobody with no capabilities.
pub fn run_unprivileged(args: &[&str]) -> Result<Finished> {
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running setpriv")?;
    Ok(Finished {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        prog_ids: Vec::new(),
    })
}

/// A capture running in the background.
pub struct Capture {
    child: Child,
    stderr: mpsc::Receiver<String>,
    stderr_seen: Vec<String>,
    stdout: Option<thread::JoinHandle<String>>,
    prog_ids: Vec<u32>,
}

impl Capture {
    /// Starts podtrace and waits until it says it is capturing.
    pub fn start(args: &[&str]) -> Result<Self> {
        Ok(Self::spawn(&[], args, false)?.0)
    }

    /// Like [`start`](Self::start), with podtrace run by `wrapper` (e.g.
    /// `["nohup"]`), which must exec it.
    pub fn start_via(wrapper: &[&str], args: &[&str]) -> Result<Self> {
        Ok(Self::spawn(wrapper, args, false)?.0)
    }

    /// Like [`start`](Self::start) for a command that ends up exec'ing podtrace in its own
    /// process (`unshare … chroot DIR /podtrace …`), so the pid is podtrace's.
    pub fn start_command(command: Command) -> Result<Self> {
        Ok(Self::spawn_command(command, false)?.0)
    }

    /// Like [`start`](Self::start), but hands podtrace's stdout to the caller
    /// (a live `-w -` stream).
    pub fn start_streaming(args: &[&str]) -> Result<(Self, ChildStdout)> {
        let (capture, out) = Self::spawn(&[], args, true)?;
        Ok((capture, out.expect("stdout kept")))
    }

    fn spawn(
        wrapper: &[&str],
        args: &[&str],
        keep_stdout: bool,
    ) -> Result<(Self, Option<ChildStdout>)> {
        let mut command = match wrapper {
            [] => Command::new(bin()),
            [program, rest @ ..] => {
                let mut c = Command::new(program);
                c.args(rest).arg(bin());
                c
            }
        };
        command.args(args);
        Self::spawn_command(command, keep_stdout)
    }

    fn spawn_command(
        mut command: Command,
        keep_stdout: bool,
    ) -> Result<(Self, Option<ChildStdout>)> {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {command:?}"))?;
        let (tx, rx) = mpsc::channel();
        let err = child.stderr.take().unwrap();
        thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut out = child.stdout.take().unwrap();
        let (kept, stdout) = if keep_stdout {
            (Some(out), thread::spawn(String::new))
        } else {
            let reader = thread::spawn(move || {
                let mut s = String::new();
                let _ = out.read_to_string(&mut s);
                s
            });
            (None, reader)
        };
        let mut capture = Self {
            child,
            stderr: rx,
            stderr_seen: Vec::new(),
            stdout: Some(stdout),
            prog_ids: Vec::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            match capture.stderr.recv_timeout(Duration::from_millis(100)) {
                Ok(line) => {
                    let started = line.contains("capturing on");
                    capture.stderr_seen.push(line);
                    if started {
                        capture.prog_ids = prog_ids_of(capture.child.id());
                        return Ok((capture, kept));
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Some(status) = capture.child.try_wait()? {
                        bail!(
                            "podtrace exited ({status}) before capturing:\n{}",
                            capture.stderr_seen.join("\n")
                        );
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = capture.child.wait()?;
                    bail!(
                        "podtrace exited ({status}) before capturing:\n{}",
                        capture.stderr_seen.join("\n")
                    );
                }
            }
        }
        let _ = capture.child.kill();
        bail!(
            "podtrace did not start capturing in 20 s:\n{}",
            capture.stderr_seen.join("\n")
        )
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether podtrace is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends `signal` and waits for podtrace to exit.
    pub fn stop(self, signal: i32) -> Result<Finished> {
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(self.child.id() as i32, signal) };
        self.wait(Duration::from_secs(20))
    }

    /// Waits for podtrace to end by itself (-c, --duration, target gone).
    pub fn wait(mut self, timeout: Duration) -> Result<Finished> {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait()? {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                bail!("podtrace did not exit within {timeout:?}");
            }
            thread::sleep(Duration::from_millis(20));
        };
        let stdout = self.stdout.take().unwrap().join().unwrap_or_default();
        self.stderr_seen.extend(self.stderr.iter());
        Ok(Finished {
            status,
            stdout,
            stderr: self.stderr_seen.join("\n"),
            prog_ids: std::mem::take(&mut self.prog_ids),
        })
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Ids of the eBPF programs process `pid` holds (from its fds' fdinfo).
pub fn prog_ids_of(pid: u32) -> Vec<u32> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return Vec::new();
    };
    let mut ids: Vec<u32> = fds
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
        .filter_map(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("prog_id:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Whether the kernel still has a program with this id.
pub fn prog_exists(id: u32) -> bool {
    Command::new("bpftool")
        .args(["prog", "show", "id", &id.to_string()])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The highest eBPF program id the kernel has handed out so far (ids only
/// grow): programs loaded later have higher ids.
pub fn last_prog_id() -> anyhow::Result<u32> {
    Ok(all_prog_ids()?.into_iter().max().unwrap_or(0))
}

/// podtrace's eBPF programs (by name) loaded after `since` that no process
/// holds open, as seen over ~3 s: a program a run left attached through tc
/// or pinned outlives the process, while one being freed goes away.
pub fn orphan_programs(since: u32) -> anyhow::Result<Vec<u32>> {
    let mut orphans = Vec::new();
    for _ in 0..30 {
        let held: Vec<u32> = held_prog_ids();
        orphans = podtrace_programs()?
            .into_iter()
            .filter(|id| *id > since && !held.contains(id))
            .collect();
        if orphans.is_empty() {
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    Ok(orphans)
}

fn bpftool_programs() -> anyhow::Result<Vec<serde_json::Value>> {
    let out = Command::new("bpftool")
        .args(["prog", "show", "-j"])
        .output()
        .context("running bpftool")?;
    anyhow::ensure!(
        out.status.success(),
        "bpftool prog show: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    serde_json::from_str::<Vec<serde_json::Value>>(&text).context("bpftool's JSON")
}

fn all_prog_ids() -> anyhow::Result<Vec<u32>> {
    Ok(bpftool_programs()?
        .iter()
        .filter_map(|p| p["id"].as_u64().and_then(|id| u32::try_from(id).ok()))
        .collect())
}

/// Ids of loaded programs whose name starts with `podtrace`.
fn podtrace_programs() -> anyhow::Result<Vec<u32>> {
    Ok(bpftool_programs()?
        .iter()
        .filter(|p| {
            p["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("podtrace"))
        })
        .filter_map(|p| p["id"].as_u64().and_then(|id| u32::try_from(id).ok()))
        .collect())
}

/// Program ids any process holds an fd of.
fn held_prog_ids() -> Vec<u32> {
    let mut held: Vec<u32> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .flat_map(prog_ids_of)
        .collect();
    held.sort_unstable();
    held.dedup();
    held
}
