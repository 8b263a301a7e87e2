//! Leaving the machine as it was: the teardown of a node, in an order that also works after a
//! crash, and the cleanup of nodes whose process died.

use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use super::footprint::{Footprint, GLOBALS};
use super::net;
use super::sys::{
    alive, cgroup_procs, cmdline, kill_and_wait, mounts_under, pod_cgroup_dirs, remove_pod_cgroups,
    shims_and_children, signal, unmount_under, wait_gone,
};

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
        let fp = match Footprint::load(&dir) {
            Some(fp) => fp,
            // A node being claimed right now has no node.json for a moment: only an old
            // directory without one is stale.
            None if modified_within(&dir, STATELESS_GRACE) => continue,
            None => Footprint::new(dir.clone(), index, format!("ptr{index}"), 0),
        };
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

/// How old a node directory without `node.json` must be to count as stale.
const STATELESS_GRACE: Duration = Duration::from_secs(60);

fn modified_within(path: &Path, age: Duration) -> bool {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .is_ok_and(|t| t.elapsed().unwrap_or_default() < age)
}

/// Removes what a node made, in an order that works after a crash too: containerd, then the
/// shims and every process in the pods' cgroups, mounts, cgroups, links, CNI results, the
/// directory. Returns what failed.
pub(crate) fn teardown(fp: &Footprint, containerd: Option<Child>) -> Vec<String> {
    let mut problems = Vec::new();
    let ids = runtime_ids(fp);
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
    remove_cni_results(&fp.network_name(), &ids);
    remove_shim_sockets(fp, &ids);
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

/// Ids of the node's sandboxes and containers, from containerd's own directories.
fn runtime_ids(fp: &Footprint) -> Vec<String> {
    let dirs = [
        fp.dir.join("root/io.containerd.grpc.v1.cri/sandboxes"),
        fp.dir.join("root/io.containerd.grpc.v1.cri/containers"),
        fp.dir.join("state/io.containerd.runtime.v2.task/k8s.io"),
    ];
    let mut ids: Vec<String> = dirs
        .iter()
        .filter_map(|dir| std::fs::read_dir(dir).ok())
        .flat_map(|entries| entries.flatten())
        .filter_map(|entry| entry.file_name().into_string().ok())
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

/// Removes the sockets of killed shims: containerd 1.6 names them
/// `/run/containerd/s/<sha256 of "ADDRESS/NAMESPACE/ID">` whatever its state dir, and a
/// SIGKILLed shim leaves its socket behind.
fn remove_shim_sockets(fp: &Footprint, ids: &[String]) {
    for id in ids {
        let key = format!("{}/k8s.io/{id}", fp.socket().display());
        let hash: String = Sha256::digest(key.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        std::fs::remove_file(Path::new("/run/containerd/s").join(hash)).ok();
    }
}

/// Removes the node's cached CNI results, `/var/lib/cni/results/<network>-<id>-<ifname>`: the
/// bridge network's and the loopback ones (`cni-loopback-<id>-lo`) of its sandboxes.
fn remove_cni_results(network: &str, ids: &[String]) {
    let prefix = format!("{network}-");
    let Ok(entries) = std::fs::read_dir("/var/lib/cni/results") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let loopback = name
            .strip_prefix("cni-loopback-")
            .and_then(|rest| rest.strip_suffix("-lo"))
            .is_some_and(|id| ids.iter().any(|i| i == id));
        if name.starts_with(&prefix) || loopback {
            std::fs::remove_file(entry.path()).ok();
        }
    }
}
