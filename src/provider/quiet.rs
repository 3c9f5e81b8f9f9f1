//! Orchestrator fetches that cannot find work are not sent.
//!
//! Every write that makes an orchestration turn claimable sends a
//! notification (enqueue, ack, abandon, and a worker's completion); what
//! becomes claimable without one, a delayed message or an expiring lock,
//! is covered by the `retry_ms` an empty fetch returns. So once a fetch
//! found nothing, another fetch of this provider with the same version
//! filter cannot find anything either until a notification arrives or
//! that time passes. This module remembers that verdict and lets the
//! long poll wait instead of asking again.
//!
//! A fetch that claims a turn says the same of what it left behind
//! (migration `000015_claim_outlook`): when no other turn was claimable,
//! the dispatcher's next fetch, after running the turn it claimed, waits
//! too instead of asking once more and finding nothing.
//!
//! Looks that follow a notification after such a verdict are serialised:
//! one fetch probes, and the others wait for its verdict instead of racing
//! it for the same instance (the loser of that race finds the instance
//! busy and asks again). Once a fetch claims work and says more may be
//! ready, fetches run concurrently again until one finds nothing.
//!
//! The verdict is only trusted while the listener is connected (the long
//! poll checks), and for no longer than the longer of the listener's
//! heartbeat and the recording fetch's poll timeout: a listener connection
//! that died silently is found out within a heartbeat, and its loss wakes
//! every waiter; an idle provider still looks about once per poll timeout.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::MutexGuard;

/// The version range a fetch filters on (none: every version): verdicts
/// hold for one range only.
pub(crate) type Key = Option<([i32; 3], [i32; 3])>;

/// What the last orchestrator fetch of this provider learned.
#[derive(Clone, Copy, Debug, Default)]
enum Verdict {
    /// Nothing learned yet, or the last fetch failed or found a busy
    /// candidate.
    #[default]
    Unknown,
    /// The last fetch claimed a turn: more may be ready.
    Found,
    /// Nothing was claimable for `key` at wake-up `generation`, and
    /// nothing becomes claimable without a wake-up before `until`.
    Nothing {
        key: Key,
        generation: u64,
        until: Instant,
    },
}

/// One provider's orchestrator-fetch verdict (see the module docs).
#[derive(Default)]
pub(crate) struct Quiet {
    verdict: Mutex<Verdict>,
    /// Held by the one fetch that looks after a `Nothing` went stale.
    probe: tokio::sync::Mutex<()>,
}

/// What a fetch attempt should do.
pub(crate) enum Plan<'a> {
    /// Nothing can be claimable: wait for a wake-up or `until`.
    Wait { until: Instant },
    /// Look, holding the probe if it is `Some`.
    Look(Option<MutexGuard<'a, ()>>),
}

/// How a look ended, as the verdict needs it.
pub(crate) enum Outcome {
    /// A turn was claimed. `rest`: what the claiming call saw of the
    /// queue after its claim, as `Idle`'s `retry` (zero: another turn may
    /// be claimable now); None when it did not say, so more may be ready.
    Claimed { rest: Option<Option<Duration>> },
    /// Nothing claimable; something may be after `retry` (none: nothing
    /// scheduled). Zero means a candidate was busy.
    Idle { retry: Option<Duration> },
    /// The fetch failed.
    Failed,
}

impl Quiet {
    /// The plan the current verdict settles: wait, or look alongside other
    /// fetches; None when only a probe may look.
    fn settled(&self, key: &Key, generation: u64) -> Option<Plan<'_>> {
        match *self.verdict.lock().unwrap_or_else(|e| e.into_inner()) {
            Verdict::Nothing {
                key: ref k,
                generation: g,
                until,
            } if k == key && g >= generation && Instant::now() < until => {
                Some(Plan::Wait { until })
            }
            Verdict::Found => Some(Plan::Look(None)),
            _ => None,
        }
    }

    /// Whether a fetch for `key`, which registered for wake-ups when the
    /// count was `generation`, should look.
    pub(crate) async fn plan(&self, key: &Key, generation: u64) -> Plan<'_> {
        if let Some(plan) = self.settled(key, generation) {
            return plan;
        }
        let probe = self.probe.lock().await;
        // Another fetch may have probed meanwhile.
        self.settled(key, generation)
            .unwrap_or(Plan::Look(Some(probe)))
    }

    /// Records how a look that started at `started`, when the wake-up count
    /// was `generation`, ended. `limit` caps how long a `Nothing` is
    /// trusted.
    pub(crate) fn record(
        &self,
        key: Key,
        generation: u64,
        started: Instant,
        outcome: Outcome,
        limit: Duration,
    ) {
        let mut verdict = self.verdict.lock().unwrap_or_else(|e| e.into_inner());
        *verdict = match outcome {
            Outcome::Claimed { rest: None } => Verdict::Found,
            Outcome::Claimed {
                rest: Some(Some(retry)),
            } if retry.is_zero() => Verdict::Found,
            Outcome::Idle { retry: Some(retry) } if retry.is_zero() => Verdict::Unknown,
            // A claim that left nothing claimable is as good a verdict as
            // a fetch that found nothing: the caller's next fetch waits.
            Outcome::Claimed { rest: Some(retry) } | Outcome::Idle { retry } => {
                // A verdict from a later wake-up is not replaced by an
                // older one that finished after it.
                if let Verdict::Nothing { generation: g, .. } = *verdict
                    && g > generation
                {
                    return;
                }
                Verdict::Nothing {
                    key,
                    generation,
                    until: started + retry.map_or(limit, |r| r.min(limit)),
                }
            }
            Outcome::Failed => Verdict::Unknown,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: Duration = Duration::from_secs(30);
    const ANY: Key = None;

    fn waits(plan: Plan<'_>) -> bool {
        matches!(plan, Plan::Wait { .. })
    }

    fn probes(plan: Plan<'_>) -> bool {
        matches!(plan, Plan::Look(Some(_)))
    }

    #[tokio::test]
    async fn nothing_holds_until_a_wake_up_or_its_time() {
        let q = Quiet::default();
        assert!(probes(q.plan(&ANY, 4).await), "no verdict yet: look");
        let t = Instant::now();
        q.record(ANY, 4, t, Outcome::Idle { retry: None }, LIMIT);
        assert!(waits(q.plan(&ANY, 4).await), "same wake-up: wait");
        assert!(
            probes(q.plan(&ANY, 5).await),
            "a later wake-up: look, as the probe"
        );
        let other: Key = Some(([1, 0, 0], [1, 9, 9]));
        assert!(
            !waits(q.plan(&other, 4).await),
            "another version range: look"
        );

        q.record(
            ANY,
            4,
            t,
            Outcome::Idle {
                retry: Some(Duration::ZERO),
            },
            LIMIT,
        );
        assert!(
            !waits(q.plan(&ANY, 4).await),
            "a busy candidate is work: look"
        );

        let past = Instant::now() - Duration::from_millis(20);
        q.record(
            ANY,
            4,
            past,
            Outcome::Idle {
                retry: Some(Duration::from_millis(10)),
            },
            LIMIT,
        );
        assert!(
            !waits(q.plan(&ANY, 4).await),
            "a scheduled message is due: look"
        );
        q.record(
            ANY,
            4,
            Instant::now(),
            Outcome::Idle { retry: None },
            Duration::ZERO,
        );
        assert!(
            !waits(q.plan(&ANY, 4).await),
            "trusted no longer than the limit"
        );
    }

    #[tokio::test]
    async fn a_claim_lets_fetches_look_together_and_an_older_verdict_loses() {
        let q = Quiet::default();
        q.record(
            ANY,
            7,
            Instant::now(),
            Outcome::Claimed { rest: None },
            LIMIT,
        );
        assert!(matches!(q.plan(&ANY, 7).await, Plan::Look(None)));

        q.record(ANY, 9, Instant::now(), Outcome::Idle { retry: None }, LIMIT);
        q.record(ANY, 8, Instant::now(), Outcome::Idle { retry: None }, LIMIT);
        assert!(
            waits(q.plan(&ANY, 9).await),
            "the verdict of wake-up 9 still stands"
        );
        q.record(ANY, 9, Instant::now(), Outcome::Failed, LIMIT);
        assert!(
            probes(q.plan(&ANY, 9).await),
            "a failure forgets the verdict"
        );
    }

    #[tokio::test]
    async fn a_claim_that_left_nothing_is_a_verdict_and_one_that_left_work_is_not() {
        let q = Quiet::default();
        let claimed = |rest| Outcome::Claimed { rest: Some(rest) };
        q.record(ANY, 3, Instant::now(), claimed(None), LIMIT);
        assert!(
            waits(q.plan(&ANY, 3).await),
            "nothing left, nothing announced since: wait"
        );
        assert!(probes(q.plan(&ANY, 4).await), "a later wake-up: look");

        q.record(ANY, 4, Instant::now(), claimed(Some(Duration::ZERO)), LIMIT);
        assert!(
            matches!(q.plan(&ANY, 4).await, Plan::Look(None)),
            "another turn claimable now: look, alongside other fetches"
        );

        let past = Instant::now() - Duration::from_millis(20);
        q.record(
            ANY,
            4,
            past,
            claimed(Some(Duration::from_millis(10))),
            LIMIT,
        );
        assert!(
            !waits(q.plan(&ANY, 4).await),
            "what the claim saw scheduled is due: look"
        );
    }

    #[tokio::test]
    async fn one_probe_at_a_time_and_the_rest_take_its_verdict() {
        let q = Quiet::default();
        q.record(ANY, 1, Instant::now(), Outcome::Idle { retry: None }, LIMIT);
        let first = q.plan(&ANY, 2).await;
        assert!(matches!(first, Plan::Look(Some(_))));
        let second = q.plan(&ANY, 2);
        tokio::pin!(second);
        assert!(
            futures_util::poll!(second.as_mut()).is_pending(),
            "the second fetch waits for the probe"
        );
        q.record(ANY, 2, Instant::now(), Outcome::Idle { retry: None }, LIMIT);
        drop(first);
        assert!(waits(second.await), "and then trusts its verdict");
    }
}
