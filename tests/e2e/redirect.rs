//! Packets a CNI delivers straight into a pod's eth0, past its host veth
//! (issue 18). The test node's CNI is a plain bridge, so Cilium's shortcut
//! is made here for real: a TC program at the ingress of pod A's host veth
//! calls `bpf_redirect_peer` for IPv4 packets to pod B, which then reach
//! B's eth0 without crossing B's host veth. podtrace must say so, count
//! them exactly, and capture them at B's eth0 — each packet once.

use std::{
    collections::{BTreeSet, HashMap},
    fs::File,
    net::Ipv4Addr,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{ensure, Context, Result};
use aya::{
    programs::{SchedClassifier, TcAttachType},
    Ebpf,
};
use podtrace_tests::{
    node::{PodSpec, HTTP_PORT},
    pcapng,
    run::{self, Capture, Finished},
    sh, tshark,
};

use crate::{
    capture::tempdir,
    pods::{endpoint, http_get, TestPod},
};

/// Cilium's shortcut from `from` to `to`, attached (TCX, after what is
/// there) while it lives.
struct Redirect {
    _ebpf: Ebpf,
}

impl Redirect {
    fn install(from: &TestPod, to: &TestPod, dir: &Path) -> Result<Self> {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/redirect_peer.c");
        let object = dir.join("redirect_peer.o");
        let peer = to.pod.host_veth.as_ref().context("no host veth")?;
        sh(&[
            "clang",
            "-O2",
            "-g",
            "-target",
            "bpf",
            "-I/usr/include/x86_64-linux-gnu",
            &format!("-DPEER_IFINDEX={}", peer.ifindex),
            &format!("-DPEER_IP={:#x}", u32::from(to.ip())),
            "-c",
            src.to_str().unwrap(),
            "-o",
            object.to_str().unwrap(),
        ])?;
        let mut ebpf = Ebpf::load_file(&object).context("loading the redirect program")?;
        let prog: &mut SchedClassifier = ebpf
            .program_mut("redirect_peer")
            .context("no program")?
            .try_into()?;
        prog.load()?;
        prog.attach(&from.veth(), TcAttachType::Ingress)?;
        Ok(Self { _ebpf: ebpf })
    }
}

fn pod_pair(prefix: &str) -> Result<(TestPod, TestPod)> {
    Ok((
        TestPod::run(PodSpec::new(&format!("{prefix}-a")))?,
        TestPod::run(PodSpec::new(&format!("{prefix}-b")))?,
    ))
}

/// One HTTP GET from pod `from` to pod `to`.
fn get(from: &TestPod, to: &TestPod) -> Result<()> {
    let url = format!("http://{}:{HTTP_PORT}/", to.ip());
    let page = from.pod.exec_ok(&["busybox", "wget", "-qO-", &url])?;
    ensure!(page.contains("podtrace test pod"), "{page:?}");
    Ok(())
}

fn start(args: &[&str]) -> Result<Capture> {
    let ep = endpoint()?;
    let mut all = vec!["capture", "--runtime-endpoint", &ep];
    all.extend_from_slice(args);
    Capture::start(&all)
}

fn stopped(capture: Capture) -> Result<Finished> {
    let done = capture.stop(libc::SIGINT)?;
    ensure!(done.status.success(), "{}", done.stderr);
    Ok(done)
}

/// The IPv4 packets from `src` to `dst` on interface `iface` going `dir`
/// (1 in, 2 out), in file order, each as its IP id and TCP/ICMP identity.
fn packets(
    file: &Path,
    iface: &str,
    dir: u32,
    src: Ipv4Addr,
    dst: Ipv4Addr,
) -> Result<Vec<String>> {
    let filter = format!(
        "frame.interface_name==\"{iface}\" && frame.packet_flags_direction=={dir} && ip.src=={src} && ip.dst=={dst}"
    );
    let rows = tshark::fields(
        file,
        &filter,
        &[
            "ip.id",
            "tcp.seq_raw",
            "tcp.ack_raw",
            "tcp.flags",
            "tcp.len",
            "icmp.type",
            "icmp.seq",
        ],
    )?;
    Ok(rows.into_iter().map(|r| r.join("/")).collect())
}

/// Each packet at most once.
fn once_each(what: &str, list: &[String]) -> Result<()> {
    let unique: BTreeSet<&String> = list.iter().collect();
    ensure!(
        unique.len() == list.len(),
        "{what}: {} packets, {} distinct: some written twice",
        list.len(),
        unique.len()
    );
    Ok(())
}

fn warnings(done: &Finished) -> Vec<&str> {
    done.stderr
        .lines()
        .filter(|l| l.starts_with("podtrace: warning:"))
        .collect()
}

/// The statistics of interface `name`: (last osdrop, comments).
fn isb(file: &Path, name: &str) -> Result<(Option<u64>, Vec<String>)> {
    let (interfaces, _) = pcapng::read(file)?;
    let iface = interfaces
        .iter()
        .find(|i| i.name == name)
        .with_context(|| format!("no interface {name}"))?;
    Ok((
        iface.osdrop.last().copied().flatten(),
        iface.comments.clone(),
    ))
}

/// podtrace left nothing loaded (the per-pod stubs included) and no hook
/// on the pods' eth0.
fn nothing_left(since: u32, pods: &[&TestPod]) -> Result<()> {
    let orphans = run::orphan_programs(since)?;
    ensure!(orphans.is_empty(), "programs left loaded: {orphans:?}");
    for pod in pods {
        let n = eth0_tcx_programs(pod.pod.pid)?;
        ensure!(n == 0, "{n} TCX programs left on {}'s eth0", pod.pod.name);
    }
    Ok(())
}

/// TCX programs at the ingress of eth0 in the namespace of process `pid`.
fn eth0_tcx_programs(pid: u32) -> Result<usize> {
    let netns = File::open(format!("/proc/{pid}/ns/net"))?;
    std::thread::scope(|s| {
        s.spawn(|| -> Result<usize> {
            // SAFETY: setns on an open namespace file, for this thread only,
            // which ends right after.
            ensure!(
                unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } == 0,
                "setns: {}",
                std::io::Error::last_os_error()
            );
            let (_, programs) = SchedClassifier::query_tcx("eth0", TcAttachType::Ingress)?;
            Ok(programs.len())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("thread panicked"))?
    })
}

/// Detection only (`--redirect-fallback never`): one warning naming the
/// cause, and the summary, the closing note and B's statistics count
/// exactly the packets A sent B (all of which skipped B's veth); A, whose
/// packets all cross its veth, raises nothing. `pods -v` then says which
/// hooks a capture uses for each, and why.
pub fn detected_and_counted() -> Result<()> {
    let (a, b) = pod_pair("rd1")?;
    let dir = tempdir()?;
    let _redirect = Redirect::install(&a, &b, dir.path())?;
    let file = dir.path().join("never.pcapng");
    let capture = start(&[
        "rd1-a,rd1-b",
        "--redirect-fallback",
        "never",
        "-w",
        file.to_str().unwrap(),
    ])?;
    for _ in 0..3 {
        get(&a, &b)?;
    }
    // The host's own traffic to B crosses its veth: no alarm, and counted.
    http_get(b.ip())?;
    std::thread::sleep(Duration::from_millis(600));
    let done = stopped(capture)?;

    let sent = packets(&file, "default/rd1-a", 2, a.ip(), b.ip())?;
    ensure!(sent.len() >= 15, "A sent B only {} packets", sent.len());
    let at_b = packets(&file, "default/rd1-b", 1, a.ip(), b.ip())?;
    ensure!(
        at_b.is_empty(),
        "B's veth saw {} of A's packets",
        at_b.len()
    );
    let replies = packets(&file, "default/rd1-b", 2, b.ip(), a.ip())?;
    ensure!(!replies.is_empty(), "B's replies are missing");
    let warned = warnings(&done);
    ensure!(
        warned.len() == 1
            && warned[0].starts_with("podtrace: warning: pod default/rd1-b: ")
            && warned[0].contains("reached its eth0 without crossing host veth")
            && warned[0].contains("bpf_redirect_peer")
            && warned[0].ends_with("they are not captured (--redirect-fallback never)"),
        "warnings: {warned:?}"
    );
    let missed = done.missed()?;
    ensure!(
        missed == sent.len() as u64,
        "summary: {missed} missed, A sent B {}\n{}",
        sent.len(),
        done.stderr
    );
    let note = format!(
        "podtrace: pod default/rd1-b: {missed} packet(s) reached the pod's eth0 without crossing host veth {}",
        b.veth()
    );
    ensure!(
        done.stderr.contains(&note),
        "no {note:?} in\n{}",
        done.stderr
    );
    let (osdrop, comments) = isb(&file, "default/rd1-b")?;
    ensure!(osdrop == Some(missed), "B's isb_osdrop {osdrop:?}");
    ensure!(
        comments.iter().any(|c| c.contains("bpf_redirect_peer")),
        "B's statistics comments: {comments:?}"
    );
    ensure!(isb(&file, "default/rd1-a")?.0 == Some(0), "A's isb_osdrop");

    let pods = run::run(&["pods", "-v", "--runtime-endpoint", &endpoint()?])?;
    ensure!(pods.status.success(), "{}", pods.stderr);
    let row = |name: &str| -> Result<&str> {
        pods.stdout
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(name))
            .with_context(|| format!("no row for {name}:\n{}", pods.stdout))
    };
    ensure!(
        pods.stdout
            .lines()
            .next()
            .is_some_and(|h| h.contains("HOOKS") && h.contains("WHY")),
        "{}",
        pods.stdout
    );
    let row_b = row("rd1-b")?;
    ensure!(
        row_b.contains("veth ingress, eth0 ingress") && row_b.contains("skipped the veth"),
        "{row_b}"
    );
    let row_a = row("rd1-a")?;
    ensure!(
        row_a.contains("veth ingress+egress") && row_a.contains("crossed the veth"),
        "{row_a}"
    );
    Ok(())
}

/// `--redirect-fallback always`: B's eth0 is hooked from the start; every
/// packet A sent B is on B's interface, inbound, once, in A's order, and
/// every reply of B's reaches A once; the HTTP exchanges are all there.
pub fn fallback_captures_every_packet_once() -> Result<()> {
    let (a, b) = pod_pair("rd2")?;
    let dir = tempdir()?;
    let _redirect = Redirect::install(&a, &b, dir.path())?;
    let since = run::last_prog_id()?;
    let file = dir.path().join("always.pcapng");
    let capture = start(&[
        "rd2-a,rd2-b",
        "-v",
        "--redirect-fallback",
        "always",
        "-w",
        file.to_str().unwrap(),
    ])?;
    for _ in 0..3 {
        get(&a, &b)?;
    }
    http_get(b.ip())?;
    let done = stopped(capture)?;
    ensure!(warnings(&done).is_empty(), "{}", done.stderr);
    ensure!(done.missed()? == 0, "{}", done.stderr);
    ensure!(
        done.stderr.contains(&format!(
            "pod default/rd2-b: hooks: host veth {}'s ingress (what it sends), the ingress of its eth0 inside the pod",
            b.veth()
        )),
        "-v does not say where B's packets are taken:\n{}",
        done.stderr
    );
    same_packets_both_ends(&file, ("default/rd2-a", a.ip()), ("default/rd2-b", b.ip()))?;
    let (requests, responses) = http_on(&file, "default/rd2-b", b.ip())?;
    ensure!(
        (requests, responses) == (4, 4),
        "B's interface has {requests} requests, {responses} responses"
    );
    nothing_left(since, &[&a, &b])
}

/// What `x` sent `y` is on `y`'s interface as inbound, once each, in the
/// same order, and the other way round.
fn same_packets_both_ends(file: &Path, x: (&str, Ipv4Addr), y: (&str, Ipv4Addr)) -> Result<()> {
    for (from, to) in [(x, y), (y, x)] {
        let sent = packets(file, from.0, 2, from.1, to.1)?;
        let got = packets(file, to.0, 1, from.1, to.1)?;
        once_each(&format!("{} to {}", from.0, to.0), &got)?;
        ensure!(!sent.is_empty(), "{} sent {} nothing", from.0, to.0);
        ensure!(
            sent == got,
            "{} sent {} packets to {}, which has {} of them inbound:\nsent {sent:?}\ngot {got:?}",
            from.0,
            sent.len(),
            to.0,
            got.len()
        );
    }
    Ok(())
}

/// HTTP requests to `ip` inbound on interface `name`, responses outbound.
/// By their bytes: the file holds each A-B exchange on both pods'
/// interfaces, and tshark's TCP analysis takes the second copy for a
/// retransmission, which it does not dissect as HTTP.
fn http_on(file: &Path, name: &str, ip: Ipv4Addr) -> Result<(usize, usize)> {
    let requests = tshark::count(
        file,
        &format!("tcp.payload contains \"GET / HTTP/1.\" && ip.dst=={ip} && frame.interface_name==\"{name}\" && frame.packet_flags_direction==1"),
    )?;
    let responses = tshark::count(
        file,
        &format!("tcp.payload contains \" 200 OK\" && ip.src=={ip} && frame.interface_name==\"{name}\" && frame.packet_flags_direction==2"),
    )?;
    Ok((requests, responses))
}

/// `busybox ping` from the host, running until it has sent `count`.
struct Pinger {
    child: Child,
}

impl Pinger {
    fn start(to: Ipv4Addr, count: u32) -> Result<Self> {
        let child = Command::new("busybox")
            .args([
                "ping",
                "-q",
                "-c",
                &count.to_string(),
                "-i",
                "0.01",
                "-W",
                "5",
            ])
            .arg(to.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting busybox ping")?;
        Ok(Self { child })
    }

    /// Waits for it; returns how many echo requests it sent.
    fn finish(mut self) -> Result<u32> {
        let mut text = String::new();
        if let Some(mut out) = self.child.stdout.take() {
            std::io::Read::read_to_string(&mut out, &mut text)?;
        }
        self.child.wait()?;
        text.split_whitespace()
            .zip(text.split_whitespace().skip(1))
            .find(|(_, w)| *w == "packets")
            .and_then(|(n, _)| n.parse().ok())
            .with_context(|| format!("ping said {text:?}"))
    }
}

impl Drop for Pinger {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `--redirect-fallback auto` while packets flow: the host pings B every
/// 10 ms through B's veth the whole time; A's redirected requests make
/// podtrace warn and move B, and A with it, to their eth0 hooks. Every
/// ping is on B's interface once with no gap; what A sent B is on B's
/// interface once each, and what is not is exactly what the summary calls
/// missed, all of it from before the move; B's replies reach A once each.
pub fn auto_moves_to_eth0_while_traffic_flows() -> Result<()> {
    let (a, b) = pod_pair("rd3")?;
    let dir = tempdir()?;
    let _redirect = Redirect::install(&a, &b, dir.path())?;
    let since = run::last_prog_id()?;
    let file = dir.path().join("auto.pcapng");
    let capture = start(&["rd3-a,rd3-b", "-v", "-w", file.to_str().unwrap()])?;
    let pinger = Pinger::start(b.ip(), 300)?;
    std::thread::sleep(Duration::from_millis(300));
    get(&a, &b)?;
    // Detection (every 250 ms), arming and settling (200 ms each).
    std::thread::sleep(Duration::from_millis(1200));
    get(&a, &b)?;
    get(&a, &b)?;
    let pings = pinger.finish()?;
    let done = stopped(capture)?;

    let warned = warnings(&done);
    ensure!(
        warned.len() == 1
            && warned[0].starts_with("podtrace: warning: pod default/rd3-b: ")
            && warned[0].ends_with("podtrace captures them at the pod's eth0 from now on"),
        "warnings: {warned:?}"
    );
    for pod in ["rd3-a", "rd3-b"] {
        for said in ["eth0 hooked", "moved to its eth0 hook"] {
            ensure!(
                done.stderr.contains(&format!("pod default/{pod}: {said}")),
                "-v does not say {said:?} for {pod}:\n{}",
                done.stderr
            );
        }
    }
    // The host's pings crossed B's veth, before, during and after the move.
    let host = b.node.gateway();
    let seqs: Vec<u32> = tshark::fields(
        &file,
        &format!("frame.interface_name==\"default/rd3-b\" && frame.packet_flags_direction==1 && icmp.type==8 && ip.src=={host}"),
        &["icmp.seq"],
    )?
    .iter()
    .map(|r| r[0].parse().context("icmp.seq"))
    .collect::<Result<_>>()?;
    ensure!(
        seqs == (0..pings).collect::<Vec<_>>(),
        "{pings} pings sent, B's interface has {} (each once, in order: {})",
        seqs.len(),
        seqs.windows(2).all(|w| w[0] < w[1])
    );
    // What A sent B: missing only before the move, exactly as many as the
    // summary says.
    let sent = packets(&file, "default/rd3-a", 2, a.ip(), b.ip())?;
    let got = packets(&file, "default/rd3-b", 1, a.ip(), b.ip())?;
    once_each("A to B", &got)?;
    let first = sent
        .iter()
        .position(|p| got.first() == Some(p))
        .context("none of A's packets reached B's interface")?;
    ensure!(
        sent[first..] == got[..],
        "after the move B's interface lacks some of A's packets:\nsent {:?}\ngot {got:?}",
        &sent[first..]
    );
    let missed = done.missed()?;
    ensure!(
        missed == first as u64 && missed > 0,
        "summary says {missed} missed; the first {first} of A's {} packets are not on B's interface",
        sent.len()
    );
    ensure!(
        isb(&file, "default/rd3-b")?.0 == Some(missed),
        "B's isb_osdrop"
    );
    // B's replies to A crossed A's veth, then A's eth0: A moved too.
    let replies = packets(&file, "default/rd3-b", 2, b.ip(), a.ip())?;
    let at_a = packets(&file, "default/rd3-a", 1, b.ip(), a.ip())?;
    once_each("B to A", &at_a)?;
    ensure!(
        replies == at_a,
        "B's replies to A:\nsent {replies:?}\nat A {at_a:?}"
    );
    nothing_left(since, &[&a, &b])
}

/// No redirect: the default (auto) and always both write every packet
/// once, raise nothing, and report nothing missed.
pub fn no_redirect_no_warning_no_duplicates() -> Result<()> {
    let (a, b) = pod_pair("rd4")?;
    let dir = tempdir()?;
    let mut counts = HashMap::new();
    for mode in ["auto", "always"] {
        let file: PathBuf = dir.path().join(format!("{mode}.pcapng"));
        let capture = start(&[
            "rd4-a,rd4-b",
            "--redirect-fallback",
            mode,
            "-w",
            file.to_str().unwrap(),
        ])?;
        for _ in 0..3 {
            get(&a, &b)?;
        }
        http_get(b.ip())?;
        b.pod.exec_ok(&[
            "busybox",
            "ping",
            "-c",
            "3",
            "-i",
            "0.1",
            &a.ip().to_string(),
        ])?;
        std::thread::sleep(Duration::from_millis(600));
        let done = stopped(capture)?;
        ensure!(warnings(&done).is_empty(), "{mode}: {}", done.stderr);
        ensure!(done.missed()? == 0, "{mode}: {}", done.stderr);
        same_packets_both_ends(&file, ("default/rd4-a", a.ip()), ("default/rd4-b", b.ip()))
            .with_context(|| mode.to_string())?;
        for pod in ["default/rd4-a", "default/rd4-b"] {
            ensure!(isb(&file, pod)?.0 == Some(0), "{mode}: {pod}'s isb_osdrop");
        }
        counts.insert(mode, done.summary()?.0);
    }
    ensure!(counts["auto"] > 0 && counts["always"] > 0, "{counts:?}");
    Ok(())
}
