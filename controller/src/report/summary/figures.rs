//! A summary's figures by name: what thresholds, `compare` and the live
//! abort check read.

use super::Summary;
use crate::figure::{Figure, Scope};

impl Summary {
    /// `figure` where `scope` says; `None` when the run has no such value
    /// (no samples, no such class or step, no objectives).
    pub fn figure(&self, figure: Figure, scope: &Scope) -> Option<f64> {
        let (metrics, throughput, requests, goodput) = match scope {
            Scope::Run => (&self.metrics, &self.throughput, &self.requests, self.goodput),
            Scope::Step(k) => {
                let st = self.steps.get(*k)?;
                (&st.metrics, &st.throughput, &st.requests, st.goodput)
            }
            Scope::Class(name) => {
                let c = self.classes.iter().find(|c| c.class == *name)?;
                return match figure {
                    Figure::Metric(m, stat) => c.metric(m)?.stat(stat),
                    Figure::OutputTokensPerS => Some(c.output_tokens_per_s),
                    Figure::GoodputRatio => c.goodput.filter(|_| c.requests > 0).map(|g| g.ratio),
                    Figure::GoodputOutputTokensPerS => c.goodput.map(|g| g.output_tokens_per_s),
                    _ => None,
                };
            }
            Scope::EveryStep => return None,
        };
        let ended = requests.ok + requests.failed;
        match figure {
            Figure::Metric(m, stat) => metrics.get(m).stat(stat),
            Figure::RequestsPerS => Some(throughput.requests_per_s),
            Figure::OutputTokensPerS => Some(throughput.output_tokens_per_s),
            Figure::ErrorRate => (ended > 0).then_some(requests.error_rate),
            Figure::GoodputRatio => goodput.filter(|_| ended > 0).map(|g| g.ratio),
            Figure::GoodputRequestsPerS => goodput.map(|g| g.requests_per_s),
            Figure::GoodputOutputTokensPerS => goodput.map(|g| g.output_tokens_per_s),
        }
    }
}
