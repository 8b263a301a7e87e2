//! Connecting to the node's container runtime over its CRI unix socket.
//!
//! The endpoint is chosen like crictl does: `--runtime-endpoint`, else
//! `$CONTAINER_RUNTIME_ENDPOINT`, else the first default socket that answers CRI.

use std::io::ErrorKind;
use std::path::PathBuf;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use k8s_cri::v1::VersionRequest;
use tokio::net::UnixStream;
use tonic::transport::{Endpoint, Uri};
use tower::service_fn;

use super::{RuntimeClient, TargetError};
use crate::error_chain;

/// Sockets probed in order when no endpoint is given: containerd, CRI-O, cri-dockerd.
pub const DEFAULT_ENDPOINTS: [&str; 3] = [
    "unix:///run/containerd/containerd.sock",
    "unix:///run/crio/crio.sock",
    "unix:///var/run/cri-dockerd.sock",
];

/// Environment variable naming the endpoint, as for crictl.
pub const ENDPOINT_ENV: &str = "CONTAINER_RUNTIME_ENDPOINT";

/// How long the `Version` check may take before the endpoint is declared not a CRI runtime.
const VERSION_TIMEOUT: Duration = Duration::from_secs(5);

/// Connects to the container runtime and checks with `Version` that it speaks CRI `runtime.v1`.
///
/// `endpoint` is `unix:///path` or a plain socket path. Without it, `$CONTAINER_RUNTIME_ENDPOINT`
/// is used, else [`DEFAULT_ENDPOINTS`] are tried in order. Returns the client and the endpoint
/// that answered.
///
/// # Errors
///
/// [`TargetError::SocketMissing`], [`TargetError::PermissionDenied`] (podtrace not run as root),
/// [`TargetError::Connect`], [`TargetError::NotCri`] or [`TargetError::InvalidEndpoint`] for an
/// explicit endpoint; [`TargetError::NoRuntime`] when no default socket answers.
pub async fn connect(endpoint: Option<&str>) -> Result<(RuntimeClient, String), TargetError> {
    let explicit = endpoint
        .map(str::to_string)
        .or_else(|| std::env::var(ENDPOINT_ENV).ok().filter(|v| !v.is_empty()));
    if let Some(endpoint) = explicit {
        let client = connect_one(&endpoint).await?;
        return Ok((client, endpoint));
    }
    let mut tried = Vec::new();
    for endpoint in DEFAULT_ENDPOINTS {
        match connect_one(endpoint).await {
            Ok(client) => return Ok((client, endpoint.to_string())),
            Err(TargetError::SocketMissing(_)) => tried.push(format!("{endpoint} (no socket)")),
            // Root cause for every endpoint: say it now rather than "none found".
            Err(err @ TargetError::PermissionDenied(_)) => return Err(err),
            Err(TargetError::NotCri { reason, .. }) => {
                tried.push(format!("{endpoint} (not CRI: {reason})"));
            }
            Err(TargetError::Connect { source, .. }) => {
                tried.push(format!("{endpoint} ({source})"));
            }
            Err(other) => tried.push(format!("{endpoint} ({other})")),
        }
    }
    Err(TargetError::NoRuntime {
        tried: tried.join(", "),
    })
}

/// The socket path of `unix:///path` or `/path`.
pub(crate) fn socket_path(endpoint: &str) -> Result<PathBuf, TargetError> {
    let path = match endpoint.split_once("://") {
        Some(("unix", path)) => path,
        Some(_) => return Err(TargetError::InvalidEndpoint(endpoint.to_string())),
        None => endpoint.strip_prefix("unix:").unwrap_or(endpoint),
    };
    if path.is_empty() {
        return Err(TargetError::InvalidEndpoint(endpoint.to_string()));
    }
    Ok(PathBuf::from(path))
}

/// Connects to one endpoint and validates it with `Version`.
async fn connect_one(endpoint: &str) -> Result<RuntimeClient, TargetError> {
    let path = socket_path(endpoint)?;
    let shown = path.display().to_string();
    // A plain connect first, to tell a missing socket from a forbidden or dead one.
    if let Err(err) = UnixStream::connect(&path).await {
        return Err(match err.kind() {
            ErrorKind::NotFound => TargetError::SocketMissing(shown),
            ErrorKind::PermissionDenied => TargetError::PermissionDenied(shown),
            _ => TargetError::Connect {
                path: shown,
                source: err,
            },
        });
    }
    let connector_path = path.clone();
    // The URI is unused: every connection goes to the socket.
    let channel = Endpoint::from_static("http://cri.invalid")
        .connect_timeout(VERSION_TIMEOUT)
        .connect_with_connector(service_fn(move |_: Uri| {
            let path = connector_path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await;
    let not_cri = |reason: String| TargetError::NotCri {
        endpoint: endpoint.to_string(),
        reason,
    };
    // The socket accepted a plain connection above, so a failed HTTP/2 handshake means the
    // server speaks something else.
    let mut client = RuntimeClient::new(channel.map_err(|err| not_cri(error_chain(&err)))?);
    match tokio::time::timeout(VERSION_TIMEOUT, client.version(VersionRequest::default())).await {
        Err(_) => Err(not_cri(format!(
            "no answer to Version within {} s",
            VERSION_TIMEOUT.as_secs()
        ))),
        Ok(Err(status)) if status.code() == tonic::Code::Unimplemented => Err(not_cri(
            "runtime.v1.RuntimeService is not served (CRI plugin disabled, or a runtime too old)"
                .to_string(),
        )),
        Ok(Err(status)) => Err(not_cri(error_chain(&status))),
        Ok(Ok(_)) => Ok(client),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_forms() {
        let p = |e| socket_path(e).map(|p| p.display().to_string());
        assert_eq!(p("unix:///run/x.sock").unwrap(), "/run/x.sock");
        assert_eq!(p("/run/x.sock").unwrap(), "/run/x.sock");
        assert_eq!(p("unix:/run/x.sock").unwrap(), "/run/x.sock");
        assert!(matches!(
            socket_path("tcp://127.0.0.1:1"),
            Err(TargetError::InvalidEndpoint(_))
        ));
        assert!(matches!(
            socket_path("unix://"),
            Err(TargetError::InvalidEndpoint(_))
        ));
    }

    #[tokio::test]
    async fn missing_socket_is_named() {
        let err = connect(Some("unix:///nonexistent/podtrace-test.sock"))
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "container runtime socket /nonexistent/podtrace-test.sock does not exist"
        );
    }

    #[tokio::test]
    async fn refused_socket_is_a_connect_error() {
        let dir = std::env::temp_dir().join(format!("podtrace-ep-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("dead.sock");
        // Bound, then closed: the file stays, nobody listens.
        drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
        let err = connect(Some(sock.to_str().unwrap())).await.unwrap_err();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(matches!(err, TargetError::Connect { .. }), "{err}");
    }

    #[tokio::test]
    async fn non_grpc_server_is_not_cri() {
        let dir = std::env::temp_dir().join(format!("podtrace-ep2-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("http1.sock");
        let listener = tokio::net::UnixListener::bind(&sock).unwrap();
        // Answers every connection with an HTTP/1 error, as a non-gRPC daemon would.
        let server = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            while let Ok((mut stream, _)) = listener.accept().await {
                let _ = stream
                    .write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                    .await;
            }
        });
        let err = connect(Some(sock.to_str().unwrap())).await.unwrap_err();
        server.abort();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(matches!(err, TargetError::NotCri { .. }), "{err}");
    }
}
