//! Picking a pod's sandbox out of the runtime's lists, and the suggestions when it is missing.
//!
//! Pure functions over the CRI protobuf types: no runtime needed to test them.

use std::collections::{BTreeSet, HashMap};

use k8s_cri::v1::{Container, PodSandbox, PodSandboxMetadata};

use super::cri::SANDBOX_READY;
use super::TargetError;

/// Label kubelet sets to the pod name on every sandbox and container.
pub(crate) const LABEL_NAME: &str = "io.kubernetes.pod.name";
/// Label kubelet sets to the pod namespace.
pub(crate) const LABEL_NAMESPACE: &str = "io.kubernetes.pod.namespace";
/// Label kubelet sets to the pod uid.
pub(crate) const LABEL_UID: &str = "io.kubernetes.pod.uid";

/// How many close names a "not found" error suggests at most.
const MAX_SUGGESTIONS: usize = 3;

/// Name, namespace and uid of the pod a sandbox belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Identity<'a> {
    pub name: &'a str,
    pub namespace: &'a str,
    pub uid: &'a str,
}

/// The pod identity from kubelet's labels, else from the sandbox metadata.
pub(crate) fn identity_of<'a>(
    labels: &'a HashMap<String, String>,
    metadata: Option<&'a PodSandboxMetadata>,
) -> Identity<'a> {
    let pick = |label: &str, meta: fn(&PodSandboxMetadata) -> &str| -> &'a str {
        labels
            .get(label)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
            .or_else(|| metadata.map(meta))
            .unwrap_or("")
    };
    Identity {
        name: pick(LABEL_NAME, |m| &m.name),
        namespace: pick(LABEL_NAMESPACE, |m| &m.namespace),
        uid: pick(LABEL_UID, |m| &m.uid),
    }
}

/// The pod identity of a listed sandbox.
pub(crate) fn identity(sandbox: &PodSandbox) -> Identity<'_> {
    identity_of(&sandbox.labels, sandbox.metadata.as_ref())
}

/// CRI state name without its `SANDBOX_` prefix, as `crictl pods` shows it.
pub(crate) fn state_name(state: i32) -> &'static str {
    match state {
        SANDBOX_READY => "READY",
        1 => "NOTREADY",
        _ => "UNKNOWN",
    }
}

/// The newest ready sandbox among those of one pod, or `NotReady` naming the newest one's state.
/// `None` when there are no candidates at all.
fn pick<'a>(candidates: &[&'a PodSandbox]) -> Option<Result<&'a PodSandbox, TargetError>> {
    let newest_ready = candidates
        .iter()
        .filter(|sb| sb.state == SANDBOX_READY)
        .max_by_key(|sb| sb.created_at);
    if let Some(sandbox) = newest_ready {
        return Some(Ok(sandbox));
    }
    let newest = candidates.iter().max_by_key(|sb| sb.created_at)?;
    let id = identity(newest);
    Some(Err(TargetError::NotReady {
        pod: format!("{}/{}", id.namespace, id.name),
        state: state_name(newest.state),
    }))
}

/// The sandbox of pod `namespace/name`.
pub(crate) fn by_name<'a>(
    sandboxes: &'a [PodSandbox],
    namespace: &str,
    name: &str,
) -> Result<&'a PodSandbox, TargetError> {
    let candidates: Vec<&PodSandbox> = sandboxes
        .iter()
        .filter(|sb| {
            let id = identity(sb);
            id.name == name && id.namespace == namespace
        })
        .collect();
    pick(&candidates).unwrap_or_else(|| {
        Err(TargetError::PodNotFound {
            pod: format!("{namespace}/{name}"),
            hint: not_found_hint(sandboxes, namespace, name),
        })
    })
}

/// The sandbox of the pod with this uid.
pub(crate) fn by_uid<'a>(
    sandboxes: &'a [PodSandbox],
    uid: &str,
) -> Result<&'a PodSandbox, TargetError> {
    let candidates: Vec<&PodSandbox> = sandboxes
        .iter()
        .filter(|sb| identity(sb).uid == uid)
        .collect();
    pick(&candidates).unwrap_or_else(|| Err(TargetError::UidNotFound(uid.to_string())))
}

/// The sandbox with this id.
pub(crate) fn by_id<'a>(
    sandboxes: &'a [PodSandbox],
    id: &str,
) -> Result<&'a PodSandbox, TargetError> {
    sandboxes
        .iter()
        .find(|sb| sb.id == id)
        .ok_or_else(|| TargetError::SandboxNotFound(id.to_string()))
}

/// The sandbox id of the container with this id or unique id prefix. Accepts the
/// `containerd://ID` form that `kubectl get pod -o yaml` shows.
pub(crate) fn container_sandbox(containers: &[Container], id: &str) -> Result<String, TargetError> {
    let prefix = id.split_once("://").map_or(id, |(_, rest)| rest);
    if prefix.is_empty() {
        return Err(TargetError::InvalidSelector {
            arg: id.to_string(),
            reason: "empty container id",
        });
    }
    if let Some(exact) = containers.iter().find(|c| c.id == prefix) {
        return Ok(exact.pod_sandbox_id.clone());
    }
    let matches: Vec<&Container> = containers
        .iter()
        .filter(|c| c.id.starts_with(prefix))
        .collect();
    match matches.as_slice() {
        [] => Err(TargetError::ContainerNotFound(prefix.to_string())),
        [one] => Ok(one.pod_sandbox_id.clone()),
        many => Err(TargetError::AmbiguousContainer {
            prefix: prefix.to_string(),
            count: many.len(),
        }),
    }
}

/// The text after "pod NS/NAME not found on this node": where a pod of that name is, or which
/// names are close. Starts with `"; "`.
pub(crate) fn not_found_hint(sandboxes: &[PodSandbox], namespace: &str, name: &str) -> String {
    let pods: BTreeSet<(&str, &str)> = sandboxes
        .iter()
        .map(|sb| {
            let id = identity(sb);
            (id.namespace, id.name)
        })
        .collect();
    let mut parts = Vec::new();

    let elsewhere: Vec<&str> = pods
        .iter()
        .filter(|(ns, n)| *n == name && *ns != namespace)
        .map(|(ns, _)| *ns)
        .collect();
    match elsewhere.as_slice() {
        [] => {}
        [ns] => parts.push(format!(
            "a pod named {name} exists in namespace {ns}: use -n {ns}"
        )),
        many => parts.push(format!(
            "pods named {name} exist in namespaces {}: use -n NAMESPACE",
            many.join(", ")
        )),
    }
    // The name exists: that is the one suggestion, not also close names.
    if !parts.is_empty() {
        return format!("; {}", parts.join("; "));
    }

    // Close names: deployment-style `NAME-xxxx` pods first, then by edit distance.
    let limit = max_distance(name);
    let mut close: Vec<(bool, usize, String)> = pods
        .iter()
        .filter(|(_, n)| *n != name)
        .filter_map(|(ns, n)| {
            let rank = if n.starts_with(name) && n[name.len()..].starts_with('-') {
                0
            } else {
                let d = edit_distance(name, n);
                if d > limit {
                    return None;
                }
                d
            };
            let other_ns = *ns != namespace;
            let shown = if other_ns {
                format!("{ns}/{n}")
            } else {
                (*n).to_string()
            };
            Some((other_ns, rank, shown))
        })
        .collect();
    close.sort();
    // Close names in other namespaces only when the pod's own namespace has none.
    let own_namespace_has_some = close.first().is_some_and(|(other_ns, _, _)| !other_ns);
    let close: Vec<String> = close
        .into_iter()
        .filter(|(other_ns, _, _)| !(own_namespace_has_some && *other_ns))
        .take(MAX_SUGGESTIONS)
        .map(|(_, _, shown)| shown)
        .collect();
    if !close.is_empty() {
        parts.push(format!("did you mean {}?", or_list(&close)));
    }

    if parts.is_empty() {
        parts.push(
            "podtrace sees only the pods of the node it runs on (kubectl get pod -o wide shows the node)"
                .to_string(),
        );
    }
    format!("; {}", parts.join("; "))
}

/// "a", "a or b", "a, b or c".
fn or_list(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

/// How many edits still make a name "close": 1 for short names, up to 3 for long ones.
fn max_distance(name: &str) -> usize {
    (name.chars().count() / 4).clamp(1, 3)
}

/// Edit distance between two strings by characters, counting an insertion, a deletion, a
/// substitution or a swap of two neighbours as one edit (optimal string alignment).
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // d[i][j]: distance between the first i chars of a and the first j of b.
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}
