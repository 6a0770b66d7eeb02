//! A route's `timeout` bounds the whole exchange with the upstream, its response head
//! included. Pingora's read timeout is per read, so an HTTP/1.1 upstream trickling its
//! head a byte at a time never trips it. When a request with a deadline gets an HTTP/1.1
//! connection, a timer holds a duplicate of the connection's socket and shuts the socket
//! down at the deadline: the pending read ends and the request fails as `route_timeout`.
//! The duplicate is the timer's own descriptor, so it can never reach a socket opened after
//! the connection closed. (An HTTP/2 upstream's head is read under one timeout already, and
//! its connection carries other requests' streams.)

use crate::descriptors::UpstreamHeld;
use std::net::{Shutdown, TcpStream};
use std::os::fd::{BorrowedFd, RawFd};
use std::time::Instant;

/// Stops its timer (and closes its descriptor, giving back its share) when dropped: once the
/// answer's head is in, on a retry's new connection, or at the request's end.
pub struct Watchdog(tokio::task::JoinHandle<()>);

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Arms a watchdog over the connection behind `fd`, which Pingora lends for this call. Its
/// duplicate is a descriptor of its own, so it holds one from the upstream connections'
/// share (`held`) for as long as it lives.
pub fn arm(fd: RawFd, deadline: Instant, held: UpstreamHeld) -> Option<Watchdog> {
    // SAFETY: Pingora passes the descriptor of the connection it holds for this request,
    // open for the duration of the callback this is called from; it is only duplicated.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    // Any socket (TCP or Unix) takes shutdown(2); TcpStream is only its owner here.
    let socket = TcpStream::from(borrowed.try_clone_to_owned().ok()?);
    Some(Watchdog(tokio::spawn(async move {
        let _held = held;
        tokio::time::sleep_until(deadline.into()).await;
        let _ = socket.shutdown(Shutdown::Both);
    })))
}
