//! The command line as a user meets it: the README's run, bad input, an
//! unreachable server, and stable help texts.

use std::path::Path;

use base64::Engine as _;
use serde_json::Value;
use stampede_proto::{Histograms, Metric, pb};
use stampede_tests::{bin, controller, exclusive, num, repo, run_profile, run_shipped};

/// The README's command, shortened: 50 users against the built-in
/// simulator, split over 3 agents, printing the percentiles and writing
/// `summary.json` and `intervals.jsonl`.
#[test]
fn the_high_profile_runs_against_the_built_in_simulator() {
    let _machine = exclusive();
    let run = run_shipped("high.toml", &["--duration", "4s"]);
    assert_eq!(run.code(), 0, "stderr:\n{}", run.stderr());
    let stdout = run.stdout();
    for row in [
        "TTFT (ms)",
        "ITL (ms)",
        "TPOT (ms)",
        "E2E (ms)",
        "client queue (ms)",
        "  server queue (ms)",
        "  running",
        "  waiting",
        "summary.json",
        "{metrics,intervals,classes,steps}.csv",
    ] {
        assert!(stdout.contains(row), "no {row:?} in:\n{stdout}");
    }
    assert!(
        run.stderr()
            .contains("against the built-in simulator at http://127.0.0.1:")
            && run.stderr().contains("(no target given)"),
        "{}",
        run.stderr()
    );
    let s = run.summary();
    assert_eq!(s["load"]["users"], 50);
    assert_eq!(s["target"]["simulated"], true);
    let users: Vec<u64> = s["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["users"].as_u64().unwrap())
        .collect();
    assert_eq!(users, [17, 17, 16]);
    for metric in ["ttft", "itl", "chunk_gap", "tpot", "e2e"] {
        assert!(num(s, &format!("/metrics/{metric}/count")) > 0.0, "no {metric} samples");
        assert!(num(s, &format!("/metrics/{metric}/p50")) > 0.0);
        assert!(num(s, &format!("/metrics/{metric}/p99")) >= num(s, &format!("/metrics/{metric}/p50")));
    }
    assert!(s["definitions"]["ttft"].as_str().unwrap().contains("first byte"));

    // The CSV files say what the summary says.
    let dir = run.dir.as_ref().unwrap();
    let csv = |name: &str| -> Vec<Vec<String>> {
        std::fs::read_to_string(dir.join(name))
            .unwrap()
            .lines()
            .map(|l| l.split(',').map(str::to_owned).collect())
            .collect()
    };
    let metrics = csv("metrics.csv");
    let col = |rows: &[Vec<String>], name: &str| rows[0].iter().position(|c| c == name).unwrap();
    let ttft = metrics.iter().find(|r| r[0] == "ttft").unwrap();
    for q in ["count", "mean", "p50", "p95", "p99", "max"] {
        let cell: f64 = ttft[col(&metrics, q)].parse().unwrap();
        assert_eq!(cell, num(s, &format!("/metrics/ttft/{q}")), "metrics.csv ttft {q}");
    }
    let intervals = csv("intervals.csv");
    assert_eq!(intervals.len() - 1, s["intervals"].as_array().unwrap().len());
    let ok: f64 = intervals[1..]
        .iter()
        .map(|r| r[col(&intervals, "ok")].parse::<f64>().unwrap())
        .sum();
    let listed: f64 = s["intervals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["ok"].as_f64().unwrap())
        .sum();
    assert_eq!(ok, listed);
    assert!(
        intervals[1..]
            .iter()
            .any(|r| !r[col(&intervals, "server_running")].is_empty()),
        "the built-in simulator's metrics were scraped"
    );
    let classes = csv("classes.csv");
    assert_eq!(classes.len() - 1, s["classes"].as_array().unwrap().len());
    assert_eq!(csv("steps.csv").len() - 1, s["steps"].as_array().unwrap().len());

    // intervals.jsonl holds every report exactly: merging its histograms
    // rebuilds the summary's figures, and its counters add up to the totals.
    let log = std::fs::read_to_string(run.dir.as_ref().unwrap().join("intervals.jsonl")).unwrap();
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|l| l["event"] == "report")
        .collect();
    let reports: u64 = s["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["reports"].as_u64().unwrap())
        .sum();
    assert_eq!(lines.len() as u64, reports);
    let mut merged = Histograms::new();
    let mut ok = 0;
    for line in &lines {
        ok += line["counters"]["ok"].as_u64().unwrap();
        let wire: Vec<pb::Histogram> = line["histograms"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(name, b64)| pb::Histogram {
                metric: Metric::from_name(name).unwrap().to_wire() as i32,
                v2_deflate: base64::engine::general_purpose::STANDARD
                    .decode(b64.as_str().unwrap())
                    .unwrap(),
            })
            .collect();
        merged.add(&Histograms::from_wire(&wire).unwrap());
    }
    assert_eq!(ok as f64, num(s, "/requests/ok"));
    for (metric, name) in [(Metric::Ttft, "ttft"), (Metric::Itl, "itl"), (Metric::E2e, "e2e")] {
        let h = merged.get(metric);
        assert_eq!(h.len() as f64, num(s, &format!("/metrics/{name}/count")));
        for q in ["p50", "p99"] {
            let quantile = if q == "p50" { 0.5 } else { 0.99 };
            let summary_us = (num(s, &format!("/metrics/{name}/{q}")) * 1e3).round() as u64;
            assert_eq!(h.value_at_quantile(quantile), summary_us, "{name} {q}");
        }
    }
}

fn bad_profile(text: &str) -> (i32, String) {
    let run = run_profile(text, &[]);
    let stderr = run.stderr();
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(run.summary.is_none(), "a bad profile must not start a run");
    (run.code(), stderr)
}

#[test]
fn bad_profiles_get_a_clear_message_naming_file_and_key_and_exit_64() {
    let cases = [
        (
            "[load]\nusers = 5\nthink = \"1s\"\n",
            "profile.toml:3:1: load.think: unknown key",
        ),
        (
            "[load]\nusers = -3\n",
            "profile.toml:2:9: load.users: expected a positive integer up to 1000000, got -3",
        ),
        (
            "[load]\nusers = 2\nduration = \"soon\"\n",
            "profile.toml:3:12: load.duration: expected a positive duration",
        ),
        ("[load\nusers = 2\n", "profile.toml:1:"),
        (
            "[load]\nusers = 2\n[target]\nurl = \"localhost:8000\"\n",
            "target.url: target URL \"localhost:8000\": no scheme",
        ),
    ];
    for (text, expected) in cases {
        let (code, stderr) = bad_profile(text);
        assert_eq!(code, 64, "{text:?}: {stderr}");
        assert!(
            stderr.contains(expected),
            "{text:?}: expected {expected:?} in:\n{stderr}"
        );
    }
    // Several problems at once are all reported.
    let (code, stderr) = bad_profile("[load]\nusers = 0\nduration = 5\n[request]\nstreem = true\n");
    assert_eq!(code, 64);
    assert!(stderr.contains("load.users") && stderr.contains("load.duration") && stderr.contains("request.streem"));
    assert!(stderr.contains("did you mean \"stream\""), "{stderr}");
    assert!(stderr.contains("3 problems in"), "{stderr}");
}

#[test]
fn a_missing_profile_and_bad_flags_exit_64() {
    let out = controller(&["run", "/nonexistent/profile.toml"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64));
    assert!(
        stderr.contains("/nonexistent/profile.toml: cannot read the profile"),
        "{stderr}"
    );

    let smoke = repo().join("load-profiles/smoke.toml");
    let smoke = smoke.to_str().unwrap();
    for (args, expected) in [
        (vec!["run", smoke, "--agents", "0"], "--agents"),
        (vec!["run", smoke, "--duration", "soon"], "--duration"),
        (vec!["run", smoke, "--userz", "5"], "--userz"),
        (
            vec!["run", smoke, "--users=-5"],
            "--users -5: load.users: expected a positive integer",
        ),
        (vec!["launch"], "launch"),
    ] {
        let out = controller(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"));
    }
    // A flag's value gets the words a profile's value gets.
    for flag in [["--duration", "thirty"], ["--duration", "0s"]] {
        let out = controller(&["run", smoke, flag[0], flag[1]]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{stderr}");
        assert!(
            stderr.contains(&format!(
                "invalid value '{}' for '--duration <DURATION>': expected a positive duration such as \"30s\", \"2m\" or \"250ms\"",
                flag[1]
            )),
            "{stderr}"
        );
    }
}

#[test]
fn every_prompt_source_problem_shows_at_once() {
    let (code, stderr) = bad_profile(
        "[load]\nusers = 1\nduration = \"1s\"\n[prompts]\nbuiltin = \"short\"\ninline = [\"\"]\nformat = \"jsonl\"\n[prompts.synthetic]\ninput_tokens = { min = 9, max = 2 }\n",
    );
    assert_eq!(code, 64, "{stderr}");
    for expected in [
        "prompts: set only one of builtin, inline, file and synthetic",
        "prompts.format: format applies to a prompt file: set file too",
        "prompts.inline[0]: a prompt must not be empty",
        "prompts.synthetic.count: missing",
        "prompts.synthetic.input_tokens: min 9 is above max 2",
    ] {
        assert!(stderr.contains(expected), "{expected:?} missing from:\n{stderr}");
    }
    assert!(stderr.contains("5 problems in"), "{stderr}");
}

#[test]
fn validate_warns_of_a_header_variable_that_is_not_set() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("keyed.toml");
    std::fs::write(
        &path,
        "[target]\nurl = \"http://127.0.0.1:9\"\nheaders = { Authorization = { env = \"STAMPEDE_TEST_UNSET_KEY\" } }\n[load]\nusers = 1\n",
    )
    .unwrap();
    let out = controller(&["validate", path.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning: header \"Authorization\" takes its value from the environment variable STAMPEDE_TEST_UNSET_KEY, which is not set here"),
        "{stderr}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("keyed.toml: ok (up to 1 user, 1 step, 1 agent,"));
}

#[test]
fn an_unreachable_target_completes_with_connect_errors_and_fails() {
    let _machine = exclusive();
    // A port that was free a moment ago: nothing listens on it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let profile = format!(
        "[target]\nurl = \"http://127.0.0.1:{port}\"\nmodel = \"m\"\n[load]\nusers = 2\nduration = \"2s\"\n[agents]\ncount = 2\n"
    );
    let run = run_profile(&profile, &[]);
    assert_eq!(run.code(), 3, "stderr:\n{}", run.stderr());
    let s = run.summary();
    assert_eq!(num(s, "/requests/ok"), 0.0);
    assert!(num(s, "/errors/connect/count") > 0.0);
    assert_eq!(num(s, "/requests/failed"), num(s, "/errors/connect/count"));
    let first = s["errors"]["connect"]["first_message"].as_str().unwrap();
    assert!(
        first.contains(&format!("127.0.0.1:{port}")) && first.contains("refused"),
        "{first}"
    );
    assert_eq!(
        num(s, "/metrics/ttft/count"),
        0.0,
        "failed requests are never latency samples"
    );
    assert_eq!(num(s, "/metrics/e2e/count"), 0.0);
    let stdout = run.stdout();
    assert!(stdout.contains("no request succeeded"), "{stdout}");
    assert!(stdout.contains("connect ×"), "{stdout}");
}

#[test]
fn an_agent_with_no_controller_says_so_and_fails() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = std::process::Command::new(bin("agent"))
        .args([
            "--controller",
            &format!("http://127.0.0.1:{port}"),
            "--name",
            "a",
            "--wait",
            "2s",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot reach the controller at http://127.0.0.1:{port}")),
        "{stderr}"
    );
    assert!(stderr.contains("gave up after 2s and"), "{stderr}");
    assert!(stderr.contains("Connection refused"), "{stderr}");
}

#[test]
fn shipped_profiles_validate() {
    let dir = repo().join("load-profiles");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".toml"))
        .collect();
    names.sort();
    assert!(names.len() >= 4, "{names:?}");
    let paths: Vec<String> = names.iter().map(|n| dir.join(n).display().to_string()).collect();
    let args: Vec<&str> = std::iter::once("validate")
        .chain(paths.iter().map(String::as_str))
        .collect();
    let out = controller(&args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// `--help` texts are part of the interface: a change must be deliberate.
/// Set `UPDATE_SNAPSHOTS=1` to accept a change.
#[test]
fn help_texts_are_stable() {
    let snapshots = Path::new(env!("CARGO_MANIFEST_DIR")).join("snapshots");
    for (name, program, args) in [
        ("controller-help.txt", "controller", vec!["--help"]),
        ("controller-run-help.txt", "controller", vec!["run", "--help"]),
        ("controller-report-help.txt", "controller", vec!["report", "--help"]),
        ("controller-compare-help.txt", "controller", vec!["compare", "--help"]),
        ("agent-help.txt", "agent", vec!["--help"]),
        ("llm-sim-help.txt", "llm-sim", vec!["--help"]),
    ] {
        let out = std::process::Command::new(bin(program)).args(&args).output().unwrap();
        assert!(out.status.success());
        let text = String::from_utf8(out.stdout).unwrap();
        let path = snapshots.join(name);
        if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
            std::fs::create_dir_all(&snapshots).unwrap();
            std::fs::write(&path, &text).unwrap();
        }
        let expected = std::fs::read_to_string(&path)
            .unwrap_or_else(|_| panic!("{} is missing; run with UPDATE_SNAPSHOTS=1", path.display()));
        assert_eq!(
            text, expected,
            "{name} changed; run with UPDATE_SNAPSHOTS=1 if that is intended"
        );
    }
}

/// SIGTERM (what Kubernetes sends) stops new requests, lets in-flight ones
/// finish, and still writes the summary of everything measured.
#[test]
// This process runs no tokio runtime; a wall-clock bound is all it needs.
#[allow(clippy::disallowed_types)]
fn a_terminated_run_drains_and_still_writes_its_summary() {
    let _machine = exclusive();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("results");
    let profile = repo().join("load-profiles/smoke.toml");
    let mut child = std::process::Command::new(bin("controller"))
        .args([
            "run",
            profile.to_str().unwrap(),
            "--duration",
            "60s",
            "--out",
            out.to_str().unwrap(),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the load is running: the first interval line appears.
    let stderr = child.stderr.take().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stderr));
    assert!(
        lines.by_ref().map_while(Result::ok).any(|l| l.contains("req/s")),
        "the run never started"
    );
    let sent = std::time::Instant::now();
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = child.wait().unwrap();
    assert!(
        sent.elapsed() < std::time::Duration::from_secs(15),
        "the drain took {:?}",
        sent.elapsed()
    );
    assert_eq!(status.code(), Some(130), "{rest:#?}");
    let dir = std::fs::read_dir(&out).unwrap().next().unwrap().unwrap().path();
    let s: Value = stampede_tests::read_summary(&std::fs::read(dir.join("summary.json")).unwrap());
    assert_eq!(s["verdict"]["status"], "interrupted");
    assert!(num(&s, "/requests/ok") > 0.0);
    assert_eq!(
        num(&s, "/requests/cancelled"),
        0.0,
        "in-flight requests were allowed to finish"
    );
    assert!(s["agents"].as_array().unwrap().iter().all(|a| a["end"] == "finished"));
}

/// A run described by flags alone, against a real server: exactly the
/// requests asked for reach it, split over the agents, and the summary
/// records the flags.
#[test]
fn a_run_with_no_profile_sends_exactly_the_requests_asked() {
    let _machine = exclusive();
    let sim = stampede_tests::Sim::start(&["--max-batch", "64"]);
    let out = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let output = controller(
            &[
                &[
                    "run",
                    "--target",
                    sim.url.as_str(),
                    "--out",
                    out.path().to_str().unwrap(),
                ],
                args,
            ]
            .concat(),
        );
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert_eq!(output.status.code(), Some(0), "{stderr}");
        let last = std::fs::read_dir(out.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .max_by_key(|p| {
                std::fs::metadata(p.join("summary.json"))
                    .and_then(|m| m.modified())
                    .ok()
            })
            .unwrap();
        stampede_tests::read_summary(&std::fs::read(last.join("summary.json")).unwrap())
    };
    let received = || sim.metrics()["llmsim_requests_received_total"];
    let before = received();
    let s = run(&[
        "--users",
        "8",
        "--requests",
        "40",
        "--max-tokens",
        "16",
        "--agents",
        "3",
    ]);
    assert_eq!(received() - before, 40.0, "the simulator counts exactly 40 requests");
    assert_eq!(num(&s, "/requests/ok"), 40.0);
    assert_eq!(s["load"]["requests"], 40);
    assert_eq!(s["load"]["users"], 8);
    assert_eq!(s["load"]["max_tokens"], 16);
    assert_eq!(s["profile"]["name"], "command-line");
    let overrides: Vec<&str> = s["load"]["overrides"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        overrides,
        ["--users 8", "--requests 40", "--max-tokens 16", "--agents 3"]
    );
    let per_agent: Vec<f64> = s["agents"].as_array().unwrap().iter().map(|a| num(a, "/ok")).collect();
    assert_eq!(per_agent, [15.0, 15.0, 10.0], "40 over 3 agents of 3, 3 and 2 users");
    // Open loop: 30 arrivals at 20/s, the count deciding the length.
    let before = received();
    let s = run(&["--rate", "20", "--requests", "30", "--max-tokens", "4"]);
    assert_eq!(received() - before, 30.0);
    assert_eq!(num(&s, "/load/planned_duration_s"), 1.5);
    // A named flag wins over --set, and both over the default.
    let s = run(&[
        "--set",
        "load.users=6",
        "--users",
        "2",
        "--set",
        "load.duration=2s",
        "--max-tokens",
        "4",
    ]);
    assert_eq!(s["load"]["users"], 2);
    assert_eq!(num(&s, "/load/planned_duration_s"), 2.0);
}

#[test]
fn flags_are_checked_as_the_profile_is_and_a_run_needs_a_load() {
    let out = controller(&[
        "run",
        "--users",
        "0",
        "--max-tokens",
        "many",
        "--set",
        "load.durtion=3s",
    ]);
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for line in [
        "--users 0: load.users: expected a positive integer up to 1000000, got 0",
        "--max-tokens many: request.max_tokens: expected a positive integer up to 10000000, got \"many\"",
        "--set load.durtion=3s: load.durtion: unknown key (did you mean \"duration\"?)",
    ] {
        assert!(stderr.contains(line), "no {line:?} in:\n{stderr}");
    }
    let out = controller(&["run", "--max-tokens", "4"]);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("give a profile"));
    let out = controller(&["run", "--users", "2", "--set", "nonsense"]);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected KEY=VALUE"));
}

#[test]
fn validate_and_run_refuse_the_same_limits_with_the_same_words() {
    let tmp = tempfile::tempdir().unwrap();
    for (interval, expected) in [
        (
            "1ns",
            "report.interval: expected whole milliseconds, such as \"1ms\" or \"250ms\" (the agents receive durations in milliseconds), got \"1ns\"",
        ),
        (
            "50ms",
            "report.interval: expected at least 100ms (each agent sends a report of every histogram each interval), got 50ms",
        ),
    ] {
        let path = tmp.path().join("p.toml");
        std::fs::write(
            &path,
            format!("[load]\nusers = 1\n[report]\ninterval = \"{interval}\"\n"),
        )
        .unwrap();
        let path = path.to_str().unwrap();
        let line = format!("{path}:4:12: {expected}");
        for args in [
            vec!["validate", path],
            vec!["run", path, "--out", tmp.path().to_str().unwrap()],
        ] {
            let out = controller(&args);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(64), "{args:?}: {stderr}");
            assert!(stderr.contains(&line), "{args:?}: no {line:?} in:\n{stderr}");
        }
    }
    // A flag is checked as the profile's key is.
    let smoke = repo().join("load-profiles/smoke.toml");
    for (flag, value, expected) in [
        (
            "--agents",
            "10001",
            "--agents 10001: agents.count: expected a positive integer up to 10000, got 10001",
        ),
        (
            "--agents",
            "0",
            "--agents 0: agents.count: expected a positive integer up to 10000, got 0",
        ),
    ] {
        let out = controller(&["run", smoke.to_str().unwrap(), flag, value]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{stderr}");
        assert!(stderr.contains(expected), "no {expected:?} in:\n{stderr}");
    }
    let out = controller(&[
        "run",
        "--users",
        "1",
        "--listen",
        "127.0.0.1:0",
        "--expect-agents",
        "10001",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("--expect-agents 10001: expected a positive integer up to 10000, got 10001"),
        "{stderr}"
    );
}

#[test]
// Wall-clock time of a child process: no runtime clock to pause.
#[allow(clippy::disallowed_types)]
fn an_endless_prompt_file_is_refused_at_once() {
    // Read whole, /dev/zero would fill memory before any check.
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("p.toml");
    std::fs::write(&path, "[load]\nusers = 1\n[prompts]\nfile = \"/dev/zero\"\n").unwrap();
    let path = path.to_str().unwrap();
    for args in [
        vec!["validate", path],
        vec!["run", path, "--out", tmp.path().to_str().unwrap()],
    ] {
        let began = std::time::Instant::now();
        let out = controller(&args);
        let took = began.elapsed();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {stderr}");
        assert!(
            stderr.contains("prompts.file: /dev/zero: not UTF-8 text (first bad byte at offset 0)"),
            "{args:?}: {stderr}"
        );
        // Well under a second on an idle machine; bounded loosely for a
        // busy one.
        assert!(took < std::time::Duration::from_secs(5), "{args:?} took {took:?}");
    }
    // A profile that is a device is refused with the limit.
    let out = controller(&["validate", "/dev/zero"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("/dev/zero: cannot read the profile: not UTF-8 text"),
        "{stderr}"
    );
}

#[test]
// Wall-clock time of a child process: no runtime clock to pause.
#[allow(clippy::disallowed_types)]
fn a_local_agent_that_fails_before_the_start_ends_the_run_at_once() {
    let _guard = exclusive();
    // Too few open files for 40 agents: some cannot start their session.
    // (An open loop without max_concurrency, which the open-file check
    // before the start cannot size.) The run used to wait for them until
    // the join deadline (30 s); the outer timeout turns a hang into a
    // failure.
    bin("controller");
    let prompts: Vec<String> = (0..40).map(|i| format!("\"prompt {i}\"")).collect();
    let profile = format!(
        "[load]\nrate = 1\nduration = \"2s\"\n[prompts]\ninline = [{}]\n",
        prompts.join(", ")
    );
    let began = std::time::Instant::now();
    let run = stampede_tests::run_profile_wrapped(
        &[
            "timeout",
            "-s",
            "KILL",
            "120",
            "sh",
            "-c",
            "ulimit -n 80; exec \"$0\" \"$@\"",
        ],
        &profile,
        &["--agents", "40"],
    );
    let took = began.elapsed();
    let stderr = run.stderr();
    assert_eq!(run.code(), 1, "{stderr}");
    assert!(
        stderr.contains("controller: the run could not be carried out: in-process agent local-"),
        "{stderr}"
    );
    assert!(stderr.contains("Too many open files"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(took < std::time::Duration::from_secs(20), "took {took:?}");
}
