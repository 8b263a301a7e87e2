use super::*;

#[test]
fn long_filter_names_only_test_net_1_hosts() {
    let words = NoMatch::Long.words();
    let hosts: Vec<&String> = words.iter().filter(|w| w.starts_with("192.0.2.")).collect();
    assert_eq!(hosts.len(), LONG_HOSTS as usize);
    // --filter-engine native -- host A or host B …
    assert_eq!(&words[..3], ["--filter-engine", "native", "--"]);
    assert_eq!(words.len(), 3 + 3 * LONG_HOSTS as usize - 1);
    assert_eq!(NoMatch::LongInterpreted.words()[1], "interpreter");
    assert_eq!(NoMatch::LongInterpreted.engine(), FilterEngine::Interpreter);
    assert_eq!(
        NoMatch::LongInterpreted.expression(),
        NoMatch::Long.expression()
    );
    assert!(!NoMatch::Long.expression().contains("10.246."));
}

#[test]
fn report_rows_are_unique() {
    // The e2e smoke test finds each row by its first cell.
    let rows = crate::bench::row_labels();
    let unique: std::collections::HashSet<&String> = rows.iter().collect();
    assert_eq!(unique.len(), rows.len());
}

#[test]
fn a_run_matched_nothing_only_if_every_packet_was_filtered() {
    let mut r = RunResult {
        capture: Some(procs::CaptureStats {
            filtered: Some(10),
            ..Default::default()
        }),
        crossed: Some(10),
        in_file_all: Some(0),
        ..Default::default()
    };
    assert!(matched_nothing(&r));
    r.crossed = Some(11);
    assert!(!matched_nothing(&r));
    r.crossed = Some(9);
    r.in_file_all = Some(1);
    assert!(!matched_nothing(&r));
}
