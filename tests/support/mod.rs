//! Helpers for end-to-end tests: start the real `llm-sim` and `controller`
//! binaries on loopback, read the simulator's `/metrics`, and find a run's
//! results.
//!
//! Every process is started on port 0 and ended by its own PID when its
//! handle drops. Timing-sensitive tests hold [`exclusive`] so that two
//! loads never share the machine's cores.

pub mod collector;
pub mod files;
pub mod harness;
pub mod jaeger;
pub mod kube;
pub mod netns;
pub mod otlp_metrics;
pub mod prom;
pub mod rng;

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use serde_json::Value;

static EXCLUSIVE: Mutex<()> = Mutex::new(());

/// Holds the machine for one load test at a time.
pub fn exclusive() -> MutexGuard<'static, ()> {
    EXCLUSIVE.lock().unwrap_or_else(|p| p.into_inner())
}

/// Path of a workspace binary. The first call builds them all with the
/// cargo and profile running the tests: `cargo test` builds only the
/// binaries of the package under test, and these belong to others.
pub fn bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(build_binaries).join(name)
}

fn build_binaries() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary has a path");
    // target/<profile>/deps/<test> -> target/<profile>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binaries live in target/<profile>/deps")
        .to_owned();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    build.current_dir(repo()).args([
        "build",
        "--bins",
        "-p",
        "stampede-controller",
        "-p",
        "stampede-agent",
        "-p",
        "stampede-sim",
    ]);
    match dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => {}
        Some(profile) => {
            build.args(["--profile", profile]);
        }
    }
    // Cargo gives a test the variables of its own package (its manifest
    // folder, name, version); a build script that watches one (ring's
    // watches CARGO_MANIFEST_DIR) would see it change, and everything
    // above it would be rebuilt here and again by the next `cargo test`.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("CARGO_PKG_")
            || name.starts_with("CARGO_BIN_EXE_")
            || [
                "CARGO_MANIFEST_DIR",
                "CARGO_MANIFEST_PATH",
                "CARGO_CRATE_NAME",
                "CARGO_BIN_NAME",
                "CARGO_PRIMARY_PACKAGE",
                "CARGO_TARGET_TMPDIR",
            ]
            .contains(&name.as_ref())
        {
            build.env_remove(name.as_ref());
        }
    }
    let out = build.output().expect("cargo runs");
    assert!(
        out.status.success(),
        "building the binaries failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir
}

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is in the repository")
        .to_owned()
}

/// This process runs as root (its real user id is 0).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// A running `llm-sim` process.
pub struct Sim {
    child: Child,
    /// Its base URL.
    pub url: String,
}

impl Sim {
    /// Starts `llm-sim --port 0` with extra arguments and waits for its
    /// address.
    pub fn start(args: &[&str]) -> Sim {
        let mut child = Command::new(bin("llm-sim"))
            .args(["--host", "127.0.0.1", "--port", "0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("llm-sim starts");
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("llm-sim prints its address");
        let url = line
            .trim()
            .strip_prefix("llm-sim listening on ")
            .unwrap_or_else(|| panic!("unexpected first line from llm-sim: {line:?}"))
            .to_owned();
        Sim { child, url }
    }

    /// `host:port`.
    pub fn addr(&self) -> &str {
        self.url.trim_start_matches("http://")
    }

    /// The simulator's metrics, by series name (labels included).
    pub fn metrics(&self) -> HashMap<String, f64> {
        metrics(self.addr())
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Prometheus metrics served at `addr`, by series name (labels included).
pub fn metrics(addr: &str) -> HashMap<String, f64> {
    let text = http_get(addr, "/metrics");
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// A minimal HTTP/1.0 POST with an empty body; returns the status line.
pub fn http_post(addr: &str, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).expect("connects");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout set");
    write!(
        stream,
        "POST {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: 0\r\n\r\n"
    )
    .expect("request written");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response read");
    response.lines().next().unwrap_or_default().to_owned()
}

/// A minimal HTTP/1.0 POST of a JSON body; returns the JSON answer (which
/// must be a 200).
pub fn post_json(addr: &str, path: &str, body: &Value) -> Value {
    let body = body.to_string();
    let mut stream = TcpStream::connect(addr).expect("connects");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout set");
    write!(
        stream,
        "POST {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("request written");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response read");
    let (head, answer) = response.split_once("\r\n\r\n").expect("a complete response");
    assert!(head.contains(" 200 "), "POST {path}: {head}\n{answer}");
    serde_json::from_str(answer).unwrap_or_else(|e| panic!("POST {path}: not JSON ({e}): {answer}"))
}

/// A minimal HTTP/1.0 GET, enough for `/metrics` on loopback.
pub fn http_get(addr: &str, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).expect("connects");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout set");
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").expect("request written");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response read");
    let (head, body) = response.split_once("\r\n\r\n").expect("a complete response");
    assert!(
        head.starts_with("HTTP/1.") && head.contains(" 200 "),
        "GET {path}: {head}"
    );
    body.to_owned()
}

/// The outcome of one `controller` invocation.
pub struct Run {
    /// The process's exit status and output.
    pub output: Output,
    /// `summary.json`, when the run wrote one.
    pub summary: Option<Value>,
    /// The run's results directory, when there is one.
    pub dir: Option<PathBuf>,
    _tmp: tempfile::TempDir,
}

impl Run {
    /// Exit code.
    pub fn code(&self) -> i32 {
        self.output.status.code().unwrap_or(-1)
    }

    /// Standard error as text.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }

    /// Standard output as text.
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }

    /// The summary, which must exist.
    pub fn summary(&self) -> &Value {
        self.summary
            .as_ref()
            .unwrap_or_else(|| panic!("no summary.json; exit {}\nstderr:\n{}", self.code(), self.stderr()))
    }
}

/// Writes `profile` to a temporary file and runs `controller run` on it
/// with results in a temporary directory.
pub fn run_profile(profile: &str, args: &[&str]) -> Run {
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let path = tmp.path().join("profile.toml");
    std::fs::write(&path, profile).expect("profile written");
    run_controller(tmp, &[&["run", path.to_str().expect("utf-8 path")], args].concat())
}

/// [`run_profile`] with extra environment variables (such as an API key a
/// header names).
pub fn run_profile_with_env(profile: &str, args: &[&str], env: &[(&str, &str)]) -> Run {
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let path = tmp.path().join("profile.toml");
    std::fs::write(&path, profile).expect("profile written");
    run_controller_with_env(tmp, &[&["run", path.to_str().expect("utf-8 path")], args].concat(), env)
}

/// Runs a shipped profile from `load-profiles/`.
pub fn run_shipped(name: &str, args: &[&str]) -> Run {
    run_shipped_with_env(name, args, &[])
}

/// Runs a shipped profile with extra environment variables (such as the
/// API key an example's header names).
pub fn run_shipped_with_env(name: &str, args: &[&str], env: &[(&str, &str)]) -> Run {
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let path = repo().join("load-profiles").join(name);
    run_controller_with_env(tmp, &[&["run", path.to_str().expect("utf-8 path")], args].concat(), env)
}

/// [`run_profile`] with the controller started by `wrapper`, a command
/// that ends by running its arguments (such as `sh -c '... exec "$0" "$@"'`
/// to move it into a cgroup first).
pub fn run_profile_wrapped(wrapper: &[&str], profile: &str, args: &[&str]) -> Run {
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let path = tmp.path().join("profile.toml");
    std::fs::write(&path, profile).expect("profile written");
    let mut command = Command::new(wrapper[0]);
    command.args(&wrapper[1..]).arg(bin("controller"));
    run_command(
        tmp,
        command,
        &[&["run", path.to_str().expect("utf-8 path")], args].concat(),
        &[],
    )
}

fn run_controller(tmp: tempfile::TempDir, args: &[&str]) -> Run {
    run_controller_with_env(tmp, args, &[])
}

fn run_controller_with_env(tmp: tempfile::TempDir, args: &[&str], env: &[(&str, &str)]) -> Run {
    run_command(tmp, Command::new(bin("controller")), args, env)
}

fn run_command(tmp: tempfile::TempDir, mut command: Command, args: &[&str], env: &[(&str, &str)]) -> Run {
    let out = tmp.path().join("results");
    let output = command
        .args(args)
        .envs(env.iter().copied())
        .args(["--out", out.to_str().expect("utf-8 path")])
        .current_dir(tmp.path())
        .output()
        .expect("controller runs");
    let dir = std::fs::read_dir(&out)
        .ok()
        .and_then(|mut entries| entries.next())
        .and_then(Result::ok)
        .map(|e| e.path());
    let summary = dir
        .as_ref()
        .and_then(|d| std::fs::read(d.join("summary.json")).ok())
        .map(|bytes| read_summary(&bytes));
    Run {
        output,
        summary,
        dir,
        _tmp: tmp,
    }
}

/// Reads a `summary.json` and checks it against the schema the repository
/// keeps (`docs/summary.schema.json`): every summary a test looks at is
/// checked on the way.
pub fn read_summary(bytes: &[u8]) -> Value {
    let summary: Value = serde_json::from_slice(bytes).expect("summary.json is JSON");
    check_summary(&summary);
    summary
}

/// Panics, naming every violation, unless `summary` fits the schema.
pub fn check_summary(summary: &Value) {
    static VALIDATOR: OnceLock<jsonschema::Validator> = OnceLock::new();
    let validator = VALIDATOR.get_or_init(|| {
        let text = std::fs::read_to_string(repo().join("docs/summary.schema.json")).expect("docs/summary.schema.json");
        let schema: Value = serde_json::from_str(&text).expect("the schema is JSON");
        jsonschema::validator_for(&schema).expect("the schema is a valid JSON Schema")
    });
    let problems: Vec<String> = validator
        .iter_errors(summary)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect();
    assert!(
        problems.is_empty(),
        "summary.json does not fit docs/summary.schema.json:\n{}",
        problems.join("\n")
    );
}

/// Runs `controller` with arbitrary arguments (no `--out` added).
pub fn controller(args: &[&str]) -> Output {
    Command::new(bin("controller"))
        .args(args)
        .output()
        .expect("controller runs")
}

/// `[target]` lines, ending in the `[target.http_json]` table, that read
/// llm-sim's `/generate_ndjson` as `http-json`: a token a line, the count
/// and the end on the last.
pub const SIM_NDJSON_TARGET: &str = r#"
    api = "http-json"
    path = "/generate_ndjson"
    [target.http_json]
    body = { prompt = "{{prompt}}", max_tokens = "{{max_tokens}}" }
    text = "/token"
    tokens = "/tokens_generated"
    done = "/done"
    stream = "ndjson"
"#;

/// A profile of `users` users on two agents against the simulator at
/// `url`, with two prompts of 50 tokens, answers of `max_tokens`, and
/// `extra` TOML at the end.
pub fn two_agent_profile(name: &str, url: &str, users: u32, duration: &str, max_tokens: u32, extra: &str) -> String {
    format!(
        r#"
        name = "{name}"
        [target]
        url = "{url}"
        model = "llm-sim"
        timeout = "60s"
        [load]
        users = {users}
        duration = "{duration}"
        drain = "60s"
        [request]
        max_tokens = {max_tokens}
        [prompts]
        inline = [{:?}, {:?}]
        [agents]
        count = 2
        {extra}
        "#,
        prompt_of(50),
        format!("b {}", prompt_of(49)),
    )
}

/// A prompt of exactly `words` whitespace-separated words.
pub fn prompt_of(words: usize) -> String {
    (0..words).map(|i| format!("w{i}")).collect::<Vec<_>>().join(" ")
}

/// `|measured - expected| / expected`.
pub fn relative_error(measured: f64, expected: f64) -> f64 {
    (measured - expected).abs() / expected
}

/// A number in a JSON document, by a `/`-separated pointer.
pub fn num(v: &Value, pointer: &str) -> f64 {
    v.pointer(pointer)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("no number at {pointer} in {v:#}"))
}
