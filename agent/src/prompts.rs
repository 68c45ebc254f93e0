//! This agent's share of the prompt dataset, and which prompt each user
//! sends next.

/// The prompts an agent draws from, in dataset order.
#[derive(Clone, Debug, Default)]
pub struct Prompts {
    texts: Vec<String>,
    /// Each prompt's own output-token limit (datasets may give one); empty
    /// when none has one.
    max_tokens: Vec<Option<u32>>,
    /// Each prompt's class, as an index into `class_names`; empty when
    /// every prompt is of class 0.
    classes: Vec<u16>,
    /// Class labels, in order of first appearance.
    class_names: Vec<String>,
    /// Sessions only: each conversation's system prompt and its user
    /// turns after the first; empty when the run plays no sessions.
    conversations: Vec<(Option<String>, Vec<String>)>,
    /// Sessions only: the pause between a turn's answer and the next turn.
    turn_think: std::time::Duration,
}

/// The most turns the per-turn figures tell apart: later turns are
/// counted with this one.
pub const MAX_TURNS: u16 = 16;

/// One message of a session's history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: &'static str,
    /// What it says.
    pub content: String,
}

/// One prompt as a request sends it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prompt<'a> {
    /// The text.
    pub text: &'a str,
    /// Its own output-token limit, which wins over the profile's.
    pub max_tokens: Option<u32>,
    /// Its class, an index into [`Prompts::class_names`].
    pub class: u16,
    /// Sessions only: the messages before this turn (the system prompt,
    /// the earlier user turns and the server's answers to them), sent
    /// ahead of `text`; empty outside sessions.
    pub history: &'a [Message],
    /// Sessions only: this turn's number in its session, from 1; 0
    /// outside sessions.
    pub turn: u16,
    /// Sessions only: which of its user's sessions this turn belongs to,
    /// from 1; with the user's number it names the conversation in spans.
    pub session: u32,
}

impl<'a> From<&'a str> for Prompt<'a> {
    fn from(text: &'a str) -> Self {
        Prompt {
            text,
            max_tokens: None,
            class: 0,
            history: &[],
            turn: 0,
            session: 0,
        }
    }
}

impl Prompts {
    /// A share holding these prompts.
    pub fn new(texts: Vec<String>) -> Self {
        Prompts {
            texts,
            ..Prompts::default()
        }
    }

    /// A share whose prompts carry their own output-token limits and
    /// class labels: `(text, max_tokens, class)`.
    pub fn with_limits(prompts: Vec<(String, Option<u32>, String)>) -> Self {
        let mut texts = Vec::with_capacity(prompts.len());
        let mut max_tokens = Vec::with_capacity(prompts.len());
        let mut classes = Vec::with_capacity(prompts.len());
        let mut class_names: Vec<String> = Vec::new();
        for (text, limit, class) in prompts {
            let index = match class_names.iter().position(|c| *c == class) {
                Some(i) => i,
                None => {
                    class_names.push(class);
                    class_names.len() - 1
                }
            };
            texts.push(text);
            max_tokens.push(limit);
            classes.push(u16::try_from(index).unwrap_or(u16::MAX));
        }
        if max_tokens.iter().all(Option::is_none) {
            max_tokens.clear();
        }
        Prompts {
            texts,
            max_tokens,
            classes,
            class_names,
            ..Prompts::default()
        }
    }

    /// The same prompts as sessions: each one's system prompt and user
    /// turns after the first, in the prompts' order, with `think` between
    /// a turn's answer and the next turn.
    pub fn with_sessions(
        mut self,
        conversations: Vec<(Option<String>, Vec<String>)>,
        think: std::time::Duration,
    ) -> Self {
        self.conversations = conversations;
        self.turn_think = think;
        self
    }

    /// The pause between a session's turns.
    pub fn turn_think(&self) -> std::time::Duration {
        self.turn_think
    }

    /// True when the prompts are sessions.
    pub fn sessions(&self) -> bool {
        !self.conversations.is_empty()
    }

    /// Session `i`'s system prompt and its user turns after the first
    /// (`get(i).text`), wrapping around the share.
    pub fn conversation(&self, i: usize) -> (Option<&str>, &[String]) {
        match self.conversations.get(i % self.texts.len().max(1)) {
            Some((system, turns)) => (system.as_deref(), turns),
            None => (None, &[]),
        }
    }

    /// Class labels, indexed by [`Prompt::class`].
    pub fn class_names(&self) -> &[String] {
        &self.class_names
    }

    /// Number of prompts in the share.
    pub fn len(&self) -> usize {
        self.texts.len()
    }

    /// True for an empty share.
    pub fn is_empty(&self) -> bool {
        self.texts.is_empty()
    }

    /// Where user `user` starts in the share: spread by the seed so that
    /// users do not send the same prompt in lockstep, and reproducible.
    pub fn first_for(&self, user: u32, seed: u64) -> usize {
        if self.texts.is_empty() {
            return 0;
        }
        (mix(seed ^ u64::from(user)) % self.texts.len() as u64) as usize
    }

    /// The prompt at position `i`, wrapping around the share.
    pub fn get(&self, i: usize) -> Prompt<'_> {
        let i = i % self.texts.len();
        Prompt {
            text: &self.texts[i],
            max_tokens: self.max_tokens.get(i).copied().flatten(),
            class: self.classes.get(i).copied().unwrap_or(0),
            history: &[],
            turn: 0,
            session: 0,
        }
    }
}

/// SplitMix64's finaliser: a well-spread hash of one `u64`.
pub(crate) fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_start_at_reproducible_places_and_wrap() {
        let p = Prompts::new(vec!["a".into(), "b".into(), "c".into()]);
        let starts: Vec<_> = (0..6).map(|u| p.first_for(u, 9)).collect();
        assert_eq!(starts, (0..6).map(|u| p.first_for(u, 9)).collect::<Vec<_>>());
        assert!(starts.iter().all(|s| *s < 3));
        assert_eq!(p.get(4).text, "b");
        let limited = Prompts::with_limits(vec![
            ("a".into(), None, "short".into()),
            ("b".into(), Some(7), "long".into()),
            ("c".into(), None, "short".into()),
        ]);
        assert_eq!(limited.get(4).max_tokens, Some(7));
        assert_eq!(limited.get(2).max_tokens, None);
        assert_eq!((limited.get(1).class, limited.get(2).class), (1, 0));
        assert_eq!(limited.class_names(), ["short", "long"]);
    }
}
