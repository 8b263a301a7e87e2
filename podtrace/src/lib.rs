//! podtrace: capture a pod's packets from the node with TC eBPF, without
//! entering or changing the pod.
//!
//! The pipeline, one module per step:
//! `target` (pod → sandbox pid, over CRI) → [`link`] (pid or netns → host
//! veth) → [`attach`] (TC programs, TCX or clsact, with the [`filter`]
//! libpcap compiled) → [`ring`] (drain and decode records) → [`sink`]
//! (pcap, text), driven by [`capture`].

pub mod attach;
pub mod capture;
pub mod filter;
pub mod link;
pub mod preflight;
mod progress;
pub mod ring;
pub mod sink;
pub mod target;

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
