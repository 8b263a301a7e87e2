//! The test node itself, which every pod test stands on: its pods' networks
//! are what podtrace expects of a Kubernetes node, a second node runs beside
//! the first, and a teardown, or the cleanup of a node whose process died,
//! leaves nothing of it behind.

use std::{path::Path, process::Command, process::ExitCode};

use anyhow::{ensure, Context, Result};
use podtrace_tests::{
    http,
    node::{Node, Pod, PodSpec, Trace, HTTP_PORT, INDEX_HTML},
};

use crate::pods::{http_get, TestPod};

/// Set in the environment of a child e2e process that plays a node's owner
/// dying without its teardown.
pub const CRASH_ENV: &str = "PODTRACE_E2E_CRASH_NODE";

/// The child's part: a node with a pod, its trace on stdout, then exit
/// without unwinding (as a SIGKILLed owner would leave it).
pub fn crash_with_a_node() -> ExitCode {
    let started = Node::start().and_then(|node| {
        let pod = node.run_pod(PodSpec::new("crashed"))?;
        Ok((node.trace(&[&pod]), node, pod))
    });
    match started {
        Ok((trace, node, pod)) => {
            println!("{}", trace.to_json());
            std::mem::forget((node, pod));
            std::process::exit(3)
        }
        Err(e) => {
            eprintln!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A second node next to the shared one gets its own bridge and subnet; its
/// pods look like a Kubernetes node's; its teardown leaves nothing of it
/// and the first node working.
pub fn second_node_runs_beside_and_leaves_nothing() -> Result<()> {
    let anchor = TestPod::run(PodSpec::new("anchor"))?;
    let first = &anchor.node;
    let second = Node::start().context("starting a second node")?;
    ensure!(
        second.bridge() != first.bridge() && second.subnet() != first.subnet(),
        "second node shares {} / {}",
        second.bridge(),
        second.subnet()
    );
    let web = second.run_pod(PodSpec::new("web"))?;
    let prod = second.run_pod(PodSpec::new("web").namespace("prod"))?;
    let host = second.run_pod(
        PodSpec::new("agent")
            .namespace("kube-system")
            .host_network(),
    )?;
    for pod in [&web, &prod] {
        pod_network_is_a_nodes(&second, pod)?;
    }
    let to_prod = format!("http://{}:{HTTP_PORT}/", prod.ip()?);
    ensure!(
        web.exec_ok(&["busybox", "wget", "-qO-", &to_prod])? == INDEX_HTML,
        "pod to pod HTTP failed"
    );
    let ours = std::fs::read_link("/proc/self/ns/net")?;
    let theirs = std::fs::read_link(format!("/proc/{}/ns/net", host.pid))?;
    ensure!(
        ours == theirs && host.ip.is_none() && host.host_veth.is_none(),
        "the host-network pod is not in the host's network namespace"
    );
    let trace = second.trace(&[&web, &prod, &host]);
    // The check sees what it is about to check the absence of.
    let before = trace.remains();
    for pod in &trace.pods {
        ensure!(
            before.contains(&format!("pause process {}", pod.pid)),
            "{before:?}"
        );
    }
    ensure!(
        before.contains(&format!("bridge {}", trace.bridge))
            && before.iter().any(|r| r.starts_with("containerd "))
            && before.iter().any(|r| r.starts_with("veth "))
            && before.iter().any(|r| r.starts_with("cgroup ")),
        "{before:?}"
    );
    second.shutdown()?;
    let left = trace.remains();
    ensure!(left.is_empty(), "the second node left {left:?}");

    http_get(anchor.ip())?;
    let gateway = first.gateway().to_string();
    let ping = anchor
        .pod
        .exec(&["busybox", "ping", "-c", "1", "-W", "2", &gateway])?;
    ensure!(
        ping.code == 0,
        "the first node broke with the second's teardown: {}",
        ping.stderr
    );
    let forward = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")?;
    ensure!(
        forward.trim() == "1",
        "ip_forward turned off under the first node"
    );
    Ok(())
}

/// What podtrace relies on: the pod's eth0 `iflink` read from the host is
/// its host veth's ifindex; IPv6 is off (no stray packets); the host
/// reaches the pod.
fn pod_network_is_a_nodes(node: &Node, pod: &Pod) -> Result<()> {
    let veth = pod.host_veth.as_ref().context("no host veth")?;
    let path = format!("/proc/{}/root/sys/class/net/eth0/iflink", pod.pid);
    let iflink: u32 = std::fs::read_to_string(&path)?.trim().parse()?;
    ensure!(
        iflink == veth.ifindex,
        "{path} = {iflink}, host veth {} has ifindex {}",
        veth.name,
        veth.ifindex
    );
    let ip = pod.ip()?;
    ensure!(
        ip.octets()[..3] == node.gateway().octets()[..3],
        "{ip} not in {}",
        node.subnet()
    );
    let ipv6_off = |path: &str| -> Result<bool> {
        Ok(std::fs::read_to_string(path)
            .with_context(|| path.to_owned())?
            .trim()
            == "1")
    };
    ensure!(
        ipv6_off(&format!(
            "/proc/sys/net/ipv6/conf/{}/disable_ipv6",
            veth.name
        ))? && ipv6_off(&format!(
            "/proc/sys/net/ipv6/conf/{}/disable_ipv6",
            node.bridge()
        ))?,
        "IPv6 on on {} or {}",
        veth.name,
        node.bridge()
    );
    let in_pod = pod.exec_ok(&["busybox", "cat", "/proc/sys/net/ipv6/conf/all/disable_ipv6"])?;
    ensure!(in_pod.trim() == "1", "IPv6 on in pod {}", pod.name);
    let answer = http::get(ip, HTTP_PORT)?;
    ensure!(
        answer.contains(INDEX_HTML.trim()),
        "host to pod HTTP: {answer:?}"
    );
    Ok(())
}

/// A node whose owner died without tearing it down (SIGKILL, `exit`) is
/// removed, all of it, by the next start's cleanup.
pub fn crashed_owner_is_cleaned_by_the_next_start() -> Result<()> {
    let exe = std::env::current_exe()?;
    let out = Command::new(&exe)
        .env(CRASH_ENV, "1")
        .output()
        .with_context(|| format!("running {}", exe.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.code() == Some(3),
        "the crashing owner exited {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    let trace = stdout
        .lines()
        .rev()
        .find_map(Trace::from_json)
        .with_context(|| format!("no trace in {stdout:?}"))?;
    let before = trace.remains();
    ensure!(
        before.contains(&format!("bridge {}", trace.bridge))
            && before.iter().any(|r| r.starts_with("containerd "))
            && before.iter().any(|r| r.starts_with("pause process ")),
        "the crashed node is not all there: {before:?}"
    );
    ensure!(
        Path::new(&trace.dir).join("node.json").exists(),
        "no node.json in {}",
        trace.dir.display()
    );
    Node::clean_stale();
    let left = trace.remains();
    ensure!(left.is_empty(), "the cleanup left {left:?}");
    Ok(())
}
