//! Trace replay (`[load] trace = "file"`): a file of arrivals, each with
//! its time and its input and output lengths, sent as it was recorded.
//!
//! Two layouts are read:
//! - Mooncake JSONL, one request a line:
//!   `{"timestamp": 1200, "input_length": 700, "output_length": 40, "hash_ids": [0, 1]}`.
//!   `timestamp` is in milliseconds; `hash_ids` name the prompt's blocks of
//!   `block_size` tokens: requests naming the same id share that block's
//!   text, so a server's prefix cache can hit.
//! - The Azure LLM inference trace CSV: a header
//!   `TIMESTAMP,ContextTokens,GeneratedTokens` and rows such as
//!   `2023-11-16 18:15:46.6805900,374,44`. Every prompt is its own text.
//!
//! Times count from the first row. Rows must be in time order: a row
//! earlier than the one before it is refused (not sorted), since it
//! usually means a file was concatenated or cut wrongly.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::dataset::synthetic::{self, Counter};
use crate::dataset::{ClassBy, Prompt};
use crate::plan::mix;

/// Most rows read from a trace file.
pub const MAX_ROWS: usize = 1_000_000;
/// Most input tokens over the replayed rows: their prompts travel in the
/// agents' assignments (at most 256 MiB each) and sit in the controller's
/// memory, at up to 8 bytes a token.
pub const MAX_INPUT_TOKENS: u64 = 20_000_000;
/// Most tokens of one row's input or output.
pub const MAX_LENGTH: u64 = 10_000_000;
/// The largest trace file read.
pub const MAX_FILE_BYTES: u64 = 512 << 20;
/// Most bad rows listed; the rest are counted.
const MAX_LISTED: usize = 10;

/// A trace file's layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// Mooncake JSONL.
    Mooncake,
    /// Azure LLM inference trace CSV.
    Azure,
}

impl Format {
    /// The layout a file name implies: `.jsonl`/`.json` Mooncake, `.csv`
    /// Azure.
    pub fn of(path: &Path) -> Option<Format> {
        match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "jsonl" | "json" => Some(Format::Mooncake),
            "csv" => Some(Format::Azure),
            _ => None,
        }
    }
}

/// One arrival of a trace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    /// When it is sent, from the run's start (window and speed applied).
    pub at: Duration,
    /// Input (prompt) tokens.
    pub input: u32,
    /// Output tokens, sent as its `max_tokens`.
    pub output: u32,
    /// The prompt's blocks, by hash id; empty: a prompt of its own.
    pub blocks: Vec<u64>,
}

/// A trace, read and cut to the replayed rows.
///
/// A run's spec keeps all but the rows (the trace file has them).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Replay {
    /// The file, as the profile names it.
    pub file: String,
    /// Its layout.
    pub format: Format,
    /// Playback speed: 2.0 sends twice as fast.
    pub speed: f64,
    /// Tokens per hash-id block.
    pub block_size: u32,
    /// Rows replayed.
    pub requests: u64,
    /// The replayed rows, in time order.
    #[serde(skip)]
    pub rows: Arc<Vec<Row>>,
}

/// How to read and cut a trace.
#[derive(Clone, Debug)]
pub struct Options {
    /// Its layout.
    pub format: Format,
    /// Playback speed.
    pub speed: f64,
    /// Trace time at which the replay starts (from the first row).
    pub start: Duration,
    /// How much trace time is replayed; `None`: to the end.
    pub length: Option<Duration>,
    /// Most rows replayed.
    pub max_requests: Option<u64>,
    /// Rows sent at or after this, from the run's start, are left out.
    pub until: Option<Duration>,
    /// Tokens per hash-id block.
    pub block_size: u32,
}

/// A row as read, with its time in microseconds of trace time.
struct Raw {
    at_us: u64,
    input: u64,
    output: u64,
    blocks: Vec<u64>,
}

/// Reads the trace at `path` (named `name` in messages). The error lists
/// each bad row as `name:line: what is wrong`.
pub fn read(path: &Path, name: &str, o: &Options) -> Result<Replay, String> {
    let size = std::fs::metadata(path)
        .map_err(|e| format!("cannot read the trace {name}: {e}"))?
        .len();
    if size > MAX_FILE_BYTES {
        return Err(format!(
            "the trace {name} is {size} bytes, over the limit of {MAX_FILE_BYTES}; cut it (load.start, load.length) into a smaller file"
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read the trace {name}: {e}"))?;
    parse(&text, name, o)
}

/// Parses a trace's text; see [`read`].
pub fn parse(text: &str, name: &str, o: &Options) -> Result<Replay, String> {
    let mut bad: Vec<String> = Vec::new();
    let mut more = 0usize;
    let mut note = |line: usize, what: String| {
        if bad.len() < MAX_LISTED {
            bad.push(format!("{name}:{line}: {what}"));
        } else {
            more += 1;
        }
    };
    let mut raw: Vec<Raw> = Vec::new();
    let mut header_seen = false;
    let mut previous: Option<(u64, usize)> = None;
    let mut first: Option<u64> = None;
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let row = match o.format {
            Format::Mooncake => mooncake(line),
            Format::Azure if !header_seen => {
                header_seen = true;
                let columns: Vec<&str> = line.split(',').map(str::trim).collect();
                if columns != ["TIMESTAMP", "ContextTokens", "GeneratedTokens"] {
                    note(
                        n,
                        format!("expected the header TIMESTAMP,ContextTokens,GeneratedTokens, got {line:?}"),
                    );
                }
                continue;
            }
            Format::Azure => azure(line),
        };
        let row = match row {
            Ok(r) => r,
            Err(e) => {
                note(n, e);
                continue;
            }
        };
        if raw.len() + 1 > MAX_ROWS {
            note(
                n,
                format!("more than {MAX_ROWS} rows; cut the trace into a smaller file"),
            );
            break;
        }
        if let Some((before, line)) = previous
            && row.at_us < before
        {
            note(
                n,
                format!(
                    "timestamp {} is earlier than line {line}'s {}; rows must be in time order",
                    shown(row.at_us, o.format),
                    shown(before, o.format)
                ),
            );
            continue;
        }
        previous = Some((row.at_us, n));
        first.get_or_insert(row.at_us);
        raw.push(row);
    }
    if raw.is_empty() && bad.is_empty() {
        return Err(format!("{name}: the trace has no rows"));
    }
    if !bad.is_empty() {
        if more > 0 {
            bad.push(format!("… and {more} more bad row(s)"));
        }
        return Err(bad.join("\n"));
    }
    // The window, in trace time from the first row, then the speed.
    let first = first.unwrap_or(0);
    let start = o.start.as_micros() as u64;
    let end = o.length.map(|l| start.saturating_add(l.as_micros() as u64));
    let cap = o.max_requests.unwrap_or(u64::MAX);
    let mut rows = Vec::new();
    let mut input_tokens = 0u64;
    for r in raw {
        let t = r.at_us - first;
        if t < start || end.is_some_and(|e| t >= e) {
            continue;
        }
        if rows.len() as u64 >= cap {
            break;
        }
        let at = Duration::from_secs_f64((t - start) as f64 / 1e6 / o.speed);
        if o.until.is_some_and(|u| at >= u) {
            break;
        }
        input_tokens += r.input;
        rows.push(Row {
            at,
            input: r.input as u32,
            output: r.output as u32,
            blocks: r.blocks,
        });
    }
    if rows.is_empty() {
        return Err(format!(
            "{name}: no row falls in the replayed window (load.start, load.length, --duration)"
        ));
    }
    if input_tokens > MAX_INPUT_TOKENS {
        return Err(format!(
            "{name}: the replayed rows ask for {input_tokens} input tokens, over the limit of {MAX_INPUT_TOKENS} (their prompts travel to the agents); replay part of it with load.length or load.requests"
        ));
    }
    Ok(Replay {
        file: name.to_owned(),
        format: o.format,
        speed: o.speed,
        block_size: o.block_size,
        requests: rows.len() as u64,
        rows: Arc::new(rows),
    })
}

/// A trace time as the file wrote it.
fn shown(us: u64, format: Format) -> String {
    match format {
        Format::Mooncake => format!("{} ms", us as f64 / 1000.0),
        Format::Azure => format!("{:.6} s", us as f64 / 1e6),
    }
}

fn length(v: Option<&Value>, key: &str) -> Result<u64, String> {
    let v = v.ok_or_else(|| format!("missing field {key}"))?;
    match v.as_u64() {
        Some(0) => Err(format!("{key}: expected a positive number of tokens, got 0")),
        Some(n) if n > MAX_LENGTH => Err(format!("{key}: expected at most {MAX_LENGTH} tokens, got {n}")),
        Some(n) => Ok(n),
        None => Err(format!("{key}: expected a positive whole number of tokens, got {v}")),
    }
}

fn mooncake(line: &str) -> Result<Raw, String> {
    let v: Value = serde_json::from_str(line).map_err(|e| format!("not a JSON object: {e}"))?;
    let o = v.as_object().ok_or("not a JSON object")?;
    let ts = o.get("timestamp").ok_or("missing field timestamp")?;
    let at_ms = ts
        .as_f64()
        .filter(|t| t.is_finite() && *t >= 0.0)
        .ok_or_else(|| format!("timestamp: expected milliseconds at or above 0, got {ts}"))?;
    let input = length(o.get("input_length"), "input_length")?;
    let output = length(o.get("output_length"), "output_length")?;
    let blocks = match o.get("hash_ids") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(ids)) => ids
            .iter()
            .map(|id| {
                id.as_u64()
                    .ok_or_else(|| format!("hash_ids: expected whole numbers at or above 0, got {id}"))
            })
            .collect::<Result<_, _>>()?,
        Some(other) => return Err(format!("hash_ids: expected a list of numbers, got {other}")),
    };
    Ok(Raw {
        at_us: (at_ms * 1000.0).round() as u64,
        input,
        output,
        blocks,
    })
}

fn azure(line: &str) -> Result<Raw, String> {
    let fields: Vec<&str> = line.split(',').map(str::trim).collect();
    let [ts, context, generated] = fields[..] else {
        return Err(format!(
            "expected 3 fields (TIMESTAMP,ContextTokens,GeneratedTokens), got {}",
            fields.len()
        ));
    };
    let at_us = timestamp(ts)?;
    let number = |text: &str, key: &str| -> Result<u64, String> {
        match text.parse::<i64>() {
            Ok(n) if n < 0 => Err(format!("{key}: expected a positive number of tokens, got {n}")),
            Ok(n) => length(Some(&Value::from(n)), key),
            Err(_) if text.is_empty() => Err(format!("missing field {key}")),
            Err(_) => Err(format!(
                "{key}: expected a positive whole number of tokens, got {text:?}"
            )),
        }
    };
    Ok(Raw {
        at_us,
        input: number(context, "ContextTokens")?,
        output: number(generated, "GeneratedTokens")?,
        blocks: Vec::new(),
    })
}

/// `2023-11-16 18:15:46.6805900` as microseconds since 1970 (UTC; only
/// differences matter).
fn timestamp(text: &str) -> Result<u64, String> {
    let bad = || format!("TIMESTAMP: expected a time such as 2023-11-16 18:15:46.6805900, got {text:?}");
    let (date, time) = text.split_once([' ', 'T']).ok_or_else(bad)?;
    let d: Vec<&str> = date.split('-').collect();
    let t: Vec<&str> = time.split(':').collect();
    let [y, mo, da] = d[..] else { return Err(bad()) };
    let [h, mi, s] = t[..] else { return Err(bad()) };
    let int = |s: &str| s.parse::<u64>().map_err(|_| bad());
    let (y, mo, da, h, mi) = (int(y)?, int(mo)?, int(da)?, int(h)?, int(mi)?);
    let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
    let sec = int(whole)?;
    if !(1..=12).contains(&mo) || !(1..=31).contains(&da) || h > 23 || mi > 59 || sec > 60 || y < 1970 {
        return Err(bad());
    }
    if !frac.chars().all(|c| c.is_ascii_digit()) {
        return Err(bad());
    }
    let micros: u64 = format!("{frac:0<6}")[..6].parse().map_err(|_| bad())?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let (y, m) = if mo <= 2 { (y - 1, mo + 9) } else { (y, mo - 3) };
    let era = y / 400;
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + da - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Ok(((days * 24 + h) * 60 + mi) * 60 * 1_000_000 + sec * 1_000_000 + micros)
}

impl Replay {
    /// When the last arrival is sent, from the run's start.
    pub fn last(&self) -> Duration {
        self.rows.last().map_or(Duration::ZERO, |r| r.at)
    }

    /// Every row's prompt, in row order: its blocks' texts joined and the
    /// last cut to its input length, and its output length as
    /// `max_tokens`, classed by its input length in tokens. A block's text depends only on its hash id and the
    /// run seed, so rows naming the same ids share their prefix. Rows
    /// without ids get blocks of their own.
    pub fn prompts(&self, seed: u64, counter: &Counter) -> Result<Vec<Prompt>, String> {
        let block = self.block_size as usize;
        let mut cache: std::collections::HashMap<(u64, usize), String> = std::collections::HashMap::new();
        let mut out = Vec::with_capacity(self.rows.len());
        for (i, r) in self.rows.iter().enumerate() {
            let input = r.input as usize;
            let needed = input.div_ceil(block);
            let mut text = String::with_capacity(input * 6);
            let mut own;
            for k in 0..needed {
                let tokens = block.min(input - k * block);
                // Ids the row names; past them, blocks only this row has.
                let seed_of = match r.blocks.get(k) {
                    Some(id) => mix(seed ^ mix(*id)),
                    None => mix(seed ^ mix(u64::MAX - i as u64) ^ k as u64),
                };
                // Shared blocks are built once; a row's own are not kept.
                let built = match r.blocks.get(k) {
                    Some(_) => match cache.entry((seed_of, tokens)) {
                        std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                        std::collections::hash_map::Entry::Vacant(e) => {
                            e.insert(synthetic::text(tokens, seed_of, counter)?)
                        }
                    }
                    .as_str(),
                    None => {
                        own = synthetic::text(tokens, seed_of, counter)?;
                        own.as_str()
                    }
                };
                if !text.is_empty() {
                    text.push(' ');
                }
                text.push_str(built);
            }
            out.push(Prompt::single(
                text,
                crate::dataset::class_of(input, ClassBy::Tokens).to_owned(),
                Some(r.output),
            ));
        }
        Ok(out)
    }

    /// The replay in words: `a replay of 40 requests from trace.jsonl at
    /// 2× speed`.
    pub fn describe(&self) -> String {
        let n = self.requests;
        format!(
            "a replay of {n} request{} from {} at {}× speed",
            if n == 1 { "" } else { "s" },
            self.file,
            self.speed
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(format: Format) -> Options {
        Options {
            format,
            speed: 1.0,
            start: Duration::ZERO,
            length: None,
            max_requests: None,
            until: None,
            block_size: 4,
        }
    }

    #[test]
    fn mooncake_rows_are_read_windowed_and_scaled() {
        let text = r#"{"timestamp": 1000, "input_length": 6, "output_length": 3, "hash_ids": [7, 8]}
{"timestamp": 1500, "input_length": 5, "output_length": 2, "hash_ids": [7, 9]}

{"timestamp": 3000, "input_length": 2, "output_length": 1}
"#;
        let o = Options {
            speed: 2.0,
            ..options(Format::Mooncake)
        };
        let r = parse(text, "t.jsonl", &o).unwrap();
        let at: Vec<u128> = r.rows.iter().map(|r| r.at.as_millis()).collect();
        assert_eq!(at, [0, 250, 1000], "from the first row, at twice the speed");
        assert_eq!(r.rows[0].blocks, [7, 8]);
        let window = Options {
            start: Duration::from_millis(500),
            length: Some(Duration::from_millis(1000)),
            ..options(Format::Mooncake)
        };
        let r = parse(text, "t.jsonl", &window).unwrap();
        assert_eq!(r.rows.len(), 1);
        assert_eq!((r.rows[0].at, r.rows[0].input), (Duration::ZERO, 5));
        let capped = Options {
            max_requests: Some(2),
            ..options(Format::Mooncake)
        };
        assert_eq!(parse(text, "t.jsonl", &capped).unwrap().rows.len(), 2);
        // `--duration` cuts in run time, after the speed.
        let until = Options {
            speed: 2.0,
            until: Some(Duration::from_millis(1000)),
            ..options(Format::Mooncake)
        };
        assert_eq!(parse(text, "t.jsonl", &until).unwrap().requests, 2);
    }

    #[test]
    fn shared_hash_ids_share_their_text_and_lengths_are_exact() {
        let text = r#"{"timestamp": 0, "input_length": 6, "output_length": 3, "hash_ids": [7, 8]}
{"timestamp": 1, "input_length": 5, "output_length": 2, "hash_ids": [7, 9]}
{"timestamp": 2, "input_length": 9, "output_length": 2}
"#;
        let r = parse(text, "t.jsonl", &options(Format::Mooncake)).unwrap();
        let p = r.prompts(1, &Counter::words()).unwrap();
        let words: Vec<Vec<&str>> = p.iter().map(|p| p.text.split_whitespace().collect()).collect();
        assert_eq!(words.iter().map(Vec::len).collect::<Vec<_>>(), [6, 5, 9]);
        assert_eq!(words[0][..4], words[1][..4], "block 7 is shared");
        assert_ne!(words[0][4..], words[1][4..5]);
        assert_eq!(
            p.iter().map(|p| p.max_tokens).collect::<Vec<_>>(),
            [Some(3), Some(2), Some(2)]
        );
        assert_eq!(p, r.prompts(1, &Counter::words()).unwrap(), "reproducible");
    }

    #[test]
    fn azure_times_count_from_the_first_row() {
        let text = "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.6805900,374,44\n2023-11-16 18:15:47.0000000,10,2\n2023-11-17 00:00:00.5,3,1\n";
        let r = parse(text, "a.csv", &options(Format::Azure)).unwrap();
        let at: Vec<u128> = r.rows.iter().map(|r| r.at.as_micros()).collect();
        assert_eq!(at, [0, 319_410, 20_653_819_410]);
        assert_eq!((r.rows[0].input, r.rows[0].output), (374, 44));
    }

    #[test]
    fn bad_rows_are_named_by_file_and_line() {
        let cases: &[(Format, &str, &str)] = &[
            (
                Format::Mooncake,
                "{\"timestamp\": 1, \"output_length\": 3}",
                "t:1: missing field input_length",
            ),
            (
                Format::Mooncake,
                "{\"timestamp\": 1, \"input_length\": -4, \"output_length\": 3}",
                "t:1: input_length: expected a positive whole number of tokens, got -4",
            ),
            (
                Format::Mooncake,
                "{\"timestamp\": 1, \"input_length\": 4, \"output_length\": 0}",
                "t:1: output_length: expected a positive number of tokens, got 0",
            ),
            (
                Format::Mooncake,
                "{\"timestamp\": 9, \"input_length\": 4, \"output_length\": 1}\n{\"timestamp\": 5, \"input_length\": 4, \"output_length\": 1}",
                "t:2: timestamp 5 ms is earlier than line 1's 9 ms",
            ),
            (Format::Mooncake, "nonsense", "t:1: not a JSON object"),
            (Format::Azure, "TIMESTAMP,ContextTokens\n", "t:1: expected the header"),
            (
                Format::Azure,
                "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46,3,-1",
                "t:2: GeneratedTokens: expected a positive number of tokens, got -1",
            ),
            (
                Format::Azure,
                "TIMESTAMP,ContextTokens,GeneratedTokens\nyesterday,3,1",
                "t:2: TIMESTAMP: expected a time",
            ),
            (Format::Mooncake, "\n\n", "t: the trace has no rows"),
        ];
        for (format, text, expected) in cases {
            let e = parse(text, "t", &options(*format)).unwrap_err();
            assert!(e.contains(expected), "{text:?}: {e}");
        }
    }
}
