//! The controller on a real terminal: `script` (util-linux) runs it on a
//! pseudo-terminal, so its standard error is a TTY and it draws its live
//! line, and keeps everything it wrote. A staged load against the built-in
//! simulator answers slowly enough (64 tokens, 60 ms a step: 3.8 s a
//! request) that requests are in flight when the load ends, so the drain
//! is seen.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use stampede_tests::{bin, exclusive, read_summary};
use tokio::time::Instant;

/// Tokens in every answer: the simulator answers `max_tokens`.
const TOKENS: f64 = 64.0;

fn profile(dir: &Path, stage: &str) -> String {
    let text = format!(
        r#"
name = "terminal"
seed = 1
[target]
timeout = "30s"
[load]
stages = [ {{ users = 2, duration = "{stage}" }}, {{ users = 4, duration = "{stage}" }} ]
drain = "5s"
[request]
max_tokens = 64
stream = true
[agents]
count = 2
[report]
interval = "1s"
out = "{out}"
[sim]
max_batch = 8
prefill_base = "2ms"
prefill_per_token = "100us"
decode_step = "60ms"
decode_step_per_seq = "100us"
"#,
        out = dir.join("results").display()
    );
    let path = dir.join("terminal.toml");
    std::fs::write(&path, text).expect("the profile is written");
    path.display().to_string()
}

/// Starts the controller under `script`, which writes what it shows as it
/// comes (`-f`); the shell `script` starts becomes the controller (`exec`)
/// after writing its PID.
fn on_a_terminal(dir: &Path, profile: &str) -> Child {
    let command = format!(
        "echo $$ > {pid}; exec {controller} run {profile}",
        pid = dir.join("pid").display(),
        controller = bin("controller").display(),
    );
    Command::new("script")
        .args(["-q", "-e", "-f", "-c", &command])
        .arg(dir.join("typescript"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("script (util-linux) runs: the test needs it to give the controller a terminal")
}

/// Waits up to `limit` for `child` to exit; its exit code.
fn wait(child: &mut Child, limit: Duration) -> Option<i32> {
    let until = Instant::now() + limit;
    while Instant::now() < until {
        if let Some(status) = child.try_wait().expect("the child can be waited for") {
            return status.code();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("the run did not end within {limit:?}");
}

/// What the terminal received, as lines: escape sequences left out, and
/// each redraw of the live line (after a carriage return) a line of its
/// own.
fn screen(dir: &Path) -> Vec<String> {
    let raw = std::fs::read(dir.join("typescript")).expect("script kept the output");
    let text = String::from_utf8_lossy(&raw);
    let mut plain = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' && chars.peek() == Some(&'[') {
            // CSI: parameters up to the final letter.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
        .split(['\r', '\n'])
        .map(str::trim_end)
        .filter(|l| !l.is_empty() && !l.starts_with("Script "))
        .map(str::to_owned)
        .collect()
}

/// The number before `unit` in `line`.
fn figure(line: &str, unit: &str) -> f64 {
    let before = &line[..line.find(unit).unwrap_or_else(|| panic!("{unit} in {line:?}"))];
    before
        .split_whitespace()
        .last()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("a number before {unit} in {line:?}"))
}

fn live(lines: &[String]) -> Vec<&String> {
    lines
        .iter()
        .filter(|l| l.starts_with('[') && l.contains(" req/s"))
        .collect()
}

#[test]
fn the_live_line_says_the_stage_the_eta_the_drain_and_tokens_per_second() {
    let _machine = exclusive();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let profile = profile(dir.path(), "2s");
    let mut script = on_a_terminal(dir.path(), &profile);
    let code = wait(&mut script, Duration::from_secs(90));
    let lines = screen(dir.path());
    assert_eq!(code, Some(0), "{lines:#?}");

    // Before the load, one line says what runs against what.
    let first_live = lines.iter().position(|l| l.starts_with('[')).expect("a live line");
    let before: Vec<&String> = lines[..first_live].iter().filter(|l| l.contains(" INFO ")).collect();
    assert_eq!(before.len(), 1, "{before:#?}");
    assert!(
        before[0].contains("up to 4 users in 2 stages over 4s against the built-in simulator at http://127.0.0.1:"),
        "{before:#?}"
    );

    let rows = live(&lines);
    // Each fits the 120 columns of a terminal that does not say its width.
    for row in &rows {
        assert!(row.chars().count() <= 120, "{row}");
    }
    // The first second: stage 1 of 2, no request has ended (each takes
    // 3.8 s), so the ETA is the 3 s of load left and the whole 5 s drain,
    // as an upper bound.
    assert!(rows[0].starts_with("[1s/4s] | stage 1/2 | ETA ≤8s |"), "{rows:#?}");
    assert!(rows.iter().any(|r| r.contains("| stage 2/2 |")), "{rows:#?}");
    // Requests were in flight when the load ended: the drain is labelled
    // as such (never as overtime, 5s/4s), with what is left of it.
    let drain: Vec<&&String> = rows.iter().filter(|r| r.starts_with("[drain ")).collect();
    assert!(!drain.is_empty(), "{rows:#?}");
    for row in &drain {
        assert!(row.contains("s/5s] | ETA ≤") && row.contains("| in flight "), "{row}");
    }
    let overtime = ["[5s/4s]", "[6s/4s]", "[7s/4s]", "[8s/4s]", "[9s/4s]"];
    assert!(
        !rows.iter().any(|r| overtime.iter().any(|o| r.starts_with(o))),
        "{rows:#?}"
    );
    // Output tokens per second: 64 for each answer of the interval.
    let mut answered = 0;
    for row in &rows {
        let (rps, tps) = (figure(row, " req/s"), figure(row, " tok/s"));
        assert!((tps - TOKENS * rps).abs() <= TOKENS * 0.05 + 1.0, "{row}");
        answered += u64::from(tps > 0.0);
    }
    assert!(answered > 0, "{rows:#?}");

    let results = dir.path().join("results");
    let run = std::fs::read_dir(&results)
        .expect("a results directory")
        .next()
        .expect("a run")
        .expect("a run");
    let s = read_summary(&std::fs::read(run.path().join("summary.json")).expect("summary.json"));
    assert_eq!(s["requests"]["cancelled"], 0, "the drain let every request finish");
}

#[test]
fn an_interrupt_is_logged_once_and_turns_the_line_into_the_drain() {
    let _machine = exclusive();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let profile = profile(dir.path(), "10s");
    let mut script = on_a_terminal(dir.path(), &profile);
    // Once the load has shown its first second, interrupt the controller.
    let until = Instant::now() + Duration::from_secs(60);
    while !screen_ready(dir.path()) {
        assert!(
            Instant::now() < until,
            "the run never got going: {:#?}",
            screen(dir.path())
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let pid: i32 = std::fs::read_to_string(dir.path().join("pid"))
        .expect("the PID was written")
        .trim()
        .parse()
        .expect("a PID");
    let pid = rustix::process::Pid::from_raw(pid).expect("a PID");
    rustix::process::kill_process(pid, rustix::process::Signal::INT).expect("the controller can be interrupted");
    let code = wait(&mut script, Duration::from_secs(60));
    let lines = screen(dir.path());
    assert_eq!(code, Some(130), "{lines:#?}");

    let stops: Vec<&String> = lines.iter().filter(|l| l.contains("stopped the load")).collect();
    assert_eq!(stops.len(), 1, "{lines:#?}");
    assert!(
        stops[0].contains("stopped the load: interrupted; in-flight requests may finish"),
        "{stops:#?}"
    );
    // After the stop, the line counts the drain down, though the plan had
    // 19 s of load to go.
    let after = lines
        .iter()
        .position(|l| l.contains("stopped the load"))
        .expect("the stop");
    let drain: Vec<&String> = lines[after..].iter().filter(|l| l.starts_with("[drain ")).collect();
    assert!(!drain.is_empty(), "{lines:#?}");
    assert!(drain.iter().all(|l| l.contains("s/5s] | ETA ≤")), "{drain:#?}");
    // Each log line is printed once.
    let logs: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains(" INFO ") || l.contains(" WARN "))
        .collect();
    for log in &logs {
        let text = &log[log.find(": ").unwrap_or(0)..];
        assert_eq!(logs.iter().filter(|l| l.ends_with(text)).count(), 1, "{logs:#?}");
    }
}

/// The first live line has been drawn.
fn screen_ready(dir: &Path) -> bool {
    dir.join("typescript").exists() && screen(dir).iter().any(|l| l.starts_with("[1s/20s]"))
}

/// A sweep's line names its step and level, with an ETA over the steps
/// left, on a real terminal.
#[test]
fn a_sweep_shows_its_step_number_and_level() {
    let _machine = exclusive();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let text = format!(
        r#"
name = "terminal-sweep"
seed = 1
[load]
drain = "2s"
[load.sweep]
users = [1, 2]
step = "2s"
[request]
max_tokens = 16
[report]
interval = "1s"
out = "{out}"
[sim]
decode_step = "10ms"
"#,
        out = dir.path().join("results").display()
    );
    let path = dir.path().join("sweep.toml");
    std::fs::write(&path, text).expect("the profile is written");
    let mut script = on_a_terminal(dir.path(), &path.display().to_string());
    let code = wait(&mut script, Duration::from_secs(90));
    let lines = screen(dir.path());
    assert_eq!(code, Some(0), "{lines:#?}");
    let rows = live(&lines);
    let first = rows
        .iter()
        .find(|r| r.contains("| step 1/2 at 1 user"))
        .unwrap_or_else(|| panic!("step 1 named: {rows:#?}"));
    assert!(first.contains("| ETA "), "{first}");
    let second = rows
        .iter()
        .find(|r| r.contains("| step 2/2 at 2 users |"))
        .unwrap_or_else(|| panic!("step 2 named: {rows:#?}"));
    // The ETA of the first step counts the second one too.
    let eta = |row: &str| {
        let at = row.find("| ETA ").expect("an ETA") + "| ETA ".len();
        let text: String = row[at..].chars().take_while(|c| *c != ' ').collect();
        humantime::parse_duration(text.trim_start_matches('≤')).unwrap_or_else(|e| panic!("{text}: {e}"))
    };
    assert!(eta(first) > eta(second), "{first}\n{second}");
    assert!(eta(first) >= Duration::from_secs(2), "{first}");
}
