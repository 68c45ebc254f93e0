//! Settings from the command line (`--users 8`, `--set load.duration=30s`)
//! laid over the profile's document before it is read, so that one walk
//! checks the profile and its overrides alike: a bad value gets the same
//! message as in a file, naming the flag instead of a line.
//!
//! Each setting becomes a line of TOML (`load.users = 8`) appended, for
//! the reader's eyes only, after the profile's text; it is parsed on its
//! own and merged into the document with its spans pointing past the
//! profile, which is how a problem found in it is traced back to its flag.

use std::ops::Range;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// One change to the profile from the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Setting {
    /// As typed, for messages and the summary: `--users 8`.
    pub origin: String,
    /// The key, as TOML writes a key path: `load.users`,
    /// `thresholds."ttft.p95"`.
    pub key: String,
    /// The value as TOML (`8`, `"30s"`, `[1, 2]`); text that is not TOML
    /// is taken as a string, so `--set load.duration=30s` needs no quotes.
    pub value: String,
    /// Keys taken out of the profile first (bare dotted keys): a flag that
    /// chooses the load model removes the profile's other models.
    pub unset: Vec<&'static str>,
}

impl Setting {
    /// `--set KEY=VALUE`.
    pub fn parse(text: &str) -> Result<Setting, String> {
        let (key, value) = text
            .split_once('=')
            .ok_or_else(|| format!("expected KEY=VALUE, such as load.users=25 or target.model=llama, got {text:?}"))?;
        let key = key.trim();
        if key.is_empty() {
            return Err(format!("no key before '=' in {text:?}"));
        }
        Ok(Setting {
            origin: format!("--set {text}"),
            key: key.to_owned(),
            value: value.trim().to_owned(),
            unset: Vec::new(),
        })
    }

    /// A flag that sets one key.
    pub fn flag(origin: String, key: &str, value: String, unset: &[&'static str]) -> Setting {
        Setting {
            origin,
            key: key.to_owned(),
            value,
            unset: unset.to_vec(),
        }
    }

    /// The setting as one line of TOML.
    fn line(&self) -> String {
        let as_toml = format!("{} = {}", self.key, self.value);
        if DeTable::parse(&as_toml).is_ok() {
            as_toml
        } else {
            format!("{} = {}", self.key, toml::Value::String(self.value.clone()))
        }
    }
}

/// The flags of `controller run` that change the profile, as typed.
#[derive(Clone, Debug, Default)]
pub struct Flags {
    /// `--users N`: closed-loop users, replacing the profile's load model.
    pub users: Option<String>,
    /// `--rate R`: open-loop arrivals per second, replacing it.
    pub rate: Option<String>,
    /// `--requests N`: send this many, then stop.
    pub requests: Option<String>,
    /// `--model NAME`.
    pub model: Option<String>,
    /// `--api DIALECT`.
    pub api: Option<String>,
    /// `--max-tokens N`.
    pub max_tokens: Option<String>,
    /// `--prompt-tokens N`: synthetic prompts of this many tokens, replacing
    /// the profile's prompts.
    pub prompt_tokens: Option<String>,
    /// `--output-tokens N`: the synthetic prompts' answer length.
    pub output_tokens: Option<String>,
    /// `--agents N`: agents started in-process (`agents.count`).
    pub agents: Option<String>,
    /// `--set KEY=VALUE`, in order.
    pub set: Vec<Setting>,
}

/// Keys a flag that chooses the load model takes out of the profile.
const NOT_USERS: [&str; 6] = [
    "load.rate",
    "load.stages",
    "load.sweep",
    "load.arrival",
    "load.burstiness",
    "load.max_concurrency",
];
const NOT_RATE: [&str; 6] = [
    "load.users",
    "load.stages",
    "load.sweep",
    "load.think_time",
    "load.pace",
    "load.spawn_rate",
];
const PROMPT_SOURCES: [&str; 5] = [
    "prompts.builtin",
    "prompts.inline",
    "prompts.file",
    "prompts.format",
    "prompts.synthetic",
];

/// Synthetic prompts a `--prompt-tokens` run draws.
const SYNTHETIC_PROMPTS: u32 = 1000;

impl Flags {
    /// The settings, `--set` first and the named flags after, so that a
    /// named flag wins over a `--set` of the same key. Numbers go as
    /// typed, for the profile's checks to judge; names go as strings.
    pub fn settings(&self) -> Vec<Setting> {
        let mut out = self.set.clone();
        let string = |v: &str| toml::Value::String(v.to_owned()).to_string();
        let mut flag = |name: &str, key: &str, value: String, shown: &str, unset: &[&'static str]| {
            out.push(Setting::flag(format!("--{name} {shown}"), key, value, unset));
        };
        if let Some(v) = &self.users {
            flag("users", "load.users", v.clone(), v, &NOT_USERS);
        }
        if let Some(v) = &self.rate {
            flag("rate", "load.rate", v.clone(), v, &NOT_RATE);
        }
        if let Some(v) = &self.requests {
            flag("requests", "load.requests", v.clone(), v, &[]);
        }
        if let Some(v) = &self.model {
            flag("model", "target.model", string(v), v, &[]);
        }
        if let Some(v) = &self.api {
            flag("api", "target.api", string(v), v, &[]);
        }
        if let Some(v) = &self.max_tokens {
            flag("max-tokens", "request.max_tokens", v.clone(), v, &[]);
        }
        if let Some(v) = &self.prompt_tokens {
            let tokens = if v.trim().parse::<u64>().is_ok() {
                v.trim().to_owned()
            } else {
                string(v)
            };
            flag(
                "prompt-tokens",
                "prompts.synthetic",
                format!("{{ count = {SYNTHETIC_PROMPTS}, input_tokens = {tokens} }}"),
                v,
                &PROMPT_SOURCES,
            );
        }
        if let Some(v) = &self.output_tokens {
            flag("output-tokens", "prompts.synthetic.output_tokens", v.clone(), v, &[]);
        }
        if let Some(v) = &self.agents {
            flag("agents", "agents.count", v.clone(), v, &[]);
        }
        out
    }

    /// Whether the flags choose the load model.
    pub fn choose_load(&self) -> bool {
        self.users.is_some() || self.rate.is_some()
    }
}

/// The profile's text followed by one line per setting, and where each
/// setting's line is.
pub(super) fn text(source: &str, settings: &[Setting]) -> (String, Vec<Range<usize>>) {
    let mut text = source.to_owned();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    let mut ranges = Vec::with_capacity(settings.len());
    for s in settings {
        let start = text.len();
        text.push_str(&s.line());
        ranges.push(start..text.len());
        text.push('\n');
    }
    (text, ranges)
}

fn shift_value<'i>(v: Spanned<DeValue<'i>>, by: usize) -> Spanned<DeValue<'i>> {
    let span = v.span();
    let inner = match v.into_inner() {
        DeValue::Table(t) => DeValue::Table(shift_table(t, by)),
        DeValue::Array(mut items) => {
            for item in items.iter_mut() {
                let taken = std::mem::replace(item, Spanned::new(0..0, DeValue::Boolean(false)));
                *item = shift_value(taken, by);
            }
            DeValue::Array(items)
        }
        other => other,
    };
    Spanned::new(span.start + by..span.end + by, inner)
}

fn shift_table<'i>(t: DeTable<'i>, by: usize) -> DeTable<'i> {
    t.into_iter()
        .map(|(k, v)| {
            let span = k.span();
            (
                Spanned::new(span.start + by..span.end + by, k.into_inner()),
                shift_value(v, by),
            )
        })
        .collect()
}

/// Lays `over` onto `root`: tables merge key by key, anything else
/// replaces what was there.
fn merge<'i>(root: &mut DeTable<'i>, over: DeTable<'i>) {
    for (key, value) in over {
        let both_tables = matches!(value.get_ref(), DeValue::Table(_))
            && matches!(
                root.get(key.get_ref().as_ref()).map(Spanned::get_ref),
                Some(DeValue::Table(_))
            );
        if both_tables {
            let Some(DeValue::Table(mine)) = root.get_mut(key.get_ref().as_ref()).map(Spanned::get_mut) else {
                unreachable!("checked to be a table above")
            };
            if let DeValue::Table(theirs) = value.into_inner() {
                merge(mine, theirs);
            }
        } else {
            root.remove(key.get_ref().as_ref());
            root.insert(key, value);
        }
    }
}

/// Removes a bare dotted key (`load.rate`) from `root`, when present.
fn unset(root: &mut DeTable<'_>, dotted: &str) {
    match dotted.split_once('.') {
        None => {
            root.remove(dotted);
        }
        Some((head, rest)) => {
            if let Some(DeValue::Table(t)) = root.get_mut(head).map(Spanned::get_mut) {
                unset(t, rest);
            }
        }
    }
}

/// Applies every setting's line of `text` to `root`, in order. A line that
/// is not TOML is a problem of its setting.
pub(super) fn apply<'i>(
    root: &mut DeTable<'i>,
    text: &'i str,
    settings: &[Setting],
    ranges: &[Range<usize>],
    problem: &mut dyn FnMut(Range<usize>, String),
) {
    for (s, range) in settings.iter().zip(ranges) {
        for key in &s.unset {
            unset(root, key);
        }
        match DeTable::parse(&text[range.clone()]) {
            Ok(doc) => merge(root, shift_table(doc.into_inner(), range.start)),
            Err(e) => problem(range.clone(), format!("not a setting: {}", e.message().trim())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_read_as_toml_or_as_text() {
        let s = Setting::parse("load.duration=30s").expect("valid");
        assert_eq!(s.line(), "load.duration = \"30s\"");
        assert_eq!(
            Setting::parse("load.users = 25").expect("valid").line(),
            "load.users = 25"
        );
        assert_eq!(
            Setting::parse("thresholds.\"ttft.p95\"=< 500ms").expect("valid").line(),
            "thresholds.\"ttft.p95\" = \"< 500ms\""
        );
        assert!(Setting::parse("load.users").unwrap_err().contains("expected KEY=VALUE"));
        assert!(Setting::parse("=3").unwrap_err().contains("no key"));
    }

    #[test]
    fn settings_merge_into_tables_and_replace_values() {
        let settings = [
            Setting::flag("--users 8".into(), "load.users", "8".into(), &["load.rate"]),
            Setting::parse("request.max_tokens=16").expect("valid"),
        ];
        let source = "[load]\nrate = 5\nduration = \"2s\"\n[target]\nurl = \"http://h\"\n";
        let (text, ranges) = text(source, &settings);
        let mut root = DeTable::parse(&text[..source.len()]).expect("parses").into_inner();
        let mut problems = Vec::new();
        apply(&mut root, &text, &settings, &ranges, &mut |r, m| problems.push((r, m)));
        assert!(problems.is_empty(), "{problems:?}");
        let load = match root.get("load").map(Spanned::get_ref) {
            Some(DeValue::Table(t)) => t,
            other => panic!("{other:?}"),
        };
        assert!(load.get("rate").is_none(), "unset by the flag");
        assert!(load.get("duration").is_some(), "the rest of the table stays");
        let users = load.get("users").expect("set");
        assert!(users.span().start >= source.len(), "its span points past the profile");
        assert_eq!(&text[users.span()], "8");
        assert!(root.get("request").is_some() && root.get("target").is_some());
    }
}
