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
        plan: Some(SwitchPlan::new(false, None)),
        ..Switched::default()
    };
    assert_eq!(row.estimate(), None);
    assert_eq!(row.gbps(), (None, None));
}

#[test]
fn the_goal_row_runs_longest() {
    let goal = SwitchPlan::new(false, Some(GOAL_MINUTES));
    let other = SwitchPlan::new(false, None);
    assert!(goal.seconds() >= 4.0 * other.seconds());
    assert!(goal.batches > other.batches);
    assert_eq!((goal.phases, goal.batches), (60_000, 50));
    let longer = SwitchPlan::new(false, Some(40));
    assert_eq!((longer.seconds(), longer.batches), (2400.0, 100));
    let quick = SwitchPlan::new(true, Some(GOAL_MINUTES));
    assert!(quick.seconds() < 10.0 && quick.batches >= 6);
}
