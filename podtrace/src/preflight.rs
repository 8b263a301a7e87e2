//! Checks made before touching the kernel, so the common failures get a
//! sentence instead of an errno.

use std::{fs, path::PathBuf};

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Where the kernel publishes its BTF; `PODTRACE_KERNEL_BTF` overrides it
/// (tests use that to play a kernel without BTF).
fn kernel_btf_path() -> PathBuf {
    std::env::var_os("PODTRACE_KERNEL_BTF")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/sys/kernel/btf/vmlinux".into())
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PreflightError {
    #[error("podtrace needs root (missing {0}): run it with sudo")]
    Privileges(String),
    #[error("this kernel has no BTF ({0} is missing): podtrace needs Linux >= 5.8 built with CONFIG_BPF_SYSCALL and CONFIG_DEBUG_INFO_BTF")]
    NoBtf(String),
}

pub fn check() -> Result<(), PreflightError> {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    missing_capabilities(&status).map_or(Ok(()), |m| Err(PreflightError::Privileges(m)))?;
    let btf = kernel_btf_path();
    if !btf.exists() {
        return Err(PreflightError::NoBtf(btf.display().to_string()));
    }
    Ok(())
}

/// The capabilities missing from a `/proc/PID/status` text, if any.
pub fn missing_capabilities(status: &str) -> Option<String> {
    let effective = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    let has = |cap: u32| effective & (1 << cap) != 0;
    let mut missing = Vec::new();
    if !has(CAP_NET_ADMIN) {
        missing.push("CAP_NET_ADMIN");
    }
    // CAP_SYS_ADMIN covers both on any kernel; CAP_BPF+CAP_PERFMON since 5.8.
    if !has(CAP_SYS_ADMIN) {
        if !has(CAP_BPF) {
            missing.push("CAP_BPF");
        }
        if !has(CAP_PERFMON) {
            missing.push("CAP_PERFMON");
        }
    }
    (!missing.is_empty()).then(|| missing.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_has_everything() {
        assert_eq!(
            missing_capabilities("Name:\tx\nCapEff:\t000001ffffffffff\n"),
            None
        );
    }

    #[test]
    fn unprivileged_user_misses_all() {
        assert_eq!(
            missing_capabilities("CapEff:\t0000000000000000\n").as_deref(),
            Some("CAP_NET_ADMIN, CAP_BPF, CAP_PERFMON")
        );
    }

    #[test]
    fn bpf_and_net_admin_without_sys_admin_is_enough() {
        let caps = (1u64 << CAP_BPF) | (1 << CAP_PERFMON) | (1 << CAP_NET_ADMIN);
        assert_eq!(
            missing_capabilities(&format!("CapEff:\t{caps:016x}\n")),
            None
        );
    }
}
