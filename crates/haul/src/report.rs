//! Events and counters: what the engine tells the outside world.
//!
//! The engine never draws anything. It updates atomic counters in a [`Monitor`] as bytes stream
//! (cheap enough for every chunk) and calls a [`Reporter`] once per job event. A user interface
//! samples [`Monitor::stats`] on its own timer, so drawing never slows a transfer.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::error::Error;
use crate::job::{Job, SafeUrl};
use crate::manifest::ManifestError;
use crate::schedule::HostView;

/// How a job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum JobStatus {
    /// The file is complete, verified and in place.
    Done,
    /// Nothing was fetched: already done in the archive, or the file already exists.
    Skipped,
    /// The job failed; the error says why.
    Failed,
    /// The run was interrupted before the job finished; a rerun picks it up.
    Pending,
}

impl JobStatus {
    /// The lowercase name used in reports and the archive.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Done => "done",
            Self::Skipped => "skipped",
            Self::Failed => "failed",
            Self::Pending => "pending",
        }
    }
}

/// The outcome of one job, as reported to a [`Reporter`] and written to `--report`. It borrows
/// from the engine's job state, so reporting a job allocates nothing.
#[derive(Debug, Clone, Copy)]
pub struct JobReport<'a> {
    /// The job's archive key.
    pub id: &'a str,
    /// The URL; displays with secrets redacted.
    pub url: SafeUrl<'a>,
    /// The `host:port` the job talked to.
    pub host: &'a str,
    /// The output path relative to the output directory, when one was decided.
    pub path: Option<&'a str>,
    /// How it ended.
    pub status: JobStatus,
    /// The last HTTP status seen, if any.
    pub http_status: Option<u16>,
    /// Bytes of the file (for done and adopted files) or received (for failures).
    pub bytes: u64,
    /// HTTP attempts made.
    pub attempts: u32,
    /// A short reason ("http 404", "exists", "archived"), for grouping.
    pub reason: Option<&'a str>,
    /// The full error message, for failures.
    pub error: Option<&'a str>,
    /// The manifest line the job came from.
    pub line: u64,
    /// True when the file's length or content was checked (always false unless done or
    /// adopted; see `Summary::unverified`).
    pub verified: bool,
    /// The SHA-256 of the file (done jobs, when recorded with `--digest sha256` or verified
    /// against the manifest).
    pub sha256: Option<&'a [u8; 32]>,
    /// The BLAKE3 of the file (done jobs, with the default `--digest blake3`).
    pub blake3: Option<&'a [u8; 32]>,
    /// From the first attempt's start to the end (jobs that were started).
    pub duration: Option<Duration>,
    /// The URL that answered, when redirects led away from `url` (shown redacted).
    pub final_url: Option<SafeUrl<'a>>,
}

/// Receives job events. Implementations must be quick and must not fail: they run on the
/// engine's tasks.
///
/// ```
/// use std::sync::atomic::{AtomicU64, Ordering};
/// /// Counts failures, e.g. to stop a pipeline after too many.
/// #[derive(Default)]
/// struct CountFailures(AtomicU64);
/// impl haul::Reporter for CountFailures {
///     fn on_job_finished(&self, report: &haul::JobReport<'_>) {
///         if report.status == haul::JobStatus::Failed {
///             self.0.fetch_add(1, Ordering::Relaxed);
///         }
///     }
/// }
/// ```
pub trait Reporter: Send + Sync {
    /// A transfer is about to start (called for every attempt's first try only).
    fn on_job_start(&self, _job: &Job) {}
    /// An attempt failed and will be retried after `delay`.
    fn on_retry(&self, _job: &Job, _attempt: u32, _error: &Error, _delay: Duration) {}
    /// A job ended (done, skipped, failed or pending).
    fn on_job_finished(&self, _report: &JobReport<'_>) {}
    /// A manifest line was refused; the run goes on.
    fn on_bad_line(&self, _error: &ManifestError) {}
    /// Something the user should know about the run as a whole (for example that `-j` was
    /// lowered to fit the open-file limit).
    fn on_notice(&self, _message: &str) {}
    /// A host (`host:port`) is paused for `wait`: a `429`, or an outage.
    fn on_host_paused(&self, _host: &str, _wait: Duration, _reason: &str) {}
}

/// A reporter that ignores everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct NullReporter;

impl Reporter for NullReporter {}

/// A snapshot of the counters, cheap to take at any rate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Manifest lines read so far as jobs (good ones).
    pub read: u64,
    /// Total jobs: exact once the whole manifest has been read, else the estimate given with
    /// [`Monitor::set_total_hint`] (never below `read`), else unknown.
    pub total: Option<u64>,
    /// True when `total` is exact.
    pub total_exact: bool,
    /// Jobs done.
    pub done: u64,
    /// Jobs skipped.
    pub skipped: u64,
    /// Jobs failed.
    pub failed: u64,
    /// Manifest lines refused.
    pub bad_lines: u64,
    /// Retries scheduled.
    pub retries: u64,
    /// Body bytes received (all attempts).
    pub bytes: u64,
    /// Transfers in flight.
    pub active: u64,
    /// Time since the run started.
    pub elapsed: Duration,
}

/// One transfer in flight, for displays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    /// The output path.
    pub path: String,
    /// Bytes of the file so far (a resumed prefix included).
    pub received: u64,
    /// The expected size, when known.
    pub total: Option<u64>,
    /// How long it has run.
    pub elapsed: Duration,
    /// Bytes received by this attempt (`received` without the resumed prefix).
    pub fresh: u64,
}

impl Transfer {
    /// Bytes per second of this attempt so far.
    #[must_use]
    #[expect(clippy::cast_precision_loss, reason = "display only")]
    pub fn speed(&self) -> f64 {
        self.fresh as f64 / self.elapsed.as_secs_f64().max(0.001)
    }
}

#[derive(Debug)]
pub(crate) struct TransferState {
    path: String,
    started: Instant,
    offset: AtomicU64,
    received: AtomicU64,
    total: AtomicU64,
}

/// Live counters of a run, shared between the engine and whoever displays progress.
#[derive(Debug)]
pub struct Monitor {
    started: Mutex<Instant>,
    read: AtomicU64,
    total: AtomicU64,
    total_known: AtomicBool,
    total_hint: AtomicU64,
    done: AtomicU64,
    skipped: AtomicU64,
    failed: AtomicU64,
    bad_lines: AtomicU64,
    retries: AtomicU64,
    bytes: AtomicU64,
    active: AtomicU64,
    next_transfer: AtomicU64,
    transfers: Mutex<HashMap<u64, Arc<TransferState>>>,
    hosts: Mutex<Vec<HostView>>,
}

impl Default for Monitor {
    fn default() -> Self {
        Self {
            started: Mutex::new(Instant::now()),
            read: AtomicU64::new(0),
            total: AtomicU64::new(0),
            total_known: AtomicBool::new(false),
            total_hint: AtomicU64::new(0),
            done: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            bad_lines: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            active: AtomicU64::new(0),
            next_transfer: AtomicU64::new(0),
            hosts: Mutex::new(Vec::new()),
            transfers: Mutex::new(HashMap::new()),
        }
    }
}

impl Monitor {
    /// The busiest hosts as the scheduler last saw them: adaptive limit, in flight, time to
    /// first byte, pause (refreshed a few times a second).
    #[must_use]
    pub fn hosts(&self) -> Vec<HostView> {
        self.hosts.lock().expect("hosts").clone()
    }

    pub(crate) fn set_hosts(&self, views: Vec<HostView>) {
        *self.hosts.lock().expect("hosts") = views;
    }

    /// A snapshot of the counters.
    ///
    /// ```
    /// let monitor = haul::Monitor::default();
    /// assert_eq!(monitor.stats().done, 0);
    /// ```
    #[must_use]
    pub fn stats(&self) -> Stats {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let exact = self.total_known.load(Ordering::Acquire);
        let hint = load(&self.total_hint);
        Stats {
            read: load(&self.read),
            total: if exact {
                Some(load(&self.total))
            } else {
                (hint > 0).then(|| hint.max(load(&self.read)))
            },
            total_exact: exact,
            done: load(&self.done),
            skipped: load(&self.skipped),
            failed: load(&self.failed),
            bad_lines: load(&self.bad_lines),
            retries: load(&self.retries),
            bytes: load(&self.bytes),
            active: load(&self.active),
            elapsed: self.started.lock().expect("monitor clock").elapsed(),
        }
    }

    /// Every transfer in flight, the longest running first.
    #[must_use]
    pub fn transfers(&self) -> Vec<Transfer> {
        let transfers = self.transfers.lock().expect("transfers");
        let mut all: Vec<(Instant, Transfer)> = transfers
            .values()
            .map(|t| {
                let total = t.total.load(Ordering::Relaxed);
                let received = t.received.load(Ordering::Relaxed);
                let transfer = Transfer {
                    path: t.path.clone(),
                    received,
                    total: (total != u64::MAX).then_some(total),
                    elapsed: t.started.elapsed(),
                    fresh: received.saturating_sub(t.offset.load(Ordering::Relaxed)),
                };
                (t.started, transfer)
            })
            .collect();
        drop(transfers);
        all.sort_by_key(|(started, t)| (*started, t.path.clone()));
        all.into_iter().map(|(_, t)| t).collect()
    }

    /// Sets an estimate of the total number of jobs (a count of the manifest's lines made
    /// ahead of the run), shown until the reader has read them all.
    pub fn set_total_hint(&self, total: u64) {
        self.total_hint.store(total, Ordering::Relaxed);
    }

    pub(crate) fn restart_clock(&self) {
        *self.started.lock().expect("monitor clock") = Instant::now();
    }

    pub(crate) fn on_read(&self) {
        self.read.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn on_bad_line(&self) {
        self.bad_lines.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn set_total(&self, total: u64) {
        self.total.store(total, Ordering::Relaxed);
        self.total_known.store(true, Ordering::Release);
    }

    pub(crate) fn on_retry(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn on_finished(&self, status: JobStatus) {
        let counter = match status {
            JobStatus::Done => &self.done,
            JobStatus::Skipped => &self.skipped,
            JobStatus::Failed => &self.failed,
            JobStatus::Pending => return,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Registers a transfer in flight; it is removed when the guard drops.
    pub(crate) fn start_transfer(self: &Arc<Self>, path: &str, total: Option<u64>) -> TransferGuard {
        self.active.fetch_add(1, Ordering::Relaxed);
        let id = self.next_transfer.fetch_add(1, Ordering::Relaxed);
        let state = Arc::new(TransferState {
            path: path.to_owned(),
            started: Instant::now(),
            offset: AtomicU64::new(0),
            received: AtomicU64::new(0),
            total: AtomicU64::new(total.unwrap_or(u64::MAX)),
        });
        self.transfers.lock().expect("transfers").insert(id, Arc::clone(&state));
        TransferGuard {
            monitor: Arc::clone(self),
            listed: Some((id, state)),
        }
    }
}

/// A transfer's entry in the [`Monitor`]; counts its bytes.
pub(crate) struct TransferGuard {
    monitor: Arc<Monitor>,
    listed: Option<(u64, Arc<TransferState>)>,
}

impl TransferGuard {
    /// Sets where the file starts (a resumed prefix).
    pub(crate) fn set_received(&self, received: u64) {
        if let Some((_, state)) = &self.listed {
            state.received.store(received, Ordering::Relaxed);
            state.offset.store(received, Ordering::Relaxed);
        }
    }

    pub(crate) fn add_bytes(&self, n: u64) {
        if let Some((_, state)) = &self.listed {
            state.received.fetch_add(n, Ordering::Relaxed);
        }
        self.monitor.bytes.fetch_add(n, Ordering::Relaxed);
    }
}

impl Drop for TransferGuard {
    fn drop(&mut self) {
        if let Some((id, _)) = &self.listed {
            self.monitor.transfers.lock().expect("transfers").remove(id);
        }
        self.monitor.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The most distinct (reason, host) failure groups a summary keeps; the rest are lumped.
const MAX_FAILURE_GROUPS: usize = 200;

/// The result of a whole run.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Jobs done.
    pub done: u64,
    /// Jobs skipped, by reason.
    pub skipped: BTreeMap<String, u64>,
    /// Jobs failed, by (reason, host).
    pub failed: BTreeMap<(String, String), u64>,
    /// Jobs left pending by an interruption or a fatal error.
    pub pending: u64,
    /// Manifest lines refused.
    pub bad_lines: u64,
    /// Retries made.
    pub retries: u64,
    /// Bytes received.
    pub bytes: u64,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// Set when the run stopped on a fatal error (disk full, archive failure).
    pub fatal: Option<String>,
    /// Set when the run was cancelled (Ctrl-C).
    pub interrupted: bool,
    /// Files recorded done (or adopted) whose length and content nothing could check: a
    /// close-delimited body with no manifest size or digest. They are marked unverified in
    /// the archive and the report.
    pub unverified: u64,
    /// Jobs the archive had as done whose file was missing on disk, or that `haul verify`
    /// found missing or corrupt: fetched again.
    pub stale: u64,
    /// The hosts that pushed back (refused, failed for load, paused), with the limit each
    /// settled at.
    pub hosts: Vec<HostView>,
}

impl Summary {
    /// Jobs failed in all.
    #[must_use]
    pub fn failed_total(&self) -> u64 {
        self.failed.values().sum()
    }

    /// Jobs skipped in all.
    #[must_use]
    pub fn skipped_total(&self) -> u64 {
        self.skipped.values().sum()
    }

    pub(crate) fn record(&mut self, report: &JobReport<'_>) {
        match report.status {
            JobStatus::Done => self.done += 1,
            JobStatus::Skipped => {
                let reason = report.reason.unwrap_or_default();
                match self.skipped.get_mut(reason) {
                    Some(count) => *count += 1,
                    None => {
                        self.skipped.insert(reason.to_owned(), 1);
                    }
                }
            }
            JobStatus::Failed => {
                let mut key = (report.reason.unwrap_or_default().to_owned(), report.host.to_owned());
                if self.failed.len() >= MAX_FAILURE_GROUPS && !self.failed.contains_key(&key) {
                    key = ("other".to_owned(), "other hosts".to_owned());
                }
                *self.failed.entry(key).or_default() += 1;
            }
            JobStatus::Pending => self.pending += 1,
        }
    }
}
