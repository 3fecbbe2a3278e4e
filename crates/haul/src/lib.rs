//! haul: a bulk file downloader engine.
//!
//! The pipeline, one module each:
//! - [`ManifestReader`] reads jobs lazily (plain, JSONL, CSV), one line at a time;
//! - the engine's reader thread checks each job against the [`archive`] (done jobs are skipped
//!   without a request) and decides its output path with [`store`] (confined to the output
//!   directory);
//! - a scheduler starts jobs within the global and per-host limits, pauses hosts that answer 429
//!   or 503 with Retry-After, and delays retries with full-jitter backoff;
//! - each attempt streams the body into `NAME.part`, verifies size and checksums, and renames it
//!   into place; only then is the job recorded done, in batches, by the archive's writer thread;
//! - counters in a [`Monitor`] and events to a [`Reporter`] tell the caller what happens.
//!   This crate prints nothing.
//!
//! ```no_run
//! # async fn demo() -> Result<(), haul::Error> {
//! use std::sync::Arc;
//! let config = haul::Config::builder("downloads").concurrency(32).per_host(8).build();
//! let engine = haul::Engine::new(config);
//! let jobs = haul::ManifestReader::new("https://example.com/a.jpg\n".as_bytes(), haul::Format::Plain);
//! let summary = engine.run(jobs, Arc::new(haul::NullReporter)).await?;
//! assert_eq!(summary.failed_total(), 0);
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

mod auth;
mod error;
mod fetch;
mod job;
pub mod manifest;
pub mod store;

pub use auth::{Auth, Credentials};
pub use error::{Error, ErrorClass};
pub use fetch::classify;
pub use job::{Job, SafeUrl, to_hex};
pub use manifest::{ArchiveKey, Format, MAX_LINE, ManifestError, ManifestReader, parse_url};
pub mod archive;
#[cfg(feature = "queue")]
pub mod queue;
mod report;
mod rules;
pub use rules::HostRule;
mod schedule;
pub use report::{JobReport, JobStatus, Monitor, NullReporter, Reporter, Stats, Summary, Transfer};
pub use schedule::HostView;
pub use schedule::rate::Rate;
mod config;
mod engine;
pub use config::{
    ArchiveMode, BucketSpec, Config, ConfigBuilder, DEFAULT_ARCHIVE_NAME, DEFAULT_CONCURRENCY, DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_MAX_REDIRECTS, DEFAULT_MAX_RETRY_WAIT, DEFAULT_MIN_SPLIT_SIZE, DEFAULT_PER_HOST, DEFAULT_READ_TIMEOUT,
    DEFAULT_RETRIES, DEFAULT_RETRY_CAP, DEFAULT_RETRY_WAIT, DEFAULT_SPLIT, InputReady, OnExists,
};
pub use engine::{Canceller, Engine, FleetLink};
pub use store::{DigestKind, FileDigests, Layout, STATE_DIR};
