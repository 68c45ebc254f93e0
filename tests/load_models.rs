//! Load models against the simulator: a sweep that finds the knee, open-loop
//! Poisson arrivals that keep their rate and shape, and a server stall that
//! closed-loop service times hide and latency from the intended start shows.

// These tests watch real processes from outside; there is no tokio clock to
// share here. Their helpers panic on failure: that is how a test fails.
#![allow(clippy::disallowed_types, clippy::unwrap_used)]

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};

use serde_json::Value;
use stampede_tests::{Sim, bin, exclusive, http_post, num, repo, run_shipped};

#[test]
fn a_sweep_finds_the_knee_where_the_batch_fills() {
    let _machine = exclusive();
    // 8 batch slots and a fixed decode step: throughput stops growing at 8
    // users, and TTFT climbs once requests queue.
    let run = run_shipped("sweep.toml", &["--duration", "6s"]);
    assert_eq!(run.code(), 0, "stderr:\n{}", run.stderr());
    let s = run.summary();
    eprintln!("load table: {:#}", s["load_table"]);
    eprintln!("knee: {:#}", s["knee"]);
    let table = s["load_table"].as_array().unwrap();
    assert_eq!(table.len(), 5);
    let level = num(s, "/knee/level");
    assert!(
        [4.0, 8.0, 16.0].contains(&level),
        "the knee is at 8 users, give or take a step; got {level}"
    );
    assert_eq!(s["knee"]["found"], true);
    // The shape behind it: throughput scales to 8 users, then stops.
    let rps = |i: usize| table[i]["requests_per_s"].as_f64().unwrap();
    assert!(rps(2) > 6.0 * rps(0), "8 users {} vs 1 user {}", rps(2), rps(0));
    assert!(rps(4) < 1.3 * rps(2), "32 users {} vs 8 users {}", rps(4), rps(2));
    let p95 = |i: usize| table[i]["ttft_p95_ms"].as_f64().unwrap();
    assert!(p95(4) > 10.0 * p95(0));
    // Every step has its own full set of metrics.
    for step in s["steps"].as_array().unwrap() {
        assert!(step["metrics"]["ttft"]["count"].as_u64().unwrap() > 0, "{step:#}");
        assert!(step["metrics"]["e2e"]["p99"].as_f64().unwrap() > 0.0);
    }
    assert_eq!(s["client"]["bound"], false, "{:#}", s["client"]);
    assert!(run.stdout().contains("knee      at"), "{}", run.stdout());
}

#[test]
fn poisson_arrivals_keep_their_rate_and_their_shape() {
    let _machine = exclusive();
    let sim = Sim::start(&[
        "--max-batch",
        "64",
        "--decode-step",
        "10ms",
        "--decode-step-per-seq",
        "0s",
    ]);
    let run = run_shipped("rate.toml", &["--target", &sim.url, "--duration", "30s"]);
    assert_eq!(run.code(), 0, "stderr:\n{}", run.stderr());
    let s = run.summary();
    let m = sim.metrics();
    // Exactly the scheduled 600 arrivals, all answered.
    assert_eq!(m["llmsim_requests_received_total"], 600.0);
    assert_eq!(num(s, "/requests/ok"), 600.0);
    assert_eq!(num(s, "/requests/dropped"), 0.0);
    let rate = 600.0 / 30.0;
    let achieved = m["llmsim_requests_received_total"] / num(s, "/load/planned_duration_s");
    assert!((achieved - rate).abs() <= 0.6, "achieved {achieved} req/s");
    let sent = num(s, "/throughput/sent_per_s");
    assert!((sent - rate).abs() <= 0.6, "sent {sent} req/s over the measured time");
    // Gaps seen by the server, all three agents' streams together.
    let (n, sum, sumsq) = (
        m["llmsim_interarrival_gaps_total"],
        m["llmsim_interarrival_seconds_total"],
        m["llmsim_interarrival_seconds_squared_total"],
    );
    let mean = sum / n;
    let cv = ((sumsq / n - mean * mean) * n / (n - 1.0)).sqrt() / mean;
    eprintln!(
        "arrivals: {sent:.3} req/s, gap cv {cv:.3}, lag p99 {} ms",
        num(s, "/metrics/schedule_lag/p99")
    );
    assert!((cv - 1.0).abs() <= 0.1, "inter-arrival cv {cv}");
    // The agents kept time. The tail depends on how busy this machine is
    // (the lag p99 is a benchmark figure); the median does not.
    assert!(
        num(s, "/metrics/schedule_lag/p50") < 2.0,
        "{:#}",
        s["metrics"]["schedule_lag"]
    );
    assert_eq!(s["load"]["mode"], "rate");
    assert_eq!(s["load"]["arrival"], "poisson");
}

#[test]
fn a_stall_hidden_by_closed_loop_service_times_shows_from_the_intended_start() {
    let _machine = exclusive();
    let sim = Sim::start(&[
        "--max-batch",
        "64",
        "--prefill-base",
        "10ms",
        "--prefill-per-token",
        "0s",
        "--decode-step",
        "5ms",
        "--decode-step-per-seq",
        "0s",
    ]);
    // Ten users, each meaning to start a request every 200 ms.
    let profile = format!(
        r#"
        [target]
        url = "{}"
        model = "llm-sim"
        [load]
        users = 10
        pace = "200ms"
        duration = "30s"
        [request]
        max_tokens = 8
        [prompts]
        builtin = "short"
        [agents]
        count = 2
        # What this test measures is a 2 s stall; a few milliseconds of
        # scheduling lag on a busy machine must not make the run invalid.
        [thresholds]
        allow_client_bound = true
        "#,
        sim.url
    );
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("paced.toml");
    std::fs::write(&path, profile).unwrap();
    let out = tmp.path().join("results");
    let mut controller = Command::new(bin("controller"))
        .args(["run", path.to_str().unwrap(), "--out", out.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = controller.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines().map_while(Result::ok);
    assert!(
        lines.by_ref().any(|l| l.contains("[    8s/30s]")),
        "the run never got going"
    );
    // The server freezes for 2 s.
    assert!(http_post(sim.addr(), "/admin/stall?for=2s").contains("200"));
    let rest: Vec<String> = lines.collect();
    let status = controller.wait().unwrap();
    let dir = std::fs::read_dir(&out).unwrap().next().unwrap().unwrap().path();
    let s: Value = stampede_tests::read_summary(&std::fs::read(dir.join("summary.json")).unwrap());
    assert_eq!(
        status.code(),
        Some(0),
        "{rest:#?}\nverdict {:#}\nclient {:#}",
        s["verdict"],
        s["client"]
    );
    let (e2e, from_intended) = (&s["metrics"]["e2e"], &s["metrics"]["e2e_intended"]);
    eprintln!(
        "e2e: {e2e}\ne2e from the intended start: {from_intended}\nclient: {}",
        s["client"]
    );
    // Each user had one slow request out of 150: the service-time p99 does
    // not see the stall...
    let p50 = num(&s, "/metrics/e2e/p50");
    assert!(num(&s, "/metrics/e2e/p99") < 3.0 * p50, "{e2e}");
    assert!(num(&s, "/metrics/e2e/max") >= 2_000.0, "the stall happened: {e2e}");
    // ...while every request the stall held back counts it from its tick.
    assert!(num(&s, "/metrics/e2e_intended/p99") >= 1_000.0, "{from_intended}");
    // Those requests were behind schedule by the server's doing: the
    // agent sent each as soon as its user was free, so none of them lags.
    // Taken from the intended start, a request due early in the stall
    // would lag most of its 2 s; a busy host sends a few tens of
    // requests a few milliseconds late, never one by a second.
    let lag = &s["metrics"]["schedule_lag"];
    assert!(num(&s, "/metrics/schedule_lag/count") > 1000.0, "{lag}");
    assert!(
        num(&s, "/metrics/schedule_lag/max") < 1_000.0,
        "{lag}\n{:#}",
        s["requests"]
    );
}

#[test]
fn an_overloaded_client_is_called_client_bound() {
    let _machine = exclusive();
    // Far more arrivals than two cores can serve while also playing the
    // server: the agent falls behind its schedule and says so. How many
    // requests fail on the way (sockets run out on some machines) is the
    // machine's business; the run itself must complete, its agent never
    // lost however starved the load is.
    let profile = r#"
        [load]
        rate = 20000
        arrival = "constant"
        duration = "2s"
        drain = "5s"
        [request]
        max_tokens = 1
        [prompts]
        builtin = "short"
        [sim]
        max_batch = 100000
        prefill_base = "0s"
        prefill_per_token = "0s"
        [thresholds]
        max_error_rate = 1.0
    "#;
    let run = stampede_tests::run_profile(profile, &[]);
    let s = run.summary();
    eprintln!("client: {:#}", s["client"]);
    // The figures measure the client: an invalid measurement.
    assert_eq!(run.code(), 98, "{:#}\n{}", s["verdict"], run.stderr());
    assert_eq!(s["verdict"]["status"], "invalid");
    assert!(num(s, "/requests/ok") > 1000.0, "{:#}", s["requests"]);
    assert_eq!(s["client"]["bound"], true, "{:#}", s["client"]);
    assert!(!s["client"]["reasons"].as_array().unwrap().is_empty());
    assert!(
        run.stdout().contains("client-bound: results understate the server"),
        "{}",
        run.stdout()
    );
    assert!(
        run.stdout().contains("result    invalid measurement (exit 98)"),
        "{}",
        run.stdout()
    );
    // Allowed by the profile, the same run passes and says why.
    let allowed = profile.replace(
        "max_error_rate = 1.0",
        "max_error_rate = 1.0\n        allow_client_bound = true",
    );
    let run = stampede_tests::run_profile(&allowed, &[]);
    let s = run.summary();
    assert_eq!(run.code(), 0, "{:#}\n{}", s["verdict"], run.stderr());
    assert_eq!(s["client"]["bound"], true, "{:#}", s["client"]);
    let reasons = s["verdict"]["reasons"].to_string();
    assert!(
        reasons.contains("allowed by thresholds.allow_client_bound"),
        "{reasons}"
    );
}

#[test]
fn shipped_load_profiles_are_the_models_they_say() {
    let dir = repo().join("load-profiles");
    let paths: Vec<String> = ["ladder.toml", "rate.toml", "sweep.toml"]
        .iter()
        .map(|n| dir.join(n).display().to_string())
        .collect();
    let out = stampede_tests::controller(&["validate", &paths[0], &paths[1], &paths[2]]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("ladder.toml: ok (up to 50 users, 3 steps"), "{text}");
    assert!(text.contains("rate.toml: ok (up to 20 req/s, 1 step"), "{text}");
    assert!(text.contains("sweep.toml: ok (up to 32 users, 5 steps"), "{text}");
}
