//! From arguments to a plan: which targets the capture starts with and how
//! it follows them, the compiled filter, the output. Nothing is loaded or
//! attached here; every mistake the user can make is found here.

use std::{
    io::{self, IsTerminal},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use podtrace::{
    filter::{self, Filter},
    link,
    session::{CapturePlan, Target},
    sink::{Format, Output, Rotation, SinkOptions, TextStyle},
    target::{self, LabelSelector, PodQuery, PodSelector, RuntimeClient, DEFAULT_NAMESPACE},
    watch::{self, Patience, RuntimePods, Start},
};

use super::{immediate_mode, ring_bytes, CaptureArgs, TargetMissing, UsageError, DEFAULT_SNAPLEN};

/// Most links one capture of a selection holds at once (pods and veths
/// not yet claimed); each has kernel counters of its own.
const MAX_LINKS: u32 = 512;

/// A resolved capture.
pub struct Plan {
    pub capture: CapturePlan,
    pub start: Start<RuntimePods<RuntimeClient>>,
    /// What is captured, for the start line ("pods matching app=web in …").
    pub selection: String,
}

/// What the first word or the options name.
enum Wanted {
    Links(Vec<(Target, String)>),
    /// One pod, as named: it must exist now unless waited for.
    One(PodSelector),
    Many(PodQuery),
}

impl CaptureArgs {
    /// Resolves the arguments into a plan.
    pub async fn plan(&self, verbose: bool) -> Result<Plan> {
        // `--duration` counts from here: a long compilation uses it up.
        let started = Instant::now();
        let expression = filter::expression(self.filter_words(), self.filter_file.as_deref())?;
        let wanted = self.wanted()?;
        let many = match &wanted {
            Wanted::Links(_) => false,
            Wanted::One(_) => self.follow,
            Wanted::Many(_) => true,
        };
        // Before the runtime is asked: a wrong output format is the user's
        // to fix whatever the pods.
        let sink = self.sink_options(verbose, many)?;
        let (start, selection, max_links) = match wanted {
            Wanted::Links(targets) => {
                let n = targets.len() as u32;
                let names = targets
                    .iter()
                    .map(|(t, _)| t.label.clone())
                    .collect::<Vec<_>>()
                    .join(", ");
                (watch::start_links(targets)?, names, n)
            }
            Wanted::One(selector) => {
                let (start, selection) = self.start_one(selector).await?;
                let max = if self.wait || self.follow {
                    MAX_LINKS
                } else {
                    1
                };
                (start, selection, max)
            }
            Wanted::Many(query) => {
                let listing = Instant::now();
                let client = self.connect().await?;
                let selection = query.to_string();
                let patience = Patience {
                    wait: self.wait,
                    follow: false,
                };
                let start =
                    watch::start_pods(RuntimePods::new(client), query, false, patience).await?;
                podtrace::verbose(format_args!(
                    "{} pod(s) found and resolved in {:.1} ms",
                    start.initial.len(),
                    listing.elapsed().as_secs_f64() * 1e3
                ));
                (start, selection, MAX_LINKS)
            }
        };
        let filter = match expression {
            Some(expr) => {
                let deadline = self.duration.and_then(|d| started.checked_add(d));
                Some(self.compile(&expr, deadline)?)
            }
            None => None,
        };
        let immediate = immediate_mode(self.immediate, &sink.output, io::stdout().is_terminal());
        if immediate {
            podtrace::verbose(format_args!("immediate mode: a wakeup per packet"));
        }
        Ok(Plan {
            capture: CapturePlan {
                sink,
                count: self.count,
                duration: self.duration.map(|d| d.saturating_sub(started.elapsed())),
                ring_bytes: ring_bytes(self.buffer_kib),
                tc_mode: self.tc_mode,
                filter_engine: self.filter_engine,
                direction: self.direction,
                filter,
                immediate,
                max_links,
                fallback: self.redirect_fallback,
                pods: self.iface.is_none(),
            },
            start,
            selection,
        })
    }

    async fn connect(&self) -> Result<RuntimeClient> {
        let (client, endpoint) = target::connect(self.runtime.runtime_endpoint.as_deref()).await?;
        podtrace::verbose(format_args!("container runtime: {endpoint}"));
        Ok(client)
    }

    /// One pod named on the command line: today's errors when it is not
    /// there (unless waited for), then followed by the watcher.
    async fn start_one(
        &self,
        selector: PodSelector,
    ) -> Result<(Start<RuntimePods<RuntimeClient>>, String)> {
        let mut client = self.connect().await?;
        let query = match &selector {
            PodSelector::Name { namespace, name } => {
                PodQuery::Names(vec![(namespace.clone(), name.clone())])
            }
            PodSelector::Uid(uid) => PodQuery::Uid(uid.clone()),
            PodSelector::Container(_) => PodQuery::Uid(String::new()),
        };
        let query = match target::resolve(&mut client, &selector).await {
            Ok(sandbox) => {
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
                match query {
                    // Followed by name: the next pod of that name may join.
                    PodQuery::Names(names) if self.follow => PodQuery::Names(names),
                    _ => PodQuery::Uid(sandbox.uid.clone()),
                }
            }
            Err(e) if self.wait && waitable(&e) => match query {
                PodQuery::Uid(uid) if uid.is_empty() => return Err(e.into()),
                query => query,
            },
            Err(e) => return Err(e.into()),
        };
        let selection = match &selector {
            PodSelector::Name { namespace, name } => format!("pod {namespace}/{name}"),
            other => other.to_string(),
        };
        let patience = Patience {
            wait: self.wait,
            follow: self.follow,
        };
        let start = watch::start_pods(RuntimePods::new(client), query, true, patience).await?;
        Ok((start, selection))
    }

    /// The targets as the first word and the options name them.
    fn wanted(&self) -> Result<Wanted> {
        if let Some(iface) = &self.iface {
            let link = link::by_name(iface)?;
            let target = Target::link(link, format!("interface {iface}"));
            let gone = format!("interface {iface} was removed");
            return Ok(Wanted::Links(vec![(target, gone)]));
        }
        if let Some(pid) = self.pid {
            let link = link::by_pid(pid)?;
            return Ok(Wanted::Links(vec![link_target(
                link,
                format!("process {pid}"),
                format!("/proc/{pid}/ns/net").into(),
            )]));
        }
        if let Some(netns) = &self.netns {
            let label = format!("network namespace {}", netns.display());
            return Ok(Wanted::Links(vec![link_target(
                link::by_netns(netns)?,
                label,
                netns.clone(),
            )]));
        }
        if let Some(uid) = &self.uid {
            return Ok(Wanted::One(PodSelector::Uid(uid.clone())));
        }
        if let Some(id) = &self.container {
            return Ok(Wanted::One(PodSelector::Container(id.clone())));
        }
        if self.selector.is_some() || self.all_namespaces {
            let selector = self
                .selector
                .as_deref()
                .map(LabelSelector::parse)
                .transpose()?;
            let namespace = match self.all_namespaces {
                true => None,
                false => Some(self.namespace.clone().unwrap_or(DEFAULT_NAMESPACE.into())),
            };
            return Ok(Wanted::Many(PodQuery::Labels {
                selector,
                namespace,
            }));
        }
        let Some(word) = self.pod_word() else {
            bail!(TargetMissing);
        };
        let mut names = Vec::new();
        for part in word.split(',') {
            match PodSelector::parse(part, self.namespace.as_deref())? {
                PodSelector::Name { namespace, name } => names.push((namespace, name)),
                _ => unreachable!("a word parses to a name"),
            }
        }
        names.dedup();
        if let [(namespace, name)] = &names[..] {
            return Ok(Wanted::One(PodSelector::Name {
                namespace: namespace.clone(),
                name: name.clone(),
            }));
        }
        if self.follow {
            bail!(UsageError(
                "--follow is for one pod named on the command line; several pods are followed anyway"
            ));
        }
        Ok(Wanted::Many(PodQuery::Names(names)))
    }

    pub(super) fn sink_options(&self, verbose: bool, many: bool) -> Result<SinkOptions> {
        let output = match self.write.as_deref() {
            None => Output::Text,
            Some(p) if p.as_os_str() == "-" => Output::Stdout,
            Some(path) => Output::File(path.into()),
        };
        let format = choose_format(&output, self.format, many)?;
        Ok(SinkOptions {
            output,
            format,
            snaplen: self.snaplen(),
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
            many_interfaces: many,
        })
    }

    /// `-d`: the compiled filter as tcpdump -d prints it. Needs no target
    /// and no privileges; a pod word is checked but not looked up.
    pub fn dump_filter(&self) -> Result<String> {
        if let Some(pods) = self.pod_word() {
            for pod in pods.split(',') {
                PodSelector::parse(pod, self.namespace.as_deref())?;
            }
        }
        let expression = filter::expression(self.filter_words(), self.filter_file.as_deref())?;
        // No expression: tcpdump -d prints the accept-all program.
        let filter = self.compile(expression.as_deref().unwrap_or(""), None)?;
        Ok(filter.dump(self.dump))
    }

    fn snaplen(&self) -> u32 {
        if self.snaplen == 0 {
            DEFAULT_SNAPLEN
        } else {
            self.snaplen
        }
    }

    /// Compiles the filter; SIGINT, SIGTERM, SIGHUP or `deadline` stop it.
    fn compile(&self, expression: &str, deadline: Option<Instant>) -> Result<Filter> {
        let filter = filter::compile_patiently(expression, self.snaplen(), deadline, |waited| {
            eprintln!(
                "podtrace: still compiling the filter after {} s (libpcap's optimizer can take \
                 minutes on thousands of terms; Ctrl-C stops)",
                waited.as_secs()
            )
        })?;
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
            || self.selector.is_some()
            || self.all_namespaces
    }

    /// The word naming the pod(s), if the first word names them.
    pub(super) fn pod_word(&self) -> Option<&str> {
        if self.target_by_option() {
            None
        } else {
            self.words.first().map(String::as_str)
        }
    }

    /// The words of the filter expression.
    pub(super) fn filter_words(&self) -> &[String] {
        match self.pod_word() {
            Some(_) => &self.words[1..],
            None => &self.words,
        }
    }
}

/// A pod that may yet come: waiting for it makes sense.
fn waitable(e: &target::TargetError) -> bool {
    use target::TargetError as T;
    matches!(
        e,
        T::PodNotFound { .. } | T::UidNotFound(_) | T::NotReady { .. }
    )
}

/// A process's or namespace's host link, captured as a pod would be.
fn link_target(link: link::HostLink, label: String, netns: PathBuf) -> (Target, String) {
    let gone = format!("{label} is gone (host interface {} was removed)", link.name);
    (Target::link(link, label).in_netns(netns), gone)
}

/// Refusing to lose which pod a packet belongs to.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{} is classic pcap, which cannot say which pod a packet belongs to: name it *.pcapng (or give --format pcapng), or give --format pcap to merge the pods' packets anyway", .0.display())]
pub struct PcapCannotName(pub std::path::PathBuf);

/// The output format: as asked, else from the name; pcapng when several
/// pods can meet in one file, unless classic pcap is asked for by name
/// (refused) or by `--format pcap` (the pods are then merged, with a
/// warning).
pub fn choose_format(
    output: &Output,
    asked: Option<Format>,
    many: bool,
) -> Result<Format, PcapCannotName> {
    let named = match output {
        Output::File(path) => Some(path.as_path()),
        _ => None,
    };
    match (asked, named) {
        (Some(Format::Pcap), _) if many => {
            eprintln!(
                "podtrace: warning: classic pcap cannot say which pod a packet belongs to; the pods' packets are merged"
            );
            Ok(Format::Pcap)
        }
        (Some(format), _) => Ok(format),
        (None, Some(path)) if many => match Format::for_path(path) {
            Format::Pcapng => Ok(Format::Pcapng),
            Format::Pcap if has_extension(path, "pcap") => Err(PcapCannotName(path.to_owned())),
            Format::Pcap => Ok(Format::Pcapng),
        },
        (None, Some(path)) => Ok(Format::for_path(path)),
        (None, None) if many => Ok(Format::Pcapng),
        (None, None) => Ok(Format::Pcap),
    }
}

fn has_extension(path: &Path, ext: &str) -> bool {
    path.extension().is_some_and(|e| e == ext)
}

/// The "capturing on" line, once the programs are attached.
pub struct StartLine {
    many: bool,
    selection: String,
    snaplen: u32,
    initial: Vec<Target>,
}

impl StartLine {
    pub fn new(plan: &Plan) -> Self {
        let initial = plan
            .start
            .initial
            .iter()
            .filter_map(|c| match c {
                podtrace::session::Change::Add(t) => Some(t.clone()),
                _ => None,
            })
            .collect();
        Self {
            many: plan.capture.sink.many_interfaces,
            selection: plan.selection.clone(),
            snaplen: plan.capture.sink.snaplen,
            initial,
        }
    }

    pub fn render(&self, mode: Option<podtrace::attach::TcMode>) -> String {
        let on = if !self.many {
            match self.initial.first() {
                Some(t) if t.link.peer_is_target => format!("{} ({})", t.link.name, t.label),
                Some(t) => t.link.name.clone(),
                None => format!("{} (not there yet)", self.selection),
            }
        } else {
            let pods: Vec<String> = self
                .initial
                .iter()
                .map(|t| format!("{} ({})", t.interface.name, t.link.name))
                .collect();
            match pods.len() {
                0 => format!("{} (none yet)", self.selection),
                n => format!("{} ({n} now: {})", self.selection, pods.join(", ")),
            }
        };
        format!(
            "capturing on {on}, link-type EN10MB (Ethernet), snapshot length {} bytes{}",
            self.snaplen,
            match mode {
                Some(podtrace::attach::TcMode::Clsact) => ", attached via clsact",
                _ => "",
            }
        )
    }
}
