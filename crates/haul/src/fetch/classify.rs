//! The one place where an [`Error`] becomes an [`ErrorClass`].

use std::io;

use crate::error::{Error, ErrorClass, is_disk_full, is_out_of_files};

/// Classifies an error once; the retry loop acts only on the class.
///
/// ```
/// use haul::{Error, ErrorClass, classify};
/// let busy = Error::Status { status: 503, retry_after: Some(std::time::Duration::from_secs(2)) };
/// assert_eq!(classify(&busy), ErrorClass::RetryAfter(std::time::Duration::from_secs(2)));
/// assert_eq!(classify(&Error::Status { status: 404, retry_after: None }), ErrorClass::Permanent);
/// ```
#[must_use]
pub fn classify(err: &Error) -> ErrorClass {
    match err {
        Error::Status { status, retry_after } => classify_status(*status, *retry_after),
        // A refused redirect (loop, too many, downgrade, odd scheme) will be refused again, and
        // so will a certificate that does not verify.
        Error::Network(e) if e.is_redirect() || is_certificate_error(e) => ErrorClass::Permanent,
        // Below HTTP: connect refused, reset, TLS and h2 stream errors all may pass on retry.
        Error::Network(_)
        | Error::IdleTimeout(_)
        | Error::TooSlow { .. }
        | Error::ShortBody { .. }
        | Error::Range(_)
        // A size or checksum mismatch may be a transfer that went wrong; the retry budget
        // turns a mismatch that persists into a failure.
        | Error::Verify(_) => ErrorClass::Transient,
        Error::TooLarge { .. }
        | Error::Empty
        | Error::Path(_)
        | Error::Conflict(_)
        | Error::RepeatedId { .. }
        | Error::Exists(_)
        | Error::Url(_)
        | Error::Redirect(_) => ErrorClass::Permanent,
        Error::Io { source, .. } => classify_io(source),
        Error::Local { source, .. } => classify_local(source),
        Error::Archive(_) | Error::Queue(_) | Error::Bucket(_) | Error::Locked(_) => ErrorClass::Fatal,
        Error::Internal(_) => ErrorClass::Permanent,
    }
}

/// True when TLS refused the server's certificate. rustls reports it as an I/O error whose text
/// says "invalid peer certificate"; its type is not part of reqwest's API, so the text decides.
fn is_certificate_error(err: &reqwest::Error) -> bool {
    let mut source: Option<&dyn std::error::Error> = Some(err);
    while let Some(cause) = source {
        if cause.to_string().contains("invalid peer certificate") {
            return true;
        }
        source = cause.source();
    }
    false
}

fn classify_status(status: u16, retry_after: Option<std::time::Duration>) -> ErrorClass {
    match (status, retry_after) {
        // RFC 6585 §4 and RFC 9110 §15.6.4: the server tells us when to come back.
        (429 | 503, Some(wait)) => ErrorClass::RetryAfter(wait),
        // 429 without a header still means "slow down": pause the host for a default time.
        (429, None) => ErrorClass::RetryAfter(std::time::Duration::from_secs(1)),
        (408 | 425 | 500 | 502 | 503 | 504, _) => ErrorClass::Transient,
        _ => ErrorClass::Permanent,
    }
}

/// An error on one destination fails that job only; a full disk stops the run, and running
/// out of descriptors is back-pressure.
fn classify_local(err: &io::Error) -> ErrorClass {
    if is_disk_full(err) {
        ErrorClass::Fatal
    } else if is_out_of_files(err) {
        ErrorClass::Transient
    } else {
        ErrorClass::Permanent
    }
}

/// An error of haul's shared state (the output root, the parts directory).
fn classify_io(err: &io::Error) -> ErrorClass {
    if is_out_of_files(err) {
        // EMFILE/ENFILE: descriptors come back as other transfers end.
        return ErrorClass::Transient;
    }
    if is_disk_full(err) {
        // ENOSPC / EDQUOT: every further write would fail too.
        return ErrorClass::Fatal;
    }
    match err.kind() {
        // The output directory (or a file in it) cannot be written: no job can succeed.
        io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => ErrorClass::Fatal,
        // Connection-level failures surfaced as io errors from the body stream.
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe
        | io::ErrorKind::UnexpectedEof
        | io::ErrorKind::TimedOut
        | io::ErrorKind::Interrupted => ErrorClass::Transient,
        _ => ErrorClass::Permanent,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn status(status: u16, retry_after: Option<u64>) -> Error {
        Error::Status {
            status,
            retry_after: retry_after.map(Duration::from_secs),
        }
    }

    #[test]
    fn status_table() {
        let table: &[(u16, Option<u64>, ErrorClass)] = &[
            (404, None, ErrorClass::Permanent),
            (403, None, ErrorClass::Permanent),
            (410, None, ErrorClass::Permanent),
            (408, None, ErrorClass::Transient),
            (500, None, ErrorClass::Transient),
            (502, None, ErrorClass::Transient),
            (503, None, ErrorClass::Transient),
            (504, None, ErrorClass::Transient),
            (503, Some(7), ErrorClass::RetryAfter(Duration::from_secs(7))),
            (429, Some(2), ErrorClass::RetryAfter(Duration::from_secs(2))),
            (429, None, ErrorClass::RetryAfter(Duration::from_secs(1))),
            (404, Some(3), ErrorClass::Permanent),
        ];
        for (code, after, want) in table {
            assert_eq!(classify(&status(*code, *after)), *want, "status {code} {after:?}");
        }
    }

    #[test]
    fn io_table() {
        let table = [
            (io::ErrorKind::StorageFull, ErrorClass::Fatal),
            (io::ErrorKind::PermissionDenied, ErrorClass::Fatal),
            (io::ErrorKind::ConnectionReset, ErrorClass::Transient),
            (io::ErrorKind::UnexpectedEof, ErrorClass::Transient),
            (io::ErrorKind::NotFound, ErrorClass::Permanent),
        ];
        for (kind, want) in table {
            let err = Error::io("write", "/x", io::Error::from(kind));
            assert_eq!(classify(&err), want, "{kind:?}");
        }
        let enospc = Error::io("write", "/x", io::Error::from_raw_os_error(28));
        assert_eq!(classify(&enospc), ErrorClass::Fatal);
        let emfile = Error::io("create", "/x", io::Error::from_raw_os_error(24));
        assert_eq!(classify(&emfile), ErrorClass::Transient);
        assert!(emfile.is_out_of_files());
        // One destination's trouble is that job's, not the run's.
        let local = [
            (io::ErrorKind::PermissionDenied, ErrorClass::Permanent),
            (io::ErrorKind::ReadOnlyFilesystem, ErrorClass::Permanent),
            (io::ErrorKind::StorageFull, ErrorClass::Fatal),
        ];
        for (kind, want) in local {
            assert_eq!(
                classify(&Error::local("rename to", "/x", kind.into())),
                want,
                "{kind:?}"
            );
        }
        let enametoolong = Error::local("rename to", "/x", io::Error::from_raw_os_error(36));
        assert_eq!(classify(&enametoolong), ErrorClass::Permanent);
    }

    #[test]
    fn body_errors_are_transient_and_paths_permanent() {
        assert_eq!(
            classify(&Error::ShortBody { got: 1, expected: 2 }),
            ErrorClass::Transient
        );
        assert_eq!(classify(&Error::Verify("sha256".into())), ErrorClass::Transient);
        assert_eq!(classify(&Error::Path("..".into())), ErrorClass::Permanent);
        assert_eq!(classify(&Error::Archive("locked".into())), ErrorClass::Fatal);
    }
}
