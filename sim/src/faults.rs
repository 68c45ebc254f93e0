//! Injected faults (`--fault`): which requests fail, and how each fault
//! looks on the wire.
//!
//! Which request gets which fault is a function of the seed, the request
//! (the key its output length is drawn from) and how many times that same
//! request came before, so a run's faults do not depend on how its
//! requests interleave, and each rule's rate holds exactly in expectation.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use crate::text;

/// What an injected fault does to one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Answer at once with this HTTP status (an error body), with a
    /// `Retry-After` header of so many seconds when given. The request
    /// never reaches the engine.
    Status {
        /// The status code, 400 to 599.
        code: u16,
        /// The `Retry-After` header, in seconds.
        retry_after: Option<u32>,
    },
    /// Hold the status line and headers back this long before the request
    /// reaches the engine; then answer as usual.
    SlowHeaders(Duration),
    /// Once `after` events of the answer have gone out (0: right after the
    /// headers), send nothing for `length`; then go on. The sequence keeps
    /// its batch slot meanwhile, computing nothing.
    Stall {
        /// Events sent before the stall.
        after: u32,
        /// How long nothing comes.
        length: Duration,
    },
    /// Replace event `after` (counting from 0) with one whose JSON is cut
    /// short, and end the answer there; a whole (not streamed) answer is a
    /// `200` whose JSON body is cut short.
    Malformed {
        /// Events sent intact before the malformed one.
        after: u32,
    },
    /// After `after` events, close the connection abruptly: no end of the
    /// chunked body, no terminating event or `[DONE]`.
    Reset {
        /// Events sent before the reset.
        after: u32,
    },
    /// Never finish: events keep coming until the client leaves.
    Endless,
}

impl Fault {
    /// The fault's name in `llmsim_faults_total{kind=…}`.
    pub fn kind(&self) -> String {
        match self {
            Fault::Status { code, .. } => format!("http_{code}"),
            Fault::SlowHeaders(_) => "slow_headers".to_owned(),
            Fault::Stall { .. } => "stall".to_owned(),
            Fault::Malformed { .. } => "malformed".to_owned(),
            Fault::Reset { .. } => "reset".to_owned(),
            Fault::Endless => "endless".to_owned(),
        }
    }
}

/// Kinds `/metrics` always lists, injected or not, so that dashboards and
/// alerts find their series before the first fault.
pub(crate) const KINDS: [&str; 8] = [
    "http_500",
    "http_503",
    "http_429",
    "slow_headers",
    "stall",
    "malformed",
    "reset",
    "endless",
];

/// One `--fault` rule: a fault and the share of requests that get it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FaultRule {
    /// Share of requests, 0 to 1.
    pub rate: f64,
    /// What happens to them.
    pub fault: Fault,
}

const SYNTAX: &str = "KIND=RATE[,KEY=VALUE…], such as 500=0.02, 429=0.05,retry-after=2, slow-headers=0.01,for=2s, stall=0.01,for=5s,after=3, malformed=0.01, reset=0.01,after=5 or endless=0.01";

impl FromStr for FaultRule {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.split(',').map(str::trim);
        let head = parts.next().unwrap_or_default();
        let Some((kind, rate)) = head.split_once('=') else {
            return Err(format!("{s:?}: expected {SYNTAX}"));
        };
        let rate = match rate.trim().parse::<f64>() {
            Ok(r) if (0.0..=1.0).contains(&r) => r,
            _ => return Err(format!("{s:?}: the rate must be a number from 0 to 1, got {rate:?}")),
        };
        let mut after = None;
        let mut length = None;
        let mut retry_after = None;
        for part in parts {
            let Some((key, value)) = part.split_once('=') else {
                return Err(format!("{s:?}: {part:?} is not KEY=VALUE"));
            };
            let count = || {
                value
                    .trim()
                    .parse::<u32>()
                    .map_err(|_| format!("{s:?}: {key} must be a whole number, got {value:?}"))
            };
            match key.trim() {
                "after" => after = Some(count()?),
                "retry-after" => retry_after = Some(count()?),
                "for" => {
                    length = Some(
                        humantime::parse_duration(value.trim())
                            .map_err(|e| format!("{s:?}: for={value}: {e} (examples: 500ms, 5s)"))?,
                    )
                }
                other => return Err(format!("{s:?}: unknown key {other:?} (keys: after, for, retry-after)")),
            }
        }
        let kind = kind.trim();
        let unused = |name: &str, given: bool| {
            if given {
                Err(format!("{s:?}: {kind} takes no {name}"))
            } else {
                Ok(())
            }
        };
        let fault = match kind {
            "slow-headers" => {
                unused("after", after.is_some())?;
                unused("retry-after", retry_after.is_some())?;
                Fault::SlowHeaders(length.ok_or_else(|| format!("{s:?}: slow-headers needs for=DURATION"))?)
            }
            "stall" => {
                unused("retry-after", retry_after.is_some())?;
                Fault::Stall {
                    after: after.unwrap_or(0),
                    length: length.ok_or_else(|| format!("{s:?}: stall needs for=DURATION"))?,
                }
            }
            "malformed" | "reset" | "endless" => {
                unused("for", length.is_some())?;
                unused("retry-after", retry_after.is_some())?;
                match kind {
                    "malformed" => Fault::Malformed {
                        after: after.unwrap_or(0),
                    },
                    "reset" => Fault::Reset {
                        after: after.unwrap_or(0),
                    },
                    _ => {
                        unused("after", after.is_some())?;
                        Fault::Endless
                    }
                }
            }
            code => match code.parse::<u16>() {
                Ok(code) if (400..600).contains(&code) => {
                    unused("for", length.is_some())?;
                    unused("after", after.is_some())?;
                    Fault::Status {
                        code,
                        retry_after: retry_after.or((code == 429).then_some(1)),
                    }
                }
                _ => {
                    return Err(format!(
                        "{s:?}: unknown fault {code:?}; expected an HTTP status from 400 to 599, slow-headers, stall, malformed, reset or endless"
                    ));
                }
            },
        };
        Ok(FaultRule { rate, fault })
    }
}

impl fmt::Display for FaultRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rate = self.rate;
        match self.fault {
            Fault::Status { code, retry_after } => {
                write!(f, "{code}={rate}")?;
                if let Some(s) = retry_after {
                    write!(f, ",retry-after={s}")?;
                }
                Ok(())
            }
            Fault::SlowHeaders(d) => write!(f, "slow-headers={rate},for={}", humantime::format_duration(d)),
            Fault::Stall { after, length } => write!(
                f,
                "stall={rate},for={},after={after}",
                humantime::format_duration(length)
            ),
            Fault::Malformed { after } => write!(f, "malformed={rate},after={after}"),
            Fault::Reset { after } => write!(f, "reset={rate},after={after}"),
            Fault::Endless => write!(f, "endless={rate}"),
        }
    }
}

/// Checks that the rules' rates add up to at most 1: each request gets
/// at most one fault.
pub(crate) fn check(rules: &[FaultRule]) -> Result<(), String> {
    let total: f64 = rules.iter().map(|r| r.rate).sum();
    if total > 1.0 + 1e-9 {
        return Err(format!(
            "the fault rates add up to {total}; each request gets at most one fault, so they must add up to 1 or less"
        ));
    }
    Ok(())
}

/// Keeps the fault draw apart from the output-length draw of the same key.
const SALT: u64 = 0x6661_756c_7473_0001;

/// The fault, if any, of the `occurrence`-th (from 0) request with `key`:
/// a uniform draw from the seed, the key and the occurrence, matched
/// against the rules' rates laid end to end.
pub(crate) fn draw(rules: &[FaultRule], seed: u64, key: u64, occurrence: u64) -> Option<Fault> {
    if rules.is_empty() {
        return None;
    }
    let h = text::mix(text::mix(text::mix(seed ^ SALT) ^ key) ^ occurrence);
    // 53 bits: every value is an exact f64 in [0, 1).
    let u = (h >> 11) as f64 / (1u64 << 53) as f64;
    let mut edge = 0.0;
    for rule in rules {
        edge += rule.rate;
        if u < edge {
            return Some(rule.fault);
        }
    }
    None
}

/// The events an answer of `tokens` tokens goes out in: the first token
/// alone, then `per_event` at a time.
pub(crate) fn events_in(tokens: u32, per_event: u32) -> u32 {
    1 + tokens.saturating_sub(1).div_ceil(per_event.max(1))
}

/// How an answer the engine broke off ends on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Cut {
    /// An event (or a whole body) whose JSON is cut short.
    Malformed,
    /// The connection closed abruptly.
    Reset,
}

/// The answer to a request drawn for an HTTP status fault.
pub(crate) fn status(code: u16, retry_after: Option<u32>) -> Response {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = crate::openai::error(status, format!("injected fault: HTTP {code} (--fault {code}=RATE)"));
    if let Some(seconds) = retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

/// The first half of `text`, which cuts any JSON document short.
fn half(text: &str) -> &str {
    let mut end = text.len() / 2;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// A streamed event rendered as `rendered`, cut short in its framing:
/// an SSE event or NDJSON line whose JSON ends halfway, or, in a plain
/// text stream, which has no JSON to break, bytes that are not UTF-8.
pub(crate) fn malformed_event(rendered: &str, content_type: &str) -> Bytes {
    let body = rendered.trim_end_matches('\n');
    if content_type.starts_with("text/event-stream") {
        Bytes::from(format!("{}\n\n", half(body)))
    } else if content_type.starts_with("application/x-ndjson") {
        Bytes::from(format!("{}\n", half(body)))
    } else {
        Bytes::from_static(&[0xff, 0xfe, 0xfd])
    }
}

/// A body that ends the connection abruptly: whatever went before it is
/// sent, then the stream fails and the server closes the connection
/// without ending the chunked body.
pub(crate) fn reset_error() -> std::io::Error {
    std::io::Error::other("injected fault: connection reset")
}

/// A whole (not streamed) answer: `value` as JSON, or cut short by `cut`.
pub(crate) fn whole(value: &Value, cut: Option<Cut>) -> Response {
    match cut {
        None => axum::Json(value).into_response(),
        Some(Cut::Malformed) => (
            [(header::CONTENT_TYPE, "application/json")],
            half(&value.to_string()).to_owned(),
        )
            .into_response(),
        Some(Cut::Reset) => {
            // The status line, the headers and half the body go out before
            // the connection closes: a connection closed before the first
            // byte of an answer looks, to a client, like a keep-alive
            // connection the server had closed, which clients send again.
            let part = Bytes::from(half(&value.to_string()).to_owned());
            let body = futures_util::stream::unfold(Some(Some(part)), |state| async move {
                match state? {
                    Some(part) => Some((Ok(part), Some(None))),
                    None => {
                        // Pending once: the server flushes what it holds.
                        tokio::task::yield_now().await;
                        Some((Err(reset_error()), None))
                    }
                }
            });
            Response::builder()
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from_stream(body))
                .expect("static headers are valid")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(s: &str) -> FaultRule {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn rules_parse_and_print_back() {
        assert_eq!(
            rule("500=0.02").fault,
            Fault::Status {
                code: 500,
                retry_after: None
            }
        );
        assert_eq!(
            rule("429=0.05").fault,
            Fault::Status {
                code: 429,
                retry_after: Some(1)
            },
            "a 429 says when to retry"
        );
        assert_eq!(
            rule("503=0.1,retry-after=3").fault,
            Fault::Status {
                code: 503,
                retry_after: Some(3)
            }
        );
        assert_eq!(
            rule("slow-headers=0.01,for=2s").fault,
            Fault::SlowHeaders(Duration::from_secs(2))
        );
        assert_eq!(
            rule("stall=0.01,for=500ms,after=3").fault,
            Fault::Stall {
                after: 3,
                length: Duration::from_millis(500)
            }
        );
        assert_eq!(rule("malformed=0.5").fault, Fault::Malformed { after: 0 });
        assert_eq!(rule("reset=0.5,after=4").fault, Fault::Reset { after: 4 });
        assert_eq!(rule("endless=1").fault, Fault::Endless);
        for s in [
            "429=0.05,retry-after=1",
            "stall=0.01,for=5s,after=0",
            "slow-headers=0.2,for=1s 500ms",
            "reset=0.5,after=4",
            "endless=1",
        ] {
            assert_eq!(rule(s).to_string(), s);
            assert_eq!(rule(&rule(s).to_string()), rule(s));
        }
    }

    #[test]
    fn bad_rules_say_what_is_wrong() {
        for (s, says) in [
            ("500", "expected KIND=RATE"),
            ("500=2", "from 0 to 1"),
            ("200=0.1", "unknown fault"),
            ("stall=0.1", "needs for=DURATION"),
            ("stall=0.1,for=soon", "for=soon"),
            ("reset=0.1,for=1s", "takes no for"),
            ("endless=0.1,after=2", "takes no after"),
            ("500=0.1,after=2", "takes no after"),
            ("malformed=0.1,at=2", "unknown key"),
        ] {
            let e = s.parse::<FaultRule>().unwrap_err();
            assert!(e.contains(says), "{s}: {e}");
        }
        assert!(check(&[rule("500=0.6"), rule("reset=0.5")]).is_err());
        assert!(check(&[rule("500=0.5"), rule("reset=0.5")]).is_ok());
    }

    #[test]
    fn draws_are_deterministic_and_hold_the_rates() {
        let rules = [rule("500=0.1"), rule("stall=0.2,for=1s"), rule("endless=0.05")];
        let n = 200_000;
        let mut counts = [0u32; 4];
        for i in 0..n {
            // Half the requests share one key: occurrences tell them apart.
            let (key, occurrence) = if i % 2 == 0 { (7, i / 2) } else { (text::mix(i), 0) };
            let fault = draw(&rules, 42, key, occurrence);
            assert_eq!(fault, draw(&rules, 42, key, occurrence));
            counts[match fault {
                Some(Fault::Status { .. }) => 0,
                Some(Fault::Stall { .. }) => 1,
                Some(Fault::Endless) => 2,
                _ => 3,
            }] += 1;
        }
        // Four standard deviations of a binomial count.
        for (count, rate) in counts.iter().zip([0.1, 0.2, 0.05, 0.65]) {
            let expected = n as f64 * rate;
            let sd = (n as f64 * rate * (1.0 - rate)).sqrt();
            assert!(
                (f64::from(*count) - expected).abs() < 4.0 * sd,
                "{count} against {expected}"
            );
        }
        assert_ne!(
            (0..64).map(|k| draw(&rules, 1, k, 0)).collect::<Vec<_>>(),
            (0..64).map(|k| draw(&rules, 2, k, 0)).collect::<Vec<_>>(),
            "another seed draws other faults"
        );
        assert_eq!(draw(&[], 1, 2, 3), None);
        assert_eq!(draw(&[rule("reset=1")], 1, 2, 3), Some(Fault::Reset { after: 0 }));
    }

    #[test]
    fn events_count_the_first_token_alone() {
        assert_eq!(events_in(1, 4), 1);
        assert_eq!(events_in(10, 1), 10);
        assert_eq!(events_in(10, 4), 4);
        assert_eq!(events_in(9, 4), 3);
    }

    #[test]
    fn a_malformed_event_is_cut_inside_its_json() {
        let sse = malformed_event("data: {\"choices\":[{\"text\":\" the\"}]}\n\n", "text/event-stream");
        assert!(sse.starts_with(b"data: {") && sse.ends_with(b"\n\n"));
        let json = &sse[6..sse.len() - 2];
        assert!(serde_json::from_slice::<Value>(json).is_err());
        let line = malformed_event("{\"response\":\" the\",\"done\":false}\n", "application/x-ndjson");
        assert!(line.ends_with(b"\n") && serde_json::from_slice::<Value>(&line).is_err());
        assert!(std::str::from_utf8(&malformed_event(" the", "text/plain")).is_err());
    }
}
