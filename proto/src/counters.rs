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
    /// Requests sent more than [`LATE`] after their intended start.
    pub late: u64,
    /// Scheduled arrivals never sent.
    pub dropped: u64,
    /// Successful requests whose output tokens were counted as words.
    pub tokens_from_words: u64,
    /// Server-counted output tokens of requests that also counted events.
    pub compared_server_tokens: u64,
    /// Counted events of those same requests.
    pub compared_event_tokens: u64,
}

/// A request sent this long after its intended start is late.
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
        self.dropped += other.dropped;
        self.tokens_from_words += other.tokens_from_words;
        self.compared_server_tokens += other.compared_server_tokens;
        self.compared_event_tokens += other.compared_event_tokens;
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
            dropped: self.dropped,
            tokens_from_words: self.tokens_from_words,
            compared_server_tokens: self.compared_server_tokens,
            compared_event_tokens: self.compared_event_tokens,
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
            dropped: wire.dropped,
            tokens_from_words: wire.tokens_from_words,
            compared_server_tokens: wire.compared_server_tokens,
            compared_event_tokens: wire.compared_event_tokens,
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
            compared_server_tokens: 50,
            compared_event_tokens: 49,
            ..Counters::default()
        };
        a.count_error(ErrorClass::Status(500));
        let mut b = a.clone();
        b.count_error(ErrorClass::Connect);
        a.add(&b);
        assert_eq!(a.ok, 6);
        assert_eq!(a.errors[&ErrorClass::Status(500)], 2);
        assert_eq!(a.errors[&ErrorClass::Connect], 1);
        assert_eq!(a.failed(), 3);
        assert_eq!(Counters::from_wire(&a.to_wire()).unwrap(), a);
    }
}
