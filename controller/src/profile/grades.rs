//! `[grades]`: the bands that label TTFT and TPOT good, acceptable or
//! poor. A grade is a label for people, never a verdict: thresholds decide
//! exit codes.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::doc::{Problems, Table};
use crate::figure::Stat;

/// Where a metric's grade changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Band {
    /// Good under this.
    pub good: Duration,
    /// Acceptable under this; poor from it on.
    pub acceptable: Duration,
}

/// A label for a figure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Grade {
    /// Under the good bound.
    Good,
    /// Under the acceptable bound.
    Acceptable,
    /// At or above the acceptable bound.
    Poor,
}

impl Grade {
    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Grade::Good => "good",
            Grade::Acceptable => "acceptable",
            Grade::Poor => "poor",
        }
    }
}

impl Band {
    /// The grade of `ms` milliseconds.
    pub fn grade(&self, ms: f64) -> Grade {
        let bound = |d: Duration| d.as_secs_f64() * 1e3;
        if ms < bound(self.good) {
            Grade::Good
        } else if ms < bound(self.acceptable) {
            Grade::Acceptable
        } else {
            Grade::Poor
        }
    }
}

/// The `[grades]` table.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Grades {
    /// The statistic graded: `p95` unless the profile says otherwise.
    #[serde(with = "stat_name")]
    pub statistic: Stat,
    /// Time to first token.
    pub ttft: Band,
    /// Time per output token.
    pub tpot: Band,
}

impl Default for Grades {
    /// TTFT good under 500 ms and acceptable under 1 s; TPOT good under
    /// 50 ms and acceptable under 100 ms; both on the 95th percentile.
    fn default() -> Self {
        Grades {
            statistic: Stat::P95,
            ttft: Band {
                good: Duration::from_millis(500),
                acceptable: Duration::from_secs(1),
            },
            tpot: Band {
                good: Duration::from_millis(50),
                acceptable: Duration::from_millis(100),
            },
        }
    }
}

/// A statistic as its name in the run description.
mod stat_name {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::figure::Stat;

    pub(super) fn serialize<S: Serializer>(stat: &Stat, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(stat.name())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Stat, D::Error> {
        let name = String::deserialize(d)?;
        Stat::parse(&name).ok_or_else(|| serde::de::Error::custom(format!("no statistic {name:?}")))
    }
}

/// Reads one band, `{ good = "500ms", acceptable = "1s" }`, over `default`.
fn band(t: &mut Table<'_, '_>, p: &mut Problems<'_>, key: &'static str, default: Band) -> Band {
    let span = t.span_of(key);
    let path = t.path_of(key);
    let mut inner = t.table(p, key);
    let good = inner.duration(p, "good", false);
    let acceptable = inner.duration(p, "acceptable", false);
    inner.finish(p);
    let band = Band {
        good: good.unwrap_or(default.good),
        acceptable: acceptable.unwrap_or(default.acceptable),
    };
    if band.acceptable <= band.good {
        p.at(
            span,
            &path,
            format!(
                "good must be under acceptable: good under {:?}, acceptable under {:?}",
                band.good, band.acceptable
            ),
        );
    }
    band
}

/// Reads `[grades]`; absent, the default bands.
pub(super) fn grades(t: &mut Table<'_, '_>, p: &mut Problems<'_>) -> Grades {
    let defaults = Grades::default();
    let statistic = match t.string(p, "statistic") {
        None => defaults.statistic,
        Some(name) => match Stat::parse(&name) {
            Some(Stat::Max) | None => {
                p.at(
                    t.span_of("statistic"),
                    &t.path_of("statistic"),
                    format!("expected one of mean, p50, p90, p95, p99 and p99.9, got {name:?}"),
                );
                defaults.statistic
            }
            Some(stat) => stat,
        },
    };
    Grades {
        statistic,
        ttft: band(t, p, "ttft", defaults.ttft),
        tpot: band(t, p, "tpot", defaults.tpot),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_bands_are_the_seeds() {
        let g = Grades::default();
        assert_eq!(g.ttft.grade(499.9), Grade::Good);
        assert_eq!(g.ttft.grade(500.0), Grade::Acceptable);
        assert_eq!(g.ttft.grade(999.0), Grade::Acceptable);
        assert_eq!(g.ttft.grade(1_000.0), Grade::Poor);
        assert_eq!(g.tpot.grade(20.0), Grade::Good);
        assert_eq!(g.tpot.grade(75.0), Grade::Acceptable);
        assert_eq!(g.tpot.grade(150.0), Grade::Poor);
    }

    #[test]
    fn grades_travel_in_the_run_description() {
        let g = Grades {
            statistic: Stat::P99,
            ..Grades::default()
        };
        let json = serde_json::to_string(&g).unwrap();
        assert!(json.contains("\"statistic\":\"p99\""), "{json}");
        assert_eq!(serde_json::from_str::<Grades>(&json).unwrap(), g);
    }
}
