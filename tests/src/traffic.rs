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
/// UDP to several ports both ways (some closed: ICMP unreachable), and the
/// same over IPv6 when it is on.
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
        Ok(())
    })??;
    std::thread::sleep(Duration::from_millis(50));
    drop(receivers);
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
