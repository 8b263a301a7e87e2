//! podtrace as a pod: the image run through CRI the way kubelet runs deploy/'s manifests (host
//! namespaces, hostPath mounts and securityContext read from the files), capturing a
//! neighbour pod on the test node.

use std::{
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{ensure, Context, Result};
use podtrace_tests::{
    http,
    node::{manifest::ManifestPod, Mount, Node, PodSpec, HTTP_PORT},
    tshark,
};

use crate::{capture::tempdir, dist, pods::TestPod};

/// The hostPath of the runtime socket in the manifests, and where the pod sees it.
const SOCKET: &str = "/run/containerd/containerd.sock";
/// The hostPath (and mount path) of the capture directory in the manifests.
const CAPTURES: &str = "/var/lib/podtrace";
/// What the documented set is: the capabilities the manifests add.
const DOCUMENTED: [&str; 4] = ["BPF", "PERFMON", "NET_ADMIN", "SYS_PTRACE"];

fn deploy(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(file)
}

fn pod_manifest() -> Result<ManifestPod> {
    ManifestPod::load(&deploy("podtrace-pod.yaml"))
}

fn daemonset_manifest() -> Result<ManifestPod> {
    ManifestPod::load(&deploy("podtrace-daemonset.yaml"))
}

/// The manifest's pod on the test node: its socket is the node's, its capture directory `captures`.
fn agent_spec(m: &ManifestPod, name: &str, node: &Node, captures: &Path) -> Result<PodSpec> {
    let image = dist::image_on_node()?;
    ensure!(
        m.image == image,
        "the manifest runs {}, but this build's image is {image}",
        m.image
    );
    let socket = node.socket();
    m.spec(name, &m.namespace, &m.image, |host| match host {
        SOCKET => Some(socket.clone()),
        CAPTURES => Some(captures.to_path_buf()),
        _ => None,
    })
}

fn epoch_secs(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

/// GETs `/warm-N` every 20 ms until stopped (at most a minute): traffic for podtrace to meet
/// whenever it starts.
fn warm_traffic(ip: std::net::Ipv4Addr) -> (Arc<AtomicBool>, std::thread::JoinHandle<()>) {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let handle = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut n = 0;
        while !flag.load(Ordering::Relaxed) && Instant::now() < deadline {
            let _ = http::get_path(ip, HTTP_PORT, &format!("/warm-{n}"));
            n += 1;
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    (stop, handle)
}

/// The request URIs in a capture, in order.
fn request_uris(file: &Path) -> Result<Vec<String>> {
    Ok(tshark::fields(file, "http.request", &["http.request.uri"])?
        .into_iter()
        .map(|row| row[0].clone())
        .collect())
}

/// The capabilities in effect for a process, by name (`BPF`, …).
fn effective_caps(pid: u32) -> Result<Vec<String>> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let mask = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .context("no CapEff")?;
    let names = [
        (12, "NET_ADMIN"),
        (19, "SYS_PTRACE"),
        (21, "SYS_ADMIN"),
        (38, "PERFMON"),
        (39, "BPF"),
    ];
    let known: u64 = names.iter().map(|(bit, _)| 1u64 << bit).sum();
    ensure!(
        mask & !known == 0,
        "capabilities beyond the documented ones: {mask:#x}"
    );
    Ok(names
        .iter()
        .filter(|(bit, _)| mask & (1 << bit) != 0)
        .map(|(_, n)| (*n).to_string())
        .collect())
}

/// deploy/podtrace-pod.yaml as written (args included): it captures default/web into the
/// node's capture directory; every HTTP request sent to web while it runs is in the file.
pub fn pod_manifest_captures_its_neighbour() -> Result<()> {
    let m = pod_manifest()?;
    ensure!(
        m.args.starts_with(&[
            "capture".into(),
            "web".into(),
            "-n".into(),
            "default".into()
        ]),
        "the manifest's example no longer captures default/web: {:?}",
        m.args
    );
    let web = TestPod::run(PodSpec::new("web"))?;
    let captures = tempdir()?;
    let spec = agent_spec(&m, &m.name, &web.node, captures.path())?;
    ensure!(
        spec.host_pid && spec.host_network,
        "the manifest lost its host namespaces"
    );
    let (stop, warm) = warm_traffic(web.ip());
    let t0 = SystemTime::now();
    let agent = TestPod::run(spec)?;
    let started = agent.pod.wait_log("capturing on", Duration::from_secs(30));
    let capturing_after = t0.elapsed()?;
    stop.store(true, Ordering::Relaxed);
    warm.join().ok();
    started?;
    let pid = agent.pod.container_pid()?;
    let mut caps = effective_caps(pid)?;
    caps.sort();
    let mut documented: Vec<String> = DOCUMENTED.iter().map(|s| (*s).to_string()).collect();
    documented.sort();
    ensure!(
        caps == documented,
        "the agent runs with {caps:?}, not the documented {documented:?}"
    );
    const N: usize = 20;
    for i in 0..N {
        http::get_path(web.ip(), HTTP_PORT, &format!("/req-{i}"))?;
    }
    let code = agent.pod.stop(Duration::from_secs(10))?;
    let log = agent.pod.log()?;
    ensure!(code == 0, "podtrace exited {code}:\n{log}");
    ensure!(
        log.contains("packets captured") && log.contains(" 0 lost in kernel"),
        "{log}"
    );
    let file = captures.path().join("web.pcap");
    let uris = request_uris(&file)?;
    let wanted: Vec<String> = (0..N).map(|i| format!("/req-{i}")).collect();
    let got: Vec<String> = uris
        .iter()
        .filter(|u| u.starts_with("/req-"))
        .cloned()
        .collect();
    ensure!(got == wanted, "requests in the capture: {got:?}");
    let first = tshark::fields(&file, "", &["frame.time_epoch"])?
        .first()
        .context("empty capture")?[0]
        .parse::<f64>()?;
    eprintln!(
        "agent pod: 'capturing on' {:.0} ms after the pod was created, first packet at {:.0} ms",
        capturing_after.as_secs_f64() * 1e3,
        (first - epoch_secs(t0)) * 1e3
    );
    Ok(())
}

/// Runs the pod manifest changed by `change`; it must fail at once with a line containing `needle`.
fn fails_naming(name: &str, change: impl FnOnce(&mut PodSpec), needle: &str) -> Result<()> {
    let m = pod_manifest()?;
    let web = TestPod::run(PodSpec::new("web"))?;
    let captures = tempdir()?;
    let mut spec = agent_spec(&m, name, &web.node, captures.path())?;
    change(&mut spec);
    let agent = TestPod::run(spec)?;
    let code = agent.pod.wait_exit(Duration::from_secs(30))?;
    let log = agent.pod.log()?;
    ensure!(code == 1, "want exit 1, got {code}:\n{log}");
    let lines: Vec<&str> = log.lines().filter(|l| !l.is_empty()).collect();
    ensure!(
        lines.len() == 1 && lines[0].contains(needle),
        "want one line naming {needle:?}, got:\n{log}"
    );
    Ok(())
}

/// Each documented capability, dropped alone, makes the pod fail with a line naming it.
pub fn each_documented_capability_is_needed() -> Result<()> {
    let m = pod_manifest()?;
    ensure!(
        m.security.add_capabilities == DOCUMENTED && m.security.drop_capabilities == ["ALL"],
        "the manifest's capabilities changed: add {:?} drop {:?}",
        m.security.add_capabilities,
        m.security.drop_capabilities
    );
    for cap in DOCUMENTED {
        let name = format!("podtrace-no-{}", cap.to_lowercase().replace('_', "-"));
        fails_naming(
            &name,
            |spec| spec.security.add_capabilities.retain(|c| c != cap),
            &format!("CAP_{cap}"),
        )
        .with_context(|| format!("without {cap}"))?;
    }
    Ok(())
}

pub fn missing_host_pid_is_named() -> Result<()> {
    fails_naming(
        "podtrace-no-hostpid",
        |spec| spec.host_pid = false,
        "hostPID: true",
    )
}

pub fn unmounted_socket_is_named() -> Result<()> {
    fails_naming(
        "podtrace-no-socket",
        |spec| spec.mounts.retain(|m| m.container_path != SOCKET),
        "mount the node's runtime socket",
    )
}

/// `kubectl debug node/NODE --profile=sysadmin --image=podtrace:V -- podtrace capture …`: a
/// privileged pod in the node's namespaces with the node's root at /host. The socket is only at
/// /host/run/containerd/containerd.sock, and podtrace finds it with no flag.
pub fn kubectl_debug_layout_finds_the_socket_under_host() -> Result<()> {
    let web = TestPod::run(PodSpec::new("web"))?;
    let node_tmp = tempdir()?;
    let mut spec = PodSpec::new("node-debugger-web")
        .host_network()
        .host_pid()
        .command(&[
            "podtrace",
            "capture",
            "-v",
            "web",
            "-w",
            "/host/tmp/web.pcap",
        ]);
    spec.image = Some(dist::image_on_node()?);
    spec.security.privileged = true;
    spec.mounts = vec![
        Mount {
            host_path: web.node.socket(),
            container_path: format!("/host{SOCKET}"),
            readonly: false,
        },
        Mount {
            host_path: node_tmp.path().to_path_buf(),
            container_path: "/host/tmp".into(),
            readonly: false,
        },
    ];
    let debug = TestPod::run(spec)?;
    debug
        .pod
        .wait_log("capturing on", Duration::from_secs(30))?;
    for i in 0..5 {
        http::get_path(web.ip(), HTTP_PORT, &format!("/debug-{i}"))?;
    }
    let code = debug.pod.stop(Duration::from_secs(10))?;
    let log = debug.pod.log()?;
    ensure!(code == 0, "podtrace exited {code}:\n{log}");
    ensure!(
        log.contains("container runtime: unix:///host/run/containerd/containerd.sock"),
        "-v does not name the socket under /host:\n{log}"
    );
    let got: Vec<String> = request_uris(&node_tmp.path().join("web.pcap"))?;
    let wanted: Vec<String> = (0..5).map(|i| format!("/debug-{i}")).collect();
    ensure!(got == wanted, "requests in the capture: {got:?}");
    Ok(())
}

/// deploy/podtrace-daemonset.yaml: `podtrace agent` says it is ready, and a capture run in its
/// container (kubectl exec) gets the neighbour's packets into the capture directory, with its
/// filter translated to eBPF (no CAP_SYS_ADMIN needed for that) rather than interpreted.
pub fn daemonset_agent_captures_through_exec() -> Result<()> {
    let m = daemonset_manifest()?;
    let web = TestPod::run(PodSpec::new("web"))?;
    let captures = tempdir()?;
    let spec = agent_spec(&m, "podtrace-agent-node", &web.node, captures.path())?;
    let agent = TestPod::run(spec)?;
    agent.pod.wait_log("agent ready", Duration::from_secs(30))?;
    let (stop, warm) = warm_traffic(web.ip());
    let exec = agent.pod.exec(&[
        "podtrace",
        "capture",
        "web",
        "-n",
        "default",
        "-c",
        "30",
        "-w",
        &format!("{CAPTURES}/exec.pcap"),
        "--filter-engine",
        "native",
        "tcp",
    ]);
    stop.store(true, Ordering::Relaxed);
    warm.join().ok();
    let exec = exec?;
    ensure!(
        exec.code == 0,
        "podtrace capture in the agent exited {}: {}",
        exec.code,
        exec.stderr
    );
    ensure!(
        exec.stderr.contains("30 packets captured, ") && exec.stderr.contains(", 0 lost in kernel"),
        "{}",
        exec.stderr
    );
    let file = captures.path().join("exec.pcap");
    let ip = web.ip().to_string();
    let with_web = tshark::count(&file, &format!("ip.addr=={ip}"))?;
    ensure!(with_web == 30, "{with_web} of 30 packets are web's");
    let code = agent.pod.stop(Duration::from_secs(10))?;
    let log = agent.pod.log()?;
    ensure!(
        code == 0 && log.contains("agent stopped"),
        "agent exited {code}:\n{log}"
    );
    Ok(())
}

/// The DaemonSet runs with the same host namespaces, securityContext and mounts as the Pod.
pub fn deploy_manifests_agree() -> Result<()> {
    let (pod, ds) = (pod_manifest()?, daemonset_manifest()?);
    ensure!(
        (pod.host_network, pod.host_pid) == (ds.host_network, ds.host_pid),
        "host namespaces differ"
    );
    ensure!(
        pod.security == ds.security,
        "securityContext differs: {:?} vs {:?}",
        pod.security,
        ds.security
    );
    ensure!(
        pod.mounts == ds.mounts,
        "mounts differ: {:?} vs {:?}",
        pod.mounts,
        ds.mounts
    );
    ensure!(pod.image == ds.image, "images differ");
    Ok(())
}
