//! Faults injected by `llm-sim --fault` end to end: every fault the
//! simulator says it injected shows in `summary.json` as an error of its
//! own class, with the simulator's count, and never as a latency sample.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use stampede_tests::{Sim, exclusive, num, run_profile};

/// Requests the run sends.
const REQUESTS: u64 = 300;
/// Tokens of every answer.
const MAX_TOKENS: u64 = 8;

/// The faults, with the target's timeout of 1 s: a stall of 2 s is a
/// timeout; headers held back for 100 ms only slow a request down.
const FAULTS: [&str; 8] = [
    "500=0.05",
    "503=0.04",
    "429=0.04",
    "malformed=0.05,after=2",
    "reset=0.05,after=3",
    "stall=0.04,for=2s,after=1",
    "endless=0.03",
    "slow-headers=0.05,for=100ms",
];

fn profile(url: &str, stream: bool) -> String {
    // Sixteen distinct prompts over two agents: most are sent many times,
    // so the draw's occurrence count is exercised.
    let prompts: Vec<String> = (0..16).map(|i| format!("\"prompt {i} about faults\"")).collect();
    format!(
        r#"
        name = "faults"
        [target]
        url = "{url}"
        model = "llm-sim"
        timeout = "1s"
        [load]
        users = 8
        requests = {REQUESTS}
        duration = "120s"
        drain = "30s"
        [request]
        max_tokens = {MAX_TOKENS}
        stream = {stream}
        [prompts]
        inline = [{}]
        [agents]
        count = 2
        [thresholds]
        max_error_rate = 1.0
        "#,
        prompts.join(", ")
    )
}

fn sim() -> Sim {
    let mut args = vec![
        "--max-batch",
        "64",
        "--prefill-base",
        "2ms",
        "--prefill-per-token",
        "0s",
        "--decode-step",
        "5ms",
        "--decode-step-per-seq",
        "0s",
        "--seed",
        "11",
    ];
    for f in FAULTS {
        args.extend(["--fault", f]);
    }
    Sim::start(&args)
}

/// The simulator's metrics once every request it holds has ended (a
/// stalled one ends when its stall does, after its client has gone).
fn settled(sim: &Sim) -> HashMap<String, f64> {
    // Up to 20 s.
    for _ in 0..200 {
        let m = sim.metrics();
        let done = m["llmsim_requests_served_total"]
            + m["llmsim_requests_cancelled_total"]
            + m["llmsim_requests_failed_total"];
        if done == m["llmsim_requests_received_total"] && m["llmsim_running_sequences"] == 0.0 {
            return m;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the simulator did not settle: {:?}", sim.metrics());
}

fn faults_and_errors_agree(stream: bool) {
    let _machine = exclusive();
    let sim = sim();
    let run = run_profile(&profile(&sim.url, stream), &[]);
    assert_eq!(run.code(), 0, "stderr:\n{}", run.stderr());
    let s = run.summary();
    let m = settled(&sim);
    let injected = |kind: &str| m[&format!("llmsim_faults_total{{kind=\"{kind}\"}}")] as u64;
    let errors: BTreeMap<String, u64> = s["errors"]
        .as_object()
        .expect("errors is an object")
        .iter()
        .map(|(class, info)| (class.clone(), info["count"].as_u64().expect("a count")))
        .collect();
    let ok = num(s, "/requests/ok") as u64;
    let kinds = [
        "http_500",
        "http_503",
        "http_429",
        "malformed",
        "reset",
        "stall",
        "endless",
        "slow_headers",
    ];
    let by_kind: Vec<_> = kinds.iter().map(|k| (*k, injected(k))).collect();
    eprintln!("stream {stream}: injected {by_kind:?}; summary errors {errors:?}, ok {ok}");
    for (kind, n) in &by_kind {
        assert!(*n > 0, "no {kind} fault was drawn in {REQUESTS} requests: {by_kind:?}");
    }

    // Each fault is an error of its own class, as many as were injected.
    let mut expected = BTreeMap::new();
    for code in ["500", "503", "429"] {
        expected.insert(format!("http_{code}"), injected(&format!("http_{code}")));
    }
    expected.insert("malformed".to_owned(), injected("malformed"));
    expected.insert("stream".to_owned(), injected("reset"));
    // A 2 s stall and an endless answer both outlast the 1 s timeout.
    expected.insert("timeout".to_owned(), injected("stall") + injected("endless"));
    assert_eq!(errors, expected, "summary errors against the simulator's faults");

    // The rest succeeded, the requests slowed by held-back headers among
    // them, and the simulator served exactly those.
    let failed: u64 = expected.values().sum();
    assert_eq!(ok + failed, REQUESTS);
    assert_eq!(num(s, "/requests/failed") as u64, failed);
    assert_eq!(ok, m["llmsim_requests_served_total"] as u64, "ok against served");
    assert_eq!(
        m["llmsim_requests_failed_total"] as u64,
        injected("malformed") + injected("reset")
    );
    assert_eq!(
        m["llmsim_requests_cancelled_total"] as u64,
        injected("stall") + injected("endless"),
        "every stalled or endless answer was given up by its client"
    );
    // Answered with a status before the engine saw them.
    assert_eq!(
        m["llmsim_requests_received_total"] as u64,
        REQUESTS - injected("http_500") - injected("http_503") - injected("http_429")
    );

    // No failed request is a latency sample: one per success (a whole
    // answer has no first token of its own), and seven token gaps each.
    let per_request: &[&str] = if stream { &["ttft", "e2e", "tpot"] } else { &["e2e"] };
    for metric in per_request {
        assert_eq!(
            num(s, &format!("/metrics/{metric}/count")) as u64,
            ok,
            "{metric} samples"
        );
    }
    if stream {
        assert_eq!(
            num(s, "/metrics/itl/count") as u64,
            ok * (MAX_TOKENS - 1),
            "itl samples"
        );
    }
    assert_eq!(num(s, "/tokens/output") as u64, ok * MAX_TOKENS);
    assert_eq!(m["llmsim_generation_tokens_total"] as u64, ok * MAX_TOKENS);
}

#[test]
fn every_injected_fault_is_an_error_of_its_class_with_the_simulators_count() {
    faults_and_errors_agree(true);
}

#[test]
fn faults_in_whole_answers_are_counted_the_same() {
    faults_and_errors_agree(false);
}
