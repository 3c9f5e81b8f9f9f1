//! What the provider reports: metrics through the `metrics` facade and
//! `tracing` spans and events.
//!
//! Each test runs on tokio's current-thread runtime and installs its
//! recorder and subscriber for that thread only, so every task the provider
//! spawns (pool, listener) reports to it, and tests running in parallel do
//! not see each other's numbers.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::TestDb;
use common::items::{ack_first_turn, activity_item, completion_item, start_item, started_event};
use common::proxy::Proxy;
use duroxide::providers::{ExecutionMetadata, Provider, TagFilter};
use duroxide_diesel::PostgresProvider;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::{Layer, filter::Targets};

const LOCK: Duration = Duration::from_secs(30);

// ---- metrics ------------------------------------------------------------

/// One metric of a snapshot: its labels and value.
struct Metric {
    labels: Vec<(String, String)>,
    value: DebugValue,
}

/// Takes a snapshot (which resets the recorder's values), by name.
fn snapshot(s: &Snapshotter) -> HashMap<String, Vec<Metric>> {
    let mut out: HashMap<String, Vec<Metric>> = HashMap::new();
    for (key, _, _, value) in s.snapshot().into_vec() {
        let key = key.key();
        let labels = key
            .labels()
            .map(|l| (l.key().to_owned(), l.value().to_owned()))
            .collect();
        out.entry(key.name().to_owned())
            .or_default()
            .push(Metric { labels, value });
    }
    out
}

fn has_labels(m: &Metric, labels: &[(&str, &str)]) -> bool {
    labels
        .iter()
        .all(|(k, v)| m.labels.iter().any(|(mk, mv)| mk == k && mv == v))
}

fn histogram_count(snap: &HashMap<String, Vec<Metric>>, name: &str) -> usize {
    snap.get(name)
        .into_iter()
        .flatten()
        .map(|m| match &m.value {
            DebugValue::Histogram(v) => v.len(),
            other => panic!("{name} is not a histogram: {other:?}"),
        })
        .sum()
}

fn counter(snap: &HashMap<String, Vec<Metric>>, name: &str, labels: &[(&str, &str)]) -> u64 {
    snap.get(name)
        .into_iter()
        .flatten()
        .filter(|m| has_labels(m, labels))
        .map(|m| match &m.value {
            DebugValue::Counter(n) => *n,
            other => panic!("{name} is not a counter: {other:?}"),
        })
        .sum()
}

fn gauge(snap: &HashMap<String, Vec<Metric>>, name: &str) -> f64 {
    match snap.get(name).map(|m| &m[..]) {
        Some([m]) => match &m.value {
            DebugValue::Gauge(v) => v.into_inner(),
            other => panic!("{name} is not a gauge: {other:?}"),
        },
        other => panic!(
            "{name}: expected one gauge, got {}",
            other.map_or(0, |m| m.len())
        ),
    }
}

#[tokio::test]
async fn one_orchestration_turn_and_one_activity_record_their_durations_and_the_pool_state() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    let db = TestDb::new().await;
    let provider = db.provider().await;

    provider
        .enqueue_for_orchestrator(start_item("m1"), None)
        .await
        .unwrap();
    let (_, token, _) = provider
        .fetch_orchestration_item(LOCK, Duration::ZERO, None)
        .await
        .unwrap()
        .expect("the start");
    let metadata = ExecutionMetadata {
        orchestration_name: Some("TestOrch".into()),
        orchestration_version: Some("1.0.0".into()),
        ..Default::default()
    };
    provider
        .ack_orchestration_item(
            &token,
            1,
            vec![started_event("m1")],
            vec![activity_item("m1", 1)],
            vec![],
            metadata,
            vec![],
        )
        .await
        .unwrap();
    let (_, token, _) = provider
        .fetch_work_item(LOCK, Duration::ZERO, None, &TagFilter::Any)
        .await
        .unwrap()
        .expect("the activity");
    provider
        .ack_work_item(&token, Some(completion_item("m1", 1)))
        .await
        .unwrap();

    let snap = snapshot(&snapshotter);
    for name in [
        "provider.enqueue_orchestrator_duration_ms",
        "provider.fetch_orchestration_item_duration_ms",
        "provider.ack_orchestration_item_duration_ms",
        "provider.dequeue_worker_duration_ms",
        "provider.ack_worker_duration_ms",
        "provider.pool.checkout_wait_ms",
    ] {
        assert!(histogram_count(&snap, name) >= 1, "{name} not recorded");
    }
    assert_eq!(counter(&snap, "provider.infrastructure_errors", &[]), 0);
    // Every lease is back: nothing in use, the connections idle.
    assert_eq!(gauge(&snap, "provider.pool.connections_in_use"), 0.0);
    assert!(gauge(&snap, "provider.pool.connections_idle") >= 1.0);

    drop(provider);
    db.cleanup().await;
}

#[tokio::test]
async fn failed_calls_are_counted_with_their_classification() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    let db = TestDb::new().await;
    let proxy = Proxy::for_url(&db.url, Duration::ZERO).await.unwrap();
    let provider = PostgresProvider::builder(&proxy.url(&db.url))
        .schema(&db.schema)
        .call_timeout(Duration::from_millis(400))
        .build()
        .await
        .unwrap();

    // A permanent error: the lock token is unknown.
    let err = ack_first_turn(&provider, "m2", "no-such-token")
        .await
        .unwrap_err();
    assert!(!err.is_retryable(), "{err:?}");
    // A retryable one: the database cannot be reached.
    proxy.reset_all(Duration::from_secs(3));
    // Let the pooled connection notice the reset, so the call fails at
    // checkout rather than on a statement.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let err = provider.read("m2").await.unwrap_err();
    assert!(err.is_retryable(), "{err:?}");

    let snap = snapshot(&snapshotter);
    let errors = "provider.infrastructure_errors";
    let lost = [
        ("operation", "ack_orchestration_item"),
        ("error_type", "lock_lost"),
        ("retryable", "false"),
    ];
    assert_eq!(counter(&snap, errors, &lost), 1);
    assert_eq!(
        counter(
            &snap,
            errors,
            &[("operation", "read"), ("retryable", "true")]
        ),
        1
    );
    assert_eq!(counter(&snap, errors, &[]), 2, "nothing else failed");
    // The failed ack was timed too.
    assert!(histogram_count(&snap, "provider.ack_orchestration_item_duration_ms") >= 1);
    assert!(counter(&snap, "provider.pool.connect_failures", &[]) >= 1);
    assert_eq!(counter(&snap, "provider.pool.checkout_timeouts", &[]), 1);
    assert_eq!(gauge(&snap, "provider.pool.connections_in_use"), 0.0);

    drop(provider);
    db.cleanup().await;
}

// ---- tracing ------------------------------------------------------------

type Fields = HashMap<String, String>;

#[derive(Default)]
struct Visitor(Fields);

impl Visit for Visitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}

/// A closed span or an event, with its fields as text.
#[derive(Clone, Debug)]
struct Seen {
    name: String,
    level: Level,
    target: String,
    fields: Fields,
}

impl Seen {
    fn field(&self, name: &str) -> Option<&str> {
        self.fields.get(name).map(String::as_str)
    }
}

/// A layer that keeps every closed span and every event.
#[derive(Clone, Default)]
struct Capture {
    spans: Arc<Mutex<Vec<Seen>>>,
    events: Arc<Mutex<Vec<Seen>>>,
}

impl Capture {
    /// Installs the capture for this thread, for `duroxide_diesel` at DEBUG.
    fn install() -> (Self, tracing::subscriber::DefaultGuard) {
        let capture = Capture::default();
        let filter = Targets::new().with_target("duroxide_diesel", Level::DEBUG);
        let subscriber = tracing_subscriber::registry().with(capture.clone().with_filter(filter));
        let guard = tracing::subscriber::set_default(subscriber);
        (capture, guard)
    }

    fn spans(&self, name: &str) -> Vec<Seen> {
        let spans = self.spans.lock().unwrap();
        spans.iter().filter(|s| s.name == name).cloned().collect()
    }

    fn events(&self, pred: impl Fn(&Seen) -> bool) -> Vec<Seen> {
        let events = self.events.lock().unwrap();
        events.iter().filter(|e| pred(e)).cloned().collect()
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Capture {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut visitor = Visitor::default();
        attrs.record(&mut visitor);
        ctx.span(id).unwrap().extensions_mut().insert(visitor);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let span = ctx.span(id).unwrap();
        let mut extensions = span.extensions_mut();
        if let Some(visitor) = extensions.get_mut::<Visitor>() {
            values.record(visitor);
        }
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let span = ctx.span(&id).unwrap();
        let fields = span
            .extensions_mut()
            .remove::<Visitor>()
            .map(|v| v.0)
            .unwrap_or_default();
        let meta = span.metadata();
        self.spans.lock().unwrap().push(Seen {
            name: meta.name().to_owned(),
            level: *meta.level(),
            target: meta.target().to_owned(),
            fields,
        });
    }

    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut visitor = Visitor::default();
        event.record(&mut visitor);
        let meta = event.metadata();
        self.events.lock().unwrap().push(Seen {
            name: meta.name().to_owned(),
            level: *meta.level(),
            target: meta.target().to_owned(),
            fields: visitor.0,
        });
    }
}

#[tokio::test]
async fn fetch_and_ack_spans_carry_instance_items_and_outcome() {
    let (capture, _guard) = Capture::install();
    let db = TestDb::new().await;
    let provider = db.provider().await;

    provider
        .enqueue_for_orchestrator(start_item("s1"), None)
        .await
        .unwrap();
    let (_, token, _) = provider
        .fetch_orchestration_item(LOCK, Duration::ZERO, None)
        .await
        .unwrap()
        .expect("the start");
    ack_first_turn(&provider, "s1", &token).await.unwrap();
    assert!(
        provider
            .fetch_orchestration_item(LOCK, Duration::ZERO, None)
            .await
            .unwrap()
            .is_none()
    );
    ack_first_turn(&provider, "s1", &token).await.unwrap_err();

    let fetches = capture.spans("fetch_orchestration_item");
    assert_eq!(fetches.len(), 2, "{fetches:?}");
    let got = &fetches[0];
    assert_eq!(got.level, Level::DEBUG);
    assert!(got.target.starts_with("duroxide_diesel"), "{got:?}");
    assert_eq!(got.field("instance"), Some("s1"), "{got:?}");
    assert_eq!(got.field("execution_id"), Some("1"), "{got:?}");
    assert_eq!(got.field("items"), Some("1"), "one message: {got:?}");
    assert_eq!(got.field("outcome"), Some("ok"), "{got:?}");
    assert_eq!(
        fetches[1].field("outcome"),
        Some("idle"),
        "{:?}",
        fetches[1]
    );
    assert_eq!(fetches[1].field("instance"), None, "{:?}", fetches[1]);

    let acks = capture.spans("ack_orchestration_item");
    assert_eq!(acks.len(), 2, "{acks:?}");
    for ack in &acks {
        assert_eq!(ack.field("instance"), Some("s1"), "{ack:?}");
        assert_eq!(ack.field("items"), Some("1"), "one event: {ack:?}");
        assert_eq!(ack.field("worker_items"), Some("0"), "{ack:?}");
    }
    assert_eq!(acks[0].field("outcome"), Some("ok"));
    assert_eq!(acks[1].field("outcome"), Some("lock_lost"), "{:?}", acks[1]);
    assert_eq!(acks[1].field("retryable"), Some("false"), "{:?}", acks[1]);

    // The failure is logged once, where it is classified.
    let failures = capture.events(|e| e.field("message") == Some("provider call failed"));
    assert_eq!(failures.len(), 1, "{failures:?}");
    let failure = &failures[0];
    assert_eq!(failure.field("operation"), Some("ack_orchestration_item"));
    assert_eq!(failure.field("instance"), Some("s1"));
    assert_eq!(failure.field("kind"), Some("lock_lost"));
    assert_eq!(failure.field("retryable"), Some("false"));

    // Every call has its span, named after the operation.
    assert_eq!(capture.spans("enqueue_for_orchestrator").len(), 1);
    drop(provider);
    db.cleanup().await;
}

#[tokio::test]
async fn a_listener_outage_is_logged_once_and_counted() {
    let (capture, _guard) = Capture::install();
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    let db = TestDb::new().await;
    let proxy = Proxy::for_url(&db.url, Duration::ZERO).await.unwrap();
    let provider = PostgresProvider::builder(&proxy.url(&db.url))
        .schema(&db.schema)
        .call_timeout(Duration::from_millis(500))
        .build()
        .await
        .unwrap();
    let listener = |e: &Seen| e.target == "duroxide_diesel::provider::listener";
    let reconnected = |e: &Seen| {
        listener(e) && e.field("message") == Some("duroxide-diesel listener reconnected")
    };

    // Start the listener, then take the database away for three seconds:
    // several reconnection attempts fail meanwhile.
    assert!(
        provider
            .fetch_work_item(LOCK, Duration::from_millis(300), None, &TagFilter::Any)
            .await
            .unwrap()
            .is_none()
    );
    db.wait_for_listener().await;
    proxy.reset_all(Duration::from_secs(3));
    let deadline = Instant::now() + Duration::from_secs(20);
    while capture.events(reconnected).is_empty() {
        assert!(Instant::now() < deadline, "the listener never came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let warnings = capture.events(|e| listener(e) && e.level <= Level::WARN);
    assert_eq!(warnings.len(), 1, "one warning per outage: {warnings:?}");
    let retries = capture.events(|e| {
        listener(e) && e.field("message") == Some("duroxide-diesel listener still disconnected")
    });
    assert!(!retries.is_empty(), "no retry during the outage?");
    assert_eq!(capture.events(reconnected).len(), 1);

    let snap = snapshot(&snapshotter);
    assert_eq!(counter(&snap, "provider.listener.reconnects", &[]), 1);
    assert_eq!(gauge(&snap, "provider.listener.connected"), 1.0);

    drop(provider);
    db.cleanup().await;
}
