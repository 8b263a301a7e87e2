//! iperf3: the servers in the namespace, the clients on the host, and what
//! their JSON says about the traffic.

use std::{
    io::Read,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

use super::procs::{pause, Guarded};

/// iperf3 servers in the namespace, one per port, for the whole benchmark.
pub struct Servers {
    children: Vec<Guarded>,
    pub ports: Vec<u16>,
}

impl Servers {
    pub fn start(netns: &str, ip: &str, first_port: u16, n: u16) -> Result<Self> {
        let mut children = Vec::new();
        let ports: Vec<u16> = (first_port..first_port + n).collect();
        for port in &ports {
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", netns, "iperf3", "-s", "-B", ip, "-p"])
                .arg(port.to_string())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            children.push(Guarded::spawn(&mut cmd)?);
        }
        let servers = Self { children, ports };
        servers.wait_listening(netns)?;
        Ok(servers)
    }

    /// The server process listening on the `n`th port (`ip netns exec`
    /// execs iperf3, so the pid is iperf3's).
    pub fn pid(&self, n: usize) -> u32 {
        self.children[n].pid()
    }

    fn wait_listening(&self, netns: &str) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let ss = crate::sh(&["ip", "netns", "exec", netns, "ss", "-Htln"])?;
            if self.ports.iter().all(|p| ss.contains(&format!(":{p} "))) {
                return Ok(());
            }
            for child in &mut self.children.iter() {
                ensure!(
                    std::fs::metadata(format!("/proc/{}", child.pid())).is_ok(),
                    "iperf3 server {} died",
                    child.pid()
                );
            }
            ensure!(Instant::now() < deadline, "iperf3 servers did not listen");
            pause(Duration::from_millis(20))?;
        }
    }
}

/// One iperf3 client run, as its JSON reports it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Traffic {
    /// UDP datagrams the clients sent.
    pub sent: u64,
    /// UDP datagrams the servers received (sent minus what they counted lost).
    pub received: u64,
    pub seconds: f64,
    /// Receiver's goodput (TCP).
    pub bits_per_second: f64,
}

impl Traffic {
    pub fn sent_pps(&self) -> f64 {
        self.sent as f64 / self.seconds.max(1e-9)
    }

    pub fn received_pps(&self) -> f64 {
        self.received as f64 / self.seconds.max(1e-9)
    }
}

/// What the clients send.
#[derive(Debug, Clone, Copy)]
pub enum Load {
    Tcp,
    /// Datagrams of `len` bytes at `pps` per client in total (0: as fast as
    /// the client can).
    Udp {
        len: u32,
        pps: u64,
    },
}

/// The iperf3 client command line for one server port.
pub fn client_argv(server_ip: &str, port: u16, secs: u32, load: Load, clients: u16) -> Vec<String> {
    let mut argv: Vec<String> = [
        "iperf3",
        "-c",
        server_ip,
        "-p",
        &port.to_string(),
        "-t",
        &secs.to_string(),
        "-J",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if let Load::Udp { len, pps } = load {
        let bits = pps * u64::from(len) * 8 / u64::from(clients);
        argv.extend([
            "-u".into(),
            "-l".into(),
            len.to_string(),
            "-b".into(),
            bits.to_string(),
        ]);
    }
    argv
}

/// Runs one client per port at once and sums what they report.
pub fn run_clients(argvs: &[Vec<String>], secs: u32) -> Result<Traffic> {
    let mut children = Vec::new();
    for argv in argvs {
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = Guarded::spawn(&mut cmd)?;
        let mut out = child.0.stdout.take().unwrap();
        let reader = thread::spawn(move || {
            let mut s = String::new();
            let _ = out.read_to_string(&mut s);
            s
        });
        children.push((child, reader));
    }
    let mut total = Traffic::default();
    for (mut child, reader) in children {
        let status = child.wait(Duration::from_secs(u64::from(secs) + 30))?;
        let json = reader.join().unwrap_or_default();
        let v: Value = serde_json::from_str(&json)
            .with_context(|| format!("iperf3 printed no JSON ({status}): {json}"))?;
        if let Some(err) = v.get("error") {
            bail!("iperf3: {err}");
        }
        ensure!(status.success(), "iperf3 failed ({status})");
        let end = &v["end"];
        let num = |v: &Value| v.as_f64().unwrap_or(0.0);
        let sent = &end["sum_sent"];
        let received = &end["sum_received"];
        total.sent += num(&sent["packets"]) as u64;
        total.received += (num(&received["packets"]) - num(&received["lost_packets"])) as u64;
        total.seconds = total.seconds.max(num(&sent["seconds"]));
        total.bits_per_second += num(&received["bits_per_second"]);
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn udp_rate_is_split_between_clients() {
        let argv = client_argv(
            "10.0.0.2",
            5201,
            5,
            Load::Udp {
                len: 64,
                pps: 100_000,
            },
            2,
        );
        let b = argv.iter().position(|a| a == "-b").unwrap();
        assert_eq!(argv[b + 1], (50_000 * 64 * 8).to_string());
        let argv = client_argv("10.0.0.2", 5201, 5, Load::Udp { len: 64, pps: 0 }, 1);
        assert!(argv.ends_with(&["-b".to_string(), "0".to_string()]));
    }
}
