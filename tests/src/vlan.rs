//! Tagged Ethernet frames for the VLAN tests, on a machine without VLAN
//! devices (no CONFIG_VLAN_8021Q): frames are built here and sent with
//! AF_PACKET, and a bridge joins two test namespaces.
//!
//! Where the kernel keeps a frame's outer tag (verified on this machine):
//! - a frame sent into a veth arrives at the other end with its outer tag in
//!   skb metadata (TC ingress of a host veth, when the namespace sent it);
//! - a bridge forwards it so, with the tag in metadata (TC egress of the host
//!   veth of another namespace on the bridge);
//! - a frame sent with AF_PACKET on a host veth itself keeps the tag in its
//!   bytes (TC egress of that veth).

use std::{
    ffi::CString,
    io::{BufRead, BufReader},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use anyhow::{bail, ensure, Context, Result};

use crate::{netns::TestNet, sh};

/// A bridge joining the host ends of test namespaces; removed on drop
/// (before the namespaces, which delete their veths).
pub struct Bridge {
    pub name: String,
}

impl Bridge {
    /// Puts the host ends of `nets` on a new bridge `ptbrN`, N the first
    /// net's number (which that net holds, so the name is free). No
    /// addresses, no IPv6, no STP: it only forwards the tests' frames.
    pub fn join(nets: &[&TestNet]) -> Result<Self> {
        let n = nets.first().context("no nets to join")?.host_ip.octets()[2];
        let bridge = Self {
            name: format!("ptbr{n}"),
        };
        sh(&["ip", "link", "add", &bridge.name, "type", "bridge"])?;
        sh(&[
            "sysctl",
            "-qw",
            &format!("net.ipv6.conf.{}.disable_ipv6=1", bridge.name),
        ])?;
        for net in nets {
            sh(&["ip", "link", "set", &net.host_if, "master", &bridge.name])?;
        }
        sh(&["ip", "link", "set", &bridge.name, "up"])?;
        Ok(bridge)
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = sh(&["ip", "link", "del", &self.name]);
    }
}

/// `frame` with `tags` (TPID, TCI), outermost first, after its addresses.
pub fn tagged(frame: &[u8], tags: &[(u16, u16)]) -> Vec<u8> {
    let mut out = frame[..12].to_vec();
    for (tpid, tci) in tags {
        out.extend(tpid.to_be_bytes());
        out.extend(tci.to_be_bytes());
    }
    out.extend(&frame[12..]);
    out
}

/// A MAC address from its `aa:bb:...` text.
pub fn mac(text: &str) -> Result<[u8; 6]> {
    let bytes: Vec<u8> = text
        .trim()
        .split(':')
        .map(|b| u8::from_str_radix(b, 16))
        .collect::<Result<_, _>>()
        .with_context(|| format!("bad MAC address {text:?}"))?;
    bytes
        .try_into()
        .map_err(|_| anyhow::anyhow!("bad MAC address {text:?}"))
}

/// Sends each frame as is on `iface` of the calling thread's network
/// namespace (AF_PACKET, SOCK_RAW), 2 ms apart so every capture sees them
/// in the order sent.
pub fn send(iface: &str, frames: &[Vec<u8>]) -> Result<()> {
    let name = CString::new(iface)?;
    // SAFETY: plain libc calls on a socket this function owns.
    unsafe {
        let index = libc::if_nametoindex(name.as_ptr());
        ensure!(index != 0, "no interface {iface}");
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
        ensure!(
            fd >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        let fd = OwnedFd::from_raw_fd(fd);
        let mut addr: libc::sockaddr_ll = std::mem::zeroed();
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = index as i32;
        let bound = libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        );
        ensure!(
            bound == 0,
            "binding to {iface}: {}",
            std::io::Error::last_os_error()
        );
        for frame in frames {
            let sent = libc::send(fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0);
            ensure!(
                sent == frame.len() as isize,
                "sending a {}-byte frame on {iface}: {}",
                frame.len(),
                std::io::Error::last_os_error()
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    Ok(())
}

/// tcpdump capturing live (`-U --immediate-mode`), the reference for how
/// libpcap on Linux writes a frame whose tag the kernel holds in metadata.
pub struct Tcpdump {
    child: Child,
}

impl Tcpdump {
    /// Starts `tcpdump -i IFACE -s SNAPLEN -w FILE` and waits until it listens.
    pub fn start(iface: &str, snaplen: u32, file: &Path) -> Result<Self> {
        let mut child = Command::new("tcpdump")
            .args([
                "-i",
                iface,
                "-s",
                &snaplen.to_string(),
                "-U",
                "--immediate-mode",
                "-w",
            ])
            .arg(file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting tcpdump")?;
        let err = child.stderr.take().context("tcpdump's stderr")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let tcpdump = Self { child };
        loop {
            match rx.recv_timeout(Duration::from_secs(10)) {
                Ok(line) if line.contains("listening on") => return Ok(tcpdump),
                Ok(_) => {}
                Err(_) => bail!("tcpdump -i {iface} did not start listening"),
            }
        }
    }

    /// Stops it (SIGINT, as a user would) once what it read is written.
    pub fn stop(mut self) -> Result<()> {
        std::thread::sleep(Duration::from_millis(300));
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let status = self.child.wait()?;
        ensure!(status.success(), "tcpdump exited with {status}");
        Ok(())
    }
}

impl Drop for Tcpdump {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
