//! `podtrace pods`: the node's pod sandboxes and their host veths; with
//! `-v`, where a capture would take each pod's packets, and why.

use anyhow::Result;
use podtrace::{
    link::{self, PathReader},
    target,
};

use super::PodsArgs;

impl PodsArgs {
    /// `podtrace pods`: a table like `kubectl get pods -o wide`, plus the
    /// veth: with `-l`, the pods a capture with that selector would take.
    /// `verbose` adds the hooks a capture uses for each pod, and why.
    pub async fn run(&self, verbose: bool) -> Result<String> {
        let (mut client, endpoint) =
            target::connect(self.runtime.runtime_endpoint.as_deref()).await?;
        podtrace::verbose(format_args!("container runtime: {endpoint}"));
        let namespace = match (self.all_namespaces, &self.namespace) {
            (true, _) => None,
            (false, Some(ns)) => Some(ns.as_str()),
            (false, None) => Some(target::DEFAULT_NAMESPACE),
        };
        let selector = self
            .selector
            .as_deref()
            .map(target::LabelSelector::parse)
            .transpose()?;
        let query = target::PodQuery::Labels {
            selector: selector.clone(),
            namespace: namespace.map(String::from),
        };
        let mut sandboxes = target::list(&mut client, namespace).await?;
        sandboxes.retain(|s| query.matches(s));
        let mut rows = vec![[
            "NAMESPACE",
            "NAME",
            "STATE",
            "IP",
            "VETH",
            "IFINDEX",
            "UID",
            "HOOKS",
            "WHY",
        ]
        .map(String::from)];
        let mut reader = match verbose {
            true => Some(PathReader::open()?),
            false => None,
        };
        for s in &sandboxes {
            let (veth, ifindex, hooks) = match (s.host_network, s.ready, s.pid) {
                (true, _, _) => ("(host network)".into(), "-".into(), None),
                (false, true, Some(pid)) => match link::by_pid(pid) {
                    Ok(l) => {
                        let hooks = reader.as_mut().map(|r| hooks_of(r, &l, pid));
                        (l.name, l.ifindex.to_string(), hooks)
                    }
                    Err(e) => (format!("({e})"), "-".into(), None),
                },
                _ => ("-".into(), "-".into(), None),
            };
            let (hooks, why) = hooks.unwrap_or_else(|| ("-".into(), "-".into()));
            rows.push([
                s.namespace.clone(),
                s.name.clone(),
                if s.ready { "Ready" } else { "NotReady" }.into(),
                s.ip.clone().unwrap_or_else(|| "-".into()),
                veth,
                ifindex,
                s.uid.clone(),
                hooks,
                why,
            ]);
        }
        if !verbose {
            let rows: Vec<[String; 7]> = rows
                .into_iter()
                .map(|r| std::array::from_fn(|i| r[i].clone()))
                .collect();
            return Ok(match sandboxes.is_empty() {
                true => self.none_found(namespace, selector.as_ref()),
                false => table(&rows),
            });
        }
        if sandboxes.is_empty() {
            return Ok(self.none_found(namespace, selector.as_ref()));
        }
        Ok(table(&rows))
    }

    fn none_found(
        &self,
        namespace: Option<&str>,
        selector: Option<&target::LabelSelector>,
    ) -> String {
        let matching = selector.map_or(String::new(), |s| format!(" matching {s}"));
        match namespace {
            Some(ns) => format!("No pods{matching} found in {ns} namespace.\n"),
            None => format!("No pods{matching} found.\n"),
        }
    }
}

/// Where a capture takes the pod's packets, and why: its veth both ways,
/// unless its eth0 received packets that did not cross the veth.
fn hooks_of(reader: &mut PathReader, veth: &link::HostLink, pid: u32) -> (String, String) {
    let netns = std::path::PathBuf::from(format!("/proc/{pid}/ns/net"));
    let counts = reader
        .watch(veth.ifindex, &netns)
        .map_err(|e| e.to_string())
        .and_then(|_| reader.sample(veth.ifindex).map_err(|e| e.to_string()));
    reader.forget(veth.ifindex);
    match counts {
        Ok(c) if c.skipped() > 0 => (
            "veth ingress, eth0 ingress".into(),
            format!(
                "{} of the {} packets its eth0 received skipped the veth (a CNI redirect such as Cilium's bpf_redirect_peer)",
                c.skipped(),
                c.received
            ),
        ),
        Ok(c) => (
            "veth ingress+egress".into(),
            format!(
                "all {} packets its eth0 received crossed the veth",
                c.received
            ),
        ),
        Err(e) => ("veth ingress+egress".into(), format!("its eth0 cannot be read: {e}")),
    }
}

/// Left-aligned columns separated by three spaces, like kubectl.
pub(super) fn table<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0; N];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(cells.join("   ").trim_end());
        out.push('\n');
    }
    out
}
