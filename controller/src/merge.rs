//! Merges agents' reports: exact run totals without the warm-up, exact
//! totals per step of the load, per-agent totals, and one row of
//! statistics per interval once every agent has reported it.
//!
//! A report's histograms are added once, into its interval's; an interval's
//! histograms join the totals (the run's, every report's and its step's)
//! when it closes, so each bucket is walked once per interval rather than
//! once per report and total. The totals read while intervals are still
//! open add those in on the spot: they are exact at every moment.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::Duration;

use stampede_proto::{Counters, ErrorClass, Histograms, Metric, Sparse};

use crate::profile::Load;
use crate::stats::Stats;

/// One agent's report, decoded from the wire.
#[derive(Clone, Debug)]
pub struct Report {
    /// Interval index.
    pub interval: u64,
    /// Per-agent sequence number.
    pub sequence: u64,
    /// When the agent cut it, microseconds after its start.
    pub elapsed_us: u64,
    /// Histograms of the interval, as the wire carried them.
    pub histograms: Sparse,
    /// Counters of the interval.
    pub counters: Counters,
    /// First message per error class.
    pub samples: BTreeMap<ErrorClass, String>,
    /// Share of its cores the agent's threads used in the interval.
    pub cpu: f64,
    /// The milliseconds of the interval in which the agent had requests in
    /// flight (a bit each); empty from an agent that does not say.
    pub presence: Vec<u8>,
    /// TTFT of the interval's successful requests by prompt class.
    pub class_ttft: BTreeMap<String, hdrhistogram::Histogram<u64>>,
}

/// An agent's own totals, as it stated them at the end.
#[derive(Clone, Debug)]
pub struct Finished {
    /// Its cumulative histograms.
    pub histograms: Histograms,
    /// Its cumulative counters.
    pub counters: Counters,
    /// Microseconds from its start until its last request ended.
    pub elapsed_us: u64,
    /// Sequence number of its last report.
    pub last_sequence: u64,
}

/// What the merger knows of one agent.
#[derive(Clone, Debug, Default)]
pub struct Agent {
    /// Sum of its reports' counters.
    pub counters: Counters,
    /// Reports merged.
    pub reports: u64,
    /// Highest interval it reported.
    pub last_interval: Option<u64>,
    /// Its reported elapsed time at the latest report or at the end.
    pub elapsed_us: u64,
    /// No more reports will come (finished or lost).
    pub done: bool,
    /// Its Finished totals disagreed with its reports (a lost report).
    pub mismatch: Option<String>,
    /// Mean share of its cores its process used while the load ran.
    pub cpu: f64,
    cpu_samples: u64,
    seen: HashSet<u64>,
    sample_counts: [u64; Metric::ALL.len()],
}

/// Where an interval belongs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    /// The warm-up at the start of a step: left out of statistics.
    Warmup(usize),
    /// The measured part of a step.
    Step(usize),
    /// After the last step: in-flight requests finishing.
    Drain,
}

/// Which step each interval belongs to.
#[derive(Clone, Debug)]
pub struct Timeline {
    /// Per step: first interval, first measured interval, end (exclusive).
    steps: Vec<(u64, u64, u64)>,
    /// The length of one interval.
    interval: Duration,
}

impl Timeline {
    /// The timeline of `load` cut into intervals of `interval`. Step
    /// boundaries are whole intervals (the profile checks this wherever
    /// it matters); otherwise a step ends at the interval that holds its
    /// end.
    pub fn new(load: &Load, interval: Duration) -> Timeline {
        let n = |d: Duration| d.as_nanos().div_ceil(interval.as_nanos().max(1)) as u64;
        let mut t = Duration::ZERO;
        let steps = load
            .steps
            .iter()
            .map(|s| {
                let start = n(t);
                t += s.duration;
                (start, (start + n(load.warmup)).min(n(t)), n(t))
            })
            .collect();
        Timeline { steps, interval }
    }

    /// Where interval `index` belongs.
    pub fn place(&self, index: u64) -> Place {
        for (k, &(start, measured, end)) in self.steps.iter().enumerate() {
            if index >= start && index < end {
                return if index < measured {
                    Place::Warmup(k)
                } else {
                    Place::Step(k)
                };
            }
        }
        Place::Drain
    }
}

/// Merged statistics of one interval over all agents.
#[derive(Clone, Debug)]
pub struct Row {
    /// Interval index.
    pub interval: u64,
    /// Where it belongs.
    pub place: Place,
    /// Merged counters; `active_users` is the sum over agents.
    pub counters: Counters,
    /// Per-metric statistics, in [`Metric::ALL`] order.
    pub stats: [Stats; Metric::ALL.len()],
    /// The busiest agent's CPU share in the interval.
    pub cpu: f64,
    /// Its length, seconds: the interval's, or less for the last one,
    /// which ends when the load did.
    pub length_s: f64,
    /// Seconds of it in which any agent had a request in flight; none when
    /// no agent said.
    pub present_s: Option<f64>,
    /// TTFT statistics of its successful requests by prompt class.
    pub class_ttft: BTreeMap<String, Stats>,
}

impl Row {
    /// Statistics of one metric.
    pub fn get(&self, metric: Metric) -> &Stats {
        &self.stats[Metric::ALL
            .iter()
            .position(|m| *m == metric)
            .expect("every metric is in ALL")]
    }
}

/// Histograms and counters merged over some span.
#[derive(Clone, Debug, Default)]
pub struct Totals {
    /// Exact histograms.
    pub histograms: Histograms,
    /// Counters; `active_users` is always zero.
    pub counters: Counters,
}

impl Totals {
    /// Adds a report's counters; its histograms join when its interval
    /// closes.
    fn count(&mut self, counters: &Counters) {
        let mut c = counters.clone();
        c.active_users = 0;
        self.counters.add(&c);
    }
}

#[derive(Default)]
struct Open {
    histograms: Histograms,
    counters: Counters,
    reported: BTreeSet<u32>,
    cpu: f64,
    /// The latest cut of its reports, microseconds after the start.
    elapsed_us: u64,
    presence: Option<Vec<u8>>,
    class_ttft: BTreeMap<String, hdrhistogram::Histogram<u64>>,
}

/// Merges every report of a run.
pub struct Merger {
    agents: Vec<Agent>,
    timeline: Timeline,
    /// Every report: checked against each agent's final totals. Its
    /// counters count every report; its histograms, those of closed
    /// intervals (see [`Merger::all`]), as do `measured`'s and `steps`'.
    all: Totals,
    /// Every report outside warm-ups: the run's statistics.
    measured: Totals,
    /// Counters of the warm-ups.
    warmup: Counters,
    /// The measured part of each step.
    steps: Vec<Totals>,
    samples: BTreeMap<ErrorClass, String>,
    open: BTreeMap<u64, Open>,
}

/// What happened to a report.
#[derive(Debug, PartialEq, Eq)]
pub enum Merged {
    /// Added to the totals.
    Added,
    /// Its sequence number was seen before: ignored.
    Duplicate,
}

fn stats_of(h: &Histograms) -> [Stats; Metric::ALL.len()] {
    Metric::ALL.map(|m| Stats::of(h.get(m)))
}

impl Merger {
    /// A merger for `agents` agents of a load laid out by `timeline`.
    pub fn new(agents: u32, timeline: Timeline) -> Merger {
        Merger {
            agents: vec![Agent::default(); agents as usize],
            steps: vec![Totals::default(); timeline.steps.len()],
            timeline,
            all: Totals::default(),
            measured: Totals::default(),
            warmup: Counters::default(),
            samples: BTreeMap::new(),
            open: BTreeMap::new(),
        }
    }

    /// Agent `agent`'s report `sequence` was added before.
    pub fn has(&self, agent: u32, sequence: u64) -> bool {
        self.agents
            .get(agent as usize)
            .is_some_and(|a| a.seen.contains(&sequence))
    }

    /// Adds one report of agent `agent`, then returns rows of intervals
    /// that became complete, in order.
    pub fn add(&mut self, agent: u32, report: &Report) -> (Merged, Vec<Row>) {
        let a = &mut self.agents[agent as usize];
        if !a.seen.insert(report.sequence) {
            return (Merged::Duplicate, Vec::new());
        }
        a.reports += 1;
        a.counters.add(&report.counters);
        a.last_interval = a.last_interval.max(Some(report.interval));
        a.elapsed_us = a.elapsed_us.max(report.elapsed_us);
        for (n, m) in a.sample_counts.iter_mut().zip(Metric::ALL) {
            *n += report.histograms.len(m);
        }
        let place = self.timeline.place(report.interval);
        if place != Place::Drain {
            a.cpu = (a.cpu * a.cpu_samples as f64 + report.cpu) / (a.cpu_samples + 1) as f64;
            a.cpu_samples += 1;
        }
        self.all.count(&report.counters);
        match place {
            Place::Warmup(_) => {
                let mut c = report.counters.clone();
                c.active_users = 0;
                self.warmup.add(&c);
            }
            Place::Step(k) => {
                self.measured.count(&report.counters);
                self.steps[k].count(&report.counters);
            }
            Place::Drain => self.measured.count(&report.counters),
        }
        for (class, message) in &report.samples {
            self.samples.entry(*class).or_insert_with(|| message.clone());
        }
        let open = self.open.entry(report.interval).or_default();
        open.histograms.add_sparse(&report.histograms);
        open.counters.add(&report.counters);
        open.reported.insert(agent);
        open.cpu = open.cpu.max(report.cpu);
        open.elapsed_us = open.elapsed_us.max(report.elapsed_us);
        if !report.presence.is_empty() {
            let map = open.presence.get_or_insert_with(Vec::new);
            if map.len() < report.presence.len() {
                map.resize(report.presence.len(), 0);
            }
            for (mine, theirs) in map.iter_mut().zip(&report.presence) {
                *mine |= theirs;
            }
        }
        for (class, h) in &report.class_ttft {
            match open.class_ttft.get_mut(class) {
                Some(mine) => {
                    // Same bounds on both sides: adding cannot fail.
                    let _ = mine.add(h);
                }
                None => {
                    open.class_ttft.insert(class.clone(), h.clone());
                }
            }
        }
        (Merged::Added, self.complete())
    }

    /// Records an agent's final totals and checks them against its
    /// reports. Returns rows that became complete.
    pub fn finish(&mut self, agent: u32, finished: &Finished) -> Vec<Row> {
        let a = &mut self.agents[agent as usize];
        a.done = true;
        a.elapsed_us = a.elapsed_us.max(finished.elapsed_us);
        let mut theirs = finished.counters.clone();
        theirs.active_users = 0;
        let mut ours = a.counters.clone();
        ours.active_users = 0;
        let counts: Vec<u64> = Metric::ALL.iter().map(|m| finished.histograms.get(*m).len()).collect();
        if theirs != ours || counts != a.sample_counts {
            a.mismatch = Some(format!(
                "its final totals ({} ok, {} failed) differ from the sum of its {} reports ({} ok, {} failed)",
                theirs.ok,
                theirs.failed(),
                a.reports,
                ours.ok,
                ours.failed()
            ));
        } else if finished.last_sequence != a.reports {
            a.mismatch = Some(format!(
                "it sent {} reports but {} arrived",
                finished.last_sequence, a.reports
            ));
        }
        self.complete()
    }

    /// No more reports will come from this agent.
    pub fn gone(&mut self, agent: u32) -> Vec<Row> {
        self.agents[agent as usize].done = true;
        self.complete()
    }

    /// Rows of every interval still open, as they stand. Call at the end.
    pub fn flush(&mut self) -> Vec<Row> {
        let open = std::mem::take(&mut self.open);
        open.into_iter()
            .map(|(interval, open)| self.close(interval, open))
            .collect()
    }

    /// Closes interval `interval`: its histograms join the totals it
    /// counts in, and it becomes a row.
    fn close(&mut self, interval: u64, open: Open) -> Row {
        let h = &open.histograms;
        self.all.histograms.add(h);
        match self.timeline.place(interval) {
            Place::Warmup(_) => {}
            Place::Step(k) => {
                self.measured.histograms.add(h);
                self.steps[k].histograms.add(h);
            }
            Place::Drain => self.measured.histograms.add(h),
        }
        self.row(interval, open)
    }

    /// `closed` with the histograms of the open intervals `counts` takes
    /// added in; borrowed when there are none.
    fn with_open<'a>(&self, closed: &'a Totals, counts: impl Fn(Place) -> bool) -> Cow<'a, Totals> {
        let mut open = self
            .open
            .iter()
            .filter(|(i, o)| counts(self.timeline.place(**i)) && !o.histograms.is_empty())
            .peekable();
        if open.peek().is_none() {
            return Cow::Borrowed(closed);
        }
        let mut totals = closed.clone();
        for (_, o) in open {
            totals.histograms.add(&o.histograms);
        }
        Cow::Owned(totals)
    }

    fn row(&self, interval: u64, open: Open) -> Row {
        let length = self.timeline.interval.as_secs_f64();
        let start = interval as f64 * length;
        Row {
            interval,
            place: self.timeline.place(interval),
            stats: stats_of(&open.histograms),
            counters: open.counters,
            cpu: open.cpu,
            length_s: if open.elapsed_us == 0 {
                length
            } else {
                (open.elapsed_us as f64 / 1e6 - start).clamp(0.0, length)
            },
            present_s: open
                .presence
                .map(|m| f64::from(m.iter().map(|b| b.count_ones()).sum::<u32>()) / 1e3),
            class_ttft: open.class_ttft.iter().map(|(c, h)| (c.clone(), Stats::of(h))).collect(),
        }
    }

    fn complete(&mut self) -> Vec<Row> {
        let mut rows = Vec::new();
        while let Some((&interval, open)) = self.open.first_key_value() {
            let all_in = self.agents.iter().enumerate().all(|(i, a)| {
                a.done || open.reported.contains(&(i as u32)) || a.last_interval.is_some_and(|l| l > interval)
            });
            if !all_in {
                break;
            }
            let open = self.open.remove(&interval).expect("the first key exists");
            rows.push(self.close(interval, open));
        }
        rows
    }

    /// The run's statistics: every report outside the warm-ups, the open
    /// intervals' included.
    pub fn measured(&self) -> Cow<'_, Totals> {
        self.with_open(&self.measured, |place| !matches!(place, Place::Warmup(_)))
    }

    /// Counters of the warm-ups, left out of the statistics.
    pub fn warmup(&self) -> &Counters {
        &self.warmup
    }

    /// Every report, warm-ups and open intervals included.
    pub fn all(&self) -> Cow<'_, Totals> {
        self.with_open(&self.all, |_| true)
    }

    /// The measured part of each step, the open intervals' included.
    pub fn steps(&self) -> Cow<'_, [Totals]> {
        let step = |i: &u64| match self.timeline.place(*i) {
            Place::Step(k) => Some(k),
            Place::Warmup(_) | Place::Drain => None,
        };
        let mut open = self
            .open
            .iter()
            .filter(|(i, o)| step(i).is_some() && !o.histograms.is_empty())
            .peekable();
        if open.peek().is_none() {
            return Cow::Borrowed(&self.steps);
        }
        let mut steps = self.steps.clone();
        for (i, o) in open {
            if let Some(s) = step(i).and_then(|k| steps.get_mut(k)) {
                s.histograms.add(&o.histograms);
            }
        }
        Cow::Owned(steps)
    }

    /// First message of each error class over the run.
    pub fn samples(&self) -> &BTreeMap<ErrorClass, String> {
        &self.samples
    }

    /// What is known of each agent, by index.
    pub fn agents(&self) -> &[Agent] {
        &self.agents
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::{Model, Shape, Step};

    fn load(steps: &[u64], warmup: u64) -> Load {
        Load {
            model: Model::Users {
                think: Duration::ZERO,
                pace: None,
            },
            steps: steps
                .iter()
                .map(|s| Step {
                    level: 1.0,
                    duration: Duration::from_secs(*s),
                    ramp: Duration::ZERO,
                })
                .collect(),
            shape: Shape::Stages,
            warmup: Duration::from_secs(warmup),
            drain: Duration::ZERO,
            requests: None,
            trace: None,
        }
    }

    fn merger(agents: u32) -> Merger {
        Merger::new(agents, Timeline::new(&load(&[100], 0), Duration::from_secs(1)))
    }

    fn report(interval: u64, sequence: u64, ttfts: &[u64]) -> Report {
        let mut histograms = Histograms::new();
        for &v in ttfts {
            histograms.record(Metric::Ttft, v);
        }
        Report {
            interval,
            sequence,
            elapsed_us: (interval + 1) * 1_000_000,
            histograms: Sparse::from(&histograms),
            counters: Counters {
                ok: ttfts.len() as u64,
                active_users: 2,
                ..Counters::default()
            },
            samples: BTreeMap::new(),
            cpu: 0.25,
            presence: Vec::new(),
            class_ttft: BTreeMap::new(),
        }
    }

    #[test]
    fn an_interval_completes_when_every_agent_has_reported_it() {
        let mut m = merger(2);
        let (_, rows) = m.add(0, &report(0, 1, &[100, 200]));
        assert!(rows.is_empty());
        let (_, rows) = m.add(1, &report(0, 1, &[300]));
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].counters.ok, 3);
        assert_eq!(rows[0].counters.active_users, 4);
        assert_eq!(rows[0].get(Metric::Ttft).max, 300);
        assert_eq!(rows[0].cpu, 0.25);
        assert_eq!(m.measured().counters.ok, 3);
        assert_eq!(m.measured().counters.active_users, 0);
        assert_eq!(m.agents()[0].cpu, 0.25);
    }

    #[test]
    fn duplicates_are_ignored_and_late_reports_merged() {
        let mut m = merger(2);
        m.add(0, &report(0, 1, &[1]));
        m.add(0, &report(1, 2, &[2]));
        assert_eq!(m.add(0, &report(1, 2, &[2])).0, Merged::Duplicate);
        // Agent 1's interval 0 arrives late, after agent 0 moved on.
        let (_, rows) = m.add(1, &report(0, 1, &[3]));
        assert_eq!(rows.iter().map(|r| r.interval).collect::<Vec<_>>(), [0]);
        let (_, rows) = m.add(1, &report(1, 2, &[4]));
        assert_eq!(rows.iter().map(|r| r.interval).collect::<Vec<_>>(), [1]);
        assert_eq!(m.measured().histograms.get(Metric::Ttft).len(), 4);
    }

    #[test]
    fn a_finished_or_lost_agent_no_longer_holds_intervals_open() {
        let mut m = merger(2);
        m.add(0, &report(0, 1, &[1]));
        m.add(1, &report(0, 1, &[1]));
        m.add(0, &report(1, 2, &[1]));
        assert_eq!(m.gone(1).len(), 1);
    }

    #[test]
    fn final_totals_are_checked_against_reports() {
        let mut m = merger(1);
        let r = report(0, 1, &[5, 6]);
        m.add(0, &r);
        let good = Finished {
            histograms: {
                let mut h = Histograms::new();
                h.add_sparse(&r.histograms);
                h
            },
            counters: r.counters.clone(),
            elapsed_us: 1,
            last_sequence: 1,
        };
        m.finish(0, &good);
        assert_eq!(m.agents()[0].mismatch, None);
        let mut m = merger(1);
        m.add(0, &r);
        let lost_one = Finished {
            last_sequence: 2,
            ..good
        };
        m.finish(0, &lost_one);
        assert!(m.agents()[0].mismatch.is_some());
    }

    #[test]
    fn intervals_fall_into_steps_and_warm_ups_are_left_out() {
        // Steps of 3 s and 4 s with a 1 s warm-up each.
        let t = Timeline::new(&load(&[3, 4], 1), Duration::from_secs(1));
        let places: Vec<Place> = (0..9).map(|i| t.place(i)).collect();
        use Place::*;
        assert_eq!(
            places,
            [
                Warmup(0),
                Step(0),
                Step(0),
                Warmup(1),
                Step(1),
                Step(1),
                Step(1),
                Drain,
                Drain
            ]
        );
        let mut m = Merger::new(1, t);
        for i in 0..9 {
            m.add(0, &report(i, i + 1, &[10 * (i + 1)]));
        }
        assert_eq!(m.warmup().ok, 2);
        assert_eq!(m.measured().counters.ok, 7);
        assert_eq!(m.all().counters.ok, 9);
        assert_eq!(m.steps()[0].counters.ok, 2);
        assert_eq!(m.steps()[1].counters.ok, 3);
        assert_eq!(m.steps()[1].histograms.get(Metric::Ttft).min(), 50);
    }

    /// The totals read while intervals are open hold every report merged
    /// so far, as one set that recorded each sample would, and so do
    /// they once the intervals close: warm-ups in `all` only, each step's
    /// in its own.
    #[test]
    fn totals_are_exact_while_intervals_are_open_and_once_they_close() {
        // Steps of 2 s and 2 s, a 1 s warm-up each, then the drain.
        let mut m = Merger::new(2, Timeline::new(&load(&[2, 2], 1), Duration::from_secs(1)));
        let ttft = |agent: u64, i: u64| [1_000 * (i + 1) + agent, 77_777 * (i + 1) + agent];
        let (mut all, mut measured) = (Histograms::new(), Histograms::new());
        let mut steps = [Histograms::new(), Histograms::new()];
        let check = |m: &Merger, all: &Histograms, measured: &Histograms, steps: &[Histograms; 2]| {
            assert!(m.all().histograms == *all);
            assert!(m.measured().histograms == *measured);
            assert!(m.steps()[0].histograms == steps[0]);
            assert!(m.steps()[1].histograms == steps[1]);
        };
        for i in 0..6_u64 {
            // Agent 0 runs an interval ahead: every interval stays open
            // until agent 1 reports it.
            for agent in [0, 1] {
                let interval = if agent == 0 { i } else { i.saturating_sub(1) };
                if agent == 1 && i == 0 {
                    continue;
                }
                let values = ttft(agent, interval);
                m.add(agent as u32, &report(interval, interval + 1, &values));
                for v in values {
                    all.record(Metric::Ttft, v);
                    match m.timeline.place(interval) {
                        Place::Warmup(_) => {}
                        Place::Step(k) => {
                            measured.record(Metric::Ttft, v);
                            steps[k].record(Metric::Ttft, v);
                        }
                        Place::Drain => measured.record(Metric::Ttft, v),
                    }
                }
                assert!(!m.open.is_empty(), "interval {i}: one stays open");
                check(&m, &all, &measured, &steps);
            }
        }
        assert_eq!(m.flush().len(), 1);
        assert!(m.open.is_empty());
        assert!(matches!(m.measured(), Cow::Borrowed(_)), "nothing open: nothing to add");
        check(&m, &all, &measured, &steps);
        assert_eq!(m.all().histograms.get(Metric::Ttft).len(), 22);
    }
}
