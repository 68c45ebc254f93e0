//! What a run was asked to do, and against what: everything its figures
//! depend on besides what the agents reported. It is the first entry of
//! the run log, so that a run directory describes itself and
//! `controller report` needs neither the profile nor the files it named.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::profile::{Grades, Load, Profile, Request, Slo, Threshold};

/// A run's description.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Spec {
    /// Run identifier, also the results directory's name.
    pub run_id: String,
    /// The profile it came from.
    pub profile: ProfileRef,
    /// The server under test.
    pub target: TargetRef,
    /// The load, after command-line overrides.
    pub load: Load,
    /// Length of one reporting interval.
    pub interval: Duration,
    /// Request parameters.
    pub request: Request,
    /// Where the prompts came from.
    pub prompt_source: String,
    /// What the prompt classes were measured in; absent in runs recorded
    /// before classes were measured in tokens or characters (words then).
    #[serde(default)]
    pub classes_by: Option<crate::dataset::ClassBy>,
    /// The shared prefixes the synthetic prompts were built with, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_prefix: Option<crate::dataset::synthetic::SharedWorkload>,
    /// What the command line changed in the profile, as typed.
    #[serde(default)]
    pub overrides: Vec<String>,
    /// Largest share of failed requests for a passing run.
    pub max_error_rate: f64,
    /// Limits on the run's figures.
    #[serde(default)]
    pub thresholds: Vec<Threshold>,
    /// A client-bound run is reported rather than failed.
    #[serde(default)]
    pub allow_client_bound: bool,
    /// Per-request objectives, when the run has them.
    #[serde(default)]
    pub slo: Option<Slo>,
    /// The bands TTFT and TPOT are graded by.
    #[serde(default)]
    pub grades: Grades,
    /// Users (closed loop) each agent was to run at its peak, by agent
    /// index; its length is the number of agents the run needed.
    pub agents: Vec<u32>,
    /// Where request spans went; `None`: tracing was off.
    pub trace: Option<TraceRef>,
    /// Trace id of the controller's run span.
    pub run_trace_id: String,
    /// The server metrics page scraped, when scraping was on.
    pub server_metrics: Option<String>,
}

/// The profile a run came from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProfileRef {
    /// Its name.
    pub name: String,
    /// Its file, as given.
    pub path: String,
    /// Its seed.
    pub seed: u64,
}

/// The server under test.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TargetRef {
    /// Base URL requests went to.
    pub url: String,
    /// The dialect's name (`openai-chat`, ...).
    pub api: String,
    /// Model name sent.
    pub model: String,
    /// The built-in simulator was the target.
    pub simulated: bool,
    /// The client tokenizer, when agents counted with one.
    pub tokenizer: Option<TokenizerRef>,
}

/// A client tokenizer, by name.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TokenizerRef {
    /// The file as given.
    pub name: String,
    /// Tokens in its vocabulary.
    pub vocab_size: usize,
}

/// Where request spans went.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TraceRef {
    /// The collector URL.
    pub endpoint: String,
    /// `grpc` or `http/protobuf`.
    pub protocol: String,
    /// Share of requests kept by the ratio decision.
    pub sample_ratio: f64,
    /// `service.name` of the spans.
    pub service_name: String,
    /// Trace page of the UI, with `{trace_id}` in place of the id.
    pub ui_url: String,
    /// Base URL of a Jaeger UI, for the link that searches for the run's
    /// traces (`[trace] ui`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ui: Option<String>,
}

impl TraceRef {
    /// The settings of a tracing run.
    pub fn of(c: &stampede_otel::Config) -> TraceRef {
        TraceRef {
            endpoint: c.endpoint.clone(),
            protocol: c.protocol.to_string(),
            sample_ratio: c.sample_ratio,
            service_name: c.service_name.clone(),
            ui_url: c.ui_url.clone(),
            ui: c.ui.clone(),
        }
    }

    /// The UI's page of one trace.
    pub fn link(&self, trace_id: &str) -> String {
        self.ui_url.replace("{trace_id}", trace_id)
    }
}

/// What a run knows besides its profile once it has started.
#[derive(Clone, Debug)]
pub struct Facts<'a> {
    /// Run identifier.
    pub run_id: &'a str,
    /// Base URL requests go to.
    pub target_url: &'a str,
    /// Model name sent.
    pub model: &'a str,
    /// Users each agent runs at its peak.
    pub agents: Vec<u32>,
    /// Where request spans go.
    pub trace: Option<&'a stampede_otel::Config>,
    /// Trace id of the run's span.
    pub run_trace_id: &'a str,
    /// The server metrics page, when scraped.
    pub server_metrics: Option<String>,
}

impl Spec {
    /// The description of `profile` run as `facts` say.
    pub fn new(profile: &Profile, facts: Facts<'_>) -> Spec {
        Spec {
            run_id: facts.run_id.to_owned(),
            profile: ProfileRef {
                name: profile.name.clone(),
                path: profile.path.display().to_string(),
                seed: profile.seed,
            },
            target: TargetRef {
                url: facts.target_url.to_owned(),
                api: profile.target.api.dialect.to_string(),
                model: facts.model.to_owned(),
                simulated: profile.target.url.is_none(),
                tokenizer: profile.target.tokenizer.as_ref().map(|t| TokenizerRef {
                    name: t.name.clone(),
                    vocab_size: t.vocab_size,
                }),
            },
            load: profile.load.clone(),
            interval: profile.report.interval,
            request: profile.request.clone(),
            prompt_source: profile.prompt_source.clone(),
            classes_by: Some(profile.classes_by),
            shared_prefix: profile.shared_prefix,
            overrides: profile.overrides.clone(),
            max_error_rate: profile.thresholds.max_error_rate,
            thresholds: profile.thresholds.list.clone(),
            allow_client_bound: profile.thresholds.allow_client_bound,
            slo: profile.slo.clone(),
            grades: profile.grades,
            agents: facts.agents,
            trace: facts.trace.map(TraceRef::of),
            run_trace_id: facts.run_trace_id.to_owned(),
            server_metrics: facts.server_metrics,
        }
    }

    /// A description for a made-up run of `profile` (tests, benchmarks):
    /// `agents` agents of equal share, the built-in simulator, no tracing.
    pub fn sample(profile: &Profile, run_id: &str, agents: u32) -> Spec {
        let users = (profile.load.peak() as u32).div_ceil(agents.max(1));
        Spec::new(
            profile,
            Facts {
                run_id,
                target_url: "http://127.0.0.1:1",
                model: "llm-sim",
                agents: vec![users; agents as usize],
                trace: None,
                run_trace_id: "0af7651916cd43dd8448eb211c80319c",
                server_metrics: None,
            },
        )
    }

    /// The interval in seconds.
    pub fn interval_s(&self) -> f64 {
        self.interval.as_secs_f64()
    }
}
