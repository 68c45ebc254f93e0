//! Open-loop arrivals: requests start at scheduled instants whatever the
//! server does, so a slow server cannot slow the load (no coordinated
//! omission). Every request's latency is also measured from its intended
//! start.
//!
//! The runtime's timer wakes up to about 2 ms late. A dedicated thread
//! sleeps with the operating system's clock instead (about 0.1 ms here) and
//! hands each arrival to the runtime; the scheduling lag histogram shows
//! how well that went.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::Semaphore;
use tokio::time::{Instant, sleep_until};
use tokio_util::task::TaskTracker;

use super::schedule::{Arrivals, Process, RatePhase};
use super::{Control, Shared};
use crate::exec::{Scratch, Timing};
use crate::http::Conn;
use crate::record::Outcome;

/// How the dispatcher waits for each arrival.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Timer {
    /// A dedicated thread and the operating system's sleep: precise.
    #[default]
    Precise,
    /// The runtime's timer: follows a paused clock in tests.
    Runtime,
}

/// An open-loop load on one agent.
#[derive(Clone, Debug)]
pub struct Open {
    /// The global rate's phases.
    pub phases: Vec<RatePhase>,
    /// The gap distribution.
    pub process: Process,
    /// Seed of the global schedule.
    pub seed: u64,
    /// This agent's sub-stream.
    pub stream: u32,
    /// Number of sub-streams.
    pub streams: u32,
    /// Most requests in flight on this agent.
    pub max_concurrency: Option<u32>,
    /// Seed for the order of prompts.
    pub prompt_seed: u64,
    /// How arrivals are waited for.
    pub timer: Timer,
    /// A trace replay: this agent's arrivals from its start, in order,
    /// the i-th sending the i-th prompt of its share; `None` draws them
    /// from the phases.
    pub trace: Option<Arc<[Duration]>>,
}

/// Idle connections and buffers, reused by later requests.
#[derive(Debug, Default)]
struct Pool(Mutex<Vec<(Option<Conn>, Scratch)>>);

impl Pool {
    fn take(&self) -> (Option<Conn>, Scratch) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop()
            .unwrap_or_default()
    }

    fn give(&self, conn: Option<Conn>, scratch: Scratch) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push((conn, scratch));
    }
}

/// What every request task of one load shares.
#[derive(Clone, Debug)]
struct Context {
    shared: Shared,
    pool: Arc<Pool>,
    permits: Option<Arc<Semaphore>>,
    control: Control,
}

impl Open {
    /// Sends this agent's arrivals from `start` until `end`, then lets
    /// in-flight requests finish for up to `drain`. Arrivals still waiting
    /// for a concurrency slot when the load ends are dropped, and counted.
    pub async fn run(&self, shared: Shared, start: Instant, end: Instant, drain: Duration, control: Control) {
        let tracker = TaskTracker::new();
        let context = Context {
            shared: shared.clone(),
            pool: Arc::new(Pool::default()),
            permits: self.max_concurrency.map(|n| Arc::new(Semaphore::new(n as usize))),
            control: control.clone(),
        };
        // A trace's arrivals send its rows' prompts in order; drawn
        // arrivals start at a place of their own in the share.
        let (arrivals, first_prompt): (Box<dyn Iterator<Item = Duration> + Send>, usize) = match &self.trace {
            Some(offsets) => {
                let offsets = Arc::clone(offsets);
                (Box::new((0..offsets.len()).map(move |i| offsets[i])), 0)
            }
            None => (
                Box::new(Arrivals::new(&self.phases, self.process, self.seed).stream(self.stream, self.streams)),
                shared.prompts.first_for(self.stream, self.prompt_seed),
            ),
        };
        let dispatch = Dispatch {
            context,
            tracker: tracker.clone(),
            start,
            end,
            next_prompt: first_prompt,
        };
        match self.timer {
            Timer::Precise => {
                let handle = Handle::current();
                let thread = tokio::task::spawn_blocking(move || dispatch.precisely(arrivals, &handle));
                if let Err(e) = thread.await {
                    tracing::error!("the dispatcher failed: {e}");
                }
            }
            Timer::Runtime => dispatch.on_runtime(arrivals).await,
        }
        // The schedule may end before the load does; arrivals waiting for a
        // slot still have until the end.
        tokio::select! {
            _ = sleep_until(end) => {}
            _ = control.stop.cancelled() => {}
            // Every request of the run's count is sent: the load is over.
            () = shared.budget.spent() => {}
        }
        control.stop.cancel();
        tracker.close();
        tokio::select! {
            _ = tracker.wait() => {}
            _ = sleep_until(Instant::now() + drain) => {
                tracing::info!(in_flight = tracker.len(), "drain time is up; abandoning in-flight requests");
                control.abort.cancel();
                tracker.wait().await;
            }
        }
    }
}

struct Dispatch {
    context: Context,
    tracker: TaskTracker,
    start: Instant,
    end: Instant,
    next_prompt: usize,
}

impl Dispatch {
    /// Starts the arrival due at `intended`; false when the run's count of
    /// requests is spent.
    fn launch(&mut self, intended: Instant, handle: &Handle) -> bool {
        if !self.context.shared.budget.take() {
            return false;
        }
        let prompt = self.next_prompt;
        self.next_prompt += 1;
        self.tracker
            .spawn_on(request(self.context.clone(), intended, prompt), handle);
        true
    }

    /// Sleeps on this (blocking) thread until each arrival is due.
    fn precisely(mut self, arrivals: impl Iterator<Item = Duration>, handle: &Handle) {
        let stop = self.context.control.stop.clone();
        for offset in arrivals {
            let intended = self.start + offset;
            if intended >= self.end {
                break;
            }
            loop {
                if stop.is_cancelled() {
                    return;
                }
                let now = Instant::now();
                if now >= intended {
                    break;
                }
                // In slices, so that a stop is noticed within 20 ms.
                std::thread::sleep((intended - now).min(Duration::from_millis(20)));
            }
            if !self.launch(intended, handle) {
                return;
            }
        }
    }

    /// Waits with the runtime's timer.
    async fn on_runtime(mut self, arrivals: impl Iterator<Item = Duration>) {
        let handle = Handle::current();
        let stop = self.context.control.stop.clone();
        for offset in arrivals {
            let intended = self.start + offset;
            if intended >= self.end {
                break;
            }
            tokio::select! {
                _ = sleep_until(intended) => {}
                _ = stop.cancelled() => return,
            }
            if !self.launch(intended, &handle) {
                return;
            }
        }
    }
}

async fn request(c: Context, intended: Instant, prompt: usize) {
    // Lag counts until the request's task first runs: a runtime too busy to
    // run it on time is the client falling behind.
    let timing = Timing {
        intended,
        ready: intended,
        dispatched: Instant::now(),
        user: None,
    };
    let _permit = match &c.permits {
        None => None,
        Some(permits) => tokio::select! {
            permit = Arc::clone(permits).acquire_owned() => permit.ok(),
            _ = c.control.stop.cancelled() => {
                c.shared.recorder.record(&Outcome::Dropped);
                return;
            }
        },
    };
    let (mut conn, mut scratch) = c.pool.take();
    c.shared.active.fetch_add(1, Ordering::Relaxed);
    let prompt = c.shared.prompts.get(prompt);
    tokio::select! {
        biased;
        _ = c.control.abort.cancelled() => {
            c.shared.recorder.record(&Outcome::Cancelled);
            conn = None;
        }
        outcome = c.shared.executor.run(&mut conn, prompt, timing, &mut scratch) => {
            c.shared.recorder.record(&outcome);
        }
    }
    c.shared.active.fetch_sub(1, Ordering::Relaxed);
    c.pool.give(conn, scratch);
}
