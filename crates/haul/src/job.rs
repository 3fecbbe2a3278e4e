//! A job: one URL to fetch to one file, as read from the manifest.

use std::fmt;

use url::Url;

/// One download: where from, where to, and what the result must be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// The archive key: the manifest's `id`, else the URL (see [`ArchiveKey`](crate::ArchiveKey)).
    pub id: String,
    /// What to fetch (http or https).
    pub url: Url,
    /// The output path relative to the output directory, when the manifest gave one.
    pub path: Option<String>,
    /// The expected size in bytes, when known.
    pub size: Option<u64>,
    /// The expected SHA-256 of the file, when known.
    pub sha256: Option<[u8; 32]>,
    /// The expected MD5 of the file, when known.
    pub md5: Option<[u8; 16]>,
    /// Extra request headers for this job only.
    pub headers: Vec<(String, String)>,
    /// The manifest line the job came from (1-based; 0 for jobs not from a file).
    pub line: u64,
}

impl Job {
    /// A job for `url` with no expectations, keyed by the URL.
    ///
    /// ```
    /// let job = haul::Job::new(url::Url::parse("https://example.com/a.jpg").unwrap());
    /// assert_eq!(job.id, "https://example.com/a.jpg");
    /// ```
    #[must_use]
    pub fn new(url: Url) -> Self {
        Self {
            id: url.as_str().to_owned(),
            url,
            path: None,
            size: None,
            sha256: None,
            md5: None,
            headers: Vec::new(),
            line: 0,
        }
    }

    /// The job as one JSONL manifest line that `haul get -i -` runs unchanged: the real URL (it is
    /// data, like the manifest), the id when it is not the URL, the path, size and checksums the
    /// manifest gave, its headers but those named in `secret` (and `Authorization`, `Cookie`,
    /// `Proxy-Authorization`: they are given again on the command line, never stored), and the
    /// line it came from.
    ///
    /// ```
    /// let mut job = haul::Job::new(url::Url::parse("https://example.com/a?id=1").unwrap());
    /// job.headers = vec![("Referer".into(), "https://example.com/".into()), ("Cookie".into(), "s=1".into())];
    /// job.line = 7;
    /// assert_eq!(
    ///     job.to_manifest_line(&[]),
    ///     r#"{"headers":{"Referer":"https://example.com/"},"line":7,"url":"https://example.com/a?id=1"}"#
    /// );
    /// ```
    #[must_use]
    pub fn to_manifest_line(&self, secret: &[String]) -> String {
        let mut line = serde_json::Map::new();
        line.insert("url".into(), self.url.as_str().into());
        if self.id != self.url.as_str() {
            line.insert("id".into(), self.id.as_str().into());
        }
        if let Some(path) = &self.path {
            line.insert("path".into(), path.as_str().into());
        }
        if let Some(size) = self.size {
            line.insert("size".into(), size.into());
        }
        if let Some(sha256) = &self.sha256 {
            line.insert("sha256".into(), to_hex(sha256).into());
        }
        if let Some(md5) = &self.md5 {
            line.insert("md5".into(), to_hex(md5).into());
        }
        let headers: serde_json::Map<String, serde_json::Value> = self
            .headers
            .iter()
            .filter(|(name, _)| !crate::fetch::is_secret_header(name, secret))
            .map(|(name, value)| (name.clone(), value.as_str().into()))
            .collect();
        if !headers.is_empty() {
            line.insert("headers".into(), headers.into());
        }
        if self.line > 0 {
            line.insert("line".into(), self.line.into());
        }
        serde_json::Value::Object(line).to_string()
    }

    /// The URL with credentials and signatures hidden, for display.
    #[must_use]
    pub fn safe_url(&self) -> SafeUrl<'_> {
        SafeUrl(&self.url)
    }

    /// The key of the host the job talks to (`host:port`), used for per-host limits.
    #[must_use]
    pub fn host_key(&self) -> String {
        host_key(&self.url)
    }
}

/// `host:port` of a URL, the unit of politeness.
pub(crate) fn host_key(url: &Url) -> String {
    format!(
        "{}:{}",
        url.host_str().unwrap_or(""),
        url.port_or_known_default().unwrap_or(0)
    )
}

/// Displays a URL with its password and secret-looking query values replaced by `***`.
///
/// ```
/// let url = url::Url::parse("https://me:pw@cdn.example/a?X-Amz-Signature=abc&n=1").unwrap();
/// assert_eq!(haul::SafeUrl(&url).to_string(), "https://me:***@cdn.example/a?X-Amz-Signature=***&n=1");
/// ```
#[derive(Debug, Clone, Copy)]
pub struct SafeUrl<'a>(pub &'a Url);

/// Query parameter names (lowercase substrings) whose values are secrets in signed URLs.
const SECRET_PARAMS: &[&str] = &[
    "sig",
    "token",
    "key",
    "secret",
    "auth",
    "password",
    "passwd",
    "credential",
    "session",
    "x-amz-",
    "policy",
];

impl fmt::Display for SafeUrl<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let url = self.0;
        if url.password().is_none() && url.query().is_none_or(|q| !query_has_secret(q)) {
            return f.write_str(url.as_str());
        }
        let mut shown = url.clone();
        if shown.password().is_some() {
            // Only fails for URLs that cannot have credentials, which these have.
            let _ = shown.set_password(Some("***"));
        }
        if let Some(query) = url.query() {
            let redacted: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((name, _)) if is_secret_param(name) => format!("{name}=***"),
                    _ => pair.to_owned(),
                })
                .collect();
            shown.set_query(Some(&redacted.join("&")));
        }
        f.write_str(shown.as_str())
    }
}

pub(crate) fn is_secret_param(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    SECRET_PARAMS.iter().any(|s| lower.contains(s))
}

fn query_has_secret(query: &str) -> bool {
    query
        .split('&')
        .any(|pair| is_secret_param(pair.split_once('=').map_or(pair, |p| p.0)))
}

/// Parses a hex digest of exactly `N` bytes.
pub(crate) fn parse_hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    let text = text.trim();
    if text.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Lowercase hex of a digest.
///
/// ```
/// assert_eq!(haul::to_hex(&[0x00, 0xab, 0x10]), "00ab10");
/// ```
#[must_use]
pub fn to_hex(bytes: &[u8]) -> String {
    // A table, not `write!("{:02x}")`: this runs for every finished file.
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        text.push(char::from(DIGITS[usize::from(b >> 4)]));
        text.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_password_and_signatures_only() {
        let plain = Url::parse("http://h/a?n=1").unwrap();
        assert_eq!(SafeUrl(&plain).to_string(), "http://h/a?n=1");
        let signed = Url::parse("http://u:p@h/a?token=t&Signature=s&n=1").unwrap();
        let shown = SafeUrl(&signed).to_string();
        assert_eq!(shown, "http://u:***@h/a?token=***&Signature=***&n=1");
        assert!(!shown.contains(":p@"));
    }

    #[test]
    fn hex_round_trip() {
        let bytes = parse_hex::<4>("00ff10Ab").unwrap();
        assert_eq!(bytes, [0, 255, 16, 171]);
        assert_eq!(to_hex(&bytes), "00ff10ab");
        assert!(parse_hex::<4>("00ff10").is_none());
        assert!(parse_hex::<4>("zzff10ab").is_none());
    }
}
