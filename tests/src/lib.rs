//! Test support for podtrace's end-to-end tests and `cargo xtask demo`.
//!
//! [`node::Node`] starts a private containerd that tests drive over CRI exactly as kubelet
//! would, so podtrace meets real pods (pause sandbox, CNI veth, app container) without a cluster.
//! Everything it needs is built locally; it needs root.

pub mod http;
pub mod netns;
pub mod node;
pub mod pcap;
pub mod pcapng;
pub mod run;
mod sh;
pub mod traffic;
pub mod tshark;
pub mod vlan;

pub mod bench;

pub use sh::sh;
