//! The controller's live Prometheus endpoint and the Grafana dashboard that
//! reads it, against real processes on loopback:
//!
//! - a real Prometheus with exemplar storage scrapes a traced run; the
//!   exemplars it stores on the latency buckets sit in their buckets and
//!   each names a trace the OTLP collector received; the 0.0.4 text
//!   passes `promtool check metrics`;
//! - every metric that a dashboard query names (read from the dashboard's
//!   PromQL, not from a list kept here) is served during a run of llm-sim
//!   with its DCGM page and agents started with `--gpu`, every query
//!   selects the dashboard's run, and the latency panels link exemplars to
//!   the Jaeger datasource.
//!
//! A test that needs Prometheus is reported as ignored when it is missing
//! (a failure with `STAMPEDE_REQUIRE_PEERS=1`, as in CI).

// These tests time real processes from outside; there is no tokio clock to
// share here. Their helpers panic on failure: that is how a test fails.
#![allow(clippy::disallowed_types, clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use stampede_tests::collector::Collector;
use stampede_tests::harness::{Missing, Outcome};
use stampede_tests::prom::{self, Prometheus};
use stampede_tests::{bin, exclusive, repo};

stampede_tests::suite![
    promql_metric_names_leave_out_functions_keywords_and_labels,
    prometheus_keeps_exemplars_that_name_exported_traces,
    every_dashboard_query_names_a_metric_served_during_a_run,
];

fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

/// Starts `controller run PROFILE --metrics-addr 127.0.0.1:0 ARGS`; its
/// live address and the results folder.
fn start_controller(dir: &std::path::Path, profile: &str, args: &[&str]) -> (Child, SocketAddr) {
    let path = dir.join("profile.toml");
    std::fs::write(&path, profile).unwrap();
    let mut child = Command::new(bin("controller"))
        .args(["run", path.to_str().unwrap(), "--metrics-addr", "127.0.0.1:0"])
        .args(["--out", dir.join("results").to_str().unwrap()])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let live = prom::live_addr(child.stderr.take().unwrap(), &dir.join("controller.stderr"));
    (child, live)
}

/// Waits for the controller; panics with its output unless it passed.
fn finish(mut child: Child, dir: &std::path::Path) {
    let mut stdout = String::new();
    child.stdout.take().unwrap().read_to_string(&mut stdout).unwrap();
    let status = child.wait().unwrap();
    let stderr = std::fs::read_to_string(dir.join("controller.stderr")).unwrap_or_default();
    assert!(status.success(), "{status}\n{stdout}\n{stderr}");
}

/// The `le` bounds of a histogram's buckets as served, in order.
fn bounds(text: &str, family: &str) -> Vec<f64> {
    let prefix = format!("{family}_bucket{{le=\"");
    text.lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter_map(|rest| rest.split('"').next())
        .map(|le| {
            if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap()
            }
        })
        .collect()
}

/// A real Prometheus (exemplar storage on, a scrape a second) scrapes a run
/// with tracing on to the tests' collector. The exemplars it keeps for the
/// four latency histograms carry the run's id, each lies in its bucket
/// (above the bound below, at most its own), and each names a trace the
/// collector received.
fn prometheus_keeps_exemplars_that_name_exported_traces() -> Outcome {
    prom::binary()?;
    let _machine = exclusive();
    let tmp = tempfile::tempdir().unwrap();
    let collector = Collector::start();
    // 8 users, 24 tokens at 10 ms a token for 10 s: about 30 requests a
    // second, a tenth of them traced by the ratio.
    let profile = format!(
        "name = \"exemplars\"\n[load]\nusers = 8\nduration = \"10s\"\ndrain = \"10s\"\n\
         [request]\nmax_tokens = 24\n[agents]\ncount = 2\n\
         [sim]\nmax_batch = 16\ndecode_step = \"10ms\"\ndecode_step_per_seq = \"0s\"\n\
         [trace]\nendpoint = \"{}\"\nprotocol = \"grpc\"\nsample_ratio = 0.1\nservice_name = \"stampede-live\"\n",
        collector.grpc_url()
    );
    let started = unix_now();
    let (child, live) = start_controller(tmp.path(), &profile, &[]);
    let prometheus = Prometheus::start_with(
        "stampede-controller",
        &[live.to_string()],
        &["--enable-feature=exemplar-storage"],
    );
    // During the load, once a request has ended: both formats as a
    // scraper sees them.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !prom::get_accepting(live, "/metrics", None).is_some_and(|(_, _, text)| {
        text.lines()
            .any(|l| l.starts_with("stampede_requests_total{") && !l.ends_with(" 0"))
    }) {
        assert!(Instant::now() < deadline, "no request ended within 30 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (status, content_type, text) = prom::get_accepting(live, "/metrics", None).unwrap();
    assert_eq!(
        (status, content_type.as_str()),
        (200, "text/plain; version=0.0.4; charset=utf-8")
    );
    assert!(!text.contains(" # {"), "exemplars in the 0.0.4 format:\n{text}");
    let om_accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5";
    let (_, om_type, om) = prom::get_accepting(live, "/metrics", Some(om_accept)).unwrap();
    assert_eq!(om_type, "application/openmetrics-text; version=1.0.0; charset=utf-8");
    assert!(om.ends_with("# EOF\n"), "{om}");
    promtool_accepts(&text)?;
    finish(child, tmp.path());
    let end = unix_now();

    let up = prometheus.query("max_over_time(up{job=\"stampede-controller\"}[20s])", end);
    assert_eq!(up[0]["value"][1], "1", "{}", prometheus.log());
    let info = prometheus.query("last_over_time(stampede_run_info[30s])", end);
    let run_id = info[0]["metric"]["run_id"].as_str().unwrap().to_owned();
    let mut traces = BTreeSet::new();
    let mut buckets = BTreeMap::new();
    for family in [
        "stampede_ttft_seconds",
        "stampede_itl_seconds",
        "stampede_tpot_seconds",
        "stampede_e2e_seconds",
    ] {
        let served = bounds(&text, family);
        let series = prometheus.exemplars(&format!("{family}_bucket"), started - 1.0, end + 1.0);
        let mut count = 0;
        for s in &series {
            assert_eq!(s["seriesLabels"]["run_id"], run_id.as_str(), "{s}");
            let le = s["seriesLabels"]["le"].as_str().unwrap();
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap()
            };
            let below = served.iter().copied().filter(|b| *b < bound).fold(0.0, f64::max);
            for e in s["exemplars"].as_array().unwrap() {
                let value: f64 = e["value"].as_str().unwrap().parse().unwrap();
                assert!(value > below && value <= bound, "{family}: {value} in le={le}: {e}");
                let id = e["labels"]["trace_id"].as_str().unwrap().to_owned();
                assert_eq!(id.len(), 32, "{e}");
                traces.insert(id);
                count += 1;
            }
        }
        assert!(count > 0, "no exemplar of {family}: {series:?}\n{}", prometheus.log());
        buckets.insert(family, series.len());
    }
    // Every trace named reached the collector (the controller has ended,
    // so its agents flushed their spans).
    let missing: Vec<&String> = traces.iter().filter(|id| collector.otlp_spans(id).is_empty()).collect();
    assert!(
        missing.is_empty(),
        "{} of {} exemplars name traces the collector never received: {missing:?}",
        missing.len(),
        traces.len()
    );
    eprintln!(
        "{} exemplar traces, all in the collector; buckets with exemplars: {buckets:?}",
        traces.len()
    );
    Ok(())
}

/// `promtool check metrics` reads the 0.0.4 text without a problem.
fn promtool_accepts(text: &str) -> Result<(), Missing> {
    let Ok(mut child) = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    else {
        return Err(Missing::new(
            "promtool is not installed (Debian's prometheus package has it)",
        ));
    };
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics: {said}\n{text}"
    );
    Ok(())
}

/// PromQL's reserved words: keywords, and the aggregation operators
/// (which may be followed by `by (…)` rather than by their parenthesis).
const KEYWORDS: [&str; 27] = [
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "offset",
    "bool",
    "and",
    "or",
    "unless",
    "atan2",
    "inf",
    "nan",
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
];

/// The metric names a PromQL expression selects: identifiers that are
/// not a function or aggregation (followed by `(`), a keyword, a label
/// name (inside `{…}` or a `by (…)` list), a string, a range (`[…]`) or a
/// dashboard variable (`$…`).
fn promql_metric_names(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    let skip_to = |mut i: usize, close: char| {
        let mut quoted = None;
        while i < chars.len() {
            match (quoted, chars[i]) {
                (Some(q), '\\') if q != '`' => i += 1,
                (Some(q), c) if c == q => quoted = None,
                (None, c @ ('"' | '\'' | '`')) => quoted = Some(c),
                (None, c) if c == close => return i + 1,
                _ => {}
            }
            i += 1;
        }
        i
    };
    let mut labels_next = false;
    while i < chars.len() {
        let c = chars[i];
        if c == '{' {
            i = skip_to(i + 1, '}');
        } else if c == '[' {
            i = skip_to(i + 1, ']');
        } else if matches!(c, '"' | '\'' | '`') {
            i = skip_to(i + 1, c);
        } else if c == '$' {
            i += 1;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
        } else if c == '(' && labels_next {
            labels_next = false;
            i = skip_to(i + 1, ')');
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':') {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut j = i;
            while j < chars.len() && chars[j].is_whitespace() {
                j += 1;
            }
            let lower = word.to_ascii_lowercase();
            if matches!(
                lower.as_str(),
                "by" | "without" | "on" | "ignoring" | "group_left" | "group_right"
            ) {
                labels_next = true;
            } else if KEYWORDS.contains(&lower.as_str()) || chars.get(j) == Some(&'(') {
                // A keyword, or a function or aggregation.
            } else {
                names.insert(word);
            }
        } else if c.is_ascii_digit() || c == '.' {
            // A number (1e-3, 0x1f, 0.5): no metric starts with a digit.
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else {
            i += 1;
        }
    }
    names
}

fn promql_metric_names_leave_out_functions_keywords_and_labels() -> Outcome {
    let names = |e: &str| promql_metric_names(e).into_iter().collect::<Vec<_>>();
    assert_eq!(
        names(
            "histogram_quantile(0.95, sum by (le, source) (rate(a_bucket{run_id=\"$run\",x=~\"b|c{\"}[$__rate_interval])))"
        ),
        ["a_bucket"]
    );
    assert_eq!(
        names("sum(rate(x_sum[5m] offset 1m)) / on(job) group_left(instance) sum(rate(y_count[1m])) > bool 2e-3"),
        ["x_sum", "y_count"]
    );
    assert_eq!(
        names("max without (gpu) (up) or vector(1) and ns:rule:rate5m"),
        ["ns:rule:rate5m", "up"]
    );
    assert_eq!(
        names("label_values(stampede_run_info, run_id)"),
        ["run_id", "stampede_run_info"]
    );
    Ok(())
}

/// The served metric names of a scrape: every `# TYPE` family and every
/// sample's name, so a histogram's `_bucket`, `_sum` and `_count` count.
fn scrape_names(live: SocketAddr, names: &mut BTreeSet<String>) {
    let (status, text) = prom::get(live, "/metrics").expect("live metrics answer");
    assert_eq!(status, 200);
    names.extend(prom::metric_names(&text));
}

/// Every metric a dashboard query names is served during a run against
/// llm-sim with its DCGM page, KV cache and agents started with `--gpu`
/// (no GPU here: the agents' NVML sampler finds none, so the GPU series
/// are DCGM's); every selector names the dashboard's run; the run
/// variable reads `stampede_run_info`; the latency panels ask for
/// exemplars and the Prometheus datasource sends their trace ids to the
/// Jaeger datasource.
fn every_dashboard_query_names_a_metric_served_during_a_run() -> Outcome {
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(repo().join("docker/grafana/dashboards/stampede.json")).unwrap())
            .expect("the dashboard is JSON");
    let sources: Value = serde_yaml::from_str(
        &std::fs::read_to_string(repo().join("docker/grafana/provisioning/datasources/stampede.yaml")).unwrap(),
    )
    .unwrap();
    let datasources = sources["datasources"].as_array().unwrap();
    let uid_of = |kind: &str| {
        datasources
            .iter()
            .find(|d| d["type"] == kind)
            .and_then(|d| d["uid"].as_str())
            .unwrap_or_else(|| panic!("no {kind} datasource"))
    };
    let (prometheus_uid, jaeger_uid) = (uid_of("prometheus"), uid_of("jaeger"));
    let links =
        &datasources.iter().find(|d| d["type"] == "prometheus").unwrap()["jsonData"]["exemplarTraceIdDestinations"];
    assert!(
        links
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["name"] == "trace_id" && l["datasourceUid"] == jaeger_uid),
        "{links:?}"
    );
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    let run = variables.iter().find(|v| v["name"] == "run").expect("a run variable");
    let run_query = run["query"]["query"].as_str().or(run["query"].as_str()).unwrap();
    assert_eq!(run_query, "label_values(stampede_run_info, run_id)");
    assert_eq!(run["datasource"]["uid"], prometheus_uid);

    let mut wanted: BTreeMap<String, Vec<String>> = BTreeMap::new();
    wanted
        .entry("stampede_run_info".to_owned())
        .or_default()
        .push("the run variable".to_owned());
    let mut exemplar_panels = BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        let title = panel["title"].as_str().unwrap();
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title} has no query");
        for target in targets {
            let expr = target["expr"].as_str().unwrap();
            let names = promql_metric_names(expr);
            assert!(!names.is_empty(), "{title}: {expr} names no metric");
            // Every selector picks the dashboard's run.
            for name in &names {
                assert!(
                    expr.contains(&format!("{name}{{run_id=\"$run\"")),
                    "{title}: {expr}: {name} does not select run_id=\"$run\""
                );
                wanted.entry(name.clone()).or_default().push(title.to_owned());
            }
            if target["exemplar"] == true {
                exemplar_panels.insert(title.to_owned());
            }
            assert_eq!(panel["datasource"]["uid"], prometheus_uid, "{title}");
        }
    }
    for latency in [
        "Time to first token",
        "Inter-token latency",
        "Time per output token",
        "End-to-end latency",
    ] {
        assert!(
            exemplar_panels.contains(latency),
            "{latency} shows no exemplars: {exemplar_panels:?}"
        );
    }

    let _machine = exclusive();
    let tmp = tempfile::tempdir().unwrap();
    let profile = "name = \"dashboard\"\n[load]\nusers = 4\nduration = \"6s\"\ndrain = \"5s\"\n\
                   [request]\nmax_tokens = 16\n[agents]\ncount = 2\n\
                   [server_metrics]\ninterval = \"250ms\"\n\
                   [sim]\nmax_batch = 8\ndecode_step = \"10ms\"\ndcgm = true\nkv_cache_tokens = 65536\n";
    let (child, live) = start_controller(tmp.path(), profile, &["--gpu"]);
    let mut served = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        scrape_names(live, &mut served);
        let missing: Vec<&String> = wanted.keys().filter(|n| !served.contains(*n)).collect();
        if missing.is_empty() || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    finish(child, tmp.path());
    let missing: BTreeMap<&String, &Vec<String>> = wanted.iter().filter(|(n, _)| !served.contains(*n)).collect();
    assert!(
        missing.is_empty(),
        "dashboard metrics the controller never served (metric: panels): {missing:?}\nserved: {served:?}"
    );
    eprintln!("{} metrics named by the dashboard, all served", wanted.len());
    Ok(())
}
