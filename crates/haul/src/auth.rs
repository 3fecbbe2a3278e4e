//! Credentials: per-host authorization (from flags or `.netrc`) and cookies (from a Netscape
//! `cookies.txt` file, the format browser exporters, yt-dlp and gallery-dl use).
//!
//! A credential belongs to an origin and is sent only in requests to it. Given for a bare host
//! (`--bearer cdn.example=…`, a netrc `machine`), it belongs to that host over https, on any
//! port; plain http gets it only when named explicitly (`--bearer http://host:8080=…`) or with
//! [`Credentials::allow_plain_http`], so a secret never crosses the network in clear by
//! accident. When a redirect leaves the origin the fetcher builds the next request without it.
//! Nothing here is ever printed: `Debug` shows origins only.

use std::collections::HashMap;
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use url::Url;

/// How to authenticate to one host.
#[derive(Clone, PartialEq, Eq)]
pub enum Auth {
    /// HTTP Basic (RFC 7617).
    Basic {
        /// The user name.
        user: String,
        /// The password, if any.
        password: Option<String>,
    },
    /// A bearer token (RFC 6750).
    Bearer(String),
}

/// One cookie of a `cookies.txt` file.
#[derive(Clone, PartialEq, Eq)]
struct Cookie {
    /// Lowercase domain without a leading dot.
    domain: String,
    /// True when subdomains match too (a leading dot or `TRUE` in the file).
    subdomains: bool,
    path: String,
    secure: bool,
    /// Unix seconds; 0 for a session cookie.
    expires: u64,
    name: String,
    value: String,
}

impl Cookie {
    fn matches(&self, url: &Url, now: u64) -> bool {
        let host = url.host_str().unwrap_or("").to_ascii_lowercase();
        let domain_ok = host == self.domain
            || (self.subdomains
                && host.len() > self.domain.len()
                && host.ends_with(&self.domain)
                && host.as_bytes()[host.len() - self.domain.len() - 1] == b'.');
        let path = url.path();
        // RFC 6265 §5.1.4: the cookie path is a prefix ending at a `/` boundary.
        let path_ok = path == self.path
            || (path.starts_with(&self.path)
                && (self.path.ends_with('/') || path.as_bytes().get(self.path.len()) == Some(&b'/')));
        domain_ok && path_ok && (!self.secure || url.scheme() == "https") && (self.expires == 0 || self.expires > now)
    }
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Basic { user, .. } => write!(f, "Basic({user}:***)"),
            Self::Bearer(_) => f.write_str("Bearer(***)"),
        }
    }
}

/// Credentials and cookies by host.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    /// By origin key (see [`origin_key`]).
    auth: HashMap<String, Auth>,
    cookies: Vec<Cookie>,
    plain_http: bool,
}

/// The key of a credential: `scheme://host:port` for an origin URL, the lowercase host alone
/// for a bare host name.
fn origin_key(text: &str) -> String {
    match Url::parse(text) {
        Ok(url) if text.contains("://") && url.host_str().is_some() => format!(
            "{}://{}:{}",
            url.scheme(),
            url.host_str().unwrap_or_default().to_ascii_lowercase(),
            url.port_or_known_default().unwrap_or(0)
        ),
        _ => text.trim_end_matches('/').to_ascii_lowercase(),
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut hosts: Vec<&String> = self.auth.keys().collect();
        hosts.sort();
        f.debug_struct("Credentials")
            .field("auth_origins", &hosts)
            .field("cookies", &self.cookies.len())
            .finish()
    }
}

impl Credentials {
    /// Sets the credential of `origin`, replacing any earlier one: a host name (https, any
    /// port) or an origin URL such as `http://127.0.0.1:8080` (that scheme, host and port).
    ///
    /// ```
    /// let mut creds = haul::Credentials::default();
    /// creds.set("cdn.example.com", haul::Auth::Bearer("t0ken".into()));
    /// assert!(!format!("{creds:?}").contains("t0ken"));
    /// ```
    pub fn set(&mut self, origin: &str, auth: Auth) {
        self.auth.insert(origin_key(origin), auth);
    }

    /// Lets credentials given for a bare host go over plain http too (`--allow-insecure-auth`).
    pub fn allow_plain_http(&mut self) {
        self.plain_http = true;
    }

    /// True when no credential and no cookie is set.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.auth.is_empty() && self.cookies.is_empty()
    }

    /// Adds the machines of a `.netrc` file (`machine HOST login USER password PASS`), parsed
    /// by the `rust-netrc` crate. Hosts that already have a credential keep it: flags win over
    /// the file. The `default` entry is never used (too broad to send anywhere). Returns how
    /// many were added.
    ///
    /// # Errors
    /// The line that does not parse (never its text: it may hold a password).
    pub fn add_netrc(&mut self, text: &str) -> Result<usize, String> {
        let parsed = text.parse::<netrc::Netrc>().map_err(|e| {
            // The crate's message quotes the offending token, which may be a password: keep
            // only its "(line N)".
            let text = e.to_string();
            let line = text.rsplit_once("(line ").map_or("?", |(_, n)| n.trim_end_matches(')'));
            format!("netrc: cannot parse line {line}")
        })?;
        let mut added = 0;
        let mut hosts: Vec<_> = parsed.hosts.into_iter().filter(|(h, _)| h != "default").collect();
        hosts.sort_by(|a, b| a.0.cmp(&b.0));
        for (host, entry) in hosts {
            if entry.login.is_empty() {
                continue;
            }
            if let std::collections::hash_map::Entry::Vacant(slot) = self.auth.entry(origin_key(&host)) {
                let password = (!entry.password.is_empty()).then_some(entry.password);
                slot.insert(Auth::Basic {
                    user: entry.login,
                    password,
                });
                added += 1;
            }
        }
        Ok(added)
    }

    /// Adds the cookies of a Netscape `cookies.txt` file. Returns how many were added.
    ///
    /// # Errors
    /// A message naming the line that is not seven tab-separated fields.
    pub fn add_cookies_txt(&mut self, text: &str) -> Result<usize, String> {
        let mut added = 0;
        for (number, line) in text.lines().enumerate() {
            // `#HttpOnly_` marks an HttpOnly cookie, not a comment.
            let line = line.strip_prefix("#HttpOnly_").unwrap_or(line);
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = line.split('\t').collect();
            let [domain, flag, path, secure, expires, name, value] = fields[..] else {
                return Err(format!(
                    "cookies.txt line {}: expected 7 tab-separated fields",
                    number + 1
                ));
            };
            let expires = expires
                .trim()
                .parse::<u64>()
                .map_err(|_| format!("cookies.txt line {}: expiry is not a number: {expires:?}", number + 1))?;
            self.cookies.push(Cookie {
                domain: domain.trim_start_matches('.').to_ascii_lowercase(),
                subdomains: domain.starts_with('.') || flag.eq_ignore_ascii_case("TRUE"),
                path: if path.is_empty() { "/".into() } else { path.to_owned() },
                secure: secure.eq_ignore_ascii_case("TRUE"),
                expires,
                name: name.to_owned(),
                value: value.to_owned(),
            });
            added += 1;
        }
        Ok(added)
    }

    /// The credential for `url`'s host, if any.
    pub(crate) fn auth_for(&self, url: &Url) -> Option<&Auth> {
        if self.auth.is_empty() {
            return None;
        }
        let host = url.host_str()?.to_ascii_lowercase();
        let exact = format!("{}://{host}:{}", url.scheme(), url.port_or_known_default().unwrap_or(0));
        if let Some(auth) = self.auth.get(&exact) {
            return Some(auth);
        }
        // A bare host's credential: https only, unless the user allowed plain http.
        (url.scheme() == "https" || self.plain_http)
            .then(|| self.auth.get(&host))
            .flatten()
    }

    /// The `Cookie` header value for `url`, if any cookie matches.
    pub(crate) fn cookie_header(&self, url: &Url) -> Option<String> {
        if self.cookies.is_empty() {
            return None;
        }
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let pairs: Vec<String> = self
            .cookies
            .iter()
            .filter(|c| c.matches(url, now))
            .map(|c| format!("{}={}", c.name, c.value))
            .collect();
        (!pairs.is_empty()).then(|| pairs.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(text: &str) -> Url {
        Url::parse(text).unwrap()
    }

    #[test]
    fn netrc_machines_and_precedence() {
        let mut c = Credentials::default();
        c.set("b.example", Auth::Bearer("flag".into()));
        let text = "machine a.example login alice password s3cret\n\
                    machine b.example login bob password x\n\
                    default login anon password anon\n\
                    macdef init\ncd /pub\n\nmachine c.example login carol\n";
        assert_eq!(c.add_netrc(text).unwrap(), 2);
        assert_eq!(
            c.auth_for(&url("https://A.example/x")),
            Some(&Auth::Basic {
                user: "alice".into(),
                password: Some("s3cret".into())
            })
        );
        assert_eq!(
            c.auth_for(&url("https://b.example/x")),
            Some(&Auth::Bearer("flag".into()))
        );
        assert!(c.auth_for(&url("https://c.example/x")).is_some());
        assert_eq!(
            c.auth_for(&url("https://other.example/x")),
            None,
            "default is never used"
        );
        assert!(c.add_netrc("machine").is_err() || c.add_netrc("machine").unwrap() == 0);
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    #[test]
    fn netrc_with_two_macros_ends() {
        // Issue 8: the old parser jumped back to the first macdef and never ended.
        let mut c = Credentials::default();
        let text = "macdef a\necho 1\n\nmacdef b\necho 2\n\nmachine h.example login u password p\n";
        assert_eq!(c.add_netrc(text).unwrap(), 1);
        assert!(c.auth_for(&url("https://h.example/")).is_some());
    }

    #[test]
    fn credentials_keep_to_their_origin_and_https() {
        let mut c = Credentials::default();
        c.set("a.example", Auth::Bearer("t".into()));
        c.set("http://b.example:8080", Auth::Bearer("u".into()));
        assert!(c.auth_for(&url("https://a.example:8443/x")).is_some());
        assert_eq!(c.auth_for(&url("http://a.example/x")), None, "no secret in clear");
        assert!(
            c.auth_for(&url("http://b.example:8080/x")).is_some(),
            "named explicitly"
        );
        assert_eq!(c.auth_for(&url("http://b.example:8081/x")), None, "another port");
        assert_eq!(c.auth_for(&url("https://b.example:8080/x")), None, "another scheme");
        c.allow_plain_http();
        assert!(c.auth_for(&url("http://a.example/x")).is_some());
    }

    #[test]
    fn cookies_match_domain_path_secure_and_expiry() {
        let mut c = Credentials::default();
        let text = "# Netscape HTTP Cookie File\n\
                    .example.com\tTRUE\t/\tFALSE\t0\tsid\tabc\n\
                    #HttpOnly_img.example.com\tFALSE\t/p\tTRUE\t4102444800\ttok\txyz\n\
                    old.test\tFALSE\t/\tFALSE\t1\tgone\t1\n";
        assert_eq!(c.add_cookies_txt(text).unwrap(), 3);
        assert_eq!(
            c.cookie_header(&url("http://www.example.com/a")).as_deref(),
            Some("sid=abc")
        );
        assert_eq!(
            c.cookie_header(&url("https://img.example.com/p/1.jpg")).as_deref(),
            Some("sid=abc; tok=xyz")
        );
        assert_eq!(
            c.cookie_header(&url("http://img.example.com/p/1.jpg")).as_deref(),
            Some("sid=abc"),
            "secure only over https"
        );
        assert_eq!(
            c.cookie_header(&url("https://img.example.com/px")).as_deref(),
            Some("sid=abc"),
            "path boundary"
        );
        assert_eq!(c.cookie_header(&url("http://notexample.com/")), None);
        assert_eq!(c.cookie_header(&url("http://old.test/")), None, "expired");
        assert!(c.add_cookies_txt("a\tb\n").unwrap_err().contains("line 1"));
    }
}
