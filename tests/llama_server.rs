//! A real third-party server: llama.cpp's `llama-server` with Gemma 3 270M
//! (installed by `.ci/peers`, which `.ci/run` calls). stampede runs
//! `openai-chat` and `openai-completions`, streaming and not, and its
//! output-token totals must equal what the server itself counted
//! (`llamacpp:tokens_predicted_total` on its Prometheus `/metrics`).
//!
//! Without the peer installed the test prints why and passes; CI installs
//! it.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use stampede_tests::{exclusive, metrics, num, repo, run_profile};

/// The server binary and the model, from the environment or `.ci/peers`.
fn peer() -> Result<(PathBuf, PathBuf), String> {
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
        .map_err(|e| format!("cannot run .ci/peers: {e}"))?;
    if !check.success() {
        return Err("llama-server and the Gemma model are not installed (run .ci/peers)".to_owned());
    }
    let out = Command::new("bash")
        .arg(&script)
        .output()
        .map_err(|e| format!("cannot run .ci/peers: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let var = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("export {name}=")))
            .map(PathBuf::from)
            .ok_or_else(|| format!(".ci/peers printed no {name}"))
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
        .args(["--chat-template", "gemma"])
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
    use std::io::{Read as _, Write as _};
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

fn predicted(addr: &str) -> f64 {
    metrics(addr)
        .get("llamacpp:tokens_predicted_total")
        .copied()
        .expect("llama-server exposes llamacpp:tokens_predicted_total")
}

#[test]
fn llama_server_usage_matches_stampedes_counts_in_both_openai_dialects() {
    let (bin, model) = match peer() {
        Ok(p) => p,
        Err(why) => {
            eprintln!("SKIPPED: {why}");
            return;
        }
    };
    let _machine = exclusive();
    let server = start(&bin, &model);
    for api in ["openai-chat", "openai-completions"] {
        for stream in [true, false] {
            let before = predicted(&server.addr);
            let profile = format!(
                r#"
                name = "llama-server"
                [target]
                url = "http://{}"
                api = "{api}"
                model = "gemma3-270m"
                timeout = "60s"
                [load]
                users = 2
                duration = "3s"
                drain = "60s"
                [request]
                max_tokens = 16
                temperature = 0.0
                stream = {stream}
                [prompts]
                builtin = "short"
                "#,
                server.addr
            );
            let run = run_profile(&profile, &[]);
            assert_eq!(run.code(), 0, "{api} stream={stream}: stderr:\n{}", run.stderr());
            let s = run.summary();
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
}
