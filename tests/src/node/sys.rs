//! Processes, cgroups and mounts, read from /proc and /sys: finding what a node left running
//! or mounted, and removing it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::footprint::Footprint;

/// The node's containerd shims (they outlive containerd) and their children (pause, apps).
pub(crate) fn shims_and_children(fp: &Footprint) -> Vec<u32> {
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

pub(crate) fn kill_and_wait(pids: &[u32]) -> Result<()> {
    for pid in pids {
        signal(*pid, libc::SIGKILL);
    }
    wait_gone(pids, Duration::from_secs(10))
}

pub(crate) fn signal(pid: u32, sig: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: kill has no memory preconditions; a stale pid only yields ESRCH.
        unsafe { libc::kill(pid, sig) };
    }
}

pub(crate) fn wait_gone(pids: &[u32], timeout: Duration) -> Result<()> {
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

pub(crate) fn cmdline(pid: u32) -> Vec<String> {
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
pub(crate) fn pod_cgroup_dirs(uid: &str) -> Vec<PathBuf> {
    cgroup_roots()
        .into_iter()
        .map(|root| root.join("kubepods/besteffort").join(format!("pod{uid}")))
        .filter(|dir| dir.is_dir())
        .collect()
}

/// Pids in a cgroup and all its descendants.
pub(crate) fn cgroup_procs(dir: &Path) -> Vec<u32> {
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
pub(crate) fn unmount_under(dir: &Path) -> Result<()> {
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
