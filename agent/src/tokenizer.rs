//! The client's own token count: a Hugging Face `tokenizer.json` (the
//! target model's), used to count the tokens of each answer's text and,
//! when the server does not say, of each prompt.
//!
//! Counts leave special tokens out (no beginning-of-sequence token, no
//! chat template): they count the text itself. Any truncation or padding
//! the file asks for is switched off, so a long answer is never cut short.

use std::fmt;

/// The largest tokenizer file read: half of what an agent accepts in one
/// assignment, which carries the file, leaving the rest for its prompts.
pub const MAX_FILE_BYTES: u64 = (stampede_proto::MAX_ASSIGNMENT_BYTES / 2) as u64;

/// A loaded tokenizer.
pub struct Tokenizer {
    name: String,
    inner: tokenizers::Tokenizer,
}

impl fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokenizer")
            .field("name", &self.name)
            .field("vocab_size", &self.vocab_size())
            .finish()
    }
}

impl Tokenizer {
    /// Loads a `tokenizer.json` from its bytes; `name` (usually the path
    /// it was read from) names it in messages.
    pub fn from_json(name: &str, json: &[u8]) -> Result<Tokenizer, String> {
        let mut inner = tokenizers::Tokenizer::from_bytes(json)
            .map_err(|e| format!("{name}: not a usable Hugging Face tokenizer.json: {e}"))?;
        inner
            .with_truncation(None)
            .map_err(|e| format!("{name}: cannot switch its truncation off: {e}"))?;
        inner.with_padding(None);
        Ok(Tokenizer {
            name: name.to_owned(),
            inner,
        })
    }

    /// Reads and loads the `tokenizer.json` at `path`.
    pub fn from_file(path: &std::path::Path) -> Result<(Tokenizer, Vec<u8>), String> {
        let name = path.display().to_string();
        let json = crate::file::read_text(path, MAX_FILE_BYTES)
            .map_err(|e| format!("{name}: cannot read the tokenizer: {e}"))?;
        let json = json.into_bytes();
        Ok((Tokenizer::from_json(&name, &json)?, json))
    }

    /// Its name, as given when it was loaded.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Tokens in its vocabulary, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Tokens in `text`, special tokens left out; `None` when the
    /// tokenizer fails on it (the request then simply has no client
    /// count).
    pub fn count(&self, text: &str) -> Option<u64> {
        if text.is_empty() {
            return Some(0);
        }
        self.inner.encode_fast(text, false).ok().map(|e| e.len() as u64)
    }

    /// Tokens in `text`, as [`Tokenizer::count`], and in `per_piece` the
    /// tokens of each piece of it: `ends` holds the byte offset where each
    /// piece ends, in order (a stream's events, in the order they came). A
    /// token belongs to the piece that holds its last byte: it was whole
    /// only once that piece had come. `None` when the tokenizer fails on
    /// the text.
    pub fn count_pieces(&self, text: &str, ends: &[usize], per_piece: &mut Vec<u32>) -> Option<u64> {
        per_piece.clear();
        per_piece.resize(ends.len(), 0);
        if text.is_empty() {
            return Some(0);
        }
        if ends.is_empty() {
            return self.count(text);
        }
        let encoding = self.inner.encode(text, false).ok()?;
        let last = ends.len() - 1;
        for &(_, end) in encoding.get_offsets() {
            let piece = ends.partition_point(|&e| e < end).min(last);
            per_piece[piece] = per_piece[piece].saturating_add(1);
        }
        Some(encoding.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tokenizer.json whose tokens are single characters: a byte-pair
    /// model with no merges over a whitespace pre-tokenizer, so that an
    /// ASCII text has exactly as many tokens as non-space characters.
    /// `truncation` is set to show it is ignored.
    fn letters_json(truncate_at: Option<usize>) -> Vec<u8> {
        let vocab: serde_json::Map<String, serde_json::Value> = ('!'..='~')
            .enumerate()
            .map(|(i, c)| (c.to_string(), serde_json::Value::from(i)))
            .collect();
        let truncation = truncate_at.map(
            |n| serde_json::json!({"direction": "Right", "max_length": n, "strategy": "LongestFirst", "stride": 0}),
        );
        serde_json::to_vec(&serde_json::json!({
            "version": "1.0",
            "truncation": truncation,
            "padding": null,
            "added_tokens": [],
            "normalizer": null,
            "pre_tokenizer": {"type": "Whitespace"},
            "post_processor": null,
            "decoder": null,
            "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                      "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                      "ignore_merges": false, "vocab": vocab, "merges": []}
        }))
        .expect("JSON serializes")
    }

    #[test]
    fn counts_tokens_of_text_and_ignores_truncation() {
        let t = Tokenizer::from_json("letters.json", &letters_json(Some(4))).unwrap();
        assert_eq!(t.count("the model server"), Some(14));
        assert_eq!(t.count("Hi, there!"), Some(9));
        assert_eq!(t.count(""), Some(0));
        assert_eq!(t.vocab_size(), 94);
        assert!(format!("{t:?}").contains("letters.json"));
    }

    #[test]
    fn tokens_belong_to_the_piece_that_completes_them() {
        let t = Tokenizer::from_json("letters.json", &letters_json(None)).unwrap();
        let mut pieces = Vec::new();
        // "ab" " cd" "e": 2, 2 and 1 letters.
        assert_eq!(t.count_pieces("ab cde", &[2, 5, 6], &mut pieces), Some(5));
        assert_eq!(pieces, [2, 2, 1]);
        // A piece of spaces only carries no token.
        assert_eq!(t.count_pieces("ab  c", &[2, 4, 5], &mut pieces), Some(3));
        assert_eq!(pieces, [2, 0, 1]);
        assert_eq!(t.count_pieces("", &[], &mut pieces), Some(0));
        assert!(pieces.is_empty());
        assert_eq!(t.count_pieces("abc", &[], &mut pieces), Some(3));
    }

    #[test]
    fn a_file_that_is_not_a_tokenizer_is_named() {
        let e = Tokenizer::from_json("x.json", b"{\"not\": 1}").unwrap_err();
        assert!(e.contains("x.json") && e.contains("tokenizer.json"), "{e}");
    }
}
