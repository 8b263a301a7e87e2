//! Leaving the machine as it was: what a node created, and how to remove it even after a crash.
//!
//! A node's [`Footprint`] is saved as `node.json` in its directory as soon as the node exists,
//! so the teardown also works from another process when the owner died.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use super::net;

/// Everything a node made that must go at teardown.
#[derive(Clone, Debug)]
pub(crate) struct Footprint {
    pub dir: PathBuf,
    pub index: u8,
    pub bridge: String,
    pub owner_pid: u32,
    pub containerd_pid: Option<u32>,
    pub pod_uids: Vec<String>,
    pub globals: Snapshot,
}

impl Footprint {
    pub fn new(dir: PathBuf, index: u8, bridge: String, owner_pid: u32) -> Self {
        Footprint {
            dir,
            index,
            bridge,
            owner_pid,
            containerd_pid: None,
            pod_uids: Vec::new(),
            globals: Snapshot::default(),
        }
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }

    pub fn config(&self) -> PathBuf {
        self.dir.join("containerd.toml")
    }

    pub fn cni_conf_dir(&self) -> PathBuf {
        self.dir.join("cni").join("net.d")
    }

    /// The CNI network name, which prefixes the node's files in `/var/lib/cni/results`.
    pub fn network_name(&self) -> String {
        format!("podtrace-node-{}", self.index)
    }

    fn state_file(dir: &Path) -> PathBuf {
        dir.join("node.json")
    }

    /// Writes `node.json` (atomically: a crash never leaves half a file).
    pub fn save(&self) -> Result<()> {
        let value = json!({
            "index": self.index,
            "bridge": self.bridge,
            "owner_pid": self.owner_pid,
            "containerd_pid": self.containerd_pid,
            "pod_uids": self.pod_uids,
            "globals": {
                "dirs": self.globals.dirs,
                "ip_forward": self.globals.ip_forward,
            },
        });
        let path = Self::state_file(&self.dir);
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, value.to_string())
            .and_then(|()| std::fs::rename(&tmp, &path))
            .with_context(|| format!("writing {}", path.display()))
    }

    /// Reads a node's `node.json`; `None` when absent or unreadable.
    fn load(dir: &Path) -> Option<Self> {
        let text = std::fs::read_to_string(Self::state_file(dir)).ok()?;
        let v: Value = serde_json::from_str(&text).ok()?;
        let strings = |v: &Value| -> Vec<String> {
            v.as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default()
        };
        let dirs = v
            .pointer("/globals/dirs")
            .and_then(Value::as_array)
            .map(|pairs| {
                pairs
                    .iter()
                    .filter_map(|pair| {
                        Some((
                            PathBuf::from(pair.get(0)?.as_str()?),
                            pair.get(1)?.as_bool()?,
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default();
        Some(Footprint {
            dir: dir.to_path_buf(),
            index: u8::try_from(v.get("index")?.as_u64()?).ok()?,
            bridge: v.get("bridge")?.as_str()?.to_string(),
            owner_pid: u32::try_from(v.get("owner_pid")?.as_u64()?).ok()?,
            containerd_pid: v
                .get("containerd_pid")
                .and_then(Value::as_u64)
                .and_then(|p| u32::try_from(p).ok()),
            pod_uids: strings(v.get("pod_uids")?),
            globals: Snapshot {
                dirs,
                ip_forward: v
                    .pointer("/globals/ip_forward")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
            },
        })
    }
}

/// Machine-wide state that nodes share, as it was before the first node of this process.
#[derive(Clone, Debug, Default)]
pub(crate) struct Snapshot {
    /// Directories a node may create, and whether each existed.
    pub dirs: Vec<(PathBuf, bool)>,
    /// `net.ipv4.ip_forward` before.
    pub ip_forward: String,
}

impl Snapshot {
    fn take() -> Result<Self> {
        let mut paths: Vec<PathBuf> = [
            "/run/containerd",
            "/run/containerd/s",
            "/var/lib/cni",
            "/var/lib/cni/results",
        ]
        .iter()
        .map(PathBuf::from)
        .collect();
        for root in cgroup_roots() {
            paths.push(root.join("kubepods"));
            paths.push(root.join("kubepods/besteffort"));
        }
        Ok(Snapshot {
            dirs: paths
                .into_iter()
                .map(|p| {
                    let existed = p.exists();
                    (p, existed)
                })
                .collect(),
            ip_forward: net::ip_forward()?,
        })
    }

    /// Removes the shared directories that did not exist before (if empty now) and restores
    /// `ip_forward`.
    fn restore(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let mut created: Vec<&PathBuf> = self
            .dirs
            .iter()
            .filter(|(_, existed)| !existed)
            .map(|(p, _)| p)
            .collect();
        created.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for dir in created {
            match std::fs::remove_dir(dir) {
                Ok(()) => {}
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => problems.push(format!("left {}: {err}", dir.display())),
            }
        }
        if !self.ip_forward.is_empty()
            && net::ip_forward().ok().as_deref() != Some(&self.ip_forward)
        {
            if let Err(err) = net::set_ip_forward(&self.ip_forward) {
                problems.push(format!("{err:#}"));
            }
        }
        problems
    }
}

/// Live nodes of this process and the snapshot taken when the first one started.
static GLOBALS: Mutex<Option<(usize, Snapshot)>> = Mutex::new(None);

/// One node's share of the machine-wide state; [`GlobalsGuard::release`] restores it after the
/// process's last node.
pub(crate) struct GlobalsGuard {
    released: bool,
}

impl GlobalsGuard {
    pub fn acquire() -> Result<Self> {
        let mut globals = GLOBALS.lock().unwrap_or_else(|e| e.into_inner());
        match globals.as_mut() {
            Some((count, _)) => *count += 1,
            None => *globals = Some((1, Snapshot::take()?)),
        }
        Ok(GlobalsGuard { released: false })
    }

    pub fn snapshot(&self) -> Snapshot {
        let globals = GLOBALS.lock().unwrap_or_else(|e| e.into_inner());
        globals.as_ref().map(|(_, s)| s.clone()).unwrap_or_default()
    }

    pub fn release(mut self) -> Vec<String> {
        self.release_once()
    }

    fn release_once(&mut self) -> Vec<String> {
        if self.released {
            return Vec::new();
        }
        self.released = true;
        let mut globals = GLOBALS.lock().unwrap_or_else(|e| e.into_inner());
        match globals.as_mut() {
            Some((count, _)) if *count > 1 => {
                *count -= 1;
                Vec::new()
            }
            Some(_) => globals.take().map(|(_, s)| s.restore()).unwrap_or_default(),
            None => Vec::new(),
        }
    }
}

impl Drop for GlobalsGuard {
    fn drop(&mut self) {
        for problem in self.release_once() {
            eprintln!("[test node] {problem}");
        }
    }
}

/// Checks root and the tools a node needs.
pub(crate) fn preflight() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the test node needs root (it runs containerd, creates bridges and cgroups)");
    }
    let missing: Vec<&str> = [
        "/usr/bin/containerd",
        "/usr/bin/ctr",
        "/usr/bin/containerd-shim-runc-v2",
        "/usr/sbin/runc",
        "/usr/bin/gcc",
        "/usr/lib/cni/bridge",
        "/usr/lib/cni/host-local",
        "/usr/lib/cni/loopback",
        "/bin/busybox",
    ]
    .into_iter()
    .filter(|path| !Path::new(path).exists())
    .collect();
    if !missing.is_empty() {
        bail!(
            "the test node needs {} (apt-get install containerd runc containernetworking-plugins busybox-static gcc iproute2)",
            missing.join(", ")
        );
    }
    Ok(())
}

/// A random RFC 4122 uuid, from the kernel.
pub(crate) fn random_uuid() -> Result<String> {
    Ok(std::fs::read_to_string("/proc/sys/kernel/random/uuid")
        .context("reading /proc/sys/kernel/random/uuid")?
        .trim()
        .to_string())
}

/// Tears down the nodes left by processes that died without doing it.
pub(crate) fn clean_stale_nodes() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(index) = name
            .strip_prefix("podtrace-node-")
            .and_then(|n| n.parse::<u8>().ok())
        else {
            continue;
        };
        let dir = entry.path();
        let fp = Footprint::load(&dir)
            .unwrap_or_else(|| Footprint::new(dir.clone(), index, format!("ptr{index}"), 0));
        if fp.owner_pid == std::process::id() || (fp.owner_pid != 0 && alive(fp.owner_pid)) {
            continue;
        }
        eprintln!(
            "[test node] cleaning up {} left by dead process {}",
            dir.display(),
            fp.owner_pid
        );
        let mut problems = teardown(&fp, None);
        let idle = GLOBALS.lock().map(|g| g.is_none()).unwrap_or(false);
        if idle {
            problems.extend(fp.globals.restore());
        }
        for problem in problems {
            eprintln!("[test node] {problem}");
        }
    }
}

/// Removes what a node made, in an order that works after a crash too: containerd, then the
/// shims and every process in the pods' cgroups, mounts, cgroups, links, CNI results, the
/// directory. Returns what failed.
pub(crate) fn teardown(fp: &Footprint, containerd: Option<Child>) -> Vec<String> {
    let mut problems = Vec::new();
    let mut doomed = shims_and_children(fp);
    if let Err(err) = stop_containerd(fp, containerd) {
        problems.push(format!("{err:#}"));
    }
    doomed.extend(shims_and_children(fp));
    for uid in &fp.pod_uids {
        for dir in pod_cgroup_dirs(uid) {
            doomed.extend(cgroup_procs(&dir));
        }
    }
    doomed.sort_unstable();
    doomed.dedup();
    if let Err(err) = kill_and_wait(&doomed) {
        problems.push(format!("{err:#}"));
    }
    if let Err(err) = unmount_under(&fp.dir) {
        problems.push(format!("{err:#}"));
    }
    for uid in &fp.pod_uids {
        if let Err(err) = remove_pod_cgroups(uid) {
            problems.push(format!("{err:#}"));
        }
    }
    for link in net::links_with_master(&fp.bridge) {
        net::ip(&["link", "del", &link]).ok();
    }
    if net::link_exists(&fp.bridge) {
        if let Err(err) = net::ip(&["link", "del", &fp.bridge]) {
            problems.push(format!("{err:#}"));
        }
    }
    remove_cni_results(&fp.network_name());
    if fp.dir.exists() {
        if mounts_under(&fp.dir).is_empty() {
            if let Err(err) = std::fs::remove_dir_all(&fp.dir) {
                problems.push(format!("removing {}: {err}", fp.dir.display()));
            }
        } else {
            problems.push(format!(
                "{} still has mounts: left in place",
                fp.dir.display()
            ));
        }
    }
    problems
}

/// Stops containerd: SIGTERM, then SIGKILL after 10 s.
fn stop_containerd(fp: &Footprint, child: Option<Child>) -> Result<()> {
    if let Some(mut child) = child {
        signal(child.id(), libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                child.kill().ok();
                child.wait()?;
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        return Ok(());
    }
    // Not our child (a dead process's node): make sure the pid is still that containerd.
    let Some(pid) = fp.containerd_pid else {
        return Ok(());
    };
    let config = fp.config().to_string_lossy().into_owned();
    if alive(pid) && cmdline(pid).contains(&config) {
        signal(pid, libc::SIGTERM);
        if wait_gone(&[pid], Duration::from_secs(10)).is_err() {
            signal(pid, libc::SIGKILL);
            wait_gone(&[pid], Duration::from_secs(5))?;
        }
    }
    Ok(())
}

/// The node's containerd shims (they outlive containerd) and their children (pause, apps).
fn shims_and_children(fp: &Footprint) -> Vec<u32> {
    let socket = fp.socket().to_string_lossy().into_owned();
    let pids = all_pids();
    let shims: Vec<u32> = pids
        .iter()
        .copied()
        .filter(|pid| {
            let args = cmdline(*pid);
            args.first().is_some_and(|a| a.contains("containerd-shim")) && args.contains(&socket)
        })
        .collect();
    let children = pids
        .iter()
        .copied()
        .filter(|pid| parent(*pid).is_some_and(|ppid| shims.contains(&ppid)));
    shims.iter().copied().chain(children).collect()
}

fn kill_and_wait(pids: &[u32]) -> Result<()> {
    for pid in pids {
        signal(*pid, libc::SIGKILL);
    }
    wait_gone(pids, Duration::from_secs(10))
}

fn signal(pid: u32, sig: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: kill has no memory preconditions; a stale pid only yields ESRCH.
        unsafe { libc::kill(pid, sig) };
    }
}

fn wait_gone(pids: &[u32], timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let left: Vec<u32> = pids.iter().copied().filter(|p| alive(*p)).collect();
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("processes still running after SIGKILL: {left:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether a process exists and is not a zombie (PID 1 here reaps orphans late).
pub(crate) fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let state = stat.rsplit_once(')')?.1.trim_start().chars().next()?;
            Some(state != 'Z' && state != 'X')
        })
        .unwrap_or(false)
}

fn parent(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| {
            raw.split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn all_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Mount points of every cgroup hierarchy (cgroup v1 hybrid: about ten; v2: one).
pub(crate) fn cgroup_roots() -> Vec<PathBuf> {
    let mut roots: Vec<PathBuf> = mountinfo()
        .into_iter()
        .filter(|(_, fstype)| fstype == "cgroup" || fstype == "cgroup2")
        .map(|(mount, _)| mount)
        .collect();
    roots.sort();
    roots.dedup();
    roots
}

/// `kubepods/besteffort/pod<uid>` in every hierarchy where it exists.
fn pod_cgroup_dirs(uid: &str) -> Vec<PathBuf> {
    cgroup_roots()
        .into_iter()
        .map(|root| root.join("kubepods/besteffort").join(format!("pod{uid}")))
        .filter(|dir| dir.is_dir())
        .collect()
}

/// Pids in a cgroup and all its descendants.
fn cgroup_procs(dir: &Path) -> Vec<u32> {
    subdirs_deepest_first(dir)
        .iter()
        .filter_map(|d| std::fs::read_to_string(d.join("cgroup.procs")).ok())
        .flat_map(|text| {
            text.lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// `dir` and every directory below it, deepest first.
fn subdirs_deepest_first(dir: &Path) -> Vec<PathBuf> {
    let mut all = vec![dir.to_path_buf()];
    let mut i = 0;
    while i < all.len() {
        if let Ok(entries) = std::fs::read_dir(&all[i]) {
            all.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
        i += 1;
    }
    all.reverse();
    all
}

/// Removes a pod's cgroups (and its containers' below them) in every hierarchy; runc leaves the
/// pod level behind, kubelet removes it. Retries while the last processes exit.
pub(crate) fn remove_pod_cgroups(uid: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    for dir in pod_cgroup_dirs(uid) {
        for sub in subdirs_deepest_first(&dir) {
            loop {
                match std::fs::remove_dir(&sub) {
                    Ok(()) => break,
                    Err(err) if err.kind() == std::io::ErrorKind::NotFound => break,
                    Err(err) if Instant::now() > deadline => {
                        return Err(err)
                            .with_context(|| format!("removing cgroup {}", sub.display()))
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
    }
    Ok(())
}

/// Mount points and filesystem types from `/proc/self/mountinfo`.
fn mountinfo() -> Vec<(PathBuf, String)> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let mount = unescape(fields.get(4)?);
            let dash = fields.iter().position(|f| *f == "-")?;
            Some((PathBuf::from(mount), (*fields.get(dash + 1)?).to_string()))
        })
        .collect()
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4].iter().all(u8::is_ascii_digit)
        {
            let code = u8::from_str_radix(&field[i + 1..i + 4], 8).unwrap_or(b'?');
            out.push(code);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Mount points at or below `dir`, deepest first.
pub(crate) fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let mut mounts: Vec<PathBuf> = mountinfo()
        .into_iter()
        .map(|(mount, _)| mount)
        .filter(|mount| mount.starts_with(dir))
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.as_os_str().len()));
    mounts
}

/// Lazily unmounts everything below `dir` (netns files, sandbox /dev/shm, container rootfs).
fn unmount_under(dir: &Path) -> Result<()> {
    for _ in 0..5 {
        let mounts = mounts_under(dir);
        if mounts.is_empty() {
            return Ok(());
        }
        for mount in mounts {
            let Ok(path) = std::ffi::CString::new(mount.as_os_str().as_encoded_bytes()) else {
                continue;
            };
            // SAFETY: path is a valid NUL-terminated string.
            unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
        }
    }
    let left = mounts_under(dir);
    if left.is_empty() {
        Ok(())
    } else {
        bail!("cannot unmount {left:?}")
    }
}

/// Removes the node's cached CNI results (`/var/lib/cni/results/<network>-<id>-<ifname>`).
fn remove_cni_results(network: &str) {
    let prefix = format!("{network}-");
    let Ok(entries) = std::fs::read_dir("/var/lib/cni/results") else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            std::fs::remove_file(entry.path()).ok();
        }
    }
}
