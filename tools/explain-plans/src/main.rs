//! Shows the query plan of every statement the provider runs, on a seeded
//! schema, and checks that the hot path never scans a big table.
//!
//! ```text
//! cargo run --release -p explain-plans [-- --instances N] [--plans] [--strict] [--keep]
//! ```
//!
//! 1. Creates a provider on a fresh schema and seeds it with INSERT ... SELECT
//!    ([`seed`]): N instances (default 100k, 10% with two executions), 10
//!    history events per execution (~1.1M rows at 100k), orchestrator
//!    messages (a third of them timers, some of locked or lock-expired
//!    instances), worker items (tagged, session-bound, locked, delayed),
//!    sessions and key-value rows; then ANALYZEs.
//! 2. Builds a second provider on that schema whose connections load
//!    `auto_explain` (through the URL's `options`, [`capture`]): every
//!    statement, including the ones nested in the PL/pgSQL procedures, logs
//!    its plan (JSON, with actual row counts and buffers) to the server log.
//! 3. Calls every `Provider` and `ProviderAdmin` method against the seeded
//!    data ([`calls`]), twice: once with PostgreSQL's default plan caching (a
//!    PL/pgSQL statement gets custom plans for its first five executions on a
//!    connection; the runtime's fetch is repeated to show what it settles on)
//!    and once with `plan_cache_mode=force_generic_plan`.
//! 4. Reads the server log lines written during each call and prints, per
//!    call and statement, the plan's top node, how each table was reached and
//!    how many rows were read ([`analysis`], [`report`]). Exits with status 1
//!    if a hot-path call or a per-instance read seq-scans a table that grows
//!    with the data (`--strict`: per-instance admin and maintenance calls
//!    too), 2 if it could not run or captured no plan. Whole-table admin
//!    calls are listed as "by design".
//!
//! Size: `--instances N` or `EXPLAIN_PLANS_INSTANCES` (at least 5000: below
//! that a seq scan is the planner's right choice and the check would judge
//! noise).
//!
//! Uses `DATABASE_URL` when set, otherwise the tests' throwaway cluster
//! (whose log it knows). For another server, set `EXPLAIN_PLANS_LOG` to a
//! readable copy of its log, or read the plans in the server log yourself.
//! Loading `auto_explain` per session needs a superuser.

mod analysis;
mod calls;
mod capture;
mod report;
mod seed;

use std::path::{Path, PathBuf};
use std::time::Instant;

use duroxide_diesel::PostgresProvider;
use duroxide_diesel_testkit::{db, pg};

use capture::{Pass, Recorder, check_auto_explain};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Fewer instances than this leave tables small enough that a seq scan is
/// the right plan.
const MIN_INSTANCES: i64 = 5_000;

pub struct Args {
    pub instances: i64,
    pub plans: bool,
    pub strict: bool,
    pub keep: bool,
}

fn parse_args() -> Result<Args, BoxError> {
    let instances = match std::env::var("EXPLAIN_PLANS_INSTANCES") {
        Ok(n) if !n.is_empty() => n
            .parse()
            .map_err(|e| format!("EXPLAIN_PLANS_INSTANCES={n:?}: {e}"))?,
        _ => 100_000,
    };
    let mut args = Args {
        instances,
        plans: false,
        strict: false,
        keep: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--instances" => {
                let n = it.next().ok_or("--instances needs a number")?;
                args.instances = n.parse()?;
            }
            "--plans" => args.plans = true,
            "--strict" => args.strict = true,
            "--keep" => args.keep = true,
            "-h" | "--help" => {
                println!(
                    "usage: explain-plans [--instances N] [--plans] [--strict] [--keep]\n\
                     --instances N  seeded instances (default 100000 or EXPLAIN_PLANS_INSTANCES, >= 5000)\n\
                     --plans        print every statement's plan tree\n\
                     --strict       also fail on seq scans in per-instance admin calls\n\
                     --keep         keep the seeded schema"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?} (see --help)").into()),
        }
    }
    if args.instances < MIN_INSTANCES {
        return Err(format!("at least {MIN_INSTANCES} instances, not {}", args.instances).into());
    }
    Ok(args)
}

#[tokio::main]
async fn main() {
    match run().await {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("explain-plans: {e}");
            std::process::exit(2);
        }
    }
}

async fn run() -> Result<i32, BoxError> {
    let args = parse_args()?;
    let started = Instant::now();
    let url = pg::database_url();
    let log = std::env::var_os("EXPLAIN_PLANS_LOG")
        .map(PathBuf::from)
        .or_else(pg::local_cluster_log);
    let schema = db::unique_schema("explain_plans");

    println!("schema {schema}: seeding {} instances ...", args.instances);
    let seeded = Instant::now();
    // The first provider applies the migrations.
    drop(
        PostgresProvider::builder(&url)
            .schema(&schema)
            .max_connections(1)
            .build()
            .await?,
    );
    let result = async {
        let counts = seed::seed(&url, &schema, args.instances).await?;
        println!(
            "seeded in {:.1} s: {counts}",
            seeded.elapsed().as_secs_f64()
        );
        exercise_and_report(&args, &url, &schema, log.as_deref()).await
    }
    .await;
    if args.keep {
        println!("kept schema {schema}");
    } else {
        db::drop_schema(&url, &schema).await?;
    }
    println!("total runtime {:.1} s", started.elapsed().as_secs_f64());
    result
}

async fn exercise_and_report(
    args: &Args,
    url: &str,
    schema: &str,
    log: Option<&Path>,
) -> Result<i32, BoxError> {
    let mut rec = Recorder::new(url, log).await?;
    for pass in [Pass::Custom, Pass::Generic] {
        let explain_url = pg::url_with_settings(url, &pass.options());
        check_auto_explain(&explain_url).await?;
        let provider = PostgresProvider::builder(&explain_url)
            .schema(schema)
            .max_connections(1)
            .long_polling(false)
            .application_name(rec.app_name.clone())
            .build()
            .await?;
        rec.pass = pass;
        let t = Instant::now();
        calls::exercise(&provider, &mut rec, args.instances, pass.index()).await?;
        println!(
            "pass {}: {} calls in {:.1} s",
            pass.label(),
            rec.records.iter().filter(|r| r.pass == pass).count(),
            t.elapsed().as_secs_f64()
        );
    }

    let Some(log) = log else {
        println!(
            "\nDATABASE_URL names a server whose log this program cannot read. The calls below \
             ran with auto_explain: their plans are in that server's log (LOG \"duration: ... \
             plan:\" entries, application_name {}); set EXPLAIN_PLANS_LOG=<path> to a readable \
             copy of the log to get the analysis.",
            rec.app_name
        );
        for r in &rec.records {
            println!("  [{}] {:<44} {}", r.pass.label(), r.op, r.outcome);
        }
        return Ok(0);
    };
    println!("plans read from {}", log.display());
    Ok(report::report(&rec.records, args))
}
