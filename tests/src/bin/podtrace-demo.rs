//! `cargo xtask demo`: a throwaway node with one pod serving HTTP, captured
//! by podtrace while traffic flows; then a workload capture (`-l`) of that
//! pod and two more, one of which starts during the capture. Prints what
//! was captured, then removes everything it made (the captures stay, for
//! Wireshark).

use std::{path::Path, process::ExitCode, time::Duration};

use anyhow::{ensure, Context, Result};
use podtrace_tests::{
    http,
    node::{Node, PodSpec, HTTP_PORT},
    run::{self, Capture},
    sh,
};

const POD: &str = "demo-web";
const OUTPUT: &str = "demo.pcap";
const WORKLOAD: &str = "demo-workload.pcapng";
/// Packets listed in full; the rest is summarised.
const SHOWN: usize = 40;

fn main() -> ExitCode {
    let node = match Node::start() {
        Ok(node) => node,
        Err(e) => {
            eprintln!("demo: cannot start the throwaway node: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let result = demo(&node);
    let teardown = node.shutdown();
    match (result, teardown) {
        (Ok(()), Ok(())) => ExitCode::SUCCESS,
        (Err(e), _) | (Ok(()), Err(e)) => {
            eprintln!("demo: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn demo(node: &Node) -> Result<()> {
    let pod = node.run_pod(PodSpec::new(POD).label("app", "demo"))?;
    let ip = pod.ip()?;
    let endpoint = node.endpoint();

    println!("\n$ podtrace pods --runtime-endpoint {endpoint}");
    let pods = run::run(&["pods", "--runtime-endpoint", &endpoint])?;
    ensure!(
        pods.status.success(),
        "podtrace pods failed: {}",
        pods.stderr
    );
    print!("{}", pods.stdout);

    println!("\n$ podtrace capture {POD} --runtime-endpoint {endpoint} -w {OUTPUT}");
    let capture = Capture::start(&[
        "capture",
        POD,
        "--runtime-endpoint",
        &endpoint,
        "-w",
        OUTPUT,
    ])?;
    println!("  (meanwhile: 5 HTTP requests from the node to the pod, and the pod pings the node 3 times)");
    for _ in 0..5 {
        http::get(ip, HTTP_PORT)?;
    }
    let gateway = node.gateway().to_string();
    pod.exec_ok(&["busybox", "ping", "-c", "3", "-i", "0.2", &gateway])?;
    std::thread::sleep(Duration::from_millis(100));
    let done = capture.stop(libc::SIGINT)?;
    ensure!(done.status.success(), "podtrace failed: {}", done.stderr);
    for line in done.stderr.lines() {
        println!("  {line}");
    }

    let path = Path::new(OUTPUT)
        .canonicalize()
        .context("the capture file is missing")?;
    println!("\n$ tshark -r {OUTPUT}");
    let listing = sh(&["tshark", "-r", OUTPUT])?;
    let lines: Vec<&str> = listing.lines().collect();
    for line in lines.iter().take(SHOWN) {
        println!("{line}");
    }
    if lines.len() > SHOWN {
        println!("  ... {} more", lines.len() - SHOWN);
    }
    println!("\n$ tshark -r {OUTPUT} -q -z conv,ip");
    print!("{}", sh(&["tshark", "-r", OUTPUT, "-q", "-z", "conv,ip"])?);
    let workload = workload(node, &endpoint)?;
    node.remove_pod(&pod)?;
    println!(
        "\nThe captures are in {} and {} (open them with Wireshark). The throwaway node is gone.",
        path.display(),
        workload.display()
    );
    Ok(())
}

/// Every pod labelled `app=demo`, in one pcapng: one more pod before the
/// capture, one that starts during it.
fn workload(node: &Node, endpoint: &str) -> Result<std::path::PathBuf> {
    let api = node.run_pod(PodSpec::new("demo-api").label("app", "demo"))?;
    let other = node.run_pod(PodSpec::new("demo-other").label("app", "other"))?;
    println!("\n$ podtrace pods -l app=demo --runtime-endpoint {endpoint}");
    let pods = run::run(&["pods", "-l", "app=demo", "--runtime-endpoint", endpoint])?;
    ensure!(
        pods.status.success(),
        "podtrace pods failed: {}",
        pods.stderr
    );
    print!("{}", pods.stdout);

    println!("\n$ podtrace capture -l app=demo --runtime-endpoint {endpoint} -w {WORKLOAD}");
    let capture = Capture::start(&[
        "capture",
        "-l",
        "app=demo",
        "--runtime-endpoint",
        endpoint,
        "-w",
        WORKLOAD,
    ])?;
    println!("  (meanwhile: pod demo-late (app=demo) starts; demo-api, demo-late and demo-other (not selected) get 2 HTTP requests each; demo-web, none)");
    let late = node.run_pod(PodSpec::new("demo-late").label("app", "demo"))?;
    for ip in [api.ip()?, late.ip()?, other.ip()?] {
        for _ in 0..2 {
            http::get(ip, HTTP_PORT)?;
        }
    }
    std::thread::sleep(Duration::from_millis(100));
    let done = capture.stop(libc::SIGINT)?;
    ensure!(done.status.success(), "podtrace failed: {}", done.stderr);
    for line in done.stderr.lines() {
        println!("  {line}");
    }
    println!("\n$ capinfos {WORKLOAD} | grep -E 'Interface|Name|Description'");
    let info = sh(&["capinfos", WORKLOAD])?;
    for line in info.lines().filter(|l| {
        l.starts_with("Interface #") || l.contains("Name =") || l.contains("Description =")
    }) {
        println!("{line}");
    }
    println!(
        "\n$ tshark -r {WORKLOAD} -Y http -T fields -e frame.interface_name -e frame.packet_flags_direction -e ip.src -e ip.dst -e _ws.col.Info"
    );
    print!(
        "{}",
        sh(&[
            "tshark",
            "-r",
            WORKLOAD,
            "-Y",
            "http",
            "-T",
            "fields",
            "-e",
            "frame.interface_name",
            "-e",
            "frame.packet_flags_direction",
            "-e",
            "ip.src",
            "-e",
            "ip.dst",
            "-e",
            "_ws.col.Info",
        ])?
    );
    for pod in [&api, &late, &other] {
        node.remove_pod(pod)?;
    }
    Path::new(WORKLOAD)
        .canonicalize()
        .context("the workload capture file is missing")
}
