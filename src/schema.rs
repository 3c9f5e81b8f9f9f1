// @generated automatically by Diesel CLI.

diesel::table! {
    executions (instance_id, execution_id) {
        instance_id -> Text,
        execution_id -> Int8,
        status -> Text,
        output -> Nullable<Text>,
        pinned_major -> Nullable<Int4>,
        pinned_minor -> Nullable<Int4>,
        pinned_patch -> Nullable<Int4>,
        started_at -> Timestamptz,
        completed_at -> Nullable<Timestamptz>,
        turn_reader -> Nullable<Text>,
        turn_token -> Nullable<Text>,
        turn_last_event -> Nullable<Int8>,
    }
}

diesel::table! {
    history (instance_id, execution_id, event_id) {
        instance_id -> Text,
        execution_id -> Int8,
        event_id -> Int8,
        event_type -> Text,
        event_data -> Jsonb,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    instance_locks (instance_id) {
        instance_id -> Text,
        lock_token -> Text,
        locked_until -> Timestamptz,
        locked_at -> Timestamptz,
    }
}

diesel::table! {
    instances (instance_id) {
        instance_id -> Text,
        orchestration_name -> Text,
        orchestration_version -> Nullable<Text>,
        current_execution_id -> Int8,
        parent_instance_id -> Nullable<Text>,
        custom_status -> Nullable<Text>,
        custom_status_version -> Int8,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    kv_delta (instance_id, key) {
        instance_id -> Text,
        key -> Text,
        value -> Nullable<Text>,
        last_updated_at_ms -> Int8,
    }
}

diesel::table! {
    kv_store (instance_id, key) {
        instance_id -> Text,
        key -> Text,
        value -> Text,
        last_updated_at_ms -> Int8,
    }
}

diesel::table! {
    orchestrator_queue (id) {
        id -> Int8,
        instance_id -> Text,
        kind -> Text,
        work_item -> Jsonb,
        visible_at -> Timestamptz,
        lock_token -> Nullable<Text>,
        attempt_count -> Int4,
        created_at -> Timestamptz,
        held -> Bool,
    }
}

diesel::table! {
    sessions (session_id) {
        session_id -> Text,
        owner_id -> Text,
        locked_until -> Timestamptz,
        last_activity_at -> Timestamptz,
    }
}

diesel::table! {
    worker_queue (id) {
        id -> Int8,
        work_item -> Jsonb,
        instance_id -> Nullable<Text>,
        execution_id -> Nullable<Int8>,
        activity_id -> Nullable<Int8>,
        session_id -> Nullable<Text>,
        tag -> Nullable<Text>,
        visible_at -> Timestamptz,
        lock_token -> Nullable<Text>,
        locked_until -> Nullable<Timestamptz>,
        attempt_count -> Int4,
        created_at -> Timestamptz,
    }
}

diesel::allow_tables_to_appear_in_same_query!(
    executions,
    history,
    instance_locks,
    instances,
    kv_delta,
    kv_store,
    orchestrator_queue,
    sessions,
    worker_queue,
);
