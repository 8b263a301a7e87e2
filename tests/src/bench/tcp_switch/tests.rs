use super::*;

#[test]
fn gbps_of_each_side() {
    let row = Switched {
        phases: vec![(1.0, 1_000_000_000), (1.0, 500_000_000)],
        ..Switched::default()
    };
    let (on, off) = row.gbps();
    assert_eq!((on, off), (Some(4.0), Some(8.0)));
}

#[test]
fn a_row_without_phases_has_no_estimate() {
    let row = Switched {
        plan: Some(SwitchPlan::new(false, false)),
        ..Switched::default()
    };
    assert_eq!(row.estimate(), None);
    assert_eq!(row.gbps(), (None, None));
}

#[test]
fn the_goal_row_runs_longest() {
    let (goal, other) = (SwitchPlan::new(false, true), SwitchPlan::new(false, false));
    assert!(goal.seconds() >= 4.0 * other.seconds());
    assert!(goal.batches > other.batches);
    let quick = SwitchPlan::new(true, true);
    assert!(quick.seconds() < 10.0 && quick.batches >= 6);
}
