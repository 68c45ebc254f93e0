//! Server dialects: each turns a prompt into a request and the server's
//! bytes into token events.

use std::fmt;
use std::str::FromStr;

mod openai;

/// A server dialect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// OpenAI chat completions, `POST /v1/chat/completions`.
    OpenAiChat,
}

impl Dialect {
    /// Every dialect this build speaks.
    pub const ALL: [Dialect; 1] = [Dialect::OpenAiChat];

    /// The name used in profiles and in capabilities.
    pub fn name(self) -> &'static str {
        match self {
            Dialect::OpenAiChat => "openai-chat",
        }
    }

    /// Path of the generation endpoint, below the target's base URL.
    pub fn path(self) -> &'static str {
        match self {
            Dialect::OpenAiChat => openai::PATH,
        }
    }

    /// The JSON body of one request.
    pub fn body(self, model: &str, prompt: &str, spec: &Spec) -> Vec<u8> {
        match self {
            Dialect::OpenAiChat => openai::body(model, prompt, spec),
        }
    }

    /// How a streamed response is framed.
    pub fn framing(self) -> Framing {
        match self {
            Dialect::OpenAiChat => Framing::Sse,
        }
    }

    /// Parses one streamed event's data.
    pub fn event(self, data: &[u8]) -> Parsed {
        match self {
            Dialect::OpenAiChat => openai::event(data),
        }
    }

    /// Parses a whole, non-streamed response body.
    pub fn whole(self, body: &[u8]) -> Parsed {
        match self {
            Dialect::OpenAiChat => openai::whole(body),
        }
    }
}

impl fmt::Display for Dialect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Dialect {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Dialect::ALL.into_iter().find(|d| d.name() == s).ok_or_else(|| {
            let known: Vec<_> = Dialect::ALL.iter().map(|d| d.name()).collect();
            format!("unknown api {s:?}; this build speaks {}", known.join(", "))
        })
    }
}

/// How a streamed response body is cut into events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// Server-Sent Events (`data: …` blocks).
    Sse,
}

/// The generation parameters of each request.
#[derive(Clone, Debug, PartialEq)]
pub struct Spec {
    /// Upper bound on output tokens, when set.
    pub max_tokens: Option<u32>,
    /// Sampling temperature, when set.
    pub temperature: Option<f64>,
    /// Stream the answer token by token.
    pub stream: bool,
}

/// Token counts the server reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Usage {
    /// Prompt tokens, when reported.
    pub input_tokens: Option<u64>,
    /// Generated tokens.
    pub output_tokens: u64,
}

/// Why the server ended an answer: `gen_ai.response.finish_reasons` of the
/// request's span.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    /// A natural end or a stop sequence.
    Stop,
    /// The token limit.
    Length,
    /// The server's content filter.
    ContentFilter,
    /// The model called a tool.
    ToolCalls,
    /// A reason this client does not know.
    Other,
    /// Complete, with no reason given.
    Unstated,
}

impl Finish {
    /// From the OpenAI `finish_reason` value.
    pub fn from_openai(reason: &str) -> Finish {
        match reason {
            "stop" | "eos" | "stop_sequence" => Finish::Stop,
            "length" | "max_tokens" => Finish::Length,
            "content_filter" => Finish::ContentFilter,
            "tool_calls" | "function_call" => Finish::ToolCalls,
            _ => Finish::Other,
        }
    }

    /// The OpenTelemetry GenAI name; `None` when no reason was given.
    pub fn name(self) -> Option<&'static str> {
        Some(match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
            Finish::ContentFilter => "content_filter",
            Finish::ToolCalls => "tool_calls",
            Finish::Other => "other",
            Finish::Unstated => return None,
        })
    }
}

/// What one event (or one whole response) says.
#[derive(Debug)]
pub enum Parsed {
    /// A chunk of the answer.
    Chunk {
        /// Events in this chunk that carry generated text.
        content_events: u32,
        /// The server says the answer is complete, and why.
        finished: Option<Finish>,
        /// Token counts, when the chunk carries them.
        usage: Option<Usage>,
    },
    /// The stream's explicit end (`data: [DONE]`).
    Done,
    /// The server reported an error inside a successful response.
    ServerError(String),
    /// The bytes do not follow the dialect.
    Malformed(String),
}
