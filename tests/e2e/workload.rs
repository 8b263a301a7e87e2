//! Workload capture (issue 16): pods chosen by label or by name, joining and
//! leaving while one capture runs, each on its own pcapng interface with its
//! own statistics, checked with tshark and capinfos.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{ensure, Context, Result};
use podtrace_tests::{
    node::PodSpec,
    pcapng::{self, Seen},
    run::{self, Capture, Finished},
    sh, tshark,
};

use crate::{
    capture::{assert_released, tempdir},
    errors::expect_error,
    pods::{endpoint, http_get, TestPod},
};

fn web(name: &str, ns: &str, app: &str) -> PodSpec {
    PodSpec::new(name).namespace(ns).label("app", app)
}

/// Starts podtrace with the test node's runtime endpoint.
fn start(args: &[&str]) -> Result<Capture> {
    let ep = endpoint()?;
    let mut all = vec!["capture", "--runtime-endpoint", &ep];
    all.extend_from_slice(args);
    Capture::start(&all)
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Packets per interface name, as tshark reads the file.
fn per_interface(file: &Path) -> Result<BTreeMap<String, usize>> {
    let mut counts = BTreeMap::new();
    for row in tshark::fields(file, "", &["frame.interface_name"])? {
        *counts.entry(row[0].clone()).or_default() += 1;
    }
    Ok(counts)
}

/// The interface names capinfos lists for the file.
fn capinfos_names(file: &Path) -> Result<Vec<String>> {
    let out = sh(&["capinfos", path(file)])?;
    Ok(out
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Name = "))
        .map(str::to_owned)
        .collect())
}

/// HTTP requests to `ip` on interface `name`, and their responses.
fn http_on(file: &Path, name: &str, ip: Ipv4Addr) -> Result<(usize, usize)> {
    let requests = tshark::count(
        file,
        &format!("http.request && ip.dst=={ip} && frame.interface_name==\"{name}\" && frame.packet_flags_direction==1"),
    )?;
    let responses = tshark::count(
        file,
        &format!("http.response && ip.src=={ip} && frame.interface_name==\"{name}\" && frame.packet_flags_direction==2"),
    )?;
    Ok((requests, responses))
}

/// Every interface's last statistics block accounts for the packets of it
/// in the file: received = in the file + dropped (no filter ran).
fn statistics_add_up(file: &Path) -> Result<()> {
    let (interfaces, _) = pcapng::read(file)?;
    let by_tshark = per_interface(file)?;
    let mut in_file: BTreeMap<&str, u64> = BTreeMap::new();
    for iface in &interfaces {
        let (recv, drop, accept) = *iface
            .stats
            .last()
            .with_context(|| format!("{} has no statistics block", iface.name))?;
        *in_file.entry(&iface.name).or_default() += iface.packets;
        ensure!(
            recv == iface.packets + drop && accept == recv,
            "{}: statistics {recv} received, {drop} dropped, {accept} accepted; {} packets in the file",
            iface.name,
            iface.packets
        );
    }
    // The same counts as tshark's, name by name.
    for (name, n) in &by_tshark {
        ensure!(
            in_file.get(name.as_str()).copied() == Some(*n as u64),
            "tshark counts {n} packets on {name}, the blocks {:?}",
            in_file.get(name.as_str())
        );
    }
    Ok(())
}

fn stopped(capture: Capture) -> Result<Finished> {
    let done = capture.stop(libc::SIGINT)?;
    ensure!(done.status.success(), "{}", done.stderr);
    Ok(done)
}

/// `-l` takes the matching pods of `-n`'s namespace, `-A` of all; each is
/// an interface of its own; other pods are not captured.
pub fn selector_across_namespaces() -> Result<()> {
    let a = TestPod::run(web("wl-a", "wl-prod", "wl-web"))?;
    let b = TestPod::run(web("wl-a", "wl-staging", "wl-web"))?;
    let c = TestPod::run(web("wl-c", "wl-prod", "wl-other"))?;
    let dir = tempdir()?;
    for (scope, file) in [
        (&["-n", "wl-prod"][..], dir.path().join("prod.pcapng")),
        (&["-A"][..], dir.path().join("all.pcapng")),
    ] {
        let mut args = vec!["-l", "app=wl-web", "-w", path(&file)];
        args.extend_from_slice(scope);
        let capture = start(&args)?;
        for pod in [&a, &b, &c] {
            http_get(pod.ip())?;
            http_get(pod.ip())?;
        }
        let done = stopped(capture)?;
        let want: Vec<&str> = if scope == ["-A"] {
            vec!["wl-prod/wl-a", "wl-staging/wl-a"]
        } else {
            vec!["wl-prod/wl-a"]
        };
        let names = capinfos_names(&file)?;
        ensure!(names == want, "{scope:?}: interfaces {names:?}");
        for (name, pod) in [("wl-prod/wl-a", &a), ("wl-staging/wl-a", &b)] {
            let got = http_on(&file, name, pod.ip())?;
            let expect = if want.contains(&name) { (2, 2) } else { (0, 0) };
            ensure!(
                got == expect,
                "{scope:?}: {name}: {got:?} requests/responses"
            );
        }
        // Nothing of the pod that does not match, nor of one in another
        // namespace under the wrong interface.
        let strays = tshark::count(&file, &format!("ip.addr=={}", c.ip()))?;
        ensure!(strays == 0, "{scope:?}: {strays} packets of wl-prod/wl-c");
        let crossed = tshark::count(
            &file,
            &format!(
                "ip.addr=={} && frame.interface_name!=\"wl-staging/wl-a\"",
                b.ip()
            ),
        )?;
        ensure!(
            crossed == 0,
            "{scope:?}: {crossed} packets on the wrong interface"
        );
        statistics_add_up(&file)?;
        let (captured, lost) = done.summary()?;
        let total: usize = per_interface(&file)?.values().sum();
        ensure!(captured == total as u64 && lost == 0, "{}", done.stderr);
        assert_released(&done, &a.veth())?;
        assert_released(&done, &b.veth())?;
    }
    Ok(())
}

/// Several pods by name, across namespaces, as one comma-separated word.
pub fn several_names_across_namespaces() -> Result<()> {
    let a = TestPod::run(web("wl-n1", "wl-prod", "x"))?;
    let b = TestPod::run(web("wl-n2", "wl-staging", "x"))?;
    let c = TestPod::run(web("wl-n3", "wl-prod", "x"))?;
    let dir = tempdir()?;
    let file = dir.path().join("n.pcapng");
    let capture = start(&["wl-prod/wl-n1,wl-staging/wl-n2", "-w", path(&file)])?;
    for pod in [&a, &b, &c] {
        http_get(pod.ip())?;
    }
    let done = stopped(capture)?;
    ensure!(capinfos_names(&file)? == ["wl-prod/wl-n1", "wl-staging/wl-n2"]);
    ensure!(http_on(&file, "wl-prod/wl-n1", a.ip())? == (1, 1));
    ensure!(http_on(&file, "wl-staging/wl-n2", b.ip())? == (1, 1));
    ensure!(tshark::count(&file, &format!("ip.addr=={}", c.ip()))? == 0);
    statistics_add_up(&file)?;
    assert_released(&done, &a.veth())?;

    // -n applies to the names without one; a missing name is an error.
    let file = dir.path().join("m.pcapng");
    let capture = start(&["wl-n1,wl-n3", "-n", "wl-prod", "-w", path(&file)])?;
    http_get(c.ip())?;
    stopped(capture)?;
    ensure!(capinfos_names(&file)? == ["wl-prod/wl-n1", "wl-prod/wl-n3"]);
    let ep = endpoint()?;
    let done = run::run(&[
        "capture",
        "--runtime-endpoint",
        &ep,
        "wl-n1,wl-nope",
        "-n",
        "wl-prod",
        "-w",
        "/dev/null",
    ])?;
    expect_error(
        &done,
        2,
        "no pod on this node matches: pods wl-prod/wl-nope",
    )
}

/// A pod created during the capture: the DNS query its app sends the
/// moment it starts is in the file, on its interface, and everything its
/// veth carried is in the statistics.
pub fn first_packets_of_a_new_pod() -> Result<()> {
    let dir = tempdir()?;
    let file = dir.path().join("dns.pcapng");
    let capture = start(&[
        "-l",
        "app=wl-dns",
        "-n",
        "wl-prod",
        "--wait",
        "-w",
        path(&file),
    ])?;
    let node = crate::pods::node()?;
    let gateway = node.gateway().to_string();
    let query = "first.podtrace.test";
    let script = format!("busybox nslookup {query} {gateway}; exec busybox sleep 3600");
    let spec = web("wl-dns", "wl-prod", "wl-dns").command(&["/bin/busybox", "sh", "-c", &script]);
    let pod = TestPod::run(spec)?;
    // nslookup retries for a few seconds without an answer; one query is enough.
    let deadline = Instant::now() + Duration::from_secs(10);
    let veth = pod.veth();
    let counters = |what: &str| -> Result<u64> {
        let text = std::fs::read_to_string(format!("/sys/class/net/{veth}/statistics/{what}"))?;
        Ok(text.trim().parse()?)
    };
    while counters("rx_packets")? == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    let seen_by_veth = counters("rx_packets")? + counters("tx_packets")?;
    let done = stopped(capture)?;
    let queries = tshark::fields(
        &file,
        // Not the port-unreachable errors that quote the query.
        &format!("dns.qry.name==\"{query}\" && dns.flags.response==0 && !icmp"),
        &[
            "frame.interface_name",
            "frame.packet_flags_direction",
            "ip.src",
        ],
    )?;
    ensure!(
        !queries.is_empty(),
        "the pod's first DNS query is not in the file:\n{}",
        done.stderr
    );
    let ip = pod.ip().to_string();
    ensure!(
        queries
            .iter()
            .all(|q| q[..] == ["wl-prod/wl-dns", "0x00000002", ip.as_str()]),
        "{queries:?}"
    );
    statistics_add_up(&file)?;
    // The veth's own counters: podtrace was there from its first packet.
    let (interfaces, _) = pcapng::read(&file)?;
    let received: u64 = interfaces
        .iter()
        .map(|i| i.stats.last().map_or(0, |s| s.0))
        .sum();
    eprintln!("    the veth carried {seen_by_veth} packets by the check, podtrace saw {received}");
    ensure!(
        received >= seen_by_veth,
        "the veth carried {seen_by_veth} packets, podtrace saw {received}"
    );
    Ok(())
}

/// A pod deleted during the capture leaves with its statistics; the
/// capture goes on with the others.
pub fn pod_deleted_leaves_with_its_statistics() -> Result<()> {
    let x = TestPod::run(web("wl-x", "wl-prod", "wl-del"))?;
    let y = TestPod::run(web("wl-y", "wl-prod", "wl-del"))?;
    let dir = tempdir()?;
    let file = dir.path().join("del.pcapng");
    let mut capture = start(&["-l", "app=wl-del", "-n", "wl-prod", "-w", path(&file)])?;
    http_get(x.ip())?;
    http_get(y.ip())?;
    let x_veth = x.veth();
    let (x_ip, x_uid) = (x.ip(), x.pod.uid.clone());
    drop(x);
    std::thread::sleep(Duration::from_millis(800));
    ensure!(capture.running(), "the capture ended with one pod of two");
    http_get(y.ip())?;
    let done = stopped(capture)?;
    ensure!(http_on(&file, "wl-prod/wl-x", x_ip)? == (1, 1));
    ensure!(http_on(&file, "wl-prod/wl-y", y.ip())? == (2, 2));
    let (interfaces, order) = pcapng::read(&file)?;
    let id = |name: &str| interfaces.iter().position(|i| i.name == name).unwrap();
    let (xi, yi) = (id("wl-prod/wl-x"), id("wl-prod/wl-y"));
    ensure!(interfaces[xi].description.contains(&x_uid));
    // x's statistics come when it leaves, before y's later packets.
    let x_stats = order
        .iter()
        .position(|s| *s == Seen::Stats(xi))
        .context("no statistics for the deleted pod")?;
    ensure!(
        order[x_stats..].contains(&Seen::Packet(yi)),
        "the deleted pod's statistics came only at the end"
    );
    ensure!(interfaces[xi].stats.len() == 1 && interfaces[yi].stats.len() == 1);
    statistics_add_up(&file)?;
    assert_released(&done, &y.veth())?;
    ensure!(!Path::new("/sys/class/net").join(&x_veth).exists());
    Ok(())
}

/// The runtime re-creates a pod's sandbox (same uid, next attempt, new
/// veth): the pod is followed onto it, from the new veth's first packet.
pub fn recreated_sandbox_is_followed() -> Result<()> {
    let spec = web("wl-re", "wl-prod", "wl-re");
    let mut pod = TestPod::run(spec.clone())?;
    let dir = tempdir()?;
    let file = dir.path().join("re.pcapng");
    let capture = start(&["-l", "app=wl-re", "-n", "wl-prod", "-w", path(&file)])?;
    http_get(pod.ip())?;
    let old_veth = pod.veth();
    pod.pod = pod.node.recreate_sandbox(&pod.pod, &spec, 1)?;
    ensure!(pod.veth() != old_veth, "the same veth after re-creation");
    http_get(pod.ip())?;
    http_get(pod.ip())?;
    std::thread::sleep(Duration::from_millis(300));
    let done = stopped(capture)?;
    let (interfaces, _) = pcapng::read(&file)?;
    ensure!(
        !interfaces.is_empty() && interfaces.iter().all(|i| i.name == "wl-prod/wl-re"),
        "{interfaces:?}"
    );
    ensure!(
        interfaces
            .iter()
            .all(|i| i.description.contains(&pod.pod.uid)),
        "{interfaces:?}"
    );
    let requests = tshark::count(
        &file,
        "http.request && frame.interface_name==\"wl-prod/wl-re\"",
    )?;
    ensure!(requests == 3, "{requests} requests of 3:\n{}", done.stderr);
    statistics_add_up(&file)?;
    assert_released(&done, &pod.veth())
}

/// `--wait` for a pod that comes later; `--follow` across its deletion and
/// re-creation (a new uid: a new interface of the same name).
pub fn wait_and_follow() -> Result<()> {
    let dir = tempdir()?;
    let file = dir.path().join("wait.pcap");
    let capture = start(&["wl-late", "-n", "wl-prod", "--wait", "-w", path(&file)])?;
    std::thread::sleep(Duration::from_millis(300));
    let late = TestPod::run(web("wl-late", "wl-prod", "x"))?;
    http_get(late.ip())?;
    let late_ip = late.ip();
    drop(late);
    // One pod, waited for: it ends the capture when deleted, as without --wait.
    let done = capture.wait(Duration::from_secs(10))?;
    ensure!(done.status.success(), "{}", done.stderr);
    ensure!(
        done.stderr.contains("pod wl-prod/wl-late was deleted"),
        "{}",
        done.stderr
    );
    // One pod: classic pcap, as asked.
    ensure!(tshark::count(&file, &format!("http.request && ip.dst=={late_ip}"))? == 1);

    let file = dir.path().join("follow.pcapng");
    let first = TestPod::run(web("wl-sts", "wl-prod", "x"))?;
    let mut capture = start(&["wl-sts", "-n", "wl-prod", "--follow", "-w", path(&file)])?;
    http_get(first.ip())?;
    let (first_ip, first_uid) = (first.ip(), first.pod.uid.clone());
    drop(first);
    std::thread::sleep(Duration::from_millis(800));
    ensure!(capture.running(), "--follow ended with the pod");
    let second = TestPod::run(web("wl-sts", "wl-prod", "x"))?;
    http_get(second.ip())?;
    std::thread::sleep(Duration::from_millis(300));
    let done = stopped(capture)?;
    let (interfaces, _) = pcapng::read(&file)?;
    ensure!(interfaces.len() == 2, "{interfaces:?}");
    ensure!(interfaces.iter().all(|i| i.name == "wl-prod/wl-sts"));
    ensure!(interfaces[0].description.contains(&first_uid));
    ensure!(interfaces[1].description.contains(&second.pod.uid));
    ensure!(
        tshark::count(
            &file,
            &format!("http.request && ip.dst=={first_ip} && frame.interface_id==0")
        )? == 1
    );
    ensure!(
        tshark::count(
            &file,
            &format!(
                "http.request && ip.dst=={} && frame.interface_id==1",
                second.ip()
            )
        )? == 1
    );
    statistics_add_up(&file)?;
    assert_released(&done, &second.veth())
}

/// Rotation with several interfaces: every file describes the pods there
/// are when it starts, and opens in tshark with the right names.
pub fn rotation_restates_interfaces() -> Result<()> {
    let a = TestPod::run(web("wl-r1", "wl-prod", "wl-rot"))?;
    let b = TestPod::run(web("wl-r2", "wl-prod", "wl-rot"))?;
    let dir = tempdir()?;
    let base = dir.path().join("rot.pcapng");
    let capture = start(&[
        "-l",
        "app=wl-rot",
        "-n",
        "wl-prod",
        "-C",
        "1",
        "-w",
        path(&base),
    ])?;
    let sock = std::net::UdpSocket::bind((crate::pods::node()?.gateway(), 0))?;
    let payload = vec![0x5a; 1000];
    for _ in 0..1500 {
        sock.send_to(&payload, (a.ip(), 9999))?;
        sock.send_to(&payload, (b.ip(), 9999))?;
    }
    std::thread::sleep(Duration::from_millis(200));
    stopped(capture)?;
    let mut files: Vec<_> = std::fs::read_dir(dir.path())?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.sort();
    ensure!(files.len() >= 3, "{files:?}");
    let mut sent = BTreeMap::new();
    for f in &files {
        let names = capinfos_names(f)?;
        ensure!(
            names == ["wl-prod/wl-r1", "wl-prod/wl-r2"],
            "{}: {names:?}",
            f.display()
        );
        for (name, pod) in [("wl-prod/wl-r1", &a), ("wl-prod/wl-r2", &b)] {
            let wrong = tshark::count(
                f,
                &format!("ip.dst=={} && frame.interface_name!=\"{name}\"", pod.ip()),
            )?;
            ensure!(wrong == 0, "{}: {wrong} packets misnamed", f.display());
            *sent.entry(name).or_insert(0) += tshark::count(
                f,
                &format!("udp.dstport==9999 && !icmp && frame.interface_name==\"{name}\""),
            )?;
        }
    }
    ensure!(sent.values().all(|n| *n == 1500), "{sent:?}");
    Ok(())
}

/// Text output names each packet's pod, where tcpdump -i any names the
/// interface.
pub fn text_names_the_pod() -> Result<()> {
    let a = TestPod::run(web("wl-t1", "wl-prod", "wl-text"))?;
    let b = TestPod::run(web("wl-t2", "wl-prod", "wl-text"))?;
    let capture = start(&["-l", "app=wl-text", "-n", "wl-prod", "tcp"])?;
    http_get(a.ip())?;
    http_get(b.ip())?;
    std::thread::sleep(Duration::from_millis(300));
    let done = stopped(capture)?;
    let mut seen = BTreeSet::new();
    let lines: Vec<&str> = done.stdout.lines().collect();
    ensure!(lines.len() >= 20, "{} lines:\n{}", lines.len(), done.stdout);
    for line in &lines {
        // "12:00:01.123456 wl-prod/wl-t1 In  IP 10.245.0.1.41000 > 10.245.0.5.8080: ..."
        let mut words = line.split_whitespace();
        let (_, pod, dir) = (words.next(), words.next(), words.next());
        let pod = pod.context("short line")?;
        let ip = if pod == "wl-prod/wl-t1" {
            a.ip()
        } else {
            b.ip()
        };
        ensure!(
            ["wl-prod/wl-t1", "wl-prod/wl-t2"].contains(&pod) && line.contains(&format!("{ip}.")),
            "line names the wrong pod: {line}"
        );
        ensure!(matches!(dir, Some("In" | "Out")), "{line}");
        seen.insert(pod.to_owned());
    }
    ensure!(seen.len() == 2, "{seen:?}");
    Ok(())
}

/// Fifty pods at once: all attached, one request each on its own
/// interface; the time to attach them is printed.
pub fn fifty_pods() -> Result<()> {
    let mut pods = Vec::new();
    for i in 0..50 {
        pods.push(TestPod::run(web(
            &format!("wl-f{i:02}"),
            "wl-fifty",
            "wl-fifty",
        ))?);
    }
    let dir = tempdir()?;
    let file = dir.path().join("fifty.pcapng");
    let t0 = Instant::now();
    let capture = start(&[
        "-v",
        "-l",
        "app=wl-fifty",
        "-n",
        "wl-fifty",
        "-w",
        path(&file),
    ])?;
    let started = t0.elapsed();
    for pod in &pods {
        http_get(pod.ip())?;
    }
    let done = stopped(capture)?;
    eprintln!("    50 pods: podtrace started, loaded and attached to all in {started:.2?}");
    for line in done
        .stderr
        .lines()
        .filter(|l| l.contains(" in ") && l.contains("ms"))
    {
        eprintln!("    {line}");
    }
    let names = capinfos_names(&file)?;
    ensure!(names.len() == 50, "{} interfaces", names.len());
    for pod in &pods {
        let name = format!("wl-fifty/{}", pod.pod.name);
        ensure!(http_on(&file, &name, pod.ip())? == (1, 1), "{name}");
    }
    statistics_add_up(&file)?;
    assert_released(&done, &pods[0].veth())
}

/// Selections that cannot be: one line, exit 2.
pub fn invalid_selections() -> Result<()> {
    let ep = endpoint()?;
    let cases: [(&[&str], &str); 4] = [
        (
            &["-l", "app in (web"],
            "invalid label selector \"app in (web\": '(' without ')'",
        ),
        (
            &["-l", "app=nothing-here", "-n", "wl-prod"],
            "no pod on this node matches: pods matching app=nothing-here in namespace wl-prod",
        ),
        (
            &["-l", "app=x", "-w", "x.pcap"],
            "x.pcap is classic pcap, which cannot say which pod",
        ),
        (&["-A", "-n", "wl-prod"], "cannot be used with"),
    ];
    for (args, want) in cases {
        let mut all = vec!["capture", "--runtime-endpoint", &ep];
        all.extend_from_slice(args);
        expect_error(&run::run(&all)?, 2, want)?;
    }
    Ok(())
}

/// Two podtraces on overlapping selections: each file is exact.
pub fn overlapping_captures_are_both_exact() -> Result<()> {
    let a = TestPod::run(web("wl-o1", "wl-prod", "wl-ov"))?;
    let b = TestPod::run(web("wl-o2", "wl-prod", "wl-ov"))?;
    let dir = tempdir()?;
    let (all, one) = (dir.path().join("all.pcapng"), dir.path().join("one.pcapng"));
    let first = start(&["-l", "app=wl-ov", "-n", "wl-prod", "-w", path(&all)])?;
    let second = start(&["wl-o1", "-n", "wl-prod", "-w", path(&one)])?;
    for _ in 0..5 {
        http_get(a.ip())?;
        http_get(b.ip())?;
    }
    let second = stopped(second)?;
    http_get(a.ip())?;
    let first = stopped(first)?;
    ensure!(http_on(&all, "wl-prod/wl-o1", a.ip())? == (6, 6));
    ensure!(http_on(&all, "wl-prod/wl-o2", b.ip())? == (5, 5));
    ensure!(tshark::count(&one, &format!("http.request && ip.dst=={}", a.ip()))? == 5);
    ensure!(tshark::count(&one, &format!("ip.addr=={}", b.ip()))? == 0);
    statistics_add_up(&all)?;
    for done in [&first, &second] {
        assert_released(done, &a.veth())?;
    }
    Ok(())
}
