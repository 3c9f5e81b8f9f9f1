//! Support shared by duroxide-diesel's tests, examples and benchmark.
//!
//! Nothing here depends on duroxide-diesel itself: every helper works with
//! any duroxide [`Provider`](duroxide::providers::Provider) or with a plain
//! PostgreSQL URL.
//!
//! * [`cpu`]: CPU time of this process and of a local PostgreSQL server.
//! * [`pg`]: a PostgreSQL server to run against, `DATABASE_URL` or a
//!   throwaway local cluster started on demand.
//! * [`pgbouncer`]: a PgBouncer in transaction pooling mode in front of
//!   that server.
//! * [`db`]: one-off SQL on a new connection, schema names and cleanup.
//! * [`proxy`]: a loopback TCP proxy that counts round trips, adds latency
//!   and injects network faults.
//! * [`items`]: work items and a first turn built the way duroxide's
//!   runtime builds them, for driving a provider directly.
//! * [`workload`]: a small durable workload (fan-out, timer, sequential
//!   tail) that records every activity execution and judges a run.
//!
//! ```no_run
//! # async fn demo() {
//! use duroxide_diesel_testkit::{db, pg};
//!
//! let url = pg::database_url();
//! let schema = db::unique_schema("demo");
//! // ... build a provider on `url` and `schema`, run something ...
//! db::drop_schema(&url, &schema).await.expect("drop schema");
//! # }
//! ```
#![deny(missing_docs)]

pub mod cpu;
pub mod db;
pub mod items;
pub mod pg;
pub mod pgbouncer;
pub mod proxy;
pub mod workload;
