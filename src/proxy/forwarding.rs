//! What a proxy owes the upstream about the original request: the client's IP (believing
//! `X-Forwarded-For` only from trusted proxies), `X-Forwarded-*`, a request id, and no
//! hop-by-hop headers.

use crate::errors::GatewayError;
use crate::snapshot::Settings;
use http::header::{
    HeaderMap, HeaderName, CONNECTION, CONTENT_LENGTH, EXPECT, HOST, TRANSFER_ENCODING, UPGRADE,
};
use http::HeaderValue;
use pingora::http::{RequestHeader, ResponseHeader};
use std::borrow::Cow;
use std::net::IpAddr;

// Parsed once, as `errors::X_REQUEST_ID` (which says how each is used).
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// Keeps a client's request id when it is sane (≤128 chars of `[A-Za-z0-9._:-]`), else
/// makes a new random one.
pub fn request_id(incoming: Option<&[u8]>) -> String {
    match incoming {
        Some(id)
            if !id.is_empty()
                && id.len() <= 128
                && id
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(b)) =>
        {
            String::from_utf8_lossy(id).into_owned()
        }
        _ => hex_string(fastrand::u128(..), 32),
    }
}

/// Every `X-Forwarded-For` line as one list (several lines mean the same as one
/// comma-joined line, RFC 9110 §5.3): a front proxy that adds its own line must not let the
/// client's line decide the client IP. Bytes that are not text stay, unparseable, in place.
pub fn forwarded_chain(headers: &HeaderMap) -> Option<Cow<'_, str>> {
    let mut lines = headers.get_all(&X_FORWARDED_FOR).iter();
    let first = lines.next()?;
    let text = |v: &'_ http::HeaderValue| String::from_utf8_lossy(v.as_bytes()).into_owned();
    match lines.next() {
        None => Some(match first.to_str() {
            Ok(s) => Cow::Borrowed(s),
            Err(_) => Cow::Owned(text(first)),
        }),
        Some(second) => {
            let mut all = vec![text(first), text(second)];
            all.extend(lines.map(text));
            Some(Cow::Owned(all.join(", ")))
        }
    }
}

/// The client's IP: the connection peer, or — when the peer is a trusted proxy — the
/// right-most `X-Forwarded-For` entry that is not itself a trusted proxy.
pub fn client_ip(peer: Option<IpAddr>, xff: Option<&str>, settings: &Settings) -> Option<IpAddr> {
    let peer = peer?;
    let Some(xff) = xff.filter(|_| settings.is_trusted(peer)) else {
        return Some(peer);
    };
    let mut client = peer;
    for hop in xff.rsplit(',') {
        match hop.trim().parse::<IpAddr>() {
            Ok(ip) => {
                client = ip;
                if !settings.is_trusted(ip) {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    Some(client)
}

/// `X-Forwarded-For` to send: appended to when the peer is trusted, replaced otherwise
/// (an untrusted client must not be able to forge the chain).
pub fn forwarded_for(peer: IpAddr, xff: Option<&str>, settings: &Settings) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    if let Some(existing) = xff.filter(|x| !x.trim().is_empty() && settings.is_trusted(peer)) {
        out.extend_from_slice(existing.as_bytes());
        out.extend_from_slice(b", ");
    }
    push_ip(&mut out, peer);
    out
}

/// An IP as text; IPv4 digit by digit (it runs per request; `Display` is slower).
pub fn push_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                out.extend_from_slice(itoa::Buffer::new().format(*octet).as_bytes());
            }
        }
        IpAddr::V6(v6) => {
            use std::io::Write;
            let _ = write!(out, "{v6}");
        }
    }
}

/// A valid `traceparent`'s trace id (hex), parent span id and flags.
fn parse_traceparent(tp: &str) -> Option<(&str, u64, u8)> {
    let mut parts = tp.trim().split('-');
    let (version, trace_id, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let nonzero = |s: &str| s.bytes().any(|b| b != b'0');
    let valid = hex(version, 2)
        && version != "ff"
        && hex(trace_id, 32)
        && nonzero(trace_id)
        && hex(parent, 16)
        && nonzero(parent)
        && hex(flags, 2);
    if !valid {
        return None;
    }
    let parent = u64::from_str_radix(parent, 16).ok()?;
    Some((trace_id, parent, u8::from_str_radix(flags, 16).ok()?))
}

/// This hop's W3C trace context.
pub struct TraceContext {
    /// The `traceparent` to send upstream: `00-TRACE-SPAN-FLAGS` (see [`trace_id`]).
    pub header: String,
    /// This hop's span id (the header's).
    pub span: u64,
    /// The caller's span id and flags, from a valid incoming `traceparent`.
    pub caller: Option<(u64, u8)>,
}

/// W3C trace context for the upstream hop: keeps the trace id and flags of a valid
/// incoming `traceparent` (else starts a sampled trace) and gives this hop a new span id.
pub fn traceparent(incoming: Option<&str>) -> TraceContext {
    let parsed = incoming.and_then(parse_traceparent);
    let span = fastrand::u64(1..);
    let mut header = Vec::with_capacity(55);
    header.extend_from_slice(b"00-");
    match parsed {
        Some((id, _, _)) => header.extend_from_slice(id.as_bytes()),
        None => push_hex(&mut header, fastrand::u128(1..), 32),
    }
    header.push(b'-');
    push_hex(&mut header, span.into(), 16);
    header.push(b'-');
    push_hex(
        &mut header,
        parsed.map_or(1, |(_, _, flags)| flags).into(),
        2,
    );
    TraceContext {
        // ASCII throughout: the trace id was checked to be hex.
        header: String::from_utf8(header).unwrap_or_default(),
        span,
        caller: parsed.map(|(_, parent, flags)| (parent, flags)),
    }
}

// The parts of a `traceparent` this module made: `00-TRACE-SPAN-FLAGS`.

pub fn trace_id(traceparent: &str) -> &str {
    traceparent.get(3..35).unwrap_or_default()
}

/// This hop's span id; None before the request's context is made.
pub fn span_id(traceparent: &str) -> Option<&str> {
    traceparent.get(36..52)
}

/// Tells the upstream this trace is not sampled (flags `00`).
pub fn mark_unsampled(traceparent: &mut String) {
    traceparent.replace_range(53.., "00");
}

/// `value`'s low `digits` hex digits, zero-padded (ids are made per request, so this
/// avoids the formatting machinery).
fn hex_string(value: u128, digits: usize) -> String {
    let mut s = Vec::with_capacity(digits);
    push_hex(&mut s, value, digits);
    String::from_utf8(s).unwrap_or_default()
}

/// Appends `value`'s last `digits` hex digits (ASCII; text is made once by the caller).
fn push_hex(out: &mut Vec<u8>, value: u128, digits: usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    // Two digits per byte from the low bytes up, then the last `digits` (u128 shifts by a
    // variable amount per digit cost several times more).
    let digits = digits.min(32);
    let bytes = digits.div_ceil(2);
    let mut buf = [0u8; 32];
    let low = value.to_be_bytes();
    for (pair, byte) in buf[32 - 2 * bytes..]
        .chunks_exact_mut(2)
        .zip(&low[16 - bytes..])
    {
        pair[0] = HEX[usize::from(byte >> 4)];
        pair[1] = HEX[usize::from(byte & 0xf)];
    }
    out.extend_from_slice(&buf[32 - digits..]);
}

/// The hop-by-hop headers of RFC 9110 §7.6.1 and their legacy forms.
const HOP_BY_HOP: [&str; 7] = [
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "proxy-authenticate",
    "proxy-authorization",
    "upgrade",
];

/// Whether `name` (any case) is one of [`HOP_BY_HOP`]; a length check rejects most names.
fn is_hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
}

/// The names [`hop_by_hop`] finds, inline (it runs for every response).
pub type HopByHop = smallvec::SmallVec<[HeaderName; 4]>;

/// Hop-by-hop headers to drop: the fixed list plus those named in `Connection`. An upgrade
/// (e.g. WebSocket) keeps `Connection`/`Upgrade` so Pingora can tunnel it. One pass over
/// the names; a name `Connection` lists is only made when the headers have it (most
/// listed names, such as `keep-alive`, are not there), since this runs for every response.
pub fn hop_by_hop(headers: &HeaderMap) -> HopByHop {
    let mut names = HopByHop::new();
    let (mut connection, mut upgrade) = (false, false);
    for name in headers.keys() {
        if *name == CONNECTION {
            connection = true;
        } else if is_hop_by_hop(name.as_str()) {
            upgrade |= *name == UPGRADE;
            names.push(name.clone());
        }
    }
    if !connection {
        return names;
    }
    let listed = || {
        headers
            .get_all(CONNECTION)
            .iter()
            .flat_map(|v| v.to_str().unwrap_or_default().split(','))
            .map(str::trim)
    };
    if upgrade && listed().any(|n| n.eq_ignore_ascii_case("upgrade")) {
        return HopByHop::new();
    }
    // `close` names no header, and the fixed list is already in: only other names are
    // looked up (a lookup by text parses the name).
    let fixed = |n: &str| n.eq_ignore_ascii_case("close") || is_hop_by_hop(n);
    let present = listed()
        .filter(|n| !n.is_empty() && !fixed(n) && headers.contains_key(*n))
        .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok());
    for name in present {
        if !names.contains(&name) {
            names.push(name);
        }
    }
    names.push(CONNECTION);
    names.retain(|n| *n != CONTENT_LENGTH && *n != TRANSFER_ENCODING);
    names
}

/// Makes a copy of a client's request the gateway's own, to send itself (an aggregate's
/// calls, a mirror's copy): the host named (an HTTP/2 client names it in `:authority`, and
/// the call may be HTTP/1.1), hop-by-hop headers, the client's framing and `Expect`
/// dropped (the call frames its own body, which it already holds).
pub fn own_request(req: &mut RequestHeader, authority: Option<&http::uri::Authority>) {
    if !req.headers.contains_key(HOST) {
        if let Some(authority) = authority.map(|a| a.to_string()) {
            let _ = req.insert_header(HOST, authority);
        }
    }
    for name in hop_by_hop(&req.headers) {
        req.remove_header(&name);
    }
    for name in [CONTENT_LENGTH, TRANSFER_ENCODING, EXPECT] {
        req.remove_header(&name);
    }
}

/// RFC 9110 §8.6: a Content-Length repeated (two fields, or a list `5, 5`) is one length
/// when every value agrees, sent on as one field; values that disagree, or are not numbers,
/// are a framing that cannot be trusted (the upstream's answer is refused).
pub fn one_content_length(resp: &mut ResponseHeader) -> Result<(), GatewayError> {
    let mut values = resp.headers.get_all(CONTENT_LENGTH).iter();
    let first = values.next();
    let single = values.next().is_none();
    if first.is_none_or(|v| single && !v.as_bytes().contains(&b',')) {
        return Ok(());
    }
    let mut length: Option<&[u8]> = None;
    let items = resp.headers.get_all(CONTENT_LENGTH).iter();
    for item in items.flat_map(|v| v.as_bytes().split(|b| *b == b',')) {
        let item = item.trim_ascii();
        let number = !item.is_empty() && item.iter().all(u8::is_ascii_digit);
        if !number || length.is_some_and(|l| l != item) {
            return Err(GatewayError::UpstreamBadResponse);
        }
        length = Some(item);
    }
    let value = length.and_then(|l| HeaderValue::from_bytes(l).ok());
    let value = value.ok_or(GatewayError::UpstreamBadResponse)?;
    resp.insert_header(CONTENT_LENGTH, value)
        .map_err(|_| GatewayError::UpstreamBadResponse)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ips_are_written_as_display_would() {
        for ip in [
            "127.0.0.1",
            "10.200.3.45",
            "0.0.0.0",
            "2001:db8::1",
            "::ffff:10.0.0.1",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            let mut out = Vec::new();
            push_ip(&mut out, ip);
            assert_eq!(out, ip.to_string().as_bytes());
        }
    }

    #[test]
    fn every_forwarded_for_line_counts() {
        let mut h = HeaderMap::new();
        assert_eq!(forwarded_chain(&h), None);
        h.append(&X_FORWARDED_FOR, "10.9.9.9".parse().unwrap());
        assert_eq!(forwarded_chain(&h).as_deref(), Some("10.9.9.9"));
        h.append(&X_FORWARDED_FOR, "8.8.8.8, 10.0.0.1".parse().unwrap());
        assert_eq!(
            forwarded_chain(&h).as_deref(),
            Some("10.9.9.9, 8.8.8.8, 10.0.0.1")
        );
        let s = settings(&["127.0.0.1/32", "10.0.0.0/8"]);
        let chain = forwarded_chain(&h);
        let client = client_ip(Some("127.0.0.1".parse().unwrap()), chain.as_deref(), &s);
        assert_eq!(
            client,
            Some("8.8.8.8".parse().unwrap()),
            "the front proxy's line decides"
        );
    }
    use std::time::Duration;

    fn settings(trusted: &[&str]) -> Settings {
        Settings {
            proxy_addr: Some("127.0.0.1:1".parse().unwrap()),
            proxy_tls_addr: None,
            drain_delay: Duration::ZERO,
            log_format: Default::default(),
            h2c: false,
            redirect_https: false,
            admin_addr: "127.0.0.1:2".parse().unwrap(),
            threads: 1,
            trusted_proxies: trusted.iter().map(|t| t.parse().unwrap()).collect(),
            grace_period: Duration::from_secs(1),
            shutdown_timeout: Duration::from_secs(1),
            resolve_interval: Duration::from_secs(1),
            upgrade_socket: String::new(),
            pid_file: None,
            header_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
            body_timeout: Duration::from_secs(1),
            max_connections: 1,
            max_requests_per_connection: 1,
            max_streams_per_connection: 1,
            send_timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn client_ip_believes_only_trusted_hops() {
        let s = settings(&["10.0.0.0/8"]);
        let ip = |x: &str| x.parse::<IpAddr>().ok();
        assert_eq!(client_ip(ip("1.2.3.4"), Some("9.9.9.9"), &s), ip("1.2.3.4"));
        assert_eq!(
            client_ip(ip("10.0.0.1"), Some("9.9.9.9, 5.5.5.5, 10.1.1.1"), &s),
            ip("5.5.5.5")
        );
        assert_eq!(client_ip(ip("10.0.0.1"), None, &s), ip("10.0.0.1"));
        assert_eq!(
            forwarded_for("1.2.3.4".parse().unwrap(), Some("6.6.6.6"), &s),
            b"1.2.3.4"
        );
        assert_eq!(
            forwarded_for("10.0.0.2".parse().unwrap(), Some("6.6.6.6"), &s),
            b"6.6.6.6, 10.0.0.2"
        );
    }

    #[test]
    fn traceparent_keeps_valid_trace_ids() {
        let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let tc = traceparent(Some(incoming));
        let header = tc.header;
        assert_eq!(trace_id(&header), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(
            header.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-") && header.ends_with("-01")
        );
        assert!(
            !header.contains("00f067aa0ba902b7"),
            "a new span id for this hop"
        );
        let fresh = traceparent(Some(
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        ))
        .header;
        assert_ne!(trace_id(&fresh), "00000000000000000000000000000000");
        assert_eq!(traceparent(None).header.len(), 55);
        let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        assert!(
            traceparent(Some(unsampled)).header.ends_with("-00"),
            "flags kept"
        );
        assert_eq!(hex_string(0xab, 4), "00ab");
        assert_eq!(hex_string(0x1ab, 3), "1ab");
        assert_eq!(hex_string(0x1, 2), "01");
        assert_eq!(hex_string(u128::MAX, 32), "f".repeat(32));
    }

    #[test]
    fn request_ids_and_hosts() {
        assert_eq!(request_id(Some(b"abc-123")), "abc-123");
        assert_eq!(request_id(Some(b"bad id\n")).len(), 32);
    }

    #[test]
    fn hop_by_hop_includes_connection_listed() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, "keep-alive, x-secret".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        let names: Vec<_> = hop_by_hop(&h).iter().map(|n| n.to_string()).collect();
        assert_eq!(names, ["keep-alive", "x-secret", "connection"]);
    }

    #[test]
    fn an_upgrade_keeps_connection_and_upgrade() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, "Upgrade".parse().unwrap());
        h.insert(UPGRADE, "websocket".parse().unwrap());
        assert!(hop_by_hop(&h).is_empty());
        h.insert(CONNECTION, "close".parse().unwrap());
        assert_eq!(hop_by_hop(&h).as_slice(), [UPGRADE, CONNECTION]);
        h.remove(CONNECTION);
        assert_eq!(hop_by_hop(&h).as_slice(), [UPGRADE]);
    }
}
