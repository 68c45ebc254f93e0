//! The simulator's parameters, shared by the `llm-sim` command line and by
//! programs that embed the simulator.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::faults::FaultRule;

/// How long a generated answer is when the request gives no `max_tokens`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputLength {
    /// Always this many tokens.
    Fixed(u32),
    /// Uniform between the bounds, inclusive, drawn from the seed and the
    /// request so that the same request always gets the same length.
    Uniform {
        /// Fewest tokens.
        min: u32,
        /// Most tokens.
        max: u32,
    },
}

impl FromStr for OutputLength {
    type Err = String;

    /// `"128"` is fixed; `"16..256"` is uniform between 16 and 256.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let positive = |t: &str| match t.trim().parse::<u32>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!("expected a positive token count or MIN..MAX, got {s:?}")),
        };
        match s.split_once("..") {
            None => positive(s).map(OutputLength::Fixed),
            Some((lo, hi)) => {
                let (min, max) = (positive(lo)?, positive(hi)?);
                if min > max {
                    return Err(format!("range {s:?} has MIN above MAX"));
                }
                Ok(OutputLength::Uniform { min, max })
            }
        }
    }
}

impl fmt::Display for OutputLength {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OutputLength::Fixed(n) => write!(f, "{n}"),
            OutputLength::Uniform { min, max } => write!(f, "{min}..{max}"),
        }
    }
}

/// What `POST /generate` answers: TGI's shape, or one of the JSON shapes
/// of home-made Flask and FastAPI servers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GenerateShape {
    /// `{"generated_text", "details": {"generated_tokens", …}}` (TGI).
    #[default]
    Tgi,
    /// `{"generated_text", "inference_time_seconds"}`.
    Seconds,
    /// `{"generated_text", "tokens_generated", "inference_time_ms",
    /// "gpu_name", "gpu_memory_used_gb"}`.
    Millis,
}

impl FromStr for GenerateShape {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "tgi" => Ok(GenerateShape::Tgi),
            "seconds" => Ok(GenerateShape::Seconds),
            "ms" => Ok(GenerateShape::Millis),
            _ => Err(format!("expected tgi, seconds or ms, got {s:?}")),
        }
    }
}

impl fmt::Display for GenerateShape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            GenerateShape::Tgi => "tgi",
            GenerateShape::Seconds => "seconds",
            GenerateShape::Millis => "ms",
        })
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e} (examples: 20ms, 500us, 1s)"))
}

/// The simulated engine. Every timing is deterministic: a request's queue
/// wait depends only on the requests ahead of it, its prefill on its input
/// length, and each decode step on the number of sequences running.
#[derive(Clone, Debug, PartialEq, clap::Args)]
pub struct Config {
    /// Most sequences generating at once (continuous batching). Requests
    /// beyond it wait in a FIFO queue. 1 models a server that handles one
    /// request at a time.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_batch: u32,

    /// Fixed part of the prefill time of every request.
    #[arg(long, default_value = "5ms", value_parser = parse_duration)]
    pub prefill_base: Duration,

    /// Prefill time per input token (input tokens are whitespace-separated
    /// words of the prompt). The first token is emitted when prefill ends.
    #[arg(long, default_value = "200us", value_parser = parse_duration)]
    pub prefill_per_token: Duration,

    /// Decode step time with one sequence running: the gap between tokens.
    #[arg(long, default_value = "20ms", value_parser = parse_duration)]
    pub decode_step: Duration,

    /// Extra decode step time per additional running sequence: with `b`
    /// sequences running a step takes `decode_step + (b - 1) * this`.
    #[arg(long, default_value = "500us", value_parser = parse_duration)]
    pub decode_step_per_seq: Duration,

    /// Part of each decode step spent off the accelerator (scheduling,
    /// sampling, detokenizing, writing the answer): the engine counts as
    /// busy only for the rest. With one sequence at a time, a large share
    /// leaves the accelerator idle while requests wait.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    pub step_overhead: Duration,

    /// Model load time before the first request can prefill (a cold
    /// start, as Ollama's `load_duration` reports it).
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    pub load_time: Duration,

    /// KV cache of this many token slots. A sequence holds a slot for
    /// each prompt token and each token generated; a request waits for room
    /// to be admitted, and a sequence that finds no room to grow preempts
    /// the newest one, which gives up its slots and is recomputed when
    /// room returns (as vLLM does). Cache use and preemptions are exported
    /// under vLLM's names. Without it the cache never fills.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub kv_cache_tokens: Option<u32>,

    /// Prefix cache of this many blocks of `--prefix-block-tokens` prompt
    /// tokens, kept after their request is done (vLLM's automatic prefix
    /// caching): a prompt's leading blocks found cached skip their
    /// prefill, which is priced on the other tokens only. A block is named
    /// by a hash chain of the prompt's tokens, so it matches only when
    /// every block before it does; the last prompt token is always
    /// computed; the least recently used block is evicted. Counted under
    /// vLLM's `vllm:prefix_cache_queries_total` and
    /// `vllm:prefix_cache_hits_total`, and answered in the OpenAI usage's
    /// `prompt_tokens_details.cached_tokens`. 0 turns it off.
    #[arg(long, default_value_t = 0)]
    pub prefix_cache_blocks: u32,

    /// Prompt tokens per prefix-cache block.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    pub prefix_block_tokens: u32,

    /// Also expose the accelerator under the NVIDIA DCGM exporter's metric
    /// names, as a GPU node would: utilisation (`DCGM_FI_DEV_GPU_UTIL`),
    /// memory-bandwidth and compute activity (`DCGM_FI_PROF_DRAM_ACTIVE`,
    /// `DCGM_FI_PROF_SM_ACTIVE`), framebuffer use (`DCGM_FI_DEV_FB_USED`,
    /// `DCGM_FI_DEV_FB_FREE`) and power (`DCGM_FI_DEV_POWER_USAGE`).
    /// Utilisation and activity cover the time since the page was last
    /// read, as DCGM's cover its sampling period.
    #[arg(long)]
    pub dcgm: bool,

    /// Tokens per streamed event: after the first token, which goes out
    /// alone as soon as it is made, a streamed answer's tokens go out this
    /// many at a time, an event when its last token is made (the answer's
    /// last event may carry fewer), as vLLM's server does when it falls
    /// behind its engine. Every streamed dialect but TGI's
    /// `/generate_stream`, whose events are a token each by definition,
    /// follows it.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub tokens_per_event: u32,

    /// Send an event without text before every N-th text event after the
    /// first, half a decode step ahead of it: an empty-content chunk in
    /// the OpenAI dialects (as vLLM sends), a line with an empty response
    /// for Ollama. TGI and the other native streams send none.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub empty_events: Option<u32>,

    /// Answer length when a request sets no `max_tokens`: `N` or `MIN..MAX`.
    #[arg(long, default_value = "16..256")]
    pub output_tokens: OutputLength,

    /// Model name listed by `/v1/models`.
    #[arg(long, default_value = "llm-sim")]
    pub model: String,

    /// Seed for answer lengths, their text and which requests get faults.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,

    /// What `POST /generate` answers: TGI's JSON (`tgi`), or a home-made
    /// server's `{"generated_text", "inference_time_seconds"}` (`seconds`)
    /// or `{"generated_text", "tokens_generated", "inference_time_ms",
    /// "gpu_name", "gpu_memory_used_gb"}` (`ms`).
    #[arg(long, default_value = "tgi")]
    pub generate_shape: GenerateShape,

    /// Inject a fault into a share of requests, to rehearse dashboards,
    /// thresholds and alerts; repeat for several. KIND=RATE[,KEY=VALUE…],
    /// the rates adding up to 1 at most. Kinds: an HTTP status such as
    /// `500=0.02`, `503=0.01` or `429=0.05` (answered at once; a 429 says
    /// `Retry-After: 1`, or `retry-after=SECONDS`); `slow-headers=R,for=2s`
    /// (the status line and headers held back); `stall=R,for=5s[,after=N]`
    /// (nothing sent for that long after the headers, or after N events);
    /// `malformed=R[,after=N]` (an event, or a whole answer, whose JSON is
    /// cut short); `reset=R[,after=N]` (the connection closed abruptly after
    /// N events, with no end marker); `endless=R` (events never stop). Which
    /// request gets which fault follows from --seed and the request. Each
    /// is counted in `llmsim_faults_total{kind=…}`.
    #[arg(long = "fault", value_name = "KIND=RATE[,KEY=VALUE]")]
    pub faults: Vec<FaultRule>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_batch: 16,
            prefill_base: Duration::from_millis(5),
            prefill_per_token: Duration::from_micros(200),
            decode_step: Duration::from_millis(20),
            decode_step_per_seq: Duration::from_micros(500),
            step_overhead: Duration::ZERO,
            load_time: Duration::ZERO,
            kv_cache_tokens: None,
            prefix_cache_blocks: 0,
            prefix_block_tokens: 16,
            dcgm: false,
            tokens_per_event: 1,
            empty_events: None,
            output_tokens: OutputLength::Uniform { min: 16, max: 256 },
            model: "llm-sim".to_owned(),
            seed: 0,
            generate_shape: GenerateShape::Tgi,
            faults: Vec::new(),
        }
    }
}

impl Config {
    /// Prefill time of a request with this many input tokens.
    pub fn prefill(&self, input_tokens: u32) -> Duration {
        self.prefill_base + self.prefill_per_token * input_tokens
    }

    /// Decode step time with `running` sequences in the batch.
    pub fn step(&self, running: u32) -> Duration {
        self.decode_step + self.decode_step_per_seq * running.saturating_sub(1)
    }

    /// The accelerator's part of a step of length `step`.
    pub fn compute(&self, step: Duration) -> Duration {
        step.saturating_sub(self.step_overhead)
    }

    /// Checks what the flags cannot: the overhead is part of a step, and
    /// each request gets one fault at most.
    pub fn check(&self) -> Result<(), String> {
        crate::faults::check(&self.faults)?;
        if self.step_overhead >= self.decode_step {
            return Err(format!(
                "the step overhead ({:?}) must be shorter than the decode step ({:?}), of which it is a part",
                self.step_overhead, self.decode_step
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_lengths_parse() {
        assert_eq!("64".parse(), Ok(OutputLength::Fixed(64)));
        assert_eq!("8..32".parse(), Ok(OutputLength::Uniform { min: 8, max: 32 }));
        assert!("0".parse::<OutputLength>().is_err());
        assert!("32..8".parse::<OutputLength>().is_err());
        assert!("many".parse::<OutputLength>().is_err());
    }

    #[test]
    fn prefill_is_proportional_and_step_grows_with_batch() {
        let c = Config {
            prefill_base: Duration::from_millis(10),
            prefill_per_token: Duration::from_millis(1),
            decode_step: Duration::from_millis(20),
            decode_step_per_seq: Duration::from_millis(2),
            ..Config::default()
        };
        assert_eq!(c.prefill(100), Duration::from_millis(110));
        assert_eq!(c.step(1), Duration::from_millis(20));
        assert_eq!(c.step(5), Duration::from_millis(28));
        assert_eq!(c.step(0), Duration::from_millis(20));
    }
}
