//! A real third-party server: llama.cpp's `llama-server` with Gemma 3 270M
//! (installed by `.ci/peers`, which `.ci/run` calls). stampede runs
//! `openai-chat` and `openai-completions`, streaming and not, and its
//! output-token totals must equal what the server itself counted
//! (`llamacpp:tokens_predicted_total` on its Prometheus `/metrics`).
//!
//! The server is started with `--api-key`: every run sends the key in a
//! header whose value comes from an environment variable, as a profile
//! must. One more run sends llama.cpp's own body fields (`n_predict`,
//! `ignore_eos`) through `target.body`, and every answer has exactly the
//! length they ask for. A run of prompts sharing a prefix shows the
//! prompt tokens llama-server reused from its slots' cache in the
//! summary, equal to its own `llamacpp:prompt_tokens_cached_total`. A
//! last run plays two-turn sessions, whose second turn the server counts
//! with the first turn and its answer inside.
//!
//! Without the peer installed the test is reported as ignored, saying why
//! (a failure with `STAMPEDE_REQUIRE_PEERS=1`); CI installs it.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use std::collections::HashMap;
use std::io::{Read as _, Write as _};

use serde_json::Value;
use stampede_tests::harness::{Missing, Outcome};
use stampede_tests::{exclusive, num, repo, run_profile_with_env};

stampede_tests::suite![
    llama_server_usage_matches_stampedes_counts_in_both_openai_dialects,
    llama_servers_cached_prompt_tokens_reach_the_summary
];

/// The key llama-server demands, and the variable a profile names for it.
const KEY: &str = "stampede-peer-test-key";
const KEY_VAR: &str = "STAMPEDE_TEST_LLAMA_KEY";

/// The server binary and the model, from the environment or `.ci/peers`.
fn peer() -> Result<(PathBuf, PathBuf), Missing> {
    if let (Some(bin), Some(model)) = (
        std::env::var_os("STAMPEDE_LLAMA_SERVER"),
        std::env::var_os("STAMPEDE_GEMMA_GGUF"),
    ) {
        return Ok((bin.into(), model.into()));
    }
    let script = repo().join(".ci/peers");
    let check = Command::new("bash")
        .arg(&script)
        .arg("--check")
        .status()
        .map_err(|e| Missing::new(format!("cannot run .ci/peers: {e}")))?;
    if !check.success() {
        return Err(Missing::new(
            "llama-server and the Gemma model are not installed (.ci/run builds them with .ci/peers)",
        ));
    }
    let out = Command::new("bash")
        .arg(&script)
        .output()
        .map_err(|e| Missing::new(format!("cannot run .ci/peers: {e}")))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let var = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("export {name}=")))
            .map(PathBuf::from)
            .ok_or_else(|| Missing::new(format!(".ci/peers printed no {name}")))
    };
    Ok((var("STAMPEDE_LLAMA_SERVER")?, var("STAMPEDE_GEMMA_GGUF")?))
}

/// A running `llama-server`, killed by its PID when dropped.
struct LlamaServer {
    child: Child,
    addr: String,
}

impl Drop for LlamaServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(bin: &Path, model: &Path) -> LlamaServer {
    // llama-server takes no port 0: bind a free port, release it, use it.
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let child = Command::new(bin)
        .args(["-m", model.to_str().expect("utf-8 path")])
        .args(["--alias", "gemma3-270m", "--host", "127.0.0.1"])
        .args(["--port", &port.to_string()])
        .args(["--metrics", "-np", "4", "-c", "8192", "-t", "1", "-tb", "1"])
        .args(["--chat-template", "gemma", "--api-key", KEY])
        // Gemma 3 attends through a sliding window; without the full-size
        // window cache a slot cannot rewind to a shared prefix and reuses
        // nothing once the prompts diverge.
        .arg("--swa-full")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("llama-server starts");
    let server = LlamaServer {
        child,
        addr: format!("127.0.0.1:{port}"),
    };
    // Up to 120 s (600 polls 200 ms apart); it is ready in about 3 s.
    for _ in 0..600 {
        if health(&server.addr) {
            return server;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("llama-server was not ready within 120 s");
}

fn health(addr: &str) -> bool {
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    if write!(s, "GET /health HTTP/1.0\r\nHost: {addr}\r\n\r\n").is_err() {
        return false;
    }
    let mut response = String::new();
    let _ = s.read_to_string(&mut response);
    response.starts_with("HTTP/1.1 200") || response.starts_with("HTTP/1.0 200")
}

/// The server's Prometheus metrics (behind its API key, like every route
/// but `/health`).
fn metrics(addr: &str) -> HashMap<String, f64> {
    let mut s = std::net::TcpStream::connect(addr).expect("llama-server accepts");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout set");
    write!(
        s,
        "GET /metrics HTTP/1.0\r\nHost: {addr}\r\nAuthorization: Bearer {KEY}\r\n\r\n"
    )
    .expect("request written");
    let mut response = String::new();
    s.read_to_string(&mut response).expect("response read");
    let (head, body) = response.split_once("\r\n\r\n").expect("a complete response");
    assert!(head.contains(" 200 "), "GET /metrics: {head}");
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect()
}

fn cached(addr: &str) -> f64 {
    metrics(addr)
        .get("llamacpp:prompt_tokens_cached_total")
        .copied()
        .expect("llama-server exposes llamacpp:prompt_tokens_cached_total")
}

fn predicted(addr: &str) -> f64 {
    metrics(addr)
        .get("llamacpp:tokens_predicted_total")
        .copied()
        .expect("llama-server exposes llamacpp:tokens_predicted_total")
}

/// A two-user, 3-second run against the server; `request` and `extra`
/// complete the profile.
fn profile(addr: &str, api: &str, request: &str, extra: &str) -> String {
    format!(
        r#"
        name = "llama-server"
        [target]
        url = "http://{addr}"
        api = "{api}"
        model = "gemma3-270m"
        timeout = "60s"
        headers = {{ Authorization = {{ env = "{KEY_VAR}" }} }}
        {extra}
        [load]
        users = 2
        duration = "3s"
        drain = "60s"
        [request]
        temperature = 0.0
        {request}
        [prompts]
        builtin = "short"
        "#
    )
}

fn run(profile: &str) -> (i32, String, Value) {
    let bearer = format!("Bearer {KEY}");
    let run = run_profile_with_env(profile, &[], &[(KEY_VAR, &bearer)]);
    (run.code(), run.stderr(), run.summary().clone())
}
fn llama_server_usage_matches_stampedes_counts_in_both_openai_dialects() -> Outcome {
    let (bin, model) = peer()?;
    let _machine = exclusive();
    let server = start(&bin, &model);
    for api in ["openai-chat", "openai-completions"] {
        for stream in [true, false] {
            let before = predicted(&server.addr);
            let request = format!("max_tokens = 16\nstream = {stream}");
            let (code, stderr, summary) = run(&profile(&server.addr, api, &request, ""));
            assert_eq!(code, 0, "{api} stream={stream}: stderr:\n{stderr}");
            let s = &summary;
            let served = predicted(&server.addr) - before;
            eprintln!(
                "llama-server {api} stream={stream}: {} requests, stampede output tokens {}, server tokens_predicted {served}, source {}, events vs usage {}",
                num(s, "/requests/ok"),
                num(s, "/tokens/output"),
                s["tokens"]["source"],
                s["tokens"]["agreement"]
            );
            assert_eq!(num(s, "/requests/failed"), 0.0, "{api}: {:#}", s["errors"]);
            assert!(num(s, "/requests/ok") >= 2.0, "{api}: too few requests");
            assert_eq!(s["tokens"]["source"], "server usage", "{api} stream={stream}");
            assert_eq!(
                num(s, "/tokens/output"),
                served,
                "{api} stream={stream}: stampede's output tokens differ from llama-server's own count"
            );
        }
    }
    // llama.cpp's own fields, unknown to stampede, through target.body:
    // no max_tokens in the request, n_predict = 5 and ignore_eos = true
    // in the body, so every answer is exactly 5 tokens.
    let before = predicted(&server.addr);
    let extra = "body = { n_predict = 5, ignore_eos = true }";
    let (code, stderr, s) = run(&profile(&server.addr, "openai-chat", "stream = true", extra));
    assert_eq!(code, 0, "extra body fields: stderr:\n{stderr}");
    let ok = num(&s, "/requests/ok");
    eprintln!(
        "llama-server body {{ n_predict = 5, ignore_eos = true }}: {ok} requests, output tokens {}",
        num(&s, "/tokens/output")
    );
    assert!(ok >= 2.0, "too few requests");
    assert_eq!(num(&s, "/requests/failed"), 0.0, "{:#}", s["errors"]);
    assert_eq!(num(&s, "/tokens/output"), ok * 5.0, "n_predict reached the server");
    assert_eq!(num(&s, "/metrics/output_tokens/max"), 5.0);
    assert_eq!(predicted(&server.addr) - before, ok * 5.0);

    // Two-turn sessions: the second turn sends the first, the server's
    // answer to it and the new question, so the server counts more input
    // than the first turn's and its answer together.
    let dir = tempfile::tempdir().expect("a temporary directory");
    let chats = dir.path().join("chats.jsonl");
    let lines: Vec<String> = ["a queue", "a cache", "a lock", "a batch"]
        .iter()
        .map(|topic| {
            serde_json::json!({"messages": [
                {"role": "system", "content": "Answer in one short sentence."},
                {"role": "user", "content": format!("What is {topic}?")},
                {"role": "assistant", "content": "(replaced by the server's answer)"},
                {"role": "user", "content": "Give one example."},
            ]})
            .to_string()
        })
        .collect();
    std::fs::write(&chats, lines.join("\n")).expect("dataset written");
    // Sent as completions, the history is one text the server tokenizes
    // whole (this build's chat template counts a chat request's input as
    // 3 tokens whatever it holds). llama-server's usage leaves out the
    // tokens its prompt cache reused, which a session's history mostly
    // is: cache_prompt = false makes it count the whole input.
    let sessions = profile(
        &server.addr,
        "openai-completions",
        "max_tokens = 12\nstream = true",
        "body = { cache_prompt = false }",
    )
    .replace(
        "builtin = \"short\"",
        &format!("file = {:?}\n        sessions = true", chats.display().to_string()),
    );
    let (code, stderr, s) = run(&sessions);
    assert_eq!(code, 0, "sessions: stderr:\n{stderr}");
    assert_eq!(num(&s, "/requests/failed"), 0.0, "{:#}", s["errors"]);
    let turns = s["turns"].as_array().expect("a turns table");
    eprintln!(
        "llama-server sessions: {}",
        serde_json::to_string(turns).unwrap_or_default()
    );
    assert_eq!(turns.len(), 2, "{turns:#?}");
    let (first, second) = (&turns[0], &turns[1]);
    assert!(num(second, "/requests") >= 1.0);
    assert!(
        num(second, "/tokens_in/mean") > num(first, "/tokens_in/mean") + num(first, "/tokens_out/mean"),
        "the second turn carries the first and its answer: {turns:#?}"
    );
    Ok(())
}

fn llama_servers_cached_prompt_tokens_reach_the_summary() -> Outcome {
    let (bin, model) = peer()?;
    let _machine = exclusive();
    let server = start(&bin, &model);
    let before = cached(&server.addr);
    // One prefix of 150 words for every prompt, then 8 of the prompt's
    // own: each slot reuses the prefix from its previous prompt. Text
    // completions: the raw prompt, no chat template.
    let profile = format!(
        r#"
        name = "llama-server-prefix"
        [target]
        url = "http://{addr}"
        api = "openai-completions"
        model = "gemma3-270m"
        timeout = "60s"
        headers = {{ Authorization = {{ env = "{KEY_VAR}" }} }}
        [load]
        users = 2
        duration = "4s"
        drain = "60s"
        [request]
        temperature = 0.0
        max_tokens = 4
        [prompts.synthetic]
        count = 32
        input_tokens = 8
        shared_prefix = {{ groups = 1, tokens = 150 }}
        "#,
        addr = server.addr
    );
    let (code, stderr, s) = run(&profile);
    assert_eq!(code, 0, "stderr:\n{stderr}");
    let truth = cached(&server.addr) - before;
    let ok = num(&s, "/requests/ok");
    eprintln!(
        "llama-server shared prefix: {ok} requests, summary cached tokens {} ({:.1}% of input), llamacpp:prompt_tokens_cached_total +{truth}",
        num(&s, "/prefix_cache/cached_tokens"),
        num(&s, "/prefix_cache/cached_share") * 100.0
    );
    assert_eq!(num(&s, "/requests/failed"), 0.0, "{:#}", s["errors"]);
    assert!(ok >= 3.0, "too few requests");
    assert_eq!(num(&s, "/prefix_cache/reported_requests"), ok, "every answer says");
    assert_eq!(
        num(&s, "/prefix_cache/cached_tokens"),
        truth,
        "the answers' cached tokens add up to llama-server's own count"
    );
    assert!(truth > 0.0, "the slots reused the shared prefix");
    assert_eq!(num(&s, "/prefix_cache/input_tokens"), num(&s, "/tokens/input"));
    assert_eq!(s["prefix_cache"]["workload"]["groups"], 1);
    Ok(())
}
