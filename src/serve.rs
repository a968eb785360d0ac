//! The HTTP server: answers every scrape with the last published exposition,
//! so a scrape never waits for a sample.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::scrapes::ScrapeClock;

use crate::sampler::Exposition;
use crate::webconfig::WebConfig;

mod respond;

use respond::State;
pub use respond::answer;

/// The content type of the Prometheus text format.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How long a client may take to send its request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The most a request's line and headers may take; beyond it the answer is
/// 431. A scraper sends a few hundred bytes.
const MAX_REQUEST_HEAD: usize = 16 * 1024;

/// How long a write may make no progress before the connection is closed:
/// a client that asks and never reads holds nothing for longer.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long shutdown waits for requests in flight.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// How often a failure to accept connections is logged while failures go
/// on.
const ACCEPT_FAILURE_LOG_EVERY: Duration = Duration::from_secs(60);

/// What the server answers with, beyond the exposition.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Path of the metrics, such as `/metrics`.
    pub telemetry_path: String,
    /// Most requests served at once; 0 means no limit.
    pub max_requests: usize,
    /// Most connections open at once; connections beyond it are closed as
    /// soon as they are accepted.
    pub max_connections: usize,
    /// TLS, authentication and headers; replaced when the file is reloaded.
    pub web: WebConfigHandle,
    /// Told of each scrape of the metrics, for the sampler to follow.
    pub scrapes: Option<Arc<ScrapeClock>>,
}

/// The web configuration in force, which a reload replaces.
pub type WebConfigHandle = Arc<std::sync::RwLock<Arc<WebConfig>>>;

/// Descriptors kept back from connections for sampling: netlink and BPF
/// descriptors, procfs files, namespace handles, the owner walk's
/// directories, and the server's own.
pub const DESCRIPTOR_RESERVE: u64 = 128;

/// Raises the soft limit on open descriptors to the hard limit, as Go
/// programs do at start, and returns how many connections fit beside
/// `DESCRIPTOR_RESERVE`: `requested`, or fewer where the limit is lower
/// (at least one). Returns the limit too, for the log.
pub fn connection_budget(requested: usize) -> (usize, u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` outlives both calls, which only read or write it.
    let descriptors = unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return (requested, 0);
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit.rlim_cur = limit.rlim_max;
            }
        }
        limit.rlim_cur
    };
    let fits = descriptors.saturating_sub(DESCRIPTOR_RESERVE).max(1);
    (
        requested.min(usize::try_from(fits).unwrap_or(usize::MAX)),
        descriptors,
    )
}

/// Binds a listening socket for `address`, as a blocking std listener.
///
/// The unspecified IPv6 address also accepts IPv4; where the kernel has no
/// IPv6 it falls back to the unspecified IPv4 address.
pub fn bind(address: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let open = |address: SocketAddr| -> std::io::Result<Socket> {
        let socket = Socket::new(
            Domain::for_address(address),
            Type::STREAM,
            Some(Protocol::TCP),
        )?;
        if address.is_ipv6() && address.ip().is_unspecified() {
            socket.set_only_v6(false)?;
        }
        socket.set_reuse_address(true)?;
        socket.bind(&address.into())?;
        socket.listen(1024)?;
        socket.set_nonblocking(true)?;
        Ok(socket)
    };
    let socket = match open(address) {
        Err(error)
            if address.is_ipv6()
                && address.ip().is_unspecified()
                && error.raw_os_error() == Some(libc::EAFNOSUPPORT) =>
        {
            open(SocketAddr::from(([0, 0, 0, 0], address.port())))?
        }
        result => result?,
    };
    Ok(socket.into())
}

/// Serves on `listeners` until `shutdown` resolves, then waits a short grace
/// period for requests in flight.
pub async fn serve(
    listeners: Vec<TcpListener>,
    config: ServeConfig,
    expositions: watch::Receiver<Arc<Exposition>>,
    shutdown: impl Future<Output = ()>,
) {
    let state = Arc::new(State::new(config, expositions));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let connections = Arc::new(tokio::sync::Semaphore::new(state.config.max_connections));
    let open = Arc::new(OpenConnections::default());
    let (accepted_sender, mut accepted) = tokio::sync::mpsc::channel(64);
    for listener in listeners {
        tokio::spawn(accept(listener, accepted_sender.clone()));
    }
    drop(accepted_sender);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            stream = accepted.recv() => {
                let Some(stream) = stream else { break };
                let Some(place) = make_room(&connections, &open) else {
                    // Every connection has sent a request: closing at once
                    // costs the client a connection and the exporter
                    // nothing.
                    tracing::debug!("connection limit reached; closing a new connection");
                    drop(stream);
                    continue;
                };
                let (id, slot) = open.add(place);
                let tls = state.web().tls.clone();
                let watcher = graceful.watcher();
                let state = state.clone();
                let open = open.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        () = serve_stream(stream, tls, state, watcher, &slot) => {}
                        () = slot.evicted.notified() => {}
                    }
                    open.remove(id);
                });
            }
            () = &mut shutdown => break,
        }
    }
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(SHUTDOWN_GRACE) => {
            tracing::warn!("requests still in flight at shutdown were dropped");
        }
    }
}

/// Accepts connections on `listener` and hands them to `accepted`, until
/// the server stops taking them.
async fn accept(listener: TcpListener, accepted: tokio::sync::mpsc::Sender<tokio::net::TcpStream>) {
    // Logged at the first failure, then at most once every
    // `ACCEPT_FAILURE_LOG_EVERY` while failures go on, not every 100 ms: a
    // descriptor freed for a moment (a sample closing its files) lets one
    // connection through without ending a shortage of them.
    let mut logged: Option<tokio::time::Instant> = None;
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                if accepted.send(stream).await.is_err() {
                    return;
                }
            }
            Err(error) => {
                if logged.is_none_or(|at| at.elapsed() >= ACCEPT_FAILURE_LOG_EVERY) {
                    tracing::warn!(err = %error, "accepting a connection failed");
                    logged = Some(tokio::time::Instant::now());
                }
                // Out of descriptors or similar: wait rather than spin.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// A place for one more connection: a free one, or that of the oldest
/// connection that sent no request, closed to make room; `None` when every
/// connection has sent a request.
fn make_room(
    connections: &Arc<tokio::sync::Semaphore>,
    open: &OpenConnections,
) -> Option<tokio::sync::OwnedSemaphorePermit> {
    if let Ok(place) = connections.clone().try_acquire_owned() {
        return Some(place);
    }
    let place = open.evict_idle()?;
    tracing::debug!(
        "connection limit reached; closed the oldest connection that sent no request to make room"
    );
    Some(place)
}

/// Serves one accepted connection: refuses a protocol the port does not
/// speak, shakes hands where the port speaks TLS, then serves HTTP.
async fn serve_stream(
    stream: tokio::net::TcpStream,
    tls: Option<Arc<rustls::ServerConfig>>,
    state: Arc<State>,
    watcher: hyper_util::server::graceful::Watcher,
    slot: &Arc<Slot>,
) {
    if let Some(refusal) = wrong_protocol(&stream, tls.is_some()).await {
        refuse(stream, refusal).await;
        return;
    }
    let io = WriteTimeout::new(stream);
    let Some(tls) = tls else {
        return serve_connection(TokioIo::new(io), state, watcher, slot).await;
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    // The handshake gets the same time as headers do.
    match tokio::time::timeout(HEADER_READ_TIMEOUT, acceptor.accept(io)).await {
        Ok(Ok(stream)) => serve_connection(TokioIo::new(stream), state, watcher, slot).await,
        Ok(Err(error)) => tracing::debug!(err = %error, "TLS handshake failed"),
        Err(_) => tracing::debug!("TLS handshake timed out"),
    }
}

/// The HTTP/2 connection preface a client with prior knowledge opens with.
const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What to answer a client that speaks a protocol the port does not: plain
/// HTTP to the TLS port (as Go's servers answer it), or HTTP/2 with prior
/// knowledge (a SETTINGS frame, then GOAWAY with HTTP_1_1_REQUIRED and the
/// reason as debug data, RFC 9113 6.8). `None` when its first bytes are
/// what the port expects, or it sends none within the header timeout.
async fn wrong_protocol(stream: &tokio::net::TcpStream, tls: bool) -> Option<Vec<u8>> {
    let mut first = [0u8; HTTP2_PREFACE.len()];
    let deadline = tokio::time::Instant::now() + HEADER_READ_TIMEOUT;
    let seen = loop {
        let seen = tokio::time::timeout_at(deadline, stream.peek(&mut first))
            .await
            .ok()?
            .ok()?;
        // A preface that arrives in pieces: wait for the rest.
        if seen == 0 || seen == first.len() || !HTTP2_PREFACE.starts_with(&first[..seen]) {
            break seen;
        }
        tokio::time::sleep_until(
            deadline.min(tokio::time::Instant::now() + Duration::from_millis(10)),
        )
        .await;
        if tokio::time::Instant::now() >= deadline {
            break seen;
        }
    };
    let first = &first[..seen];
    if tls {
        // A TLS record of type handshake (22) starts every TLS connection.
        let plain = first.first().is_some_and(u8::is_ascii_alphabetic);
        tracing::debug!(
            plain,
            "a client spoke something other than TLS to the TLS port"
        );
        return plain.then(|| {
            b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n\
              Connection: close\r\n\r\nClient sent an HTTP request to an HTTPS server.\n"
                .to_vec()
        });
    }
    if first != HTTP2_PREFACE {
        return None;
    }
    tracing::debug!("a client spoke HTTP/2; only HTTP/1.1 is served");
    let reason = b"HTTP/2 is not served here; use HTTP/1.1";
    let mut answer = vec![0, 0, 0, 0x4, 0, 0, 0, 0, 0];
    let length = 8 + reason.len();
    answer.extend([0, 0, length as u8, 0x7, 0, 0, 0, 0, 0]);
    answer.extend([0, 0, 0, 0, 0, 0, 0, 0xd]);
    answer.extend(reason);
    Some(answer)
}

/// Writes `answer` and closes the connection, giving up after the write
/// timeout.
async fn refuse(mut stream: tokio::net::TcpStream, answer: Vec<u8>) {
    use tokio::io::AsyncWriteExt;
    let _ = tokio::time::timeout(WRITE_TIMEOUT, async {
        stream.write_all(&answer).await?;
        stream.shutdown().await
    })
    .await;
}

/// One open connection's place and state.
struct Slot {
    /// Whether it has sent a request; until then it may be closed to make
    /// room for a new connection.
    requested: std::sync::atomic::AtomicBool,
    /// Its place among `--web.max-connections`, taken away when it is
    /// closed to make room.
    place: std::sync::Mutex<Option<tokio::sync::OwnedSemaphorePermit>>,
    /// Tells its task to close it.
    evicted: tokio::sync::Notify,
}

/// The open connections, in the order they were accepted.
#[derive(Default)]
struct OpenConnections {
    slots: std::sync::Mutex<std::collections::BTreeMap<u64, Arc<Slot>>>,
    next: std::sync::atomic::AtomicU64,
}

impl OpenConnections {
    fn add(&self, place: tokio::sync::OwnedSemaphorePermit) -> (u64, Arc<Slot>) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let slot = Arc::new(Slot {
            requested: std::sync::atomic::AtomicBool::new(false),
            place: std::sync::Mutex::new(Some(place)),
            evicted: tokio::sync::Notify::new(),
        });
        if let Ok(mut slots) = self.slots.lock() {
            slots.insert(id, slot.clone());
        }
        (id, slot)
    }

    fn remove(&self, id: u64) {
        if let Ok(mut slots) = self.slots.lock() {
            slots.remove(&id);
        }
    }

    /// Closes the oldest connection that has sent no request and hands
    /// over its place: an idle flood cannot keep a scraper out.
    fn evict_idle(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let mut slots = self.slots.lock().ok()?;
        let (&id, slot) = slots
            .iter()
            .find(|(_, slot)| !slot.requested.load(Ordering::Relaxed))?;
        let place = slot.place.lock().ok()?.take();
        slot.evicted.notify_one();
        slots.remove(&id);
        place
    }
}

/// A connection whose writes fail with `TimedOut` once they have made no
/// progress for `WRITE_TIMEOUT`.
struct WriteTimeout<I> {
    io: I,
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<I> WriteTimeout<I> {
    fn new(io: I) -> WriteTimeout<I> {
        WriteTimeout { io, stalled: None }
    }

    /// Passes a write's result on, timing how long it has been pending.
    fn timed<T>(
        &mut self,
        context: &mut Context<'_>,
        result: Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        if result.is_ready() {
            self.stalled = None;
            return result;
        }
        let stalled = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(WRITE_TIMEOUT)));
        match stalled.as_mut().poll(context) {
            Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "a write made no progress",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<I: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for WriteTimeout<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(context, buffer)
    }
}

impl<I: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for WriteTimeout<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        bytes: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.io).poll_write(context, bytes);
        this.timed(context, result)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffers: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.io).poll_write_vectored(context, buffers);
        this.timed(context, result)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.io).poll_flush(context);
        this.timed(context, result)
    }

    fn poll_shutdown(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.io).poll_shutdown(context);
        this.timed(context, result)
    }
}

/// Serves HTTP/1.1 on one connection, plain or TLS, until it closes.
async fn serve_connection<I>(
    io: I,
    state: Arc<State>,
    watcher: hyper_util::server::graceful::Watcher,
    slot: &Arc<Slot>,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let slot = slot.clone();
    let service = hyper::service::service_fn(move |request| {
        // From its first request on, a connection keeps its place.
        slot.requested.store(true, Ordering::Relaxed);
        let state = state.clone();
        async move { Ok::<_, Infallible>(state.respond(&request).await) }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        // A client that sends its request and then shuts down its side for
        // writing (`nc -N`, socat, health checks) still gets every answer.
        .half_close(true)
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_REQUEST_HEAD)
        .serve_connection(io, service);
    if let Err(error) = watcher.watch(connection).await {
        tracing::debug!(err = %error, "connection ended with an error");
    }
}

/// Resolves when the sampler has stopped: its end of `expositions` is gone,
/// as when its thread panicked. The exporter then exits non-zero, so that
/// its supervisor restarts it, rather than serve the last figures as if
/// they were current.
pub async fn sampler_stopped(mut expositions: watch::Receiver<Arc<Exposition>>) {
    while expositions.changed().await.is_ok() {}
}

/// Logs each SIGHUP when there is no web configuration to reload, so that a
/// service manager's reload neither kills the exporter nor goes unseen.
/// `hangup` is installed by the caller before the exporter says it listens.
pub async fn log_hangups(mut hangup: Option<tokio::signal::unix::Signal>) {
    let Some(hangup) = hangup.as_mut() else {
        return;
    };
    while hangup.recv().await.is_some() {
        tracing::info!("received SIGHUP; there is no --web.config.file to reload");
    }
}

/// Reloads the web configuration at `path` when it or a file it names
/// (certificate, key, CA) changes (checked every second), or on SIGHUP
/// (`hangup`, installed by the caller before the exporter says it listens).
/// Files are read and parsed on a blocking thread, so that a slow or
/// hostile file stalls no request. A file that does not load, or that
/// would turn TLS or authentication off, is logged and the configuration in
/// force is kept.
pub async fn reload_web_config(
    path: std::path::PathBuf,
    web: WebConfigHandle,
    mut hangup: Option<tokio::signal::unix::Signal>,
) {
    let watched = |web: &WebConfigHandle| {
        let mut files = match web.read() {
            Ok(web) => web.files.clone(),
            Err(poisoned) => poisoned.into_inner().files.clone(),
        };
        if !files.contains(&path) {
            files.insert(0, path.clone());
        }
        files
    };
    let mut files = watched(&web);
    let mut last = fingerprints(&files);
    loop {
        let signalled = tokio::select! {
            _ = async {
                match hangup.as_mut() {
                    Some(hangup) => { hangup.recv().await; }
                    None => std::future::pending::<()>().await,
                }
            } => true,
            () = tokio::time::sleep(Duration::from_secs(1)) => false,
        };
        let now = fingerprints(&files);
        if !signalled && now == last {
            continue;
        }
        if signalled {
            tracing::info!(file = %path.display(), "received SIGHUP; reloading the web configuration");
        }
        last = now;
        let loading = path.clone();
        let loaded = tokio::task::spawn_blocking(move || WebConfig::load(&loading)).await;
        match loaded {
            Ok(Ok(config)) => {
                // A writer that panicked left the configuration whole (it
                // is replaced in one assignment): reloads go on.
                let mut current = web.write().unwrap_or_else(|poisoned| {
                    tracing::warn!(
                        "the web configuration's lock was poisoned by a panic; reloading anyway"
                    );
                    web.clear_poison();
                    poisoned.into_inner()
                });
                if let Some(reason) = config.lowers_security_of(&current) {
                    tracing::error!(
                        file = %path.display(),
                        reason,
                        "web configuration not reloaded: a reload may not lower security; \
                         restart the exporter to do that; keeping the one in force"
                    );
                    continue;
                }
                config.remember_accepted_from(&current);
                for warning in &config.warnings {
                    tracing::warn!(file = %path.display(), "{warning}");
                }
                *current = Arc::new(config);
                drop(current);
                // Watch what the new configuration names. Where that is what
                // was watched already, the fingerprints taken before the
                // load stay, so that a change made during it is seen.
                let named = watched(&web);
                if named != files {
                    files = named;
                    last = fingerprints(&files);
                }
                tracing::info!(file = %path.display(), "web configuration reloaded");
            }
            Ok(Err(error)) => {
                tracing::error!(err = %error, "web configuration not reloaded; keeping the one in force");
            }
            Err(error) => {
                tracing::error!(err = %error, "web configuration not reloaded; keeping the one in force");
            }
        }
    }
}

/// What tells that a file changed: its modification time, size and inode
/// (a file renamed into place, as certbot and cert-manager do, is a new
/// inode), or `None` while it cannot be read. Metadata only: it never opens
/// the file, so a FIFO in its place cannot block it.
fn fingerprints(files: &[std::path::PathBuf]) -> Vec<Option<(i64, i64, u64, u64)>> {
    use std::os::unix::fs::MetadataExt;
    files
        .iter()
        .map(|path| {
            std::fs::metadata(path)
                .ok()
                .map(|m| (m.mtime(), m.mtime_nsec(), m.size(), m.ino()))
        })
        .collect()
}
