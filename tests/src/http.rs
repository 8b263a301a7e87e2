//! A minimal HTTP client for test traffic. (busybox wget's -T crashes in
//! Debian's static build, and a timeout matters here.)

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, TcpStream},
    time::Duration,
};

use anyhow::{ensure, Context, Result};

/// `GET /` over HTTP/1.0; returns the whole answer (status line, headers, body).
pub fn get(ip: Ipv4Addr, port: u16) -> Result<String> {
    get_path(ip, port, "/")
}

/// `GET PATH` over HTTP/1.0 (any answer, a 404 too); returns the whole answer.
pub fn get_path(ip: Ipv4Addr, port: u16, path: &str) -> Result<String> {
    let timeout = Duration::from_secs(3);
    let mut conn = TcpStream::connect_timeout(&(ip, port).into(), timeout)
        .with_context(|| format!("connecting to {ip}:{port}"))?;
    conn.set_read_timeout(Some(timeout))?;
    // One write, so the request is one segment, as a real client sends it.
    conn.write_all(format!("GET {path} HTTP/1.0\r\nHost: {ip}\r\n\r\n").as_bytes())?;
    let mut answer = String::new();
    conn.read_to_string(&mut answer)?;
    ensure!(
        answer.starts_with("HTTP/1."),
        "not an HTTP answer: {answer:?}"
    );
    Ok(answer)
}
