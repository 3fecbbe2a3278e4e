//! Redirects: which ones are followed, and by whom.
//!
//! [`super::Fetcher::send`] follows every hop itself (the HTTP client follows none), with a
//! request built afresh for each: on another origin, credentials, cookies, per-host and secret
//! headers of the job's origin stay behind. Every hop is checked by [`check`], and
//! `--max-redirects` counts every hop of a chain, same-origin or not.

use url::Url;

/// Why a redirect is refused, or `Ok` to follow it.
pub(crate) fn check(previous: &[Url], next: &Url, max: usize, allow_downgrade: bool) -> Result<(), String> {
    if !matches!(next.scheme(), "http" | "https") {
        return Err(format!(
            "refused redirect to a {}: URL (only http and https)",
            next.scheme()
        ));
    }
    if previous.iter().any(|seen| seen == next) {
        return Err("redirect loop".into());
    }
    // `previous` starts with the original URL, which is not a redirect.
    if previous.len() > max {
        return Err(format!("more than {max} redirects"));
    }
    if !allow_downgrade && next.scheme() == "http" && previous.last().is_some_and(|p| p.scheme() == "https") {
        return Err("refused redirect from https to http (--allow-https-downgrade allows it)".into());
    }
    Ok(())
}

/// True when `a` and `b` differ in scheme, host or port.
pub(crate) fn is_cross_origin(a: &Url, b: &Url) -> bool {
    a.scheme() != b.scheme() || a.host_str() != b.host_str() || a.port_or_known_default() != b.port_or_known_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn urls(list: &[&str]) -> Vec<Url> {
        list.iter().map(|u| Url::parse(u).unwrap()).collect()
    }

    #[test]
    fn checks() {
        let prev = urls(&["https://a/x"]);
        let next = |u: &str| Url::parse(u).unwrap();
        assert!(check(&prev, &next("https://b/y"), 10, false).is_ok());
        assert!(
            check(&prev, &next("http://b/y"), 10, false)
                .unwrap_err()
                .contains("https to http")
        );
        assert!(check(&prev, &next("http://b/y"), 10, true).is_ok());
        assert!(
            check(&prev, &next("ftp://b/y"), 10, true)
                .unwrap_err()
                .contains("only http")
        );
        assert!(
            check(&prev, &next("https://a/x"), 10, false)
                .unwrap_err()
                .contains("loop")
        );
        let long = urls(&["http://a/0", "http://a/1", "http://a/2"]);
        assert!(
            check(&long, &next("http://a/3"), 2, false)
                .unwrap_err()
                .contains("more than 2")
        );
        assert!(is_cross_origin(&next("http://a/"), &next("http://a:81/")));
        assert!(is_cross_origin(&next("http://a/"), &next("https://a/")));
        assert!(!is_cross_origin(&next("http://a/x"), &next("http://a:80/y")));
    }
}
