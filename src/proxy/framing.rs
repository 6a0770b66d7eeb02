//! Request heads whose framing or target could be read two ways are refused before anything
//! reaches an upstream (RFC 9112 §6.3 lets a proxy reject what it cannot frame
//! unambiguously; nginx refuses the same): repeated or list-valued `Content-Length`,
//! `Transfer-Encoding` other than exactly `chunked`, both framings at once, control bytes in
//! the target, and bare-LF line endings, which some servers accept and others do not.
//! HTTP/1 heads are judged on their raw bytes: Pingora's parsed head has already dropped
//! `Content-Length` beside `Transfer-Encoding`. A chunked body's own framing (chunk sizes,
//! CRLFs) is judged by reading it whole before the upstream is contacted.

use crate::errors::{Code, GatewayError, Refusal};
use http::header::{EXPECT, TRANSFER_ENCODING};
use pingora::protocols::http::ServerSession;
use pingora::proxy::Session;

/// The most of a chunked body read before the upstream is contacted: Pingora sends a body
/// it has already read from its retry buffer, which holds 64 KiB.
pub const CHUNKED_BUFFER: u64 = 64 * 1024;

/// A chunked body too large to read whole before the upstream is contacted.
pub const CHUNKED_TOO_LARGE: Refusal = Refusal::fixed(
    411,
    Code::LengthRequired,
    "a chunked request body over 64 KiB is not accepted on this route: send \
              Content-Length, or set `stream_request_body: true` on the route",
);

/// The raw values of the framing headers in a head.
#[derive(Default)]
struct Framing<'a> {
    lengths: Vec<&'a [u8]>,
    codings: Vec<&'a [u8]>,
    bare_lf: bool,
    /// The request line is `METHOD SP target SP version` without control bytes.
    clean_line: bool,
}

/// `METHOD SP target SP version`, without control bytes.
fn clean_request_line(line: &[u8]) -> bool {
    let mut spaces = 0;
    let mut clean = true;
    for b in line {
        spaces += usize::from(*b == b' ');
        clean &= (*b > 0x20 && *b != 0x7f) || *b == b' ';
    }
    clean && spaces == 2
}

/// One pass over the head's lines (it runs for every request, and a head with a token is
/// long: line ends are found with memchr); only lines that may be framing headers are
/// looked at closely.
fn scan(head: &[u8]) -> Framing<'_> {
    let mut f = Framing::default();
    let mut start = 0;
    for end in memchr::memchr_iter(b'\n', head) {
        let raw = &head[start..end];
        let line = raw.strip_suffix(b"\r").unwrap_or_else(|| {
            f.bare_lf = true;
            raw
        });
        framing_line(&mut f, line, start == 0);
        start = end + 1;
    }
    // What follows the last `\n` (nothing, in a complete head) needs no `\r`.
    framing_line(&mut f, &head[start..], start == 0);
    f
}

/// Notes what one line of the head says about framing.
fn framing_line<'a>(f: &mut Framing<'a>, line: &'a [u8], first: bool) {
    if first {
        f.clean_line = clean_request_line(line);
        return;
    }
    if !matches!(line.first(), Some(b'c' | b'C' | b't' | b'T')) {
        return;
    }
    let Some(colon) = memchr::memchr(b':', line) else {
        return;
    };
    let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
    if name.eq_ignore_ascii_case(b"content-length") {
        f.lengths.push(value);
    } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
        f.codings.push(value);
    }
}

/// Why a head is refused; None when its framing is unambiguous.
pub fn ambiguity(session: &Session) -> Option<&'static str> {
    let req = session.req_header();
    if req.raw_path().iter().any(|b| *b < 0x21 || *b == 0x7f) {
        return Some("the request target holds a control character or a space");
    }
    let ServerSession::H1(h1) = session.as_downstream() else {
        return None;
    };
    let head = h1.get_headers_raw_bytes();
    let f = scan(&head);
    if !f.clean_line {
        return Some("the request line holds a control character or extra spaces");
    }
    if f.bare_lf {
        return Some("header lines must end with CRLF, not a bare LF");
    }
    if f.lengths.len() > 1 {
        return Some("the request has several Content-Length headers");
    }
    if f.lengths
        .iter()
        .any(|v| v.is_empty() || !v.iter().all(u8::is_ascii_digit))
    {
        return Some("Content-Length must be one number");
    }
    if f.codings.len() > 1
        || f.codings
            .iter()
            .any(|v| !v.eq_ignore_ascii_case(b"chunked"))
    {
        return Some("the only Transfer-Encoding accepted is `chunked`, once");
    }
    if !f.lengths.is_empty() && !f.codings.is_empty() {
        return Some("Content-Length and Transfer-Encoding together frame the body two ways");
    }
    None
}

/// Reads a chunked HTTP/1 request body whole, so a malformed chunk is refused before
/// anything reaches the upstream; Pingora then sends it from its retry buffer.
pub async fn read_chunked(session: &mut Session, limit: u64) -> Result<(), GatewayError> {
    let chunked = matches!(session.as_downstream(), ServerSession::H1(_))
        && session.req_header().headers.contains_key(TRANSFER_ENCODING)
        && !session.is_upgrade_req();
    if !chunked || session.is_body_done() {
        return Ok(());
    }
    // The client waits for this before sending the body; the upstream gets no `Expect`, as
    // the body is already here.
    if session.req_header_mut().remove_header(&EXPECT).is_some() {
        session
            .write_continue_response()
            .await
            .map_err(|_| GatewayError::BadRequest)?;
    }
    session.enable_retry_buffering();
    let mut read = 0;
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => read += chunk.len() as u64,
            Ok(None) => return Ok(()),
            Err(e) if matches!(e.etype().as_str(), "InvalidChunk" | "InvalidTrailerEnd") => {
                let why = "the chunked body is malformed (a chunk size or its CRLF)";
                return Err(GatewayError::BadFraming(why));
            }
            Err(e) => {
                return Err(GatewayError::from_pingora(&e).unwrap_or(GatewayError::BadRequest));
            }
        }
        if read > limit {
            return Err(GatewayError::BodyTooLarge { limit });
        }
        if read > CHUNKED_BUFFER {
            return Err(CHUNKED_TOO_LARGE.into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scans_raw_framing_lines() {
        let f = scan(b"POST / HTTP/1.1\r\nHost: a\r\ncontent-LENGTH:  5 \r\nTransfer-Encoding: gzip, chunked\r\n\r\n");
        assert_eq!(f.lengths, vec![&b"5"[..]]);
        assert_eq!(f.codings, vec![&b"gzip, chunked"[..]]);
        assert!(!f.bare_lf && f.clean_line);
        assert!(scan(b"GET / HTTP/1.1\nHost: a\r\n\r\n").bare_lf);
        assert!(
            scan(b"GET / HTTP/1.1\r\nHost: a\r\n\n").bare_lf,
            "the blank line too"
        );
        assert!(!scan(b"GET /a\tb HTTP/1.1\r\n\r\n").clean_line);
        assert!(!scan(b"GET /a\x7fb HTTP/1.1\r\n\r\n").clean_line);
        assert!(!scan(b"GET /a b HTTP/1.1\r\n\r\n").clean_line);
    }
}
