//! Reading captures back with tshark, the reader users will use.

use std::{path::Path, process::Command};

use anyhow::{bail, Context, Result};

/// One row per packet matching `display_filter`, with the given fields.
pub fn fields(file: &Path, display_filter: &str, fields: &[&str]) -> Result<Vec<Vec<String>>> {
    let mut cmd = Command::new("tshark");
    cmd.arg("-r")
        .arg(file)
        .args(["-T", "fields", "-E", "separator=\t"]);
    if !display_filter.is_empty() {
        cmd.args(["-Y", display_filter]);
    }
    for f in fields {
        cmd.args(["-e", f]);
    }
    let out = cmd.output().context("running tshark")?;
    if !out.status.success() {
        bail!(
            "tshark -r {} failed: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split('\t').map(str::to_owned).collect())
        .collect())
}

/// Number of packets matching `display_filter`.
pub fn count(file: &Path, display_filter: &str) -> Result<usize> {
    Ok(fields(file, display_filter, &["frame.number"])?.len())
}
