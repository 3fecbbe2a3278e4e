//! One HTTP attempt: build the request, follow redirects, decide what the response head means
//! for the part file (the state machine in [`range`]), and stream the body into a sink.
//!
//! This module knows HTTP and nothing of paths, the archive or the display; it is the only one
//! that touches reqwest's types besides the engine's handle on a [`Response`].

mod classify;
mod range;
mod redirect;
pub(crate) mod tls;

use std::time::{Duration, SystemTime};

use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Client, Response};

pub use classify::classify;
pub(crate) use range::Decision;
use range::{Answer, Asked};

use std::collections::HashMap;

use reqwest::header::HeaderName;
use url::Url;

use crate::auth::{Auth, Credentials};
use crate::config::Config;
use crate::error::Error;
use crate::job::{Job, SafeUrl};

/// What we know that lets a `.part` file be continued.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Validators {
    pub(crate) etag: Option<String>,
    pub(crate) last_modified: Option<String>,
}

impl Validators {
    /// The `If-Range` value: a strong ETag, else Last-Modified (weak ETags are not allowed in
    /// If-Range, RFC 9110 §13.1.5).
    fn if_range(&self) -> Option<&str> {
        self.etag
            .as_deref()
            .filter(|e| !e.starts_with("W/"))
            .or(self.last_modified.as_deref())
    }

    /// True when a resumed request can be made safe by If-Range.
    pub(crate) fn allow_resume(&self) -> bool {
        self.if_range().is_some()
    }

    fn from_headers(headers: &HeaderMap) -> Self {
        let text = |name| {
            headers
                .get(name)
                .and_then(|v: &HeaderValue| v.to_str().ok())
                .map(str::to_owned)
        };
        Self {
            etag: text(header::ETAG),
            last_modified: text(header::LAST_MODIFIED),
        }
    }
}

/// The `Range` and `If-Range` of a request.
#[derive(Debug, Clone, Copy)]
struct Range<'a> {
    from: u64,
    /// Exclusive end (`None`: to the end of the file).
    to: Option<u64>,
    validator: &'a str,
}

/// A response whose head was accepted, and what it means for the part file.
#[derive(Debug)]
pub(crate) struct Head {
    /// The last status.
    pub(crate) status: u16,
    /// What to do with the body (never [`Decision::Restart`] or [`Decision::Status`]).
    pub(crate) decision: Decision,
    /// The response's validators.
    pub(crate) validators: Validators,
    /// The `Content-Disposition` header, if any.
    pub(crate) disposition: Option<String>,
    /// True when the body's end can be told from a cut connection: a length, chunked framing
    /// or HTTP/2 (a close-delimited HTTP/1 body cannot).
    pub(crate) framed: bool,
    /// The URL that answered, after redirects.
    pub(crate) url: url::Url,
    /// True when the server said it serves byte ranges (`Accept-Ranges: bytes`).
    pub(crate) ranges: bool,
}

impl Head {
    /// The file's total length, when this response tells it.
    pub(crate) fn total(&self) -> Option<u64> {
        match self.decision {
            Decision::Stream { total, .. } => total,
            Decision::Complete { total } => Some(total),
            _ => None,
        }
    }

    /// Where the body starts in the file.
    pub(crate) fn offset(&self) -> u64 {
        match self.decision {
            Decision::Stream { offset, .. } => offset,
            Decision::Complete { total } => total,
            _ => 0,
        }
    }
}

/// Response headers accepted at most.
const MAX_RESPONSE_HEADERS: usize = 100;

/// Everything one attempt needs besides the job: the client and what the user configured.
#[derive(Debug)]
pub(crate) struct Fetcher {
    client: Client,
    /// Headers for every request that carry no secret.
    headers: HeaderMap,
    /// Headers for every request that are secrets (`Authorization`, `Cookie`,
    /// `Proxy-Authorization`, and those named by `--secret-header`): sent to the job's own
    /// origin only.
    secret_headers: HeaderMap,
    /// Lowercase names of further secret headers (`--secret-header`).
    secret_names: Vec<String>,
    credentials: Credentials,
    host_headers: HashMap<String, HeaderMap>,
    /// Host rules and their headers (the first matching rule's are sent).
    rules: Vec<(crate::HostRule, HeaderMap)>,
    max_redirects: usize,
    allow_downgrade: bool,
    /// Hosts a redirect may take the job's credentials to (lowercase).
    trusted_hosts: Vec<String>,
}

impl Fetcher {
    /// Builds the HTTP client from the configuration.
    pub(crate) fn new(config: &Config) -> Result<Self, Error> {
        let mut builder = reqwest::Client::builder()
            .user_agent(config.user_agent.clone())
            .connect_timeout(config.connect_timeout)
            .read_timeout(config.read_timeout)
            .pool_max_idle_per_host(config.per_host)
            .tcp_nodelay(true)
            // A response head with more headers than this is refused (hyper also caps its size).
            .http1_max_headers(MAX_RESPONSE_HEADERS)
            // haul follows every hop itself: one count for the whole chain, and credentials
            // decided afresh for each origin (see `redirect`).
            .redirect(reqwest::redirect::Policy::none());
        if config.http2_prior_knowledge {
            builder = builder.http2_prior_knowledge();
        }
        if config.insecure {
            builder = builder.tls_danger_accept_invalid_certs(true);
        }
        if let Some(path) = &config.ca_certs
            && !config.insecure
        {
            let pem = std::fs::read(path).map_err(|e| Error::io("read CA bundle", path, e))?;
            let tls = tls::client_config(&pem, &path.display().to_string())?;
            builder = builder.tls_backend_preconfigured(tls);
        }
        if config.no_proxy {
            builder = builder.no_proxy();
        }
        if let Some(proxy) = &config.proxy {
            let proxy = reqwest::Proxy::all(proxy.as_str()).map_err(|_| Error::Url("bad --proxy URL".to_owned()))?;
            builder = builder.proxy(proxy);
        }
        let secret_names: Vec<String> = config.secret_headers.iter().map(|h| h.to_ascii_lowercase()).collect();
        let mut host_headers: HashMap<String, HeaderMap> = HashMap::new();
        for (host, name, value) in &config.host_headers {
            let map = host_headers.entry(host.to_ascii_lowercase()).or_default();
            append_header(map, name, value)?;
        }
        let mut rules = Vec::new();
        for rule in &config.host_rules {
            let mut map = HeaderMap::new();
            for (name, value) in &rule.headers {
                append_header(&mut map, name, value)?;
            }
            rules.push((rule.clone(), map));
        }
        let (mut headers, mut secret_headers) = (HeaderMap::new(), HeaderMap::new());
        for (name, value) in &config.headers {
            if is_secret_header(name, &secret_names) {
                append_header(&mut secret_headers, name, value)?;
            } else {
                append_header(&mut headers, name, value)?;
            }
        }
        Ok(Self {
            client: builder.build().map_err(Error::Network)?,
            headers,
            secret_headers,
            secret_names,
            credentials: config.credentials.clone(),
            host_headers,
            rules,
            max_redirects: config.max_redirects,
            allow_downgrade: config.allow_https_downgrade,
            trusted_hosts: config.trusted_hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
        })
    }

    /// True when the user allowed credentials to follow redirects to `url`'s host.
    fn is_trusted(&self, url: &Url) -> bool {
        url.host_str()
            .is_some_and(|h| self.trusted_hosts.iter().any(|t| t.eq_ignore_ascii_case(h)))
    }

    /// One GET for `url`. On the job's own origin (or a host the user trusts) it carries the
    /// job's credentials, cookies, per-host headers and secret headers; after a redirect to
    /// another origin (`own_origin` false) it carries none of them. On a trusted host the
    /// original origin's credentials are sent.
    fn request(&self, url: &Url, job: &Job, range: Option<Range<'_>>, own_origin: bool) -> reqwest::RequestBuilder {
        let mut request = self.client.get(url.clone()).headers(self.headers.clone());
        if own_origin {
            request = request.headers(self.secret_headers.clone());
            // The job's own origin decides (a trusted host gets the original host's secrets).
            let origin = &job.url;
            if let Some(own) = origin
                .host_str()
                .and_then(|h| self.host_headers.get(&h.to_ascii_lowercase()))
            {
                for (name, value) in own {
                    request = request.header(name, value);
                }
            }
            let port = origin.port_or_known_default().unwrap_or(0);
            if let Some((_, own)) = origin
                .host_str()
                .and_then(|h| self.rules.iter().find(|(rule, _)| rule.matches(h, port)))
            {
                for (name, value) in own {
                    request = request.header(name, value);
                }
            }
            // URL userinfo (already basic auth, set by the client) wins over stored credentials.
            if url.username().is_empty() {
                request = match self.credentials.auth_for(origin) {
                    Some(Auth::Basic { user, password }) => request.basic_auth(user, password.as_deref()),
                    Some(Auth::Bearer(token)) => request.bearer_auth(token),
                    None => request,
                };
            }
            if let Some(cookies) = self.credentials.cookie_header(origin) {
                request = request.header(header::COOKIE, cookies);
            }
        }
        // We store bytes as served: no compression means no decoded-size surprises, no bombs,
        // and byte ranges that mean what they say.
        request = request.header(header::ACCEPT_ENCODING, "identity");
        for (name, value) in &job.headers {
            if own_origin || !is_secret_header(name, &self.secret_names) {
                request = request.header(name.as_str(), value.as_str());
            }
        }
        if let Some(Range { from, to, validator }) = range {
            let bytes = match to {
                Some(to) => format!("bytes={from}-{}", to - 1),
                None => format!("bytes={from}-"),
            };
            request = request.header(header::RANGE, bytes).header(header::IF_RANGE, validator);
        }
        request
    }

    /// Sends one GET for `job`, asking for bytes from `offset` when a resumable part exists
    /// (up to `end`, exclusive, for a segment), follows redirects (every hop counted,
    /// credentials kept to their origin), and decides what the answer means for the part (see
    /// [`range`]).
    ///
    /// # Errors
    /// [`Error::Range`] when the answer cannot continue the part (the caller discards it),
    /// [`Error::Status`] for other statuses, [`Error::Redirect`] and [`Error::Network`].
    pub(crate) async fn send(
        &self,
        job: &Job,
        offset: u64,
        end: Option<u64>,
        validators: &Validators,
        known_total: Option<u64>,
    ) -> Result<(Head, Response), Error> {
        let range = validators
            .if_range()
            .filter(|_| offset > 0 || end.is_some())
            .map(|validator| Range {
                from: offset,
                to: end,
                validator,
            });
        let mut url = job.url.clone();
        let mut visited = vec![url.clone()];
        let response = loop {
            let own_origin = !redirect::is_cross_origin(&job.url, &url) || self.is_trusted(&url);
            // Logged: the URL redacted, the range, whether credentials go along; never a value
            // of a header.
            tracing::debug!(
                target: "haul::http",
                url = %SafeUrl(&url),
                from = ?range.map(|r| r.from),
                to = ?range.and_then(|r| r.to),
                credentials = own_origin,
                "request"
            );
            let sent = std::time::Instant::now();
            let response = self.request(&url, job, range, own_origin).send().await.map_err(|e| {
                let error = Error::Network(e.without_url());
                tracing::debug!(target: "haul::http", url = %SafeUrl(&url), %error, "no response");
                error
            })?;
            tracing::debug!(
                target: "haul::http",
                url = %SafeUrl(&url),
                status = response.status().as_u16(),
                ttfb_ms = u64::try_from(sent.elapsed().as_millis()).unwrap_or(u64::MAX),
                length = ?response.content_length(),
                version = ?response.version(),
                "response"
            );
            if !response.status().is_redirection() {
                break response;
            }
            let Some(location) = response.headers().get(header::LOCATION) else {
                break response;
            };
            let location = location
                .to_str()
                .map_err(|_| Error::Redirect("a Location header that is not text".into()))?;
            let next = url
                .join(location)
                .map_err(|_| Error::Redirect("a Location that is not a URL".into()))?;
            redirect::check(&visited, &next, self.max_redirects, self.allow_downgrade).map_err(Error::Redirect)?;
            visited.push(next.clone());
            url = next;
        };
        let headers = response.headers();
        let text = |name| headers.get(name).and_then(|v: &HeaderValue| v.to_str().ok());
        let validators_got = Validators::from_headers(headers);
        let content_length = response.content_length();
        let chunked = text(header::TRANSFER_ENCODING).is_some_and(|t| t.to_ascii_lowercase().contains("chunked"));
        let framed = content_length.is_some() || chunked || response.version() >= reqwest::Version::HTTP_2;
        let accepts_ranges = text(header::ACCEPT_RANGES).is_some_and(|v| v.eq_ignore_ascii_case("bytes"))
            || response.status() == reqwest::StatusCode::PARTIAL_CONTENT;
        let decision = range::decide(
            Asked {
                offset: if range.is_some() { offset } else { 0 },
                end: range.and(end),
                validators,
                known_total,
            },
            Answer {
                status: response.status().as_u16(),
                content_range: text(header::CONTENT_RANGE),
                content_length,
                validators: &validators_got,
            },
        );
        match decision {
            Decision::Restart(why) => Err(Error::Range(why)),
            Decision::Status => Err(Error::Status {
                status: response.status().as_u16(),
                retry_after: retry_after(headers),
            }),
            decision => Ok((
                Head {
                    status: response.status().as_u16(),
                    decision,
                    disposition: text(header::CONTENT_DISPOSITION).map(str::to_owned),
                    validators: validators_got,
                    framed,
                    url,
                    ranges: accepts_ranges,
                },
                response,
            )),
        }
    }
}

/// Where a body goes: the engine's part writer, or a test's buffer.
pub(crate) trait BodySink {
    /// Appends bytes.
    async fn write(&mut self, data: bytes::Bytes) -> Result<(), Error>;
    /// Bytes of the file so far (a resumed prefix included).
    fn total(&self) -> u64;
}

/// What bounds a body as it streams.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct BodyLimits {
    /// The file's expected length: the first byte past it fails the attempt.
    pub(crate) expected: Option<u64>,
    /// `--max-size`.
    pub(crate) max_size: Option<u64>,
    /// `--lowest-speed`: (bytes per second, over this window).
    pub(crate) lowest_speed: Option<(u64, Duration)>,
}

/// Byte budgets a body takes from as it streams (`--limit-rate`).
pub(crate) trait Throttle {
    /// Takes `bytes`; how long to wait before reading on.
    fn take(&self, bytes: u64) -> Duration;
}

/// How a body loop ended without error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyEnd {
    /// The server ended the body.
    Complete,
    /// The run was cancelled; the sink holds what arrived.
    Cancelled,
}

/// Streams `response`'s body into `sink`, enforcing `limits`, until it ends, fails or
/// `cancel` turns true. `on_bytes` sees every chunk's length.
///
/// # Errors
/// [`Error::Network`] mid-body, [`Error::TooLarge`], [`Error::Verify`] (longer than expected),
/// [`Error::TooSlow`], or the sink's error.
pub(crate) async fn stream_body<S: BodySink>(
    response: &mut Response,
    sink: &mut S,
    limits: BodyLimits,
    mut on_bytes: impl FnMut(u64),
    throttle: Option<&(dyn Throttle + Sync)>,
    cancel: &mut tokio::sync::watch::Receiver<bool>,
) -> Result<BodyEnd, Error> {
    let mut window = (std::time::Instant::now(), 0u64);
    loop {
        let chunk = tokio::select! {
            biased;
            chunk = response.chunk() => chunk.map_err(|e| Error::Network(e.without_url()))?,
            _ = cancel.wait_for(|c| *c) => return Ok(BodyEnd::Cancelled),
        };
        let Some(chunk) = chunk else {
            return Ok(BodyEnd::Complete);
        };
        let len = chunk.len() as u64;
        let after = sink.total().saturating_add(len);
        if let Some(limit) = limits.max_size.filter(|&l| after > l) {
            return Err(Error::TooLarge { limit });
        }
        if let Some(expected) = limits.expected.filter(|&e| after > e) {
            return Err(Error::Verify(format!(
                "the body is longer than the expected {expected} bytes"
            )));
        }
        on_bytes(len);
        sink.write(chunk).await?;
        if let Some(wait) = throttle.map(|t| t.take(len)).filter(|w| !w.is_zero()) {
            tokio::select! {
                biased;
                () = tokio::time::sleep(wait) => {}
                _ = cancel.wait_for(|c| *c) => return Ok(BodyEnd::Cancelled),
            }
        }
        if let Some((lowest, span)) = limits.lowest_speed {
            window.1 += len;
            let elapsed = window.0.elapsed();
            if elapsed >= span {
                let rate = u64::try_from(u128::from(window.1) * 1000 / elapsed.as_millis().max(1)).unwrap_or(u64::MAX);
                if rate < lowest {
                    return Err(Error::TooSlow { rate, window: span });
                }
                window = (std::time::Instant::now(), 0);
            }
        }
    }
}

/// Headers that carry secrets: never sent to an origin other than the job's own, whether they
/// come from `-H`, the manifest or `--secret-header`.
/// True for headers whose values are secrets: `Authorization`, `Cookie`, `Cookie2`,
/// `Proxy-Authorization` and the `--secret-header` names in `extra`.
pub(crate) fn is_secret_header(name: &str, extra: &[String]) -> bool {
    ["authorization", "cookie", "cookie2", "proxy-authorization"]
        .iter()
        .any(|h| name.eq_ignore_ascii_case(h))
        || extra.iter().any(|h| name.eq_ignore_ascii_case(h))
}

fn append_header(map: &mut HeaderMap, name: &str, value: &str) -> Result<(), Error> {
    let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| Error::Url(format!("bad header name {name:?}")))?;
    let value = HeaderValue::from_str(value).map_err(|_| Error::Url(format!("bad value for header {name}")))?;
    map.append(name, value);
    Ok(())
}

/// `Retry-After` as delay-seconds or an HTTP-date (RFC 9110 §10.2.3).
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(when.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_forms() {
        let mut h = HeaderMap::new();
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        let later = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(30));
        h.insert(header::RETRY_AFTER, HeaderValue::from_str(&later).unwrap());
        let d = retry_after(&h).unwrap();
        assert!(d > Duration::from_secs(25) && d <= Duration::from_secs(30), "{d:?}");
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn if_range_prefers_strong_etag() {
        let v = Validators {
            etag: Some("W/\"x\"".into()),
            last_modified: Some("Tue, 01 Jan 2030 00:00:00 GMT".into()),
        };
        assert_eq!(v.if_range(), v.last_modified.as_deref());
        let strong = Validators {
            etag: Some("\"x\"".into()),
            last_modified: None,
        };
        assert_eq!(strong.if_range(), Some("\"x\""));
        assert!(!Validators::default().allow_resume());
    }
}
