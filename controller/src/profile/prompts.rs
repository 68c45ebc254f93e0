//! `[prompts]`: a built-in set, an inline list, a JSONL or ShareGPT file,
//! or synthetic prompts of chosen token lengths. Exactly one.

use std::path::Path;

use super::doc::{Problems, Table};
use crate::dataset::file::{self, Format};
use crate::dataset::synthetic::{self, Assign, Counter, Length, SharedPrefix};
use crate::dataset::{self, ClassBy, Prompt};

/// Prompts, where they came from, what their classes were measured in,
/// and the shared prefixes they were built with, if any.
pub(super) type Dataset = (Vec<Prompt>, String, ClassBy, Option<synthetic::SharedWorkload>);

/// Most synthetic prompts a profile may ask for.
const MAX_SYNTHETIC: u64 = 1_000_000;
/// Longest synthetic prompt or answer, in tokens.
const MAX_LENGTH: u64 = 1_000_000;

/// Reads `[prompts]`; the prompts and a description of where they came
/// from. Files are read relative to `base` (the profile's folder) and
/// shuffled with `seed`. Synthetic prompts without a tokenizer of their
/// own use `default_tokenizer` (the target's: its path and its name).
/// Prompts without a class of their own are classed by length, in tokens of
/// the run's tokenizer when it has one, else in characters.
pub(super) fn walk(
    d: &mut Table<'_, '_>,
    p: &mut Problems<'_>,
    base: &Path,
    seed: u64,
    default_tokenizer: Option<(&Path, &str)>,
    sessions: bool,
) -> Option<Dataset> {
    let builtin = d.choice(p, "builtin", &dataset::BUILTIN);
    let inline = d.strings(p, "inline");
    let path = d.string(p, "file");
    let format = d.choice(p, "format", &Format::NAMES);
    let synthetic = d.has("synthetic");
    let mut s = d.table(p, "synthetic");
    let spec = if synthetic { synthetic_spec(&mut s, p) } else { None };
    let session_spec = if synthetic {
        session_spec(&mut s, p, sessions)
    } else {
        None
    };
    let tokenizer = s.string(p, "tokenizer");
    let tokenizer_at = (s.span_of("tokenizer"), s.path_of("tokenizer"));
    s.finish(p);
    let chosen = [builtin.is_some(), inline.is_some(), path.is_some(), synthetic];
    if sessions && !(path.is_some() || synthetic) {
        p.at(
            d.span_of("sessions"),
            &d.path_of("sessions"),
            "sessions need conversations: a JSONL (\"messages\") or ShareGPT file, or synthetic prompts with turns",
        );
    }
    let several = chosen.iter().filter(|c| **c).count() > 1;
    if several {
        p.at(None, "prompts", "set only one of builtin, inline, file and synthetic");
    }
    if format.is_some() && path.is_none() {
        p.at(
            d.span_of("format"),
            &d.path_of("format"),
            "format applies to a prompt file: set file too",
        );
    }
    // Every source given is checked, so that all its problems show at once
    // even beside the one above.
    let mut found = Vec::new();
    if let Some(list) = inline {
        found.push(inline_prompts(d, p, list));
    }
    if let Some(name) = path {
        let counter = match default_tokenizer {
            Some((path, _)) => Counter::from_file(path),
            None => Ok(Counter::words()),
        };
        found.push(match counter {
            Ok(counter) => file_prompts(d, p, base, seed, &name, format.as_deref(), &counter, sessions),
            Err(e) => {
                p.at(None, "target.tokenizer", e);
                None
            }
        });
    }
    if synthetic {
        let tokenizer = tokenizer
            .map(|t| (base.join(&t), t))
            .or_else(|| default_tokenizer.map(|(path, name)| (path.to_owned(), name.to_owned())));
        found.push(spec.and_then(|spec| synthetic_prompts(p, &spec, session_spec, seed, tokenizer, tokenizer_at)));
    }
    if several {
        return None;
    }
    if let Some(prompts) = found.pop() {
        return prompts;
    }
    let name = builtin.as_deref().unwrap_or("mixed");
    // The built-in sets are labelled by construction, inside the bounds of
    // either measure.
    let by = if default_tokenizer.is_some() {
        ClassBy::Tokens
    } else {
        ClassBy::Characters
    };
    Some((dataset::builtin(name)?, format!("builtin:{name}"), by, None))
}

fn inline_prompts(d: &Table<'_, '_>, p: &mut Problems<'_>, list: Vec<String>) -> Option<Dataset> {
    if list.is_empty() {
        p.at(
            d.span_of("inline"),
            &d.path_of("inline"),
            "expected at least one prompt",
        );
    }
    for (i, text) in list.iter().enumerate() {
        if text.trim().is_empty() {
            p.at(
                d.span_of("inline"),
                &format!("{}[{i}]", d.path_of("inline")),
                "a prompt must not be empty",
            );
        }
    }
    let source = format!("inline ({} prompts)", list.len());
    let prompts = list
        .into_iter()
        .map(|text| Prompt::single(text, "inline".to_owned(), None))
        .collect();
    // One class, `inline`, whatever the lengths.
    Some((prompts, source, ClassBy::Characters, None))
}

#[allow(clippy::too_many_arguments)]
fn file_prompts(
    d: &Table<'_, '_>,
    p: &mut Problems<'_>,
    base: &Path,
    seed: u64,
    name: &str,
    format: Option<&str>,
    counter: &Counter,
    sessions: bool,
) -> Option<Dataset> {
    let full = base.join(name);
    let format = format.and_then(Format::from_name).unwrap_or(Format::of(&full));
    match file::load(&full, format, sessions) {
        Ok(mut prompts) => {
            let by = match dataset::classify(&mut prompts, counter) {
                Ok(by) => by,
                Err(e) => {
                    p.at(d.span_of("file"), &d.path_of("file"), e);
                    return None;
                }
            };
            dataset::shuffle(&mut prompts, seed);
            let kind = if format == Format::Jsonl { "jsonl" } else { "sharegpt" };
            let what = if sessions { "sessions" } else { "prompts" };
            let source = format!("{kind}:{name} ({} {what}, shuffled with seed {seed})", prompts.len());
            Some((prompts, source, by, None))
        }
        Err(e) => {
            p.at(d.span_of("file"), &d.path_of("file"), e);
            None
        }
    }
}

/// `tokenizer`: the file and its name as the profile gives it; `at`: where
/// the profile names it.
fn synthetic_prompts(
    p: &mut Problems<'_>,
    spec: &synthetic::Spec,
    sessions: Option<synthetic::Sessions>,
    seed: u64,
    tokenizer: Option<(std::path::PathBuf, String)>,
    at: (Option<std::ops::Range<usize>>, String),
) -> Option<Dataset> {
    let counter = match &tokenizer {
        Some((path, _)) => match Counter::from_file(path) {
            Ok(c) => c,
            Err(e) => {
                p.at(at.0, &at.1, e);
                return None;
            }
        },
        None => Counter::words(),
    };
    if sessions.is_some() && spec.shared_prefix.is_some() {
        p.at(
            None,
            "prompts.synthetic.shared_prefix",
            "does not apply to sessions: a session's system prompt and history are the prefix its turns share",
        );
        return None;
    }
    let generated = match &sessions {
        Some(s) => synthetic::generate_sessions(spec, s, seed, &counter).map(|prompts| (prompts, None)),
        None => synthetic::generate_shared(spec, seed, &counter),
    };
    match generated.and_then(|(mut prompts, shared)| {
        let by = dataset::classify(&mut prompts, &counter)?;
        Ok((prompts, by, shared))
    }) {
        Ok((prompts, by, shared)) => {
            let unit = tokenizer.map_or_else(|| "words as tokens".to_owned(), |(_, t)| format!("tokens of {t}"));
            let groups = shared.map_or_else(String::new, |w| {
                format!(
                    ", {} shared prefixes of {} tokens ({} groups)",
                    w.prefix.groups,
                    w.prefix.tokens,
                    w.prefix.assign.name()
                )
            });
            let what = if sessions.is_some() { "sessions" } else { "prompts" };
            let source = format!("synthetic ({} {what}{groups}, {unit}, seed {seed})", prompts.len());
            Some((prompts, source, by, shared))
        }
        Err(e) => {
            p.at(None, "prompts.synthetic", e);
            None
        }
    }
}

fn synthetic_spec(s: &mut Table<'_, '_>, p: &mut Problems<'_>) -> Option<synthetic::Spec> {
    let count = s.int_in(p, "count", 1, MAX_SYNTHETIC);
    if count.is_none() && !s.has("count") {
        p.at(
            None,
            &s.path_of("count"),
            "missing: how many prompts, such as count = 200",
        );
    }
    if !s.has("input_tokens") {
        p.at(
            None,
            &s.path_of("input_tokens"),
            "missing: the prompt length, such as input_tokens = 512 or { min = 128, max = 1024 }",
        );
    }
    let input = length(s, p, "input_tokens");
    let output = if s.has("output_tokens") {
        Some(length(s, p, "output_tokens")?)
    } else {
        None
    };
    let shared_prefix = if s.has("shared_prefix") {
        Some(shared_prefix(s, p)?)
    } else {
        None
    };
    Some(synthetic::Spec {
        count: u32::try_from(count?).ok()?,
        input: input?,
        output,
        shared_prefix,
    })
}

/// `shared_prefix = { groups, tokens, assign }`: every prompt starts with
/// one of `groups` prefixes of `tokens` tokens.
fn shared_prefix(s: &mut Table<'_, '_>, p: &mut Problems<'_>) -> Option<SharedPrefix> {
    let mut t = s.table(p, "shared_prefix");
    let groups = t.int_in(p, "groups", 1, 100_000);
    let tokens = t.int_in(p, "tokens", 1, MAX_LENGTH);
    let assign = t.choice(p, "assign", &Assign::NAMES);
    for key in ["groups", "tokens"] {
        if !t.has(key) {
            p.at(
                s.span_of("shared_prefix"),
                &t.path_of(key),
                "missing: such as shared_prefix = { groups = 8, tokens = 512 }",
            );
        }
    }
    t.finish(p);
    Some(SharedPrefix {
        groups: u32::try_from(groups?).ok()?,
        tokens: u32::try_from(tokens?).ok()?,
        assign: assign
            .as_deref()
            .and_then(Assign::from_name)
            .unwrap_or(Assign::RoundRobin),
    })
}

/// `turns` and `system_tokens` of `[prompts.synthetic]`: sessions, when
/// `[prompts] sessions` is on.
fn session_spec(s: &mut Table<'_, '_>, p: &mut Problems<'_>, sessions: bool) -> Option<synthetic::Sessions> {
    let turns = s.has("turns").then(|| length(s, p, "turns")).flatten();
    let system_tokens = s.int_in(p, "system_tokens", 1, MAX_LENGTH).map(|n| n as u32);
    if !sessions {
        for key in ["turns", "system_tokens"] {
            if s.has(key) {
                p.at(
                    s.span_of(key),
                    &s.path_of(key),
                    "applies to sessions: set prompts.sessions = true too",
                );
            }
        }
        return None;
    }
    if !s.has("turns") {
        p.at(
            None,
            &s.path_of("turns"),
            "missing: user turns per session, such as turns = 3 or { min = 2, max = 6 }",
        );
    }
    Some(synthetic::Sessions {
        turns: turns?,
        system_tokens,
    })
}

/// A length: an integer (fixed), `{ min, max }` (uniform) or `{ mean,
/// stddev, min, max }` (normal, clamped to the bounds).
fn length(s: &mut Table<'_, '_>, p: &mut Problems<'_>, key: &'static str) -> Option<Length> {
    if !s.is_table(key) {
        return s.int_in(p, key, 1, MAX_LENGTH).map(|n| Length::Fixed(n as u32));
    }
    let mut t = s.table(p, key);
    let min = t.int_in(p, "min", 1, MAX_LENGTH);
    let max = t.int_in(p, "max", 1, MAX_LENGTH);
    let mean = t.number_in(p, "mean", 1.0, MAX_LENGTH as f64);
    let stddev = t.number_in(p, "stddev", 0.0, MAX_LENGTH as f64);
    let normal = t.has("mean") || t.has("stddev");
    t.finish(p);
    let (Some(min), Some(max)) = (min, max) else {
        p.at(
            s.span_of(key),
            &s.path_of(key),
            "expected min and max: { min = 128, max = 1024 } (uniform) or { mean = 512, stddev = 128, min = 64, max = 2048 } (normal)",
        );
        return None;
    };
    if min > max {
        p.at(s.span_of(key), &s.path_of(key), format!("min {min} is above max {max}"));
        return None;
    }
    let (min, max) = (min as u32, max as u32);
    if !normal {
        return Some(Length::Uniform { min, max });
    }
    match (mean, stddev) {
        (Some(mean), Some(stddev)) => Some(Length::Normal { mean, stddev, min, max }),
        _ => {
            p.at(
                s.span_of(key),
                &s.path_of(key),
                "a normal length needs both mean and stddev",
            );
            None
        }
    }
}
