//! Trace replay against the simulator: every row of a trace arrives at its
//! time (scaled by the speed) with its input length, and the simulator
//! serves exactly its output length; two agents share the rows.

// These tests watch real processes from outside. Their helpers panic on
// failure: that is how a test fails.
#![allow(clippy::unwrap_used)]

use stampede_tests::{Sim, controller, exclusive, num, read_summary, run_profile};

/// A trace row: (timestamp ms, input tokens, output tokens, hash ids).
type Row = (u64, u32, u32, Vec<u64>);

/// A light trace of 40 rows over about 4 s of trace time: conversations
/// that share a system prompt (blocks 0 and 1) and grow their own blocks.
fn rows() -> Vec<Row> {
    (0..40u64)
        .map(|i| {
            let at = 200 + i * 97 + (i * i * 13) % 61;
            let conversation = i % 4;
            let mut ids = vec![0, 1];
            ids.extend((0..=i / 4).map(|k| 100 * (conversation + 1) + k));
            let input = 32 * ids.len() as u32 - (i as u32 * 7) % 29;
            let output = 4 + (i as u32 * 11) % 27;
            (at, input, output, ids)
        })
        .collect()
}

fn jsonl(rows: &[Row]) -> String {
    rows.iter()
        .map(|(at, input, output, ids)| {
            format!("{{\"timestamp\": {at}, \"input_length\": {input}, \"output_length\": {output}, \"hash_ids\": {ids:?}}}\n")
        })
        .collect()
}

/// A profile replaying `trace` (a file name next to it) on two agents.
fn profile(url: &str, trace: &str, extra: &str) -> String {
    format!(
        r#"
        name = "replay"
        [target]
        url = "{url}"
        api = "openai-completions"
        model = "llm-sim"
        timeout = "60s"
        [load]
        trace = "{trace}"
        block_size = 32
        drain = "30s"
        {extra}
        [agents]
        count = 2
        "#
    )
}

/// llm-sim for replays: room for every arrival, short decode steps.
const SIM: &[&str] = &[
    "--max-batch",
    "64",
    "--decode-step",
    "2ms",
    "--decode-step-per-seq",
    "0s",
];

#[test]
fn a_trace_is_replayed_at_its_times_with_its_lengths_on_two_agents() {
    let _machine = exclusive();
    let sim = Sim::start(&[SIM, &["--prefill-per-token", "0s"]].concat());
    let dir = tempfile::tempdir().unwrap();
    let rows = rows();
    std::fs::write(dir.path().join("trace.jsonl"), jsonl(&rows)).unwrap();
    let path = dir.path().join("profile.toml");
    std::fs::write(&path, profile(&sim.url, "trace.jsonl", "speed = 2.0")).unwrap();
    let out_dir = dir.path().join("results");
    let out = controller(&["run", path.to_str().unwrap(), "--out", out_dir.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary_path = std::fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| e.unwrap().path().join("summary.json"))
        .find(|p| p.exists())
        .expect("a summary.json");
    let s = read_summary(&std::fs::read(summary_path).unwrap());
    let m = sim.metrics();
    let n = rows.len() as f64;
    assert_eq!(s["load"]["mode"], "trace");
    assert_eq!(s["load"]["trace"]["requests"], 40);
    assert_eq!(s["load"]["trace"]["speed"], 2.0);
    assert_eq!(s["load"]["trace"]["format"], "mooncake");
    // Every row, once.
    assert_eq!(m["llmsim_requests_received_total"], n);
    assert_eq!(num(&s, "/requests/ok"), n);
    assert_eq!(num(&s, "/requests/failed"), 0.0, "{:#}", s["errors"]);
    // Its lengths, as the simulator counted them.
    let input: u32 = rows.iter().map(|r| r.1).sum();
    let output: u32 = rows.iter().map(|r| r.2).sum();
    assert_eq!(m["llmsim_prompt_tokens_total"], f64::from(input));
    assert_eq!(m["llmsim_generation_tokens_total"], f64::from(output));
    assert_eq!(num(&s, "/tokens/output"), f64::from(output));
    // Split by row: agent 0 the even rows, agent 1 the odd ones.
    let per_agent: Vec<f64> = s["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["ok"].as_f64().unwrap())
        .collect();
    assert_eq!(per_agent, [20.0, 20.0], "{:#}", s["agents"]);
    // At its times: the agents kept to the schedule, and the simulator saw
    // the trace's span at twice the speed.
    let lag = &s["metrics"]["schedule_lag"];
    eprintln!(
        "lag p50 {} ms p99 {} ms; sim gaps {} s over {} gaps",
        lag["p50"], lag["p99"], m["llmsim_interarrival_seconds_total"], m["llmsim_interarrival_gaps_total"]
    );
    assert_eq!(num(lag, "/count"), n);
    assert!(num(lag, "/p50") < 2.0, "{lag:#}");
    let span = (rows.last().unwrap().0 - rows[0].0) as f64 / 1000.0 / 2.0;
    let seen = m["llmsim_interarrival_seconds_total"];
    assert!(
        (seen - span).abs() < 0.05,
        "the simulator saw arrivals over {seen} s, the trace at 2× spans {span} s"
    );
    assert!(
        (num(&s, "/load/planned_duration_s") - span).abs() < 0.01,
        "{:#}",
        s["load"]
    );
}

#[test]
fn a_window_and_a_count_cut_the_trace() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("trace.jsonl"), jsonl(&rows())).unwrap();
    let check = |extra: &str, expected: &str| {
        let path = dir.path().join("profile.toml");
        std::fs::write(&path, profile("http://127.0.0.1:9", "trace.jsonl", extra)).unwrap();
        let out = controller(&["validate", path.to_str().unwrap()]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(text.contains(expected), "{extra}: {text}");
    };
    check("", "a replay of 40 requests from trace.jsonl at 1× speed");
    // Trace time from the first row (200 ms): 1 s to 2 s holds rows 10 to 19.
    check(
        "start = \"1s\"\nlength = \"1s\"\nspeed = 4.0",
        "a replay of 10 requests from trace.jsonl at 4× speed",
    );
    check("requests = 7", "a replay of 7 requests from trace.jsonl");
}

#[test]
fn bad_rows_are_refused_with_their_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let good = "{\"timestamp\": 0, \"input_length\": 8, \"output_length\": 2}\n";
    let cases = [
        (
            "t.jsonl",
            format!("{good}{{\"timestamp\": 5, \"output_length\": 2}}\n"),
            "t.jsonl:2: missing field input_length",
        ),
        (
            "t.jsonl",
            format!("{good}{{\"timestamp\": 5, \"input_length\": -3, \"output_length\": 2}}\n"),
            "t.jsonl:2: input_length: expected a positive whole number of tokens, got -3",
        ),
        (
            "t.jsonl",
            format!("{good}{{\"timestamp\": 5, \"input_length\": 3, \"output_length\": 0}}\n"),
            "t.jsonl:2: output_length: expected a positive number of tokens, got 0",
        ),
        (
            "t.jsonl",
            format!("{{\"timestamp\": 9, \"input_length\": 8, \"output_length\": 2}}\n{good}"),
            "t.jsonl:2: timestamp 0 ms is earlier than line 1's 9 ms; rows must be in time order",
        ),
        (
            "t.csv",
            "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.6805900,374,44\n2023-11-16 18:15:47.1,12\n"
                .to_owned(),
            "t.csv:3: expected 3 fields (TIMESTAMP,ContextTokens,GeneratedTokens), got 2",
        ),
        (
            "t.csv",
            "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.6805900,-374,44\n".to_owned(),
            "t.csv:2: ContextTokens: expected a positive number of tokens, got -374",
        ),
        ("t.txt", good.to_owned(), "cannot tell the layout of \"t.txt\""),
    ];
    for (name, text, expected) in cases {
        std::fs::write(dir.path().join(name), text).unwrap();
        let path = dir.path().join("profile.toml");
        std::fs::write(&path, profile("http://127.0.0.1:9", name, "")).unwrap();
        let out = controller(&["validate", path.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{name}: {stderr}");
        assert!(stderr.contains(expected), "{name}: expected {expected:?} in:\n{stderr}");
        assert!(stderr.contains("load.trace"), "{stderr}");
    }
}

#[test]
fn an_azure_trace_replays_every_row() {
    let _machine = exclusive();
    let sim = Sim::start(SIM);
    let dir = tempfile::tempdir().unwrap();
    let csv = "TIMESTAMP,ContextTokens,GeneratedTokens\n\
        2023-11-16 18:15:46.6805900,374,44\n\
        2023-11-16 18:15:46.9000000,20,3\n\
        2023-11-16 18:15:47.2500000,95,12\n\
        2023-11-16 18:15:47.2500000,7,1\n";
    std::fs::write(dir.path().join("azure.csv"), csv).unwrap();
    let text = profile(&sim.url, "azure.csv", "").replace("count = 2", "count = 1");
    // run_profile writes the profile in its own directory: name the trace
    // by its absolute path.
    let abs = dir.path().join("azure.csv");
    let run = run_profile(
        &text.replace("\"azure.csv\"", &format!("{:?}", abs.to_str().unwrap())),
        &[],
    );
    assert_eq!(run.code(), 0, "stderr:\n{}", run.stderr());
    let m = sim.metrics();
    assert_eq!(m["llmsim_requests_received_total"], 4.0);
    assert_eq!(m["llmsim_prompt_tokens_total"], 374.0 + 20.0 + 95.0 + 7.0);
    assert_eq!(m["llmsim_generation_tokens_total"], 44.0 + 3.0 + 12.0 + 1.0);
    assert_eq!(num(run.summary(), "/requests/ok"), 4.0);
}
