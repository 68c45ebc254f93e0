//! Per-request outcomes into per-thread histograms, cut into intervals.
//!
//! Each worker thread records into its own [`Interval`] (a shard), found
//! through a thread-local, so recording never waits on another thread and
//! nothing crosses a channel per token or per request. Each shard sits
//! behind a mutex that only two parties touch: its own thread, once per
//! completed request, and the reporter, once per interval, for the time of
//! a pointer swap.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use stampede_proto::{Counters, ErrorClass, Histograms, Metric};

use crate::api::ServerTimes;

/// Where a request's output-token count came from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TokenSource {
    /// The server's own count (usage, `eval_count`, TGI details, an
    /// `http-json` token pointer).
    #[default]
    Server,
    /// Stream events that carried text.
    Events,
    /// Whitespace-separated words of the answer.
    Words,
    /// The client tokenizer's count of the text (the run's
    /// `tokenizer.json`).
    Tokenizer,
}

/// One stream event that carried generated tokens, after the first such
/// event: the gap before it and how many tokens it carried.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Gap {
    /// From the first byte of the previous event that carried tokens to
    /// this event's first byte, microseconds. Events without tokens in
    /// between are part of it.
    pub us: u64,
    /// Tokens this event carried (see [`crate::exec`] for how they are
    /// known); at least 1.
    pub tokens: u32,
}

impl Gap {
    /// The gap split among its tokens: `(value, count)` pairs of per-token
    /// inter-token latencies. A gap `g` over `k` tokens gives `g mod k`
    /// samples of `g / k + 1` and the rest of `g / k` (integer division),
    /// so that the samples add up to `g` exactly and differ by at most
    /// one microsecond.
    pub fn per_token(self) -> [(u64, u64); 2] {
        let k = u64::from(self.tokens.max(1));
        let (q, r) = (self.us / k, self.us % k);
        [(q + 1, r), (q, k - r)]
    }

    /// The largest per-token sample of this gap.
    pub fn per_token_max(self) -> u64 {
        let k = u64::from(self.tokens.max(1));
        self.us.div_ceil(k)
    }
}

/// How one request ended.
// Built on the stack once per request and recorded at once: boxing the
// large `Ok` sample would cost an allocation per request for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Outcome<'a> {
    /// It completed: a latency sample.
    Ok(Sample<'a>),
    /// It failed: counted by class, never a latency sample.
    Failed {
        /// Why.
        class: ErrorClass,
        /// What happened, for the summary.
        message: String,
        /// Intended start to dispatch, microseconds: a measure of the
        /// agent, recorded whatever the server did.
        schedule_lag_us: u64,
        /// It was sent more than [`stampede_proto::LATE`] after its
        /// intended start.
        late: bool,
        /// Its prompt's class, an index into the share's class names.
        prompt_class: u16,
        /// How long the server asked this client to wait before its next
        /// request (`Retry-After` on a 429 or 503), when the run honours it.
        retry_after: Option<std::time::Duration>,
    },
    /// It was abandoned at shutdown.
    Cancelled,
    /// A scheduled arrival that was never sent: the load ended while it
    /// waited for its turn.
    Dropped,
}

/// The measurements of one completed request, in microseconds.
#[derive(Debug, Default)]
pub struct Sample<'a> {
    /// Time to first token; absent when nothing was streamed.
    pub ttft_us: Option<u64>,
    /// Every gap between consecutive events carrying tokens, with the
    /// number of tokens each carried: one chunk-gap sample each, and its
    /// tokens' inter-token latencies.
    pub gaps: &'a [Gap],
    /// Time per output token after the first; absent with fewer than two.
    pub tpot_us: Option<u64>,
    /// End to end.
    pub e2e_us: u64,
    /// Intended start to request write.
    pub client_queue_us: u64,
    /// Time to open the connection, when this request opened one.
    pub connect_us: Option<u64>,
    /// Prompt tokens: the server's count, else the client tokenizer's.
    pub input_tokens: Option<u64>,
    /// Where `input_tokens` came from (`Server` or `Tokenizer`).
    pub input_source: Option<TokenSource>,
    /// Generated tokens, from the best source at hand.
    pub output_tokens: u64,
    /// Where `output_tokens` came from.
    pub token_source: TokenSource,
    /// The server's own count of generated tokens, when it gave one.
    pub server_tokens: Option<u64>,
    /// Prompt tokens the server took from its prefix cache, when it said.
    pub cached_tokens: Option<u64>,
    /// Stream events that carried text, when the answer was an SSE or
    /// NDJSON stream.
    pub counted_events: Option<u64>,
    /// The client tokenizer's count of the generated text, when the run
    /// has a tokenizer.
    pub tokenizer_tokens: Option<u64>,
    /// Times the server reported.
    pub server: ServerTimes,
    /// Intended start to dispatch.
    pub schedule_lag_us: u64,
    /// Time to first token from the intended start.
    pub ttft_intended_us: Option<u64>,
    /// End to end from the intended start.
    pub e2e_intended_us: u64,
    /// The agent sent it more than [`stampede_proto::LATE`] late: its
    /// scheduling lag passed that.
    pub late: bool,
    /// It was written more than [`stampede_proto::LATE`] after it was
    /// dispatched (a connection opening, a concurrency slot).
    pub held: bool,
    /// Why the server ended the answer, when it said.
    pub finish: Option<crate::api::Finish>,
    /// Its prompt's class, an index into the share's class names.
    pub class: u16,
    /// Sessions only: its turn in its session, from 1; 0 outside sessions.
    pub turn: u16,
    /// It met every objective of the run's SLO (always false when the run
    /// has none).
    pub good: bool,
}

/// One prompt class's requests.
#[derive(Clone, Debug, Default)]
pub struct ClassTotals {
    /// TTFT, ITL, TPOT, E2E, input and output tokens of its successes.
    pub histograms: Histograms,
    /// Successes and their token totals, and failures by error class.
    pub counters: Counters,
}

/// The metrics kept per prompt class.
const CLASS_METRICS: [Metric; 4] = [Metric::Ttft, Metric::Tpot, Metric::E2e, Metric::InputTokens];

/// Everything recorded over one span of time.
#[derive(Clone, Debug, Default)]
pub struct Interval {
    /// Latency and token histograms of successful requests.
    pub histograms: Histograms,
    /// Outcome counters.
    pub counters: Counters,
    /// The first message of each error class.
    pub samples: BTreeMap<ErrorClass, String>,
    /// Successful and failed requests by prompt class index.
    pub classes: BTreeMap<u16, ClassTotals>,
    /// Sessions only: successful requests by turn (from 1, capped at
    /// [`crate::prompts::MAX_TURNS`]).
    pub turns: BTreeMap<u16, ClassTotals>,
}

impl Interval {
    /// Records one request's outcome.
    pub fn record(&mut self, outcome: &Outcome<'_>) {
        match outcome {
            Outcome::Ok(s) => {
                let h = &mut self.histograms;
                let c = &mut self.counters;
                c.ok += 1;
                if let Some(v) = s.ttft_us {
                    h.record(Metric::Ttft, v);
                }
                record_gaps(h, s.gaps);
                if let Some(v) = s.tpot_us {
                    h.record(Metric::Tpot, v);
                }
                h.record(Metric::E2e, s.e2e_us);
                h.record(Metric::ClientQueue, s.client_queue_us);
                if let Some(v) = s.connect_us {
                    h.record(Metric::Connect, v);
                }
                if let Some(n) = s.input_tokens {
                    h.record(Metric::InputTokens, n);
                    c.input_tokens += n;
                }
                if let Some(n) = s.cached_tokens {
                    c.cached_tokens += n;
                    c.cached_reported += 1;
                    c.cached_of_input += s.input_tokens.unwrap_or(0);
                }
                match s.input_source {
                    Some(TokenSource::Server) => c.inputs_from_server += 1,
                    Some(TokenSource::Tokenizer) => c.inputs_from_tokenizer += 1,
                    _ => {}
                }
                h.record(Metric::OutputTokens, s.output_tokens);
                c.output_tokens += s.output_tokens;
                match s.token_source {
                    TokenSource::Server => c.tokens_from_usage += 1,
                    TokenSource::Tokenizer => c.tokens_from_tokenizer += 1,
                    TokenSource::Events => c.tokens_counted += 1,
                    TokenSource::Words => c.tokens_from_words += 1,
                }
                c.server_vs_events.record(s.server_tokens, s.counted_events);
                c.server_vs_tokenizer.record(s.server_tokens, s.tokenizer_tokens);
                c.events_vs_tokenizer.record(s.counted_events, s.tokenizer_tokens);
                let server = [
                    (Metric::ServerPrefill, s.server.prefill_us),
                    (Metric::ServerDecode, s.server.decode_us),
                    (Metric::ModelLoad, s.server.load_us),
                    (Metric::ServerTime, s.server.total_us),
                ];
                for (metric, value) in server {
                    if let Some(v) = value {
                        h.record(metric, v);
                    }
                }
                h.record(Metric::ScheduleLag, s.schedule_lag_us);
                if let Some(v) = s.ttft_intended_us {
                    h.record(Metric::TtftIntended, v);
                }
                h.record(Metric::E2eIntended, s.e2e_intended_us);
                c.late += u64::from(s.late);
                c.held += u64::from(s.held);
                if s.good {
                    c.good += 1;
                    c.good_output_tokens += s.output_tokens;
                }
                if s.turn > 0 {
                    let turn = s.turn.min(crate::prompts::MAX_TURNS);
                    record_breakdown(self.turns.entry(turn).or_default(), s);
                }
                record_breakdown(self.classes.entry(s.class).or_default(), s);
            }
            Outcome::Failed {
                class,
                message,
                schedule_lag_us,
                late,
                prompt_class,
                ..
            } => {
                self.counters.count_error(*class);
                self.classes
                    .entry(*prompt_class)
                    .or_default()
                    .counters
                    .count_error(*class);
                self.counters.late += u64::from(*late);
                self.histograms.record(Metric::ScheduleLag, *schedule_lag_us);
                self.samples.entry(*class).or_insert_with(|| message.clone());
            }
            Outcome::Cancelled => self.counters.cancelled += 1,
            Outcome::Dropped => self.counters.dropped += 1,
        }
    }

    /// Adds `other` into `self`, keeping the earlier error messages.
    pub fn add(&mut self, other: &Interval) {
        self.histograms.add(&other.histograms);
        self.counters.add(&other.counters);
        for (class, message) in &other.samples {
            self.samples.entry(*class).or_insert_with(|| message.clone());
        }
        for (class, totals) in &other.classes {
            let mine = self.classes.entry(*class).or_default();
            mine.histograms.add(&totals.histograms);
            mine.counters.add(&totals.counters);
        }
        for (turn, totals) in &other.turns {
            let mine = self.turns.entry(*turn).or_default();
            mine.histograms.add(&totals.histograms);
            mine.counters.add(&totals.counters);
        }
    }

    /// Empties the interval, keeping the histogram allocations.
    pub fn reset(&mut self) {
        self.histograms.reset();
        self.counters = Counters::default();
        self.samples.clear();
        for totals in self.classes.values_mut().chain(self.turns.values_mut()) {
            totals.histograms.reset();
            totals.counters = Counters::default();
        }
    }
}

/// Records a success in one breakdown (a prompt class or a turn).
fn record_breakdown(class: &mut ClassTotals, s: &Sample<'_>) {
    let ch = &mut class.histograms;
    for metric in CLASS_METRICS {
        let value = match metric {
            Metric::Ttft => s.ttft_us,
            Metric::Tpot => s.tpot_us,
            Metric::E2e => Some(s.e2e_us),
            _ => s.input_tokens,
        };
        if let Some(v) = value {
            ch.record(metric, v);
        }
    }
    for gap in s.gaps {
        for (value, n) in gap.per_token() {
            if n > 0 {
                ch.record_n(Metric::Itl, value, n);
            }
        }
    }
    ch.record(Metric::OutputTokens, s.output_tokens);
    class.counters.ok += 1;
    class.counters.input_tokens += s.input_tokens.unwrap_or(0);
    class.counters.output_tokens += s.output_tokens;
    if s.good {
        class.counters.good += 1;
        class.counters.good_output_tokens += s.output_tokens;
    }
}

/// One chunk-gap sample per gap and its per-token inter-token latencies.
fn record_gaps(h: &mut Histograms, gaps: &[Gap]) {
    for gap in gaps {
        h.record(Metric::ChunkGap, gap.us);
        for (value, n) in gap.per_token() {
            if n > 0 {
                h.record_n(Metric::Itl, value, n);
            }
        }
    }
}

#[derive(Debug, Default)]
struct Shard(Mutex<Interval>);

impl Shard {
    fn lock(&self) -> MutexGuard<'_, Interval> {
        // Recording cannot panic halfway through an update that matters;
        // keep the data rather than lose the run.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[derive(Debug, Default)]
struct Registry {
    shards: Mutex<Vec<Arc<Shard>>>,
}

thread_local! {
    /// This thread's shard of each live recorder (usually one).
    static SHARDS: RefCell<Vec<(Weak<Registry>, Arc<Shard>)>> = const { RefCell::new(Vec::new()) };
}

/// Collects outcomes from any number of threads. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Recorder {
    registry: Arc<Registry>,
}

impl Recorder {
    /// A recorder with no shards yet; each thread gets one on first use.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records one outcome into the calling thread's shard.
    pub fn record(&self, outcome: &Outcome<'_>) {
        self.in_shard(|i| i.record(outcome));
    }

    /// Records how late the load runtime ran a tick, microseconds.
    pub fn record_delay(&self, us: u64) {
        self.in_shard(|i| i.histograms.record(Metric::RuntimeDelay, us));
    }

    fn in_shard(&self, f: impl FnOnce(&mut Interval)) {
        SHARDS.with(|cell| {
            let mut shards = cell.borrow_mut();
            let mine = Arc::as_ptr(&self.registry);
            let shard = match shards.iter().position(|(r, _)| r.as_ptr() == mine) {
                Some(i) => &shards[i].1,
                None => {
                    // First record on this thread: drop shards of finished
                    // recorders, then register a new one.
                    shards.retain(|(r, _)| r.strong_count() > 0);
                    let shard = Arc::new(Shard::default());
                    self.registry
                        .shards
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(Arc::clone(&shard));
                    shards.push((Arc::downgrade(&self.registry), shard));
                    &shards[shards.len() - 1].1
                }
            };
            f(&mut shard.lock());
        });
    }

    /// Moves everything recorded since the last cut into `into`, leaving
    /// every shard empty. `spare` is scratch space, swapped with each shard
    /// so that a shard is locked only for the swap.
    pub fn cut(&self, into: &mut Interval, spare: &mut Interval) {
        let shards: Vec<Arc<Shard>> = self.registry.shards.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for shard in shards {
            std::mem::swap(&mut *shard.lock(), spare);
            into.add(spare);
            spare.reset();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(ttft: u64, gaps: &[Gap]) -> Outcome<'_> {
        Outcome::Ok(Sample {
            ttft_us: Some(ttft),
            gaps,
            tpot_us: Some(20),
            e2e_us: ttft + gaps.iter().map(|g| g.us).sum::<u64>(),
            client_queue_us: 5,
            connect_us: None,
            input_tokens: Some(10),
            output_tokens: gaps.iter().map(|g| u64::from(g.tokens)).sum::<u64>() + 1,
            token_source: TokenSource::Server,
            ..Sample::default()
        })
    }

    #[test]
    fn threads_record_into_their_own_shards_and_cut_sees_all() {
        let recorder = Recorder::new();
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let recorder = recorder.clone();
                s.spawn(move || {
                    for i in 0..100 {
                        recorder.record(&ok(1000 + t * 100 + i, &[gap(20, 1), gap(21, 1), gap(22, 1)]));
                    }
                    recorder.record(&Outcome::Failed {
                        class: ErrorClass::Timeout,
                        message: format!("thread {t}"),
                        schedule_lag_us: 0,
                        late: false,
                        prompt_class: 1,
                        retry_after: None,
                    });
                });
            }
        });
        assert_eq!(recorder.registry.shards.lock().unwrap().len(), 4);
        let (mut cut, mut spare) = (Interval::default(), Interval::default());
        recorder.cut(&mut cut, &mut spare);
        assert_eq!(cut.counters.ok, 400);
        assert_eq!(cut.counters.errors[&ErrorClass::Timeout], 4);
        assert_eq!(cut.histograms.get(Metric::Ttft).len(), 400);
        assert_eq!(cut.histograms.get(Metric::Itl).len(), 1200);
        assert_eq!(cut.histograms.get(Metric::ChunkGap).len(), 1200);
        assert_eq!(cut.counters.output_tokens, 1600);
        assert_eq!(cut.samples.len(), 1);
        assert_eq!(cut.classes[&1].counters.errors[&ErrorClass::Timeout], 4);
        assert_eq!(cut.classes[&1].counters.ok, 0);
        // A second cut starts empty: nothing is counted twice.
        let mut again = Interval::default();
        recorder.cut(&mut again, &mut spare);
        assert_eq!(again.counters, Counters::default());
        assert!(again.histograms.is_empty());
    }

    fn gap(us: u64, tokens: u32) -> Gap {
        Gap { us, tokens }
    }

    /// The per-token samples of one gap, smallest first.
    fn split(us: u64, tokens: u32) -> Vec<u64> {
        let mut out = Vec::new();
        for (value, n) in gap(us, tokens).per_token().into_iter().rev() {
            out.extend(std::iter::repeat_n(value, n as usize));
        }
        out
    }

    #[test]
    fn a_gap_is_split_evenly_among_its_tokens_and_adds_up_to_itself() {
        assert_eq!(split(40_000, 1), [40_000]);
        assert_eq!(split(160_000, 4), [40_000; 4]);
        // 10 µs over 4 tokens: two of 2 and two of 3, never 2.5 rounded
        // four times.
        assert_eq!(split(10, 4), [2, 2, 3, 3]);
        assert_eq!(split(3, 5), [0, 0, 1, 1, 1]);
        for (us, k) in [(0, 3), (1, 1), (999_999, 7), (123_456, 64), (5, 0)] {
            let parts = split(us, k);
            assert_eq!(parts.len() as u32, k.max(1), "{us} over {k}");
            assert_eq!(parts.iter().sum::<u64>(), us, "{us} over {k}");
            assert!(parts.last().unwrap() - parts[0] <= 1);
            assert_eq!(gap(us, k).per_token_max(), *parts.last().unwrap());
        }
    }

    #[test]
    fn itl_has_a_sample_per_token_and_chunk_gap_one_per_event() {
        let mut i = Interval::default();
        // First event (TTFT), then events of 4, 1 and 3 tokens.
        i.record(&ok(500, &[gap(160_000, 4), gap(40_000, 1), gap(90_000, 3)]));
        let h = &i.histograms;
        let itl = h.get(Metric::Itl);
        assert_eq!(itl.len(), 8, "one sample per token after the first event's");
        assert_eq!(h.get(Metric::ChunkGap).len(), 3, "one sample per gap");
        assert_eq!(itl.min(), 30_000);
        assert!(itl.equivalent(itl.max(), 40_000));
        // Per-token samples add up to the time the events spanned.
        let total: u64 = itl
            .iter_recorded()
            .map(|v| v.value_iterated_to() * v.count_at_value())
            .sum();
        assert!((total as f64 - 290_000.0).abs() / 290_000.0 < 0.001, "{total}");
        assert!((h.get(Metric::ChunkGap).mean() - 96_666.7).abs() < 100.0);
        let class = &i.classes[&0].histograms;
        assert_eq!(class.get(Metric::Itl).len(), 8);
    }

    #[test]
    fn failures_and_cancellations_are_never_latency_samples() {
        let recorder = Recorder::new();
        recorder.record(&Outcome::Failed {
            class: ErrorClass::Status(503),
            message: "busy".into(),
            schedule_lag_us: 0,
            late: false,
            prompt_class: 0,
            retry_after: None,
        });
        recorder.record(&Outcome::Cancelled);
        let (mut cut, mut spare) = (Interval::default(), Interval::default());
        recorder.cut(&mut cut, &mut spare);
        // Only the agent's own scheduling lag is recorded for a failure.
        for m in Metric::ALL.into_iter().filter(|m| *m != Metric::ScheduleLag) {
            assert!(cut.histograms.get(m).is_empty(), "{m}");
        }
        assert_eq!(cut.histograms.get(Metric::ScheduleLag).len(), 1);
        assert_eq!(cut.counters.failed(), 1);
        assert_eq!(cut.counters.cancelled, 1);
        assert_eq!(cut.samples[&ErrorClass::Status(503)], "busy");
    }

    #[test]
    fn every_token_source_is_counted_and_compared() {
        let mut i = Interval::default();
        // The server said 12; 12 events carried text; the tokenizer counts 15.
        i.record(&Outcome::Ok(Sample {
            output_tokens: 12,
            token_source: TokenSource::Server,
            server_tokens: Some(12),
            counted_events: Some(12),
            tokenizer_tokens: Some(15),
            input_tokens: Some(7),
            cached_tokens: Some(5),
            input_source: Some(TokenSource::Server),
            ..Sample::default()
        }));
        // No server count: the tokenizer's wins over 9 events, and it
        // counted the prompt too.
        i.record(&Outcome::Ok(Sample {
            output_tokens: 10,
            token_source: TokenSource::Tokenizer,
            counted_events: Some(9),
            tokenizer_tokens: Some(10),
            input_tokens: Some(4),
            input_source: Some(TokenSource::Tokenizer),
            ..Sample::default()
        }));
        let c = &i.counters;
        assert_eq!((c.tokens_from_usage, c.tokens_from_tokenizer), (1, 1));
        assert_eq!(
            (c.inputs_from_server, c.inputs_from_tokenizer, c.input_tokens),
            (1, 1, 11)
        );
        // Only the answer that said counts towards the cached share.
        assert_eq!((c.cached_tokens, c.cached_reported, c.cached_of_input), (5, 1, 7));
        assert_eq!((c.server_vs_events.requests, c.server_vs_events.differing), (1, 0));
        assert_eq!(
            (
                c.server_vs_tokenizer.first,
                c.server_vs_tokenizer.second,
                c.server_vs_tokenizer.abs_difference
            ),
            (12, 15, 3)
        );
        let e = c.events_vs_tokenizer;
        assert_eq!(
            (e.requests, e.first, e.second, e.abs_difference, e.differing),
            (2, 21, 25, 4, 2)
        );
    }

    #[test]
    fn two_recorders_on_one_thread_stay_apart() {
        let (a, b) = (Recorder::new(), Recorder::new());
        a.record(&ok(1, &[]));
        b.record(&ok(2, &[]));
        b.record(&ok(3, &[]));
        let (mut ca, mut cb, mut spare) = Default::default();
        a.cut(&mut ca, &mut spare);
        b.cut(&mut cb, &mut spare);
        let (ca, cb): (Interval, Interval) = (ca, cb);
        assert_eq!((ca.counters.ok, cb.counters.ok), (1, 2));
    }
}
