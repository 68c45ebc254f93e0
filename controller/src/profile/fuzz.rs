//! A fuzzer over the shipped profiles: each case mutates one (deletes,
//! duplicates or swaps keys, puts extreme or wrong-typed values in them)
//! and runs everything `controller run` does before it opens a socket:
//! validation, the plan, the run's spec, ledger and progress line, each
//! agent's assignment and the agent's own reading of it. No case may
//! panic, and each must end within [`CASE_LIMIT`].

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use proptest::prelude::*;
use proptest::sample::Index;
use stampede_proto::pb;

use super::{Overrides, Profile};
use crate::coordinator::{self, Setup};
use crate::plan;
use crate::report::progress::Progress;
use crate::results::Ledger;
use crate::results::spec::{Facts, Spec};

/// Cases per test run: 8 s in a debug build on a busy two-core machine,
/// where about one mutant in eight passes validation and is planned.
const CASES: u32 = 4000;
/// The longest one case may take; validation and planning take
/// milliseconds, so only a hang comes near it.
const CASE_LIMIT: Duration = Duration::from_secs(20);

/// Values that have broken parsers before: limits, overflows, empty and
/// huge text, floats that are not numbers, wrong types.
fn extreme(i: usize) -> toml::Value {
    use toml::Value;
    let long = "x".repeat(100_000);
    let values = [
        Value::Integer(0),
        Value::Integer(-1),
        Value::Integer(1),
        Value::Integer(i64::MAX),
        Value::Integer(i64::MIN),
        Value::Integer(u32::MAX.into()),
        Value::Integer(10_001),
        Value::Float(f64::NAN),
        Value::Float(f64::INFINITY),
        Value::Float(f64::NEG_INFINITY),
        Value::Float(-0.0),
        Value::Float(1e300),
        Value::Float(1e-300),
        Value::String(String::new()),
        Value::String("1ns".into()),
        Value::String("1ms".into()),
        Value::String("0s".into()),
        Value::String("18446744073709551615s".into()),
        Value::String(format!("{}ms", u64::MAX)),
        Value::String("720h".into()),
        Value::String("721h".into()),
        Value::String("1e309s".into()),
        Value::String("-1s".into()),
        Value::String(long),
        Value::String("http://[::1]:0/".into()),
        Value::String("/dev/zero".into()),
        Value::Boolean(true),
        Value::Array(Vec::new()),
        Value::Array(vec![Value::Integer(0), Value::Float(f64::NAN)]),
        Value::Table(toml::Table::new()),
        // Plausible values, so that more mutants pass validation and
        // reach the plan.
        Value::Integer(2),
        Value::Integer(3),
        Value::Integer(10_000),
        Value::Float(0.5),
        Value::String("2s".into()),
        Value::String("100ms".into()),
        Value::String("1h".into()),
    ];
    values[i % values.len()].clone()
}

/// One change to a profile's document.
#[derive(Clone, Debug)]
enum Mutation {
    /// Remove a key.
    Delete(Index),
    /// Copy a key's value under another key of the document.
    Duplicate(Index, Index),
    /// Swap the values of two keys.
    Swap(Index, Index),
    /// Put an extreme value in a key.
    Extreme(Index, usize),
    /// Repeat one line of the text (a duplicate key, a second table).
    RepeatLine(Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        1 => any::<Index>().prop_map(Mutation::Delete),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Mutation::Duplicate(a, b)),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Mutation::Swap(a, b)),
        3 => (any::<Index>(), any::<usize>()).prop_map(|(a, v)| Mutation::Extreme(a, v)),
        1 => any::<Index>().prop_map(Mutation::RepeatLine),
    ]
}

/// Every key path of a document (an array's tables as `#i`), and those
/// whose value is not a table.
fn paths(table: &toml::Table, prefix: &[String], all: &mut Vec<Vec<String>>, leaves: &mut Vec<Vec<String>>) {
    for (key, value) in table {
        let mut path = prefix.to_vec();
        path.push(key.clone());
        all.push(path.clone());
        match value {
            toml::Value::Table(t) => paths(t, &path, all, leaves),
            toml::Value::Array(items) => {
                leaves.push(path.clone());
                for (i, item) in items.iter().enumerate() {
                    if let toml::Value::Table(t) = item {
                        let mut at = path.clone();
                        at.push(format!("#{i}"));
                        paths(t, &at, all, leaves);
                    }
                }
            }
            _ => leaves.push(path),
        }
    }
}

/// The table that holds the last key of `path`.
fn parent<'t>(root: &'t mut toml::Table, path: &[String]) -> Option<&'t mut toml::Table> {
    let mut table = root;
    let mut i = 0;
    while i + 1 < path.len() {
        let value = table.get_mut(&path[i])?;
        table = match value {
            toml::Value::Table(t) => t,
            toml::Value::Array(items) => {
                i += 1;
                let n: usize = path.get(i)?.strip_prefix('#')?.parse().ok()?;
                match items.get_mut(n)? {
                    toml::Value::Table(t) => t,
                    _ => return None,
                }
            }
            _ => return None,
        };
        i += 1;
    }
    Some(table)
}

fn get(root: &mut toml::Table, path: &[String]) -> Option<toml::Value> {
    parent(root, path)?.get(path.last()?).cloned()
}

fn set(root: &mut toml::Table, path: &[String], value: toml::Value) {
    if let (Some(t), Some(key)) = (parent(root, path), path.last()) {
        t.insert(key.clone(), value);
    }
}

/// The profile's text with `mutations` applied.
fn mutate(text: &str, mutations: &[Mutation]) -> String {
    let Ok(mut doc) = text.parse::<toml::Table>() else {
        return text.to_owned();
    };
    let mut lines = Vec::new();
    for m in mutations {
        let (mut all, mut leaves) = (Vec::new(), Vec::new());
        paths(&doc, &[], &mut all, &mut leaves);
        if leaves.is_empty() {
            break;
        }
        let pick = |i: &Index| all[i.index(all.len())].clone();
        let leaf = |i: &Index| leaves[i.index(leaves.len())].clone();
        match m {
            Mutation::Delete(a) => {
                let a = pick(a);
                if let (Some(t), Some(key)) = (parent(&mut doc, &a), a.last()) {
                    t.remove(key);
                }
            }
            Mutation::Duplicate(a, b) => {
                let (a, b) = (pick(a), pick(b));
                if let Some(v) = get(&mut doc, &a) {
                    set(&mut doc, &b, v);
                }
            }
            Mutation::Swap(a, b) => {
                let (a, b) = (leaf(a), leaf(b));
                if let (Some(va), Some(vb)) = (get(&mut doc, &a), get(&mut doc, &b)) {
                    set(&mut doc, &a, vb);
                    set(&mut doc, &b, va);
                }
            }
            Mutation::Extreme(a, v) => {
                let a = leaf(a);
                set(&mut doc, &a, extreme(*v));
            }
            Mutation::RepeatLine(a) => lines.push(*a),
        }
    }
    let mut text = toml::to_string(&doc).unwrap_or_default();
    let original: Vec<String> = text.lines().map(str::to_owned).collect();
    for a in lines {
        if !original.is_empty() {
            let line = &original[a.index(original.len())];
            text.push_str(line);
            text.push('\n');
        }
    }
    text
}

/// Everything a run does with a profile before the network: the result
/// says how far it got, for the failure message.
fn plan_run(text: &str, path: &Path) -> String {
    let profile = match Profile::parse(text, path, &Overrides::default()) {
        Ok(p) => p,
        Err(e) => return format!("refused: {}", e.to_string().lines().next().unwrap_or("")),
    };
    let count = profile.agents.get();
    let slices = match plan::slices(&profile, count) {
        Ok(s) => s,
        Err(e) => return format!("no plan: {e}"),
    };
    let spec = Spec::new(
        &profile,
        Facts {
            run_id: "fuzz",
            target_url: "http://127.0.0.1:9",
            model: "m",
            agents: slices.iter().map(plan::Slice::peak_users).collect(),
            trace: None,
            run_trace_id: "0",
            server_metrics: None,
        },
    );
    let _ledger = Ledger::new(&spec, None);
    // The metrics push, as the environment leaves it to the profile.
    let env = stampede_otel::MetricsFromEnv::default();
    if let Some(push) = profile.metrics.resolve(&env, profile.report.interval, "fuzz")
        && let Err(e) = crate::report::otlp::check(&push)
    {
        return format!("the metrics push is refused: {e}");
    }
    let _progress = Progress::new(profile.report.interval, &profile.load, false);
    let seed = plan::mix(profile.seed ^ 0x5C4E_D01E);
    let mut target = pb::Target {
        url: "http://127.0.0.1:9".to_owned(),
        model: "m".to_owned(),
        timeout_ms: u64::try_from(profile.target.timeout.as_millis()).unwrap_or(u64::MAX),
        ..pb::Target::default()
    };
    stampede_agent::assignment::target_fields(&profile.target.api, &mut target);
    // The assignments as the coordinator builds them.
    let setup = Setup {
        run_id: "fuzz".to_owned(),
        slices: slices.clone(),
        target,
        request: pb::RequestSpec {
            max_tokens: profile.request.max_tokens,
            temperature: profile.request.temperature,
            stream: profile.request.stream,
        },
        prompts: profile.prompts.clone(),
        sessions: profile.sessions.map(|s| s.think),
        load: profile.load.clone(),
        schedule_seed: seed,
        interval: profile.report.interval,
        start_delay: Duration::ZERO,
        join_timeout: Duration::ZERO,
        capabilities: Vec::new(),
        on_agent_loss: profile.on_agent_loss,
        liveness: profile.liveness,
        live: None,
        otlp: None,
        trace: None,
        slo: profile.slo.as_ref().map(super::Slo::to_wire),
        thresholds: Vec::new(),
        local: true,
    };
    // The first and last agents' shares: the split's edges.
    let ends = [slices.first(), slices.last()];
    for slice in ends.into_iter().flatten() {
        let assignment = pb::Assignment {
            session_secret: "0".repeat(64),
            ..coordinator::assignment(&setup, slice)
        };
        if let Err(e) = stampede_agent::assignment::Plan::from_wire(assignment) {
            return format!("an agent refuses its assignment: {e}");
        }
    }
    "planned".to_owned()
}

/// The shipped profiles, with their paths (files they name are relative
/// to them).
fn shipped() -> &'static [(PathBuf, String)] {
    static SHIPPED: std::sync::OnceLock<Vec<(PathBuf, String)>> = std::sync::OnceLock::new();
    SHIPPED.get_or_init(read_shipped)
}

fn read_shipped() -> Vec<(PathBuf, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../load-profiles");
    let mut out = Vec::new();
    for dir in [root.clone(), root.join("examples")] {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(&dir)
            .expect("load-profiles/ is in the repository")
            .map(|e| e.expect("a readable entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .collect();
        entries.sort();
        for path in entries {
            let text = std::fs::read_to_string(&path).expect("a shipped profile reads");
            out.push((path, text));
        }
    }
    out
}

/// Runs one case on a thread of its own, so that a hang fails the test
/// instead of stalling it.
fn bounded(text: String, path: PathBuf) -> Result<String, String> {
    let (tx, rx) = mpsc::channel();
    let shown = text.chars().take(2_000).collect::<String>();
    std::thread::Builder::new()
        .name("fuzz-case".to_owned())
        .spawn(move || {
            let outcome = std::panic::catch_unwind(|| plan_run(&text, &path));
            let _ = tx.send(outcome);
        })
        .expect("a thread starts");
    match rx.recv_timeout(CASE_LIMIT) {
        Ok(Ok(outcome)) => Ok(outcome),
        Ok(Err(_)) => Err(format!("panicked on this profile:\n{shown}")),
        Err(_) => Err(format!("took over {CASE_LIMIT:?} on this profile:\n{shown}")),
    }
}

#[test]
fn every_shipped_profile_plans_unchanged() {
    let profiles = shipped();
    assert!(profiles.len() >= 10, "{} profiles", profiles.len());
    for (path, text) in profiles {
        let outcome = bounded(text.clone(), path.clone()).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        // Headers from unset variables make an example's agents refuse;
        // everything else must plan.
        assert!(
            outcome == "planned" || outcome.contains("environment variable"),
            "{}: {outcome}",
            path.display()
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: CASES,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn mutated_profiles_never_panic_or_hang(
        which in any::<Index>(),
        mutations in proptest::collection::vec(mutation(), 1..4),
    ) {
        let profiles = shipped();
        let (path, text) = &profiles[which.index(profiles.len())];
        let mutated = mutate(text, &mutations);
        if let Err(e) = bounded(mutated, path.clone()) {
            prop_assert!(false, "{}: {e}", path.display());
        }
    }
}
