use super::*;

/// Samples of a stream at `rate(k)` bytes/s in phase k, `secs` each, with
/// a move of 1 ms before each phase that runs at a tenth of the rate.
fn samples(n: usize, secs: f64, rate: impl Fn(usize) -> f64) -> Vec<(Sample, Sample)> {
    let mut out = Vec::new();
    let mut now = Sample { at: 0.0, bytes: 0 };
    for k in 0..n {
        let start = Sample {
            at: now.at + 0.001,
            bytes: now.bytes + (rate(k) * 0.0001) as u64,
        };
        now = Sample {
            at: start.at + secs,
            bytes: start.bytes + (rate(k) * secs) as u64,
        };
        out.push((start, now));
    }
    out
}

#[test]
fn phases_leave_the_moves_out() {
    let s = [
        (
            Sample { at: 0.0, bytes: 10 },
            Sample {
                at: 0.02,
                bytes: 30,
            },
        ),
        (
            Sample {
                at: 0.021,
                bytes: 900,
            },
            Sample {
                at: 0.05,
                bytes: 901,
            },
        ),
    ];
    let p = phases(&s);
    assert_eq!(p.iter().map(|p| p.1).collect::<Vec<_>>(), [20, 1]);
    assert!((p[0].0 - 0.02).abs() < 1e-12 && (p[1].0 - 0.029).abs() < 1e-12);
}

#[test]
fn a_known_cost_is_estimated_exactly() {
    // Odd phases (on) run at 97% of even ones (off).
    let p = phases(&samples(
        400,
        0.02,
        |k| if k % 2 == 1 { 0.97e9 } else { 1e9 },
    ));
    let e = estimate(&p, 20).unwrap();
    assert!((e.mean - 0.97).abs() < 1e-6, "{e:?}");
    let (lo, hi) = e.ci.unwrap();
    assert!(lo <= e.mean && e.mean <= hi && hi - lo < 1e-6, "{e:?}");
    assert_eq!(e.batches, 20);
}

#[test]
fn batches_of_odd_length_keep_on_and_off_apart() {
    // 21 phases a batch: batch 1 starts with an on phase.
    let p = phases(&samples(
        420,
        0.02,
        |k| if k % 2 == 1 { 0.5e9 } else { 1e9 },
    ));
    let e = estimate(&p, 20).unwrap();
    assert!((e.mean - 0.5).abs() < 1e-6, "{e:?}");
}

#[test]
fn slow_drift_cancels() {
    // The stream doubles its rate over the run; podtrace costs nothing.
    let p = phases(&samples(12_000, 0.02, |k| {
        1e9 * (1.0 + k as f64 / 12_000.0)
    }));
    let e = estimate(&p, 20).unwrap();
    assert!((e.mean - 1.0).abs() < 1e-3, "{e:?}");
}

#[test]
fn noise_widens_the_interval_and_the_verdict_follows_it() {
    // A deterministic "noise": on phases alternate between 90% and 110%
    // batch by batch, so the batches' ratios spread by 10%: the interval
    // is about 95.2-104.8%.
    let p = phases(&samples(400, 0.02, |k| {
        let batch = k / 20;
        match (k % 2, batch % 2) {
            (1, 0) => 0.90e9,
            (1, _) => 1.10e9,
            _ => 1e9,
        }
    }));
    let e = estimate(&p, 20).unwrap();
    let (lo, hi) = e.ci.unwrap();
    assert!((e.mean - 1.0).abs() < 1e-6);
    assert!(lo < 0.96 && hi > 1.04, "{e:?}");
    assert_eq!(e.verdict(99.0), Verdict::Unresolved);
    assert_eq!(e.verdict(94.0), Verdict::Shown);
    assert_eq!(e.verdict(106.0), Verdict::Refuted);
    assert_eq!(e.holds(100.0), Some(true));
    assert_eq!(e.holds(106.0), Some(false));
}

#[test]
fn without_an_interval_the_mean_decides() {
    let e = Estimate {
        mean: 0.995,
        ci: None,
        batches: 2,
    };
    assert_eq!(e.verdict(99.0), Verdict::MeanOnly(true));
    assert_eq!(e.verdict(99.6), Verdict::MeanOnly(false));
    assert_eq!(e.holds(100.0), None);
    assert_eq!(Verdict::MeanOnly(true).cell(), "yes");
}

#[test]
fn too_few_batches_give_no_interval() {
    let p = phases(&samples(100, 0.02, |_| 1e9));
    let e = estimate(&p, 2).unwrap();
    assert_eq!(e.ci, None);
    assert_eq!(estimate(&p[..1], 2), None);
}

#[test]
fn t_quantiles_match_the_tables() {
    for (df, t) in [
        (5, 2.571),
        (9, 2.262),
        (19, 2.093),
        (39, 2.023),
        (1000, 1.962),
    ] {
        assert!(
            (t975(df) - t).abs() < 0.003 * t,
            "df {df}: {} vs {t}",
            t975(df)
        );
    }
}
