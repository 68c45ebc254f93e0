//! The results model, the one path from what happened to what is shown:
//!
//! - [`spec`]: what the run was asked to do, and against what;
//! - [`log`]: everything that happened, one entry at a time, written to
//!   the run directory as it happens;
//! - [`ledger`]: what those entries add up to ([`Collected`]: the merged
//!   histograms per interval, per step, per class and per agent).
//!
//! A running controller feeds the ledger live; [`load`] feeds the same
//! ledger from a run directory. The summary, the report, the CSV files
//! and `compare` are all built from a [`Run`], so a rebuilt run and the
//! original cannot disagree.

pub mod ledger;
pub mod log;
pub mod spec;

use std::path::{Path, PathBuf};

pub use ledger::{AgentEnd, AgentRecord, ClassTotals, Collected, Exemplar, GpuFigure, Ledger};
pub use spec::Spec;

use crate::server::spans::{self, ServerSpans};
use crate::server::{Series, scrapes};

/// A run's results, as a run ends or as read back from its directory.
pub struct Run {
    /// What it was asked to do.
    pub spec: Spec,
    /// What it collected.
    pub collected: Collected,
    /// The server's own metrics, when they were scraped.
    pub series: Option<Series>,
    /// The server's queue time per request, from its spans, when the run
    /// read them back from the trace store.
    pub spans: Option<ServerSpans>,
}

/// A run read back from its directory, with what the files lacked.
pub struct Loaded {
    /// The run.
    pub run: Run,
    /// What could not be rebuilt as the run had it, in words.
    pub notes: Vec<String>,
}

/// Why a run directory cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The directory holds no run log.
    #[error("{dir} holds no {file}: is it a run's results directory (results/<run-id>/)?", file = log::FILE)]
    NotARun {
        /// The directory.
        dir: PathBuf,
    },
    /// The run log cannot be read.
    #[error(transparent)]
    Log(#[from] log::ReadError),
    /// The server's metrics or spans cannot be read.
    #[error("{0}")]
    Scrapes(String),
}

/// Reads the run in `dir`: its log replayed through a [`Ledger`], and the
/// server's scrapes.
pub fn load(dir: &Path) -> Result<Loaded, LoadError> {
    load_with(dir, |_, _| {})
}

/// [`load`], showing `visit` what each entry did in the ledger (a report
/// taken in comes decoded).
pub fn load_with(dir: &Path, mut visit: impl FnMut(&Spec, &ledger::Effect)) -> Result<Loaded, LoadError> {
    let path = dir.join(log::FILE);
    if !path.is_file() {
        return Err(LoadError::NotARun { dir: dir.to_owned() });
    }
    let (spec, entries) = log::read(&path)?;
    let mut ledger = Ledger::new(&spec, None);
    for entry in entries {
        let effect = ledger.apply(entry);
        visit(&spec, &effect);
    }
    let mut notes = Vec::new();
    if !ledger.closed() {
        notes.push(format!(
            "{} ends before the run was closed (the controller stopped mid-run): the figures cover what it logged",
            path.display()
        ));
    }
    let series = match &spec.server_metrics {
        None => None,
        Some(url) => {
            let path = dir.join(scrapes::FILE);
            if path.is_file() {
                Some(scrapes::read(&path, url).map_err(LoadError::Scrapes)?)
            } else {
                notes.push(format!(
                    "{} is missing: the server's figures are left out",
                    path.display()
                ));
                None
            }
        }
    };
    let path = dir.join(spans::FILE);
    let spans = if path.is_file() {
        Some(ServerSpans::read(&path).map_err(LoadError::Scrapes)?)
    } else {
        None
    };
    Ok(Loaded {
        run: Run {
            spec,
            collected: ledger.into_collected(),
            series,
            spans,
        },
        notes,
    })
}

#[cfg(test)]
mod tests;
