//! Work items and a first turn, built the way duroxide's runtime builds them,
//! for tests and benchmarks that drive the provider directly.

use std::time::Duration;

use duroxide::providers::{ExecutionMetadata, Provider, ProviderError, TagFilter, WorkItem};
use duroxide::{Event, EventKind, INITIAL_EVENT_ID, INITIAL_EXECUTION_ID};

/// Orchestration name used by these items.
pub const ORCHESTRATION: &str = "TestOrch";

/// A `StartOrchestration` for `instance`, version 1.0.0.
pub fn start_item(instance: &str) -> WorkItem {
    WorkItem::StartOrchestration {
        instance: instance.to_owned(),
        orchestration: ORCHESTRATION.to_owned(),
        input: "{}".to_owned(),
        version: Some("1.0.0".to_owned()),
        parent_instance: None,
        parent_id: None,
        parent_execution_id: None,
        execution_id: INITIAL_EXECUTION_ID,
    }
}

/// An untagged, session-less `ActivityExecute` with activity id `id`.
pub fn activity_item(instance: &str, id: u64) -> WorkItem {
    activity_item_of(instance, INITIAL_EXECUTION_ID, id)
}

/// [`activity_item`] of execution `execution_id`.
pub fn activity_item_of(instance: &str, execution_id: u64, id: u64) -> WorkItem {
    WorkItem::ActivityExecute {
        instance: instance.to_owned(),
        execution_id,
        id,
        name: format!("Activity{id}"),
        input: format!("input{id}"),
        session_id: None,
        tag: None,
    }
}

/// `item` (an `ActivityExecute`; anything else is returned unchanged) bound
/// to `session_id` and carrying `tag`.
pub fn with_session_and_tag(
    mut item: WorkItem,
    session: Option<&str>,
    with_tag: Option<&str>,
) -> WorkItem {
    if let WorkItem::ActivityExecute {
        session_id, tag, ..
    } = &mut item
    {
        *session_id = session.map(str::to_owned);
        *tag = with_tag.map(str::to_owned);
    }
    item
}

/// The `ActivityScheduled` event kind that [`activity_item`] with the same
/// `id` executes (the event's id is the activity id).
pub fn scheduled_kind(id: u64) -> EventKind {
    EventKind::ActivityScheduled {
        name: format!("Activity{id}"),
        input: format!("input{id}"),
        session_id: None,
        tag: None,
    }
}

/// The `ActivityCompleted` answering [`activity_item`].
pub fn completion_item(instance: &str, id: u64) -> WorkItem {
    completion_item_of(instance, INITIAL_EXECUTION_ID, id)
}

/// The `ActivityCompleted` answering [`activity_item_of`].
pub fn completion_item_of(instance: &str, execution_id: u64, id: u64) -> WorkItem {
    WorkItem::ActivityCompleted {
        instance: instance.to_owned(),
        execution_id,
        id,
        result: format!("result{id}"),
    }
}

/// The `OrchestrationStarted` event of `instance` (version 1.0.0).
pub fn started_event(instance: &str) -> Event {
    Event::with_event_id(
        INITIAL_EVENT_ID,
        instance.to_owned(),
        INITIAL_EXECUTION_ID,
        None,
        EventKind::OrchestrationStarted {
            name: ORCHESTRATION.to_owned(),
            version: "1.0.0".to_owned(),
            input: "{}".to_owned(),
            parent_instance: None,
            parent_id: None,
            parent_execution_id: None,
            carry_forward_events: None,
            initial_custom_status: None,
        },
    )
}

/// Acknowledges the first turn of `instance`: its `OrchestrationStarted`
/// event and the metadata that creates the instance.
pub async fn ack_first_turn(
    p: &dyn Provider,
    instance: &str,
    token: &str,
) -> Result<(), ProviderError> {
    ack_first_turn_scheduling(p, instance, token, 0).await
}

/// [`ack_first_turn`] that also schedules activities `1..=activities`
/// ([`activity_item`], with their `ActivityScheduled` events).
pub async fn ack_first_turn_scheduling(
    p: &dyn Provider,
    instance: &str,
    token: &str,
    activities: u64,
) -> Result<(), ProviderError> {
    let mut history = vec![started_event(instance)];
    history.extend((1..=activities).map(|id| {
        Event::with_event_id(
            id + 1,
            instance.to_owned(),
            INITIAL_EXECUTION_ID,
            None,
            scheduled_kind(id),
        )
    }));
    let metadata = ExecutionMetadata {
        orchestration_name: Some(ORCHESTRATION.to_owned()),
        orchestration_version: Some("1.0.0".to_owned()),
        ..Default::default()
    };
    p.ack_orchestration_item(
        token,
        INITIAL_EXECUTION_ID,
        history,
        (1..=activities)
            .map(|id| activity_item(instance, id))
            .collect(),
        vec![],
        metadata,
        vec![],
    )
    .await
}

/// Starts `instance`, acknowledges a first turn that schedules activities
/// `1..=n` and claims them all (`lock` each); returns their lock tokens in
/// claim order, so every activity of the execution is running.
pub async fn fan_out_running(
    p: &dyn Provider,
    instance: &str,
    n: u64,
    lock: Duration,
) -> Result<Vec<String>, ProviderError> {
    p.enqueue_for_orchestrator(start_item(instance), None)
        .await?;
    let (_, token, _) = p
        .fetch_orchestration_item(lock, Duration::ZERO, None)
        .await?
        .expect("the start just enqueued is claimable");
    ack_first_turn_scheduling(p, instance, &token, n).await?;
    let mut tokens = Vec::new();
    for _ in 1..=n {
        let (_, token, _) = p
            .fetch_work_item(lock, Duration::ZERO, None, &TagFilter::Any)
            .await?
            .expect("a scheduled activity is claimable");
        tokens.push(token);
    }
    Ok(tokens)
}
