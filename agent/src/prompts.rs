//! This agent's share of the prompt dataset, and which prompt each user
//! sends next.

/// The prompts an agent draws from, in dataset order.
#[derive(Clone, Debug, Default)]
pub struct Prompts {
    texts: Vec<String>,
    /// Each prompt's own output-token limit (datasets may give one); empty
    /// when none has one.
    max_tokens: Vec<Option<u32>>,
}

/// One prompt as a request sends it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prompt<'a> {
    /// The text.
    pub text: &'a str,
    /// Its own output-token limit, which wins over the profile's.
    pub max_tokens: Option<u32>,
}

impl<'a> From<&'a str> for Prompt<'a> {
    fn from(text: &'a str) -> Self {
        Prompt { text, max_tokens: None }
    }
}

impl Prompts {
    /// A share holding these prompts.
    pub fn new(texts: Vec<String>) -> Self {
        Prompts {
            texts,
            max_tokens: Vec::new(),
        }
    }

    /// A share whose prompts carry their own output-token limits.
    pub fn with_limits(prompts: Vec<(String, Option<u32>)>) -> Self {
        let (texts, max_tokens): (Vec<_>, Vec<_>) = prompts.into_iter().unzip();
        let max_tokens = if max_tokens.iter().all(Option::is_none) {
            Vec::new()
        } else {
            max_tokens
        };
        Prompts { texts, max_tokens }
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
        let limited = Prompts::with_limits(vec![("a".into(), None), ("b".into(), Some(7))]);
        assert_eq!(limited.get(3).max_tokens, Some(7));
        assert_eq!(limited.get(2).max_tokens, None);
    }
}
