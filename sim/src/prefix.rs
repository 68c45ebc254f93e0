//! The prefix cache: computed prompt blocks kept after their request is
//! done, so that a later prompt starting the same way skips their
//! prefill, as vLLM's automatic prefix caching does.
//!
//! A prompt is cut into blocks of `block_tokens` tokens; a block is named
//! by a hash of its tokens chained with the name of the block before it,
//! so a block matches only if every block before it matches too. Only
//! full blocks are cached, and at least the prompt's last token is always
//! computed (the model needs it to produce the first token), so a prompt
//! of exactly two blocks can hit its first block only. Blocks are inserted
//! when their request's prefill ends and touched on every hit; the least
//! recently used block is evicted when the cache is full.

use std::collections::{BTreeMap, HashMap};

use crate::text;

/// The names of a prompt's full blocks, in order: each a hash of the
/// block's tokens chained with the previous block's name.
pub(crate) fn chain<'a>(words: impl Iterator<Item = &'a str>, block_tokens: u32) -> Vec<u64> {
    let mut names = Vec::new();
    let (mut name, mut filled) = (0u64, 0u32);
    let mut previous = 0u64;
    for word in words {
        name = text::mix(name ^ text::hash(word));
        filled += 1;
        if filled == block_tokens {
            previous = text::mix(previous ^ name);
            names.push(previous);
            (name, filled) = (0, 0);
        }
    }
    names
}

/// An LRU cache of prompt blocks, with vLLM's counters.
#[derive(Debug)]
pub(crate) struct PrefixCache {
    /// Blocks it holds at most.
    capacity: usize,
    /// Tokens per block.
    block_tokens: u32,
    /// Block name to the stamp of its last use.
    blocks: HashMap<u64, u64>,
    /// Stamp of last use to block name: the first is the least recently
    /// used.
    order: BTreeMap<u64, u64>,
    stamp: u64,
    /// Prompt tokens looked up (`vllm:prefix_cache_queries_total`).
    pub(crate) queries: u64,
    /// Of those, tokens found cached (`vllm:prefix_cache_hits_total`).
    pub(crate) hits: u64,
}

impl PrefixCache {
    pub(crate) fn new(capacity: u32, block_tokens: u32) -> PrefixCache {
        PrefixCache {
            capacity: capacity as usize,
            block_tokens,
            blocks: HashMap::new(),
            order: BTreeMap::new(),
            stamp: 0,
            queries: 0,
            hits: 0,
        }
    }

    /// Blocks held now.
    pub(crate) fn used(&self) -> usize {
        self.blocks.len()
    }

    fn touch(&mut self, name: u64) {
        self.stamp += 1;
        if let Some(old) = self.blocks.insert(name, self.stamp) {
            self.order.remove(&old);
        }
        self.order.insert(self.stamp, name);
    }

    /// Looks up a prompt of `input_tokens` tokens whose full blocks are
    /// `names`: the tokens whose prefill it can skip (its leading cached
    /// blocks, short of the last token), counted as queried and hit. The
    /// blocks hit become the most recently used.
    pub(crate) fn lookup(&mut self, names: &[u64], input_tokens: u32) -> u32 {
        self.queries += u64::from(input_tokens);
        // The last token is always computed.
        let usable = (input_tokens.saturating_sub(1) / self.block_tokens) as usize;
        let hit = names
            .iter()
            .take(usable)
            .take_while(|n| self.blocks.contains_key(n))
            .count();
        for &name in &names[..hit] {
            self.touch(name);
        }
        let tokens = hit as u32 * self.block_tokens;
        self.hits += u64::from(tokens);
        tokens
    }

    /// Keeps a computed prompt's blocks, evicting the least recently used
    /// when full.
    pub(crate) fn insert(&mut self, names: &[u64]) {
        for &name in names {
            self.touch(name);
            while self.blocks.len() > self.capacity {
                let Some((_, oldest)) = self.order.pop_first() else {
                    break;
                };
                self.blocks.remove(&oldest);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(n: usize, from: usize) -> Vec<String> {
        (from..from + n).map(|i| format!("w{i}")).collect()
    }

    fn names(w: &[String]) -> Vec<u64> {
        chain(w.iter().map(String::as_str), 4)
    }

    #[test]
    fn a_block_matches_only_after_matching_blocks() {
        let a = words(12, 0);
        let mut b = a.clone();
        b[1] = "other".to_owned();
        let (na, nb) = (names(&a), names(&b));
        assert_eq!(na.len(), 3);
        assert_ne!(na[0], nb[0]);
        assert_ne!(na[1], nb[1], "same tokens, different history");
        assert_eq!(names(&words(7, 0)).len(), 1, "only full blocks");
    }

    #[test]
    fn hits_skip_the_shared_blocks_but_never_the_last_token() {
        let mut c = PrefixCache::new(100, 4);
        let shared = words(8, 0);
        let first: Vec<String> = shared.iter().cloned().chain(words(5, 100)).collect();
        let second: Vec<String> = shared.iter().cloned().chain(words(5, 200)).collect();
        assert_eq!(c.lookup(&names(&first), 13), 0);
        c.insert(&names(&first));
        assert_eq!(c.lookup(&names(&second), 13), 8, "the two shared blocks");
        // The very same prompt of 12 tokens: its last block holds the last token.
        let exact = words(12, 0);
        c.insert(&names(&exact));
        assert_eq!(c.lookup(&names(&exact), 12), 8);
        assert_eq!((c.queries, c.hits), (38, 16));
    }

    #[test]
    fn the_least_recently_used_block_goes_first() {
        let mut c = PrefixCache::new(2, 4);
        let (a, b) = (names(&words(5, 0)), names(&words(5, 10)));
        c.insert(&a);
        c.insert(&b);
        assert_eq!(c.lookup(&a, 5), 4, "touches a");
        c.insert(&names(&words(5, 20)));
        assert_eq!(c.used(), 2);
        assert_eq!(c.lookup(&b, 5), 0, "b was the oldest");
        assert_eq!(c.lookup(&a, 5), 4);
    }
}
