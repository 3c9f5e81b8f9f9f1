//! A loopback TCP proxy for tests and benchmarks: it counts network round
//! trips and can add latency, so a test can see what a hot-path call costs
//! over a real network.
//!
//! * **Round trips.** Per connection, a client-to-server burst that starts
//!   after the server has sent anything since the previous client burst counts
//!   as one round trip (the connection's first burst counts too). Bursts are
//!   told apart by direction alternation, not by packets: a request the client
//!   writes in several TCP segments (Bind, Execute, Sync...) is one round trip
//!   as long as the server does not answer in between.
//! * **Latency.** Each direction delays every chunk by a fixed one-way delay:
//!   a chunk is stamped when it is read and written `delay` later, in order.
//!   The two directions run independently, so a 25 ms delay is a ~50 ms RTT.
//! * **Scope.** The proxy only ever connects to the single loopback address it
//!   was started with, holds a bounded number of connections and bounded
//!   buffers, and stops (listener and every proxied connection) when dropped.
//!
//! Self-contained (std + tokio only) so a benchmark can include it with
//! `#[path = "../tests/common/proxy.rs"] mod proxy;`.
//!
//! ```ignore
//! let proxy = Proxy::for_url(&url, Duration::from_millis(25)).await?;
//! let provider = PostgresProvider::builder(&proxy.url(&url)).build().await?;
//! let (result, round_trips) = proxy.measure(provider.read("i")).await;
//! ```

#![allow(dead_code)]

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

/// Connections served at once; further ones are closed on accept.
const MAX_CONNECTIONS: usize = 256;
/// Largest chunk read at once.
const CHUNK_SIZE: usize = 64 * 1024;
/// Chunks in flight per direction (at most `CHUNK_SIZE` each), so a delayed
/// direction buffers at most ~8 MiB before it stops reading.
const CHUNKS_IN_FLIGHT: usize = 128;

/// Shared counters, totals across every connection.
#[derive(Default)]
struct Counters {
    round_trips: AtomicU64,
    connections: AtomicU64,
    client_bytes: AtomicU64,
    server_bytes: AtomicU64,
}

/// Counter values at one instant (see [`Proxy::snapshot`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Snapshot {
    /// Client-to-server bursts that followed server data.
    pub round_trips: u64,
    /// Connections accepted.
    pub connections: u64,
    /// Bytes read from clients.
    pub client_bytes: u64,
    /// Bytes read from the server.
    pub server_bytes: u64,
}

/// A running proxy; dropping it stops it.
pub struct Proxy {
    addr: SocketAddr,
    target: SocketAddr,
    delay: Duration,
    counters: Arc<Counters>,
    task: JoinHandle<()>,
}

impl Proxy {
    /// Listens on `127.0.0.1:0` and forwards every connection to `target`
    /// (`host:port` resolving to a loopback address), delaying each
    /// direction by `delay`.
    pub async fn start(target: &str, delay: Duration) -> io::Result<Proxy> {
        let target = resolve_loopback(target).await?;
        let listener = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let counters = Arc::new(Counters::default());
        let task = tokio::spawn(accept_loop(listener, target, delay, Arc::clone(&counters)));
        Ok(Proxy {
            addr,
            target,
            delay,
            counters,
            task,
        })
    }

    /// Starts a proxy in front of the server of a `postgres://` URL.
    pub async fn for_url(url: &str, delay: Duration) -> io::Result<Proxy> {
        let (_, host_port, _) = split_url(url).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("not a postgres:// URL with a host: {url}"),
            )
        })?;
        Proxy::start(&host_port, delay).await
    }

    /// The address the proxy listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address every connection is forwarded to.
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// The one-way delay added to each direction.
    pub fn delay(&self) -> Duration {
        self.delay
    }

    /// `url` with its host and port replaced by the proxy's.
    pub fn url(&self, url: &str) -> String {
        rewrite_url(url, self.addr)
            .unwrap_or_else(|| panic!("not a postgres:// URL with a host: {url}"))
    }

    /// Round trips counted since start or the last [`reset`](Self::reset).
    pub fn round_trips(&self) -> u64 {
        self.counters.round_trips.load(Ordering::SeqCst)
    }

    /// Connections accepted since start or the last [`reset`](Self::reset).
    pub fn connections(&self) -> u64 {
        self.counters.connections.load(Ordering::SeqCst)
    }

    /// All counters at once.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            round_trips: self.counters.round_trips.load(Ordering::SeqCst),
            connections: self.counters.connections.load(Ordering::SeqCst),
            client_bytes: self.counters.client_bytes.load(Ordering::SeqCst),
            server_bytes: self.counters.server_bytes.load(Ordering::SeqCst),
        }
    }

    /// Zeroes every counter (the per-connection burst state is kept: the
    /// next request on an idle connection still counts as one round trip).
    pub fn reset(&self) {
        self.counters.round_trips.store(0, Ordering::SeqCst);
        self.counters.connections.store(0, Ordering::SeqCst);
        self.counters.client_bytes.store(0, Ordering::SeqCst);
        self.counters.server_bytes.store(0, Ordering::SeqCst);
    }

    /// Resets the counters, runs `work` and returns its output with the
    /// round trips it took. Meaningful when nothing else uses the proxy
    /// meanwhile.
    pub async fn measure<F: Future>(&self, work: F) -> (F::Output, u64) {
        let (out, snap) = self.measure_snapshot(work).await;
        (out, snap.round_trips)
    }

    /// Like [`measure`](Self::measure), with every counter.
    pub async fn measure_snapshot<F: Future>(&self, work: F) -> (F::Output, Snapshot) {
        self.reset();
        let out = work.await;
        (out, self.snapshot())
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // The accept loop owns the listener and the JoinSet of connections:
        // aborting it closes the listener and aborts every connection task.
        self.task.abort();
    }
}

/// Splits `scheme://[userinfo@]host[:port][/path][?query]` into
/// (`scheme://[userinfo@]`, `host:port`, `/path?query`); the port defaults
/// to 5432. Key-value connection strings are not supported.
pub fn split_url(url: &str) -> Option<(String, String, String)> {
    let scheme_end = url.find("://")? + 3;
    let scheme = &url[..scheme_end];
    if !matches!(scheme, "postgres://" | "postgresql://") {
        return None;
    }
    let after = &url[scheme_end..];
    let authority_end = after.find(['/', '?']).unwrap_or(after.len());
    let (authority, rest) = after.split_at(authority_end);
    let host_start = authority.rfind('@').map_or(0, |i| i + 1);
    let (userinfo, host_port) = authority.split_at(host_start);
    if host_port.is_empty() || host_port.contains(',') {
        return None;
    }
    // A port follows the last ':' unless that ':' is inside an IPv6 literal.
    let has_port = match host_port.rfind(':') {
        Some(i) => !host_port[i..].contains(']'),
        None => false,
    };
    let host_port = if has_port {
        host_port.to_owned()
    } else {
        format!("{host_port}:5432")
    };
    Some((format!("{scheme}{userinfo}"), host_port, rest.to_owned()))
}

/// `url` pointing at `addr` instead of its own host and port.
pub fn rewrite_url(url: &str, addr: SocketAddr) -> Option<String> {
    let (prefix, _, rest) = split_url(url)?;
    Some(format!("{prefix}{addr}{rest}"))
}

/// Resolves `host:port` to its first loopback address; anything that is not
/// loopback is refused.
async fn resolve_loopback(target: &str) -> io::Result<SocketAddr> {
    tokio::net::lookup_host(target)
        .await?
        .find(|a| a.ip().is_loopback())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("proxy target {target} is not a loopback address"),
            )
        })
}

async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    delay: Duration,
    counters: Arc<Counters>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((client, _)) => {
                    if connections.len() >= MAX_CONNECTIONS {
                        drop(client);
                        continue;
                    }
                    counters.connections.fetch_add(1, Ordering::SeqCst);
                    connections.spawn(serve(client, target, delay, Arc::clone(&counters)));
                }
                // E.g. out of descriptors: back off instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Proxies one connection until both directions have ended, or either fails.
async fn serve(
    client: TcpStream,
    target: SocketAddr,
    delay: Duration,
    counters: Arc<Counters>,
) -> io::Result<()> {
    let server = TcpStream::connect(target).await?;
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();

    // True when the server has sent something since the last client burst
    // began; starts true so the first burst counts.
    let server_spoke = AtomicBool::new(true);
    let upstream = pipe(client_read, server_write, delay, |n| {
        counters.client_bytes.fetch_add(n, Ordering::SeqCst);
        if server_spoke.swap(false, Ordering::SeqCst) {
            counters.round_trips.fetch_add(1, Ordering::SeqCst);
        }
    });
    let downstream = pipe(server_read, client_write, delay, |n| {
        counters.server_bytes.fetch_add(n, Ordering::SeqCst);
        server_spoke.store(true, Ordering::SeqCst);
    });
    tokio::try_join!(upstream, downstream)?;
    Ok(())
}

/// Copies `from` to `to`, each chunk written `delay` after it was read.
///
/// `on_read` sees each chunk as it is read, before the delay: a reply can
/// only be read after the request that caused it was written, so counting on
/// the read side keeps causal order. On end of input the write side is shut
/// down once everything queued has been written.
async fn pipe<R, W>(
    mut from: R,
    mut to: W,
    delay: Duration,
    on_read: impl Fn(u64),
) -> io::Result<()>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(CHUNKS_IN_FLIGHT);
    let reader = async move {
        let mut buf = vec![0u8; CHUNK_SIZE];
        loop {
            let n = from.read(&mut buf).await?;
            if n == 0 {
                return Ok::<_, io::Error>(());
            }
            on_read(n as u64);
            if tx
                .send((Instant::now() + delay, buf[..n].to_vec()))
                .await
                .is_err()
            {
                return Ok(());
            }
        }
    };
    let writer = async move {
        while let Some((due, chunk)) = rx.recv().await {
            // A timer, even an elapsed one, may wait for the next tick.
            if due > Instant::now() {
                tokio::time::sleep_until(due).await;
            }
            to.write_all(&chunk).await?;
        }
        to.shutdown().await
    };
    tokio::try_join!(reader, writer)?;
    Ok(())
}
