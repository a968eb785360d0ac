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

/// Answers one request as the server would, with a fixed exposition; for the
/// fuzzer. Returns the status code.
#[doc(hidden)]
pub fn answer(request: &Request<()>, web: WebConfig) -> u16 {
    let exposition = Exposition {
        text: Bytes::from_static(b"portstat_sample_success 1\n"),
        gzip: Bytes::from_static(b""),
        page: Bytes::from_static(b"<html></html>"),
        ready: true,
    };
    let (_sender, receiver) = watch::channel(Arc::new(exposition));
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread().build() else {
        return 500;
    };
    let state = State::new(
        ServeConfig {
            telemetry_path: "/metrics".to_string(),
            max_requests: 40,
            max_connections: 10,
            web: Arc::new(std::sync::RwLock::new(Arc::new(web))),
            scrapes: None,
        },
        receiver,
    );
    runtime.block_on(state.respond(request)).status().as_u16()
}

struct State {
    config: ServeConfig,
    expositions: watch::Receiver<Arc<Exposition>>,
    in_flight: Arc<AtomicUsize>,
    /// Places for password checks running at once.
    checks: Arc<tokio::sync::Semaphore>,
    /// Password checks waiting for a place.
    checks_waiting: Arc<AtomicUsize>,
}

/// How many bcrypt checks run at once, each on a thread of its own: half
/// the CPUs (at least one, at most four), so that a flood of wrong
/// passwords leaves the others to the server and the sampler.
fn checks_at_once() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |cpus| cpus.get() / 2)
        .clamp(1, 4)
}

/// How many password checks may wait for a place; beyond it a request
/// whose credentials need checking is answered 503 at once. Credentials
/// checked before never wait.
const CHECKS_WAITING_MAX: usize = 64;

/// A place among the waiting password checks, given back on drop (also
/// when the client goes away while it waits).
struct Waiting(Arc<AtomicUsize>);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A place in the in-flight count, released when the response body has been
/// sent (or the connection dropped), not when the handler returns.
struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body that holds its request's place in the in-flight count,
/// if it took one.
pub struct CountedBody {
    body: Full<Bytes>,
    _place: Option<InFlight>,
}

impl Body for CountedBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(context)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl State {
    fn new(config: ServeConfig, expositions: watch::Receiver<Arc<Exposition>>) -> State {
        State {
            config,
            expositions,
            in_flight: Arc::new(AtomicUsize::new(0)),
            checks: Arc::new(tokio::sync::Semaphore::new(checks_at_once())),
            checks_waiting: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// The web configuration in force.
    fn web(&self) -> Arc<WebConfig> {
        match self.config.web.read() {
            Ok(web) => web.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Authenticates, then answers. Authentication comes first and takes
    /// no place among the requests in flight, so that a flood of wrong
    /// passwords cannot fill `--web.max-requests` either.
    async fn respond<B>(&self, request: &Request<B>) -> Response<CountedBody> {
        let web = self.web();
        let mut place = None;
        let mut response = match self.authenticate(&web, request).await {
            Err(refusal) => refusal,
            Ok(()) => {
                let count = self.in_flight.fetch_add(1, Ordering::Relaxed);
                place = Some(InFlight(self.in_flight.clone()));
                if self.config.max_requests != 0 && count >= self.config.max_requests {
                    text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "too many requests in flight\n",
                    )
                } else {
                    self.route(request)
                }
            }
        };
        for (name, value) in &web.headers {
            response.headers_mut().insert(name.clone(), value.clone());
        }
        response.map(|body| CountedBody {
            body,
            _place: place,
        })
    }

    /// Checks the request's credentials where authentication is on. A
    /// bcrypt check runs on a blocking thread, a bounded number at once,
    /// never on the server's; credentials checked before are answered from
    /// memory.
    async fn authenticate<B>(
        &self,
        web: &Arc<WebConfig>,
        request: &Request<B>,
    ) -> Result<(), Response<Full<Bytes>>> {
        if !web.requires_authentication() {
            return Ok(());
        }
        let authorization = request
            .headers()
            .get(header::AUTHORIZATION)
            .map(HeaderValue::as_bytes);
        let authorized = match web.remembered(authorization) {
            Some(known) => known,
            None => {
                let waiting = self.checks_waiting.fetch_add(1, Ordering::Relaxed);
                let place = Waiting(self.checks_waiting.clone());
                if waiting >= CHECKS_WAITING_MAX {
                    let mut response = text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "too many password checks in progress\n",
                    );
                    response
                        .headers_mut()
                        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                    return Err(response);
                }
                let Ok(permit) = self.checks.clone().acquire_owned().await else {
                    return Err(text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n"));
                };
                drop(place);
                let web = web.clone();
                let authorization = authorization.map(<[u8]>::to_vec);
                // The permit goes with the check: a client that leaves does
                // not free a place while its hash is still being computed.
                tokio::task::spawn_blocking(move || {
                    let _permit = permit;
                    web.authorizes(authorization.as_deref())
                })
                .await
                .unwrap_or(false)
            }
        };
        if authorized {
            return Ok(());
        }
        let mut response = text(StatusCode::UNAUTHORIZED, "unauthorized\n");
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"portstat_exporter\""),
        );
        Err(response)
    }

    fn route<B>(&self, request: &Request<B>) -> Response<Full<Bytes>> {
        if request.method() != Method::GET && request.method() != Method::HEAD {
            let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return response;
        }
        let path = request.uri().path();
        if path == self.config.telemetry_path {
            return self.metrics(request);
        }
        match path {
            "/" => self.landing_page(),
            "/-/healthy" => text(StatusCode::OK, "Healthy\n"),
            "/-/ready" => {
                if self.expositions.borrow().ready {
                    text(StatusCode::OK, "Ready\n")
                } else {
                    text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "Not ready: no sample yet\n",
                    )
                }
            }
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        }
    }

    fn metrics<B>(&self, request: &Request<B>) -> Response<Full<Bytes>> {
        if let Some(scrapes) = &self.config.scrapes {
            scrapes.scraped();
        }
        let exposition = self.expositions.borrow().clone();
        if exposition.text.is_empty() {
            // Before the first sample has been rendered: no figures to
            // serve, and an empty body is no gzip stream.
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                "No sample yet: the first is still being taken\n",
            );
        }
        let gzip = accepts_gzip(request.headers().get_all(header::ACCEPT_ENCODING));
        let body = if gzip {
            exposition.gzip.clone()
        } else {
            exposition.text.clone()
        };
        let mut response = Response::new(Full::new(body));
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(METRICS_CONTENT_TYPE),
        );
        headers.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
        if gzip {
            headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        response
    }

    fn landing_page(&self) -> Response<Full<Bytes>> {
        let mut page = self.expositions.borrow().page.clone();
        if page.is_empty() {
            // Before the first sample has finished.
            page = Bytes::from(portstat_core::page::landing_page(
                None,
                &portstat_core::status::SampleStatus {
                    build: crate::render::BUILD,
                    ..Default::default()
                },
                &self.config.telemetry_path,
            ));
        }
        let mut response = Response::new(Full::new(page));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        response
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Whether an `Accept-Encoding` header allows gzip: `gzip` listed with a
/// weight above 0, or, where `gzip` is not listed, `*` with one (RFC 9110,
/// 12.5.3). Parameter names are case-insensitive.
fn accepts_gzip<'a>(values: impl IntoIterator<Item = &'a HeaderValue>) -> bool {
    let mut gzip = None;
    let mut any = None;
    for coding in values
        .into_iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
    {
        let mut parts = coding.split(';');
        let name = parts.next().unwrap_or("").trim();
        let weight = parts
            .filter_map(|parameter| {
                let (key, value) = parameter.split_once('=')?;
                key.trim()
                    .eq_ignore_ascii_case("q")
                    .then(|| value.trim().parse::<f32>().ok())
                    .flatten()
            })
            .next_back()
            .unwrap_or(1.0);
        if name.eq_ignore_ascii_case("gzip") {
            gzip = Some(gzip.map_or(weight, |old: f32| old.max(weight)));
        } else if name == "*" {
            any = Some(weight);
        }
    }
    gzip.or(any).is_some_and(|weight| weight > 0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accepts(values: &[&'static str]) -> bool {
        let values: Vec<HeaderValue> = values.iter().map(|v| HeaderValue::from_static(v)).collect();
        accepts_gzip(&values)
    }

    fn state(max_requests: usize) -> State {
        let (_, receiver) = watch::channel(Arc::new(Exposition::default()));
        State::new(
            ServeConfig {
                telemetry_path: "/metrics".to_string(),
                max_requests,
                max_connections: 10,
                web: Arc::new(std::sync::RwLock::new(Arc::new(WebConfig::plain()))),
                scrapes: None,
            },
            receiver,
        )
    }

    fn respond(state: &State, request: &Request<()>) -> Response<CountedBody> {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(state.respond(request))
    }

    fn get(path: &str) -> Request<()> {
        Request::get(path).body(()).unwrap()
    }

    #[test]
    fn a_sampler_that_stops_is_noticed() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let (sender, receiver) = watch::channel(Arc::new(Exposition::default()));
        let sampler = std::thread::spawn(move || {
            sender.send(Arc::new(Exposition::default())).unwrap();
            panic!("a sampler bug");
        });
        assert!(sampler.join().is_err());
        runtime.block_on(async {
            tokio::time::timeout(Duration::from_secs(60), sampler_stopped(receiver))
                .await
                .expect("the stopped sampler went unnoticed");
        });
    }

    #[test]
    fn requests_beyond_the_limit_get_503_until_one_finishes() {
        let state = state(2);
        let first = respond(&state, &get("/-/healthy"));
        let second = respond(&state, &get("/-/healthy"));
        assert_eq!(first.status(), StatusCode::OK);
        assert_eq!(second.status(), StatusCode::OK);
        assert_eq!(
            respond(&state, &get("/-/healthy")).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        drop(first);
        assert_eq!(respond(&state, &get("/-/healthy")).status(), StatusCode::OK);
        drop(second);
        assert_eq!(state.in_flight.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn no_limit_when_zero() {
        let state = state(0);
        let held: Vec<_> = (0..100)
            .map(|_| respond(&state, &get("/-/healthy")))
            .collect();
        assert!(
            held.iter()
                .all(|response| response.status() == StatusCode::OK)
        );
    }

    #[test]
    fn routes() {
        let state = state(0);
        assert_eq!(respond(&state, &get("/")).status(), StatusCode::OK);
        assert_eq!(
            respond(&state, &get("/nope")).status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            respond(&state, &get("/-/ready")).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        // Nothing rendered yet: no empty 200, gzip or not.
        let metrics = respond(&state, &get("/metrics"));
        assert_eq!(metrics.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(!metrics.headers().contains_key(header::CONTENT_ENCODING));
        let post = Request::post("/metrics").body(()).unwrap();
        let response = respond(&state, &post);
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(response.headers()[header::ALLOW], "GET, HEAD");
    }

    #[test]
    fn gzip_negotiation() {
        assert!(accepts(&["gzip"]));
        assert!(accepts(&["deflate, GZIP;q=0.5"]));
        assert!(accepts(&["identity", "gzip"]));
        assert!(accepts(&["*"]));
        assert!(!accepts(&[]));
        assert!(!accepts(&["identity"]));
        assert!(!accepts(&["gzip;q=0"]));
        assert!(!accepts(&["x-gzip-ish"]));
        // Refused by name, whatever `*` says; the parameter's name in any case.
        assert!(!accepts(&["gzip;q=0, *"]));
        assert!(!accepts(&["gzip;Q=0"]));
        assert!(!accepts(&["gzip; q=0.000"]));
        assert!(!accepts(&["*;q=0"]));
        assert!(accepts(&["*;q=0, gzip"]));
    }
}
