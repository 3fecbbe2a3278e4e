//! The transfer state machine: what a response head means for the part file.
//!
//! One pure function, [`decide`], takes what the attempt asked for and what the server
//! answered, and returns what to do with the body. The rules, as a table (state × response →
//! action); every row has a unit test below and an end-to-end test in `tests/it/resume.rs`:
//!
//! | asked | answer | action |
//! |---|---|---|
//! | whole file | `200`, no `Content-Range` (or one naming the whole file) | stream from 0 |
//! | whole file | `200` with a partial `Content-Range` | restart (nothing stored) |
//! | whole file | `206` | restart: a range nobody asked for |
//! | resume at N | `206`, `Content-Range` starts at N, total equals the known total, the validator sent in `If-Range` comes back unchanged, lengths agree | continue at N |
//! | resume at N | `206`, anything else (other start, `*/T`, changed or missing validator, other total, unparsable) | restart: discard the part and its validators |
//! | resume at N | `200` (whole file) | new representation: truncate the part before any byte or validator is stored, stream from 0 |
//! | resume at N | `200` with a partial `Content-Range` | restart |
//! | resume at N | `416` naming total N, validators (if any) unchanged, N equal to the known total (if any) | the part is complete: verify it whole |
//! | resume at N | `416`, anything else | restart |
//! | segment N..M | `206`, `Content-Range` starts at N and ends by M, total and validator as for a resume | continue at N (the rest of the segment is asked again) |
//! | segment N..M | `200`, `416`, or a `206` that fails a check | restart the whole file |
//! | any | any other status | an HTTP error, classified by [`super::classify`] |
//!
//! "Restart" fails this attempt with [`crate::Error::Range`] (transient): the engine removes
//! the part and its validators, and the next attempt asks for the whole file. The retry budget
//! bounds it: a server that never answers sanely ends the job failed with the last reason.

use super::Validators;

/// What the attempt asked for.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Asked<'a> {
    /// The resume offset (0: the whole file).
    pub(crate) offset: u64,
    /// For a segment: the end of the range asked for (exclusive).
    pub(crate) end: Option<u64>,
    /// The validators stored with the part (sent as `If-Range` when resuming).
    pub(crate) validators: &'a Validators,
    /// The file's total length as an earlier response gave it.
    pub(crate) known_total: Option<u64>,
}

/// The parts of a response head that matter here.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Answer<'a> {
    pub(crate) status: u16,
    pub(crate) content_range: Option<&'a str>,
    pub(crate) content_length: Option<u64>,
    pub(crate) validators: &'a Validators,
}

/// What to do with the response body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Write the body at `offset` (0: truncate the part first); the file's total if known.
    Stream { offset: u64, total: Option<u64> },
    /// The part already holds the whole file of `total` bytes: verify it, read no body.
    Complete { total: u64 },
    /// Discard the part and its validators; the next attempt starts from 0.
    Restart(String),
    /// Not a success: an HTTP error for the classifier.
    Status,
}

/// The rule table of the module documentation.
pub(crate) fn decide(asked: Asked<'_>, answer: Answer<'_>) -> Decision {
    let segment = asked.end.is_some() && asked.validators.if_range().is_some();
    let resuming = (asked.offset > 0 || segment) && asked.validators.if_range().is_some();
    match answer.status {
        200 if segment => {
            Decision::Restart("200 OK to a segment request: the server ignored the range or the file changed".into())
        }
        416 if segment => Decision::Restart(format!("416 for a segment at {}", asked.offset)),
        200 => whole_file(answer),
        206 if !resuming => Decision::Restart("206 Partial Content to a request without Range".into()),
        206 => continued(asked, answer),
        416 if resuming => satisfied(asked, answer),
        _ => Decision::Status,
    }
}

/// A `200`: the whole representation, unless a `Content-Range` says it is a slice.
fn whole_file(answer: Answer<'_>) -> Decision {
    let Some(text) = answer.content_range else {
        return Decision::Stream {
            offset: 0,
            total: answer.content_length,
        };
    };
    match ContentRange::parse(text) {
        Some(ContentRange::Bytes {
            start: 0,
            end,
            total: Some(total),
        }) if end.checked_add(1) == Some(total) && answer.content_length.is_none_or(|l| l == total) => {
            Decision::Stream {
                offset: 0,
                total: Some(total),
            }
        }
        _ => Decision::Restart(format!("200 OK carrying a partial Content-Range {text:?}")),
    }
}

/// A `206` to a resume request: continued only when every check passes.
fn continued(asked: Asked<'_>, answer: Answer<'_>) -> Decision {
    let Some(text) = answer.content_range else {
        return Decision::Restart("206 without Content-Range".into());
    };
    let (start, end, total) = match ContentRange::parse(text) {
        Some(ContentRange::Bytes { start, end, total }) => (start, end, total),
        Some(ContentRange::Unsatisfied { .. }) => {
            return Decision::Restart(format!("206 with an unsatisfied Content-Range {text:?}"));
        }
        None => return Decision::Restart(format!("unparsable Content-Range {text:?}")),
    };
    if start != asked.offset {
        return Decision::Restart(format!("Content-Range starts at {start}, asked for {}", asked.offset));
    }
    if let Some(asked_end) = asked.end
        && end >= asked_end
    {
        return Decision::Restart(format!(
            "Content-Range {text:?} runs past the segment's end {asked_end}"
        ));
    }
    if let (Some(known), Some(total)) = (asked.known_total, total)
        && known != total
    {
        return Decision::Restart(format!("the file's length changed from {known} to {total}"));
    }
    let length = end - start + 1; // parse() guarantees end >= start, and end < u64::MAX here
    if answer.content_length.is_some_and(|l| l != length) {
        return Decision::Restart(format!(
            "Content-Length {} disagrees with Content-Range {text:?}",
            answer.content_length.unwrap_or_default()
        ));
    }
    if let Some(why) = validator_mismatch(asked.validators, answer.validators, true) {
        return Decision::Restart(why);
    }
    Decision::Stream {
        offset: start,
        total: total.or(asked.known_total),
    }
}

/// A `416` to a resume request: the part is complete only if the server names exactly its
/// length and nothing says the file changed.
fn satisfied(asked: Asked<'_>, answer: Answer<'_>) -> Decision {
    let total = match answer.content_range.and_then(ContentRange::parse) {
        Some(ContentRange::Unsatisfied { total }) => total,
        _ => return Decision::Restart(format!("416 for offset {} without bytes */LENGTH", asked.offset)),
    };
    if total != asked.offset || asked.known_total.is_some_and(|k| k != total) {
        return Decision::Restart(format!(
            "416 for offset {}: the server's length is {total}",
            asked.offset
        ));
    }
    if let Some(why) = validator_mismatch(asked.validators, answer.validators, false) {
        return Decision::Restart(why);
    }
    Decision::Complete { total }
}

/// Why the response's validators do not show the same representation as the part's, if they
/// do not. `required`: the validator sent in `If-Range` must come back (a `206` without it may
/// come from a server that ignores `If-Range`).
fn validator_mismatch(stored: &Validators, got: &Validators, required: bool) -> Option<String> {
    let strong = |v: &Validators| v.etag.clone().filter(|e| !e.starts_with("W/"));
    match (strong(stored), strong(got)) {
        (Some(a), Some(b)) if a != b => return Some(format!("the ETag changed from {a} to {b}")),
        (Some(_), Some(_)) => return None,
        (Some(a), None) if required => return Some(format!("the response lacks the ETag {a} asked for")),
        _ => {}
    }
    match (&stored.last_modified, &got.last_modified) {
        (Some(a), Some(b)) if a != b => Some(format!("Last-Modified changed from {a} to {b}")),
        (Some(a), None) if required && strong(stored).is_none() => {
            Some(format!("the response lacks the Last-Modified {a} asked for"))
        }
        _ => None,
    }
}

/// A parsed `Content-Range` (RFC 9110 §14.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ContentRange {
    /// `bytes START-END/TOTAL` or `bytes START-END/*`.
    Bytes { start: u64, end: u64, total: Option<u64> },
    /// `bytes */TOTAL`.
    Unsatisfied { total: u64 },
}

impl ContentRange {
    /// Parses the header; `None` when it is malformed or inconsistent (end before start, end
    /// past the total).
    pub(crate) fn parse(value: &str) -> Option<Self> {
        let rest = value.trim().strip_prefix("bytes")?;
        if !rest.starts_with([' ', '\t']) {
            return None;
        }
        let (range, total) = rest.trim_start().split_once('/')?;
        let total = match total.trim() {
            "*" => None,
            t => Some(parse_digits(t)?),
        };
        if range.trim() == "*" {
            return total.map(|total| Self::Unsatisfied { total });
        }
        let (start, end) = range.split_once('-')?;
        let (start, end) = (parse_digits(start.trim())?, parse_digits(end.trim())?);
        if end < start || end == u64::MAX || total.is_some_and(|t| end >= t) {
            return None;
        }
        Some(Self::Bytes { start, end, total })
    }
}

/// Digits only (no sign, no spaces), without overflow.
fn parse_digits(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn etag(e: &str) -> Validators {
        Validators {
            etag: Some(e.into()),
            last_modified: None,
        }
    }

    fn lm(date: &str) -> Validators {
        Validators {
            etag: None,
            last_modified: Some(date.into()),
        }
    }

    fn run(
        offset: u64,
        stored: &Validators,
        known: Option<u64>,
        status: u16,
        range: Option<&str>,
        length: Option<u64>,
        got: &Validators,
    ) -> Decision {
        decide(
            Asked {
                offset,
                end: None,
                validators: stored,
                known_total: known,
            },
            Answer {
                status,
                content_range: range,
                content_length: length,
                validators: got,
            },
        )
    }

    fn is_restart(d: &Decision) -> bool {
        matches!(d, Decision::Restart(_))
    }

    /// A segment request for `[from, to)` of a 100-byte file with ETag "a".
    fn segment(from: u64, to: u64, status: u16, range: Option<&str>, got: &Validators) -> Decision {
        decide(
            Asked {
                offset: from,
                end: Some(to),
                validators: &etag("\"a\""),
                known_total: Some(100),
            },
            Answer {
                status,
                content_range: range,
                content_length: None,
                validators: got,
            },
        )
    }

    #[test]
    fn segment_answers() {
        let a = etag("\"a\"");
        assert_eq!(
            segment(0, 50, 206, Some("bytes 0-49/100"), &a),
            Decision::Stream {
                offset: 0,
                total: Some(100)
            },
            "a segment from 0 is a range too"
        );
        assert_eq!(
            segment(50, 100, 206, Some("bytes 50-79/100"), &a),
            Decision::Stream {
                offset: 50,
                total: Some(100)
            },
            "less than asked: the rest is asked again"
        );
        assert!(
            is_restart(&segment(50, 80, 206, Some("bytes 50-99/100"), &a)),
            "past the end"
        );
        assert!(
            is_restart(&segment(50, 100, 206, Some("bytes 40-99/100"), &a)),
            "other start"
        );
        assert!(
            is_restart(&segment(50, 100, 206, Some("bytes 50-99/101"), &a)),
            "other total"
        );
        assert!(
            is_restart(&segment(50, 100, 206, Some("bytes 50-99/100"), &etag("\"b\""))),
            "changed"
        );
        assert!(
            is_restart(&segment(50, 100, 206, Some("bytes 50-99/100"), &Validators::default())),
            "no validator"
        );
        assert!(is_restart(&segment(0, 50, 200, None, &a)), "a 200 to a segment request");
        assert!(is_restart(&segment(50, 100, 416, Some("bytes */100"), &a)));
        assert_eq!(segment(50, 100, 503, None, &a), Decision::Status);
    }

    #[test]
    fn content_range_forms() {
        use ContentRange::{Bytes, Unsatisfied};
        let p = ContentRange::parse;
        assert_eq!(
            p("bytes 0-9/10"),
            Some(Bytes {
                start: 0,
                end: 9,
                total: Some(10)
            })
        );
        assert_eq!(
            p("bytes 5-9/*"),
            Some(Bytes {
                start: 5,
                end: 9,
                total: None
            })
        );
        assert_eq!(p("bytes */10"), Some(Unsatisfied { total: 10 }));
        for bad in [
            "bytes 9-5/10",
            "bytes 0-10/10",
            "items 0-1/2",
            "bytes x-1/2",
            "bytes */*",
            "bytes -1-5/10",
            "bytes0-1/2",
            "bytes 0-18446744073709551615/*",
            "bytes 0-99999999999999999999999/*",
        ] {
            assert_eq!(p(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn whole_file_requests() {
        let none = Validators::default();
        assert_eq!(
            run(0, &none, None, 200, None, Some(10), &none),
            Decision::Stream {
                offset: 0,
                total: Some(10)
            }
        );
        assert_eq!(
            run(0, &none, None, 200, Some("bytes 0-9/10"), Some(10), &none),
            Decision::Stream {
                offset: 0,
                total: Some(10)
            }
        );
        assert!(is_restart(&run(
            0,
            &none,
            None,
            200,
            Some("bytes 5-9/10"),
            Some(5),
            &none
        )));
        assert!(is_restart(&run(
            0,
            &none,
            None,
            206,
            Some("bytes 0-9/10"),
            Some(10),
            &none
        )));
        assert_eq!(run(0, &none, None, 404, None, None, &none), Decision::Status);
        assert_eq!(run(0, &none, None, 416, None, None, &none), Decision::Status);
        // A part without validators is never resumed: offset without If-Range is a fresh request.
        assert!(is_restart(&run(
            5,
            &none,
            None,
            206,
            Some("bytes 5-9/10"),
            Some(5),
            &none
        )));
    }

    #[test]
    fn resume_206_rows() {
        let e = etag("\"v1\"");
        let ok = run(5, &e, Some(10), 206, Some("bytes 5-9/10"), Some(5), &e);
        assert_eq!(
            ok,
            Decision::Stream {
                offset: 5,
                total: Some(10)
            }
        );
        // Every contradiction restarts.
        // (Content-Range, Content-Length, validators, known total)
        type Row<'a> = (Option<&'a str>, Option<u64>, Validators, Option<u64>);
        let rows: &[Row<'_>] = &[
            (Some("bytes 6-9/10"), Some(4), e.clone(), Some(10)), // another start
            (Some("bytes */10"), Some(0), e.clone(), Some(10)),   // unsatisfied in a 206
            (Some("bytes 5-9/12"), Some(5), e.clone(), Some(10)), // the total changed
            (Some("bytes 5-9/10"), Some(5), etag("\"v2\""), Some(10)), // the ETag changed
            (Some("bytes 5-9/10"), Some(5), Validators::default(), Some(10)), // no validator
            (Some("bytes 5-9/10"), Some(7), e.clone(), Some(10)), // lengths disagree
            (None, Some(5), e.clone(), Some(10)),                 // no Content-Range
            (Some("bytes 5-x/10"), Some(5), e.clone(), Some(10)), // unparsable
        ];
        for (range, length, got, known) in rows {
            let d = run(5, &e, *known, 206, *range, *length, got);
            assert!(is_restart(&d), "{range:?} {length:?} {got:?}: {d:?}");
        }
        // Unknown earlier total: the 206's total is taken.
        assert_eq!(
            run(5, &e, None, 206, Some("bytes 5-9/10"), None, &e),
            Decision::Stream {
                offset: 5,
                total: Some(10)
            }
        );
    }

    #[test]
    fn resume_with_last_modified() {
        let stored = lm("Wed, 01 Jan 2025 00:00:00 GMT");
        let same = run(5, &stored, Some(10), 206, Some("bytes 5-9/10"), Some(5), &stored);
        assert_eq!(
            same,
            Decision::Stream {
                offset: 5,
                total: Some(10)
            }
        );
        let changed = lm("Thu, 02 Jan 2025 00:00:00 GMT");
        assert!(is_restart(&run(
            5,
            &stored,
            Some(10),
            206,
            Some("bytes 5-9/10"),
            Some(5),
            &changed
        )));
        assert!(is_restart(&run(
            5,
            &stored,
            Some(10),
            206,
            Some("bytes 5-9/10"),
            Some(5),
            &Validators::default()
        )));
    }

    #[test]
    fn resume_200_is_a_new_representation() {
        let e = etag("\"v1\"");
        assert_eq!(
            run(5, &e, Some(10), 200, None, Some(12), &etag("\"v2\"")),
            Decision::Stream {
                offset: 0,
                total: Some(12)
            }
        );
        assert!(is_restart(&run(
            5,
            &e,
            Some(10),
            200,
            Some("bytes 5-9/10"),
            Some(5),
            &e
        )));
    }

    #[test]
    fn resume_416_rows() {
        let e = etag("\"v1\"");
        assert_eq!(
            run(10, &e, Some(10), 416, Some("bytes */10"), None, &Validators::default()),
            Decision::Complete { total: 10 }
        );
        assert_eq!(
            run(10, &e, None, 416, Some("bytes */10"), None, &e),
            Decision::Complete { total: 10 }
        );
        for (range, got, known) in [
            (Some("bytes */12"), Validators::default(), None), // the part is not the file
            (None, Validators::default(), None),               // no length named
            (Some("bytes */10"), etag("\"v2\""), None),        // the file changed
            (Some("bytes */10"), Validators::default(), Some(12)), // disagrees with the known total
        ] {
            let d = run(10, &e, known, 416, range, None, &got);
            assert!(is_restart(&d), "{range:?} {got:?}: {d:?}");
        }
    }
}
