//! podtrace's command line: arguments → plan → capture → one summary line.

mod cli;

use std::process::ExitCode;

use cli::Command;
use podtrace::{
    capture::{self, StopReason},
    filter::FilterError,
    link::LinkError,
    preflight,
    target::TargetError,
};

fn main() -> ExitCode {
    let cli = cli::parse();
    podtrace::set_verbosity(cli.verbose);
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("podtrace: {}", one_line(&err));
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
            let start_line = |mode| cli::describe_start(&plan, mode);
            let summary = runtime.block_on(capture::run(plan.clone(), |programs| {
                eprintln!("podtrace: {}", start_line(programs.mode_used));
            }))?;
            if let StopReason::TargetGone(what) = &summary.reason {
                eprintln!("podtrace: {what}");
            }
            eprintln!("{}", summary.line());
            Ok(ExitCode::SUCCESS)
        }
        Command::Pods(args) => {
            print_out(&runtime.block_on(args.run())?)?;
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

/// The error and its causes on one line, without repeating what a message
/// already includes.
fn one_line(err: &anyhow::Error) -> String {
    let mut line = err.to_string();
    for cause in err.chain().skip(1) {
        let text = cause.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
    }
    line
}

/// 2 for what the user asked that cannot be (bad target), 1 for failures.
fn exit_code(err: &anyhow::Error) -> u8 {
    if let Some(e) = err.downcast_ref::<LinkError>() {
        return if e.is_bad_target() { 2 } else { 1 };
    }
    if err.downcast_ref::<cli::TargetMissing>().is_some() {
        return 2;
    }
    if let Some(e) = err.downcast_ref::<FilterError>() {
        return if e.is_bad_input() { 2 } else { 1 };
    }
    if let Some(e) = err.downcast_ref::<TargetError>() {
        use TargetError as T;
        let bad = matches!(
            e,
            T::InvalidSelector { .. }
                | T::NamespaceConflict { .. }
                | T::InvalidEndpoint(_)
                | T::PodNotFound { .. }
                | T::UidNotFound(_)
                | T::ContainerNotFound(_)
                | T::AmbiguousContainer { .. }
                | T::SandboxNotFound(_)
                | T::NotReady { .. }
                | T::HostNetwork { .. }
        );
        return if bad { 2 } else { 1 };
    }
    1
}
