//! Closed-loop virtual users: each sends a request, waits for the whole
//! answer, and sends the next, while its schedule says it is on.
//!
//! A user's intended start is when it is ready: the end of its previous
//! request plus the think time. With a pace, it is the next tick of a fixed
//! cadence instead; a user whose request ran long sends at once, and its
//! latency counts from the tick it missed, so a server stall shows in the
//! latency from the intended start even though the user was waiting.
//!
//! With sessions ([`crate::prompts::Prompts::sessions`]), a user plays one
//! conversation at a time: each turn sends the system prompt, the earlier
//! user turns and the answers the server gave them, then the new turn;
//! the session's think time separates its turns, the load's think time
//! (or pace) separates sessions. A failed turn ends its session (the
//! conversation has no answer to build on) and the user starts the next.
//! When the user's window closes (the load's end, a ramp down), its
//! session stops where it is: no further turn is sent, and a turn in
//! flight finishes within the drain as any request does.
//!
//! A user whose connection attempt failed waits out a back-off
//! ([`super::backoff`]) before its next request, and one the server
//! refused with a `Retry-After` (429 or 503, when the run honours it)
//! waits that long. Either wait falls between the next request's intended
//! start and its `t0`: it is client queue time, never latency.

use std::sync::atomic::Ordering;
use std::time::Duration;

use stampede_proto::ErrorClass;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until};

use super::backoff::Backoff;
use super::schedule::Window;
use super::{Control, Gate, Shared, wait_until};
use crate::exec::{Scratch, Timing};
use crate::prompts::{Message, Prompt};
use crate::record::Outcome;

/// A closed-loop load on one agent.
#[derive(Clone, Debug)]
pub struct Closed {
    /// Each local user's active windows, from the load's start.
    pub windows: Vec<Vec<Window>>,
    /// Global number of this agent's first user.
    pub first_user: u32,
    /// Length of each phase of the load, in order.
    pub phase_lengths: Vec<Duration>,
    /// Seed for where each user starts in the prompt share, and for its
    /// connect back-off's jitter.
    pub seed: u64,
    /// Pause between a response and the next request.
    pub think: Duration,
    /// When set, each user aims to start a request at this cadence.
    pub pace: Option<Duration>,
}

impl Closed {
    /// Runs every user's windows from `start` (once `gate` opens) until
    /// `end`, then lets in-flight requests finish for up to `drain` before
    /// abandoning them. Returns when every user has stopped.
    pub async fn run(
        &self,
        shared: Shared,
        gate: Gate,
        start: Instant,
        end: Instant,
        drain: Duration,
        control: Control,
    ) {
        let mut users = JoinSet::new();
        for (i, windows) in self.windows.iter().enumerate() {
            let number = self.first_user + i as u32;
            let user = User {
                number,
                backoff: Backoff::new(self.seed ^ u64::from(number).wrapping_mul(0xD6E8_FEB8_6659_FD93)),
                not_before: None,
                shared: shared.clone(),
                next_prompt: shared.prompts.first_for(self.first_user + i as u32, self.seed),
                windows: windows.clone(),
                start,
                end,
                think: self.think,
                pace: self.pace,
                control: control.clone(),
                session: None,
                sessions: 0,
            };
            users.spawn(user.run(gate.clone()));
        }
        tokio::select! {
            _ = sleep_until(end) => {}
            _ = control.stop.cancelled() => {}
            // Every request of the run's count is sent: the load is over.
            () = shared.budget.spent() => {}
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

struct User {
    /// Global user number, unique across the run.
    number: u32,
    /// Spaces its attempts while connections fail.
    backoff: Backoff,
    /// The end of a connect back-off or of the server's `Retry-After`: the
    /// next request is not sent before it.
    not_before: Option<Instant>,
    shared: Shared,
    next_prompt: usize,
    windows: Vec<Window>,
    start: Instant,
    end: Instant,
    think: Duration,
    pace: Option<Duration>,
    control: Control,
    /// The session in progress, when the run plays sessions.
    session: Option<Session>,
    /// Sessions started so far.
    sessions: u32,
}

/// A conversation a user is playing.
struct Session {
    /// Its index in the prompt share.
    index: usize,
    /// The next turn, from 0.
    turn: usize,
    /// What every turn so far sent and received.
    history: Vec<Message>,
    /// Which of its user's sessions it is, from 1.
    number: u32,
}

impl User {
    async fn run(mut self, mut gate: Gate) {
        tokio::select! {
            passed = gate.passed() => if !passed { return },
            _ = self.control.stop.cancelled() => return,
        }
        let mut conn = None;
        let mut scratch = Scratch::default();
        for w in std::mem::take(&mut self.windows) {
            let (on, off) = (self.start + w.on, (self.start + w.off).min(self.end));
            if on >= off || !wait_until(on, &self.control.stop).await {
                continue;
            }
            self.shared.active.fetch_add(1, Ordering::Relaxed);
            let aborted = self.window(on, off, &mut conn, &mut scratch).await;
            self.session = None;
            self.shared.active.fetch_sub(1, Ordering::Relaxed);
            if aborted {
                return;
            }
        }
    }

    /// Sends requests until `off`. Returns true when aborted.
    async fn window(
        &mut self,
        on: Instant,
        off: Instant,
        conn: &mut Option<crate::http::Conn>,
        scratch: &mut Scratch,
    ) -> bool {
        let (mut tick, mut ready) = (on, on);
        loop {
            // Free to send from now: a paced user whose last request ran
            // past its tick could not have sent any sooner.
            let free = Instant::now();
            // A session's later turns follow their think time, not the pace.
            let mid_session = self.session.as_ref().is_some_and(|s| s.turn > 0);
            let intended = if self.pace.is_some() && !mid_session {
                tick
            } else {
                ready
            };
            // Waiting out a back-off or a Retry-After: from its intended
            // start, the request waits in the client's queue.
            let sendable = intended.max(free).max(self.not_before.unwrap_or(intended));
            if sendable >= off || Instant::now() >= off || self.control.stop.is_cancelled() {
                return false;
            }
            if !wait_until(sendable, &self.control.stop).await {
                return false;
            }
            self.not_before = None;
            if !self.shared.budget.take() {
                return false;
            }
            let timing = Timing {
                intended,
                ready: sendable,
                dispatched: Instant::now(),
                user: Some(self.number),
            };
            let prompts = &self.shared.prompts;
            if prompts.sessions() && self.session.is_none() {
                let (system, _) = prompts.conversation(self.next_prompt);
                self.sessions += 1;
                self.session = Some(Session {
                    number: self.sessions,
                    index: self.next_prompt,
                    turn: 0,
                    history: system
                        .map(|s| Message {
                            role: "system",
                            content: s.to_owned(),
                        })
                        .into_iter()
                        .collect(),
                });
                self.next_prompt += 1;
            }
            let prompt = match &self.session {
                Some(s) => {
                    let first = prompts.get(s.index);
                    let (_, later) = prompts.conversation(s.index);
                    Prompt {
                        text: if s.turn == 0 { first.text } else { &later[s.turn - 1] },
                        history: &s.history,
                        turn: u16::try_from(s.turn + 1).unwrap_or(u16::MAX),
                        session: s.number,
                        ..first
                    }
                }
                None => {
                    self.next_prompt += 1;
                    prompts.get(self.next_prompt - 1)
                }
            };
            let text = self.session.is_some().then(|| prompt.text.to_owned());
            let (wait, answered) = tokio::select! {
                biased;
                _ = self.control.abort.cancelled() => {
                    self.shared.recorder.record(&Outcome::Cancelled);
                    return true;
                }
                outcome = self.shared.executor.run(conn, prompt, timing, scratch) => {
                    self.shared.recorder.record(&outcome);
                    (wait_after(&mut self.backoff, &outcome), matches!(outcome, Outcome::Ok(_)))
                }
            };
            self.not_before = wait.map(|w| Instant::now() + w);
            let mid_session = match (self.session.as_mut(), text) {
                (Some(s), Some(text)) if answered => {
                    s.history.push(Message {
                        role: "user",
                        content: text,
                    });
                    s.history.push(Message {
                        role: "assistant",
                        content: scratch.answer().to_owned(),
                    });
                    s.turn += 1;
                    s.turn <= self.shared.prompts.conversation(s.index).1.len()
                }
                _ => false,
            };
            if !mid_session {
                self.session = None;
            }
            match self.pace {
                _ if mid_session => ready = Instant::now() + self.shared.prompts.turn_think(),
                Some(pace) => tick += pace,
                None => ready = Instant::now() + self.think,
            }
        }
    }
}

/// How long a user waits before its next request after `outcome`, besides
/// its think time or pace: a back-off after a failed connection attempt,
/// or the server's `Retry-After`.
fn wait_after(backoff: &mut Backoff, outcome: &Outcome<'_>) -> Option<Duration> {
    match outcome {
        Outcome::Failed {
            class: ErrorClass::Connect,
            ..
        } => Some(backoff.failed()),
        // A timeout may have been spent connecting: it neither proves the
        // server reachable nor needs spacing (it took the whole timeout).
        Outcome::Failed {
            class: ErrorClass::Timeout,
            ..
        } => None,
        // The connection opened: the server is reachable.
        Outcome::Failed { retry_after, .. } => {
            backoff.succeeded();
            *retry_after
        }
        Outcome::Ok(_) => {
            backoff.succeeded();
            None
        }
        Outcome::Cancelled | Outcome::Dropped => None,
    }
}
