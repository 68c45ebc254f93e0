//! The report's tables: headline statistics, steps, prompt classes,
//! errors, agents, tokens, the server's figures, the slowest requests and
//! the metric definitions.

use std::fmt::Write as _;

use serde_json::Value;

use super::svg::sig;
use super::{esc, pct};
use crate::report::grouped;
use crate::report::summary::{Disagreement, MetricSummary, Summary};

fn opt(v: Option<f64>) -> String {
    v.map_or_else(|| "–".to_owned(), sig)
}

/// The headline statistics of every latency and token metric.
pub(super) fn metrics(out: &mut String, s: &Summary) {
    let m = &s.metrics;
    let rows: [(&str, &MetricSummary); 12] = [
        ("TTFT", &m.ttft),
        ("ITL", &m.itl),
        ("chunk gap", &m.chunk_gap),
        ("TPOT", &m.tpot),
        ("E2E", &m.e2e),
        ("TTFT from intended start", &m.ttft_intended),
        ("E2E from intended start", &m.e2e_intended),
        ("client queue", &m.client_queue),
        ("scheduling lag", &m.schedule_lag),
        ("connect", &m.connect),
        ("input tokens", &m.input_tokens),
        ("output tokens", &m.output_tokens),
    ];
    let server = [
        ("server prefill", &m.server_prefill),
        ("server decode", &m.server_decode),
        ("model load", &m.model_load),
        ("server time", &m.server_time),
    ];
    out.push_str(
        r#"<table class="num" id="metrics-table"><thead><tr><th>metric</th><th>unit</th><th>count</th><th>mean</th><th>min</th><th>p50</th><th>p90</th><th>p95</th><th>p99</th><th>p99.9</th><th>max</th></tr></thead><tbody>"#,
    );
    let shown = rows
        .iter()
        .copied()
        .chain(server.into_iter().filter(|(_, x)| x.count > 0));
    for (name, x) in shown {
        let _ = write!(
            out,
            "<tr><th>{name}</th><td>{}</td><td>{}</td>",
            x.unit,
            grouped(x.count)
        );
        if x.count == 0 {
            out.push_str(r#"<td colspan="8" class="muted">no samples</td></tr>"#);
            continue;
        }
        for v in [x.mean, x.min, x.p50, x.p90, x.p95, x.p99, x.p99_9, x.max] {
            let _ = write!(out, "<td>{}</td>", sig(v));
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table>");
}

/// One row per step, the knee's row marked.
pub(super) fn steps(out: &mut String, s: &Summary) {
    if s.steps.len() < 2 {
        return;
    }
    let knee = s.knee.as_ref().and_then(|k| k.step);
    out.push_str(
        r#"<table class="num" id="steps-table"><thead><tr><th>step</th><th>start</th><th>measured</th><th>ok</th><th>failed</th><th>req/s</th><th>out tok/s</th><th>TTFT p50</th><th>TTFT p95</th><th>TPOT p95</th><th>ITL p50</th><th>E2E p95</th><th>errors</th>"#,
    );
    if s.goodput.is_some() {
        out.push_str("<th>good</th><th>good req/s</th>");
    }
    out.push_str("</tr></thead><tbody>");
    for st in &s.steps {
        let mark = if knee == Some(st.index) {
            r#" class="kneerow""#
        } else {
            ""
        };
        let m = &st.metrics;
        let _ = write!(
            out,
            "<tr{mark}><th>{}{}</th><td>{} s</td><td>{} s</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>",
            esc(&st.label),
            if knee == Some(st.index) { " · knee" } else { "" },
            sig(st.start_s),
            sig(st.measured_s),
            grouped(st.requests.ok),
            grouped(st.requests.failed),
            sig(st.throughput.requests_per_s),
            sig(st.throughput.output_tokens_per_s),
            sig(m.ttft.p50),
            sig(m.ttft.p95),
            sig(m.tpot.p95),
            sig(m.itl.p50),
            sig(m.e2e.p95),
            pct(st.requests.error_rate)
        );
        if let Some(g) = st.goodput {
            let _ = write!(out, "<td>{}</td><td>{}</td>", pct(g.ratio), sig(g.requests_per_s));
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table>");
    if let Some(k) = &s.knee {
        let text = match &k.label {
            Some(label) => format!(
                "Knee at {label}: throughput near its peak of {} req/s while TTFT p95 is past twice its {} ms at the lowest load. Rule: {}.",
                sig(k.max_requests_per_s),
                sig(k.baseline_ttft_p95_ms),
                k.rule
            ),
            None => format!("No knee: the server kept up at every load tried. Rule: {}.", k.rule),
        };
        let _ = write!(out, r#"<p class="caption">{}</p>"#, esc(&text));
    }
}

/// The per-class table.
pub(super) fn classes(out: &mut String, s: &Summary) {
    out.push_str(r#"<section id="classes"><h2>Prompt classes</h2>"#);
    if s.classes.is_empty() {
        out.push_str(r#"<p class="empty">No prompt class was recorded.</p></section>"#);
        return;
    }
    let good = s.goodput.is_some();
    out.push_str(
        r#"<table class="num"><thead><tr><th>class</th><th>requests</th><th>failed</th><th>tokens in (mean)</th><th>tokens out (mean)</th><th>TPM</th><th>out tok/s</th><th>TTFT p50</th><th>TTFT p95</th><th>ITL p50</th><th>TPOT p95</th><th>E2E p50</th><th>E2E p95</th>"#,
    );
    if good {
        out.push_str("<th>good</th><th>good out tok/s</th>");
    }
    out.push_str("</tr></thead><tbody>");
    for c in &s.classes {
        // A class whose requests all failed has no figures, only failures.
        let f = |v: f64| if c.requests == 0 { "–".to_owned() } else { sig(v) };
        let _ = write!(
            out,
            "<tr><th>{}</th><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>",
            esc(&c.class),
            grouped(c.requests),
            grouped(c.failed),
            f(c.tokens_in.mean),
            f(c.tokens_out.mean),
            grouped(c.tpm.round() as u64),
            f(c.output_tokens_per_s),
            f(c.ttft.p50),
            f(c.ttft.p95),
            f(c.itl.p50),
            f(c.tpot.p95),
            f(c.e2e.p50),
            f(c.e2e.p95)
        );
        if let Some(g) = c.goodput.filter(|_| c.requests > 0) {
            let _ = write!(out, "<td>{}</td><td>{}</td>", pct(g.ratio), sig(g.output_tokens_per_s));
        } else if good {
            out.push_str("<td>–</td><td>–</td>");
        }
        out.push_str("</tr>");
    }
    let cover = if s.classes_whole_run {
        "over the whole run, warm-ups included"
    } else {
        "over the measured time, warm-ups left out"
    };
    let by = match s.classes_by {
        crate::dataset::ClassBy::Tokens => "tokens",
        crate::dataset::ClassBy::Characters => "characters",
        crate::dataset::ClassBy::Words => "words",
    };
    let _ = write!(
        out,
        r#"</tbody></table><p class="caption">Requests of each prompt class {cover}: successes and failures; figures of the successes; times in ms. Prompts are classed by their length in {by}.{}</p></section>"#,
        if s.lost.requests > 0 {
            format!(
                " The {} requests in flight on lost agents are in no class.",
                s.lost.requests
            )
        } else {
            String::new()
        }
    );
}

/// Sessions only: each turn's figures; nothing for a run without sessions.
pub(super) fn turns(out: &mut String, s: &Summary) {
    if s.turns.is_empty() {
        return;
    }
    out.push_str(
        r#"<section id="turns"><h2>Session turns</h2><table class="num"><thead><tr><th>turn</th><th>requests</th><th>tokens in (mean)</th><th>tokens out (mean)</th><th>TTFT mean</th><th>TTFT p50</th><th>TTFT p95</th><th>TPOT p50</th><th>E2E mean</th><th>E2E p95</th></tr></thead><tbody>"#,
    );
    for t in &s.turns {
        let label = if t.and_later {
            format!("{} and later", t.turn)
        } else {
            t.turn.to_string()
        };
        let _ = write!(
            out,
            "<tr><th>{}</th><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&label),
            grouped(t.requests),
            sig(t.tokens_in.mean),
            sig(t.tokens_out.mean),
            sig(t.ttft.mean),
            sig(t.ttft.p50),
            sig(t.ttft.p95),
            sig(t.tpot.p50),
            sig(t.e2e.mean),
            sig(t.e2e.p95)
        );
    }
    out.push_str(
        r#"</tbody></table><p class="caption">Successful requests by their turn in the session, over the measured time; each turn sends the whole history, so its input grows turn after turn. Times in ms.</p></section>"#,
    );
}

/// Failed requests by class, with the first message of each.
pub(super) fn errors(out: &mut String, s: &Summary) {
    if s.errors.is_empty() {
        return;
    }
    out.push_str(
        r#"<table id="errors-table"><thead><tr><th>class</th><th>count</th><th>first message</th></tr></thead><tbody>"#,
    );
    for (class, e) in &s.errors {
        let _ = write!(
            out,
            r#"<tr><th>{}</th><td class="n">{}</td><td><code>{}</code></td></tr>"#,
            esc(class),
            grouped(e.count),
            esc(e.first_message.as_deref().unwrap_or(""))
        );
    }
    out.push_str("</tbody></table>");
}

/// Each agent's share of the work, its start skew, and the losses.
pub(super) fn agents(out: &mut String, s: &Summary) {
    out.push_str(r#"<section id="agents"><h2>Agents</h2>"#);
    let total: u64 = s.agents.iter().map(|a| a.ok).sum();
    out.push_str(
        r#"<table class="num"><thead><tr><th>agent</th><th>users</th><th>ok</th><th>failed</th><th>share of ok</th><th>reports</th><th>CPU</th><th>start skew</th><th>clock offset</th><th>end</th><th>note</th></tr></thead><tbody>"#,
    );
    for a in &s.agents {
        let share = if total > 0 { a.ok as f64 / total as f64 } else { 0.0 };
        let note = [a.reason.as_deref(), a.mismatch.as_deref()]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join("; ");
        let _ = write!(
            out,
            r#"<tr class="{}"><th>{}</th><td>{}</td><td>{}</td><td>{}</td><td><span class="share"><i style="width:{}%"></i></span>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class="t">{}</td><td class="t">{}</td></tr>"#,
            if a.end == "finished" { "" } else { "bad" },
            esc(&a.name),
            a.users,
            grouped(a.ok),
            grouped(a.failed),
            sig(share * 100.0),
            pct(share),
            grouped(a.reports),
            pct(a.cpu),
            a.start_skew_ms
                .map_or_else(|| "–".to_owned(), |v| format!("{} ms", sig(v))),
            a.clock_offset_ms.map_or_else(
                || "–".to_owned(),
                |v| format!("{} ms ± {}", sig(v), opt(a.clock_rtt_ms.map(|r| r / 2.0)))
            ),
            a.end,
            esc(&note)
        );
    }
    out.push_str("</tbody></table>");
    let mut notes = Vec::new();
    if let (Some(max), Some(spread)) = (s.start_skew.max_ms, s.start_skew.spread_ms) {
        notes.push(format!(
            "{} agents began within {} ms of each other, at most {} ms from the planned start.",
            s.start_skew.measured,
            sig(spread),
            sig(max)
        ));
    }
    if s.lost.agents.is_empty() {
        notes.push("No agent was lost.".to_owned());
    } else {
        notes.push(format!(
            "Lost: {}; {} of the users and {} of the planned load went with them, and {} requests in flight (counted in no other column).",
            s.lost.agents.join(", "),
            pct(s.lost.users_share),
            pct(s.lost.load_share),
            s.lost.requests
        ));
    }
    if s.client.bound {
        notes.push(format!(
            "Client-bound, so the results understate the server: {}.",
            s.client.reasons.join("; ")
        ));
    } else {
        notes.push(format!(
            "Not client-bound: scheduling lag p99 {} ms, busiest agent {} CPU.",
            sig(s.client.schedule_lag_p99_ms),
            pct(s.client.cpu_max)
        ));
    }
    let _ = write!(out, r#"<p class="caption">{}</p></section>"#, esc(&notes.join(" ")));
}

fn agreement_row(out: &mut String, name: &str, d: Option<&Disagreement>) {
    match d {
        Some(d) => {
            let _ = write!(
                out,
                "<tr><th>{name}</th><td>{}</td><td>{}</td><td>{}</td><td>{:+.2}%</td><td>{}</td><td>{}</td></tr>",
                grouped(d.requests),
                grouped(d.first),
                grouped(d.second),
                d.relative_difference * 100.0,
                grouped(d.requests_differing),
                sig(d.mean_abs_difference)
            );
        }
        None => {
            let _ = write!(
                out,
                r#"<tr><th>{name}</th><td colspan="6" class="muted">no request had both counts</td></tr>"#
            );
        }
    }
}

/// Token totals, their sources, and how far the sources agree.
pub(super) fn tokens(out: &mut String, s: &Summary) {
    let t = &s.tokens;
    out.push_str(r#"<section id="tokens"><h2>Token counts</h2>"#);
    let tokenizer = t
        .tokenizer
        .as_ref()
        .map(|k| {
            format!(
                " Client tokenizer: {} ({} tokens in its vocabulary).",
                k.file,
                grouped(k.vocab_size as u64)
            )
        })
        .unwrap_or_default();
    let _ = write!(
        out,
        r#"<p>{} input tokens (source: {}), {} output tokens (source: {}). Output counts per request: {} from the server's usage, {} from the client tokenizer, {} counted stream events, {} counted words.{}</p>"#,
        grouped(t.input),
        esc(t.input_source),
        grouped(t.output),
        esc(t.source),
        grouped(t.from_usage),
        grouped(t.from_tokenizer),
        grouped(t.counted),
        grouped(t.words),
        esc(&tokenizer)
    );
    out.push_str(
        r#"<table class="num"><thead><tr><th>agreement</th><th>requests with both</th><th>first total</th><th>second total</th><th>difference</th><th>requests differing</th><th>mean |difference|</th></tr></thead><tbody>"#,
    );
    let a = &t.agreement;
    agreement_row(out, "server vs stream events", a.server_vs_events.as_ref());
    agreement_row(out, "server vs client tokenizer", a.server_vs_tokenizer.as_ref());
    agreement_row(out, "stream events vs client tokenizer", a.events_vs_tokenizer.as_ref());
    out.push_str(
        r#"</tbody></table><p class="caption">Each pair of output-token sources over the requests that had both; the difference is (second − first) / first.</p></section>"#,
    );
}

/// The server's own figures over the measured time.
pub(super) fn server(out: &mut String, s: &Summary) {
    out.push_str(r#"<section id="server"><h2>Server metrics</h2>"#);
    let Some(sv) = &s.server else {
        out.push_str(
            r#"<p class="empty">The server's metrics were not scraped (server_metrics.enabled is false).</p>"#,
        );
        server_queue(out, s);
        out.push_str("</section>");
        return;
    };
    let _ = write!(
        out,
        "<p>{} scrapes of <code>{}</code> ({} failed); families: {}.</p>",
        sv.scrapes,
        esc(&sv.url),
        sv.failed_scrapes,
        esc(&if sv.families.is_empty() {
            "none recognised".to_owned()
        } else {
            sv.families.join(", ")
        })
    );
    if let Some(note) = &sv.note {
        let _ = write!(out, r#"<p class="warn">{}</p>"#, esc(note));
    }
    if !sv.mapped.is_empty() {
        out.push_str(
            r#"<table class="num"><thead><tr><th>figure</th><th>server metric</th><th>unit</th><th>mean</th><th>max</th><th>count</th><th>per s</th></tr></thead><tbody>"#,
        );
        for (canon, f) in &sv.mapped {
            let name = serde_json::to_value(canon)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            let _ = write!(
                out,
                r#"<tr><th>{}</th><td class="t"><code>{}</code></td><td class="t">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>"#,
                esc(&name),
                esc(f.source.metric),
                f.unit,
                opt(f.mean),
                opt(f.max),
                opt(f.count),
                opt(f.per_s)
            );
        }
        out.push_str("</tbody></table>");
    }
    server_queue(out, s);
    out.push_str("</section>");
}

/// The server's queue percentiles, and where they came from.
fn server_queue(out: &mut String, s: &Summary) {
    use crate::report::summary::{QueueQuantile, QueueSource};
    let Some(q) = &s.server_queue else { return };
    let how = match q.source {
        QueueSource::Spans => format!(
            "exact, from the server's spans of each request, read from <code>{}</code>",
            esc(&q.from)
        ),
        QueueSource::Buckets => format!(
            "interpolated within the buckets of <code>{}</code>, as PromQL's histogram_quantile does",
            esc(&q.from)
        ),
    };
    let _ = write!(
        out,
        r#"<h3>Server queue</h3><table class="num"><thead><tr><th></th><th>ms</th><th>bucket</th></tr></thead><tbody>"#
    );
    let row = |out: &mut String, name: &str, b: &QueueQuantile| {
        let bucket = match (b.bucket_from_ms, b.bucket_to_ms) {
            (Some(from), Some(to)) => format!("({}, {}]", sig(from), sig(to)),
            (Some(from), None) => format!("({}, +Inf)", sig(from)),
            _ => "–".to_owned(),
        };
        let _ = write!(out, "<tr><th>{name}</th><td>{}</td><td>{bucket}</td></tr>", sig(b.ms));
    };
    row(out, "p50", &q.p50);
    row(out, "p90", &q.p90);
    row(out, "p99", &q.p99);
    let _ = write!(
        out,
        r#"<tr><th>mean</th><td>{}</td><td>–</td></tr></tbody></table><p class="caption">{} requests admitted in the measured time; {how}.</p>"#,
        opt(q.mean_ms),
        grouped(q.count)
    );
    if let Some(note) = &q.note {
        let _ = write!(out, r#"<p class="warn">{}</p>"#, esc(note));
    }
}

fn exemplar_table(out: &mut String, title: &str, list: &[crate::report::summary::trace::Exemplar], dt: f64) {
    let _ = write!(
        out,
        r#"<div><h3>{title}</h3><table class="num"><thead><tr><th>#</th><th>ms</th><th>agent</th><th>at</th><th>trace</th></tr></thead><tbody>"#
    );
    for (k, e) in list.iter().enumerate() {
        let trace = match &e.link {
            Some(link) => format!(r#"<a href="{}">{}</a>"#, esc(link), esc(&e.trace_id)),
            None => format!("<code>{}</code>", esc(&e.trace_id)),
        };
        let _ = write!(
            out,
            r#"<tr><td>{}</td><td>{}</td><td>{}</td><td>{} s</td><td class="t">{trace}</td></tr>"#,
            k + 1,
            sig(e.value_ms),
            e.agent,
            sig((e.interval + 1) as f64 * dt)
        );
    }
    out.push_str("</tbody></table></div>");
}

/// The slowest requests, linked to their traces.
pub(super) fn slowest(out: &mut String, s: &Summary) {
    let t = &s.tracing;
    out.push_str(r#"<section id="slowest"><h2>Slowest requests</h2>"#);
    let state = if t.enabled {
        format!(
            "Request spans went to {} ({}); {} exported, {} dropped. The run's own trace is {}.",
            t.endpoint.as_deref().unwrap_or("?"),
            t.protocol.as_deref().unwrap_or("?"),
            grouped(t.spans_exported),
            grouped(t.spans_dropped),
            t.run_trace_id
        )
    } else {
        "Tracing was off, so these trace ids lead nowhere; turn it on with [trace] in the profile.".to_owned()
    };
    let _ = write!(out, r#"<p class="caption">{}</p>"#, esc(&state));
    if let Some(search) = &t.search {
        let by = format!(
            "service {}, tag {} = {}",
            esc(&search.service),
            esc(&search.tag),
            esc(&search.value)
        );
        match &search.link {
            Some(link) => {
                let _ = write!(
                    out,
                    r#"<p class="caption" id="trace-search">The run's traces: <a href="{}">search in Jaeger</a> ({by}).</p>"#,
                    esc(link)
                );
            }
            None => {
                let _ = write!(
                    out,
                    r#"<p class="caption" id="trace-search">Find the run's traces by {by}; with <code>[trace] ui</code> set this is a link to Jaeger's search.</p>"#
                );
            }
        }
    }
    if t.slowest_ttft.is_empty() && t.slowest_e2e.is_empty() {
        out.push_str(r#"<p class="empty">No request was named slowest.</p></section>"#);
        return;
    }
    out.push_str(r#"<div class="grid2">"#);
    exemplar_table(out, "by TTFT", &t.slowest_ttft, s.load.interval_s);
    exemplar_table(out, "end to end", &t.slowest_e2e, s.load.interval_s);
    out.push_str("</div></section>");
}

/// What each figure means, as every summary states it.
pub(super) fn definitions(out: &mut String, s: &Summary) {
    out.push_str(r#"<section id="definitions"><h2>Definitions</h2><dl>"#);
    if let Ok(Value::Object(map)) = serde_json::to_value(&s.definitions) {
        for (key, text) in map {
            let term = match key.as_str() {
                "ttft" | "itl" | "tpot" | "e2e" => key.to_uppercase(),
                _ => key.replace('_', " "),
            };
            let _ = write!(
                out,
                "<dt>{}</dt><dd>{}</dd>",
                esc(&term),
                esc(text.as_str().unwrap_or(""))
            );
        }
    }
    out.push_str("</dl></section>");
}

/// The profile's thresholds and how each fared.
pub(super) fn thresholds(out: &mut String, s: &Summary) {
    if s.thresholds.is_empty() {
        return;
    }
    out.push_str(r#"<table class="num" id="thresholds"><thead><tr><th>threshold</th><th>limit</th><th>value</th><th></th></tr></thead><tbody>"#);
    for t in &s.thresholds {
        let value = match (t.value, t.unit) {
            (None, _) => "–".to_owned(),
            (Some(v), "share") => pct(v),
            (Some(v), "ms") => format!("{} ms", sig(v)),
            (Some(v), "/s") => format!("{}/s", sig(v)),
            (Some(v), unit) => format!("{} {unit}", sig(v)),
        };
        let _ = write!(
            out,
            r#"<tr{} data-threshold="{}" data-passed="{}"><td class="t">{}{}</td><td class="t">{}</td><td>{}</td><td class="t">{}</td></tr>"#,
            if t.passed { "" } else { r#" class="bad""# },
            esc(&t.key),
            t.passed,
            esc(&t.key),
            if t.abort { " (aborts)" } else { "" },
            esc(&t.condition),
            esc(&value),
            if t.passed { "held" } else { "failed" }
        );
    }
    out.push_str("</tbody></table>");
}
