//! The stampede controller: reads a load profile, splits it across agents,
//! merges what they report exactly, and writes the results.
//!
//! The data path reads from the module list: [`profile`] → [`plan`] →
//! [`coordinator`] (agents' sessions) → [`results`] (the run log and what
//! it adds up to, through [`merge`]) → [`report`]; [`run`] puts them
//! together for one run, and `controller report` rebuilds a run's
//! [`report`] from its [`results`] alone. [`server`] scrapes the server's
//! own metrics and [`findings`] says where the time went.

pub mod analysis;
pub mod compare;
mod control;
pub mod coordinator;
pub mod dataset;
pub mod figure;
pub mod findings;
pub mod merge;
pub mod plan;
mod port;
pub mod profile;
pub mod report;
pub mod results;
pub mod run;
pub mod server;
pub mod stats;
mod trace;

pub use run::{Agents, Finished, Interrupt, Listen, Options, RunError, run};
