//! The line splitting that SSE and NDJSON framing share.
//!
//! A line that ends inside the read that started it is handed out as a
//! slice of that read, never copied; only a line split across reads is
//! gathered in a buffer kept between reads.

use tokio::time::Instant;

use super::sse::{FrameError, MAX_LINE, PushError};

/// Which bytes end a line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Ends {
    /// `\n`, `\r\n` or a lone `\r` (Server-Sent Events).
    #[default]
    Any,
    /// `\n` only (NDJSON; a `\r` before it stays on the line).
    Newline,
}

/// One complete line, without its end.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Line<'b, 'g> {
    /// Lent from the read being pushed: it stays valid for the whole push.
    Lent(&'b [u8]),
    /// Gathered from several reads: valid only for this call.
    Gathered(&'g [u8]),
}

impl<'b> Line<'b, '_> {
    /// The line's bytes.
    pub(crate) fn bytes(&self) -> &[u8] {
        match self {
            Line::Lent(b) | Line::Gathered(b) => b,
        }
    }

    /// The line's bytes when they live as long as the read.
    pub(crate) fn lent(&self) -> Option<&'b [u8]> {
        match self {
            Line::Lent(b) => Some(b),
            Line::Gathered(_) => None,
        }
    }
}

/// Cuts reads into lines. Keeps a partial line between reads.
#[derive(Debug, Default)]
pub(crate) struct Lines {
    ends: Ends,
    /// The start of a line split across reads.
    partial: Vec<u8>,
    /// Arrival of the partial line's first byte.
    started_at: Option<Instant>,
    /// The last read ended in `\r`: a `\n` starting the next one belongs
    /// to that line end.
    after_cr: bool,
}

impl Lines {
    /// Lines ended by `ends`.
    pub(crate) fn new(ends: Ends) -> Lines {
        Lines {
            ends,
            ..Lines::default()
        }
    }

    /// True when a line has begun and not ended.
    pub(crate) fn is_mid_line(&self) -> bool {
        !self.partial.is_empty()
    }

    /// Feeds one read that arrived at `at`, calling `on_line` with each
    /// complete line (without its end) and the arrival of its first byte.
    /// Stops early when `on_line` returns `Err`.
    pub(crate) fn push<'b, E>(
        &mut self,
        bytes: &'b [u8],
        at: Instant,
        mut on_line: impl FnMut(Line<'b, '_>, Instant) -> Result<(), E>,
    ) -> Result<(), PushError<E>> {
        let mut rest = bytes;
        while !rest.is_empty() {
            if self.after_cr {
                self.after_cr = false;
                if rest[0] == b'\n' {
                    rest = &rest[1..];
                    continue;
                }
            }
            let end = match self.ends {
                Ends::Any => memchr::memchr2(b'\n', b'\r', rest),
                Ends::Newline => memchr::memchr(b'\n', rest),
            };
            let take = end.unwrap_or(rest.len());
            if self.partial.len() + take > MAX_LINE {
                return Err(PushError::Frame(FrameError::LineTooLong));
            }
            let Some(end) = end else {
                self.started_at.get_or_insert(at);
                self.partial.extend_from_slice(rest);
                break;
            };
            self.after_cr = rest[end] == b'\r';
            let result = if self.partial.is_empty() && self.started_at.is_none() {
                // The whole line is in this read: lend it as it is.
                on_line(Line::Lent(&rest[..end]), at)
            } else {
                let started = self.started_at.take().unwrap_or(at);
                self.partial.extend_from_slice(&rest[..end]);
                let line = std::mem::take(&mut self.partial);
                let result = on_line(Line::Gathered(&line), started);
                self.partial = line;
                self.partial.clear();
                result
            };
            rest = &rest[end + 1..];
            result.map_err(PushError::Event)?;
        }
        Ok(())
    }

    /// The body ended: hands out a last line that had no end, with the
    /// arrival of its first byte.
    pub(crate) fn finish<E>(&mut self, on_line: impl FnOnce(&[u8], Instant) -> Result<(), E>) -> Result<(), E> {
        let line = std::mem::take(&mut self.partial);
        match self.started_at.take() {
            Some(started) => on_line(&line, started),
            None => Ok(()),
        }
    }
}
