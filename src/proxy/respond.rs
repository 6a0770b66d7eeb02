//! The one responder: every answer Portico writes itself (errors of every kind, direct
//! responses, preflights) goes through [`answer`], which adds what every response gets —
//! the request id, then each route policy's response headers (CORS, `RateLimit-*`, header
//! edits) — exactly as [`decorate`] does for upstream responses.

use super::ctx::Ctx;
use crate::errors::{is_grpc, Counted, GatewayError, X_REQUEST_ID};
use bytes::Bytes;
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::ServerSession;
use pingora::proxy::Session;
use pingora::Result;
use std::time::Duration;

/// How long the unread rest of a refused request's body is read and dropped after the
/// answer (a lingering close, as nginx does): closing on unread bytes resets the
/// connection, and the client may lose the answer with it.
const LINGER: Duration = Duration::from_secs(1);

/// What every response gets, the upstream's and the gateway's own.
pub fn decorate(header: &mut ResponseHeader, ctx: &Ctx) -> Result<()> {
    header.insert_header(X_REQUEST_ID.as_str(), ctx.request.id_header().clone())?;
    if let Some(route) = ctx.route() {
        let info = ctx.info(route);
        for policy in &route.policies {
            policy.unit().on_response(header, &info, &ctx.policy)?;
        }
    }
    Ok(())
}

fn may_have_body(req: &RequestHeader) -> bool {
    req.headers.contains_key(TRANSFER_ENCODING)
        || req
            .headers
            .get(CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0")
}

/// Writes a complete answer made by the gateway. `reusable: false` closes the connection
/// after it (as after a failed proxy attempt). A request body not read whole is drained
/// for at most `LINGER` after the answer; the connection is kept if that finishes it.
pub async fn answer(
    session: &mut Session,
    ctx: &Ctx,
    mut header: ResponseHeader,
    body: Bytes,
    reusable: bool,
) -> Result<()> {
    decorate(&mut header, ctx)?;
    if !reusable {
        session.set_keepalive(None);
    } else if may_have_body(session.req_header()) && !session.is_body_done() {
        match session.as_downstream_mut() {
            ServerSession::H1(h1) => {
                h1.set_close_on_response_before_downstream_finish(false);
                h1.set_total_drain_timeout(Some(LINGER));
            }
            _ => session.set_keepalive(None),
        }
    }
    if session
        .response_written()
        .is_some_and(|r| !r.status.is_informational())
    {
        // Part of the upstream's answer is out already: nothing can replace it.
        return Ok(());
    }
    let empty = body.is_empty();
    session
        .write_response_header(Box::new(header), empty)
        .await?;
    if !empty {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(())
}

/// Answers with a gateway error (JSON with the request id), counting refusals by policy.
pub async fn reject(
    session: &mut Session,
    ctx: &mut Ctx,
    error: &GatewayError,
    reusable: bool,
) -> Result<()> {
    ctx.error_code = Some(error.code());
    if ctx.snapshot.dashboard {
        ctx.error_reason = Some(error.message());
    }
    if ctx.snapshot.metrics {
        if let (Some(route), GatewayError::Refused(r)) = (ctx.route(), error) {
            match r.counted {
                Counted::RateLimited => route.metrics.rate_limited(),
                Counted::AuthFailure => route.metrics.auth_failure(error.code()),
                Counted::Nothing => {}
            }
        }
    }
    if is_grpc(session.req_header()) {
        let header = error.grpc_response(ctx.request.id());
        return answer(session, ctx, header, Bytes::new(), reusable).await;
    }
    let (header, body) = error.response(ctx.request.id());
    answer(session, ctx, header, body, reusable).await
}
