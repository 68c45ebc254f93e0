//! Synthetic prompts of chosen input and output token lengths, drawn from
//! distributions (fixed, uniform, normal with bounds) with the run seed.
//!
//! With a Hugging Face `tokenizer.json`, each prompt is built to the
//! requested input length under that tokenizer: words are added while the
//! count stays at or under the target, then one-letter words top it up, so
//! a prompt lands within a token or two of its target (the tests hold it
//! within 5 %). Without one, a token is taken to be a whitespace-separated
//! word: exact for llm-sim, and about 1.3 tokens per word for the BPE
//! tokenizers of most models, which the summary's server counts will show.
//! Counts leave out special tokens and chat templates, which servers add.
//!
//! With a [`SharedPrefix`], every prompt is its group's prefix, built the
//! same way to its own token length and byte-identical across the group,
//! then a space and a suffix of the drawn input length that is the
//! prompt's own: the workload of a chat service whose requests share
//! system prompts, which a server's prefix cache can reuse.

use std::path::Path;

use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

use super::Prompt;
use crate::plan::mix;

/// A distribution of token counts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Length {
    /// Always this many.
    Fixed(u32),
    /// Uniform between the bounds, inclusive.
    Uniform {
        /// Fewest.
        min: u32,
        /// Most.
        max: u32,
    },
    /// Normal, rounded and clamped to the bounds.
    Normal {
        /// Mean.
        mean: f64,
        /// Standard deviation.
        stddev: f64,
        /// Fewest.
        min: u32,
        /// Most.
        max: u32,
    },
}

impl Length {
    /// Draws one length from two independent uniform numbers in [0, 1).
    fn draw(self, u1: f64, u2: f64) -> u32 {
        match self {
            Length::Fixed(n) => n,
            Length::Uniform { min, max } => {
                let span = f64::from(max - min) + 1.0;
                (min + (u1 * span) as u32).min(max)
            }
            Length::Normal { mean, stddev, min, max } => {
                // Box–Muller.
                let z = (-2.0 * (1.0 - u1).ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
                (mean + stddev * z).round().clamp(f64::from(min), f64::from(max)) as u32
            }
        }
    }
}

/// What to generate.
#[derive(Clone, Debug, PartialEq)]
pub struct Spec {
    /// How many prompts.
    pub count: u32,
    /// Input (prompt) tokens.
    pub input: Length,
    /// Output tokens, sent as each prompt's `max_tokens`.
    pub output: Option<Length>,
    /// Prefixes shared by groups of prompts; `input` is then the length of
    /// each prompt's own suffix.
    pub shared_prefix: Option<SharedPrefix>,
}

/// Groups of prompts that start with the same text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SharedPrefix {
    /// How many groups, each with its own prefix.
    pub groups: u32,
    /// Tokens of each prefix.
    pub tokens: u32,
    /// Which group each prompt belongs to.
    pub assign: Assign,
}

/// How prompts are put in prefix groups.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Assign {
    /// Prompt `i` of the set belongs to group `i mod groups`. Users walk
    /// the set in order, so a user's consecutive requests go through the
    /// groups in turn, and every group is sent equally often.
    RoundRobin,
    /// Each prompt's group is drawn, uniformly, from the run seed.
    Random,
}

impl Assign {
    /// Names as the profile spells them.
    pub const NAMES: [&'static str; 2] = ["round-robin", "random"];

    /// Its name as the profile spells it.
    pub fn name(self) -> &'static str {
        match self {
            Assign::RoundRobin => "round-robin",
            Assign::Random => "random",
        }
    }

    /// The assignment named `name`.
    pub fn from_name(name: &str) -> Option<Assign> {
        match name {
            "round-robin" => Some(Assign::RoundRobin),
            "random" => Some(Assign::Random),
            _ => None,
        }
    }
}

/// What a shared-prefix workload offers a prefix cache.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SharedWorkload {
    /// The generator's settings.
    #[serde(flatten)]
    pub prefix: SharedPrefix,
    /// Share of all the prompts' tokens that lie in their group's prefix,
    /// 0 to 1 (counted as the prompts were built): the most of the input a
    /// prefix cache can serve once every group has been seen.
    pub shared_share: f64,
}

/// Words prompts are made of: common, short, and tokenized the same way
/// with or without a leading space by most BPE vocabularies.
const WORDS: [&str; 48] = [
    "the", "system", "reads", "every", "request", "from", "a", "queue", "and", "answers", "with", "short", "text",
    "while", "other", "users", "wait", "their", "turn", "under", "heavy", "load", "when", "memory", "runs", "low",
    "server", "keeps", "some", "work", "for", "later", "so", "that", "each", "reply", "stays", "fast", "enough", "to",
    "meet", "its", "goal", "on", "time", "as", "planned", "today",
];

/// Counts a text's tokens: with the tokenizer, or as words.
pub struct Counter {
    tokenizer: Option<Tokenizer>,
}

impl Counter {
    /// Counts words.
    pub fn words() -> Counter {
        Counter { tokenizer: None }
    }

    /// Counts tokens of the `tokenizer.json` at `path`.
    pub fn from_file(path: &Path) -> Result<Counter, String> {
        let tokenizer =
            Tokenizer::from_file(path).map_err(|e| format!("{}: not a usable tokenizer.json: {e}", path.display()))?;
        Ok(Counter {
            tokenizer: Some(tokenizer),
        })
    }

    /// Tokens of `text`, special tokens left out.
    pub fn count(&self, text: &str) -> Result<usize, String> {
        match &self.tokenizer {
            None => Ok(text.split_whitespace().count()),
            Some(t) => t
                .encode(text, false)
                .map(|e| e.len())
                .map_err(|e| format!("the tokenizer failed: {e}")),
        }
    }

    /// True when a tokenizer counts.
    pub fn is_tokenizer(&self) -> bool {
        self.tokenizer.is_some()
    }
}

/// Generates the prompts of `spec` with `seed`.
pub fn generate(spec: &Spec, seed: u64, counter: &Counter) -> Result<Vec<Prompt>, String> {
    generate_shared(spec, seed, counter).map(|(prompts, _)| prompts)
}

/// Generates the prompts of `spec` with `seed`, and with shared prefixes
/// what they offer a prefix cache.
pub fn generate_shared(
    spec: &Spec,
    seed: u64,
    counter: &Counter,
) -> Result<(Vec<Prompt>, Option<SharedWorkload>), String> {
    let mut out = Vec::with_capacity(spec.count as usize);
    let mut state = mix(seed ^ 0x5EED_5EED);
    let mut uniform = || {
        state = mix(state);
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    let prefixes = match spec.shared_prefix {
        Some(s) => (0..s.groups)
            .map(|g| {
                let words = mix(seed ^ 0x9EF1_0000 ^ u64::from(g));
                let text = build(s.tokens as usize, words, counter)?;
                let tokens = counter.count(&text)?;
                Ok((text, tokens))
            })
            .collect::<Result<Vec<_>, String>>()?,
        None => Vec::new(),
    };
    let (mut shared, mut total) = (0usize, 0usize);
    for i in 0..spec.count {
        let target = spec.input.draw(uniform(), uniform()).max(1);
        let max_tokens = spec.output.map(|o| o.draw(uniform(), uniform()).max(1));
        let group = match spec.shared_prefix.map(|s| s.assign) {
            Some(Assign::Random) => Some((uniform() * prefixes.len() as f64) as usize % prefixes.len()),
            Some(Assign::RoundRobin) => Some(i as usize % prefixes.len()),
            None => None,
        };
        let words = seed ^ u64::from(i).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mut text = build(target as usize, words, counter)?;
        if let Some((prefix, tokens)) = group.map(|g| &prefixes[g]) {
            text = format!("{prefix} {text}");
            shared += tokens;
            total += counter.count(&text)?;
        }
        // Classed by length afterwards (`super::classify`).
        out.push(Prompt::single(text, String::new(), max_tokens));
    }
    let workload = spec.shared_prefix.map(|prefix| SharedWorkload {
        prefix,
        shared_share: if total > 0 { shared as f64 / total as f64 } else { 0.0 },
    });
    Ok((out, workload))
}

/// What makes synthetic prompts sessions.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sessions {
    /// User turns per session.
    pub turns: Length,
    /// The system prompt's length in tokens; `None`: no system prompt.
    pub system_tokens: Option<u32>,
}

/// Generates `spec.count` sessions with `seed`: each draws its number of
/// turns from `sessions.turns`, and each turn its length from
/// `spec.input` (its output limit, from `spec.output`, is the first
/// turn's and applies to every turn). The system prompt is built to
/// `sessions.system_tokens` exactly as prompts are.
pub fn generate_sessions(
    spec: &Spec,
    sessions: &Sessions,
    seed: u64,
    counter: &Counter,
) -> Result<Vec<Prompt>, String> {
    let mut out = Vec::with_capacity(spec.count as usize);
    let mut state = mix(seed ^ 0x5E55_1045);
    let mut uniform = || {
        state = mix(state);
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    for i in 0..spec.count {
        let n = sessions.turns.draw(uniform(), uniform()).max(1);
        let max_tokens = spec.output.map(|o| o.draw(uniform(), uniform()).max(1));
        let mut texts = Vec::with_capacity(n as usize);
        for t in 0..n {
            let target = spec.input.draw(uniform(), uniform()).max(1);
            let words = seed ^ (u64::from(i) << 16 | u64::from(t)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            texts.push(build(target as usize, words, counter)?);
        }
        let system = match sessions.system_tokens {
            Some(tokens) => Some(build(tokens as usize, mix(seed ^ u64::from(i) ^ 0x5157), counter)?),
            None => None,
        };
        let text = texts.remove(0);
        out.push(Prompt {
            text,
            class: String::new(),
            max_tokens,
            system,
            turns: texts,
        });
    }
    Ok(out)
}

/// A text of `tokens` tokens under `counter` (or as close as the
/// tokenizer allows), the same for the same seed; a shorter one from the
/// same seed is its prefix, give or take the last words.
pub fn text(tokens: usize, seed: u64, counter: &Counter) -> Result<String, String> {
    build(tokens, seed, counter)
}

/// The `n`-th word of the sequence seeded with `seed`.
fn word(seed: u64, n: usize) -> &'static str {
    WORDS[(mix(seed ^ n as u64) % WORDS.len() as u64) as usize]
}

fn text_of(seed: u64, words: usize) -> String {
    let mut text = String::with_capacity(words * 6);
    for n in 0..words {
        if n > 0 {
            text.push(' ');
        }
        text.push_str(word(seed, n));
    }
    text
}

/// A text of `target` tokens under `counter` (or as close as the
/// tokenizer allows).
fn build(target: usize, seed: u64, counter: &Counter) -> Result<String, String> {
    if !counter.is_tokenizer() {
        return Ok(text_of(seed, target));
    }
    // The longest prefix of the word sequence within the target: token
    // counts grow with words, so a binary search finds it.
    let (mut lo, mut hi) = (0usize, target.max(1));
    while counter.count(&text_of(seed, hi))? <= target {
        lo = hi;
        hi *= 2;
        if hi > 64 * target + 64 {
            return Err("the tokenizer gives no tokens for words: cannot build prompts with it".to_owned());
        }
    }
    while hi - lo > 1 {
        let mid = (lo + hi) / 2;
        if counter.count(&text_of(seed, mid))? <= target {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    // Top up with one-letter words, one token each in most vocabularies,
    // while that brings the count closer.
    let mut text = text_of(seed, lo);
    let mut count = counter.count(&text)?;
    while count < target {
        let candidate = if text.is_empty() {
            "a".to_owned()
        } else {
            format!("{text} a")
        };
        let next = counter.count(&candidate)?;
        if next > target && next - target >= target - count {
            break;
        }
        text = candidate;
        count = next;
        if next > target {
            break;
        }
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_tokenizer_prompts_have_exactly_their_word_counts() {
        let spec = Spec {
            count: 50,
            input: Length::Uniform { min: 10, max: 400 },
            output: Some(Length::Normal {
                mean: 100.0,
                stddev: 30.0,
                min: 20,
                max: 200,
            }),
            shared_prefix: None,
        };
        let counter = Counter::words();
        let a = generate(&spec, 7, &counter).unwrap();
        assert_eq!(a, generate(&spec, 7, &counter).unwrap(), "reproducible from the seed");
        assert_ne!(a, generate(&spec, 8, &counter).unwrap());
        let lengths: Vec<usize> = a.iter().map(|p| p.text.split_whitespace().count()).collect();
        assert!(lengths.iter().all(|n| (10..=400).contains(n)), "{lengths:?}");
        assert!(
            lengths.iter().max() > Some(&300) && lengths.iter().min() < Some(&100),
            "{lengths:?}"
        );
        let out: Vec<u32> = a.iter().map(|p| p.max_tokens.unwrap()).collect();
        assert!(out.iter().all(|n| (20..=200).contains(n)));
        let mean = out.iter().map(|n| f64::from(*n)).sum::<f64>() / out.len() as f64;
        assert!((80.0..120.0).contains(&mean), "normal mean {mean}");
    }

    #[test]
    fn fixed_lengths_are_fixed() {
        let spec = Spec {
            count: 3,
            input: Length::Fixed(64),
            output: Some(Length::Fixed(16)),
            shared_prefix: None,
        };
        for p in generate(&spec, 1, &Counter::words()).unwrap() {
            assert_eq!(p.text.split_whitespace().count(), 64);
            assert_eq!(p.max_tokens, Some(16));
        }
    }

    #[test]
    fn shared_prefixes_are_identical_within_a_group_and_exact_in_words() {
        let spec = Spec {
            count: 12,
            input: Length::Fixed(20),
            output: None,
            shared_prefix: Some(SharedPrefix {
                groups: 3,
                tokens: 100,
                assign: Assign::RoundRobin,
            }),
        };
        let (prompts, workload) = generate_shared(&spec, 5, &Counter::words()).unwrap();
        let prefix = |p: &Prompt| p.text.split_whitespace().take(100).collect::<Vec<_>>().join(" ");
        for (i, p) in prompts.iter().enumerate() {
            assert_eq!(p.text.split_whitespace().count(), 120);
            assert!(p.text.starts_with(&prefix(&prompts[i % 3])), "round-robin: prompt {i}");
            assert_ne!(prefix(p), prefix(&prompts[(i + 1) % 3]), "groups differ");
        }
        let suffixes: std::collections::BTreeSet<_> = prompts.iter().map(|p| &p.text[prefix(p).len()..]).collect();
        assert_eq!(suffixes.len(), 12, "every suffix is the prompt's own");
        let w = workload.unwrap();
        assert!((w.shared_share - 100.0 / 120.0).abs() < 1e-9, "{w:?}");
        let random = Spec {
            shared_prefix: Some(SharedPrefix {
                assign: Assign::Random,
                ..spec.shared_prefix.unwrap()
            }),
            ..spec.clone()
        };
        let (r, _) = generate_shared(&random, 5, &Counter::words()).unwrap();
        let groups: std::collections::BTreeSet<_> = r.iter().map(prefix).collect();
        assert!(groups.len() <= 3 && groups.len() >= 2, "drawn among the three prefixes");
    }

    #[test]
    fn sessions_have_their_drawn_turns_and_an_exact_system_prompt() {
        let spec = Spec {
            count: 40,
            input: Length::Fixed(12),
            output: Some(Length::Fixed(7)),
            shared_prefix: None,
        };
        let sessions = Sessions {
            turns: Length::Uniform { min: 1, max: 4 },
            system_tokens: Some(9),
        };
        let counter = Counter::words();
        let out = generate_sessions(&spec, &sessions, 11, &counter).unwrap();
        assert_eq!(out.len(), 40);
        let mut seen = [false; 4];
        for s in &out {
            let turns = 1 + s.turns.len();
            assert!((1..=4).contains(&turns), "{turns}");
            seen[turns - 1] = true;
            assert_eq!(counter.count(s.system.as_deref().unwrap()).unwrap(), 9);
            for t in std::iter::once(&s.text).chain(&s.turns) {
                assert_eq!(counter.count(t).unwrap(), 12);
            }
            assert_eq!(s.max_tokens, Some(7));
        }
        assert!(seen.iter().all(|s| *s), "every turn count of the range is drawn");
        assert_eq!(out, generate_sessions(&spec, &sessions, 11, &counter).unwrap());
        let texts: std::collections::BTreeSet<_> = out.iter().map(|s| &s.text).collect();
        assert_eq!(texts.len(), 40, "sessions are distinct");
    }
}
