//! Reading the numbers: where the server saturates (the knee), whether
//! the client, not the server, was the limit, and the findings a run's
//! figures support ([`findings::draw`]).

pub mod findings;
pub mod gates;

use crate::figure::beside;

/// One step of a load, as the knee sees it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Level {
    /// Users or arrivals per second.
    pub load: f64,
    /// Successful requests per second.
    pub throughput: f64,
    /// TTFT 95th percentile, ms.
    pub ttft_p95: f64,
}

/// The knee rule, stated in every summary.
pub const KNEE_RULE: &str = "the lowest load at which throughput reaches 90% of its maximum \
     while TTFT p95 has grown past twice its value at the lowest load (steps that completed no \
     request left out)";

/// The knee: the index of the lowest load at which throughput has reached
/// 90 % of its maximum while TTFT p95 has grown past twice its value at the
/// lowest load. `None` when no level saturated (the server kept up), or
/// with fewer than two levels. A level in which no request succeeded (its
/// requests outlasted it) has no TTFT to compare: it is left out, and the
/// lowest load is the lowest that completed any.
pub fn knee(levels: &[Level]) -> Option<usize> {
    let mut order: Vec<usize> = (0..levels.len()).filter(|&i| levels[i].throughput > 0.0).collect();
    if order.len() < 2 {
        return None;
    }
    order.sort_by(|a, b| levels[*a].load.total_cmp(&levels[*b].load));
    let max = levels.iter().map(|l| l.throughput).fold(0.0, f64::max);
    let base = levels[order[0]].ttft_p95;
    order
        .into_iter()
        .find(|&i| levels[i].throughput >= 0.9 * max && levels[i].ttft_p95 > 2.0 * base)
}

/// Scheduling lag p99 above this means the agent could not keep time.
pub const LAG_LIMIT_MS: f64 = 5.0;
/// CPU share above this means the agent's host was saturated.
pub const CPU_LIMIT: f64 = 0.9;

/// How late the agents may send, as a share of the median request's end
/// to end, before the lag matters to the results.
pub const LAG_SHARE: f64 = 0.02;

/// How much later than the limit a tail of requests may be sent.
pub const LAG_TAIL: f64 = 10.0;

/// The agents' scheduling lag and runtime delay over a run, against its
/// requests' length.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Lag {
    /// Scheduling lag p90, ms.
    pub p90_ms: f64,
    /// Scheduling lag p99, ms.
    pub p99_ms: f64,
    /// How late the agents' runtime ran its tick, p90, ms.
    pub delay_p90_ms: f64,
    /// The same, p99, ms.
    pub delay_p99_ms: f64,
    /// End to end p50 of successful requests, ms.
    pub e2e_p50_ms: f64,
    /// Successful requests: without any, there is nothing to understate.
    pub ok: u64,
}

/// Why the results may understate the server, if they do. The run is
/// client-bound when
///
/// - the agents were starved: their runtime ran its 10 ms tick late by
///   more than [`LAG_LIMIT_MS`] at p90 (most timestamps read that much
///   late, and a token gap is a few tens of milliseconds), or by more than
///   [`LAG_TAIL`] times it at p99; a host that does not give the agents
///   the CPU they need shows here, however little CPU they managed to use;
/// - most requests were sent late: scheduling lag p90 past [`LAG_LIMIT_MS`]
///   or [`LAG_SHARE`] of the median end-to-end time, whichever is more (a
///   few milliseconds on answers that take seconds change nothing), or a
///   tail very late (p99 past [`LAG_TAIL`] times that);
/// - or the busiest agent's threads used more than [`CPU_LIMIT`] of the
///   cores.
///
/// A few requests a little late, as when users that became ready together
/// are sent a little apart on a busy host, are not enough; connections
/// opening are not lateness (their wait is after dispatch). A run without
/// a successful request is never client-bound: there is nothing to
/// understate (a refused target fails fast and keeps the agents busy).
pub fn client_bound(lag: &Lag, cpu_max: f64) -> Vec<String> {
    let mut reasons = Vec::new();
    if lag.ok == 0 {
        return reasons;
    }
    let limit = LAG_LIMIT_MS.max(LAG_SHARE * lag.e2e_p50_ms);
    // Each value is shown with the digits it takes to tell it from its
    // limit (`beside`): 5.04 ms against 5 ms, never 5.0.
    let named = |value: f64| {
        let (v, l) = beside(value, limit, 1);
        let name = if limit > LAG_LIMIT_MS {
            format!("{l} ms, {:.0}% of the median end to end", LAG_SHARE * 100.0)
        } else {
            format!("{l} ms")
        };
        (v, name)
    };
    if lag.delay_p90_ms > LAG_LIMIT_MS {
        let (v, l) = beside(lag.delay_p90_ms, LAG_LIMIT_MS, 1);
        reasons.push(format!(
            "the agents were starved of CPU: their runtime ran {v} ms late at p90 (limit {l} ms), so the times they took, token gaps first, read long"
        ));
    } else if lag.delay_p99_ms > LAG_TAIL * LAG_LIMIT_MS {
        let (v, l) = beside(lag.delay_p99_ms, LAG_TAIL * LAG_LIMIT_MS, 1);
        reasons.push(format!(
            "the agents were at times starved of CPU: their runtime ran {v} ms late at p99 (limit {l} ms)"
        ));
    }
    if lag.p90_ms > limit {
        let (v, named) = named(lag.p90_ms);
        reasons.push(format!(
            "scheduling lag p90 is {v} ms (limit {named}): the agents could not send on time"
        ));
    } else if lag.p99_ms > LAG_TAIL * limit {
        // Against ten times the limit: the digits that tell it apart from
        // that.
        let (v, _) = beside(lag.p99_ms, LAG_TAIL * limit, 1);
        let (_, named) = named(limit);
        reasons.push(format!(
            "scheduling lag p99 is {v} ms (limit {:.0} times {named}): some requests were sent far too late",
            LAG_TAIL
        ));
    }
    if cpu_max > CPU_LIMIT {
        let (v, l) = beside(cpu_max * 100.0, CPU_LIMIT * 100.0, 0);
        reasons.push(format!("an agent used {v}% of its CPU (limit {l}%)"));
    }
    reasons
}

#[cfg(test)]
mod tests {
    use super::*;

    fn level(load: f64, throughput: f64, ttft_p95: f64) -> Level {
        Level {
            load,
            throughput,
            ttft_p95,
        }
    }

    #[test]
    fn the_knee_is_where_throughput_tops_out_and_ttft_climbs() {
        // A server with 8 slots: throughput grows to 8 users, then TTFT.
        let levels = [
            level(1.0, 1.0, 100.0),
            level(4.0, 4.0, 101.0),
            level(8.0, 7.9, 104.0),
            level(16.0, 8.0, 900.0),
            level(32.0, 8.0, 2_900.0),
        ];
        assert_eq!(knee(&levels), Some(3));
    }

    #[test]
    fn a_server_that_keeps_up_has_no_knee() {
        let levels = [level(1.0, 1.0, 100.0), level(2.0, 2.0, 100.0), level(4.0, 4.0, 110.0)];
        assert_eq!(knee(&levels), None);
        assert_eq!(knee(&levels[..1]), None);
    }

    #[test]
    fn a_level_that_completed_nothing_is_no_baseline() {
        // Answers longer than a step: the first step completed nothing, so
        // its TTFT p95 reads 0, which anything is past twice of.
        let levels = [level(2.0, 0.0, 0.0), level(4.0, 1.0, 27.0)];
        assert_eq!(knee(&levels), None);
        let levels = [
            level(1.0, 0.0, 0.0),
            level(2.0, 2.0, 100.0),
            level(4.0, 4.0, 105.0),
            level(8.0, 4.0, 400.0),
        ];
        assert_eq!(knee(&levels), Some(3));
    }

    #[test]
    fn levels_are_read_in_order_of_load() {
        let levels = [level(16.0, 8.0, 900.0), level(1.0, 1.0, 100.0), level(8.0, 8.0, 250.0)];
        assert_eq!(knee(&levels), Some(2));
    }

    #[test]
    fn client_bound_reasons() {
        let lag = |p90_ms, p99_ms, e2e_p50_ms| Lag {
            p90_ms,
            p99_ms,
            e2e_p50_ms,
            ok: 10,
            ..Lag::default()
        };
        assert!(client_bound(&lag(1.0, 2.0, 10.0), 0.5).is_empty());
        assert_eq!(client_bound(&lag(7.5, 9.0, 10.0), 0.5).len(), 1);
        assert!(client_bound(&lag(1.0, 1.0, 10.0), 0.95)[0].contains("95%"));
        // A tail a little late: a busy host, not a saturated client.
        assert!(client_bound(&lag(1.0, 30.0, 10.0), 0.1).is_empty());
        // A starved runtime, however idle its CPU reads.
        let starved = Lag {
            delay_p90_ms: 40.0,
            ..lag(0.0, 0.0, 300.0)
        };
        assert!(client_bound(&starved, 0.05)[0].starts_with("the agents were starved of CPU"));
        let tail = Lag {
            delay_p99_ms: 51.0,
            delay_p90_ms: 1.0,
            ..lag(0.0, 0.0, 300.0)
        };
        assert!(client_bound(&tail, 0.05)[0].contains("at times"));
        // Nothing succeeded: nothing to understate.
        let refused = Lag { ok: 0, ..starved };
        assert!(client_bound(&refused, 1.0).is_empty());
        // A value just past its limit is shown with the digits that say so.
        assert_eq!(
            client_bound(&lag(5.039, 5.1, 10.0), 0.1),
            ["scheduling lag p90 is 5.04 ms (limit 5 ms): the agents could not send on time"]
        );
        let just = Lag {
            delay_p90_ms: 5.01,
            ..lag(0.0, 0.0, 10.0)
        };
        assert!(
            client_bound(&just, 0.9004)
                == [
                    "the agents were starved of CPU: their runtime ran 5.01 ms late at p90 (limit 5 ms), so the times they took, token gaps first, read long",
                    "an agent used 90.04% of its CPU (limit 90%)"
                ],
            "{:?}",
            client_bound(&just, 0.9004)
        );
        // Against a limit that is 2% of a median of 1 s: 20 ms.
        assert!(
            client_bound(&lag(20.04, 21.0, 1_000.0), 0.1)[0]
                .contains("20.04 ms (limit 20 ms, 2% of the median end to end)")
        );
    }
}
