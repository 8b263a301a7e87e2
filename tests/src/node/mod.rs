//! A private Kubernetes-style node: containerd + CNI bridge, with pods made over CRI.
//!
//! ```no_run
//! use podtrace_tests::node::{Node, PodSpec};
//!
//! let node = Node::start()?;                       // needs root
//! let web = node.run_pod(PodSpec::new("web"))?;    // busybox httpd on :8080
//! let out = web.exec(&["busybox", "ping", "-c", "1", &node.gateway().to_string()])?;
//! assert_eq!(out.code, 0);
//! // ... run podtrace against node.endpoint() ...
//! node.shutdown()?;                                // or just drop it
//! # anyhow::Ok(())
//! ```
//!
//! What a node is made of, all removed again by [`Node::shutdown`] or `Drop`:
//! - a directory `$TMPDIR/podtrace-node-N` with containerd's root, state, socket, config, logs,
//!   the CNI config and IPAM leases, and the locally built images;
//! - a `containerd --config` process (CRI plugin, runc, overlayfs, no apparmor);
//! - a Linux bridge `ptrN` with pods on `10.245.N.0/24` (gateway `.1` on the bridge, no default
//!   route in the pods, no masquerading), IPv6 disabled on the bridge, the host veths and in the
//!   pods;
//! - pods' cgroups `kubepods/besteffort/pod<uid>` in every cgroup hierarchy;
//! - `/run/containerd/s` (shim sockets) and `/var/lib/cni/results`, which containerd 1.6 always
//!   uses: removed if they did not exist before;
//! - `net.ipv4.ip_forward`, which the bridge plugin turns on: restored.
//!
//! Several nodes can run at once in one process (each claims a free `N`); running nodes in
//! several processes at once also works, but then the shared directories above may be left
//! behind. A node whose process died (SIGKILL, Ctrl-C) is cleaned up by the next
//! [`Node::start`].

mod cleanup;
mod containerd;
mod footprint;
mod images;
mod kubelet;
pub mod manifest;
mod net;
mod pod;
mod remains;
mod sys;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{bail, Context, Result};

pub use pod::{ExecOutput, HostVeth, Mount, Pod, PodSpec, Security};
pub use remains::{PodTrace, Trace};

use containerd::Cri;
use footprint::{Footprint, GlobalsGuard};

/// The pause image name containerd's CRI plugin uses as sandbox image (imported, not pulled).
pub const PAUSE_IMAGE: &str = "registry.k8s.io/pause:3.9";
/// The app image: `/bin/busybox` from busybox-static and a `/www/index.html`.
pub const BUSYBOX_IMAGE: &str = "localhost/podtrace-test/busybox:1";
/// What `GET /` answers from a pod running the default app.
pub const INDEX_HTML: &str = "hello from a podtrace test pod\n";
/// Port of the default app's HTTP server.
pub const HTTP_PORT: u16 = 8080;

/// A running private node. Dropping it tears everything down (errors are printed).
pub struct Node {
    fp: Footprint,
    containerd: Option<Child>,
    cri: Option<Cri>,
    pods: Arc<Mutex<Vec<String>>>,
    globals: Option<GlobalsGuard>,
    down: bool,
}

impl Node {
    /// Builds the images, starts containerd with its CNI bridge and waits until CRI reports
    /// RuntimeReady and NetworkReady. Takes about two seconds.
    ///
    /// # Errors
    ///
    /// Not root, a missing tool (containerd, runc, ctr, gcc, CNI plugins, busybox), or any step
    /// failing; what was set up so far is torn down before returning.
    pub fn start() -> Result<Node> {
        let t0 = Instant::now();
        cleanup::preflight()?;
        cleanup::clean_stale_nodes();
        let globals = GlobalsGuard::acquire()?;
        let mut fp = net::claim(std::process::id())?;
        fp.globals = globals.snapshot();
        let mut node = Node {
            fp,
            containerd: None,
            cri: None,
            pods: Arc::default(),
            globals: Some(globals),
            down: false,
        };
        node.boot()
            .with_context(|| format!("starting test node {}", node.fp.dir.display()))?;
        node.log(&format!("node up in {:.2?}", t0.elapsed()));
        Ok(node)
    }

    /// Tears down the nodes of processes that died without doing it (SIGKILL, `exit` without
    /// unwinding). [`Node::start`] does it first; call it to get a clean machine without
    /// starting a node.
    pub fn clean_stale() {
        cleanup::clean_stale_nodes();
    }

    fn boot(&mut self) -> Result<()> {
        let dir = self.fp.dir.clone();
        self.fp.save()?;
        net::write_cni_config(&self.fp)?;
        let images = images::build(&dir.join("images"))?;
        let child = containerd::spawn(&self.fp)?;
        self.fp.containerd_pid = Some(child.id());
        self.containerd = Some(child);
        self.fp.save()?;
        let cri = containerd::wait_ready(&self.fp, self.containerd.as_mut(), &images)?;
        self.cri = Some(cri);
        Ok(())
    }

    /// The node's CRI endpoint, `unix:///…/containerd.sock`: give it to podtrace as
    /// `--runtime-endpoint`.
    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.fp.socket().display())
    }

    /// The node's private directory.
    pub fn dir(&self) -> &Path {
        &self.fp.dir
    }

    /// Name of the pods' bridge, `ptrN`.
    pub fn bridge(&self) -> &str {
        &self.fp.bridge
    }

    /// The bridge's address, the pods' gateway: `10.245.N.1`.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 245, self.fp.index, 1)
    }

    /// The pod network, `10.245.N.0/24`.
    pub fn subnet(&self) -> String {
        net::subnet(self.fp.index)
    }

    fn cri(&self) -> Result<&Cri> {
        match &self.cri {
            Some(cri) if !self.down => Ok(cri),
            _ => bail!("the test node is shut down"),
        }
    }

    /// Creates a pod like kubelet would and starts its app container. For a pod with its own
    /// network, waits until the default app's HTTP server answers.
    ///
    /// # Errors
    ///
    /// Any CRI call failing, or the pod's network not showing up as expected.
    pub fn run_pod(&self, spec: PodSpec) -> Result<Pod> {
        let cri = self.cri()?;
        let uid = cleanup::random_uuid()?;
        {
            // Recorded before the sandbox exists, so a crash mid-way still cleans its cgroups.
            let mut pods = self.pods.lock().unwrap_or_else(|e| e.into_inner());
            pods.push(uid.clone());
            let mut fp = self.fp.clone();
            fp.pod_uids = pods.clone();
            fp.save()?;
        }
        let t0 = Instant::now();
        let pod = kubelet::run(cri, &self.fp, &spec, &uid, 0)
            .with_context(|| format!("running pod {}/{}", spec.namespace, spec.name))?;
        self.log(&format!(
            "pod {}/{} up in {:.2?}",
            pod.namespace,
            pod.name,
            t0.elapsed()
        ));
        Ok(pod)
    }

    /// Imports an image archive into the node's containerd (`ctr images import`, namespace
    /// `k8s.io`, where the CRI plugin looks), as an operator loads an image onto a node.
    ///
    /// # Errors
    ///
    /// `ctr` failing.
    pub fn import_image(&self, archive: &Path) -> Result<()> {
        self.cri()?;
        containerd::import(&self.fp.socket(), archive)
    }

    /// The id of an image as CRI `ImageStatus` reports it, `None` when the node lacks it.
    ///
    /// # Errors
    ///
    /// The CRI call failing.
    pub fn image_id(&self, name: &str) -> Result<Option<String>> {
        let cri = self.cri()?;
        let request = k8s_cri::v1::ImageStatusRequest {
            image: Some(k8s_cri::v1::ImageSpec {
                image: name.to_string(),
                ..Default::default()
            }),
            verbose: false,
        };
        let reply = cri
            .block_on(async { cri.images().image_status(request).await })
            .context("ImageStatus")?
            .into_inner();
        Ok(reply.image.map(|i| i.id))
    }

    /// The node's containerd socket (for a hostPath mount of it).
    pub fn socket(&self) -> PathBuf {
        self.fp.socket()
    }

    /// Deletes a pod as kubelet does (stop container with timeout 0, remove it, stop and
    /// remove the sandbox) and removes its cgroups.
    ///
    /// # Errors
    ///
    /// A CRI call failing for another reason than "not found".
    pub fn remove_pod(&self, pod: &Pod) -> Result<()> {
        let cri = self.cri()?;
        kubelet::remove(cri, &pod.sandbox_id)?;
        sys::remove_pod_cgroups(&pod.uid)
    }

    /// Re-creates a pod's sandbox as kubelet does when it finds it dead:
    /// stops the old one (its veth goes), runs a new one for the same pod
    /// (same uid, the next attempt, a new veth) with the app again, then
    /// removes the old one. Returns the pod on its new sandbox.
    ///
    /// # Errors
    ///
    /// Any CRI call failing.
    pub fn recreate_sandbox(&self, pod: &Pod, spec: &PodSpec, attempt: u32) -> Result<Pod> {
        let cri = self.cri()?;
        kubelet::stop_sandbox(cri, &pod.sandbox_id)?;
        let t0 = Instant::now();
        let new = kubelet::run(cri, &self.fp, spec, &pod.uid, attempt).with_context(|| {
            format!(
                "re-creating the sandbox of {}/{}",
                spec.namespace, spec.name
            )
        })?;
        kubelet::remove(cri, &pod.sandbox_id)?;
        self.log(&format!(
            "pod {}/{} sandbox re-created (attempt {attempt}) in {:.2?}",
            new.namespace,
            new.name,
            t0.elapsed()
        ));
        Ok(new)
    }

    /// Stops a pod's sandbox but keeps the pod (state NOTREADY); `remove_pod`
    /// still removes it.
    ///
    /// # Errors
    ///
    /// The CRI call failing for another reason than "not found".
    pub fn stop_pod_sandbox(&self, pod: &Pod) -> Result<()> {
        kubelet::stop_sandbox(self.cri()?, &pod.sandbox_id)
    }

    /// Tears the node down now, returning what could not be cleaned.
    ///
    /// # Errors
    ///
    /// Every teardown step is tried; the error lists those that failed.
    pub fn shutdown(mut self) -> Result<()> {
        self.teardown()
    }

    fn teardown(&mut self) -> Result<()> {
        if self.down {
            return Ok(());
        }
        self.down = true;
        let t0 = Instant::now();
        if let Ok(pods) = self.pods.lock() {
            self.fp.pod_uids.clone_from(&pods);
        }
        let mut problems = Vec::new();
        if let Some(cri) = &self.cri {
            if let Err(err) = kubelet::remove_all(cri) {
                problems.push(format!("removing pods over CRI: {err:#}"));
            }
        }
        problems.extend(cleanup::teardown(&self.fp, self.containerd.take()));
        // Drops the runtime (and its connections) before the globals are restored.
        self.cri = None;
        if let Some(globals) = self.globals.take() {
            problems.extend(globals.release());
        }
        self.log(&format!("node down in {:.2?}", t0.elapsed()));
        if problems.is_empty() {
            Ok(())
        } else {
            bail!("test node teardown incomplete: {}", problems.join("; "))
        }
    }

    fn log(&self, message: &str) {
        if std::env::var_os("PODTRACE_NODE_QUIET").is_none() {
            eprintln!("[test node {}] {message}", self.fp.bridge);
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Err(err) = self.teardown() {
            eprintln!("[test node {}] {err:#}", self.fp.bridge);
        }
    }
}

// Tests share nodes and pods between threads.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<Node>();
    send_sync::<Pod>();
};

/// Where the pod's own files live under the node directory.
pub(crate) fn pod_log_dir(fp: &Footprint, uid: &str) -> PathBuf {
    fp.dir.join("logs").join(uid)
}
