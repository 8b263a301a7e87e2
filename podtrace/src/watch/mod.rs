//! The watcher: which targets are in the capture, as pods come and go.
//!
//! [`start`] resolves what the capture starts with (a pod that does not
//! exist is an error here, before anything is loaded, unless the capture
//! waits for it). [`Watcher::run`] then turns link events (rtnetlink) and
//! the runtime's pod list (CRI, polled: podtrace never subscribes to CRI
//! events, whose single subscriber is kubelet's) into [`Change`]s for the
//! session. The decisions are [`tracker`]'s, plain logic.

mod pods;
mod tracker;

use std::{collections::BTreeSet, time::Instant};

use tokio::sync::mpsc::UnboundedSender;

pub use self::{
    pods::{pod_target, PodSource, PodView, RuntimePods},
    tracker::{Selection, Tracker},
};
use crate::{
    link::LinkMonitor,
    session::Change,
    target::{PodQuery, TargetError},
};

/// Turns events into changes until the session stops listening.
pub struct Watcher<P> {
    tracker: Tracker,
    pods: Option<P>,
    monitor: LinkMonitor,
    /// Runtime errors in a row (said once, then again when it recovers).
    failing: bool,
}

impl<P: PodSource> Watcher<P> {
    pub async fn run(mut self, changes: UnboundedSender<Change>) {
        let mut last_poll = Instant::now();
        loop {
            let next_poll = self
                .tracker
                .next_poll(last_poll)
                .filter(|_| self.pods.is_some())
                .map(tokio::time::Instant::from_std);
            let out = tokio::select! {
                events = self.monitor.next() => match events {
                    Ok(events) => self.tracker.on_links(events, Instant::now()),
                    Err(e) => {
                        eprintln!("podtrace: link events stopped: {e}; pods that join or leave are no longer followed");
                        return;
                    }
                },
                _ = sleep_until(next_poll) => {
                    last_poll = Instant::now();
                    self.poll().await
                }
                () = changes.closed() => return,
            };
            for change in out {
                if changes.send(change).is_err() {
                    return;
                }
            }
        }
    }

    async fn poll(&mut self) -> Vec<Change> {
        let Some(source) = &mut self.pods else {
            return Vec::new();
        };
        match source.pods().await {
            Ok(pods) => {
                if std::mem::take(&mut self.failing) {
                    eprintln!("podtrace: the container runtime answers again");
                }
                self.tracker.on_pods(&pods, Instant::now())
            }
            Err(e) => {
                if !std::mem::replace(&mut self.failing, true) {
                    eprintln!("podtrace: cannot list pods ({e}); retrying");
                }
                Vec::new()
            }
        }
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// How a pod capture treats pods that are not there (yet).
#[derive(Debug, Clone, Copy, Default)]
pub struct Patience {
    /// Wait for pods that do not exist yet instead of failing.
    pub wait: bool,
    /// A single pod: go on when it is deleted, with the next pod of its name.
    pub follow: bool,
}

/// What could not be started.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error("cannot watch the host's links: {0}")]
    Links(std::io::Error),
    /// A selection that matches nothing, with what there is.
    #[error("no pod on this node matches: {what}{hint}")]
    NothingMatches { what: String, hint: String },
}

impl WatchError {
    pub fn is_bad_target(&self) -> bool {
        match self {
            Self::Target(e) => e.is_bad_target(),
            Self::Links(_) => false,
            Self::NothingMatches { .. } => true,
        }
    }
}

/// A capture's targets at the start, and the watcher that follows them.
pub struct Start<P> {
    pub initial: Vec<Change>,
    pub watcher: Watcher<P>,
}

/// Starts watching a fixed set of host links (`-i`, `--pid`, `--netns`):
/// `(target, what to say when it is gone)`.
pub fn start_links(
    targets: Vec<(crate::session::Target, String)>,
) -> Result<Start<RuntimePods<crate::target::RuntimeClient>>, WatchError> {
    let monitor = LinkMonitor::open().map_err(WatchError::Links)?;
    let mut tracker = Tracker::new(Selection::Links(targets.clone()));
    let mut initial = Vec::new();
    for (target, gone) in targets {
        tracker.joined(&target, gone);
        initial.push(Change::Add(target));
    }
    let watcher = Watcher {
        tracker,
        pods: None,
        monitor,
        failing: false,
    };
    Ok(Start { initial, watcher })
}

/// Starts watching the pods `query` selects. `single`: one pod named on
/// the command line, which must exist (unless waited for) and whose
/// deletion ends the capture (unless followed).
pub async fn start_pods<P: PodSource>(
    mut source: P,
    query: PodQuery,
    single: bool,
    patience: Patience,
) -> Result<Start<P>, WatchError> {
    // Before the first listing, so no veth that appears meanwhile is missed.
    let monitor = LinkMonitor::open().map_err(WatchError::Links)?;
    let pods = source.pods().await?;
    let mut tracker = Tracker::new(Selection::Pods {
        query: query.clone(),
        single,
        follow: patience.follow,
    });
    let initial = tracker.on_pods(&pods, Instant::now());
    if tracker.members() == 0 && !patience.wait {
        return Err(nothing_matches(&query, &pods));
    }
    if let PodQuery::Names(names) = &query {
        let missing: Vec<String> = names
            .iter()
            .filter(|(ns, name)| {
                !pods.iter().any(|p| {
                    p.sandbox.namespace == *ns && p.sandbox.name == *name && p.link.is_ok()
                })
            })
            .map(|(ns, name)| format!("{ns}/{name}"))
            .collect();
        if !missing.is_empty() && !patience.wait {
            return Err(WatchError::NothingMatches {
                what: format!("pods {}", missing.join(", ")),
                hint: hint_names(&pods),
            });
        }
    }
    if tracker.members() == 0 {
        eprintln!("podtrace: waiting for {query}");
    }
    let watcher = Watcher {
        tracker,
        pods: Some(source),
        monitor,
        failing: false,
    };
    Ok(Start { initial, watcher })
}

/// The error for a selection without pods, saying what the node has.
fn nothing_matches(query: &PodQuery, pods: &[PodView]) -> WatchError {
    let hint = match query {
        PodQuery::Labels {
            namespace: Some(ns),
            ..
        } => {
            let here: Vec<&PodView> = pods.iter().filter(|p| p.sandbox.namespace == *ns).collect();
            if here.is_empty() {
                format!("; namespace {ns} has no pods here{}", hint_namespaces(pods))
            } else {
                format!("; pods in {ns}: {}", labelled(&here))
            }
        }
        PodQuery::Labels { .. } if pods.is_empty() => "; this node has no pods".into(),
        PodQuery::Labels { .. } => {
            let all: Vec<&PodView> = pods.iter().collect();
            format!("; pods here: {}", labelled(&all))
        }
        _ => hint_names(pods),
    };
    WatchError::NothingMatches {
        what: query.to_string(),
        hint,
    }
}

/// "web-1 (app=web,tier=fe), db-0 (app=db)": pods with their own labels
/// (kubelet's `io.kubernetes.*` left out), at most ten.
fn labelled(pods: &[&PodView]) -> String {
    let mut shown: Vec<String> = pods
        .iter()
        .take(10)
        .map(|p| {
            let mut labels: Vec<String> = p
                .sandbox
                .labels
                .iter()
                .filter(|(k, _)| !k.starts_with("io.kubernetes."))
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            labels.sort();
            format!("{} ({})", p.sandbox.pod_name(), labels.join(","))
        })
        .collect();
    if pods.len() > 10 {
        shown.push(format!("and {} more", pods.len() - 10));
    }
    shown.join(", ")
}

fn hint_namespaces(pods: &[PodView]) -> String {
    let namespaces: BTreeSet<&str> = pods.iter().map(|p| p.sandbox.namespace.as_str()).collect();
    if namespaces.is_empty() {
        String::new()
    } else {
        format!(
            " (namespaces with pods: {})",
            namespaces.into_iter().collect::<Vec<_>>().join(", ")
        )
    }
}

fn hint_names(pods: &[PodView]) -> String {
    if pods.is_empty() {
        return "; this node has no pods".into();
    }
    let all: Vec<&PodView> = pods.iter().collect();
    format!("; pods here: {}", labelled(&all))
}
