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
    /// Every gap between consecutive content events.
    pub itl_us: &'a [u64],
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
    /// Sent more than [`stampede_proto::LATE`] after its intended start.
    pub late: bool,
    /// Why the server ended the answer, when it said.
    pub finish: Option<crate::api::Finish>,
    /// Its prompt's class, an index into the share's class names.
    pub class: u16,
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
                for &gap in s.itl_us {
                    h.record(Metric::Itl, gap);
                }
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
                if s.good {
                    c.good += 1;
                    c.good_output_tokens += s.output_tokens;
                }
                let class = self.classes.entry(s.class).or_default();
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
                for &gap in s.itl_us {
                    ch.record(Metric::Itl, gap);
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
            Outcome::Failed {
                class,
                message,
                schedule_lag_us,
                late,
                prompt_class,
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
    }

    /// Empties the interval, keeping the histogram allocations.
    pub fn reset(&mut self) {
        self.histograms.reset();
        self.counters = Counters::default();
        self.samples.clear();
        for totals in self.classes.values_mut() {
            totals.histograms.reset();
            totals.counters = Counters::default();
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
            shard.lock().record(outcome);
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

    fn ok(ttft: u64, gaps: &[u64]) -> Outcome<'_> {
        Outcome::Ok(Sample {
            ttft_us: Some(ttft),
            itl_us: gaps,
            tpot_us: Some(20),
            e2e_us: ttft + gaps.iter().sum::<u64>(),
            client_queue_us: 5,
            connect_us: None,
            input_tokens: Some(10),
            output_tokens: gaps.len() as u64 + 1,
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
                        recorder.record(&ok(1000 + t * 100 + i, &[20, 21, 22]));
                    }
                    recorder.record(&Outcome::Failed {
                        class: ErrorClass::Timeout,
                        message: format!("thread {t}"),
                        schedule_lag_us: 0,
                        late: false,
                        prompt_class: 1,
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

    #[test]
    fn failures_and_cancellations_are_never_latency_samples() {
        let recorder = Recorder::new();
        recorder.record(&Outcome::Failed {
            class: ErrorClass::Status(503),
            message: "busy".into(),
            schedule_lag_us: 0,
            late: false,
            prompt_class: 0,
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
