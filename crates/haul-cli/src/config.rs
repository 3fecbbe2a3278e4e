//! The configuration file: TOML, with settings for every host and for some hosts.
//!
//! ```toml
//! # $XDG_CONFIG_HOME/haul/config.toml (~/.config/haul/config.toml), or --config FILE
//! per_host = 16          # every host; a flag given on the command line wins
//! rate = "20/s"
//! limit_rate = "10M"
//!
//! [hosts."cdn.example.com"]   # also "cdn.example.com:8443" or "*.example.com"
//! per_host = 4
//! rate = "5/s"
//! limit_rate = "2M"           # shared by every host the section matches
//! headers = { Referer = "https://example.com/" }
//! ```
//!
//! When several sections match a host, the most specific decides: a host with its port, then
//! an exact host, then the longest `*.` domain. Headers of a section are sent only to the hosts
//! it matches (never to another host a redirect leads to).
//!
//! The format of haul 0.1 (`[host NAME]` sections of `header = Name: value` lines) is still
//! read, with a note that it changed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use serde::Deserialize;

/// What a configuration file sets.
#[derive(Debug, Default)]
pub(crate) struct Settings {
    pub(crate) concurrency: Option<usize>,
    pub(crate) per_host: Option<usize>,
    pub(crate) adaptive: Option<bool>,
    pub(crate) rate: Option<haul::Rate>,
    pub(crate) limit_rate: Option<u64>,
    pub(crate) rules: Vec<haul::HostRule>,
    /// `(host, name, value)` from the old format.
    pub(crate) old_headers: Vec<(String, String, String)>,
    /// Something to tell the user (the old format).
    pub(crate) note: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    concurrency: Option<usize>,
    per_host: Option<usize>,
    adaptive: Option<bool>,
    rate: Option<String>,
    limit_rate: Option<toml::Value>,
    #[serde(default)]
    hosts: BTreeMap<String, Section>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Section {
    per_host: Option<usize>,
    rate: Option<String>,
    limit_rate: Option<toml::Value>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

/// The default location: `$XDG_CONFIG_HOME/haul/config.toml`, else `~/.config/haul/config.toml`.
pub(crate) fn default_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("haul").join("config.toml"))
}

fn size(value: &toml::Value, what: &str) -> Result<u64> {
    match value {
        toml::Value::Integer(n) => u64::try_from(*n).with_context(|| format!("{what} must not be negative")),
        toml::Value::String(text) => crate::args::parse_size(text).map_err(|e| anyhow::anyhow!("{what}: {e}")),
        _ => bail!("{what} must be a number of bytes or a size such as \"10M\""),
    }
}

/// Reads the configuration file at `path`.
pub(crate) fn load(path: &Path) -> Result<Settings> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read the configuration {origin}"))?;
    let file: File = match toml::from_str(&text) {
        Ok(file) => file,
        Err(error) => {
            if text.lines().any(|l| l.trim_start().starts_with("[host ")) {
                return Ok(Settings {
                    old_headers: host_headers(&text, &origin)?,
                    note: Some(format!(
                        "{origin} uses haul 0.1's format; it still works, but the format is now TOML: [hosts.\"NAME\"] headers = {{ Name = \"value\" }} (see the README)"
                    )),
                    ..Settings::default()
                });
            }
            bail!("{origin}: {error}");
        }
    };
    let rate = |text: &Option<String>, what: &str| -> Result<Option<haul::Rate>> {
        text.as_deref()
            .map(haul::Rate::parse)
            .transpose()
            .map_err(|e| anyhow::anyhow!("{origin}: {what}: {e}"))
    };
    let mut rules = Vec::new();
    for (pattern, section) in &file.hosts {
        let mut rule = haul::HostRule::new(pattern);
        rule.per_host = section.per_host;
        rule.rate = rate(&section.rate, &format!("hosts.{pattern:?}.rate"))?;
        rule.limit_rate = section
            .limit_rate
            .as_ref()
            .map(|v| size(v, &format!("{origin}: hosts.{pattern:?}.limit_rate")))
            .transpose()?;
        rule.headers = section.headers.iter().map(|(n, v)| (n.clone(), v.clone())).collect();
        rules.push(rule);
    }
    // The most specific first: with a port, then exact, then the longest domain.
    rules.sort_by_key(|r: &haul::HostRule| {
        let exact = !r.pattern.starts_with("*.");
        let port = r
            .pattern
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.bytes().all(|b| b.is_ascii_digit()));
        std::cmp::Reverse((port, exact, r.pattern.len()))
    });
    Ok(Settings {
        concurrency: file.concurrency,
        per_host: file.per_host,
        adaptive: file.adaptive,
        rate: rate(&file.rate, "rate")?,
        limit_rate: file
            .limit_rate
            .as_ref()
            .map(|v| size(v, &format!("{origin}: limit_rate")))
            .transpose()?,
        rules,
        old_headers: Vec::new(),
        note: None,
    })
}

/// `(host, header name, header value)` for every `header =` line of a host section.
pub(crate) fn host_headers(text: &str, origin: &str) -> Result<Vec<(String, String, String)>> {
    let mut host: Option<String> = None;
    let mut out = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = raw.trim();
        let number = index + 1;
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(section) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            match section.trim().strip_prefix("host ") {
                Some(name) if !name.trim().is_empty() => host = Some(name.trim().to_owned()),
                _ => bail!("{origin} line {number}: expected [host NAME], found [{section}]"),
            }
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            bail!("{origin} line {number}: expected `key = value`");
        };
        match (key.trim(), &host) {
            ("header", Some(host)) => {
                let Some((name, value)) = value.split_once(':') else {
                    bail!("{origin} line {number}: expected `header = Name: value`");
                };
                out.push((host.clone(), name.trim().to_owned(), value.trim().to_owned()));
            }
            ("header", None) => bail!("{origin} line {number}: `header` outside a [host NAME] section"),
            (other, _) => bail!("{origin} line {number}: unknown setting {other:?}"),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_settings_and_rules() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(
            &path,
            "per_host = 16\nrate = \"20/s\"\nlimit_rate = \"10M\"\n\n[hosts.\"*.example.com\"]\nper_host = 2\n\n[hosts.\"cdn.example.com\"]\nrate = \"5/s\"\nlimit_rate = 1000\nheaders = { Referer = \"https://example.com/\" }\n",
        )
        .unwrap();
        let settings = load(&path).unwrap();
        assert_eq!(settings.per_host, Some(16));
        assert_eq!(settings.limit_rate, Some(10 << 20));
        assert_eq!(settings.rules.len(), 2);
        assert_eq!(settings.rules[0].pattern, "cdn.example.com", "exact before wildcard");
        assert_eq!(settings.rules[0].limit_rate, Some(1000));
        assert_eq!(
            settings.rules[0].headers,
            vec![("Referer".into(), "https://example.com/".into())]
        );
        assert_eq!(settings.rules[1].per_host, Some(2));
        std::fs::write(&path, "per_hosts = 3\n").unwrap();
        assert!(load(&path).unwrap_err().to_string().contains("per_hosts"));
        std::fs::write(&path, "[host a.example]\nheader = X-Key: 1\n").unwrap();
        let old = load(&path).unwrap();
        assert_eq!(old.old_headers, vec![("a.example".into(), "X-Key".into(), "1".into())]);
        assert!(old.note.unwrap().contains("now TOML"));
    }

    #[test]
    fn sections_and_errors() {
        let text = "# c\n[host a.example]\nheader = X-Key: 1: 2\n\n[host b.example]\nheader=Referer: https://b/\n";
        let got = host_headers(text, "f").unwrap();
        assert_eq!(
            got,
            vec![
                ("a.example".into(), "X-Key".into(), "1: 2".into()),
                ("b.example".into(), "Referer".into(), "https://b/".into())
            ]
        );
        assert!(
            host_headers("header = A: b\n", "f")
                .unwrap_err()
                .to_string()
                .contains("line 1")
        );
        assert!(
            host_headers("[host x]\ncolour = red\n", "f")
                .unwrap_err()
                .to_string()
                .contains("unknown setting")
        );
        assert!(
            host_headers("[nope]\n", "f")
                .unwrap_err()
                .to_string()
                .contains("[host NAME]")
        );
    }
}
