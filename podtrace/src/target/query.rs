//! Which pods a capture takes: one pod as named, several by name, or every
//! pod whose labels match a selector (in a namespace, or all of them).

use std::fmt;

use super::{LabelSelector, Sandbox};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodQuery {
    /// Pods by `(namespace, name)`.
    Names(Vec<(String, String)>),
    /// The pod with this uid.
    Uid(String),
    /// Pods whose labels match (every pod without a selector), in one
    /// namespace or (None) in all.
    Labels {
        selector: Option<LabelSelector>,
        namespace: Option<String>,
    },
}

impl PodQuery {
    /// Whether the pod of this sandbox is selected.
    pub fn matches(&self, sandbox: &Sandbox) -> bool {
        match self {
            Self::Names(names) => names
                .iter()
                .any(|(ns, name)| *ns == sandbox.namespace && *name == sandbox.name),
            Self::Uid(uid) => *uid == sandbox.uid,
            Self::Labels {
                selector,
                namespace,
            } => {
                namespace.as_ref().is_none_or(|ns| *ns == sandbox.namespace)
                    && selector.as_ref().is_none_or(|s| s.matches(&sandbox.labels))
            }
        }
    }
}

impl fmt::Display for PodQuery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Names(names) => {
                let names: Vec<String> = names.iter().map(|(ns, n)| format!("{ns}/{n}")).collect();
                write!(f, "pods {}", names.join(", "))
            }
            Self::Uid(uid) => write!(f, "the pod with uid {uid}"),
            Self::Labels {
                selector,
                namespace,
            } => {
                match selector {
                    Some(s) => write!(f, "pods matching {s}")?,
                    None => f.write_str("every pod")?,
                }
                match namespace {
                    Some(ns) => write!(f, " in namespace {ns}"),
                    None => f.write_str(" in every namespace"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(ns: &str, name: &str, uid: &str, labels: &[(&str, &str)]) -> Sandbox {
        Sandbox {
            id: format!("sb-{uid}"),
            name: name.into(),
            namespace: ns.into(),
            uid: uid.into(),
            ready: true,
            ip: None,
            pid: None,
            host_network: false,
            netns_path: None,
            created_at_ns: 0,
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            attempt: 0,
        }
    }

    #[test]
    fn names_uids_and_labels_select_the_right_pods() {
        let pods = [
            pod("prod", "web-1", "u1", &[("app", "web")]),
            pod("staging", "web-1", "u2", &[("app", "web")]),
            pod("prod", "db-0", "u3", &[("app", "db")]),
        ];
        let picked = |q: &PodQuery| -> Vec<&str> {
            pods.iter()
                .filter(|p| q.matches(p))
                .map(|p| p.uid.as_str())
                .collect()
        };
        let names = PodQuery::Names(vec![
            ("prod".into(), "web-1".into()),
            ("prod".into(), "db-0".into()),
        ]);
        assert_eq!(picked(&names), ["u1", "u3"]);
        assert_eq!(picked(&PodQuery::Uid("u2".into())), ["u2"]);
        let web = Some(LabelSelector::parse("app=web").unwrap());
        let in_prod = PodQuery::Labels {
            selector: web.clone(),
            namespace: Some("prod".into()),
        };
        assert_eq!(picked(&in_prod), ["u1"]);
        let everywhere = PodQuery::Labels {
            selector: web,
            namespace: None,
        };
        assert_eq!(picked(&everywhere), ["u1", "u2"]);
        let all = PodQuery::Labels {
            selector: None,
            namespace: None,
        };
        assert_eq!(picked(&all), ["u1", "u2", "u3"]);
        assert_eq!(
            in_prod.to_string(),
            "pods matching app=web in namespace prod"
        );
    }
}
