//! A real Prometheus server (Debian's `prometheus` package) for tests, and
//! the controller's live metrics endpoint.

use std::collections::BTreeSet;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

/// The `prometheus` binary on the PATH, if installed; else what is missing.
pub fn binary() -> Result<PathBuf, crate::harness::Missing> {
    match Command::new("prometheus").arg("--version").output() {
        Ok(out) if out.status.success() => Ok("prometheus".into()),
        _ => Err(crate::harness::Missing::new(
            "prometheus is not installed (.ci/run installs the Debian package)",
        )),
    }
}

/// A free port on 127.0.0.1 (free when asked; Prometheus cannot take port 0).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A Prometheus server scraping given targets every second; killed by its
/// PID when dropped.
pub struct Prometheus {
    child: Child,
    /// Its HTTP address.
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts Prometheus on a free loopback port with a generated config
    /// scraping `targets` (`host:port`) as job `job`, and waits until it is
    /// ready.
    pub fn start(job: &str, targets: &[String]) -> Prometheus {
        Prometheus::start_with(job, targets, &[])
    }

    /// The same, with more command-line flags (`--enable-feature=…`).
    pub fn start_with(job: &str, targets: &[String], flags: &[&str]) -> Prometheus {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let config = dir.path().join("prometheus.yml");
        let list = targets
            .iter()
            .map(|t| format!("\"{t}\""))
            .collect::<Vec<_>>()
            .join(", ");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
                 scrape_configs:\n  - job_name: {job}\n    static_configs:\n      - targets: [{list}]\n"
            ),
        )
        .expect("config written");
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("an address");
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log file");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .args(flags)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("prometheus starts");
        let mut p = Prometheus { child, addr, dir };
        for _ in 0..200 {
            if get(addr, "/-/ready").is_some_and(|(status, _)| status == 200) {
                return p;
            }
            if let Ok(Some(status)) = p.child.try_wait() {
                panic!("prometheus exited ({status}):\n{}", p.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("prometheus was not ready within 20 s:\n{}", p.log());
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// Runs an instant query (`/api/v1/query`) at unix time `at`; returns
    /// the result vector.
    pub fn query(&self, expr: &str, at: f64) -> Vec<Value> {
        let path = format!("/api/v1/query?query={}&time={at:.3}", encode(expr));
        let (status, body) = get(self.addr, &path).expect("prometheus answers");
        let v: Value = serde_json::from_str(&body).expect("the API answers JSON");
        assert!(status == 200 && v["status"] == "success", "query {expr}: {body}");
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }
}

impl Prometheus {
    /// The exemplars of the series `expr` selects between unix times
    /// `start` and `end` (`/api/v1/query_exemplars`): one entry per series,
    /// with `seriesLabels` and `exemplars`.
    pub fn exemplars(&self, expr: &str, start: f64, end: f64) -> Vec<Value> {
        let path = format!(
            "/api/v1/query_exemplars?query={}&start={start:.3}&end={end:.3}",
            encode(expr)
        );
        let (status, body) = get(self.addr, &path).expect("prometheus answers");
        let v: Value = serde_json::from_str(&body).expect("the API answers JSON");
        assert!(status == 200 && v["status"] == "success", "exemplars of {expr}: {body}");
        v["data"].as_array().cloned().unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Percent-encodes a query parameter.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A plain HTTP/1.0 GET; None when nothing answers.
pub fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    get_accepting(addr, path, None).map(|(status, _, body)| (status, body))
}

/// A plain HTTP/1.0 GET with an `Accept` header when given: the status,
/// the `Content-Type` and the body; None when nothing answers.
pub fn get_accepting(addr: SocketAddr, path: &str, accept: Option<&str>) -> Option<(u16, String, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let accept = accept.map(|a| format!("Accept: {a}\r\n")).unwrap_or_default();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n{accept}\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let content_type = head
        .lines()
        .find_map(|l| {
            l.split_once(':')
                .filter(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        })
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_default();
    Some((status, content_type, body.to_owned()))
}

/// The metric names in a Prometheus text exposition: every `# TYPE` name
/// and every series name.
pub fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            if let Some(name) = rest.split_whitespace().next() {
                names.insert(name.to_owned());
            }
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_owned());
        }
    }
    names
}

/// Waits for the controller's "live metrics at http://ADDR/metrics" line
/// on its standard error and returns ADDR. The rest of standard error goes
/// on being read (and kept) by a thread, so the controller never blocks on
/// a full pipe.
pub fn live_addr(stderr: ChildStderr, log: &Path) -> SocketAddr {
    let (tx, rx) = mpsc::channel();
    let log = log.to_owned();
    std::thread::spawn(move || {
        let mut kept = std::fs::File::create(&log).expect("log file");
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let _ = writeln!(kept, "{line}");
            if let Some((_, rest)) = line.split_once("live metrics at http://")
                && let Some(addr) = rest.strip_suffix("/metrics").and_then(|a| a.parse().ok())
            {
                let _ = tx.send(addr);
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(30))
        .expect("the controller announces its live metrics address")
}
