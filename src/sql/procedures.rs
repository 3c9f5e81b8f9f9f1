//! Typed declarations of the PL/pgSQL functions defined in `migrations/`.
//!
//! Each hot-path provider call is one of these functions: a single statement,
//! so a single network round trip once diesel-async has prepared it.
//! Durations are milliseconds; a JSONB argument or result is one of the
//! documents in [`super::documents`], named on each declaration.

use diesel::define_sql_function;
use diesel::sql_types::{Array, BigInt, Bool, Integer, Jsonb, Nullable, Text};

define_sql_function! {
    /// Name of this schema's LISTEN/NOTIFY channel.
    fn dx_notify_channel() -> Text;
}

define_sql_function! {
    /// Enqueue an orchestrator message visible after `delay_ms`; returns its id.
    fn dx_enqueue_orchestrator(instance: Text, kind: Text, item: Jsonb, delay_ms: BigInt) -> BigInt;
}

define_sql_function! {
    /// Enqueue an activity execution; returns its id.
    fn dx_enqueue_worker(
        item: Jsonb,
        instance: Nullable<Text>,
        execution_id: Nullable<BigInt>,
        activity_id: Nullable<BigInt>,
        session_id: Nullable<Text>,
        tag: Nullable<Text>,
    ) -> BigInt;
}

define_sql_function! {
    /// Lock the next ready orchestration instance under `token` and return its
    /// turn (`reader`: this provider's history cache id, see
    /// `provider::history_cache`): [`Fetched`](super::documents::Fetched) of
    /// [`ClaimedOrchestration`](super::documents::ClaimedOrchestration).
    fn dx_fetch_orchestration(
        token: Text,
        lock_ms: BigInt,
        min_version: Nullable<Array<Integer>>,
        max_version: Nullable<Array<Integer>>,
        reader: Nullable<Text>,
    ) -> Jsonb;
}

define_sql_function! {
    /// Commit an orchestration turn, optionally claiming one of its worker
    /// items for a waiting local worker. Arguments: `history` = array of
    /// [`HistoryEntry`](super::documents::HistoryEntry), `worker_items` =
    /// [`WorkerEntry`](super::documents::WorkerEntry), `orchestrator_items` =
    /// [`OrchestratorEntry`](super::documents::OrchestratorEntry), `metadata` =
    /// [`Metadata`](super::documents::Metadata), `custom_status` =
    /// [`CustomStatus`](super::documents::CustomStatus), `kv_ops` =
    /// [`KvOp`](super::documents::KvOp), `cancelled` =
    /// [`CancelledActivity`](super::documents::CancelledActivity), `claim` =
    /// [`WorkerClaim`](super::documents::WorkerClaim), `reader` = this
    /// provider's history cache id (see `provider::history_cache`); returns
    /// [`AckOutcome`](super::documents::AckOutcome).
    #[allow(clippy::too_many_arguments)]
    fn dx_ack_orchestration(
        token: Text,
        execution_id: BigInt,
        history: Jsonb,
        worker_items: Jsonb,
        orchestrator_items: Jsonb,
        metadata: Jsonb,
        custom_status: Nullable<Jsonb>,
        kv_ops: Jsonb,
        cancelled: Jsonb,
        claim: Nullable<Jsonb>,
        reader: Nullable<Text>,
    ) -> Jsonb;
}

define_sql_function! {
    /// History of an instance's latest execution: all of it, or only the
    /// events after `after` while `token` is the lock token of that
    /// execution's latest committed turn and `execution_id` is it; returns
    /// [`ReadHistory`](super::documents::ReadHistory).
    fn dx_read_history(
        instance: Text,
        execution_id: Nullable<BigInt>,
        token: Nullable<Text>,
        after: Nullable<BigInt>,
    ) -> Jsonb;
}

define_sql_function! {
    /// Release an orchestration lock; false for an unknown token.
    fn dx_abandon_orchestration(token: Text, delay_ms: BigInt, ignore_attempt: Bool) -> Bool;
}

define_sql_function! {
    /// Extend an orchestration lock; false if unknown or expired.
    fn dx_renew_orchestration_lock(token: Text, extend_ms: BigInt) -> Bool;
}

define_sql_function! {
    /// Lock the next matching activity execution under `token`:
    /// [`Fetched`](super::documents::Fetched) of
    /// [`ClaimedWork`](super::documents::ClaimedWork), naming the history
    /// stamp of the instance when `reader` committed its last turn.
    fn dx_fetch_work(
        token: Text,
        lock_ms: BigInt,
        owner_id: Nullable<Text>,
        session_lock_ms: BigInt,
        tag_mode: Integer,
        tags: Array<Text>,
        reader: Nullable<Text>,
    ) -> Jsonb;
}

define_sql_function! {
    /// Complete an activity, enqueueing its completion (held up to
    /// `hold_ms` while other activities of its execution are pending):
    /// 0 if the lock is gone, 1 if done, 2 if done and the completion held.
    fn dx_ack_work(token: Text, instance: Nullable<Text>, kind: Nullable<Text>, completion: Nullable<Jsonb>, hold_ms: BigInt) -> Integer;
}

define_sql_function! {
    /// `dx_ack_work`, then, if it found its lock and `next_token` is given,
    /// `dx_fetch_work` under `next_token` in the same transaction (migration
    /// `000021_ack_then_claim`; for session-less acknowledged activities
    /// only): an [`AckClaimed`](super::documents::AckClaimed).
    #[allow(clippy::too_many_arguments)]
    fn dx_ack_work_claim(
        token: Text,
        instance: Nullable<Text>,
        kind: Nullable<Text>,
        completion: Nullable<Jsonb>,
        hold_ms: BigInt,
        next_token: Nullable<Text>,
        lock_ms: BigInt,
        owner_id: Nullable<Text>,
        session_lock_ms: BigInt,
        tag_mode: Integer,
        tags: Array<Text>,
        reader: Nullable<Text>,
    ) -> Jsonb;
}

define_sql_function! {
    /// Extend an activity lock; false if the row is gone or the lock expired.
    fn dx_renew_work_lock(token: Text, extend_ms: BigInt) -> Bool;
}

define_sql_function! {
    /// Release an activity lock; false for an unknown token.
    fn dx_abandon_work(token: Text, delay_ms: BigInt, ignore_attempt: Bool) -> Bool;
}

define_sql_function! {
    /// Heartbeat the non-idle sessions of the given owners; returns the count.
    fn dx_renew_sessions(owner_ids: Array<Text>, extend_ms: BigInt, idle_ms: BigInt) -> BigInt;
}

define_sql_function! {
    /// The instance and all its descendants, root first.
    fn dx_instance_tree(root: Text) -> Array<Text>;
}

define_sql_function! {
    /// Delete a root instance with its descendants:
    /// [`AdminOutcome`](super::documents::AdminOutcome) of
    /// [`DeleteCounts`](super::documents::DeleteCounts).
    fn dx_delete_instance(instance: Text, force: Bool) -> Jsonb;
}

define_sql_function! {
    /// Delete exactly these instances, refusing to orphan a child:
    /// [`AdminOutcome`](super::documents::AdminOutcome) of
    /// [`DeleteCounts`](super::documents::DeleteCounts).
    fn dx_delete_instances(ids: Array<Text>, force: Bool) -> Jsonb;
}

define_sql_function! {
    /// Delete up to `max_roots` terminal root instances with their descendants:
    /// [`AdminOutcome`](super::documents::AdminOutcome) of
    /// [`DeleteCounts`](super::documents::DeleteCounts), never refused.
    fn dx_delete_instances_bulk(
        ids: Nullable<Array<Text>>,
        completed_before_ms: Nullable<BigInt>,
        max_roots: Integer,
    ) -> Jsonb;
}

define_sql_function! {
    /// Prune old executions of one instance:
    /// [`AdminOutcome`](super::documents::AdminOutcome) of
    /// [`PruneCounts`](super::documents::PruneCounts).
    fn dx_prune_executions(
        instance: Text,
        keep_last: Nullable<Integer>,
        completed_before_ms: Nullable<BigInt>,
    ) -> Jsonb;
}

define_sql_function! {
    /// Prune old executions of up to `max_instances` instances:
    /// [`AdminOutcome`](super::documents::AdminOutcome) of
    /// [`PruneCounts`](super::documents::PruneCounts), never refused.
    fn dx_prune_executions_bulk(
        ids: Nullable<Array<Text>>,
        completed_before_ms: Nullable<BigInt>,
        max_instances: Integer,
        keep_last: Nullable<Integer>,
        prune_completed_before_ms: Nullable<BigInt>,
    ) -> Jsonb;
}
