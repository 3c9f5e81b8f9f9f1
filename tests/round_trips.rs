//! Network round trips per hot-path call, counted by a TCP proxy between the
//! pool and PostgreSQL (see `common::proxy`).
//!
//! Each test warms the call up once (the first use opens the pooled
//! connection, runs its session setup and prepares the statement), then
//! measures exactly one more call of the same kind: in steady state every
//! hot-path call is a single statement, so a single round trip.

mod common;

use std::time::Duration;

use common::TestDb;
use common::items::{
    ack_first_turn, activity_item as activity, completion_item as completion, start_item,
};
use common::proxy::{self, Proxy};
use duroxide::providers::{OrchestrationItem, Provider, TagFilter, WorkItem};
use duroxide_diesel::{PostgresProvider, PostgresProviderBuilder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LOCK: Duration = Duration::from_secs(30);

/// A provider whose every connection goes through a proxy.
struct Proxied {
    db: TestDb,
    proxy: Proxy,
    provider: PostgresProvider,
}

impl Proxied {
    /// A provider on `route`, without added delay.
    async fn on(route: Route) -> Self {
        Self::with(route, Duration::ZERO).await
    }

    /// Round trips of one warm call on this provider's route.
    fn per_call(&self) -> u64 {
        if self.provider.options().transaction_pooler() {
            4
        } else {
            1
        }
    }

    /// Directly connected, the proxy adding `delay` each way.
    async fn new(delay: Duration) -> Self {
        Self::with(Route::Direct, delay).await
    }

    /// Directly connected, answering reads and status calls from the
    /// provider's cache within `window` (`cached_read_window`).
    async fn with_read_window(window: Duration) -> Self {
        Self::with_options(Route::Direct, Duration::ZERO, |b| {
            b.cached_read_window(window)
        })
        .await
    }

    /// The proxy sits between the pool and the server, or PgBouncer.
    async fn with(route: Route, delay: Duration) -> Self {
        Self::with_options(route, delay, |b| b).await
    }

    /// [`Proxied::with`], the builder first passed through `options`.
    async fn with_options(
        route: Route,
        delay: Duration,
        options: impl FnOnce(PostgresProviderBuilder) -> PostgresProviderBuilder,
    ) -> Self {
        let db = TestDb::new().await;
        let target = match route {
            Route::Direct => db.url.clone(),
            Route::TransactionPooler => common::pg_pooler_url(),
        };
        let proxy = Proxy::for_url(&target, delay).await.expect("start proxy");
        let builder = PostgresProvider::builder(&proxy.url(&target)).schema(&db.schema);
        let builder = match route {
            Route::Direct => builder,
            Route::TransactionPooler => builder.transaction_pooler(&db.url),
        };
        let provider = options(builder)
            .build()
            .await
            .expect("create provider through the proxy");
        Self {
            db,
            proxy,
            provider,
        }
    }

    /// Runs one call and returns its output with the round trips it took,
    /// after checking that it reused the warm pooled connection.
    async fn measure<F: std::future::Future>(&self, call: F) -> (F::Output, u64) {
        let (out, snap) = self.proxy.measure_snapshot(call).await;
        assert_eq!(
            snap.connections, 0,
            "the measured call opened a connection; warm-up missed something: {snap:?}"
        );
        (out, snap.round_trips)
    }

    async fn cleanup(self) {
        let Self {
            db,
            proxy,
            provider,
        } = self;
        drop(provider);
        drop(proxy);
        db.cleanup().await;
    }

    fn p(&self) -> &PostgresProvider {
        &self.provider
    }

    async fn enqueue_start(&self, instance: &str) {
        self.p()
            .enqueue_for_orchestrator(start_item(instance), None)
            .await
            .expect("enqueue start");
    }

    async fn fetch_orchestration(&self) -> (OrchestrationItem, String, u32) {
        self.p()
            .fetch_orchestration_item(LOCK, Duration::ZERO, None)
            .await
            .expect("fetch orchestration")
            .expect("an orchestration item is ready")
    }

    async fn ack_first_turn(&self, instance: &str, token: &str) {
        ack_first_turn(self.p(), instance, token)
            .await
            .expect("ack first turn");
    }

    /// Enqueue, fetch and ack a first turn: the instance then has history.
    async fn create_instance(&self, instance: &str) {
        self.enqueue_start(instance).await;
        let (item, token, _) = self.fetch_orchestration().await;
        assert_eq!(item.instance, instance);
        self.ack_first_turn(instance, &token).await;
    }

    async fn enqueue_activity(&self, instance: &str, id: u64) {
        self.p()
            .enqueue_for_worker(activity(instance, id))
            .await
            .expect("enqueue activity");
    }

    /// An instance with activities `1..=activities` queued, the first
    /// fetched and acknowledged (which warms up the claiming ack).
    async fn with_first_activity_acked(&self, activities: u64) {
        self.create_instance("i").await;
        for id in 1..=activities {
            self.enqueue_activity("i", id).await;
        }
        let (_, token, _) = self.fetch_work().await;
        self.p()
            .ack_work_item(&token, Some(completion("i", 1)))
            .await
            .expect("ack activity 1");
    }

    async fn fetch_work(&self) -> (WorkItem, String, u32) {
        self.p()
            .fetch_work_item(LOCK, Duration::ZERO, None, &TagFilter::DefaultOnly)
            .await
            .expect("fetch work")
            .expect("a work item is ready")
    }
}

/// How a [`Proxied`] provider reaches the server.
#[derive(Clone, Copy)]
enum Route {
    Direct,
    /// Through PgBouncer in transaction pooling mode, the proxy between
    /// the pool and PgBouncer.
    TransactionPooler,
}

/// Each call test runs twice: connected directly (one round trip per call)
/// and, in `through_pgbouncer`, through PgBouncer in transaction pooling
/// mode (four: `BEGIN` with the settings, prepare, execute, `COMMIT`, the
/// count the docs of `PostgresProviderBuilder::transaction_pooler` state).
/// Both check that the measured call kept its pooled connection.
macro_rules! on_both_routes {
    ($($name:ident => $call:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $name() {
                $call(Route::Direct).await;
            }
        )*

        mod through_pgbouncer {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$call(super::Route::TransactionPooler).await;
                }
            )*
        }
    };
}

on_both_routes!(
    enqueue_for_orchestrator_is_one_round_trip => enqueue_for_orchestrator_call,
    fetch_orchestration_item_is_one_round_trip => fetch_orchestration_item_call,
    ack_orchestration_item_is_one_round_trip => ack_orchestration_item_call,
    abandon_orchestration_item_is_one_round_trip => abandon_orchestration_item_call,
    renew_orchestration_item_lock_is_one_round_trip => renew_orchestration_item_lock_call,
    enqueue_for_worker_is_one_round_trip => enqueue_for_worker_call,
    fetch_work_item_is_one_round_trip => fetch_work_item_call,
    ack_work_item_is_one_round_trip => ack_work_item_call,
    abandon_work_item_is_one_round_trip => abandon_work_item_call,
    renew_work_item_lock_is_one_round_trip => renew_work_item_lock_call,
    read_is_one_round_trip => read_call,
    empty_fetches_are_one_round_trip => empty_fetches_call,
);

// ---------------------------------------------------------------------------
// Orchestrator queue

async fn enqueue_for_orchestrator_call(route: Route) {
    let t = Proxied::on(route).await;
    t.enqueue_start("warm").await;

    let (res, rt) = t
        .measure(t.p().enqueue_for_orchestrator(start_item("measured"), None))
        .await;
    res.expect("enqueue");
    assert_eq!(rt, t.per_call(), "enqueue_for_orchestrator round trips");
    t.cleanup().await;
}

async fn fetch_orchestration_item_call(route: Route) {
    let t = Proxied::on(route).await;
    t.enqueue_start("warm").await;
    t.enqueue_start("measured").await;
    t.fetch_orchestration().await;

    let (res, rt) = t
        .measure(t.p().fetch_orchestration_item(LOCK, Duration::ZERO, None))
        .await;
    let (item, _, _) = res.expect("fetch").expect("an item is ready");
    assert_eq!(item.instance, "measured");
    assert_eq!(rt, t.per_call(), "fetch_orchestration_item round trips");
    t.cleanup().await;
}

async fn empty_fetches_call(route: Route) {
    let t = Proxied::on(route).await;
    let empty_orchestration = || t.p().fetch_orchestration_item(LOCK, Duration::ZERO, None);
    let empty_work = || {
        t.p()
            .fetch_work_item(LOCK, Duration::ZERO, None, &TagFilter::DefaultOnly)
    };
    assert!(empty_orchestration().await.expect("fetch").is_none());
    assert!(empty_work().await.expect("fetch").is_none());

    let (res, rt) = t.measure(empty_orchestration()).await;
    assert!(res.expect("fetch").is_none());
    assert_eq!(
        rt,
        t.per_call(),
        "empty fetch_orchestration_item round trips"
    );

    let (res, rt) = t.measure(empty_work()).await;
    assert!(res.expect("fetch").is_none());
    assert_eq!(rt, t.per_call(), "empty fetch_work_item round trips");
    t.cleanup().await;
}

async fn ack_orchestration_item_call(route: Route) {
    let t = Proxied::on(route).await;
    t.create_instance("warm").await;
    t.enqueue_start("measured").await;
    let (_, token, _) = t.fetch_orchestration().await;

    let (res, rt) = t.measure(ack_first_turn(t.p(), "measured", &token)).await;
    res.expect("ack");
    assert_eq!(rt, t.per_call(), "ack_orchestration_item round trips");
    assert_eq!(t.p().read("measured").await.expect("read").len(), 1);
    t.cleanup().await;
}

async fn abandon_orchestration_item_call(route: Route) {
    let t = Proxied::on(route).await;
    t.enqueue_start("i").await;
    let (_, token, _) = t.fetch_orchestration().await;
    t.p()
        .abandon_orchestration_item(&token, None, false)
        .await
        .expect("warm abandon");
    let (_, token, attempts) = t.fetch_orchestration().await;
    assert_eq!(attempts, 2);

    let (res, rt) = t
        .measure(t.p().abandon_orchestration_item(&token, None, false))
        .await;
    res.expect("abandon");
    assert_eq!(rt, t.per_call(), "abandon_orchestration_item round trips");
    t.cleanup().await;
}

async fn renew_orchestration_item_lock_call(route: Route) {
    let t = Proxied::on(route).await;
    t.enqueue_start("i").await;
    let (_, token, _) = t.fetch_orchestration().await;
    t.p()
        .renew_orchestration_item_lock(&token, LOCK)
        .await
        .expect("warm renew");

    let (res, rt) = t
        .measure(t.p().renew_orchestration_item_lock(&token, LOCK))
        .await;
    res.expect("renew");
    assert_eq!(
        rt,
        t.per_call(),
        "renew_orchestration_item_lock round trips"
    );
    t.cleanup().await;
}

// ---------------------------------------------------------------------------
// Worker queue

async fn enqueue_for_worker_call(route: Route) {
    let t = Proxied::on(route).await;
    t.enqueue_activity("i", 1).await;

    let (res, rt) = t.measure(t.p().enqueue_for_worker(activity("i", 2))).await;
    res.expect("enqueue");
    assert_eq!(rt, t.per_call(), "enqueue_for_worker round trips");
    t.cleanup().await;
}

async fn fetch_work_item_call(route: Route) {
    let t = Proxied::on(route).await;
    t.enqueue_activity("i", 1).await;
    t.enqueue_activity("i", 2).await;
    t.fetch_work().await;

    let (res, rt) = t
        .measure(
            t.p()
                .fetch_work_item(LOCK, Duration::ZERO, None, &TagFilter::DefaultOnly),
        )
        .await;
    let (item, _, _) = res.expect("fetch").expect("an item is ready");
    assert!(matches!(item, WorkItem::ActivityExecute { id: 2, .. }));
    assert_eq!(rt, t.per_call(), "fetch_work_item round trips");
    t.cleanup().await;
}

async fn ack_work_item_call(route: Route) {
    let t = Proxied::on(route).await;
    t.create_instance("i").await;
    t.enqueue_activity("i", 1).await;
    t.enqueue_activity("i", 2).await;
    let (_, token, _) = t.fetch_work().await;
    t.p()
        .ack_work_item(&token, Some(completion("i", 1)))
        .await
        .expect("warm ack");
    let (_, token, _) = t.fetch_work().await;

    let (res, rt) = t
        .measure(t.p().ack_work_item(&token, Some(completion("i", 2))))
        .await;
    res.expect("ack");
    assert_eq!(rt, t.per_call(), "ack_work_item round trips");
    t.cleanup().await;
}

async fn abandon_work_item_call(route: Route) {
    let t = Proxied::on(route).await;
    t.enqueue_activity("i", 1).await;
    let (_, token, _) = t.fetch_work().await;
    t.p()
        .abandon_work_item(&token, None, false)
        .await
        .expect("warm abandon");
    let (_, token, attempts) = t.fetch_work().await;
    assert_eq!(attempts, 2);

    let (res, rt) = t
        .measure(t.p().abandon_work_item(&token, None, false))
        .await;
    res.expect("abandon");
    assert_eq!(rt, t.per_call(), "abandon_work_item round trips");
    t.cleanup().await;
}

async fn renew_work_item_lock_call(route: Route) {
    let t = Proxied::on(route).await;
    t.enqueue_activity("i", 1).await;
    let (_, token, _) = t.fetch_work().await;
    t.p()
        .renew_work_item_lock(&token, LOCK)
        .await
        .expect("warm renew");

    let (res, rt) = t.measure(t.p().renew_work_item_lock(&token, LOCK)).await;
    res.expect("renew");
    assert_eq!(rt, t.per_call(), "renew_work_item_lock round trips");
    t.cleanup().await;
}

// ---------------------------------------------------------------------------
// History

async fn read_call(route: Route) {
    let t = Proxied::on(route).await;
    t.create_instance("i").await;
    // The first read after the commit is answered from the cache (see
    // `a_read_right_after_an_activity_claim_sends_nothing`); the second
    // warms the statement up.
    t.p().read("i").await.expect("read after the commit");
    t.p().read("i").await.expect("warm read");

    let (res, rt) = t.measure(t.p().read("i")).await;
    assert_eq!(res.expect("read").len(), 1);
    assert_eq!(rt, t.per_call(), "read round trips");
    t.cleanup().await;
}

/// The counter sees what warm-up hides: the first call opens the pooled
/// connection (startup, diesel-async's session settings, the provider's
/// setup batch) and prepares its statement, all of which cost round trips.
/// A long-polling fetch on empty queues waits for a notification instead of
/// re-querying: over a 1 s poll it sends a handful of statements (the
/// attempt, the listener's setup), not a stream of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_long_poll_does_not_requery() {
    let px = Proxied::new(Duration::ZERO).await;
    let filter = TagFilter::default();
    let both = |poll: Duration| {
        let p = px.p();
        let filter = &filter;
        async move {
            tokio::join!(
                p.fetch_orchestration_item(LOCK, poll, None),
                p.fetch_work_item(LOCK, poll, None, filter),
            )
        }
    };
    // Warm up: two pooled connections, both statements, the listener.
    let _ = both(Duration::from_millis(300)).await;
    px.proxy.reset();
    let (orch, work) = both(Duration::from_secs(1)).await;
    assert!(orch.unwrap().is_none() && work.unwrap().is_none());
    let trips = px.proxy.round_trips();
    assert!(
        trips <= 6,
        "two idle 1 s long polls sent {trips} round trips"
    );
    px.cleanup().await;
}

/// An orchestrator fetch after one that found nothing sends no statement
/// while nothing is announced, then looks once when work is announced; a
/// claim that leaves work behind does not stop the next fetch from looking,
/// and one that leaves nothing does, like an empty fetch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_after_an_empty_one_sends_nothing_until_work_is_announced() {
    let px = Proxied::new(Duration::ZERO).await;
    let fetch = |poll: Duration| px.p().fetch_orchestration_item(LOCK, poll, None);
    // Warm up: the pooled connection, the statement and the listener; the
    // last fetch finds nothing with the listener subscribed.
    assert!(fetch(Duration::from_millis(50)).await.unwrap().is_none());
    px.db.wait_for_listener().await;
    assert!(fetch(Duration::from_millis(50)).await.unwrap().is_none());

    let (res, rt) = px.measure(fetch(Duration::from_millis(300))).await;
    assert!(res.unwrap().is_none());
    assert_eq!(rt, 0, "a fetch after an empty one, nothing announced since");

    px.enqueue_start("announced").await;
    let (res, rt) = px.measure(fetch(Duration::from_secs(20))).await;
    let (item, _, _) = res.unwrap().expect("claimed after the announcement");
    assert_eq!(item.instance, "announced");
    assert_eq!(rt, 1, "one look once work is announced");

    // The claim of "first" leaves "second" claimable: the next fetch looks.
    px.enqueue_start("first").await;
    px.enqueue_start("second").await;
    for expected in ["first", "second"] {
        let (res, rt) = px.measure(fetch(Duration::from_secs(20))).await;
        let (item, _, _) = res.unwrap().expect("claimed");
        assert_eq!(item.instance, expected);
        assert_eq!(rt, 1, "one look for {expected}");
    }
    // The claim of "second" left nothing: the next fetch waits.
    let (res, rt) = px.measure(fetch(Duration::from_millis(300))).await;
    assert!(res.unwrap().is_none());
    assert_eq!(rt, 0, "a fetch after a claim that left nothing");
    px.cleanup().await;
}

/// A held completion schedules a wake-up in every listener for the end of
/// its window; when its last sibling completes first, the release drops
/// that wake-up, so a dispatcher waiting afterwards sends nothing when the
/// window ends.
#[tokio::test]
async fn a_released_completion_leaves_no_wake_up_behind() {
    let px = Proxied::new(Duration::ZERO).await;
    let window = Duration::from_millis(400);
    let worker = px
        .db
        .builder()
        .completion_batch_window(window)
        .build()
        .await
        .expect("worker provider");
    // Two activities of one execution, both running.
    let tokens = common::items::fan_out_running(&worker, "i", 2, LOCK)
        .await
        .unwrap();
    // The dispatcher: warm, its listener subscribed, nothing claimable.
    let fetch = |poll: Duration| px.p().fetch_orchestration_item(LOCK, poll, None);
    assert!(fetch(Duration::from_millis(50)).await.unwrap().is_none());
    px.db.wait_for_listener().await;
    assert!(fetch(Duration::from_millis(50)).await.unwrap().is_none());

    let held = std::time::Instant::now();
    worker
        .ack_work_item(&tokens[0], Some(completion("i", 1)))
        .await
        .unwrap();
    assert_eq!(
        px.db
            .scalar("SELECT count(*) FROM orchestrator_queue WHERE held")
            .await
            .as_deref(),
        Some("1"),
        "the first completion is held"
    );
    worker
        .ack_work_item(&tokens[1], Some(completion("i", 2)))
        .await
        .unwrap();
    let (item, _, _) = fetch(Duration::from_secs(20))
        .await
        .unwrap()
        .expect("the released turn");
    assert_eq!(item.messages.len(), 2, "both completions in one turn");
    // The claim left nothing claimable (the instance's turn is running):
    // this wait, spanning the end of the held completion's window, sends
    // nothing.
    let (res, rt) = px.measure(fetch(window + window / 2)).await;
    assert!(res.unwrap().is_none());
    assert!(
        held.elapsed() > window,
        "the wait must span the window's end"
    );
    assert_eq!(rt, 0, "the window's end woke the dispatcher");
    drop(worker);
    px.cleanup().await;
}

/// duroxide's worker reads the instance's history right after every claim.
/// When this provider committed the instance's last turn, the claim
/// confirms the cached history: that read sends nothing and returns what
/// the server holds; the confirmation answers one read only.
#[tokio::test]
async fn a_read_right_after_an_activity_claim_sends_nothing() {
    let px = Proxied::new(Duration::ZERO).await;
    px.create_instance("i").await;
    let (read, rt) = px.measure(px.p().read("i")).await;
    assert_eq!(rt, 0, "the read right after the commit");
    let read = read.expect("read after the commit");
    px.p().read("i").await.expect("warm read");
    let (stored, rt) = px.measure(px.p().read("i")).await;
    let stored = stored.expect("read from the server");
    assert_eq!(rt, 1, "the commit's confirmation answers one read only");
    assert_eq!(stored.len(), 1, "the started event");
    assert_eq!(read, stored);

    // Warm up the claim statement (and use up its confirmation).
    px.enqueue_activity("i", 1).await;
    px.enqueue_activity("i", 2).await;
    px.fetch_work().await;
    px.p().read("i").await.expect("warm-up read");

    let (_, rt) = px.measure(px.fetch_work()).await;
    assert_eq!(
        rt, 1,
        "a claim is one round trip, the confirmation included"
    );
    let (read, rt) = px.measure(px.p().read("i")).await;
    assert_eq!(rt, 0, "the read right after the claim");
    assert_eq!(read.expect("read"), stored);
    let (read, rt) = px.measure(px.p().read("i")).await;
    assert_eq!(rt, 1, "the next read goes to the server");
    assert_eq!(read.expect("read"), stored);
    px.cleanup().await;
}

/// A busy worker fetches right after each acknowledgement: the ack claims
/// that fetch's activity in its own round trip, and the fetch sends
/// nothing. The next activity in queue order, not counted twice as an
/// attempt; with `next_activity_window(0)` the fetch goes to the server.
#[tokio::test]
async fn a_fetch_right_after_an_ack_sends_nothing() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    const TAKEN: &str = "provider.activities_claimed_ahead";
    const RELEASED: &str = "provider.activities_claimed_ahead_released";
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    // A current-thread test: the release task runs on this thread too.
    let _local = metrics::set_default_local_recorder(&recorder);
    // A snapshot drains the counters: add each one's to the totals.
    let (mut taken, mut released) = (0, 0);
    let mut drain = || {
        for (key, .., value) in snapshotter.snapshot().into_vec() {
            let DebugValue::Counter(n) = value else {
                continue;
            };
            match key.key().name() {
                TAKEN => taken += n,
                RELEASED => released += n,
                _ => {}
            }
        }
        (taken, released)
    };
    let px = Proxied::new(Duration::ZERO).await;
    px.with_first_activity_acked(4).await;
    for id in 2..=3 {
        let ((item, token, attempts), rt) = px.measure(px.fetch_work()).await;
        assert_eq!(rt, 0, "the fetch of activity {id} after an ack");
        assert!(
            matches!(item, WorkItem::ActivityExecute { id: got, .. } if got == id),
            "queue order: {item:?}"
        );
        assert_eq!(attempts, 1, "a claim ahead is one attempt");
        let (res, rt) = px
            .measure(px.p().ack_work_item(&token, Some(completion("i", id))))
            .await;
        res.expect("ack");
        assert_eq!(rt, 1, "an ack that claims the next activity");
    }
    // Activity 4 was claimed by the last ack: a fetch with another lock
    // timeout (another runtime's) does not take it; this one does.
    let other = px
        .p()
        .fetch_work_item(
            Duration::from_secs(7),
            Duration::ZERO,
            None,
            &TagFilter::DefaultOnly,
        )
        .await
        .expect("fetch");
    assert!(other.is_none(), "claimed for another fetch: {other:?}");
    let ((item, token, _), rt) = px.measure(px.fetch_work()).await;
    assert_eq!(rt, 0);
    assert!(matches!(item, WorkItem::ActivityExecute { id: 4, .. }));
    // Nothing left: the ack claims nothing and the next fetch asks.
    px.p()
        .ack_work_item(&token, Some(completion("i", 4)))
        .await
        .expect("ack");
    px.enqueue_activity("i", 5).await;
    let ((item, token, _), rt) = px.measure(px.fetch_work()).await;
    assert_eq!(rt, 1, "nothing was claimed ahead");
    assert!(matches!(item, WorkItem::ActivityExecute { id: 5, .. }));
    // Activity 6, claimed by the ack of 5, is not fetched within the window:
    // released, counted, and fetched from the server next.
    px.enqueue_activity("i", 6).await;
    px.p()
        .ack_work_item(&token, Some(completion("i", 5)))
        .await
        .expect("ack 5, which claims 6");
    let started = std::time::Instant::now();
    let unlocked = "SELECT count(*) FROM worker_queue WHERE activity_id = 6 AND lock_token IS NULL";
    while px.db.scalar(unlocked).await.as_deref() != Some("1") {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the claim of activity 6 was never released"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (item, _, attempts) = px.fetch_work().await;
    assert!(matches!(item, WorkItem::ActivityExecute { id: 6, .. }));
    assert_eq!(attempts, 1, "the release does not count an attempt");
    assert_eq!(drain(), (3, 1), "taken: activities 2, 3 and 4; released: 6");
    px.cleanup().await;

    let px = Proxied::with_options(Route::Direct, Duration::ZERO, |b| {
        b.next_activity_window(Duration::ZERO)
    })
    .await;
    px.with_first_activity_acked(3).await;
    let ((_, token, _), rt) = px.measure(px.fetch_work()).await;
    assert_eq!(rt, 1, "without a window the fetch goes to the server");
    let (res, rt) = px
        .measure(px.p().ack_work_item(&token, Some(completion("i", 2))))
        .await;
    res.expect("ack");
    assert_eq!(rt, 1);
    let ((item, _, _), rt) = px.measure(px.fetch_work()).await;
    assert_eq!(rt, 1);
    assert!(matches!(item, WorkItem::ActivityExecute { id: 3, .. }));
    px.cleanup().await;
}

/// With sessions: the ack of a session-less activity claims exactly what
/// the worker's fetch would take, a session-bound activity included (queue
/// order kept), and only a fetch of the same session owner takes that one;
/// the ack of a session-bound activity claims nothing.
#[tokio::test]
async fn claims_ahead_keep_queue_order_and_session_owners() {
    use common::items::with_session_and_tag;
    use duroxide::providers::SessionFetchConfig;
    let px = Proxied::new(Duration::ZERO).await;
    px.create_instance("i").await;
    for (id, session) in [(1, None), (2, Some("s")), (3, None), (4, Some("s"))] {
        px.p()
            .enqueue_for_worker(with_session_and_tag(activity("i", id), session, None))
            .await
            .expect("enqueue");
    }
    let owner = |id: &str| SessionFetchConfig {
        owner_id: id.to_owned(),
        lock_timeout: LOCK,
    };
    let (a, b) = (owner("worker-a"), owner("worker-b"));
    let p = px.p();
    let fetch = |config: &SessionFetchConfig| {
        let config = config.clone();
        async move {
            p.fetch_work_item(LOCK, Duration::ZERO, Some(&config), &TagFilter::DefaultOnly)
                .await
                .expect("fetch")
                .expect("an activity")
        }
    };
    let id_of = |item: &WorkItem| match item {
        WorkItem::ActivityExecute { id, .. } => *id,
        other => panic!("unexpected {other:?}"),
    };
    let (item, token1, _) = fetch(&a).await;
    assert_eq!(id_of(&item), 1);
    px.p()
        .ack_work_item(&token1, Some(completion("i", 1)))
        .await
        .expect("ack 1, which claims 2 for worker-a");
    // Another owner's fetch does not take activity 2; the server gives it 3.
    let ((item, token3, _), rt) = px.measure(fetch(&b)).await;
    assert_eq!((id_of(&item), rt), (3, 1));
    let ((item, token2, _), rt) = px.measure(fetch(&a)).await;
    assert_eq!((id_of(&item), rt), (2, 0), "claimed ahead for worker-a");
    // Acks of a session-bound activity claim nothing; worker-b's ack of 3
    // finds nothing it may take (4's session is worker-a's).
    px.p()
        .ack_work_item(&token2, Some(completion("i", 2)))
        .await
        .expect("ack 2");
    px.p()
        .ack_work_item(&token3, Some(completion("i", 3)))
        .await
        .expect("ack 3");
    let ((item, _, attempts), rt) = px.measure(fetch(&a)).await;
    assert_eq!((id_of(&item), rt, attempts), (4, 1, 1));
    px.cleanup().await;
}

/// An activity claimed ahead that a turn committed through this provider
/// cancels (deleting its row) is not handed to a worker.
#[tokio::test]
async fn an_activity_claimed_ahead_and_cancelled_by_a_local_turn_is_not_handed_out() {
    use duroxide::providers::ScheduledActivityIdentifier;
    let px = Proxied::new(Duration::ZERO).await;
    // Acknowledging activity 1 claims activity 2 ahead.
    px.with_first_activity_acked(2).await;
    let (item, token, _) = px
        .p()
        .fetch_orchestration_item(LOCK, Duration::from_secs(5), None)
        .await
        .expect("fetch")
        .expect("the turn with activity 1's completion");
    px.p()
        .ack_orchestration_item(
            &token,
            item.execution_id,
            vec![],
            vec![],
            vec![],
            Default::default(),
            vec![ScheduledActivityIdentifier {
                instance: "i".to_owned(),
                execution_id: item.execution_id,
                activity_id: 2,
            }],
        )
        .await
        .expect("the turn that cancels activity 2");
    let next = px
        .p()
        .fetch_work_item(LOCK, Duration::ZERO, None, &TagFilter::DefaultOnly)
        .await
        .expect("fetch");
    assert!(
        next.is_none(),
        "a cancelled activity was handed out: {next:?}"
    );
    px.cleanup().await;
}

/// An activity an ack claimed that no fetch of this provider takes within
/// the window is released: another process fetches it, as a first attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_activity_claimed_ahead_and_not_taken_is_released() {
    let px = Proxied::with_options(Route::Direct, Duration::ZERO, |b| {
        b.next_activity_window(Duration::from_secs(1))
    })
    .await;
    let other = PostgresProvider::new_with_schema(&px.db.url, Some(&px.db.schema))
        .await
        .expect("another provider");
    // Acknowledging activity 1 claims activity 2 ahead.
    px.with_first_activity_acked(2).await;
    let now = other
        .fetch_work_item(LOCK, Duration::ZERO, None, &TagFilter::DefaultOnly)
        .await
        .expect("fetch");
    assert!(now.is_none(), "claimed by the ack: {now:?}");
    // Not fetchable elsewhere until released. The release
    // announces it, so the other provider's long poll wakes for it.
    let fetched = other
        .fetch_work_item(LOCK, Duration::from_secs(20), None, &TagFilter::DefaultOnly)
        .await
        .expect("fetch")
        .expect("the activity is released within the poll");
    let (item, _, attempts) = fetched;
    assert!(matches!(item, WorkItem::ActivityExecute { id: 2, .. }));
    assert_eq!(attempts, 1, "the release does not count an attempt");
    // And this provider no longer holds it.
    let mine = px
        .p()
        .fetch_work_item(LOCK, Duration::ZERO, None, &TagFilter::DefaultOnly)
        .await
        .expect("fetch");
    assert!(mine.is_none(), "{mine:?}");
    drop(other);
    px.cleanup().await;
}

/// A claim confirms nothing when another provider committed the instance's
/// last turn, or after a deletion through this provider, and with a zero
/// read window: the read after it goes to the server and sees that turn.
#[tokio::test]
async fn a_read_after_a_claim_goes_to_the_server_unless_the_history_is_ours() {
    use duroxide::EventKind;
    let px = Proxied::new(Duration::ZERO).await;
    let other = PostgresProvider::new_with_schema(&px.db.url, Some(&px.db.schema))
        .await
        .expect("second provider");
    px.create_instance("i").await;
    px.enqueue_activity("i", 1).await;
    px.fetch_work().await;
    px.p().read("i").await.expect("read after the claim");
    px.p().read("i").await.expect("warm-up read");

    // The other provider commits the instance's next turn.
    commit_next_turn(&other, "i", 1, EventKind::TimerCreated { fire_at_ms: 7 }).await;

    px.enqueue_activity("i", 2).await;
    let (_, rt) = px.measure(px.fetch_work()).await;
    assert_eq!(rt, 1);
    let (read, rt) = px.measure(px.p().read("i")).await;
    assert_eq!(rt, 1, "the last turn is the other provider's");
    assert_eq!(read.expect("read").len(), 2, "with that turn's event");

    // A deletion through this provider voids a confirmation given before it.
    px.create_instance("j").await;
    px.enqueue_activity("j", 1).await;
    px.fetch_work().await;
    duroxide::providers::ProviderAdmin::delete_instance(px.p(), "j", true)
        .await
        .expect("delete");
    let (read, rt) = px.measure(px.p().read("j")).await;
    assert_eq!(rt, 1, "read after the deletion");
    assert!(read.expect("read").is_empty(), "the instance is gone");
    drop(other);
    px.cleanup().await;

    // A zero window: every read goes to the server.
    let px = Proxied::with_read_window(Duration::ZERO).await;
    px.create_instance("i").await;
    px.enqueue_activity("i", 1).await;
    px.enqueue_activity("i", 2).await;
    px.fetch_work().await;
    px.p().read("i").await.expect("warm-up read");
    px.fetch_work().await;
    let (read, rt) = px.measure(px.p().read("i")).await;
    assert_eq!(rt, 1, "no read is answered from the cache");
    assert_eq!(read.expect("read").len(), 1);
    px.cleanup().await;
}

/// Commits, through `p`, the turn of `instance` that takes completion `id`
/// and records one event of `kind`.
async fn commit_next_turn(
    p: &PostgresProvider,
    instance: &str,
    id: u64,
    kind: duroxide::EventKind,
) {
    p.enqueue_for_orchestrator(completion(instance, id), None)
        .await
        .expect("enqueue completion");
    let (item, token, _) = p
        .fetch_orchestration_item(LOCK, Duration::ZERO, None)
        .await
        .expect("fetch")
        .expect("the completion's turn");
    assert_eq!(item.instance, instance);
    let next = item.history.last().map_or(1, |e| e.event_id + 1);
    let event = duroxide::Event::with_event_id(next, instance, item.execution_id, None, kind);
    p.ack_orchestration_item(
        &token,
        item.execution_id,
        vec![event],
        vec![],
        vec![],
        Default::default(),
        vec![],
    )
    .await
    .expect("ack the turn");
}

/// Commits the next turn of `instance` through `p`, setting its custom
/// status to `status`.
async fn set_custom_status(p: &PostgresProvider, instance: &str, id: u64, status: &str) {
    let status = Some(status.to_owned());
    commit_next_turn(
        p,
        instance,
        id,
        duroxide::EventKind::CustomStatusUpdated { status },
    )
    .await;
}

/// duroxide's status call (`Client::get_orchestration_status`, every poll of
/// `wait_for_orchestration`) reads the history, then asks for the custom
/// status: the read brings the status of the same snapshot along, so the
/// poll is one round trip. The answer serves one status call, and writes
/// through this provider in between are never missed.
#[tokio::test]
async fn a_status_poll_is_one_round_trip() {
    // A window no test machine overruns between two calls.
    let px = Proxied::with_read_window(Duration::from_secs(30)).await;
    let fresh = PostgresProvider::new_with_schema(&px.db.url, Some(&px.db.schema))
        .await
        .expect("a provider that holds nothing");
    px.create_instance("i").await;
    set_custom_status(px.p(), "i", 1, "one").await;
    // Warm up both statements: the commit's confirmation answers the first
    // read, the read's status the first status call.
    for _ in 0..2 {
        px.p().read("i").await.expect("read");
        px.p().get_custom_status("i", 0).await.expect("status");
    }
    px.p().get_custom_status("i", 0).await.expect("status");

    let poll = async {
        let history = px.p().read("i").await.expect("read");
        let status = px.p().get_custom_status("i", 0).await.expect("status");
        (history, status)
    };
    let ((history, status), rt) = px.measure(poll).await;
    assert_eq!(rt, 1, "a status poll is one round trip");
    assert_eq!(history, fresh.read("i").await.expect("server's history"));
    assert_eq!(status, Some((Some("one".to_owned()), 1)));
    assert_eq!(
        status,
        fresh
            .get_custom_status("i", 0)
            .await
            .expect("server's status")
    );

    // Used once: the next status call asks the server.
    let (again, rt) = px.measure(px.p().get_custom_status("i", 0)).await;
    assert_eq!(rt, 1, "the read's answer served one call");
    assert_eq!(again.expect("status"), status);

    // The version the caller has seen is honoured.
    px.p().read("i").await.expect("read");
    let (unchanged, rt) = px.measure(px.p().get_custom_status("i", 1)).await;
    assert_eq!(rt, 0);
    assert_eq!(unchanged.expect("status"), None, "nothing newer than 1");

    // A turn committed through this provider after the read: its status.
    px.p().read("i").await.expect("read");
    set_custom_status(px.p(), "i", 2, "two").await;
    let (after, rt) = px.measure(px.p().get_custom_status("i", 0)).await;
    assert_eq!(rt, 1, "the commit dropped the read's answer");
    assert_eq!(after.expect("status"), Some((Some("two".to_owned()), 2)));

    // A deletion through this provider after the read: no status.
    px.p().read("i").await.expect("read");
    duroxide::providers::ProviderAdmin::delete_instance(px.p(), "i", true)
        .await
        .expect("delete");
    let (gone, rt) = px.measure(px.p().get_custom_status("i", 0)).await;
    assert_eq!(rt, 1, "the deletion dropped the read's answer");
    assert_eq!(gone.expect("status"), None);

    // An instance that does not exist: the read says so for the status too.
    px.p().read("nobody").await.expect("read");
    let (none, rt) = px.measure(px.p().get_custom_status("nobody", 0)).await;
    assert_eq!(rt, 0);
    assert_eq!(none.expect("status"), None);
    drop(fresh);
    px.cleanup().await;

    // A zero window: the status call always asks the server.
    let px = Proxied::with_read_window(Duration::ZERO).await;
    px.create_instance("i").await;
    px.p().get_custom_status("i", 0).await.expect("status");
    px.p().read("i").await.expect("read");
    let (status, rt) = px.measure(px.p().get_custom_status("i", 0)).await;
    assert_eq!(rt, 1);
    assert_eq!(status.expect("status"), None, "version 0: never set");
    px.cleanup().await;
}

#[tokio::test]
async fn cold_call_costs_more_than_warm_call() {
    let t = Proxied::new(Duration::ZERO).await;
    let (res, cold) = t.proxy.measure_snapshot(t.p().read("i")).await;
    assert!(res.expect("cold read").is_empty());
    assert_eq!(
        cold.connections, 1,
        "the first call opens the pooled connection"
    );

    let (res, warm) = t.measure(t.p().read("i")).await;
    assert!(res.expect("warm read").is_empty());
    assert_eq!(warm, 1);
    assert!(
        cold.round_trips > warm + 2,
        "a cold call (connect, setup, prepare, execute) took only {cold:?}"
    );
    t.cleanup().await;
}

/// The proxy's delay is real: with 20 ms each way, one round trip takes at
/// least 40 ms. (Only a lower bound: timings belong in benchmarks.)
#[tokio::test]
async fn delayed_read_takes_at_least_one_rtt() {
    let delay = Duration::from_millis(20);
    let t = Proxied::new(delay).await;
    t.create_instance("i").await;
    t.p().read("i").await.expect("read after the commit");
    t.p().read("i").await.expect("warm read");

    let started = std::time::Instant::now();
    let (res, rt) = t.measure(t.p().read("i")).await;
    let elapsed = started.elapsed();
    assert_eq!(res.expect("read").len(), 1);
    assert_eq!(rt, t.per_call(), "read round trips with delay");
    assert!(
        elapsed >= 2 * delay,
        "one round trip with {delay:?} each way took only {elapsed:?}"
    );
    t.cleanup().await;
}

// ---------------------------------------------------------------------------
// The proxy itself

/// A server that answers `reply` to every `request_len` bytes it receives.
async fn fixed_size_server(request_len: usize, reply: &'static [u8]) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.expect("accept");
        let mut buf = vec![0u8; request_len];
        while conn.read_exact(&mut buf).await.is_ok() {
            if conn.write_all(reply).await.is_err() {
                break;
            }
        }
    });
    addr
}

/// A request written in several segments, with pauses longer than the delay
/// between them, is still one round trip: bursts are told apart by who
/// spoke last, not by packets or timing.
#[tokio::test]
async fn proxy_counts_a_request_split_into_segments_once() {
    for delay in [Duration::ZERO, Duration::from_millis(10)] {
        let server = fixed_size_server(3, b"ok").await;
        let proxy = Proxy::start(&server.to_string(), delay)
            .await
            .expect("proxy");
        let mut client = tokio::net::TcpStream::connect(proxy.addr())
            .await
            .expect("connect");
        client.set_nodelay(true).expect("nodelay");
        for round in 1..=3u64 {
            for segment in [b"B", b"E", b"S"] {
                client.write_all(segment).await.expect("write");
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
            let mut reply = [0u8; 2];
            client.read_exact(&mut reply).await.expect("reply");
            assert_eq!(&reply, b"ok");
            assert_eq!(proxy.round_trips(), round, "delay {delay:?}");
        }
        assert_eq!(proxy.connections(), 1);
        let snap = proxy.snapshot();
        assert_eq!((snap.client_bytes, snap.server_bytes), (9, 6));
    }
}

#[tokio::test]
async fn proxy_stops_accepting_when_dropped() {
    let server = fixed_size_server(1, b"k").await;
    let proxy = Proxy::start(&server.to_string(), Duration::ZERO)
        .await
        .expect("proxy");
    let addr = proxy.addr();
    drop(proxy);
    // The abort takes effect when the runtime next polls the accept task.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn proxy_refuses_non_loopback_targets() {
    let err = Proxy::start("192.0.2.1:5432", Duration::ZERO)
        .await
        .err()
        .expect("a non-loopback target is refused");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
}

#[test]
fn urls_are_rewritten_to_the_proxy() {
    let addr: std::net::SocketAddr = "127.0.0.1:40000".parse().expect("addr");
    let cases = [
        (
            "postgres://postgres@127.0.0.1:55433/postgres",
            "postgres://postgres@127.0.0.1:40000/postgres",
        ),
        (
            "postgresql://u:p%40ss@localhost/db?sslmode=disable",
            "postgresql://u:p%40ss@127.0.0.1:40000/db?sslmode=disable",
        ),
        ("postgres://[::1]:5433", "postgres://127.0.0.1:40000"),
        (
            "postgres://h?application_name=x",
            "postgres://127.0.0.1:40000?application_name=x",
        ),
    ];
    for (url, want) in cases {
        assert_eq!(
            proxy::rewrite_url(url, addr).as_deref(),
            Some(want),
            "{url}"
        );
    }
    assert_eq!(
        proxy::split_url("postgres://[::1]/db")
            .map(|(_, hp, _)| hp)
            .as_deref(),
        Some("[::1]:5432")
    );
    assert_eq!(proxy::rewrite_url("host=localhost port=5432", addr), None);
}
