//! A streamed answer's events that carried generated text: how many tokens
//! each carried, and the gaps between them.
//!
//! A server may send several tokens in one event (vLLM under load, an
//! engine that decodes ahead) and events with no token at all (vLLM's
//! empty-content chunks). Inter-token latency is per token, so each event's
//! tokens must be known. They come from the best source at hand:
//!
//! 1. the server's running count, when every text event carried one
//!    (vLLM's `stream_options.continuous_usage_stats`): an event carried
//!    the difference from the previous text event's count, so the tokens
//!    of events without text fall to the next event with text;
//! 2. else the client tokenizer's count of the answer's text, each token
//!    given to the event that carried its last byte;
//! 3. else, with only a total larger than the number of events (the
//!    server's final usage, or the words of a plain-text stream), one token
//!    to each event and the rest shared among the events after the first
//!    in proportion to the bytes of text each carried (rounded on the
//!    running sum, so that the shares add up to the total). The first
//!    event keeps one: it follows the prefill, which makes one token, and
//!    its tokens are no ITL samples, so giving it more would only lower
//!    the samples' count;
//! 4. else one token per event.
//!
//! An event found to carry no token is no event for the metrics: its time
//! counts in the gap before the next event that carried one.

use tokio::time::Instant;

use crate::record::Gap;

/// One stream event that carried generated text, as it came.
#[derive(Clone, Copy, Debug)]
pub struct Event {
    /// When its first byte came off the socket.
    pub at: Instant,
    /// The server's running count of generated tokens, when the event
    /// carried one.
    pub usage: Option<u64>,
    /// Bytes of generated text it carried.
    pub bytes: u64,
    /// Where its text ends in the answer's kept text (when it is kept).
    pub text_end: usize,
}

/// Where the events' token counts came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// The server's running count on every event.
    Usage,
    /// The client tokenizer's count of each event's text.
    Tokenizer,
    /// A total shared among the events.
    Shared,
    /// One token per event.
    One,
}

/// The gaps between `events` (in arrival order) that carried tokens, each
/// with its tokens, into `gaps`. `counted` is the tokenizer's count for
/// each event; `total` the answer's total when it is known but not per
/// event. `tokens` is scratch space: each event's tokens.
pub fn gaps(
    events: &[Event],
    counted: Option<&[u32]>,
    total: Option<u64>,
    tokens: &mut Vec<u32>,
    gaps: &mut Vec<Gap>,
) -> Split {
    gaps.clear();
    let split = per_event(events, counted, total, tokens);
    let mut previous: Option<Instant> = None;
    for (event, &k) in events.iter().zip(tokens.iter()) {
        if k == 0 {
            continue;
        }
        if let Some(prev) = previous {
            let us = u64::try_from(event.at.saturating_duration_since(prev).as_micros()).unwrap_or(u64::MAX);
            gaps.push(Gap { us, tokens: k });
        }
        previous = Some(event.at);
    }
    split
}

/// Each event's tokens into `tokens`, and where they came from.
fn per_event(events: &[Event], counted: Option<&[u32]>, total: Option<u64>, tokens: &mut Vec<u32>) -> Split {
    tokens.clear();
    let to_u32 = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
    if running_count(events) {
        let mut before = 0;
        for e in events {
            let now = e.usage.unwrap_or(before);
            tokens.push(to_u32(now - before));
            before = now;
        }
        return Split::Usage;
    }
    if let Some(c) = counted.filter(|c| c.len() == events.len()) {
        tokens.extend_from_slice(c);
        return Split::Tokenizer;
    }
    let n = events.len() as u64;
    let Some(extra) = total.filter(|&t| t > n && n > 0).map(|t| t - n) else {
        tokens.resize(events.len(), 1);
        return Split::One;
    };
    // One token each, and the rest shared among the events after the
    // first in proportion to the bytes of text (equally when none has
    // any), rounded on the running sum so that the shares add up to the
    // total exactly and each is within one of its exact share.
    tokens.resize(events.len(), 1);
    let later = &events[1..];
    let bytes: u64 = later.iter().map(|e| e.bytes).sum();
    let weights = if bytes == 0 {
        later.len() as u128
    } else {
        u128::from(bytes)
    };
    if weights == 0 {
        tokens[0] = to_u32(extra + 1);
        return Split::Shared;
    }
    let (mut cumulative, mut given) = (0u128, 0u128);
    for (k, e) in tokens[1..].iter_mut().zip(later) {
        cumulative += if bytes == 0 { 1 } else { u128::from(e.bytes) };
        let upto = u128::from(extra) * cumulative / weights;
        *k = to_u32(u64::try_from(upto - given).unwrap_or(u64::MAX)).saturating_add(1);
        given = upto;
    }
    Split::Shared
}

/// True when every event carried the server's running count and it never
/// went down.
fn running_count(events: &[Event]) -> bool {
    !events.is_empty()
        && events.iter().all(|e| e.usage.is_some())
        && events.windows(2).all(|w| w[0].usage <= w[1].usage)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn at(start: Instant, ms: u64) -> Instant {
        start + Duration::from_millis(ms)
    }

    fn event(start: Instant, ms: u64, usage: Option<u64>, bytes: u64) -> Event {
        Event {
            at: at(start, ms),
            usage,
            bytes,
            text_end: 0,
        }
    }

    fn gap(ms: u64, tokens: u32) -> Gap {
        Gap { us: ms * 1000, tokens }
    }

    #[test]
    fn the_servers_running_count_says_what_each_event_carried() {
        let t = Instant::now();
        // The first token alone, then 4, then 3 of which one came in an
        // event without text (it is no event here; its token falls to the
        // next one, 8 → 11).
        let events = [
            event(t, 100, Some(1), 5),
            event(t, 260, Some(5), 20),
            event(t, 380, Some(8), 4),
        ];
        let (mut out, mut k) = (Vec::new(), Vec::new());
        assert_eq!(gaps(&events, Some(&[9, 9, 9]), Some(8), &mut k, &mut out), Split::Usage);
        assert_eq!(out, [gap(160, 4), gap(120, 3)]);
    }

    #[test]
    fn without_a_running_count_on_every_event_the_tokenizer_decides() {
        let t = Instant::now();
        // A server that puts its usage on the last text event only.
        let events = [event(t, 0, None, 3), event(t, 50, None, 3), event(t, 90, Some(12), 3)];
        let (mut out, mut k) = (Vec::new(), Vec::new());
        assert_eq!(
            gaps(&events, Some(&[1, 2, 5]), Some(12), &mut k, &mut out),
            Split::Tokenizer
        );
        assert_eq!(out, [gap(50, 2), gap(40, 5)]);
    }

    #[test]
    fn an_event_of_no_token_passes_its_time_to_the_next() {
        let t = Instant::now();
        let events = [event(t, 0, None, 1), event(t, 30, None, 1), event(t, 70, None, 1)];
        let (mut out, mut k) = (Vec::new(), Vec::new());
        // The tokenizer finds no token in the middle event (a space).
        gaps(&events, Some(&[1, 0, 2]), None, &mut k, &mut out);
        assert_eq!(out, [gap(70, 2)]);
        // A running count that stands still does the same.
        let events = [
            event(t, 0, Some(1), 1),
            event(t, 30, Some(1), 1),
            event(t, 70, Some(3), 1),
        ];
        assert_eq!(gaps(&events, None, None, &mut k, &mut out), Split::Usage);
        assert_eq!(out, [gap(70, 2)]);
    }

    #[test]
    fn a_count_that_goes_down_is_no_running_count() {
        let t = Instant::now();
        let events = [event(t, 0, Some(5), 1), event(t, 10, Some(2), 1)];
        let (mut out, mut k) = (Vec::new(), Vec::new());
        assert_eq!(gaps(&events, None, None, &mut k, &mut out), Split::One);
        assert_eq!(out, [gap(10, 1)]);
    }

    #[test]
    fn a_total_alone_is_shared_by_bytes_with_one_token_per_event_first() {
        let t = Instant::now();
        // 10 tokens over 4 events: one each, and 6 more by the later
        // events' bytes 10:20:30 (1, 2 and 3 exactly); the first event's
        // bytes do not count.
        let events = [
            event(t, 0, None, 50),
            event(t, 40, None, 10),
            event(t, 100, None, 20),
            event(t, 180, None, 30),
        ];
        let (mut out, mut k) = (Vec::new(), Vec::new());
        assert_eq!(gaps(&events, None, Some(10), &mut k, &mut out), Split::Shared);
        assert_eq!(k, [1, 2, 3, 4]);
        assert_eq!(out, [gap(40, 2), gap(60, 3), gap(80, 4)]);
        // 5 extra over bytes 1:1:1 is 1.67 each: rounded on the running
        // sum (1.67, 3.33, 5) they are 1, 2 and 2.
        let events = [
            event(t, 0, None, 1),
            event(t, 10, None, 1),
            event(t, 20, None, 1),
            event(t, 30, None, 1),
        ];
        gaps(&events, None, Some(9), &mut k, &mut out);
        assert_eq!(k, [1, 2, 3, 3]);
        assert_eq!(out, [gap(10, 2), gap(10, 3), gap(10, 3)]);
        // No bytes known: shared equally.
        let events = [event(t, 0, None, 0), event(t, 10, None, 0), event(t, 20, None, 0)];
        gaps(&events, None, Some(7), &mut k, &mut out);
        assert_eq!(out, [gap(10, 3), gap(10, 3)]);
        // One event: it has them all, and no gap.
        gaps(&events[..1], None, Some(7), &mut k, &mut out);
        assert_eq!((k.as_slice(), out.len()), (&[7][..], 0));
    }

    #[test]
    fn a_total_no_larger_than_the_events_or_none_is_one_token_per_event() {
        let t = Instant::now();
        let events = [event(t, 0, None, 9), event(t, 25, None, 1), event(t, 45, None, 1)];
        let (mut out, mut k) = (Vec::new(), Vec::new());
        assert_eq!(gaps(&events, None, Some(3), &mut k, &mut out), Split::One);
        assert_eq!(out, [gap(25, 1), gap(20, 1)]);
        assert_eq!(gaps(&events, None, Some(2), &mut k, &mut out), Split::One);
        assert_eq!(gaps(&events, None, None, &mut k, &mut out), Split::One);
        assert_eq!(gaps(&[], None, Some(5), &mut k, &mut out), Split::One);
        assert!(out.is_empty());
        // A tokenizer count of another length (it failed) is not used.
        assert_eq!(gaps(&events, Some(&[1]), None, &mut k, &mut out), Split::One);
    }
}
