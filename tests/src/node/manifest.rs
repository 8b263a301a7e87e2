//! Kubernetes manifests (deploy/) turned into the [`PodSpec`] kubelet would run, so a test runs
//! exactly the host namespaces, mounts and securityContext a file declares.
//!
//! Only what the manifests use is translated; anything else that would change how the container
//! runs (another volume type, a pod-level securityContext, several containers) is refused rather
//! than ignored, so a manifest cannot say more than the tests run.

use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

use super::pod::{Mount, PodSpec, Security};

/// The parts of a manifest's pod that the tests run.
#[derive(Debug, Clone)]
pub struct ManifestPod {
    /// `metadata.name` of the Pod or DaemonSet.
    pub name: String,
    /// `metadata.namespace` (`default` when absent).
    pub namespace: String,
    /// The container's image as written (`podtrace:0.1.0`).
    pub image: String,
    /// The container's `args`.
    pub args: Vec<String>,
    pub host_network: bool,
    pub host_pid: bool,
    pub security: Security,
    /// Each volume mount: (hostPath on the node, mountPath, readOnly).
    pub mounts: Vec<(String, String, bool)>,
}

impl ManifestPod {
    /// Reads a Pod or a DaemonSet (its pod template) from a YAML file.
    ///
    /// # Errors
    ///
    /// Unreadable or not YAML, or using something the translation does not cover.
    pub fn load(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("translating {}", path.display()))
    }

    /// [`ManifestPod::load`] from text.
    ///
    /// # Errors
    ///
    /// Not YAML, or using something the translation does not cover.
    pub fn parse(text: &str) -> Result<Self> {
        let yaml: serde_yaml::Value = serde_yaml::from_str(text).context("parsing YAML")?;
        let doc: Value = serde_json::to_value(yaml)?;
        let name = str_at(&doc, "/metadata/name")?.to_string();
        let namespace = doc
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("default")
            .to_string();
        let spec = match str_at(&doc, "/kind")? {
            "Pod" => &doc["spec"],
            "DaemonSet" => &doc["spec"]["template"]["spec"],
            other => bail!("kind {other}: only Pod and DaemonSet are translated"),
        };
        ensure!(
            spec.get("securityContext").is_none(),
            "a pod-level securityContext is not translated"
        );
        let containers = spec["containers"].as_array().context("no containers")?;
        ensure!(containers.len() == 1, "exactly one container is translated");
        ensure!(
            spec.get("initContainers").is_none(),
            "initContainers are not translated"
        );
        let c = &containers[0];
        ensure!(
            c.get("command").is_none(),
            "the image's entrypoint runs: use args"
        );
        let args = strings(&c["args"])?;
        let sc = &c["securityContext"];
        for key in sc.as_object().map(|o| o.keys()).into_iter().flatten() {
            ensure!(
                [
                    "capabilities",
                    "privileged",
                    "allowPrivilegeEscalation",
                    "readOnlyRootFilesystem",
                    "runAsUser",
                    "seccompProfile"
                ]
                .contains(&key.as_str()),
                "securityContext.{key} is not translated"
            );
        }
        let seccomp = sc["seccompProfile"]["type"].as_str();
        ensure!(
            matches!(seccomp, None | Some("RuntimeDefault" | "Unconfined")),
            "seccompProfile {seccomp:?} is not translated"
        );
        let security = Security {
            privileged: sc["privileged"].as_bool().unwrap_or(false),
            add_capabilities: strings(&sc["capabilities"]["add"])?,
            drop_capabilities: strings(&sc["capabilities"]["drop"])?,
            readonly_rootfs: sc["readOnlyRootFilesystem"].as_bool().unwrap_or(false),
            // Kubelet: no_new_privs unless allowPrivilegeEscalation is true (or privileged).
            no_new_privs: sc["allowPrivilegeEscalation"].as_bool() == Some(false),
            seccomp_runtime_default: seccomp == Some("RuntimeDefault"),
            run_as_user: sc["runAsUser"].as_i64(),
        };
        let volumes = spec["volumes"].as_array().cloned().unwrap_or_default();
        let mut mounts = Vec::new();
        for m in c["volumeMounts"].as_array().into_iter().flatten() {
            let volume_name = str_at(m, "/name")?;
            let volume = volumes
                .iter()
                .find(|v| v["name"] == volume_name)
                .with_context(|| format!("volumeMount {volume_name} has no volume"))?;
            let host_path = volume["hostPath"]["path"]
                .as_str()
                .with_context(|| format!("volume {volume_name}: only hostPath is translated"))?;
            ensure!(m.get("subPath").is_none(), "subPath is not translated");
            mounts.push((
                host_path.to_string(),
                str_at(m, "/mountPath")?.to_string(),
                m["readOnly"].as_bool().unwrap_or(false),
            ));
        }
        Ok(ManifestPod {
            name,
            namespace,
            image: str_at(c, "/image")?.to_string(),
            args,
            host_network: spec["hostNetwork"].as_bool().unwrap_or(false),
            host_pid: spec["hostPID"].as_bool().unwrap_or(false),
            security,
            mounts,
        })
    }

    /// The pod to run on the test node: `name` in `namespace`, `image` (the fully qualified
    /// name the node knows), each hostPath mapped to where the test node keeps that thing
    /// (its containerd socket, a temporary directory): `host_path` must map every one.
    ///
    /// # Errors
    ///
    /// A hostPath that `host_path` does not map.
    pub fn spec(
        &self,
        name: &str,
        namespace: &str,
        image: &str,
        host_path: impl Fn(&str) -> Option<PathBuf>,
    ) -> Result<PodSpec> {
        let mut spec = PodSpec::new(name).namespace(namespace);
        spec.host_network = self.host_network;
        spec.host_pid = self.host_pid;
        spec.image = Some(image.to_string());
        spec.args = Some(self.args.clone());
        spec.security = self.security.clone();
        for (host, container, readonly) in &self.mounts {
            let mapped = host_path(host)
                .with_context(|| format!("the test node has no stand-in for hostPath {host}"))?;
            spec.mounts.push(Mount {
                host_path: mapped,
                container_path: container.clone(),
                readonly: *readonly,
            });
        }
        Ok(spec)
    }
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> Result<&'a str> {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .with_context(|| format!("no string at {pointer}"))
}

/// A list of strings; absent is empty.
fn strings(v: &Value) -> Result<Vec<String>> {
    match v {
        Value::Null => Ok(Vec::new()),
        Value::Array(items) => items
            .iter()
            .map(|i| {
                i.as_str()
                    .map(str::to_string)
                    .with_context(|| format!("{i} is not a string"))
            })
            .collect(),
        other => bail!("{other} is not a list"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POD: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: x}
spec:
  hostNetwork: true
  hostPID: true
  containers:
    - name: c
      image: podtrace:1
      args: ["capture", "web"]
      securityContext:
        capabilities: {drop: [ALL], add: [BPF, NET_ADMIN]}
        allowPrivilegeEscalation: false
        readOnlyRootFilesystem: true
        seccompProfile: {type: RuntimeDefault}
      volumeMounts:
        - {name: sock, mountPath: /run/containerd/containerd.sock}
  volumes:
    - {name: sock, hostPath: {path: /run/containerd/containerd.sock, type: Socket}}
"#;

    #[test]
    fn pod_translates_like_kubelet() {
        let m = ManifestPod::parse(POD).unwrap();
        assert!(m.host_network && m.host_pid);
        assert_eq!(m.args, ["capture", "web"]);
        assert_eq!(m.security.add_capabilities, ["BPF", "NET_ADMIN"]);
        assert_eq!(m.security.drop_capabilities, ["ALL"]);
        assert!(m.security.no_new_privs && m.security.readonly_rootfs);
        assert!(m.security.seccomp_runtime_default && !m.security.privileged);
        let spec = m
            .spec("a", "ns", "docker.io/library/podtrace:1", |p| {
                Some(PathBuf::from("/node").join(p.trim_start_matches('/')))
            })
            .unwrap();
        assert_eq!(
            spec.mounts,
            [Mount {
                host_path: "/node/run/containerd/containerd.sock".into(),
                container_path: "/run/containerd/containerd.sock".into(),
                readonly: false,
            }]
        );
        let unmapped = m.spec("a", "ns", "i", |_| None).unwrap_err();
        assert!(format!("{unmapped:#}").contains("hostPath /run/containerd"));
    }

    #[test]
    fn what_is_not_translated_is_refused() {
        let extra = POD.replace(
            "readOnlyRootFilesystem: true",
            "readOnlyRootFilesystem: true\n        runAsGroup: 1",
        );
        assert!(ManifestPod::parse(&extra).is_err());
        let empty_dir = POD.replace(
            "hostPath: {path: /run/containerd/containerd.sock, type: Socket}",
            "emptyDir: {}",
        );
        assert!(ManifestPod::parse(&empty_dir).is_err());
    }
}
