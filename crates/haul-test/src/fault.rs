//! A fault-injecting HTTP server on 127.0.0.1 (HTTP/1.1 and h2c).
//!
//! Every path `/f/NAME?size=N` serves N deterministic bytes (see [`body_for`]) with an ETag,
//! Last-Modified and Range support. Query parameters script faults for that URL, so a test's
//! manifest says exactly what goes wrong where:
//!
//! | parameter | effect |
//! |---|---|
//! | `times=N` | faults below apply to the first N requests of the path only (default: all) |
//! | `status=CODE`, `retry_after=S` | answer CODE (with `Retry-After: S`) instead of the file |
//! | `delay=MS` | wait before answering |
//! | `rate=BYTES_PER_SEC` | throttle the body (each response on its own: a per-connection limit) |
//! | `slow_first=F` | the first request of the path is throttled F times slower than `rate` |
//! | `reset=N` | abort the connection after N body bytes |
//! | `short=N` | announce the full Content-Length but send N bytes and close |
//! | `stall=1` | send the headers, then nothing |
//! | `etag=changing` | a new ETag (and content version) on every request |
//! | `norange=1` | no `Accept-Ranges`, and Range ignored: always 200 with the whole body |
//! | `norange=lie` | `Accept-Ranges: bytes`, yet Range ignored |
//! | `badrange=1` | answer a Range with a Content-Range that starts elsewhere |
//! | `novalidators=1` | send no ETag and no Last-Modified |
//! | `chunked=1` | no Content-Length |
//! | `disposition=TEXT` | send `Content-Disposition: TEXT` (percent-decoded) |
//! | `filler_headers=N` | send N extra 64-byte headers |
//!
//! `/redirect?to=URL` answers 302 to the (percent-encoded) URL, `/hop/N` starts a chain of N
//! redirects ending at `/f/hop.bin?size=100`, and `/loop` redirects to itself.
//!
//! A [`Mix`] adds seeded random faults to every request. The server counts requests per path
//! and records request headers, for assertions.

use std::collections::HashMap;
use std::convert::Infallible;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

type Body = BoxBody<Bytes, std::io::Error>;

/// Seeded random faults applied to every request, in percent.
#[derive(Debug, Clone, Copy, Default)]
pub struct Mix {
    /// Seed of the draws (the same seed gives the same faults for the same request order).
    pub seed: u64,
    /// 503 with `Retry-After: 0`.
    pub unavailable: u8,
    /// Connection reset mid-body.
    pub reset: u8,
    /// Short body with a longer Content-Length.
    pub short: u8,
    /// A changed ETag (and content version) when the request is a resume.
    pub changed_validator: u8,
    /// The `Retry-After` (seconds) of the random 503s.
    pub retry_after: u64,
}

/// The deterministic content of `/f/NAME?size=N` (version 0).
#[must_use]
pub fn body_for(name: &str, size: u64) -> Vec<u8> {
    body_version(name, size, 0)
}

/// The bytes the server sends for `name` when its ETag ends in `-v{version}` (`etag=changing`
/// serves a new version on each request).
#[must_use]
pub fn body_version(name: &str, size: u64, version: u64) -> Vec<u8> {
    let mut hasher = DefaultHasher::new();
    name.hash(&mut hasher);
    version.hash(&mut hasher);
    let mut state = hasher.finish() | 1;
    let len = usize::try_from(size).expect("test sizes fit in memory");
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Lowercase hex SHA-256 of `data`.
#[must_use]
pub fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect()
}

/// The BLAKE3 of `data` in lowercase hex (the archive's default digest).
#[must_use]
pub fn blake3_hex(data: &[u8]) -> String {
    blake3::hash(data).to_hex().to_string()
}

/// A server that can serve only `k` requests at once, each taking `latency`.
#[derive(Debug, Clone, Copy)]
pub struct Capacity {
    /// Requests served at once.
    pub k: usize,
    /// How long each takes before its answer starts.
    pub latency: Duration,
    /// What happens to a request beyond `k`.
    pub beyond: Beyond,
}

/// What a [`Capacity`] server does with a request beyond its capacity.
#[derive(Debug, Clone, Copy)]
pub enum Beyond {
    /// Answer `429 Too Many Requests` with `Retry-After` (seconds), after the latency.
    Refuse {
        /// The Retry-After, in seconds.
        retry_after: u64,
    },
    /// Queue it until one of the `k` finishes.
    Queue,
}

/// One answered request: when (since the server started), its path and status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logged {
    /// When the request arrived.
    pub at: Duration,
    /// The path.
    pub path: String,
    /// The status answered.
    pub status: u16,
}

/// A body's name, size and version.
type BodyKey = (String, u64, u64);

#[derive(Default)]
struct State {
    hits: Mutex<HashMap<String, u64>>,
    headers: Mutex<Vec<(String, HeaderMap)>>,
    total: AtomicU64,
    mix: Mix,
    capacity: Option<Capacity>,
    serving: std::sync::atomic::AtomicUsize,
    queue: Option<tokio::sync::Semaphore>,
    started: Option<std::time::Instant>,
    log: Mutex<Vec<Logged>>,
    /// Requests being answered now (until their head is sent), and the most there ever were.
    answering: std::sync::atomic::AtomicUsize,
    peak: std::sync::atomic::AtomicUsize,
    /// The last large bodies made (range requests of one big file share them).
    bodies: Mutex<Vec<(BodyKey, Bytes)>>,
}

impl State {
    /// The body of `name` at `version`, made once while it is among the last few large ones.
    fn body(&self, name: &str, size: u64, version: u64) -> Bytes {
        if size < 1 << 20 {
            return Bytes::from(body_version(name, size, version));
        }
        let key = (name.to_owned(), size, version);
        let mut bodies = self.bodies.lock().expect("bodies");
        if let Some((_, body)) = bodies.iter().find(|(k, _)| *k == key) {
            return body.clone();
        }
        let body = Bytes::from(body_version(name, size, version));
        if bodies.len() >= 4 {
            bodies.remove(0);
        }
        bodies.push((key, body.clone()));
        body
    }
}

/// A running fault server; stops when dropped.
pub struct FaultServer {
    addr: SocketAddr,
    state: Arc<State>,
    stop: Option<oneshot::Sender<()>>,
}

impl std::fmt::Debug for FaultServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl FaultServer {
    /// Starts a server on an ephemeral port of 127.0.0.1, on the current tokio runtime.
    ///
    /// # Panics
    /// When the port cannot be bound.
    pub async fn start() -> Self {
        Self::start_with(Mix::default(), "127.0.0.1:0").await
    }

    /// Starts a server with random faults, on `bind` (`127.0.0.1:0` for an ephemeral port).
    ///
    /// # Panics
    /// When the port cannot be bound.
    pub async fn start_with(mix: Mix, bind: &str) -> Self {
        Self::start_full(mix, None, bind).await
    }

    /// Starts a server that serves at most `capacity.k` requests at once, on 127.0.0.1.
    ///
    /// # Panics
    /// When the port cannot be bound.
    pub async fn start_with_capacity(capacity: Capacity) -> Self {
        Self::start_full(Mix::default(), Some(capacity), "127.0.0.1:0").await
    }

    /// Starts a server with random faults and a capacity (`usize::MAX` for any load, to add
    /// latency only), on `bind`.
    ///
    /// # Panics
    /// When the port cannot be bound.
    pub async fn start_with_both(mix: Mix, capacity: Capacity, bind: &str) -> Self {
        Self::start_full(mix, Some(capacity), bind).await
    }

    async fn start_full(mix: Mix, capacity: Option<Capacity>, bind: &str) -> Self {
        let listener = TcpListener::bind(bind).await.expect("bind fault server");
        let addr = listener.local_addr().expect("local addr");
        let state = Arc::new(State {
            mix,
            capacity,
            queue: capacity.map(|c| tokio::sync::Semaphore::new(c.k.min(tokio::sync::Semaphore::MAX_PERMITS))),
            started: Some(std::time::Instant::now()),
            ..State::default()
        });
        let (stop_tx, mut stop_rx) = oneshot::channel();
        let server_state = Arc::clone(&state);
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = &mut stop_rx => break,
                    accepted = listener.accept() => accepted,
                };
                let Ok((stream, _)) = accepted else { continue };
                let state = Arc::clone(&server_state);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let state = Arc::clone(&state);
                        async move { Ok::<_, Infallible>(handle(&state, req).await) }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            state,
            stop: Some(stop_tx),
        }
    }

    /// `http://127.0.0.1:PORT`.
    #[must_use]
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The URL of a served file.
    #[must_use]
    pub fn url(&self, name: &str, size: u64, faults: &str) -> String {
        if faults.is_empty() {
            format!("{}/f/{name}?size={size}", self.base())
        } else {
            format!("{}/f/{name}?size={size}&{faults}", self.base())
        }
    }

    /// Requests seen for a path (`/f/NAME`).
    #[must_use]
    pub fn hits(&self, path: &str) -> u64 {
        self.state.hits.lock().expect("hits").get(path).copied().unwrap_or(0)
    }

    /// The most requests the server was answering at once (each until its head was sent: with
    /// `delay=MS`, how many the clients had waiting at once).
    #[must_use]
    pub fn peak_answering(&self) -> usize {
        self.state.peak.load(Ordering::SeqCst)
    }

    /// Requests seen in all.
    #[must_use]
    pub fn total_hits(&self) -> u64 {
        self.state.total.load(Ordering::Relaxed)
    }

    /// Every request answered, in order (status and arrival time).
    #[must_use]
    pub fn log(&self) -> Vec<Logged> {
        self.state.log.lock().expect("log").clone()
    }

    /// Request headers seen, in arrival order (the most recent 10,000).
    #[must_use]
    pub fn headers_seen(&self) -> Vec<(String, HeaderMap)> {
        self.state.headers.lock().expect("headers").clone()
    }
}

impl Drop for FaultServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into()).map_err(|never| match never {}).boxed()
}

fn draw(seed: u64, path: &str, hit: u64, salt: u8) -> u8 {
    let mut h = DefaultHasher::new();
    (seed, path, hit, salt).hash(&mut h);
    (h.finish() % 100) as u8
}

async fn handle(state: &State, req: Request<Incoming>) -> Response<Body> {
    let at = state.started.map(|s| s.elapsed()).unwrap_or_default();
    let path = req.uri().path().to_owned();
    let now = state.answering.fetch_add(1, Ordering::SeqCst) + 1;
    state.peak.fetch_max(now, Ordering::SeqCst);
    let response = match state.capacity {
        Some(capacity) => with_capacity(state, capacity, req).await,
        None => answer(state, req).await,
    };
    state.answering.fetch_sub(1, Ordering::SeqCst);
    let mut log = state.log.lock().expect("log");
    // Bounded: a long-running demo server keeps the first million requests.
    if log.len() < 1_000_000 {
        log.push(Logged {
            at,
            path,
            status: response.status().as_u16(),
        });
    }
    drop(log);
    response
}

/// Serves within the server's capacity: at most `k` at once, each after the latency.
async fn with_capacity(state: &State, capacity: Capacity, req: Request<Incoming>) -> Response<Body> {
    let serving = state.serving.fetch_add(1, Ordering::SeqCst) + 1;
    let response = match capacity.beyond {
        Beyond::Refuse { retry_after } if serving > capacity.k => {
            // A refusal costs the server nothing: it does not hold one of the k places.
            state.serving.fetch_sub(1, Ordering::SeqCst);
            tokio::time::sleep(capacity.latency).await;
            return Response::builder()
                .status(StatusCode::TOO_MANY_REQUESTS)
                .header("retry-after", retry_after.to_string())
                .body(full("too many\n"))
                .expect("response");
        }
        Beyond::Refuse { .. } => {
            tokio::time::sleep(capacity.latency).await;
            answer(state, req).await
        }
        Beyond::Queue => {
            let _permit = state.queue.as_ref().expect("queue").acquire().await.expect("open");
            tokio::time::sleep(capacity.latency).await;
            answer(state, req).await
        }
    };
    state.serving.fetch_sub(1, Ordering::SeqCst);
    response
}

async fn answer(state: &State, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let query: HashMap<String, String> = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|p| p.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect();
    let hit = {
        let mut hits = state.hits.lock().expect("hits");
        let n = hits.entry(path.clone()).or_insert(0);
        *n += 1;
        *n
    };
    state.total.fetch_add(1, Ordering::Relaxed);
    {
        let mut seen = state.headers.lock().expect("headers");
        if seen.len() >= 10_000 {
            seen.remove(0);
        }
        seen.push((path.clone(), req.headers().clone()));
    }
    let param = |name: &str| query.get(name).map(String::as_str);
    let number = |name: &str| param(name).and_then(|v| v.parse::<u64>().ok());
    // `only=K`: the K-th request alone gets the faults (a throttle applies to every request).
    let faulty = match number("only") {
        Some(k) => hit == k,
        None => number("times").is_none_or(|times| hit <= times),
    };

    if let Some(ms) = number("delay").filter(|_| faulty) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if path == "/redirect" {
        let to = param("to").unwrap_or("/");
        return Response::builder()
            .status(StatusCode::FOUND)
            .header("location", percent_decode(to))
            .body(full(Bytes::new()))
            .expect("response");
    }
    if path == "/loop" {
        return Response::builder()
            .status(StatusCode::FOUND)
            .header("location", "/loop")
            .body(full(Bytes::new()))
            .expect("response");
    }
    if let Some(hops) = path.strip_prefix("/hop/").and_then(|n| n.parse::<u64>().ok()) {
        // A chain of redirects: /hop/N -> /hop/N-1 -> ... -> /hop/0 -> the file `hop.bin`.
        let next = if hops == 0 {
            "/f/hop.bin?size=100".to_owned()
        } else {
            format!("/hop/{}", hops - 1)
        };
        return Response::builder()
            .status(StatusCode::FOUND)
            .header("location", next)
            .body(full(Bytes::new()))
            .expect("response");
    }
    let Some(name) = path.strip_prefix("/f/") else {
        return Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(full("not found\n"))
            .expect("response");
    };
    if let Some(code) = number("status").filter(|_| faulty) {
        let mut builder = Response::builder().status(u16::try_from(code).unwrap_or(500));
        if let Some(after) = param("retry_after") {
            builder = builder.header("retry-after", after);
        }
        return builder.body(full("scripted failure\n")).expect("response");
    }
    let mix = state.mix;
    if mix.unavailable > 0 && draw(mix.seed, &path, hit, 1) < mix.unavailable {
        return Response::builder()
            .status(StatusCode::SERVICE_UNAVAILABLE)
            .header("retry-after", mix.retry_after.to_string())
            .body(full("busy\n"))
            .expect("response");
    }

    let size = number("size").unwrap_or(1024);
    let resuming = req.headers().contains_key("range");
    let changed = (param("etag") == Some("changing"))
        || (resuming && mix.changed_validator > 0 && draw(mix.seed, &path, hit, 2) < mix.changed_validator);
    let version = if changed { hit } else { 0 };
    let etag = format!("\"{name}-{size}-v{version}\"");
    let body = state.body(name, size, version);

    // Range handling (RFC 9110 §14): honour `bytes=N-` and `bytes=N-M` when If-Range matches
    // the ETag.
    let mut start = 0u64;
    let mut last = size.saturating_sub(1);
    let mut partial = false;
    if let Some(range) = req.headers().get("range").and_then(|v| v.to_str().ok())
        && param("norange").is_none()
    {
        let if_range_ok = req
            .headers()
            .get("if-range")
            .is_none_or(|v| v.to_str().ok() == Some(etag.as_str()));
        let asked = range.strip_prefix("bytes=").and_then(|r| r.split_once('-'));
        let from = asked.and_then(|(a, _)| a.parse::<u64>().ok());
        let to = asked.and_then(|(_, b)| b.parse::<u64>().ok());
        if let Some(from) = from
            && if_range_ok
        {
            if from >= size {
                return Response::builder()
                    .status(StatusCode::RANGE_NOT_SATISFIABLE)
                    .header("content-range", format!("bytes */{size}"))
                    .body(full(Bytes::new()))
                    .expect("response");
            }
            start = from;
            last = to.map_or(last, |t| t.min(last));
            partial = true;
        }
    }
    let mut builder = Response::builder().status(if partial {
        StatusCode::PARTIAL_CONTENT
    } else {
        StatusCode::OK
    });
    if param("novalidators").is_none() {
        builder = builder
            .header("etag", HeaderValue::from_str(&etag).expect("etag"))
            .header("last-modified", "Wed, 01 Jan 2025 00:00:00 GMT");
    }
    if param("norange") != Some("1") {
        builder = builder.header("accept-ranges", "bytes");
    }
    for i in 0..number("filler_headers").unwrap_or(0) {
        builder = builder.header(format!("x-filler-{i}"), "x".repeat(64));
    }
    if let Some(disposition) = param("disposition") {
        builder = builder.header("content-disposition", percent_decode(disposition));
    }
    if partial {
        let shown = if param("badrange").is_some() { start + 1 } else { start };
        builder = builder.header("content-range", format!("bytes {shown}-{last}/{size}"));
    }
    let end = if partial { last + 1 } else { size };
    let data = body.slice(usize::try_from(start).expect("fits")..usize::try_from(end).expect("fits"));
    let announced = data.len() as u64;
    if param("chunked").is_none() {
        builder = builder.header("content-length", announced);
    }
    let mut cut: Option<u64> = None;
    if faulty {
        cut = number("reset").or_else(|| number("short"));
    }
    if mix.reset > 0 && draw(mix.seed, &path, hit, 3) < mix.reset {
        cut = Some(announced / 2);
    } else if mix.short > 0 && draw(mix.seed, &path, hit, 4) < mix.short {
        cut = Some(announced * 2 / 3);
    }
    let stall = faulty && param("stall").is_some();
    let rate = number("rate")
        .filter(|_| faulty || param("only").is_some())
        .map(|r| match number("slow_first") {
            Some(factor) if hit == 1 => (r / factor.max(1)).max(1),
            _ => r,
        });
    if cut.is_none() && !stall && rate.is_none() {
        return builder.body(full(data)).expect("response");
    }
    let (mut tx, body) = http_body_util::channel::Channel::<Bytes, std::io::Error>::new(4);
    tokio::spawn(async move {
        if stall {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            return;
        }
        let limit = cut.unwrap_or(announced).min(announced);
        let piece = rate.map_or(64 * 1024, |r| usize::try_from((r / 20).max(1)).unwrap_or(1024));
        let mut sent = 0usize;
        let end = usize::try_from(limit).expect("fits");
        while sent < end {
            let next = (sent + piece).min(end);
            if tx.send_data(data.slice(sent..next)).await.is_err() {
                return;
            }
            sent = next;
            if rate.is_some() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        if cut.is_some() {
            tx.abort(std::io::Error::other("scripted reset"));
        }
    });
    builder.body(body.boxed()).expect("response")
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        if bytes[i] == b'%'
            && let Some(b) = hex.and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
