//! `podtrace agent`: the long-running process of a DaemonSet's pod (deploy/). It checks once
//! that captures can work on this node, says so, and waits for SIGTERM; captures run in its
//! container with `kubectl exec … -- podtrace capture …`, with the same privileges.

use anyhow::Result;
use clap::Args;
use podtrace::{
    attach::{FilterEngine, LoadOptions, Programs},
    preflight, target,
};
use tokio::signal::unix::{signal, SignalKind};

use super::RuntimeArgs;

#[derive(Debug, Args)]
pub struct AgentArgs {
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

impl AgentArgs {
    /// Fails with the first thing missing (a capability, the runtime socket, the node's PID
    /// namespace, the kernel's support), else prints one ready line and waits for a signal.
    pub async fn run(&self) -> Result<()> {
        preflight::check(preflight::Reach::Processes)?;
        let (mut client, endpoint) =
            target::connect(self.runtime.runtime_endpoint.as_deref()).await?;
        let pods = target::list(&mut client, None).await?;
        // Loading (not attaching) proves the kernel, the capabilities and seccomp allow it.
        drop(Programs::load(LoadOptions {
            snaplen: 96,
            ring_bytes: 64 * 1024,
            filter: &[],
            engine: FilterEngine::Auto,
            slow_loads_only: false,
            immediate: false,
            links: 1,
        })?);
        eprintln!(
            "podtrace: agent ready: container runtime {endpoint}, {} pods on this node, eBPF programs load; \
             capture with: kubectl exec POD -- podtrace capture TARGET ...",
            pods.len()
        );
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        eprintln!("podtrace: agent stopped");
        Ok(())
    }
}
