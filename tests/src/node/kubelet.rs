//! Making and removing pods over CRI, the way kubelet does it.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use k8s_cri::v1::{
    security_profile::ProfileType, Capability, ContainerConfig, ContainerFilter, ContainerMetadata,
    CreateContainerRequest, ImageSpec, Int64Value, LinuxContainerConfig,
    LinuxContainerSecurityContext, LinuxPodSandboxConfig, LinuxSandboxSecurityContext,
    ListContainersRequest, ListPodSandboxRequest, MountPropagation, NamespaceMode, NamespaceOption,
    PodSandboxConfig, PodSandboxFilter, PodSandboxMetadata, PodSandboxStatusRequest,
    RemoveContainerRequest, RemovePodSandboxRequest, RunPodSandboxRequest, SecurityProfile,
    StartContainerRequest, StopContainerRequest, StopPodSandboxRequest,
};
use serde_json::Value;

use super::containerd::Cri;
use super::footprint::Footprint;
use super::pod::{HostVeth, Pod, PodSpec};
use super::{net, pod_log_dir, HTTP_PORT};

/// How long the default app may take to answer HTTP after its container started.
const APP_READY_TIMEOUT: Duration = Duration::from_secs(10);

fn namespace_options(spec: &PodSpec) -> NamespaceOption {
    let network = if spec.host_network {
        NamespaceMode::Node
    } else {
        NamespaceMode::Pod
    };
    let pid = if spec.host_pid {
        NamespaceMode::Node
    } else {
        NamespaceMode::Container
    };
    NamespaceOption {
        network: network as i32,
        pid: pid as i32,
        ipc: NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

fn sandbox_config(fp: &Footprint, spec: &PodSpec, uid: &str, attempt: u32) -> PodSandboxConfig {
    let mut labels: HashMap<String, String> = spec.labels.iter().cloned().collect();
    labels.insert("io.kubernetes.pod.name".into(), spec.name.clone());
    labels.insert("io.kubernetes.pod.namespace".into(), spec.namespace.clone());
    labels.insert("io.kubernetes.pod.uid".into(), uid.to_string());
    let sysctls = if spec.host_network {
        HashMap::new() // network sysctls are the host's: not ours to change
    } else {
        HashMap::from([
            (
                "net.ipv6.conf.all.disable_ipv6".to_string(),
                "1".to_string(),
            ),
            (
                "net.ipv6.conf.default.disable_ipv6".to_string(),
                "1".to_string(),
            ),
        ])
    };
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: spec.name.clone(),
            uid: uid.to_string(),
            namespace: spec.namespace.clone(),
            attempt,
        }),
        hostname: if spec.host_network {
            String::new()
        } else {
            spec.name.clone()
        },
        log_directory: pod_log_dir(fp, uid).display().to_string(),
        labels,
        linux: Some(LinuxPodSandboxConfig {
            cgroup_parent: format!("/kubepods/besteffort/pod{uid}"),
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(namespace_options(spec)),
                privileged: spec.security.privileged,
                ..Default::default()
            }),
            sysctls,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The app container's securityContext as kubelet translates it.
fn container_security(spec: &PodSpec) -> LinuxContainerSecurityContext {
    let sc = &spec.security;
    let capabilities =
        (!sc.add_capabilities.is_empty() || !sc.drop_capabilities.is_empty()).then(|| Capability {
            add_capabilities: sc.add_capabilities.clone(),
            drop_capabilities: sc.drop_capabilities.clone(),
            ..Default::default()
        });
    LinuxContainerSecurityContext {
        namespace_options: Some(namespace_options(spec)),
        capabilities,
        privileged: sc.privileged,
        readonly_rootfs: sc.readonly_rootfs,
        no_new_privs: sc.no_new_privs,
        run_as_user: sc.run_as_user.map(|value| Int64Value { value }),
        seccomp: sc.seccomp_runtime_default.then(|| SecurityProfile {
            profile_type: ProfileType::RuntimeDefault as i32,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Runs the sandbox (kubelet's `attempt` of it: 0 for a new pod, then one
/// more each time it re-creates the sandbox), finds its network, starts the app.
pub(crate) fn run(
    cri: &Cri,
    fp: &Footprint,
    spec: &PodSpec,
    uid: &str,
    attempt: u32,
) -> Result<Pod> {
    std::fs::create_dir_all(pod_log_dir(fp, uid))?;
    let config = sandbox_config(fp, spec, uid, attempt);
    let mut client = cri.runtime();
    let (sandbox_id, info) = cri.block_on(async {
        let sandbox_id = client
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: String::new(),
            })
            .await
            .context("RunPodSandbox")?
            .into_inner()
            .pod_sandbox_id;
        let status = client
            .pod_sandbox_status(PodSandboxStatusRequest {
                pod_sandbox_id: sandbox_id.clone(),
                verbose: true,
            })
            .await
            .context("PodSandboxStatus")?
            .into_inner();
        let info: Value = status
            .info
            .get("info")
            .and_then(|text| serde_json::from_str(text).ok())
            .context("PodSandboxStatus has no verbose info")?;
        anyhow::Ok((sandbox_id, info))
    })?;
    let pid = info
        .get("pid")
        .and_then(Value::as_u64)
        .and_then(|p| u32::try_from(p).ok())
        .context("no pause pid in the sandbox info")?;

    let (ip, host_veth) = if spec.host_network {
        (None, None)
    } else {
        let (ip, veth) = pod_network(fp, &info, pid)?;
        (Some(ip), Some(veth))
    };

    let container = ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: "app".to_string(),
            // Its name is reserved until removed: a new sandbox's app is the next attempt.
            attempt,
        }),
        image: Some(ImageSpec {
            image: spec.image_name(),
            ..Default::default()
        }),
        command: spec.app_command(),
        args: spec.args.clone().unwrap_or_default(),
        mounts: spec
            .mounts
            .iter()
            .map(|m| k8s_cri::v1::Mount {
                container_path: m.container_path.clone(),
                host_path: m.host_path.display().to_string(),
                readonly: m.readonly,
                propagation: MountPropagation::PropagationPrivate as i32,
                ..Default::default()
            })
            .collect(),
        log_path: "app.log".to_string(),
        labels: HashMap::from([
            (
                "io.kubernetes.container.name".to_string(),
                "app".to_string(),
            ),
            ("io.kubernetes.pod.name".to_string(), spec.name.clone()),
            (
                "io.kubernetes.pod.namespace".to_string(),
                spec.namespace.clone(),
            ),
            ("io.kubernetes.pod.uid".to_string(), uid.to_string()),
        ]),
        linux: Some(LinuxContainerConfig {
            security_context: Some(container_security(spec)),
            ..Default::default()
        }),
        ..Default::default()
    };
    let container_id = cri.block_on(async {
        let id = client
            .create_container(CreateContainerRequest {
                pod_sandbox_id: sandbox_id.clone(),
                config: Some(container),
                sandbox_config: Some(config),
            })
            .await
            .context("CreateContainer")?
            .into_inner()
            .container_id;
        client
            .start_container(StartContainerRequest {
                container_id: id.clone(),
            })
            .await
            .context("StartContainer")?;
        anyhow::Ok(id)
    })?;

    if let (true, Some(ip)) = (spec.default_app(), ip) {
        wait_http(ip)?;
    }
    Ok(Pod {
        name: spec.name.clone(),
        namespace: spec.namespace.clone(),
        uid: uid.to_string(),
        sandbox_id,
        container_id,
        ip,
        pid,
        host_network: spec.host_network,
        host_veth,
        log_path: pod_log_dir(fp, uid).join("app.log"),
        cri: cri.clone(),
    })
}

/// The pod IP and host veth, from the CNI result in the sandbox info; turns IPv6 off on the veth.
fn pod_network(fp: &Footprint, info: &Value, pid: u32) -> Result<(Ipv4Addr, HostVeth)> {
    let cni = info
        .get("cniResult")
        .context("no cniResult in the sandbox info")?;
    let ip = cni
        .pointer("/Interfaces/eth0/IPConfigs/0/IP")
        .and_then(Value::as_str)
        .context("no eth0 address in the CNI result")?
        .parse()
        .context("parsing the pod IP")?;
    let name = match net::host_veth_from_cni_result(cni, &fp.bridge) {
        Some(name) => name,
        // Older result formats: the peer of the pod's eth0.
        None => {
            let path = format!("/proc/{pid}/root/sys/class/net/eth0/iflink");
            let iflink =
                std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
            net::link_by_index(iflink.trim().parse()?).context("no host link for the pod's eth0")?
        }
    };
    net::disable_ipv6(&name)?;
    let master = net::master_of(&name);
    if master.as_deref() != Some(fp.bridge.as_str()) {
        bail!("host veth {name} is on {master:?}, not on {}", fp.bridge);
    }
    let ifindex = net::ifindex(&name)?;
    Ok((ip, HostVeth { name, ifindex }))
}

/// Waits until the pod's HTTP server accepts connections.
fn wait_http(ip: Ipv4Addr) -> Result<()> {
    let addr = SocketAddr::from((ip, HTTP_PORT));
    let deadline = Instant::now() + APP_READY_TIMEOUT;
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
            Ok(_) => return Ok(()),
            Err(err) if Instant::now() > deadline => {
                return Err(err).with_context(|| format!("the app at {addr} never answered"))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Whether a CRI error means "already gone".
fn gone(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::NotFound || status.message().contains("not found")
}

/// Removes a pod as kubelet does: containers stopped at once and removed, then the sandbox.
pub(crate) fn remove(cri: &Cri, sandbox_id: &str) -> Result<()> {
    let mut client = cri.runtime();
    cri.block_on(async {
        let containers = client
            .list_containers(ListContainersRequest {
                filter: Some(ContainerFilter {
                    pod_sandbox_id: sandbox_id.to_string(),
                    ..Default::default()
                }),
            })
            .await
            .context("ListContainers")?
            .into_inner()
            .containers;
        for container in containers {
            let id = container.id;
            let stopped = client
                .stop_container(StopContainerRequest {
                    container_id: id.clone(),
                    timeout: 0,
                })
                .await;
            ignore_gone(stopped, "StopContainer")?;
            let removed = client
                .remove_container(RemoveContainerRequest { container_id: id })
                .await;
            ignore_gone(removed, "RemoveContainer")?;
        }
        let id = sandbox_id.to_string();
        let stopped = client
            .stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: id.clone(),
            })
            .await;
        ignore_gone(stopped, "StopPodSandbox")?;
        let removed = client
            .remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: id })
            .await;
        ignore_gone(removed, "RemovePodSandbox")
    })
    .with_context(|| format!("removing sandbox {sandbox_id}"))
}

/// Stops a pod's sandbox without removing it: the pod stays listed, NOTREADY,
/// as after a sandbox crash.
pub(crate) fn stop_sandbox(cri: &Cri, sandbox_id: &str) -> Result<()> {
    let mut client = cri.runtime();
    cri.block_on(async {
        let stopped = client
            .stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: sandbox_id.to_string(),
            })
            .await;
        ignore_gone(stopped, "StopPodSandbox")
    })
    .with_context(|| format!("stopping sandbox {sandbox_id}"))
}

fn ignore_gone<T>(result: Result<T, tonic::Status>, call: &str) -> Result<()> {
    match result {
        Ok(_) => Ok(()),
        Err(status) if gone(&status) => Ok(()),
        Err(status) => Err(status).context(call.to_string()),
    }
}

/// Removes every pod of the node.
pub(crate) fn remove_all(cri: &Cri) -> Result<()> {
    let mut client = cri.runtime();
    let sandboxes = cri
        .block_on(client.list_pod_sandbox(ListPodSandboxRequest {
            filter: Some(PodSandboxFilter::default()),
        }))
        .context("ListPodSandbox")?
        .into_inner()
        .items;
    let mut first_error = None;
    for sandbox in sandboxes {
        if let Err(err) = remove(cri, &sandbox.id) {
            first_error.get_or_insert(err);
        }
    }
    first_error.map_or(Ok(()), Err)
}
