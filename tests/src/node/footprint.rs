//! What a node made, saved as `node.json` so that a teardown also works from another process
//! when the owner died, and the machine-wide state shared by the nodes of one process.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, Result};
use serde_json::{json, Value};

use super::{net, sys};

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
    pub fn load(dir: &Path) -> Option<Self> {
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
        for root in sys::cgroup_roots() {
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
    pub fn restore(&self) -> Vec<String> {
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
pub(crate) static GLOBALS: Mutex<Option<(usize, Snapshot)>> = Mutex::new(None);

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
