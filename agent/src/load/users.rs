//! Closed-loop virtual users: each sends a request, waits for the whole
//! answer, and sends the next, for the duration.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use stampede_proto::ErrorClass;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep, sleep_until};

use super::{Control, Gate};
use crate::exec::{Executor, Scratch};
use crate::prompts::Prompts;
use crate::record::{Outcome, Recorder};

/// After a failed connection attempt a user waits this long before trying
/// again, so that a dead server is not hammered in a tight loop.
const CONNECT_RETRY: Duration = Duration::from_millis(100);

/// A closed-loop load.
#[derive(Clone, Debug)]
pub struct Users {
    /// Users on this agent.
    pub count: u32,
    /// Global number of this agent's first user.
    pub first_user: u32,
    /// Seed for where each user starts in the prompt share.
    pub seed: u64,
}

/// What the users share.
#[derive(Clone, Debug)]
pub struct Shared {
    /// Runs requests.
    pub executor: Arc<Executor>,
    /// The prompt share.
    pub prompts: Arc<Prompts>,
    /// Where outcomes go.
    pub recorder: Recorder,
    /// Users currently running (a gauge for reports).
    pub active: Arc<AtomicU32>,
}

impl Users {
    /// Runs every user from the opening of `gate` until `end`, then lets in-flight
    /// requests finish for up to `drain` before abandoning them. Returns
    /// when every user has stopped.
    pub async fn run(&self, shared: Shared, gate: Gate, end: Instant, drain: Duration, control: Control) {
        let mut users = JoinSet::new();
        for i in 0..self.count {
            let shared = shared.clone();
            let control = control.clone();
            let id = self.first_user + i;
            let first_prompt = shared.prompts.first_for(id, self.seed);
            users.spawn(user(shared, first_prompt, gate.clone(), end, control));
        }
        tokio::select! {
            _ = sleep_until(end) => {}
            _ = control.stop.cancelled() => {}
        }
        control.stop.cancel();
        let drained_by = Instant::now() + drain;
        loop {
            tokio::select! {
                joined = users.join_next() => match joined {
                    None => break,
                    Some(Ok(())) => {}
                    Some(Err(e)) => tracing::error!("a user task failed: {e}"),
                },
                _ = sleep_until(drained_by), if !control.abort.is_cancelled() => {
                    tracing::info!(in_flight = users.len(), "drain time is up; abandoning in-flight requests");
                    control.abort.cancel();
                }
            }
        }
    }
}

async fn user(shared: Shared, mut next_prompt: usize, mut gate: Gate, end: Instant, control: Control) {
    tokio::select! {
        passed = gate.passed() => if !passed { return },
        _ = control.stop.cancelled() => return,
    }
    shared.active.fetch_add(1, Ordering::Relaxed);
    let mut conn = None;
    let mut scratch = Scratch::default();
    while !control.stop.is_cancelled() && Instant::now() < end {
        let prompt = shared.prompts.get(next_prompt);
        next_prompt += 1;
        let intended = Instant::now();
        let connect_failed = tokio::select! {
            biased;
            _ = control.abort.cancelled() => {
                shared.recorder.record(&Outcome::Cancelled);
                break;
            }
            outcome = shared.executor.run(&mut conn, prompt, intended, &mut scratch) => {
                shared.recorder.record(&outcome);
                matches!(outcome, Outcome::Failed { class: ErrorClass::Connect, .. })
            }
        };
        if connect_failed {
            tokio::select! {
                _ = sleep(CONNECT_RETRY) => {}
                _ = control.stop.cancelled() => {}
            }
        }
    }
    shared.active.fetch_sub(1, Ordering::Relaxed);
}
