//! The run log, `intervals.jsonl`: everything that happened in a run, one
//! JSON line per entry, in the order the coordinator took it in. The first
//! line describes the run ([`Spec`]); then agents join, get ready, begin,
//! report every interval, finish or are lost, and a last line says how the
//! run ended. Each line is written before what it records takes effect (a
//! report before its acknowledgement), so the file alone rebuilds every
//! figure: `controller report` replays it through the same [`Ledger`] the
//! live run fed.
//!
//! Reports and final totals keep their histograms exactly (base64 of
//! HdrHistogram V2+deflate, by metric name) and every counter field by
//! field.
//!
//! [`Ledger`]: super::ledger::Ledger

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use stampede_proto::{Metric, pb};

use super::spec::Spec;

/// The run log's file name in a run directory.
pub const FILE: &str = "intervals.jsonl";

/// One thing that happened in a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Entry {
    /// The run's description; always the first line.
    Run(Box<Spec>),
    /// An agent was given a place.
    Joined(Joined),
    /// An agent left before the start; its place is free again.
    Left {
        /// Its index.
        agent_index: u32,
        /// Why.
        reason: String,
    },
    /// An agent is ready, with its clock estimate.
    Ready {
        /// Its index.
        agent_index: u32,
        /// Controller clock minus its clock, microseconds.
        clock_offset_us: Option<i64>,
        /// Round trip of that estimate, microseconds.
        clock_rtt_us: Option<u64>,
    },
    /// Every agent was ready: the load starts.
    Started {
        /// When, wall clock, nanoseconds since the Unix epoch.
        unix_ns: u64,
        /// The planned start, controller clock, microseconds since the
        /// epoch.
        start_at_us: u64,
    },
    /// An agent's load began.
    Began {
        /// Its index.
        agent_index: u32,
        /// When, controller clock, microseconds since the epoch.
        at_us: u64,
    },
    /// One interval report.
    Report(ReportEntry),
    /// An agent's final totals.
    Finished(FinishedEntry),
    /// An agent said it cannot carry out its assignment.
    Failed {
        /// Its index.
        agent_index: u32,
        /// Why.
        reason: String,
    },
    /// An agent was declared lost.
    Lost {
        /// Its index.
        agent_index: u32,
        /// Why.
        reason: String,
        /// When, microseconds after the start (none before it).
        after_start_us: Option<u64>,
    },
    /// The run is closed.
    End(End),
}

/// An agent given a place in the run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Joined {
    /// Its index.
    pub agent_index: u32,
    /// Its name.
    pub name: String,
    /// Users it runs at its peak.
    pub users: u32,
    /// Its software version.
    pub version: String,
    /// Where it connected from.
    pub peer: Option<String>,
    /// What its GPU sampler found, when asked to sample.
    pub gpu_note: Option<String>,
}

/// How a run ended.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct End {
    /// An operator interrupted it.
    pub interrupted: bool,
    /// Why it was aborted, if it was.
    pub aborted: Option<String>,
    /// Why it could not be carried out, if it could not.
    pub failure: Option<String>,
    /// The threshold that stopped the load early, in words.
    #[serde(default)]
    pub stopped_by: Option<String>,
    /// How pushing the run's metrics over OTLP went, when they were pushed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_push: Option<Pushed>,
}

/// How pushing the run's metrics over OTLP went.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Pushed {
    /// Where they went: for gRPC the receiver's base URL, for HTTP the
    /// full URL of its metrics path.
    pub endpoint: String,
    /// `grpc` or `http/protobuf`.
    pub protocol: String,
    /// Time between pushes, seconds.
    pub interval_s: f64,
    /// Pushes the receiver accepted.
    pub ok: u64,
    /// Pushes that failed (no answer in time, refused, an error status).
    pub failed: u64,
    /// The last push, after the last report was merged, was accepted: the
    /// receiver holds the summary's figures.
    pub last_ok: bool,
    /// Why the first failed push failed.
    pub first_error: Option<String>,
}

/// A report as the agent sent it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(into = "ReportLine", try_from = "ReportLine")]
pub struct ReportEntry {
    /// The agent's name.
    pub agent: String,
    /// Its index.
    pub agent_index: u32,
    /// The report.
    pub report: pb::Report,
}

/// An agent's final totals as it sent them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(into = "FinishedLine", try_from = "FinishedLine")]
pub struct FinishedEntry {
    /// The agent's name.
    pub agent: String,
    /// Its index.
    pub agent_index: u32,
    /// The totals.
    pub finished: pb::Finished,
}

/// Histograms by metric name, each base64 of V2+deflate.
type HistogramLine = BTreeMap<String, String>;

#[derive(Serialize, Deserialize)]
struct ReportLine {
    agent: String,
    agent_index: u32,
    interval: u64,
    sequence: u64,
    elapsed_us: u64,
    #[serde(default)]
    cpu: f64,
    #[serde(default)]
    counters: pb::Counters,
    #[serde(default)]
    exemplars: Vec<ExemplarLine>,
    #[serde(default)]
    error_samples: Vec<pb::ErrorSample>,
    #[serde(default)]
    gpu: Vec<pb::GpuSample>,
    histograms: HistogramLine,
    /// Base64 of the presence map.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    presence: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    classes: Vec<ClassLine>,
    /// Sessions only: by turn, each named by its number.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    turns: Vec<ClassLine>,
    /// Requests in flight at the cut.
    #[serde(default, skip_serializing_if = "is_zero")]
    in_flight: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

#[derive(Serialize, Deserialize)]
struct ExemplarLine {
    metric: String,
    value_us: u64,
    trace_id: String,
    interval: u64,
}

#[derive(Serialize, Deserialize)]
struct FinishedLine {
    agent: String,
    agent_index: u32,
    elapsed_us: u64,
    last_sequence: u64,
    counters: pb::Counters,
    histograms: HistogramLine,
    #[serde(default)]
    classes: Vec<ClassLine>,
    /// Why the agent ended its load early, if it did.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    stopped_early: String,
    /// Sessions only: by turn, each named by its number.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    turns: Vec<ClassLine>,
}

#[derive(Serialize, Deserialize)]
struct ClassLine {
    class: String,
    counters: pb::Counters,
    histograms: HistogramLine,
}

/// A metric's name in the log: its own, or `metric_N` for a number this
/// build does not know (kept, so that nothing is dropped on the way).
fn metric_name(number: i32) -> String {
    Metric::from_wire(number).map_or_else(|_| format!("metric_{number}"), |m| m.name().to_owned())
}

fn metric_number(name: &str) -> Result<i32, String> {
    match Metric::from_name(name) {
        Some(m) => Ok(m.to_wire() as i32),
        None => name
            .strip_prefix("metric_")
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| format!("unknown metric {name:?}")),
    }
}

fn histograms_line(wire: &[pb::Histogram]) -> HistogramLine {
    wire.iter()
        .map(|h| (metric_name(h.metric), STANDARD.encode(&h.v2_deflate)))
        .collect()
}

/// The histograms of a line, in metric-number order as agents send them.
fn histograms_wire(line: HistogramLine) -> Result<Vec<pb::Histogram>, String> {
    let mut wire = line
        .into_iter()
        .map(|(name, b64)| {
            Ok(pb::Histogram {
                metric: metric_number(&name)?,
                v2_deflate: STANDARD
                    .decode(b64)
                    .map_err(|e| format!("histogram {name}: not base64: {e}"))?,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    wire.sort_by_key(|h| h.metric);
    Ok(wire)
}

impl From<ReportEntry> for ReportLine {
    fn from(e: ReportEntry) -> ReportLine {
        let r = e.report;
        ReportLine {
            agent: e.agent,
            agent_index: e.agent_index,
            interval: r.interval,
            sequence: r.sequence,
            elapsed_us: r.elapsed_us,
            cpu: r.cpu,
            counters: r.counters.unwrap_or_default(),
            exemplars: r
                .exemplars
                .into_iter()
                .map(|x| ExemplarLine {
                    metric: metric_name(x.metric),
                    value_us: x.value_us,
                    trace_id: x.trace_id,
                    interval: x.interval,
                })
                .collect(),
            error_samples: r.error_samples,
            gpu: r.gpu,
            histograms: histograms_line(&r.histograms),
            presence: STANDARD.encode(&r.presence),
            classes: r.classes.into_iter().map(ClassLine::from).collect(),
            turns: r.turns.into_iter().map(ClassLine::from).collect(),
            in_flight: r.in_flight,
        }
    }
}

impl From<pb::ClassTotals> for ClassLine {
    fn from(c: pb::ClassTotals) -> ClassLine {
        ClassLine {
            class: c.class,
            counters: c.counters.unwrap_or_default(),
            histograms: histograms_line(&c.histograms),
        }
    }
}

impl TryFrom<ClassLine> for pb::ClassTotals {
    type Error = String;

    fn try_from(c: ClassLine) -> Result<pb::ClassTotals, String> {
        Ok(pb::ClassTotals {
            class: c.class,
            histograms: histograms_wire(c.histograms)?,
            counters: Some(c.counters),
        })
    }
}

impl TryFrom<ReportLine> for ReportEntry {
    type Error = String;

    fn try_from(l: ReportLine) -> Result<ReportEntry, String> {
        let exemplars = l
            .exemplars
            .into_iter()
            .map(|x| {
                Ok(pb::Exemplar {
                    metric: metric_number(&x.metric)?,
                    value_us: x.value_us,
                    trace_id: x.trace_id,
                    interval: x.interval,
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(ReportEntry {
            agent: l.agent,
            agent_index: l.agent_index,
            report: pb::Report {
                interval: l.interval,
                sequence: l.sequence,
                elapsed_us: l.elapsed_us,
                histograms: histograms_wire(l.histograms)?,
                counters: Some(l.counters),
                error_samples: l.error_samples,
                cpu: l.cpu,
                gpu: l.gpu,
                exemplars,
                presence: STANDARD
                    .decode(&l.presence)
                    .map_err(|e| format!("presence: not base64: {e}"))?,
                classes: l
                    .classes
                    .into_iter()
                    .map(pb::ClassTotals::try_from)
                    .collect::<Result<_, String>>()?,
                turns: l
                    .turns
                    .into_iter()
                    .map(pb::ClassTotals::try_from)
                    .collect::<Result<_, String>>()?,
                in_flight: l.in_flight,
                // For the live metrics only: the results do not use them.
                sampled_exemplars: Vec::new(),
            },
        })
    }
}

impl From<FinishedEntry> for FinishedLine {
    fn from(e: FinishedEntry) -> FinishedLine {
        let f = e.finished;
        FinishedLine {
            agent: e.agent,
            agent_index: e.agent_index,
            elapsed_us: f.elapsed_us,
            last_sequence: f.last_sequence,
            counters: f.counters.unwrap_or_default(),
            histograms: histograms_line(&f.histograms),
            classes: f.classes.into_iter().map(ClassLine::from).collect(),
            stopped_early: f.stopped_early,
            turns: f.turns.into_iter().map(ClassLine::from).collect(),
        }
    }
}

impl TryFrom<FinishedLine> for FinishedEntry {
    type Error = String;

    fn try_from(l: FinishedLine) -> Result<FinishedEntry, String> {
        let classes = l
            .classes
            .into_iter()
            .map(pb::ClassTotals::try_from)
            .collect::<Result<_, String>>()?;
        Ok(FinishedEntry {
            agent: l.agent,
            agent_index: l.agent_index,
            finished: pb::Finished {
                histograms: histograms_wire(l.histograms)?,
                counters: Some(l.counters),
                elapsed_us: l.elapsed_us,
                last_sequence: l.last_sequence,
                classes,
                stopped_early: l.stopped_early,
                turns: l
                    .turns
                    .into_iter()
                    .map(pb::ClassTotals::try_from)
                    .collect::<Result<_, String>>()?,
            },
        })
    }
}

/// The run log being written.
#[derive(Debug)]
pub struct Log {
    file: File,
    path: PathBuf,
}

impl Log {
    /// Creates (or truncates) the log at `path`.
    pub fn create(path: &Path) -> io::Result<Log> {
        let file = OpenOptions::new().create(true).write(true).truncate(true).open(path)?;
        Ok(Log {
            file,
            path: path.to_owned(),
        })
    }

    /// Where the log is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one entry with one `write` call, so that a crash leaves
    /// whole lines only (and at most a torn last line).
    pub fn append(&mut self, entry: &Entry) -> io::Result<()> {
        let mut line = serde_json::to_vec(entry)?;
        line.push(b'\n');
        self.file.write_all(&line)
    }

    /// Makes what was appended durable: its data on the disk.
    pub fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }
}

/// Why a run log cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The file cannot be opened or read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A line is not an entry.
    #[error("{path}:{line}: {why}")]
    Line {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        why: String,
    },
    /// The first line does not describe the run.
    #[error(
        "{path} does not start with the run's description: it was written by an older stampede, or is not a run log; \
         such a run cannot be rebuilt"
    )]
    NoSpec {
        /// The file.
        path: PathBuf,
    },
}

/// The entries of a run log, in order. A last line cut short by a crash
/// is left out (the writer never acknowledged what it held); any other
/// unreadable line is an error that names it.
pub fn read(path: &Path) -> Result<(Spec, Vec<Entry>), ReadError> {
    let io = |source| ReadError::Io {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(io)?;
    let mut lines = Vec::new();
    for line in BufReader::new(file).lines() {
        lines.push(line.map_err(io)?);
    }
    let last = lines.len();
    let mut entries = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let parsed = serde_json::from_str::<Entry>(line);
        if entries.is_empty() && !matches!(parsed, Ok(Entry::Run(_))) {
            return Err(ReadError::NoSpec { path: path.to_owned() });
        }
        match parsed {
            Ok(e) => entries.push(e),
            Err(e) if i + 1 == last && e.is_eof() => {}
            Err(e) => {
                return Err(ReadError::Line {
                    path: path.to_owned(),
                    line: i + 1,
                    why: e.to_string(),
                });
            }
        }
    }
    let mut entries = entries.into_iter();
    match entries.next() {
        Some(Entry::Run(spec)) => Ok((*spec, entries.collect())),
        // An empty file.
        _ => Err(ReadError::NoSpec { path: path.to_owned() }),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::profile::{Overrides, Profile};
    use stampede_proto::Histograms;

    fn spec() -> Spec {
        let p = Profile::parse(
            "[load]\nrate = 5\narrival = \"gamma\"\nburstiness = 0.5\nmax_concurrency = 7\nduration = \"3s\"\n",
            Path::new("log.toml"),
            &Overrides::default(),
        )
        .expect("a valid profile");
        Spec::sample(&p, "run-1", 2)
    }

    fn counters() -> pb::Counters {
        let cmp = |k: u64| pb::TokenComparison {
            requests: k,
            first: k + 1,
            second: k + 2,
            abs_difference: k + 3,
            differing: k + 4,
        };
        pb::Counters {
            ok: 1,
            errors: BTreeMap::from([("http_503".to_owned(), 2), ("timeout".to_owned(), 3)]),
            cancelled: 4,
            input_tokens: 5,
            output_tokens: 6,
            tokens_from_usage: 7,
            tokens_counted: 8,
            active_users: 9,
            late: 10,
            dropped: 11,
            tokens_from_words: 12,
            server_vs_events: Some(cmp(13)),
            server_vs_tokenizer: Some(cmp(20)),
            events_vs_tokenizer: Some(cmp(30)),
            tokens_from_tokenizer: 14,
            inputs_from_server: 15,
            inputs_from_tokenizer: 16,
            spans_exported: 17,
            spans_dropped: 18,
            good: 19,
            good_output_tokens: 20,
            held: 21,
            cached_tokens: 22,
            cached_reported: 23,
            cached_of_input: 24,
        }
    }

    fn histograms() -> Vec<pb::Histogram> {
        let mut h = Histograms::new();
        h.record(Metric::Ttft, 1_234);
        h.record(Metric::OutputTokens, 16);
        let mut wire = h.to_wire();
        // A metric a later build may add survives the trip.
        wire.push(pb::Histogram {
            metric: 99,
            v2_deflate: vec![1, 2, 3],
        });
        wire
    }

    /// Every field of the messages the log keeps, set.
    fn entries() -> Vec<Entry> {
        vec![
            Entry::Run(Box::new(spec())),
            Entry::Joined(Joined {
                agent_index: 1,
                name: "a".to_owned(),
                users: 3,
                version: "0.1.0".to_owned(),
                peer: Some("10.0.0.2:5000".to_owned()),
                gpu_note: Some("no GPU found".to_owned()),
            }),
            Entry::Left {
                agent_index: 0,
                reason: "gone".to_owned(),
            },
            Entry::Ready {
                agent_index: 1,
                clock_offset_us: Some(-5),
                clock_rtt_us: Some(40),
            },
            Entry::Started {
                unix_ns: 1_800_000_000_123_456_789,
                start_at_us: 1_800_000_000_123_456,
            },
            Entry::Began {
                agent_index: 1,
                at_us: 7,
            },
            Entry::Report(ReportEntry {
                agent: "a".to_owned(),
                agent_index: 1,
                report: pb::Report {
                    turns: Vec::new(),
                    interval: 2,
                    sequence: 3,
                    elapsed_us: 3_000_001,
                    histograms: histograms(),
                    counters: Some(counters()),
                    error_samples: vec![pb::ErrorSample {
                        class: "timeout".to_owned(),
                        message: "no answer".to_owned(),
                    }],
                    cpu: 0.125,
                    in_flight: 3,
                    sampled_exemplars: Vec::new(),
                    gpu: vec![pb::GpuSample {
                        elapsed_us: 1,
                        device: 2,
                        utilization_pct: 3,
                        memory_used_bytes: 4,
                        memory_total_bytes: 5,
                        power_mw: 6,
                        memory_utilization_pct: 7,
                    }],
                    exemplars: vec![pb::Exemplar {
                        metric: pb::Metric::E2e as i32,
                        value_us: 9,
                        trace_id: "ab".repeat(16),
                        interval: 2,
                    }],
                    presence: vec![0b1010_0101, 0xff],
                    classes: vec![pb::ClassTotals {
                        class: "long".to_owned(),
                        histograms: histograms(),
                        counters: Some(counters()),
                    }],
                },
            }),
            Entry::Finished(FinishedEntry {
                agent: "a".to_owned(),
                agent_index: 1,
                finished: pb::Finished {
                    turns: Vec::new(),
                    histograms: histograms(),
                    counters: Some(counters()),
                    elapsed_us: 4,
                    last_sequence: 3,
                    stopped_early: "no word from the controller for 10s (agents.dead_man)".to_owned(),
                    classes: vec![pb::ClassTotals {
                        class: "short".to_owned(),
                        histograms: histograms(),
                        counters: Some(counters()),
                    }],
                },
            }),
            Entry::Failed {
                agent_index: 1,
                reason: "cannot".to_owned(),
            },
            Entry::Lost {
                agent_index: 1,
                reason: "silent for 3s".to_owned(),
                after_start_us: Some(2_500_000),
            },
            Entry::End(End {
                interrupted: true,
                aborted: Some("why".to_owned()),
                failure: Some("what".to_owned()),
                stopped_by: Some("threshold ttft.p95 broke".to_owned()),
                metrics_push: Some(Pushed {
                    endpoint: "http://c:4317".to_owned(),
                    protocol: "grpc".to_owned(),
                    interval_s: 1.0,
                    ok: 3,
                    failed: 1,
                    last_ok: true,
                    first_error: Some("no answer within 5s".to_owned()),
                }),
            }),
        ]
    }

    #[test]
    fn every_entry_reads_back_as_written() {
        for entry in entries() {
            let line = serde_json::to_string(&entry).expect("an entry serializes");
            let back: Entry = serde_json::from_str(&line).expect("a line reads back");
            assert_eq!(back, entry, "{line}");
        }
    }

    #[test]
    fn report_lines_are_readable_by_metric_and_counter_name() {
        let Entry::Report(r) = &entries()[6] else {
            unreachable!("the seventh entry is a report")
        };
        let line = serde_json::to_value(Entry::Report(r.clone())).expect("serializes");
        assert_eq!(line["event"], "report");
        assert_eq!(line["agent"], "a");
        assert_eq!(line["counters"]["ok"], 1);
        assert_eq!(line["counters"]["errors"]["http_503"], 2);
        assert_eq!(line["exemplars"][0]["metric"], "e2e");
        assert!(line["histograms"]["ttft"].is_string());
        assert!(line["histograms"]["metric_99"].is_string());
    }

    #[test]
    fn a_log_reads_back_whole_but_for_a_torn_last_line() {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let path = dir.path().join(FILE);
        let mut log = Log::create(&path).expect("the log is created");
        for entry in entries() {
            log.append(&entry).expect("appended");
        }
        let mut f = OpenOptions::new().append(true).open(&path).expect("opens");
        f.write_all(b"{\"event\":\"report\",\"agent\":\"a\",\"hist")
            .expect("written");
        let (spec, back) = read(&path).expect("the log reads");
        assert_eq!(spec, self::spec());
        assert_eq!(back, entries()[1..]);

        std::fs::write(&path, "{\"event\":\"began\",\"agent_index\":0,\"at_us\":1}\n").expect("written");
        assert!(matches!(read(&path), Err(ReadError::NoSpec { .. })));
        let mut text = serde_json::to_string(&entries()[0]).expect("serializes");
        text.push_str("\n{\"event\":\"nonsense\"}\n{}\n");
        std::fs::write(&path, text).expect("written");
        let e = read(&path).unwrap_err().to_string();
        assert!(e.contains("intervals.jsonl:2: unknown variant `nonsense`"), "{e}");
    }
}
