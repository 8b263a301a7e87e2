//! The node's pods as the watcher sees them: each sandbox with the host
//! link of its network, from the runtime (CRI) and link discovery.

use std::{collections::HashMap, future::Future};

use futures_util::future::join_all;

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
        netns: sandbox.pid.map(|pid| format!("/proc/{pid}/ns/net").into()),
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

impl<C: CriApi + Clone + Send> RuntimePods<C> {
    pub fn new(client: C) -> Self {
        Self {
            client,
            known: HashMap::new(),
        }
    }
}

impl<C: CriApi + Clone + Send> PodSource for RuntimePods<C> {
    async fn pods(&mut self) -> Result<Vec<PodView>, TargetError> {
        let listed = target::listed(&mut self.client).await?;
        // The statuses of sandboxes seen ready for the first time, asked
        // all at once (the runtime answers them in parallel), then their
        // links against one dump of the host's links.
        let new: Vec<&Sandbox> = listed
            .iter()
            .filter(|s| s.ready && !self.known.contains_key(&s.id))
            .collect();
        let statuses = join_all(new.iter().map(|s| {
            let mut client = self.client.clone();
            async move { target::sandbox_status(&mut client, &s.id).await }
        }))
        .await;
        let mut fresh = HashMap::new();
        if !new.is_empty() {
            let links = link::HostLinks::dump().map_err(|e| e.to_string());
            for status in statuses {
                // None: removed between the list and the status call.
                if let Some(full) = status? {
                    fresh.insert(full.id.clone(), resolve(full, &links));
                }
            }
        }
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
            let Some(view) = self
                .known
                .remove(&sandbox.id)
                .or_else(|| fresh.remove(&sandbox.id))
            else {
                continue;
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
fn resolve(sandbox: Sandbox, links: &Result<link::HostLinks, String>) -> PodView {
    let link = if sandbox.host_network {
        Err("it uses the host network".into())
    } else if let Some(pid) = sandbox.pid {
        match links {
            Ok(links) => links.by_pid(pid).map_err(|e| e.to_string()),
            Err(e) => Err(e.clone()),
        }
    } else {
        Err("the runtime reports no sandbox pid".into())
    };
    PodView { sandbox, link }
}
