//! What a run's entries add up to. The coordinator records each entry as
//! it happens (the log first, then the effect); `controller report`
//! applies the same entries read back from the log. Both end in the same
//! [`Collected`], because [`Ledger::apply`] is the only place where an
//! entry changes anything.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use stampede_proto::{Counters, Histograms, Metric, Sparse, pb};

use super::log::{End, Entry, FinishedEntry, Joined, Log, ReportEntry};
use super::spec::Spec;
use crate::merge::{self, Merger, Row, Timeline};

/// Exemplars kept per metric over the whole run.
pub const EXEMPLARS: usize = 10;

/// How an agent's part ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AgentEnd {
    /// It sent its totals.
    Finished,
    /// Its stream ended, or it fell silent, before it finished.
    Lost(String),
    /// It said it could not carry out its assignment.
    Failed(String),
    /// It never ended (the run was closed without it).
    Unfinished,
}

/// One agent of the run.
#[derive(Clone, Debug)]
pub struct AgentRecord {
    /// Its name.
    pub name: String,
    /// Its position.
    pub index: u32,
    /// Users it ran.
    pub users: u32,
    /// Its software version.
    pub version: String,
    /// Where it connected from.
    pub peer: Option<SocketAddr>,
    /// How it ended.
    pub end: AgentEnd,
    /// When it was lost (its last contact), after the start.
    pub lost_at: Option<Duration>,
    /// Requests it had in flight at its latest report: counted lost if it
    /// is.
    pub in_flight: u32,
    /// The sequence number of that report.
    pub in_flight_sequence: u64,
    /// Why it ended its load early, when it said so in its totals.
    pub stopped_early: Option<String>,
    /// When its load began, controller clock, microseconds since the epoch.
    pub began_at_us: Option<u64>,
    /// Its estimate of controller clock minus its clock, microseconds.
    pub clock_offset_us: Option<i64>,
    /// Round trip of that estimate, microseconds.
    pub clock_rtt_us: Option<u64>,
    /// What its GPU sampler found, when it was asked to sample.
    pub gpu_note: Option<String>,
    /// Its GPU readings, in the order received.
    pub gpu: Vec<pb::GpuSample>,
}

impl AgentRecord {
    /// A place nobody took.
    fn never_joined(index: u32, users: u32) -> AgentRecord {
        AgentRecord {
            name: format!("#{index}"),
            index,
            users,
            version: String::new(),
            peer: None,
            end: AgentEnd::Lost("never joined".to_owned()),
            lost_at: None,
            in_flight: 0,
            in_flight_sequence: 0,
            stopped_early: None,
            began_at_us: None,
            clock_offset_us: None,
            clock_rtt_us: None,
            gpu_note: None,
            gpu: Vec::new(),
        }
    }
}

/// What a run collected.
pub struct Collected {
    /// Every merged report.
    pub merger: Merger,
    /// Each agent, by index.
    pub agents: Vec<AgentRecord>,
    /// One row per interval.
    pub rows: Vec<Row>,
    /// When the load began (wall clock, for the summary).
    pub started_at: Option<SystemTime>,
    /// The planned start, controller clock, microseconds since the epoch.
    pub start_at_us: Option<u64>,
    /// The run was interrupted.
    pub interrupted: bool,
    /// The run was aborted because an agent was lost.
    pub aborted: Option<String>,
    /// Why the run could not be carried out, if it could not.
    pub failure: Option<String>,
    /// The threshold that stopped the load early, in words.
    pub stopped_by: Option<String>,
    /// How pushing the metrics over OTLP went, when they were pushed.
    pub metrics_push: Option<super::log::Pushed>,
    /// Reports that could not be decoded.
    pub unreadable: u64,
    /// The slowest requests the agents named, slowest first per metric.
    pub exemplars: Vec<Exemplar>,
    /// Requests by prompt class over the measured time (warm-ups left
    /// out), from the reports; for an agent whose reports carried no
    /// classes (a run recorded before they did), its final totals.
    pub classes: BTreeMap<String, ClassTotals>,
    /// Some class rows are whole-run totals, warm-ups included (see
    /// `classes`).
    pub classes_whole_run: bool,
    /// Sessions only: successful requests by their turn in the session
    /// (the last counting later turns too), over the measured time, from
    /// the reports.
    pub turns: BTreeMap<u16, ClassTotals>,
}

impl Collected {
    /// The agents' own GPU readings per interval: the mean of `figure`
    /// over the readings taken in it; empty when no agent sampled.
    pub fn gpu(&self, figure: GpuFigure, interval_s: f64) -> BTreeMap<u64, f64> {
        gpu_per_interval(self.agents.iter().flat_map(|a| a.gpu.iter()), figure, interval_s)
    }
}

/// What one GPU reading (NVML) says, 0 to 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GpuFigure {
    /// Share of the period in which a kernel ran.
    Utilisation,
    /// Share of the device memory in use.
    MemoryShare,
    /// Share of the period in which device memory was read or written.
    MemoryBandwidth,
}

impl GpuFigure {
    /// Its value in one reading; `None` where the reading cannot say.
    pub fn of(self, s: &pb::GpuSample) -> Option<f64> {
        match self {
            GpuFigure::Utilisation => Some(f64::from(s.utilization_pct) / 100.0),
            GpuFigure::MemoryBandwidth => Some(f64::from(s.memory_utilization_pct) / 100.0),
            GpuFigure::MemoryShare => {
                (s.memory_total_bytes > 0).then(|| s.memory_used_bytes as f64 / s.memory_total_bytes as f64)
            }
        }
    }
}

/// GPU readings per interval: the mean of `figure` over those taken in it.
fn gpu_per_interval<'a>(
    samples: impl Iterator<Item = &'a pb::GpuSample>,
    figure: GpuFigure,
    interval_s: f64,
) -> BTreeMap<u64, f64> {
    let mut sums: BTreeMap<u64, (f64, u32)> = BTreeMap::new();
    if interval_s <= 0.0 {
        return BTreeMap::new();
    }
    for s in samples {
        let Some(v) = figure.of(s) else { continue };
        let k = (s.elapsed_us as f64 / 1e6 / interval_s) as u64;
        let e = sums.entry(k).or_default();
        e.0 += v;
        e.1 += 1;
    }
    sums.into_iter().map(|(k, (sum, n))| (k, sum / f64::from(n))).collect()
}

/// One prompt class's requests.
#[derive(Clone, Debug, Default)]
pub struct ClassTotals {
    /// TTFT, ITL, TPOT, E2E, input and output tokens of its successes.
    pub histograms: Histograms,
    /// Successes and token totals, and failures by error class.
    pub counters: Counters,
}

impl ClassTotals {
    fn add(&mut self, histograms: &Histograms, counters: &Counters) {
        self.histograms.add(histograms);
        self.counters.add(counters);
    }
}

/// A class's histograms and counters from the wire.
fn decode_class(class: &pb::ClassTotals) -> Result<(Histograms, Counters), stampede_proto::WireError> {
    let histograms = Histograms::from_wire(&class.histograms)?;
    let counters = Counters::from_wire(&class.counters.clone().unwrap_or_default())?;
    Ok((histograms, counters))
}

/// One slow request an agent named.
#[derive(Clone, Debug, PartialEq)]
pub struct Exemplar {
    /// The agent.
    pub agent: u32,
    /// TTFT or E2E.
    pub metric: Metric,
    /// Its value, microseconds.
    pub value_us: u64,
    /// Its trace id.
    pub trace_id: String,
    /// The interval it completed in.
    pub interval: u64,
}

/// What taking in one entry did, for whoever acts on it live.
#[derive(Debug, Default)]
pub struct Effect {
    /// Interval rows that became complete, in order.
    pub rows: Vec<Row>,
    /// The report, decoded, when it was new and readable.
    pub added: Option<merge::Report>,
    /// The report's sequence number was seen before: nothing changed.
    pub duplicate: bool,
    /// Something could not be decoded and was left out: what and why.
    pub unreadable: Option<String>,
    /// An agent's final totals disagree with its reports.
    pub mismatch: Option<String>,
}

/// The state a run's entries build up.
pub struct Ledger {
    planned: Vec<u32>,
    agents: Vec<Option<AgentRecord>>,
    merger: Merger,
    rows: Vec<Row>,
    started_at: Option<SystemTime>,
    start_at_us: Option<u64>,
    unreadable: u64,
    exemplars: Vec<Exemplar>,
    /// Which interval is a warm-up, for the class totals.
    timeline: Timeline,
    classes: BTreeMap<String, ClassTotals>,
    /// Agents whose reports carried per-class counts.
    classes_reported: BTreeSet<u32>,
    classes_whole_run: bool,
    turns: BTreeMap<u16, ClassTotals>,
    end: Option<End>,
    log: Option<Log>,
    log_failed: bool,
    /// Reports or totals were appended by [`Ledger::record_unsynced`] and
    /// are not yet on the disk.
    unsynced: bool,
}

impl Ledger {
    /// An empty ledger for the run `spec` describes. With a log, the
    /// description is its first line and every entry recorded follows.
    pub fn new(spec: &Spec, log: Option<Log>) -> Ledger {
        let n = spec.agents.len();
        let mut ledger = Ledger {
            planned: spec.agents.clone(),
            agents: vec![None; n],
            merger: Merger::new(n as u32, Timeline::new(&spec.load, spec.interval)),
            rows: Vec::new(),
            started_at: None,
            start_at_us: None,
            unreadable: 0,
            exemplars: Vec::new(),
            timeline: Timeline::new(&spec.load, spec.interval),
            classes: BTreeMap::new(),
            classes_reported: BTreeSet::new(),
            classes_whole_run: false,
            turns: BTreeMap::new(),
            end: None,
            log,
            log_failed: false,
            unsynced: false,
        };
        ledger.write(&Entry::Run(Box::new(spec.clone())), true);
        ledger
    }

    /// Appends `entry` to the log, then applies it. A report already
    /// taken in is neither logged again nor applied.
    pub fn record(&mut self, entry: Entry) -> Effect {
        self.take(entry, true)
    }

    /// [`Ledger::record`] without waiting for the disk: a report or an
    /// agent's totals must not be acknowledged before the next
    /// [`Ledger::sync`]. One `fdatasync` then covers every entry appended
    /// since (group commit): a thousand agents' reports a second would
    /// otherwise wait for a thousand of them, one after another.
    pub fn record_unsynced(&mut self, entry: Entry) -> Effect {
        self.take(entry, false)
    }

    fn take(&mut self, entry: Entry, sync_now: bool) -> Effect {
        if let Entry::Report(r) = &entry
            && self.merger.has(r.agent_index, r.report.sequence)
        {
            return Effect {
                duplicate: true,
                ..Effect::default()
            };
        }
        self.write(&entry, sync_now);
        self.apply(entry)
    }

    /// Makes every entry appended by [`Ledger::record_unsynced`] durable.
    pub fn sync(&mut self) {
        if !std::mem::take(&mut self.unsynced) {
            return;
        }
        let Some(log) = &mut self.log else { return };
        if let Err(e) = log.sync()
            && !self.log_failed
        {
            self.log_failed = true;
            tracing::error!(
                "cannot write {} to the disk: {e}; the run goes on, but `controller report` cannot rebuild it",
                log.path().display()
            );
        }
    }

    /// Appends `entry`; a report or an agent's totals, which the agent
    /// drops once acknowledged, reaches the disk before the
    /// acknowledgement goes out (`fdatasync`), so that a crash of this
    /// host loses nothing an agent was told is safe.
    fn write(&mut self, entry: &Entry, sync_now: bool) {
        let Some(log) = &mut self.log else { return };
        let durable = matches!(entry, Entry::Report(_) | Entry::Finished(_));
        self.unsynced |= durable && !sync_now;
        let written = log
            .append(entry)
            .and_then(|()| if durable && sync_now { log.sync() } else { Ok(()) });
        if let Err(e) = written
            && !self.log_failed
        {
            self.log_failed = true;
            tracing::error!(
                "cannot append to {}: {e}; the run goes on, but `controller report` cannot rebuild it",
                log.path().display()
            );
        }
    }

    /// The agent at `index`, once it has a place.
    pub fn agent(&self, index: u32) -> Option<&AgentRecord> {
        self.agents.get(index as usize).and_then(Option::as_ref)
    }

    /// Agents with a place.
    pub fn agents(&self) -> impl Iterator<Item = &AgentRecord> {
        self.agents.iter().flatten()
    }

    /// The rows of the intervals complete so far.
    pub fn rows(&self) -> &[Row] {
        &self.rows
    }

    /// Everything merged so far.
    pub fn merger(&self) -> &Merger {
        &self.merger
    }

    /// When the load started, once it has.
    pub fn started_at(&self) -> Option<SystemTime> {
        self.started_at
    }

    /// What merging has found of each agent.
    pub fn merged(&self) -> &[merge::Agent] {
        self.merger.agents()
    }

    /// Takes in one entry. The only place where an entry changes the
    /// ledger, live or replayed.
    pub fn apply(&mut self, entry: Entry) -> Effect {
        let mut effect = Effect::default();
        match entry {
            Entry::Run(_) => {}
            Entry::Joined(j) => self.joined(j),
            Entry::Left { agent_index, .. } => {
                if let Some(slot) = self.agents.get_mut(agent_index as usize) {
                    *slot = None;
                }
            }
            Entry::Ready {
                agent_index,
                clock_offset_us,
                clock_rtt_us,
            } => {
                if let Some(a) = self.agent_mut(agent_index) {
                    a.clock_offset_us = clock_offset_us;
                    a.clock_rtt_us = clock_rtt_us;
                }
            }
            Entry::Started { unix_ns, start_at_us } => {
                self.started_at = Some(UNIX_EPOCH + Duration::from_nanos(unix_ns));
                self.start_at_us = Some(start_at_us);
            }
            Entry::Began { agent_index, at_us } => {
                if let Some(a) = self.agent_mut(agent_index) {
                    a.began_at_us = Some(at_us);
                }
            }
            Entry::Report(r) => self.report(r, &mut effect),
            Entry::Finished(f) => self.finished(f, &mut effect),
            Entry::Failed { agent_index, reason } => {
                if let Some(a) = self.agent_mut(agent_index) {
                    a.end = AgentEnd::Failed(reason);
                }
                effect.rows = self.gone(agent_index);
            }
            Entry::Lost {
                agent_index,
                reason,
                after_start_us,
            } => {
                if let Some(a) = self.agent_mut(agent_index) {
                    a.end = AgentEnd::Lost(reason);
                    a.lost_at = after_start_us.map(Duration::from_micros);
                }
                effect.rows = self.gone(agent_index);
            }
            Entry::End(end) => self.end = Some(end),
        }
        self.rows.extend(effect.rows.iter().cloned());
        effect
    }

    fn agent_mut(&mut self, index: u32) -> Option<&mut AgentRecord> {
        self.agents.get_mut(index as usize).and_then(Option::as_mut)
    }

    fn joined(&mut self, j: Joined) {
        let Some(slot) = self.agents.get_mut(j.agent_index as usize) else {
            return;
        };
        *slot = Some(AgentRecord {
            name: j.name,
            index: j.agent_index,
            users: j.users,
            version: j.version,
            peer: j.peer.and_then(|p| p.parse().ok()),
            end: AgentEnd::Unfinished,
            lost_at: None,
            in_flight: 0,
            in_flight_sequence: 0,
            stopped_early: None,
            began_at_us: None,
            clock_offset_us: None,
            clock_rtt_us: None,
            gpu_note: j.gpu_note,
            gpu: Vec::new(),
        });
    }

    fn gone(&mut self, index: u32) -> Vec<Row> {
        if (index as usize) < self.planned.len() {
            self.merger.gone(index)
        } else {
            Vec::new()
        }
    }

    fn report(&mut self, entry: ReportEntry, effect: &mut Effect) {
        let ReportEntry {
            agent,
            agent_index,
            report: wire,
        } = entry;
        if agent_index as usize >= self.planned.len() {
            return;
        }
        let report = match decode_report(&wire) {
            Ok(r) => r,
            Err(e) => {
                self.unreadable += 1;
                effect.unreadable = Some(format!(
                    "report {} of agent {agent} is unreadable and left out: {e}",
                    wire.sequence
                ));
                return;
            }
        };
        let (merged, rows) = self.merger.add(agent_index, &report);
        effect.rows = rows;
        if merged == merge::Merged::Duplicate {
            effect.duplicate = true;
            return;
        }
        if let Some(a) = self.agent_mut(agent_index) {
            a.gpu.extend(wire.gpu.iter().copied());
            if wire.sequence > a.in_flight_sequence {
                a.in_flight_sequence = wire.sequence;
                a.in_flight = wire.in_flight;
            }
        }
        keep_exemplars(&mut self.exemplars, agent_index, &wire.exemplars);
        if !wire.classes.is_empty() {
            self.classes_reported.insert(agent_index);
        }
        // Classes are cut at the warm-up boundary as the run's figures are.
        if !matches!(self.timeline.place(wire.interval), merge::Place::Warmup(_)) {
            for class in &wire.classes {
                match decode_class(class) {
                    Ok((h, c)) => self.classes.entry(class.class.clone()).or_default().add(&h, &c),
                    Err(e) => {
                        effect.unreadable = Some(format!(
                            "report {} of agent {agent}: prompt class {:?} is unreadable and left out: {e}",
                            wire.sequence, class.class
                        ));
                    }
                }
            }
            for turn in &wire.turns {
                match (decode_class(turn), turn.class.parse::<u16>()) {
                    (Ok((h, c)), Ok(n)) => self.turns.entry(n).or_default().add(&h, &c),
                    _ => {
                        effect.unreadable = Some(format!(
                            "report {} of agent {agent}: turn {:?} is unreadable and left out",
                            wire.sequence, turn.class
                        ));
                    }
                }
            }
        }
        effect.added = Some(report);
    }

    fn finished(&mut self, entry: FinishedEntry, effect: &mut Effect) {
        let FinishedEntry {
            agent,
            agent_index,
            finished: wire,
        } = entry;
        if agent_index as usize >= self.planned.len() {
            return;
        }
        // Final class totals count only for an agent whose reports carried
        // none: a run recorded before reports did.
        let whole_run = !self.classes_reported.contains(&agent_index);
        for class in wire.classes.iter().filter(|_| whole_run) {
            match decode_class(class) {
                Ok((histograms, counters)) => {
                    self.classes_whole_run = true;
                    self.classes
                        .entry(class.class.clone())
                        .or_default()
                        .add(&histograms, &counters);
                }
                Err(e) => {
                    effect.unreadable = Some(format!(
                        "agent {agent}'s totals of prompt class {:?} are unreadable and left out: {e}",
                        class.class
                    ));
                }
            }
        }
        let decoded = Histograms::from_wire(&wire.histograms).and_then(|histograms| {
            Ok(merge::Finished {
                histograms,
                counters: Counters::from_wire(&wire.counters.clone().unwrap_or_default())?,
                elapsed_us: wire.elapsed_us,
                last_sequence: wire.last_sequence,
            })
        });
        effect.rows = match decoded {
            Ok(finished) => self.merger.finish(agent_index, &finished),
            Err(e) => {
                effect.unreadable = Some(format!("agent {agent}'s final totals are unreadable: {e}"));
                self.merger.gone(agent_index)
            }
        };
        effect.mismatch = self.merger.agents()[agent_index as usize].mismatch.clone();
        if let Some(a) = self.agent_mut(agent_index)
            && a.end == AgentEnd::Unfinished
        {
            a.end = AgentEnd::Finished;
            a.in_flight = 0;
            a.stopped_early = (!wire.stopped_early.is_empty()).then(|| wire.stopped_early.clone());
        }
    }

    /// Rows of every interval still open, as they stand: the run is over.
    pub fn flush(&mut self) -> Vec<Row> {
        let rows = self.merger.flush();
        self.rows.extend(rows.iter().cloned());
        rows
    }

    /// Records how the run ended and hands over what it collected.
    pub fn close(mut self, end: End) -> Collected {
        self.record(Entry::End(end));
        self.into_collected()
    }

    /// What the ledger collected, ended as its log says (or, for a log
    /// cut short, as if closed with nothing to add).
    pub fn into_collected(mut self) -> Collected {
        self.flush();
        let end = self.end.take().unwrap_or_default();
        let agents = self
            .agents
            .into_iter()
            .enumerate()
            .map(|(i, a)| a.unwrap_or_else(|| AgentRecord::never_joined(i as u32, self.planned[i])))
            .collect();
        Collected {
            merger: self.merger,
            agents,
            rows: self.rows,
            started_at: self.started_at,
            start_at_us: self.start_at_us,
            interrupted: end.interrupted,
            aborted: end.aborted,
            failure: end.failure,
            stopped_by: end.stopped_by,
            metrics_push: end.metrics_push,
            unreadable: self.unreadable,
            exemplars: self.exemplars,
            classes: self.classes,
            classes_whole_run: self.classes_whole_run,
            turns: self.turns,
        }
    }

    /// The log ended with the run closed.
    pub fn closed(&self) -> bool {
        self.end.is_some()
    }
}

/// A report's domain form.
fn decode_report(wire: &pb::Report) -> Result<merge::Report, stampede_proto::WireError> {
    let mut samples = BTreeMap::new();
    for s in &wire.error_samples {
        samples.insert(s.class.parse()?, s.message.clone());
    }
    Ok(merge::Report {
        interval: wire.interval,
        sequence: wire.sequence,
        elapsed_us: wire.elapsed_us,
        histograms: Sparse::from_wire(&wire.histograms)?,
        counters: Counters::from_wire(&wire.counters.clone().unwrap_or_default())?,
        samples,
        cpu: wire.cpu,
        presence: wire.presence.clone(),
        class_ttft: wire
            .classes
            .iter()
            .map(|c| {
                Ok((
                    c.class.clone(),
                    Sparse::from_wire(&c.histograms)?.histogram(Metric::Ttft),
                ))
            })
            .collect::<Result<_, stampede_proto::WireError>>()?,
    })
}

/// Adds an interval's exemplars, keeping the [`EXEMPLARS`] slowest of
/// each metric.
fn keep_exemplars(kept: &mut Vec<Exemplar>, agent: u32, wire: &[pb::Exemplar]) {
    for e in wire {
        let metric = match pb::Metric::try_from(e.metric) {
            Ok(pb::Metric::Ttft) => Metric::Ttft,
            Ok(pb::Metric::E2e) => Metric::E2e,
            _ => continue,
        };
        kept.push(Exemplar {
            agent,
            metric,
            value_us: e.value_us,
            trace_id: e.trace_id.clone(),
            interval: e.interval,
        });
    }
    kept.sort_by(|a, b| (a.metric as u8, b.value_us).cmp(&(b.metric as u8, a.value_us)));
    let mut per_metric: Vec<(Metric, usize)> = Vec::new();
    kept.retain(|e| match per_metric.iter_mut().find(|(m, _)| *m == e.metric) {
        Some((_, n)) => {
            *n += 1;
            *n <= EXEMPLARS
        }
        None => {
            per_metric.push((e.metric, 1));
            true
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpu_readings_average_per_interval() {
        let s = |us: u64, pct: u32| pb::GpuSample {
            elapsed_us: us,
            utilization_pct: pct,
            ..pb::GpuSample::default()
        };
        let samples = [s(100_000, 50), s(900_000, 100), s(1_500_000, 20)];
        let by = gpu_per_interval(samples.iter(), GpuFigure::Utilisation, 1.0);
        assert_eq!(by.get(&0), Some(&0.75));
        assert_eq!(by.get(&1), Some(&0.2));
        let memory = pb::GpuSample {
            memory_used_bytes: 3 << 30,
            memory_total_bytes: 4 << 30,
            memory_utilization_pct: 60,
            ..pb::GpuSample::default()
        };
        assert_eq!(GpuFigure::MemoryShare.of(&memory), Some(0.75));
        assert_eq!(GpuFigure::MemoryBandwidth.of(&memory), Some(0.6));
        assert_eq!(GpuFigure::MemoryShare.of(&pb::GpuSample::default()), None);
    }

    fn class(name: &str, ok: u64, failed: u64) -> pb::ClassTotals {
        let mut c = Counters {
            ok,
            ..Counters::default()
        };
        for _ in 0..failed {
            c.count_error(stampede_proto::ErrorClass::Status(400));
        }
        pb::ClassTotals {
            class: name.to_owned(),
            histograms: Histograms::new().to_wire(),
            counters: Some(c.to_wire()),
        }
    }

    fn ledger() -> Ledger {
        let text = "name = \"c\"\n[load]\nusers = 2\nduration = \"3s\"\nwarmup = \"1s\"\n";
        let o = crate::profile::Overrides::default();
        let profile = crate::profile::Profile::parse(text, std::path::Path::new("c.toml"), &o).expect("valid");
        Ledger::new(&Spec::sample(&profile, "20270115T080000Z-c-0001", 1), None)
    }

    fn report(interval: u64, classes: Vec<pb::ClassTotals>) -> Entry {
        Entry::Report(ReportEntry {
            agent: "a".to_owned(),
            agent_index: 0,
            report: pb::Report {
                interval,
                sequence: interval + 1,
                histograms: Histograms::new().to_wire(),
                counters: Some(Counters::default().to_wire()),
                classes,
                ..pb::Report::default()
            },
        })
    }

    fn finished(classes: Vec<pb::ClassTotals>) -> Entry {
        Entry::Finished(FinishedEntry {
            agent: "a".to_owned(),
            agent_index: 0,
            finished: pb::Finished {
                histograms: Histograms::new().to_wire(),
                counters: Some(Counters::default().to_wire()),
                classes,
                ..pb::Finished::default()
            },
        })
    }

    #[test]
    fn class_rows_leave_the_warm_up_out_and_keep_a_class_that_only_failed() {
        let mut l = ledger();
        l.apply(report(0, vec![class("short", 5, 0), class("long", 0, 9)]));
        l.apply(report(1, vec![class("short", 3, 1), class("long", 0, 2)]));
        l.apply(report(2, vec![class("short", 4, 0)]));
        // The final totals are the whole run's: not counted again.
        l.apply(finished(vec![class("short", 12, 1), class("long", 0, 11)]));
        let c = l.into_collected();
        assert!(!c.classes_whole_run);
        assert_eq!(c.classes["short"].counters.ok, 7);
        assert_eq!(c.classes["short"].counters.failed(), 1);
        assert_eq!(
            (c.classes["long"].counters.ok, c.classes["long"].counters.failed()),
            (0, 2)
        );
    }

    #[test]
    fn without_classes_in_reports_the_final_totals_fill_the_rows_and_say_so() {
        let mut l = ledger();
        l.apply(report(0, Vec::new()));
        l.apply(finished(vec![class("short", 12, 0)]));
        let c = l.into_collected();
        assert!(c.classes_whole_run);
        assert_eq!(c.classes["short"].counters.ok, 12);
    }
}
