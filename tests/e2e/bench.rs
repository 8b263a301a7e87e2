//! `podtrace-bench --quick` (what `cargo xtask bench --quick` runs) works end
//! to end and its report has every row, each figure measured (a number, above
//! zero where a zero would mean nothing was measured), and the loss columns
//! adding up. No figure is compared with a bound: the speeds of a quick run
//! on a test machine mean nothing.

use std::{collections::HashMap, process::Command};

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
    let tables = rows(&report);
    for label in bench::row_labels() {
        let row = tables
            .get(&label)
            .with_context(|| format!("no row {label:?} in the report:\n{report}"))?;
        check_row(&label, row).with_context(|| format!("row {label:?}: {row:?}"))?;
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

/// Every table row of the report, by its first cell: (column, cell) pairs.
fn rows(report: &str) -> HashMap<String, Vec<(String, String)>> {
    let cells = |line: &str| -> Vec<String> {
        let inner = line.trim().trim_start_matches('|').trim_end_matches('|');
        inner.split('|').map(|c| c.trim().to_owned()).collect()
    };
    let mut out = HashMap::new();
    let mut header: Option<Vec<String>> = None;
    let mut lines = report.lines().peekable();
    while let Some(line) = lines.next() {
        if !line.starts_with('|') {
            header = None;
            continue;
        }
        if header.is_none() {
            if lines.peek().is_some_and(|l| l.starts_with("|---")) {
                header = Some(cells(line));
                lines.next();
            }
            continue;
        }
        let (row, names) = (cells(line), header.as_ref().unwrap());
        // Rows with a `|` inside a code span (the commands table) do not split.
        if row.len() == names.len() {
            out.insert(row[0].clone(), names.iter().cloned().zip(row).collect());
        }
    }
    out
}

/// Columns a measured row must fill with a number above zero.
const POSITIVE: &[&str] = &[
    "Gbit/s",
    "% of nothing",
    "sent kpps",
    "received kpps",
    "received, % of nothing",
    "highest loss-free kpps",
    "peak RSS MiB",
    "median ms",
    "ns per packet",
    "µs per comparison",
    "cBPF instructions",
    "test datagrams sent",
    "crossed the veth",
    "A, Gbit/s",
    "B, Gbit/s",
    "A / B, mean of batches",
    "seconds",
    "batches",
    "podtrace CPU ns per packet",
    "pods",
    "max ms",
];

/// Columns a measured row must fill with a number, zero allowed (a count
/// of losses, or a CPU time that rounds to 0.00 in a short run).
const COUNTS: &[&str] = &[
    "reported loss",
    "missing from file",
    "test datagrams missing",
    "capture CPU s",
    "CPU s per Mpkt",
    "captured",
    "in file",
    "filtered",
    "podtrace CPU, % of one",
];

fn check_row(label: &str, row: &[(String, String)]) -> Result<()> {
    let cell = |column: &str| {
        row.iter()
            .find(|(c, _)| c == column)
            .map(|(_, v)| v.as_str())
    };
    let nothing_attached = label.contains("nothing attached");
    for (column, value) in &row[1..] {
        // A dash stands for "not measured": only with nothing attached.
        ensure!(
            value != "—" || nothing_attached,
            "{column} lacks a measurement"
        );
        ensure!(!value.is_empty(), "{column} is empty");
        if value == "—" || value == "no filter" || value == "none" {
            continue;
        }
        if POSITIVE.contains(&column.as_str()) {
            let n = number(value).with_context(|| format!("{column} = {value:?}"))?;
            ensure!(n > 0.0, "{column} = {value}, not above zero");
        } else if COUNTS.contains(&column.as_str()) {
            let n = number(value).with_context(|| format!("{column} = {value:?}"))?;
            ensure!(n >= 0.0, "{column} = {value}, below zero");
        }
    }
    let count = |column: &str| cell(column).and_then(|v| number(v).ok());
    // podtrace counts what it loses: reported loss is what its file lacks.
    if label.contains("podtrace") {
        if let (Some(reported), Some(missing)) =
            (count("reported loss"), count("missing from file"))
        {
            ensure!(
                reported == missing,
                "reported loss {reported} != missing from file {missing}"
            );
        }
        if let Some(verdict) = cell("reported = missing") {
            ensure!(verdict.starts_with("yes"), "reported = missing: {verdict}");
        }
    }
    // Of what crossed the veth, the test datagrams' losses are a part of
    // what the file lacks.
    if let (Some(test), Some(missing), Some(crossed), Some(sent)) = (
        count("test datagrams missing"),
        count("missing from file"),
        count("crossed the veth"),
        count("test datagrams sent"),
    ) {
        ensure!(
            test <= missing && missing <= crossed && sent <= crossed,
            "losses do not add up: {test} test datagrams of {sent} missing, {missing} of {crossed} missing from the file"
        );
    }
    // The file holds what podtrace says it captured; a filter matching
    // nothing captures nothing and rejects at least what crossed the veth.
    if let (Some(captured), Some(in_file)) = (count("captured"), count("in file")) {
        ensure!(
            captured == in_file,
            "captured {captured}, in file {in_file}"
        );
        if let (Some(filtered), Some(crossed)) = (count("filtered"), count("crossed the veth")) {
            ensure!(
                captured == 0.0 && filtered >= crossed,
                "a filter matching nothing captured {captured}, filtered {filtered} of {crossed}"
            );
        }
    }
    Ok(())
}

/// A figure as the report prints it: `12.3`, `>= 138.4`, `99.10%`.
fn number(cell: &str) -> Result<f64> {
    let cell = cell.trim_start_matches(">= ").trim_end_matches('%');
    cell.parse()
        .with_context(|| format!("{cell:?} is not a number"))
}
