//! `[slo]` and `[thresholds]`: what a good request is, and the limits
//! that fail a run (and may stop it early).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml::de::DeValue;

use super::doc::{Problems, Table};
use crate::figure::{Condition, Figure, Key, Scope};

/// Per-request objectives: a successful request that meets every one is
/// good, and goodput counts good requests.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Slo {
    /// Time to first token at most this.
    pub ttft: Option<Duration>,
    /// Time per output token at most this.
    pub tpot: Option<Duration>,
    /// End to end at most this.
    pub e2e: Option<Duration>,
    /// Every gap between tokens at most this.
    pub itl: Option<Duration>,
    /// Share of requests that must be good for a step to count as held
    /// (capacity at SLO).
    pub ratio: f64,
}

/// A time as people write it: `500 ms`, `1.5 s`, `250 µs`.
fn time(d: Duration) -> String {
    let trim = |v: f64| {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    };
    let ms = d.as_secs_f64() * 1e3;
    if ms >= 1_000.0 {
        format!("{} s", trim(ms / 1e3))
    } else if ms >= 1.0 {
        format!("{} ms", trim(ms))
    } else {
        format!("{} µs", trim(ms * 1e3))
    }
}

/// The share of good requests a step must reach, unless `[slo] ratio`
/// says otherwise.
pub const DEFAULT_RATIO: f64 = 0.95;

impl Slo {
    /// The objectives in words: `TTFT ≤ 500 ms, TPOT ≤ 50 ms`.
    pub fn words(&self) -> String {
        [
            ("TTFT", self.ttft),
            ("TPOT", self.tpot),
            ("E2E", self.e2e),
            ("every ITL gap", self.itl),
        ]
        .iter()
        .filter_map(|(name, d)| d.map(|d| format!("{name} ≤ {}", time(d))))
        .collect::<Vec<_>>()
        .join(", ")
    }

    /// The wire form agents check requests against.
    pub fn to_wire(&self) -> stampede_proto::pb::Slo {
        stampede_agent::slo::Slo {
            ttft: self.ttft,
            tpot: self.tpot,
            e2e: self.e2e,
            itl: self.itl,
        }
        .to_wire()
    }
}

/// One threshold as the profile gives it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Threshold {
    /// The figure and where it is read: `ttft.p95`,
    /// `classes.long.ttft.p95`, `steps.2.goodput_ratio`.
    pub key: String,
    /// The condition it must meet: `< 500ms`.
    pub condition: String,
    /// Stop the run as soon as the condition fails.
    pub abort: bool,
    /// With `abort`, how long after the start the condition is first
    /// checked.
    pub after: Duration,
}

impl Threshold {
    /// The key and condition, parsed (they were checked when the profile
    /// was read).
    pub fn parsed(&self) -> Result<(Key, Condition), String> {
        let key = Key::parse(&self.key)?;
        let condition = Condition::parse(&self.condition, key.figure)?;
        Ok((key, condition))
    }
}

/// The `[thresholds]` table.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Thresholds {
    /// Largest share of failed requests (0 to 1) for a passing run: the
    /// request check, exit 3. Without it and without an `error_rate`
    /// threshold, no failure is allowed.
    pub max_error_rate: f64,
    /// A client-bound run is reported, not failed as an invalid
    /// measurement.
    pub allow_client_bound: bool,
    /// Limits on figures, in file order.
    pub list: Vec<Threshold>,
}

/// Reads `[slo]`; `None` when absent or with problems (recorded in `p`).
pub(super) fn slo(t: &mut Table<'_, '_>, p: &mut Problems<'_>, present: bool) -> Option<Slo> {
    let ttft = t.duration(p, "ttft", false);
    let tpot = t.duration(p, "tpot", false);
    let e2e = t.duration(p, "e2e", false);
    let itl = t.duration(p, "itl", false);
    let ratio = t.number_in(p, "ratio", 0.0, 1.0);
    if !present {
        return None;
    }
    if ttft.is_none() && tpot.is_none() && e2e.is_none() && itl.is_none() {
        p.at(
            None,
            "slo",
            "[slo] sets no objective: give at least one of ttft, tpot, e2e and itl, such as ttft = \"500ms\"",
        );
        return None;
    }
    Some(Slo {
        ttft,
        tpot,
        e2e,
        itl,
        ratio: ratio.unwrap_or(DEFAULT_RATIO),
    })
}

/// What thresholds are checked against.
pub(super) struct Context {
    /// Steps of the load.
    pub(super) steps: usize,
    /// The run has `[slo]`.
    pub(super) slo: bool,
}

/// Reads `[thresholds]`.
pub(super) fn thresholds(t: &mut Table<'_, '_>, p: &mut Problems<'_>, cx: &Context) -> Thresholds {
    let max_error_rate = t.number_in(p, "max_error_rate", 0.0, 1.0);
    let allow_client_bound = t.bool(p, "allow_client_bound").unwrap_or(false);
    let mut list = Vec::new();
    let mut error_rate_span = None;
    for (name, path, span, value) in t.rest() {
        let quoted = format!("thresholds.\"{name}\"");
        let key = match Key::parse(&name) {
            Ok(k) => k,
            Err(e) => {
                p.at(Some(span), &quoted, e);
                continue;
            }
        };
        let (text, abort, after) = match value {
            DeValue::String(s) => (Some(s.to_string()), false, Duration::ZERO),
            DeValue::Table(inner) => {
                let mut it = Table::at(path.clone(), inner);
                let text = it.string(p, "limit");
                if text.is_none() && !it.has("limit") {
                    p.at(
                        Some(span.clone()),
                        &quoted,
                        "a threshold table needs limit, such as { limit = \"< 500ms\", abort = true }",
                    );
                }
                let abort = it.bool(p, "abort").unwrap_or(false);
                let after = it.duration(p, "after", true).unwrap_or(Duration::ZERO);
                it.finish(p);
                (text, abort, after)
            }
            _ => {
                p.at(
                    Some(span),
                    &quoted,
                    "expected a condition such as \"< 500ms\", or a table such as { limit = \"< 500ms\", abort = true, after = \"30s\" }",
                );
                continue;
            }
        };
        let Some(text) = text else { continue };
        if let Err(e) = Condition::parse(&text, key.figure) {
            p.at(Some(span), &quoted, e);
            continue;
        }
        let mut problem = |message: String| p.at(Some(span.clone()), &quoted, message);
        if key.figure.needs_slo() && !cx.slo {
            problem(format!(
                "{} counts requests that meet the run's objectives: set them in [slo], such as ttft = \"500ms\"",
                key.figure
            ));
            continue;
        }
        match key.scope {
            Scope::Step(k) if k >= cx.steps => {
                problem(format!(
                    "the load has {} step{} (steps.0{}): there is no step {k}",
                    cx.steps,
                    if cx.steps == 1 { "" } else { "s" },
                    if cx.steps > 1 {
                        format!(" to steps.{}", cx.steps - 1)
                    } else {
                        String::new()
                    }
                ));
                continue;
            }
            Scope::Class(_) if abort => {
                problem(
                    "a class's figures are known only at the end of the run, so a class threshold cannot abort it"
                        .to_owned(),
                );
                continue;
            }
            Scope::Class(_) if !key.figure.per_class() => {
                problem(format!(
                    "{} is not kept per prompt class: classes keep their successful requests' ttft, itl, tpot, e2e, input_tokens and output_tokens, output_tokens_per_s, and with [slo] goodput_ratio and goodput_output_tokens_per_s",
                    key.figure
                ));
                continue;
            }
            Scope::Run if key.figure == Figure::ErrorRate => error_rate_span = Some(span.clone()),
            _ => {}
        }
        list.push(Threshold {
            key: key.to_string(),
            condition: text,
            abort,
            after,
        });
    }
    if let (Some(span), Some(_)) = (error_rate_span, max_error_rate) {
        p.at(
            Some(span),
            "thresholds.\"error_rate\"",
            "set either max_error_rate or an \"error_rate\" threshold, not both",
        );
    }
    let has_error_rate = list.iter().any(|t| t.key == "error_rate");
    Thresholds {
        // An error_rate threshold decides about failures instead.
        max_error_rate: max_error_rate.unwrap_or(if has_error_rate { 1.0 } else { 0.0 }),
        allow_client_bound,
        list,
    }
}
