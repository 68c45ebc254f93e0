use std::collections::BTreeMap;
use std::path::Path;

use stampede_proto::{Counters, ErrorClass};

use super::*;
use crate::profile::{Overrides, Profile};
use crate::stats::Stats;

fn load(text: &str) -> Load {
    Profile::parse(text, Path::new("p.toml"), &Overrides::default())
        .expect("a valid profile")
        .load
}

/// Interval `index` (of 1 s) at `place`: `ok` requests of 64 output tokens
/// each, their E2E p95 and max `e2e_ms`.
fn row(index: u64, place: Place, ok: u64, e2e_ms: u64) -> Row {
    let mut stats = [Stats::default(); Metric::ALL.len()];
    let at = |m: Metric| Metric::ALL.iter().position(|x| *x == m).expect("in ALL");
    if ok > 0 {
        let e2e = Stats {
            count: ok,
            p50: e2e_ms * 900,
            p95: e2e_ms * 1000,
            max: e2e_ms * 1000,
            ..Stats::default()
        };
        stats[at(Metric::E2e)] = e2e;
        stats[at(Metric::Ttft)] = Stats {
            count: ok,
            p50: 4_700,
            p95: 5_400,
            max: 6_000,
            ..Stats::default()
        };
        stats[at(Metric::Itl)] = Stats {
            count: ok * 63,
            p50: 60_100,
            ..Stats::default()
        };
    }
    Row {
        interval: index,
        place,
        counters: Counters {
            ok,
            output_tokens: ok * 64,
            active_users: 4,
            errors: BTreeMap::from([(ErrorClass::Timeout, 1)]),
            ..Counters::default()
        },
        stats,
        cpu: 0.1,
        length_s: 1.0,
        present_s: None,
        class_ttft: BTreeMap::new(),
    }
}

fn shown(p: &mut Progress, r: &Row) -> String {
    p.take(r);
    p.line(r)
}

const STAGES: &str =
    "[load]\nstages = [\n  { users = 2, duration = \"4s\" },\n  { users = 4, duration = \"4s\" },\n]\ndrain = \"5s\"\n";

#[test]
fn the_load_shows_elapsed_of_planned_the_stage_an_eta_and_tokens_per_second() {
    let mut p = Progress::new(Duration::from_secs(1), &load(STAGES), false);
    // Nothing has ended yet: the drain may take all its 5 s.
    let first = shown(&mut p, &row(0, Place::Step(0), 0, 0));
    assert!(
        first.starts_with("[    1s/8s] | stage 1/2 | ETA ≤12s | users    4 |"),
        "{first}"
    );
    // 2 answers of 64 tokens in the interval; the longest took 3.8 s, so
    // the drain is taken to last that long: 3 s of load + 3.8 s.
    let line = shown(&mut p, &row(4, Place::Step(1), 2, 3_800));
    assert!(
        line.starts_with("[    5s/8s] | stage 2/2 | ETA 7s | users    4 |    2.0 req/s |    128 tok/s | TTFT p50  4.7ms p95  5.4ms | ITL p50 60.1ms | E2E p95 3800ms | errors 1"),
        "{line}"
    );
}

#[test]
fn the_drain_is_labelled_and_its_eta_is_what_is_left_of_it() {
    let mut p = Progress::new(Duration::from_secs(1), &load(STAGES), false);
    let line = shown(&mut p, &row(9, Place::Drain, 2, 3_800));
    assert!(line.starts_with("[drain 2s/5s] | ETA ≤3s | in flight    4 |"), "{line}");
    assert!(!line.contains("8s/"), "no overtime: {line}");
    let past = shown(&mut p, &row(20, Place::Drain, 0, 0));
    assert!(past.starts_with("[drain 5s/5s] | ETA ≤0s |"), "{past}");
}

#[test]
fn a_sweep_names_its_step_and_level() {
    let users = load("[load]\nwarmup = \"1s\"\n[load.sweep]\nusers = [10, 20, 40]\nstep = \"10s\"\n");
    let mut p = Progress::new(Duration::from_secs(1), &users, false);
    let line = shown(&mut p, &row(25, Place::Step(2), 1, 1_000));
    assert!(
        line.starts_with("[   26s/30s] | step 3/3 at 40 users | ETA 5s |"),
        "{line}"
    );
    let warm = shown(&mut p, &row(20, Place::Warmup(2), 1, 1_000));
    assert!(warm.contains("| step 3/3 at 40 users warm-up |"), "{warm}");

    let rate = load("[load.sweep]\nrates = [4, 12]\nstep = \"5s\"\n");
    let mut p = Progress::new(Duration::from_secs(1), &rate, false);
    let line = shown(&mut p, &row(6, Place::Step(1), 1, 500));
    // An open loop counts requests in flight, not users.
    assert!(
        line.contains("| step 2/2 at 12 req/s | ETA 4s | in flight    4 |"),
        "{line}"
    );
}

#[test]
fn a_single_level_has_no_step_and_a_count_of_requests_shortens_the_eta() {
    let counted = load("[load]\nusers = 4\nrequests = 100\nduration = \"60s\"\ndrain = \"30s\"\n");
    let mut p = Progress::new(Duration::from_secs(1), &counted, false);
    // 11 requests end a second (10 succeed, 1 fails): the other 78 take
    // 7.1 s, then a 1 s drain.
    shown(&mut p, &row(0, Place::Step(0), 10, 1_000));
    let line = shown(&mut p, &row(1, Place::Step(0), 10, 1_000));
    assert!(line.starts_with("[    2s/60s] | ETA 9s | users"), "{line}");
}

#[test]
fn a_stop_turns_the_rest_into_the_drain() {
    let mut p = Progress::new(Duration::from_secs(1), &load(STAGES), false);
    p.stopped(Stop {
        after: Duration::from_millis(2_500),
        abort: false,
    });
    // The interval the stop fell in is still the load's...
    let during = shown(&mut p, &row(2, Place::Step(0), 0, 0));
    assert!(during.starts_with("[    3s/8s] | stage 1/2 | ETA ≤5s |"), "{during}");
    // ...the next is the drain's, although the plan had more load.
    let after = shown(&mut p, &row(4, Place::Step(1), 1, 1_000));
    assert!(after.starts_with("[drain 2s/5s] | ETA ≤3s |"), "{after}");

    let mut p = Progress::new(Duration::from_secs(1), &load(STAGES), false);
    p.stopped(Stop {
        after: Duration::from_secs(2),
        abort: true,
    });
    let line = shown(&mut p, &row(3, Place::Step(0), 0, 0));
    assert!(line.starts_with("[stopping] | in flight    4 |"), "{line}");
}

#[test]
fn a_terminal_line_fits_its_width_leaving_out_the_least_important_first() {
    let sweep = load("[load.sweep]\nusers = [100, 200, 400, 800, 1600, 3200]\nstep = \"1m\"\n");
    let mut p = Progress::new(Duration::from_secs(1), &sweep, false);
    let r = row(150, Place::Step(2), 123, 12_000);
    p.take(&r);
    let fields = p.fields(&r);
    let full = join(&fields, usize::MAX);
    assert!(full.chars().count() > 120, "{full}");
    let line = join(&fields, 120);
    assert!(line.chars().count() <= 120, "{line}");
    assert_eq!(
        line,
        "[151s/360s] | step 3/6 at 400 users | ETA 3m41s | 123.0 req/s | 7872 tok/s | TTFT p50 4.7ms | E2E p95 12.0s | errors 1"
    );
    let narrow = join(&fields, 60);
    assert_eq!(narrow, "[151s/360s] | ETA 3m41s | 123.0 req/s | errors 1");
    // What must stay stays, however narrow.
    assert_eq!(join(&fields, 10), "[151s/360s] | 123.0 req/s");
    // Wide enough, nothing is left out.
    let wide = join(&fields, 200);
    assert_eq!(
        wide.matches(" | ").count() + wide.matches(" p95 ").count(),
        11,
        "{wide}"
    );
}

#[test]
fn durations_read_as_a_clock() {
    assert_eq!(clock(Duration::ZERO, true), "0s");
    assert_eq!(clock(Duration::from_millis(1_999), false), "1s");
    assert_eq!(clock(Duration::from_millis(1_001), true), "2s");
    assert_eq!(clock(Duration::from_millis(59_600), true), "1m00s");
    assert_eq!(clock(Duration::from_secs(125), false), "2m05s");
    assert_eq!(clock(Duration::from_secs(3_720), false), "1h02m");
}
