//! podtrace's end-to-end tests: the real binary, real eBPF programs attached
//! to real veths, real traffic, captures read back with tshark.
//!
//! Run as root through `cargo xtask test`. When a prerequisite is missing
//! every test fails with the reason, wherever it runs: a test that cannot
//! run never passes, and is never quietly ignored.

mod agent;
mod bench;
mod capture;
mod capture_ring;
mod coexist;
mod dist;
mod errors;
mod files;
mod filter;
mod filter_engines;
mod filter_vlan;
mod hardening;
mod node;
mod output;
mod pods;
mod redirect;
mod text;
mod workload;

use std::process::ExitCode;

use libtest_mimic::{Arguments, Failed, Trial};

type TestFn = fn() -> anyhow::Result<()>;

const TESTS: &[(&str, TestFn)] = &[
    (
        "capture::iface_icmp_and_tcp_both_directions",
        capture::iface_icmp_and_tcp_both_directions,
    ),
    (
        "capture::pid_target_text_directions",
        capture::pid_target_text_directions,
    ),
    ("capture::netns_target", capture::netns_target),
    ("capture::snaplen_is_honoured", capture::snaplen_is_honoured),
    (
        "capture::sigint_after_burst_loses_nothing",
        capture::sigint_after_burst_loses_nothing,
    ),
    (
        "capture::count_and_duration_stop",
        capture::count_and_duration_stop,
    ),
    (
        "capture::sigterm_stops_cleanly",
        capture::sigterm_stops_cleanly,
    ),
    (
        "capture::netns_deleted_mid_capture",
        capture::netns_deleted_mid_capture,
    ),
    (
        "coexist::tcx_foreign_programs_keep_running",
        coexist::tcx_foreign_programs_keep_running,
    ),
    (
        "coexist::clsact_mode_keeps_foreign_filters",
        coexist::clsact_mode_keeps_foreign_filters,
    ),
    (
        "coexist::sigkill_leaves_nothing_attached_tcx",
        coexist::sigkill_leaves_nothing_attached_tcx,
    ),
    (
        "coexist::sigkill_clsact_cleaned_by_next_start",
        coexist::sigkill_clsact_cleaned_by_next_start,
    ),
    (
        "pods::capture_by_name_http_and_ping",
        pods::capture_by_name_http_and_ping,
    ),
    (
        "pods::namespace_and_selector_forms",
        pods::namespace_and_selector_forms,
    ),
    (
        "pods::pods_lists_pods_with_veths",
        pods::pods_lists_pods_with_veths,
    ),
    ("pods::pod_errors", pods::pod_errors),
    ("pods::pod_without_veth_peer", pods::pod_without_veth_peer),
    (
        "pods::pod_deleted_mid_capture",
        pods::pod_deleted_mid_capture,
    ),
    (
        "node::second_node_runs_beside_and_leaves_nothing",
        node::second_node_runs_beside_and_leaves_nothing,
    ),
    (
        "node::crashed_owner_is_cleaned_by_the_next_start",
        node::crashed_owner_is_cleaned_by_the_next_start,
    ),
    (
        "output::pcapng_names_the_pod_and_marks_directions",
        output::pcapng_names_the_pod_and_marks_directions,
    ),
    ("output::direction_filter", output::direction_filter),
    ("output::live_pipe", output::live_pipe),
    ("output::immediate_mode", output::immediate_mode),
    (
        "text::text_matches_tcpdump_on_real_traffic",
        text::text_matches_tcpdump_on_real_traffic,
    ),
    ("files::rotation", files::rotation),
    (
        "files::disk_full_keeps_file_valid",
        files::disk_full_keeps_file_valid,
    ),
    ("errors::not_root", errors::not_root),
    ("errors::interface_not_found", errors::interface_not_found),
    ("errors::pid_not_found", errors::pid_not_found),
    ("errors::netns_not_found", errors::netns_not_found),
    (
        "errors::netns_without_veth_peer",
        errors::netns_without_veth_peer,
    ),
    ("errors::pid_in_host_netns", errors::pid_in_host_netns),
    ("errors::kernel_without_btf", errors::kernel_without_btf),
    ("errors::unwritable_output", errors::unwritable_output),
    (
        "errors::output_file_is_private",
        errors::output_file_is_private,
    ),
    ("errors::no_target", errors::no_target),
    (
        "filter::matches_tcpdump_on_mixed_traffic",
        filter::matches_tcpdump_on_mixed_traffic,
    ),
    (
        "filter_engines::engines_match_libpcap",
        filter_engines::engines_match_libpcap,
    ),
    (
        "filter_vlan::tags_written_like_tcpdump",
        filter_vlan::tags_written_like_tcpdump,
    ),
    (
        "filter_vlan::filters_match_tcpdump_on_tagged_frames",
        filter_vlan::filters_match_tcpdump_on_tagged_frames,
    ),
    (
        "filter::long_filter_loads_and_matches",
        filter::long_filter_loads_and_matches,
    ),
    (
        "filter::filtered_counter_counts_rejected_packets",
        filter::filtered_counter_counts_rejected_packets,
    ),
    (
        "filter::invalid_filter_attaches_nothing",
        filter::invalid_filter_attaches_nothing,
    ),
    (
        "filter::huge_filter_can_be_stopped",
        filter::huge_filter_can_be_stopped,
    ),
    (
        "filter::dump_matches_tcpdump_unprivileged",
        filter::dump_matches_tcpdump_unprivileged,
    ),
    (
        "bench::quick_run_has_every_row",
        bench::quick_run_has_every_row,
    ),
    (
        "hardening::output_symlinks_are_refused",
        hardening::output_symlinks_are_refused,
    ),
    (
        "hardening::two_clsact_captures_are_both_exact",
        hardening::two_clsact_captures_are_both_exact,
    ),
    (
        "hardening::stale_clsact_filter_removed_in_tcx_mode",
        hardening::stale_clsact_filter_removed_in_tcx_mode,
    ),
    (
        "hardening::sighup_stops_cleanly_unless_ignored",
        hardening::sighup_stops_cleanly_unless_ignored,
    ),
    (
        "hardening::oversized_numbers_are_refused",
        hardening::oversized_numbers_are_refused,
    ),
    (
        "workload::selector_across_namespaces",
        workload::selector_across_namespaces,
    ),
    (
        "workload::several_names_across_namespaces",
        workload::several_names_across_namespaces,
    ),
    (
        "workload::first_packets_of_a_new_pod",
        workload::first_packets_of_a_new_pod,
    ),
    (
        "workload::pod_deleted_leaves_with_its_statistics",
        workload::pod_deleted_leaves_with_its_statistics,
    ),
    (
        "workload::recreated_sandbox_is_followed",
        workload::recreated_sandbox_is_followed,
    ),
    ("workload::wait_and_follow", workload::wait_and_follow),
    (
        "workload::rotation_restates_interfaces",
        workload::rotation_restates_interfaces,
    ),
    ("workload::text_names_the_pod", workload::text_names_the_pod),
    ("workload::fifty_pods", workload::fifty_pods),
    ("workload::invalid_selections", workload::invalid_selections),
    (
        "workload::overlapping_captures_are_both_exact",
        workload::overlapping_captures_are_both_exact,
    ),
    (
        "capture_ring::small_ring_wraps_records_intact",
        capture_ring::small_ring_wraps_records_intact,
    ),
    ("dist::binary_is_static", dist::binary_is_static),
    ("dist::chroot_captures_a_veth", dist::chroot_captures_a_veth),
    (
        "dist::image_imports_into_containerd",
        dist::image_imports_into_containerd,
    ),
    (
        "agent::deploy_manifests_agree",
        agent::deploy_manifests_agree,
    ),
    (
        "agent::pod_manifest_captures_its_neighbour",
        agent::pod_manifest_captures_its_neighbour,
    ),
    (
        "agent::each_documented_capability_is_needed",
        agent::each_documented_capability_is_needed,
    ),
    (
        "agent::missing_host_pid_is_named",
        agent::missing_host_pid_is_named,
    ),
    (
        "agent::unmounted_socket_is_named",
        agent::unmounted_socket_is_named,
    ),
    (
        "agent::kubectl_debug_layout_finds_the_socket_under_host",
        agent::kubectl_debug_layout_finds_the_socket_under_host,
    ),
    (
        "agent::daemonset_agent_captures_through_exec",
        agent::daemonset_agent_captures_through_exec,
    ),
    (
        "redirect::detected_and_counted",
        redirect::detected_and_counted,
    ),
    (
        "redirect::fallback_captures_every_packet_once",
        redirect::fallback_captures_every_packet_once,
    ),
    (
        "redirect::auto_moves_to_eth0_while_traffic_flows",
        redirect::auto_moves_to_eth0_while_traffic_flows,
    ),
    (
        "redirect::no_redirect_no_warning_no_duplicates",
        redirect::no_redirect_no_warning_no_duplicates,
    ),
];

/// Every program the tests and their harness run, and the CNI plugins the
/// test node's bridge network needs.
const TOOLS: &[&str] = &[
    "tshark",
    "tcpdump",
    "bpftool",
    "busybox",
    "ip",
    "tc",
    "sysctl",
    "clang",
    "containerd",
    "ctr",
    "runc",
    "gcc",
    "nsenter",
    "script",
    "setpriv",
    "file",
    "unshare",
    "chroot",
    "iperf3",
    "ss",
    "taskset",
    "mount",
    "umount",
    "sleep",
    "find",
    "/usr/lib/cni/bridge",
    "/usr/lib/cni/host-local",
    "/usr/lib/cni/loopback",
];

/// Why the tests cannot run here, if they cannot.
fn missing_prerequisite() -> Option<String> {
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root".into());
    }
    let bin = podtrace_tests::run::bin();
    if !bin.exists() {
        return Some(format!(
            "{} not built (cargo xtask test builds it)",
            bin.display()
        ));
    }
    let missing: Vec<&str> = TOOLS
        .iter()
        .copied()
        .filter(|tool| podtrace_tests::sh(&["sh", "-c", &format!("command -v {tool}")]).is_err())
        .collect();
    if !missing.is_empty() {
        return Some(format!(
            "not installed: {} (cargo xtask setup installs them)",
            missing.join(", ")
        ));
    }
    None
}

fn main() -> ExitCode {
    if std::env::var_os(node::CRASH_ENV).is_some() {
        return node::crash_with_a_node();
    }
    let mut args = Arguments::from_args();
    // The tests share the kernel's TC hooks and bpftool's view: one at a time.
    args.test_threads = Some(1);
    let missing = missing_prerequisite();
    if let Some(why) = &missing {
        eprintln!("e2e: cannot run: {why}");
    }
    let trials = TESTS
        .iter()
        .map(|&(name, test)| {
            let missing = missing.clone();
            Trial::test(name, move || match &missing {
                Some(why) => Err(Failed::from(format!("cannot run: {why}"))),
                None => test().map_err(|e| Failed::from(format!("{e:#}"))),
            })
        })
        .collect();
    let conclusion = libtest_mimic::run(&args, trials);
    if let Err(e) = pods::shutdown_node() {
        eprintln!("e2e: tearing down the test node: {e:#}");
        return ExitCode::FAILURE;
    }
    conclusion.exit_code()
}
