//! The server's own metrics: scraped during the run, mapped onto one
//! vocabulary, and aligned to the run's intervals. Every scrape is kept raw
//! in `server-metrics.jsonl`.

pub mod map;
pub mod prom;
pub mod quantile;
pub mod scrapes;
pub mod spans;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::time::{Duration, SystemTime};

use stampede_agent::http::Endpoint;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::report::live::Live;

pub use map::{Canon, Kind, Reading, Source, Value};

/// Largest page read.
const PAGE_LIMIT: usize = 8 << 20;

/// One scrape, mapped.
#[derive(Clone, Debug)]
pub struct Scrape {
    /// When the answer arrived.
    pub at: SystemTime,
    /// Its figures.
    pub reading: Reading,
}

/// Everything scraped in a run.
#[derive(Clone, Debug, Default)]
pub struct Series {
    /// The page's URL.
    pub url: String,
    /// Good scrapes, in time order.
    pub scrapes: Vec<Scrape>,
    /// Scrapes that failed.
    pub failed: u64,
    /// The first failure, as a user can act on it.
    pub first_error: Option<String>,
    /// Lines of the pages that could not be read, over all scrapes.
    pub skipped_lines: u64,
    /// Metric names no rule knows.
    pub unmapped: BTreeSet<String>,
    /// Where each figure came from (the last scrape that had it).
    pub sources: BTreeMap<Canon, Source>,
    /// The raw file could not be written.
    pub raw_error: Option<String>,
}

/// Splits a metrics URL into the server and the path to ask for.
pub fn split_url(url: &str) -> Result<(Endpoint, String), String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
        return Err(format!(
            "{url:?} is not an absolute URL such as http://host:8000/metrics"
        ));
    };
    let endpoint = Endpoint::parse(&format!("{scheme}://{authority}")).map_err(|e| e.to_string())?;
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    Ok((endpoint, path))
}

/// Scrapes one page every `every` until stopped.
#[derive(Debug)]
pub struct Scraper {
    stop: CancellationToken,
    task: JoinHandle<Series>,
}

impl Scraper {
    /// Starts scraping `url` now, appending every page raw to `raw` and
    /// handing each to the live metrics, when served.
    pub fn start(url: String, every: Duration, raw: Option<std::fs::File>, live: Option<Live>) -> Scraper {
        let stop = CancellationToken::new();
        let task = tokio::spawn(scrape_loop(url, every, raw, live, stop.clone()));
        Scraper { stop, task }
    }

    /// Takes one last scrape, stops, and returns what was gathered.
    pub async fn finish(self) -> Series {
        self.stop.cancel();
        self.task.await.unwrap_or_default()
    }
}

async fn scrape_loop(
    url: String,
    every: Duration,
    mut raw: Option<std::fs::File>,
    live: Option<Live>,
    stop: CancellationToken,
) -> Series {
    let mut series = Series {
        url: url.clone(),
        ..Series::default()
    };
    let target = split_url(&url);
    let timeout = every.clamp(Duration::from_millis(500), Duration::from_secs(5));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let last = tokio::select! {
            _ = tick.tick() => false,
            () = stop.cancelled() => true,
        };
        let answer = match &target {
            Ok((endpoint, path)) => match tokio::time::timeout(timeout, endpoint.get(path, PAGE_LIMIT)).await {
                Ok(Ok((200, body))) => Ok(body),
                Ok(Ok((status, _))) => Err(format!("GET {url} answered HTTP {status}")),
                Ok(Err(e)) => Err(format!("GET {url}: {e}")),
                Err(_) => Err(format!("GET {url}: no answer within {timeout:?}")),
            },
            Err(e) => Err(e.clone()),
        };
        let at = SystemTime::now();
        match answer {
            Ok(body) => {
                let text = String::from_utf8_lossy(&body);
                let page = prom::parse(&text);
                let skipped = page.skipped.len() as u64;
                keep_raw(&mut raw, &mut series, &scrapes::page(at, &page.samples, skipped));
                series.add_page(at, &page.samples, skipped);
                if let (Some(live), Some(last)) = (&live, series.scrapes.last()) {
                    live.scrape(&last.reading, &page.samples);
                }
            }
            Err(e) => {
                if series.first_error.is_none() {
                    tracing::warn!("server metrics: {e} (the run goes on without them)");
                }
                keep_raw(&mut raw, &mut series, &scrapes::failure(at, &e));
                series.add_failure(e);
            }
        }
        if last || target.is_err() {
            break;
        }
    }
    series
}

/// Appends a line to the raw file; the first failure stops the copy and
/// is kept in the series.
fn keep_raw(raw: &mut Option<std::fs::File>, series: &mut Series, line: &serde_json::Value) {
    let Some(file) = raw else { return };
    let written = serde_json::to_writer(&mut *file, line)
        .map_err(std::io::Error::from)
        .and_then(|()| file.write_all(b"\n"));
    if let Err(e) = written {
        series.raw_error.get_or_insert(e.to_string());
        *raw = None;
    }
}

/// One figure over a window of the run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Window {
    /// A gauge's mean and largest value.
    Level {
        /// Mean of the scrapes in the window.
        mean: f64,
        /// Largest.
        max: f64,
    },
    /// A counter's increase, and that per second.
    Increase {
        /// Increase.
        delta: f64,
        /// Per second.
        rate: f64,
    },
    /// A histogram's observations in the window and their mean.
    Observed {
        /// Observations.
        count: f64,
        /// Their mean, in the figure's unit.
        mean: f64,
    },
}

impl Series {
    /// Takes in a page read at `at` (with `skipped` lines it could not
    /// read). Live scrapes and `server-metrics.jsonl` read back both come
    /// through here.
    pub fn add_page(&mut self, at: SystemTime, samples: &[prom::Sample], skipped: u64) {
        self.skipped_lines += skipped;
        let reading = map::map(samples);
        self.unmapped.extend(reading.unmapped.iter().cloned());
        self.sources
            .extend(reading.sources.iter().map(|(k, v)| (*k, v.clone())));
        self.scrapes.push(Scrape { at, reading });
    }

    /// Takes in a failed scrape.
    pub fn add_failure(&mut self, error: String) {
        self.first_error.get_or_insert(error);
        self.failed += 1;
    }

    /// Seconds after `start` of each scrape.
    fn offsets(&self, start: SystemTime) -> impl Iterator<Item = (f64, &Reading)> {
        self.scrapes.iter().map(move |s| {
            let t = match s.at.duration_since(start) {
                Ok(d) => d.as_secs_f64(),
                Err(e) => -e.duration().as_secs_f64(),
            };
            (t, &s.reading)
        })
    }

    /// A running total's increase from the first scrape that has it to the
    /// last (a reset in between restarts the count): over the whole run,
    /// when the first scrape came before the load and the last after it.
    pub fn increase(&self, canon: Canon) -> Option<f64> {
        let mut values = self.scrapes.iter().filter_map(|s| match s.reading.values.get(&canon) {
            Some(Value::Scalar(v)) => Some(*v),
            _ => None,
        });
        let first = values.next()?;
        let (mut total, mut last) = (0.0, first);
        for v in values {
            total += if v >= last { v - last } else { v };
            last = v;
        }
        Some(total)
    }

    /// `canon` between `from` and `to` seconds after `start`: gauges from
    /// the scrapes inside the window, running totals from the last scrape
    /// at or before each end (a reset in between restarts the count).
    pub fn window(&self, canon: Canon, start: SystemTime, from: f64, to: f64) -> Option<Window> {
        match canon.kind() {
            Kind::Gauge => {
                let inside: Vec<f64> = self
                    .offsets(start)
                    .filter(|(t, _)| *t > from && *t <= to)
                    .filter_map(|(_, r)| match r.values.get(&canon) {
                        Some(Value::Scalar(v)) => Some(*v),
                        _ => None,
                    })
                    .collect();
                (!inside.is_empty()).then(|| Window::Level {
                    mean: inside.iter().sum::<f64>() / inside.len() as f64,
                    max: inside.iter().copied().fold(f64::MIN, f64::max),
                })
            }
            Kind::Counter | Kind::Histogram => {
                let at = |edge: f64| {
                    self.offsets(start)
                        .filter(|(t, r)| *t <= edge && r.values.contains_key(&canon))
                        .last()
                        .map(|(t, r)| (t, r.values[&canon]))
                };
                let (t0, a) = at(from)?;
                let (t1, b) = at(to)?;
                if t1 <= t0 {
                    return None;
                }
                match (a, b) {
                    (Value::Scalar(a), Value::Scalar(b)) => {
                        let delta = if b >= a { b - a } else { b };
                        Some(Window::Increase {
                            delta,
                            rate: delta / (t1 - t0),
                        })
                    }
                    (Value::Histogram { sum: s0, count: c0 }, Value::Histogram { sum: s1, count: c1 }) => {
                        let (sum, count) = if c1 >= c0 { (s1 - s0, c1 - c0) } else { (s1, c1) };
                        (count > 0.0).then(|| Window::Observed {
                            count,
                            mean: sum / count,
                        })
                    }
                    _ => None,
                }
            }
        }
    }

    /// A histogram's buckets observed between `from` and `to` seconds
    /// after `start`: each cumulative count's increase between the last
    /// scrapes at or before the two ends (from zero after a reset), as
    /// Prometheus's `increase()` of each `_bucket` series gives it. `None`
    /// when either end has no buckets or the bounds changed between them.
    pub fn buckets(&self, canon: Canon, start: SystemTime, from: f64, to: f64) -> Option<Vec<(f64, f64)>> {
        let at = |edge: f64| {
            self.offsets(start)
                .filter(|(t, r)| *t <= edge && r.buckets.contains_key(&canon))
                .last()
                .map(|(t, r)| (t, &r.buckets[&canon]))
        };
        let (t0, a) = at(from)?;
        let (t1, b) = at(to)?;
        if t1 <= t0 || a.len() != b.len() || a.iter().zip(b).any(|(x, y)| x.0 != y.0) {
            return None;
        }
        let reset = a.iter().zip(b).any(|(x, y)| y.1 < x.1);
        Some(
            a.iter()
                .zip(b)
                .map(|(x, y)| (y.0, if reset { y.1 } else { y.1 - x.1 }))
                .collect(),
        )
    }

    /// Families recognised in any scrape.
    pub fn families(&self) -> BTreeSet<&'static str> {
        self.sources.values().map(|s| s.family).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(points: &[(f64, &str)]) -> (Series, SystemTime) {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let scrapes = points
            .iter()
            .map(|(t, page)| Scrape {
                at: start + Duration::from_secs_f64(*t),
                reading: map::map(&prom::parse(page).samples),
            })
            .collect();
        (
            Series {
                scrapes,
                ..Series::default()
            },
            start,
        )
    }

    #[test]
    fn gauges_average_inside_and_totals_increase_between_edges() {
        let (s, start) = series(&[
            (0.0, "llmsim_queue_depth 1\nllmsim_busy_seconds_total 10\n"),
            (1.0, "llmsim_queue_depth 3\nllmsim_busy_seconds_total 10.5\n"),
            (2.0, "llmsim_queue_depth 5\nllmsim_busy_seconds_total 11.5\n"),
        ]);
        assert_eq!(
            s.window(Canon::Waiting, start, 0.0, 2.0),
            Some(Window::Level { mean: 4.0, max: 5.0 })
        );
        assert_eq!(
            s.window(Canon::BusySeconds, start, 0.0, 2.0),
            Some(Window::Increase { delta: 1.5, rate: 0.75 })
        );
        assert_eq!(s.window(Canon::BusySeconds, start, -1.0, 2.0), None);
        assert_eq!(s.window(Canon::Running, start, 0.0, 2.0), None);
    }

    #[test]
    fn histogram_windows_give_the_mean_of_what_was_observed_in_them() {
        let (s, start) = series(&[
            (
                0.0,
                "llmsim_queue_time_seconds_sum 1\nllmsim_queue_time_seconds_count 2\n",
            ),
            (
                1.0,
                "llmsim_queue_time_seconds_sum 4\nllmsim_queue_time_seconds_count 4\n",
            ),
            (
                2.0,
                "llmsim_queue_time_seconds_sum 0.5\nllmsim_queue_time_seconds_count 1\n",
            ),
        ]);
        assert_eq!(
            s.window(Canon::QueueTime, start, 0.0, 1.0),
            Some(Window::Observed { count: 2.0, mean: 1.5 })
        );
        // The server restarted: the window counts from zero.
        assert_eq!(
            s.window(Canon::QueueTime, start, 1.0, 2.0),
            Some(Window::Observed { count: 1.0, mean: 0.5 })
        );
    }

    #[test]
    fn bucket_windows_are_increases_and_a_reset_counts_from_zero() {
        let page = |a: u32, b: u32| {
            format!(
                "llmsim_queue_time_seconds_bucket{{le=\"0.1\"}} {a}\nllmsim_queue_time_seconds_bucket{{le=\"+Inf\"}} {b}\nllmsim_queue_time_seconds_sum 1\nllmsim_queue_time_seconds_count {b}\n"
            )
        };
        let (p0, p1, p2) = (page(2, 3), page(5, 10), page(1, 1));
        let (s, start) = series(&[(0.0, &p0), (1.0, &p1), (2.0, &p2)]);
        let inf = f64::INFINITY;
        assert_eq!(
            s.buckets(Canon::QueueTime, start, 0.0, 1.0),
            Some(vec![(0.1, 3.0), (inf, 7.0)])
        );
        assert_eq!(
            s.buckets(Canon::QueueTime, start, 1.0, 2.0),
            Some(vec![(0.1, 1.0), (inf, 1.0)])
        );
        assert_eq!(s.buckets(Canon::QueueTime, start, -1.0, 2.0), None);
    }

    #[test]
    fn urls_split_into_server_and_path() {
        let (e, path) = split_url("http://127.0.0.1:9400/metrics").unwrap();
        assert_eq!((e.authority(), path.as_str()), ("127.0.0.1:9400", "/metrics"));
        assert!(split_url("/metrics").unwrap_err().contains("absolute URL"));
        assert!(split_url("ftp://x/metrics").is_err());
    }
}
