//! Acknowledgements whose outcome is unknown are not failed by their retry.
//!
//! An ack can commit while its reply is lost: the call times out, or the
//! connection dies after the statement reached the server. The caller
//! retries with the same lock token (duroxide retries a retryable
//! orchestration ack; `ack_work_item` retries within its window), and the
//! retry finds the lock gone. Reported as a lost lock, that is a permanent
//! error, and duroxide fails the orchestration whose turn in fact
//! committed.
//!
//! So a token is marked before its ack is sent and unmarked once the
//! outcome is known. A lost lock met by an ack whose token was still marked
//! by an earlier attempt of this process is success: either that attempt
//! committed, or it did not and the lock expired, in which case the
//! messages are still queued and the next holder of the lock redoes the
//! work. Neither needs this caller to fail. A lost lock on a token with no
//! earlier uncertain attempt stays an error, as duroxide's contract asks.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// Marks beyond this many are pruned by age on the next insert.
const PRUNE_ABOVE: usize = 1024;
/// Age after which a mark is pruned: far longer than any retry of an ack.
const MAX_AGE: Duration = Duration::from_secs(600);

/// What is known of a token's acks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mark {
    /// An attempt is running. A second attempt that starts meanwhile (two
    /// callers acking the same token at once) learns nothing from it: the
    /// two race for the lock and the loser's lost lock is an error.
    InFlight,
    /// An attempt ended without a known outcome.
    Uncertain,
}

/// Lock tokens of this process with an ack running or of unknown outcome.
#[derive(Debug, Default)]
pub(crate) struct Acks {
    marked: Mutex<HashMap<String, (Mark, Instant)>>,
}

/// Marks its token uncertain when dropped before [`Attempt::settle`]: the
/// attempt's future was dropped (a call limit) or its outcome is unknown.
struct Attempt<'a> {
    acks: &'a Acks,
    token: &'a str,
    settled: bool,
}

impl Attempt<'_> {
    /// The outcome is known: nothing about the token is uncertain.
    fn settle(mut self) {
        self.settled = true;
        self.acks.unmark(self.token);
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if !self.settled {
            self.acks.set(self.token, Mark::Uncertain);
        }
    }
}

impl Acks {
    /// Runs one ack attempt for `token` (see the module docs). A future
    /// dropped before it finishes (a call limit) leaves the token uncertain.
    pub(crate) async fn attempt<F>(&self, token: &str, ack: F) -> Result<()>
    where
        F: Future<Output = Result<()>>,
    {
        let earlier_uncertain = self.set(token, Mark::InFlight) == Some(Mark::Uncertain);
        let attempt = Attempt {
            acks: self,
            token,
            settled: false,
        };
        match ack.await {
            Ok(()) => {
                attempt.settle();
                Ok(())
            }
            Err(Error::LockLost) if earlier_uncertain => {
                attempt.settle();
                tracing::debug!(
                    "ack met a released lock after an attempt with unknown outcome; \
                     reporting success"
                );
                Ok(())
            }
            Err(e) => {
                // Nothing was sent, or the server answered with a refusal:
                // this attempt certainly changed nothing (an earlier
                // uncertain one stays uncertain). Otherwise the drop marks
                // the token uncertain.
                if !earlier_uncertain && (e.is_before_send() || matches!(e, Error::LockLost)) {
                    attempt.settle();
                }
                Err(e)
            }
        }
    }

    /// Sets `token`'s mark, returning the one it replaces.
    fn set(&self, token: &str, mark: Mark) -> Option<Mark> {
        let mut marked = self.marked.lock().unwrap_or_else(|p| p.into_inner());
        if marked.len() >= PRUNE_ABOVE {
            let now = Instant::now();
            marked.retain(|_, (_, at)| now.duration_since(*at) < MAX_AGE);
        }
        marked
            .insert(token.to_owned(), (mark, Instant::now()))
            .map(|(previous, _)| previous)
    }

    fn unmark(&self, token: &str) {
        let mut marked = self.marked.lock().unwrap_or_else(|p| p.into_inner());
        marked.remove(token);
    }

    #[cfg(test)]
    fn is_marked(&self, token: &str) -> bool {
        let marked = self.marked.lock().unwrap_or_else(|p| p.into_inner());
        marked.contains_key(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block_on<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn a_lost_lock_without_an_uncertain_attempt_stays_an_error() {
        let acks = Acks::default();
        let r = block_on(acks.attempt("t", async { Err(Error::LockLost) }));
        assert!(matches!(r, Err(Error::LockLost)));
        assert!(!acks.is_marked("t"));
    }

    #[test]
    fn a_lost_lock_after_an_uncertain_attempt_is_success() {
        let acks = Acks::default();
        let r = block_on(acks.attempt("t", async { Err(Error::Timeout(Duration::from_secs(1))) }));
        assert!(r.is_err());
        assert!(acks.is_marked("t"));
        let r = block_on(acks.attempt("t", async { Err(Error::LockLost) }));
        assert!(r.is_ok());
        assert!(!acks.is_marked("t"));
        // Settled: a further lost lock on the same token is an error again.
        let r = block_on(acks.attempt("t", async { Err(Error::LockLost) }));
        assert!(matches!(r, Err(Error::LockLost)));
    }

    #[test]
    fn a_failure_before_sending_leaves_nothing_uncertain() {
        let acks = Acks::default();
        let r = block_on(acks.attempt("t", async {
            Err(Error::ConnectTimeout(Duration::from_secs(1)))
        }));
        assert!(r.is_err());
        assert!(!acks.is_marked("t"));
        let r = block_on(acks.attempt("t", async { Err(Error::LockLost) }));
        assert!(matches!(r, Err(Error::LockLost)));
    }

    #[test]
    fn of_two_concurrent_attempts_the_one_that_lost_the_lock_fails() {
        let acks = Acks::default();
        block_on(async {
            let (release, released) = tokio::sync::oneshot::channel::<()>();
            let first = acks.attempt("t", async {
                let _ = released.await;
                Ok(())
            });
            let second = async {
                // Runs while the first attempt is in flight.
                let r = acks.attempt("t", async { Err(Error::LockLost) }).await;
                let _ = release.send(());
                r
            };
            let (first, second) = tokio::join!(first, second);
            assert!(first.is_ok());
            assert!(matches!(second, Err(Error::LockLost)), "{second:?}");
        });
        assert!(!acks.is_marked("t"));
    }

    #[test]
    fn a_dropped_attempt_leaves_its_token_uncertain() {
        let acks = Acks::default();
        block_on(async {
            let pending = std::future::pending::<Result<()>>();
            let timed = tokio::time::timeout(Duration::from_millis(1), acks.attempt("t", pending));
            assert!(timed.await.is_err());
        });
        assert!(acks.is_marked("t"));
        let r = block_on(acks.attempt("t", async { Ok(()) }));
        assert!(r.is_ok());
        assert!(!acks.is_marked("t"));
    }
}
