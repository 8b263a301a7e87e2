//! A network namespace joined to the host by a veth pair: the smallest
//! "pod" there is. Everything it creates is removed on drop.

use std::{
    fs::File,
    net::{Ipv4Addr, Ipv6Addr},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use anyhow::{bail, Context, Result};

use crate::sh;

/// Lock files of the net numbers in use, one per number (see [`claim`]).
const LOCK_DIR: &str = "/run/podtrace-tests";

pub struct TestNet {
    /// `ip netns` name; the namespace file is /run/netns/NAME.
    pub name: String,
    /// Host end of the veth pair (its peer is `eth0` in the namespace).
    pub host_if: String,
    pub host_ip: Ipv4Addr,
    pub ns_ip: Ipv4Addr,
    sleepers: Vec<Child>,
    /// Holds the net number (lock file and its path); released (by the
    /// kernel, even on a crash) after the namespace and veth are gone.
    claim: Option<(File, PathBuf)>,
}

impl TestNet {
    /// 10.246.N.1 on the host end, 10.246.N.2 on eth0 inside; IPv6 off on
    /// both so router solicitations do not pollute packet counts.
    pub fn new() -> Result<Self> {
        let (n, claim) = claim()?;
        Self::build("ptest", n, Some(claim))
    }

    /// [`TestNet::new`] with namespace `PREFIX-N`, host veth `PREFIXNh` and
    /// 10.246.N.0/24 for a fixed N, for users that must not meet the tests'
    /// networks (the benchmark). `PREFIX` is at most 10 characters.
    pub fn named(prefix: &str, n: u8) -> Result<Self> {
        let name = format!("{prefix}-{n}");
        let host_if = format!("{prefix}{n}h");
        // Leftovers of a run that was killed before its cleanup.
        let _ = sh(&["ip", "netns", "del", &name]);
        let _ = sh(&["ip", "link", "del", &host_if]);
        Self::build(prefix, n, None)
    }

    fn build(prefix: &str, n: u8, claim: Option<(File, PathBuf)>) -> Result<Self> {
        let name = format!("{prefix}-{n}");
        let host_if = format!("{prefix}{n}h");
        let net = Self {
            name: name.clone(),
            host_if: host_if.clone(),
            host_ip: Ipv4Addr::new(10, 246, n, 1),
            ns_ip: Ipv4Addr::new(10, 246, n, 2),
            sleepers: Vec::new(),
            claim,
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

    /// Runs a command inside the namespace (`ip netns exec`); returns stdout.
    pub fn in_ns(&self, args: &[&str]) -> Result<String> {
        let mut all = vec!["ip", "netns", "exec", self.name.as_str()];
        all.extend_from_slice(args);
        sh(&all)
    }

    /// MAC address of the host end.
    pub fn host_mac(&self) -> Result<String> {
        let path = format!("/sys/class/net/{}/address", self.host_if);
        Ok(std::fs::read_to_string(path)?.trim().to_owned())
    }

    /// MAC address of eth0 inside the namespace.
    pub fn ns_mac(&self) -> Result<String> {
        Ok(self
            .in_ns(&["cat", "/sys/class/net/eth0/address"])?
            .trim()
            .to_owned())
    }

    /// Permanent neighbour entries on both ends: no ARP on the wire.
    pub fn pin_neighbours(&self) -> Result<()> {
        let (host_mac, ns_mac) = (self.host_mac()?, self.ns_mac()?);
        sh(&[
            "ip",
            "neigh",
            "replace",
            &self.ns_ip.to_string(),
            "lladdr",
            &ns_mac,
            "nud",
            "permanent",
            "dev",
            &self.host_if,
        ])?;
        self.in_ns(&[
            "ip",
            "neigh",
            "replace",
            &self.host_ip.to_string(),
            "lladdr",
            &host_mac,
            "nud",
            "permanent",
            "dev",
            "eth0",
        ])
        .map(drop)
    }

    /// Turns IPv6 on for this pair only, quietly: fd00:246:N::1 on the host
    /// end and ::2 inside, no DAD and no router solicitations. The kernel
    /// still sends a few MLD reports in the next ~2 s. Returns (host, ns).
    pub fn enable_ipv6(&self) -> Result<(Ipv6Addr, Ipv6Addr)> {
        let n = self.host_ip.octets()[2].into();
        let host = Ipv6Addr::new(0xfd00, 0x246, n, 0, 0, 0, 0, 1);
        let ns = Ipv6Addr::new(0xfd00, 0x246, n, 0, 0, 0, 0, 2);
        let quiet = |prefix: &str| {
            [
                format!("{prefix}.accept_dad=0"),
                format!("{prefix}.router_solicitations=0"),
                format!("{prefix}.accept_ra=0"),
                format!("{prefix}.disable_ipv6=0"),
            ]
        };
        for setting in quiet(&format!("net.ipv6.conf.{}", self.host_if)) {
            sh(&["sysctl", "-qw", &setting])?;
        }
        for setting in quiet("net.ipv6.conf.eth0") {
            self.in_ns(&["sysctl", "-qw", &setting])?;
        }
        sh(&[
            "ip",
            "-6",
            "addr",
            "add",
            &format!("{host}/64"),
            "dev",
            &self.host_if,
            "nodad",
        ])?;
        self.in_ns(&[
            "ip",
            "-6",
            "addr",
            "add",
            &format!("{ns}/64"),
            "dev",
            "eth0",
            "nodad",
        ])?;
        Ok((host, ns))
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

/// The packets `iface`'s TC hooks see, as its own counters say: received,
/// sent, and dropped on sending (after TC egress ran): an independent count
/// of what a capture on it should hold. (veth counts an skb once, GSO or
/// not, as TC sees it.)
pub fn link_packets(iface: &str) -> Result<u64> {
    let mut total = 0;
    for counter in ["rx_packets", "tx_packets", "tx_dropped"] {
        let path = format!("/sys/class/net/{iface}/statistics/{counter}");
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        total += text.trim().parse::<u64>().with_context(|| path.clone())?;
    }
    Ok(total)
}

/// A net number N (10.246.N.0/24, ptest-N, ptestNh) that no other test
/// process uses: test suites of several worktrees may run side by side, and
/// each process counting from 1 made them delete each other's namespaces
/// and route the same subnet twice. An flock per number claims it; a
/// number whose namespace, veth or subnet exists anyway (a crashed run's
/// leftovers, a suite without this lock) is skipped, never deleted.
fn claim() -> Result<(u8, (File, PathBuf))> {
    std::fs::create_dir_all(LOCK_DIR).with_context(|| format!("creating {LOCK_DIR}"))?;
    // Start at a different number in each process, so that they rarely
    // contend for the same locks, and above the numbers older harnesses
    // (counting from 1) use.
    let start = 100 + std::process::id() % 100;
    // Subnets some other setup (a benchmark's namespace, say) already uses.
    let addresses = sh(&["ip", "-o", "-4", "addr", "show"])?;
    for i in 0..250 {
        let n = ((start + i) % 250 + 1) as u8;
        let path = Path::new(LOCK_DIR).join(format!("net-{n}.lock"));
        let file = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        // SAFETY: a valid fd; LOCK_NB never blocks.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            continue;
        }
        let in_use = Path::new("/run/netns").join(format!("ptest-{n}")).exists()
            || Path::new("/sys/class/net")
                .join(format!("ptest{n}h"))
                .exists()
            || addresses.contains(&format!(" 10.246.{n}."));
        if !in_use {
            return Ok((n, (file, path)));
        }
    }
    bail!("no free test network number in 1..=250 (see {LOCK_DIR})")
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
        // The lock file goes before the lock (closing the file) is released.
        if let Some((_, path)) = &self.claim {
            let _ = std::fs::remove_file(path);
        }
    }
}
