//! Every load model on a paused clock: intended starts, dispatch times,
//! lag, lateness and drops, with a network-free executor that takes fixed
//! service times.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;

use stampede_proto::Metric;
use tokio::time::Instant;

use super::open::{Open, Timer};
use super::schedule::{self, Arrivals, Process, RatePhase, UsersPhase, Window};
use super::users::Closed;
use super::{Control, Gate, Shared};
use crate::api::{Api, Dialect, Spec};
use crate::exec::Executor;
use crate::http::Endpoint;
use crate::prompts::Prompts;
use crate::record::{Interval, Recorder};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn shared(service_ms: &[u64]) -> Shared {
    let mut executor = Executor::new(
        Endpoint::parse("http://127.0.0.1:9").unwrap(),
        Api::plain(Dialect::OpenAiChat),
        "m".into(),
        Spec {
            max_tokens: None,
            temperature: None,
            stream: true,
        },
        Duration::from_secs(60),
    );
    executor.service_times = Some((service_ms.iter().map(|n| ms(*n)).collect(), AtomicUsize::new(0)));
    Shared {
        executor: Arc::new(executor),
        prompts: Arc::new(Prompts::new(vec!["hello".into()])),
        recorder: Recorder::new(),
        active: Arc::new(AtomicU32::new(0)),
        budget: super::Budget::default(),
    }
}

fn cut(shared: &Shared) -> Interval {
    let (mut into, mut spare) = (Interval::default(), Interval::default());
    shared.recorder.cut(&mut into, &mut spare);
    into
}

fn over(i: &Interval, metric: Metric, at_least: Duration) -> u64 {
    let h = i.histograms.get(metric);
    h.iter_recorded()
        .filter(|v| v.value_iterated_to() >= at_least.as_micros() as u64)
        .map(|v| v.count_at_value())
        .sum()
}

async fn closed(load: Closed, shared: &Shared, secs: u64) {
    let (opener, gate) = Gate::new();
    opener.open();
    let start = Instant::now();
    load.run(
        shared.clone(),
        gate,
        start,
        start + Duration::from_secs(secs),
        ms(10_000),
        Control::default(),
    )
    .await;
}

fn one_user(window_secs: u64) -> Vec<Vec<Window>> {
    vec![vec![Window {
        on: Duration::ZERO,
        off: Duration::from_secs(window_secs),
    }]]
}

#[tokio::test(start_paused = true)]
async fn a_thinking_user_sends_when_ready_and_is_never_late() {
    let s = shared(&[100]);
    let load = Closed {
        windows: one_user(2),
        first_user: 0,
        phase_lengths: Vec::new(),
        seed: 0,
        think: ms(400),
        pace: None,
    };
    closed(load, &s, 2).await;
    let i = cut(&s);
    // Sent at 0, 0.5, 1.0 and 1.5 s.
    assert_eq!(i.counters.ok, 4);
    assert_eq!(i.histograms.get(Metric::ScheduleLag).max(), 0);
    let e2e = i.histograms.get(Metric::E2eIntended);
    assert!(e2e.equivalent(e2e.max(), 100_000), "{}", e2e.max());
    assert_eq!(i.counters.late, 0);
}

#[tokio::test(start_paused = true)]
async fn a_paced_user_shows_a_stall_in_latency_from_the_intended_start() {
    // A 250 ms cadence; the fifth request stalls for 1.5 s.
    let s = shared(&[
        100, 100, 100, 100, 1_500, 100, 100, 100, 100, 100, 100, 100, 100, 100, 100, 100, 100, 100,
    ]);
    let load = Closed {
        windows: one_user(5),
        first_user: 0,
        phase_lengths: Vec::new(),
        seed: 0,
        think: Duration::ZERO,
        pace: Some(ms(250)),
    };
    closed(load, &s, 5).await;
    let i = cut(&s);
    // Service time saw the stall once; latency from the intended start saw
    // every request that had to wait for it: coordinated omission, undone.
    assert_eq!(over(&i, Metric::E2e, ms(200)), 1);
    // Behind by 1.25 s after the stall, the user catches up 150 ms per
    // request: 1.25, 1.1, ..., 0.05 s behind, nine requests. The server
    // held it back, not the agent: none was late or held on this side.
    assert_eq!((i.counters.late, i.counters.held), (0, 0));
    let from_intended = over(&i, Metric::E2eIntended, ms(200));
    assert_eq!(
        from_intended, 9,
        "the stalled request and the eight sent 0.2 s or more late"
    );
    assert!(i.histograms.get(Metric::E2eIntended).max() >= 1_500_000);
}

#[tokio::test(start_paused = true)]
async fn ramps_turn_users_on_and_off_on_time() {
    let s = shared(&[10]);
    let windows = schedule::windows(&[
        UsersPhase {
            users: 4,
            duration: Duration::from_secs(6),
            ramp: Duration::from_secs(4),
        },
        UsersPhase {
            users: 2,
            duration: Duration::from_secs(4),
            ramp: Duration::ZERO,
        },
    ]);
    let load = Closed {
        windows,
        first_user: 0,
        phase_lengths: Vec::new(),
        seed: 0,
        think: ms(90),
        pace: None,
    };
    let active = Arc::clone(&s.active);
    let run = tokio::spawn({
        let s = s.clone();
        async move { closed(load, &s, 10).await }
    });
    // Users come on at 1, 2, 3 and 4 s, two leave at 6 s, all at 10 s.
    let t0 = Instant::now();
    let mut seen = Vec::new();
    for at in [500, 1_500, 2_500, 3_500, 4_500, 6_500, 9_500, 10_500] {
        tokio::time::sleep_until(t0 + ms(at)).await;
        seen.push(active.load(Ordering::Relaxed));
    }
    run.await.unwrap();
    assert_eq!(seen, [0, 1, 2, 3, 4, 2, 2, 0]);
    assert!(cut(&s).counters.ok > 0);
}

async fn open(load: Open, shared: &Shared, secs: u64, drain_ms: u64) {
    let start = Instant::now();
    load.run(
        shared.clone(),
        start,
        start + Duration::from_secs(secs),
        ms(drain_ms),
        Control::default(),
    )
    .await;
}

fn rate(rate: f64, secs: u64, process: Process, max_concurrency: Option<u32>) -> Open {
    Open {
        phases: vec![RatePhase {
            rate,
            duration: Duration::from_secs(secs),
            ramp: Duration::ZERO,
        }],
        process,
        seed: 5,
        stream: 0,
        streams: 1,
        max_concurrency,
        prompt_seed: 0,
        timer: Timer::Runtime,
        trace: None,
    }
}

#[tokio::test(start_paused = true)]
async fn a_constant_rate_is_dispatched_exactly_on_schedule() {
    let s = shared(&[50]);
    open(rate(10.0, 2, Process::Constant, None), &s, 2, 1_000).await;
    let i = cut(&s);
    assert_eq!(i.counters.ok, 20);
    assert_eq!(i.histograms.get(Metric::ScheduleLag).max(), 0);
    assert_eq!(i.histograms.get(Metric::ClientQueue).max(), 0);
    assert_eq!((i.counters.late, i.counters.dropped), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn poisson_and_gamma_arrivals_follow_their_schedules() {
    for process in [Process::Poisson, Process::Gamma(0.5)] {
        let s = shared(&[20]);
        let load = rate(50.0, 10, process, None);
        let expected = Arrivals::new(&load.phases, process, load.seed)
            .take_while(|t| *t < Duration::from_secs(10))
            .count() as u64;
        open(load, &s, 10, 1_000).await;
        let i = cut(&s);
        assert_eq!(i.counters.ok, expected, "{process:?}");
        assert!((400..600).contains(&expected), "{process:?}: {expected}");
        // The runtime's timer works in whole milliseconds, even paused.
        assert!(i.histograms.get(Metric::ScheduleLag).max() < 1_000);
    }
}

#[tokio::test(start_paused = true)]
async fn a_concurrency_cap_holds_arrivals_back_and_drops_what_is_left() {
    // 10 arrivals per second for 2 s, one at a time, 300 ms each: requests
    // start at 0, 0.3, ..., 1.8 s; the other 13 are still waiting at 2 s.
    let s = shared(&[300]);
    open(rate(10.0, 2, Process::Constant, Some(1)), &s, 2, 5_000).await;
    let i = cut(&s);
    assert_eq!(i.counters.ok, 7);
    assert_eq!(i.counters.dropped, 13);
    assert_eq!((i.counters.late, i.counters.held), (0, 6));
    // The wait shows in the client queue, not in the scheduling lag: the
    // scheduler kept time; the cap held the requests back.
    assert_eq!(i.histograms.get(Metric::ScheduleLag).max(), 0);
    assert!(i.histograms.get(Metric::ClientQueue).max() >= 1_100_000);
}

#[tokio::test(start_paused = true)]
async fn rate_stages_ramp_and_hold_exactly() {
    // 0 -> 10 per second over 2 s, then 10 per second for 2 s, then 4 per
    // second for 1 s: 10 + 20 + 4 arrivals, every one on time.
    let s = shared(&[20]);
    let load = Open {
        phases: vec![
            RatePhase {
                rate: 10.0,
                duration: Duration::from_secs(4),
                ramp: Duration::from_secs(2),
            },
            RatePhase {
                rate: 4.0,
                duration: Duration::from_secs(1),
                ramp: Duration::ZERO,
            },
        ],
        process: Process::Constant,
        seed: 1,
        stream: 0,
        streams: 1,
        max_concurrency: None,
        prompt_seed: 0,
        timer: Timer::Runtime,
        trace: None,
    };
    open(load, &s, 5, 1_000).await;
    let i = cut(&s);
    assert_eq!(i.counters.ok, 30 + 4);
    assert!(i.histograms.get(Metric::ScheduleLag).max() < 1_000);
    assert_eq!(i.counters.dropped, 0);
}

#[tokio::test(start_paused = true)]
async fn a_count_of_requests_ends_a_closed_load_before_its_time() {
    let mut s = shared(&[100]);
    s.budget = super::Budget::new(Some(7));
    let load = Closed {
        windows: vec![
            vec![Window {
                on: Duration::ZERO,
                off: Duration::from_secs(60),
            }];
            3
        ],
        first_user: 0,
        phase_lengths: Vec::new(),
        seed: 0,
        think: Duration::ZERO,
        pace: None,
    };
    let started = Instant::now();
    closed(load, &s, 60).await;
    let i = cut(&s);
    // Three users share seven tickets: three rounds of 100 ms, the last
    // one short, and the load is over long before its minute.
    assert_eq!(i.counters.ok, 7);
    assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
}

#[tokio::test(start_paused = true)]
async fn a_count_of_requests_ends_an_open_load_before_its_time() {
    let mut s = shared(&[10]);
    s.budget = super::Budget::new(Some(25));
    let mut load = rate(50.0, 60, Process::Constant, None);
    load.timer = Timer::Runtime;
    let started = Instant::now();
    open(load, &s, 60, 1_000).await;
    let i = cut(&s);
    assert_eq!(i.counters.ok, 25);
    assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
}

#[tokio::test(start_paused = true)]
async fn a_user_plays_each_session_turn_by_turn_then_starts_the_next() {
    let mut s = shared(&[100]);
    // Session 0 has three turns, session 1 one.
    let prompts = Prompts::new(vec!["a1".into(), "b1".into()]).with_sessions(
        vec![(Some("sys".into()), vec!["a2".into(), "a3".into()]), (None, Vec::new())],
        ms(100),
    );
    let first = prompts.first_for(0, 0);
    s.prompts = Arc::new(prompts);
    let load = Closed {
        windows: one_user(2),
        first_user: 0,
        phase_lengths: Vec::new(),
        seed: 0,
        think: ms(400),
        pace: None,
    };
    closed(load, &s, 2).await;
    let i = cut(&s);
    // Turns 100 ms apart after each 100 ms answer, sessions 400 ms apart:
    // from session 0, turns at 0, 0.2, 0.4, session 1 at 0.9, session 0
    // again at 1.4, 1.6 and 1.8; from session 1, it at 0, session 0 at
    // 0.5, 0.7, 0.9, session 1 at 1.4 and session 0 at 1.9.
    let by_turn: Vec<u64> = (1..=3).map(|t| i.turns.get(&t).map_or(0, |x| x.counters.ok)).collect();
    let expected = if first == 0 { [3, 2, 2] } else { [4, 1, 1] };
    assert_eq!(by_turn, expected, "starting with session {first}");
    assert_eq!(i.counters.ok, expected.iter().sum::<u64>());
    assert_eq!(i.histograms.get(Metric::ScheduleLag).max(), 0);
    let e2e = i.histograms.get(Metric::E2eIntended);
    assert!(e2e.equivalent(e2e.max(), 100_000), "never late: {}", e2e.max());
}

#[tokio::test(start_paused = true)]
async fn a_trace_sends_each_arrival_at_its_offset() {
    // Two at 150 ms together, one at 900 ms: all on time, nothing more.
    let s = shared(&[20]);
    let mut load = rate(1.0, 1, Process::Constant, None);
    load.trace = Some(vec![ms(0), ms(150), ms(150), ms(900)].into());
    let started = Instant::now();
    open(load, &s, 1, 1_000).await;
    let i = cut(&s);
    assert_eq!(i.counters.ok, 4);
    assert_eq!(i.histograms.get(Metric::ScheduleLag).max(), 0);
    assert_eq!((i.counters.late, i.counters.dropped), (0, 0));
    assert!(started.elapsed() >= ms(920), "{:?}", started.elapsed());
}
