//! The chaos suite: seeded faults of the run's own processes and links,
//! with llm-sim's faults on. Controller, three agents and llm-sim each run
//! in a network namespace of their own; at a seeded moment one of them is
//! killed (`kill -9`), stopped (`SIGSTOP`, then `SIGCONT`) for a seeded
//! time, or cut off (its link down, then up). Each scenario asserts:
//!
//! - no reported request is missing: every agent's totals agree with its
//!   reports, its reports run from interval 0 without a gap, and (where
//!   no link was cut) every request the server received is ok, failed,
//!   cancelled or in flight on a lost agent;
//! - no load after the dead-man limit when the controller is gone;
//! - the verdict and exit code the fault calls for.
//!
//! `STAMPEDE_CHAOS_SEED` picks the seed (printed); the default is fixed,
//! so a failure reproduces. Needs root; without it the suite is reported
//! as ignored, saying so (and fails when `STAMPEDE_REQUIRE_PEERS=1`, as in
//! CI).

// These tests time real processes from outside; there is no tokio clock to
// share here. Their helpers panic on failure: that is how a test fails.
#![allow(clippy::disallowed_types, clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;
use stampede_tests::harness::Outcome;
use stampede_tests::netns::{self, Net, Proc};
use stampede_tests::rng::Rng;
use stampede_tests::{bin, exclusive, metrics, num};

stampede_tests::suite![twenty_seeded_faults_lose_no_reported_request];

const AGENTS: usize = 3;
const TOKEN: &str = "chaos-token-of-some-length";
/// Liveness limits short enough for many scenarios per run (see
/// `PROFILE`): a stall or cut of at most [`SHORT`] seconds is ridden out
/// (the silence it makes, with a heartbeat before it and a connection's
/// retries after, stays under both limits), one of at least [`LONG`]
/// seconds is a loss (or, for the controller, a stop at the dead-man
/// limit) and ends within the resume limit.
const DEAD_MAN: Duration = Duration::from_secs(5);
const SHORT: (f64, f64) = (1.0, 3.0);
const LONG: (f64, f64) = (9.5, 11.0);
/// Scenarios per run.
const SCENARIOS: usize = 20;
const PROFILE: &str = r#"
name = "chaos"
[target]
model = "llm-sim"
timeout = "3s"
[load]
users = 6
duration = "10s"
drain = "3s"
[request]
max_tokens = 16
[prompts]
builtin = "short"
[agents]
on_agent_loss = "continue"
heartbeat = "500ms"
dead_man = "5s"
lost_after = "7s"
resume_limit = "20s"
[thresholds]
max_error_rate = 1.0
allow_client_bound = true
"#;
/// llm-sim: a batching server, and faults that end requests of their own.
const SIM: [&str; 20] = [
    "--host",
    "0.0.0.0",
    "--port",
    "8000",
    "--max-batch",
    "64",
    "--prefill-base",
    "50ms",
    "--prefill-per-token",
    "0s",
    "--decode-step",
    "5ms",
    "--seed",
    "7",
    "--fault",
    "reset=0.02,after=2",
    "--fault",
    "malformed=0.02,after=1",
    "--fault",
    "stall=0.02,for=200ms,after=3",
];

/// What happens to whom.
#[derive(Clone, Copy, Debug)]
enum Fault {
    None,
    KillAgent(usize),
    StopAgent(usize, f64),
    CutAgent(usize, f64),
    StopController(f64),
    KillController,
}

/// The scenarios: every kind of fault at least twice, at seeded moments,
/// on seeded agents, for seeded times.
fn scenarios(seed: u64) -> Vec<(Fault, u64)> {
    let mut rng = Rng(seed);
    (0..SCENARIOS)
        .map(|i| {
            let agent = (rng.next() % AGENTS as u64) as usize;
            // Early enough that a controller gone for good is noticed at
            // the dead-man limit before the load's own end.
            let at = 2 + rng.next() % 2;
            let fault = match i % 9 {
                0 => Fault::None,
                1 => Fault::KillAgent(agent),
                2 => Fault::StopAgent(agent, rng.between(SHORT)),
                3 => Fault::StopAgent(agent, rng.between(LONG)),
                4 => Fault::CutAgent(agent, rng.between(SHORT)),
                5 => Fault::CutAgent(agent, rng.between(LONG)),
                6 => Fault::StopController(rng.between(SHORT)),
                7 => Fault::StopController(rng.between(LONG)),
                _ => Fault::KillController,
            };
            (fault, at)
        })
        .collect()
}

struct Cluster {
    net: Net,
    dir: tempfile::TempDir,
    _sim: Proc,
}

fn exit_code(p: &mut Proc, limit: Duration) -> i32 {
    match p.wait_for(limit) {
        Some(status) => status.code().unwrap_or(-1),
        None => panic!("{} did not exit within {limit:?}\nstderr:\n{}", p.name, p.stderr()),
    }
}

impl Cluster {
    fn new() -> Cluster {
        let names: Vec<String> = (0..AGENTS).map(|i| format!("agent-{i}")).collect();
        let mut hosts = vec!["controller", "llm-sim"];
        hosts.extend(names.iter().map(String::as_str));
        let net = Net::new(&hosts);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), TOKEN).unwrap();
        std::fs::write(dir.path().join("chaos.toml"), PROFILE).unwrap();
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

    fn sim(&self) -> HashMap<String, f64> {
        metrics(&format!("{}:8000", self.net.host("llm-sim").ip))
    }

    fn controller(&self, out: &str) -> Proc {
        let (profile, out, token) = (self.path("chaos.toml"), self.path(out), self.path("token"));
        let args = [
            "run",
            profile.to_str().unwrap(),
            "--target",
            "http://llm-sim:8000",
            "--listen",
            "0.0.0.0:7000",
            "--expect-agents",
            "3",
            "--wait",
            "20s",
            "--token-file",
            token.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ];
        self.net.spawn("controller", &bin("controller"), &args, &[])
    }

    fn agent(&self, i: usize) -> Proc {
        let (index, token) = (i.to_string(), self.path("token"));
        let env = [
            ("STAMPEDE_CONTROLLER", "http://controller:7000"),
            ("STAMPEDE_TOKEN_FILE", token.to_str().unwrap()),
            ("JOB_COMPLETION_INDEX", index.as_str()),
        ];
        self.net.spawn(&format!("agent-{i}"), &bin("agent"), &[], &env)
    }

    /// The run directory under `out`.
    fn run_dir(&self, out: &str) -> PathBuf {
        std::fs::read_dir(self.path(out))
            .unwrap_or_else(|e| panic!("no results in {out}: {e}"))
            .next()
            .unwrap()
            .unwrap()
            .path()
    }
}

/// What a scenario must end with.
struct Expected {
    controller: i32,
    /// Each agent's exit code.
    agents: [i32; AGENTS],
    /// The agent that must be lost.
    lost: Option<usize>,
}

fn expected(fault: Fault) -> Expected {
    let all = |code| [code; AGENTS];
    let lose = |k: usize, code: i32| {
        let mut agents = all(0);
        agents[k] = code;
        Expected {
            controller: 4,
            agents,
            lost: Some(k),
        }
    };
    match fault {
        Fault::None | Fault::StopAgent(_, _) | Fault::CutAgent(_, _) | Fault::StopController(_) if short(fault) => {
            Expected {
                controller: 0,
                agents: all(0),
                lost: None,
            }
        }
        // Killed: no exit code of its own (`-1` for a signal).
        Fault::KillAgent(k) => lose(k, -1),
        // Back after the controller has lost it: its resume is refused.
        Fault::StopAgent(k, _) | Fault::CutAgent(k, _) => lose(k, 3),
        // The agents stop their load at the dead-man limit, then deliver.
        Fault::StopController(_) => Expected {
            controller: 4,
            agents: all(0),
            lost: None,
        },
        Fault::KillController | Fault::None => Expected {
            controller: -1,
            agents: all(3),
            lost: None,
        },
    }
}

fn short(fault: Fault) -> bool {
    match fault {
        Fault::None => true,
        Fault::StopAgent(_, s) | Fault::CutAgent(_, s) | Fault::StopController(s) => s <= SHORT.1,
        Fault::KillAgent(_) | Fault::KillController => false,
    }
}

/// Watches the server from `gone` (when the controller went) for `watch`,
/// well past the dead-man limit, and returns when the last new request
/// arrived: no load may outlive the limit.
fn last_new_request(c: &Cluster, fault: Fault, gone: Instant, watch: Duration) -> Duration {
    let received = |c: &Cluster| c.sim()["llmsim_requests_received_total"];
    let mut last = (received(c), Duration::ZERO);
    while gone.elapsed() < watch {
        let now = received(c);
        if now != last.0 {
            last = (now, gone.elapsed());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // The limit counts from the last word, at most a heartbeat before.
    assert!(
        last.1 < DEAD_MAN + Duration::from_millis(1_500),
        "{fault:?}: load went on {:?} after the controller went",
        last.1
    );
    // And the load ran on through the gap until then.
    assert!(
        last.1 > DEAD_MAN - Duration::from_millis(1_500),
        "{fault:?}: the load stopped {:?} after the controller went, before the dead-man limit",
        last.1
    );
    last.1
}

/// Plays one scenario; returns a line for the tally.
fn play(c: &Cluster, n: usize, fault: Fault, at: u64) -> String {
    let out = format!("run-{n}");
    let before = c.sim();
    let mut controller = c.controller(&out);
    let mut agents: Vec<Proc> = (0..AGENTS).map(|i| c.agent(i)).collect();
    let mark = format!("[{at:>5}s/10s]");
    assert!(
        controller.wait_for_stderr(&mark, Duration::from_secs(60)),
        "{fault:?}: {}",
        controller.stderr()
    );
    // When the server last saw a new request after the controller went.
    let mut last_arrival = None;
    match fault {
        Fault::None => {}
        Fault::KillAgent(k) => agents[k].kill9(),
        Fault::StopAgent(k, s) => {
            agents[k].pause();
            std::thread::sleep(Duration::from_secs_f64(s));
            agents[k].resume();
        }
        Fault::CutAgent(k, s) => {
            c.net.cut(&format!("agent-{k}"));
            std::thread::sleep(Duration::from_secs_f64(s));
            c.net.restore(&format!("agent-{k}"));
        }
        Fault::StopController(s) => {
            controller.pause();
            let stopped = Instant::now();
            if short(fault) {
                std::thread::sleep(Duration::from_secs_f64(s));
            } else {
                last_arrival = Some(last_new_request(c, fault, stopped, Duration::from_secs_f64(s)));
            }
            controller.resume();
        }
        Fault::KillController => {
            controller.kill9();
            let killed = Instant::now();
            last_arrival = Some(last_new_request(c, fault, killed, DEAD_MAN + Duration::from_secs(3)));
        }
    }
    let want = expected(fault);
    let code = exit_code(&mut controller, Duration::from_secs(90));
    let codes: Vec<i32> = agents
        .iter_mut()
        .map(|a| exit_code(a, Duration::from_secs(45)))
        .collect();
    let logs = || {
        let mut text = format!("controller:\n{}", controller.stderr());
        for a in &agents {
            text.push_str(&format!("\n{}:\n{}", a.name, a.stderr()));
        }
        text
    };
    assert_eq!(
        code,
        want.controller,
        "{fault:?}: the controller's exit code\n{}",
        logs()
    );
    assert_eq!(codes, want.agents, "{fault:?}: the agents' exit codes\n{}", logs());
    if matches!(fault, Fault::KillController) {
        return format!("{fault:?} at {at}s: agents stopped sending {last_arrival:.1?} after, exit {codes:?}");
    }
    let dir = c.run_dir(&out);
    let s = stampede_tests::read_summary(&std::fs::read(dir.join("summary.json")).unwrap());
    let verdict = match want.controller {
        0 => "passed",
        _ => "degraded",
    };
    assert_eq!(s["verdict"]["status"], verdict, "{fault:?}: {:#}", s["verdict"]);
    let log = std::fs::read_to_string(dir.join("intervals.jsonl")).unwrap();
    let reports: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|l| l["event"] == "report")
        .collect();
    for a in s["agents"].as_array().unwrap() {
        // Places go in the order agents joined, not by name.
        let name = a["name"].as_str().unwrap();
        let lost = want.lost.is_some_and(|k| name == format!("agent-{k}"));
        let end = if lost { "lost" } else { "finished" };
        assert_eq!(a["end"], end, "{fault:?}: {a:#}");
        assert!(a["mismatch"].is_null(), "{fault:?}: a report went missing: {a:#}");
        // Every report it was acknowledged is in the log, from interval 0
        // without a gap, and its counts are the summary's.
        let mut intervals: Vec<u64> = reports
            .iter()
            .filter(|r| r["agent"] == name)
            .map(|r| r["interval"].as_u64().unwrap())
            .collect();
        intervals.sort_unstable();
        let last = a["last_interval"].as_u64().unwrap();
        assert_eq!(intervals, (0..=last).collect::<Vec<_>>(), "{fault:?}: {name}'s reports");
        let ok: u64 = reports
            .iter()
            .filter(|r| r["agent"] == name)
            .map(|r| r["counters"]["ok"].as_u64().unwrap_or(0))
            .sum();
        assert_eq!(ok, a["ok"].as_u64().unwrap(), "{fault:?}: {name}");
        if let Some(k) = want.lost {
            assert!(
                s["lost"]["agents"].to_string().contains(&format!("agent-{k}")),
                "{fault:?}: {:#}",
                s["lost"]
            );
        }
    }
    let after = c.sim();
    let since = |name: &str| after[name] - before[name];
    let received = since("llmsim_requests_received_total");
    let counted = num(&s, "/requests/ok") + num(&s, "/requests/failed") + num(&s, "/requests/cancelled");
    let lost = num(&s, "/lost/requests");
    match fault {
        // A cut agent's requests fail on its side without reaching the
        // server; requests a lost agent sent after its last report are
        // known to no one.
        Fault::CutAgent(_, _) => {}
        _ if want.lost.is_some() => assert!(counted + lost <= received, "{fault:?}"),
        _ => {
            // Every request the server received is in the results. Requests
            // the agents abandon at the dead-man limit are cancelled on
            // their side, and the server may never have seen one (it was
            // abandoned while its connection opened, or before its bytes
            // were written): only cancelled requests may be missing there.
            let (ok, cancelled) = (num(&s, "/requests/ok"), num(&s, "/requests/cancelled"));
            assert!(
                received <= counted + lost && counted + lost <= received + cancelled,
                "{fault:?}: the server received {received} requests, the results count {counted} + {lost} lost, \
                 {cancelled} of them cancelled"
            );
            // A cancelled request may also be one the server had just
            // finished whose last bytes were still on their way.
            let served = since("llmsim_requests_served_total");
            assert!(
                ok <= served && served <= ok + cancelled,
                "{fault:?}: {ok} ok and {cancelled} cancelled, {served} served"
            );
            if short(fault) {
                assert_eq!(ok, served, "{fault:?}: nothing is abandoned");
                assert_eq!(counted + lost, received, "{fault:?}: requests the server received");
            }
        }
    }
    format!(
        "{fault:?} at {at}s: exit {code}, {received} received, {counted} in the results + {lost} lost{}",
        last_arrival.map_or_else(String::new, |l| format!(", load stopped {l:.1?} after"))
    )
}

fn twenty_seeded_faults_lose_no_reported_request() -> Outcome {
    netns::available()?;
    let _machine = exclusive();
    let seed = std::env::var("STAMPEDE_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x0005_EEDC_4A05_u64);
    eprintln!("chaos seed {seed} (STAMPEDE_CHAOS_SEED)");
    let c = Cluster::new();
    for (n, (fault, at)) in scenarios(seed).into_iter().enumerate() {
        let line = play(&c, n, fault, at);
        eprintln!("scenario {n:>2}: {line}");
    }
    Ok(())
}
