//! `podtrace pods`: the node's pod sandboxes and their host veths.

use anyhow::Result;
use podtrace::{link, target};

use super::PodsArgs;

impl PodsArgs {
    /// `podtrace pods`: a table like `kubectl get pods -o wide`, plus the
    /// veth: with `-l`, the pods a capture with that selector would take.
    pub async fn run(&self) -> Result<String> {
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
        let mut rows =
            vec![["NAMESPACE", "NAME", "STATE", "IP", "VETH", "IFINDEX", "UID"].map(String::from)];
        for s in &sandboxes {
            let (veth, ifindex) = match (s.host_network, s.ready, s.pid) {
                (true, _, _) => ("(host network)".into(), "-".into()),
                (false, true, Some(pid)) => match link::by_pid(pid) {
                    Ok(l) => (l.name, l.ifindex.to_string()),
                    Err(e) => (format!("({e})"), "-".into()),
                },
                _ => ("-".into(), "-".into()),
            };
            rows.push([
                s.namespace.clone(),
                s.name.clone(),
                if s.ready { "Ready" } else { "NotReady" }.into(),
                s.ip.clone().unwrap_or_else(|| "-".into()),
                veth,
                ifindex,
                s.uid.clone(),
            ]);
        }
        if sandboxes.is_empty() {
            let matching = selector.map_or(String::new(), |s| format!(" matching {s}"));
            return Ok(match namespace {
                Some(ns) => format!("No pods{matching} found in {ns} namespace.\n"),
                None => format!("No pods{matching} found.\n"),
            });
        }
        Ok(table(&rows))
    }
}

/// Left-aligned columns separated by three spaces, like kubectl.
pub(super) fn table(rows: &[[String; 7]]) -> String {
    let mut widths = [0; 7];
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
