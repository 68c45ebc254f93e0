//! Opening the session: TLS when the URL says `https`, the token in the
//! request metadata, and capped, jittered exponential backoff while the
//! controller is not there yet.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use stampede_proto::pb;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
use tonic::{Code, Streaming};

use super::source_chain;
use crate::{Config, Error};

/// First wait after a failed attempt.
const BACKOFF_START: Duration = Duration::from_millis(100);
/// Longest wait between attempts.
const BACKOFF_CAP: Duration = Duration::from_secs(5);
/// Limit on one connection attempt.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// An open session: messages to the controller go into the sender.
pub(crate) type Opened = (mpsc::Sender<pb::AgentMessage>, Streaming<pb::ControllerMessage>);

/// Longest wait between attempts to resume a broken session: the load
/// may still be running, and its reports wait for the stream.
const REDIAL_CAP: Duration = Duration::from_secs(2);
/// Limit on one attempt to resume, the gRPC handshake included: a
/// controller that accepts connections but does not answer (stopped, or
/// behind a half-open link) is tried again on a fresh connection.
const REDIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// Why one attempt failed.
pub(super) enum Attempt {
    /// Worth trying again: the controller may not be up yet.
    Retry(String),
    /// The controller answered and refused; trying again cannot help.
    Refused(String),
}

fn endpoint(config: &Config) -> Result<Endpoint, Error> {
    let bad = |reason: String| Error::Connect {
        url: config.controller.clone(),
        reason,
    };
    let mut endpoint = Endpoint::from_shared(config.controller.clone())
        .map_err(|e| bad(format!("not a URL: {e}")))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true);
    if config.controller.starts_with("https://") {
        let tls = match &config.ca {
            Some(pem) => ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)),
            None => ClientTlsConfig::new().with_webpki_roots(),
        };
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|e| bad(format!("TLS: {}", source_chain(&e))))?;
    } else if config.ca.is_some() {
        return Err(bad("--ca is given but the controller URL is not https://".to_owned()));
    }
    Ok(endpoint)
}

/// Connects and opens the session, sending `hello` first. Retries until
/// `config.wait` runs out; a refusal is final.
pub(crate) async fn open(config: &Config, hello: pb::Hello, shutdown: &CancellationToken) -> Result<Opened, Error> {
    let endpoint = endpoint(config)?;
    let deadline = Instant::now() + config.wait;
    let mut jitter = Jitter::new(&config.name);
    for attempt in 1u32.. {
        let reason = match try_open(&endpoint, config, &hello).await {
            Ok(opened) => return Ok(opened),
            Err(Attempt::Refused(reason)) => return Err(Error::Refused(reason)),
            Err(Attempt::Retry(reason)) => reason,
        };
        let now = Instant::now();
        if now >= deadline {
            return Err(Error::Connect {
                url: config.controller.clone(),
                reason: format!("gave up after {:?} and {attempt} attempts; last: {reason}", config.wait),
            });
        }
        if attempt == 1 || attempt.is_multiple_of(10) {
            tracing::info!("waiting for the controller at {} ({reason})", config.controller);
        }
        let exp = BACKOFF_START.saturating_mul(1 << attempt.min(16)).min(BACKOFF_CAP);
        let pause = jitter.scale(exp).min(deadline - now);
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = shutdown.cancelled() => return Err(Error::Interrupted),
        }
    }
    unreachable!("the attempt loop only ends by returning")
}

/// Dials the controller again, to resume a session whose stream broke:
/// one attempt at a time, with capped, jittered exponential backoff
/// between them.
pub(super) struct Redial {
    endpoint: Endpoint,
    config: Arc<Config>,
    hello: pb::Hello,
    jitter: Jitter,
    failures: u32,
}

impl Redial {
    /// Resumes with `hello`, which carries the session's `Resume`.
    pub(super) fn new(config: &Config, hello: pb::Hello) -> Result<Redial, Error> {
        Ok(Redial {
            endpoint: endpoint(config)?,
            jitter: Jitter::new(&config.name),
            config: Arc::new(config.clone()),
            hello,
            failures: 0,
        })
    }

    /// One attempt, to run on its own task.
    pub(super) fn attempt(&self) -> impl Future<Output = Result<Opened, Attempt>> + Send + 'static {
        let (endpoint, config, hello) = (self.endpoint.clone(), Arc::clone(&self.config), self.hello.clone());
        async move {
            tokio::time::timeout(REDIAL_TIMEOUT, try_open(&endpoint, &config, &hello))
                .await
                .unwrap_or_else(|_| Err(Attempt::Retry(format!("no answer within {REDIAL_TIMEOUT:?}"))))
        }
    }

    /// How long to wait after a failed attempt.
    pub(super) fn failed(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let exp = BACKOFF_START.saturating_mul(1 << self.failures.min(16)).min(REDIAL_CAP);
        self.jitter.scale(exp)
    }

    /// The stream is open again: the next break starts from the shortest
    /// wait.
    pub(super) fn succeeded(&mut self) {
        self.failures = 0;
    }
}

async fn try_open(endpoint: &Endpoint, config: &Config, hello: &pb::Hello) -> Result<Opened, Attempt> {
    let channel = endpoint.connect().await.map_err(|e| {
        let mut reason = source_chain(&e);
        if reason.contains("certificate") {
            reason.push_str(" (give --ca the authority that signed the controller's certificate)");
        }
        Attempt::Retry(reason)
    })?;
    // The assignment carries the prompt share and, when the run has one,
    // the model's whole tokenizer.json (tens of megabytes for some
    // models): far above tonic's 4 MiB default.
    let mut client = pb::coordinator_client::CoordinatorClient::new(channel)
        .max_decoding_message_size(stampede_proto::MAX_ASSIGNMENT_BYTES);
    let (out, out_rx) = mpsc::channel(1024);
    out.try_send(pb::AgentMessage {
        kind: Some(pb::agent_message::Kind::Hello(hello.clone())),
    })
    .expect("a new channel has room");
    let mut request = tonic::Request::new(ReceiverStream::new(out_rx));
    if let Some(token) = &config.token {
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| Attempt::Refused("the token holds characters not allowed in a header".to_owned()))?;
        request.metadata_mut().insert("authorization", value);
    }
    match client.session(request).await {
        Ok(response) => Ok((out, response.into_inner())),
        Err(status) => match status.code() {
            Code::Unavailable | Code::Unknown | Code::Internal | Code::DeadlineExceeded | Code::Cancelled => {
                // Connected, but no gRPC answer: most often plaintext
                // spoken to a TLS listener.
                let mut reason = status.message().to_owned();
                if let Some(cause) = std::error::Error::source(&status) {
                    reason = format!("{reason}: {}", source_chain(cause));
                }
                if !config.controller.starts_with("https://") {
                    reason.push_str(" (if the controller serves TLS, use an https:// URL)");
                }
                Err(Attempt::Retry(reason))
            }
            _ => Err(Attempt::Refused(status.message().to_owned())),
        },
    }
}

/// Spreads retries of many agents apart: a factor in [0.5, 1.0), different
/// per agent and per attempt.
struct Jitter(u64);

impl Jitter {
    fn new(name: &str) -> Jitter {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Jitter(
            name.bytes()
                .fold(now, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01B3)),
        )
    }

    fn scale(&mut self, d: Duration) -> Duration {
        self.0 = crate::prompts::mix(self.0);
        let unit = (self.0 >> 11) as f64 / (1u64 << 53) as f64;
        d.mul_f64(0.5 + unit / 2.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_half_to_whole() {
        let mut j = Jitter::new("agent-3");
        let d = Duration::from_secs(1);
        for _ in 0..1000 {
            let s = j.scale(d);
            assert!(s >= d / 2 && s < d, "{s:?}");
        }
    }

    #[test]
    fn a_ca_without_https_is_refused_before_any_attempt() {
        let config = Config {
            controller: "http://controller:7000".into(),
            name: "a".into(),
            token: None,
            ca: Some(b"-----BEGIN CERTIFICATE-----".to_vec()),
            wait: Duration::from_secs(1),
            trace: None,
            gpu: false,
            in_process: false,
        };
        let e = endpoint(&config).unwrap_err().to_string();
        assert!(e.contains("not https"), "{e}");
    }
}
