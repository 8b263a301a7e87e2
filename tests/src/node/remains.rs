//! What a node and its pods made, and whether any of it is still there: the
//! check that a teardown (or the cleanup of a crashed node) left the machine
//! as it was, scoped to that node, so that other nodes running meanwhile
//! (other suites on the same machine) do not count.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::{footprint::Footprint, sys, Node, Pod};

/// One pod's traces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodTrace {
    pub uid: String,
    /// The pause process.
    pub pid: u32,
    pub veth: Option<String>,
}

/// A node's traces: its directory, bridge, containerd, pods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trace {
    pub dir: PathBuf,
    pub bridge: String,
    pub network: String,
    pub containerd_pid: Option<u32>,
    pub pods: Vec<PodTrace>,
}

impl Node {
    /// What this node and `pods` made.
    pub fn trace(&self, pods: &[&Pod]) -> Trace {
        Trace::new(&self.fp, pods)
    }
}

impl Trace {
    fn new(fp: &Footprint, pods: &[&Pod]) -> Self {
        Self {
            dir: fp.dir.clone(),
            bridge: fp.bridge.clone(),
            network: fp.network_name(),
            containerd_pid: fp.containerd_pid,
            pods: pods
                .iter()
                .map(|p| PodTrace {
                    uid: p.uid.clone(),
                    pid: p.pid,
                    veth: p.host_veth.as_ref().map(|v| v.name.clone()),
                })
                .collect(),
        }
    }

    /// Each trace that still exists, described; empty when all are gone.
    pub fn remains(&self) -> Vec<String> {
        let mut left = Vec::new();
        if self.dir.exists() {
            left.push(format!("directory {}", self.dir.display()));
        }
        for mount in sys::mounts_under(&self.dir) {
            left.push(format!("mount {}", mount.display()));
        }
        let link = |name: &str| Path::new("/sys/class/net").join(name).exists();
        if link(&self.bridge) {
            left.push(format!("bridge {}", self.bridge));
        }
        if let Some(pid) = self.containerd_pid.filter(|&pid| sys::alive(pid)) {
            left.push(format!("containerd {pid}"));
        }
        for pod in &self.pods {
            if sys::alive(pod.pid) {
                left.push(format!("pause process {}", pod.pid));
            }
            if let Some(veth) = pod.veth.as_deref().filter(|v| link(v)) {
                left.push(format!("veth {veth}"));
            }
            for dir in sys::pod_cgroup_dirs(&pod.uid) {
                left.push(format!("cgroup {}", dir.display()));
            }
        }
        let prefix = format!("{}-", self.network);
        for entry in std::fs::read_dir("/var/lib/cni/results")
            .into_iter()
            .flatten()
        {
            let name = entry.map(|e| e.file_name().to_string_lossy().into_owned());
            if let Some(name) = name.ok().filter(|n| n.starts_with(&prefix)) {
                left.push(format!("CNI result {name}"));
            }
        }
        left
    }

    pub fn to_json(&self) -> String {
        json!({
            "dir": self.dir,
            "bridge": self.bridge,
            "network": self.network,
            "containerd_pid": self.containerd_pid,
            "pods": self.pods.iter().map(|p| json!({
                "uid": p.uid, "pid": p.pid, "veth": p.veth,
            })).collect::<Vec<_>>(),
        })
        .to_string()
    }

    pub fn from_json(text: &str) -> Option<Self> {
        let v: Value = serde_json::from_str(text).ok()?;
        let pods = v["pods"]
            .as_array()?
            .iter()
            .map(|p| {
                Some(PodTrace {
                    uid: p["uid"].as_str()?.to_owned(),
                    pid: u32::try_from(p["pid"].as_u64()?).ok()?,
                    veth: p["veth"].as_str().map(str::to_owned),
                })
            })
            .collect::<Option<_>>()?;
        Some(Self {
            dir: v["dir"].as_str()?.into(),
            bridge: v["bridge"].as_str()?.to_owned(),
            network: v["network"].as_str()?.to_owned(),
            containerd_pid: v["containerd_pid"]
                .as_u64()
                .and_then(|p| u32::try_from(p).ok()),
            pods,
        })
    }
}
