//! Connecting to the node's container runtime over its CRI unix socket.
//!
//! The endpoint is chosen like crictl does: `--runtime-endpoint`, else
//! `$CONTAINER_RUNTIME_ENDPOINT`, else the first default socket that answers CRI. The defaults
//! are probed on the node's own paths first, then under `/host`, where `kubectl debug node/…`
//! mounts the node's root.

use std::io::ErrorKind;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use k8s_cri::v1::VersionRequest;
use tokio::net::UnixStream;
use tonic::transport::{Endpoint, Uri};
use tower::service_fn;

use super::{RuntimeClient, TargetError};
use crate::error_chain;

/// Sockets probed in order when no endpoint is given: containerd, k3s's containerd, CRI-O,
/// cri-dockerd; then the same under [`HOST_ROOT`].
pub const DEFAULT_ENDPOINTS: [&str; 4] = [
    "unix:///run/containerd/containerd.sock",
    "unix:///run/k3s/containerd/containerd.sock",
    "unix:///run/crio/crio.sock",
    "unix:///var/run/cri-dockerd.sock",
];

/// Where `kubectl debug node/NODE` puts the node's root file system.
pub const HOST_ROOT: &str = "/host";

/// Environment variable naming the endpoint, as for crictl.
pub const ENDPOINT_ENV: &str = "CONTAINER_RUNTIME_ENDPOINT";

/// How long the `Version` check may take before the endpoint is declared not a CRI runtime.
const VERSION_TIMEOUT: Duration = Duration::from_secs(5);

/// Every endpoint probed by default, in order: [`DEFAULT_ENDPOINTS`], then each under
/// [`HOST_ROOT`].
pub fn default_endpoints() -> Vec<String> {
    let under_host = DEFAULT_ENDPOINTS
        .iter()
        .map(|e| e.replacen("unix://", &format!("unix://{HOST_ROOT}"), 1));
    DEFAULT_ENDPOINTS
        .iter()
        .map(|e| (*e).to_string())
        .chain(under_host)
        .collect()
}

/// Connects to the container runtime and checks with `Version` that it speaks CRI `runtime.v1`.
///
/// `endpoint` is `unix:///path` or a plain socket path. Without it, `$CONTAINER_RUNTIME_ENDPOINT`
/// is used, else [`default_endpoints`] are tried in order. Returns the client and the endpoint
/// that answered.
///
/// # Errors
///
/// [`TargetError::SocketMissing`], [`TargetError::NotASocket`], [`TargetError::PermissionDenied`]
/// (podtrace not run as root), [`TargetError::Connect`], [`TargetError::NotCri`] or
/// [`TargetError::InvalidEndpoint`] for an explicit endpoint; [`TargetError::NoRuntime`] when no
/// default socket answers; [`TargetError::RuntimePidNamespace`] when podtrace cannot see the
/// runtime's processes (a pod without `hostPID`).
pub async fn connect(endpoint: Option<&str>) -> Result<(RuntimeClient, String), TargetError> {
    let explicit = endpoint
        .map(str::to_string)
        .or_else(|| std::env::var(ENDPOINT_ENV).ok().filter(|v| !v.is_empty()));
    if let Some(endpoint) = explicit {
        let client = connect_one(&endpoint).await?;
        return Ok((client, endpoint));
    }
    let mut absent = Vec::new();
    let mut failed = Vec::new();
    for endpoint in default_endpoints() {
        match connect_one(&endpoint).await {
            Ok(client) => return Ok((client, endpoint)),
            Err(TargetError::SocketMissing(path)) => absent.push(path),
            // Root causes for every endpoint: say them now rather than "none found".
            Err(err @ (TargetError::PermissionDenied(_) | TargetError::RuntimePidNamespace(_))) => {
                return Err(err)
            }
            Err(TargetError::NotCri { reason, .. }) => {
                failed.push(format!("{endpoint} is not CRI ({reason})"));
            }
            Err(TargetError::Connect { source, .. }) => {
                failed.push(format!("{endpoint}: {source}"))
            }
            Err(other) => failed.push(other.to_string()),
        }
    }
    Err(TargetError::NoRuntime {
        tried: tried_text(&absent, &failed),
    })
}

/// "no socket at A, B (nor under /host); X: why" for [`TargetError::NoRuntime`].
fn tried_text(absent: &[String], failed: &[String]) -> String {
    let plain: Vec<&str> = absent
        .iter()
        .map(String::as_str)
        .filter(|p| !p.starts_with(&format!("{HOST_ROOT}/")))
        .collect();
    let mut parts = Vec::new();
    if !absent.is_empty() {
        let under_host = absent.len() > plain.len();
        let shown = if plain.is_empty() {
            absent.iter().map(String::as_str).collect()
        } else {
            plain
        };
        parts.push(format!(
            "no socket at {}{}",
            shown.join(", "),
            if under_host && shown.len() < absent.len() {
                format!(" (nor under {HOST_ROOT})")
            } else {
                String::new()
            }
        ));
    }
    parts.extend(failed.iter().cloned());
    parts.join("; ")
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
    if let Some(kind) = not_a_socket(&path) {
        return Err(TargetError::NotASocket { path: shown, kind });
    }
    // A plain connect first, to tell a missing socket from a forbidden or dead one.
    let probe = match UnixStream::connect(&path).await {
        Ok(stream) => stream,
        Err(err) => {
            return Err(match err.kind() {
                ErrorKind::NotFound => TargetError::SocketMissing(shown),
                ErrorKind::PermissionDenied => TargetError::PermissionDenied(shown),
                _ => TargetError::Connect {
                    path: shown,
                    source: err,
                },
            })
        }
    };
    if let Ok(cred) = probe.peer_cred() {
        if !same_pid_namespace(cred.pid()) {
            return Err(TargetError::RuntimePidNamespace(shown));
        }
    }
    drop(probe);
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

/// Whether the runtime (the socket's listener, `peer` as the kernel reports it) numbers
/// processes as podtrace does, so the pause pids it reports are podtrace's `/proc/PID`.
///
/// The kernel gives the listener's pid as seen from podtrace's PID namespace, and 0 when that
/// process is outside it (podtrace in a pod without `hostPID`). A runtime in a namespace nested
/// below podtrace's (podtrace on the host of a kind node) is visible but numbers its pods' pids
/// differently. When the listener's namespace cannot be read, it is given the benefit of the
/// doubt.
fn same_pid_namespace(peer: Option<i32>) -> bool {
    match peer {
        Some(0) => false,
        Some(pid) => {
            let ns = |p: &str| std::fs::read_link(format!("/proc/{p}/ns/pid")).ok();
            match (ns(&pid.to_string()), ns("self")) {
                (Some(theirs), Some(ours)) => theirs == ours,
                _ => true,
            }
        }
        None => true,
    }
}

/// What the file at `path` is when it exists and is not a socket (connecting to it would
/// only say "connection refused").
fn not_a_socket(path: &Path) -> Option<&'static str> {
    let kind = std::fs::metadata(path).ok()?.file_type();
    if kind.is_socket() {
        None
    } else if kind.is_file() {
        Some("a regular file")
    } else if kind.is_dir() {
        Some("a directory")
    } else {
        Some("neither a socket nor a regular file")
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
    async fn regular_file_is_not_a_socket() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("containerd.sock");
        std::fs::write(&file, "").unwrap();
        let err = connect(Some(file.to_str().unwrap())).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "container runtime endpoint {} is not a socket: it is a regular file",
                file.display()
            )
        );
        let err = connect(Some(dir.path().to_str().unwrap()))
            .await
            .unwrap_err();
        assert!(err.to_string().ends_with("it is a directory"), "{err}");
    }

    #[test]
    fn pid_namespace_of_the_runtime() {
        assert!(!same_pid_namespace(Some(0)), "an invisible listener");
        assert!(same_pid_namespace(Some(std::process::id() as i32)));
        assert!(same_pid_namespace(None));
    }

    #[test]
    fn defaults_then_the_same_under_host() {
        let all = default_endpoints();
        assert_eq!(all.len(), 2 * DEFAULT_ENDPOINTS.len());
        assert_eq!(all[0], "unix:///run/containerd/containerd.sock");
        assert_eq!(
            all[DEFAULT_ENDPOINTS.len()],
            "unix:///host/run/containerd/containerd.sock"
        );
        assert!(all.contains(&"unix:///host/run/crio/crio.sock".to_string()));
    }

    #[test]
    fn no_runtime_text_names_what_is_missing() {
        let absent: Vec<String> = default_endpoints()
            .iter()
            .map(|e| socket_path(e).unwrap().display().to_string())
            .collect();
        assert_eq!(
            tried_text(&absent, &[]),
            "no socket at /run/containerd/containerd.sock, /run/k3s/containerd/containerd.sock, \
             /run/crio/crio.sock, /var/run/cri-dockerd.sock (nor under /host)"
        );
        assert_eq!(
            tried_text(
                &absent[1..4],
                &["unix:///run/containerd/containerd.sock: boom".into()]
            ),
            "no socket at /run/k3s/containerd/containerd.sock, /run/crio/crio.sock, \
             /var/run/cri-dockerd.sock; unix:///run/containerd/containerd.sock: boom"
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
