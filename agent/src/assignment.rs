//! An assignment from the controller, checked and turned into what the
//! agent runs.

use std::sync::Arc;
use std::time::Duration;

use stampede_proto::pb;

use crate::api::{Dialect, Spec};
use crate::exec::Executor;
use crate::http::Endpoint;
use crate::load::users::Users;
use crate::prompts::Prompts;

/// This agent's part of a run, validated.
#[derive(Debug)]
pub struct Plan {
    /// Identifier of the run.
    pub run_id: String,
    /// This agent's position among the run's agents.
    pub agent_index: u32,
    /// Runs the requests.
    pub executor: Arc<Executor>,
    /// The closed-loop users.
    pub users: Users,
    /// The prompt share.
    pub prompts: Arc<Prompts>,
    /// How long to issue new requests.
    pub duration: Duration,
    /// How long in-flight requests may finish after that.
    pub drain: Duration,
    /// Reporting interval.
    pub interval: Duration,
}

impl Plan {
    /// Checks an assignment. The error says what is wrong, for the
    /// controller's operator.
    pub fn from_wire(a: pb::Assignment) -> Result<Plan, String> {
        let target = a.target.ok_or("the assignment has no target")?;
        let dialect: Dialect = target.api.parse()?;
        let endpoint = Endpoint::parse(&target.url).map_err(|e| e.to_string())?;
        let request = a.request.unwrap_or_default();
        let users = match a.load {
            Some(pb::assignment::Load::Users(u)) => Users {
                count: u.users,
                first_user: u.first_user,
                seed: a.seed,
            },
            None => return Err("the assignment has no load".to_owned()),
        };
        let prompts = a.prompts.unwrap_or_default();
        if users.count > 0 && prompts.prompts.is_empty() {
            return Err("the assignment has users but no prompts".to_owned());
        }
        let positive = |ms: u64, what: &str| {
            if ms == 0 {
                Err(format!("the assignment's {what} is zero"))
            } else {
                Ok(Duration::from_millis(ms))
            }
        };
        Ok(Plan {
            run_id: a.run_id,
            agent_index: a.agent_index,
            executor: Arc::new(Executor {
                endpoint,
                dialect,
                model: target.model,
                spec: Spec {
                    max_tokens: request.max_tokens,
                    temperature: request.temperature,
                    stream: request.stream,
                },
                timeout: positive(target.timeout_ms, "request timeout")?,
            }),
            users,
            prompts: Arc::new(Prompts::new(prompts.prompts.into_iter().map(|p| p.text).collect())),
            duration: positive(a.duration_ms, "duration")?,
            drain: Duration::from_millis(a.drain_ms),
            interval: positive(a.interval_ms, "report interval")?,
        })
    }
}
