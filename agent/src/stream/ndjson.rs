//! Incremental newline-delimited JSON framing (Ollama, `http-json`).
//!
//! Each non-blank line is one event; `\r\n` endings are accepted. Reads
//! may split a line at any byte. A last line without a newline is handed
//! out by [`Framer::finish`] when the body ends: many servers leave the
//! final newline out.

use tokio::time::Instant;

use super::lines::{Ends, Lines};
use super::sse::{Event, PushError};
#[cfg(test)]
use super::sse::{FrameError, MAX_LINE};

/// Turns reads into lines. Keeps a partial line between reads.
#[derive(Debug)]
pub struct Framer {
    lines: Lines,
}

impl Default for Framer {
    fn default() -> Self {
        Framer {
            lines: Lines::new(Ends::Newline),
        }
    }
}

fn trimmed(line: &[u8]) -> &[u8] {
    let end = line.iter().rposition(|b| !b.is_ascii_whitespace()).map_or(0, |i| i + 1);
    let start = line.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(end);
    &line[start..end]
}

impl Framer {
    /// A framer at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds one read that arrived at `at`, calling `on_line` for each
    /// complete, non-blank line, in order. Stops early when `on_line`
    /// returns `Err`.
    pub fn push<E>(
        &mut self,
        bytes: &[u8],
        at: Instant,
        mut on_line: impl FnMut(Event<'_>) -> Result<(), E>,
    ) -> Result<(), PushError<E>> {
        self.lines.push(bytes, at, |line, first_byte_at| {
            let data = trimmed(line.bytes());
            if data.is_empty() {
                return Ok(()); // A blank line between objects.
            }
            on_line(Event {
                name: "",
                data,
                first_byte_at,
            })
        })
    }

    /// The body ended: hands out a last line that had no newline.
    pub fn finish<E>(&mut self, on_line: impl FnOnce(Event<'_>) -> Result<(), E>) -> Result<(), E> {
        self.lines.finish(|line, first_byte_at| {
            let data = trimmed(line);
            if data.is_empty() {
                return Ok(());
            }
            on_line(Event {
                name: "",
                data,
                first_byte_at,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

    /// Lines as Ollama streams them, a blank line, CRLF, and a last line
    /// without its newline.
    const STREAM: &[u8] = b"{\"response\":\"The\",\"done\":false}\n{\"response\":\" sky\\u00e9\",\"done\":false}\n\n{\"response\":\" is\"}\r\n{\"done\":true,\"eval_count\":3}";

    fn feed(parts: &[&[u8]], base: Instant) -> Vec<(String, Duration)> {
        let mut framer = Framer::new();
        let mut out = Vec::new();
        for (i, part) in parts.iter().enumerate() {
            let at = base + Duration::from_millis(i as u64);
            framer
                .push::<()>(part, at, |e| {
                    out.push((String::from_utf8_lossy(e.data).into_owned(), e.first_byte_at - base));
                    Ok(())
                })
                .unwrap();
        }
        framer
            .finish::<()>(|e| {
                out.push((String::from_utf8_lossy(e.data).into_owned(), e.first_byte_at - base));
                Ok(())
            })
            .unwrap();
        out
    }

    fn lines(v: &[(String, Duration)]) -> Vec<&str> {
        v.iter().map(|l| l.0.as_str()).collect()
    }

    #[test]
    fn lines_blank_lines_crlf_and_a_last_line_without_newline() {
        let base = Instant::now();
        let got = feed(&[STREAM], base);
        assert_eq!(
            lines(&got),
            [
                "{\"response\":\"The\",\"done\":false}",
                "{\"response\":\" sky\\u00e9\",\"done\":false}",
                "{\"response\":\" is\"}",
                "{\"done\":true,\"eval_count\":3}",
            ]
        );
    }

    #[test]
    fn a_line_is_timed_by_its_first_byte() {
        let base = Instant::now();
        let got = feed(&[b"{\"a\"", b":1}\n{\"b\":2}\n"], base);
        assert_eq!(got.iter().map(|l| l.1.as_millis()).collect::<Vec<_>>(), [0, 1]);
    }

    #[test]
    fn every_split_offset_gives_the_same_lines() {
        let base = Instant::now();
        let whole = feed(&[STREAM], base);
        for cut in 0..=STREAM.len() {
            let split = feed(&[&STREAM[..cut], &STREAM[cut..]], base);
            assert_eq!(lines(&split), lines(&whole), "split at byte {cut}");
        }
    }

    #[test]
    fn endless_line_is_refused_and_handler_errors_stop() {
        let mut f = Framer::new();
        let big = vec![b'a'; MAX_LINE + 1];
        let r = f.push::<()>(&big, Instant::now(), |_| Ok(()));
        assert_eq!(r, Err(PushError::Frame(FrameError::LineTooLong)));
        let mut f = Framer::new();
        let r = f.push(b"1\n2\n", Instant::now(), |_| Err("no"));
        assert_eq!(r, Err(PushError::Event("no")));
    }

    /// Cases each fuzz property runs (see README: Testing).
    const FUZZ_CASES: u32 = 4096;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(FUZZ_CASES))]

        /// Splitting a stream at any byte offsets gives the same lines.
        #[test]
        fn any_split_gives_the_same_lines(cuts in prop::collection::btree_set(0..STREAM.len(), 0..16)) {
            let base = Instant::now();
            let whole = feed(&[STREAM], base);
            let mut parts = Vec::new();
            let mut last = 0;
            for cut in cuts.into_iter().chain([STREAM.len()]) {
                parts.push(&STREAM[last..cut]);
                last = cut;
            }
            let split = feed(&parts, base);
            prop_assert_eq!(lines(&split), lines(&whole));
        }

        /// Arbitrary bytes never panic the framer, and every line it hands
        /// out is non-blank and holds no newline.
        #[test]
        fn arbitrary_bytes_never_panic(reads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 0..16)) {
            let mut f = Framer::new();
            let mut bad = false;
            for r in reads {
                let _ = f.push::<()>(&r, Instant::now(), |e| {
                    bad |= e.data.is_empty() || e.data.contains(&b'\n');
                    Ok(())
                });
            }
            let _ = f.finish::<()>(|e| {
                bad |= e.data.is_empty();
                Ok(())
            });
            prop_assert!(!bad);
        }
    }
}
