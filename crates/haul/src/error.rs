//! Errors of the engine and their classification.
//!
//! Every failure a job can meet is one [`Error`]. [`crate::classify`] turns it into an
//! [`ErrorClass`] in exactly one place, and the engine's retry loop acts only on that class.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// What the engine does about an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorClass {
    /// Worth another attempt after a backoff (connect error, reset, timeout, 5xx, short body).
    Transient,
    /// The server asked us to wait (429, or 503 with `Retry-After`): the whole host pauses.
    RetryAfter(Duration),
    /// Retrying cannot help (404, a refused path, a file that exists with `--on-exists fail`).
    Permanent,
    /// The run cannot go on (disk full, output not writable, archive unusable).
    Fatal,
}

impl ErrorClass {
    /// A short lowercase name, as used in reports and the archive.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Transient => "transient",
            Self::RetryAfter(_) => "retry-after",
            Self::Permanent => "permanent",
            Self::Fatal => "fatal",
        }
    }
}

/// A failure of one job or of the whole run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The server answered with a status that is not a success.
    #[error("HTTP {status}")]
    Status {
        /// The status code.
        status: u16,
        /// The parsed `Retry-After`, when the server sent one.
        retry_after: Option<Duration>,
    },
    /// The request failed below HTTP: connect, TLS, reset, protocol error.
    #[error("{}", describe_network(.0))]
    Network(#[source] reqwest::Error),
    /// No byte arrived for the read-idle timeout.
    #[error("no data for {0:?}")]
    IdleTimeout(Duration),
    /// The transfer stayed below `--lowest-speed`.
    #[error("too slow: {rate} B/s over {window:?}")]
    TooSlow {
        /// Observed bytes per second over the window.
        rate: u64,
        /// The window.
        window: Duration,
    },
    /// The body ended before the announced length.
    #[error("short body: got {got} of {expected} bytes")]
    ShortBody {
        /// Bytes received in total (including a resumed prefix).
        got: u64,
        /// Bytes expected.
        expected: u64,
    },
    /// The server sent an empty body and nothing said the file is empty.
    #[error("empty body (0 bytes) and the manifest gives no size of 0; pass --allow-empty to accept empty files")]
    Empty,
    /// The file does not match what the manifest or the server said it should be.
    #[error("{0}")]
    Verify(String),
    /// The server broke the Range protocol (wrong Content-Range and so on).
    #[error("bad range response: {0}")]
    Range(String),
    /// The body is larger than `--max-size`.
    #[error("larger than the limit of {limit} bytes")]
    TooLarge {
        /// The configured limit.
        limit: u64,
    },
    /// The output path is refused (outside the output directory, a symlink, invalid).
    #[error("{0}")]
    Path(String),
    /// Another job of this run writes the same path.
    #[error(
        "path conflict: {0} is already the destination of another job (give each job its own name: a \"path\" in the manifest, or --name '{{stem}}-{{hash}}{{ext}}')"
    )]
    Conflict(String),
    /// Another line of the manifest has this job's id with another URL or path; the first wins.
    #[error("id {id:?} repeats line {line} with another URL or path (the first line wins; give each job its own id)")]
    RepeatedId {
        /// The id.
        id: String,
        /// The line of the first job with it.
        line: u64,
    },
    /// The destination exists and `--on-exists fail` is set.
    #[error("destination exists: {0}")]
    Exists(String),
    /// A redirect was refused (loop, too many, https to http, another scheme).
    #[error("redirect refused: {0}")]
    Redirect(String),
    /// The URL cannot be fetched (unsupported scheme, no host).
    #[error("unsupported URL: {0}")]
    Url(String),
    /// A local file operation failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done ("create", "write", "rename").
        op: &'static str,
        /// The file concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A local file operation on one destination failed (permission, read-only file, name
    /// too long): that job fails and the run goes on, unless the disk is full.
    #[error("{op} {}: {source}", path.display())]
    Local {
        /// What was being done ("create directory", "rename to").
        op: &'static str,
        /// The file concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The archive (journal) failed.
    #[error("archive: {0}")]
    Archive(String),
    /// The work queue (PostgreSQL) failed, or could not be reached for too long.
    #[error("queue: {0}")]
    Queue(String),
    /// The output bucket failed (unreachable, refused credentials, an upload refused).
    #[error("bucket: {0}")]
    Bucket(String),
    /// The output directory or the archive is in use by another haul process.
    #[error("{0}")]
    Locked(String),
    /// A job's transfer panicked: a bug in haul, reported as that job's failure.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// Wraps an I/O error with what was done and to which path.
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// Wraps an I/O error that concerns one destination only (see [`Error::Local`]).
    pub(crate) fn local(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self::Local {
            op,
            path: path.into(),
            source,
        }
    }

    /// True when the process ran out of file descriptors (EMFILE, ENFILE): back-pressure, not
    /// a failure of the job.
    #[must_use]
    pub fn is_out_of_files(&self) -> bool {
        let io = match self {
            Self::Io { source, .. } | Self::Local { source, .. } => Some(source),
            _ => None,
        };
        let mut source: Option<&(dyn std::error::Error + 'static)> = match self {
            Self::Network(e) => Some(e),
            _ => None,
        };
        if io.is_some_and(is_out_of_files) {
            return true;
        }
        while let Some(cause) = source {
            if cause.downcast_ref::<io::Error>().is_some_and(is_out_of_files) {
                return true;
            }
            source = cause.source();
        }
        false
    }

    /// The HTTP status, when the error is one.
    #[must_use]
    pub fn http_status(&self) -> Option<u16> {
        match self {
            Self::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// A short, stable reason for grouping failures in summaries ("http 404", "timeout").
    #[must_use]
    pub fn reason(&self) -> String {
        match self {
            Self::Status { status, .. } => format!("http {status}"),
            Self::Network(e) if e.is_redirect() => "redirect".into(),
            Self::Network(e) if e.is_timeout() => "timeout".into(),
            Self::Network(e) if e.is_connect() => "connect".into(),
            Self::Network(_) => "network".into(),
            Self::IdleTimeout(_) => "idle timeout".into(),
            Self::TooSlow { .. } => "too slow".into(),
            Self::ShortBody { .. } => "short body".into(),
            Self::Verify(_) => "verification".into(),
            Self::Empty => "empty body".into(),
            Self::Range(_) => "bad range".into(),
            Self::TooLarge { .. } => "too large".into(),
            Self::Path(_) => "bad path".into(),
            Self::Conflict(_) => "path conflict".into(),
            Self::RepeatedId { .. } => "repeated id".into(),
            Self::Exists(_) => "exists".into(),
            Self::Url(_) => "bad url".into(),
            Self::Redirect(_) => "redirect".into(),
            Self::Io { source, .. } | Self::Local { source, .. } if is_disk_full(source) => "disk full".into(),
            Self::Io { .. } | Self::Local { .. } => "io".into(),
            Self::Archive(_) => "archive".into(),
            Self::Queue(_) => "queue".into(),
            Self::Bucket(_) => "bucket".into(),
            Self::Locked(_) => "locked".into(),
            Self::Internal(_) => "internal error".into(),
        }
    }
}

/// True for EMFILE (this process) and ENFILE (the whole system).
pub(crate) fn is_out_of_files(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(24 | 23))
}

/// True for "no space left on device" and "quota exceeded".
pub(crate) fn is_disk_full(err: &io::Error) -> bool {
    matches!(err.kind(), io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded)
}

/// reqwest's own Display hides the cause ("error sending request"); name it, without the URL.
fn describe_network(err: &reqwest::Error) -> String {
    let mut text = if err.is_redirect() {
        "redirect refused".to_string()
    } else if err.is_connect() {
        "connect failed".to_string()
    } else if err.is_timeout() {
        "timed out".to_string()
    } else if err.is_body() || err.is_decode() {
        "body read failed".to_string()
    } else {
        "request failed".to_string()
    };
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        if let Some(words) = crate::fetch::tls::explain(cause) {
            return format!("TLS: {words}");
        }
        let s = cause.to_string();
        if !s.is_empty() && !text.ends_with(&s) {
            text.push_str(": ");
            text.push_str(&s);
        }
        source = cause.source();
    }
    text
}
