//! Traffic generators for tests: everything between a [`TestNet`]'s two
//! ends, nothing else.

use std::{
    io::{Read, Write},
    net::{IpAddr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    time::Duration,
};

use anyhow::{bail, ensure, Result};

use crate::{netns::TestNet, sh};

/// Runs `f` with this thread (and the threads and processes it starts)
/// pinned to CPU 0. The packets it causes are then handled on that CPU in
/// order, so every capture running meanwhile records them in the same
/// order (packets handled on two CPUs at once reach each capture's ring in
/// whichever order that capture's programs ran).
pub fn on_one_cpu<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    // SAFETY: cpu_set_t is plain data; the calls only read/write `set`.
    unsafe {
        let mut saved: libc::cpu_set_t = std::mem::zeroed();
        let size = std::mem::size_of::<libc::cpu_set_t>();
        if libc::sched_getaffinity(0, size, &mut saved) != 0 {
            bail!("sched_getaffinity: {}", std::io::Error::last_os_error());
        }
        let mut one: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut one);
        if libc::sched_setaffinity(0, size, &one) != 0 {
            bail!("sched_setaffinity: {}", std::io::Error::last_os_error());
        }
        let result = f();
        libc::sched_setaffinity(0, size, &saved);
        result
    }
}

/// ARP (neighbours flushed first), ICMP echo small and large, TCP with a
/// handshake and payload both ways (GSO-sized on the host's side), a RST,
/// UDP to several ports both ways (some closed: ICMP unreachable), 802.1Q
/// tagged datagrams, a bulk transfer of zeros whose GSO packets run past
/// 60000 bytes, and the same over IPv6 when it is on.
pub fn mixed(net: &TestNet, v6: Option<(Ipv6Addr, Ipv6Addr)>) -> Result<()> {
    sh(&["ip", "neigh", "flush", "dev", &net.host_if])?;
    net.in_ns(&["ip", "neigh", "flush", "dev", "eth0"])?;
    net.ping(3, 56)?;
    net.ping(2, 1400)?;
    let mut request = b"GET / HTTP/1.0\r\n\r\n".to_vec();
    request.extend(pattern(4000, 1));
    let (host, ns) = (IpAddr::V4(net.host_ip), IpAddr::V4(net.ns_ip));
    tcp_exchange(net, (ns, 9000).into(), &request, &pattern(1200, 7))?;
    // Nobody listens on 9001: a SYN, then a RST.
    let _ = TcpStream::connect_timeout(&(ns, 9001).into(), Duration::from_secs(2));
    udp_both_ways(net, host, ns)?;
    for len in [20, 300] {
        tagged_udp(net, 10, 7001, &pattern(len, 5))?;
    }
    tcp_exchange(net, (ns, 9002).into(), &vec![0; 1 << 20], b"done")?;
    if let Some((host6, ns6)) = v6 {
        sh(&[
            "busybox",
            "ping6",
            "-q",
            "-c",
            "2",
            "-W",
            "2",
            &ns6.to_string(),
        ])?;
        tcp_exchange(net, (IpAddr::V6(ns6), 9000).into(), &request[..600], b"ok")?;
        udp_both_ways(net, IpAddr::V6(host6), IpAddr::V6(ns6))?;
    }
    Ok(())
}

fn udp_both_ways(net: &TestNet, host: IpAddr, ns: IpAddr) -> Result<()> {
    let receivers = net.within(|| [53, 7001, 8080].map(|port| UdpSocket::bind((ns, port))))?;
    let receivers: Vec<UdpSocket> = receivers.into_iter().collect::<Result<_, _>>()?;
    let sock = UdpSocket::bind((host, 0))?;
    let mut payload = vec![0, 1];
    payload.extend(pattern(30, 9));
    for (port, size) in [
        (53, 40),
        (7001, 10),
        (7001, 300),
        (7002, 64),
        (8080, 1000),
        (5000, 20),
    ] {
        sock.send_to(
            &payload
                .iter()
                .copied()
                .cycle()
                .take(size)
                .collect::<Vec<_>>(),
            (ns, port),
        )?;
    }
    net.within(|| -> Result<()> {
        let s = UdpSocket::bind((ns, 7005))?;
        // To a closed port on the host: it answers with ICMP unreachable.
        s.send_to(&pattern(50, 3), (host, 7003))?;
        s.send_to(&pattern(1200, 4), (host, 53))?;
        // To the subnet's broadcast: a frame not addressed to the host's MAC.
        if let IpAddr::V4(ns) = ns {
            let [a, b, c, _] = ns.octets();
            s.set_broadcast(true)?;
            s.send_to(
                &pattern(30, 6),
                (std::net::Ipv4Addr::new(a, b, c, 255), 7009),
            )?;
        }
        Ok(())
    })??;
    std::thread::sleep(Duration::from_millis(50));
    drop(receivers);
    Ok(())
}

/// A UDP datagram to the namespace's `port` in an 802.1Q frame with VLAN id
/// `vid`, written as is to the host end (AF_PACKET), so the egress hook sees
/// the tag in the frame. The namespace has no VLAN link: it drops it.
pub fn tagged_udp(net: &TestNet, vid: u16, port: u16, payload: &[u8]) -> Result<()> {
    let mac = |text: String| -> Result<Vec<u8>> {
        text.split(':')
            .map(|b| u8::from_str_radix(b, 16).map_err(Into::into))
            .collect()
    };
    let (src, dst) = (mac(net.host_mac()?)?, mac(net.ns_mac()?)?);
    let udp_len = 8 + payload.len() as u16;
    let mut frame = [dst.as_slice(), src.as_slice()].concat();
    frame.extend([0x81, 0x00]);
    frame.extend(vid.to_be_bytes());
    frame.extend([0x08, 0x00, 0x45, 0]);
    frame.extend((20 + udp_len).to_be_bytes());
    frame.extend([0, 0, 0x40, 0, 64, 17, 0, 0]);
    frame.extend(net.host_ip.octets());
    frame.extend(net.ns_ip.octets());
    frame.extend(40000u16.to_be_bytes());
    frame.extend(port.to_be_bytes());
    frame.extend(udp_len.to_be_bytes());
    frame.extend([0, 0]);
    frame.extend(payload);
    let ifindex: i32 = std::fs::read_to_string(format!("/sys/class/net/{}/ifindex", net.host_if))?
        .trim()
        .parse()?;
    // SAFETY: plain socket calls on a socket this function owns and closes;
    // the address and buffer outlive the calls.
    unsafe {
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
        ensure!(
            fd >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        let mut addr: libc::sockaddr_ll = std::mem::zeroed();
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = ifindex;
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&dst);
        let sent = libc::sendto(
            fd,
            frame.as_ptr().cast(),
            frame.len(),
            0,
            std::ptr::addr_of!(addr).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        );
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        ensure!(
            sent == frame.len() as isize,
            "sending a tagged frame: {err}"
        );
    }
    Ok(())
}

/// `request` from the host to `to` (a listener in the namespace), `reply`
/// back; returns once both sides are done.
pub fn tcp_exchange(net: &TestNet, to: SocketAddr, request: &[u8], reply: &[u8]) -> Result<()> {
    let listener = net.within(|| TcpListener::bind(to))??;
    std::thread::scope(|s| -> Result<()> {
        let server = s.spawn(|| -> Result<Vec<u8>> {
            let (mut conn, _) = listener.accept()?;
            let mut got = vec![0; request.len()];
            conn.read_exact(&mut got)?;
            conn.write_all(reply)?;
            Ok(got)
        });
        let mut client = TcpStream::connect(to)?;
        client.write_all(request)?;
        let mut answer = vec![0; reply.len()];
        client.read_exact(&mut answer)?;
        drop(client);
        let got = server.join().unwrap()?;
        ensure!(
            got == request && answer == reply,
            "the TCP exchange itself failed"
        );
        Ok(())
    })
}

pub fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}
