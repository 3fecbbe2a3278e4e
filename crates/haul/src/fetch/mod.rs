//! One HTTP attempt: build the request, validate the response head, hand back the body.
//!
//! This module knows HTTP and nothing of paths, the archive or the display. It decides whether
//! a response continues a `.part` file (a `206` whose Content-Range starts exactly at our offset,
//! RFC 9110 §14.4) or restarts it (a `200`: the server ignored `Range`, or `If-Range` found the
//! validator changed), and turns every other status into a classified [`Error`].

mod classify;
mod redirect;

use std::time::{Duration, SystemTime};

use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Client, Response, StatusCode};

pub use classify::classify;

use std::collections::HashMap;

use reqwest::header::HeaderName;
use url::Url;

use crate::auth::{Auth, Credentials};
use crate::config::Config;
use crate::error::Error;
use crate::job::Job;

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

/// A response whose head was accepted.
#[derive(Debug)]
pub(crate) struct Head {
    /// The last status.
    pub(crate) status: u16,
    /// Where the body starts in the file: the resume offset for a 206, else 0.
    pub(crate) offset: u64,
    /// The full size of the file, when the server said.
    pub(crate) total: Option<u64>,
    /// The response's validators.
    pub(crate) validators: Validators,
    /// True when a 416 showed the `.part` file is already complete.
    pub(crate) already_complete: bool,
    /// The `Content-Disposition` header, if any.
    pub(crate) disposition: Option<String>,
}

/// Response headers accepted at most.
const MAX_RESPONSE_HEADERS: usize = 100;

/// Everything one attempt needs besides the job: the client and what the user configured.
#[derive(Debug)]
pub(crate) struct Fetcher {
    client: Client,
    headers: HeaderMap,
    credentials: Credentials,
    host_headers: HashMap<String, HeaderMap>,
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
            .redirect(redirect::policy(config.max_redirects, config.allow_https_downgrade));
        if config.http2_prior_knowledge {
            builder = builder.http2_prior_knowledge();
        }
        if config.insecure {
            builder = builder.tls_danger_accept_invalid_certs(true);
        }
        if let Some(path) = &config.ca_certs {
            let pem = std::fs::read(path).map_err(|e| Error::io("read CA bundle", path, e))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|_| Error::Url(format!("{} holds no PEM certificate", path.display())))?;
            builder = builder.tls_certs_merge(certs);
        }
        if config.no_proxy {
            builder = builder.no_proxy();
        }
        if let Some(proxy) = &config.proxy {
            let proxy =
                reqwest::Proxy::all(proxy.as_str()).map_err(|_| Error::Url(format!("bad --proxy {proxy:?}")))?;
            builder = builder.proxy(proxy);
        }
        let mut host_headers: HashMap<String, HeaderMap> = HashMap::new();
        for (host, name, value) in &config.host_headers {
            let map = host_headers.entry(host.to_ascii_lowercase()).or_default();
            append_header(map, name, value)?;
        }
        let mut headers = HeaderMap::new();
        for (name, value) in &config.headers {
            append_header(&mut headers, name, value)?;
        }
        Ok(Self {
            client: builder.build().map_err(Error::Network)?,
            headers,
            credentials: config.credentials.clone(),
            host_headers,
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
    /// job's credentials, cookies and per-host headers; after a redirect to another origin
    /// (`own_origin` false) it carries none of them, and no `Authorization`/`Cookie` from the
    /// manifest either. On a trusted host the original host's credentials are sent.
    fn request(&self, url: &Url, job: &Job, range: Option<(u64, &str)>, own_origin: bool) -> reqwest::RequestBuilder {
        let mut request = self.client.get(url.clone()).headers(self.headers.clone());
        if own_origin {
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
            if own_origin || !is_credential_header(name) {
                request = request.header(name.as_str(), value.as_str());
            }
        }
        if let Some((offset, validator)) = range {
            request = request
                .header(header::RANGE, format!("bytes={offset}-"))
                .header(header::IF_RANGE, validator);
        }
        request
    }

    /// Sends one GET for `job`, asking for bytes from `offset` when a resumable part exists,
    /// and follows redirects that leave the origin (see [`redirect`]).
    pub(crate) async fn send(
        &self,
        job: &Job,
        offset: u64,
        validators: &Validators,
    ) -> Result<(Head, Response), Error> {
        let range = validators.if_range().filter(|_| offset > 0).map(|v| (offset, v));
        let resuming = range.is_some();
        let mut url = job.url.clone();
        let mut visited = vec![url.clone()];
        let response = loop {
            let own_origin = !redirect::is_cross_origin(&job.url, &url) || self.is_trusted(&url);
            let response = self
                .request(&url, job, range, own_origin)
                .send()
                .await
                .map_err(Error::Network)?;
            let location = response
                .headers()
                .get(header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .filter(|_| response.status().is_redirection());
            let Some(location) = location else { break response };
            // The client stopped at a redirect to another origin: follow it here.
            let next = response
                .url()
                .join(location)
                .map_err(|_| Error::Redirect(format!("bad Location {location:?}")))?;
            visited.push(response.url().clone());
            redirect::check(&visited, &next, self.max_redirects, self.allow_downgrade).map_err(Error::Redirect)?;
            url = next;
        };
        let status = response.status();
        let head_validators = Validators::from_headers(response.headers());
        let content_length = response.content_length();
        let disposition = response
            .headers()
            .get(header::CONTENT_DISPOSITION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        match status {
            StatusCode::OK => Ok((
                Head {
                    status: 200,
                    offset: 0,
                    total: content_length,
                    validators: head_validators,
                    already_complete: false,
                    disposition: disposition.clone(),
                },
                response,
            )),
            StatusCode::PARTIAL_CONTENT => {
                if !resuming {
                    return Err(Error::Range("206 Partial Content to a request without Range".into()));
                }
                let range = response
                    .headers()
                    .get(header::CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .ok_or_else(|| Error::Range("206 without Content-Range".into()))?;
                let (start, end, total) = parse_content_range(range)
                    .ok_or_else(|| Error::Range(format!("unparsable Content-Range {range:?}")))?;
                if start != offset {
                    return Err(Error::Range(format!(
                        "Content-Range starts at {start}, asked for {offset}"
                    )));
                }
                if let (Some(len), Some(end)) = (content_length, end)
                    && len != end + 1 - start
                {
                    return Err(Error::Range(format!(
                        "Content-Length {len} disagrees with Content-Range {range:?}"
                    )));
                }
                if head_validators.etag.is_some()
                    && validators.etag.is_some()
                    && head_validators.etag != validators.etag
                {
                    return Err(Error::Range("ETag changed in a 206 response".into()));
                }
                let total = total.or_else(|| content_length.map(|l| l + offset));
                Ok((
                    Head {
                        status: 206,
                        offset,
                        total,
                        validators: head_validators,
                        already_complete: false,
                        disposition: disposition.clone(),
                    },
                    response,
                ))
            }
            StatusCode::RANGE_NOT_SATISFIABLE if resuming => {
                // RFC 9110 §15.5.17: "bytes */LENGTH" tells the current length; if our part already
                // has it all, it only needs verifying.
                let total = response
                    .headers()
                    .get(header::CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(parse_content_range)
                    .and_then(|(_, _, total)| total);
                if total == Some(offset) {
                    let head = Head {
                        status: 416,
                        offset,
                        total,
                        validators: validators.clone(),
                        already_complete: true,
                        disposition: disposition.clone(),
                    };
                    return Ok((head, response));
                }
                Err(Error::Range(format!(
                    "416 for offset {offset} (server length {total:?}); restarting"
                )))
            }
            _ => Err(Error::Status {
                status: status.as_u16(),
                retry_after: retry_after(response.headers()),
            }),
        }
    }
}

/// Headers that carry credentials: never sent to an origin other than the job's own.
fn is_credential_header(name: &str) -> bool {
    ["authorization", "cookie", "cookie2", "proxy-authorization"]
        .iter()
        .any(|h| name.eq_ignore_ascii_case(h))
}

fn append_header(map: &mut HeaderMap, name: &str, value: &str) -> Result<(), Error> {
    let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| Error::Url(format!("bad header name {name:?}")))?;
    let value = HeaderValue::from_str(value).map_err(|_| Error::Url(format!("bad value for header {name}")))?;
    map.append(name, value);
    Ok(())
}

/// Parses `bytes START-END/TOTAL`, `bytes START-END/*` or `bytes */TOTAL`.
pub(crate) fn parse_content_range(value: &str) -> Option<(u64, Option<u64>, Option<u64>)> {
    let rest = value.trim().strip_prefix("bytes")?.trim_start();
    let (range, total) = rest.split_once('/')?;
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    if range.trim() == "*" {
        return Some((0, None, total));
    }
    let (start, end) = range.split_once('-')?;
    let (start, end): (u64, u64) = (start.trim().parse().ok()?, end.trim().parse().ok()?);
    if end < start || total.is_some_and(|t| end >= t) {
        return None;
    }
    Some((start, Some(end), total))
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
    fn content_range_forms() {
        assert_eq!(parse_content_range("bytes 0-9/10"), Some((0, Some(9), Some(10))));
        assert_eq!(parse_content_range("bytes 5-9/*"), Some((5, Some(9), None)));
        assert_eq!(parse_content_range("bytes */10"), Some((0, None, Some(10))));
        assert_eq!(parse_content_range("bytes 9-5/10"), None);
        assert_eq!(parse_content_range("bytes 0-10/10"), None);
        assert_eq!(parse_content_range("items 0-1/2"), None);
        assert_eq!(parse_content_range("bytes x-1/2"), None);
    }

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
