//! Pushing the run's metrics over OTLP while it runs (`[metrics] otlp =
//! true`, or `OTEL_METRICS_EXPORTER=otlp`), beside the Prometheus page
//! that `--metrics-addr` serves.
//!
//! The coordinator's writer hands a [`Feed`] each entry's effect; as rows
//! complete, the feed takes a [`Snapshot`] of the ledger's measured totals
//! (the summary's figures: warm-ups left out) and leaves it for the
//! pushing thread, which sends the latest one every interval on a runtime
//! of its own. The writer never waits on the network, except at the end:
//! [`Feed::finish`] pushes once more after the last report is merged, so
//! the receiver's last values are the summary's, and waits for that push
//! (at most its timeout, twice over). A failed push is logged once, then
//! counted; the summary says how many pushes went through.

mod request;
mod send;

use std::collections::BTreeMap;
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, watch};
use tokio::time::MissedTickBehavior;

use crate::profile::Push;
use crate::report::live::Live;
use crate::results::ledger::Effect;
use crate::results::log::Pushed;
use crate::results::{AgentEnd, Ledger};
pub(crate) use request::About;
use request::Snapshot;
pub(crate) use send::check;

/// The writer's end: takes snapshots and hands them to the pushing thread.
pub(crate) struct Feed {
    latest: watch::Sender<Option<Snapshot>>,
    last: mpsc::UnboundedSender<(Snapshot, std_mpsc::Sender<Pushed>)>,
    /// Each agent's users at its latest report.
    active: BTreeMap<u32, u32>,
    agents: [u32; 3],
    timeout: Duration,
    endpoint: String,
    /// The server's, accelerators' and agents' CPU figures, as the live
    /// endpoint holds them.
    live: Live,
}

/// The settings as they appear in the summary, before any push.
fn pushed(push: &Push) -> Pushed {
    Pushed {
        endpoint: push.endpoint.clone(),
        protocol: push.protocol.to_string(),
        interval_s: push.interval.as_secs_f64(),
        ..Pushed::default()
    }
}

impl Feed {
    /// Starts the pushing thread for `push`; an error (a header that
    /// cannot be sent, a thread that cannot start) says why.
    pub(crate) fn start(push: Push, about: About, live: Live) -> Result<Feed, String> {
        check(&push)?;
        let (latest, snapshots) = watch::channel(None);
        let (last, lasts) = mpsc::unbounded_channel();
        let feed = Feed {
            latest,
            last,
            active: BTreeMap::new(),
            agents: [0; 3],
            timeout: push.timeout,
            endpoint: push.endpoint.clone(),
            live,
        };
        let logs = tracing::Span::current();
        std::thread::Builder::new()
            .name("stampede-otlp".to_owned())
            .spawn(move || {
                let _in_run = logs.enter();
                let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::error!("cannot start the metrics push: {e}");
                        return;
                    }
                };
                runtime.block_on(pusher(push, about, snapshots, lasts));
            })
            .map_err(|e| format!("cannot start the metrics push thread: {e}"))?;
        Ok(feed)
    }

    /// Takes in one entry's effect: an agent's report (its active users),
    /// an agent's change of state, completed rows; publishes a snapshot
    /// when the figures moved on.
    pub(crate) fn record(&mut self, effect: &Effect, agent: Option<u32>, agent_state: bool, ledger: &Ledger) {
        if let (Some(report), Some(index)) = (&effect.added, agent) {
            self.active.insert(index, report.counters.active_users);
        }
        if agent_state {
            self.count_agents(ledger);
        }
        if agent_state || !effect.rows.is_empty() {
            let snapshot = self.snapshot(ledger);
            self.latest.send_replace(Some(snapshot));
        }
    }

    fn count_agents(&mut self, ledger: &Ledger) {
        let mut counts = [0; 3];
        for agent in ledger.agents() {
            let i = match agent.end {
                AgentEnd::Unfinished => 0,
                AgentEnd::Finished => 1,
                AgentEnd::Lost(_) | AgentEnd::Failed(_) => 2,
            };
            counts[i] += 1;
            if agent.end != AgentEnd::Unfinished {
                self.active.remove(&agent.index);
            }
        }
        self.agents = counts;
    }

    fn snapshot(&self, ledger: &Ledger) -> Snapshot {
        let measured = ledger.merger().measured();
        let active = self.active.values().map(|&n| u64::from(n)).sum();
        Snapshot::of(
            &measured.histograms,
            &measured.counters,
            active,
            self.agents,
            self.live.figures(),
        )
    }

    /// Pushes the final figures, once every report is merged, and says
    /// how the pushes went. Waits for the last push, at most twice its
    /// timeout (one push may be under way).
    pub(crate) fn finish(mut self, ledger: &Ledger) -> Pushed {
        self.count_agents(ledger);
        self.active.clear();
        let snapshot = self.snapshot(ledger);
        let (tx, rx) = std_mpsc::channel();
        let wait = self.timeout * 2 + Duration::from_secs(1);
        if self.last.send((snapshot, tx)).is_ok()
            && let Ok(pushed) = rx.recv_timeout(wait)
        {
            return pushed;
        }
        tracing::warn!(
            "the last metrics push to {} did not end within {wait:?}; the receiver may lack the final figures",
            self.endpoint
        );
        Pushed {
            endpoint: self.endpoint.clone(),
            first_error: Some(format!("the last push did not end within {wait:?}")),
            ..Pushed::default()
        }
    }
}

/// The pushing thread's loop: the latest snapshot every interval, then the
/// last one when the writer asks.
async fn pusher(
    push: Push,
    mut about: About,
    snapshots: watch::Receiver<Option<Snapshot>>,
    mut lasts: mpsc::UnboundedReceiver<(Snapshot, std_mpsc::Sender<Pushed>)>,
) {
    let mut counts = Counts {
        pushed: pushed(&push),
        failing: false,
    };
    let mut sender = match send::Sender::new(&push) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!("cannot push metrics to {}: {e}", push.endpoint);
            counts.pushed.first_error = Some(e);
            None
        }
    };
    about.start = about.start.min(SystemTime::now());
    let mut ticks = tokio::time::interval(push.interval);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // The first tick is at once, before anything was measured.
    ticks.tick().await;
    loop {
        tokio::select! {
            // The last push first: when a tick is due as well (a push that
            // took its whole timeout leaves the next tick due), taking the
            // tick could keep the writer waiting past its limit.
            biased;
            last = lasts.recv() => {
                let Some((snapshot, reply)) = last else { return };
                let ok = match &mut sender {
                    Some(s) => attempt(s, &push, &about, &snapshot, &mut counts).await,
                    None => {
                        counts.pushed.failed += 1;
                        false
                    }
                };
                let pushed = Pushed { last_ok: ok, ..counts.pushed };
                if pushed.failed > 0 {
                    tracing::warn!(
                        "{} of {} metrics pushes to {} failed{}",
                        pushed.failed,
                        pushed.failed + pushed.ok,
                        push.endpoint,
                        if ok { "; the last one, with the final figures, went through" } else { ", the last one among them" }
                    );
                }
                let _ = reply.send(pushed);
                return;
            }
            _ = ticks.tick() => {
                let snapshot = snapshots.borrow().clone();
                if let (Some(snapshot), Some(s)) = (snapshot, &mut sender) {
                    attempt(s, &push, &about, &snapshot, &mut counts).await;
                }
            }
        }
    }
}

/// The pushes so far, and whether the latest failed.
struct Counts {
    pushed: Pushed,
    failing: bool,
}

/// One push; true when the receiver took it. The first failure is logged,
/// later ones only counted; the first success after failures is logged.
async fn attempt(s: &mut send::Sender, push: &Push, about: &About, snapshot: &Snapshot, counts: &mut Counts) -> bool {
    let request = request::build(about, snapshot);
    let c = &mut counts.pushed;
    match s.send(request, push.timeout).await {
        Ok(()) => {
            if counts.failing {
                tracing::info!("metrics pushes to {} go through again", push.endpoint);
                counts.failing = false;
            }
            c.ok += 1;
            true
        }
        Err(e) => {
            if c.first_error.is_none() {
                tracing::warn!(
                    "cannot push metrics to {}: {e}; the run goes on, and further failures are only counted",
                    push.endpoint
                );
                c.first_error = Some(e);
            }
            counts.failing = true;
            c.failed += 1;
            false
        }
    }
}

/// The run's push settings: the profile's `[metrics]` over the standard
/// variables; `None` when nothing is pushed. `service.name` is the
/// spans': `[trace] service_name`, else `OTEL_SERVICE_NAME`, else
/// `stampede`.
pub(crate) fn settings(profile: &crate::profile::Profile) -> Result<Option<Push>, String> {
    let env = stampede_otel::metrics_from_env(|k| std::env::var(k).ok())?;
    let service = profile
        .trace
        .service_name
        .clone()
        .or_else(|| env.service_name.clone())
        .unwrap_or_else(|| crate::profile::DEFAULT_SERVICE.to_owned());
    let push = profile.metrics.resolve(&env, profile.report.interval, &service);
    if let Some(p) = &push {
        check(p).map_err(|e| format!("[metrics] {e}"))?;
    }
    Ok(push)
}

/// Starts pushing run `run_id` of `profile` against the server at `url`
/// (model `model`), when `push` says to.
pub(crate) fn start(
    push: Option<Push>,
    run_id: &str,
    profile: &crate::profile::Profile,
    url: &str,
    model: &str,
    live: &Live,
) -> Result<Option<Feed>, String> {
    let Some(push) = push else { return Ok(None) };
    let target = stampede_agent::http::Endpoint::parse(url).map_err(|e| e.to_string())?;
    let dialect = profile.target.api.dialect;
    let about = About {
        run_id: run_id.to_owned(),
        profile: profile.name.clone(),
        service_name: push.service_name.clone(),
        model: model.to_owned(),
        provider: stampede_agent::trace::provider(dialect).to_owned(),
        operation: stampede_agent::trace::operation(dialect).to_owned(),
        address: target.host().to_owned(),
        port: target.port(),
        stream: profile.request.stream,
        start: SystemTime::now(),
    };
    tracing::info!(
        "pushing metrics over OTLP ({}) to {} every {:?}",
        push.protocol,
        push.endpoint,
        push.interval
    );
    Feed::start(push, about, live.clone()).map(Some)
}
