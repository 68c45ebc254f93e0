//! How an answer's tokens go out as streamed events (`--tokens-per-event`,
//! `--empty-events`), and the ground truth of the gaps between them.

use tokio::time::Instant;

use crate::metrics::PromHistogram;

/// How one answer's tokens are grouped into events, and its ground truth
/// of gaps, kept apart until the request is served so that the engine's
/// figures cover served requests only, as TTFT's and E2E's do.
pub(crate) struct Events {
    /// Tokens per event after the first.
    per_event: u32,
    /// Text of the tokens made and not yet sent.
    pending: String,
    /// How many.
    pub(crate) held: u32,
    /// Events carrying tokens sent so far.
    pub(crate) sent: u32,
    /// The token an empty event was last sent ahead of: one each, even
    /// when a preemption makes the token wait again.
    empty_before: Option<u32>,
    last_token: Option<Instant>,
    last_event: Option<Instant>,
    /// Gaps between tokens as they were made.
    pub(crate) itl: PromHistogram,
    /// Gaps between events carrying tokens as they went out.
    pub(crate) event_gap: PromHistogram,
}

impl Events {
    pub(crate) fn new(per_event: u32) -> Events {
        Events {
            per_event: per_event.max(1),
            pending: String::new(),
            held: 0,
            sent: 0,
            empty_before: None,
            last_token: None,
            last_event: None,
            itl: PromHistogram::latency(),
            event_gap: PromHistogram::latency(),
        }
    }

    /// True when the token `index` (the `last` one or not) will complete
    /// an event that is to have an empty event before it: every
    /// `every`-th event after the first.
    pub(crate) fn empty_due(&mut self, every: Option<u32>, index: u32, last: bool) -> bool {
        let Some(every) = every else { return false };
        let completes = index > 0 && (self.held + 1 == self.per_event || last);
        let due = completes && self.sent.is_multiple_of(every) && self.empty_before != Some(index);
        if due {
            self.empty_before = Some(index);
        }
        due
    }

    /// A token of `text` was made `now`; the event's text when it goes
    /// out with this token (the first token, every `per_event`-th after
    /// it, and the last). Its token count is `held` until reset.
    pub(crate) fn made(&mut self, now: Instant, text: &str, last: bool) -> Option<String> {
        if let Some(before) = self.last_token.replace(now) {
            self.itl.observe(now - before);
        }
        self.pending.push_str(text);
        self.held += 1;
        if !(self.sent == 0 || self.held == self.per_event || last) {
            return None;
        }
        if let Some(before) = self.last_event.replace(now) {
            self.event_gap.observe(now - before);
        }
        self.sent += 1;
        Some(std::mem::take(&mut self.pending))
    }
}
