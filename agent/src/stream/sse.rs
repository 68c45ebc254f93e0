//! Incremental Server-Sent Events framing.
//!
//! Bytes arrive in reads of any size; an event may be split across reads at
//! any byte, or many events may share one read. Each event carries the
//! arrival time of its first byte, which is when a token "arrives" for TTFT
//! and ITL.

use tokio::time::Instant;

use super::lines::{Line, Lines};

/// Longest line accepted, to bound memory against a broken server.
pub(crate) const MAX_LINE: usize = 8 * 1024 * 1024;

/// One dispatched event.
#[derive(Debug)]
pub struct Event<'a> {
    /// The `event:` field, empty when absent.
    pub name: &'a str,
    /// The `data:` lines, joined with `\n`.
    pub data: &'a [u8],
    /// Arrival time of the event's first byte.
    pub first_byte_at: Instant,
}

/// A framing failure: the stream cannot be cut into events.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// A line grew beyond the limit without ending.
    #[error("a streamed line exceeded {MAX_LINE} bytes")]
    LineTooLong,
}

/// Turns reads into events. Keeps partial lines between reads.
#[derive(Debug, Default)]
pub struct Framer {
    lines: Lines,
    event: Pending,
}

/// The event being gathered, line by line.
#[derive(Debug, Default)]
struct Pending {
    data: Vec<u8>,
    has_data: bool,
    name: String,
    started_at: Option<Instant>,
}

impl Framer {
    /// A framer at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds one read that arrived at `at`, calling `on_event` for each
    /// complete event, in order. Stops early when `on_event` returns `Err`.
    pub fn push<E>(
        &mut self,
        bytes: &[u8],
        at: Instant,
        mut on_event: impl FnMut(Event<'_>) -> Result<(), E>,
    ) -> Result<(), PushError<E>> {
        let event = &mut self.event;
        // The data of an event whose one data line is in this read, lent
        // from it rather than copied (the usual event: one `data:` line and
        // a blank line in the same read).
        let mut lent = None;
        let pushed = self.lines.push(bytes, at, |line, started| {
            event.line(line, started, &mut lent, &mut on_event)
        });
        if let Some(data) = lent {
            // The event goes on in a later read: keep its data.
            event.data.extend_from_slice(data);
        }
        pushed
    }
}

impl Pending {
    fn line<'b, E>(
        &mut self,
        line: Line<'b, '_>,
        started: Instant,
        lent: &mut Option<&'b [u8]>,
        on_event: &mut impl FnMut(Event<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        let bytes = line.bytes();
        if bytes.is_empty() {
            let dispatch = self.has_data;
            let first_byte_at = self.started_at.take().unwrap_or(started);
            let data = lent.take();
            let result = if dispatch {
                on_event(Event {
                    name: &self.name,
                    data: data.unwrap_or(&self.data),
                    first_byte_at,
                })
            } else {
                Ok(())
            };
            self.data.clear();
            self.has_data = false;
            self.name.clear();
            return result;
        }
        self.started_at.get_or_insert(started);
        if bytes[0] == b':' {
            return Ok(()); // A comment; keeps connections alive.
        }
        let (name, value) = field(bytes);
        match name {
            b"data" => {
                if let (false, Some(line)) = (self.has_data, line.lent()) {
                    *lent = Some(field(line).1);
                } else {
                    if let Some(earlier) = lent.take() {
                        self.data.extend_from_slice(earlier);
                    }
                    if self.has_data {
                        self.data.push(b'\n');
                    }
                    self.data.extend_from_slice(value);
                }
                self.has_data = true;
            }
            b"event" => {
                self.name.clear();
                self.name.push_str(&String::from_utf8_lossy(value));
            }
            _ => {} // `id`, `retry` and unknown fields carry nothing we use.
        }
        Ok(())
    }
}

/// A line's field name and value.
fn field(line: &[u8]) -> (&[u8], &[u8]) {
    match line.iter().position(|b| *b == b':') {
        Some(i) => {
            let value = &line[i + 1..];
            (&line[..i], value.strip_prefix(b" ").unwrap_or(value))
        }
        None => (line, &[][..]),
    }
}

impl Framer {
    /// True when bytes of an unfinished event are buffered: a stream that
    /// ends now was cut mid-event.
    pub fn is_mid_event(&self) -> bool {
        self.lines.is_mid_line() || self.event.has_data
    }
}

/// Why [`Framer::push`] stopped.
#[derive(Debug, PartialEq, Eq)]
pub enum PushError<E> {
    /// The bytes are not valid SSE.
    Frame(FrameError),
    /// The event handler refused an event.
    Event(E),
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

    type Collected = Vec<(String, String, Duration)>;

    fn feed(parts: &[&[u8]], base: Instant) -> Collected {
        let mut framer = Framer::new();
        let mut out = Vec::new();
        for (i, part) in parts.iter().enumerate() {
            let at = base + Duration::from_millis(i as u64);
            framer
                .push::<()>(part, at, |e| {
                    out.push((
                        e.name.to_owned(),
                        String::from_utf8(e.data.to_vec()).unwrap(),
                        e.first_byte_at - base,
                    ));
                    Ok(())
                })
                .unwrap();
        }
        out
    }

    const STREAM: &[u8] = b": keep-alive\n\ndata: {\"a\":1}\n\nevent: error\ndata: x\ndata: y\n\ndata: [DONE]\n\n";

    #[test]
    fn events_in_one_read() {
        let base = Instant::now();
        let events = feed(&[STREAM], base);
        let data: Vec<_> = events.iter().map(|e| e.1.as_str()).collect();
        assert_eq!(data, ["{\"a\":1}", "x\ny", "[DONE]"]);
        assert_eq!(events[1].0, "error");
        assert_eq!(events[2].0, "");
    }

    #[test]
    fn crlf_and_cr_line_endings() {
        let base = Instant::now();
        let events = feed(&[b"data: a\r\n\r\ndata: b\r\rdata:c\n\n"], base);
        let data: Vec<_> = events.iter().map(|e| e.1.as_str()).collect();
        assert_eq!(data, ["a", "b", "c"]);
    }

    #[test]
    fn crlf_split_between_reads_is_one_line_end() {
        let base = Instant::now();
        let events = feed(&[b"data: a\r", b"\n\r", b"\ndata: b\r\n\r\n"], base);
        let data: Vec<_> = events.iter().map(|e| e.1.as_str()).collect();
        assert_eq!(data, ["a", "b"]);
    }

    #[test]
    fn event_time_is_its_first_byte_not_its_last() {
        let base = Instant::now();
        // Read 0 starts the event, read 2 completes it.
        let events = feed(&[b"da", b"ta: tok", b"en\n\n"], base);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].2, Duration::ZERO);
        // Two events in one read arrive together.
        let events = feed(&[b"data: 1\n", b"\ndata: 2\n\ndata: 3\n\n"], base);
        let times: Vec<_> = events.iter().map(|e| e.2.as_millis()).collect();
        assert_eq!(times, [0, 1, 1]);
    }

    #[test]
    fn unfinished_event_is_visible() {
        let mut f = Framer::new();
        let now = Instant::now();
        f.push::<()>(b"data: {\"par", now, |_| Ok(())).unwrap();
        assert!(f.is_mid_event());
        f.push::<()>(b"tial\"}\n\n", now, |_| Ok(())).unwrap();
        assert!(!f.is_mid_event());
    }

    #[test]
    fn handler_errors_stop_the_push() {
        let mut f = Framer::new();
        let r = f.push(b"data: 1\n\ndata: 2\n\n", Instant::now(), |_| Err("no"));
        assert_eq!(r, Err(PushError::Event("no")));
    }

    #[test]
    fn endless_line_is_refused() {
        let mut f = Framer::new();
        let big = vec![b'a'; MAX_LINE + 1];
        let r = f.push::<()>(&big, Instant::now(), |_| Ok(()));
        assert_eq!(r, Err(PushError::Frame(FrameError::LineTooLong)));
    }

    #[test]
    fn every_split_offset_gives_the_same_events() {
        let base = Instant::now();
        let strip = |v: &Collected| v.iter().map(|e| (e.0.clone(), e.1.clone())).collect::<Vec<_>>();
        let whole = strip(&feed(&[STREAM], base));
        for cut in 0..=STREAM.len() {
            let split = feed(&[&STREAM[..cut], &STREAM[cut..]], base);
            assert_eq!(strip(&split), whole, "split at byte {cut}");
        }
    }

    /// Cases each fuzz property runs (see README: Testing).
    const FUZZ_CASES: u32 = 4096;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(FUZZ_CASES))]

        /// Splitting a stream at any byte offsets gives the same events.
        #[test]
        fn any_split_gives_the_same_events(cuts in prop::collection::btree_set(0..STREAM.len(), 0..12)) {
            let base = Instant::now();
            let whole = feed(&[STREAM], base);
            let mut parts = Vec::new();
            let mut last = 0;
            for cut in cuts.into_iter().chain([STREAM.len()]) {
                parts.push(&STREAM[last..cut]);
                last = cut;
            }
            let split = feed(&parts, base);
            let strip = |v: &Collected| v.iter().map(|e| (e.0.clone(), e.1.clone())).collect::<Vec<_>>();
            prop_assert_eq!(strip(&split), strip(&whole));
        }

        /// Arbitrary bytes never panic the framer.
        #[test]
        fn arbitrary_bytes_never_panic(reads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 0..16)) {
            let mut f = Framer::new();
            for r in reads {
                let _ = f.push::<()>(&r, Instant::now(), |_| Ok(()));
            }
        }
    }
}
