//! A borrowing JSON scanner for the fast paths of the event parsers.
//!
//! Streamed events are small objects of a known shape, parsed millions of
//! times a run. The scanner walks one without building a value or
//! allocating: strings come back as slices of the event, with their
//! decoded length worked out as they are scanned. It is deliberately
//! narrow: whatever it is unsure of (a key or a `finish_reason` with
//! escapes, a lone surrogate, a number that is not a plain integer where
//! one is read, a duplicate field, deep nesting, anything that is not
//! strict JSON) makes it give up (`None`), and the caller parses the event
//! in full instead, so that every answer is the full parser's.

/// Deepest nesting a skipped value may have before the scanner gives up.
const MAX_DEPTH: u32 = 32;
/// Bytes of a string looked at eight at a time before searching the rest.
const SHORT: usize = 32;

/// Where the first `"` or `\` of `b` is: a word at a time, each byte
/// compared by arithmetic (a byte of `w ^ pattern` is zero where `w`
/// has the pattern's byte; the lowest flagged byte is always a true one).
fn quote_or_backslash(b: &[u8]) -> Option<usize> {
    const ONES: u64 = u64::from_le_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_le_bytes([0x80; 8]);
    const QUOTES: u64 = u64::from_le_bytes([b'"'; 8]);
    const BACKSLASHES: u64 = u64::from_le_bytes([b'\\'; 8]);
    let zeros = |v: u64| v.wrapping_sub(ONES) & !v & HIGHS;
    let mut at = 0;
    while let Some(word) = b[at..].first_chunk::<8>() {
        let w = u64::from_le_bytes(*word);
        let hit = zeros(w ^ QUOTES) | zeros(w ^ BACKSLASHES);
        if hit != 0 {
            return Some(at + hit.trailing_zeros() as usize / 8);
        }
        at += 8;
    }
    b[at..].iter().position(|&c| c == b'"' || c == b'\\').map(|p| at + p)
}

/// A JSON string as written in the event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Str<'a> {
    /// The bytes between the quotes, escapes undecoded.
    raw: &'a str,
    /// True when `raw` holds escapes.
    escaped: bool,
    /// Length in bytes of the decoded string.
    len: usize,
}

impl<'a> Str<'a> {
    /// Length in bytes of the decoded string.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// The bytes between the quotes, as written.
    pub(super) fn raw(&self) -> &'a str {
        self.raw
    }

    /// The string, when it has no escapes to decode.
    pub(super) fn plain(&self) -> Option<&'a str> {
        (!self.escaped).then_some(self.raw)
    }

    /// Appends the decoded string to `out`.
    pub(super) fn push_to(&self, out: &mut String) {
        if !self.escaped {
            out.push_str(self.raw);
            return;
        }
        // Checked when scanned: every escape is complete and valid, and
        // surrogates come in pairs.
        let mut rest = self.raw;
        while let Some(at) = rest.find('\\') {
            out.push_str(&rest[..at]);
            let b = rest.as_bytes();
            let (c, used) = match b[at + 1] {
                b'u' => {
                    let hi = hex4(&b[at + 2..]).unwrap_or(0xFFFD);
                    if (0xD800..0xDC00).contains(&hi) {
                        let lo = hex4(&b[at + 8..]).unwrap_or(0xDC00);
                        let code = 0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00);
                        (char::from_u32(code).unwrap_or('\u{FFFD}'), 12)
                    } else {
                        (char::from_u32(hi).unwrap_or('\u{FFFD}'), 6)
                    }
                }
                other => (simple_escape(other).unwrap_or('\u{FFFD}'), 2),
            };
            out.push(c);
            rest = &rest[at + used..];
        }
        out.push_str(rest);
    }
}

/// The character a one-letter escape stands for.
fn simple_escape(b: u8) -> Option<char> {
    Some(match b {
        b'"' => '"',
        b'\\' => '\\',
        b'/' => '/',
        b'b' => '\u{8}',
        b'f' => '\u{c}',
        b'n' => '\n',
        b'r' => '\r',
        b't' => '\t',
        _ => return None,
    })
}

/// The value of four hex digits at the start of `b`.
fn hex4(b: &[u8]) -> Option<u32> {
    let digits = b.get(..4)?;
    let mut n = 0;
    for d in digits {
        n = n * 16 + char::from(*d).to_digit(16)?;
    }
    Some(n)
}

/// A position in one event's text.
pub(super) struct Scan<'a> {
    text: &'a str,
    at: usize,
    /// No byte of the text is a control character, so none can be inside
    /// a string: strings end at the next quote or backslash.
    no_controls: bool,
}

impl<'a> Scan<'a> {
    /// A scanner at the start of `data`; `None` when it is not UTF-8.
    pub(super) fn new(data: &'a [u8]) -> Option<Scan<'a>> {
        // One pass over every byte, without branches: events rarely hold
        // a line break or a tab, and strings are then searched with SIMD.
        let controls = data.iter().fold(false, |any, b| any | (*b < 0x20));
        Some(Scan {
            text: std::str::from_utf8(data).ok()?,
            at: 0,
            no_controls: !controls,
        })
    }

    fn bytes(&self) -> &'a [u8] {
        self.text.as_bytes()
    }

    fn peek(&self) -> Option<u8> {
        self.bytes().get(self.at).copied()
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.at += 1;
        }
    }

    fn eat(&mut self, b: u8) -> Option<()> {
        self.ws();
        (self.peek()? == b).then(|| self.at += 1)
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        self.bytes()[self.at..].starts_with(word).then(|| self.at += word.len())
    }

    /// True at the end of the text, whitespace aside.
    pub(super) fn at_end(&mut self) -> bool {
        self.ws();
        self.at == self.text.len()
    }

    /// Consumes a `null` when one comes next.
    pub(super) fn null(&mut self) -> bool {
        self.ws();
        self.literal(b"null").is_some()
    }

    /// A string.
    pub(super) fn string(&mut self) -> Option<Str<'a>> {
        self.eat(b'"')?;
        let start = self.at;
        let b = self.bytes();
        let mut len = 0;
        let mut escaped = false;
        loop {
            // Most of a string needs no decoding: pass over it at once.
            let rest = b.get(self.at..)?;
            let plain = if self.no_controls {
                // Keys and most values end within a few bytes, before a
                // SIMD search would have set up: look at those eight at a
                // time first.
                let near = &rest[..rest.len().min(SHORT)];
                match quote_or_backslash(near) {
                    Some(at) => at,
                    None => near.len() + memchr::memchr2(b'"', b'\\', &rest[near.len()..])?,
                }
            } else {
                rest.iter().position(|c| matches!(c, b'"' | b'\\' | 0..0x20))?
            };
            self.at += plain;
            len += plain;
            match *b.get(self.at)? {
                b'"' => break,
                b'\\' => {
                    escaped = true;
                    match *b.get(self.at + 1)? {
                        b'u' => {
                            let hi = hex4(&b[self.at + 2..])?;
                            match hi {
                                0xD800..=0xDBFF => {
                                    // Only a whole surrogate pair is a character.
                                    if b.get(self.at + 6..self.at + 8)? != b"\\u" {
                                        return None;
                                    }
                                    let lo = hex4(&b[self.at + 8..])?;
                                    if !(0xDC00..=0xDFFF).contains(&lo) {
                                        return None;
                                    }
                                    len += 4;
                                    self.at += 12;
                                }
                                0xDC00..=0xDFFF => return None,
                                c => {
                                    len += char::from_u32(c)?.len_utf8();
                                    self.at += 6;
                                }
                            }
                        }
                        other => {
                            simple_escape(other)?;
                            len += 1;
                            self.at += 2;
                        }
                    }
                }
                0..0x20 => return None, // A control character must be escaped.
                _ => {
                    len += 1;
                    self.at += 1;
                }
            }
        }
        let raw = self.text.get(start..self.at)?;
        self.at += 1;
        Some(Str { raw, escaped, len })
    }

    /// A string, or `None` for `null`: `Some(None)`.
    pub(super) fn string_or_null(&mut self) -> Option<Option<Str<'a>>> {
        if self.null() {
            return Some(None);
        }
        self.string().map(Some)
    }

    /// A non-negative integer that fits a `u64`, or `null`.
    pub(super) fn u64_or_null(&mut self) -> Option<Option<u64>> {
        if self.null() {
            return Some(None);
        }
        self.ws();
        let b = self.bytes();
        let start = self.at;
        let mut n: u64 = 0;
        while let Some(d @ b'0'..=b'9') = b.get(self.at).copied() {
            n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
            self.at += 1;
        }
        let digits = self.at - start;
        let leading_zero = digits > 1 && b[start] == b'0';
        let fraction = matches!(b.get(self.at), Some(b'.' | b'e' | b'E'));
        (digits > 0 && !leading_zero && !fraction).then_some(Some(n))
    }

    /// An object, handing each key to `field`, which must read its value.
    /// Keys with escapes are not compared: the scanner gives up on them.
    pub(super) fn object(&mut self, mut field: impl FnMut(&mut Self, &'a str) -> Option<()>) -> Option<()> {
        self.eat(b'{')?;
        self.ws();
        if self.peek()? == b'}' {
            self.at += 1;
            return Some(());
        }
        loop {
            let key = self.string()?.plain()?;
            self.eat(b':')?;
            field(self, key)?;
            self.ws();
            match self.peek()? {
                b',' => self.at += 1,
                b'}' => {
                    self.at += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// An array, handing each element to `item`, which must read it.
    pub(super) fn array(&mut self, mut item: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        self.eat(b'[')?;
        self.ws();
        if self.peek()? == b']' {
            self.at += 1;
            return Some(());
        }
        loop {
            item(self)?;
            self.ws();
            match self.peek()? {
                b',' => self.at += 1,
                b']' => {
                    self.at += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// Reads past any value.
    pub(super) fn skip(&mut self) -> Option<()> {
        self.skip_nested(0)
    }

    fn skip_nested(&mut self, depth: u32) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.ws();
        match self.peek()? {
            b'{' => self.object(|s, _| s.skip_nested(depth + 1)),
            b'[' => self.array(|s| s.skip_nested(depth + 1)),
            b'"' => self.string().map(drop),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            b'-' | b'0'..=b'9' => self.number(),
            _ => None,
        }
    }

    /// A number as JSON writes it: `-?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?`.
    fn number(&mut self) -> Option<()> {
        let b = self.bytes();
        let digits = |at: &mut usize| {
            let start = *at;
            while b.get(*at).is_some_and(u8::is_ascii_digit) {
                *at += 1;
            }
            *at - start
        };
        let mut at = self.at;
        if b.get(at) == Some(&b'-') {
            at += 1;
        }
        let start = at;
        let whole = digits(&mut at);
        if whole == 0 || (whole > 1 && b[start] == b'0') {
            return None;
        }
        if b.get(at) == Some(&b'.') {
            at += 1;
            if digits(&mut at) == 0 {
                return None;
            }
        }
        if matches!(b.get(at), Some(b'e' | b'E')) {
            at += 1;
            if matches!(b.get(at), Some(b'+' | b'-')) {
                at += 1;
            }
            if digits(&mut at) == 0 {
                return None;
            }
        }
        self.at = at;
        Some(())
    }
}

/// Notes that a field was seen: `None` (give up) when it was seen before,
/// which the full parser refuses.
pub(super) fn once(seen: &mut bool) -> Option<()> {
    (!std::mem::replace(seen, true)).then_some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn string(json: &str) -> Option<(usize, String)> {
        let mut s = Scan::new(json.as_bytes())?;
        let v = s.string()?;
        let mut out = String::new();
        v.push_to(&mut out);
        s.at_end().then_some((v.len(), out))
    }

    #[test]
    fn strings_decode_as_serde_json_does() {
        for json in [
            r#""plain""#,
            r#""a\"b\\c\/d\n\t\r\b\f""#,
            r#""caf\u00e9 \u20ac""#,
            r#""\ud83d\ude00 smile""#,
            r#""""#,
            "\"h\u{e9}llo \u{1F600}\"",
        ] {
            let want: String = serde_json::from_str(json).unwrap();
            assert_eq!(string(json), Some((want.len(), want)), "{json}");
        }
        // Lone surrogates, bad escapes and raw control characters: unsure.
        for json in [
            r#""\ud83d""#,
            r#""\ude00x""#,
            r#""\x""#,
            r#""\u12""#,
            "\"a\nb\"",
            r#""open"#,
        ] {
            assert_eq!(string(json), None, "{json}");
        }
    }

    #[test]
    fn the_word_search_finds_the_first_quote_or_backslash() {
        // Every position and neighbour, bytes that differ from the pattern
        // by one bit and high bytes included.
        let fillers = [b'a', b'!', b'#', b'[', b']', 0x7f, 0xa2, 0xdc, 0xff, b'"' ^ 0x80];
        for len in 0..40 {
            for filler in fillers {
                let mut b = vec![filler; len];
                assert_eq!(quote_or_backslash(&b), None, "{b:?}");
                for first in 0..len {
                    for special in [b'"', b'\\'] {
                        b.fill(filler);
                        b[first] = special;
                        for (later, byte) in b.iter_mut().enumerate().skip(first + 1) {
                            *byte = if later % 3 == 0 { b'"' } else { filler };
                        }
                        let want = b.iter().position(|&c| c == b'"' || c == b'\\');
                        assert_eq!(quote_or_backslash(&b), want, "{b:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn values_are_skipped_strictly() {
        let skip = |json: &str| {
            let mut s = Scan::new(json.as_bytes()).unwrap();
            s.skip().is_some() && s.at_end()
        };
        for ok in [
            r#"{"a":[1,-2.5e+3,true,false,null,{"b":"c"}],"d":{}}"#,
            "0",
            " [ ] ",
            "1E5",
        ] {
            assert!(skip(ok), "{ok}");
        }
        for bad in ["01", "1.", "-", "[1,]", r#"{"a":1,}"#, "tru", "{\"a\" 1}", ".5", "+1"] {
            assert!(!skip(bad), "{bad}");
        }
        let deep = "[".repeat(40) + &"]".repeat(40);
        assert!(!skip(&deep), "nesting beyond the limit is left to the full parser");
    }

    #[test]
    fn integers() {
        let int = |json: &str| Scan::new(json.as_bytes()).unwrap().u64_or_null();
        assert_eq!(int("12"), Some(Some(12)));
        assert_eq!(int("null"), Some(None));
        assert_eq!(int("18446744073709551615"), Some(Some(u64::MAX)));
        for unsure in ["18446744073709551616", "1.0", "-1", "012", "1e3", "\"1\""] {
            assert_eq!(int(unsure), None, "{unsure}");
        }
    }
}
