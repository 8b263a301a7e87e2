//! The node's pod network: a claimed bridge `ptrN`, its CNI config, and link helpers.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use super::footprint::Footprint;

/// How many nodes can run at once (bridges `ptr0`…, subnets `10.245.0.0/24`…).
const MAX_NODES: u8 = 32;

/// The pod subnet of node `index`.
pub(crate) fn subnet(index: u8) -> String {
    format!("10.245.{index}.0/24")
}

/// The node directory of node `index`.
pub(crate) fn node_dir(index: u8) -> PathBuf {
    std::env::temp_dir().join(format!("podtrace-node-{index}"))
}

/// Claims a free node index: creates its directory (the atomic claim), then its bridge, with
/// IPv6 disabled before the bridge is ever up. Skips indexes whose subnet is already in use.
pub(crate) fn claim(owner: u32) -> Result<Footprint> {
    let used = addresses_in_use()?;
    for index in 0..MAX_NODES {
        if used
            .iter()
            .any(|a| a.starts_with(&format!("10.245.{index}.")))
        {
            continue;
        }
        let dir = node_dir(index);
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(err) => return Err(err).with_context(|| format!("creating {}", dir.display())),
        }
        let bridge = format!("ptr{index}");
        let fp = Footprint::new(dir.clone(), index, bridge.clone(), owner);
        fp.save()?;
        if link_exists(&bridge) {
            // Not ours: leave it and try the next index.
            std::fs::remove_dir_all(&dir).ok();
            continue;
        }
        let made =
            ip(&["link", "add", &bridge, "type", "bridge"]).and_then(|()| disable_ipv6(&bridge));
        if let Err(err) = made {
            ip(&["link", "del", &bridge]).ok();
            std::fs::remove_dir_all(&dir).ok();
            return Err(err);
        }
        return Ok(fp);
    }
    bail!("no free test node slot: {MAX_NODES} nodes (bridges ptrN, subnets 10.245.N.0/24) in use")
}

/// IPv4 addresses configured on this host's links, as text.
fn addresses_in_use() -> Result<Vec<String>> {
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show"])
        .output()
        .context("running ip -4 addr show")?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().skip_while(|w| *w != "inet").nth(1))
        .map(str::to_string)
        .collect())
}

/// Writes the bridge conflist: no masquerading, no default route in pods, private IPAM state.
pub(crate) fn write_cni_config(fp: &Footprint) -> Result<()> {
    let conf_dir = fp.cni_conf_dir();
    std::fs::create_dir_all(&conf_dir)?;
    let config = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": fp.network_name(),
        "plugins": [{
            "type": "bridge",
            "bridge": fp.bridge,
            "isGateway": true,
            "ipMasq": false,
            "hairpinMode": true,
            "ipam": {
                "type": "host-local",
                "ranges": [[{ "subnet": subnet(fp.index) }]],
                "dataDir": fp.dir.join("cni-ipam"),
            },
        }],
    });
    let path = conf_dir.join("10-podtrace.conflist");
    std::fs::write(&path, serde_json::to_string_pretty(&config)?)
        .with_context(|| format!("writing {}", path.display()))
}

/// Runs `ip ARGS`, failing with its stderr.
pub(crate) fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip (iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Whether a link of that name exists in the host network namespace.
pub(crate) fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// The ifindex of a host link.
pub(crate) fn ifindex(name: &str) -> Result<u32> {
    let path = Path::new("/sys/class/net").join(name).join("ifindex");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    text.trim()
        .parse()
        .with_context(|| format!("parsing {}", path.display()))
}

/// The host link with this ifindex.
pub(crate) fn link_by_index(index: u32) -> Option<String> {
    std::fs::read_dir("/sys/class/net")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            (ifindex(&name).ok()? == index).then_some(name)
        })
}

/// Host links enslaved to `bridge`.
pub(crate) fn links_with_master(bridge: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/sys/class/net") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|entry| {
            std::fs::read_link(entry.path().join("master"))
                .is_ok_and(|master| master.file_name().is_some_and(|n| n == bridge))
        })
        .filter_map(|entry| entry.file_name().into_string().ok())
        .collect()
}

/// The bridge a host link is enslaved to.
pub(crate) fn master_of(link: &str) -> Option<String> {
    let master = std::fs::read_link(Path::new("/sys/class/net").join(link).join("master")).ok()?;
    Some(master.file_name()?.to_string_lossy().into_owned())
}

/// Turns IPv6 off on a host link, so it sends no router solicitations or MLD reports.
pub(crate) fn disable_ipv6(link: &str) -> Result<()> {
    let path = Path::new("/proc/sys/net/ipv6/conf")
        .join(link)
        .join("disable_ipv6");
    if !path.parent().is_some_and(Path::exists) {
        return Ok(()); // IPv6 not compiled in or disabled host-wide
    }
    std::fs::write(&path, "1").with_context(|| format!("writing 1 to {}", path.display()))
}

/// `net.ipv4.ip_forward`, as text.
pub(crate) fn ip_forward() -> Result<String> {
    Ok(std::fs::read_to_string(IP_FORWARD)
        .context("reading net.ipv4.ip_forward")?
        .trim()
        .to_string())
}

/// Sets `net.ipv4.ip_forward` back.
pub(crate) fn set_ip_forward(value: &str) -> Result<()> {
    std::fs::write(IP_FORWARD, value).context("restoring net.ipv4.ip_forward")
}

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// The host-side veth in a containerd verbose `cniResult`: the interface that is neither in a
/// sandbox nor the bridge.
pub(crate) fn host_veth_from_cni_result(
    cni_result: &serde_json::Value,
    bridge: &str,
) -> Option<String> {
    cni_result
        .get("Interfaces")?
        .as_object()?
        .iter()
        .find(|(name, config)| {
            name.as_str() != bridge
                && name.as_str() != "lo"
                && config
                    .get("Sandbox")
                    .and_then(serde_json::Value::as_str)
                    .unwrap_or("")
                    .is_empty()
        })
        .map(|(name, _)| name.clone())
}
