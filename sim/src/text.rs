//! Deterministic text: how the simulator counts prompt tokens and what it
//! answers.

/// Words the simulator answers with. One word is one token.
const WORDS: [&str; 32] = [
    "the", "model", "server", "queue", "token", "batch", "latency", "under", "load", "prefill", "decode", "step",
    "request", "stream", "answer", "fast", "slow", "cache", "memory", "kernel", "sequence", "window", "prompt",
    "reply", "time", "first", "every", "gap", "steady", "burst", "engine", "quiet",
];

/// The simulator's tokenizer: one token per whitespace-separated word.
/// Clients that count tokens the same way agree with it exactly.
pub(crate) fn count_tokens(text: &str) -> u32 {
    u32::try_from(text.split_whitespace().count()).unwrap_or(u32::MAX)
}

/// Text of token `index` of an answer seeded with `seed`: a word, with a
/// leading space after the first.
pub(crate) fn token(seed: u64, index: u32) -> String {
    let word = WORDS[(mix(seed ^ u64::from(index)) % WORDS.len() as u64) as usize];
    if index == 0 {
        word.to_owned()
    } else {
        format!(" {word}")
    }
}

/// SplitMix64's finaliser: a fast, well-spread hash of one `u64`.
pub(crate) fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// FNV-1a hash of a string, to key determinism on request content.
pub(crate) fn hash(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01B3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_words_and_deterministic() {
        let answer: String = (0..20).map(|i| token(42, i)).collect();
        assert_eq!(count_tokens(&answer), 20);
        let again: String = (0..20).map(|i| token(42, i)).collect();
        assert_eq!(answer, again);
        assert_ne!(answer, (0..20).map(|i| token(43, i)).collect::<String>());
    }

    #[test]
    fn prompt_tokens_are_whitespace_words() {
        assert_eq!(count_tokens("  Explain   continuous\nbatching  "), 3);
        assert_eq!(count_tokens(""), 0);
    }
}
