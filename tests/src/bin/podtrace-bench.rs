//! `podtrace-bench`: podtrace against tcpdump on a veth; see
//! `podtrace_tests::bench`. Run it through `cargo xtask bench` (root), which
//! builds the release binaries first.
//!
//! ```text
//! podtrace-bench [--quick] [--out FILE] [--net-id N] [--only SECTION,...]
//!                [--goal-minutes M]
//! ```
//!
//! The podtrace binary under test is `PODTRACE_BIN` (default: the
//! workspace's release build).

use std::{path::PathBuf, process::ExitCode};

use anyhow::{bail, Context, Result};
use podtrace_tests::bench::{self, Options};

/// An option's value as a whole number above zero.
fn positive<T: std::str::FromStr + Default + PartialOrd>(value: Option<String>) -> Option<T> {
    value?.parse().ok().filter(|n| *n > T::default())
}

fn parse() -> Result<Options> {
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut opts = Options {
        quick: false,
        out: workspace.join("BENCHMARKS.md"),
        net_id: 250,
        podtrace: std::env::var_os("PODTRACE_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace.join("target/release/podtrace")),
        only: Vec::new(),
        goal_minutes: bench::GOAL_MINUTES,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => opts.quick = true,
            "--out" => opts.out = args.next().context("--out needs a file")?.into(),
            "--net-id" => {
                opts.net_id =
                    positive(args.next()).context("--net-id needs a number from 1 to 255")?;
            }
            "--goal-minutes" => {
                opts.goal_minutes = positive(args.next())
                    .context("--goal-minutes needs a number of minutes (1 or more)")?;
            }
            "--only" => {
                let list = args.next().context("--only needs sections")?;
                for name in list.split(',') {
                    if !bench::SECTIONS.contains(&name) {
                        bail!(
                            "unknown section {name:?}: one of {}",
                            bench::SECTIONS.join(", ")
                        );
                    }
                    opts.only.push(name.to_owned());
                }
            }
            "-h" | "--help" => {
                println!(
                    "usage: podtrace-bench [--quick] [--out FILE] [--net-id N] [--only SECTION,...] [--goal-minutes M]\n\
                     sections: {}",
                    bench::SECTIONS.join(", ")
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}"),
        }
    }
    Ok(opts)
}

fn main() -> ExitCode {
    let result = parse().and_then(|opts| {
        // SAFETY: no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            bail!("the benchmark needs root (network namespaces, eBPF, packet sockets)");
        }
        let text = bench::run(&opts)?;
        print!("{text}");
        eprintln!("bench: report written to {}", opts.out.display());
        Ok(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("podtrace-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
