//! `duroxide-diesel`: the operator command for a duroxide-diesel schema
//! (cargo feature `cli`). Every command connects, does its work with the
//! library's public API and exits; nothing runs in the background.

mod commands;
mod text;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use duroxide_diesel::{DEFAULT_SCHEMA, Error, MigrationMode, PostgresProvider};

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  failure: database unreachable, statement failed, instance not found,
     request refused (e.g. deleting a running instance without --force)
  2  invalid command line
  3  the schema's migrations are not this build's (missing: run `migrate`;
     unknown: the schema was migrated by a newer version)";

/// Operate a duroxide-diesel store: migrate and verify its schema, inspect
/// queues and instances, prune and delete.
#[derive(Parser)]
#[command(name = "duroxide-diesel", version, after_help = EXIT_CODES)]
struct Cli {
    /// PostgreSQL URL or key/value string.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, global = true)]
    database_url: Option<String>,

    /// Schema holding the provider's tables.
    #[arg(long, env = "DUROXIDE_SCHEMA", default_value = DEFAULT_SCHEMA, global = true)]
    schema: String,

    /// Time limit of each database call, in seconds (bulk deletes and
    /// prunes of one batch included).
    #[arg(long, default_value_t = 300, global = true)]
    timeout: u64,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Apply pending migrations (creating the schema if absent) and print
    /// the versions applied.
    Migrate,
    /// Check that the schema has exactly this build's migrations; exit 3
    /// with what is missing or unknown otherwise. Sends no DDL.
    Verify,
    /// Queue depths (ready now, scheduled later, locked), the age of the
    /// oldest ready message, instance counts and the database's connections.
    Status,
    /// List instances, newest first.
    Instances(commands::InstancesArgs),
    /// An instance's status, output, custom status, key-value entries and
    /// history (one line per event).
    Show(commands::ShowArgs),
    /// Delete old executions (and their history) of instances; the current
    /// execution is always kept.
    Prune(commands::PruneArgs),
    /// Delete instances with everything stored for them: given ids (each
    /// with its sub-orchestrations), or every terminal root instance that
    /// completed before a time.
    Delete(commands::DeleteArgs),
}

/// Options shared by the commands that may change data.
#[derive(Args, Clone, Copy)]
struct Batching {
    /// Instances per call; each batch is one transaction and prints its
    /// counts to stderr.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    batch_size: u32,

    /// Report what would be deleted without deleting: each batch runs in a
    /// transaction that is rolled back (exact counts, same locks while it runs).
    #[arg(long)]
    dry_run: bool,
}

/// A command's failure: its message for stderr and the exit code.
struct Failure {
    message: String,
    code: u8,
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        let code = if matches!(e, Error::SchemaMismatch { .. }) {
            3
        } else {
            1
        };
        Failure {
            message: e.to_string(),
            code,
        }
    }
}

impl From<duroxide::providers::ProviderError> for Failure {
    fn from(e: duroxide::providers::ProviderError) -> Self {
        Failure {
            message: e.to_string(),
            code: 1,
        }
    }
}

impl From<String> for Failure {
    fn from(message: String) -> Self {
        Failure { message, code: 1 }
    }
}

/// Connection settings for [`Cli::connect`].
struct Target {
    url: String,
    schema: String,
    timeout: Duration,
}

impl Target {
    /// A provider for the schema; only `migrate` applies migrations, every
    /// other command refuses a schema that is not exactly this build's.
    async fn connect(&self, mode: MigrationMode) -> Result<PostgresProvider, Error> {
        let mut builder = PostgresProvider::builder(&self.url)
            .schema(&self.schema)
            .max_connections(2)
            .long_polling(false)
            .admin_call_timeout(self.timeout)
            .migrations(mode);
        if !self.url.contains("application_name") {
            builder = builder.application_name("duroxide-diesel-cli");
        }
        builder.build().await
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let Some(url) = cli.database_url.clone() else {
        eprintln!("error: no database: pass --database-url or set DATABASE_URL");
        return ExitCode::from(2);
    };
    let target = Target {
        url,
        schema: cli.schema.clone(),
        timeout: Duration::from_secs(cli.timeout.max(1)),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: could not start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command, &target)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("error: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}

async fn run(command: Command, target: &Target) -> Result<(), Failure> {
    match command {
        Command::Migrate => commands::migrate(target).await,
        Command::Verify => commands::verify(target).await,
        Command::Status => commands::status(target).await,
        Command::Instances(args) => commands::instances(target, args).await,
        Command::Show(args) => commands::show(target, args).await,
        Command::Prune(args) => commands::prune(target, args).await,
        Command::Delete(args) => commands::delete(target, args).await,
    }
}
