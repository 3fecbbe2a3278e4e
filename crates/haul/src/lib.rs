//! haul: a bulk file downloader engine.
#![deny(missing_docs)]

mod error;
mod fetch;
mod job;
mod manifest;
pub mod store;

pub use error::{Error, ErrorClass};
pub use fetch::classify;
pub use job::{Job, SafeUrl, to_hex};
pub use manifest::{ArchiveKey, Format, ManifestError, ManifestReader, parse_url};
pub mod archive;
mod report;
mod schedule;
pub use report::{JobReport, JobStatus, Monitor, NullReporter, Reporter, Stats, Summary, Transfer};
mod config;
mod engine;
pub use config::{
    ArchiveMode, Config, ConfigBuilder, DEFAULT_ARCHIVE_NAME, DEFAULT_CONCURRENCY, DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_MAX_RETRY_WAIT, DEFAULT_PER_HOST, DEFAULT_READ_TIMEOUT, DEFAULT_RETRIES, DEFAULT_RETRY_CAP,
    DEFAULT_RETRY_WAIT, OnExists, STATE_DIR,
};
pub use engine::{Canceller, Engine};
pub use store::Layout;
