//! Finding the pod to capture: which sandbox on this node it is, and where its network lives.
//!
//! podtrace runs on the node, so it asks the node's container runtime over the CRI API
//! (`runtime.v1`, the same API kubelet uses) rather than the Kubernetes API server:
//!
//! 1. [`connect`] opens the runtime's unix socket (`--runtime-endpoint`,
//!    `$CONTAINER_RUNTIME_ENDPOINT`, or the usual containerd / CRI-O / cri-dockerd sockets) and
//!    checks with `Version` that it speaks CRI;
//! 2. [`resolve`] turns a [`PodSelector`] (a pod name, `NAMESPACE/NAME`, a pod uid or a container
//!    id) into the pod's current [`Sandbox`]: its id, IP, the pid of its pause process and its
//!    network namespace path;
//! 3. [`exists`] tells during a capture whether that sandbox is still there;
//! 4. [`list`] lists the pods of this node for `podtrace pods`.
//!
//! Pods are matched on the labels kubelet puts on every sandbox (`io.kubernetes.pod.name`,
//! `io.kubernetes.pod.namespace`, `io.kubernetes.pod.uid`), falling back to the sandbox metadata.
//! The logic runs over the [`CriApi`] trait, so it is unit-tested against a fake runtime.

mod cri;
mod endpoint;
mod labels;
mod query;
mod select;

use std::{collections::HashMap, fmt};

pub use cri::{CriApi, RuntimeClient};
pub use endpoint::{connect, default_endpoints, DEFAULT_ENDPOINTS, ENDPOINT_ENV, HOST_ROOT};
pub use labels::{LabelSelector, SelectorError};
pub use query::PodQuery;

/// Errors met while finding the container runtime or the pod.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// The pod argument cannot be parsed.
    #[error("invalid pod {arg:?}: {reason}")]
    InvalidSelector {
        /// The argument as given.
        arg: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// `-n NS` and a `NS/POD` argument name two different namespaces.
    #[error("namespace given twice: -n {flag} conflicts with {arg}")]
    NamespaceConflict {
        /// The `-n` value.
        flag: String,
        /// The `NS/POD` argument.
        arg: String,
    },
    /// The endpoint is not a unix socket address.
    #[error("unsupported runtime endpoint {0:?}: use unix:///path/to/socket or /path/to/socket")]
    InvalidEndpoint(String),
    /// None of the default sockets belongs to a CRI runtime.
    #[error("no container runtime found: {tried}; name the socket with --runtime-endpoint, or, in a pod, mount the node's runtime socket (a hostPath volume, see deploy/)")]
    NoRuntime {
        /// The sockets that do not exist, and each other endpoint with why it was not usable.
        tried: String,
    },
    /// The socket file does not exist.
    #[error("container runtime socket {0} does not exist")]
    SocketMissing(String),
    /// Something else than a socket is at the endpoint's path.
    #[error("container runtime endpoint {path} is not a socket: it is {kind}")]
    NotASocket {
        /// The path.
        path: String,
        /// What it is instead: "a regular file", "a directory".
        kind: &'static str,
    },
    /// The runtime runs in another PID namespace than podtrace, so the pods' pids it reports
    /// are not podtrace's.
    #[error("the container runtime at {0} runs in another PID namespace than podtrace, so the pods' pids it reports are not podtrace's: run podtrace in the node's PID namespace (hostPID: true in a pod)")]
    RuntimePidNamespace(String),
    /// The socket exists but may not be opened by this user.
    #[error("permission denied on container runtime socket {0}: run podtrace as root")]
    PermissionDenied(String),
    /// The socket exists but connecting to it failed.
    #[error("cannot connect to container runtime socket {path}: {source}")]
    Connect {
        /// Socket path.
        path: String,
        /// The connect error.
        source: std::io::Error,
    },
    /// Something answers on the socket, but not the CRI `runtime.v1` API.
    #[error("{endpoint} is not a CRI runtime.v1 endpoint: {reason}")]
    NotCri {
        /// The endpoint.
        endpoint: String,
        /// Why the `Version` call failed.
        reason: String,
    },
    /// A CRI call failed.
    #[error("cri call {call} failed: {message} ({code:?})")]
    Rpc {
        /// The RPC name, e.g. `ListPodSandbox`.
        call: &'static str,
        /// gRPC status code.
        code: tonic::Code,
        /// gRPC status message.
        message: String,
    },
    /// No sandbox of that pod on this node.
    #[error("pod {pod} not found on this node{hint}")]
    PodNotFound {
        /// `namespace/name`.
        pod: String,
        /// Suggestions, starting with `"; "`, or empty.
        hint: String,
    },
    /// No sandbox with that pod uid on this node.
    #[error("no pod with uid {0} on this node")]
    UidNotFound(String),
    /// No container with that id or id prefix on this node.
    #[error("no container with id {0} on this node")]
    ContainerNotFound(String),
    /// The container id prefix matches several containers.
    #[error("container id prefix {prefix} is ambiguous: it matches {count} containers")]
    AmbiguousContainer {
        /// The prefix given.
        prefix: String,
        /// How many containers it matches.
        count: usize,
    },
    /// The container's sandbox is not listed by the runtime (any more).
    #[error("sandbox {0} not found on this node")]
    SandboxNotFound(String),
    /// The pod's sandbox exists but is not ready, so it has no network to capture.
    #[error("pod {pod} is not ready (state {state})")]
    NotReady {
        /// `namespace/name`.
        pod: String,
        /// The CRI state name, e.g. `NOTREADY`.
        state: &'static str,
    },
    /// The pod shares the node's network namespace.
    #[error("pod {pod} uses the host network: its traffic is the node's; capture a host interface with -i")]
    HostNetwork {
        /// `namespace/name`.
        pod: String,
    },
}

impl TargetError {
    /// Whether the user named something that cannot be (exit 2) rather than
    /// the runtime or the system failing (exit 1).
    pub fn is_bad_target(&self) -> bool {
        use TargetError as T;
        match self {
            T::InvalidSelector { .. }
            | T::NamespaceConflict { .. }
            | T::InvalidEndpoint(_)
            | T::PodNotFound { .. }
            | T::UidNotFound(_)
            | T::ContainerNotFound(_)
            | T::AmbiguousContainer { .. }
            | T::SandboxNotFound(_)
            | T::NotReady { .. }
            | T::HostNetwork { .. } => true,
            T::NoRuntime { .. }
            | T::SocketMissing(_)
            | T::NotASocket { .. }
            | T::RuntimePidNamespace(_)
            | T::PermissionDenied(_)
            | T::Connect { .. }
            | T::NotCri { .. }
            | T::Rpc { .. } => false,
        }
    }

    pub(crate) fn rpc(call: &'static str, status: &tonic::Status) -> Self {
        TargetError::Rpc {
            call,
            code: status.code(),
            message: status.message().to_string(),
        }
    }
}

/// Which pod to capture, as the user named it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodSelector {
    /// A pod by namespace and name.
    Name {
        /// Kubernetes namespace.
        namespace: String,
        /// Pod name.
        name: String,
    },
    /// A pod by its uid (`metadata.uid`).
    Uid(String),
    /// The pod of a container, by container id or unique id prefix.
    Container(String),
}

/// The namespace used when neither `-n` nor `NAMESPACE/POD` gives one, as with kubectl.
pub const DEFAULT_NAMESPACE: &str = "default";

impl PodSelector {
    /// Parses a pod argument `POD` or `NAMESPACE/POD`, with the `-n` value if any.
    ///
    /// # Errors
    ///
    /// [`TargetError::InvalidSelector`] for an empty part, whitespace or several slashes;
    /// [`TargetError::NamespaceConflict`] when `-n` names another namespace than `NAMESPACE/`.
    pub fn parse(arg: &str, namespace: Option<&str>) -> Result<Self, TargetError> {
        let invalid = |reason| TargetError::InvalidSelector {
            arg: arg.to_string(),
            reason,
        };
        if arg.is_empty() {
            return Err(invalid("empty pod name"));
        }
        if arg.chars().any(char::is_whitespace) {
            return Err(invalid("pod names contain no whitespace"));
        }
        if namespace.is_some_and(str::is_empty) {
            return Err(invalid("empty namespace given with -n"));
        }
        let (ns, name) = match arg.split_once('/') {
            None => (namespace.unwrap_or(DEFAULT_NAMESPACE), arg),
            Some((ns, name)) => {
                if ns.is_empty() || name.is_empty() {
                    return Err(invalid("expected POD or NAMESPACE/POD"));
                }
                if name.contains('/') {
                    return Err(invalid("expected POD or NAMESPACE/POD, not more slashes"));
                }
                if let Some(flag) = namespace.filter(|flag| *flag != ns) {
                    return Err(TargetError::NamespaceConflict {
                        flag: flag.to_string(),
                        arg: arg.to_string(),
                    });
                }
                (ns, name)
            }
        };
        Ok(PodSelector::Name {
            namespace: ns.to_string(),
            name: name.to_string(),
        })
    }
}

impl fmt::Display for PodSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PodSelector::Name { namespace, name } => write!(f, "{namespace}/{name}"),
            PodSelector::Uid(uid) => write!(f, "pod uid {uid}"),
            PodSelector::Container(id) => write!(f, "container {id}"),
        }
    }
}

/// A pod sandbox on this node: what podtrace needs to find the pod's network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sandbox {
    /// CRI sandbox id.
    pub id: String,
    /// Pod name.
    pub name: String,
    /// Pod namespace.
    pub namespace: String,
    /// Pod uid.
    pub uid: String,
    /// Whether the sandbox is in state `SANDBOX_READY`.
    pub ready: bool,
    /// The pod IP, when the runtime reports one.
    pub ip: Option<String>,
    /// Pid (on the node) of the sandbox's pause process, from the runtime's verbose info.
    pub pid: Option<u32>,
    /// Whether the pod shares the node's network namespace (`hostNetwork: true`).
    pub host_network: bool,
    /// Path of the pod's network namespace, from the runtime's verbose info.
    pub netns_path: Option<String>,
    /// Sandbox creation time, nanoseconds since the epoch.
    pub created_at_ns: i64,
    /// The pod's labels (kubelet copies them onto its sandbox).
    pub labels: HashMap<String, String>,
    /// Which sandbox of the pod this is: kubelet counts re-creations.
    pub attempt: u32,
}

impl Sandbox {
    /// `namespace/name`.
    pub fn pod_name(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// Finds the sandbox of the selected pod, checks that it is ready and has its own network.
///
/// Several sandboxes can exist for one pod (kubelet recreates them); the newest ready one wins.
///
/// # Errors
///
/// [`TargetError::PodNotFound`] (with suggestions: close names, namespaces holding a pod of that
/// name), [`TargetError::UidNotFound`], [`TargetError::ContainerNotFound`],
/// [`TargetError::AmbiguousContainer`], [`TargetError::NotReady`],
/// [`TargetError::HostNetwork`], or [`TargetError::Rpc`] when the runtime fails.
pub async fn resolve<C: CriApi>(
    client: &mut C,
    selector: &PodSelector,
) -> Result<Sandbox, TargetError> {
    let sandboxes = client.list_sandboxes().await?;
    let chosen = match selector {
        PodSelector::Name { namespace, name } => select::by_name(&sandboxes, namespace, name)?,
        PodSelector::Uid(uid) => select::by_uid(&sandboxes, uid)?,
        PodSelector::Container(prefix) => {
            let containers = client.list_containers().await?;
            let sandbox_id = select::container_sandbox(&containers, prefix)?;
            select::by_id(&sandboxes, &sandbox_id)?
        }
    };
    let sandbox = status(client, &chosen.id).await?;
    if !sandbox.ready {
        return Err(TargetError::NotReady {
            pod: sandbox.pod_name(),
            state: "NOTREADY",
        });
    }
    if sandbox.host_network {
        return Err(TargetError::HostNetwork {
            pod: sandbox.pod_name(),
        });
    }
    Ok(sandbox)
}

/// Lists this node's pod sandboxes, optionally of one namespace, sorted by namespace, name and
/// newest first. Not-ready and host-network sandboxes are included.
///
/// # Errors
///
/// [`TargetError::Rpc`] when the runtime fails.
pub async fn list<C: CriApi>(
    client: &mut C,
    namespace: Option<&str>,
) -> Result<Vec<Sandbox>, TargetError> {
    let sandboxes = client.list_sandboxes().await?;
    let mut out = Vec::new();
    for summary in sandboxes {
        if namespace.is_some_and(|ns| select::identity(&summary).namespace != ns) {
            continue;
        }
        // None: removed between the list and the status call.
        if let Some(response) = client.sandbox_status(&summary.id, true).await? {
            out.push(cri::sandbox_from_status(&summary.id, &response)?);
        }
    }
    out.sort_by(|a, b| {
        (&a.namespace, &a.name, b.created_at_ns).cmp(&(&b.namespace, &b.name, a.created_at_ns))
    });
    Ok(out)
}

/// Whether the sandbox still exists and is ready: false once the pod is deleted or stopped.
///
/// # Errors
///
/// [`TargetError::Rpc`] when the runtime fails for another reason than "not found".
pub async fn exists<C: CriApi>(client: &mut C, sandbox_id: &str) -> Result<bool, TargetError> {
    match client.sandbox_status(sandbox_id, false).await {
        Ok(Some(response)) => Ok(response
            .status
            .is_some_and(|s| s.state == cri::SANDBOX_READY)),
        Ok(None) => Ok(false),
        Err(err) => Err(err),
    }
}

/// Every sandbox on the node, as listed: identity, labels and state only.
///
/// # Errors
///
/// [`TargetError::Rpc`] when the runtime fails.
pub async fn listed<C: CriApi>(client: &mut C) -> Result<Vec<Sandbox>, TargetError> {
    let sandboxes = client.list_sandboxes().await?;
    Ok(sandboxes.iter().map(cri::sandbox_from_listing).collect())
}

/// Full status of one sandbox, converted; `None` once it is gone.
///
/// # Errors
///
/// [`TargetError::Rpc`] when the runtime fails.
pub async fn sandbox_status<C: CriApi>(
    client: &mut C,
    id: &str,
) -> Result<Option<Sandbox>, TargetError> {
    match client.sandbox_status(id, true).await? {
        Some(response) => cri::sandbox_from_status(id, &response).map(Some),
        None => Ok(None),
    }
}

/// Full status of one sandbox, converted.
async fn status<C: CriApi>(client: &mut C, id: &str) -> Result<Sandbox, TargetError> {
    match client.sandbox_status(id, true).await? {
        Some(response) => cri::sandbox_from_status(id, &response),
        None => Err(TargetError::SandboxNotFound(id.to_string())),
    }
}

#[cfg(test)]
mod tests;
