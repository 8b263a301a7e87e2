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
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Traffic {
    /// UDP datagrams the clients sent (0 for TCP, which counts no packets).
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
    for ((mut child, reader), argv) in children.into_iter().zip(argvs) {
        let status = child.wait(Duration::from_secs(u64::from(secs) + 30))?;
        let json = reader.join().unwrap_or_default();
        let v: Value = serde_json::from_str(&json)
            .with_context(|| format!("iperf3 printed no JSON ({status}): {json}"))?;
        if let Some(err) = v.get("error") {
            bail!("iperf3: {err}");
        }
        ensure!(status.success(), "iperf3 failed ({status})");
        let udp = argv.iter().any(|a| a == "-u");
        let one = client_traffic(&v, udp).with_context(|| format!("iperf3 printed: {json}"))?;
        total.sent += one.sent;
        total.received += one.received;
        total.seconds = total.seconds.max(one.seconds);
        total.bits_per_second += one.bits_per_second;
    }
    Ok(total)
}

/// What one client's JSON reports (`udp`: datagram counts too). A figure
/// missing from the JSON is an error, never a zero.
fn client_traffic(v: &Value, udp: bool) -> Result<Traffic> {
    let num = |path: &str| {
        v.pointer(path)
            .and_then(Value::as_f64)
            .with_context(|| format!("iperf3's JSON has no number at {path}"))
    };
    let (sent, received) = if udp {
        let received = num("/end/sum_received/packets")? - num("/end/sum_received/lost_packets")?;
        (num("/end/sum_sent/packets")? as u64, received as u64)
    } else {
        (0, 0)
    };
    Ok(Traffic {
        sent,
        received,
        seconds: num("/end/sum_sent/seconds")?,
        bits_per_second: num("/end/sum_received/bits_per_second")?,
    })
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

    /// The `end` of iperf3 3.12's JSON, UDP and TCP, as it printed them here.
    fn udp_end() -> Value {
        serde_json::json!({"end": {
            "sum_sent": {"seconds": 1.00008, "bits_per_second": 999344.05, "packets": 1952, "lost_packets": 0},
            "sum_received": {"seconds": 1.000262, "bits_per_second": 999162.22, "packets": 1952, "lost_packets": 2},
        }})
    }

    fn tcp_end() -> Value {
        serde_json::json!({"end": {
            "sum_sent": {"seconds": 1.001658, "bytes": 1166409728u64, "bits_per_second": 9315832174.25, "retransmits": 2},
            "sum_received": {"seconds": 1.006991, "bytes": 1165099008u64, "bits_per_second": 9256082789.22},
        }})
    }

    #[test]
    fn client_figures_come_from_the_json() {
        let udp = client_traffic(&udp_end(), true).unwrap();
        assert_eq!((udp.sent, udp.received), (1952, 1950));
        assert_eq!(udp.seconds, 1.00008);
        assert_eq!(udp.bits_per_second, 999162.22);
        let tcp = client_traffic(&tcp_end(), false).unwrap();
        assert_eq!((tcp.sent, tcp.received), (0, 0));
        assert_eq!(tcp.bits_per_second, 9256082789.22);
    }

    #[test]
    fn a_missing_figure_is_an_error_not_zero() {
        for (path, udp) in [
            ("/end/sum_received/lost_packets", true),
            ("/end/sum_received/packets", true),
            ("/end/sum_sent/packets", true),
            ("/end/sum_sent/seconds", true),
            ("/end/sum_received/bits_per_second", false),
            ("/end/sum_sent/seconds", false),
        ] {
            let mut v = if udp { udp_end() } else { tcp_end() };
            let (parent, key) = path.rsplit_once('/').unwrap();
            v.pointer_mut(parent)
                .unwrap()
                .as_object_mut()
                .unwrap()
                .remove(key);
            let err = client_traffic(&v, udp).unwrap_err();
            assert!(err.to_string().contains(path), "{path}: {err}");
        }
        // A TCP run's JSON has no packet counts: as UDP it is refused.
        assert!(client_traffic(&tcp_end(), true).is_err());
    }
}
