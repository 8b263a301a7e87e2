//! Pods by name on a real (private) containerd node, driven over CRI the way
//! kubelet drives it.

use std::{
    net::Ipv4Addr,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{ensure, Context, Result};
use podtrace_tests::{
    http,
    node::{Node, Pod, PodSpec, HTTP_PORT},
    run::{self, Capture},
    sh, tshark,
};

use crate::{
    capture::{assert_released, tempdir},
    errors::expect_error,
};

static NODE: Mutex<Option<Arc<Node>>> = Mutex::new(None);

/// The node shared by the pod tests, started by the first one.
pub(crate) fn node() -> Result<Arc<Node>> {
    let mut slot = NODE.lock().unwrap_or_else(|e| e.into_inner());
    if slot.is_none() {
        *slot = Some(Arc::new(Node::start().context("starting the test node")?));
    }
    Ok(slot.clone().unwrap())
}

/// Tears the shared node down (called by main after the last test).
pub fn shutdown_node() -> Result<()> {
    let node = NODE.lock().unwrap_or_else(|e| e.into_inner()).take();
    match node.map(Arc::try_unwrap) {
        Some(Ok(node)) => node.shutdown(),
        Some(Err(_)) => anyhow::bail!("test node still in use at shutdown"),
        None => Ok(()),
    }
}

/// A pod removed when the test ends, pass or fail.
pub(crate) struct TestPod {
    pub node: Arc<Node>,
    pub pod: Pod,
}

impl TestPod {
    pub fn run(spec: PodSpec) -> Result<Self> {
        let node = node()?;
        let pod = node.run_pod(spec)?;
        Ok(Self { node, pod })
    }

    pub fn ip(&self) -> Ipv4Addr {
        self.pod.ip.expect("pod with its own network")
    }

    pub fn veth(&self) -> String {
        self.pod
            .host_veth
            .as_ref()
            .map(|v| v.name.clone())
            .unwrap_or_default()
    }
}

impl Drop for TestPod {
    fn drop(&mut self) {
        let _ = self.node.remove_pod(&self.pod);
    }
}

pub(crate) fn endpoint() -> Result<String> {
    Ok(node()?.endpoint())
}

/// One HTTP GET from the host (the bridge address) to the pod.
pub(crate) fn http_get(ip: Ipv4Addr) -> Result<()> {
    let answer = http::get(ip, HTTP_PORT)?;
    ensure!(
        answer.contains("podtrace test pod"),
        "unexpected answer {answer:?}"
    );
    Ok(())
}

pub fn capture_by_name_http_and_ping() -> Result<()> {
    let web = TestPod::run(PodSpec::new("web1"))?;
    let gateway = web.node.gateway();
    let dir = tempdir()?;
    let file = dir.path().join("web.pcap");
    let ep = endpoint()?;
    let capture = Capture::start(&[
        "capture",
        "web1",
        "--runtime-endpoint",
        &ep,
        "-w",
        file.to_str().unwrap(),
    ])?;
    for _ in 0..3 {
        http_get(web.ip())?;
    }
    web.pod.exec_ok(&[
        "busybox",
        "ping",
        "-c",
        "3",
        "-i",
        "0.1",
        "-W",
        "2",
        &gateway.to_string(),
    ])?;
    let done = capture.stop(libc::SIGINT)?;
    ensure!(done.status.success(), "{}", done.stderr);

    let (pod, gw) = (web.ip().to_string(), gateway.to_string());
    let requests = tshark::fields(
        &file,
        "http.request",
        &["ip.src", "ip.dst", "http.request.uri"],
    )?;
    ensure!(
        requests.len() == 3,
        "want 3 HTTP requests, got {requests:?}"
    );
    ensure!(
        requests
            .iter()
            .all(|r| r[..] == [gw.clone(), pod.clone(), "/".into()]),
        "{requests:?}"
    );
    let responses = tshark::fields(
        &file,
        "http.response",
        &["ip.src", "ip.dst", "http.response.code"],
    )?;
    ensure!(
        responses.len() == 3,
        "want 3 HTTP responses, got {responses:?}"
    );
    ensure!(
        responses
            .iter()
            .all(|r| r[..] == [pod.clone(), gw.clone(), "200".into()]),
        "{responses:?}"
    );
    let pings = tshark::count(
        &file,
        &format!("icmp.type==8 && ip.src=={pod} && ip.dst=={gw}"),
    )?;
    let pongs = tshark::count(
        &file,
        &format!("icmp.type==0 && ip.src=={gw} && ip.dst=={pod}"),
    )?;
    ensure!(
        (pings, pongs) == (3, 3),
        "pod pings/replies {pings}/{pongs}, want 3/3"
    );
    assert_released(&done, &web.veth())
}

/// Two pods named alike in two namespaces: each selector form picks the
/// prod one, and only its traffic is captured.
pub fn namespace_and_selector_forms() -> Result<()> {
    let default = TestPod::run(PodSpec::new("web2"))?;
    let prod = TestPod::run(PodSpec::new("web2").namespace("prod"))?;
    let ep = endpoint()?;
    let prefix = &prod.pod.container_id[..12];
    // As `kubectl get pod -o yaml` shows a container id.
    let runtime_id = format!("containerd://{}", prod.pod.container_id);
    let forms: [&[&str]; 5] = [
        &["web2", "-n", "prod"],
        &["prod/web2"],
        &["--uid", &prod.pod.uid],
        &["--container", prefix],
        &["--container", &runtime_id],
    ];
    let dir = tempdir()?;
    for (i, form) in forms.iter().enumerate() {
        let file = dir.path().join(format!("f{i}.pcap"));
        let mut args = vec![
            "capture",
            "--runtime-endpoint",
            &ep,
            "-w",
            file.to_str().unwrap(),
        ];
        args.extend_from_slice(form);
        let capture = Capture::start(&args)?;
        http_get(default.ip())?;
        http_get(prod.ip())?;
        let done = capture.stop(libc::SIGINT)?;
        ensure!(done.status.success(), "{form:?}: {}", done.stderr);
        let requests = tshark::fields(&file, "http.request", &["ip.dst"])?;
        ensure!(
            requests == [[prod.ip().to_string()]],
            "{form:?}: requests {requests:?}"
        );
        let other = tshark::count(&file, &format!("ip.addr=={}", default.ip()))?;
        ensure!(other == 0, "{form:?}: {other} packets of the default pod");
        assert_released(&done, &prod.veth())?;
    }
    Ok(())
}

pub fn pods_lists_pods_with_veths() -> Result<()> {
    let a = TestPod::run(PodSpec::new("web3"))?;
    let b = TestPod::run(PodSpec::new("web3").namespace("prod"))?;
    let hostnet = TestPod::run(PodSpec::new("hostnet3").host_network())?;
    let ep = endpoint()?;
    let all = run::run(&["pods", "-A", "--runtime-endpoint", &ep])?;
    ensure!(all.status.success(), "{}", all.stderr);
    for (ns, pod) in [("default", &a), ("prod", &b)] {
        let want = row(ns, pod)?;
        let found = all.stdout.lines().any(|l| words(l) == want);
        ensure!(found, "no row {want:?} in:\n{}", all.stdout);
    }
    ensure!(
        all.stdout
            .lines()
            .any(|l| l.contains("hostnet3") && l.contains("(host network)")),
        "hostNetwork pod not shown as such:\n{}",
        all.stdout
    );
    // -n prod: the header and the prod pod's row, nothing else.
    let prod_only = run::run(&["pods", "-n", "prod", "--runtime-endpoint", &ep])?;
    ensure!(
        prod_only.status.success() && prod_only.stderr.is_empty(),
        "-n prod: exit {:?}: {}",
        prod_only.status.code(),
        prod_only.stderr
    );
    let lines: Vec<Vec<String>> = prod_only.stdout.lines().map(words).collect();
    let header = ["NAMESPACE", "NAME", "STATE", "IP", "VETH", "IFINDEX", "UID"].map(str::to_owned);
    ensure!(
        lines == [header.to_vec(), row("prod", &b)?],
        "-n prod:\n{}",
        prod_only.stdout
    );
    drop(hostnet);
    Ok(())
}

/// The row `podtrace pods` should print for `pod` in namespace `ns`.
fn row(ns: &str, pod: &TestPod) -> Result<Vec<String>> {
    let veth = pod.pod.host_veth.as_ref().context("no veth")?;
    Ok([
        ns,
        &pod.pod.name,
        "Ready",
        &pod.ip().to_string(),
        &veth.name,
        &veth.ifindex.to_string(),
        &pod.pod.uid,
    ]
    .map(str::to_owned)
    .to_vec())
}

fn words(line: &str) -> Vec<String> {
    line.split_whitespace().map(str::to_owned).collect()
}

pub fn pod_errors() -> Result<()> {
    let ep = endpoint()?;
    let _prod = TestPod::run(PodSpec::new("web4").namespace("prod"))?;
    let done = run::run(&["capture", "web4", "--runtime-endpoint", &ep])?;
    expect_error(&done, 2, "pod default/web4 not found on this node; a pod named web4 exists in namespace prod: use -n prod")?;
    let done = run::run(&["capture", "prod/wbe4", "--runtime-endpoint", &ep])?;
    expect_error(
        &done,
        2,
        "pod prod/wbe4 not found on this node; did you mean web4?",
    )?;
    let done = run::run(&[
        "capture",
        "--container",
        "ffffffffff",
        "--runtime-endpoint",
        &ep,
    ])?;
    expect_error(&done, 2, "no container with id ffffffffff on this node")?;
    // The endpoint from the environment, as crictl takes it.
    let done = run::run_with_env(
        &["pods", "-n", "prod"],
        &[("CONTAINER_RUNTIME_ENDPOINT", ep.as_str())],
    )?;
    ensure!(
        done.status.success() && done.stdout.lines().any(|l| l.contains("web4")),
        "pods with CONTAINER_RUNTIME_ENDPOINT: {}{}",
        done.stdout,
        done.stderr
    );

    let sleepy = TestPod::run(PodSpec::new("sleepy"))?;
    sleepy.node.stop_pod_sandbox(&sleepy.pod)?;
    let done = run::run(&["capture", "sleepy", "--runtime-endpoint", &ep])?;
    expect_error(&done, 2, "pod default/sleepy is not ready")?;

    let _host = TestPod::run(PodSpec::new("hostnet4").host_network())?;
    let done = run::run(&["capture", "hostnet4", "--runtime-endpoint", &ep])?;
    expect_error(&done, 2, "pod default/hostnet4 uses the host network")?;

    let done = run::run(&[
        "capture",
        "web4",
        "--runtime-endpoint",
        "unix:///nonexistent/cri.sock",
    ])?;
    expect_error(&done, 1, "/nonexistent/cri.sock does not exist")?;

    // Issue 15: a regular file is not "connection refused".
    let dir = tempdir()?;
    let file = dir.path().join("cri.sock");
    std::fs::write(&file, "")?;
    let done = run::run(&[
        "capture",
        "web4",
        "--runtime-endpoint",
        file.to_str().unwrap(),
    ])?;
    expect_error(&done, 1, "cri.sock is not a socket: it is a regular file")?;

    // `podtrace pods` needs no eBPF, so an unprivileged user gets as far as the socket.
    let done = run::run_unprivileged(&["pods", "--runtime-endpoint", &ep])?;
    expect_error(&done, 1, "permission denied on container runtime socket")?;
    Ok(())
}

/// An ipvlan/macvlan-style pod: eth0 is a macvlan, no veth peer on the host.
pub fn pod_without_veth_peer() -> Result<()> {
    let pod = TestPod::run(PodSpec::new("macv"))?;
    let pid = pod.pod.pid.to_string();
    let ns = |args: &[&str]| -> Result<String> {
        let mut all = vec!["nsenter", "-t", &pid, "-n"];
        all.extend_from_slice(args);
        sh(&all)
    };
    ns(&["ip", "link", "del", "eth0"])?;
    // The macvlan's lower device: a host veth end (no dummy driver here).
    let parent = "ptmvparent";
    let _ = sh(&["ip", "link", "del", parent]);
    sh(&[
        "ip", "link", "add", parent, "type", "veth", "peer", "name", "ptmvpeer",
    ])?;
    let result = (|| -> Result<()> {
        sh(&[
            "ip", "link", "add", "ptmv0", "link", parent, "type", "macvlan", "mode", "bridge",
        ])?;
        sh(&["ip", "link", "set", "ptmv0", "netns", &pid])?;
        ns(&["ip", "link", "set", "ptmv0", "name", "eth0"])?;
        ns(&["ip", "link", "set", "eth0", "up"])?;
        let done = run::run(&["capture", "macv", "--runtime-endpoint", &endpoint()?])?;
        expect_error(&done, 2, "has no veth peer in the host network namespace")
    })();
    // Deleting the lower veth takes its peer and the macvlan with it.
    sh(&["ip", "link", "del", parent])?;
    result
}

pub fn pod_deleted_mid_capture() -> Result<()> {
    let pod = TestPod::run(PodSpec::new("gone"))?;
    let gateway = pod.node.gateway().to_string();
    let veth = pod.veth();
    let dir = tempdir()?;
    let file = dir.path().join("gone.pcap");
    let ep = endpoint()?;
    let capture = Capture::start(&[
        "capture",
        "gone",
        "--runtime-endpoint",
        &ep,
        "-w",
        file.to_str().unwrap(),
    ])?;
    pod.pod.exec_ok(&[
        "busybox", "ping", "-c", "2", "-i", "0.1", "-W", "2", &gateway,
    ])?;
    pod.node.remove_pod(&pod.pod)?;
    let done = capture.wait(Duration::from_secs(10))?;
    ensure!(
        done.status.success(),
        "exit {:?}: {}",
        done.status.code(),
        done.stderr
    );
    ensure!(
        done.stderr.contains("pod default/gone was deleted"),
        "{}",
        done.stderr
    );
    let icmp = tshark::count(&file, "icmp.type==8 || icmp.type==0")?;
    ensure!(
        icmp == 4,
        "want the 4 ICMP packets before deletion, got {icmp}"
    );
    assert_released(&done, &veth)
}
