//! The simulated inference engine: a FIFO queue in front of at most
//! `max_batch` running sequences, and the ground-truth accounting that
//! `/metrics` exposes.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::{Instant, sleep_until};

use crate::Config;
use crate::metrics::PromHistogram;
use crate::text;

/// One generation request, already parsed from HTTP.
#[derive(Clone, Debug)]
pub(crate) struct Job {
    /// Prompt length in tokens.
    pub(crate) input_tokens: u32,
    /// How many tokens to generate.
    pub(crate) output_tokens: u32,
    /// Seed of the generated text.
    pub(crate) text_seed: u64,
    /// The request's spans, when it is traced.
    pub(crate) trace: Option<crate::trace::Request>,
}

/// One generated token, sent to the HTTP layer as it is produced.
#[derive(Debug)]
pub(crate) struct Token {
    /// The token's text, including its leading space.
    pub(crate) text: String,
    /// True for the last token of the answer.
    pub(crate) last: bool,
    /// When the request entered the batch.
    pub(crate) admitted: Instant,
    /// When its prefill began: at admission, or when the model finished
    /// loading if that was later (a cold start).
    pub(crate) began: Instant,
}

/// The engine shared by every connection.
#[derive(Debug)]
pub(crate) struct Engine {
    pub(crate) config: Config,
    /// One permit per batch slot. Tokio's semaphore is fair, so waiting
    /// requests are admitted in arrival order.
    slots: Arc<Semaphore>,
    state: Mutex<State>,
    started: Instant,
    /// Where request spans go, when exported.
    pub(crate) spans: crate::trace::Spans,
    /// When the model is loaded and the first prefill may begin.
    loaded_at: Instant,
    /// Recent (instant, busy time) pairs, for the busy share of the last
    /// second that the DCGM-named gauge reports.
    history: Mutex<VecDeque<(Instant, Duration)>>,
}

/// How far back the recent busy share looks.
pub(crate) const RECENT: Duration = Duration::from_secs(1);
/// How often the busy history is sampled.
pub(crate) const HISTORY_TICK: Duration = Duration::from_millis(100);

/// Ground truth, updated at each admission and completion.
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) received: u64,
    pub(crate) served: u64,
    pub(crate) cancelled: u64,
    pub(crate) queued: u32,
    pub(crate) running: u32,
    pub(crate) prompt_tokens: u64,
    pub(crate) generation_tokens: u64,
    /// Busy time of closed busy stretches, plus the current stretch whole.
    busy: Duration,
    /// The current busy stretch: its start and its planned end. The engine
    /// is busy while a prefill or the accelerator's part of a decode step
    /// runs; stretches of concurrent sequences are joined.
    stretch: Option<(Instant, Instant)>,
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
}

impl Engine {
    pub(crate) fn new(config: Config) -> Engine {
        let started = Instant::now();
        Engine {
            loaded_at: started + config.load_time,
            slots: Arc::new(Semaphore::new(config.max_batch as usize)),
            config,
            state: Mutex::new(State {
                received: 0,
                served: 0,
                cancelled: 0,
                queued: 0,
                running: 0,
                prompt_tokens: 0,
                generation_tokens: 0,
                busy: Duration::ZERO,
                stretch: None,
                present: 0,
                occupied: Duration::ZERO,
                occupied_since: None,
                stalled_until: None,
                last_arrival: None,
                gaps: (0, 0.0, 0.0),
                queue_time: PromHistogram::latency(),
                ttft: PromHistogram::latency(),
                e2e: PromHistogram::latency(),
            }),
            started,
            history: Mutex::new(VecDeque::new()),
            spans: None,
        }
    }

    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        // The state is plain counters; a panic elsewhere cannot leave it
        // half-updated in a way that matters more than losing the numbers.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Seconds since the engine started.
    pub(crate) fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Time the engine has spent computing (prefill, or the accelerator's
    /// part of a decode step), up to now.
    pub(crate) fn busy_time(&self) -> Duration {
        self.state().busy_at(Instant::now())
    }

    /// Time with at least one request received and not yet done, up to now.
    pub(crate) fn occupied_time(&self) -> Duration {
        let state = self.state();
        state.occupied + state.occupied_since.map_or(Duration::ZERO, |t| t.elapsed())
    }

    /// Records the busy time now, for [`Engine::recent_busy_share`].
    pub(crate) fn tick(&self) {
        let now = Instant::now();
        let busy = self.state().busy_at(now);
        let mut h = self.history.lock().unwrap_or_else(|p| p.into_inner());
        h.push_back((now, busy));
        while h.len() > 2 && h[1].0 + RECENT <= now {
            h.pop_front();
        }
    }

    /// Share of the last second (or of the uptime, if shorter) spent busy.
    pub(crate) fn recent_busy_share(&self) -> f64 {
        let now = Instant::now();
        let busy = self.state().busy_at(now);
        let h = self.history.lock().unwrap_or_else(|p| p.into_inner());
        let (from, base) = h
            .iter()
            .rev()
            .find(|(t, _)| *t + RECENT <= now)
            .or(h.front())
            .copied()
            .unwrap_or((self.started, Duration::ZERO));
        let span = (now - from).as_secs_f64();
        if span <= 0.0 {
            return 0.0;
        }
        ((busy.saturating_sub(base)).as_secs_f64() / span).clamp(0.0, 1.0)
    }

    /// Freezes the engine for `length`: no sequence makes progress until it
    /// ends, and every later step shifts by what the stall took.
    pub(crate) fn stall(&self, length: Duration) {
        let mut state = self.state();
        let until = Instant::now() + length;
        state.stalled_until = Some(state.stalled_until.map_or(until, |u| u.max(until)));
    }

    /// Runs one job: waits in the queue, prefills, then decodes one token
    /// per step, sending each token to `tokens` at its due time. Returns
    /// early, counting the request as cancelled, when the receiver is gone.
    pub(crate) async fn run(self: Arc<Self>, job: Job, tokens: mpsc::UnboundedSender<Token>) {
        let arrived = Instant::now();
        let admission = Admission::wait(&self, arrived).await;
        if let Some(t) = &job.trace {
            t.queued(arrived, admission.admitted, self.state().running);
        }
        let config = &self.config;
        // Deadlines are absolute, so timer rounding never accumulates and
        // the gap between tokens is exactly one step.
        let begin = admission.admitted.max(self.loaded_at);
        let mut due = begin + config.prefill(job.input_tokens);
        self.state().compute(begin, due);
        let mut first_token_at = None;
        for index in 0..job.output_tokens {
            sleep_until(due).await;
            let stalled = self.state().stalled_until;
            if let Some(until) = stalled
                && until > due
            {
                // Frozen: this token and every later one move back.
                sleep_until(until).await;
                due = until;
            }
            first_token_at.get_or_insert_with(Instant::now);
            let last = index + 1 == job.output_tokens;
            let token = Token {
                text: text::token(job.text_seed, index),
                last,
                admitted: admission.admitted,
                began: begin,
            };
            if tokens.send(token).is_err() {
                // The client went away; `admission` counts it.
                if let Some(t) = &job.trace {
                    t.abandoned(&job, admission.admitted, first_token_at, Instant::now(), index);
                }
                return;
            }
            if !last {
                let mut state = self.state();
                let step = config.step(state.running);
                // The accelerator's part comes first; the host's follows
                // and ends with the token written.
                state.compute(due, due + config.compute(step));
                drop(state);
                due += step;
            }
        }
        if let Some(t) = &job.trace {
            t.done(&job, admission.admitted, first_token_at, Instant::now());
        }
        admission.finish(&job, first_token_at.unwrap_or(arrived));
    }
}

impl State {
    /// Busy time up to `now`: closed stretches, and the current one up to
    /// `now` if it has begun.
    fn busy_at(&self, now: Instant) -> Duration {
        match self.stretch {
            Some((from, until)) if until > now => self.busy - (until - now.max(from)),
            _ => self.busy,
        }
    }

    /// Marks `[from, until)` as computing. Intervals arrive in about the
    /// order they begin; one that overlaps the current stretch extends it.
    fn compute(&mut self, from: Instant, until: Instant) {
        if until <= from {
            return;
        }
        match &mut self.stretch {
            Some((_, end)) if from <= *end => {
                if until > *end {
                    self.busy += until - *end;
                    *end = until;
                }
            }
            _ => {
                self.busy += until - from;
                self.stretch = Some((from, until));
            }
        }
    }

    /// Ends the current stretch at `now` if it was planned to last longer.
    fn cut_stretch(&mut self, now: Instant) {
        if let Some((from, until)) = self.stretch
            && until > now
        {
            self.busy -= until - now.max(from);
            self.stretch = Some((from, now.max(from)));
        }
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

/// A request's place in the queue and then in the batch. Dropping it before
/// [`Admission::finish`] counts the request as cancelled.
struct Admission {
    engine: Arc<Engine>,
    arrived: Instant,
    admitted: Instant,
    finished: bool,
    _slot: OwnedSemaphorePermit,
}

impl Admission {
    async fn wait(engine: &Arc<Engine>, arrived: Instant) -> Admission {
        {
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
        }
        // Leaves the queue count right even if the client disappears while
        // waiting (this future is then dropped).
        let queued = Queued(engine);
        let slot = Arc::clone(&engine.slots)
            .acquire_owned()
            .await
            .expect("the engine never closes its semaphore");
        std::mem::forget(queued);
        let admitted = Instant::now();
        let mut state = engine.state();
        state.queued -= 1;
        state.running += 1;
        state.queue_time.observe(admitted - arrived);
        drop(state);
        Admission {
            engine: Arc::clone(engine),
            arrived,
            admitted,
            finished: false,
            _slot: slot,
        }
    }

    fn finish(mut self, job: &Job, first_token_at: Instant) {
        let now = Instant::now();
        let mut state = self.engine.state();
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
        state.running -= 1;
        if state.running == 0 {
            // Work planned past now (a client that left mid-step) was not
            // done.
            state.cut_stretch(now);
        }
        state.leave(now);
        if !self.finished {
            state.cancelled += 1;
        }
    }
}

/// Decrements the queue count when a request leaves the queue without
/// being admitted.
struct Queued<'a>(&'a Arc<Engine>);

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        let mut state = self.0.state();
        state.queued -= 1;
        state.cancelled += 1;
        state.leave(Instant::now());
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
            output_tokens: output,
            text_seed: 7,
            trace: None,
        }
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
        assert_eq!(engine.uptime(), Duration::from_millis(100));
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
        let recent = engine.recent_busy_share();
        assert!((recent - 0.4).abs() < 1e-9, "{recent}");
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
