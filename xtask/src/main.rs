//! Developer commands: `cargo xtask <command>`.
//!
//! Everything a fresh machine needs is installed from here, idempotently:
//! Debian packages, nightly's rust-src, and bpf-linker built against the
//! nightly toolchain's own libLLVM.

mod dist;
mod ebpf;
mod libpcap;
mod process;
mod run;
mod setup;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what building and testing need (apt packages, rust-src, bpf-linker).
    Setup,
    /// Build the eBPF object the podtrace binary embeds (installs its tools first).
    BuildEbpf,
    /// Build everything: the eBPF object, then podtrace (release).
    Build,
    /// Build the static binary target/dist/podtrace-VERSION-x86_64-linux (and its .sha256).
    Dist,
    /// Build the image archive target/dist/podtrace-VERSION-image.tar (podtrace:VERSION).
    Image,
    /// Build everything, start a throwaway pod, capture its traffic, summarise.
    Demo,
    /// Run every test: unit tests, then end-to-end tests against real pods (root).
    Test {
        /// Only the unit tests (no root needed).
        #[arg(long)]
        unit: bool,
        /// Pass through to the end-to-end test binary (a name filter).
        filter: Vec<String>,
    },
    /// fmt --check and clippy -D warnings on both workspaces.
    Lint,
    /// Benchmark podtrace against tcpdump on a veth (root); writes BENCHMARKS.md.
    Bench {
        /// One short run of each measurement (seconds, not minutes).
        #[arg(long)]
        quick: bool,
        /// Where to write the report (default: BENCHMARKS.md in the workspace).
        #[arg(long)]
        out: Option<std::path::PathBuf>,
        /// Only these sections, comma-separated (podtrace-bench --help lists them).
        #[arg(long)]
        only: Option<String>,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Setup => setup::all(),
        Command::BuildEbpf => ebpf::build(),
        Command::Build => run::build(),
        Command::Dist => dist::binary().map(drop),
        Command::Image => dist::image().map(drop),
        Command::Demo => run::demo(),
        Command::Test { unit, filter } => run::test(unit, &filter),
        Command::Lint => run::lint(),
        Command::Bench { quick, out, only } => run::bench(quick, out, only),
    }
}
