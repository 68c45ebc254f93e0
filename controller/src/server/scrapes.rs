//! `server-metrics.jsonl`: every scrape of the server's page, one JSON
//! line each, in the order taken. A good scrape keeps every sample in page
//! order (`samples`: `[series, value]` pairs, a value that is not a finite
//! number written as `"NaN"`, `"+Inf"` or `"-Inf"`) and how many lines
//! could not be read (`skipped`); a failed one keeps why (`error`). Both
//! carry their time (`unix_ns`, and `unix_s` for people). Read back
//! through [`Series::add_page`] and [`Series::add_failure`], the file gives
//! the series the run had.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use super::Series;
use super::prom::{self, Sample};

/// The file's name in a run directory.
pub const FILE: &str = "server-metrics.jsonl";

fn times(at: SystemTime) -> (f64, u64) {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    (since.as_secs_f64(), u64::try_from(since.as_nanos()).unwrap_or(u64::MAX))
}

fn value(v: f64) -> Value {
    if v.is_nan() {
        json!("NaN")
    } else if v == f64::INFINITY {
        json!("+Inf")
    } else if v == f64::NEG_INFINITY {
        json!("-Inf")
    } else {
        json!(v)
    }
}

/// The line of a good scrape.
pub fn page(at: SystemTime, samples: &[Sample], skipped: u64) -> Value {
    let (unix_s, unix_ns) = times(at);
    let samples: Vec<Value> = samples.iter().map(|s| json!([s.to_string(), value(s.value)])).collect();
    json!({ "unix_s": unix_s, "unix_ns": unix_ns, "skipped": skipped, "samples": samples })
}

/// The line of a failed scrape.
pub fn failure(at: SystemTime, error: &str) -> Value {
    let (unix_s, unix_ns) = times(at);
    json!({ "unix_s": unix_s, "unix_ns": unix_ns, "error": error })
}

fn number(v: &Value) -> Option<f64> {
    match v {
        Value::String(s) => match s.as_str() {
            "NaN" => Some(f64::NAN),
            "+Inf" => Some(f64::INFINITY),
            "-Inf" => Some(f64::NEG_INFINITY),
            _ => None,
        },
        // Files written before values that are not numbers had a spelling.
        Value::Null => Some(f64::NAN),
        v => v.as_f64(),
    }
}

fn at(line: &Value) -> Option<SystemTime> {
    if let Some(ns) = line["unix_ns"].as_u64() {
        return Some(UNIX_EPOCH + Duration::from_nanos(ns));
    }
    let s = line["unix_s"].as_f64()?;
    Some(UNIX_EPOCH + Duration::try_from_secs_f64(s).ok()?)
}

fn samples(line: &Value) -> Result<Vec<Sample>, String> {
    let one = |key: &str, v: &Value| {
        let v = number(v).ok_or_else(|| format!("{key}: {v} is not a value"))?;
        prom::series(key, v)
    };
    match &line["samples"] {
        Value::Array(pairs) => pairs
            .iter()
            .map(|pair| match pair.as_array().map(Vec::as_slice) {
                Some([Value::String(key), v]) => one(key, v),
                _ => Err(format!("{pair} is not a [series, value] pair")),
            })
            .collect(),
        // Files written before page order was kept.
        Value::Object(map) => map.iter().map(|(key, v)| one(key, v)).collect(),
        _ => Err("no samples".to_owned()),
    }
}

/// The series kept in `path` for the page at `url`.
pub fn read(path: &Path, url: &str) -> Result<Series, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut series = Series {
        url: url.to_owned(),
        ..Series::default()
    };
    let lines: Vec<&str> = text.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |why: String| format!("{}:{}: {why}", path.display(), i + 1);
        let value: Value = match serde_json::from_str(line) {
            Ok(v) => v,
            // A last line cut short by a crash.
            Err(e) if i + 1 == lines.len() && e.is_eof() => break,
            Err(e) => return Err(bad(e.to_string())),
        };
        let at = at(&value).ok_or_else(|| bad("no time".to_owned()))?;
        match value["error"].as_str() {
            Some(e) => series.add_failure(e.to_owned()),
            None => {
                let samples = samples(&value).map_err(bad)?;
                series.add_page(at, &samples, value["skipped"].as_u64().unwrap_or(0));
            }
        }
    }
    Ok(series)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::Canon;

    #[test]
    fn a_file_read_back_is_the_series_it_was_written_from() {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let path = dir.path().join(FILE);
        let start = UNIX_EPOCH + Duration::from_nanos(1_800_000_000_123_456_789);
        let pages = [
            "vllm:num_requests_waiting{model_name=\"m\"} 3\nvllm:request_queue_time_seconds_sum 0.1\nvllm:request_queue_time_seconds_count 1\nodd{a=\"q\\\"\\\\x\\ny\"} NaN\nx_bucket{le=\"+Inf\"} +Inf\nnot a line\n",
            "vllm:num_requests_waiting{model_name=\"m\"} 5\nvllm:request_queue_time_seconds_sum 0.30000000000000004\nvllm:request_queue_time_seconds_count 3\nunknown_metric 1e-7\n",
        ];
        let mut live = Series {
            url: "http://h/metrics".to_owned(),
            ..Series::default()
        };
        let mut text = String::new();
        for (k, p) in pages.iter().enumerate() {
            let at = start + Duration::from_nanos(1_000_000_007 * k as u64);
            let page = prom::parse(p);
            let skipped = page.skipped.len() as u64;
            text.push_str(&self::page(at, &page.samples, skipped).to_string());
            text.push('\n');
            live.add_page(at, &page.samples, skipped);
        }
        let late = start + Duration::from_secs(3);
        text.push_str(&failure(late, "GET http://h/metrics answered HTTP 503").to_string());
        text.push('\n');
        live.add_failure("GET http://h/metrics answered HTTP 503".to_owned());
        // A crash cut the last line short.
        text.push_str("{\"unix_s\": 1800000004.0, \"sam");
        std::fs::write(&path, text).expect("the file is written");

        let back = read(&path, "http://h/metrics").expect("the file reads");
        assert_eq!(back.scrapes.len(), 2);
        for (a, b) in back.scrapes.iter().zip(&live.scrapes) {
            assert_eq!(a.at, b.at);
            assert_eq!(format!("{:?}", a.reading), format!("{:?}", b.reading));
        }
        assert_eq!((back.failed, back.skipped_lines), (live.failed, live.skipped_lines));
        assert_eq!(back.first_error, live.first_error);
        assert_eq!(back.unmapped, live.unmapped);
        assert_eq!(back.sources, live.sources);
        assert_eq!(
            back.window(Canon::QueueTime, start, -1.0, 2.0),
            live.window(Canon::QueueTime, start, -1.0, 2.0)
        );
    }

    #[test]
    fn a_bad_line_is_named() {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let path = dir.path().join(FILE);
        std::fs::write(&path, "{\"unix_ns\": 1, \"samples\": [[\"a\", 1]]}\nnot json\n{}\n").expect("written");
        let e = read(&path, "u").unwrap_err();
        assert!(e.ends_with(":2: expected ident at line 1 column 2"), "{e}");
    }
}
