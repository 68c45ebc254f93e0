//! Distributed runs across hosts: controller, agents and llm-sim each in a
//! network namespace of its own, names resolved through
//! `/etc/netns/<ns>/hosts` as a Kubernetes Service would. Faults are real:
//! `kill -9` by PID and links cut with `ip link set ... down`.
//!
//! These tests need root; without it each is reported as ignored, saying
//! so (and fails when `STAMPEDE_REQUIRE_PEERS=1`, as in CI).

// These tests time real processes from outside; there is no tokio clock to
// share here. Their helpers panic on failure: that is how a test fails.
#![allow(clippy::disallowed_types, clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use stampede_tests::harness::Outcome;
use stampede_tests::netns::{self, Net, Proc};
use stampede_tests::{bin, exclusive, metrics, num, relative_error, repo};

stampede_tests::suite![
    four_agents_split_high_13_13_12_12_and_agree_with_one_agent,
    remote_agents_receive_a_large_tokenizer_from_the_controller_and_count_with_it,
    a_killed_agent_is_lost_and_with_continue_the_run_completes,
    a_killed_agent_with_abort_stops_every_agent,
    a_killed_controller_stops_every_agent_within_its_dead_man_limit,
    a_cut_link_is_noticed_within_3s_and_the_cut_agent_stops_itself,
    a_5s_stop_of_the_controller_loses_nothing,
    a_60s_stop_of_the_controller_stops_the_load_and_loses_no_report,
    agents_started_before_the_controller_wait_for_it,
    refusals::wrong_and_missing_tokens_are_refused_before_any_load,
    refusals::tls_mismatches_are_refused_and_the_right_ca_is_accepted,
    refusals::a_protocol_version_mismatch_is_refused_naming_both_versions,
];

const TOKEN: &str = "s3cret-token-for-tests";
/// A server with a fixed 100 ms prefill and no queueing for 50 users, so
/// that TTFT is the same whoever measures it.
const SIM: [&str; 14] = [
    "--host",
    "0.0.0.0",
    "--port",
    "8000",
    "--max-batch",
    "64",
    "--prefill-base",
    "100ms",
    "--prefill-per-token",
    "0s",
    "--decode-step",
    "5ms",
    "--decode-step-per-seq",
    "100us",
];

struct Cluster {
    net: Net,
    dir: tempfile::TempDir,
    _sim: Proc,
}

fn agent_names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("agent-{i}")).collect()
}

impl Cluster {
    fn new(agents: usize) -> Cluster {
        let names = agent_names(agents);
        let mut hosts = vec!["controller", "llm-sim"];
        hosts.extend(names.iter().map(String::as_str));
        let net = Net::new(&hosts);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), format!("{TOKEN}\n")).unwrap();
        let sim = net.spawn("llm-sim", &bin("llm-sim"), &SIM, &[]);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !sim.stdout().contains("listening") {
            assert!(Instant::now() < deadline, "llm-sim did not start: {}", sim.stderr());
            std::thread::sleep(Duration::from_millis(50));
        }
        Cluster { net, dir, _sim: sim }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn token(&self) -> String {
        self.path("token").display().to_string()
    }

    fn sim(&self) -> HashMap<String, f64> {
        metrics(&format!("{}:8000", self.net.host("llm-sim").ip))
    }

    fn received(&self) -> f64 {
        self.sim()["llmsim_requests_received_total"]
    }

    /// Starts the controller waiting up to 20 s for `agents` agents;
    /// results go to `<tmp>/<out>`.
    fn controller(&self, profile: &Path, out: &str, agents: usize, extra: &[&str]) -> Proc {
        self.controller_waiting(profile, out, agents, "20s", extra)
    }

    fn controller_waiting(&self, profile: &Path, out: &str, agents: usize, wait: &str, extra: &[&str]) -> Proc {
        let out = self.path(out).display().to_string();
        let expect = agents.to_string();
        let token = self.token();
        let mut args = vec![
            "run",
            profile.to_str().unwrap(),
            "--target",
            "http://llm-sim:8000",
            "--listen",
            "0.0.0.0:7000",
            "--expect-agents",
            &expect,
            "--wait",
            wait,
            "--token-file",
            &token,
            "--out",
            &out,
        ];
        args.extend(extra);
        self.net.spawn("controller", &bin("controller"), &args, &[])
    }

    /// Starts agent `i`. Like a pod of a Kubernetes Indexed Job, it learns
    /// everything from its environment: the controller, the token file and
    /// its name (from JOB_COMPLETION_INDEX). `extra` flags win.
    fn agent(&self, i: usize, extra: &[&str]) -> Proc {
        let index = i.to_string();
        let token = self.token();
        let env = [
            ("STAMPEDE_CONTROLLER", "http://controller:7000"),
            ("STAMPEDE_TOKEN_FILE", token.as_str()),
            ("JOB_COMPLETION_INDEX", index.as_str()),
        ];
        self.net.spawn(&format!("agent-{i}"), &bin("agent"), extra, &env)
    }

    fn summary(&self, out: &str) -> Value {
        let dir = std::fs::read_dir(self.path(out))
            .unwrap_or_else(|e| panic!("no results in {out}: {e}"))
            .next()
            .unwrap()
            .unwrap()
            .path();
        stampede_tests::read_summary(&std::fs::read(dir.join("summary.json")).unwrap())
    }

    /// The run log's reports.
    fn intervals(&self, out: &str) -> Vec<Value> {
        let dir = std::fs::read_dir(self.path(out))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let text = std::fs::read_to_string(dir.join("intervals.jsonl")).unwrap();
        text.lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|l| l["event"] == "report")
            .collect()
    }
}

fn high() -> PathBuf {
    repo().join("load-profiles/high.toml")
}

/// high.toml, going on without a lost agent.
fn high_continuing(c: &Cluster) -> PathBuf {
    let text = std::fs::read_to_string(high()).unwrap();
    let abort = "\non_agent_loss = \"abort\"\n";
    assert!(text.contains(abort));
    let path = c.path("high-continue.toml");
    std::fs::write(&path, text.replace(abort, "\non_agent_loss = \"continue\"\n")).unwrap();
    path
}

fn exit_code(p: &mut Proc, limit: Duration) -> i32 {
    match p.wait_for(limit) {
        Some(status) => status.code().unwrap_or(-1),
        None => panic!("{} did not exit within {limit:?}\nstderr:\n{}", p.name, p.stderr()),
    }
}

fn agent_named<'a>(summary: &'a Value, name: &str) -> &'a Value {
    summary["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == name)
        .unwrap_or_else(|| panic!("no agent {name} in {:#}", summary["agents"]))
}

/// Runs the controller and `agents` agents to the end.
fn run(c: &Cluster, profile: &Path, out: &str, agents: usize, extra: &[&str]) -> (i32, Value) {
    let mut controller = c.controller(profile, out, agents, extra);
    let mut procs: Vec<Proc> = (0..agents).map(|i| c.agent(i, &[])).collect();
    let code = exit_code(&mut controller, Duration::from_secs(120));
    for p in &mut procs {
        assert_eq!(exit_code(p, Duration::from_secs(15)), 0, "{}:\n{}", p.name, p.stderr());
    }
    assert_eq!(code, 0, "controller:\n{}", controller.stderr());
    (code, c.summary(out))
}
fn four_agents_split_high_13_13_12_12_and_agree_with_one_agent() -> Outcome {
    netns::available()?;
    let _machine = exclusive();
    let c = Cluster::new(4);

    let before = c.sim()["llmsim_requests_served_total"];
    let (_, four) = run(&c, &high(), "four", 4, &["--duration", "8s"]);
    let served = c.sim()["llmsim_requests_served_total"] - before;
    let users: Vec<u64> = four["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["users"].as_u64().unwrap())
        .collect();
    assert_eq!(users, [13, 13, 12, 12]);
    assert_eq!(
        num(&four, "/requests/ok"),
        served,
        "merged count and the simulator's disagree"
    );
    assert_eq!(num(&four, "/requests/failed"), 0.0);
    for a in four["agents"].as_array().unwrap() {
        assert_eq!(a["end"], "finished", "{a:#}");
        assert!(
            a["peer"].as_str().unwrap().starts_with("10."),
            "agents dial over the network: {a:#}"
        );
    }

    // Start skew: measured for every agent and small. Agents join one
    // after another; the barrier starts them together, within
    // what a loaded two-core machine takes to wake six processes (about
    // 4 ms on a quiet one, 11 ms seen beside a build).
    let skew = &four["start_skew"];
    eprintln!("start skew over 4 agents: {skew}");
    assert_eq!(skew["measured"], 4);
    assert!(num(&four, "/start_skew/spread_ms") < 50.0, "{skew}");
    assert!(num(&four, "/start_skew/max_ms") < 50.0, "{skew}");

    let before = c.sim()["llmsim_requests_served_total"];
    let (_, one) = run(&c, &high(), "one", 1, &["--duration", "8s"]);
    assert_eq!(
        num(&one, "/requests/ok"),
        c.sim()["llmsim_requests_served_total"] - before
    );
    let (p4, p1) = (num(&four, "/metrics/ttft/p50"), num(&one, "/metrics/ttft/p50"));
    eprintln!("TTFT p50: 4 agents {p4} ms, 1 agent {p1} ms");
    assert!(
        relative_error(p4, p1) < 0.05,
        "TTFT p50 over 4 agents {p4} ms vs 1 agent {p1} ms"
    );
    Ok(())
}

/// A word-level tokenizer.json of `words` entries (one token per
/// whitespace-separated word, as llm-sim counts): about 16 bytes a word.
fn write_word_tokenizer(path: &Path, words: usize) {
    let mut vocab = serde_json::Map::new();
    vocab.insert("[UNK]".to_owned(), 0.into());
    for i in 1..=words {
        vocab.insert(format!("w{i}"), i.into());
    }
    let json = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": {"type": "WhitespaceSplit"}, "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"}
    });
    std::fs::write(path, json.to_string()).unwrap();
}
fn remote_agents_receive_a_large_tokenizer_from_the_controller_and_count_with_it() -> Outcome {
    netns::available()?;
    let _machine = exclusive();
    let c = Cluster::new(2);
    // Over 4 MiB, tonic's default message limit: the assignment must still
    // reach the agents, which have no copy of their own.
    let tokenizer = c.path("tokenizer.json");
    write_word_tokenizer(&tokenizer, 400_000);
    let size = std::fs::metadata(&tokenizer).unwrap().len();
    assert!(size > 4 << 20, "{size} bytes");
    let profile = c.path("tokenizer.toml");
    let text = "[load]\nusers = 4\n[request]\nmax_tokens = 8\n[prompts]\nbuiltin = \"short\"\n";
    std::fs::write(&profile, text).unwrap();
    let t = tokenizer.display().to_string();
    let (_, s) = run(&c, &profile, "tokenizer", 2, &["--duration", "3s", "--tokenizer", &t]);
    let ok = num(&s, "/requests/ok");
    eprintln!(
        "remote agents with a {} MiB tokenizer: {ok} requests, agreement {}",
        size >> 20,
        s["tokens"]["agreement"]
    );
    assert!(ok > 0.0);
    assert_eq!(s["tokens"]["tokenizer"]["file"], t);
    assert_eq!(num(&s, "/tokens/tokenizer/vocab_size"), 400_001.0);
    for a in s["agents"].as_array().unwrap() {
        assert!(num(a, "/ok") > 0.0, "every agent counted: {a:#}");
    }
    // Every request was counted by the tokenizer on its agent; word for
    // word, it agrees with the simulator.
    let d = &s["tokens"]["agreement"]["server_vs_tokenizer"];
    assert_eq!(num(d, "/requests"), ok, "{d}");
    assert_eq!(num(d, "/requests_differing"), 0.0, "{d}");
    assert_eq!(num(d, "/second"), num(&s, "/tokens/output"), "{d}");
    Ok(())
}
fn a_killed_agent_is_lost_and_with_continue_the_run_completes() -> Outcome {
    netns::available()?;
    let _machine = exclusive();
    let c = Cluster::new(4);
    let profile = high_continuing(&c);
    let mut controller = c.controller(&profile, "out", 4, &["--duration", "10s"]);
    let mut agents: Vec<Proc> = (0..4).map(|i| c.agent(i, &[])).collect();
    assert!(
        controller.wait_for_stderr("[    4s/10s]", Duration::from_secs(60)),
        "{}",
        controller.stderr()
    );
    agents[2].kill9();
    let code = exit_code(&mut controller, Duration::from_secs(60));
    assert_eq!(code, 4, "a degraded run exits 4:\n{}", controller.stderr());
    for (i, a) in agents.iter_mut().enumerate().filter(|(i, _)| *i != 2) {
        assert_eq!(exit_code(a, Duration::from_secs(10)), 0, "agent-{i}: {}", a.stderr());
    }

    let s = c.summary("out");
    assert_eq!(s["verdict"]["status"], "degraded");
    assert_eq!(s["lost"]["agents"], serde_json::json!(["agent-2"]));
    let lost = agent_named(&s, "agent-2");
    assert_eq!(lost["end"], "lost");
    let lost_at = lost["lost_at_s"].as_f64().unwrap();
    assert!((3.0..7.0).contains(&lost_at), "lost at {lost_at}s");
    let last = lost["last_interval"].as_u64().unwrap();
    assert!(last >= 2, "{lost:#}");
    assert!(num(&s, "/lost/load_share") > 0.0 && num(&s, "/lost/users_share") > 0.2);
    // Everything it reported is kept, in the log and in the totals.
    let lines = c.intervals("out");
    let mine: Vec<&Value> = lines.iter().filter(|l| l["agent"] == "agent-2").collect();
    assert_eq!(mine.len() as u64, lost["reports"].as_u64().unwrap());
    let intervals: Vec<u64> = mine.iter().map(|l| l["interval"].as_u64().unwrap()).collect();
    assert_eq!(
        intervals,
        (0..=last).collect::<Vec<_>>(),
        "every interval it reported is logged"
    );
    let ok: u64 = mine.iter().map(|l| l["counters"]["ok"].as_u64().unwrap()).sum();
    assert_eq!(ok, lost["ok"].as_u64().unwrap());
    assert!(ok > 0);
    // The others ran to the end.
    for name in ["agent-0", "agent-1", "agent-3"] {
        assert_eq!(agent_named(&s, name)["end"], "finished");
    }
    assert!(
        controller.stdout().contains("lost      agent-2"),
        "{}",
        controller.stdout()
    );
    Ok(())
}
fn a_killed_agent_with_abort_stops_every_agent() -> Outcome {
    netns::available()?;
    let _machine = exclusive();
    let c = Cluster::new(4);
    let mut controller = c.controller(
        &high(),
        "out",
        4,
        &["--duration", "20s", "--set", "agents.lost_after=\"3s\""],
    );
    let mut agents: Vec<Proc> = (0..4).map(|i| c.agent(i, &[])).collect();
    assert!(
        controller.wait_for_stderr("[    3s/20s]", Duration::from_secs(60)),
        "{}",
        controller.stderr()
    );
    agents[1].kill9();
    let killed = Instant::now();
    let code = exit_code(&mut controller, Duration::from_secs(30));
    assert_eq!(code, 5, "an aborted run exits 5:\n{}", controller.stderr());
    for (i, a) in agents.iter_mut().enumerate().filter(|(i, _)| *i != 1) {
        exit_code(a, Duration::from_secs(10));
        assert!(
            a.stderr().contains("the controller stopped the load"),
            "agent-{i}: {}",
            a.stderr()
        );
    }
    assert!(
        killed.elapsed() < Duration::from_secs(12),
        "the abort took {:?}",
        killed.elapsed()
    );
    // No load is left running against the server.
    let settled = c.received();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(c.received(), settled);
    assert_eq!(c.sim()["llmsim_running_sequences"], 0.0);
    let s = c.summary("out");
    assert_eq!(s["verdict"]["status"], "aborted");
    assert!(
        s["verdict"]["reasons"][0]
            .as_str()
            .unwrap()
            .contains("agent-1 was lost"),
        "{s:#}"
    );
    Ok(())
}
/// Agents ride out a gap shorter than their dead-man limit (here 4 s); a
/// controller gone for good has them stop their load at that limit, and
/// leave once the resume limit (here 6 s) is spent.
fn a_killed_controller_stops_every_agent_within_its_dead_man_limit() -> Outcome {
    netns::available()?;
    let _machine = exclusive();
    let c = Cluster::new(4);
    let limits = [
        "--duration",
        "30s",
        "--set",
        "agents.dead_man=\"4s\"",
        "--set",
        "agents.resume_limit=\"6s\"",
    ];
    let mut controller = c.controller(&high(), "out", 4, &limits);
    let mut agents: Vec<Proc> = (0..4).map(|i| c.agent(i, &[])).collect();
    assert!(
        controller.wait_for_stderr("[    3s/30s]", Duration::from_secs(60)),
        "{}",
        controller.stderr()
    );
    let before = c.received();
    controller.kill9();
    let killed = Instant::now();
    // Watch the server: when did the last new request arrive?
    let mut last = (c.received(), Duration::ZERO);
    while killed.elapsed() < Duration::from_secs(8) {
        let now = c.received();
        if now != last.0 {
            last = (now, killed.elapsed());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "requests received after the kill: {}; the last one {:?} after it",
        last.0 - before,
        last.1
    );
    // The dead-man limit counts from the last word, at most a heartbeat
    // before the kill.
    assert!(last.1 < Duration::from_secs(5), "agents kept sending for {:?}", last.1);
    assert_eq!(
        c.sim()["llmsim_running_sequences"],
        0.0,
        "in-flight requests were abandoned"
    );
    for a in &mut agents {
        let code = exit_code(a, Duration::from_secs(5));
        assert_ne!(code, 0, "{}: {}", a.name, a.stderr());
        assert!(a.stderr().contains("lost the controller"), "{}: {}", a.name, a.stderr());
        assert!(
            a.stderr().contains("(agents.resume_limit)"),
            "{}: {}",
            a.name,
            a.stderr()
        );
    }
    Ok(())
}
fn a_cut_link_is_noticed_within_3s_and_the_cut_agent_stops_itself() -> Outcome {
    netns::available()?;
    let _machine = exclusive();
    let c = Cluster::new(4);
    let profile = high_continuing(&c);
    let limits = [
        "--duration",
        "15s",
        "--set",
        "agents.lost_after=\"3s\"",
        "--set",
        "agents.dead_man=\"3s\"",
        "--set",
        "agents.resume_limit=\"3s\"",
    ];
    let mut controller = c.controller(&profile, "out", 4, &limits);
    let mut agents: Vec<Proc> = (0..4).map(|i| c.agent(i, &[])).collect();
    assert!(
        controller.wait_for_stderr("[    3s/15s]", Duration::from_secs(60)),
        "{}",
        controller.stderr()
    );
    c.net.cut("agent-3");
    let (cut, cut_wall) = (Instant::now(), std::time::SystemTime::now());
    let lost_line = "agent lost: silent for 3s agent=agent-3";
    assert!(
        controller.wait_for_stderr(lost_line, Duration::from_secs(8)),
        "{}",
        controller.stderr()
    );
    // When the controller declared it, by its own log's clock (the same
    // host clock as the test's).
    let stderr = controller.stderr();
    let line = stderr.lines().find(|l| l.contains(lost_line)).unwrap();
    let stamp = humantime::parse_rfc3339(line.split_whitespace().next().unwrap()).unwrap();
    let noticed = stamp.duration_since(cut_wall).unwrap_or_default();
    eprintln!("the cut agent was declared lost {noticed:?} after the cut");
    // Silence begins with the agent's last message, at most a heartbeat
    // before the cut; here the cut came right after a report.
    assert!(
        noticed <= Duration::from_millis(3_050),
        "declared lost {noticed:?} after the cut"
    );
    // The cut agent hears nothing either: its dead-man switch stops it.
    let code = exit_code(&mut agents[3], Duration::from_secs(8));
    assert_eq!(code, 3, "{}", agents[3].stderr());
    assert!(
        agents[3].stderr().contains("no word from the controller"),
        "{}",
        agents[3].stderr()
    );
    let stopped = cut.elapsed();
    eprintln!("the cut agent stopped itself {stopped:?} after the cut");
    std::thread::sleep(Duration::from_secs(10).saturating_sub(cut.elapsed()));
    c.net.restore("agent-3");
    // Nothing hangs: the run completes without it.
    assert_eq!(
        exit_code(&mut controller, Duration::from_secs(60)),
        4,
        "{}",
        controller.stderr()
    );
    for a in agents.iter_mut().take(3) {
        assert_eq!(exit_code(a, Duration::from_secs(10)), 0, "{}: {}", a.name, a.stderr());
    }
    let s = c.summary("out");
    assert_eq!(agent_named(&s, "agent-3")["end"], "lost");
    assert_eq!(agent_named(&s, "agent-3")["reason"], "silent for 3s");
    Ok(())
}
/// The simulator's count of `name` since `before`.
fn since(c: &Cluster, before: &HashMap<String, f64>, name: &str) -> f64 {
    c.sim()[name] - before[name]
}

/// Every request the server received is in the results: ok, failed,
/// cancelled, or in flight on a lost agent.
fn every_request_accounted_for(c: &Cluster, before: &HashMap<String, f64>, s: &Value) {
    let received = since(c, before, "llmsim_requests_received_total");
    let served = since(c, before, "llmsim_requests_served_total");
    let counted = num(s, "/requests/ok") + num(s, "/requests/failed") + num(s, "/requests/cancelled");
    eprintln!(
        "server: {received} received, {served} served; results: {} ok, {} failed, {} cancelled, {} lost",
        num(s, "/requests/ok"),
        num(s, "/requests/failed"),
        num(s, "/requests/cancelled"),
        num(s, "/lost/requests")
    );
    assert_eq!(num(s, "/requests/ok"), served, "every request served is an ok");
    assert_eq!(counted + num(s, "/lost/requests"), received);
    for a in s["agents"].as_array().unwrap() {
        assert!(a["mismatch"].is_null(), "no report went missing: {a:#}");
        let reports = a["reports"].as_u64().unwrap();
        assert_eq!(reports, a["last_interval"].as_u64().unwrap() + 1, "{a:#}");
    }
}

/// A 5 s stop of the controller (a long pause, a congested node): with
/// the default limits the load runs on through it, and the run completes
/// with every request the server saw in its results.
fn a_5s_stop_of_the_controller_loses_nothing() -> Outcome {
    netns::available()?;
    let _machine = exclusive();
    let c = Cluster::new(3);
    let before = c.sim();
    let mut controller = c.controller(&high(), "out", 3, &["--duration", "12s"]);
    let mut agents: Vec<Proc> = (0..3).map(|i| c.agent(i, &[])).collect();
    assert!(
        controller.wait_for_stderr("[    3s/12s]", Duration::from_secs(60)),
        "{}",
        controller.stderr()
    );
    controller.pause();
    std::thread::sleep(Duration::from_secs(5));
    controller.resume();
    let code = exit_code(&mut controller, Duration::from_secs(90));
    assert_eq!(code, 0, "{}", controller.stderr());
    assert!(
        controller.stderr().contains("the controller did not run for"),
        "{}",
        controller.stderr()
    );
    for a in &mut agents {
        assert_eq!(exit_code(a, Duration::from_secs(15)), 0, "{}: {}", a.name, a.stderr());
    }
    let s = c.summary("out");
    assert_eq!(s["verdict"]["status"], "passed", "{:#}", s["verdict"]);
    for a in s["agents"].as_array().unwrap() {
        assert_eq!(a["end"], "finished", "{a:#}");
        assert!(a["stopped_early"].is_null(), "{a:#}");
    }
    every_request_accounted_for(&c, &before, &s);
    assert_eq!(num(&s, "/lost/requests"), 0.0);
    Ok(())
}

/// A 60 s stop of the controller: each agent stops its load at its
/// dead-man limit (10 s by default) and keeps what it recorded; once the
/// controller runs again every report is delivered, and the verdict says
/// the load was cut short.
fn a_60s_stop_of_the_controller_stops_the_load_and_loses_no_report() -> Outcome {
    netns::available()?;
    let _machine = exclusive();
    let c = Cluster::new(2);
    let before = c.sim();
    let mut controller = c.controller(&high(), "out", 2, &["--duration", "30s"]);
    let mut agents: Vec<Proc> = (0..2).map(|i| c.agent(i, &[])).collect();
    assert!(
        controller.wait_for_stderr("[    3s/30s]", Duration::from_secs(60)),
        "{}",
        controller.stderr()
    );
    controller.pause();
    let stopped = Instant::now();
    // Watch the server: when did the last new request arrive?
    let mut last = (c.received(), Duration::ZERO);
    while stopped.elapsed() < Duration::from_secs(60) {
        let now = c.received();
        if now != last.0 {
            last = (now, stopped.elapsed());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        c.sim()["llmsim_running_sequences"],
        0.0,
        "no load outlives the dead-man limit"
    );
    controller.resume();
    eprintln!("the last request arrived {:?} after the stop", last.1);
    // The limit counts from the last word, at most a heartbeat before the
    // stop; a loaded machine adds a little.
    assert!(last.1 < Duration::from_secs(12), "agents kept sending for {:?}", last.1);
    let code = exit_code(&mut controller, Duration::from_secs(60));
    assert_eq!(
        code,
        4,
        "agents that ended their load early leave the run degraded:\n{}",
        controller.stderr()
    );
    for a in &mut agents {
        assert_eq!(exit_code(a, Duration::from_secs(15)), 0, "{}: {}", a.name, a.stderr());
        assert!(a.stderr().contains("resumed the session"), "{}: {}", a.name, a.stderr());
    }
    let s = c.summary("out");
    for a in s["agents"].as_array().unwrap() {
        assert_eq!(a["end"], "finished", "{a:#}");
        let why = a["stopped_early"].as_str().unwrap_or_default();
        assert!(why.contains("agents.dead_man"), "{a:#}");
    }
    assert!(
        s["verdict"]["reasons"].to_string().contains("ended its load early"),
        "{:#}",
        s["verdict"]
    );
    every_request_accounted_for(&c, &before, &s);
    Ok(())
}

fn agents_started_before_the_controller_wait_for_it() -> Outcome {
    netns::available()?;
    let _machine = exclusive();
    let c = Cluster::new(2);
    let mut agents: Vec<Proc> = (0..2).map(|i| c.agent(i, &[])).collect();
    std::thread::sleep(Duration::from_secs(3));
    let mut controller = c.controller(&high(), "out", 2, &["--duration", "2s"]);
    assert_eq!(
        exit_code(&mut controller, Duration::from_secs(60)),
        0,
        "{}",
        controller.stderr()
    );
    for a in &mut agents {
        assert_eq!(exit_code(a, Duration::from_secs(10)), 0, "{}", a.stderr());
        assert!(
            a.stderr()
                .contains("waiting for the controller at http://controller:7000"),
            "{}",
            a.stderr()
        );
    }
    assert!(num(&c.summary("out"), "/requests/ok") > 0.0);
    Ok(())
}

mod refusals {
    use super::*;
    use stampede_proto::pb;

    fn controller_waiting(c: &Cluster, extra: &[&str]) -> Proc {
        c.controller_waiting(&high(), "out", 1, "4s", &[&["--duration", "2s"], extra].concat())
    }

    fn refused(c: &Cluster, agent: &mut Proc, controller: &mut Proc, expected: &str) {
        let code = exit_code(agent, Duration::from_secs(15));
        eprintln!("refused agent says: {}", agent.stderr().lines().last().unwrap_or(""));
        assert_eq!(code, 1, "{}", agent.stderr());
        assert!(
            agent.stderr().contains(expected),
            "expected {expected:?} in:\n{}",
            agent.stderr()
        );
        assert_eq!(
            exit_code(controller, Duration::from_secs(15)),
            1,
            "{}",
            controller.stderr()
        );
        assert!(
            controller.stderr().contains("only 0 of 1 agents joined"),
            "{}",
            controller.stderr()
        );
        assert_eq!(c.received(), 0.0, "no load may reach the server");
    }
    pub(super) fn wrong_and_missing_tokens_are_refused_before_any_load() -> Outcome {
        netns::available()?;
        let _machine = exclusive();
        let c = Cluster::new(1);
        std::fs::write(c.path("wrong"), "not-the-token").unwrap();
        let wrong = c.path("wrong").display().to_string();

        let mut controller = controller_waiting(&c, &[]);
        let mut agent = c.agent(0, &["--token-file", &wrong]);
        refused(
            &c,
            &mut agent,
            &mut controller,
            "the controller refused this agent: wrong token",
        );
        assert!(
            !controller.stderr().contains(TOKEN) && !agent.stderr().contains(TOKEN),
            "a token was logged"
        );

        let mut controller = controller_waiting(&c, &[]);
        let mut agent = c.net.spawn(
            "agent-0",
            &bin("agent"),
            &["--controller", "http://controller:7000"],
            &[],
        );
        refused(&c, &mut agent, &mut controller, "this controller requires a token");

        // A controller listening beyond loopback without a token refuses to start.
        let out = c.path("out").display().to_string();
        let profile = high();
        let args = [
            "run",
            profile.to_str().unwrap(),
            "--listen",
            "0.0.0.0:7000",
            "--expect-agents",
            "1",
            "--out",
            &out,
        ];
        let mut open = c.net.spawn("controller", &bin("controller"), &args, &[]);
        assert_eq!(exit_code(&mut open, Duration::from_secs(10)), 64);
        assert!(
            open.stderr()
                .contains("a token is required when listening on 0.0.0.0:7000"),
            "{}",
            open.stderr()
        );
        Ok(())
    }

    fn ca(name: &str) -> rcgen::CertifiedIssuer<'static, rcgen::KeyPair> {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap()
    }
    pub(super) fn tls_mismatches_are_refused_and_the_right_ca_is_accepted() -> Outcome {
        netns::available()?;
        let _machine = exclusive();
        let c = Cluster::new(1);
        let (ours, theirs) = (ca("stampede test CA"), ca("some other CA"));
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["controller".to_owned()])
            .unwrap()
            .signed_by(&key, &ours)
            .unwrap();
        std::fs::write(c.path("cert.pem"), cert.pem()).unwrap();
        std::fs::write(c.path("key.pem"), key.serialize_pem()).unwrap();
        std::fs::write(c.path("ca.pem"), ours.pem()).unwrap();
        std::fs::write(c.path("other-ca.pem"), theirs.pem()).unwrap();
        let p = |n: &str| c.path(n).display().to_string();
        let (cert, key, good_ca, bad_ca) = (p("cert.pem"), p("key.pem"), p("ca.pem"), p("other-ca.pem"));
        let tls = ["--tls-cert", cert.as_str(), "--tls-key", key.as_str()];

        // Plaintext to a TLS listener.
        let mut controller = controller_waiting(&c, &tls);
        let mut agent = c.agent(0, &["--wait", "2s"]);
        refused(
            &c,
            &mut agent,
            &mut controller,
            "cannot reach the controller at http://controller:7000",
        );

        // TLS, but a certificate from an authority the agent does not trust.
        let mut controller = controller_waiting(&c, &tls);
        let mut agent = c.agent(
            0,
            &[
                "--controller",
                "https://controller:7000",
                "--ca",
                &bad_ca,
                "--wait",
                "2s",
            ],
        );
        refused(&c, &mut agent, &mut controller, "certificate");

        // The right authority: the run goes through.
        let mut controller = controller_waiting(&c, &tls);
        let mut agent = c.agent(0, &["--controller", "https://controller:7000", "--ca", &good_ca]);
        assert_eq!(exit_code(&mut agent, Duration::from_secs(30)), 0, "{}", agent.stderr());
        assert_eq!(
            exit_code(&mut controller, Duration::from_secs(30)),
            0,
            "{}",
            controller.stderr()
        );
        assert!(c.received() > 0.0);
        Ok(())
    }
    pub(super) fn a_protocol_version_mismatch_is_refused_naming_both_versions() -> Outcome {
        netns::available()?;
        let _machine = exclusive();
        let c = Cluster::new(1);
        let mut controller = controller_waiting(&c, &[]);
        assert!(
            controller.wait_for_stderr("waiting up to", Duration::from_secs(10)),
            "{}",
            controller.stderr()
        );
        let url = format!("http://{}:7000", c.net.host("controller").ip);
        let status = tokio::runtime::Runtime::new().unwrap().block_on(async move {
            let channel = tonic::transport::Endpoint::from_shared(url)
                .unwrap()
                .connect()
                .await
                .unwrap();
            let mut client = pb::coordinator_client::CoordinatorClient::new(channel);
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            let hello = pb::Hello {
                name: "from-the-future".into(),
                protocol_version: 99,
                capabilities: vec!["api:openai-chat".into(), "load:users".into()],
                agent_version: "9.9.9".into(),
                gpu: String::new(),
                resume: None,
            };
            tx.send(pb::AgentMessage {
                kind: Some(pb::agent_message::Kind::Hello(hello)),
            })
            .await
            .unwrap();
            let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
            request
                .metadata_mut()
                .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
            let mut inbound = client.session(request).await.unwrap().into_inner();
            // The refusal comes before anything else: no assignment.
            inbound.message().await.unwrap_err()
        });
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        let message = status.message();
        assert!(
            message.contains("speaks version 99")
                && message.contains(&format!("speaks version {}", stampede_proto::PROTOCOL_VERSION)),
            "{message}"
        );
        assert_eq!(exit_code(&mut controller, Duration::from_secs(15)), 1);
        assert!(
            controller.stderr().contains("protocol version mismatch"),
            "{}",
            controller.stderr()
        );
        assert_eq!(c.received(), 0.0);
        Ok(())
    }
}
