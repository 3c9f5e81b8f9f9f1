//! A PgBouncer in transaction pooling mode in front of the test server.
//!
//! `DUROXIDE_TEST_PGBOUNCER_URL` wins when set (a pooler the caller runs in
//! front of `DATABASE_URL`). Otherwise PgBouncer (Debian package
//! `pgbouncer`) is started from `/usr/sbin/pgbouncer` or `PATH` in front of
//! the throwaway cluster, once, under a file lock shared by every test
//! process, and left running for the next run. PgBouncer refuses to run as
//! root, so as root it runs as the `postgres` user.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// The pooler's port, relative to the throwaway cluster's: clear of the
/// benchmark cluster (+20) and the private clusters tests start (+7, +8).
const PORT_OFFSET: u16 = 30;

/// Server connections PgBouncer keeps per database and user: fewer than the
/// clients the tests open, so the tests' calls really do share server
/// connections.
pub const SERVER_POOL_SIZE: u32 = 10;

/// The URL of a PgBouncer in transaction pooling mode in front of
/// [`database_url`](crate::pg::database_url), starting it if needed.
///
/// Panics with instructions when PgBouncer is not installed.
pub fn transaction_pooler_url() -> String {
    if let Ok(url) = std::env::var("DUROXIDE_TEST_PGBOUNCER_URL")
        && !url.is_empty()
    {
        return url;
    }
    transaction_pooler_for(&crate::pg::database_url())
}

/// The URL of a PgBouncer in transaction pooling mode in front of the
/// server of `direct` (a `postgres://` URL; PgBouncer logs in to the server
/// as its user with its password and lets that user in without one), on
/// that server's port plus 30, starting it if needed.
pub fn transaction_pooler_for(direct: &str) -> String {
    pooler_for(direct, Mode::Transaction)
}

/// Like [`transaction_pooler_for`] in front of [`database_url`](crate::pg::database_url),
/// with `pool_mode = statement` (on the server's port plus 31): a mode that
/// refuses transactions, for tests of how a client reports it.
pub fn statement_pooler_url() -> String {
    pooler_for(&crate::pg::database_url(), Mode::Statement)
}

/// PgBouncer's `pool_mode`.
#[derive(Clone, Copy)]
enum Mode {
    Transaction,
    Statement,
}

fn pooler_for(direct: &str, mode: Mode) -> String {
    let (userinfo, host_port, rest) = crate::proxy::split_url(direct)
        .unwrap_or_else(|| panic!("cannot read host and port of {direct}"));
    let (server_host, server_port) = host_port
        .rsplit_once(':')
        .and_then(|(h, p)| {
            Some((
                h.trim_matches(['[', ']']).to_owned(),
                p.parse::<u16>().ok()?,
            ))
        })
        .unwrap_or_else(|| panic!("no port in {direct}"));
    let (port, mode) = match mode {
        Mode::Transaction => (server_port + PORT_OFFSET, "transaction"),
        Mode::Statement => (server_port + PORT_OFFSET + 1, "statement"),
    };
    // PgBouncer logs in to the server with the password of its auth file.
    let userinfo = userinfo
        .split_once("://")
        .map_or("", |(_, u)| u)
        .trim_end_matches('@');
    let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
    let user = if user.is_empty() { "postgres" } else { user };
    ensure_pgbouncer(port, mode, &server_host, server_port, user, password);
    let database = rest
        .split('?')
        .next()
        .filter(|p| p.len() > 1)
        .unwrap_or("/postgres");
    format!("postgres://{user}@127.0.0.1:{port}{database}")
}

fn binary() -> PathBuf {
    let debian = PathBuf::from("/usr/sbin/pgbouncer");
    if debian.exists() {
        return debian;
    }
    std::env::var_os("PATH")
        .and_then(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join("pgbouncer"))
                .find(|p| p.exists())
        })
        .unwrap_or_else(|| {
            panic!(
                "pgbouncer not found (looked at /usr/sbin/pgbouncer and PATH): install it \
                 (Debian: apt-get install pgbouncer), or run one in transaction mode in front \
                 of DATABASE_URL and set DUROXIDE_TEST_PGBOUNCER_URL"
            )
        })
}

fn accepts(port: u16) -> bool {
    TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    )
    .is_ok()
}

fn ensure_pgbouncer(
    port: u16,
    mode: &str,
    server_host: &str,
    server_port: u16,
    user: &str,
    password: &str,
) {
    let root = std::env::temp_dir().join(format!("duroxide-diesel-pgbouncer-{port}"));
    std::fs::create_dir_all(&root).expect("create pgbouncer directory");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(root.join("setup.lock"))
        .expect("open pgbouncer setup lock");
    crate::pg::lock_file(&lock);
    if accepts(port) {
        return;
    }
    let config = root.join("pgbouncer.ini");
    let log = root.join("pgbouncer.log");
    std::fs::write(
        root.join("userlist.txt"),
        format!("\"{user}\" \"{password}\"\n"),
    )
    .expect("write userlist");
    std::fs::write(
        &config,
        format!(
            "[databases]\n\
             * = host={server_host} port={server_port}\n\
             [pgbouncer]\n\
             listen_addr = 127.0.0.1\n\
             listen_port = {port}\n\
             unix_socket_dir =\n\
             auth_type = trust\n\
             auth_file = {userlist}\n\
             pool_mode = {mode}\n\
             default_pool_size = {SERVER_POOL_SIZE}\n\
             max_client_conn = 5000\n\
             ignore_startup_parameters = extra_float_digits\n\
             logfile = {log}\n\
             pidfile = {pid}\n",
            userlist = root.join("userlist.txt").display(),
            log = log.display(),
            pid = root.join("pgbouncer.pid").display(),
        ),
    )
    .expect("write pgbouncer.ini");
    let root_user = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    let mut cmd = if root_user {
        let _ = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&root)
            .status();
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(binary());
        c
    } else {
        Command::new(binary())
    };
    let out = cmd
        .arg("-d")
        .arg(&config)
        .output()
        .unwrap_or_else(|e| panic!("could not start pgbouncer: {e}"));
    assert!(
        out.status.success(),
        "pgbouncer failed to start: {}{}\nsee {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        log.display()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !accepts(port) {
        assert!(
            Instant::now() < deadline,
            "pgbouncer did not accept connections on port {port} within 10 s; see {}",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
