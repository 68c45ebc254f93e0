//! When requests are sent: load models that decide each request's
//! intended start ([`schedule`]) and run it through the executor
//! ([`crate::exec`]), which decides how.

pub mod backoff;
pub mod open;
pub mod schedule;
pub mod users;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

use crate::exec::Executor;
use crate::prompts::Prompts;
use crate::record::Recorder;

/// How a load is ended early.
#[derive(Clone, Debug, Default)]
pub struct Control {
    /// Cancelled: issue no new requests; in-flight ones may finish within
    /// the drain time.
    pub stop: CancellationToken,
    /// Cancelled: abandon in-flight requests now (counted as cancelled).
    pub abort: CancellationToken,
}

/// What every request of a load shares.
#[derive(Clone, Debug)]
pub struct Shared {
    /// Runs requests.
    pub executor: Arc<Executor>,
    /// The prompt share.
    pub prompts: Arc<Prompts>,
    /// Where outcomes go.
    pub recorder: Recorder,
    /// Users running, or requests in flight (a gauge for reports).
    pub active: Arc<AtomicU32>,
    /// The cap on requests this agent sends, when the run has one.
    pub budget: Budget,
}

/// A cap on the requests an agent sends (`load.requests`, split across
/// agents): each request takes a ticket before it is sent, and when the
/// last is taken the load ends as if its time were up.
#[derive(Clone, Debug, Default)]
pub struct Budget {
    left: Option<Arc<AtomicU64>>,
    spent: CancellationToken,
}

impl Budget {
    /// A budget of `max` requests; `None` sets no cap.
    pub fn new(max: Option<u64>) -> Budget {
        let budget = Budget {
            left: max.map(|n| Arc::new(AtomicU64::new(n))),
            spent: CancellationToken::new(),
        };
        if max == Some(0) {
            budget.spent.cancel();
        }
        budget
    }

    /// Takes one request's ticket: false when none is left. Taking the last
    /// one marks the budget spent.
    pub fn take(&self) -> bool {
        let Some(left) = &self.left else { return true };
        match left.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1)) {
            Ok(before) => {
                if before == 1 {
                    self.spent.cancel();
                }
                true
            }
            Err(_) => {
                self.spent.cancel();
                false
            }
        }
    }

    /// Resolves once every ticket is taken; never without a cap.
    pub async fn spent(&self) {
        if self.left.is_some() {
            self.spent.cancelled().await;
        } else {
            std::future::pending::<()>().await;
        }
    }
}

/// Holds users back until the load begins. One task opens it at the start
/// and notes the time; the users then start together instead of each
/// waking from its own timer, which on a busy machine spreads them out.
#[derive(Clone, Debug)]
pub struct Gate(watch::Receiver<bool>);

/// Opens a [`Gate`].
#[derive(Debug)]
pub struct Opener(watch::Sender<bool>);

impl Gate {
    /// A closed gate and its opener.
    pub fn new() -> (Opener, Gate) {
        let (tx, rx) = watch::channel(false);
        (Opener(tx), Gate(rx))
    }

    /// Waits until the gate opens; false if it never will.
    pub async fn passed(&mut self) -> bool {
        self.0.wait_for(|open| *open).await.is_ok()
    }
}

impl Opener {
    /// Lets every user through.
    pub fn open(&self) {
        self.0.send_replace(true);
    }
}

/// Sleeps until `at`; false when `stop` came first.
pub(crate) async fn wait_until(at: Instant, stop: &CancellationToken) -> bool {
    if Instant::now() >= at {
        return !stop.is_cancelled();
    }
    tokio::select! {
        _ = sleep_until(at) => !stop.is_cancelled(),
        _ = stop.cancelled() => false,
    }
}

/// One agent's load.
#[derive(Clone, Debug)]
pub enum Load {
    /// Closed-loop users.
    Closed(users::Closed),
    /// Open-loop arrivals.
    Open(open::Open),
}

impl Load {
    /// The most connections this load holds at once: one per closed-loop
    /// user, or the open loop's concurrency cap; `None` for an open loop
    /// without a cap, whose need depends on how fast the server answers.
    pub fn connections(&self) -> Option<u64> {
        match self {
            Load::Closed(c) => Some(c.windows.len() as u64),
            Load::Open(o) => o.max_concurrency.map(u64::from),
        }
    }

    /// Runs the load from `start` (closed-loop users wait for `gate`) until
    /// `end`, then drains in-flight requests for up to `drain`.
    pub async fn run(
        &self,
        shared: Shared,
        gate: Gate,
        start: Instant,
        end: Instant,
        drain: Duration,
        control: Control,
    ) {
        match self {
            Load::Closed(c) => c.run(shared, gate, start, end, drain, control).await,
            Load::Open(o) => o.run(shared, start, end, drain, control).await,
        }
    }
}

#[cfg(test)]
mod tests;
