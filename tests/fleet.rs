//! The fleet tool (`tests/bin/fleet.rs`, used by `bench/fleet.sh`) drives a
//! real controller with many simulated agents: the controller's summary
//! holds exactly what the fleet reported, and every agent began.

use std::process::{Command, Stdio};

use serde_json::Value;
use stampede_tests::{bin, exclusive, read_summary, repo};

#[test]
fn a_fleet_of_twenty_agents_is_merged_exactly() {
    let _machine = exclusive();
    let dir = tempfile::tempdir().unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let out = dir.path().join("out");
    let controller = Command::new(bin("controller"))
        .args(["run"])
        .arg(repo().join("bench/fleet.toml"))
        .args(["--listen", &format!("127.0.0.1:{port}"), "--expect-agents", "20"])
        .args(["--duration", "3s", "--wait", "60s", "--users", "200", "--out"])
        .arg(&out)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let fleet = Command::new(env!("CARGO_BIN_EXE_fleet"))
        .args(["--controller", &format!("http://127.0.0.1:{port}"), "--agents", "20"])
        .output()
        .unwrap();
    let fleet_stderr = String::from_utf8_lossy(&fleet.stderr);
    assert!(
        fleet.status.success(),
        "the fleet failed: {}{fleet_stderr}",
        String::from_utf8_lossy(&fleet.stdout)
    );
    let sent: Value = serde_json::from_slice(&fleet.stdout).unwrap();
    let ended = controller.wait_with_output().unwrap();
    assert_eq!(
        ended.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ended.stderr)
    );

    assert_eq!(sent["agents_acknowledged"], 20, "{sent}");
    // 3 one-second reports from each agent.
    assert_eq!(sent["reports"], 60, "{sent}");
    let run = std::fs::read_dir(&out).unwrap().next().unwrap().unwrap().path();
    let summary = read_summary(&std::fs::read(run.join("summary.json")).unwrap());
    let num = |v: &Value, p: &str| {
        v.pointer(p)
            .and_then(Value::as_u64)
            .unwrap_or_else(|| panic!("{p} in {v}"))
    };
    assert!(num(&sent, "/ok") > 0);
    assert_eq!(num(&summary, "/requests/ok"), num(&sent, "/ok"));
    assert_eq!(num(&summary, "/requests/failed"), num(&sent, "/failed"));
    assert_eq!(num(&summary, "/tokens/output"), num(&sent, "/output_tokens"));
    assert_eq!(num(&summary, "/tokens/input"), num(&sent, "/input_tokens"));
    assert_eq!(num(&summary, "/metrics/ttft/count"), num(&sent, "/ok"));
    assert_eq!(num(&summary, "/start_skew/measured"), 20);
    let log = std::fs::read_to_string(run.join("intervals.jsonl")).unwrap();
    let reports = log.lines().filter(|l| l.contains(r#""event":"report""#)).count();
    assert_eq!(reports, 60);
}
