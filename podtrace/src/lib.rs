//! podtrace: capture a pod's packets from the node with TC eBPF, without
//! entering or changing the pod.
//!
//! The pipeline, one module per step:
//! [`target`] (which pods: names, labels, over CRI) → [`link`] (pid or
//! netns → host veth; link events) → [`watch`] (targets joining and leaving)
//! → [`session`] (one ring, one sink, targets added and removed while it
//! runs) → [`attach`] (TC programs, TCX or clsact, with the [`filter`]
//! libpcap compiled; per-link counters) → [`ring`] (drain and decode
//! records) → [`sink`] (pcap, pcapng, text, rotation).

pub mod attach;
pub mod filter;
pub mod link;
pub mod preflight;
mod progress;
pub mod ring;
mod rtnl;
pub mod session;
pub mod sink;
pub mod target;
pub mod watch;

use std::sync::atomic::{AtomicU8, Ordering};

static VERBOSITY: AtomicU8 = AtomicU8::new(0);

/// Sets how chatty `-v` makes podtrace on stderr.
pub fn set_verbosity(level: u8) {
    VERBOSITY.store(level, Ordering::Relaxed);
}

/// Prints a diagnostic line on stderr when `-v` was given.
pub fn verbose(args: std::fmt::Arguments<'_>) {
    if VERBOSITY.load(Ordering::Relaxed) > 0 {
        eprintln!("podtrace: {args}");
    }
}

/// An error and its sources on one line, "outer: inner: innermost", without
/// repeating a message a Display already includes (aya's and tonic's errors
/// hide their causes in `source`).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<Layer>>);

    impl std::fmt::Display for Layer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Layer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|l| l as _)
        }
    }

    #[test]
    fn error_chain_joins_causes_once() {
        let inner = Layer("permission denied", None);
        let middle = Layer("load failed: permission denied", Some(Box::new(inner)));
        let outer = Layer("attach", Some(Box::new(middle)));
        assert_eq!(
            error_chain(&outer),
            "attach: load failed: permission denied"
        );
    }
}
