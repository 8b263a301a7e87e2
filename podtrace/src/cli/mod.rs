//! Command-line arguments (clap) and their resolution into a capture plan.

mod agent;
mod pods;

use std::{
    io::{self, IsTerminal},
    path::PathBuf,
    time::Duration,
};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use podtrace::{
    attach::{DirectionFilter, FilterEngine, TcMode},
    capture::{CapturePlan, Target},
    filter::{self, Filter},
    link,
    sink::{Format, Output, Rotation, SinkOptions, TextStyle},
    target::{self, PodSelector, Sandbox},
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
    #[command(
        override_usage = "podtrace capture [OPTIONS] POD [EXPRESSION]...\n       \
        podtrace capture [OPTIONS] {-i IFACE|--pid PID|--netns PATH|--uid UID|--container ID} [EXPRESSION]..."
    )]
    Capture(Box<CaptureArgs>),
    /// List the pods on this node with their IP and host veth.
    Pods(PodsArgs),
    /// Check that captures can work here, then wait for SIGTERM (a DaemonSet's process;
    /// captures run in its container with kubectl exec).
    Agent(agent::AgentArgs),
}

#[derive(Debug, Args)]
pub struct PodsArgs {
    /// Only pods of this namespace (default: "default", like kubectl).
    #[arg(short = 'n', long, conflicts_with = "all_namespaces")]
    pub namespace: Option<String>,

    /// Pods of every namespace.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,

    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

#[derive(Debug, Args)]
pub struct RuntimeArgs {
    /// CRI socket (unix:///run/containerd/containerd.sock); also from
    /// CONTAINER_RUNTIME_ENDPOINT. Default: probe containerd, CRI-O, cri-dockerd.
    #[arg(long, value_name = "ENDPOINT")]
    pub runtime_endpoint: Option<String>,
}

#[derive(Debug, Args)]
pub struct CaptureArgs {
    /// The pod (NAME or NAMESPACE/NAME), then a tcpdump filter expression.
    /// Without -i/--pid/--netns/--uid/--container the first word is the pod;
    /// the other words (all of them with those options) are the filter,
    /// joined with spaces as tcpdump does. Options may come between words.
    #[arg(value_name = "WORDS")]
    pub words: Vec<String>,

    /// Read the filter expression from FILE (`#` starts a comment), like
    /// tcpdump -F; no expression may then follow on the command line.
    #[arg(short = 'F', value_name = "FILE")]
    pub filter_file: Option<PathBuf>,

    /// Print the compiled filter program and exit, like tcpdump -d
    /// (-dd: as a C array, -ddd: as decimal numbers). Attaches nothing and
    /// does not look the target up: the link type is always Ethernet.
    #[arg(short = 'd', action = clap::ArgAction::Count)]
    pub dump: u8,

    /// Namespace of the pod (default: "default", like kubectl).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,

    /// The pod with this uid.
    #[arg(long, value_name = "UID", conflicts_with_all = ["container", "iface", "pid", "netns"])]
    pub uid: Option<String>,

    /// The pod of this container (id or unique prefix, as `crictl ps` shows).
    #[arg(long, value_name = "ID", conflicts_with_all = ["iface", "pid", "netns"])]
    pub container: Option<String>,

    #[command(flatten)]
    pub runtime: RuntimeArgs,

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

    /// Write packets to FILE (pcap, or pcapng for *.pcapng); "-" for stdout.
    /// Without -w, one text line per packet is printed.
    #[arg(short = 'w', value_name = "FILE")]
    pub write: Option<String>,

    /// File format for -w (default: from the file name; pcap for stdout).
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub format: Option<Format>,

    /// Only packets going in to / out of the target (its point of view).
    #[arg(short = 'Q', long = "direction", value_enum, default_value_t = DirectionFilter::InOut)]
    pub direction: DirectionFilter,

    /// Start a new file once the current one is larger than MB million bytes (like tcpdump).
    #[arg(short = 'C', value_name = "MB", requires = "write", value_parser = clap::value_parser!(u64).range(1..))]
    pub file_size: Option<u64>,

    /// Start a new file every SECS seconds; -w may hold strftime(3) conversions.
    #[arg(short = 'G', value_name = "SECS", requires = "write", value_parser = clap::value_parser!(u64).range(1..))]
    pub rotate_seconds: Option<u64>,

    /// With -C: keep a ring of N files. With -G: stop after N files.
    #[arg(short = 'W', value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub file_count: Option<u32>,

    /// Shorter text lines (addresses, ports, protocol, length).
    #[arg(short = 'q')]
    pub quiet: bool,

    /// Bytes of each packet to keep; 0 means 262144, like tcpdump.
    #[arg(short = 's', long = "snapshot-length", value_name = "SNAPLEN", default_value_t = DEFAULT_SNAPLEN)]
    pub snaplen: u32,

    /// Stop after COUNT packets.
    #[arg(short = 'c', value_name = "COUNT", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,

    /// Stop after SECS seconds.
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    pub duration: Option<Duration>,

    /// Hand each packet to the output as soon as the kernel has it (a
    /// wakeup per packet) instead of draining the kernel's ring every 30 ms
    /// (every 240 ms while idle). On by default for text on a terminal, as
    /// with tcpdump; costs CPU at high packet rates.
    #[arg(long = "immediate-mode")]
    pub immediate: bool,

    /// Kernel ring buffer size in KiB (rounded up to a power of two).
    #[arg(short = 'B', long = "buffer-size", value_name = "KiB", default_value_t = 8192,
          value_parser = clap::value_parser!(u32).range(64..=1_048_576))]
    pub buffer_kib: u32,

    /// How to attach the TC programs.
    #[arg(long, value_enum, default_value_t = TcMode::Auto)]
    pub tc_mode: TcMode,

    /// How the kernel runs the filter: translated to native eBPF (fast), or
    /// interpreted (any filter libpcap compiles); auto tries native first.
    #[arg(long, value_enum, default_value_t = FilterEngine::Auto)]
    pub filter_engine: FilterEngine,
}

/// Whether packets are handed over one by one: when asked, or when text
/// goes to a terminal, where someone watches them arrive (tcpdump's rule).
fn immediate_mode(asked: bool, output: &Output, stdout_is_terminal: bool) -> bool {
    asked || (*output == Output::Text && stdout_is_terminal)
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
    /// Resolves the arguments into a plan: targets found, filter compiled,
    /// output chosen. Nothing is loaded or attached yet.
    pub async fn plan(&self, verbose: bool) -> Result<CapturePlan> {
        let expression = filter::expression(self.filter_words(), self.filter_file.as_deref())?;
        let target = self.target().await?;
        let filter = match expression {
            Some(expr) => Some(self.compile(&expr)?),
            None => None,
        };
        let mut sink = self.sink_options(verbose);
        sink.interfaces = vec![target.interface.clone()];
        let immediate = immediate_mode(self.immediate, &sink.output, io::stdout().is_terminal());
        if immediate {
            podtrace::verbose(format_args!("immediate mode: a wakeup per packet"));
        }
        Ok(CapturePlan {
            targets: vec![target],
            sink,
            count: self.count,
            duration: self.duration,
            ring_bytes: ring_bytes(self.buffer_kib),
            tc_mode: self.tc_mode,
            filter_engine: self.filter_engine,
            direction: self.direction,
            filter,
            immediate,
        })
    }
    fn sink_options(&self, verbose: bool) -> SinkOptions {
        let output = match self.write.as_deref() {
            None => Output::Text,
            Some("-") => Output::Stdout,
            Some(path) => Output::File(path.into()),
        };
        let format = self.format.unwrap_or_else(|| match &self.write {
            Some(path) if path != "-" => Format::for_path(path),
            _ => Format::Pcap,
        });
        SinkOptions {
            output,
            format,
            snaplen: self.snaplen(),
            interfaces: Vec::new(),
            rotation: Rotation {
                size: self.file_size.map(|mb| mb * 1_000_000),
                interval: self.rotate_seconds.map(Duration::from_secs),
                max_files: self.file_count,
            },
            text: match (self.quiet, verbose) {
                (true, _) => TextStyle::Quiet,
                (false, true) => TextStyle::Verbose,
                (false, false) => TextStyle::Normal,
            },
        }
    }

    /// `-d`: the compiled filter as tcpdump -d prints it. Needs no target
    /// and no privileges; a pod word is checked but not looked up.
    pub fn dump_filter(&self) -> Result<String> {
        if let Some(pod) = self.pod_word() {
            PodSelector::parse(pod, self.namespace.as_deref())?;
        }
        let expression = filter::expression(self.filter_words(), self.filter_file.as_deref())?;
        // No expression: tcpdump -d prints the accept-all program.
        let filter = self.compile(expression.as_deref().unwrap_or(""))?;
        Ok(filter.dump(self.dump))
    }

    fn snaplen(&self) -> u32 {
        if self.snaplen == 0 {
            DEFAULT_SNAPLEN
        } else {
            self.snaplen
        }
    }

    fn compile(&self, expression: &str) -> Result<Filter> {
        let filter = filter::compile(expression, self.snaplen())?;
        podtrace::verbose(format_args!(
            "filter compiled to {} classic-BPF instructions in {:.3} s",
            filter.insns.len(),
            filter.compile_time.as_secs_f64()
        ));
        Ok(filter)
    }

    /// Whether the target comes from an option rather than the first word.
    fn target_by_option(&self) -> bool {
        self.iface.is_some()
            || self.pid.is_some()
            || self.netns.is_some()
            || self.uid.is_some()
            || self.container.is_some()
    }

    /// The word naming the pod, if the first word names it.
    fn pod_word(&self) -> Option<&str> {
        if self.target_by_option() {
            None
        } else {
            self.words.first().map(String::as_str)
        }
    }

    /// The words of the filter expression.
    fn filter_words(&self) -> &[String] {
        match self.pod_word() {
            Some(_) => &self.words[1..],
            None => &self.words,
        }
    }

    async fn target(&self) -> Result<Target> {
        if let Some(iface) = &self.iface {
            let link = link::by_name(iface)?;
            return Ok(Target::new(link, format!("interface {iface}")));
        }
        if let Some(pid) = self.pid {
            return Ok(Target::new(link::by_pid(pid)?, format!("process {pid}")));
        }
        if let Some(netns) = &self.netns {
            let label = format!("network namespace {}", netns.display());
            return Ok(Target::new(link::by_netns(netns)?, label));
        }
        let selector = match (&self.uid, &self.container, self.pod_word()) {
            (Some(uid), _, _) => PodSelector::Uid(uid.clone()),
            (None, Some(id), _) => PodSelector::Container(id.clone()),
            (None, None, None) => bail!(TargetMissing),
            (None, None, Some(pod)) => PodSelector::parse(pod, self.namespace.as_deref())?,
        };
        let (mut client, endpoint) =
            target::connect(self.runtime.runtime_endpoint.as_deref()).await?;
        podtrace::verbose(format_args!("container runtime: {endpoint}"));
        let sandbox = target::resolve(&mut client, &selector).await?;
        pod_target(&sandbox)
    }
}

/// The host veth of a resolved pod sandbox.
fn pod_target(sandbox: &Sandbox) -> Result<Target> {
    let pod = sandbox.pod_name();
    let pid = sandbox
        .pid
        .with_context(|| format!("the runtime reports no sandbox pid for pod {pod}"))?;
    let link = link::by_pid(pid)?;
    podtrace::verbose(format_args!(
        "pod {pod}: sandbox {} pid {pid}, host veth {} (ifindex {})",
        &sandbox.id[..sandbox.id.len().min(13)],
        link.name,
        link.ifindex
    ));
    let mut target = Target::new(link, format!("pod {pod}"));
    target.gone = format!("pod {pod} was deleted");
    target.interface.name = pod.clone();
    target.interface.description = format!(
        "pod {pod} (uid {}) via host veth {} (ifindex {})",
        sandbox.uid, target.link.name, target.link.ifindex
    );
    Ok(target)
}

/// No pod and no -i/--pid/--netns.
#[derive(Debug, thiserror::Error)]
#[error("what should podtrace capture? name a pod, or use -i IFACE, --pid PID or --netns PATH")]
pub struct TargetMissing;

/// Context for the "listening on" line.
pub fn describe_start(plan: &CapturePlan, mode: Option<TcMode>) -> String {
    let links: Vec<String> = plan
        .targets
        .iter()
        .map(|t| {
            if t.link.peer_is_target {
                format!("{} ({})", t.link.name, t.label)
            } else {
                t.link.name.clone()
            }
        })
        .collect();
    format!(
        "capturing on {}, link-type EN10MB (Ethernet), snapshot length {} bytes{}",
        links.join(", "),
        plan.sink.snaplen,
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
mod tests;
