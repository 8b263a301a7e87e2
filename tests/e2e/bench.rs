//! `podtrace-bench --quick` (what `cargo xtask bench --quick` runs) works end
//! to end and its report has every row. No timing is checked: the numbers of
//! a quick run on a test machine mean nothing.

use std::process::Command;

use anyhow::{ensure, Context, Result};
use podtrace_tests::bench;

use crate::capture::tempdir;

pub fn quick_run_has_every_row() -> Result<()> {
    let dir = tempdir()?;
    let out = dir.path().join("BENCHMARKS.md");
    let run = Command::new(env!("CARGO_BIN_EXE_podtrace-bench"))
        // Its own network number, away from the tests' and a full run's.
        .args(["--quick", "--net-id", "249", "--out"])
        .arg(&out)
        .env("PODTRACE_BIN", podtrace_tests::run::bin())
        .output()
        .context("running podtrace-bench")?;
    let stderr = String::from_utf8_lossy(&run.stderr);
    ensure!(
        run.status.success(),
        "podtrace-bench --quick failed:\n{stderr}"
    );
    let report = std::fs::read_to_string(&out).context("reading the report")?;
    ensure!(
        String::from_utf8_lossy(&run.stdout) == report,
        "the printed table differs from the file"
    );
    ensure!(report.contains("QUICK RUN"), "not marked as a quick run");
    for needle in ["nproc", "uname -r", "CPU model", "memory", "## Commands"] {
        ensure!(
            report.contains(needle),
            "no {needle:?} in the report:\n{report}"
        );
    }
    for label in bench::row_labels() {
        let row = report
            .lines()
            .find(|l| l.starts_with(&format!("| {label} |")))
            .with_context(|| format!("no row {label:?} in the report:\n{report}"))?;
        // Every cell of a measured row holds a value, not a placeholder for a
        // missing measurement (a "—" for nothing attached is expected).
        ensure!(
            label.contains("nothing attached") || !row.contains("| — |"),
            "row {label:?} lacks a measurement: {row}"
        );
    }
    // Section 5 measures filters that must match nothing: if one matched,
    // its rows would measure captures, not filters.
    let matched = report
        .lines()
        .find(|l| l.starts_with(&format!("| {} |", bench::MATCHED_NOTHING)))
        .context("no check of the filters in the report")?;
    ensure!(matched.ends_with("| yes |"), "a filter matched: {matched}");
    ensure!(
        !std::path::Path::new("/run/netns/pbench-249").exists(),
        "the benchmark left its network namespace behind"
    );
    Ok(())
}
