//! The summary table printed at the end of a run: one function per block,
//! each reading the summary and writing its lines.

use std::fmt::Write as _;

use super::grouped;
use super::summary::{Figure, Grading, MetricSummary, Status, Summary};
use crate::server::Canon;

/// Width of a row's label in the metric tables.
const LABEL: usize = 20;

/// The table, as printed. `files`: what the run wrote, as (label, path),
/// listed last.
pub fn render(s: &Summary, files: &[(&'static str, String)]) -> String {
    let mut out = String::new();
    let o = &mut out;
    header(o, s);
    totals(o, s);
    agents(o, s);
    errors(o, s);
    metrics(o, s);
    classes(o, s);
    turns(o, s);
    steps(o, s);
    schedule(o, s);
    tracing(o, s);
    server(o, s);
    prefix_cache(o, s);
    findings(o, s);
    thresholds(o, s);
    verdict(o, s);
    for (label, path) in files {
        let _ = writeln!(o, "{label:<10}{path}");
    }
    out
}

fn plural(n: u64) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn header(o: &mut String, s: &Summary) {
    let target = if s.target.simulated {
        format!("{} (built-in llm-sim)", s.target.url)
    } else {
        s.target.url.clone()
    };
    let load = if let Some(t) = &s.load.trace {
        t.describe()
    } else {
        match (s.load.users, s.load.rate) {
            (Some(u), _) => format!("{u} user{}", plural(u64::from(u))),
            (_, Some(r)) => format!("{r} req/s ({})", s.load.arrival.unwrap_or("poisson")),
            _ => String::new(),
        }
    };
    let shape = match s.load.shape {
        "stages" => format!(" in {} stages", s.steps.len()),
        "sweep" => format!(" in a sweep of {} steps", s.steps.len()),
        _ => String::new(),
    };
    let _ = writeln!(
        o,
        "\nstampede run {} · {load}{shape} over {} agent{} · {:.1}s",
        s.run_id,
        s.load.agents,
        plural(u64::from(s.load.agents)),
        s.duration_s
    );
    let model = if s.target.model.is_empty() {
        "no model named".to_owned()
    } else {
        format!("model {}", s.target.model)
    };
    let _ = writeln!(o, "target    {target} · {} · {model}", s.target.api);
}

fn totals(o: &mut String, s: &Summary) {
    let r = &s.requests;
    let _ = writeln!(
        o,
        "requests  {} ok · {} failed · {} cancelled · {:.2} req/s",
        grouped(r.ok),
        grouped(r.failed),
        grouped(r.cancelled),
        s.throughput.requests_per_s
    );
    let t = &s.tokens;
    let input_source = if t.input_source == "server usage" {
        String::new()
    } else {
        format!(" ({})", t.input_source)
    };
    let _ = writeln!(
        o,
        "tokens    in {}{input_source} · out {} ({}) · {:.1} out tok/s · TPM {}",
        grouped(t.input),
        grouped(t.output),
        t.source,
        s.throughput.output_tokens_per_s,
        grouped(s.throughput.tpm.round() as u64)
    );
    let pairs = [
        ("server vs events", &t.agreement.server_vs_events),
        ("server vs tokenizer", &t.agreement.server_vs_tokenizer),
        ("events vs tokenizer", &t.agreement.events_vs_tokenizer),
    ];
    let compared: Vec<String> = pairs
        .iter()
        .filter_map(|(name, d)| {
            let d = d.as_ref()?;
            Some(format!(
                "{name} {:+.1}% ({} of {} requests differ, mean |diff| {:.1})",
                d.relative_difference * 100.0,
                grouped(d.requests_differing),
                grouped(d.requests),
                d.mean_abs_difference
            ))
        })
        .collect();
    if !compared.is_empty() {
        let _ = writeln!(o, "counts    {}", compared.join(" · "));
    }
    if let (Some(g), Some(slo)) = (&s.goodput, &s.slo) {
        let _ = writeln!(
            o,
            "goodput   {} of {} requests met {} ({:.1}%) · {:.2} good req/s · {:.1} good out tok/s",
            grouped(g.requests),
            grouped(r.ok + r.failed),
            slo.words,
            g.ratio * 100.0,
            g.requests_per_s,
            g.output_tokens_per_s
        );
    }
}

fn agents(o: &mut String, s: &Summary) {
    match (s.start_skew.measured, s.start_skew.max_ms, s.start_skew.spread_ms) {
        (1, Some(max), _) => {
            let _ = writeln!(o, "agents    1 began {max:.1} ms from the planned start");
        }
        (n, Some(max), Some(spread)) => {
            let _ = writeln!(
                o,
                "agents    {n} began within {spread:.1} ms of each other (max {max:.1} ms from the planned start)"
            );
        }
        _ => {}
    }
    for a in s.agents.iter().filter(|a| a.lost_at_s.is_some()) {
        let _ = writeln!(
            o,
            "lost      {} at {:.1}s after interval {} ({} users): {}",
            a.name,
            a.lost_at_s.unwrap_or_default(),
            a.last_interval.map_or_else(|| "none".to_owned(), |i| i.to_string()),
            a.users,
            a.reason.as_deref().unwrap_or("")
        );
    }
    if !s.lost.agents.is_empty() {
        let _ = writeln!(
            o,
            "          {:.0}% of the users and {:.0}% of the planned load were lost, with {} requests in flight",
            s.lost.users_share * 100.0,
            s.lost.load_share * 100.0,
            grouped(s.lost.requests)
        );
    }
    for a in s.agents.iter().filter(|a| a.stopped_early.is_some()) {
        let _ = writeln!(
            o,
            "stopped   {} ended its load early: {}",
            a.name,
            a.stopped_early.as_deref().unwrap_or("")
        );
    }
}

fn errors(o: &mut String, s: &Summary) {
    for (class, e) in &s.errors {
        let first = e.first_message.as_deref().unwrap_or("");
        let _ = writeln!(o, "errors    {class} × {}: {first}", grouped(e.count));
    }
}

fn metric_row(o: &mut String, label: &str, m: &MetricSummary) {
    if m.count == 0 {
        let _ = writeln!(o, "{label:<LABEL$}{:>9}  (no samples)", 0);
        return;
    }
    let precision = if m.unit == "ms" { 1 } else { 0 };
    let _ = write!(o, "{label:<LABEL$}{:>9}", grouped(m.count));
    for v in [m.mean, m.min, m.p50, m.p90, m.p95, m.p99, m.p99_9, m.max] {
        let _ = write!(o, "{v:>10.precision$}");
    }
    o.push('\n');
}

fn metrics(o: &mut String, s: &Summary) {
    let _ = writeln!(
        o,
        "\n{:<LABEL$}{:>9}{:>10}{:>10}{:>10}{:>10}{:>10}{:>10}{:>10}{:>10}",
        "", "count", "mean", "min", "p50", "p90", "p95", "p99", "p99.9", "max"
    );
    let m = &s.metrics;
    metric_row(o, "TTFT (ms)", &m.ttft);
    metric_row(o, "ITL (ms)", &m.itl);
    metric_row(o, "chunk gap (ms)", &m.chunk_gap);
    metric_row(o, "TPOT (ms)", &m.tpot);
    metric_row(o, "E2E (ms)", &m.e2e);
    metric_row(o, "client queue (ms)", &m.client_queue);
    metric_row(o, "connect (ms)", &m.connect);
    metric_row(o, "tokens in", &m.input_tokens);
    metric_row(o, "tokens out", &m.output_tokens);
    // What the server says each request spent, when it says (Ollama,
    // http-json).
    for (label, metric) in [
        ("server prefill (ms)", &m.server_prefill),
        ("server decode (ms)", &m.server_decode),
        ("model load (ms)", &m.model_load),
        ("server time (ms)", &m.server_time),
    ] {
        if metric.count > 0 {
            metric_row(o, label, metric);
        }
    }
    metric_row(o, "TTFT* (ms)", &m.ttft_intended);
    metric_row(o, "E2E* (ms)", &m.e2e_intended);
    metric_row(o, "lag (ms)", &m.schedule_lag);
    let _ = writeln!(
        o,
        "          * from the intended start; lag: how late the agent sent (from the intended start, or a paced user's end of its previous request)\n          client queue: intended start to the request's write, on this side (the server's queue is below)"
    );
    grades(o, &s.grades);
}

/// TTFT and TPOT with their grades and the bands that gave them.
fn grades(o: &mut String, g: &Grading) {
    let graded = g.graded();
    if graded.is_empty() {
        return;
    }
    let said: Vec<String> = graded
        .iter()
        .map(|(name, x)| {
            // With the digits it takes to tell it from the nearer band's
            // edge: 500.04 ms is "poor" beside "under 500", never "500.0".
            let edge = if (x.value_ms - x.good_under_ms).abs() < (x.value_ms - x.acceptable_under_ms).abs() {
                x.good_under_ms
            } else {
                x.acceptable_under_ms
            };
            let (value, _) = crate::figure::beside(x.value_ms, edge, 1);
            format!("{name} {} {value} ms {}", g.statistic, x.grade.name())
        })
        .collect();
    let bands: Vec<String> = graded
        .iter()
        .map(|(name, x)| {
            format!(
                "{name} good under {}, acceptable under {} ms",
                x.good_under_ms, x.acceptable_under_ms
            )
        })
        .collect();
    let _ = writeln!(o, "grades    {}  ({})", said.join(" · "), bands.join("; "));
}

fn classes(o: &mut String, s: &Summary) {
    if s.classes.is_empty() {
        return;
    }
    let _ = writeln!(
        o,
        "\n{:<10}{:>9}{:>8}{:>9}{:>9}{:>11}{:>10}{:>11}{:>11}{:>10}{:>11}{:>11}",
        "class",
        "requests",
        "failed",
        "tok in",
        "tok out",
        "TPM",
        "out tok/s",
        "TTFT p50",
        "TTFT p95",
        "ITL p50",
        "E2E p50",
        "E2E p95"
    );
    for c in &s.classes {
        let good = c
            .goodput
            .filter(|_| c.requests > 0)
            .map(|g| format!("{:>9.1}% good", g.ratio * 100.0))
            .unwrap_or_default();
        // A class with no successes has no figures, only its failures.
        let f = |v: f64, decimals: usize| {
            if c.requests == 0 {
                "-".to_owned()
            } else {
                format!("{v:.decimals$}")
            }
        };
        let _ = writeln!(
            o,
            "{:<10}{:>9}{:>8}{:>9}{:>9}{:>11}{:>10}{:>11}{:>11}{:>10}{:>11}{:>11}{good}",
            c.class,
            grouped(c.requests),
            grouped(c.failed),
            f(c.tokens_in.mean, 0),
            f(c.tokens_out.mean, 0),
            grouped(c.tpm.round() as u64),
            f(c.output_tokens_per_s, 1),
            f(c.ttft.p50, 1),
            f(c.ttft.p95, 1),
            f(c.itl.p50, 1),
            f(c.e2e.p50, 1),
            f(c.e2e.p95, 1)
        );
    }
    let cover = if s.classes_whole_run {
        "whole run, warm-ups included"
    } else {
        "measured time, warm-ups left out"
    };
    if s.lost.requests > 0 {
        let _ = writeln!(
            o,
            "          the {} requests in flight on lost agents are in no class",
            grouped(s.lost.requests)
        );
    }
    let by = match s.classes_by {
        crate::dataset::ClassBy::Tokens => "classed by tokens",
        crate::dataset::ClassBy::Characters => "classed by characters",
        crate::dataset::ClassBy::Words => "classed by words",
    };
    let _ = writeln!(
        o,
        "          tok in / tok out: mean per request; times in ms; {cover}; {by}"
    );
}

/// Sessions only: the figures of each turn, so that the cost of a growing
/// history shows.
fn turns(o: &mut String, s: &Summary) {
    if s.turns.is_empty() {
        return;
    }
    let _ = writeln!(
        o,
        "\n{:<10}{:>9}{:>9}{:>9}{:>11}{:>11}{:>11}{:>11}{:>11}",
        "turn", "requests", "tok in", "tok out", "TTFT mean", "TTFT p50", "TTFT p95", "E2E mean", "E2E p95"
    );
    for t in &s.turns {
        let label = if t.and_later {
            format!("{}+", t.turn)
        } else {
            t.turn.to_string()
        };
        let _ = writeln!(
            o,
            "{:<10}{:>9}{:>9.0}{:>9.0}{:>11.1}{:>11.1}{:>11.1}{:>11.1}{:>11.1}",
            label,
            grouped(t.requests),
            t.tokens_in.mean,
            t.tokens_out.mean,
            t.ttft.mean,
            t.ttft.p50,
            t.ttft.p95,
            t.e2e.mean,
            t.e2e.p95
        );
    }
    let _ = writeln!(
        o,
        "          each turn sends the whole history; tok in / tok out: mean per request; times in ms; measured time"
    );
}

fn steps(o: &mut String, s: &Summary) {
    if s.steps.len() > 1 {
        let _ = writeln!(
            o,
            "\n{:<14}{:>10}{:>12}{:>12}{:>12}{:>12}{:>10}",
            "step", "req/s", "out tok/s", "TTFT p50", "TTFT p95", "E2E p95", "errors"
        );
        for row in &s.steps {
            let good = row
                .goodput
                .map(|g| format!("{:>9.1}% good", g.ratio * 100.0))
                .unwrap_or_default();
            let _ = writeln!(
                o,
                "{:<14}{:>10.2}{:>12.1}{:>12.1}{:>12.1}{:>12.1}{:>9.1}%{good}",
                row.label,
                row.throughput.requests_per_s,
                row.throughput.output_tokens_per_s,
                row.metrics.ttft.p50,
                row.metrics.ttft.p95,
                row.metrics.e2e.p95,
                row.requests.error_rate * 100.0
            );
        }
    }
    if let (Some(c), Some(slo)) = (&s.capacity, &s.slo) {
        match (&c.label, c.ratio) {
            (Some(label), Some(ratio)) => {
                let _ = writeln!(
                    o,
                    "capacity  {label}: {:.1}% of requests met {} ({:.2} good req/s), at least {:.0}% at every load up to it",
                    ratio * 100.0,
                    slo.words,
                    c.goodput_requests_per_s.unwrap_or(0.0),
                    slo.ratio * 100.0
                );
            }
            _ => {
                let _ = writeln!(
                    o,
                    "capacity  none: fewer than {:.0}% of requests met {} even at the lowest load",
                    slo.ratio * 100.0,
                    slo.words
                );
            }
        }
    }
    if let Some(knee) = &s.knee {
        match &knee.label {
            Some(label) => {
                let _ = writeln!(
                    o,
                    "knee      at {label}: throughput near its peak of {:.2} req/s while TTFT p95 is past twice its {:.1} ms at the lowest load",
                    knee.max_requests_per_s, knee.baseline_ttft_p95_ms
                );
            }
            None => {
                let _ = writeln!(o, "knee      none: the server kept up at every load tried");
            }
        }
    }
}

fn schedule(o: &mut String, s: &Summary) {
    let r = &s.requests;
    if r.late > 0 || r.held > 0 || r.dropped > 0 {
        let mut parts = Vec::new();
        if r.late > 0 {
            parts.push(format!(
                "{} request{} sent late by the agents (lag over 5 ms)",
                grouped(r.late),
                plural(r.late)
            ));
        }
        if r.held > 0 {
            parts.push(format!(
                "{} held over 5 ms before writing (a connection opening, or max_concurrency)",
                grouped(r.held)
            ));
        }
        if r.dropped > 0 {
            parts.push(format!("{} never sent", grouped(r.dropped)));
        }
        let _ = writeln!(o, "schedule  {}", parts.join(", "));
    }
    if s.client.bound {
        let _ = writeln!(o, "client-bound: results understate the server");
        for reason in &s.client.reasons {
            let _ = writeln!(o, "          {reason}");
        }
    }
}

fn tracing(o: &mut String, s: &Summary) {
    let t = &s.tracing;
    if !t.enabled {
        return;
    }
    let _ = writeln!(
        o,
        "traces    {} spans exported, {} dropped · {} · run trace {}",
        grouped(t.spans_exported),
        grouped(t.spans_dropped),
        t.endpoint.as_deref().unwrap_or(""),
        t.run_trace_id
    );
    if let Some(search) = &t.search {
        let _ = writeln!(
            o,
            "find      {}",
            search.link.clone().unwrap_or_else(|| format!(
                "service {}, tag {}={} (set [trace] ui for a link)",
                search.service, search.tag, search.value
            ))
        );
    }
    // The worst request, linked to its trace (with tracing off its trace
    // id leads nowhere, and summary.json still lists it).
    if let Some(worst) = t.slowest_e2e.first() {
        let ttft = t
            .slowest_ttft
            .first()
            .map(|w| {
                format!(
                    " · slowest TTFT {:.1} ms: {}",
                    w.value_ms,
                    w.link.as_deref().unwrap_or(&w.trace_id)
                )
            })
            .unwrap_or_default();
        let _ = writeln!(
            o,
            "slowest   E2E {:.1} ms: {}{ttft}",
            worst.value_ms,
            worst.link.as_deref().unwrap_or(&worst.trace_id)
        );
    }
}

/// A figure's mean and largest value (or its 99th percentile), scaled for
/// printing; `-` where the server did not say.
fn figure_row(o: &mut String, label: &str, f: Option<&Figure>, scale: f64) {
    let Some(f) = f else { return };
    let show = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{:.1}", v * scale));
    let _ = writeln!(
        o,
        "{label:<LABEL$}{:>10}{:>10}  {}",
        show(f.mean),
        show(f.max),
        f.source.metric
    );
}

/// The server's own figures whenever they were scraped, named so that its
/// queue is never taken for the client's.
fn server(o: &mut String, s: &Summary) {
    if let Some(sv) = &s.server {
        match &sv.note {
            Some(note) => {
                let _ = writeln!(o, "server    {note}");
            }
            None => {
                let _ = writeln!(
                    o,
                    "server    {} scrapes of {} ({})",
                    sv.scrapes,
                    sv.url,
                    sv.families.join(", ")
                );
            }
        }
        if sv.scrapes > 0 && !sv.mapped.is_empty() {
            let _ = writeln!(o, "{:<LABEL$}{:>10}{:>10}  from", "  server's view", "mean", "max");
            let m = |c: Canon| sv.mapped.get(&c);
            figure_row(o, "  server queue (ms)", m(Canon::QueueTime), 1.0);
            figure_row(o, "  running", m(Canon::Running), 1.0);
            figure_row(o, "  waiting", m(Canon::Waiting), 1.0);
            figure_row(o, "  KV cache (%)", m(Canon::KvCacheUsage), 100.0);
            if let Some(f) = m(Canon::Preemptions) {
                let _ = writeln!(
                    o,
                    "{:<LABEL$}{:>10}{:>10}  {} (in all)",
                    "  preemptions",
                    f.count.map_or_else(|| "0".to_owned(), |n| format!("{n:.0}")),
                    "-",
                    f.source.metric
                );
            }
            figure_row(o, "  GPU util (%)", m(Canon::GpuUtil), 100.0);
            figure_row(o, "  VRAM used (%)", m(Canon::GpuMemoryShare), 100.0);
            figure_row(o, "  mem bandwidth (%)", m(Canon::MemoryBandwidth), 100.0);
            figure_row(o, "  compute (%)", m(Canon::ComputeActive), 100.0);
            if let Some(busy) = m(Canon::BusySeconds).and_then(|f| f.per_s) {
                let _ = writeln!(
                    o,
                    "{:<LABEL$}{:>10.1}{:>10}  {}",
                    "  busy (%)",
                    busy * 100.0,
                    "-",
                    m(Canon::BusySeconds).map_or("", |f| f.source.metric)
                );
            }
        }
    }
    server_queue(o, s);
    if let Some(g) = &s.gpu {
        for (agent, note) in &g.notes {
            let _ = writeln!(o, "gpu       {agent}: {note}");
        }
        if let Some(util) = g.utilisation_mean {
            let share = g
                .memory_used_share_max
                .map(|m| format!(" ({:.1}%)", m * 100.0))
                .unwrap_or_default();
            let bandwidth = g
                .memory_bandwidth_mean
                .map(|b| format!(" · memory bandwidth mean {:.1}%", b * 100.0))
                .unwrap_or_default();
            let memory = g
                .memory_used_max_mib
                .map(|m| format!(" · memory up to {m:.0} MiB{share}{bandwidth}"))
                .unwrap_or_default();
            let _ = writeln!(
                o,
                "          utilisation mean {:.1}% over {} readings{memory}",
                util * 100.0,
                g.samples
            );
        }
    }
}

/// Prefix caching: the server's hit rate, the answers' cached share, and
/// what the shared prefixes offered.
fn prefix_cache(o: &mut String, s: &Summary) {
    let Some(p) = &s.prefix_cache else { return };
    let mut parts = Vec::new();
    if let Some(rate) = p.server_hit_rate {
        let from = p.server_source.as_deref().unwrap_or("the server");
        parts.push(format!("server hit rate {:.1}% ({from})", rate * 100.0));
    }
    if let Some(share) = p.cached_share {
        parts.push(format!(
            "answers: {:.1}% of input cached over {} requests",
            share * 100.0,
            grouped(p.reported_requests)
        ));
    }
    if let Some(w) = &p.workload {
        parts.push(format!(
            "workload: {:.1}% of input in {} shared prefixes of {} tokens",
            w.shared_share * 100.0,
            w.prefix.groups,
            w.prefix.tokens
        ));
    }
    let _ = writeln!(o, "prefix    {}", parts.join(" · "));
}

/// The server's queue percentiles, and where they came from.
fn server_queue(o: &mut String, s: &Summary) {
    use crate::report::summary::QueueSource;
    let Some(q) = &s.server_queue else { return };
    let mean = q.mean_ms.map(|m| format!(" · mean {m:.1}")).unwrap_or_default();
    let _ = writeln!(
        o,
        "server queue  p50 {:.1} · p90 {:.1} · p99 {:.1}{mean} ms over {} requests",
        q.p50.ms,
        q.p90.ms,
        q.p99.ms,
        grouped(q.count)
    );
    let how = match q.source {
        QueueSource::Spans => format!("exact, from the server's spans of each request ({})", q.from),
        QueueSource::Buckets => {
            let bucket = |name: &str, b: &crate::report::summary::QueueQuantile| {
                let from = b.bucket_from_ms.unwrap_or(0.0);
                match b.bucket_to_ms {
                    Some(to) => format!("{name} in ({from}, {to}]"),
                    None => format!("{name} above the highest bound, {from}"),
                }
            };
            format!(
                "interpolated within the buckets of {} (ms): {}, {}, {}",
                q.from,
                bucket("p50", &q.p50),
                bucket("p90", &q.p90),
                bucket("p99", &q.p99)
            )
        }
    };
    let _ = writeln!(o, "          {how}");
    if let Some(note) = &q.note {
        let _ = writeln!(o, "          {note}");
    }
}

fn findings(o: &mut String, s: &Summary) {
    if s.findings.is_empty() {
        return;
    }
    let _ = writeln!(o, "\nfindings");
    for f in &s.findings {
        let _ = writeln!(o, "  - {}", f.title);
    }
}

fn thresholds(o: &mut String, s: &Summary) {
    if s.thresholds.is_empty() {
        return;
    }
    let _ = writeln!(o, "\nthresholds");
    for t in &s.thresholds {
        let _ = writeln!(
            o,
            "  {} {}{}",
            if t.passed { "ok  " } else { "FAIL" },
            t.message,
            if t.abort { " (aborts the run)" } else { "" }
        );
    }
}

fn verdict(o: &mut String, s: &Summary) {
    let verdict = match s.verdict.status {
        Status::Passed => "passed".to_owned(),
        Status::Invalid => "invalid measurement".to_owned(),
        other => format!("{other:?}").to_lowercase(),
    };
    let _ = writeln!(o, "\nresult    {verdict} (exit {})", s.verdict.exit_code);
    for reason in &s.verdict.reasons {
        let _ = writeln!(o, "          {reason}");
    }
}

#[cfg(test)]
#[path = "terminal_tests.rs"]
mod tests;
