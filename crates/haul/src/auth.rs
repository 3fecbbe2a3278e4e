//! Credentials: per-host authorization (from flags or `.netrc`) and cookies (from a Netscape
//! `cookies.txt` file, the format browser exporters, yt-dlp and gallery-dl use).
//!
//! A credential belongs to one host and is sent only in requests to that host. When a redirect
//! leaves the origin, the HTTP client drops `Authorization` and `Cookie` (reqwest's
//! `remove_sensitive_headers`, checked by this project's tests). Nothing here is ever printed:
//! `Debug` shows host names only.

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
    auth: HashMap<String, Auth>,
    cookies: Vec<Cookie>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut hosts: Vec<&String> = self.auth.keys().collect();
        hosts.sort();
        f.debug_struct("Credentials")
            .field("auth_hosts", &hosts)
            .field("cookies", &self.cookies.len())
            .finish()
    }
}

impl Credentials {
    /// Sets the credential of `host` (a host name, without port), replacing any earlier one.
    ///
    /// ```
    /// let mut creds = haul::Credentials::default();
    /// creds.set("cdn.example.com", haul::Auth::Bearer("t0ken".into()));
    /// assert!(!format!("{creds:?}").contains("t0ken"));
    /// ```
    pub fn set(&mut self, host: &str, auth: Auth) {
        self.auth.insert(host.to_ascii_lowercase(), auth);
    }

    /// True when no credential and no cookie is set.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.auth.is_empty() && self.cookies.is_empty()
    }

    /// Adds the machines of a `.netrc` file (`machine HOST login USER password PASS`). Hosts that
    /// already have a credential keep it: flags win over the file. Returns how many were added.
    ///
    /// # Errors
    /// A message naming the token that is out of place.
    pub fn add_netrc(&mut self, text: &str) -> Result<usize, String> {
        let mut tokens = text.split_whitespace();
        let mut added = 0;
        let mut current: Option<(String, Option<String>, Option<String>)> = None;
        let mut finish = |entry: Option<(String, Option<String>, Option<String>)>, this: &mut Self| {
            if let Some((host, Some(user), password)) = entry {
                let key = host.to_ascii_lowercase();
                if let std::collections::hash_map::Entry::Vacant(slot) = this.auth.entry(key) {
                    slot.insert(Auth::Basic { user, password });
                    added += 1;
                }
            }
        };
        while let Some(token) = tokens.next() {
            match token {
                "machine" => {
                    finish(current.take(), self);
                    let host = tokens.next().ok_or("netrc: 'machine' without a name")?;
                    current = Some((host.to_owned(), None, None));
                }
                // `default` applies to every host: too broad to send anywhere, so it is ignored.
                "default" => finish(current.take(), self),
                "login" | "password" | "account" => {
                    let value = tokens
                        .next()
                        .ok_or_else(|| format!("netrc: '{token}' without a value"))?;
                    if let Some(entry) = &mut current {
                        match token {
                            "login" => entry.1 = Some(value.to_owned()),
                            "password" => entry.2 = Some(value.to_owned()),
                            _ => {}
                        }
                    }
                }
                "macdef" => {
                    // A macro runs to the next blank line; it carries no credentials for us.
                    finish(current.take(), self);
                    let rest = text.split_once("macdef").map_or("", |(_, r)| r);
                    let after = rest.split_once("\n\n").map_or("", |(_, r)| r);
                    tokens = after.split_whitespace();
                }
                other => return Err(format!("netrc: unexpected token {other:?}")),
            }
        }
        finish(current.take(), self);
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
        self.auth.get(&url.host_str()?.to_ascii_lowercase())
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
        assert!(c.add_netrc("machine").is_err());
        assert!(!format!("{c:?}").contains("s3cret"));
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
