//! One function per subcommand: results on stdout, progress on stderr.

use clap::Args;
use diesel::migration::MigrationSource;
use duroxide::providers::{InstanceFilter, Provider, ProviderAdmin, PruneOptions};
use duroxide_diesel::{Error, InstanceQuery, MIGRATIONS, MigrationMode, PostgresProvider};
use serde_json::json;

use crate::text::{self, duration, parse_time, table, time};
use crate::{Batching, Failure, Target};

/// The embedded migrations as `(version, full name)`, oldest first.
fn migration_names() -> Result<Vec<(String, String)>, Failure> {
    let migrations = MigrationSource::<diesel::pg::Pg>::migrations(&MIGRATIONS)
        .map_err(|e| format!("embedded migrations are unreadable: {e}"))?;
    let mut names: Vec<(String, String)> = migrations
        .iter()
        .map(|m| (m.name().version().to_string(), m.name().to_string()))
        .collect();
    names.sort();
    Ok(names)
}

pub async fn migrate(t: &Target) -> Result<(), Failure> {
    // Verify first: it sends no DDL and says what is pending.
    let pending = match t.connect(MigrationMode::Verify).await {
        Ok(_) => Vec::new(),
        Err(Error::SchemaMismatch {
            missing, unknown, ..
        }) if unknown.is_empty() => missing,
        Err(e) => return Err(e.into()),
    };
    if !pending.is_empty() {
        t.connect(MigrationMode::Apply).await?;
    }
    let names = migration_names()?;
    for version in &pending {
        let name = names
            .iter()
            .find(|(v, _)| v == version)
            .map_or(version.as_str(), |(_, n)| n.as_str());
        println!("applied {name}");
    }
    println!(
        "schema {}: {} migrations, up to date ({} applied now)",
        t.schema,
        names.len(),
        pending.len()
    );
    Ok(())
}

pub async fn verify(t: &Target) -> Result<(), Failure> {
    t.connect(MigrationMode::Verify).await?;
    let names = migration_names()?;
    let latest = names.last().map_or("none", |(_, n)| n.as_str());
    println!(
        "schema {}: {} migrations, up to date (latest {latest})",
        t.schema,
        names.len()
    );
    Ok(())
}

pub async fn status(t: &Target) -> Result<(), Failure> {
    let p = t.connect(MigrationMode::Verify).await?;
    let queues = p.queue_status().await?;
    let metrics = p.get_system_metrics().await?;
    let connections = p.database_connections().await?;

    println!("schema {}\n", t.schema);
    let rows: Vec<Vec<String>> = [
        ("orchestrator", &queues.orchestrator),
        ("worker", &queues.worker),
    ]
    .into_iter()
    .map(|(name, q)| {
        vec![
            name.to_owned(),
            q.ready.to_string(),
            q.scheduled.to_string(),
            q.locked.to_string(),
            q.oldest_ready_age.map_or("-".to_owned(), duration),
        ]
    })
    .collect();
    print!(
        "{}",
        table(
            &["queue", "ready", "scheduled", "locked", "oldest ready"],
            &rows,
            &[1, 2, 3, 4],
        )
    );
    println!(
        "\ninstances: {} total, {} running, {} completed, {} failed ({} executions, {} history events)",
        metrics.total_instances,
        metrics.running_instances,
        metrics.completed_instances,
        metrics.failed_instances,
        metrics.total_executions,
        metrics.total_events,
    );
    let total: u64 = connections.iter().map(|c| c.count).sum();
    println!(
        "\nconnections to this database: {total} (pg_stat_activity: every application and schema, this command's own included)"
    );
    let rows: Vec<Vec<String>> = connections
        .iter()
        .map(|c| {
            vec![
                if c.application_name.is_empty() {
                    "(none)".to_owned()
                } else {
                    c.application_name.clone()
                },
                c.state.clone().unwrap_or_else(|| "(hidden)".to_owned()),
                c.count.to_string(),
            ]
        })
        .collect();
    print!("{}", table(&["application", "state", "count"], &rows, &[2]));
    Ok(())
}

#[derive(Args)]
pub struct InstancesArgs {
    /// Only this status of the current execution (Running, Completed,
    /// Failed); repeat for several.
    #[arg(long)]
    status: Vec<String>,
    /// Only this orchestration name.
    #[arg(long, conflicts_with = "name_prefix")]
    name: Option<String>,
    /// Only orchestration names starting with this.
    #[arg(long)]
    name_prefix: Option<String>,
    /// At most this many instances.
    #[arg(long, default_value_t = 100)]
    limit: u32,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    json: bool,
}

pub async fn instances(t: &Target, args: InstancesArgs) -> Result<(), Failure> {
    let p = t.connect(MigrationMode::Verify).await?;
    let mut query = InstanceQuery::new().limit(args.limit);
    for status in args.status {
        query = query.status(status);
    }
    if let Some(name) = args.name {
        query = query.name(name);
    }
    if let Some(prefix) = args.name_prefix {
        query = query.name_prefix(prefix);
    }
    let found = p.query_instances(&query).await?;
    if args.json {
        for i in &found {
            let line = json!({
                "instance_id": i.instance_id,
                "orchestration_name": i.orchestration_name,
                "orchestration_version": i.orchestration_version,
                "status": i.status,
                "current_execution_id": i.current_execution_id,
                "parent_instance_id": i.parent_instance_id,
                "created_at_ms": i.created_at,
                "completed_at_ms": i.completed_at,
            });
            println!("{line}");
        }
        return Ok(());
    }
    let rows: Vec<Vec<String>> = found
        .iter()
        .map(|i| {
            vec![
                i.instance_id.clone(),
                i.orchestration_name.clone(),
                i.orchestration_version.clone().unwrap_or_default(),
                i.status.clone().unwrap_or_else(|| "Pending".to_owned()),
                i.current_execution_id.to_string(),
                time(i.created_at),
                i.completed_at.map_or_else(|| "-".to_owned(), time),
                i.parent_instance_id.clone().unwrap_or_default(),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &[
                "instance",
                "orchestration",
                "version",
                "status",
                "execution",
                "created",
                "completed",
                "parent"
            ],
            &rows,
            &[4],
        )
    );
    eprintln!("{} instance(s)", found.len());
    Ok(())
}

#[derive(Args)]
pub struct ShowArgs {
    /// The instance id.
    instance: String,
    /// History of this execution instead of the current one.
    #[arg(long)]
    execution: Option<u64>,
}

pub async fn show(t: &Target, args: ShowArgs) -> Result<(), Failure> {
    let p = t.connect(MigrationMode::Verify).await?;
    let id = args.instance.as_str();
    let info = p.get_instance_info(id).await?;
    let executions = p.list_executions(id).await?;
    let execution = args.execution.unwrap_or(info.current_execution_id);
    let history = p.read_history_with_execution_id(id, execution).await?;
    let custom_status = Provider::get_custom_status(&p, id, 0).await?;
    let mut kv: Vec<(String, String)> = p.get_kv_all_values(id).await?.into_iter().collect();
    kv.sort();
    let children = p.list_children(id).await?;

    println!("instance       {}", info.instance_id);
    println!(
        "orchestration  {} {}",
        info.orchestration_name, info.orchestration_version
    );
    println!("status         {}", info.status);
    println!(
        "execution      {} (stored: {})",
        info.current_execution_id,
        executions
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("created        {}", time(info.created_at));
    println!("updated        {}", time(info.updated_at));
    if let Some(parent) = &info.parent_instance_id {
        println!("parent         {parent}");
    }
    if !children.is_empty() {
        println!("children       {}", children.join(", "));
    }
    println!("output         {}", info.output.as_deref().unwrap_or("-"));
    let custom = custom_status.and_then(|(status, _)| status);
    println!("custom status  {}", custom.as_deref().unwrap_or("-"));
    println!("\nkey-value ({})", kv.len());
    for (key, value) in &kv {
        println!("  {key} = {value}");
    }
    println!(
        "\nhistory of execution {execution} ({} events)",
        history.len()
    );
    for event in &history {
        // EventKind serializes with its variant name as "type".
        let kind = serde_json::to_value(&event.kind).unwrap_or_default();
        let kind_name = kind["type"].as_str().unwrap_or("?");
        let mut line = format!(
            "  {:>4}  {}  {kind_name}",
            event.event_id,
            time(event.timestamp_ms)
        );
        if let Some(name) = kind["name"].as_str() {
            line.push_str(&format!(" {name}"));
        }
        if let Some(source) = event.source_event_id {
            line.push_str(&format!(" (for {source})"));
        }
        println!("{line}");
    }
    Ok(())
}

#[derive(Args)]
pub struct PruneArgs {
    /// Keep the newest N executions of each instance (the current one is
    /// always kept; 1 keeps only it).
    #[arg(long, required_unless_present = "completed_before")]
    keep_last: Option<u32>,
    /// Only delete executions completed before this time: an age (7d, 12h,
    /// 30m), a UTC date (2026-12-01, 2026-12-01T08:00:00Z) or Unix ms.
    #[arg(long, value_parser = parse_time)]
    completed_before: Option<u64>,
    /// Only these instances (repeat for several); default all.
    #[arg(long = "instance")]
    instances: Vec<String>,
    #[command(flatten)]
    batching: Batching,
}

pub async fn prune(t: &Target, args: PruneArgs) -> Result<(), Failure> {
    let p = t.connect(MigrationMode::Verify).await?;
    let ids = if args.instances.is_empty() {
        p.list_instances().await?
    } else {
        args.instances
    };
    let options = PruneOptions {
        keep_last: args.keep_last,
        completed_before: args.completed_before,
    };
    let dry = args.batching.dry_run;
    let batches = ids.len().div_ceil(args.batching.batch_size as usize);
    let (mut processed, mut executions, mut events) = (0u64, 0u64, 0u64);
    for (n, chunk) in ids.chunks(args.batching.batch_size as usize).enumerate() {
        let filter = InstanceFilter {
            instance_ids: Some(chunk.to_vec()),
            completed_before: None,
            limit: Some(chunk.len() as u32),
        };
        let result = if dry {
            p.preview_prune_executions_bulk(&filter, &options).await?
        } else {
            p.prune_executions_bulk(filter, options.clone()).await?
        };
        processed += result.instances_processed;
        executions += result.executions_deleted;
        events += result.events_deleted;
        eprintln!(
            "batch {}/{batches}: {} instances, {} executions and {} history events {}",
            n + 1,
            result.instances_processed,
            result.executions_deleted,
            result.events_deleted,
            if dry { "would be deleted" } else { "deleted" },
        );
    }
    println!(
        "{}{executions} executions ({events} history events) of {processed} instances",
        if dry {
            "dry run, nothing deleted: would prune "
        } else {
            "pruned "
        }
    );
    Ok(())
}

#[derive(Args)]
pub struct DeleteArgs {
    /// Instances to delete, each with its sub-orchestrations (a
    /// sub-orchestration itself is refused: delete its root).
    #[arg(
        required_unless_present = "completed_before",
        conflicts_with = "completed_before"
    )]
    instances: Vec<String>,
    /// Delete every Completed or Failed root instance (with its
    /// sub-orchestrations) whose current execution completed before this
    /// time: an age (30d, 12h), a UTC date or Unix ms. Trees with a running
    /// member are skipped.
    #[arg(long, value_parser = parse_time)]
    completed_before: Option<u64>,
    /// Delete given instances even if running (their workers fail their
    /// next lock renewal).
    #[arg(long, conflicts_with = "completed_before")]
    force: bool,
    /// With --completed-before: at most this many root instances.
    #[arg(long)]
    limit: Option<u32>,
    #[command(flatten)]
    batching: Batching,
}

#[derive(Default)]
struct Deleted {
    instances: u64,
    executions: u64,
    events: u64,
    messages: u64,
}

impl Deleted {
    fn add(&mut self, r: &duroxide::providers::DeleteInstanceResult) {
        self.instances += r.instances_deleted;
        self.executions += r.executions_deleted;
        self.events += r.events_deleted;
        self.messages += r.queue_messages_deleted;
    }

    fn describe(&self) -> String {
        format!(
            "{} instances, {} executions, {} history events, {} queued messages",
            self.instances, self.executions, self.events, self.messages
        )
    }
}

pub async fn delete(t: &Target, args: DeleteArgs) -> Result<(), Failure> {
    let p = t.connect(MigrationMode::Verify).await?;
    let dry = args.batching.dry_run;
    let verb = if dry { "would delete" } else { "deleted" };
    let mut total = Deleted::default();
    if let Some(before) = args.completed_before {
        total = delete_completed(&p, before, &args, verb).await?;
    } else {
        let mut refused = 0;
        for id in &args.instances {
            let result = if dry {
                p.preview_delete_instance(id, args.force)
                    .await
                    .map_err(Failure::from)
            } else {
                p.delete_instance(id, args.force)
                    .await
                    .map_err(Failure::from)
            };
            match result {
                Ok(r) => {
                    let mut one = Deleted::default();
                    one.add(&r);
                    eprintln!("{id}: {verb} {}", one.describe());
                    total.add(&r);
                }
                Err(f) => {
                    eprintln!("{id}: {}", f.message);
                    refused += 1;
                }
            }
        }
        if refused > 0 {
            println!("{verb} {}", total.describe());
            return Err(format!(
                "{refused} of {} instance(s) not deleted",
                args.instances.len()
            )
            .into());
        }
    }
    println!(
        "{}{verb} {}",
        if dry {
            "dry run, nothing deleted: "
        } else {
            ""
        },
        total.describe()
    );
    Ok(())
}

/// Terminal root instances completed before `before`, in batches of
/// explicit ids so that each batch is one bounded call and a dry run
/// previews the same batches a real run deletes.
async fn delete_completed(
    p: &PostgresProvider,
    before: u64,
    args: &DeleteArgs,
    verb: &str,
) -> Result<Deleted, Failure> {
    let mut query = InstanceQuery::new()
        .status("Completed")
        .status("Failed")
        .roots_only()
        .completed_before(before);
    if let Some(limit) = args.limit {
        query = query.limit(limit);
    }
    let roots = p.query_instances(&query).await?;
    if args.batching.dry_run {
        for r in &roots {
            println!(
                "{verb} {} ({}, {}, completed {})",
                r.instance_id,
                r.orchestration_name,
                r.status.as_deref().unwrap_or("-"),
                r.completed_at.map_or_else(|| "-".to_owned(), text::time)
            );
        }
    }
    let size = args.batching.batch_size as usize;
    let batches = roots.len().div_ceil(size);
    let mut total = Deleted::default();
    for (n, chunk) in roots.chunks(size).enumerate() {
        let filter = InstanceFilter {
            instance_ids: Some(chunk.iter().map(|r| r.instance_id.clone()).collect()),
            completed_before: Some(before),
            limit: Some(chunk.len() as u32),
        };
        let result = if args.batching.dry_run {
            p.preview_delete_instance_bulk(&filter).await?
        } else {
            p.delete_instance_bulk(filter).await?
        };
        let mut batch = Deleted::default();
        batch.add(&result);
        eprintln!("batch {}/{batches}: {verb} {}", n + 1, batch.describe());
        total.add(&result);
    }
    Ok(total)
}
