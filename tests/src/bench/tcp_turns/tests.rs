use super::*;

fn iv(start: f64, mbps: f64) -> Interval {
    Interval {
        start,
        end: start + INTERVAL,
        mbps,
    }
}

#[test]
fn parses_iperf3_interval_lines_only() {
    let line = "[  5]   0.50-0.75   sec   776 MBytes  26048 Mbits/sec  225    424 KBytes       ";
    assert_eq!(
        parse_interval(line),
        Some(Interval {
            start: 0.5,
            end: 0.75,
            mbps: 26048.0
        })
    );
    for other in [
        "[  5]   0.00-2.00   sec  6.09 GBytes  26168 Mbits/sec  922             sender",
        "[  5]   0.00-2.00   sec  6.09 GBytes  26131 Mbits/sec                  receiver",
        "[ ID] Interval           Transfer     Bitrate         Retr  Cwnd",
        "Connecting to host 10.246.198.2, port 5298",
        "[  5]   0.00-0.50   sec  1.52 GBytes  26.0 Gbits/sec    0    786 KBytes",
    ] {
        assert_eq!(parse_interval(other), None, "{other}");
    }
}

#[test]
fn pairs_each_turn_with_its_detached_neighbours() {
    // Detached at 100 before turn 1, 90 between the turns, 80 after;
    // attached 95 then 85: both turns are ~0.5% under their neighbours
    // once the drift is taken out.
    let mut intervals = Vec::new();
    let mut t = 0.0;
    while t < 30.0 {
        let mbps = match t {
            t if t < 4.0 => 100.0,
            t if t < 10.0 => 94.5,   // turn 1 (alive 4..10)
            t if t < 14.0 => 90.0,   // between
            t if t < 20.0 => 84.575, // turn 2 (alive 14..20)
            _ => 80.0,
        };
        intervals.push(iv(t, mbps));
        t += INTERVAL;
    }
    let turns = [
        Turn {
            alive: Span {
                start: 4.0,
                end: 10.0,
            },
            attached: Span {
                start: 4.4,
                end: 9.6,
            },
        },
        Turn {
            alive: Span {
                start: 14.0,
                end: 20.0,
            },
            attached: Span {
                start: 14.4,
                end: 19.6,
            },
        },
    ];
    let p = pairs(&intervals, &turns);
    assert_eq!(p.len(), 2);
    assert!((p[0].ratio() - 94.5 / 95.0).abs() < 1e-9, "{p:?}");
    assert!((p[1].ratio() - 84.575 / 85.0).abs() < 1e-9, "{p:?}");
}

#[test]
fn start_stop_and_warmup_count_for_neither_side() {
    // Podtrace's start (alive before attached) and exit are slow
    // intervals; the warm-up is slower still. None may leak in.
    let turn = Turn {
        alive: Span {
            start: 4.0,
            end: 10.0,
        },
        attached: Span {
            start: 5.0,
            end: 9.0,
        },
    };
    let intervals: Vec<Interval> = (0..80)
        .map(|n| {
            let s = n as f64 * INTERVAL;
            let mbps = if s < WARMUP {
                1.0 // warm-up
            } else if (4.0..5.1).contains(&s) || (9.0..10.3).contains(&s) {
                2.0 // starting, stopping, just exited
            } else if (5.1..9.0).contains(&s) {
                99.0
            } else {
                100.0
            };
            iv(s, mbps)
        })
        .collect();
    let p = pairs(&intervals, &[turn]);
    assert_eq!(
        p,
        [Pair {
            on: 99.0,
            off: 100.0
        }]
    );
}

#[test]
fn a_turn_without_detached_neighbours_is_left_out() {
    let turn = Turn {
        alive: Span {
            start: 0.0,
            end: 10.0,
        },
        attached: Span {
            start: 1.0,
            end: 9.0,
        },
    };
    let intervals: Vec<Interval> = (0..48).map(|n| iv(n as f64 * INTERVAL, 50.0)).collect();
    assert!(pairs(&intervals, &[turn]).is_empty());
}

#[test]
fn median_and_its_confidence_interval() {
    let turns = |ratios: &[f64]| Turns {
        pairs: ratios.iter().map(|r| Pair { on: *r, off: 1.0 }).collect(),
        ..Default::default()
    };
    let t = turns(&[0.99, 1.01, 1.0, 0.98, 1.02, 0.995, 1.005, 0.97, 1.03]);
    assert!((t.median_pct().unwrap() - 100.0).abs() < 1e-9);
    let (lo, hi) = t.median_ci_pct().unwrap();
    assert!(
        lo < 100.0 && hi > 100.0 && lo >= 97.0 && hi <= 103.0,
        "{lo} {hi}"
    );
    assert_eq!(turns(&[1.0; 5]).median_ci_pct(), None);
}

#[test]
fn the_goal_is_met_only_when_the_whole_interval_clears_it() {
    let turns = |ratios: Vec<f64>| Turns {
        pairs: ratios.iter().map(|r| Pair { on: *r, off: 1.0 }).collect(),
        ..Default::default()
    };
    let spread = |mid: f64| (0..40).map(|n| mid + (n as f64 - 20.0) * 0.0005).collect();
    assert_eq!(turns(spread(0.995)).verdict(99.0), Verdict::Shown);
    assert_eq!(turns(spread(0.98)).verdict(99.0), Verdict::Refuted);
    assert_eq!(turns(spread(0.99)).verdict(99.0), Verdict::Unresolved);
    assert_eq!(
        turns(vec![1.0, 0.995]).verdict(99.0),
        Verdict::MedianOnly(true)
    );
    assert_eq!(turns(vec![]).verdict(99.0), Verdict::NoData);
}
