//! Path normalization before routing: `//admin`, `/public/../admin` and `/%61dmin` all
//! become `/admin`, so a request can only ever match what its canonical path matches.
//! Percent-escapes of unreserved characters are decoded, all others are kept (with
//! upper-case hex) so nothing is decoded twice; `%2F`, `%5C` and `%00` are refused because
//! upstreams disagree on what they mean.

use std::borrow::Cow;
use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum PathError {
    #[error("the path must start with `/`")]
    NotAbsolute,
    #[error("malformed percent-escape in the path")]
    BadEscape,
    #[error("the path contains an encoded `/`, `\\` or NUL, which cannot be routed safely")]
    EncodedSeparator,
    #[error("the path contains a raw control character or backslash")]
    BadByte,
    #[error("the path contains an encoded control character")]
    EncodedControl,
    #[error("a `.;` or `..;` segment is a dot segment to some servers")]
    DotParameter,
    #[error("a path segment ends in `.` or a space, which some servers drop")]
    TrailingDotOrSpace,
}

/// Returns the canonical form of a request path (without query).
/// A path that is canonical already (the common case) is borrowed, not copied.
pub fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    let path = if is_canonical(bytes) {
        Cow::Borrowed(path)
    } else {
        Cow::Owned(remove_dot_segments(&decode_unreserved(bytes)?))
    };
    check_segments(&path)?;
    Ok(path)
}

/// Segments other servers may read as something else: `..;x` is `..` to Tomcat and
/// Spring, `admin.` and `admin%20` are `admin` to IIS. Refused, so what a route matched is
/// what every upstream reads.
fn check_segments(path: &str) -> Result<(), PathError> {
    for seg in path.split('/') {
        if seg.starts_with(".;") || seg.starts_with("..;") {
            return Err(PathError::DotParameter);
        }
        if seg.ends_with('.') || seg.ends_with("%20") {
            return Err(PathError::TrailingDotOrSpace);
        }
    }
    Ok(())
}

/// Fast path for the common case: nothing to decode, merge or resolve.
fn is_canonical(bytes: &[u8]) -> bool {
    let mut prev = 0u8;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'%' | b'\\' | 0..=0x20 | 0x7f => return false,
            b'/' if prev == b'/' => return false,
            b'.' if prev == b'/' => {
                let rest = &bytes[i..];
                if rest == b"."
                    || rest == b".."
                    || rest.starts_with(b"./")
                    || rest.starts_with(b"../")
                {
                    return false;
                }
            }
            _ => {}
        }
        prev = b;
    }
    true
}

fn decode_unreserved(bytes: &[u8]) -> Result<String, PathError> {
    let mut out = String::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).ok_or(PathError::BadEscape)?;
                let v = (hex_val(hex[0])? << 4) | hex_val(hex[1])?;
                match v {
                    b'/' | b'\\' | 0 => return Err(PathError::EncodedSeparator),
                    // Raw ones arrive here encoded too: Pingora escapes an illegal request
                    // line before any hook runs, so both spellings are refused alike.
                    0x01..=0x1f | 0x7f => return Err(PathError::EncodedControl),
                    v if is_unreserved(v) => out.push(v as char),
                    v => {
                        out.push('%');
                        out.push(char::from(b"0123456789ABCDEF"[usize::from(v >> 4)]));
                        out.push(char::from(b"0123456789ABCDEF"[usize::from(v & 15)]));
                    }
                }
                i += 3;
            }
            b'\\' | 0..=0x20 | 0x7f => return Err(PathError::BadByte),
            _ if b.is_ascii() => {
                out.push(b as char);
                i += 1;
            }
            _ => {
                // Raw non-ASCII bytes: keep the UTF-8 sequence as it came.
                let len = utf8_len(b);
                let chunk = bytes.get(i..i + len).ok_or(PathError::BadByte)?;
                out.push_str(std::str::from_utf8(chunk).map_err(|_| PathError::BadByte)?);
                i += len;
            }
        }
    }
    Ok(out)
}

fn utf8_len(first: u8) -> usize {
    match first {
        0xF0..=0xF7 => 4,
        0xE0..=0xEF => 3,
        _ => 2,
    }
}

fn hex_val(c: u8) -> Result<u8, PathError> {
    match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        b'A'..=b'F' => Ok(c - b'A' + 10),
        _ => Err(PathError::BadEscape),
    }
}

fn is_unreserved(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~')
}

/// Merges empty segments and resolves `.`/`..` (RFC 3986 §5.2.4; `..` never climbs above `/`).
fn remove_dot_segments(path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    let parts: Vec<&str> = path.split('/').skip(1).collect();
    let last = parts.len().saturating_sub(1);
    let mut trailing_slash = false;
    for (i, seg) in parts.iter().enumerate() {
        match *seg {
            "" | "." => trailing_slash = i == last,
            ".." => {
                segments.pop();
                trailing_slash = i == last;
            }
            s => {
                segments.push(s);
                trailing_slash = false;
            }
        }
    }
    let mut out = String::with_capacity(path.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if trailing_slash || segments.is_empty() {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_forms() {
        for (input, want) in [
            ("/admin", "/admin"),
            ("//admin", "/admin"),
            ("/public/../admin", "/admin"),
            ("/%61dmin", "/admin"),
            ("/a/./b/", "/a/b/"),
            ("/a/b/..", "/a/"),
            ("/../../x", "/x"),
            ("/", "/"),
            ("/a//b///", "/a/b/"),
            ("/%2e%2e/admin", "/admin"),
            ("/a%20b", "/a%20b"),
            ("/a%3fb", "/a%3Fb"),
            ("/caf\u{e9}", "/caf\u{e9}"),
            ("/..", "/"),
            ("/.hidden/x", "/.hidden/x"),
        ] {
            assert_eq!(normalize(input).as_deref(), Ok(want), "{input}");
        }
    }

    #[test]
    fn unsafe_paths_are_refused() {
        assert_eq!(normalize("/a%2Fb"), Err(PathError::EncodedSeparator));
        assert_eq!(normalize("/a%00"), Err(PathError::EncodedSeparator));
        assert_eq!(normalize("/a%5cb"), Err(PathError::EncodedSeparator));
        assert_eq!(normalize("/a%zz"), Err(PathError::BadEscape));
        assert_eq!(normalize("/a%4"), Err(PathError::BadEscape));
        assert_eq!(normalize("a"), Err(PathError::NotAbsolute));
        assert_eq!(normalize("/a\\b"), Err(PathError::BadByte));
        assert_eq!(normalize("/a%09b"), Err(PathError::EncodedControl));
        assert_eq!(normalize("/public/..;/admin"), Err(PathError::DotParameter));
        assert_eq!(normalize("/public/.;x/admin"), Err(PathError::DotParameter));
        assert_eq!(normalize("/admin."), Err(PathError::TrailingDotOrSpace));
        assert_eq!(normalize("/admin%20"), Err(PathError::TrailingDotOrSpace));
        assert_eq!(normalize("/admin%2e"), Err(PathError::TrailingDotOrSpace));
        assert_eq!(normalize("/a.b/c;v=1").as_deref(), Ok("/a.b/c;v=1"));
        assert_eq!(normalize("/a%7Fb"), Err(PathError::EncodedControl));
        assert_eq!(normalize("/a%20b").as_deref(), Ok("/a%20b"));
    }
}
