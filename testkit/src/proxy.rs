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
//! * **Faults.** [`Proxy::reset_all`] resets every connection and refuses
//!   new ones for a while; [`Proxy::stall`] forwards nothing for a while,
//!   then delivers everything; [`Proxy::black_hole`] makes every connection
//!   open now, or opened during the next while, silent forever (packets
//!   dropped by a firewall or NAT that forgot the flow, a host that failed
//!   over): the sockets stay open and nothing more crosses them.
//!
//! Self-contained (std + tokio only): it proxies any TCP protocol, not only
//! PostgreSQL's.
//!
//! ```no_run
//! # async fn f(url: &str) -> std::io::Result<()> {
//! use std::time::Duration;
//! use duroxide_diesel_testkit::proxy::Proxy;
//!
//! // 25 ms each way between the client and the server at `url`.
//! let proxy = Proxy::for_url(url, Duration::from_millis(25)).await?;
//! // Give the client under test this URL instead of `url`.
//! let proxied = proxy.url(url);
//! // Round trips that crossed the proxy while the future ran.
//! let ((), round_trips) = proxy.measure(async { /* calls through `proxied` */ }).await;
//! # let _ = (proxied, round_trips);
//! # Ok(())
//! # }
//! ```

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
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

/// Faults being injected, shared by every connection task.
struct Faults {
    next_id: AtomicU64,
    /// Connections with an id below this are black-holed.
    dead_below: AtomicU64,
    /// Connections with an id below this deliver nothing more to the client.
    muted_below: AtomicU64,
    /// Until when new connections are black-holed, refused, or every
    /// connection forwards nothing.
    hole_until: Mutex<Option<Instant>>,
    refuse_until: Mutex<Option<Instant>>,
    stall_until: Mutex<Option<Instant>>,
    /// Bumped to reset every open connection.
    resets: watch::Sender<u64>,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            next_id: AtomicU64::new(0),
            dead_below: AtomicU64::new(0),
            muted_below: AtomicU64::new(0),
            hole_until: Mutex::new(None),
            refuse_until: Mutex::new(None),
            stall_until: Mutex::new(None),
            resets: watch::channel(0).0,
        }
    }
}

fn active(until: &Mutex<Option<Instant>>) -> Option<Instant> {
    let until = *until.lock().unwrap();
    until.filter(|u| *u > Instant::now())
}

/// A running proxy; dropping it stops it.
pub struct Proxy {
    addr: SocketAddr,
    target: SocketAddr,
    delay: Duration,
    counters: Arc<Counters>,
    faults: Arc<Faults>,
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
        let faults = Arc::new(Faults::default());
        let task = tokio::spawn(accept_loop(
            listener,
            target,
            delay,
            Arc::clone(&counters),
            Arc::clone(&faults),
        ));
        Ok(Proxy {
            addr,
            target,
            delay,
            counters,
            faults,
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

    /// Resets every open connection (TCP RST to both sides) and refuses new
    /// connections for `refuse_for`.
    pub fn reset_all(&self, refuse_for: Duration) {
        *self.faults.refuse_until.lock().unwrap() = Some(Instant::now() + refuse_for);
        self.faults.resets.send_modify(|n| *n += 1);
    }

    /// Forwards nothing in either direction for `duration`, then delivers
    /// everything held back, in order.
    pub fn stall(&self, duration: Duration) {
        *self.faults.stall_until.lock().unwrap() = Some(Instant::now() + duration);
    }

    /// Every connection open now, and every one opened during the next
    /// `duration`, goes silent forever: its sockets stay open, nothing more
    /// is forwarded, nobody is told. Connections opened afterwards work.
    pub fn black_hole(&self, duration: Duration) {
        *self.faults.hole_until.lock().unwrap() = Some(Instant::now() + duration);
        let next = self.faults.next_id.load(Ordering::SeqCst);
        self.faults.dead_below.store(next, Ordering::SeqCst);
    }

    /// Every connection open now keeps delivering what the client sends but
    /// never again anything the server replies: statements run and commit,
    /// their replies are lost. Connections opened afterwards work.
    pub fn mute_replies(&self) {
        let next = self.faults.next_id.load(Ordering::SeqCst);
        self.faults.muted_below.store(next, Ordering::SeqCst);
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

/// A [`Proxy`] on a thread and single-worker tokio runtime of its own, so
/// its forwarding does not compete with the workers of the runtime being
/// measured. Dropping it stops the proxy and its runtime.
pub struct ProxyThread {
    proxy: Option<Proxy>,
    rt: Option<tokio::runtime::Runtime>,
}

impl ProxyThread {
    /// Starts a proxy in front of the server of a `postgres://` URL (see
    /// [`Proxy::for_url`]) on its own thread.
    pub async fn for_url(url: &str, delay: Duration) -> io::Result<ProxyThread> {
        let url = url.to_owned();
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let started = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("testkit-proxy")
                .enable_all()
                .build()
                .and_then(|rt| {
                    let proxy = rt.block_on(Proxy::for_url(&url, delay))?;
                    Ok(ProxyThread {
                        proxy: Some(proxy),
                        rt: Some(rt),
                    })
                });
            let _ = tx.send(started);
        });
        rx.await
            .map_err(|_| io::Error::other("proxy thread died before starting"))?
    }

    /// The running proxy.
    pub fn proxy(&self) -> &Proxy {
        self.proxy.as_ref().expect("the proxy runs until drop")
    }
}

impl Drop for ProxyThread {
    fn drop(&mut self) {
        // The proxy's tasks run on `rt`: stop them before the runtime goes.
        drop(self.proxy.take());
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
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
    faults: Arc<Faults>,
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
                    if active(&faults.refuse_until).is_some() {
                        reset(client);
                        continue;
                    }
                    counters.connections.fetch_add(1, Ordering::SeqCst);
                    let id = faults.next_id.fetch_add(1, Ordering::SeqCst);
                    if active(&faults.hole_until).is_some() {
                        // Accepted, then silent forever: hold the socket.
                        connections.spawn(async move {
                            let _held = client;
                            std::future::pending::<io::Result<()>>().await
                        });
                        continue;
                    }
                    connections.spawn(serve(
                        client,
                        target,
                        delay,
                        Arc::clone(&counters),
                        Arc::clone(&faults),
                        id,
                    ));
                }
                // E.g. out of descriptors: back off instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Closes a socket with a TCP reset instead of an orderly shutdown.
fn reset(socket: TcpStream) {
    #[allow(deprecated)] // blocking only for a non-zero linger
    let _ = socket.set_linger(Some(Duration::ZERO));
    drop(socket);
}

/// Proxies one connection until both directions have ended, either fails,
/// or [`Proxy::reset_all`] resets it.
async fn serve(
    client: TcpStream,
    target: SocketAddr,
    delay: Duration,
    counters: Arc<Counters>,
    faults: Arc<Faults>,
    id: u64,
) -> io::Result<()> {
    let mut resets = faults.resets.subscribe();
    resets.mark_unchanged();
    let server = TcpStream::connect(target).await?;
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    // Zero linger: when this task is dropped by a reset, both peers see a
    // reset rather than an orderly end of stream.
    #[allow(deprecated)]
    {
        client.set_linger(Some(Duration::ZERO))?;
        server.set_linger(Some(Duration::ZERO))?;
    }
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();

    // True when the server has sent something since the last client burst
    // began; starts true so the first burst counts.
    let server_spoke = AtomicBool::new(true);
    let gate = Gate {
        faults: &faults,
        id,
        replies: false,
    };
    let reply_gate = Gate {
        faults: &faults,
        id,
        replies: true,
    };
    let upstream = pipe(client_read, server_write, delay, &gate, |n| {
        counters.client_bytes.fetch_add(n, Ordering::SeqCst);
        if server_spoke.swap(false, Ordering::SeqCst) {
            counters.round_trips.fetch_add(1, Ordering::SeqCst);
        }
    });
    let downstream = pipe(server_read, client_write, delay, &reply_gate, |n| {
        counters.server_bytes.fetch_add(n, Ordering::SeqCst);
        server_spoke.store(true, Ordering::SeqCst);
    });
    tokio::select! {
        done = async { tokio::try_join!(upstream, downstream) } => { done?; }
        _ = resets.changed() => {}
    }
    Ok(())
}

/// Decides when a connection's chunk may be written.
struct Gate<'a> {
    faults: &'a Faults,
    id: u64,
    /// Server-to-client direction.
    replies: bool,
}

impl Gate<'_> {
    /// Waits out a stall; never returns for a black-holed connection.
    async fn pass(&self) {
        loop {
            if self.id < self.faults.dead_below.load(Ordering::SeqCst)
                || (self.replies && self.id < self.faults.muted_below.load(Ordering::SeqCst))
            {
                std::future::pending::<()>().await;
            }
            match active(&self.faults.stall_until) {
                Some(until) => tokio::time::sleep_until(until).await,
                None => return,
            }
        }
    }
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
    gate: &Gate<'_>,
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
            gate.pass().await;
            to.write_all(&chunk).await?;
        }
        to.shutdown().await
    };
    tokio::try_join!(reader, writer)?;
    Ok(())
}
