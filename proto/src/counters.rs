//! Request outcome counters and error classes.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use crate::{WireError, pb};

/// Why a request failed. A failed request is a measurement of its class,
/// never a latency sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ErrorClass {
    /// No connection could be made (refused, unreachable, DNS, TLS).
    Connect,
    /// The request did not complete within its timeout.
    Timeout,
    /// The server answered with a non-success HTTP status.
    Status(u16),
    /// The connection broke or the stream ended before the response was
    /// complete.
    Stream,
    /// The response could not be understood (invalid JSON, bad framing,
    /// missing fields).
    Malformed,
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorClass::Connect => f.write_str("connect"),
            ErrorClass::Timeout => f.write_str("timeout"),
            ErrorClass::Status(code) => write!(f, "http_{code}"),
            ErrorClass::Stream => f.write_str("stream"),
            ErrorClass::Malformed => f.write_str("malformed"),
        }
    }
}

impl FromStr for ErrorClass {
    type Err = WireError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let class = match s {
            "connect" => ErrorClass::Connect,
            "timeout" => ErrorClass::Timeout,
            "stream" => ErrorClass::Stream,
            "malformed" => ErrorClass::Malformed,
            other => other
                .strip_prefix("http_")
                .and_then(|code| code.parse().ok())
                .map(ErrorClass::Status)
                .ok_or_else(|| WireError::UnknownErrorClass(s.to_owned()))?,
        };
        Ok(class)
    }
}

/// Request outcomes and token totals over some span of time. Adding two
/// `Counters` gives the counters of both spans (or both agents).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Successful requests.
    pub ok: u64,
    /// Failed requests by class.
    pub errors: BTreeMap<ErrorClass, u64>,
    /// Requests abandoned at shutdown.
    pub cancelled: u64,
    /// Input tokens of successful requests.
    pub input_tokens: u64,
    /// Output tokens of successful requests.
    pub output_tokens: u64,
    /// Successful requests whose token counts came from the server's usage.
    pub tokens_from_usage: u64,
    /// Successful requests whose output tokens were counted from events.
    pub tokens_counted: u64,
    /// Users running when the counters were cut (a gauge).
    pub active_users: u32,
    /// Requests the agent sent more than [`LATE`] after it should have:
    /// their scheduling lag passed it.
    pub late: u64,
    /// Requests written more than [`LATE`] after they were dispatched:
    /// they waited for a connection to open or a concurrency slot.
    pub held: u64,
    /// Scheduled arrivals never sent.
    pub dropped: u64,
    /// Request spans the OTLP collector accepted.
    pub spans_exported: u64,
    /// Request spans lost (queue full, collector failing, flush out of
    /// time).
    pub spans_dropped: u64,
    /// Successful requests whose output tokens were counted as words.
    pub tokens_from_words: u64,
    /// The server's count against counted stream events.
    pub server_vs_events: Comparison,
    /// The server's count against the client tokenizer's.
    pub server_vs_tokenizer: Comparison,
    /// Counted stream events against the client tokenizer's count.
    pub events_vs_tokenizer: Comparison,
    /// Successful requests whose output tokens the client tokenizer
    /// counted (the server gave no count).
    pub tokens_from_tokenizer: u64,
    /// Successful requests whose input tokens the server reported.
    pub inputs_from_server: u64,
    /// Successful requests whose input tokens the client tokenizer counted
    /// from the prompt (the server gave none).
    pub inputs_from_tokenizer: u64,
    /// Successful requests that met every objective of the run's SLO.
    pub good: u64,
    /// Output tokens of those requests.
    pub good_output_tokens: u64,
    /// Prompt tokens the server said it took from its prefix cache, over
    /// the successful requests whose answer said.
    pub cached_tokens: u64,
    /// Successful requests whose answer gave a cached-token count.
    pub cached_reported: u64,
    /// Input tokens of those requests.
    pub cached_of_input: u64,
}

/// Two output-token counts of the same requests, summed over the requests
/// that had both. Adding two gives the comparison over both spans.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Comparison {
    /// Requests that had both counts.
    pub requests: u64,
    /// The first source's tokens.
    pub first: u64,
    /// The second source's tokens.
    pub second: u64,
    /// Sum over the requests of `|first - second|`.
    pub abs_difference: u64,
    /// Requests whose counts differ.
    pub differing: u64,
}

impl Comparison {
    /// Counts one request, when it has both counts.
    pub fn record(&mut self, first: Option<u64>, second: Option<u64>) {
        if let (Some(a), Some(b)) = (first, second) {
            self.requests += 1;
            self.first += a;
            self.second += b;
            self.abs_difference += a.abs_diff(b);
            self.differing += u64::from(a != b);
        }
    }

    /// Adds `other` into `self`.
    pub fn add(&mut self, other: &Comparison) {
        self.requests += other.requests;
        self.first += other.first;
        self.second += other.second;
        self.abs_difference += other.abs_difference;
        self.differing += other.differing;
    }

    /// The wire form.
    pub fn to_wire(&self) -> pb::TokenComparison {
        pb::TokenComparison {
            requests: self.requests,
            first: self.first,
            second: self.second,
            abs_difference: self.abs_difference,
            differing: self.differing,
        }
    }

    /// Decodes the wire form (absent is empty).
    pub fn from_wire(wire: Option<&pb::TokenComparison>) -> Comparison {
        wire.map_or_else(Comparison::default, |w| Comparison {
            requests: w.requests,
            first: w.first,
            second: w.second,
            abs_difference: w.abs_difference,
            differing: w.differing,
        })
    }
}

/// A request the agent sends this long after it should have is late; one
/// written this long after it was dispatched was held.
pub const LATE: std::time::Duration = std::time::Duration::from_millis(5);

impl Counters {
    /// Total failed requests.
    pub fn failed(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Counts one failure.
    pub fn count_error(&mut self, class: ErrorClass) {
        *self.errors.entry(class).or_default() += 1;
    }

    /// Adds `other` into `self`. The gauge `active_users` adds too: summing
    /// agents' gauges at one instant gives the run's gauge.
    pub fn add(&mut self, other: &Counters) {
        self.ok += other.ok;
        for (class, n) in &other.errors {
            *self.errors.entry(*class).or_default() += n;
        }
        self.cancelled += other.cancelled;
        self.input_tokens += other.input_tokens;
        self.output_tokens += other.output_tokens;
        self.tokens_from_usage += other.tokens_from_usage;
        self.tokens_counted += other.tokens_counted;
        self.active_users += other.active_users;
        self.late += other.late;
        self.held += other.held;
        self.dropped += other.dropped;
        self.spans_exported += other.spans_exported;
        self.spans_dropped += other.spans_dropped;
        self.tokens_from_words += other.tokens_from_words;
        self.server_vs_events.add(&other.server_vs_events);
        self.server_vs_tokenizer.add(&other.server_vs_tokenizer);
        self.events_vs_tokenizer.add(&other.events_vs_tokenizer);
        self.tokens_from_tokenizer += other.tokens_from_tokenizer;
        self.inputs_from_server += other.inputs_from_server;
        self.inputs_from_tokenizer += other.inputs_from_tokenizer;
        self.good += other.good;
        self.good_output_tokens += other.good_output_tokens;
        self.cached_tokens += other.cached_tokens;
        self.cached_reported += other.cached_reported;
        self.cached_of_input += other.cached_of_input;
    }

    /// The wire form.
    pub fn to_wire(&self) -> pb::Counters {
        pb::Counters {
            ok: self.ok,
            errors: self.errors.iter().map(|(class, n)| (class.to_string(), *n)).collect(),
            cancelled: self.cancelled,
            input_tokens: self.input_tokens,
            output_tokens: self.output_tokens,
            tokens_from_usage: self.tokens_from_usage,
            tokens_counted: self.tokens_counted,
            active_users: self.active_users,
            late: self.late,
            held: self.held,
            dropped: self.dropped,
            spans_exported: self.spans_exported,
            spans_dropped: self.spans_dropped,
            tokens_from_words: self.tokens_from_words,
            server_vs_events: Some(self.server_vs_events.to_wire()),
            server_vs_tokenizer: Some(self.server_vs_tokenizer.to_wire()),
            events_vs_tokenizer: Some(self.events_vs_tokenizer.to_wire()),
            tokens_from_tokenizer: self.tokens_from_tokenizer,
            inputs_from_server: self.inputs_from_server,
            inputs_from_tokenizer: self.inputs_from_tokenizer,
            good: self.good,
            good_output_tokens: self.good_output_tokens,
            cached_tokens: self.cached_tokens,
            cached_reported: self.cached_reported,
            cached_of_input: self.cached_of_input,
        }
    }

    /// Decodes the wire form; an unknown error class is an error.
    pub fn from_wire(wire: &pb::Counters) -> Result<Counters, WireError> {
        let mut errors = BTreeMap::new();
        for (class, n) in &wire.errors {
            *errors.entry(class.parse()?).or_default() += n;
        }
        Ok(Counters {
            ok: wire.ok,
            errors,
            cancelled: wire.cancelled,
            input_tokens: wire.input_tokens,
            output_tokens: wire.output_tokens,
            tokens_from_usage: wire.tokens_from_usage,
            tokens_counted: wire.tokens_counted,
            active_users: wire.active_users,
            late: wire.late,
            held: wire.held,
            dropped: wire.dropped,
            spans_exported: wire.spans_exported,
            spans_dropped: wire.spans_dropped,
            tokens_from_words: wire.tokens_from_words,
            server_vs_events: Comparison::from_wire(wire.server_vs_events.as_ref()),
            server_vs_tokenizer: Comparison::from_wire(wire.server_vs_tokenizer.as_ref()),
            events_vs_tokenizer: Comparison::from_wire(wire.events_vs_tokenizer.as_ref()),
            tokens_from_tokenizer: wire.tokens_from_tokenizer,
            inputs_from_server: wire.inputs_from_server,
            inputs_from_tokenizer: wire.inputs_from_tokenizer,
            good: wire.good,
            good_output_tokens: wire.good_output_tokens,
            cached_tokens: wire.cached_tokens,
            cached_reported: wire.cached_reported,
            cached_of_input: wire.cached_of_input,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_classes_round_trip_through_their_names() {
        for class in [
            ErrorClass::Connect,
            ErrorClass::Timeout,
            ErrorClass::Status(503),
            ErrorClass::Stream,
            ErrorClass::Malformed,
        ] {
            assert_eq!(class.to_string().parse::<ErrorClass>().unwrap(), class);
        }
        assert!("http_abc".parse::<ErrorClass>().is_err());
        assert!("gremlins".parse::<ErrorClass>().is_err());
    }

    #[test]
    fn counters_add_and_round_trip() {
        let mut a = Counters {
            ok: 3,
            input_tokens: 30,
            output_tokens: 60,
            tokens_from_usage: 3,
            active_users: 2,
            tokens_from_words: 1,
            tokens_from_tokenizer: 2,
            inputs_from_server: 3,
            inputs_from_tokenizer: 1,
            good: 2,
            good_output_tokens: 40,
            cached_tokens: 12,
            cached_reported: 2,
            cached_of_input: 20,
            ..Counters::default()
        };
        a.server_vs_events.record(Some(50), Some(49));
        a.server_vs_tokenizer.record(Some(50), Some(53));
        a.events_vs_tokenizer.record(Some(49), None);
        a.count_error(ErrorClass::Status(500));
        let mut b = a.clone();
        b.count_error(ErrorClass::Connect);
        a.add(&b);
        assert_eq!(a.ok, 6);
        assert_eq!((a.good, a.good_output_tokens), (4, 80));
        assert_eq!(a.errors[&ErrorClass::Status(500)], 2);
        assert_eq!(a.errors[&ErrorClass::Connect], 1);
        assert_eq!(a.failed(), 3);
        assert_eq!(Counters::from_wire(&a.to_wire()).unwrap(), a);
        assert_eq!(a.server_vs_tokenizer.requests, 2);
        assert_eq!(a.events_vs_tokenizer, Comparison::default());
    }

    #[test]
    fn comparisons_keep_what_totals_hide() {
        let mut c = Comparison::default();
        // One request 3 over, one 3 under: the totals agree, the
        // requests do not.
        c.record(Some(10), Some(13));
        c.record(Some(10), Some(7));
        c.record(Some(5), Some(5));
        c.record(None, Some(5));
        assert_eq!(
            c,
            Comparison {
                requests: 3,
                first: 25,
                second: 25,
                abs_difference: 6,
                differing: 2,
            }
        );
        assert_eq!(Comparison::from_wire(Some(&c.to_wire())), c);
        assert_eq!(Comparison::from_wire(None), Comparison::default());
    }
}
