//! Unit tests of pod resolution against a fake runtime.

use std::collections::HashMap;

use k8s_cri::v1::{
    Container, LinuxPodSandboxStatus, Namespace, NamespaceMode, NamespaceOption, PodSandbox,
    PodSandboxMetadata, PodSandboxNetworkStatus, PodSandboxStatus, PodSandboxStatusResponse,
};

use super::cri::{parse_verbose_info, VerboseInfo};
use super::select::{edit_distance, LABEL_NAME, LABEL_NAMESPACE, LABEL_UID};
use super::*;

/// One sandbox of the fake node.
struct Fake {
    id: &'static str,
    ns: &'static str,
    name: &'static str,
    uid: &'static str,
    ready: bool,
    created: i64,
    host_network: bool,
}

impl Fake {
    fn new(id: &'static str, ns: &'static str, name: &'static str) -> Self {
        Fake {
            id,
            ns,
            name,
            uid: "uid-0",
            ready: true,
            created: 1,
            host_network: false,
        }
    }
    fn uid(mut self, uid: &'static str) -> Self {
        self.uid = uid;
        self
    }
    fn not_ready(mut self) -> Self {
        self.ready = false;
        self
    }
    fn created(mut self, at: i64) -> Self {
        self.created = at;
        self
    }
    fn host(mut self) -> Self {
        self.host_network = true;
        self
    }
    fn labels(&self) -> HashMap<String, String> {
        HashMap::from([
            (LABEL_NAME.to_string(), self.name.to_string()),
            (LABEL_NAMESPACE.to_string(), self.ns.to_string()),
            (LABEL_UID.to_string(), self.uid.to_string()),
        ])
    }
    fn state(&self) -> i32 {
        if self.ready {
            0
        } else {
            1
        }
    }
    fn listed(&self) -> PodSandbox {
        PodSandbox {
            id: self.id.to_string(),
            state: self.state(),
            created_at: self.created,
            labels: self.labels(),
            ..Default::default()
        }
    }
    fn status(&self) -> PodSandboxStatusResponse {
        let network_ns = if self.host_network {
            String::new()
        } else {
            format!(
                r#",{{"type":"network","path":"/run/netns/cni-{}"}}"#,
                self.id
            )
        };
        let info = format!(
            r#"{{"pid":4242,"runtimeSpec":{{"linux":{{"namespaces":[{{"type":"pid"}}{network_ns}]}}}}}}"#
        );
        let mode = if self.host_network {
            NamespaceMode::Node
        } else {
            NamespaceMode::Pod
        };
        PodSandboxStatusResponse {
            status: Some(PodSandboxStatus {
                id: self.id.to_string(),
                state: self.state(),
                created_at: self.created,
                labels: self.labels(),
                network: Some(PodSandboxNetworkStatus {
                    ip: if self.host_network {
                        String::new()
                    } else {
                        "10.245.0.7".to_string()
                    },
                    additional_ips: vec![],
                }),
                linux: Some(LinuxPodSandboxStatus {
                    namespaces: Some(Namespace {
                        options: Some(NamespaceOption {
                            network: mode as i32,
                            ..Default::default()
                        }),
                    }),
                }),
                ..Default::default()
            }),
            info: HashMap::from([("info".to_string(), info)]),
            ..Default::default()
        }
    }
}

#[derive(Default)]
struct FakeCri {
    sandboxes: Vec<Fake>,
    containers: Vec<(&'static str, &'static str)>,
}

impl CriApi for FakeCri {
    async fn list_sandboxes(&mut self) -> Result<Vec<PodSandbox>, TargetError> {
        Ok(self.sandboxes.iter().map(Fake::listed).collect())
    }
    async fn sandbox_status(
        &mut self,
        id: &str,
        _verbose: bool,
    ) -> Result<Option<PodSandboxStatusResponse>, TargetError> {
        Ok(self.sandboxes.iter().find(|s| s.id == id).map(Fake::status))
    }
    async fn list_containers(&mut self) -> Result<Vec<Container>, TargetError> {
        Ok(self
            .containers
            .iter()
            .map(|(id, sandbox)| Container {
                id: id.to_string(),
                pod_sandbox_id: sandbox.to_string(),
                ..Default::default()
            })
            .collect())
    }
}

fn node(sandboxes: Vec<Fake>) -> FakeCri {
    FakeCri {
        sandboxes,
        containers: vec![],
    }
}

fn run<T>(fut: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(fut)
}

fn name(ns: &str, name: &str) -> PodSelector {
    PodSelector::Name {
        namespace: ns.to_string(),
        name: name.to_string(),
    }
}

fn resolve_err(cri: &mut FakeCri, selector: &PodSelector) -> String {
    run(resolve(cri, selector)).unwrap_err().to_string()
}

#[test]
fn parse_forms() {
    assert_eq!(
        PodSelector::parse("web", None).unwrap(),
        name("default", "web")
    );
    assert_eq!(
        PodSelector::parse("web", Some("prod")).unwrap(),
        name("prod", "web")
    );
    assert_eq!(
        PodSelector::parse("prod/web", None).unwrap(),
        name("prod", "web")
    );
    assert_eq!(
        PodSelector::parse("prod/web", Some("prod")).unwrap(),
        name("prod", "web")
    );
    assert_eq!(
        PodSelector::parse("prod/web", Some("dev"))
            .unwrap_err()
            .to_string(),
        "namespace given twice: -n dev conflicts with prod/web"
    );
    for bad in ["", "/web", "prod/", "a/b/c", "we b"] {
        assert!(
            matches!(
                PodSelector::parse(bad, None),
                Err(TargetError::InvalidSelector { .. })
            ),
            "{bad:?}"
        );
    }
    assert!(PodSelector::parse("web", Some("")).is_err());
    assert_eq!(name("prod", "web").to_string(), "prod/web");
}

#[test]
fn verbose_info_gives_pid_and_netns() {
    let info = r#"{"pid":123,"runtimeSpec":{"linux":{"namespaces":[{"type":"pid"},{"type":"network","path":"/x/netns/cni-1"}]}}}"#;
    assert_eq!(
        parse_verbose_info(info),
        VerboseInfo {
            pid: Some(123),
            netns_path: Some("/x/netns/cni-1".to_string()),
            host_network: false,
        }
    );
    let host = r#"{"pid":9,"runtimeSpec":{"linux":{"namespaces":[{"type":"pid"}]}}}"#;
    assert!(parse_verbose_info(host).host_network);
    // Unknown formats give nothing rather than an error.
    assert_eq!(parse_verbose_info("not json"), VerboseInfo::default());
    assert_eq!(parse_verbose_info(r#"{"pid":0}"#), VerboseInfo::default());
}

#[test]
fn resolves_by_name_to_the_newest_ready_sandbox() {
    let mut cri = node(vec![
        Fake::new("old", "default", "web").created(1),
        Fake::new("new", "default", "web").created(3),
        Fake::new("dead", "default", "web").created(5).not_ready(),
        Fake::new("other", "prod", "web").created(9),
    ]);
    let sandbox = run(resolve(&mut cri, &name("default", "web"))).unwrap();
    assert_eq!(sandbox.id, "new");
    assert_eq!(sandbox.pod_name(), "default/web");
    assert_eq!(sandbox.ip.as_deref(), Some("10.245.0.7"));
    assert_eq!(sandbox.pid, Some(4242));
    assert_eq!(sandbox.netns_path.as_deref(), Some("/run/netns/cni-new"));
    assert!(sandbox.ready && !sandbox.host_network);
}

#[test]
fn name_falls_back_to_metadata() {
    let mut sandbox = Fake::new("m", "", "").listed();
    sandbox.labels.clear();
    sandbox.metadata = Some(PodSandboxMetadata {
        name: "web".to_string(),
        namespace: "default".to_string(),
        uid: "u".to_string(),
        attempt: 0,
    });
    let found = select::by_name(std::slice::from_ref(&sandbox), "default", "web").unwrap();
    assert_eq!(found.id, "m");
}

#[test]
fn not_found_suggests_the_namespace() {
    let mut cri = node(vec![Fake::new("a", "prod", "web")]);
    assert_eq!(
        resolve_err(&mut cri, &name("default", "web")),
        "pod default/web not found on this node; a pod named web exists in namespace prod: use -n prod"
    );
    cri.sandboxes.push(Fake::new("b", "staging", "web"));
    assert_eq!(
        resolve_err(&mut cri, &name("default", "web")),
        "pod default/web not found on this node; pods named web exist in namespaces prod, staging: use -n NAMESPACE"
    );
}

#[test]
fn a_name_found_elsewhere_is_the_only_suggestion() {
    // Close names elsewhere (prod/web3) once made this line suggest both
    // "-n prod" and another pod.
    let mut cri = node(vec![
        Fake::new("a", "prod", "web2"),
        Fake::new("b", "prod", "web3"),
        Fake::new("c", "default", "web1"),
    ]);
    assert_eq!(
        resolve_err(&mut cri, &name("nosuchns", "web2")),
        "pod nosuchns/web2 not found on this node; a pod named web2 exists in namespace prod: use -n prod"
    );
}

#[test]
fn not_found_suggests_close_names() {
    let mut cri = node(vec![
        Fake::new("a", "default", "web-7d9f-x2x4k"),
        Fake::new("b", "default", "wbe"),
        Fake::new("c", "default", "database"),
        Fake::new("d", "prod", "webb"),
    ]);
    assert_eq!(
        resolve_err(&mut cri, &name("default", "web")),
        "pod default/web not found on this node; did you mean web-7d9f-x2x4k or wbe?"
    );
    assert_eq!(
        resolve_err(&mut cri, &name("default", "webbb")),
        "pod default/webbb not found on this node; did you mean prod/webb?"
    );
    assert_eq!(
        resolve_err(&mut cri, &name("default", "databse")),
        "pod default/databse not found on this node; did you mean database?"
    );
    assert_eq!(
        resolve_err(&mut cri, &name("default", "zzz")),
        "pod default/zzz not found on this node; podtrace sees only the pods of the node it runs on (kubectl get pod -o wide shows the node)"
    );
}

#[test]
fn not_ready_and_host_network_are_refused() {
    let mut cri = node(vec![
        Fake::new("a", "default", "web").not_ready(),
        Fake::new("h", "kube-system", "proxy").host(),
    ]);
    assert_eq!(
        resolve_err(&mut cri, &name("default", "web")),
        "pod default/web is not ready (state NOTREADY)"
    );
    assert_eq!(
        resolve_err(&mut cri, &name("kube-system", "proxy")),
        "pod kube-system/proxy uses the host network: its traffic is the node's; capture a host interface with -i"
    );
}

#[test]
fn resolves_by_uid_and_container() {
    let mut cri = node(vec![
        Fake::new("s1", "default", "web").uid("u-1"),
        Fake::new("s2", "prod", "web").uid("u-2"),
    ]);
    cri.containers = vec![("abc123", "s1"), ("abd456", "s2"), ("fff", "gone")];
    let by_uid = run(resolve(&mut cri, &PodSelector::Uid("u-2".into()))).unwrap();
    assert_eq!(by_uid.id, "s2");
    assert_eq!(
        resolve_err(&mut cri, &PodSelector::Uid("u-3".into())),
        "no pod with uid u-3 on this node"
    );
    let container = |id: &str| PodSelector::Container(id.to_string());
    assert_eq!(run(resolve(&mut cri, &container("abc"))).unwrap().id, "s1");
    assert_eq!(
        run(resolve(&mut cri, &container("abd456"))).unwrap().id,
        "s2"
    );
    assert_eq!(
        run(resolve(&mut cri, &container("containerd://abc123")))
            .unwrap()
            .id,
        "s1"
    );
    assert_eq!(
        resolve_err(&mut cri, &container("ab")),
        "container id prefix ab is ambiguous: it matches 2 containers"
    );
    assert_eq!(
        resolve_err(&mut cri, &container("9")),
        "no container with id 9 on this node"
    );
    assert_eq!(
        resolve_err(&mut cri, &container("fff")),
        "sandbox gone not found on this node"
    );
}

#[test]
fn list_filters_and_sorts() {
    let mut cri = node(vec![
        Fake::new("p", "prod", "web"),
        Fake::new("d1", "default", "web").created(1).not_ready(),
        Fake::new("d2", "default", "web").created(2),
        Fake::new("h", "default", "agent").host(),
    ]);
    let all = run(list(&mut cri, None)).unwrap();
    let ids: Vec<&str> = all.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["h", "d2", "d1", "p"]);
    assert!(all[0].host_network && all[0].ip.is_none());
    assert!(!all[2].ready);
    // Only the prod pod: by sandbox id and by name, not just by count.
    let prod = run(list(&mut cri, Some("prod"))).unwrap();
    let ids: Vec<&str> = prod.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["p"]);
    assert_eq!(prod[0].pod_name(), "prod/web");
    let none = run(list(&mut cri, Some("staging"))).unwrap();
    assert!(none.is_empty());
}

#[test]
fn exists_follows_state() {
    let mut cri = node(vec![
        Fake::new("up", "default", "web"),
        Fake::new("down", "default", "old").not_ready(),
    ]);
    assert!(run(exists(&mut cri, "up")).unwrap());
    assert!(!run(exists(&mut cri, "down")).unwrap());
    assert!(!run(exists(&mut cri, "deleted")).unwrap());
}

#[test]
fn edit_distances() {
    assert_eq!(edit_distance("web", "web"), 0);
    assert_eq!(edit_distance("web", "wbe"), 1);
    assert_eq!(edit_distance("ab", "ba"), 1);
    assert_eq!(edit_distance("web", "webb"), 1);
    assert_eq!(edit_distance("", "abc"), 3);
    assert_eq!(edit_distance("kitten", "sitting"), 3);
}
