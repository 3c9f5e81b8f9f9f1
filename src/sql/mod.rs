//! The Rust <-> SQL contract, typed once: [`procedures`] declares every
//! function of `migrations/` with its SQL argument and result types, and
//! [`documents`] every JSONB document those functions take or return.
//! `src/functions.sql` holds the functions' current definitions, and
//! [`reply`] how a call reads a reply: to its end, so it is committed.

pub(crate) mod documents;
pub(crate) mod procedures;
pub(crate) mod reply;
