//! Reading the numbers: where the server saturates (the knee), whether
//! the client, not the server, was the limit, and the findings a run's
//! figures support ([`findings::draw`]).

pub mod findings;

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
     while TTFT p95 has grown past twice its value at the lowest load";

/// The knee: the index of the lowest load at which throughput has reached
/// 90 % of its maximum while TTFT p95 has grown past twice its value at the
/// lowest load. `None` when no level saturated (the server kept up), or
/// with fewer than two levels.
pub fn knee(levels: &[Level]) -> Option<usize> {
    if levels.len() < 2 {
        return None;
    }
    let mut order: Vec<usize> = (0..levels.len()).collect();
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

/// Why the results may understate the server, if they do: the agents'
/// scheduling lag p99 over the run, and the busiest agent's mean CPU.
pub fn client_bound(lag_p99_ms: f64, cpu_max: f64) -> Vec<String> {
    let mut reasons = Vec::new();
    if lag_p99_ms > LAG_LIMIT_MS {
        reasons.push(format!(
            "scheduling lag p99 is {lag_p99_ms:.1} ms (limit {LAG_LIMIT_MS} ms): the agents could not send on time"
        ));
    }
    if cpu_max > CPU_LIMIT {
        reasons.push(format!(
            "an agent used {:.0}% of its CPU (limit {:.0}%)",
            cpu_max * 100.0,
            CPU_LIMIT * 100.0
        ));
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
    fn levels_are_read_in_order_of_load() {
        let levels = [level(16.0, 8.0, 900.0), level(1.0, 1.0, 100.0), level(8.0, 8.0, 250.0)];
        assert_eq!(knee(&levels), Some(2));
    }

    #[test]
    fn client_bound_reasons() {
        assert!(client_bound(1.0, 0.5).is_empty());
        assert_eq!(client_bound(7.5, 0.5).len(), 1);
        assert!(client_bound(1.0, 0.95)[0].contains("95%"));
    }
}
