//! A run directory alone rebuilds every figure (`controller report`), and
//! `controller compare` tells a change from noise: two runs against the
//! same simulator are within noise; a simulator 20% slower per decode
//! step changes TPOT, upwards.

use std::path::{Path, PathBuf};

use serde_json::Value;
use stampede_tests::collector::Collector;
use stampede_tests::{Sim, controller, exclusive, prompt_of, read_summary, run_profile};

fn staged(sim: &Sim, collector: &Collector) -> String {
    format!(
        r#"
        name = "rebuild"
        [target]
        url = "{}"
        model = "llm-sim"
        [load]
        stages = [{{ users = 2, duration = "3s" }}, {{ users = 6, duration = "3s" }}]
        warmup = "1s"
        drain = "15s"
        [request]
        max_tokens = 12
        [prompts]
        inline = ["{}", "{}"]
        [agents]
        count = 2
        [server_metrics]
        interval = "500ms"
        [trace]
        endpoint = "{}"
        protocol = "grpc"
        "#,
        sim.url,
        prompt_of(10),
        prompt_of(60),
        collector.grpc_url()
    )
}

/// The files `controller report` writes.
const REBUILT: [&str; 7] = [
    "summary.json",
    "report.html",
    "junit.xml",
    "metrics.csv",
    "intervals.csv",
    "classes.csv",
    "steps.csv",
];

/// Where two JSON documents differ, as `pointer: left != right`.
fn differences(a: &Value, b: &Value, at: &str) -> Vec<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            keys.into_iter()
                .flat_map(|k| differences(&x[k], &y[k], &format!("{at}/{k}")))
                .collect()
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .flat_map(|(i, (p, q))| differences(p, q, &format!("{at}/{i}")))
            .collect(),
        _ if a == b => Vec::new(),
        _ => vec![format!("{at}: {a} != {b}")],
    }
}

fn read(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap_or_else(|e| panic!("{}/{name}: {e}", dir.display()))
}

#[test]
fn report_rebuilds_every_figure_of_a_finished_run() {
    let _machine = exclusive();
    let collector = Collector::start();
    let sim = Sim::start(&["--max-batch", "4", "--decode-step", "15ms"]);
    let run = run_profile(&staged(&sim, &collector), &[]);
    assert_eq!(run.code(), 0, "stderr:\n{}", run.stderr());
    let dir = run.dir.clone().expect("a results directory");
    let original = run.summary().clone();
    assert!(
        original["server"]["scrapes"].as_u64().unwrap() > 0,
        "server metrics were scraped"
    );
    assert_eq!(original["tracing"]["enabled"], true);
    assert!(!original["tracing"]["slowest_e2e"].as_array().unwrap().is_empty());
    assert_eq!(original["steps"].as_array().unwrap().len(), 2);
    assert!(read(&dir, "profile.toml").contains("name = \"rebuild\""));

    // Into another directory, then over the run's own files.
    let elsewhere = tempfile::tempdir().expect("a temporary directory");
    for out in [Some(elsewhere.path()), None] {
        let mut args = vec!["report", dir.to_str().expect("utf-8")];
        if let Some(out) = out {
            args.extend(["--out", out.to_str().expect("utf-8")]);
        }
        let before: Vec<String> = REBUILT.iter().map(|f| read(&dir, f)).collect();
        let rebuilt = controller(&args);
        let stderr = String::from_utf8_lossy(&rebuilt.stderr);
        assert_eq!(rebuilt.status.code(), Some(0), "{stderr}");
        assert!(stderr.is_empty(), "no warning expected: {stderr}");
        let stdout = String::from_utf8_lossy(&rebuilt.stdout);
        assert!(stdout.contains(original["run_id"].as_str().unwrap()), "{stdout}");
        assert!(stdout.contains("TTFT (ms)"), "{stdout}");
        let written = out.unwrap_or(&dir);
        for (name, was) in REBUILT.iter().zip(&before) {
            let now = read(written, name);
            if *name == "summary.json" {
                // Counts, means and every percentile: the whole summary.
                let s = read_summary(now.as_bytes());
                let differ = differences(&s, &original, "");
                assert!(differ.is_empty(), "the rebuilt summary differs:\n{}", differ.join("\n"));
            }
            assert!(now == *was, "{name} differs when rebuilt into {}", written.display());
        }
    }
}

#[test]
fn report_says_what_is_wrong_with_a_directory() {
    let empty = tempfile::tempdir().expect("a temporary directory");
    let out = controller(&["report", empty.path().to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("holds no intervals.jsonl"), "{stderr}");
    std::fs::write(
        empty.path().join("intervals.jsonl"),
        "{\"agent\":\"a\",\"interval\":0}\n",
    )
    .unwrap();
    let out = controller(&["report", empty.path().to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("written by an older stampede"), "{stderr}");
}

/// Eight users, prompts of one length, answers of 16 tokens: TTFT is the
/// prefill (about half a second) and TPOT the decode step, both long
/// enough that a loaded machine's few milliseconds stay under 1%.
fn steady(sim: &Sim) -> String {
    let other = format!("b {}", prompt_of(99));
    format!(
        r#"
        name = "steady"
        [target]
        url = "{}"
        model = "llm-sim"
        [load]
        users = 8
        duration = "10s"
        drain = "20s"
        [request]
        max_tokens = 16
        [prompts]
        inline = ["{}", "{}"]
        [agents]
        count = 2
        "#,
        sim.url,
        prompt_of(100),
        other
    )
}

fn sim(decode_step: &str) -> Sim {
    Sim::start(&[
        "--max-batch",
        "64",
        "--prefill-base",
        "400ms",
        "--prefill-per-token",
        "1ms",
        "--decode-step",
        decode_step,
        "--decode-step-per-seq",
        "0s",
    ])
}

/// A run's directory, moved out of its temporary home so that it outlives
/// the run's handle.
fn keep(run: stampede_tests::Run, into: &Path, name: &str) -> PathBuf {
    assert_eq!(run.code(), 0, "stderr:\n{}", run.stderr());
    let to = into.join(name);
    let from = run.dir.clone().expect("a results directory");
    let copied = std::process::Command::new("cp")
        .arg("-r")
        .args([&from, &to])
        .status()
        .expect("cp runs");
    assert!(copied.success());
    to
}

fn compare(args: &[&str]) -> (i32, Value, String) {
    let out = controller(&[&["compare"], args].concat());
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let code = out.status.code().unwrap_or(-1);
    assert!(
        code == 0 || code == 99,
        "exit {code}\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let at = args
        .iter()
        .position(|a| *a == "--out")
        .map(|i| PathBuf::from(args[i + 1]))
        .expect("the tests name --out");
    let json = serde_json::from_str(&read(&at, "compare.json")).expect("compare.json is JSON");
    (code, json, stdout)
}

fn figure<'a>(c: &'a Value, name: &str) -> &'a Value {
    c["runs"][0]["figures"]
        .as_array()
        .expect("figures")
        .iter()
        .find(|f| f["figure"] == name && f["step"].is_null())
        .unwrap_or_else(|| panic!("no {name} in {c:#}"))
}

#[test]
fn compare_tells_noise_from_a_slower_decode_step() {
    let _machine = exclusive();
    let keep_dir = tempfile::tempdir().expect("a temporary directory");
    let base = sim("40ms");
    let a = keep(run_profile(&steady(&base), &[]), keep_dir.path(), "a");
    let b = keep(run_profile(&steady(&base), &[]), keep_dir.path(), "b");
    drop(base);
    let slow = sim("48ms");
    let c = keep(run_profile(&steady(&slow), &[]), keep_dir.path(), "c");
    let out = keep_dir.path().join("out");
    let (a, b, c, out) = (
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        c.to_str().unwrap(),
        out.to_str().unwrap(),
    );

    // The same profile against the same server: noise.
    let (code, same, stdout) = compare(&[a, b, "--out", out]);
    assert_eq!(code, 0, "{stdout}");
    for name in ["ttft.p50", "ttft.p95", "e2e.p95"] {
        let f = figure(&same, name);
        eprintln!(
            "same server, {name}: {} -> {} ms ({:+.2}%), interval [{}, {}] ms: {}",
            f["baseline"],
            f["value"],
            f["relative"].as_f64().unwrap_or(0.0) * 100.0,
            f["interval_low"],
            f["interval_high"],
            f["verdict"]
        );
        assert_eq!(f["verdict"], "within_noise", "{name}: {f:#}\n{stdout}");
    }
    assert!(stdout.contains("ttft.p95"), "{stdout}");

    // Each decode step 20% slower: TPOT changed, upwards, by about 20%;
    // a limit of +10% breaks, one of +50% holds.
    let (code, slower, stdout) = compare(&[a, c, "--out", out, "--fail-if", "tpot.p50=+10%"]);
    assert_eq!(code, 99, "{stdout}");
    for name in ["tpot.p50", "tpot.mean", "tpot.p95", "itl.p50"] {
        let f = figure(&slower, name);
        eprintln!(
            "decode 20% slower, {name}: {} -> {} ms ({:+.2}%), interval [{}, {}] ms: {}",
            f["baseline"],
            f["value"],
            f["relative"].as_f64().unwrap_or(0.0) * 100.0,
            f["interval_low"],
            f["interval_high"],
            f["verdict"]
        );
        assert_eq!(f["verdict"], "changed", "{name}: {f:#}\n{stdout}");
        let rel = f["relative"].as_f64().unwrap();
        assert!((0.15..0.25).contains(&rel), "{name}: {rel}\n{stdout}");
        assert!(f["interval_low"].as_f64().unwrap() > 0.0, "{f:#}");
    }
    assert_eq!(slower["limits"][0]["broken"], true, "{:#}", slower["limits"]);
    assert!(
        stdout.contains("BROKEN") && stdout.contains("changed: higher"),
        "{stdout}"
    );
    let (code, _, stdout) = compare(&[a, c, "--out", out, "--fail-if", "tpot.p50=+50%"]);
    assert_eq!(code, 0, "{stdout}");

    // And the other way round, lower; three runs at once.
    let (_, back, _) = compare(&[c, a, b, "--out", out]);
    assert_eq!(back["runs"].as_array().unwrap().len(), 2);
    let f = figure(&back, "tpot.p50");
    assert_eq!(f["verdict"], "changed");
    assert!(f["relative"].as_f64().unwrap() < 0.0);
    let html = read(Path::new(out), "compare.html");
    assert!(html.contains("data-verdict=\"changed\"") && html.contains("data-kind=\"percentiles\""));
    let bare = html.replace("xmlns=\"http://www.w3.org/2000/svg\"", "");
    assert!(
        !bare.contains("http://") && !bare.contains("https://"),
        "compare.html refers to no URL"
    );
}

#[test]
fn compare_refuses_bad_limits_and_directories() {
    let out = controller(&["compare", ".", ".", "--fail-if", "ttft.p97=+1%"]);
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unknown figure \"ttft.p97\""), "{stderr}");
    let empty = tempfile::tempdir().expect("a temporary directory");
    let dir = empty.path().to_str().unwrap();
    let out = controller(&["compare", dir, dir]);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("holds no intervals.jsonl"));
}
