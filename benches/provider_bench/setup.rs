//! What every section builds on: providers on fresh schemas, the delay
//! proxy, and cleanup of everything a run created.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
use duroxide::providers::Provider;
use duroxide::runtime::{Runtime, RuntimeOptions};
use duroxide_diesel::PostgresProvider;
use duroxide_diesel_testkit::db;
use duroxide_diesel_testkit::proxy::ProxyThread;

use crate::Res;
use crate::config::progress;
use crate::registries::{activities, orchestrations};
use crate::report::{median, ms};
use crate::tap::Tap;

/// Schemas and temp files created by this run, removed at the end.
static SCHEMAS: Mutex<Vec<String>> = Mutex::new(Vec::new());
static SQLITE_FILES: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// A fresh schema name, dropped by [`cleanup`].
pub fn new_schema(tag: &str) -> String {
    let name = db::unique_schema(&format!("dxbench_{tag}"));
    SCHEMAS.lock().unwrap().push(name.clone());
    name
}

/// The schema [`new_schema`] made last.
pub fn latest_schema() -> Option<String> {
    SCHEMAS.lock().unwrap().last().cloned()
}

/// A SQLite database file (with its journal files) removed by [`cleanup`].
pub fn track_sqlite_file(path: PathBuf) {
    SQLITE_FILES.lock().unwrap().push(path);
}

pub async fn build_pg(url: &str, schema: &str) -> Res<PostgresProvider> {
    build_pg_with_cache(url, schema, duroxide_diesel::DEFAULT_HISTORY_CACHE_EVENTS).await
}

/// [`build_pg`] with a history cache of `cache_events` events (0: off).
pub async fn build_pg_with_cache(
    url: &str,
    schema: &str,
    cache_events: usize,
) -> Res<PostgresProvider> {
    PostgresProvider::builder(url)
        .schema(schema)
        .history_cache_events(cache_events)
        .build()
        .await
        .map_err(|e| format!("build PostgresProvider ({schema}): {e}"))
}

/// A provider on a fresh schema tagged `tag`, reached at `url` directly or
/// through `proxy` (whose counts then feed the tap), wrapped in a [`Tap`]
/// and driven by a runtime of the benchmark's registries with `options`.
pub async fn tapped_runtime(
    url: &str,
    tag: &str,
    proxy: Option<&Arc<ProxyThread>>,
    options: RuntimeOptions,
) -> Res<(Arc<Tap>, Arc<Runtime>)> {
    let cache = duroxide_diesel::DEFAULT_HISTORY_CACHE_EVENTS;
    tapped_runtime_with_cache(url, tag, proxy, options, cache).await
}

/// [`tapped_runtime`] whose provider has a history cache of `cache_events`
/// events (0: off).
pub async fn tapped_runtime_with_cache(
    url: &str,
    tag: &str,
    proxy: Option<&Arc<ProxyThread>>,
    options: RuntimeOptions,
    cache_events: usize,
) -> Res<(Arc<Tap>, Arc<Runtime>)> {
    let tap = tapped_provider(url, tag, proxy, cache_events).await?;
    let rt = start_runtime(&tap, options).await;
    Ok((tap, rt))
}

/// A provider on a fresh schema tagged `tag` (see [`tapped_runtime`]),
/// with no runtime yet.
pub async fn tapped_provider(
    url: &str,
    tag: &str,
    proxy: Option<&Arc<ProxyThread>>,
    cache_events: usize,
) -> Res<Arc<Tap>> {
    let schema = new_schema(tag);
    let purl = proxy.map_or_else(|| url.to_owned(), |h| h.proxy().url(url));
    let provider: Arc<dyn Provider> =
        Arc::new(build_pg_with_cache(&purl, &schema, cache_events).await?);
    let tap = Tap::new(provider);
    if let Some(h) = proxy {
        let h = Arc::clone(h);
        let _ = tap.probe.set(Box::new(move || h.proxy().snapshot()));
    }
    Ok(tap)
}

/// A runtime of the benchmark's registries on `tap` with `options`.
pub async fn start_runtime(tap: &Arc<Tap>, options: RuntimeOptions) -> Arc<Runtime> {
    Runtime::start_with_options(tap.clone(), activities(), orchestrations(), options).await
}

/// Drops the run's schemas and removes its SQLite files.
pub async fn cleanup(url: &str) {
    let schemas = std::mem::take(&mut *SCHEMAS.lock().unwrap());
    for s in &schemas {
        if let Err(e) = db::drop_schema(url, s).await {
            progress(format!("could not drop schema {s}: {e}"));
        }
    }
    for f in std::mem::take(&mut *SQLITE_FILES.lock().unwrap()) {
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let mut p = f.clone().into_os_string();
            p.push(suffix);
            let _ = std::fs::remove_file(PathBuf::from(p));
        }
    }
}

/// The delay proxy on its own thread (see [`ProxyThread`]), shared by the
/// section and the tap's probe.
pub async fn start_proxy(url: &str, one_way: Duration) -> Res<Arc<ProxyThread>> {
    ProxyThread::for_url(url, one_way)
        .await
        .map(Arc::new)
        .map_err(|e| format!("start proxy: {e}"))
}

/// Median of `n` `SELECT 1` round trips on one connection to `url`.
pub async fn probe_rtt(url: &str, n: usize) -> Res<f64> {
    let mut conn = AsyncPgConnection::establish(url)
        .await
        .map_err(|e| format!("probe connect: {e}"))?;
    conn.batch_execute("SELECT 1")
        .await
        .map_err(|e| e.to_string())?;
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        conn.batch_execute("SELECT 1")
            .await
            .map_err(|e| e.to_string())?;
        v.push(ms(t.elapsed()));
    }
    Ok(median(&v))
}
