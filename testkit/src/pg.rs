//! Locates a PostgreSQL server for tests and examples.
//!
//! `DATABASE_URL` wins when set. Otherwise a throwaway cluster is created and
//! started from the PostgreSQL binaries installed on this machine (shared by
//! every test process, started once under a file lock, left running for the
//! next run). PostgreSQL refuses to run as root, so as root the cluster runs
//! as the `postgres` user.
//!
//! Test clusters run with [`Durability::Fast`]; the benchmark's cluster
//! ([`benchmark_database_url`]) runs on the server's durable defaults, on a
//! port of its own.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Port of the throwaway cluster (override with DUROXIDE_TEST_PG_PORT).
/// Below Linux's ephemeral range (32768-60999), like every port derived
/// from it: a listening port inside that range can be taken at any moment
/// by an outgoing connection's local port, and the cluster then fails to
/// start.
const DEFAULT_PORT: u16 = 25433;

/// The benchmark cluster's port, relative to the test cluster's (override
/// with DUROXIDE_BENCH_PG_PORT). Clear of the offsets of [`private_port`]
/// that tests use.
const BENCH_PORT_OFFSET: u16 = 20;

/// What a throwaway cluster trades for speed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// `fsync`, `synchronous_commit` and `full_page_writes` off: tests never
    /// need a crash-safe disk, and commits that skip the flush keep the
    /// suite fast on a shared machine.
    Fast,
    /// The server's defaults (all three on): a benchmark measures what a
    /// production server does, flush per commit included.
    Durable,
}

impl Durability {
    /// Server settings passed on the command line at start.
    fn settings(self) -> &'static str {
        match self {
            Durability::Fast => "-c fsync=off -c synchronous_commit=off -c full_page_writes=off",
            Durability::Durable => "",
        }
    }
}

fn test_port() -> u16 {
    std::env::var("DUROXIDE_TEST_PG_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(DEFAULT_PORT)
}

/// A URL of a server to test against, starting the throwaway cluster if needed.
pub fn database_url() -> String {
    if let Ok(url) = std::env::var("DATABASE_URL")
        && !url.is_empty()
    {
        return url;
    }
    let port = test_port();
    ensure_local_cluster(port, Durability::Fast);
    format!("postgres://postgres@127.0.0.1:{port}/postgres")
}

/// A URL of a server to benchmark against: `DATABASE_URL` when set (that
/// server's own settings), otherwise a throwaway cluster of its own with
/// [`Durability::Durable`] on `DUROXIDE_BENCH_PG_PORT` (default: the test
/// cluster's port plus 20), started if needed.
pub fn benchmark_database_url() -> String {
    if let Ok(url) = std::env::var("DATABASE_URL")
        && !url.is_empty()
    {
        return url;
    }
    let port = std::env::var("DUROXIDE_BENCH_PG_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| test_port() + BENCH_PORT_OFFSET);
    ensure_local_cluster(port, Durability::Durable);
    format!("postgres://postgres@127.0.0.1:{port}/postgres")
}

/// `url` (a `postgres://` URL) logging in as `user` with `password`.
pub fn url_as_user(url: &str, user: &str, password: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("postgres", url));
    let host = rest.split_once('@').map_or(rest, |(_, host)| host);
    format!("{scheme}://{user}:{password}@{host}")
}

/// `url` with `-c name=value` server settings (e.g.
/// `plan_cache_mode=force_generic_plan`) in its `options` parameter, for a
/// URL or a key-value connection string.
pub fn url_with_settings(url: &str, settings: &[&str]) -> String {
    let value = settings
        .iter()
        .map(|s| format!("-c {s}"))
        .collect::<Vec<_>>()
        .join(" ");
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let encoded = value
            .replace('%', "%25")
            .replace(' ', "%20")
            .replace('=', "%3D")
            .replace('&', "%26");
        let sep = if url.contains('?') { '&' } else { '?' };
        format!("{url}{sep}options={encoded}")
    } else {
        format!("{url} options='{value}'")
    }
}

/// The server log of the throwaway cluster when [`database_url`] uses it
/// (`DATABASE_URL` unset); `None` when `DATABASE_URL` names another server.
pub fn local_cluster_log() -> Option<PathBuf> {
    if std::env::var("DATABASE_URL").is_ok_and(|url| !url.is_empty()) {
        return None;
    }
    let port = test_port();
    Some(
        std::env::temp_dir()
            .join(format!("duroxide-diesel-pg-{port}"))
            .join("postgres.log"),
    )
}

fn bindir() -> PathBuf {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").exists() {
            return dir;
        }
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .collect()
        })
        .unwrap_or_default();
    versions.retain(|p| p.join("initdb").exists());
    versions.sort();
    versions.pop().unwrap_or_else(|| {
        panic!(
            "no PostgreSQL binaries found (looked at pg_config and /usr/lib/postgresql/*/bin): \
             install PostgreSQL, run `docker compose up -d` and set DATABASE_URL, or set DATABASE_URL"
        )
    })
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Runs a PostgreSQL binary, as `postgres` when we are root.
fn run_pg(bin: &Path, args: &[&str]) -> std::process::Output {
    let mut cmd = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin);
        c
    } else {
        Command::new(bin)
    };
    cmd.args(args)
        .output()
        .unwrap_or_else(|e| panic!("could not run {}: {e}", bin.display()))
}

fn ensure_local_cluster(port: u16, durability: Durability) {
    let root = std::env::temp_dir().join(format!("duroxide-diesel-pg-{port}"));
    let data = root.join("data");
    std::fs::create_dir_all(&root).expect("create test cluster directory");
    if is_root() {
        let _ = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&root)
            .status();
    }
    // Serialize setup across the parallel test processes.
    let lock_path = root.join("setup.lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .expect("open setup lock");
    lock_file(&lock);

    let bin = bindir();
    let data_s = data.to_string_lossy().to_string();
    if !data.join("PG_VERSION").exists() {
        let out = run_pg(
            &bin.join("initdb"),
            &[
                "-D",
                &data_s,
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let opts = format!(
        "-p {port} -k {} -c listen_addresses=127.0.0.1 -c max_connections=300 {}",
        root.to_string_lossy(),
        durability.settings()
    );
    let mut running = run_pg(&bin.join("pg_ctl"), &["-D", &data_s, "status"])
        .status
        .success();
    // A cluster left running by a run that wanted other settings (the
    // server records its command line in postmaster.opts) is restarted with
    // these, so a benchmark never measures a non-durable server by accident.
    let started_fast = std::fs::read_to_string(data.join("postmaster.opts"))
        .is_ok_and(|o| o.contains("fsync=off"));
    if running && started_fast != (durability == Durability::Fast) {
        let _ = run_pg(
            &bin.join("pg_ctl"),
            &["-D", &data_s, "-m", "fast", "-w", "stop"],
        );
        running = false;
    }
    if ensure_tls(&root, &data) && running {
        // TLS settings are reloadable: a cluster started before TLS was set
        // up picks them up without a restart.
        let _ = run_pg(&bin.join("pg_ctl"), &["-D", &data_s, "reload"]);
    }
    if !running {
        let log = root.join("postgres.log").to_string_lossy().to_string();
        // A port can be briefly taken by another socket (an outgoing
        // connection's local port): try a few times before giving up.
        let mut attempt = 1;
        let out = loop {
            let out = run_pg(
                &bin.join("pg_ctl"),
                &["-D", &data_s, "-l", &log, "-o", &opts, "-w", "start"],
            );
            if out.status.success() || attempt == 4 {
                break out;
            }
            attempt += 1;
            std::thread::sleep(std::time::Duration::from_secs(1));
        };
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}{}\nsee {log}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    drop(lock);
}

/// The CA certificate that signed the throwaway cluster's TLS certificate;
/// `None` with `DATABASE_URL` or without `openssl`.
pub fn local_cluster_tls_cert() -> Option<PathBuf> {
    let log = local_cluster_log()?;
    let ca = log.parent()?.join("ca.crt");
    ca.exists().then_some(ca)
}

/// Creates a test CA and a server certificate for 127.0.0.1/localhost signed
/// by it, and turns TLS on in the cluster's configuration, once. Returns
/// true if it changed anything. Without `openssl` the cluster runs without TLS.
fn ensure_tls(root: &Path, data: &Path) -> bool {
    const MARKER: &str = "# duroxide-diesel tls (test CA)";
    let conf = data.join("postgresql.conf");
    let configured = std::fs::read_to_string(&conf)
        .map(|c| c.contains(MARKER))
        .unwrap_or(false);
    if configured && root.join("ca.crt").exists() {
        return false;
    }
    let ext = root.join("server.ext");
    if std::fs::write(&ext, "subjectAltName=DNS:localhost,IP:127.0.0.1\n").is_err() {
        return false;
    }
    let openssl = |args: &[&str]| {
        let mut cmd = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--", "openssl"]);
            c
        } else {
            Command::new("openssl")
        };
        cmd.current_dir(root)
            .args(args)
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    let made = openssl(&[
        "req",
        "-x509",
        "-new",
        "-nodes",
        "-newkey",
        "rsa:2048",
        "-days",
        "3650",
        "-subj",
        "/CN=duroxide-diesel test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
    ]) && openssl(&[
        "req",
        "-new",
        "-nodes",
        "-newkey",
        "rsa:2048",
        "-subj",
        "/CN=localhost",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]) && openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "3650",
        "-extfile",
        "server.ext",
        "-out",
        "server.crt",
    ]);
    if !made {
        return false;
    }
    let settings = format!(
        "\n{MARKER}\nssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\n",
        root.join("server.crt").display(),
        root.join("server.key").display()
    );
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&conf)
        .expect("open postgresql.conf");
    std::io::Write::write_all(&mut f, settings.as_bytes()).expect("write postgresql.conf");
    true
}

/// Blocks until this process holds an exclusive lock on `file` (released
/// when the file is closed).
pub(crate) fn lock_file(file: &std::fs::File) {
    use std::os::fd::AsRawFd;
    unsafe extern "C" {
        fn flock(fd: i32, operation: i32) -> i32;
    }
    const LOCK_EX: i32 = 2;
    // SAFETY: flock on a valid open descriptor; released when the file is closed.
    let rc = unsafe { flock(file.as_raw_fd(), LOCK_EX) };
    assert_eq!(rc, 0, "flock failed");
}

/// A throwaway cluster of its own on `port` (started if needed), for tests
/// that restart or stop the server; its URL. Needs local PostgreSQL
/// binaries whatever `DATABASE_URL` says.
pub fn private_cluster(port: u16) -> String {
    private_cluster_with(port, Durability::Fast)
}

/// As [`private_cluster`], with `durability`: `Durable` for tests that
/// crash the server and count on what was committed synchronously.
pub fn private_cluster_with(port: u16, durability: Durability) -> String {
    ensure_local_cluster(port, durability);
    format!("postgres://postgres@127.0.0.1:{port}/postgres")
}

/// The port for a private cluster: the shared cluster's port plus `offset`.
pub fn private_port(offset: u16) -> u16 {
    test_port() + offset
}

/// Restarts a private cluster with a fast shutdown (every connection is
/// terminated), returning once it accepts connections again.
pub fn restart_private_cluster(port: u16) {
    restart_private_cluster_with(port, "fast");
}

/// Crashes a private cluster (an immediate shutdown: no checkpoint, and
/// WAL not yet written, such as that of asynchronous commits, is lost) and
/// starts it again, returning once crash recovery is done and it accepts
/// connections.
pub fn crash_private_cluster(port: u16) {
    restart_private_cluster_with(port, "immediate");
}

/// `pg_ctl restart` with shutdown mode `mode`; the server keeps the
/// options it was started with.
fn restart_private_cluster_with(port: u16, mode: &str) {
    let root = std::env::temp_dir().join(format!("duroxide-diesel-pg-{port}"));
    let data = root.join("data").to_string_lossy().to_string();
    // With a log file the new server does not hold on to our output pipes.
    let log = root.join("postgres.log").to_string_lossy().to_string();
    let out = run_pg(
        &bindir().join("pg_ctl"),
        &["-D", &data, "-l", &log, "-m", mode, "-w", "restart"],
    );
    assert!(
        out.status.success(),
        "pg_ctl restart failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
