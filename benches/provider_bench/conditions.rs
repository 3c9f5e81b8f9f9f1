//! The machine note printed before any table: the machine, and the server
//! conditions the numbers depend on (durability settings, TLS), read from
//! the server rather than assumed.

use diesel::QueryableByName;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use duroxide::providers::Provider;

use crate::Res;
use crate::config::Config;
use crate::setup::new_schema;

#[derive(QueryableByName)]
struct Settings {
    #[diesel(sql_type = diesel::sql_types::Text)]
    version: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    fsync: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    synchronous_commit: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    full_page_writes: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    ssl: String,
}

#[derive(QueryableByName)]
struct Tls {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    connections: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    encrypted: i64,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    version: Option<String>,
}

pub async fn machine_note(url: &str, cfg: &Config) -> Res<()> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let processors = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_owned())
        .unwrap_or_else(|| "unknown".to_owned());
    let parallelism = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mut conn = AsyncPgConnection::establish(url)
        .await
        .map_err(|e| format!("connect to {url}: {e}"))?;
    // current_setting() reports what SHOW reports.
    let s: Settings = diesel::sql_query(
        "SELECT current_setting('server_version') AS version, \
         current_setting('fsync') AS fsync, \
         current_setting('synchronous_commit') AS synchronous_commit, \
         current_setting('full_page_writes') AS full_page_writes, \
         current_setting('ssl') AS ssl",
    )
    .load::<Settings>(&mut conn)
    .await
    .map_err(|e| format!("server settings: {e}"))?
    .pop()
    .ok_or("server settings: no row")?;

    // Whether the provider's own connections are encrypted: the sections
    // build providers on the same URL, so one built here negotiates TLS as
    // they do (sslmode from the URL, prefer by default).
    let app = format!("dxbench-conditions-{}", std::process::id());
    let schema = new_schema("conditions");
    let provider = duroxide_diesel::PostgresProvider::builder(url)
        .schema(&schema)
        .application_name(&app)
        .build()
        .await
        .map_err(|e| format!("build PostgresProvider ({schema}): {e}"))?;
    // One call leaves a pooled connection idle for the query below.
    provider
        .read("dxbench-conditions")
        .await
        .map_err(|e| format!("read: {e}"))?;
    let tls: Tls = diesel::sql_query(format!(
        "SELECT count(*) AS connections, count(*) FILTER (WHERE s.ssl) AS encrypted, \
         max(s.version) AS version \
         FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
         WHERE a.application_name = '{app}'"
    ))
    .load::<Tls>(&mut conn)
    .await
    .map_err(|e| format!("TLS state: {e}"))?
    .pop()
    .ok_or("TLS state: no row")?;
    drop(provider);
    let tls_note = match (tls.connections, tls.encrypted) {
        (0, _) => format!(
            "TLS unknown (no provider connection seen; server ssl={})",
            s.ssl
        ),
        (n, e) if n == e => format!(
            "TLS on ({} provider connections, {})",
            n,
            tls.version.as_deref().unwrap_or("?")
        ),
        (_, 0) => format!("TLS off (server ssl={})", s.ssl),
        (n, e) => format!("TLS mixed ({e} of {n} provider connections encrypted)"),
    };
    let server = if std::env::var("DATABASE_URL").is_ok_and(|u| !u.is_empty()) {
        "the server at DATABASE_URL"
    } else {
        "the benchmark's throwaway cluster on the same machine"
    };

    println!("== duroxide-diesel provider benchmark ==");
    println!(
        "machine: {processors} cores in /proc/cpuinfo (available_parallelism {parallelism}), CPU \"{model}\""
    );
    println!(
        "PostgreSQL {} ({server}): fsync={}, synchronous_commit={}, full_page_writes={}; {tls_note}; \
         duroxide 0.1.32; release build",
        s.version, s.fsync, s.synchronous_commit, s.full_page_writes
    );
    if [&s.fsync, &s.synchronous_commit, &s.full_page_writes]
        .iter()
        .any(|v| v.as_str() != "on")
    {
        println!(
            "WARNING: the server does not flush every commit durably: absolute numbers are \
             optimistic compared with a production server."
        );
    }
    println!(
        "NOTE: a shared, noisy 2-core box: benchmark, runtime, proxy and server share 2 cores. \
         Numbers are medians of {} interleaved run(s){}.",
        cfg.runs,
        if cfg.quick {
            " (DXBENCH_QUICK: smoke test, not a measurement)"
        } else {
            ""
        }
    );
    println!();
    Ok(())
}
