//! Prompt datasets: the built-in sets, inline lists, JSONL and ShareGPT
//! files ([`file`]) and synthetic prompts of chosen token lengths
//! ([`synthetic`]).
//!
//! Built-in sets come in three sizes, like the classes of a capacity study:
//! `short` (a question, about 10–25 words), `medium` (one passage and a
//! task, about 90–140 words) and `long` (several passages and a task, about
//! 400–650 words). `mixed` interleaves the three so that any contiguous
//! share of it holds every class.
//!
//! File and synthetic prompts are put in the same three classes by their
//! length ([`class_of`]): in tokens when the run knows a tokenizer, else in
//! characters. Characters rather than words: a word count depends on how
//! the text was split (synthetic prompts of one token length differ in
//! words), and characters are what a tokenizer's count follows most
//! closely without one, about four to a token in English. The class is a
//! function of the text, so identical prompts always share a class.

pub mod file;
pub mod synthetic;

use serde::{Deserialize, Serialize};

/// What prompt lengths are measured in when the controller puts prompts in
/// classes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ClassBy {
    /// Tokens of the run's tokenizer (the target's, or the synthetic
    /// prompts' own), special tokens left out.
    Tokens,
    /// Unicode characters, when the run has no tokenizer.
    Characters,
    /// Whitespace-separated words: runs recorded before classes were
    /// measured in tokens or characters.
    Words,
}

impl ClassBy {
    /// The upper bounds of `short` and `medium`, inclusive, in this unit;
    /// `long` is beyond.
    pub fn bounds(self) -> (usize, usize) {
        match self {
            // A question is under 100 tokens; a passage and its task under
            // 500; a document beyond. The built-in sets (12–35, 120–200
            // and 530–870 tokens with common BPE tokenizers) sit well
            // inside.
            ClassBy::Tokens => (100, 500),
            // About four characters to a token.
            ClassBy::Characters => (400, 2_000),
            ClassBy::Words => (50, 300),
        }
    }

    /// The rule in words, for the summary and the terminal.
    pub fn rule(self) -> String {
        let (short, medium) = self.bounds();
        let unit = match self {
            ClassBy::Tokens => "tokens",
            ClassBy::Characters => "characters",
            ClassBy::Words => "words",
        };
        format!("short up to {short} {unit}, medium up to {medium}, long beyond")
    }
}

/// The class of a prompt `length` long in `by`'s unit.
pub fn class_of(length: usize, by: ClassBy) -> &'static str {
    let (short, medium) = by.bounds();
    if length <= short {
        "short"
    } else if length <= medium {
        "medium"
    } else {
        "long"
    }
}

/// Puts every prompt that has no class yet (an empty label) in its class,
/// measured with `counter`: in tokens when it holds a tokenizer, else in
/// characters. Returns the measure.
pub fn classify(prompts: &mut [Prompt], counter: &synthetic::Counter) -> Result<ClassBy, String> {
    let by = if counter.is_tokenizer() {
        ClassBy::Tokens
    } else {
        ClassBy::Characters
    };
    for p in prompts.iter_mut().filter(|p| p.class.is_empty()) {
        let length = match by {
            ClassBy::Tokens => counter.count(&p.text)?,
            _ => p.text.chars().count(),
        };
        p.class = class_of(length, by).to_owned();
    }
    Ok(by)
}

/// One prompt and its class label.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prompt {
    /// The user message.
    pub text: String,
    /// Class label for breakdowns, such as `short`.
    pub class: String,
    /// Its own output-token limit, when the dataset gives one.
    pub max_tokens: Option<u32>,
    /// Sessions only: the conversation's system prompt.
    pub system: Option<String>,
    /// Sessions only: the conversation's user turns after the first
    /// (`text`), in order.
    pub turns: Vec<String>,
}

impl Prompt {
    /// A single-turn prompt.
    pub fn single(text: String, class: String, max_tokens: Option<u32>) -> Prompt {
        Prompt {
            text,
            class,
            max_tokens,
            system: None,
            turns: Vec::new(),
        }
    }
}

/// Shuffles `prompts` reproducibly from `seed` (Fisher–Yates with
/// SplitMix64), so that every agent's contiguous share is a fair sample
/// and the same seed gives the same shares.
pub fn shuffle(prompts: &mut [Prompt], seed: u64) {
    let mut state = seed;
    for i in (1..prompts.len()).rev() {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let j = (crate::plan::mix(state) % (i as u64 + 1)) as usize;
        prompts.swap(i, j);
    }
}

/// Names of the built-in sets.
pub const BUILTIN: [&str; 4] = ["short", "medium", "long", "mixed"];

const QUESTIONS: [&str; 16] = [
    "What is the difference between latency and throughput in a web service?",
    "Explain in two sentences why a hash table lookup is usually constant time.",
    "Name three reasons a database query can suddenly become slow.",
    "How does a load balancer decide which server receives the next request?",
    "Why do operating systems use virtual memory instead of physical addresses directly?",
    "What does a compiler's register allocator do, in plain words?",
    "Give a short definition of backpressure in a streaming system.",
    "Why is it hard to measure tail latency with averages?",
    "What problem does a write-ahead log solve in a storage engine?",
    "Describe what a content delivery network caches and why.",
    "What is the purpose of a circuit breaker in a distributed system?",
    "How is a mutex different from a semaphore?",
    "Why do batch jobs often run faster with larger input files?",
    "What does it mean for an API to be idempotent?",
    "Explain what a cold start is for a serverless function.",
    "Why might adding more threads make a program slower?",
];

const PASSAGES: [&str; 10] = [
    "A restaurant kitchen on a busy evening behaves much like a server under load. Orders arrive at an uneven pace, the cooks can only work on so many plates at once, and every dish passes through the same few stations. When the grill is the slowest station, tickets pile up in front of it while the salad station stands idle. Adding a second salad cook does nothing for the waiting guests; only relieving the grill shortens the wait. Experienced chefs watch the queue of tickets rather than the speed of any single cook.",
    "Early telephone exchanges were sized with queueing mathematics developed by Agner Erlang. He modelled calls arriving at random and holding a line for a random time, and asked how many lines were needed so that only a small share of callers heard a busy signal. His formulas showed that utilisation and waiting time are not linear: a switchboard that is busy eighty percent of the time makes callers wait far longer than one that is busy sixty percent, even though the difference in load looks modest.",
    "A modern language model server keeps the weights of the model in accelerator memory and streams requests through them. Each request first processes its whole prompt, a phase that is limited by arithmetic throughput, and then produces one token at a time, a phase that is limited by how fast memory can be read. Because reading the weights dominates the decode phase, serving many sequences together costs little more than serving one, which is why batching matters so much for cost.",
    "Continuous batching changes the unit of scheduling from the request to the step. Instead of waiting for a whole batch of requests to finish before admitting new ones, the scheduler adds and removes sequences at every decoding step. Short answers leave early and free their slot for a waiting request, so the accelerator rarely idles. The price is bookkeeping: the server must track which memory pages belong to which sequence and reclaim them as soon as a sequence ends.",
    "Measuring a system from the outside requires care about what is being timed. A client that waits for each response before sending the next request will slow down exactly when the server does, and so it will under-sample the bad moments. This effect, often called coordinated omission, makes percentiles look healthier than what real users experience. Open-loop load, where requests are sent on a schedule regardless of responses, avoids it at the cost of possibly overwhelming the server.",
    "Histograms with logarithmic buckets keep a fixed relative precision across many orders of magnitude. A value of two milliseconds and a value of two seconds are both stored to within a tenth of a percent, while the memory used stays constant no matter how many samples arrive. Two such histograms can be added bucket by bucket, which makes it possible to merge measurements from many machines exactly, something that cannot be done with pre-computed percentiles.",
    "River engineers distinguish between the capacity of a channel and the flow it actually carries. A channel can carry its full capacity only when water arrives steadily; bursts cause local flooding even when the average flow is well within limits. Reservoirs smooth the bursts by storing water and releasing it gradually, trading delay for stability. The same trade appears in computer networks, where buffers absorb bursts but add waiting time to every packet that passes through them.",
    "Graphics processors were designed to run the same small program over millions of pixels at once. That design suits the dense matrix arithmetic of neural networks, but it rewards large, regular batches of work. A processor that receives one small request at a time spends most of its cycles waiting for memory and for the host to launch the next kernel. Utilisation counters can report the device as busy even then, because they measure whether any kernel is running, not how much of the chip it uses.",
    "Distributed tracing follows a single request as it crosses process boundaries. Each service records a span with a start time, a duration and a reference to its parent, and the spans are joined afterwards by a shared trace identifier. A trace makes visible where the time went: waiting in a queue, calling a database, or computing a response. Sampling keeps the volume manageable, but a careful system always keeps the traces of failed and unusually slow requests, since those are the ones people look for.",
    "Capacity planning asks how much load a system can take before it stops meeting its goals. The usual method is to raise the load step by step and watch both throughput and latency. At first throughput rises in proportion to the load while latency stays flat. Past a certain point, the knee, throughput levels off and latency climbs steeply, because requests start to queue. Operating just below the knee gives the best balance between cost and responsiveness.",
];

const TASKS: [&str; 5] = [
    "Summarise the passage above in three sentences.",
    "List the main claims of the passage above as short bullet points.",
    "Explain the passage above to a new engineer on the team, in plain words.",
    "Write two questions that test whether a reader understood the passage above, with answers.",
    "Relate the passage above to the behaviour of a web service under heavy load.",
];

fn short() -> Vec<Prompt> {
    QUESTIONS
        .iter()
        .map(|q| Prompt {
            text: (*q).to_owned(),
            class: "short".to_owned(),
            max_tokens: None,
            system: None,
            turns: Vec::new(),
        })
        .collect()
}

fn medium() -> Vec<Prompt> {
    PASSAGES
        .iter()
        .enumerate()
        .map(|(i, passage)| Prompt {
            text: format!("{passage}\n\n{}", TASKS[i % TASKS.len()]),
            class: "medium".to_owned(),
            max_tokens: None,
            system: None,
            turns: Vec::new(),
        })
        .collect()
}

fn long() -> Vec<Prompt> {
    // Each long prompt joins five consecutive passages, starting at a
    // different one, so all ten are distinct.
    (0..PASSAGES.len())
        .map(|start| {
            let context: Vec<&str> = (0..5).map(|k| PASSAGES[(start + k) % PASSAGES.len()]).collect();
            Prompt {
                text: format!("{}\n\n{}", context.join("\n\n"), TASKS[(start + 2) % TASKS.len()]),
                class: "long".to_owned(),
                max_tokens: None,
                system: None,
                turns: Vec::new(),
            }
        })
        .collect()
}

/// A built-in set by name; `None` for an unknown name.
pub fn builtin(name: &str) -> Option<Vec<Prompt>> {
    Some(match name {
        "short" => short(),
        "medium" => medium(),
        "long" => long(),
        "mixed" => {
            let (s, m, l) = (short(), medium(), long());
            let n = s.len().max(m.len()).max(l.len());
            let mut out = Vec::with_capacity(s.len() + m.len() + l.len());
            for i in 0..n {
                for set in [&s, &m, &l] {
                    if let Some(p) = set.get(i) {
                        out.push(p.clone());
                    }
                }
            }
            out
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(p: &Prompt) -> usize {
        p.text.split_whitespace().count()
    }

    #[test]
    fn classes_have_the_documented_sizes() {
        for (name, lo, hi) in [("short", 8, 25), ("medium", 80, 140), ("long", 400, 650)] {
            let set = builtin(name).unwrap();
            assert!(!set.is_empty());
            for p in &set {
                let n = words(p);
                assert!((lo..=hi).contains(&n), "{name}: {n} words in {:?}", &p.text[..40]);
                assert_eq!(p.class, name);
            }
        }
    }

    #[test]
    fn mixed_interleaves_every_class_and_holds_all_prompts() {
        let mixed = builtin("mixed").unwrap();
        let total: usize = ["short", "medium", "long"]
            .iter()
            .map(|n| builtin(n).unwrap().len())
            .sum();
        assert_eq!(mixed.len(), total);
        let classes: Vec<&str> = mixed[..3].iter().map(|p| p.class.as_str()).collect();
        assert_eq!(classes, ["short", "medium", "long"]);
        let mut texts: Vec<_> = mixed.iter().map(|p| &p.text).collect();
        texts.sort();
        texts.dedup();
        assert_eq!(texts.len(), total, "prompts are distinct");
    }

    #[test]
    fn the_built_in_sets_are_in_the_classes_their_lengths_give() {
        let counter = synthetic::Counter::words();
        for name in ["short", "medium", "long"] {
            let mut set = builtin(name).unwrap();
            for p in &mut set {
                p.class.clear();
            }
            assert_eq!(classify(&mut set, &counter), Ok(ClassBy::Characters));
            assert!(set.iter().all(|p| p.class == name), "{name}: {set:?}");
        }
    }

    #[test]
    fn classes_by_length_keep_given_labels_and_identical_prompts_together() {
        assert_eq!(class_of(100, ClassBy::Tokens), "short");
        assert_eq!(class_of(101, ClassBy::Tokens), "medium");
        assert_eq!(class_of(500, ClassBy::Tokens), "medium");
        assert_eq!(class_of(501, ClassBy::Tokens), "long");
        assert_eq!(class_of(400, ClassBy::Characters), "short");
        assert_eq!(class_of(2_001, ClassBy::Characters), "long");
        let prompt = |text: &str, class: &str| Prompt::single(text.to_owned(), class.to_owned(), None);
        let long = "word ".repeat(500);
        let mut set = vec![
            prompt(&long, ""),
            prompt(&long, ""),
            prompt("hi", "chat"),
            prompt("hi", ""),
        ];
        classify(&mut set, &synthetic::Counter::words()).unwrap();
        let classes: Vec<&str> = set.iter().map(|p| p.class.as_str()).collect();
        assert_eq!(classes, ["long", "long", "chat", "short"]);
        assert_eq!(
            ClassBy::Tokens.rule(),
            "short up to 100 tokens, medium up to 500, long beyond"
        );
    }

    #[test]
    fn unknown_set() {
        assert!(builtin("huge").is_none());
    }
}
