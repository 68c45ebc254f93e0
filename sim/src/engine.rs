//! The simulated inference engine: a FIFO queue in front of at most
//! `max_batch` running sequences and, when it has one, a KV cache of a
//! fixed number of token slots; and the ground-truth accounting that
//! `/metrics` exposes.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::{Instant, sleep_until};

use crate::Config;
use crate::cache::{Cache, Growth, Turn};
use crate::events::Events;
use crate::faults::{self, Cut, Fault};
use crate::metrics::PromHistogram;
use crate::prefix::PrefixCache;
use crate::text;

/// One generation request, already parsed from HTTP.
#[derive(Clone, Debug)]
pub(crate) struct Job {
    /// Prompt length in tokens.
    pub(crate) input_tokens: u32,
    /// The names of the prompt's full blocks, for the prefix cache; empty
    /// without one.
    pub(crate) blocks: Vec<u64>,
    /// How many tokens to generate.
    pub(crate) output_tokens: u32,
    /// Tokens per streamed event after the first.
    pub(crate) tokens_per_event: u32,
    /// Seed of the generated text.
    pub(crate) text_seed: u64,
    /// The request's spans, when it is traced.
    pub(crate) trace: Option<crate::trace::Request>,
    /// The fault injected into it, if any.
    pub(crate) fault: Option<Fault>,
}

/// One event of an answer, sent to the HTTP layer when it is due: the
/// text of one or more generated tokens (`--tokens-per-event`), or none
/// (`--empty-events`).
#[derive(Debug)]
pub(crate) struct Token {
    /// The tokens' text, each with its leading space; empty for an event
    /// without tokens.
    pub(crate) text: String,
    /// Tokens it carries; 0 for an event without text.
    pub(crate) tokens: u32,
    /// Tokens generated so far, these included: the running count vLLM
    /// reports with `continuous_usage_stats`.
    pub(crate) generated: u32,
    /// True for the last event of the answer.
    pub(crate) last: bool,
    /// When the request entered the batch.
    pub(crate) admitted: Instant,
    /// When its prefill began: at admission, or when the model finished
    /// loading if that was later (a cold start).
    pub(crate) began: Instant,
    /// How the answer breaks off at this event, when an injected fault
    /// ends it here; nothing follows.
    pub(crate) cut: Option<Cut>,
    /// Prompt tokens found in the prefix cache, when the engine has one.
    pub(crate) cached: Option<u32>,
}

/// The engine shared by every connection.
#[derive(Debug)]
pub(crate) struct Engine {
    pub(crate) config: Config,
    /// One permit per batch slot. Tokio's semaphore is fair, so waiting
    /// requests are admitted in arrival order.
    slots: Arc<Semaphore>,
    /// Woken whenever KV-cache slots are freed or the line moves.
    room: Notify,
    state: Mutex<State>,
    started: Instant,
    /// Where request spans go, when exported.
    pub(crate) spans: crate::trace::Spans,
    /// Where chat requests are recorded (`--record`), when they are.
    pub(crate) record: Option<crate::record::Record>,
    /// Where first writes are recorded (`--record-first-writes`), when
    /// they are.
    pub(crate) first_writes: Option<Arc<crate::record::FirstWrites>>,
    /// When the model is loaded and the first prefill may begin.
    loaded_at: Instant,
}

/// Time spent computing, as stretches of concurrent work joined.
#[derive(Debug, Default)]
pub(crate) struct Busy {
    /// Closed stretches, plus the current stretch whole.
    total: Duration,
    /// The current stretch: its start and its planned end.
    stretch: Option<(Instant, Instant)>,
}

impl Busy {
    /// Busy time up to `now`: closed stretches, and the current one up to
    /// `now` if it has begun.
    pub(crate) fn at(&self, now: Instant) -> Duration {
        match self.stretch {
            Some((from, until)) if until > now => self.total - (until - now.max(from)),
            _ => self.total,
        }
    }

    /// Marks `[from, until)` as busy. Intervals arrive in about the order
    /// they begin; one that overlaps the current stretch extends it.
    fn add(&mut self, from: Instant, until: Instant) {
        if until <= from {
            return;
        }
        match &mut self.stretch {
            Some((_, end)) if from <= *end => {
                if until > *end {
                    self.total += until - *end;
                    *end = until;
                }
            }
            _ => {
                self.total += until - from;
                self.stretch = Some((from, until));
            }
        }
    }

    /// Ends the current stretch at `now` if it was planned to last longer.
    fn cut(&mut self, now: Instant) {
        if let Some((from, until)) = self.stretch
            && until > now
        {
            self.total -= until - now.max(from);
            self.stretch = Some((from, now.max(from)));
        }
    }
}

/// The busy totals at one moment: DCGM's figures cover the time since the
/// page was last read, as the exporter's cover its sampling period.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Mark {
    pub(crate) at: Instant,
    pub(crate) busy: Duration,
    pub(crate) prefill: Duration,
    pub(crate) decode: Duration,
}

/// What the accelerator computes: a prefill is bound by compute, a decode
/// step by memory bandwidth (it reads the weights and the KV cache).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Work {
    Prefill,
    Decode,
}

/// Ground truth, updated at each admission and completion.
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) received: u64,
    pub(crate) served: u64,
    pub(crate) cancelled: u64,
    /// Requests the engine broke off with an injected fault (a malformed
    /// event, a reset).
    pub(crate) failed: u64,
    /// Faults injected, by kind, every kind in [`faults::KINDS`] and the
    /// rules' listed.
    pub(crate) faults: BTreeMap<String, u64>,
    /// How many requests came with each key so far, for the fault draw;
    /// kept only when there are faults to draw.
    seen: HashMap<u64, u64>,
    /// Requests waiting for a batch slot or for KV-cache room, preempted
    /// sequences included.
    pub(crate) queued: u32,
    pub(crate) running: u32,
    pub(crate) prompt_tokens: u64,
    pub(crate) generation_tokens: u64,
    /// Time the accelerator computed: a prefill, or its part of a decode
    /// step. Concurrent sequences' work is counted once.
    pub(crate) busy: Busy,
    /// Of that, prefills.
    pub(crate) prefill: Busy,
    /// Of that, decode steps.
    pub(crate) decode: Busy,
    /// The KV cache, when the engine has one.
    pub(crate) cache: Option<Cache>,
    /// The prefix cache, when the engine has one.
    pub(crate) prefix: Option<PrefixCache>,
    /// The busy totals when `/metrics` was last read.
    pub(crate) read: Mark,
    /// Requests received and not yet answered or abandoned.
    present: u32,
    /// Time with at least one request present, closed stretches.
    occupied: Duration,
    occupied_since: Option<Instant>,
    /// Until when the engine is frozen (an injected stall).
    stalled_until: Option<Instant>,
    last_arrival: Option<Instant>,
    /// Ground truth of arrival gaps: count, sum and sum of squares, seconds.
    pub(crate) gaps: (u64, f64, f64),
    /// Arrival to admission into the batch.
    pub(crate) queue_time: PromHistogram,
    /// Arrival to first token.
    pub(crate) ttft: PromHistogram,
    /// Arrival to last token.
    pub(crate) e2e: PromHistogram,
    /// Each token after the first: the time since the one before it was
    /// made.
    pub(crate) itl: PromHistogram,
    /// Each event carrying tokens after the first: the time since the one
    /// before it went out.
    pub(crate) event_gap: PromHistogram,
}

impl Engine {
    pub(crate) fn new(config: Config) -> Engine {
        let started = Instant::now();
        Engine {
            loaded_at: started + config.load_time,
            slots: Arc::new(Semaphore::new(config.max_batch as usize)),
            room: Notify::new(),
            state: Mutex::new(State {
                received: 0,
                served: 0,
                cancelled: 0,
                failed: 0,
                faults: faults::KINDS
                    .iter()
                    .map(|k| (*k).to_owned())
                    .chain(config.faults.iter().map(|r| r.fault.kind()))
                    .map(|k| (k, 0))
                    .collect(),
                seen: HashMap::new(),
                queued: 0,
                running: 0,
                prompt_tokens: 0,
                generation_tokens: 0,
                busy: Busy::default(),
                prefill: Busy::default(),
                decode: Busy::default(),
                cache: config.kv_cache_tokens.map(Cache::new),
                prefix: (config.prefix_cache_blocks > 0)
                    .then(|| PrefixCache::new(config.prefix_cache_blocks, config.prefix_block_tokens)),
                read: Mark {
                    at: started,
                    busy: Duration::ZERO,
                    prefill: Duration::ZERO,
                    decode: Duration::ZERO,
                },
                present: 0,
                occupied: Duration::ZERO,
                occupied_since: None,
                stalled_until: None,
                last_arrival: None,
                gaps: (0, 0.0, 0.0),
                queue_time: PromHistogram::latency(),
                ttft: PromHistogram::latency(),
                e2e: PromHistogram::latency(),
                itl: PromHistogram::latency(),
                event_gap: PromHistogram::latency(),
            }),
            config,
            started,
            spans: None,
            record: None,
            first_writes: None,
        }
    }

    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        // The state is plain counters; a panic elsewhere cannot leave it
        // half-updated in a way that matters more than losing the numbers.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// When the engine started.
    pub(crate) fn started(&self) -> Instant {
        self.started
    }

    /// Time the engine has spent computing (prefill, or the accelerator's
    /// part of a decode step), up to now.
    #[cfg(test)]
    pub(crate) fn busy_time(&self) -> Duration {
        self.state().busy.at(Instant::now())
    }

    /// Time with at least one request received and not yet done, up to now.
    #[cfg(test)]
    pub(crate) fn occupied_time(&self) -> Duration {
        self.state().occupied_at(Instant::now())
    }

    /// Freezes the engine for `length`: no sequence makes progress until it
    /// ends, and every later step shifts by what the stall took.
    pub(crate) fn stall(&self, length: Duration) {
        let mut state = self.state();
        let until = Instant::now() + length;
        state.stalled_until = Some(state.stalled_until.map_or(until, |u| u.max(until)));
    }

    /// The fault, if any, of a request drawn with `key`, counted as
    /// injected: a function of the seed, the key and how many requests
    /// with that key came before.
    pub(crate) fn draw(&self, key: u64) -> Option<Fault> {
        if self.config.faults.is_empty() {
            return None;
        }
        let mut state = self.state();
        let seen = state.seen.entry(key).or_insert(0);
        let occurrence = *seen;
        *seen += 1;
        let fault = faults::draw(&self.config.faults, self.config.seed, key, occurrence)?;
        *state.faults.entry(fault.kind()).or_insert(0) += 1;
        Some(fault)
    }

    /// Checks that a request fits the KV cache at all: its prompt and its
    /// answer must fit together, as a server refuses a request longer than
    /// its context.
    pub(crate) fn fits(&self, input_tokens: u32, output_tokens: u32) -> Result<(), String> {
        match self.config.kv_cache_tokens {
            Some(capacity) if u64::from(input_tokens) + u64::from(output_tokens) > u64::from(capacity) => Err(format!(
                "the prompt ({input_tokens} tokens) and the answer ({output_tokens} tokens) need {} KV-cache slots; this server has {capacity}",
                u64::from(input_tokens) + u64::from(output_tokens)
            )),
            _ => Ok(()),
        }
    }

    /// Waits until `turn` is first in line for the KV cache and `need`
    /// slots are free, and takes them: the holder's key. `None` without a
    /// cache.
    async fn room(&self, turn: Turn, need: u32) -> Option<u64> {
        loop {
            let notified = self.room.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            if let Some(key) = self.state().cache.as_mut()?.admit(turn, need) {
                // The line moved: the next one may fit too.
                self.room.notify_waiters();
                return Some(key);
            }
            notified.await;
        }
    }

    /// Runs one job: waits in the queue, prefills, then decodes one token
    /// per step, sending the first token alone and the rest
    /// `tokens_per_event` at a time to `tokens` when the event's last token
    /// is made, and an event without text half a step before every
    /// `empty_events`-th later one. A preempted sequence waits for room
    /// again and recomputes its prompt and what it has generated before its
    /// next token. Returns early, counting the request as cancelled, when
    /// the receiver is gone.
    pub(crate) async fn run(self: Arc<Self>, job: Job, tokens: mpsc::UnboundedSender<Token>) {
        let arrived = Instant::now();
        let mut seq = Admission::wait(&self, arrived, job.input_tokens + 1).await;
        if let Some(t) = &job.trace {
            t.queued(arrived, seq.admitted, self.state().running);
        }
        let config = &self.config;
        // Deadlines are absolute, so timer rounding never accumulates and
        // the gap between tokens is exactly one step.
        let begin = seq.admitted.max(self.loaded_at);
        // Leading blocks found in the prefix cache skip their prefill.
        let cached = self
            .state()
            .prefix
            .as_mut()
            .map(|p| p.lookup(&job.blocks, job.input_tokens));
        let mut due = begin + config.prefill(job.input_tokens - cached.unwrap_or(0));
        let mut computed = false;
        self.state().work(Work::Prefill, begin, due);
        let mut first_token_at = None;
        let mut index = 0;
        let mut events = Events::new(job.tokens_per_event);
        // The length of the step ending at `due`, for the empty events.
        let mut step_len = Duration::ZERO;
        // An injected fault's place, clamped to the answer's last event so
        // that every fault drawn happens.
        let final_event = faults::events_in(job.output_tokens, job.tokens_per_event) - 1;
        let endless = job.fault == Some(Fault::Endless);
        let mut stall = match job.fault {
            Some(Fault::Stall { after, length }) => Some((after.min(final_event), length)),
            _ => None,
        };
        let cut = match job.fault {
            Some(Fault::Malformed { after }) => Some((after.min(final_event), Cut::Malformed)),
            Some(Fault::Reset { after }) => Some((after.min(final_event), Cut::Reset)),
            _ => None,
        };
        loop {
            let last = !endless && index + 1 == job.output_tokens;
            if let Some((after, length)) = stall
                && events.sent == after
            {
                // This sequence alone hangs: it keeps its batch slot and
                // computes nothing, and its later tokens move back.
                due += length;
                stall = None;
            }
            if events.empty_due(config.empty_events, index, last) {
                sleep_until(due - step_len / 2).await;
                let empty = Token {
                    text: String::new(),
                    tokens: 0,
                    generated: index,
                    last: false,
                    admitted: seq.admitted,
                    began: begin,
                    cut: None,
                    cached,
                };
                // A client that left is noticed at the next token.
                let _ = tokens.send(empty);
            }
            sleep_until(due).await;
            let stalled = self.state().stalled_until;
            if let Some(until) = stalled
                && until > due
            {
                // Frozen: this token and every later one move back.
                sleep_until(until).await;
                due = until;
            }
            if seq.preempted() {
                let resumed = seq.resume(job.input_tokens + index + 1).await;
                due = resumed + config.prefill(job.input_tokens + index);
                self.state().work(Work::Prefill, resumed, due);
                continue;
            }
            if !computed {
                // The prompt's blocks are computed: later prompts may use them.
                computed = true;
                if let Some(p) = self.state().prefix.as_mut() {
                    p.insert(&job.blocks);
                }
            }
            let now = Instant::now();
            first_token_at.get_or_insert(now);
            if let Some(text) = events.made(now, &text::token(job.text_seed, index), last) {
                let cut = cut.and_then(|(at, how)| (events.sent - 1 == at).then_some(how));
                let token = Token {
                    tokens: events.held,
                    generated: index + 1,
                    text,
                    last,
                    admitted: seq.admitted,
                    began: begin,
                    cut,
                    cached,
                };
                events.held = 0;
                if cut.is_some() {
                    // Broken off by the fault: neither served nor
                    // cancelled; `seq` counts it as failed.
                    seq.failed = true;
                    let _ = tokens.send(token);
                    if let Some(t) = &job.trace {
                        t.abandoned(&job, seq.admitted, first_token_at, Instant::now(), index);
                    }
                    return;
                }
                if tokens.send(token).is_err() {
                    // The client went away; `seq` counts it.
                    if let Some(t) = &job.trace {
                        t.abandoned(&job, seq.admitted, first_token_at, Instant::now(), index);
                    }
                    return;
                }
            }
            if last {
                break;
            }
            index = index.saturating_add(1);
            if !seq.grow() {
                // Preempted itself: no step until it has room again.
                continue;
            }
            let mut state = self.state();
            let step = config.step(state.running);
            // The accelerator's part comes first; the host's follows
            // and ends with the token written.
            state.work(Work::Decode, due, due + config.compute(step));
            drop(state);
            due += step;
            step_len = step;
        }
        if let Some(t) = &job.trace {
            t.done(&job, seq.admitted, first_token_at, Instant::now());
        }
        seq.finish(&job, first_token_at.unwrap_or(arrived), &events);
    }
}

impl State {
    /// Marks `[from, until)` as computing `work`.
    fn work(&mut self, work: Work, from: Instant, until: Instant) {
        self.busy.add(from, until);
        match work {
            Work::Prefill => self.prefill.add(from, until),
            Work::Decode => self.decode.add(from, until),
        }
    }

    /// Time with at least one request present, up to `now`.
    pub(crate) fn occupied_at(&self, now: Instant) -> Duration {
        self.occupied + self.occupied_since.map_or(Duration::ZERO, |t| now - t)
    }

    fn arrive(&mut self, now: Instant) {
        self.present += 1;
        if self.present == 1 {
            self.occupied_since = Some(now);
        }
    }

    fn leave(&mut self, now: Instant) {
        self.present -= 1;
        if self.present == 0
            && let Some(since) = self.occupied_since.take()
        {
            self.occupied += now - since;
        }
    }
}

/// A request's place in the queue and then in the batch and the KV cache.
/// Dropping it before [`Admission::finish`] counts the request as
/// cancelled.
struct Admission {
    engine: Arc<Engine>,
    /// Its number, in arrival order.
    arrival: u64,
    arrived: Instant,
    admitted: Instant,
    /// Its slots in the KV cache; `None` while preempted, or without a
    /// cache.
    holder: Option<u64>,
    /// Waiting for room again after a preemption.
    preempted: bool,
    finished: bool,
    /// Broken off by an injected fault.
    failed: bool,
    _slot: OwnedSemaphorePermit,
}

impl Admission {
    /// Waits for a batch slot, then for `need` slots of the KV cache.
    async fn wait(engine: &Arc<Engine>, arrived: Instant, need: u32) -> Admission {
        let arrival = {
            let mut state = engine.state();
            state.received += 1;
            state.queued += 1;
            state.arrive(arrived);
            if let Some(previous) = state.last_arrival.replace(arrived) {
                let gap = (arrived - previous).as_secs_f64();
                state.gaps.0 += 1;
                state.gaps.1 += gap;
                state.gaps.2 += gap * gap;
            }
            state.received
        };
        // Leaves the queue count right even if the client disappears while
        // waiting (this future is then dropped).
        let queued = Queued(engine, arrival);
        let slot = Arc::clone(&engine.slots)
            .acquire_owned()
            .await
            .expect("the engine never closes its semaphore");
        if let Some(cache) = &mut engine.state().cache {
            cache.queue(Turn::new(arrival));
        }
        let holder = engine.room(Turn::new(arrival), need).await;
        std::mem::forget(queued);
        let admitted = Instant::now();
        let mut state = engine.state();
        state.queued -= 1;
        state.running += 1;
        state.queue_time.observe(admitted - arrived);
        drop(state);
        Admission {
            engine: Arc::clone(engine),
            arrival,
            arrived,
            admitted,
            holder,
            preempted: false,
            finished: false,
            failed: false,
            _slot: slot,
        }
    }

    /// One more KV-cache slot for the next token; false when there was no
    /// room and this sequence, the newest, was preempted. A sequence it
    /// preempts instead notices at its next token.
    fn grow(&mut self) -> bool {
        let Some(key) = self.holder else { return true };
        let mut state = self.engine.state();
        let Some(cache) = &mut state.cache else { return true };
        let growth = cache.grow(key);
        if growth != Growth::Grew {
            state.running -= 1;
            state.queued += 1;
        }
        if growth == Growth::Itself {
            self.holder = None;
            self.preempted = true;
        }
        growth != Growth::Itself
    }

    /// True when this sequence has been preempted and waits for room.
    fn preempted(&mut self) -> bool {
        if !self.preempted
            && let Some(cache) = &mut self.engine.state().cache
            && cache.noticed(self.arrival)
        {
            self.holder = None;
            self.preempted = true;
        }
        self.preempted
    }

    /// Waits for `need` slots, first in line before new requests; returns
    /// when it has them.
    async fn resume(&mut self, need: u32) -> Instant {
        self.holder = self.engine.room(Turn::resumed(self.arrival), need).await;
        self.preempted = false;
        let mut state = self.engine.state();
        state.queued -= 1;
        state.running += 1;
        Instant::now()
    }

    fn finish(mut self, job: &Job, first_token_at: Instant, events: &Events) {
        let now = Instant::now();
        let mut state = self.engine.state();
        state.itl.add(&events.itl);
        state.event_gap.add(&events.event_gap);
        state.served += 1;
        state.prompt_tokens += u64::from(job.input_tokens);
        state.generation_tokens += u64::from(job.output_tokens);
        state.ttft.observe(first_token_at - self.arrived);
        state.e2e.observe(now - self.arrived);
        self.finished = true;
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        let now = Instant::now();
        let mut state = self.engine.state();
        let evicted = state.cache.as_mut().is_some_and(|c| c.noticed(self.arrival));
        if let Some(cache) = &mut state.cache {
            match self.holder {
                Some(key) if !evicted => cache.release(key),
                _ => cache.leave(Turn::resumed(self.arrival)),
            }
        }
        if self.preempted || evicted {
            state.queued -= 1;
        } else {
            state.running -= 1;
        }
        if state.running == 0 {
            // Work planned past now (a client that left mid-step) was not
            // done.
            state.busy.cut(now);
            state.prefill.cut(now);
            state.decode.cut(now);
        }
        state.leave(now);
        if self.failed {
            state.failed += 1;
        } else if !self.finished {
            state.cancelled += 1;
        }
        drop(state);
        self.engine.room.notify_waiters();
    }
}

/// Decrements the queue count when a request leaves the queue without
/// being admitted.
struct Queued<'a>(&'a Arc<Engine>, u64);

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        let mut state = self.0.state();
        if let Some(cache) = &mut state.cache {
            cache.leave(Turn::new(self.1));
        }
        state.queued -= 1;
        state.cancelled += 1;
        state.leave(Instant::now());
        drop(state);
        self.0.room.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(max_batch: u32) -> Config {
        Config {
            max_batch,
            prefill_base: Duration::from_millis(10),
            prefill_per_token: Duration::from_millis(1),
            decode_step: Duration::from_millis(20),
            decode_step_per_seq: Duration::from_millis(5),
            ..Config::default()
        }
    }

    async fn collect(engine: Arc<Engine>, job: Job) -> Vec<(Duration, Token)> {
        let start = Instant::now();
        let (tx, mut rx) = mpsc::unbounded_channel();
        tokio::spawn(engine.run(job, tx));
        let mut out = Vec::new();
        while let Some(t) = rx.recv().await {
            out.push((start.elapsed(), t));
        }
        out
    }

    fn job(input: u32, output: u32) -> Job {
        Job {
            input_tokens: input,
            blocks: Vec::new(),
            output_tokens: output,
            tokens_per_event: 1,
            text_seed: 7,
            trace: None,
            fault: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn cached_prefix_blocks_skip_their_prefill() {
        let engine = Arc::new(Engine::new(Config {
            prefix_cache_blocks: 8,
            prefix_block_tokens: 10,
            ..config(4)
        }));
        let words = |tail: &str| -> Vec<String> {
            (0..30)
                .map(|i| format!("shared{i}"))
                .chain((0..20).map(|i| format!("{tail}{i}")))
                .collect()
        };
        let prompt = |tail: &str| Job {
            blocks: crate::prefix::chain(words(tail).iter().map(String::as_str), 10),
            ..job(50, 1)
        };
        let first = collect(Arc::clone(&engine), prompt("a")).await;
        assert_eq!((first[0].0.as_millis(), first[0].1.cached), (60, Some(0)));
        // The three shared blocks (30 tokens) are cached: 10ms + 20 x 1ms.
        let second = collect(Arc::clone(&engine), prompt("b")).await;
        assert_eq!((second[0].0.as_millis(), second[0].1.cached), (30, Some(30)));
        let p = engine.state().prefix.as_ref().map(|p| (p.queries, p.hits));
        assert_eq!(p, Some((100, 30)));
    }

    #[tokio::test(start_paused = true)]
    async fn one_request_has_exact_prefill_and_steps() {
        let engine = Arc::new(Engine::new(config(4)));
        let tokens = collect(Arc::clone(&engine), job(50, 4)).await;
        let times: Vec<_> = tokens.iter().map(|(t, _)| t.as_millis()).collect();
        assert_eq!(times, [60, 80, 100, 120]);
        assert!(tokens[3].1.last && !tokens[2].1.last);
        let state = engine.state();
        assert_eq!((state.served, state.cancelled, state.running), (1, 0, 0));
        assert_eq!(state.generation_tokens, 4);
        assert_eq!(state.queue_time.sum(), 0.0);
    }

    #[tokio::test(start_paused = true)]
    async fn tokens_go_out_in_events_of_the_configured_size_with_empty_events_ahead() {
        let engine = Arc::new(Engine::new(Config {
            empty_events: Some(1),
            ..config(4)
        }));
        let job = Job {
            tokens_per_event: 4,
            ..job(0, 10)
        };
        let out = collect(Arc::clone(&engine), job).await;
        // Tokens are made at 10, 30, …, 190 ms: the first goes alone, then
        // four at a time, the last event with what is left; an empty event
        // half a step (10 ms) ahead of each after the first.
        let events: Vec<_> = out
            .iter()
            .map(|(t, e)| (t.as_millis(), e.tokens, e.generated, e.last))
            .collect();
        assert_eq!(
            events,
            [
                (10, 1, 1, false),
                (80, 0, 4, false),
                (90, 4, 5, false),
                (160, 0, 8, false),
                (170, 4, 9, false),
                (180, 0, 9, false),
                (190, 1, 10, true),
            ]
        );
        assert!(out[1].1.text.is_empty());
        assert_eq!(out[2].1.text.split_whitespace().count(), 4);
        // Ground truth: nine gaps of one step between tokens; three between
        // the events that carried them, 80 + 80 + 20 ms.
        let state = engine.state();
        assert_eq!(state.itl.count(), 9);
        assert!((state.itl.sum() - 0.180).abs() < 1e-9);
        assert_eq!(state.event_gap.count(), 3);
        assert!((state.event_gap.sum() - 0.180).abs() < 1e-9);
    }

    #[tokio::test(start_paused = true)]
    async fn one_token_per_event_makes_event_gaps_the_token_gaps() {
        let engine = Arc::new(Engine::new(Config {
            empty_events: Some(2),
            ..config(4)
        }));
        let out = collect(Arc::clone(&engine), job(0, 4)).await;
        let events: Vec<_> = out.iter().map(|(t, e)| (t.as_millis(), e.tokens)).collect();
        // An empty event ahead of every second text event after the first.
        assert_eq!(events, [(10, 1), (30, 1), (40, 0), (50, 1), (70, 1)]);
        let state = engine.state();
        assert_eq!((state.itl.count(), state.event_gap.count()), (3, 3));
        assert!((state.itl.sum() - state.event_gap.sum()).abs() < 1e-9);
    }

    #[tokio::test(start_paused = true)]
    async fn batch_of_one_queues_in_arrival_order() {
        let engine = Arc::new(Engine::new(config(1)));
        let a = tokio::spawn(collect(Arc::clone(&engine), job(0, 2)));
        tokio::task::yield_now().await;
        let b = tokio::spawn(collect(Arc::clone(&engine), job(0, 2)));
        let (a, b) = (a.await.unwrap(), b.await.unwrap());
        // a: prefill 10 ms, one step 20 ms -> done at 30 ms; b waits 30 ms.
        assert_eq!(a.last().unwrap().0.as_millis(), 30);
        assert_eq!(b[0].0.as_millis(), 40);
        assert_eq!(b[1].0.as_millis(), 60);
        let state = engine.state();
        assert_eq!(state.served, 2);
        assert!((state.queue_time.sum() - 0.030).abs() < 1e-6);
        assert_eq!(state.queue_time.count(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn steps_slow_down_as_the_batch_grows() {
        let engine = Arc::new(Engine::new(config(8)));
        let runs: Vec<_> = (0..3)
            .map(|_| tokio::spawn(collect(Arc::clone(&engine), job(0, 3))))
            .collect();
        for run in runs {
            let tokens = run.await.unwrap();
            let times: Vec<_> = tokens.iter().map(|(t, _)| t.as_millis()).collect();
            // Three running: each step takes 20 + 2 * 5 ms.
            assert_eq!(times, [10, 40, 70]);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_leaves_is_cancelled_and_frees_its_slot() {
        let engine = Arc::new(Engine::new(config(1)));
        let (tx, mut rx) = mpsc::unbounded_channel();
        let run = tokio::spawn(Arc::clone(&engine).run(job(0, 100), tx));
        rx.recv().await.unwrap();
        drop(rx);
        run.await.unwrap();
        let state = engine.state();
        assert_eq!((state.served, state.cancelled, state.running), (0, 1, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_stall_freezes_every_sequence_and_shifts_the_rest() {
        let engine = Arc::new(Engine::new(config(4)));
        let stalled = Arc::clone(&engine);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(15)).await;
            stalled.stall(Duration::from_secs(2));
        });
        let tokens = collect(Arc::clone(&engine), job(0, 3)).await;
        let times: Vec<_> = tokens.iter().map(|(t, _)| t.as_millis()).collect();
        // Prefill would end at 10 ms; the stall from 15 ms holds the second
        // token (due at 30 ms) until 2015 ms, and the third follows a step on.
        assert_eq!(times, [10, 2015, 2035]);
    }

    fn faulty(input: u32, output: u32, fault: Fault) -> Job {
        Job {
            fault: Some(fault),
            ..job(input, output)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_injected_stall_holds_one_answer_after_its_events_and_it_is_served() {
        let length = Duration::from_millis(500);
        for (after, expected) in [(0, [510, 530, 550]), (1, [10, 530, 550]), (9, [10, 30, 550])] {
            let engine = Arc::new(Engine::new(config(4)));
            let tokens = collect(Arc::clone(&engine), faulty(0, 3, Fault::Stall { after, length })).await;
            assert_eq!(times(&tokens), expected, "after {after} events (clamped to the last)");
            let state = engine.state();
            assert_eq!((state.served, state.cancelled, state.failed), (1, 0, 0));
            // The stall is no computing: a 10 ms prefill and two 20 ms steps.
            assert_eq!(state.busy.at(Instant::now()), Duration::from_millis(50));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_gives_up_on_a_stall_is_cancelled() {
        let engine = Arc::new(Engine::new(config(1)));
        let (tx, mut rx) = mpsc::unbounded_channel();
        let stall = Fault::Stall {
            after: 1,
            length: Duration::from_secs(5),
        };
        let run = tokio::spawn(Arc::clone(&engine).run(faulty(0, 3, stall), tx));
        rx.recv().await.unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(engine.state().running, 1, "the stalled sequence keeps its slot");
        drop(rx);
        run.await.unwrap();
        let state = engine.state();
        assert_eq!((state.served, state.cancelled, state.running), (0, 1, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_cut_answer_ends_at_its_event_and_counts_as_failed() {
        for (fault, cut) in [
            (Fault::Reset { after: 1 }, Cut::Reset),
            (Fault::Malformed { after: 1 }, Cut::Malformed),
        ] {
            let engine = Arc::new(Engine::new(config(2)));
            let out = collect(Arc::clone(&engine), faulty(0, 4, fault)).await;
            let cuts: Vec<_> = out.iter().map(|(_, t)| t.cut).collect();
            assert_eq!(cuts, [None, Some(cut)], "the second event breaks off; nothing follows");
            assert!(out.iter().all(|(_, t)| !t.last));
            let state = engine.state();
            assert_eq!((state.served, state.cancelled, state.failed), (0, 0, 1));
            assert_eq!((state.running, state.queued), (0, 0));
            assert_eq!((state.ttft.count(), state.e2e.count(), state.itl.count()), (0, 0, 0));
        }
        // Past the answer's end: its last event breaks off.
        let engine = Arc::new(Engine::new(config(2)));
        let out = collect(Arc::clone(&engine), faulty(0, 3, Fault::Reset { after: 7 })).await;
        assert_eq!(out.len(), 3);
        assert_eq!(out[2].1.cut, Some(Cut::Reset));
        assert_eq!(engine.state().failed, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn an_endless_answer_goes_on_until_the_client_leaves() {
        let engine = Arc::new(Engine::new(config(2)));
        let (tx, mut rx) = mpsc::unbounded_channel();
        let run = tokio::spawn(Arc::clone(&engine).run(faulty(0, 2, Fault::Endless), tx));
        for _ in 0..50 {
            let token = rx.recv().await.unwrap();
            assert!(!token.last);
        }
        drop(rx);
        run.await.unwrap();
        let state = engine.state();
        assert_eq!((state.served, state.cancelled, state.failed), (0, 1, 0));
    }

    #[test]
    fn faults_drawn_are_counted_by_kind() {
        let engine = Engine::new(Config {
            faults: vec!["500=0.25".parse().unwrap(), "reset=0.25".parse().unwrap()],
            seed: 3,
            ..config(2)
        });
        let drawn: Vec<_> = (0..400).map(|i| engine.draw(i % 4)).collect();
        let state = engine.state();
        let (http, reset) = (state.faults["http_500"], state.faults["reset"]);
        assert_eq!(
            http,
            drawn.iter().filter(|f| matches!(f, Some(Fault::Status { .. }))).count() as u64
        );
        assert_eq!(
            reset,
            drawn.iter().filter(|f| matches!(f, Some(Fault::Reset { .. }))).count() as u64
        );
        // Four keys, a hundred times each: the occurrences vary the draw.
        assert!(
            (60..140).contains(&http) && (60..140).contains(&reset),
            "{http} {reset}"
        );
        assert_eq!(state.faults["endless"], 0, "every kind is listed");
    }

    #[tokio::test(start_paused = true)]
    async fn arrival_gaps_are_recorded() {
        let engine = Arc::new(Engine::new(config(4)));
        for _ in 0..3 {
            collect(Arc::clone(&engine), job(0, 1)).await; // 10 ms each
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
        let (n, sum, sumsq) = engine.state().gaps;
        assert_eq!(n, 2);
        assert!(
            (sum - 0.1).abs() < 1e-9 && (sumsq - 0.005).abs() < 1e-9,
            "{sum} {sumsq}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn busy_time_counts_only_while_sequences_run() {
        let engine = Arc::new(Engine::new(config(2)));
        collect(Arc::clone(&engine), job(0, 1)).await; // 10 ms busy
        tokio::time::sleep(Duration::from_millis(90)).await; // idle
        assert_eq!(engine.busy_time(), Duration::from_millis(10));
        assert_eq!(engine.occupied_time(), Duration::from_millis(10));
        assert_eq!(engine.started().elapsed(), Duration::from_millis(100));
    }

    fn with_overhead(max_batch: u32) -> Config {
        Config {
            step_overhead: Duration::from_millis(15),
            ..config(max_batch)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn only_the_accelerators_part_of_a_step_is_busy() {
        let engine = Arc::new(Engine::new(with_overhead(1)));
        let tokens = collect(Arc::clone(&engine), job(0, 4)).await;
        let times: Vec<_> = tokens.iter().map(|(t, _)| t.as_millis()).collect();
        assert_eq!(times, [10, 30, 50, 70], "the overhead is inside the step");
        // Prefill 10 ms, then 5 ms of each of the three 20 ms steps.
        assert_eq!(engine.busy_time(), Duration::from_millis(25));
        assert_eq!(engine.occupied_time(), Duration::from_millis(70));
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_sequences_are_busy_together_not_twice() {
        let engine = Arc::new(Engine::new(with_overhead(2)));
        let runs: Vec<_> = (0..2)
            .map(|_| tokio::spawn(collect(Arc::clone(&engine), job(0, 2))))
            .collect();
        for run in runs {
            let times: Vec<_> = run.await.unwrap().iter().map(|(t, _)| t.as_millis()).collect();
            assert_eq!(times, [10, 35]);
        }
        // Prefills [0, 10) together, then [10, 20) of the 25 ms step.
        assert_eq!(engine.busy_time(), Duration::from_millis(20));
    }

    #[tokio::test(start_paused = true)]
    async fn a_queue_behind_one_slot_keeps_the_server_occupied_not_busy() {
        let engine = Arc::new(Engine::new(with_overhead(1)));
        let runs: Vec<_> = (0..3)
            .map(|_| tokio::spawn(collect(Arc::clone(&engine), job(0, 3))))
            .collect();
        for run in runs {
            run.await.unwrap();
        }
        // Each request: 10 ms prefill, two 20 ms steps (5 ms computing).
        assert_eq!(engine.occupied_time(), Duration::from_millis(150));
        assert_eq!(engine.busy_time(), Duration::from_millis(60));
    }

    fn with_cache(max_batch: u32, slots: u32) -> Config {
        Config {
            kv_cache_tokens: Some(slots),
            ..config(max_batch)
        }
    }

    fn times(tokens: &[(Duration, Token)]) -> Vec<u128> {
        tokens.iter().map(|(t, _)| t.as_millis()).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_waits_for_room_in_the_cache() {
        let engine = Arc::new(Engine::new(with_cache(4, 5)));
        let a = tokio::spawn(collect(Arc::clone(&engine), job(2, 3)));
        tokio::task::yield_now().await;
        // B needs three slots; A holds three, then four, then five.
        let b = tokio::spawn(collect(Arc::clone(&engine), job(2, 1)));
        let (a, b) = (a.await.unwrap(), b.await.unwrap());
        assert_eq!(times(&a), [12, 32, 52]);
        assert_eq!(times(&b), [64], "admitted when A is done at 52 ms");
        let state = engine.state();
        assert_eq!(state.queue_time.count(), 2);
        assert!((state.queue_time.sum() - 0.052).abs() < 1e-6);
        assert_eq!(state.cache.as_ref().unwrap().preemptions, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_cache_preempts_the_newest_sequence_which_recomputes() {
        let engine = Arc::new(Engine::new(with_cache(4, 8)));
        let a = tokio::spawn(collect(Arc::clone(&engine), job(1, 5)));
        tokio::time::sleep(Duration::from_millis(1)).await;
        let b = tokio::spawn(collect(Arc::clone(&engine), job(1, 5)));
        let watch = Arc::clone(&engine);
        let during = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(70)).await;
            let state = watch.state();
            (state.running, state.queued, state.cache.as_ref().unwrap().used)
        });
        let (a, b) = (a.await.unwrap(), b.await.unwrap());
        // Both grow one slot a token; at 61 ms A finds the cache full and
        // preempts B, which waits until A is done at 101 ms, then
        // recomputes its prompt and two tokens (13 ms) before its third.
        // B's times count from its arrival, 1 ms after A's.
        assert_eq!(times(&a), [11, 36, 61, 81, 101]);
        assert_eq!(times(&b), [11, 36, 113, 133, 153]);
        assert!(b.iter().all(|(_, t)| t.admitted == b[0].1.admitted));
        assert_eq!(during.await.unwrap(), (1, 1, 5), "B waits, A holds five slots");
        let state = engine.state();
        let cache = state.cache.as_ref().unwrap();
        assert_eq!((cache.preemptions, cache.used), (1, 0));
        assert_eq!((state.running, state.queued, state.served), (0, 0, 2));
        assert_eq!(state.generation_tokens, 10);
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_leaves_while_preempted_frees_its_place() {
        let engine = Arc::new(Engine::new(with_cache(4, 8)));
        let a = tokio::spawn(collect(Arc::clone(&engine), job(1, 5)));
        tokio::time::sleep(Duration::from_millis(1)).await;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let b = tokio::spawn(Arc::clone(&engine).run(job(1, 5), tx));
        rx.recv().await.unwrap();
        rx.recv().await.unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await; // preempted at 61 ms
        drop(rx);
        a.await.unwrap();
        b.await.unwrap();
        let state = engine.state();
        assert_eq!((state.running, state.queued), (0, 0));
        assert_eq!((state.served, state.cancelled), (1, 1));
        assert_eq!(state.cache.as_ref().unwrap().used, 0);
    }

    #[test]
    fn a_request_larger_than_the_cache_is_refused() {
        let engine = Engine::new(with_cache(4, 100));
        assert!(engine.fits(60, 40).is_ok());
        let e = engine.fits(60, 41).unwrap_err();
        assert_eq!(
            e,
            "the prompt (60 tokens) and the answer (41 tokens) need 101 KV-cache slots; this server has 100"
        );
        assert!(Engine::new(config(4)).fits(u32::MAX, u32::MAX).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_prefill_waits_for_the_model_to_load() {
        let engine = Arc::new(Engine::new(Config {
            load_time: Duration::from_millis(500),
            ..config(4)
        }));
        let first = collect(Arc::clone(&engine), job(0, 1)).await;
        assert_eq!(first[0].0.as_millis(), 510);
        let second = collect(Arc::clone(&engine), job(0, 1)).await;
        assert_eq!(second[0].0.as_millis(), 10);
    }
}
