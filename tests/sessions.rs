//! Multi-turn sessions end to end against the real `llm-sim`, which
//! records every chat request it receives (`--record`): each turn carries
//! the system prompt, the earlier user turns and the answers the
//! simulator really sent, and its TTFT grows with that history as the
//! simulator's prefill model says.

use serde_json::{Value, json};
use stampede_tests::{Sim, controller, exclusive, num, relative_error, run_profile};

/// The recorded requests, in arrival order.
fn recorded(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .expect("llm-sim wrote its record")
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

/// `words` distinct words starting with `tag`.
fn words(tag: &str, words: usize) -> String {
    (0..words).map(|i| format!("{tag}{i}")).collect::<Vec<_>>().join(" ")
}

fn messages(line: &Value) -> &Vec<Value> {
    line["messages"].as_array().expect("messages are a list")
}

/// The request that `line` continues: an earlier one whose messages and
/// answer, followed by one new user turn, are exactly `line`'s messages.
fn continues<'a>(line: &Value, earlier: &'a [Value]) -> Option<&'a Value> {
    let m = messages(line);
    earlier.iter().rev().find(|e| {
        let before = messages(e);
        m.len() == before.len() + 2
            && m[..before.len()] == before[..]
            && m[before.len()] == json!({"role": "assistant", "content": e["answer"]})
            && m[before.len() + 1]["role"] == "user"
    })
}

#[test]
fn each_turn_carries_the_real_answers_and_its_ttft_grows_with_the_history() {
    let _machine = exclusive();
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("record.jsonl");
    // One sequence at a time and one user: no request ever waits for
    // another, so each TTFT is prefill_base + prefill_per_token * input.
    let per_token_ms = 2.0;
    let sim = Sim::start(&[
        "--max-batch",
        "1",
        "--prefill-base",
        "5ms",
        "--prefill-per-token",
        "2ms",
        "--decode-step",
        "2ms",
        "--decode-step-per-seq",
        "0s",
        "--record",
        record.to_str().unwrap(),
    ]);
    let (system, turn_words, answer_words) = (20, 100, 10);
    let sessions: Vec<(String, Vec<String>)> = (0..4)
        .map(|s| {
            let turns = (0..3).map(|t| words(&format!("s{s}t{t}w"), turn_words)).collect();
            (words(&format!("s{s}sys"), system), turns)
        })
        .collect();
    let file = dir.path().join("chats.jsonl");
    let lines: Vec<String> = sessions
        .iter()
        .map(|(sys, turns)| {
            let mut m = vec![json!({"role": "system", "content": sys})];
            for t in turns {
                m.push(json!({"role": "user", "content": t}));
                m.push(json!({"role": "assistant", "content": "a dataset answer the server's replaces"}));
            }
            json!({ "messages": m }).to_string()
        })
        .collect();
    std::fs::write(&file, lines.join("\n")).unwrap();
    let profile = format!(
        r#"
        [target]
        url = "{}"
        [load]
        users = 1
        duration = "7s"
        drain = "30s"
        [request]
        max_tokens = {answer_words}
        [prompts]
        file = "{}"
        sessions = true
        turn_think = "50ms"
        "#,
        sim.url,
        file.display()
    );
    let run = run_profile(&profile, &[]);
    assert_eq!(run.code(), 0, "{}", run.stderr());
    let s = run.summary();

    // What the simulator received: every turn after the first is the
    // previous request, the answer the simulator sent it, and the
    // session's next user turn.
    let log = recorded(&record);
    let mut full_sessions = 0;
    for (i, line) in log.iter().enumerate() {
        let m = messages(line);
        let (sys, turns) = sessions
            .iter()
            .find(|(sys, _)| m[0] == json!({"role": "system", "content": sys}))
            .unwrap_or_else(|| panic!("request {i} starts with no session's system prompt: {m:?}"));
        let turn = (m.len() - 2) / 2;
        assert_eq!(m.len(), 2 + 2 * turn, "request {i}: {m:?}");
        assert_eq!(
            m[m.len() - 1],
            json!({"role": "user", "content": turns[turn]}),
            "request {i}"
        );
        if turn > 0 {
            // One user: the previous request is the previous turn.
            let previous = &log[i - 1];
            assert_eq!(
                continues(line, std::slice::from_ref(previous)).map(|p| p as *const Value),
                Some(previous as *const Value),
                "request {i} does not continue request {}: {m:?}\nafter {previous}",
                i - 1
            );
            assert_eq!(
                previous["answer"].as_str().unwrap().split_whitespace().count(),
                answer_words
            );
        }
        let expected_input = system + (turn + 1) * turn_words + turn * answer_words;
        assert_eq!(line["input_tokens"], expected_input, "request {i}");
        if turn == 2 {
            full_sessions += 1;
        }
        let _ = sys;
    }
    assert!(
        full_sessions >= 2,
        "{full_sessions} sessions of three turns in {} requests",
        log.len()
    );

    // The summary's turns: exact input tokens, TTFT growing by the
    // prefill of the tokens each turn adds.
    let turns = s["turns"].as_array().expect("a turns table");
    assert_eq!(turns.len(), 3, "{turns:#?}");
    for (k, t) in turns.iter().enumerate() {
        assert_eq!(t["turn"], k + 1);
        assert!(num(t, "/requests") >= 2.0, "{t}");
        let input = (system + (k + 1) * turn_words + k * answer_words) as f64;
        assert_eq!(num(t, "/tokens_in/mean"), input, "turn {}", k + 1);
    }
    let ttft = |k: usize| num(&turns[k], "/ttft/mean");
    let added = (turn_words + answer_words) as f64 * per_token_ms;
    for k in 1..3 {
        let grew = ttft(k) - ttft(k - 1);
        eprintln!(
            "turn {} TTFT mean {:.1} ms, turn {} {:.1} ms: grew {grew:.1} ms, prefill model {added:.1} ms",
            k,
            ttft(k - 1),
            k + 1,
            ttft(k)
        );
        assert!(
            relative_error(grew, added) < 0.3,
            "turn {} TTFT {:.1} ms, turn {} {:.1} ms: grew {grew:.1} ms, expected {added:.1} ms",
            k,
            ttft(k - 1),
            k + 1,
            ttft(k)
        );
    }
    let terminal = run.stdout();
    assert!(terminal.contains("each turn sends the whole history"), "{terminal}");
    let dir = run.dir.as_ref().expect("a results directory");
    let html = std::fs::read_to_string(dir.join("report.html")).unwrap();
    assert!(
        html.contains(r#"<section id="turns">"#),
        "the report has the turns table"
    );
}

#[test]
fn synthetic_sessions_on_two_agents_each_continue_their_own_history() {
    let _machine = exclusive();
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("record.jsonl");
    let sim = Sim::start(&[
        "--prefill-base",
        "1ms",
        "--prefill-per-token",
        "20us",
        "--decode-step",
        "2ms",
        "--record",
        record.to_str().unwrap(),
    ]);
    let profile = format!(
        r#"
        seed = 3
        [target]
        url = "{}"
        [load]
        users = 4
        duration = "3s"
        drain = "30s"
        [request]
        max_tokens = 6
        [prompts]
        sessions = true
        [prompts.synthetic]
        count = 8
        input_tokens = 30
        turns = {{ min = 2, max = 4 }}
        system_tokens = 12
        [agents]
        count = 2
        "#,
        sim.url
    );
    let run = run_profile(&profile, &[]);
    assert_eq!(run.code(), 0, "{}", run.stderr());
    let s = run.summary();
    for agent in s["agents"].as_array().unwrap() {
        assert!(num(agent, "/ok") > 0.0, "{agent}");
    }
    // Four users play at once: every request is a session's first turn
    // (the system prompt and one user turn) or continues an earlier
    // request with the answer the simulator sent it.
    let log = recorded(&record);
    let mut later_turns = 0;
    for (i, line) in log.iter().enumerate() {
        let m = messages(line);
        assert_eq!(m[0]["role"], "system", "request {i}");
        assert_eq!(m[0]["content"].as_str().unwrap().split_whitespace().count(), 12);
        if m.len() > 2 {
            assert!(
                continues(line, &log[..i]).is_some(),
                "request {i} continues no earlier request: {m:?}"
            );
            later_turns += 1;
        }
        assert!(m.len() <= 2 + 2 * 3, "request {i}: a fifth turn of at most four: {m:?}");
    }
    assert!(
        later_turns > 0 && later_turns < log.len(),
        "{later_turns} of {}",
        log.len()
    );
    let turns = s["turns"].as_array().expect("a turns table");
    assert!(turns.len() >= 2, "{turns:#?}");
    let by_turn: f64 = turns.iter().map(|t| num(t, "/requests")).sum();
    assert_eq!(by_turn, num(s, "/requests/ok"));

    // The turns are in the run's log: `controller report` rebuilds them.
    let dir = run.dir.as_ref().expect("a results directory");
    let out = tempfile::tempdir().unwrap();
    let rebuilt = controller(&["report", dir.to_str().unwrap(), "--out", out.path().to_str().unwrap()]);
    assert_eq!(
        rebuilt.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&rebuilt.stderr)
    );
    let again: Value = serde_json::from_slice(&std::fs::read(out.path().join("summary.json")).unwrap()).unwrap();
    assert_eq!(again["turns"], s["turns"]);
}

#[test]
fn every_turns_span_names_its_conversation_and_turn() {
    let _machine = exclusive();
    let c = stampede_tests::collector::Collector::start();
    let sim = Sim::start(&[
        "--prefill-base",
        "1ms",
        "--prefill-per-token",
        "10us",
        "--decode-step",
        "2ms",
    ]);
    let service = "stampede-sessions";
    let profile = format!(
        r#"
        seed = 8
        [target]
        url = "{}"
        [load]
        users = 2
        duration = "2s"
        drain = "30s"
        [request]
        max_tokens = 4
        [prompts]
        sessions = true
        [prompts.synthetic]
        count = 4
        input_tokens = 10
        turns = 3
        [trace]
        endpoint = "{}"
        protocol = "grpc"
        service_name = "{service}"
        "#,
        sim.url,
        c.grpc_url()
    );
    let run = run_profile(&profile, &[]);
    assert_eq!(run.code(), 0, "{}", run.stderr());
    let s = run.summary();
    let ok = num(s, "/requests/ok") as usize;
    // Spans arrive on the exporter's schedule: up to 15 s.
    let mut traces = c.traces(service, "llm.request");
    for _ in 0..75 {
        if traces.len() >= ok {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
        traces = c.traces(service, "llm.request");
    }
    assert!(traces.len() >= ok, "{} of {ok} spans arrived", traces.len());
    let tag = |span: &Value, key: &str| {
        span["tags"]
            .as_array()
            .and_then(|t| t.iter().find(|t| t["key"] == key))
            .map(|t| t["value"].clone())
            .unwrap_or_else(|| panic!("no {key} on {span:#}"))
    };
    // Each conversation's turns, in the order they were sent.
    let mut conversations: std::collections::BTreeMap<String, Vec<(u64, i64)>> = Default::default();
    for trace in &traces {
        for span in trace["spans"].as_array().unwrap() {
            if span["operationName"] != "llm.request" {
                continue;
            }
            let id = tag(span, "gen_ai.conversation.id").as_str().unwrap().to_owned();
            assert_eq!(tag(span, "stampede.session"), id.as_str());
            let turn = tag(span, "stampede.turn").as_i64().unwrap();
            conversations
                .entry(id)
                .or_default()
                .push((span["startTime"].as_u64().unwrap(), turn));
        }
    }
    assert!(conversations.len() >= 2, "{conversations:?}");
    let mut by_turn = [0.0; 3];
    for (id, turns) in &mut conversations {
        turns.sort();
        let numbers: Vec<i64> = turns.iter().map(|t| t.1).collect();
        let expected: Vec<i64> = (1..=numbers.len() as i64).collect();
        assert_eq!(
            numbers, expected,
            "conversation {id} plays its turns in order, once each"
        );
        for n in numbers {
            by_turn[n as usize - 1] += 1.0;
        }
    }
    for (k, t) in s["turns"].as_array().unwrap().iter().enumerate() {
        assert_eq!(num(t, "/requests"), by_turn[k], "turn {}", k + 1);
    }
}

#[test]
fn a_failed_turn_ends_its_session_and_the_user_starts_the_next() {
    let _machine = exclusive();
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("record.jsonl");
    // A third of the requests answered 500 at once (never recorded: the
    // engine does not see them).
    let sim = Sim::start(&[
        "--prefill-base",
        "1ms",
        "--prefill-per-token",
        "10us",
        "--decode-step",
        "1ms",
        "--fault",
        "500=0.33",
        "--record",
        record.to_str().unwrap(),
    ]);
    let profile = format!(
        r#"
        seed = 2
        [target]
        url = "{}"
        [load]
        users = 1
        duration = "2s"
        drain = "30s"
        [request]
        max_tokens = 3
        [prompts]
        sessions = true
        [prompts.synthetic]
        count = 3
        input_tokens = 6
        turns = 3
        "#,
        sim.url
    );
    let run = run_profile(&profile, &[]);
    let s = run.summary();
    assert!(num(s, "/requests/failed") > 0.0, "{}", run.stderr());
    // One user: the record is its successful turns in order. A turn after
    // the first always continues the request just before it (a failed
    // turn is never skipped over), and a first turn that follows a first
    // or second turn shows a session that a failure ended.
    let log = recorded(&record);
    // No system prompt: turn k sends 2k - 1 messages.
    let turn_of = |line: &Value| messages(line).len().div_ceil(2);
    let mut ended_early = 0;
    for i in 1..log.len() {
        let (before, now) = (turn_of(&log[i - 1]), turn_of(&log[i]));
        if now > 1 {
            assert!(
                continues(&log[i], &log[i - 1..i]).is_some(),
                "request {i} (turn {now}) does not continue request {} (turn {before})",
                i - 1
            );
        } else if before < 3 {
            ended_early += 1;
        }
    }
    assert!(ended_early > 0, "no session ended early in {} requests", log.len());
}
