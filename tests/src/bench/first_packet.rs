//! Table 4: from command start to the first packet in the file, podtrace
//! against tcpdump run inside the namespace with nsenter.

use std::{
    net::UdpSocket,
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, Result};

use super::{
    procs::{check_interrupted, Guarded},
    report::{self, Report},
    rotated, Bench,
};

/// Time-to-first-packet contenders.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FirstPacket {
    Podtrace,
    NsenterTcpdump,
    NsenterTcpdumpImmediate,
}

impl FirstPacket {
    pub const ALL: [Self; 3] = [
        Self::Podtrace,
        Self::NsenterTcpdump,
        Self::NsenterTcpdumpImmediate,
    ];

    fn argv(self, podtrace: &Path, pid: u32, file: &Path) -> Vec<String> {
        let file = file.display().to_string();
        let pid = pid.to_string();
        let tcpdump = |extra: &[&str]| {
            let mut v: Vec<String> = ["nsenter", "-t", &pid, "-n", "tcpdump", "-i", "eth0", "-U"]
                .map(String::from)
                .to_vec();
            v.extend(extra.iter().map(|s| s.to_string()));
            v.extend(["-w".into(), file.clone()]);
            v
        };
        match self {
            Self::Podtrace => vec![
                podtrace.display().to_string(),
                "capture".into(),
                "--pid".into(),
                pid.clone(),
                "-w".into(),
                file.clone(),
            ],
            Self::NsenterTcpdump => tcpdump(&[]),
            Self::NsenterTcpdumpImmediate => tcpdump(&["--immediate-mode"]),
        }
    }
}

impl Bench<'_> {
    /// From command start to the first packet in the file, with a packet
    /// sent into the namespace every 2 ms.
    pub(super) fn first_packet(&mut self, report: &mut Report) -> Result<()> {
        let pid = self.net.spawn_sleeper()?;
        let stop = AtomicBool::new(false);
        let sock = UdpSocket::bind((self.net.host_ip, 0))?;
        let to = (self.net.ns_ip, 9);
        std::thread::scope(|scope| -> Result<()> {
            scope.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let _ = sock.send_to(b"podtrace-bench", to);
                    std::thread::sleep(Duration::from_millis(2));
                }
            });
            let result = (|| {
                for run in 0..self.plan.runs {
                    for &who in rotated(&FirstPacket::ALL, run) {
                        let took = self.time_to_first_packet(who, pid)?;
                        eprintln!(
                            "bench:   {:<40} {:7.1} ms",
                            report::first_packet_label(who),
                            took.as_secs_f64() * 1e3
                        );
                        report.first_packet.entry(who).or_default().push(took);
                    }
                }
                Ok(())
            })();
            stop.store(true, Ordering::Relaxed);
            result
        })
    }

    fn time_to_first_packet(&mut self, who: FirstPacket, pid: u32) -> Result<Duration> {
        let file = self.scratch.0.join("first.pcap");
        let _ = std::fs::remove_file(&file);
        let argv = who.argv(&self.opts.podtrace, pid, &file);
        self.note_command(report::first_packet_label(who), &argv);
        let mut cmd = std::process::Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        // pcap file header (24 bytes) + one record header (16) + data.
        let one_packet = 24 + 16 + 14;
        let start = Instant::now();
        let mut child = Guarded::spawn(&mut cmd)?;
        let took = loop {
            if std::fs::metadata(&file).is_ok_and(|m| m.len() >= one_packet) {
                break start.elapsed();
            }
            if let Some(status) = child.0.try_wait()? {
                bail!(
                    "{} exited ({status}) before writing a packet",
                    argv.join(" ")
                );
            }
            if start.elapsed() > Duration::from_secs(30) {
                bail!("no packet from {} in 30 s", argv.join(" "));
            }
            check_interrupted()?;
            std::thread::sleep(Duration::from_micros(500));
        };
        child.signal(libc::SIGINT);
        child.wait(Duration::from_secs(20))?;
        let _ = std::fs::remove_file(&file);
        Ok(took)
    }
}
