//! The few CRI calls podtrace makes, behind a trait, and the conversion of their answers.
//!
//! [`CriApi`] is implemented by the real gRPC client ([`RuntimeClient`]) and by a fake in the unit
//! tests. Everything else in [`crate::target`] is plain logic over the protobuf types.

use std::future::Future;

use k8s_cri::v1::{
    runtime_service_client::RuntimeServiceClient, Container, ListContainersRequest,
    ListPodSandboxRequest, NamespaceMode, PodSandbox, PodSandboxState, PodSandboxStatusRequest,
    PodSandboxStatusResponse,
};
use serde_json::Value;
use tonic::transport::Channel;

use super::{select, Sandbox, TargetError};

/// A CRI `runtime.v1` client connected to the node's container runtime (see [`super::connect`]).
pub type RuntimeClient = RuntimeServiceClient<Channel>;

/// `PodSandboxState::SandboxReady` as carried in the protobuf messages.
pub(crate) const SANDBOX_READY: i32 = PodSandboxState::SandboxReady as i32;

/// The CRI calls podtrace needs to find a pod. Implemented by [`RuntimeClient`].
pub trait CriApi {
    /// `ListPodSandbox` without a filter: every sandbox on the node.
    fn list_sandboxes(
        &mut self,
    ) -> impl Future<Output = Result<Vec<PodSandbox>, TargetError>> + Send;

    /// `PodSandboxStatus`; `Ok(None)` when the runtime does not know the sandbox.
    fn sandbox_status(
        &mut self,
        id: &str,
        verbose: bool,
    ) -> impl Future<Output = Result<Option<PodSandboxStatusResponse>, TargetError>> + Send;

    /// `ListContainers` without a filter: every container on the node.
    fn list_containers(
        &mut self,
    ) -> impl Future<Output = Result<Vec<Container>, TargetError>> + Send;
}

impl CriApi for RuntimeClient {
    async fn list_sandboxes(&mut self) -> Result<Vec<PodSandbox>, TargetError> {
        let response = self
            .list_pod_sandbox(ListPodSandboxRequest { filter: None })
            .await
            .map_err(|status| TargetError::rpc("ListPodSandbox", &status))?;
        Ok(response.into_inner().items)
    }

    async fn sandbox_status(
        &mut self,
        id: &str,
        verbose: bool,
    ) -> Result<Option<PodSandboxStatusResponse>, TargetError> {
        let request = PodSandboxStatusRequest {
            pod_sandbox_id: id.to_string(),
            verbose,
        };
        match self.pod_sandbox_status(request).await {
            Ok(response) => Ok(Some(response.into_inner())),
            Err(status) if is_not_found(&status) => Ok(None),
            Err(status) => Err(TargetError::rpc("PodSandboxStatus", &status)),
        }
    }

    async fn list_containers(&mut self) -> Result<Vec<Container>, TargetError> {
        let response =
            RuntimeServiceClient::list_containers(self, ListContainersRequest { filter: None })
                .await
                .map_err(|status| TargetError::rpc("ListContainers", &status))?;
        Ok(response.into_inner().containers)
    }
}

/// Whether a CRI error means "no such object". Some runtimes answer `Unknown` with a
/// "not found" message instead of the `NotFound` code.
pub(crate) fn is_not_found(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::NotFound
        || (status.code() == tonic::Code::Unknown && status.message().contains("not found"))
}

/// What the runtime's verbose info (`info["info"]`, JSON) tells about the sandbox.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct VerboseInfo {
    /// Pid of the pause process.
    pub pid: Option<u32>,
    /// Path of the network namespace in the OCI runtime spec.
    pub netns_path: Option<String>,
    /// Whether the OCI spec lists namespaces but no network one: the sandbox joins the node's.
    pub host_network: bool,
}

/// Reads the pid and network namespace from containerd/CRI-O style verbose info.
/// Unknown or missing fields give `None`: the info format is not part of the CRI contract.
pub(crate) fn parse_verbose_info(info: &str) -> VerboseInfo {
    let Ok(json) = serde_json::from_str::<Value>(info) else {
        return VerboseInfo::default();
    };
    let pid = json
        .get("pid")
        .and_then(Value::as_u64)
        .and_then(|pid| u32::try_from(pid).ok())
        .filter(|pid| *pid != 0);
    let namespaces = json
        .pointer("/runtimeSpec/linux/namespaces")
        .and_then(Value::as_array);
    let network = namespaces.and_then(|list| {
        list.iter()
            .find(|ns| ns.get("type").and_then(Value::as_str) == Some("network"))
    });
    let netns_path = network
        .and_then(|ns| ns.get("path"))
        .and_then(Value::as_str)
        .filter(|path| !path.is_empty())
        .map(str::to_string);
    VerboseInfo {
        pid,
        netns_path,
        host_network: namespaces.is_some() && network.is_none(),
    }
}

/// A [`Sandbox`] from a `ListPodSandbox` entry alone: identity, labels,
/// state, but no pid, IP or network mode (those need its status).
pub(crate) fn sandbox_from_listing(listed: &k8s_cri::v1::PodSandbox) -> Sandbox {
    let identity = select::identity(listed);
    Sandbox {
        id: listed.id.clone(),
        name: identity.name.to_string(),
        namespace: identity.namespace.to_string(),
        uid: identity.uid.to_string(),
        ready: listed.state == SANDBOX_READY,
        ip: None,
        pid: None,
        host_network: false,
        netns_path: None,
        created_at_ns: listed.created_at,
        labels: listed.labels.clone(),
        attempt: listed.metadata.as_ref().map_or(0, |m| m.attempt),
    }
}

/// Builds a [`Sandbox`] from a `PodSandboxStatus` answer.
pub(crate) fn sandbox_from_status(
    id: &str,
    response: &PodSandboxStatusResponse,
) -> Result<Sandbox, TargetError> {
    let status = response
        .status
        .as_ref()
        .ok_or_else(|| TargetError::SandboxNotFound(id.to_string()))?;
    let identity = select::identity_of(&status.labels, status.metadata.as_ref());
    let verbose = response
        .info
        .get("info")
        .map(|info| parse_verbose_info(info))
        .unwrap_or_default();
    let node_network = status
        .linux
        .as_ref()
        .and_then(|linux| linux.namespaces.as_ref())
        .and_then(|ns| ns.options.as_ref())
        .is_some_and(|options| options.network == NamespaceMode::Node as i32);
    let ip = status
        .network
        .as_ref()
        .map(|network| network.ip.clone())
        .filter(|ip| !ip.is_empty());
    // Kubelet copies the pod's labels onto the sandbox, next to its own.
    let labels = status.labels.clone();
    Ok(Sandbox {
        labels,
        attempt: status.metadata.as_ref().map_or(0, |m| m.attempt),
        id: if status.id.is_empty() {
            id.to_string()
        } else {
            status.id.clone()
        },
        name: identity.name.to_string(),
        namespace: identity.namespace.to_string(),
        uid: identity.uid.to_string(),
        ready: status.state == SANDBOX_READY,
        ip,
        pid: verbose.pid,
        host_network: node_network || verbose.host_network,
        netns_path: verbose.netns_path,
        created_at_ns: status.created_at,
    })
}
