//! The calls: every `Provider` and `ProviderAdmin` method, on instances
//! picked from the seeded layout (see [`crate::seed`]), through a
//! [`Recorder`] that keeps the plans each call logged.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use duroxide::providers::{
    DispatcherCapabilityFilter, ExecutionMetadata, InstanceFilter, Provider, ProviderAdmin,
    PruneOptions, ScheduledActivityIdentifier, SemverRange, SessionFetchConfig, TagFilter,
    WorkItem,
};
use duroxide::{Event, EventKind};
use duroxide_diesel::PostgresProvider;
use duroxide_diesel_testkit::items;

use crate::BoxError;
use crate::capture::{Category, Recorder};
use crate::seed::SEED_VERSION;

fn inst(n: i64) -> String {
    format!("inst-{n:06}")
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn ev(event_id: u64, instance: &str, execution_id: u64, kind: EventKind) -> Event {
    Event::with_event_id(event_id, instance, execution_id, None, kind)
}

/// The next free event id of a fetched turn.
fn next_event_id(history: &[Event]) -> u64 {
    history.iter().map(|e| e.event_id).max().unwrap_or(0) + 1
}

type Claimed<T> = Option<(T, String, u32)>;

fn claimed<T>(item: &Claimed<T>, name: impl Fn(&T) -> String) -> String {
    match item {
        Some((t, _, attempts)) => format!("claimed {} (attempt {attempts})", name(t)),
        None => "nothing claimable".to_owned(),
    }
}

fn instance_of(item: &Claimed<duroxide::providers::OrchestrationItem>) -> String {
    claimed(item, |i| i.instance.clone())
}

fn work_of(item: &Claimed<WorkItem>) -> String {
    claimed(item, |w| match w {
        WorkItem::ActivityExecute {
            instance,
            id,
            session_id,
            tag,
            ..
        } => format!("{instance}/{id} session={session_id:?} tag={tag:?}"),
        _ => "a work item".to_owned(),
    })
}

fn ok<T>(_: &T) -> String {
    "ok".to_owned()
}

fn row_count<T>(v: &[T]) -> String {
    format!("{} rows", v.len())
}

fn deleted(r: &duroxide::providers::DeleteInstanceResult) -> String {
    format!(
        "{} instances, {} events",
        r.instances_deleted, r.events_deleted
    )
}

fn pruned(r: &duroxide::providers::PruneResult) -> String {
    format!(
        "{} instances, {} executions, {} events",
        r.instances_processed, r.executions_deleted, r.events_deleted
    )
}

/// Calls every Provider method. Instances are picked per pass from the
/// seeded layout (see `seed`), so both passes find fresh data.
pub async fn exercise(
    provider: &PostgresProvider,
    rec: &mut Recorder,
    n: i64,
    pass: i64,
) -> Result<(), BoxError> {
    // A multiple of 100: the offsets pick instances by n % 10 (see `seed`).
    let base = n / 1000 * 100 + pass * 500;
    orchestrator_calls(provider, rec, base, pass).await;
    worker_calls(provider, rec, base, pass).await;
    read_calls(provider, rec, base, pass).await;
    let Some(admin) = provider.as_management_capability() else {
        rec.skipped(Category::Admin, "as_management_capability", "not supported");
        return Ok(());
    };
    admin_calls(admin, rec, base).await;
    Ok(())
}

/// Extra runtime fetches in the custom pass (see `orchestrator_calls`).
const REPEATS: usize = 6;

const LOCK: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::ZERO;

async fn orchestrator_calls(provider: &PostgresProvider, rec: &mut Recorder, base: i64, pass: i64) {
    use Category::Hot;
    let pid = std::process::id();
    let running = inst(base + 6);
    let runtime_filter = DispatcherCapabilityFilter::default_for_current_build();
    // Matches no seeded (pinned) execution, only instances without one.
    let unpinned = DispatcherCapabilityFilter {
        supported_duroxide_versions: vec![SemverRange::new(
            semver::Version::new(99, 0, 0),
            semver::Version::new(99, 9, 9),
        )],
    };

    // An event for an instance that has not started (raised before its
    // start, or sent to a deleted instance) stays queued; every fetch that
    // walks past it has to decide whether it is claimable.
    let early = WorkItem::ExternalRaised {
        instance: format!("explain-early-{pass}-{pid}"),
        name: "Approved".into(),
        data: "{}".into(),
    };
    rec.call(
        Hot,
        "enqueue_for_orchestrator (event, no instance)",
        provider.enqueue_for_orchestrator(early, None),
        ok,
    )
    .await;
    // Walks every visible message and claims nothing: the idle path.
    let item = rec
        .call(
            Hot,
            "fetch_orchestration_item (filter: no seeded version)",
            provider.fetch_orchestration_item(LOCK, POLL, Some(&unpinned)),
            instance_of,
        )
        .await
        .flatten();
    if let Some((_, token, _)) = item {
        let _ = provider
            .abandon_orchestration_item(&token, None, true)
            .await;
    }

    // A new instance: start message, fetch (only it is unpinned), first turn.
    let new_instance = format!("explain-new-{pass}-{pid}");
    let start = items::start_item(&new_instance);
    rec.call(
        Hot,
        "enqueue_for_orchestrator (start)",
        provider.enqueue_for_orchestrator(start, None),
        ok,
    )
    .await;
    let first = rec
        .call(
            Hot,
            "fetch_orchestration_item (filter: new instance)",
            provider.fetch_orchestration_item(LOCK, POLL, Some(&unpinned)),
            instance_of,
        )
        .await
        .flatten();
    let op = "ack_orchestration_item (first turn)";
    match first {
        Some((item, token, _)) => {
            let i = item.instance.as_str();
            let (major, minor, patch) = SEED_VERSION;
            let metadata = ExecutionMetadata {
                orchestration_name: Some(items::ORCHESTRATION.into()),
                orchestration_version: Some("1.0.0".into()),
                pinned_duroxide_version: Some(semver::Version::new(major, minor, patch)),
                ..Default::default()
            };
            let history = vec![
                items::started_event(i),
                ev(2, i, 1, items::scheduled_kind(2)),
            ];
            let work = vec![items::activity_item(i, 2)];
            let ack =
                provider.ack_orchestration_item(&token, 1, history, work, vec![], metadata, vec![]);
            rec.call(Hot, op, ack, ok).await;
        }
        None => rec.skipped(Hot, op, "nothing fetched"),
    }

    let external = WorkItem::ExternalRaised {
        instance: running.clone(),
        name: "Approved".into(),
        data: "{}".into(),
    };
    rec.call(
        Hot,
        "enqueue_for_orchestrator (external event)",
        provider.enqueue_for_orchestrator(external, None),
        ok,
    )
    .await;
    let timer = WorkItem::TimerFired {
        instance: running.clone(),
        execution_id: 1,
        id: 4,
        fire_at_ms: now_ms() + 60_000,
    };
    rec.call(
        Hot,
        "enqueue_for_orchestrator (delayed)",
        provider.enqueue_for_orchestrator(timer, Some(Duration::from_secs(60))),
        ok,
    )
    .await;

    // The runtime's dispatcher always passes its capability filter.
    let turn = rec
        .call(
            Hot,
            "fetch_orchestration_item (runtime filter)",
            provider.fetch_orchestration_item(LOCK, POLL, Some(&runtime_filter)),
            instance_of,
        )
        .await
        .flatten();
    match turn {
        Some((_, token, _)) => {
            rec.call(
                Hot,
                "renew_orchestration_item_lock",
                provider.renew_orchestration_item_lock(&token, LOCK),
                ok,
            )
            .await;
            rec.call(
                Hot,
                "abandon_orchestration_item",
                provider.abandon_orchestration_item(&token, None, false),
                ok,
            )
            .await;
        }
        None => {
            rec.skipped(Hot, "renew_orchestration_item_lock", "nothing fetched");
            rec.skipped(Hot, "abandon_orchestration_item", "nothing fetched");
        }
    }

    // A running turn: schedules an activity and a timer, sets a key and the
    // custom status, cancels an activity.
    let turn = rec
        .call(
            Hot,
            "fetch_orchestration_item (again, runtime filter)",
            provider.fetch_orchestration_item(LOCK, POLL, Some(&runtime_filter)),
            instance_of,
        )
        .await
        .flatten();
    let op = "ack_orchestration_item (running turn)";
    match turn {
        Some((item, token, _)) => {
            let (i, x) = (item.instance.as_str(), item.execution_id);
            let next = next_event_id(&item.history);
            let fire_at = now_ms() + 60_000;
            let history = vec![
                ev(next, i, x, items::scheduled_kind(next)),
                ev(
                    next + 1,
                    i,
                    x,
                    EventKind::KeyValueSet {
                        key: "stage".into(),
                        value: "shipping".into(),
                        last_updated_at_ms: now_ms(),
                    },
                ),
                ev(
                    next + 2,
                    i,
                    x,
                    EventKind::CustomStatusUpdated {
                        status: Some("shipping".into()),
                    },
                ),
                ev(
                    next + 3,
                    i,
                    x,
                    EventKind::TimerCreated {
                        fire_at_ms: fire_at,
                    },
                ),
            ];
            let timer = WorkItem::TimerFired {
                instance: i.into(),
                execution_id: x,
                id: next + 3,
                fire_at_ms: fire_at,
            };
            let metadata = ExecutionMetadata {
                orchestration_name: Some(item.orchestration_name.clone()),
                orchestration_version: Some(item.version.clone()),
                ..Default::default()
            };
            let cancelled = vec![ScheduledActivityIdentifier {
                instance: i.into(),
                execution_id: x,
                activity_id: 2,
            }];
            let ack = provider.ack_orchestration_item(
                &token,
                x,
                history,
                vec![items::activity_item_of(i, x, next)],
                vec![timer],
                metadata,
                cancelled,
            );
            rec.call(Hot, op, ack, ok).await;
        }
        None => rec.skipped(Hot, op, "nothing fetched"),
    }

    // A final turn: completes the execution, folding key-value changes.
    let turn = rec
        .call(
            Hot,
            "fetch_orchestration_item (next, runtime filter)",
            provider.fetch_orchestration_item(LOCK, POLL, Some(&runtime_filter)),
            instance_of,
        )
        .await
        .flatten();
    let op = "ack_orchestration_item (completing turn)";
    match turn {
        Some((item, token, _)) => {
            let (i, x) = (item.instance.as_str(), item.execution_id);
            let next = next_event_id(&item.history);
            let output = "\"shipped\"".to_owned();
            let history = vec![
                ev(
                    next,
                    i,
                    x,
                    EventKind::KeyValueSet {
                        key: "result".into(),
                        value: "shipped".into(),
                        last_updated_at_ms: now_ms(),
                    },
                ),
                ev(
                    next + 1,
                    i,
                    x,
                    EventKind::OrchestrationCompleted {
                        output: output.clone(),
                    },
                ),
            ];
            let metadata = ExecutionMetadata {
                status: Some("Completed".into()),
                output: Some(output),
                orchestration_name: Some(item.orchestration_name.clone()),
                orchestration_version: Some(item.version.clone()),
                ..Default::default()
            };
            let ack = provider.ack_orchestration_item(
                &token,
                x,
                history,
                vec![],
                vec![],
                metadata,
                vec![],
            );
            rec.call(Hot, op, ack, ok).await;
        }
        None => rec.skipped(Hot, op, "nothing fetched"),
    }

    // PostgreSQL plans a PL/pgSQL statement afresh (custom plan) for its
    // first five executions on a connection, then may switch to a cached
    // generic plan: repeat the runtime's fetch to see what a long-lived
    // pooled connection settles on.
    if pass == 0 {
        for k in 1..=REPEATS {
            let op = format!("fetch_orchestration_item (runtime filter, repeat {k}/{REPEATS})");
            let turn = rec
                .call(
                    Hot,
                    &op,
                    provider.fetch_orchestration_item(LOCK, POLL, Some(&runtime_filter)),
                    instance_of,
                )
                .await
                .flatten();
            if let Some((_, token, _)) = turn {
                let _ = provider
                    .abandon_orchestration_item(&token, None, true)
                    .await;
            }
        }
    }

    // Admin tooling and older runtimes fetch without a filter.
    let turn = rec
        .call(
            Hot,
            "fetch_orchestration_item (no filter)",
            provider.fetch_orchestration_item(LOCK, POLL, None),
            instance_of,
        )
        .await
        .flatten();
    let op = "abandon_orchestration_item (delay, ignore attempt)";
    match turn {
        Some((_, token, _)) => {
            let abandon =
                provider.abandon_orchestration_item(&token, Some(Duration::from_secs(5)), true);
            rec.call(Hot, op, abandon, ok).await;
        }
        None => rec.skipped(Hot, op, "nothing fetched"),
    }
}

async fn worker_calls(provider: &PostgresProvider, rec: &mut Recorder, base: i64, pass: i64) {
    use Category::{Hot, Maintenance};
    let running = inst(base + 6);
    let default_only = TagFilter::default_only();

    rec.call(
        Hot,
        "enqueue_for_worker",
        provider.enqueue_for_worker(items::activity_item(&running, 12)),
        ok,
    )
    .await;
    let work = rec
        .call(
            Hot,
            "fetch_work_item",
            provider.fetch_work_item(LOCK, POLL, None, &default_only),
            work_of,
        )
        .await
        .flatten();
    match work {
        Some((_, token, _)) => {
            rec.call(
                Hot,
                "renew_work_item_lock",
                provider.renew_work_item_lock(&token, LOCK),
                ok,
            )
            .await;
            rec.call(
                Hot,
                "abandon_work_item",
                provider.abandon_work_item(&token, None, false),
                ok,
            )
            .await;
        }
        None => {
            rec.skipped(Hot, "renew_work_item_lock", "nothing fetched");
            rec.skipped(Hot, "abandon_work_item", "nothing fetched");
        }
    }

    let work = rec
        .call(
            Hot,
            "fetch_work_item (again)",
            provider.fetch_work_item(LOCK, POLL, None, &default_only),
            work_of,
        )
        .await
        .flatten();
    let op = "ack_work_item (completion)";
    match work {
        Some((
            WorkItem::ActivityExecute {
                instance,
                execution_id,
                id,
                ..
            },
            token,
            _,
        )) => {
            let done = items::completion_item_of(&instance, execution_id, id);
            rec.call(Hot, op, provider.ack_work_item(&token, Some(done)), ok)
                .await;
        }
        _ => rec.skipped(Hot, op, "nothing fetched"),
    }

    let work = rec
        .call(
            Hot,
            "fetch_work_item (tags: gpu)",
            provider.fetch_work_item(LOCK, POLL, None, &TagFilter::tags(["gpu"])),
            work_of,
        )
        .await
        .flatten();
    let op = "ack_work_item (no completion)";
    match work {
        Some((_, token, _)) => {
            rec.call(Hot, op, provider.ack_work_item(&token, None), ok)
                .await;
        }
        None => rec.skipped(Hot, op, "nothing fetched"),
    }

    // A session-bound activity with a tag of its own, so the session fetch
    // claims exactly it and takes the session.
    let tag = format!("explain-tag-{pass}");
    let session = format!("explain-session-{pass}");
    let owner = format!("explain-worker-{pass}");
    rec.call(
        Hot,
        "enqueue_for_worker (session, tag)",
        provider.enqueue_for_worker(items::with_session_and_tag(
            items::activity_item(&running, 14),
            Some(&session),
            Some(&tag),
        )),
        ok,
    )
    .await;
    let config = SessionFetchConfig {
        owner_id: owner.clone(),
        lock_timeout: LOCK,
    };
    let work = rec
        .call(
            Hot,
            "fetch_work_item (session, own tag)",
            provider.fetch_work_item(LOCK, POLL, Some(&config), &TagFilter::tags([tag.clone()])),
            work_of,
        )
        .await
        .flatten();
    rec.call(
        Hot,
        "renew_session_lock",
        provider.renew_session_lock(&[owner.as_str()], LOCK, Duration::from_secs(300)),
        |n| format!("{n} sessions"),
    )
    .await;
    match work {
        Some((_, token, _)) => {
            rec.call(
                Hot,
                "renew_work_item_lock (session)",
                provider.renew_work_item_lock(&token, LOCK),
                ok,
            )
            .await;
            let done = items::completion_item(&running, 14);
            rec.call(
                Hot,
                "ack_work_item (session)",
                provider.ack_work_item(&token, Some(done)),
                ok,
            )
            .await;
        }
        None => {
            rec.skipped(Hot, "renew_work_item_lock (session)", "nothing fetched");
            rec.skipped(Hot, "ack_work_item (session)", "nothing fetched");
        }
    }
    rec.call(
        Hot,
        "fetch_work_item (session, default tag)",
        provider.fetch_work_item(LOCK, POLL, Some(&config), &default_only),
        work_of,
    )
    .await;
    // Nothing matches: walks the whole visible queue, then the idle path.
    rec.call(
        Hot,
        "fetch_work_item (tags: none queued)",
        provider.fetch_work_item(LOCK, POLL, None, &TagFilter::tags(["no-such-tag"])),
        work_of,
    )
    .await;
    rec.call(
        Maintenance,
        "cleanup_orphaned_sessions",
        provider.cleanup_orphaned_sessions(Duration::from_secs(300)),
        |n| format!("{n} removed"),
    )
    .await;
}

async fn read_calls(provider: &PostgresProvider, rec: &mut Recorder, base: i64, pass: i64) {
    use Category::{Hot, Read};
    let running = inst(base + 6);
    let with_delta = inst(base + (36 - base % 30) % 30); // n % 30 == 6: kv_delta rows
    let with_store = inst(base + 80); // n % 20 == 0: kv_store rows, custom status
    let two_execs = inst(base + 93);

    rec.call(Read, "read", provider.read(&running), |v| row_count(v))
        .await;
    rec.call(
        Read,
        "read_with_execution",
        provider.read_with_execution(&two_execs, 1),
        |v| row_count(v),
    )
    .await;
    rec.call(
        Read,
        "get_custom_status",
        provider.get_custom_status(&with_store, 0),
        |s| format!("{s:?}"),
    )
    .await;
    rec.call(
        Read,
        "get_kv_value",
        provider.get_kv_value(&with_delta, "key1"),
        |v| format!("{v:?}"),
    )
    .await;
    rec.call(
        Read,
        "get_kv_all_values",
        provider.get_kv_all_values(&with_store),
        |m| format!("{} keys", m.len()),
    )
    .await;
    rec.call(
        Read,
        "get_instance_stats",
        provider.get_instance_stats(&running),
        |s| match s {
            Some(s) => format!("{} events", s.history_event_count),
            None => "none".to_owned(),
        },
    )
    .await;
    let instance = format!("explain-append-{pass}-{}", std::process::id());
    let event = ev(
        1,
        &instance,
        1,
        EventKind::ExternalSubscribed {
            name: "Approved".into(),
        },
    );
    rec.call(
        Hot,
        "append_with_execution",
        provider.append_with_execution(&instance, 1, vec![event]),
        ok,
    )
    .await;
}

async fn admin_calls(admin: &dyn ProviderAdmin, rec: &mut Recorder, base: i64) {
    use Category::{Admin, WholeTable};
    let two_execs = inst(base + 93);

    rec.call(
        Admin,
        "list_executions",
        admin.list_executions(&two_execs),
        |v| format!("{v:?}"),
    )
    .await;
    rec.call(Admin, "read_history", admin.read_history(&two_execs), |v| {
        row_count(v)
    })
    .await;
    rec.call(
        Admin,
        "read_history_with_execution_id",
        admin.read_history_with_execution_id(&two_execs, 1),
        |v| row_count(v),
    )
    .await;
    rec.call(
        Admin,
        "latest_execution_id",
        admin.latest_execution_id(&two_execs),
        u64::to_string,
    )
    .await;
    rec.call(
        Admin,
        "get_instance_info",
        admin.get_instance_info(&two_execs),
        |i| i.status.clone(),
    )
    .await;
    rec.call(
        Admin,
        "get_execution_info",
        admin.get_execution_info(&two_execs, 1),
        |e| format!("{} ({} events)", e.status, e.event_count),
    )
    .await;
    rec.call(
        Admin,
        "list_children",
        admin.list_children(&inst(base + 40)),
        |v| format!("{v:?}"),
    )
    .await;
    rec.call(
        Admin,
        "get_parent_id",
        admin.get_parent_id(&inst(base + 45)),
        |v| format!("{v:?}"),
    )
    .await;
    rec.call(
        Admin,
        "get_instance_tree",
        admin.get_instance_tree(&inst(base + 40)),
        |t| format!("{} instances", t.all_ids.len()),
    )
    .await;
    rec.call(
        Admin,
        "delete_instance (root with a child)",
        admin.delete_instance(&inst(base + 20), false),
        deleted,
    )
    .await;
    rec.call(
        Admin,
        "delete_instances_atomic",
        admin.delete_instances_atomic(&[inst(base + 31), inst(base + 32)], false),
        deleted,
    )
    .await;
    let ids = [51, 52, 53, 59].map(|k| inst(base + k)).to_vec();
    rec.call(
        Admin,
        "delete_instance_bulk (ids)",
        admin.delete_instance_bulk(InstanceFilter {
            instance_ids: Some(ids),
            ..Default::default()
        }),
        deleted,
    )
    .await;
    rec.call(
        Admin,
        "prune_executions",
        admin.prune_executions(&inst(base + 63), PruneOptions::default()),
        pruned,
    )
    .await;
    let ids = vec![inst(base + 73), inst(base + 83)];
    rec.call(
        Admin,
        "prune_executions_bulk (ids)",
        admin.prune_executions_bulk(
            InstanceFilter {
                instance_ids: Some(ids),
                ..Default::default()
            },
            PruneOptions::default(),
        ),
        pruned,
    )
    .await;

    let before_now = InstanceFilter {
        completed_before: Some(now_ms()),
        limit: Some(10),
        ..Default::default()
    };
    rec.call(
        WholeTable,
        "delete_instance_bulk (completed_before, limit 10)",
        admin.delete_instance_bulk(before_now.clone()),
        deleted,
    )
    .await;
    let keep_one = PruneOptions {
        keep_last: Some(1),
        ..Default::default()
    };
    rec.call(
        WholeTable,
        "prune_executions_bulk (completed_before, limit 10)",
        admin.prune_executions_bulk(before_now, keep_one),
        pruned,
    )
    .await;
    rec.call(
        WholeTable,
        "list_instances_by_status (Running)",
        admin.list_instances_by_status("Running"),
        |v| row_count(v),
    )
    .await;
    rec.call(WholeTable, "list_instances", admin.list_instances(), |v| {
        row_count(v)
    })
    .await;
    rec.call(
        WholeTable,
        "get_queue_depths",
        admin.get_queue_depths(),
        |d| {
            format!(
                "orchestrator {}, worker {}",
                d.orchestrator_queue, d.worker_queue
            )
        },
    )
    .await;
    rec.call(
        WholeTable,
        "get_system_metrics",
        admin.get_system_metrics(),
        |m| format!("{} instances, {} events", m.total_instances, m.total_events),
    )
    .await;
}
