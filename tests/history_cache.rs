//! The history cache (`PostgresProviderBuilder::history_cache_events`): a
//! turn and a `read` of an execution this provider committed the last turn
//! of receive only the events added since, and in every other case (another
//! provider ran the last turn, the entry was evicted, the commit's reply was
//! lost, the instance was deleted and started again) the whole history.
//! Each turn's history is compared with a cache-less provider's read of the
//! same execution.

mod common;

use std::time::Duration;

use common::TestDb;
use common::items::{ack_first_turn, start_item};
use common::proxy::Proxy;
use duroxide::providers::{
    ExecutionMetadata, OrchestrationItem, Provider, ProviderAdmin, WorkItem,
};
use duroxide::{Event, EventKind, INITIAL_EXECUTION_ID};
use duroxide_diesel::PostgresProvider;

const LOCK: Duration = Duration::from_secs(30);
/// Payload of each event the turns add, so a history's size is plain to see
/// in bytes on the wire.
const PAYLOAD: usize = 4096;

/// A message that makes `instance` fetchable.
fn nudge(instance: &str, n: u64) -> WorkItem {
    WorkItem::ExternalRaised {
        instance: instance.to_owned(),
        name: "nudge".to_owned(),
        data: n.to_string(),
    }
}

/// The next event of a turn of `item`: an `ExternalEvent` carrying
/// `PAYLOAD` bytes.
fn next_event(item: &OrchestrationItem) -> Event {
    let id = item.history.last().map_or(1, |e| e.event_id + 1);
    Event::with_event_id(
        id,
        item.instance.clone(),
        item.execution_id,
        None,
        EventKind::ExternalEvent {
            name: "nudge".to_owned(),
            data: "x".repeat(PAYLOAD),
        },
    )
}

struct Setup {
    db: TestDb,
    /// A provider without cache: the reference for every history.
    reference: PostgresProvider,
}

impl Setup {
    async fn new() -> Self {
        let db = TestDb::new().await;
        let reference = PostgresProvider::builder(&db.url)
            .schema(&db.schema)
            .history_cache_events(0)
            .build()
            .await
            .expect("reference provider");
        Self { db, reference }
    }

    /// A provider with the default cache, through `proxy` if given.
    async fn provider(&self, proxy: Option<&Proxy>, cache_events: usize) -> PostgresProvider {
        let url = proxy.map_or_else(|| self.db.url.clone(), |p| p.url(&self.db.url));
        PostgresProvider::builder(&url)
            .schema(&self.db.schema)
            .history_cache_events(cache_events)
            .call_timeout(Duration::from_secs(2))
            .build()
            .await
            .expect("provider")
    }

    /// Starts `instance` through `p`: enqueue, fetch, first turn.
    async fn start(&self, p: &PostgresProvider, instance: &str) {
        p.enqueue_for_orchestrator(start_item(instance), None)
            .await
            .unwrap();
        let (_, token, _) = fetch(p).await;
        ack_first_turn(p, instance, &token).await.unwrap();
    }

    /// Fetches the next turn of `instance` on `p` (after a nudge), checks
    /// its history against the reference and returns it with its token.
    async fn fetch_checked(
        &self,
        p: &PostgresProvider,
        instance: &str,
        n: u64,
    ) -> (OrchestrationItem, String) {
        p.enqueue_for_orchestrator(nudge(instance, n), None)
            .await
            .unwrap();
        let (item, token, _) = fetch(p).await;
        assert_eq!(item.instance, instance);
        assert_eq!(item.history_error, None);
        self.check(&item).await;
        (item, token)
    }

    async fn check(&self, item: &OrchestrationItem) {
        let stored = self
            .reference
            .read_with_execution(&item.instance, item.execution_id)
            .await
            .unwrap();
        assert!(!stored.is_empty());
        assert_eq!(item.history, stored, "turn history of {}", item.instance);
    }

    /// A whole turn on `p`: fetch, check, commit one more event.
    async fn turn(&self, p: &PostgresProvider, instance: &str, n: u64) {
        let (item, token) = self.fetch_checked(p, instance, n).await;
        commit(p, &item, &token).await.unwrap();
    }
}

async fn fetch(p: &PostgresProvider) -> (OrchestrationItem, String, u32) {
    p.fetch_orchestration_item(LOCK, Duration::ZERO, None)
        .await
        .unwrap()
        .expect("a turn is ready")
}

async fn commit(
    p: &PostgresProvider,
    item: &OrchestrationItem,
    token: &str,
) -> Result<(), duroxide::providers::ProviderError> {
    p.ack_orchestration_item(
        token,
        item.execution_id,
        vec![next_event(item)],
        vec![],
        vec![],
        ExecutionMetadata::default(),
        vec![],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_and_a_read_receive_only_what_changed() {
    let s = Setup::new().await;
    let proxy = Proxy::for_url(&s.db.url, Duration::ZERO).await.unwrap();
    let cached = s.provider(Some(&proxy), 100_000).await;
    let uncached = s.provider(Some(&proxy), 0).await;
    s.start(&cached, "long").await;
    for n in 0..20 {
        s.turn(&cached, "long", n).await;
    }
    let history_bytes = 20 * PAYLOAD as u64;

    // The next turn: the events after the last committed turn (one nudge),
    // not the 80 KB of history.
    cached
        .enqueue_for_orchestrator(nudge("long", 99), None)
        .await
        .unwrap();
    let ((item, token, _), snap) = proxy.measure_snapshot(fetch(&cached)).await;
    s.check(&item).await;
    assert!(
        snap.server_bytes < history_bytes / 4,
        "a cached turn of a {history_bytes}-byte history received {} bytes",
        snap.server_bytes
    );
    commit(&cached, &item, &token).await.unwrap();

    // A read (duroxide's worker reads before every activity) likewise.
    let (read, snap) = proxy.measure_snapshot(cached.read("long")).await;
    assert_eq!(read.unwrap(), s.reference.read("long").await.unwrap());
    assert!(
        snap.server_bytes < history_bytes / 4,
        "a cached read received {} bytes",
        snap.server_bytes
    );

    // Without the cache the same turn and read ship the whole history.
    uncached
        .enqueue_for_orchestrator(nudge("long", 100), None)
        .await
        .unwrap();
    let ((item, token, _), snap) = proxy.measure_snapshot(fetch(&uncached)).await;
    s.check(&item).await;
    assert!(snap.server_bytes > history_bytes, "{}", snap.server_bytes);
    commit(&uncached, &item, &token).await.unwrap();
    let (read, snap) = proxy.measure_snapshot(uncached.read("long")).await;
    assert_eq!(read.unwrap(), s.reference.read("long").await.unwrap());
    assert!(snap.server_bytes > history_bytes, "{}", snap.server_bytes);

    // The cached provider did not run that last turn: it is sent the
    // whole history again, which is still right.
    s.turn(&cached, "long", 101).await;
    assert_eq!(
        cached.read("long").await.unwrap(),
        s.reference.read("long").await.unwrap()
    );
    s.db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turns_alternating_between_providers_see_the_whole_history() {
    let s = Setup::new().await;
    let a = s.provider(None, 100_000).await;
    let b = s.provider(None, 100_000).await;
    s.start(&a, "shared").await;
    for n in 0..12 {
        // a, a, b, a, b, b, ...: every combination of who ran the last turn.
        let p = if n % 3 == 1 {
            &b
        } else if n % 4 == 0 {
            &a
        } else {
            &b
        };
        s.turn(p, "shared", n).await;
        for reader in [&a, &b] {
            assert_eq!(
                reader.read("shared").await.unwrap(),
                s.reference.read("shared").await.unwrap()
            );
        }
    }
    s.db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_commit_reply_or_an_evicted_entry_loads_the_whole_history() {
    let s = Setup::new().await;
    let proxy = Proxy::for_url(&s.db.url, Duration::ZERO).await.unwrap();
    let p = s.provider(Some(&proxy), 100_000).await;
    s.start(&p, "lost").await;
    s.turn(&p, "lost", 0).await;

    // The commit runs, its reply never arrives: the server records this
    // provider's turn, the provider never learns it committed.
    let (item, token) = s.fetch_checked(&p, "lost", 1).await;
    proxy.mute_replies();
    assert!(commit(&p, &item, &token).await.is_err());
    let stored = s.reference.read("lost").await.unwrap();
    assert_eq!(stored.len(), item.history.len() + 1, "the commit ran");
    // The next turn is sent only the events after that commit, on a prefix
    // the provider does not hold as such: it loads the whole execution.
    s.turn(&p, "lost", 2).await;
    s.turn(&p, "lost", 3).await;

    // A cache too small for any history: every turn loads it whole.
    let tiny = s.provider(None, 1).await;
    s.start(&tiny, "tiny").await;
    for n in 0..3 {
        s.turn(&tiny, "tiny", n).await;
        assert_eq!(
            tiny.read("tiny").await.unwrap(),
            s.reference.read("tiny").await.unwrap()
        );
    }
    s.db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_and_restarted_instance_is_sent_whole() {
    let s = Setup::new().await;
    let p = s.provider(None, 100_000).await;
    s.start(&p, "again").await;
    for n in 0..3 {
        s.turn(&p, "again", n).await;
    }
    let before = p.read("again").await.unwrap();
    assert_eq!(before.len(), 4);
    p.delete_instance("again", true).await.unwrap();
    assert!(p.read("again").await.unwrap().is_empty());

    // Same instance id, same execution id, a shorter history with other
    // payloads: nothing of the old one may leak into it.
    s.start(&p, "again").await;
    let (item, token) = s.fetch_checked(&p, "again", 0).await;
    assert_eq!(item.history.len(), 1);
    assert_eq!(item.execution_id, INITIAL_EXECUTION_ID);
    commit(&p, &item, &token).await.unwrap();
    assert_eq!(
        p.read("again").await.unwrap(),
        s.reference.read("again").await.unwrap()
    );
    s.db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_changed_in_place_is_sent_whole() {
    let s = Setup::new().await;
    // Without confirmed reads: the read right after the turn would be
    // answered from the cache (the edit below is not this provider's).
    let p = PostgresProvider::builder(&s.db.url)
        .schema(&s.db.schema)
        .cached_read_window(Duration::ZERO)
        .build()
        .await
        .expect("provider");
    s.start(&p, "edited").await;
    s.turn(&p, "edited", 0).await;
    // A repair by hand: the payload of event 2 rewritten in place.
    common::exec(
        &s.db.url,
        &format!(
            "UPDATE \"{}\".history SET event_data = jsonb_set(event_data, '{{data}}', '\"repaired\"') \
             WHERE instance_id = 'edited' AND event_id = 2",
            s.db.schema
        ),
    )
    .await;
    let read = p.read("edited").await.unwrap();
    assert!(
        matches!(&read[1].kind, EventKind::ExternalEvent { data, .. } if data == "repaired"),
        "{read:?}"
    );
    s.turn(&p, "edited", 1).await;
    s.db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_previous_releases_signatures_still_fetch_and_commit() {
    // What a binary of the previous release sends during a rolling deploy:
    // the fetch and ack without a reader id.
    let s = Setup::new().await;
    let p = s.provider(None, 100_000).await;
    s.start(&p, "old").await;
    p.enqueue_for_orchestrator(nudge("old", 1), None)
        .await
        .unwrap();
    let fetched =
        s.db.scalar("dx_fetch_orchestration('old-binary', 30000, NULL, NULL)")
            .await
            .unwrap();
    let doc: serde_json::Value = serde_json::from_str(&fetched).unwrap();
    assert_eq!(doc["result"], "claimed", "{doc}");
    assert_eq!(doc["instance"], "old");
    assert_eq!(doc["history"].as_array().map(Vec::len), Some(1));
    let event = serde_json::to_value(Event::with_event_id(
        2,
        "old",
        INITIAL_EXECUTION_ID,
        None,
        EventKind::ExternalEvent {
            name: "nudge".into(),
            data: "1".into(),
        },
    ))
    .unwrap();
    let history =
        serde_json::json!([{"event_id": 2, "event_type": "ExternalEvent", "event": event}]);
    let acked = s
        .db
        .scalar(&format!(
            "dx_ack_orchestration('old-binary', 1, '{history}', '[]', '[]', '{{}}', NULL, '[]', '[]', NULL)"
        ))
        .await
        .unwrap();
    assert!(acked.contains("\"committed\""), "{acked}");
    // A provider of this release then runs the next turn on the whole
    // history: nobody's cache holds what the old binary committed.
    s.turn(&p, "old", 2).await;
    assert_eq!(p.read("old").await.unwrap().len(), 3);
    s.db.cleanup().await;
}
