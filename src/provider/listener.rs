//! LISTEN/NOTIFY wake-ups for long-polling fetches.
//!
//! The stored procedures that make work visible send a notification on the
//! schema's channel (payload `o` for the orchestrator queue, `w` for the
//! worker queue). One listener connection per provider, started on the first
//! long-polling fetch, turns them into in-process wake-ups. While it is down,
//! waiters fall back to bounded polling and the listener reconnects.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use diesel::dsl::select;
use diesel_async::{AsyncPgConnection, SimpleAsyncConnection};
use futures_util::StreamExt;
use tokio::sync::Notify;

use crate::procedures::dx_notify_channel;

/// How often a waiter re-checks the queue while no listener is connected.
pub(crate) const FALLBACK_POLL: Duration = Duration::from_millis(250);
const RECONNECT_DELAY: Duration = Duration::from_millis(500);

/// Shared wake-up state between the listener task and fetch waiters.
#[derive(Default)]
pub(crate) struct Wakeups {
    pub orchestrator: Notify,
    pub worker: Notify,
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

    fn wake_all(&self) {
        self.orchestrator.notify_waiters();
        self.worker.notify_waiters();
    }
}

/// Starts the listener task; it runs until [`Wakeups::stop`].
pub(crate) fn spawn(connector: crate::pool::Connector) -> Arc<Wakeups> {
    let wakeups = Arc::new(Wakeups::default());
    let state = Arc::clone(&wakeups);
    tokio::spawn(async move {
        // If the task is dropped (its runtime shut down), waiters must not
        // keep trusting a listener that no longer exists.
        let _reset = ResetOnDrop(Arc::clone(&state));
        while !state.stopped.load(Ordering::Acquire) {
            let session = async {
                match connector.connect().await {
                    Ok(conn) => {
                        if let Err(e) = listen(conn, &state).await {
                            tracing::warn!(error = %e, "duroxide-diesel listener lost its connection");
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "duroxide-diesel listener could not connect")
                    }
                }
                state.connected.store(false, Ordering::Release);
                // Waiters that slept on a notification re-check now.
                state.wake_all();
                tokio::time::sleep(RECONNECT_DELAY).await;
            };
            tokio::select! {
                _ = session => {}
                _ = state.shutdown.notified() => break,
            }
        }
        state.connected.store(false, Ordering::Release);
    });
    wakeups
}

struct ResetOnDrop(Arc<Wakeups>);

impl Drop for ResetOnDrop {
    fn drop(&mut self) {
        self.0.connected.store(false, Ordering::Release);
        self.0.wake_all();
    }
}

async fn listen(mut conn: AsyncPgConnection, state: &Wakeups) -> crate::Result<()> {
    let channel: String =
        diesel_async::RunQueryDsl::get_result(select(dx_notify_channel()), &mut conn).await?;
    conn.batch_execute(&format!("LISTEN \"{channel}\"")).await?;
    state.connected.store(true, Ordering::Release);
    // Anything enqueued before LISTEN took effect is picked up by a re-check.
    state.wake_all();
    let mut stream = std::pin::pin!(conn.notifications_stream());
    while let Some(n) = stream.next().await {
        let n = n?;
        match n.payload.as_str() {
            "o" => state.orchestrator.notify_waiters(),
            "w" => state.worker.notify_waiters(),
            _ => state.wake_all(),
        }
    }
    Ok(())
}
