//! The configuration file: settings per host, in a small INI-like format.
//!
//! ```text
//! # ~/haul.conf, given with --config
//! [host cdn.example.com]
//! header = Referer: https://example.com/
//! header = X-Api-Key: 0123456789
//! ```
//!
//! A header of a `[host NAME]` section is sent only in requests to that host (never to another
//! host a redirect leads to).

use anyhow::{Result, bail};

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
