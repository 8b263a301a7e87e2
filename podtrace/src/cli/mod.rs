//! Command-line arguments (clap) and their resolution into a capture plan.

mod agent;
mod plan;
mod pods;

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};
use podtrace::{
    attach::{DirectionFilter, FilterEngine, TcMode},
    session::Fallback,
    sink::{Format, Output},
};

pub use self::plan::{PcapCannotName, Plan, StartLine};

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
    /// Capture packets of pods (or a host interface, process or network namespace).
    #[command(
        override_usage = "podtrace capture [OPTIONS] POD[,POD...] [EXPRESSION]...\n       \
        podtrace capture [OPTIONS] {-l SELECTOR|-A} [EXPRESSION]...\n       \
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

    /// Only pods whose labels match, as kubectl -l takes it (`app=web`,
    /// `env in (prod,staging)`, `!canary`, commas meaning and).
    #[arg(short = 'l', long = "selector", value_name = "SELECTOR")]
    pub selector: Option<String>,

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
    /// The pod (NAME or NAMESPACE/NAME; several as one comma-separated
    /// word), then a tcpdump filter expression. Without -l, -A, -i, --pid,
    /// --netns, --uid or --container the first word is the pod; the other
    /// words (all of them with those options) are the filter, joined with
    /// spaces as tcpdump does. Options may come between words.
    #[arg(value_name = "WORDS")]
    pub words: Vec<String>,

    /// Every pod whose labels match, as kubectl -l takes it (`app=web`,
    /// `env in (prod,staging)`, `!canary`, commas meaning and), in -n's
    /// namespace or with -A in all; pods that start matching join the
    /// capture, pods that go leave it.
    #[arg(short = 'l', long = "selector", value_name = "SELECTOR",
          conflicts_with_all = ["uid", "container", "iface", "pid", "netns"])]
    pub selector: Option<String>,

    /// Pods of every namespace (with -l), or every pod on the node.
    #[arg(short = 'A', long, conflicts_with_all = ["namespace", "uid", "container", "iface", "pid", "netns"])]
    pub all_namespaces: bool,

    /// Wait for pods that do not exist yet (or a selector that matches
    /// nothing yet) instead of failing.
    #[arg(long, conflicts_with_all = ["iface", "pid", "netns"])]
    pub wait: bool,

    /// Keep a capture of one named pod going when the pod is deleted: a pod
    /// of the same name that comes back (a StatefulSet's) joins as a new
    /// interface.
    #[arg(long, conflicts_with_all = ["selector", "all_namespaces", "uid", "container", "iface", "pid", "netns"])]
    pub follow: bool,

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
    /// Captures that can hold several pods write pcapng (classic pcap
    /// cannot say which pod a packet belongs to). Without -w, one text line
    /// per packet is printed.
    #[arg(short = 'w', value_name = "FILE")]
    pub write: Option<PathBuf>,

    /// File format for -w (default: from the file name, pcapng for several
    /// pods; pcap for stdout).
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub format: Option<Format>,

    /// Only packets going in to / out of the target (its point of view).
    #[arg(short = 'Q', long = "direction", value_enum, default_value_t = DirectionFilter::InOut)]
    pub direction: DirectionFilter,

    /// Start a new file once the current one is larger than MB million bytes (like tcpdump).
    #[arg(short = 'C', value_name = "MB", requires = "write", value_parser = clap::value_parser!(u64).range(1..=MAX_FILE_MB))]
    pub file_size: Option<u64>,

    /// Start a new file every SECS seconds; -w may hold strftime(3) conversions.
    #[arg(short = 'G', value_name = "SECS", requires = "write", value_parser = clap::value_parser!(u64).range(1..=MAX_SECS))]
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

    /// Packets a CNI delivers straight into a pod's eth0, past its host veth
    /// (Cilium's bpf_redirect_peer): podtrace always detects them; auto
    /// captures them at the pod's eth0 (a TCX hook inside the pod's network
    /// namespace) as soon as any are seen, always takes what pods receive
    /// there from the start, never only reports them.
    #[arg(long, value_enum, value_name = "WHEN", default_value_t = Fallback::Auto)]
    pub redirect_fallback: Fallback,
}

/// Whether packets are handed over one by one: when asked, or when text
/// goes to a terminal, where someone watches them arrive (tcpdump's rule).
fn immediate_mode(asked: bool, output: &Output, stdout_is_terminal: bool) -> bool {
    asked || (*output == Output::Text && stdout_is_terminal)
}

/// The longest `--duration` or `-G` taken: ten years. Bounded so that
/// every deadline and period computed from it fits.
pub const MAX_SECS: u64 = 10 * 365 * 86_400;

/// Largest `-C`, in millions of bytes (a petabyte): the byte count fits.
pub const MAX_FILE_MB: u64 = 1_000_000_000;

fn parse_secs(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !(secs > 0.0 && secs.is_finite()) {
        return Err(format!("{s:?} must be a positive number of seconds"));
    }
    if secs > MAX_SECS as f64 {
        return Err(format!(
            "{s:?} is longer than {MAX_SECS} seconds (ten years)"
        ));
    }
    match Duration::try_from_secs_f64(secs) {
        Ok(d) if !d.is_zero() => Ok(d),
        _ => Err(format!("{s:?} is shorter than a nanosecond")),
    }
}

/// Ring size in bytes for `-B KiB`: a power of two, at least one page.
pub fn ring_bytes(kib: u32) -> u32 {
    (kib.saturating_mul(1024)).next_power_of_two().max(4096)
}

/// Arguments that cannot go together, beyond what clap checks.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(&'static str);

/// No pod and no -i/--pid/--netns.
#[derive(Debug, thiserror::Error)]
#[error("what should podtrace capture? name a pod, or use -l SELECTOR, -A, -i IFACE, --pid PID or --netns PATH")]
pub struct TargetMissing;

/// Parses the process arguments. A usage error is one line on stderr and
/// exit 2: clap's message without its hints and usage block.
pub fn parse() -> Cli {
    match Cli::try_parse() {
        Ok(cli) => cli,
        // --help and --version print to stdout and exit 0.
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            eprintln!("podtrace: {}", usage_error_line(&e.render().to_string()));
            std::process::exit(2);
        }
    }
}

/// The first paragraph of a clap error on one line, without "error: ".
fn usage_error_line(rendered: &str) -> String {
    let first: Vec<&str> = rendered
        .lines()
        .map(str::trim)
        .skip_while(|l| l.is_empty())
        .take_while(|l| !l.is_empty())
        .collect();
    let line = first.join(" ");
    line.strip_prefix("error: ").unwrap_or(&line).to_owned()
}

#[cfg(test)]
mod tests;
