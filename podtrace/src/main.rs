//! podtrace's command line: arguments → plan → capture → one summary line.

mod cli;

use std::process::ExitCode;

use cli::Command;
use podtrace::{
    filter::FilterError,
    link::LinkError,
    preflight,
    session::{self, StopReason},
    target::{SelectorError, TargetError},
    watch::WatchError,
};

fn main() -> ExitCode {
    let cli = cli::parse();
    podtrace::set_verbosity(cli.verbose);
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("podtrace: {}", podtrace::error_chain(err.as_ref()));
            ExitCode::from(exit_code(&err))
        }
    }
}

fn run(cli: cli::Cli) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Capture(args) if args.dump > 0 => {
            print_out(&args.dump_filter()?)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Capture(args) => {
            preflight::check(preflight_reach(&args))?;
            let plan = runtime.block_on(args.plan(cli.verbose > 0))?;
            let start_line = cli::StartLine::new(&plan);
            let cli::Plan { capture, start, .. } = plan;
            let summary = runtime.block_on(async {
                let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                let watcher = tokio::spawn(start.watcher.run(tx));
                let summary = session::run(capture, start.initial, rx, |session| {
                    eprintln!("podtrace: {}", start_line.render(session.mode_used));
                })
                .await;
                watcher.abort();
                summary
            })?;
            if let StopReason::TargetGone(what) = &summary.reason {
                eprintln!("podtrace: {what}");
            }
            for note in &summary.notes {
                eprintln!("podtrace: {note}");
            }
            eprintln!("{}", summary.line());
            Ok(ExitCode::SUCCESS)
        }
        Command::Pods(args) => {
            print_out(&runtime.block_on(args.run(cli.verbose > 0))?)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Agent(args) => {
            runtime.block_on(args.run())?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Whether the capture reads other processes' `/proc/PID` (CAP_SYS_PTRACE).
fn preflight_reach(args: &cli::CaptureArgs) -> preflight::Reach {
    let bind_mounted_netns = args.netns.as_ref().is_some_and(|p| !p.starts_with("/proc"));
    if args.iface.is_some() || bind_mounted_netns {
        preflight::Reach::Interface
    } else {
        preflight::Reach::Processes
    }
}

/// Writes `text` to stdout; a reader that went away (`| head`) is not an error.
fn print_out(text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

/// 2 for what the user asked that cannot be (bad target), 1 for failures.
fn exit_code(err: &anyhow::Error) -> u8 {
    if let Some(e) = err.downcast_ref::<LinkError>() {
        return if e.is_bad_target() { 2 } else { 1 };
    }
    if err.downcast_ref::<cli::TargetMissing>().is_some()
        || err.downcast_ref::<cli::UsageError>().is_some()
        || err.downcast_ref::<cli::PcapCannotName>().is_some()
        || err.downcast_ref::<SelectorError>().is_some()
    {
        return 2;
    }
    if let Some(e) = err.downcast_ref::<WatchError>() {
        return if e.is_bad_target() { 2 } else { 1 };
    }
    if let Some(e) = err.downcast_ref::<FilterError>() {
        return if e.is_bad_input() { 2 } else { 1 };
    }
    if let Some(e) = err.downcast_ref::<TargetError>() {
        return if e.is_bad_target() { 2 } else { 1 };
    }
    1
}
