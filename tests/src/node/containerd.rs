//! The node's private containerd: its config, the process, and the CRI client to it.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{ImageSpec, ImageStatusRequest, StatusRequest, VersionRequest};
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};
use tower::service_fn;

use super::footprint::Footprint;
use super::images::Images;
use super::{BUSYBOX_IMAGE, PAUSE_IMAGE};

/// How long containerd may take to come up (socket, images, CRI ready).
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A CRI client with the runtime that drives it, usable from sync code and from inside another
/// tokio runtime (a `#[tokio::test]`).
#[derive(Clone)]
pub(crate) struct Cri {
    rt: Arc<Rt>,
    channel: Channel,
}

/// The harness's own tokio runtime; shut down without blocking, so dropping it is fine anywhere.
struct Rt(Option<tokio::runtime::Runtime>);

impl Drop for Rt {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

impl Cri {
    pub fn runtime(&self) -> RuntimeServiceClient<Channel> {
        RuntimeServiceClient::new(self.channel.clone())
    }

    pub fn images(&self) -> ImageServiceClient<Channel> {
        ImageServiceClient::new(self.channel.clone())
    }

    /// Runs a future to completion on the harness runtime.
    pub fn block_on<F: Future + Send>(&self, fut: F) -> F::Output
    where
        F::Output: Send,
    {
        block_on(&self.rt, fut)
    }
}

fn block_on<F: Future + Send>(rt: &Rt, fut: F) -> F::Output
where
    F::Output: Send,
{
    let rt = rt.0.as_ref().expect("harness runtime is alive");
    if tokio::runtime::Handle::try_current().is_ok() {
        // Blocking inside a runtime panics: block a thread of our own instead.
        std::thread::scope(|s| {
            s.spawn(|| rt.block_on(fut))
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    } else {
        rt.block_on(fut)
    }
}

/// The containerd config: everything private to the node directory, CRI set up as in
/// `shared/notes/node-harness.md`.
fn config(fp: &Footprint) -> String {
    let d = fp.dir.display();
    let cni_conf = fp.cni_conf_dir();
    format!(
        r#"version = 2
root = "{d}/root"
state = "{d}/state"
# Plugins that would write outside the node directory, and ones nobody here needs.
disabled_plugins = [
  "io.containerd.internal.v1.opt",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing",
]

[grpc]
  address = "{socket}"

[ttrpc]
  address = "{socket}.ttrpc"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  disable_apparmor = true
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  enable_selinux = false
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"

    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"

      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{d}/runc"

  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni_conf}"
    max_conf_num = 1
"#,
        socket = fp.socket().display(),
        cni_conf = cni_conf.display(),
    )
}

/// Writes the config and starts `containerd --config`, its output going to `containerd.log`.
pub(crate) fn spawn(fp: &Footprint) -> Result<Child> {
    std::fs::write(fp.config(), config(fp)).context("writing containerd.toml")?;
    let log = std::fs::File::create(log_path(fp)).context("creating containerd.log")?;
    Command::new("containerd")
        .arg("--config")
        .arg(fp.config())
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting containerd")
}

fn log_path(fp: &Footprint) -> PathBuf {
    fp.dir.join("containerd.log")
}

/// The last lines of containerd's log, for error messages.
fn log_tail(fp: &Footprint) -> String {
    let text = std::fs::read_to_string(log_path(fp)).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// Waits for the socket, imports the images, connects, and waits for CRI RuntimeReady,
/// NetworkReady and both images.
pub(crate) fn wait_ready(
    fp: &Footprint,
    child: Option<&mut Child>,
    images: &Images,
) -> Result<Cri> {
    let deadline = Instant::now() + START_TIMEOUT;
    let socket = fp.socket();
    let mut child = child;
    while !socket.exists() {
        if let Some(status) = child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
            bail!("containerd exited ({status}):\n{}", log_tail(fp));
        }
        if Instant::now() > deadline {
            bail!("containerd socket did not appear:\n{}", log_tail(fp));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for tar in [&images.pause, &images.busybox] {
        import(&socket, tar)?;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("test-node-cri")
        .enable_all()
        .build()
        .context("creating the harness tokio runtime")?;
    let rt = Arc::new(Rt(Some(rt)));
    let channel = block_on(&rt, connect(&socket))?;
    let cri = Cri { rt, channel };
    cri.block_on(async {
        let mut runtime = cri.runtime();
        let mut image_client = cri.images();
        runtime
            .version(VersionRequest::default())
            .await
            .context("CRI Version")?;
        loop {
            let status = runtime
                .status(StatusRequest { verbose: false })
                .await
                .context("CRI Status")?
                .into_inner();
            let conditions = status.status.map(|s| s.conditions).unwrap_or_default();
            let ready = |kind: &str| conditions.iter().any(|c| c.r#type == kind && c.status);
            let mut images_ready = true;
            for image in [PAUSE_IMAGE, BUSYBOX_IMAGE] {
                let found = image_client
                    .image_status(ImageStatusRequest {
                        image: Some(ImageSpec {
                            image: image.to_string(),
                            ..Default::default()
                        }),
                        verbose: false,
                    })
                    .await
                    .context("CRI ImageStatus")?
                    .into_inner();
                images_ready &= found.image.is_some();
            }
            if ready("RuntimeReady") && ready("NetworkReady") && images_ready {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "CRI not ready: conditions {conditions:?}, images present {images_ready}:\n{}",
                    log_tail(fp)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })?;
    Ok(cri)
}

/// A gRPC channel over the unix socket (the URI is unused).
async fn connect(socket: &Path) -> Result<Channel> {
    let path = socket.to_path_buf();
    Endpoint::from_static("http://test-node.invalid")
        .connect_with_connector(service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await
        .with_context(|| format!("connecting to {}", socket.display()))
}

/// `ctr -a SOCKET -n k8s.io images import TAR`: the CRI plugin's namespace, unpacked for
/// overlayfs.
pub(crate) fn import(socket: &Path, tar: &Path) -> Result<()> {
    let out = Command::new("ctr")
        .arg("-a")
        .arg(socket)
        .args(["-n", "k8s.io", "images", "import"])
        .arg(tar)
        .output()
        .context("running ctr")?;
    if !out.status.success() {
        bail!(
            "ctr images import {}: {}",
            tar.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
