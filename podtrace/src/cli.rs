//! Command-line arguments (clap) and their resolution into a capture plan.

use std::{path::PathBuf, time::Duration};

use anyhow::{bail, Result};
use clap::{Args, Parser, Subcommand};
use podtrace::{
    attach::{Hooks, TcMode},
    capture::CapturePlan,
    link::{self, HostLink},
    sink::Output,
};

/// tcpdump's default snapshot length.
pub const DEFAULT_SNAPLEN: u32 = 262_144;

#[derive(Debug, Parser)]
#[command(
    name = "podtrace",
    version,
    about = "Capture a Kubernetes pod's packets from the node, without entering the pod"
)]
pub struct Cli {
    /// More diagnostics on stderr.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Capture packets of a pod (or a host interface, process or network namespace).
    Capture(CaptureArgs),
}

#[derive(Debug, Args)]
pub struct CaptureArgs {
    /// The pod (NAME or NAMESPACE/NAME). Without -i/--pid/--netns the first
    /// word is the pod; any further words are a filter expression.
    #[arg(value_name = "POD", trailing_var_arg = true)]
    pub words: Vec<String>,

    /// Namespace of the pod (default: "default", like kubectl).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,

    /// Capture a host interface instead of a pod.
    #[arg(short = 'i', long = "interface", value_name = "IFACE", conflicts_with_all = ["pid", "netns"])]
    pub iface: Option<String>,

    /// Capture the pod/namespace of this process: the host end of its eth0.
    #[arg(long, value_name = "PID", conflicts_with = "netns")]
    pub pid: Option<u32>,

    /// Capture the namespace at PATH (/run/netns/NAME, /proc/PID/ns/net): the
    /// host end of its veth.
    #[arg(long, value_name = "PATH")]
    pub netns: Option<PathBuf>,

    /// Write packets to FILE as pcap (nanosecond timestamps); "-" for stdout.
    /// Without -w, one text line per packet is printed.
    #[arg(short = 'w', value_name = "FILE")]
    pub write: Option<String>,

    /// Bytes of each packet to keep; 0 means 262144, like tcpdump.
    #[arg(short = 's', long = "snapshot-length", value_name = "SNAPLEN", default_value_t = DEFAULT_SNAPLEN)]
    pub snaplen: u32,

    /// Stop after COUNT packets.
    #[arg(short = 'c', value_name = "COUNT", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,

    /// Stop after SECS seconds.
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    pub duration: Option<Duration>,

    /// Kernel ring buffer size in KiB (rounded up to a power of two).
    #[arg(short = 'B', long = "buffer-size", value_name = "KiB", default_value_t = 8192,
          value_parser = clap::value_parser!(u32).range(64..=1_048_576))]
    pub buffer_kib: u32,

    /// How to attach the TC programs.
    #[arg(long, value_enum, default_value_t = TcMode::Auto)]
    pub tc_mode: TcMode,
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !(secs > 0.0 && secs.is_finite()) {
        return Err(format!("{s:?} must be a positive number of seconds"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Ring size in bytes for `-B KiB`: a power of two, at least one page.
pub fn ring_bytes(kib: u32) -> u32 {
    (kib.saturating_mul(1024)).next_power_of_two().max(4096)
}

impl CaptureArgs {
    /// Resolves the arguments into a plan: targets found, output chosen.
    pub fn plan(&self) -> Result<CapturePlan> {
        let (link, label, filter) = self.target()?;
        if !filter.is_empty() {
            bail!(
                "filter expressions are not supported yet: {:?}",
                filter.join(" ")
            );
        }
        Ok(CapturePlan {
            links: vec![(link, label)],
            output: match self.write.as_deref() {
                None => Output::Text,
                Some("-") => Output::Stdout,
                Some(path) => Output::File(path.into()),
            },
            snaplen: if self.snaplen == 0 {
                DEFAULT_SNAPLEN
            } else {
                self.snaplen
            },
            count: self.count,
            duration: self.duration,
            ring_bytes: ring_bytes(self.buffer_kib),
            tc_mode: self.tc_mode,
            hooks: Hooks::BOTH,
        })
    }

    /// The host link, a label for messages, and the filter words.
    fn target(&self) -> Result<(HostLink, String, Vec<String>)> {
        let words = self.words.clone();
        if let Some(iface) = &self.iface {
            return Ok((link::by_name(iface)?, format!("interface {iface}"), words));
        }
        if let Some(pid) = self.pid {
            return Ok((link::by_pid(pid)?, format!("process {pid}"), words));
        }
        if let Some(netns) = &self.netns {
            let label = format!("network namespace {}", netns.display());
            return Ok((link::by_netns(netns)?, label, words));
        }
        let Some(pod) = words.first() else {
            bail!(TargetMissing);
        };
        bail!("cannot capture pod {pod:?}: pod targets are not supported yet; use -i, --pid or --netns")
    }
}

/// No pod and no -i/--pid/--netns.
#[derive(Debug, thiserror::Error)]
#[error("what should podtrace capture? name a pod, or use -i IFACE, --pid PID or --netns PATH")]
pub struct TargetMissing;

/// Context for the "listening on" line.
pub fn describe_start(plan: &CapturePlan, mode: Option<TcMode>) -> String {
    let links: Vec<String> = plan
        .links
        .iter()
        .map(|(l, label)| {
            if l.peer_is_target {
                format!("{} ({label})", l.name)
            } else {
                l.name.clone()
            }
        })
        .collect();
    format!(
        "capturing on {}, link-type EN10MB (Ethernet), snapshot length {} bytes{}",
        links.join(", "),
        plan.snaplen,
        match mode {
            Some(TcMode::Clsact) => ", attached via clsact",
            _ => "",
        }
    )
}

/// Parses the process arguments.
pub fn parse() -> Cli {
    Cli::parse()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capture(args: &[&str]) -> Result<CaptureArgs, clap::Error> {
        let cli = Cli::try_parse_from(["podtrace", "capture"].iter().chain(args))?;
        match cli.command {
            Command::Capture(c) => Ok(c),
        }
    }

    #[test]
    fn tcpdump_style_options() {
        let c = capture(&[
            "-i",
            "veth1",
            "-w",
            "x.pcap",
            "-s",
            "96",
            "-c",
            "10",
            "--duration",
            "1.5",
        ])
        .unwrap();
        assert_eq!(c.iface.as_deref(), Some("veth1"));
        assert_eq!(c.write.as_deref(), Some("x.pcap"));
        assert_eq!(c.snaplen, 96);
        assert_eq!(c.count, Some(10));
        assert_eq!(c.duration, Some(Duration::from_millis(1500)));
        assert_eq!(c.tc_mode, TcMode::Auto);
    }

    #[test]
    fn pod_then_filter_words() {
        let c = capture(&["web", "-n", "prod", "tcp", "port", "80"]).unwrap();
        assert_eq!(c.namespace.as_deref(), Some("prod"));
        assert_eq!(c.words, ["web", "tcp", "port", "80"]);
    }

    #[test]
    fn defaults_and_bad_values() {
        let c = capture(&["--pid", "1"]).unwrap();
        assert_eq!(c.snaplen, DEFAULT_SNAPLEN);
        assert!(capture(&["--pid", "x"]).is_err());
        assert!(capture(&["-c", "0", "web"]).is_err());
        assert!(capture(&["--duration", "-1", "web"]).is_err());
        assert!(capture(&["-i", "a", "--pid", "1"]).is_err());
    }

    #[test]
    fn ring_size_is_a_power_of_two() {
        assert_eq!(ring_bytes(8192), 8 << 20);
        assert_eq!(ring_bytes(100), 128 * 1024);
        assert_eq!(ring_bytes(1), 4096);
    }
}
