//! Pods of the test node: what to make ([`PodSpec`]) and what was made ([`Pod`]).

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use k8s_cri::v1::{ContainerState, ContainerStatusRequest, ExecSyncRequest, StopContainerRequest};

use super::containerd::Cri;
use super::{BUSYBOX_IMAGE, HTTP_PORT};

/// ExecSync timeout, seconds.
const EXEC_TIMEOUT_S: i64 = 60;

/// What pod to make.
#[derive(Debug, Clone)]
pub struct PodSpec {
    /// Pod name.
    pub name: String,
    /// Pod namespace (`default` unless set).
    pub namespace: String,
    /// `hostNetwork: true`: the pod shares the node's network namespace.
    pub host_network: bool,
    /// The app container's command. Default: `busybox httpd -f -p 8080 -h /www` (serving
    /// [`super::INDEX_HTML`]), or `busybox sleep` for a host-network pod (port 8080 of the host
    /// is not ours to take).
    pub command: Option<Vec<String>>,
    /// The app container's args (after the image's entrypoint, like a manifest's `args`).
    pub args: Option<Vec<String>>,
    /// Extra sandbox labels, on top of kubelet's `io.kubernetes.pod.*`.
    pub labels: Vec<(String, String)>,
    /// `hostPID: true`: the pod shares the node's PID namespace.
    pub host_pid: bool,
    /// The app container's image (fully qualified, imported into the node); default the busybox
    /// app image.
    pub image: Option<String>,
    /// hostPath volumes mounted into the app container.
    pub mounts: Vec<Mount>,
    /// The app container's securityContext.
    pub security: Security,
}

/// A hostPath volume mount, as kubelet hands it to the runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Path on the node.
    pub host_path: PathBuf,
    /// Path in the container.
    pub container_path: String,
    /// `readOnly: true`.
    pub readonly: bool,
}

/// A container's securityContext, the fields kubelet translates to CRI.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Security {
    /// `privileged: true`.
    pub privileged: bool,
    /// `capabilities.add`, e.g. `BPF` (kubelet passes the names as written).
    pub add_capabilities: Vec<String>,
    /// `capabilities.drop`, e.g. `ALL`.
    pub drop_capabilities: Vec<String>,
    /// `readOnlyRootFilesystem: true`.
    pub readonly_rootfs: bool,
    /// `allowPrivilegeEscalation: false`.
    pub no_new_privs: bool,
    /// `seccompProfile: {type: RuntimeDefault}`.
    pub seccomp_runtime_default: bool,
    /// `runAsUser`.
    pub run_as_user: Option<i64>,
}

impl PodSpec {
    /// A pod `default/NAME` with its own network running the HTTP server.
    pub fn new(name: &str) -> Self {
        PodSpec {
            name: name.to_string(),
            namespace: "default".to_string(),
            host_network: false,
            command: None,
            args: None,
            labels: Vec::new(),
            host_pid: false,
            image: None,
            mounts: Vec::new(),
            security: Security::default(),
        }
    }

    /// Sets the namespace.
    #[must_use]
    pub fn namespace(mut self, namespace: &str) -> Self {
        self.namespace = namespace.to_string();
        self
    }

    /// Makes it a `hostNetwork` pod.
    #[must_use]
    pub fn host_network(mut self) -> Self {
        self.host_network = true;
        self
    }

    /// Sets the app container's command.
    #[must_use]
    pub fn command(mut self, command: &[&str]) -> Self {
        self.command = Some(command.iter().map(|s| (*s).to_string()).collect());
        self
    }

    /// Adds a sandbox label.
    #[must_use]
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.push((key.to_string(), value.to_string()));
        self
    }

    /// Makes it a `hostPID` pod.
    #[must_use]
    pub fn host_pid(mut self) -> Self {
        self.host_pid = true;
        self
    }

    /// Sets the app container's args.
    #[must_use]
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args = Some(args.iter().map(|s| (*s).to_string()).collect());
        self
    }

    pub(crate) fn default_app(&self) -> bool {
        self.command.is_none() && self.image.is_none() && !self.host_network
    }

    pub(crate) fn image_name(&self) -> String {
        self.image
            .clone()
            .unwrap_or_else(|| BUSYBOX_IMAGE.to_string())
    }

    pub(crate) fn app_command(&self) -> Vec<String> {
        if self.image.is_some() {
            // Another image: its entrypoint runs unless a command is given.
            return self.command.clone().unwrap_or_default();
        }
        let port = HTTP_PORT.to_string();
        let default: Vec<&str> = if self.host_network {
            vec!["/bin/busybox", "sleep", "86400"]
        } else {
            vec!["/bin/busybox", "httpd", "-f", "-p", &port, "-h", "/www"]
        };
        self.command
            .clone()
            .unwrap_or_else(|| default.into_iter().map(String::from).collect())
    }
}

/// The host side of a pod's veth pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostVeth {
    /// Link name, e.g. `veth1a2b3c4d`.
    pub name: String,
    /// Its ifindex in the host network namespace.
    pub ifindex: u32,
}

/// What a command run in a pod gave.
#[derive(Debug, Clone)]
pub struct ExecOutput {
    /// Exit code.
    pub code: i32,
    /// Standard output, lossily decoded.
    pub stdout: String,
    /// Standard error, lossily decoded.
    pub stderr: String,
}

/// A running pod: one sandbox and one app container named `app`.
#[derive(Clone)]
pub struct Pod {
    /// Pod name.
    pub name: String,
    /// Pod namespace.
    pub namespace: String,
    /// Pod uid (random, like the API server's).
    pub uid: String,
    /// CRI sandbox id.
    pub sandbox_id: String,
    /// CRI id of the app container.
    pub container_id: String,
    /// Pod IP; `None` for a host-network pod.
    pub ip: Option<Ipv4Addr>,
    /// Pid of the pause process, on the host.
    pub pid: u32,
    /// Whether the pod uses the host network.
    pub host_network: bool,
    /// The host-side veth; `None` for a host-network pod.
    pub host_veth: Option<HostVeth>,
    /// The app container's log file (CRI format) on the node.
    pub log_path: PathBuf,
    pub(crate) cri: Cri,
}

impl std::fmt::Debug for Pod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pod")
            .field("name", &format!("{}/{}", self.namespace, self.name))
            .field("uid", &self.uid)
            .field("sandbox_id", &self.sandbox_id)
            .field("ip", &self.ip)
            .field("pid", &self.pid)
            .field("host_veth", &self.host_veth)
            .finish_non_exhaustive()
    }
}

impl Pod {
    /// The pod IP.
    ///
    /// # Errors
    ///
    /// For a host-network pod.
    pub fn ip(&self) -> Result<Ipv4Addr> {
        self.ip
            .with_context(|| format!("pod {}/{} has no own IP", self.namespace, self.name))
    }

    /// Runs a command in the app container (CRI ExecSync), e.g.
    /// `["busybox", "wget", "-qO-", "http://10.245.0.3:8080/"]`.
    ///
    /// # Errors
    ///
    /// When ExecSync itself fails; a command exiting non-zero is an `Ok` with its code.
    pub fn exec(&self, cmd: &[&str]) -> Result<ExecOutput> {
        let request = ExecSyncRequest {
            container_id: self.container_id.clone(),
            cmd: cmd.iter().map(|s| (*s).to_string()).collect(),
            timeout: EXEC_TIMEOUT_S,
        };
        let reply = self
            .cri
            .block_on(async { self.cri.runtime().exec_sync(request).await })
            .with_context(|| format!("exec {cmd:?} in {}/{}", self.namespace, self.name))?
            .into_inner();
        Ok(ExecOutput {
            code: reply.exit_code,
            stdout: String::from_utf8_lossy(&reply.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&reply.stderr).into_owned(),
        })
    }

    /// The app container's output so far, stdout and stderr interleaved, without the CRI log
    /// format's timestamp, stream and tag columns.
    ///
    /// # Errors
    ///
    /// The log file cannot be read.
    pub fn log(&self) -> Result<String> {
        let raw = match std::fs::read(&self.log_path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            other => other.with_context(|| format!("reading {}", self.log_path.display()))?,
        };
        let mut out = String::new();
        for line in String::from_utf8_lossy(&raw).lines() {
            // "2006-01-02T15:04:05.999999999Z07:00 stderr F text"; P marks a partial line.
            let mut cols = line.splitn(4, ' ');
            let (_, _, tag, text) = (cols.next(), cols.next(), cols.next(), cols.next());
            out.push_str(text.unwrap_or_default());
            if tag != Some("P") {
                out.push('\n');
            }
        }
        Ok(out)
    }

    /// Waits until the app container's log has a line containing `needle`.
    ///
    /// # Errors
    ///
    /// `timeout` passed, or the container exited first (its log is in the error).
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.log()?;
            if log.contains(needle) {
                return Ok(());
            }
            if let Some(code) = self.exit_code()? {
                bail!("the container exited ({code}) before logging {needle:?}:\n{log}");
            }
            if Instant::now() > deadline {
                bail!("no {needle:?} in the container's log after {timeout:?}:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The app container's exit code once it exited, else `None`.
    ///
    /// # Errors
    ///
    /// The ContainerStatus call failing.
    pub fn exit_code(&self) -> Result<Option<i32>> {
        let request = ContainerStatusRequest {
            container_id: self.container_id.clone(),
            verbose: false,
        };
        let status = self
            .cri
            .block_on(async { self.cri.runtime().container_status(request).await })
            .context("ContainerStatus")?
            .into_inner()
            .status
            .context("ContainerStatus without a status")?;
        Ok((status.state == ContainerState::ContainerExited as i32).then_some(status.exit_code))
    }

    /// The app container's process on the node (from ContainerStatus' verbose info).
    ///
    /// # Errors
    ///
    /// The call failing, or no pid in its info (the container is not running).
    pub fn container_pid(&self) -> Result<u32> {
        let request = ContainerStatusRequest {
            container_id: self.container_id.clone(),
            verbose: true,
        };
        let reply = self
            .cri
            .block_on(async { self.cri.runtime().container_status(request).await })
            .context("ContainerStatus")?
            .into_inner();
        let info: serde_json::Value = reply
            .info
            .get("info")
            .and_then(|text| serde_json::from_str(text).ok())
            .context("ContainerStatus has no verbose info")?;
        info.get("pid")
            .and_then(serde_json::Value::as_u64)
            .and_then(|p| u32::try_from(p).ok())
            .filter(|&p| p > 0)
            .context("no container pid in ContainerStatus' info")
    }

    /// Waits for the app container to exit by itself; returns its exit code.
    ///
    /// # Errors
    ///
    /// It is still running after `timeout`.
    pub fn wait_exit(&self, timeout: Duration) -> Result<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(code) = self.exit_code()? {
                return Ok(code);
            }
            if Instant::now() > deadline {
                bail!(
                    "the container still runs after {timeout:?}:\n{}",
                    self.log()?
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the app container as kubelet does when a pod is deleted: SIGTERM, then SIGKILL
    /// after `grace`. Returns its exit code.
    ///
    /// # Errors
    ///
    /// The CRI calls failing.
    pub fn stop(&self, grace: Duration) -> Result<i32> {
        let request = StopContainerRequest {
            container_id: self.container_id.clone(),
            timeout: i64::try_from(grace.as_secs()).unwrap_or(i64::MAX),
        };
        self.cri
            .block_on(async { self.cri.runtime().stop_container(request).await })
            .context("StopContainer")?;
        self.wait_exit(Duration::from_secs(5))
    }

    /// Like [`Pod::exec`], failing unless the command exits 0; returns its stdout.
    ///
    /// # Errors
    ///
    /// ExecSync failing or the command exiting non-zero (its stderr is in the error).
    pub fn exec_ok(&self, cmd: &[&str]) -> Result<String> {
        let out = self.exec(cmd)?;
        if out.code != 0 {
            bail!(
                "{cmd:?} in {}/{} exited {}: {}",
                self.namespace,
                self.name,
                out.code,
                out.stderr.trim()
            );
        }
        Ok(out.stdout)
    }
}
