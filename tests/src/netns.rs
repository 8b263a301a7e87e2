//! A network namespace joined to the host by a veth pair: the smallest
//! "pod" there is. Everything it creates is removed on drop.

use std::{
    fs::File,
    net::Ipv4Addr,
    os::fd::AsRawFd,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU8, Ordering},
};

use anyhow::{bail, Context, Result};

use crate::sh;

static NEXT: AtomicU8 = AtomicU8::new(1);

pub struct TestNet {
    /// `ip netns` name; the namespace file is /run/netns/NAME.
    pub name: String,
    /// Host end of the veth pair (its peer is `eth0` in the namespace).
    pub host_if: String,
    pub host_ip: Ipv4Addr,
    pub ns_ip: Ipv4Addr,
    sleepers: Vec<Child>,
}

impl TestNet {
    /// 10.246.N.1 on the host end, 10.246.N.2 on eth0 inside; IPv6 off on
    /// both so router solicitations do not pollute packet counts.
    pub fn new() -> Result<Self> {
        Self::named("ptest", NEXT.fetch_add(1, Ordering::Relaxed))
    }

    /// [`TestNet::new`] with namespace `PREFIX-N`, host veth `PREFIXNh` and
    /// 10.246.N.0/24, for users that must not meet the tests' networks (the
    /// benchmark). `PREFIX` is at most 10 characters.
    pub fn named(prefix: &str, n: u8) -> Result<Self> {
        let name = format!("{prefix}-{n}");
        let host_if = format!("{prefix}{n}h");
        // Leftovers of a run that was killed before its cleanup.
        let _ = sh(&["ip", "netns", "del", &name]);
        let _ = sh(&["ip", "link", "del", &host_if]);
        let net = Self {
            name: name.clone(),
            host_if: host_if.clone(),
            host_ip: Ipv4Addr::new(10, 246, n, 1),
            ns_ip: Ipv4Addr::new(10, 246, n, 2),
            sleepers: Vec::new(),
        };
        sh(&["ip", "netns", "add", &name])?;
        let ns = |args: &[&str]| -> Result<()> {
            let mut all = vec!["ip", "netns", "exec", name.as_str()];
            all.extend_from_slice(args);
            sh(&all).map(drop)
        };
        ns(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"])?;
        ns(&["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"])?;
        sh(&[
            "ip", "link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns", &name,
        ])?;
        sh(&[
            "sysctl",
            "-qw",
            &format!("net.ipv6.conf.{host_if}.disable_ipv6=1"),
        ])?;
        sh(&[
            "ip",
            "addr",
            "add",
            &format!("{}/24", net.host_ip),
            "dev",
            &host_if,
        ])?;
        sh(&["ip", "link", "set", &host_if, "up"])?;
        ns(&[
            "ip",
            "addr",
            "add",
            &format!("{}/24", net.ns_ip),
            "dev",
            "eth0",
        ])?;
        ns(&["ip", "link", "set", "eth0", "up"])?;
        ns(&["ip", "link", "set", "lo", "up"])?;
        Ok(net)
    }

    pub fn netns_path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// A process living in the namespace (with its own sysfs, as
    /// `ip netns exec` mounts one), killed on drop. Returns its pid.
    pub fn spawn_sleeper(&mut self) -> Result<u32> {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.name, "sleep", "600"])
            .stdin(Stdio::null())
            .spawn()
            .context("spawning a sleeper in the namespace")?;
        let pid = child.id();
        self.sleepers.push(child);
        // `ip netns exec` execs sleep in place; wait until it has.
        for _ in 0..100 {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if comm.trim() == "sleep" {
                return Ok(pid);
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        bail!("sleeper {pid} did not start")
    }

    /// Runs `f` on a thread that has entered the namespace (sockets it
    /// creates live there).
    pub fn within<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        let file = File::open(self.netns_path())?;
        std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: a valid netns fd; only this thread changes namespace.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    bail!("setns: {}", std::io::Error::last_os_error());
                }
                Ok(f())
            })
            .join()
            .map_err(|_| anyhow::anyhow!("namespace thread panicked"))?
        })
    }

    /// `busybox ping` from the host to the namespace.
    pub fn ping(&self, count: u32, size: u32) -> Result<()> {
        sh(&[
            "busybox",
            "ping",
            "-q",
            "-c",
            &count.to_string(),
            "-i",
            "0.05",
            "-s",
            &size.to_string(),
            "-W",
            "2",
            &self.ns_ip.to_string(),
        ])
        .map(drop)
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        for child in &mut self.sleepers {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Deleting the namespace deletes the veth pair with it.
        let _ = sh(&["ip", "netns", "del", &self.name]);
        let _ = sh(&["ip", "link", "del", &self.host_if]);
    }
}
