//! The agents' port under junk: a controller with few file descriptors,
//! hundreds of connections that never present a token, and two real
//! agents that must still join, run and report.

// These tests time real processes from outside; there is no tokio clock to
// share here. Their helpers panic on failure: that is how a test fails.
#![allow(clippy::disallowed_types, clippy::unwrap_used)]

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use stampede_proto::pb;
use stampede_tests::{Sim, bin, exclusive, num, read_summary, two_agent_profile};

/// 32 characters: enough for a port off loopback too.
const TOKEN: &str = "0f3c9a7e5b1d4f2a8c6e0b9d7f1a3c5e";
/// The controller's open-file limit, soft and hard (it raises its soft
/// limit to its hard one at start).
const FILES: u32 = 128;
/// Idle connections: more than the controller has descriptors.
const IDLE: usize = 300;
/// Connections that send junk, and ones that send an HTTP/2 preface and
/// settings but no request.
const GARBAGE: usize = 20;
const PREFACES: usize = 20;

/// A child process whose standard error is collected as it comes.
struct Proc {
    child: Child,
    stderr: Arc<Mutex<String>>,
}

impl Proc {
    fn spawn(command: &mut Command) -> Proc {
        let mut child = command.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let pipe = child.stderr.take().unwrap();
        let sink = Arc::clone(&stderr);
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                let mut text = sink.lock().unwrap();
                text.push_str(&line);
                text.push('\n');
            }
        });
        Proc { child, stderr }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    fn wait(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Let the reader thread take the last lines.
                std::thread::sleep(Duration::from_millis(100));
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("still running after {limit:?}; stderr:\n{}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The control port's address, from the controller's "waiting up to ...
/// on ADDR (...)" line.
fn control_addr(controller: &Proc) -> SocketAddr {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = controller.stderr();
        if let Some(line) = text.lines().find(|l| l.contains("waiting up to")) {
            let addr = line
                .split(" on ")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .unwrap_or_else(|| panic!("no address in {line:?}"));
            return addr.parse().unwrap();
        }
        assert!(Instant::now() < deadline, "the controller did not listen:\n{text}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A channel with the runtime that drives its connection: dropping the
/// runtime would end the connection's task, and with it the connection.
type Held = (tonic::transport::Channel, tokio::runtime::Runtime);

/// Sends one gRPC session request with `token` (none when `None`) over a
/// connection of its own, and returns the refusal's message; the channel
/// and its runtime come back too, so that its connection stays open.
fn refused_session(addr: SocketAddr, token: Option<&str>) -> (String, Held) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (message, channel) = runtime.block_on(async move {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut client = pb::coordinator_client::CoordinatorClient::new(channel.clone());
        let (_tx, rx) = tokio::sync::mpsc::channel::<pb::AgentMessage>(1);
        let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        if let Some(token) = token {
            request
                .metadata_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
        }
        let status = client.session(request).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
        (status.message().to_owned(), channel)
    });
    (message, (channel, runtime))
}

/// The counts in the controller's refusal lines, summed by what follows the
/// number (such as "connections closed for sending no valid token within
/// 10.0s").
fn refusals(stderr: &str) -> (usize, Vec<(u64, String)>) {
    let lines: Vec<&str> = stderr.lines().filter(|l| l.contains("agents' port: refused")).collect();
    let mut counts: Vec<(u64, String)> = Vec::new();
    for line in &lines {
        let body = line.split_once(": refused in the last ").unwrap().1;
        let body = body.split_once(": ").unwrap().1;
        let body = body.split(" (latest from ").next().unwrap();
        for part in body.split("; ") {
            let (n, what) = part.split_once(' ').unwrap();
            let n: u64 = n.parse().unwrap();
            match counts.iter_mut().find(|(_, w)| w == what) {
                Some((total, _)) => *total += n,
                None => counts.push((n, what.to_owned())),
            }
        }
    }
    (lines.len(), counts)
}

fn count(counts: &[(u64, String)], what: &str) -> u64 {
    counts.iter().filter(|(_, w)| w.contains(what)).map(|(n, _)| n).sum()
}

#[test]
fn hundreds_of_idle_connections_do_not_keep_two_real_agents_out() {
    let _machine = exclusive();
    let sim = Sim::start(&[]);
    let tmp = tempfile::tempdir().unwrap();
    let profile = tmp.path().join("profile.toml");
    std::fs::write(&profile, two_agent_profile("port", &sim.url, 4, "3s", 16, "")).unwrap();
    let token = tmp.path().join("token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    let out = tmp.path().join("results");

    let started = Instant::now();
    let mut controller = Proc::spawn(
        Command::new("sh")
            .arg("-c")
            .arg(format!("ulimit -n {FILES} && exec \"$0\" \"$@\""))
            .arg(bin("controller"))
            .arg("run")
            .arg(&profile)
            .args(["--listen", "127.0.0.1:0", "--expect-agents", "2", "--wait", "60s"])
            .arg("--token-file")
            .arg(&token)
            .arg("--out")
            .arg(&out),
    );
    let addr = control_addr(&controller);

    // Junk first: more connections than the controller has descriptors.
    let mut junk = Vec::new();
    for _ in 0..IDLE {
        junk.push(TcpStream::connect(addr).unwrap());
    }
    for _ in 0..GARBAGE {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n\x00\x01\x02").unwrap();
        junk.push(s);
    }
    for _ in 0..PREFACES {
        let mut s = TcpStream::connect(addr).unwrap();
        // The HTTP/2 preface and an empty SETTINGS frame; then nothing.
        s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
            .unwrap();
        junk.push(s);
    }
    // Requests without the token are refused, and their connections held.
    let (no_token, _held_a) = refused_session(addr, None);
    assert_eq!(no_token, "this controller requires a token (agent --token-file)");
    let (wrong, _held_b) = refused_session(addr, Some("not-the-token-at-all"));
    assert_eq!(wrong, "wrong token");

    let mut agents: Vec<Proc> = (0..2)
        .map(|i| {
            Proc::spawn(
                Command::new(bin("agent"))
                    .args([
                        "--controller",
                        &format!("http://{addr}"),
                        "--name",
                        &format!("agent-{i}"),
                    ])
                    .arg("--token-file")
                    .arg(&token),
            )
        })
        .collect();

    let status = controller.wait(Duration::from_secs(120));
    let elapsed = started.elapsed();
    let stderr = controller.stderr();
    assert_eq!(status.code(), Some(0), "controller stderr:\n{stderr}");
    for (i, agent) in agents.iter_mut().enumerate() {
        let status = agent.wait(Duration::from_secs(30));
        assert_eq!(status.code(), Some(0), "agent-{i} stderr:\n{}", agent.stderr());
    }
    drop(junk);

    // Both agents' results are in the summary, and they add up to what
    // the server received.
    let dir = std::fs::read_dir(&out).unwrap().next().unwrap().unwrap().path();
    let summary = read_summary(&std::fs::read(dir.join("summary.json")).unwrap());
    let rows = summary["agents"].as_array().unwrap();
    let mut names: Vec<&str> = rows.iter().map(|a| a["name"].as_str().unwrap()).collect();
    names.sort_unstable();
    assert_eq!(names, ["agent-0", "agent-1"]);
    for row in rows {
        assert_eq!(row["end"], "finished", "{row:#}");
        assert!(num(row, "/ok") > 0.0, "{row:#}");
        assert_eq!(num(row, "/failed"), 0.0, "{row:#}");
    }
    let ok: f64 = rows.iter().map(|a| num(a, "/ok")).sum();
    assert_eq!(num(&summary, "/requests/ok"), ok);
    assert_eq!(sim.metrics()["llmsim_requests_received_total"], ok);

    // The refusals were logged, counted, and at most a line every 5 s (and
    // one for the last of them when the port closed).
    let (lines, counts) = refusals(&stderr);
    eprintln!("{lines} refusal lines in {elapsed:?}: {counts:?}");
    assert!(lines >= 1, "no refusal was logged:\n{stderr}");
    let most = usize::try_from(elapsed.as_secs() / 5).unwrap() + 2;
    assert!(lines <= most, "{lines} refusal lines in {elapsed:?}:\n{stderr}");
    assert_eq!(count(&counts, "request without a token"), 1, "{counts:?}");
    assert_eq!(count(&counts, "request with a wrong token"), 1, "{counts:?}");
    // The port closed the silent connections (the idle ones, the prefaces
    // and the two refused channels), oldest first past the cap or at the
    // deadline: all but at most the 64 that may wait, which went when the
    // run ended. The garbage ones hyper closes itself, unless the port got
    // to them first.
    let closed = count(&counts, "closed for sending no valid token") + count(&counts, "closed as the oldest");
    let silent = u64::try_from(IDLE + PREFACES + 2).unwrap();
    let garbage = u64::try_from(GARBAGE).unwrap();
    assert!(
        closed >= silent - 64 && closed <= silent + garbage,
        "{closed} closed of {silent} that never sent a token: {counts:?}\n{stderr}"
    );
    assert!(!stderr.contains(TOKEN), "the token was logged");
}
