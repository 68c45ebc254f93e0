//! `summary.json` `tokens`: token totals, the source of each figure, and
//! how far the sources disagree.
//!
//! Per request an agent may have up to three output-token counts: the
//! server's own, the stream events that carried text, and the client
//! tokenizer's count of the text. It uses the first it has of server,
//! tokenizer, events and words, and counts every pair it has in a
//! [`Comparison`], so the disagreement is exact over the requests that had
//! both, and needs no per-request samples.

use serde::Serialize;
use stampede_proto::{Comparison, Counters};

use crate::results::spec::TokenizerRef;

/// Token totals and where they came from.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct Tokens {
    /// Input tokens: the server's counts, else the client tokenizer's count
    /// of each prompt (see `input_source`).
    pub input: u64,
    /// Output tokens.
    pub output: u64,
    /// Where the output tokens came from, and so every figure built on
    /// them (output-token statistics, TPOT, output tokens/s, TPM, the
    /// class table): `server usage`, `client tokenizer`, `counted stream
    /// events`, `counted words`, or `mixed`.
    pub source: &'static str,
    /// Where the input tokens came from: `server usage`, `client
    /// tokenizer`, `mixed`, or `none`.
    pub input_source: &'static str,
    /// Requests whose output tokens the server counted.
    pub from_usage: u64,
    /// Requests whose output tokens the client tokenizer counted (no
    /// server count).
    pub from_tokenizer: u64,
    /// Requests whose output tokens were counted from stream events (no
    /// server count, no tokenizer).
    pub counted: u64,
    /// Requests whose output tokens were counted as whitespace-separated
    /// words of the answer (no server count, no tokenizer, no token
    /// events).
    pub words: u64,
    /// Requests whose input tokens the server reported.
    pub input_from_usage: u64,
    /// Requests whose input tokens the client tokenizer counted from the
    /// prompt (special tokens and chat templates, which servers add, are
    /// not counted).
    pub input_from_tokenizer: u64,
    /// The client tokenizer, when the run had one.
    pub tokenizer: Option<TokenizerInfo>,
    /// How far the sources disagree, over the requests that had both.
    pub agreement: Agreement,
}

/// The client tokenizer of a run.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct TokenizerInfo {
    /// The file, as the profile or `--tokenizer` named it.
    pub file: String,
    /// Tokens in its vocabulary.
    pub vocab_size: usize,
}

/// Each pair of output-token sources; absent when no request had both.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct Agreement {
    /// The server's count (first) against counted stream events (second).
    pub server_vs_events: Option<Disagreement>,
    /// The server's count (first) against the client tokenizer (second).
    pub server_vs_tokenizer: Option<Disagreement>,
    /// Counted stream events (first) against the client tokenizer
    /// (second).
    pub events_vs_tokenizer: Option<Disagreement>,
}

/// Two output-token counts of the same requests.
#[derive(Clone, Debug, PartialEq, Serialize, schemars::JsonSchema)]
pub struct Disagreement {
    /// Requests that had both counts.
    pub requests: u64,
    /// The first source's tokens over those requests.
    pub first: u64,
    /// The second source's tokens over the same requests.
    pub second: u64,
    /// `(second - first) / first`: 0 when the totals agree. Server against
    /// events is negative when a server sends several tokens per event or
    /// counts one it does not send (an end-of-sequence token).
    pub relative_difference: f64,
    /// Mean over the requests of `|first - second|`, in tokens: what the
    /// totals hide when requests err both ways.
    pub mean_abs_difference: f64,
    /// Requests whose two counts differ.
    pub requests_differing: u64,
}

impl Disagreement {
    fn of(c: &Comparison) -> Option<Disagreement> {
        (c.requests > 0).then(|| Disagreement {
            requests: c.requests,
            first: c.first,
            second: c.second,
            relative_difference: if c.first == 0 {
                if c.second == 0 { 0.0 } else { f64::INFINITY }
            } else {
                (c.second as f64 - c.first as f64) / c.first as f64
            },
            mean_abs_difference: c.abs_difference as f64 / c.requests as f64,
            requests_differing: c.differing,
        })
    }
}

/// The `tokens` section of a run with these counters.
pub(super) fn tokens(c: &Counters, tokenizer: Option<&TokenizerRef>) -> Tokens {
    let output_sources = [
        (c.tokens_from_usage, "server usage"),
        (c.tokens_from_tokenizer, "client tokenizer"),
        (c.tokens_counted, "counted stream events"),
        (c.tokens_from_words, "counted words"),
    ];
    let input_sources = [
        (c.inputs_from_server, "server usage"),
        (c.inputs_from_tokenizer, "client tokenizer"),
    ];
    Tokens {
        input: c.input_tokens,
        output: c.output_tokens,
        // With no successful request, the source is the server's, which
        // is asked for first.
        source: source(&output_sources).unwrap_or("server usage"),
        input_source: source(&input_sources).unwrap_or("none"),
        from_usage: c.tokens_from_usage,
        from_tokenizer: c.tokens_from_tokenizer,
        counted: c.tokens_counted,
        words: c.tokens_from_words,
        input_from_usage: c.inputs_from_server,
        input_from_tokenizer: c.inputs_from_tokenizer,
        tokenizer: tokenizer.map(|t| TokenizerInfo {
            file: t.name.clone(),
            vocab_size: t.vocab_size,
        }),
        agreement: Agreement {
            server_vs_events: Disagreement::of(&c.server_vs_events),
            server_vs_tokenizer: Disagreement::of(&c.server_vs_tokenizer),
            events_vs_tokenizer: Disagreement::of(&c.events_vs_tokenizer),
        },
    }
}

/// The one source with requests, `mixed` when several have, `None` when
/// none has.
fn source(sources: &[(u64, &'static str)]) -> Option<&'static str> {
    let mut used = sources.iter().filter(|(n, _)| *n > 0);
    match (used.next(), used.next()) {
        (Some((_, name)), None) => Some(name),
        (Some(_), Some(_)) => Some("mixed"),
        (None, _) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_named_and_disagreement_is_exact() {
        let mut c = Counters {
            tokens_from_usage: 3,
            inputs_from_server: 2,
            inputs_from_tokenizer: 1,
            ..Counters::default()
        };
        for (server, events, tokenizer) in [(10, 10, 12), (10, 9, 8), (4, 4, 4)] {
            c.server_vs_events.record(Some(server), Some(events));
            c.server_vs_tokenizer.record(Some(server), Some(tokenizer));
            c.events_vs_tokenizer.record(Some(events), Some(tokenizer));
        }
        let t = tokens(&c, None);
        assert_eq!((t.source, t.input_source), ("server usage", "mixed"));
        let st = t.agreement.server_vs_tokenizer.unwrap();
        // 24 server tokens against 24 counted: the totals agree, yet two
        // requests of three differ, by 2 tokens each.
        assert_eq!((st.first, st.second, st.relative_difference), (24, 24, 0.0));
        assert_eq!((st.requests_differing, st.mean_abs_difference), (2, 4.0 / 3.0));
        let se = t.agreement.server_vs_events.unwrap();
        assert_eq!((se.second, se.requests_differing), (23, 1));
        assert!((se.relative_difference - (-1.0 / 24.0)).abs() < 1e-12);
        let et = t.agreement.events_vs_tokenizer.unwrap();
        assert_eq!((et.first, et.second, et.requests_differing), (23, 24, 2));
    }

    #[test]
    fn no_pair_no_agreement_and_one_source_is_named() {
        let c = Counters {
            tokens_from_tokenizer: 5,
            ..Counters::default()
        };
        let t = tokens(&c, None);
        assert_eq!((t.source, t.input_source), ("client tokenizer", "none"));
        assert!(t.agreement.server_vs_events.is_none());
        assert!(t.agreement.server_vs_tokenizer.is_none());
        let empty = tokens(&Counters::default(), None);
        assert_eq!(empty.source, "server usage");
        let mixed = Counters {
            tokens_counted: 1,
            tokens_from_words: 1,
            ..Counters::default()
        };
        assert_eq!(tokens(&mixed, None).source, "mixed");
    }
}
