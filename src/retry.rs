//! A route's `retry`: which failed tries are tried again (connect failures, resets,
//! timeouts, chosen 5xx answers), how many tries in all, each try's time limit, the backoff
//! between tries, and a budget that keeps retries from multiplying an outage.
//!
//! The budget is a balance of retries: it starts at [`RESERVE`] retries, each request on
//! the route adds `budget` of a retry (20 % adds a fifth), each retry takes one, and it
//! never holds more than [`RESERVE`] plus `budget` of [`WINDOW`] requests. So over any run
//! of N requests, retries ≤ RESERVE + budget × N, whatever the upstream does. It is kept
//! across reloads while the route's name and budget stay.

use crate::diag::Diags;
use crate::units::duration;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// `retry:` on a route.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    /// Tries in all, the first included (default 2; at most 10).
    #[serde(default = "default_attempts")]
    pub attempts: u32,
    /// What is tried again: `connect` (the upstream was never reached), `reset` (the
    /// connection failed before an answer), `timeout` (no answer within the try's time), and
    /// answer statuses such as 502, 503, 504. Default: [connect].
    #[serde(default = "default_on")]
    pub on: Vec<RetryOnText>,
    /// Longest one try may wait for an answer (default: the upstream's read timeout).
    #[schemars(with = "Option<crate::units::DurationText>")]
    #[serde(default, with = "duration::option")]
    pub per_try_timeout: Option<Duration>,
    /// The wait before the first retry, doubled for each next one, with jitter (default 25ms).
    #[schemars(with = "Option<crate::units::DurationText>")]
    #[serde(default, with = "duration::option")]
    pub backoff: Option<Duration>,
    /// Retries are at most this share of the route's requests, as `20%` (default 20%).
    #[serde(default = "default_budget")]
    pub budget: String,
}

/// A condition as written: a word or a status.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, Hash)]
#[serde(untagged)]
pub enum RetryOnText {
    Status(u16),
    Word(String),
}

fn default_attempts() -> u32 {
    2
}
fn default_on() -> Vec<RetryOnText> {
    vec![RetryOnText::Word("connect".into())]
}
fn default_budget() -> String {
    "20%".into()
}

/// Why a try is retried: the label of `portico_upstream_retries_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Connect,
    Reset,
    Timeout,
    Status(u16),
}

impl Reason {
    pub fn label(self) -> String {
        match self {
            Reason::Connect => "connect".into(),
            Reason::Reset => "reset".into(),
            Reason::Timeout => "timeout".into(),
            Reason::Status(s) => s.to_string(),
        }
    }
}

/// Retries held in reserve, and the requests whose share the balance may hold at most.
pub const RESERVE: u64 = 10;
pub const WINDOW: u64 = 100;
const MAX_ATTEMPTS: u32 = 10;
/// Balances are kept in thousandths of a retry.
const ONE: u64 = 1000;

pub struct RetryPolicy {
    pub attempts: u32,
    pub connect: bool,
    pub reset: bool,
    pub timeout: bool,
    pub statuses: Vec<u16>,
    pub per_try_timeout: Option<Duration>,
    pub backoff: Duration,
    /// The share of requests, in thousandths.
    pub budget_per_mille: u64,
    pub budget: Arc<Budget>,
}

pub struct Budget {
    /// In thousandths of a retry.
    balance: AtomicU64,
}

impl Budget {
    fn new() -> Budget {
        Budget {
            balance: AtomicU64::new(RESERVE * ONE),
        }
    }
}

impl RetryPolicy {
    /// Whether the policy retries for `reason` (before the budget is asked).
    pub fn covers(&self, reason: Reason) -> bool {
        match reason {
            Reason::Connect => self.connect,
            Reason::Reset => self.reset,
            Reason::Timeout => self.timeout,
            Reason::Status(s) => self.statuses.contains(&s),
        }
    }

    /// A request on the route: its share of a retry goes into the budget.
    pub fn deposit(&self) {
        let cap = RESERVE * ONE + self.budget_per_mille * WINDOW;
        let add = self.budget_per_mille;
        let _ = self
            .budget
            .balance
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                Some((b + add).min(cap))
            });
    }

    /// Takes one retry from the budget, if it holds one.
    pub fn withdraw(&self) -> bool {
        self.budget
            .balance
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| b.checked_sub(ONE))
            .is_ok()
    }

    /// The wait before retry `n` (1 for the first): the backoff doubled per retry, with
    /// jitter (half to all of it), so failing clients do not retry in step.
    pub fn backoff_before(&self, n: u32) -> Duration {
        let full = self
            .backoff
            .saturating_mul(1 << n.saturating_sub(1).min(10));
        full / 2 + full.mul_f64(fastrand::f64() / 2.0)
    }

    /// One line for `portico route`.
    pub fn explain(&self) -> String {
        let mut on = Vec::new();
        for (set, word) in [
            (self.connect, "connect"),
            (self.reset, "reset"),
            (self.timeout, "timeout"),
        ] {
            if set {
                on.push(word.to_string());
            }
        }
        on.extend(self.statuses.iter().map(u16::to_string));
        format!(
            "retry: {} tries in all on {}, backoff {}, budget {}%{}",
            self.attempts,
            on.join(", "),
            humantime::format_duration(self.backoff),
            self.budget_per_mille / 10,
            self.per_try_timeout.map_or(String::new(), |t| format!(
                ", {} per try",
                humantime::format_duration(t)
            ))
        )
    }
}

/// Compiles a route's `retry`; the budget is kept across reloads by route and share.
pub fn compile(
    d: &mut Diags,
    state: &mut crate::state::StateCx,
    at: &str,
    route: &str,
    raw: &RawRetry,
) -> Option<RetryPolicy> {
    let at = format!("{at}.retry");
    let errors = d.errors();
    if !(1..=MAX_ATTEMPTS).contains(&raw.attempts) {
        d.error(
            &format!("{at}.attempts"),
            format!("attempts must be 1 to {MAX_ATTEMPTS} (tries in all, the first included)"),
            Some("2 tries once more; leave it out for the default (2)".into()),
        );
    }
    let mut policy = RetryPolicy {
        attempts: raw.attempts,
        connect: false,
        reset: false,
        timeout: false,
        statuses: Vec::new(),
        per_try_timeout: raw.per_try_timeout,
        backoff: raw.backoff.unwrap_or(Duration::from_millis(25)),
        budget_per_mille: 0,
        budget: Arc::new(Budget::new()),
    };
    for (i, on) in raw.on.iter().enumerate() {
        match on {
            RetryOnText::Word(w) if w == "connect" => policy.connect = true,
            RetryOnText::Word(w) if w == "reset" => policy.reset = true,
            RetryOnText::Word(w) if w == "timeout" => policy.timeout = true,
            RetryOnText::Status(s) if (500..=599).contains(s) => policy.statuses.push(*s),
            other => d.error(
                &format!("{at}.on[{i}]"),
                format!("`{}` is not something to retry on", text(other)),
                Some("use connect, reset, timeout or a 5xx status such as 503".into()),
            ),
        }
    }
    if raw.per_try_timeout.is_some_and(|t| t.is_zero()) {
        d.error(
            &format!("{at}.per_try_timeout"),
            "per_try_timeout must be longer than 0",
            Some("give a duration such as 1s, or leave it out".into()),
        );
    }
    match crate::units::per_mille(&raw.budget) {
        Some(per_mille) => policy.budget_per_mille = per_mille,
        None => d.error(
            &format!("{at}.budget"),
            format!("`{}` is not a share such as 20%", raw.budget),
            Some("write a percentage from 0% to 100%".into()),
        ),
    }
    policy.budget = state.keep("retry budget", route, &policy.budget_per_mille, Budget::new);
    (d.errors() == errors).then_some(policy)
}

fn text(on: &RetryOnText) -> String {
    match on {
        RetryOnText::Status(s) => s.to_string(),
        RetryOnText::Word(w) => w.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(per_mille: u64) -> RetryPolicy {
        RetryPolicy {
            attempts: 3,
            connect: true,
            reset: false,
            timeout: false,
            statuses: vec![503],
            per_try_timeout: None,
            backoff: Duration::from_millis(20),
            budget_per_mille: per_mille,
            budget: Arc::new(Budget::new()),
        }
    }

    #[test]
    fn the_budget_holds_retries_to_their_share() {
        let p = policy(200);
        let mut retries = 0;
        for _ in 0..1000 {
            p.deposit();
            retries += (0..2).filter(|_| p.withdraw()).count() as u64;
        }
        assert_eq!(
            retries,
            RESERVE + 200,
            "the reserve, then a fifth of the requests"
        );
        let b = p.backoff_before(3);
        assert!(
            b >= Duration::from_millis(40) && b <= Duration::from_millis(80),
            "{b:?}"
        );
    }
}
