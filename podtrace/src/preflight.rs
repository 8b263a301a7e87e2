//! Checks made before touching the kernel, so the common failures get a
//! sentence instead of an errno.
//!
//! The capabilities a capture needs were measured (README, "Install on a
//! node"), not guessed: CAP_BPF and CAP_PERFMON to load the programs (without
//! CAP_PERFMON the verifier refuses them), CAP_NET_ADMIN for TC programs and
//! their attachment, and for a pod or a process CAP_SYS_PTRACE, which
//! `/proc/PID/root` and `/proc/PID/ns/net` of another process's sandbox
//! require. CAP_SYS_ADMIN stands in for CAP_BPF and CAP_PERFMON, as on
//! kernels before 5.8.

use std::{fs, path::PathBuf};

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_PTRACE: u32 = 19;
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
    /// Root, but in a container (or under capsh) without some capabilities.
    #[error("podtrace lacks {0}: grant it (in a pod: securityContext.capabilities.add, see deploy/), or run podtrace as root on the node")]
    Capabilities(String),
    #[error("this kernel has no BTF ({0} is missing): podtrace needs Linux >= 5.8 built with CONFIG_BPF_SYSCALL and CONFIG_DEBUG_INFO_BTF")]
    NoBtf(String),
}

/// What the capture reaches besides the kernel's TC hooks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// A host interface (`-i`) or a bind-mounted namespace (`--netns /run/netns/X`).
    Interface,
    /// Another process's `/proc/PID` (a pod, `--pid`, `--netns /proc/PID/ns/net`).
    Processes,
}

pub fn check(reach: Reach) -> Result<(), PreflightError> {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    if let Some(missing) = missing_capabilities(&status, reach) {
        // SAFETY: no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        return Err(if root {
            PreflightError::Capabilities(missing)
        } else {
            PreflightError::Privileges(missing)
        });
    }
    let btf = kernel_btf_path();
    if !btf.exists() {
        return Err(PreflightError::NoBtf(btf.display().to_string()));
    }
    Ok(())
}

/// The capabilities missing from a `/proc/PID/status` text, if any, each
/// with what it is for when root lacks only some of them.
pub fn missing_capabilities(status: &str, reach: Reach) -> Option<String> {
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
    if reach == Reach::Processes && !has(CAP_SYS_PTRACE) {
        missing.push("CAP_SYS_PTRACE");
    }
    if missing.is_empty() {
        return None;
    }
    // Nothing at all: the usual unprivileged user, for whom the names are enough.
    if effective == 0 {
        return Some(missing.join(", "));
    }
    let why = |cap: &str| match cap {
        "CAP_NET_ADMIN" => "to attach TC programs",
        "CAP_BPF" => "to load eBPF programs and maps",
        "CAP_PERFMON" => "for the verifier to accept the programs",
        _ => "to read a pod's network namespace through /proc/PID",
    };
    let named: Vec<String> = missing
        .iter()
        .map(|cap| format!("{cap} ({})", why(cap)))
        .collect();
    Some(named.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(list: &[u32]) -> String {
        let mask = list.iter().fold(0u64, |m, c| m | (1 << c));
        format!("Name:\tx\nCapEff:\t{mask:016x}\n")
    }

    #[test]
    fn root_has_everything() {
        let status = "Name:\tx\nCapEff:\t000001ffffffffff\n";
        assert_eq!(missing_capabilities(status, Reach::Processes), None);
    }

    #[test]
    fn unprivileged_user_misses_all() {
        assert_eq!(
            missing_capabilities("CapEff:\t0000000000000000\n", Reach::Interface).as_deref(),
            Some("CAP_NET_ADMIN, CAP_BPF, CAP_PERFMON")
        );
        assert_eq!(
            missing_capabilities("CapEff:\t0000000000000000\n", Reach::Processes).as_deref(),
            Some("CAP_NET_ADMIN, CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE")
        );
    }

    #[test]
    fn bpf_perfmon_net_admin_capture_an_interface() {
        let status = caps(&[CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN]);
        assert_eq!(missing_capabilities(&status, Reach::Interface), None);
    }

    #[test]
    fn a_pod_needs_sys_ptrace_too() {
        let status = caps(&[CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN]);
        assert_eq!(
            missing_capabilities(&status, Reach::Processes).as_deref(),
            Some("CAP_SYS_PTRACE (to read a pod's network namespace through /proc/PID)")
        );
        let status = caps(&[CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN, CAP_SYS_PTRACE]);
        assert_eq!(missing_capabilities(&status, Reach::Processes), None);
    }

    #[test]
    fn each_missing_one_is_named_with_its_use() {
        let status = caps(&[CAP_BPF, CAP_NET_ADMIN, CAP_SYS_PTRACE]);
        assert_eq!(
            missing_capabilities(&status, Reach::Processes).as_deref(),
            Some("CAP_PERFMON (for the verifier to accept the programs)")
        );
        let status = caps(&[CAP_PERFMON, CAP_SYS_PTRACE]);
        assert_eq!(
            missing_capabilities(&status, Reach::Processes).as_deref(),
            Some("CAP_NET_ADMIN (to attach TC programs), CAP_BPF (to load eBPF programs and maps)")
        );
    }

    #[test]
    fn sys_admin_stands_in_for_bpf_and_perfmon() {
        let status = caps(&[CAP_SYS_ADMIN, CAP_NET_ADMIN, CAP_SYS_PTRACE]);
        assert_eq!(missing_capabilities(&status, Reach::Processes), None);
    }
}
