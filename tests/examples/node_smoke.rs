//! Smoke test of the test node, and of `podtrace::target` against real pods. Needs root:
//!
//! ```text
//! cargo run -p podtrace-tests --example node_smoke
//! ```
//!
//! Starts a node with pods `default/web`, `prod/web` and a hostNetwork pod, checks their
//! networks, resolves them with `podtrace::target`, runs a second node beside it, deletes a pod,
//! shuts the node down and checks that the machine is as it was.
//!
//! `--crash` leaves a node with a pod behind (exit without teardown); `--clean` only removes
//! such leftovers, as every `Node::start` does first.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use podtrace::target::{self, PodSelector, TargetError};
use podtrace_tests::node::{Node, Pod, PodSpec, INDEX_HTML};

fn main() -> Result<()> {
    if std::env::args().any(|a| a == "--crash") {
        // Leaves a node behind on purpose, for the next run's stale-node cleanup to remove.
        let node = Node::start()?;
        let pod = node.run_pod(PodSpec::new("web"))?;
        println!(
            "exiting without teardown, node {} and {pod:?} up",
            node.dir().display()
        );
        std::process::exit(3);
    }
    let t = Instant::now();
    Node::clean_stale();
    if std::env::args().any(|a| a == "--clean") {
        println!("stale nodes cleaned in {:.2?}", t.elapsed());
        return Ok(());
    }
    let stale = t.elapsed();
    let before = MachineState::now();
    let t0 = Instant::now();
    let node = Node::start()?;
    let node_start = t0.elapsed();

    let t1 = Instant::now();
    let web = node.run_pod(PodSpec::new("web"))?;
    let web_pod_start = t1.elapsed();
    let prod = node.run_pod(PodSpec::new("web").namespace("prod"))?;
    let host = node.run_pod(
        PodSpec::new("agent")
            .namespace("kube-system")
            .host_network(),
    )?;
    println!("pods: {web:?}\n      {prod:?}\n      {host:?}");

    check_networks(&node, &web, &prod, &host)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(check_target(&node, &web, &prod))?;

    check_second_node(&node, &web)?;

    let t2 = Instant::now();
    node.remove_pod(&prod)?;
    let remove = t2.elapsed();
    let pause_state =
        std::fs::read_to_string(format!("/proc/{}/stat", prod.pid)).unwrap_or_default();
    ensure!(
        pause_state.is_empty() || pause_state.contains(") Z"),
        "pause process {} of the removed pod still runs",
        prod.pid
    );
    ensure!(!prod
        .host_veth
        .as_ref()
        .is_some_and(|v| std::path::Path::new("/sys/class/net")
            .join(&v.name)
            .exists()));
    rt.block_on(async {
        let (mut client, _) = target::connect(Some(&node.endpoint())).await?;
        ensure!(!target::exists(&mut client, &prod.sandbox_id).await?);
        ensure!(target::exists(&mut client, &web.sandbox_id).await?);
        let err = target::resolve(&mut client, &sel("prod/web")?)
            .await
            .unwrap_err();
        println!("after delete: {err}");
        ensure!(matches!(err, TargetError::PodNotFound { .. }));
        anyhow::Ok(())
    })?;
    drop(rt);

    let t3 = Instant::now();
    node.shutdown()?;
    let teardown = t3.elapsed();

    let after = MachineState::now();
    let leftovers = before.leftovers(&after);
    println!(
        "timings: stale check {stale:.2?}, node start {node_start:.2?}, first pod {web_pod_start:.2?}, pod removal {remove:.2?}, teardown {teardown:.2?}"
    );
    if !leftovers.is_empty() {
        bail!(
            "the machine is not as before:\n  {}",
            leftovers.join("\n  ")
        );
    }
    println!("machine clean: links, processes, cgroups, mounts, files, ip_forward as before");
    println!("node_smoke: all checks passed");
    Ok(())
}

/// A second node at the same time gets its own bridge and subnet, and its teardown leaves the
/// first one working.
fn check_second_node(first: &Node, first_pod: &Pod) -> Result<()> {
    let second = Node::start()?;
    ensure!(second.bridge() != first.bridge() && second.subnet() != first.subnet());
    let pod = second.run_pod(PodSpec::new("web"))?;
    let ip = pod.ip()?;
    ensure!(
        ip.octets()[..3] == second.gateway().octets()[..3],
        "{ip} not in {}",
        second.subnet()
    );
    let body = pod.exec_ok(&["busybox", "wget", "-qO-", &format!("http://{ip}:8080/")])?;
    ensure!(body == INDEX_HTML);
    second.shutdown()?;
    let gw = first.gateway().to_string();
    let ping = first_pod.exec(&["busybox", "ping", "-c", "1", "-W", "2", &gw])?;
    ensure!(
        ping.code == 0,
        "first node broken by the second's teardown: {}",
        ping.stderr
    );
    ensure!(std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")?.trim() == "1");
    println!(
        "second node: own bridge and subnet ({}), first node unaffected by its teardown",
        second_subnet(&ip)
    );
    Ok(())
}

fn second_subnet(ip: &std::net::Ipv4Addr) -> String {
    let [a, b, c, _] = ip.octets();
    format!("{a}.{b}.{c}.0/24")
}

fn sel(arg: &str) -> Result<PodSelector, TargetError> {
    PodSelector::parse(arg, None)
}

/// veth peers, traffic host→pod and pod→pod, host pod in the host netns.
fn check_networks(node: &Node, web: &Pod, prod: &Pod, host: &Pod) -> Result<()> {
    for pod in [web, prod] {
        let veth = pod.host_veth.as_ref().context("no host veth")?;
        let path = format!("/proc/{}/root/sys/class/net/eth0/iflink", pod.pid);
        let iflink: u32 = std::fs::read_to_string(&path)?.trim().parse()?;
        ensure!(
            iflink == veth.ifindex,
            "{path} = {iflink}, host veth {} has ifindex {}",
            veth.name,
            veth.ifindex
        );
        let ipv6 = std::fs::read_to_string(format!(
            "/proc/sys/net/ipv6/conf/{}/disable_ipv6",
            veth.name
        ))?;
        ensure!(ipv6.trim() == "1", "IPv6 still on on {}", veth.name);
        let url = format!("http://{}:8080/", pod.ip()?);
        let out = Command::new("busybox")
            .args(["wget", "-qO-", &url])
            .output()?;
        ensure!(
            out.status.success() && out.stdout == INDEX_HTML.as_bytes(),
            "host wget {url}: {:?} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let in_pod_ipv6 =
            pod.exec_ok(&["busybox", "cat", "/proc/sys/net/ipv6/conf/all/disable_ipv6"])?;
        ensure!(in_pod_ipv6.trim() == "1", "IPv6 on in pod {}", pod.name);
    }
    let bridge_ipv6 = format!("/proc/sys/net/ipv6/conf/{}/disable_ipv6", node.bridge());
    ensure!(
        std::fs::read_to_string(&bridge_ipv6)?.trim() == "1",
        "IPv6 on on the bridge"
    );
    let gw = node.gateway().to_string();
    let ping = web.exec(&["busybox", "ping", "-c", "1", "-W", "2", &gw])?;
    ensure!(ping.code == 0, "ping {gw} from web: {}", ping.stderr);
    let url = format!("http://{}:8080/", prod.ip()?);
    let body = web.exec_ok(&["busybox", "wget", "-qO-", &url])?;
    ensure!(body == INDEX_HTML, "pod to pod wget gave {body:?}");
    let ours = std::fs::read_link("/proc/self/ns/net")?;
    let theirs = std::fs::read_link(format!("/proc/{}/ns/net", host.pid))?;
    ensure!(ours == theirs, "host-network pod is not in the host netns");
    ensure!(host.ip.is_none() && host.host_veth.is_none());
    println!("networks: iflink = host veth ifindex, host→pod and pod→pod HTTP, ping gateway: ok");
    Ok(())
}

/// Every selector form and error of `podtrace::target` against the node.
async fn check_target(node: &Node, web: &Pod, prod: &Pod) -> Result<()> {
    let (mut client, endpoint) = target::connect(Some(&node.endpoint())).await?;
    ensure!(endpoint == node.endpoint());
    // The harness's sync calls also work from inside a tokio runtime.
    ensure!(web.exec_ok(&["busybox", "echo", "ok"])? == "ok\n");

    let cases = [
        (sel("web")?, web),
        (sel("default/web")?, web),
        (PodSelector::parse("web", Some("prod"))?, prod),
        (sel("prod/web")?, prod),
        (PodSelector::Uid(web.uid.clone()), web),
        (
            PodSelector::Container(web.container_id[..12].to_string()),
            web,
        ),
        (
            PodSelector::Container(format!("containerd://{}", prod.container_id)),
            prod,
        ),
    ];
    for (selector, pod) in &cases {
        let sandbox = target::resolve(&mut client, selector).await?;
        ensure!(
            sandbox.id == pod.sandbox_id,
            "{selector} resolved to {sandbox:?}"
        );
        ensure!(
            sandbox.pid == Some(pod.pid),
            "{selector}: pid {:?}",
            sandbox.pid
        );
        ensure!(sandbox.ip == pod.ip.map(|ip| ip.to_string()));
        ensure!(sandbox.uid == pod.uid && sandbox.ready && !sandbox.host_network);
        let netns = sandbox.netns_path.as_deref().context("no netns path")?;
        ensure!(
            netns.starts_with(&node.dir().display().to_string()),
            "netns {netns} not under the node dir"
        );
        println!("resolve {selector}: ok ({})", sandbox.id);
    }

    let expect_err = [
        (
            sel("wbe")?,
            "pod default/wbe not found on this node; did you mean web?",
        ),
        (
            sel("staging/web")?,
            "pod staging/web not found on this node; pods named web exist in namespaces default, prod: use -n NAMESPACE",
        ),
        (
            sel("kube-system/agent")?,
            "pod kube-system/agent uses the host network: its traffic is the node's; capture a host interface with -i",
        ),
        (
            PodSelector::Container("ffffffffff".into()),
            "no container with id ffffffffff on this node",
        ),
    ];
    for (selector, message) in &expect_err {
        let err = target::resolve(&mut client, selector).await.unwrap_err();
        ensure!(err.to_string() == *message, "{selector}: got {err}");
        println!("resolve {selector}: error as expected: {err}");
    }

    let all = target::list(&mut client, None).await?;
    let names: Vec<String> = all.iter().map(target::Sandbox::pod_name).collect();
    ensure!(
        names == ["default/web", "kube-system/agent", "prod/web"],
        "list gave {names:?}"
    );
    ensure!(all[1].host_network && all[1].pid.is_some());
    ensure!(target::list(&mut client, Some("prod")).await?.len() == 1);
    println!("list: {names:?}");

    // The endpoint from the environment, as crictl takes it; then the default sockets.
    let saved = std::env::var_os(target::ENDPOINT_ENV);
    std::env::set_var(target::ENDPOINT_ENV, node.endpoint());
    let (_, from_env) = target::connect(None).await?;
    ensure!(from_env == node.endpoint(), "connect(None) used {from_env}");
    std::env::remove_var(target::ENDPOINT_ENV);
    match target::connect(None).await {
        Ok((_, endpoint)) => println!("default endpoint probe found {endpoint}"),
        Err(err) => println!("default endpoint probe: {err}"),
    }
    if let Some(saved) = saved {
        std::env::set_var(target::ENDPOINT_ENV, saved);
    }

    let err = target::connect(Some("unix:///nonexistent/cri.sock"))
        .await
        .unwrap_err();
    println!("connect to a missing socket: {err}");
    Ok(())
}

/// What a node could leave behind, as text, to compare before and after.
#[derive(Debug, PartialEq)]
struct MachineState {
    items: BTreeSet<String>,
}

impl MachineState {
    fn now() -> Self {
        let mut items = BTreeSet::new();
        let links = Command::new("ip").args(["-o", "link", "show"]).output();
        for line in String::from_utf8_lossy(&links.map(|o| o.stdout).unwrap_or_default()).lines() {
            if let Some(name) = line.split(": ").nth(1) {
                items.insert(format!("link {}", name.split('@').next().unwrap_or(name)));
            }
        }
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
            let comm = comm.trim();
            // Zombies wait for PID 1, which reaps orphans late here: they hold nothing.
            let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
            if stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
            {
                continue;
            }
            if [
                "containerd",
                "containerd-shim",
                "pause",
                "busybox",
                "httpd",
                "sleep",
            ]
            .iter()
            .any(|c| comm.starts_with(c))
            {
                items.insert(format!(
                    "process {comm} {}",
                    entry.file_name().to_string_lossy()
                ));
            }
        }
        for root in std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            let kubepods = root.path().join("kubepods");
            if kubepods.exists() {
                items.insert(format!("cgroup {}", kubepods.display()));
            }
        }
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        for line in mounts.lines() {
            let mount = line.split(' ').nth(4).unwrap_or("");
            if mount.contains("podtrace") || mount.contains("containerd") || mount.contains("netns")
            {
                items.insert(format!("mount {mount}"));
            }
        }
        let find = Command::new("find")
            .args([
                "/run",
                "/var/run",
                "/var/lib",
                "/etc",
                "/opt",
                "-maxdepth",
                "3",
            ])
            .output();
        for path in String::from_utf8_lossy(&find.map(|o| o.stdout).unwrap_or_default()).lines() {
            items.insert(format!("path {path}"));
        }
        for entry in std::fs::read_dir(std::env::temp_dir())
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("podtrace-node") {
                items.insert(format!("path {}", entry.path().display()));
            }
        }
        // Firewall rules (the bridge plugin adds some only with ipMasq, which is off).
        for (tool, args) in [
            ("iptables-save", &[][..]),
            ("nft", &["list", "ruleset"][..]),
        ] {
            let Ok(out) = Command::new(tool).args(args).output() else {
                continue;
            };
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                if !line.starts_with('#') {
                    let rule = line.split(" [").next().unwrap_or(line);
                    items.insert(format!("{tool} {rule}"));
                }
            }
        }
        let forward = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap_or_default();
        items.insert(format!("ip_forward {}", forward.trim()));
        MachineState { items }
    }

    fn leftovers(&self, after: &MachineState) -> Vec<String> {
        let added = after
            .items
            .difference(&self.items)
            .map(|i| format!("+ {i}"));
        let removed = self
            .items
            .difference(&after.items)
            .map(|i| format!("- {i}"));
        added.chain(removed).collect()
    }
}
