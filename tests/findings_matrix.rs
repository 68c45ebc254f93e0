//! The findings matrix: simulator set-ups, each known to cause or not to
//! cause queueing, an idle accelerator, a cold start, a client-bound run
//! and saturation, and every verdict of every run checked against them.
//! Where the simulator keeps the ground truth (its queue time against its
//! TTFT, its busy time against the time requests were present), the
//! figure behind the verdict must be within 5 points of it too, whether
//! the finding fired or not (but for the starved agent, whose own times
//! are what its finding warns about).
//!
//! Among them: one user with a long think time (an accelerator that idles
//! only while nobody asks is not idle), mixed prompts without a model to
//! load (long prompts are slow, not cold), a target that refuses every
//! connection (the agents spin, but there is nothing to understate), and,
//! with root, an agent starved by a CPU quota while using little CPU.

use std::path::PathBuf;

use serde_json::Value;
use stampede_tests::harness::{Missing, Outcome};
use stampede_tests::{Run, Sim, exclusive, num, prompt_of, run_profile, run_profile_wrapped};

stampede_tests::suite![
    every_finding_is_right_in_each_configuration,
    a_starved_agent_is_client_bound
];

/// The findings the matrix checks, in the order of [`Case::expect`].
const KINDS: [&str; 5] = ["queueing", "gpu_idle", "cold_start", "client_bound", "saturation"];

/// How far a reported share may be from the simulator's own.
const POINTS: f64 = 0.05;

struct Case {
    name: &'static str,
    /// llm-sim's arguments; `None` for a target that refuses connections.
    sim: Option<&'static [&'static str]>,
    /// The `[load]` table, less its drain.
    load: &'static str,
    /// The `[prompts]` table; the default is two prompts of 50 words.
    prompts: Option<&'static str>,
    max_tokens: u32,
    /// Whether each of [`KINDS`] must be drawn.
    expect: [bool; 5],
}

fn profile(name: &str, url: &str, case: &Case) -> String {
    let prompts = case.prompts.map_or_else(
        || format!("inline = [{:?}, {:?}]", prompt_of(50), format!("b {}", prompt_of(49))),
        str::to_owned,
    );
    format!(
        "name = \"{name}\"\n\
         [target]\nurl = \"{url}\"\nmodel = \"llm-sim\"\ntimeout = \"30s\"\n\
         [load]\n{}\ndrain = \"30s\"\n\
         [request]\nmax_tokens = {}\n\
         [prompts]\n{prompts}\n\
         [agents]\ncount = 2\n",
        case.load, case.max_tokens
    )
}

fn cases() -> Vec<Case> {
    let none = [false; 5];
    vec![
        Case {
            name: "a batching server with room to spare",
            sim: Some(&["--max-batch", "64"]),
            load: "users = 4\nduration = \"3s\"",
            prompts: None,
            max_tokens: 16,
            expect: none,
        },
        Case {
            name: "one slot for 8 users, steps mostly on the host",
            sim: Some(&[
                "--max-batch",
                "1",
                "--decode-step",
                "20ms",
                "--decode-step-per-seq",
                "0s",
                "--step-overhead",
                "15ms",
            ]),
            load: "users = 8\nduration = \"4s\"",
            prompts: None,
            max_tokens: 16,
            expect: [true, true, false, false, false],
        },
        Case {
            name: "the same, read through DCGM's utilisation gauge",
            sim: Some(&[
                "--max-batch",
                "1",
                "--decode-step",
                "20ms",
                "--decode-step-per-seq",
                "0s",
                "--step-overhead",
                "15ms",
                "--dcgm",
            ]),
            load: "users = 8\nduration = \"4s\"",
            prompts: None,
            max_tokens: 16,
            expect: [true, true, false, false, false],
        },
        Case {
            name: "one user thinking for a second",
            sim: Some(&["--max-batch", "8"]),
            load: "users = 1\nthink_time = \"1s\"\nduration = \"5s\"",
            prompts: None,
            max_tokens: 16,
            expect: none,
        },
        Case {
            name: "one user thinking, half of each step on the host",
            sim: Some(&["--max-batch", "8", "--decode-step", "20ms", "--step-overhead", "10ms"]),
            load: "users = 1\nthink_time = \"500ms\"\nduration = \"5s\"",
            prompts: None,
            max_tokens: 16,
            expect: [false, true, false, false, false],
        },
        Case {
            name: "mixed prompts, no model to load",
            sim: Some(&["--max-batch", "64"]),
            load: "users = 4\nduration = \"6s\"",
            prompts: Some("builtin = \"mixed\""),
            max_tokens: 16,
            expect: none,
        },
        Case {
            name: "mixed prompts, one user thinking",
            sim: Some(&["--max-batch", "64"]),
            load: "users = 1\nthink_time = \"200ms\"\nduration = \"6s\"",
            prompts: Some("builtin = \"mixed\""),
            max_tokens: 16,
            expect: none,
        },
        Case {
            // The model loads for 2 s from the simulator's start; the first
            // requests wait for it (not in its queue), a sixth of the run.
            name: "a model still loading",
            sim: Some(&["--max-batch", "8", "--load-time", "2s"]),
            load: "users = 2\nduration = \"10s\"",
            prompts: None,
            max_tokens: 16,
            expect: [false, false, true, false, false],
        },
        Case {
            name: "a target that refuses every connection",
            sim: None,
            load: "users = 2\nduration = \"2s\"",
            prompts: None,
            max_tokens: 16,
            expect: none,
        },
        Case {
            name: "steps past two batch slots",
            sim: Some(&["--max-batch", "2"]),
            load: "stages = [\n  { users = 1, duration = \"3s\" },\n  { users = 2, duration = \"3s\" },\n  { users = 8, duration = \"3s\" },\n]",
            prompts: None,
            max_tokens: 16,
            expect: [true, false, false, false, true],
        },
        Case {
            name: "steps a batching server keeps up with",
            sim: Some(&["--max-batch", "64"]),
            load: "stages = [\n  { users = 1, duration = \"3s\" },\n  { users = 2, duration = \"3s\" },\n  { users = 4, duration = \"3s\" },\n]",
            prompts: None,
            max_tokens: 16,
            expect: none,
        },
        Case {
            // Two in flight at most: arrivals wait on this side, held but
            // not late, and the agents are not the limit.
            name: "arrivals held back by max_concurrency",
            sim: Some(&["--max-batch", "64"]),
            load: "rate = 20\nmax_concurrency = 2\nduration = \"3s\"",
            prompts: None,
            max_tokens: 16,
            expect: none,
        },
    ]
}

fn kinds(s: &Value) -> Vec<String> {
    s["findings"]
        .as_array()
        .map(|f| f.iter().filter_map(|f| f["kind"].as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

/// The simulator's counters, sum and count of its histograms.
fn ratio(m: &std::collections::HashMap<String, f64>, name: &str) -> Option<f64> {
    let count = *m.get(&format!("{name}_count"))?;
    (count > 0.0).then(|| m[&format!("{name}_sum")] / count)
}

/// Runs `case` and returns what it got wrong.
fn check(case: &Case, run: impl FnOnce(&str) -> Run) -> Vec<String> {
    let sim = case.sim.map(Sim::start);
    let url = match &sim {
        Some(sim) => sim.url.clone(),
        None => {
            // A port nobody listens on.
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
            format!("http://{}", l.local_addr().expect("its address"))
        }
    };
    let before = sim.as_ref().map(Sim::metrics);
    let run = run(&url);
    let after = sim.as_ref().map(Sim::metrics);
    let Some(s) = run.summary.as_ref() else {
        return vec![format!("no summary (exit {}):\n{}", run.code(), run.stderr())];
    };
    let mut wrong = Vec::new();
    let drawn = kinds(s);
    for (kind, expected) in KINDS.iter().zip(case.expect) {
        let got = drawn.iter().any(|k| k == kind);
        if got != expected {
            wrong.push(format!(
                "{kind}: {} but expected {}",
                if got { "drawn" } else { "not drawn" },
                if expected { "drawn" } else { "not drawn" }
            ));
        }
    }
    let mut line = format!("{:<50} drawn {:?}", case.name, drawn);
    // A client-bound run's own times are what that finding warns about:
    // its shares are not held to the truth.
    let trusted = !case.expect[3];
    if let (Some(before), Some(after), true) = (before, after, trusted) {
        // Queueing: the server's mean queue time over the client's mean
        // TTFT, against the simulator's own queue time over its TTFT.
        if let (Some(q), Some(t)) = (
            ratio(&after, "llmsim_queue_time_seconds"),
            ratio(&after, "llmsim_time_to_first_token_seconds"),
        ) && s["metrics"]["ttft"]["count"].as_u64().unwrap_or(0) > 0
        {
            let truth = q / t;
            let reported = num(s, "/server/mapped/queue_time/mean") / num(s, "/metrics/ttft/mean");
            line += &format!(" · queue share {reported:.3} (truth {truth:.3})");
            if (reported - truth).abs() > POINTS {
                wrong.push(format!("queue share of TTFT {reported:.3}, the simulator's {truth:.3}"));
            }
        }
        // Busy while requests were present.
        let delta = |name: &str| after[name] - before[name];
        let occupied = delta("llmsim_occupied_seconds_total");
        if occupied > 0.0 {
            let truth = delta("llmsim_busy_seconds_total") / occupied;
            match s["busy_while_present"]["utilisation"].as_f64() {
                Some(reported) => {
                    line += &format!(" · busy while present {reported:.3} (truth {truth:.3})");
                    if (reported - truth).abs() > POINTS {
                        wrong.push(format!(
                            "busy while present {reported:.3}, the simulator's {truth:.3}: {:#}",
                            s["busy_while_present"]
                        ));
                    }
                }
                None => wrong.push("no busy_while_present figure".to_owned()),
            }
        }
    }
    eprintln!("{line}");
    if !wrong.is_empty() {
        wrong.push(format!("findings: {:#}", s["findings"]));
        wrong.push(format!("client: {:#}", s["client"]));
    }
    wrong
}

fn every_finding_is_right_in_each_configuration() -> Outcome {
    let _machine = exclusive();
    let cases = cases();
    // Each finding is both drawn and not drawn somewhere.
    for (k, kind) in KINDS.iter().enumerate() {
        if *kind == "client_bound" {
            continue; // Drawn by the starved agent, which needs root.
        }
        assert!(cases.iter().any(|c| c.expect[k]), "no case draws {kind}");
        assert!(cases.iter().any(|c| !c.expect[k]), "every case draws {kind}");
    }
    assert!(cases.len() >= 12);
    let mut failures = Vec::new();
    for case in &cases {
        let wrong = check(case, |url| run_profile(&profile("matrix", url, case), &[]));
        if !wrong.is_empty() {
            failures.push(format!("{}:\n  {}", case.name, wrong.join("\n  ")));
        }
    }
    assert!(failures.is_empty(), "wrong verdicts:\n{}", failures.join("\n"));
    Ok(())
}

/// A CPU quota for the processes moved into it, removed when dropped.
struct Quota(PathBuf);

impl Quota {
    /// A cgroup whose processes get `percent` of one core (cgroup v2's
    /// `cpu.max`, else v1's CFS quota).
    fn new(percent: u32) -> Result<Quota, Missing> {
        if !stampede_tests::is_root() {
            return Err(Missing::new(
                "a CPU quota (a cgroup) needs root (.ci/run runs as root in CI)",
            ));
        }
        let name = format!("stampede-test-{}", std::process::id());
        let period = 100_000;
        let quota = period * percent / 100;
        let v2 = PathBuf::from("/sys/fs/cgroup");
        let v1 = PathBuf::from("/sys/fs/cgroup/cpu");
        let controllers = std::fs::read_to_string(v2.join("cgroup.controllers")).unwrap_or_default();
        let (dir, files) = if controllers.split_whitespace().any(|c| c == "cpu") {
            let _ = std::fs::write(v2.join("cgroup.subtree_control"), "+cpu");
            (v2.join(&name), vec![("cpu.max", format!("{quota} {period}"))])
        } else if v1.join("cpu.cfs_quota_us").exists() {
            (
                v1.join(&name),
                vec![
                    ("cpu.cfs_period_us", period.to_string()),
                    ("cpu.cfs_quota_us", quota.to_string()),
                ],
            )
        } else {
            return Err(Missing::new(
                "no cgroup CPU controller (v2 cpu.max or v1 cpu.cfs_quota_us) to starve an agent with",
            ));
        };
        std::fs::create_dir_all(&dir).map_err(|e| Missing::new(format!("cannot make {}: {e}", dir.display())))?;
        let q = Quota(dir);
        for (file, value) in files {
            std::fs::write(q.0.join(file), value)
                .map_err(|e| Missing::new(format!("cannot write {file} in {}: {e}", q.0.display())))?;
        }
        Ok(q)
    }

    fn procs(&self) -> String {
        self.0.join("cgroup.procs").display().to_string()
    }
}

impl Drop for Quota {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

fn a_starved_agent_is_client_bound() -> Outcome {
    let _machine = exclusive();
    // The controller and its in-process agents get 5% of one core: the
    // agents use little CPU, yet wait most of each 100 ms period for it.
    let quota = Quota::new(5)?;
    let case = Case {
        name: "agents starved by a 5% CPU quota",
        sim: Some(&["--max-batch", "64"]),
        load: "users = 4\nduration = \"4s\"",
        prompts: None,
        max_tokens: 16,
        expect: [false, false, false, true, false],
    };
    let script = format!("echo $$ > {} && exec \"$0\" \"$@\"", quota.procs());
    let wrong = check(&case, |url| {
        run_profile_wrapped(&["sh", "-c", &script], &profile("starved", url, &case), &[])
    });
    assert!(wrong.is_empty(), "{}:\n  {}", case.name, wrong.join("\n  "));
    Ok(())
}
