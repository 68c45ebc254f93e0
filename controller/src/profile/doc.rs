//! A walk over a parsed TOML document that collects every problem at once,
//! each with its line, column, key path and the offending value.
//!
//! serde with `deny_unknown_fields` stops at the first error; a user fixing
//! a profile wants them all. Every accessor records the keys it was asked
//! for, so [`Table::finish`] knows which keys are unknown without a second
//! list to keep in step.

use std::ops::Range;
use std::time::Duration;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// One problem in a profile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line, 0 when not tied to a place in the file.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// Dotted key path, such as `load.users`; empty when the problem is
    /// not about one key (invalid TOML).
    pub key: String,
    /// What is wrong and what was expected.
    pub message: String,
    /// The command-line setting the value came from (`--users 0`), when it
    /// did not come from the file.
    pub origin: Option<String>,
}

/// Collects problems against one source text.
pub(crate) struct Problems<'s> {
    source: &'s str,
    /// Where each command-line setting's line is in `source`, and the
    /// setting as typed.
    settings: Vec<(Range<usize>, String)>,
    pub(crate) list: Vec<Problem>,
}

impl<'s> Problems<'s> {
    /// Problems against a profile's text followed by settings' lines.
    pub(crate) fn with_settings(source: &'s str, settings: Vec<(Range<usize>, String)>) -> Self {
        Problems {
            source,
            settings,
            list: Vec::new(),
        }
    }

    pub(crate) fn at(&mut self, span: Option<Range<usize>>, key: &str, message: impl Into<String>) {
        let origin = span.as_ref().and_then(|s| {
            self.settings
                .iter()
                .find(|(range, _)| range.contains(&s.start) || (range.is_empty() && range.start == s.start))
                .map(|(_, origin)| origin.clone())
        });
        let (line, column) = match (&origin, span) {
            (None, Some(s)) => line_column(self.source, s.start),
            _ => (0, 0),
        };
        self.list.push(Problem {
            line,
            column,
            key: key.to_owned(),
            message: message.into(),
            origin,
        });
    }
}

/// 1-based line and column of a byte offset.
pub(crate) fn line_column(source: &str, offset: usize) -> (usize, usize) {
    let before = &source[..offset.min(source.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

type Value<'i> = Spanned<DeValue<'i>>;

/// One entry of a free-form table: its key, its dotted key path, where its
/// value is, and the value.
pub(crate) type Entry<'t, 'i> = (String, String, Range<usize>, &'t DeValue<'i>);

/// One table of the document, with the path that leads to it.
pub(crate) struct Table<'t, 'i> {
    path: String,
    table: Option<&'t DeTable<'i>>,
    asked: Vec<&'static str>,
    /// Every key has been read (free-form keys, by [`Table::rest`]).
    all_read: bool,
}

/// How a value is shown in a message: as it was written, shortened.
fn shown(value: &DeValue<'_>) -> String {
    let text = match value {
        DeValue::String(s) => format!("{s:?}"),
        DeValue::Integer(i) => i.to_string(),
        DeValue::Float(f) => f.to_string(),
        DeValue::Boolean(b) => b.to_string(),
        DeValue::Datetime(d) => d.to_string(),
        DeValue::Array(_) => "an array".to_owned(),
        DeValue::Table(_) => "a table".to_owned(),
    };
    if text.chars().count() > 60 {
        format!("{}…", text.chars().take(60).collect::<String>())
    } else {
        text
    }
}

impl<'t, 'i> Table<'t, 'i> {
    /// The document's root table.
    pub(crate) fn root(table: &'t DeTable<'i>) -> Self {
        Table {
            path: String::new(),
            table: Some(table),
            asked: Vec::new(),
            all_read: false,
        }
    }

    /// A table found as a value (an inline table), at `path`.
    pub(crate) fn at(path: String, table: &'t DeTable<'i>) -> Self {
        Table {
            path,
            table: Some(table),
            asked: Vec::new(),
            all_read: false,
        }
    }

    fn key_path(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    fn get(&mut self, key: &'static str) -> Option<&'t Value<'i>> {
        if !self.asked.contains(&key) {
            self.asked.push(key);
        }
        self.table?.get(key)
    }

    fn wrong(&self, p: &mut Problems<'_>, key: &str, v: &Value<'_>, expected: &str) {
        p.at(
            Some(v.span()),
            &self.key_path(key),
            format!("expected {expected}, got {}", shown(v.get_ref())),
        );
    }

    /// A sub-table; absent tables read as empty.
    pub(crate) fn table(&mut self, p: &mut Problems<'_>, key: &'static str) -> Table<'t, 'i> {
        let path = self.key_path(key);
        let table = match self.get(key) {
            None => None,
            Some(v) => match v.get_ref() {
                DeValue::Table(t) => Some(t),
                _ => {
                    self.wrong(p, key, v, "a table");
                    None
                }
            },
        };
        Table {
            path,
            table,
            asked: Vec::new(),
            all_read: false,
        }
    }

    /// Every entry no accessor has asked for yet, in file order, for a
    /// table whose other keys are free-form; none will be reported as
    /// unknown.
    pub(crate) fn rest(&mut self) -> Vec<Entry<'t, 'i>> {
        self.all_read = true;
        let Some(table) = self.table else { return Vec::new() };
        let mut rest: Vec<Entry<'t, 'i>> = table
            .iter()
            .filter(|(k, _)| !self.asked.contains(&k.get_ref().as_ref()))
            .map(|(k, v)| {
                let name: &str = k.get_ref();
                (name.to_owned(), self.key_path(name), v.span(), v.get_ref())
            })
            .collect();
        rest.sort_by_key(|(_, _, span, _)| span.start);
        rest
    }

    /// Reports every key that no accessor asked for.
    pub(crate) fn finish(self, p: &mut Problems<'_>) {
        if self.all_read {
            return;
        }
        let Some(table) = self.table else { return };
        for (key, _) in table.iter() {
            let name: &str = key.get_ref();
            if self.asked.contains(&name) {
                continue;
            }
            let mut message = format!("unknown key; expected one of: {}", self.asked.join(", "));
            if let Some(near) = self.asked.iter().find(|k| similar(k, name)) {
                message = format!(
                    "unknown key (did you mean \"{near}\"?); expected one of: {}",
                    self.asked.join(", ")
                );
            }
            p.at(Some(key.span()), &self.key_path(name), message);
        }
    }

    pub(crate) fn string(&mut self, p: &mut Problems<'_>, key: &'static str) -> Option<String> {
        let v = self.get(key)?;
        match v.get_ref() {
            DeValue::String(s) => Some(s.to_string()),
            _ => {
                self.wrong(p, key, v, "a string");
                None
            }
        }
    }

    /// A string that must be one of `choices`.
    pub(crate) fn choice(&mut self, p: &mut Problems<'_>, key: &'static str, choices: &[&str]) -> Option<String> {
        let v = self.get(key)?;
        match v.get_ref() {
            DeValue::String(s) if choices.contains(&s.as_ref()) => Some(s.to_string()),
            _ => {
                let expected = format!(
                    "one of {}",
                    choices
                        .iter()
                        .map(|c| format!("\"{c}\""))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                self.wrong(p, key, v, &expected);
                None
            }
        }
    }

    pub(crate) fn bool(&mut self, p: &mut Problems<'_>, key: &'static str) -> Option<bool> {
        let v = self.get(key)?;
        match v.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            _ => {
                self.wrong(p, key, v, "true or false");
                None
            }
        }
    }

    fn integer(&mut self, key: &'static str) -> Option<(&'t Value<'i>, Option<i128>)> {
        let v = self.get(key)?;
        let n = match v.get_ref() {
            DeValue::Integer(i) => i128::from_str_radix(i.as_str(), i.radix()).ok(),
            _ => None,
        };
        Some((v, n))
    }

    /// An integer in `min..=max`.
    pub(crate) fn int_in(&mut self, p: &mut Problems<'_>, key: &'static str, min: u64, max: u64) -> Option<u64> {
        let (v, n) = self.integer(key)?;
        match n {
            Some(n) if n >= i128::from(min) && n <= i128::from(max) => u64::try_from(n).ok(),
            _ => {
                let expected = if min == 1 && max >= u64::from(u32::MAX) {
                    "a positive integer".to_owned()
                } else if min == 1 {
                    format!("a positive integer up to {max}")
                } else if min == 0 && max == u64::MAX {
                    "a non-negative integer".to_owned()
                } else {
                    format!("an integer from {min} to {max}")
                };
                self.wrong(p, key, v, &expected);
                None
            }
        }
    }

    /// A number (integer or float) in `min..=max`.
    pub(crate) fn number_in(&mut self, p: &mut Problems<'_>, key: &'static str, min: f64, max: f64) -> Option<f64> {
        let v = self.get(key)?;
        let n = number(v.get_ref());
        match n {
            Some(n) if n.is_finite() && n >= min && n <= max => Some(n),
            _ => {
                self.wrong(p, key, v, &format!("a number from {min} to {max}"));
                None
            }
        }
    }

    /// A duration written as a string such as `"30s"`, `"1m30s"`, `"250ms"`.
    pub(crate) fn duration(&mut self, p: &mut Problems<'_>, key: &'static str, allow_zero: bool) -> Option<Duration> {
        let v = self.get(key)?;
        let parsed = match v.get_ref() {
            DeValue::String(s) => parse_duration(s).ok(),
            _ => None,
        };
        match parsed {
            Some(d) if d > MAX_DURATION => {
                self.wrong(p, key, v, TOO_LONG);
                None
            }
            Some(d) if allow_zero || !d.is_zero() => Some(d),
            _ => {
                let what = if allow_zero {
                    "a duration"
                } else {
                    "a positive duration"
                };
                self.wrong(p, key, v, &format!("{what} such as {DURATION_EXAMPLES}"));
                None
            }
        }
    }

    /// A duration the agents receive, which travels in whole milliseconds:
    /// `"500us"` or `"1.5ms"` is refused rather than rounded away.
    pub(crate) fn millis(&mut self, p: &mut Problems<'_>, key: &'static str, allow_zero: bool) -> Option<Duration> {
        let d = self.duration(p, key, allow_zero)?;
        if whole_millis(d) {
            return Some(d);
        }
        let v = self.get(key)?;
        self.wrong(p, key, v, WHOLE_MILLIS);
        None
    }

    /// An array of strings.
    pub(crate) fn strings(&mut self, p: &mut Problems<'_>, key: &'static str) -> Option<Vec<String>> {
        let v = self.get(key)?;
        let DeValue::Array(items) = v.get_ref() else {
            self.wrong(p, key, v, "an array of strings");
            return None;
        };
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            match item.get_ref() {
                DeValue::String(s) => out.push(s.to_string()),
                other => p.at(
                    Some(item.span()),
                    &format!("{}[{i}]", self.key_path(key)),
                    format!("expected a string, got {}", shown(other)),
                ),
            }
        }
        Some(out)
    }

    /// True when the key is present (and counts it as known).
    pub(crate) fn has(&mut self, key: &'static str) -> bool {
        self.get(key).is_some()
    }

    /// An array of tables (`[[a.b]]` or `b = [{...}, {...}]`).
    pub(crate) fn tables(&mut self, p: &mut Problems<'_>, key: &'static str) -> Option<Vec<Table<'t, 'i>>> {
        let v = self.get(key)?;
        let DeValue::Array(items) = v.get_ref() else {
            self.wrong(p, key, v, "an array of tables");
            return None;
        };
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let path = format!("{}[{i}]", self.key_path(key));
            match item.get_ref() {
                DeValue::Table(t) => out.push(Table {
                    path,
                    table: Some(t),
                    asked: Vec::new(),
                    all_read: false,
                }),
                other => p.at(
                    Some(item.span()),
                    &path,
                    format!("expected a table, got {}", shown(other)),
                ),
            }
        }
        Some(out)
    }

    /// An array of numbers, each in `min..=max`.
    pub(crate) fn numbers(&mut self, p: &mut Problems<'_>, key: &'static str, min: f64, max: f64) -> Option<Vec<f64>> {
        let v = self.get(key)?;
        let DeValue::Array(items) = v.get_ref() else {
            self.wrong(p, key, v, "an array of numbers");
            return None;
        };
        let mut out = Vec::with_capacity(items.len());
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            match number(item.get_ref()) {
                Some(n) if n.is_finite() && n >= min && n <= max => out.push(n),
                _ => {
                    ok = false;
                    p.at(
                        Some(item.span()),
                        &format!("{}[{i}]", self.key_path(key)),
                        format!("expected a number from {min} to {max}, got {}", shown(item.get_ref())),
                    );
                }
            }
        }
        ok.then_some(out)
    }

    /// A table whose keys are free-form (header names, body fields): its
    /// entries with their key paths and spans, in file order.
    pub(crate) fn entries(&mut self, p: &mut Problems<'_>, key: &'static str) -> Option<Vec<Entry<'t, 'i>>> {
        let v = self.get(key)?;
        let DeValue::Table(t) = v.get_ref() else {
            self.wrong(p, key, v, "a table");
            return None;
        };
        let base = self.key_path(key);
        Some(
            t.iter()
                .map(|(k, v)| {
                    let name: &str = k.get_ref();
                    (name.to_owned(), format!("{base}.{name}"), v.span(), v.get_ref())
                })
                .collect(),
        )
    }

    /// True when the key holds a table.
    pub(crate) fn is_table(&self, key: &str) -> bool {
        self.table
            .and_then(|t| t.get(key))
            .is_some_and(|v| matches!(v.get_ref(), DeValue::Table(_)))
    }

    /// Where a key's value is, for problems found after reading it.
    pub(crate) fn span_of(&self, key: &str) -> Option<Range<usize>> {
        self.table?.get(key).map(Spanned::span)
    }

    /// The dotted path of a key of this table.
    pub(crate) fn path_of(&self, key: &str) -> String {
        self.key_path(key)
    }
}

/// A TOML value as JSON; dates and times become strings.
pub(crate) fn to_json(v: &DeValue<'_>) -> serde_json::Value {
    use serde_json::Value;
    match v {
        DeValue::String(s) => Value::String(s.to_string()),
        DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix())
            .map(Value::from)
            .unwrap_or(Value::Null),
        DeValue::Float(_) => number(v).map_or(Value::Null, Value::from),
        DeValue::Boolean(b) => Value::Bool(*b),
        DeValue::Datetime(d) => Value::String(d.to_string()),
        DeValue::Array(items) => Value::Array(items.iter().map(|i| to_json(i.get_ref())).collect()),
        DeValue::Table(t) => Value::Object(
            t.iter()
                .map(|(k, v)| (k.get_ref().to_string(), to_json(v.get_ref())))
                .collect(),
        ),
    }
}

/// An integer or float as `f64`.
fn number(v: &DeValue<'_>) -> Option<f64> {
    match v {
        DeValue::Float(f) => f.as_str().parse::<f64>().ok(),
        DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix()).ok().map(|n| n as f64),
        _ => None,
    }
}

/// How the messages about a bad duration show a good one.
const DURATION_EXAMPLES: &str = r#""30s", "2m" or "250ms""#;

/// The longest duration a profile or flag may set: 30 days, longer than
/// any load test, and far from the clock's limits (a step's end is its
/// start plus its duration).
pub(crate) const MAX_DURATION: Duration = Duration::from_secs(30 * 24 * 3600);

/// How the messages about a duration above [`MAX_DURATION`] read.
const TOO_LONG: &str = "a duration of at most 30 days (\"720h\")";

/// Parses durations such as `30s`, `1m30s`, `250ms`, `1.5s`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Some((number, unit)) = split_decimal(text) {
        let scale = match unit {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(format!("unknown unit {unit:?} in {text:?}")),
        };
        return Duration::try_from_secs_f64(number * scale).map_err(|e| e.to_string());
    }
    humantime::parse_duration(text).map_err(|e| e.to_string())
}

/// How the messages about a sub-millisecond duration for the agents read.
const WHOLE_MILLIS: &str =
    "whole milliseconds, such as \"1ms\" or \"250ms\" (the agents receive durations in milliseconds)";

/// Whether a duration is a whole number of milliseconds.
fn whole_millis(d: Duration) -> bool {
    d.subsec_nanos().is_multiple_of(1_000_000)
}

/// A command-line duration flag, read as the profile reads durations the
/// agents receive and refused with the profile's words (clap prints the
/// flag and the value before them).
pub fn parse_positive_duration(text: &str) -> Result<Duration, String> {
    match parse_duration(text) {
        Ok(d) if d > MAX_DURATION => Err(format!("expected {TOO_LONG}")),
        Ok(d) if !d.is_zero() && whole_millis(d) => Ok(d),
        Ok(d) if !d.is_zero() => Err(format!("expected {WHOLE_MILLIS}")),
        _ => Err(format!("expected a positive duration such as {DURATION_EXAMPLES}")),
    }
}

/// `"1.5s"` → `(1.5, "s")`; `None` unless the text is one decimal number
/// and a unit.
fn split_decimal(text: &str) -> Option<(f64, &str)> {
    let end = text.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (number, unit) = text.split_at(end);
    if !number.contains('.') {
        return None;
    }
    Some((number.parse().ok()?, unit.trim()))
}

/// Close enough to be a typo: one edit apart, or a swap of neighbours.
fn similar(a: &str, b: &str) -> bool {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    if a.len().abs_diff(b.len()) > 1 {
        return false;
    }
    // Levenshtein distance with an early exit above 1.
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    let swapped = a.len() == b.len() && {
        let diffs: Vec<usize> = (0..a.len()).filter(|&i| a[i] != b[i]).collect();
        diffs.len() == 2 && diffs[1] == diffs[0] + 1 && a[diffs[0]] == b[diffs[1]] && a[diffs[1]] == b[diffs[0]]
    };
    prev[b.len()] <= 1 || swapped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let ok = |s: &str, ms: u64| assert_eq!(parse_duration(s).unwrap(), Duration::from_millis(ms), "{s}");
        ok("30s", 30_000);
        ok("1m30s", 90_000);
        ok("1m 30s", 90_000);
        ok("250ms", 250);
        ok("1.5s", 1_500);
        assert_eq!(parse_duration("0.5ms").unwrap(), Duration::from_micros(500));
        assert_eq!(parse_duration("200us").unwrap(), Duration::from_micros(200));
        for bad in ["thirty", "30", "-1s", "1.5parsecs", ""] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        // A flag the agents receive takes whole milliseconds.
        assert_eq!(parse_positive_duration("1.5s"), Ok(Duration::from_millis(1_500)));
        assert!(
            parse_positive_duration("500us")
                .unwrap_err()
                .contains("whole milliseconds")
        );
        assert!(parse_positive_duration("0s").unwrap_err().contains("positive duration"));
        assert!(parse_positive_duration("721h").unwrap_err().contains("at most 30 days"));
        assert_eq!(parse_positive_duration("720h"), Ok(MAX_DURATION));
    }

    #[test]
    fn typos_are_recognised() {
        assert!(similar("users", "user"));
        assert!(similar("users", "usres"));
        assert!(similar("duration", "duraton"));
        assert!(!similar("users", "model"));
    }

    #[test]
    fn line_and_column_of_an_offset() {
        let s = "a = 1\nbb = 2\n";
        assert_eq!(line_column(s, 0), (1, 1));
        assert_eq!(line_column(s, 6), (2, 1));
        assert_eq!(line_column(s, 11), (2, 6));
    }
}
