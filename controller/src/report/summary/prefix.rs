//! Prefix caching: what the workload offered a prefix cache, the hit rate
//! the server reports, and the cached tokens its answers stated.

use std::time::SystemTime;

use serde::Serialize;
use stampede_proto::Counters;

use crate::dataset::synthetic::SharedWorkload;
use crate::server::{Canon, Series};

/// Prefix caching over the measured time.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct PrefixCache {
    /// The workload's shared prefixes, when the synthetic prompts were
    /// built with them (`prompts.synthetic.shared_prefix`).
    pub workload: Option<SharedWorkload>,
    /// The server's hit rate, 0 to 1: prompt tokens found in its prefix
    /// cache over those looked up (the increase of vLLM's
    /// `prefix_cache_hits` and `prefix_cache_queries` counters), else the
    /// mean of its hit-rate gauge; absent when it reports neither.
    pub server_hit_rate: Option<f64>,
    /// Prompt tokens the server looked up, when it counts them.
    pub server_queried_tokens: Option<f64>,
    /// Of those, tokens it found cached.
    pub server_hit_tokens: Option<f64>,
    /// The server's metric the rate rests on.
    pub server_source: Option<String>,
    /// Successful requests whose answers stated how many prompt tokens
    /// came from the cache (OpenAI `usage.prompt_tokens_details.
    /// cached_tokens`, llama.cpp `timings.cache_n`).
    pub reported_requests: u64,
    /// Cached prompt tokens those answers stated.
    pub cached_tokens: u64,
    /// Input tokens of those requests.
    pub input_tokens: u64,
    /// `cached_tokens` over `input_tokens`, 0 to 1: the client's view of
    /// the hit rate.
    pub cached_share: Option<f64>,
}

/// The section, when the workload shared prefixes, the server reports
/// its prefix cache, or answers stated cached tokens.
pub(super) fn build(
    workload: Option<SharedWorkload>,
    counters: &Counters,
    series: Option<&Series>,
    start: Option<SystemTime>,
    from: f64,
) -> Option<PrefixCache> {
    let server = series.zip(start).and_then(|(s, start)| {
        let (rate, tokens) = super::server::hit_rate(s, start, from, f64::MAX).or_else(|| {
            // No scrape before the load began: without warm-ups the
            // measured time is the whole run, which the counters' increase
            // from the first scrape to the last covers.
            let hits = s.increase(Canon::PrefixCacheHits).filter(|_| from <= 0.0)?;
            let queries = s.increase(Canon::PrefixCacheQueries)?;
            (queries > 0.0).then(|| (hits / queries, Some((hits, queries))))
        })?;
        let canon = if tokens.is_some() {
            Canon::PrefixCacheHits
        } else {
            Canon::PrefixCacheHitRate
        };
        let source = s.sources.get(&canon).map(|x| x.metric.to_owned());
        Some((rate, tokens, source))
    });
    if workload.is_none() && server.is_none() && counters.cached_reported == 0 {
        return None;
    }
    let (rate, tokens, source) = match server {
        Some((rate, tokens, source)) => (Some(rate), tokens, source),
        None => (None, None, None),
    };
    Some(PrefixCache {
        workload,
        server_hit_rate: rate,
        server_queried_tokens: tokens.map(|(_, q)| q),
        server_hit_tokens: tokens.map(|(h, _)| h),
        server_source: source,
        reported_requests: counters.cached_reported,
        cached_tokens: counters.cached_tokens,
        input_tokens: counters.cached_of_input,
        cached_share: (counters.cached_of_input > 0)
            .then(|| counters.cached_tokens as f64 / counters.cached_of_input as f64),
    })
}
