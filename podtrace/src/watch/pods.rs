//! The node's pods as the watcher sees them: each sandbox with the host
//! link of its network, from the runtime (CRI) and link discovery.

use std::{collections::HashMap, future::Future};

use crate::{
    link::{self, HostLink},
    session::Target,
    sink::Interface,
    target::{self, CriApi, Sandbox, TargetError},
};

/// A pod sandbox and its host link, or why it has none to capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodView {
    pub sandbox: Sandbox,
    pub link: Result<HostLink, String>,
}

impl PodView {
    /// The capture target of a ready pod with a link.
    pub fn target(&self) -> Option<Target> {
        let link = self.link.as_ref().ok()?;
        Some(pod_target(&self.sandbox, link))
    }
}

/// A pod's capture target on `link`: keyed by its uid, named `ns/pod`.
pub fn pod_target(sandbox: &Sandbox, link: &HostLink) -> Target {
    let pod = sandbox.pod_name();
    Target {
        key: sandbox.uid.clone(),
        link: link.clone(),
        label: format!("pod {pod}"),
        interface: Interface {
            name: pod.clone(),
            description: format!(
                "pod {pod} (uid {}) via host veth {} (ifindex {})",
                sandbox.uid, link.name, link.ifindex
            ),
        },
    }
}

/// Lists the node's pods with their links; the runtime, or a fake.
pub trait PodSource: Send {
    fn pods(&mut self) -> impl Future<Output = Result<Vec<PodView>, TargetError>> + Send;
}

/// The node's runtime over CRI. A sandbox's status and link are looked up
/// once, when it is first seen ready: a poll is one `ListPodSandbox`.
pub struct RuntimePods<C> {
    client: C,
    /// Ready sandboxes already resolved, by sandbox id.
    known: HashMap<String, PodView>,
}

impl<C: CriApi + Send> RuntimePods<C> {
    pub fn new(client: C) -> Self {
        Self {
            client,
            known: HashMap::new(),
        }
    }
}

impl<C: CriApi + Send> PodSource for RuntimePods<C> {
    async fn pods(&mut self) -> Result<Vec<PodView>, TargetError> {
        let listed = target::listed(&mut self.client).await?;
        let mut views = Vec::with_capacity(listed.len());
        let mut known = HashMap::new();
        for sandbox in listed {
            if !sandbox.ready {
                views.push(PodView {
                    sandbox,
                    link: Err("its sandbox is not ready".into()),
                });
                continue;
            }
            let view = match self.known.remove(&sandbox.id) {
                Some(view) => view,
                None => match target::sandbox_status(&mut self.client, &sandbox.id).await? {
                    // Removed between the list and the status call.
                    None => continue,
                    Some(full) => resolve(full),
                },
            };
            // Only a view that found its link is kept: the others are
            // looked at again next time.
            if view.link.is_ok() {
                known.insert(view.sandbox.id.clone(), view.clone());
            }
            views.push(view);
        }
        self.known = known;
        Ok(views)
    }
}

/// A ready sandbox's host link, through its pause process.
fn resolve(sandbox: Sandbox) -> PodView {
    let link = if sandbox.host_network {
        Err("it uses the host network".into())
    } else if let Some(pid) = sandbox.pid {
        link::by_pid(pid).map_err(|e| e.to_string())
    } else {
        Err("the runtime reports no sandbox pid".into())
    };
    PodView { sandbox, link }
}
