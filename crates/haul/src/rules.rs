//! Settings for some hosts only: a pattern and what applies to the hosts it matches.
//!
//! Patterns: `cdn.example.com` (that host, any port), `cdn.example.com:8443` (that host and
//! port), `*.example.com` (every subdomain of example.com, not example.com itself). The first
//! rule that matches a host decides; what it leaves unset comes from the run's settings.

use crate::Rate;

/// What applies to the hosts a pattern matches.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HostRule {
    /// The pattern (see the module documentation).
    pub pattern: String,
    /// The ceiling of the adaptive limit (`--per-host` for these hosts).
    pub per_host: Option<usize>,
    /// Requests per second at most, per host.
    pub rate: Option<Rate>,
    /// Bytes per second at most, shared by every host the rule matches.
    pub limit_rate: Option<u64>,
    /// Headers sent to these hosts only (never to another host a redirect leads to).
    pub headers: Vec<(String, String)>,
}

impl HostRule {
    /// A rule for `pattern` that sets nothing yet.
    #[must_use]
    pub fn new(pattern: &str) -> Self {
        Self {
            pattern: pattern.trim().to_ascii_lowercase(),
            ..Self::default()
        }
    }

    /// True when the rule applies to `host` on `port`.
    ///
    /// ```
    /// let rule = haul::HostRule::new("*.example.com");
    /// assert!(rule.matches("img.example.com", 443));
    /// assert!(!rule.matches("example.com", 443));
    /// assert!(haul::HostRule::new("a.test:8080").matches("A.test", 8080));
    /// assert!(!haul::HostRule::new("a.test:8080").matches("a.test", 80));
    /// ```
    #[must_use]
    pub fn matches(&self, host: &str, port: u16) -> bool {
        let host = host.to_ascii_lowercase();
        let (pattern, want_port) = match self.pattern.rsplit_once(':') {
            Some((name, p)) if p.bytes().all(|b| b.is_ascii_digit()) && !p.is_empty() => (name, p.parse::<u16>().ok()),
            _ => (self.pattern.as_str(), None),
        };
        if want_port.is_some_and(|p| p != port) {
            return false;
        }
        match pattern.strip_prefix("*.") {
            Some(domain) => {
                host.len() > domain.len() + 1
                    && host.ends_with(domain)
                    && host.as_bytes()[host.len() - domain.len() - 1] == b'.'
            }
            None => host == pattern,
        }
    }
}

/// The index of the first rule matching a `host:port` key, if any.
pub(crate) fn find(rules: &[HostRule], key: &str) -> Option<usize> {
    let (host, port) = key.rsplit_once(':')?;
    let port = port.parse().ok()?;
    rules.iter().position(|r| r.matches(host, port))
}
