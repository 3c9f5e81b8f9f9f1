//! LISTEN/NOTIFY wake-ups for long-polling fetches.
//!
//! The stored procedures that make work visible send a notification on the
//! schema's channel: payload `o` for the orchestrator queue, `w` for the
//! worker queue, and `o` followed by a number of milliseconds, `:` and the
//! instance's key for an orchestrator message that becomes claimable only
//! then (a held completion, see
//! [`completion_batch_window`](crate::PostgresProviderBuilder::completion_batch_window)).
//! `r` and a key says the instance's held completions were released (wake
//! now, and drop the wake-up scheduled for that key); `c` and a key only
//! drops it (a running turn's commit announces them).
//! One listener connection per provider, started on the first long-polling
//! fetch, turns them into in-process wake-ups. While it is down, waiters fall
//! back to bounded polling and the listener reconnects.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use diesel::dsl::select;
use diesel_async::{AsyncPgConnection, SimpleAsyncConnection};
use futures_util::StreamExt;
use tokio::sync::Notify;

use crate::observe::name;
use crate::pool::Backoff;
use crate::sql::procedures::dx_notify_channel;
use crate::sql::reply::WholeReply;

/// How often a waiter re-checks the queue while no listener is connected.
pub(crate) const FALLBACK_POLL: Duration = Duration::from_millis(250);
/// Pauses between reconnection attempts (before jitter).
const RECONNECT: Backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));

/// Shared wake-up state between the listener task and fetch waiters.
#[derive(Default)]
pub(crate) struct Wakeups {
    pub orchestrator: Notify,
    pub worker: Notify,
    /// Counts orchestrator wake-ups (notifications, reconnections), so a
    /// fetch can tell whether anything was announced since a look that
    /// found nothing (see `quiet`).
    orchestrator_generation: AtomicU64,
    connected: AtomicBool,
    shutdown: Notify,
    stopped: AtomicBool,
}

impl Wakeups {
    /// Whether notifications are currently being received.
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    /// Stops the listener task (on provider drop).
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        self.shutdown.notify_waiters();
        self.shutdown.notify_one();
    }

    /// The orchestrator wake-up count; read it after registering interest
    /// in `orchestrator`, so a later wake-up both bumps it and wakes.
    pub fn orchestrator_generation(&self) -> u64 {
        self.orchestrator_generation.load(Ordering::Acquire)
    }

    fn wake_orchestrators(&self) {
        self.orchestrator_generation.fetch_add(1, Ordering::AcqRel);
        self.orchestrator.notify_waiters();
    }

    fn wake_all(&self) {
        self.wake_orchestrators();
        self.worker.notify_waiters();
    }

    /// Notifications flow; counted in the connected gauge.
    fn set_connected(&self) {
        if !self.connected.swap(true, Ordering::AcqRel) {
            metrics::gauge!(name::LISTENER_CONNECTED).increment(1.0);
        }
    }

    /// Waiters stop trusting notifications and poll, and re-check now.
    fn disconnected(&self) {
        if self.connected.swap(false, Ordering::AcqRel) {
            metrics::gauge!(name::LISTENER_CONNECTED).decrement(1.0);
        }
        self.wake_all();
    }
}

/// How the listener proves it is alive.
pub(crate) struct Liveness {
    /// Bumped when a pooled call found a dead or silent connection: the
    /// listener's may be dead too, so it checks at once.
    pub faults: tokio::sync::watch::Receiver<u64>,
    /// Query the connection after this long without one.
    pub heartbeat: Duration,
    /// A heartbeat query must answer within this.
    pub timeout: Duration,
}

/// Starts the listener task; it runs until [`Wakeups::stop`].
pub(crate) fn spawn(connector: crate::pool::Connector, mut liveness: Liveness) -> Arc<Wakeups> {
    let wakeups = Arc::new(Wakeups::default());
    let state = Arc::clone(&wakeups);
    tokio::spawn(async move {
        // If the task is dropped (its runtime shut down), waiters must not
        // keep trusting a listener that no longer exists.
        let _reset = ResetOnDrop(Arc::clone(&state));
        let mut delay = RECONNECT;
        let mut ever_connected = false;
        // One warning per outage: set when a loss or failure was reported,
        // cleared when notifications flow again.
        let mut outage_reported = false;
        while !state.stopped.load(Ordering::Acquire) {
            let session = async {
                let conn = subscribe(connector.connect().await?, liveness.timeout).await?;
                if ever_connected {
                    metrics::counter!(name::LISTENER_RECONNECTS).increment(1);
                }
                if outage_reported {
                    tracing::info!("duroxide-diesel listener reconnected");
                }
                ever_connected = true;
                outage_reported = false;
                listen(conn, &state, &mut liveness).await;
                // `listen` reported the loss.
                outage_reported = true;
                Ok::<_, crate::Error>(())
            };
            let outcome = tokio::select! {
                outcome = session => outcome,
                _ = state.shutdown.notified() => break,
            };
            state.disconnected();
            match outcome {
                // It was up: reconnect promptly.
                Ok(()) => delay.reset(),
                Err(e) if !outage_reported => {
                    outage_reported = true;
                    tracing::warn!(error = %e, "duroxide-diesel listener disconnected; fetches poll until it is back");
                }
                Err(e) => {
                    tracing::debug!(error = %e, "duroxide-diesel listener still disconnected");
                }
            }
            let pause = jitter(delay.next());
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = state.shutdown.notified() => break,
            }
        }
        state.disconnected();
    });
    wakeups
}

/// `d` scaled by a factor in [0.5, 1.5), so many processes that lost the
/// database together do not reconnect in lockstep.
fn jitter(d: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|t| t.subsec_nanos())
        .unwrap_or(0);
    d.mul_f64(0.5 + f64::from(nanos % 1000) / 1000.0)
}

struct ResetOnDrop(Arc<Wakeups>);

impl Drop for ResetOnDrop {
    fn drop(&mut self) {
        self.0.disconnected();
    }
}

/// Subscribes `conn` to the schema's channel.
async fn subscribe(
    mut conn: AsyncPgConnection,
    timeout: Duration,
) -> crate::Result<AsyncPgConnection> {
    // Bounded like every call: a connection that goes silent right after
    // opening must not hold the listener forever.
    let subscribe = async {
        let channel: String = select(dx_notify_channel()).one(&mut conn).await?;
        conn.batch_execute(&format!("LISTEN \"{channel}\"")).await?;
        Ok::<_, crate::Error>(())
    };
    tokio::time::timeout(timeout, subscribe)
        .await
        .map_err(|_| crate::Error::Timeout(timeout))??;
    Ok(conn)
}

/// Receives notifications on a subscribed connection until it fails or
/// misses a heartbeat, and logs why it ended.
async fn listen(mut conn: AsyncPgConnection, state: &Wakeups, liveness: &mut Liveness) {
    state.set_connected();
    // Anything enqueued before LISTEN took effect is picked up by a re-check.
    state.wake_all();
    liveness.faults.mark_unchanged();
    // Announced `o<ms>` wake-ups still to come, the earliest per key; later
    // ones of a key are found by the fetch that key's wake-up starts (its
    // `retry_ms`).
    let mut deferred = Deferred::default();
    loop {
        // Notifications are buffered by the connection while no stream
        // exists, so the stream can be dropped for a heartbeat.
        {
            let mut stream = std::pin::pin!(conn.notifications_stream());
            let heartbeat = tokio::time::sleep(liveness.heartbeat);
            let mut heartbeat = std::pin::pin!(heartbeat);
            loop {
                tokio::select! {
                    n = stream.next() => match n {
                        Some(Ok(n)) => match Payload::parse(&n.payload) {
                            Payload::Orchestrator => state.wake_orchestrators(),
                            Payload::Worker => state.worker.notify_waiters(),
                            Payload::OrchestratorIn { after, key } => {
                                deferred.schedule(key, tokio::time::Instant::now() + after);
                            }
                            Payload::Released { key, wake } => {
                                deferred.cancel(key);
                                if wake {
                                    state.wake_orchestrators();
                                }
                            }
                            Payload::Unknown => state.wake_all(),
                        },
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, "duroxide-diesel listener connection failed");
                            return;
                        }
                        None => {
                            tracing::warn!("duroxide-diesel listener connection closed");
                            return;
                        }
                    },
                    () = sleep_until_some(deferred.next()) => {
                        deferred.take_due(tokio::time::Instant::now());
                        state.wake_orchestrators();
                    }
                    _ = &mut heartbeat => break,
                    changed = liveness.faults.changed() => {
                        if changed.is_err() {
                            return; // the provider is gone
                        }
                        break;
                    }
                }
            }
        }
        let ping = conn.batch_execute("SELECT 1");
        match tokio::time::timeout(liveness.timeout, ping).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "duroxide-diesel listener heartbeat failed");
                return;
            }
            Err(_) => {
                tracing::warn!(
                    timeout = ?liveness.timeout,
                    "duroxide-diesel listener heartbeat got no reply; reconnecting"
                );
                return;
            }
        }
    }
}

/// What a notification announces.
#[derive(Debug, PartialEq, Eq)]
enum Payload {
    /// Orchestrator work is claimable now.
    Orchestrator,
    /// Worker work is claimable now.
    Worker,
    /// Orchestrator work becomes claimable after this long (a held
    /// completion of the instance with this key; none from the release
    /// that introduced holding).
    OrchestratorIn { after: Duration, key: Option<i64> },
    /// The held completions of the instance with this key were released:
    /// its scheduled wake-up is void; wake now unless a running turn's
    /// commit will announce them.
    Released { key: i64, wake: bool },
    /// Anything else (a newer release's payload): wake everything.
    Unknown,
}

impl Payload {
    fn parse(payload: &str) -> Self {
        match payload {
            "o" => Self::Orchestrator,
            "w" => Self::Worker,
            _ => Self::parse_keyed(payload).unwrap_or(Self::Unknown),
        }
    }

    fn parse_keyed(payload: &str) -> Option<Self> {
        if let Some(rest) = payload.strip_prefix('o') {
            let (ms, key) = match rest.split_once(':') {
                Some((ms, key)) => (ms, Some(key.parse().ok()?)),
                None => (rest, None),
            };
            let after = Duration::from_millis(ms.parse().ok()?);
            return Some(Self::OrchestratorIn { after, key });
        }
        let (wake, key) = match payload.split_at_checked(1)? {
            ("r", key) => (true, key),
            ("c", key) => (false, key),
            _ => return None,
        };
        Some(Self::Released {
            key: key.parse().ok()?,
            wake,
        })
    }
}

/// Wake-ups scheduled by `o<ms>` announcements: the earliest per
/// instance key (`None`: announcements without a key).
#[derive(Default)]
struct Deferred {
    at: std::collections::HashMap<Option<i64>, tokio::time::Instant>,
}

impl Deferred {
    fn schedule(&mut self, key: Option<i64>, at: tokio::time::Instant) {
        self.at
            .entry(key)
            .and_modify(|d| *d = (*d).min(at))
            .or_insert(at);
    }

    /// Drops the wake-up of `key` (its held completions were released).
    fn cancel(&mut self, key: i64) {
        self.at.remove(&Some(key));
    }

    /// The earliest scheduled wake-up.
    fn next(&self) -> Option<tokio::time::Instant> {
        self.at.values().min().copied()
    }

    /// Forgets the wake-ups due by `now` (one wake-up covers them all).
    fn take_due(&mut self, now: tokio::time::Instant) {
        self.at.retain(|_, at| *at > now);
    }
}

/// Sleeps until `at`, or forever when there is nothing to wait for.
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_are_parsed_and_unknown_ones_wake_everything() {
        assert_eq!(Payload::parse("o"), Payload::Orchestrator);
        assert_eq!(Payload::parse("w"), Payload::Worker);
        assert_eq!(
            Payload::parse("o25"),
            Payload::OrchestratorIn {
                after: Duration::from_millis(25),
                key: None
            }
        );
        assert_eq!(
            Payload::parse("o25:-9007"),
            Payload::OrchestratorIn {
                after: Duration::from_millis(25),
                key: Some(-9007)
            }
        );
        assert_eq!(
            Payload::parse("r42"),
            Payload::Released {
                key: 42,
                wake: true
            }
        );
        assert_eq!(
            Payload::parse("c-42"),
            Payload::Released {
                key: -42,
                wake: false
            }
        );
        assert_eq!(Payload::parse("o-1"), Payload::Unknown);
        assert_eq!(Payload::parse("o25:"), Payload::Unknown);
        assert_eq!(Payload::parse("o:7"), Payload::Unknown);
        assert_eq!(Payload::parse("r"), Payload::Unknown);
        assert_eq!(Payload::parse("rx"), Payload::Unknown);
        assert_eq!(Payload::parse("x1"), Payload::Unknown);
        assert_eq!(Payload::parse("ox"), Payload::Unknown);
        assert_eq!(Payload::parse("w5"), Payload::Unknown);
        assert_eq!(Payload::parse(""), Payload::Unknown);
        assert_eq!(Payload::parse("é"), Payload::Unknown);
    }

    #[test]
    fn a_release_drops_only_its_keys_wake_up() {
        let t0 = tokio::time::Instant::now();
        let ms = Duration::from_millis;
        let mut d = Deferred::default();
        assert_eq!(d.next(), None);
        d.schedule(Some(1), t0 + ms(30));
        d.schedule(Some(1), t0 + ms(50)); // a later one of the same key
        d.schedule(Some(2), t0 + ms(40));
        d.schedule(None, t0 + ms(60));
        assert_eq!(d.next(), Some(t0 + ms(30)));
        d.cancel(1);
        assert_eq!(d.next(), Some(t0 + ms(40)), "key 2 keeps its wake-up");
        d.cancel(3); // nothing scheduled for it
        d.take_due(t0 + ms(40));
        assert_eq!(d.next(), Some(t0 + ms(60)), "the keyless one stays");
        d.take_due(t0 + ms(60));
        assert_eq!(d.next(), None);
    }
}
