//! Pods of the test node: what to make ([`PodSpec`]) and what was made ([`Pod`]).

use std::net::Ipv4Addr;

use anyhow::{bail, Context, Result};
use k8s_cri::v1::ExecSyncRequest;

use super::containerd::Cri;
use super::HTTP_PORT;

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
    /// Extra sandbox labels, on top of kubelet's `io.kubernetes.pod.*`.
    pub labels: Vec<(String, String)>,
}

impl PodSpec {
    /// A pod `default/NAME` with its own network running the HTTP server.
    pub fn new(name: &str) -> Self {
        PodSpec {
            name: name.to_string(),
            namespace: "default".to_string(),
            host_network: false,
            command: None,
            labels: Vec::new(),
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

    pub(crate) fn default_app(&self) -> bool {
        self.command.is_none() && !self.host_network
    }

    pub(crate) fn app_command(&self) -> Vec<String> {
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
