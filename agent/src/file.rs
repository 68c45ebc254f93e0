//! Files read whole from a path a user gave, with a limit checked before
//! the reading: a mistyped path (`/dev/zero`, a disk image, a model's
//! weights) is refused at once, with the limit, instead of filling memory.
//!
//! The size in the file's metadata is checked first; the read itself then
//! stops one byte past the limit, since a device or a pipe reports no size
//! and may never end.

use std::fmt;
use std::io::Read as _;
use std::path::Path;

/// The largest secret accepted from a file (`--token-file`): a token is a
/// line of text, never near this.
pub const MAX_TOKEN_BYTES: u64 = 1 << 20;
/// The largest PEM file accepted (a certificate chain, a key, a CA bundle):
/// the whole web PKI's roots take about 200 KiB.
pub const MAX_PEM_BYTES: u64 = 16 << 20;

/// Why a file could not be read.
#[derive(Debug)]
pub enum ReadError {
    /// The file cannot be opened or read.
    Io(std::io::Error),
    /// The file is larger than the limit.
    TooLarge {
        /// Its size, when its metadata says; `None` for a device or pipe
        /// that gave more than the limit.
        size: Option<u64>,
        /// The limit, in bytes.
        limit: u64,
    },
    /// A file that should be text is not: it holds a NUL byte or is not
    /// UTF-8.
    NotText {
        /// Where the first byte that is not text is.
        offset: u64,
    },
}

impl std::error::Error for ReadError {}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::Io(e) => write!(f, "{e}"),
            ReadError::TooLarge {
                size: Some(size),
                limit,
            } => {
                write!(f, "the file is {}, over the limit of {}", bytes(*size), bytes(*limit))
            }
            ReadError::TooLarge { size: None, limit } => {
                write!(f, "the file gives more than the limit of {}", bytes(*limit))
            }
            ReadError::NotText { offset } => write!(f, "not UTF-8 text (first bad byte at offset {offset})"),
        }
    }
}

impl From<std::io::Error> for ReadError {
    fn from(e: std::io::Error) -> Self {
        ReadError::Io(e)
    }
}

/// A size in words: `1 GiB`, `1.5 MiB`, `300 bytes`.
pub fn bytes(n: u64) -> String {
    const UNITS: [(&str, u64); 3] = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
    for (unit, size) in UNITS {
        if n >= size {
            let v = n as f64 / size as f64;
            return if n.is_multiple_of(size) {
                format!("{} {unit}", n / size)
            } else {
                format!("{v:.1} {unit}")
            };
        }
    }
    format!("{n} byte{}", if n == 1 { "" } else { "s" })
}

/// Opens `path`, refusing a regular file larger than `limit` bytes before
/// anything is read; returns it with its size (0 for a device or pipe,
/// whose size is known only once read).
fn open(path: &Path, limit: u64) -> Result<(std::fs::File, u64), ReadError> {
    let file = std::fs::File::open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Ok((file, 0));
    }
    if meta.len() > limit {
        return Err(ReadError::TooLarge {
            size: Some(meta.len()),
            limit,
        });
    }
    Ok((file, meta.len()))
}

/// Reads the whole file at `path`, refusing one larger than `limit` bytes
/// before reading it (or, for a device or pipe, as soon as it has given
/// more).
pub fn read(path: &Path, limit: u64) -> Result<Vec<u8>, ReadError> {
    let (file, size) = open(path, limit)?;
    let mut out = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    file.take(limit.saturating_add(1)).read_to_end(&mut out)?;
    if out.len() as u64 > limit {
        // A file that grew since, a device or a pipe.
        return Err(ReadError::TooLarge { size: None, limit });
    }
    Ok(out)
}

/// Reads the whole text file at `path` as [`read`] does, and stops at the
/// first NUL byte, which no text holds: a device such as `/dev/zero` or
/// `/dev/urandom`, or a binary file within the limit, is refused at once.
pub fn read_text(path: &Path, limit: u64) -> Result<String, ReadError> {
    let (file, _) = open(path, limit)?;
    let mut out = Vec::new();
    let mut chunk = vec![0; 64 << 10];
    let mut reader = file.take(limit.saturating_add(1));
    loop {
        let n = match reader.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        if let Some(at) = chunk[..n].iter().position(|&b| b == 0) {
            return Err(ReadError::NotText {
                offset: (out.len() + at) as u64,
            });
        }
        out.extend_from_slice(&chunk[..n]);
    }
    if out.len() as u64 > limit {
        return Err(ReadError::TooLarge { size: None, limit });
    }
    String::from_utf8(out).map_err(|e| ReadError::NotText {
        offset: e.utf8_error().valid_up_to() as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_in_words() {
        assert_eq!(bytes(0), "0 bytes");
        assert_eq!(bytes(1), "1 byte");
        assert_eq!(bytes(1023), "1023 bytes");
        assert_eq!(bytes(1 << 10), "1 KiB");
        assert_eq!(bytes(3 << 19), "1.5 MiB");
        assert_eq!(bytes(1 << 30), "1 GiB");
        assert_eq!(bytes(5 << 30), "5 GiB");
    }

    #[test]
    fn a_file_over_the_limit_is_refused_before_it_is_read() {
        let dir = std::env::temp_dir().join(format!("stampede-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ten");
        std::fs::write(&path, b"0123456789").unwrap();
        assert_eq!(read(&path, 10).unwrap(), b"0123456789");
        let e = read(&path, 9).unwrap_err();
        assert!(
            matches!(
                e,
                ReadError::TooLarge {
                    size: Some(10),
                    limit: 9
                }
            ),
            "{e:?}"
        );
        assert_eq!(e.to_string(), "the file is 10 bytes, over the limit of 9 bytes");
        let missing = read(&dir.join("missing"), 9).unwrap_err();
        assert!(matches!(missing, ReadError::Io(_)), "{missing:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_endless_device_stops_past_the_limit() {
        // /dev/zero says it holds nothing and never ends.
        let e = read(Path::new("/dev/zero"), 1 << 20).unwrap_err();
        assert!(
            matches!(e, ReadError::TooLarge { size: None, limit } if limit == 1 << 20),
            "{e:?}"
        );
        assert_eq!(e.to_string(), "the file gives more than the limit of 1 MiB");
        // A small device read is within it.
        assert_eq!(read(Path::new("/dev/null"), 10).unwrap(), b"");
    }

    #[test]
    fn text_stops_at_the_first_byte_that_is_not_text() {
        // At once, however large the limit.
        let e = read_text(Path::new("/dev/zero"), u64::MAX).unwrap_err();
        assert!(matches!(e, ReadError::NotText { offset: 0 }), "{e:?}");
        assert_eq!(e.to_string(), "not UTF-8 text (first bad byte at offset 0)");
        let dir = std::env::temp_dir().join(format!("stampede-text-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t");
        std::fs::write(&path, "héllo\n").unwrap();
        assert_eq!(read_text(&path, 7).unwrap(), "héllo\n");
        assert!(matches!(
            read_text(&path, 6).unwrap_err(),
            ReadError::TooLarge {
                size: Some(7),
                limit: 6
            }
        ));
        std::fs::write(&path, b"ab\xffc").unwrap();
        assert!(matches!(
            read_text(&path, 10).unwrap_err(),
            ReadError::NotText { offset: 2 }
        ));
        std::fs::write(&path, b"ab\0c").unwrap();
        assert!(matches!(
            read_text(&path, 10).unwrap_err(),
            ReadError::NotText { offset: 2 }
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
