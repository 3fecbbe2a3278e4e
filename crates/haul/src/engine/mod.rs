//! The engine: wires manifest, scheduler, fetch, store and archive into a run.
//!
//! A run has three parts:
//! - a **reader thread** pulls jobs from the manifest iterator, checks each against the archive
//!   (skip what is done, pick up resume validators) and sends them on a bounded channel;
//! - the **dispatcher** (one task) owns the [`Scheduler`]: it admits jobs while fewer than a
//!   window of them wait (so memory does not grow with the manifest), starts them within the
//!   global and per-host limits, and decides retries, cool-downs and outcomes; when one host's
//!   queue is full it reads ahead for other hosts, spilling the full host's jobs to disk (up to
//!   [`READ_AHEAD`] in a row without finding a host with nothing queued);
//! - **workers** (one task per running job) do one attempt each and report back.
//!
//! Finished jobs are recorded by the archive's writer thread in batches, and only after the
//! file has been renamed into place.

mod limits;
mod plan;
mod split;
mod transfer;

use std::collections::{HashSet, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::FutureExt as _;

use tokio::sync::{mpsc, oneshot, watch};

use crate::archive::{Archive, ArchiveReader, Journal, Record, RowStatus, Seen, SeenIndex, Spill};
use crate::config::{Config, OnExists};
use crate::error::{Error, ErrorClass};
use crate::fetch::{Fetcher, Validators, classify};
use crate::job::{Job, SafeUrl, to_hex};
use crate::manifest::ManifestError;
use crate::report::{JobReport, JobStatus, Monitor, Reporter, Summary};
use crate::schedule::backoff::{Backoff, Jitter};
use crate::schedule::host::{Signal, Ticket};
use crate::schedule::{Policy, Scheduler};
use crate::store::{DigestKind, RelPath, Store};
use transfer::{JobState, Outcome};

/// Attempts a job may lose for want of file descriptors (EMFILE) before it fails: such an
/// attempt is back-pressure, not the job's fault, so it does not count as an attempt.
const MAX_STARVED: u32 = 200;

/// A far deadline for waits too long to add to the clock (a Retry-After near `u64::MAX`).
const FAR: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// `now + wait`, without overflow.
fn deadline(now: Instant, wait: Duration) -> Instant {
    now.checked_add(wait).or_else(|| now.checked_add(FAR)).unwrap_or(now)
}

/// Bodies at least this large get a `partial` archive row when they start, so a rerun after a
/// crash can resume them; smaller ones are cheaper to fetch again than to journal twice.
const PARTIAL_RECORD_MIN: u64 = 1024 * 1024;

/// Most manifest items the reader hands over at once (when the dispatcher is behind).
const INPUT_BATCH: usize = 64;

/// Downloads the jobs of a manifest. See the crate documentation for an example.
#[derive(Debug)]
pub struct Engine {
    config: Arc<Config>,
    monitor: Arc<Monitor>,
    cancel: watch::Sender<bool>,
    fleet_tx: mpsc::UnboundedSender<FleetNews>,
    /// Taken by a run for its length.
    fleet_rx: Mutex<Option<mpsc::UnboundedReceiver<FleetNews>>>,
}

/// What a fleet of workers tells one worker's engine.
#[derive(Debug)]
enum FleetNews {
    /// Another worker was told to leave `host` alone: `(host:port, how long, why)`.
    Pause(String, Duration, String),
    /// This many workers share the per-host budgets now.
    Share(usize),
}

/// Links a running [`Engine`] to the other workers of a fleet (see the queue): it pauses
/// hosts another worker was told to wait for, and shares the per-host budgets (`--per-host`,
/// `--rate`, host rules) among the live workers.
#[derive(Debug, Clone)]
pub struct FleetLink(mpsc::UnboundedSender<FleetNews>);

impl FleetLink {
    /// No new request goes to `host` (`host:port`, as [`Job::host_key`] gives it) for `wait`;
    /// a pause already longer stays.
    pub fn pause(&self, host: &str, wait: Duration, reason: &str) {
        let _ = self.0.send(FleetNews::Pause(host.to_owned(), wait, reason.to_owned()));
    }

    /// `workers` live workers (this one included) share every host's budget: this engine
    /// keeps one `workers`-th of each ceiling (at least 1) and of each rate.
    pub fn share(&self, workers: usize) {
        let _ = self.0.send(FleetNews::Share(workers));
    }
}

/// Stops a running [`Engine`] from another task or a signal handler.
///
/// ```
/// let engine = haul::Engine::new(haul::Config::builder("downloads").build());
/// let canceller = engine.canceller();
/// // From a signal handler or another task:
/// canceller.cancel();
/// ```
#[derive(Debug, Clone)]
pub struct Canceller(watch::Sender<bool>);

impl Canceller {
    /// Stops starting transfers, interrupts those in flight (their `.part` files stay
    /// resumable), flushes the archive, and makes [`Engine::run`] return.
    pub fn cancel(&self) {
        self.0.send_replace(true);
    }
}

/// State shared by the dispatcher and the workers.
#[derive(Debug)]
pub(crate) struct Shared {
    config: Arc<Config>,
    fetcher: Fetcher,
    store: Arc<Store>,
    monitor: Arc<Monitor>,
    journal: Option<Journal>,
    /// Finds which job owns an existing file (path conflicts across runs).
    path_owner: Option<Mutex<ArchiveReader>>,
    /// `--limit-rate`: the byte budget all bodies share.
    bandwidth: Option<crate::schedule::rate::Bandwidth>,
    /// A byte budget per host rule that sets `limit_rate` (shared by the hosts it matches).
    rule_bandwidth: Vec<Option<crate::schedule::rate::Bandwidth>>,
    /// Fingerprints of the paths of jobs in flight (admitted, not yet ended): two of them on one
    /// file is a conflict. Bounded by the window; a job that ends releases its claims, and a
    /// later job on a finished path meets the file system's no-replace rename instead.
    claimed: Mutex<HashSet<u64>>,
}

impl Shared {
    /// Claims `rel` for one job in flight; `None` when another job in flight has it.
    fn claim(&self, rel: &str) -> Option<u64> {
        let fingerprint = RelPath::fingerprint_of(rel, self.store.folds_case());
        self.claimed
            .lock()
            .expect("claimed paths")
            .insert(fingerprint)
            .then_some(fingerprint)
    }

    /// Releases a job's claims.
    fn release(&self, claims: &[u64]) {
        if claims.is_empty() {
            return;
        }
        let mut claimed = self.claimed.lock().expect("claimed paths");
        for claim in claims {
            claimed.remove(claim);
        }
    }

    /// Journals a large transfer as it starts, with its validators (and, for a segmented one,
    /// the ranges still missing), for resume after a crash.
    fn note_partial(&self, state: &JobState, total: Option<u64>) {
        let Some(journal) = &self.journal else { return };
        let segmented = state.split_missing.is_some();
        if !state.validators.allow_resume() || (!segmented && total.is_some_and(|t| t < PARTIAL_RECORD_MIN)) {
            return;
        }
        let _ = journal.record(Record {
            id: state.job.id.clone(),
            url: state.job.url.as_str().to_owned(),
            path: Some(state.final_rel.clone()),
            size: total,
            sha256: None,
            blake3: None,
            verified: false,
            etag: state.validators.etag.clone(),
            last_modified: state.validators.last_modified.clone(),
            status: RowStatus::Partial,
            http_status: state.http_status,
            error_class: None,
            error: None,
            attempts: 0,
            spec: None,
            segments: state.split_missing.as_deref().map(plan::format_ranges),
        });
    }
}

/// What the reader thread sends to the dispatcher.
enum Input {
    Job(Box<JobState>),
    /// A job not to fetch: (job, its path, reason, detail).
    Skip(Box<Job>, String, &'static str, Option<String>),
    /// A job the archive has done at a path haul wrote: skipped if a file is there, else
    /// fetched again (the dispatcher looks, so the reader's thread does not pay for the stat).
    Archived(Box<Job>, String, RelPath),
    Refused(Box<Job>, Error),
    Bad(ManifestError),
    End(u64),
    Fatal(Error),
}

/// What a worker sends back.
pub(crate) struct WorkerDone {
    state: Box<JobState>,
    result: Result<Outcome, Error>,
}

/// What workers tell the dispatcher.
pub(crate) enum Note {
    /// A job's attempt ended.
    Done(WorkerDone),
    /// A request with a long body got its answer's head (slow start grows now).
    Answered { host: String, ticket: Ticket },
    /// A segmented transfer wants a slot for one more request to `host`.
    WantSlot {
        host: String,
        reply: oneshot::Sender<split::Granted>,
    },
    /// A segmented transfer's request ended: its slot goes back, with what it said of the
    /// host's load and the pause its answer asked for.
    SlotEnded {
        host: String,
        ticket: Ticket,
        signal: Signal,
        pause: Option<(Duration, String)>,
    },
}

/// What waits in a host's queue.
enum Work {
    Job(Box<JobState>),
    /// A running segmented transfer's request for one more slot (queued ahead of new jobs).
    Slot(oneshot::Sender<split::Granted>),
}

impl Engine {
    /// An engine for `config`.
    ///
    /// ```
    /// let engine = haul::Engine::new(haul::Config::builder("downloads").build());
    /// assert_eq!(engine.monitor().stats().done, 0);
    /// ```
    #[must_use]
    pub fn new(config: Config) -> Self {
        let (fleet_tx, fleet_rx) = mpsc::unbounded_channel();
        Self {
            config: Arc::new(config),
            monitor: Arc::new(Monitor::default()),
            cancel: watch::channel(false).0,
            fleet_tx,
            fleet_rx: Mutex::new(Some(fleet_rx)),
        }
    }

    /// A handle through which the other workers of a fleet reach this engine's runs.
    #[must_use]
    pub fn fleet_link(&self) -> FleetLink {
        FleetLink(self.fleet_tx.clone())
    }

    /// The live counters of this engine's run, for progress displays.
    #[must_use]
    pub fn monitor(&self) -> Arc<Monitor> {
        Arc::clone(&self.monitor)
    }

    /// A handle that cancels the run.
    #[must_use]
    pub fn canceller(&self) -> Canceller {
        Canceller(self.cancel.clone())
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Downloads every job of `jobs`, reading it lazily, and returns the summary.
    ///
    /// Bad manifest lines and failed jobs do not stop the run; they are reported to `reporter`
    /// and counted in the [`Summary`]. A fatal error during the run (disk full, archive failure)
    /// stops new work and is set in [`Summary::fatal`].
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), haul::Error> {
    /// use std::sync::Arc;
    /// let jobs = haul::ManifestReader::new("https://example.com/a.jpg\n".as_bytes(), haul::Format::Plain);
    /// let engine = haul::Engine::new(haul::Config::builder("downloads").build());
    /// let summary = engine.run(jobs, Arc::new(haul::NullReporter)).await?;
    /// println!("{} done", summary.done);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// Start-up failures only: the output directory cannot be written, the archive cannot be
    /// opened or is locked by another process, the HTTP client cannot be built.
    pub async fn run<I>(&self, jobs: I, reporter: Arc<dyn Reporter>) -> Result<Summary, Error>
    where
        I: IntoIterator<Item = Result<Job, ManifestError>> + Send + 'static,
        I::IntoIter: Send,
    {
        let mut config = Arc::clone(&self.config);
        let fit = limits::fit_concurrency(config.concurrency);
        if fit.concurrency < config.concurrency {
            let mut lowered = (*config).clone();
            lowered.concurrency = fit.concurrency;
            config = Arc::new(lowered);
        }
        if let Some(notice) = &fit.notice {
            reporter.on_notice(notice);
        }
        if config.bucket.is_some() && (config.on_exists == OnExists::Rename || config.digest == DigestKind::None) {
            if config.on_exists == OnExists::Rename {
                return Err(Error::Bucket(
                    "--on-exists rename is not supported with a bucket output (skip, overwrite or fail)".into(),
                ));
            }
            // Objects carry a digest as metadata, so a rerun can tell its own objects.
            let mut with_digest = (*config).clone();
            with_digest.digest = DigestKind::Sha256;
            config = Arc::new(with_digest);
        }
        // The output directory's lock (taken by the store before it looks inside), then the
        // archive's: a second haul on either stops here.
        let mut store = Store::open(
            &config.output_dir,
            config.fsync,
            config.wait_archive,
            config.shared_output.as_deref(),
        )?;
        if let Some(spec) = &config.bucket {
            store = store.with_bucket(crate::store::Bucket::open(spec)?)?;
        }
        if let Some(bucket) = store.bucket() {
            // Multipart uploads that killed runs on this staging directory left open.
            match bucket.abort_orphans().await {
                Ok(0) => {}
                Ok(n) => reporter.on_notice(&format!("aborted {n} unfinished uploads left by a stopped run")),
                Err(e) => reporter.on_notice(&format!("warning: {e}")),
            }
        }
        let store = Arc::new(store);
        let archive = match config.archive_location() {
            Some(location) => Some(Archive::open_at(&location, config.wait_archive)?),
            None => None,
        };
        let journal = match &archive {
            Some(a) => Some(a.writer(config.batch_records, config.batch_delay, config.fsync)?),
            None => None,
        };
        // A first run (empty archive) has nothing to skip: no lookup per job.
        let skip_reader = match archive.as_ref().map(Archive::reader).transpose()? {
            Some(reader) if !reader.is_empty()? => Some(reader),
            _ => None,
        };
        let path_owner = archive.as_ref().map(Archive::reader).transpose()?.map(Mutex::new);
        let shared = Arc::new(Shared {
            fetcher: Fetcher::new(&config)?,
            store,
            monitor: Arc::clone(&self.monitor),
            journal,
            path_owner,
            claimed: Mutex::new(HashSet::new()),
            bandwidth: config.limit_rate.map(crate::schedule::rate::Bandwidth::new),
            rule_bandwidth: config
                .host_rules
                .iter()
                .map(|r| r.limit_rate.map(crate::schedule::rate::Bandwidth::new))
                .collect(),
            config,
        });
        self.monitor.restart_clock();

        let seen = SeenIndex::new(&shared.store.state_path(&format!("seen-{}.sqlite", std::process::id())));
        let window = shared.config.concurrency * 4 + 64;
        let (input_tx, input_rx) = mpsc::channel(4);
        let reader_shared = Arc::clone(&shared);
        let reader = std::thread::Builder::new()
            .name("haul-manifest".into())
            .spawn(move || read_manifest(jobs.into_iter(), &reader_shared, skip_reader.as_ref(), seen, &input_tx))
            .map_err(|e| Error::io("start manifest reader", "", e))?;

        let mut dispatcher = Dispatcher {
            shared: Arc::clone(&shared),
            reporter,
            scheduler: Scheduler::new(
                shared.config.concurrency,
                Policy {
                    per_host: shared.config.per_host,
                    adaptive: shared.config.adaptive,
                    rate: shared.config.rate,
                    rules: shared.config.host_rules.clone().into(),
                },
            ),
            views_at: Instant::now(),
            spill: Spill::new(&shared.store.state_path(&format!("spill-{}.sqlite", std::process::id()))),
            host_queue: (shared.config.per_host * 2).clamp(16, window),
            unproductive: 0,
            held: VecDeque::new(),
            running: 0,
            stopped: VecDeque::new(),
            summary: Summary::default(),
            jitter: Jitter::new(seed()),
            backoff: Backoff {
                base: shared.config.retry_wait,
                cap: shared.config.retry_cap,
            },
            window,
        };
        let mut fleet = self
            .fleet_rx
            .lock()
            .expect("fleet channel")
            .take()
            .ok_or_else(|| Error::Internal("the engine is already running".into()))?;
        let (mut summary, input_ended) = dispatcher.run(input_rx, self.cancel.subscribe(), &mut fleet).await;
        *self.fleet_rx.lock().expect("fleet channel") = Some(fleet);
        // A reader still blocked on its input (a pipe whose producer stays open) is left to end
        // with the process: joining it here would hang the cancelled run.
        if input_ended && reader.join().is_err() {
            summary
                .fatal
                .get_or_insert_with(|| "the manifest reader panicked".to_owned());
        }
        drop(dispatcher);
        shared.store.unlock();
        if let Some(journal) = &shared.journal
            && let Err(e) = journal.close()
        {
            summary.fatal.get_or_insert_with(|| e.to_string());
        }
        let stats = self.monitor.stats();
        summary.bytes = stats.bytes;
        summary.retries = stats.retries;
        summary.bad_lines = stats.bad_lines;
        summary.elapsed = stats.elapsed;
        Ok(summary)
    }
}

fn seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos());
    (nanos as u64) ^ u64::from(std::process::id()).rotate_left(32)
}

/// The reader thread: manifest → archive check → channel. Blocking I/O lives here, off the
/// async workers.
fn read_manifest(
    jobs: impl Iterator<Item = Result<Job, ManifestError>>,
    shared: &Shared,
    archive: Option<&ArchiveReader>,
    mut seen: SeenIndex,
    tx: &mpsc::Sender<Vec<Input>>,
) {
    let mut count = 0u64;
    let mut batch = Vec::new();
    let mut jobs = jobs;
    loop {
        // A panicking manifest iterator (a library caller's) ends the run as a fatal error, not
        // as a clean partial run.
        let item = match std::panic::catch_unwind(AssertUnwindSafe(|| jobs.next())) {
            Ok(Some(item)) => item,
            Ok(None) => break,
            Err(_) => {
                batch.push(Input::Fatal(Error::Internal("the manifest reader panicked".into())));
                let _ = tx.blocking_send(batch);
                return;
            }
        };
        let input = match item {
            Err(bad) => Input::Bad(bad),
            Ok(job) => {
                count += 1;
                match prepare(job, shared, archive, &mut seen) {
                    Ok(input) => input,
                    Err(fatal) => {
                        batch.push(Input::Fatal(fatal));
                        let _ = tx.blocking_send(batch);
                        return;
                    }
                }
            }
        };
        // An input that may block gathers only while its next jobs are ready: a batch never
        // waits behind a read that blocks.
        let gather = !shared.config.input_may_stall || shared.config.input_ready.as_ref().is_some_and(|r| r.get() > 0);
        let urgent = !gather || matches!(input, Input::Job(_));
        batch.push(input);
        // A job is handed over at once while the dispatcher keeps up (work starts with the
        // first line); skips and bad lines only count, so they gather into batches (a million
        // archived jobs wake the dispatcher 15,000 times, not a million). Under backpressure,
        // jobs gather up to a batch too.
        if !urgent && batch.len() < INPUT_BATCH {
            continue;
        }
        batch = match tx.try_send(batch) {
            Ok(()) => Vec::new(),
            Err(mpsc::error::TrySendError::Full(full)) if gather && full.len() < INPUT_BATCH => full,
            Err(mpsc::error::TrySendError::Full(full)) => {
                if tx.blocking_send(full).is_err() {
                    return;
                }
                Vec::new()
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return, // the dispatcher stopped
        };
    }
    batch.push(Input::End(count));
    let _ = tx.blocking_send(batch);
}

/// Decides a job's path and checks the archive.
fn prepare(job: Job, shared: &Shared, archive: Option<&ArchiveReader>, seen: &mut SeenIndex) -> Result<Input, Error> {
    let rel: RelPath = match shared.config.destination(&job) {
        Ok(rel) => rel,
        Err(reason) => return Ok(Input::Refused(Box::new(job), Error::Path(reason))),
    };
    let mut validators = Validators::default();
    let mut known_total = None;
    let mut split_missing = None;
    let mut stale = false;
    if let Some(archive) = archive
        && let Some(row) = archive.lookup(&job.id)?
    {
        match row.status {
            RowStatus::Done => {
                // A file haul recorded writing is looked for (one stat, by the dispatcher):
                // deleted since, it is fetched again. An imported id has no path: done
                // elsewhere, nothing to look for.
                return Ok(match row.path {
                    Some(path) => Input::Archived(Box::new(job), path, rel),
                    None => Input::Skip(Box::new(job), rel.as_str().to_owned(), "archived", None),
                });
            }
            RowStatus::Failed if row.stale => stale = true,
            RowStatus::Partial | RowStatus::Failed => {
                validators = Validators {
                    etag: row.etag,
                    last_modified: row.last_modified,
                };
                known_total = row.size;
                split_missing = row
                    .segments
                    .as_deref()
                    .zip(row.size)
                    .and_then(|(text, total)| plan::parse_ranges(text, total));
            }
        }
    }
    // After the archive: a done job is skipped as archived whatever its twins, so the index
    // (a few microseconds a job) is paid only by jobs that will be fetched.
    match seen.note(&job)? {
        Seen::First => {}
        Seen::Duplicate(line) => {
            let detail = if line > 0 {
                format!("duplicate of line {line}")
            } else {
                "duplicate of an earlier job".to_owned()
            };
            return Ok(Input::Skip(
                Box::new(job),
                rel.as_str().to_owned(),
                "duplicate",
                Some(detail),
            ));
        }
        Seen::RepeatedId(line) => {
            let error = Error::RepeatedId {
                id: job.id.clone(),
                line,
            };
            return Ok(Input::Refused(Box::new(job), error));
        }
    }
    let mut state = JobState::new(job, rel.as_str().to_owned());
    state.validators = validators;
    state.known_total = known_total;
    state.split_missing = split_missing;
    state.stale = stale;
    Ok(Input::Job(Box::new(state)))
}

/// How often the monitor's view of the busiest hosts is refreshed.
const HOST_VIEWS_EVERY: Duration = Duration::from_millis(250);
/// Hosts shown at most.
const HOST_VIEWS: usize = 8;

/// Jobs read ahead onto disk at most (about 200 bytes each): past this, reading waits.
const SPILL_MAX: u64 = 1_000_000;
/// Jobs read ahead onto disk in a row without finding a host with nothing queued: past this,
/// the manifest is one busy host (or a few) for as far as is worth reading, and the next job
/// read waits in memory for its host's room instead (reading ahead resumes when a job finds a
/// host with nothing queued).
const READ_AHEAD: u64 = 16_384;
/// How often hosts with jobs on disk are checked for room (besides when their jobs finish).
const REFILL_EVERY: Duration = Duration::from_millis(100);

struct Dispatcher {
    /// When the monitor's host views were last refreshed.
    views_at: Instant,
    /// Jobs read ahead for hosts whose queue is full (see `archive::Spill`).
    spill: Spill,
    /// Jobs of one host ready in memory at most; the rest waits in the spill.
    host_queue: usize,
    /// Jobs spilled since one last went to a host with nothing queued (see [`READ_AHEAD`]).
    unproductive: u64,
    /// Jobs read past [`READ_AHEAD`], waiting in order for their host's room (at most one
    /// reader batch: reading waits while any is held).
    held: VecDeque<Box<JobState>>,
    shared: Arc<Shared>,
    reporter: Arc<dyn Reporter>,
    scheduler: Scheduler<Work>,
    /// Jobs whose worker runs (a segmented transfer may hold no slot for a moment).
    running: usize,
    /// Jobs taken out of the queues when the run began to stop (reported pending at the end).
    stopped: VecDeque<Box<JobState>>,
    summary: Summary,
    jitter: Jitter,
    backoff: Backoff,
    window: usize,
}

impl Dispatcher {
    /// Runs until every job ended or the run stops; returns the summary and whether the input
    /// was read to its end.
    async fn run(
        &mut self,
        mut input: mpsc::Receiver<Vec<Input>>,
        mut cancel: watch::Receiver<bool>,
        fleet: &mut mpsc::UnboundedReceiver<FleetNews>,
    ) -> (Summary, bool) {
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Note>();
        let mut input_open = true;
        let mut stopping = false;
        loop {
            let now = Instant::now();
            if !stopping {
                self.place_held();
                while let Some(started) = self.scheduler.pop(now) {
                    match started.job {
                        Work::Job(mut state) => {
                            debug_assert_eq!(started.host, state.host);
                            state.ticket = Some(started.ticket);
                            self.running += 1;
                            self.spawn(state, &done_tx, &cancel);
                        }
                        Work::Slot(reply) => {
                            // A transfer that ended meanwhile drops the grant, which gives the
                            // slot back (see `split::Granted`).
                            let slots = split::Slots {
                                host: started.host,
                                tx: done_tx.clone(),
                            };
                            let _ = reply.send(split::Granted::new(started.ticket, slots));
                        }
                    }
                }
            } else if self.stopped.is_empty() && self.scheduler.waiting() > 0 {
                // Nothing starts any more: waiting jobs end pending, and segmented transfers
                // waiting for a slot learn that none will come.
                self.stopped = self
                    .scheduler
                    .take_waiting()
                    .into_iter()
                    .filter_map(|work| match work {
                        Work::Job(state) => Some(state),
                        Work::Slot(_) => None,
                    })
                    .collect();
            }
            if now.saturating_duration_since(self.views_at) >= HOST_VIEWS_EVERY {
                self.views_at = now;
                self.shared.monitor.set_hosts(self.scheduler.views(now, HOST_VIEWS));
            }
            if (!input_open || stopping)
                && self.scheduler.active() == 0
                && self.running == 0
                && (stopping || (self.scheduler.waiting() == 0 && self.spill.len() == 0 && self.held.is_empty()))
            {
                break;
            }
            let mut wakeup = self.scheduler.next_wakeup();
            if self.spill.len() > 0 && !stopping {
                if self.refill_all() {
                    stopping = true;
                    continue;
                }
                let refill = now + REFILL_EVERY;
                wakeup = Some(wakeup.map_or(refill, |w| w.min(refill)));
            }
            // Read on while the window has room; with jobs on disk, only while some transfer
            // slot is idle (reading further might find a host to fill it).
            let accept = input_open
                && !stopping
                && self.held.is_empty()
                && self.scheduler.waiting() < self.window
                && (self.spill.len() == 0
                    || (self.scheduler.active() < self.shared.config.concurrency && self.spill.len() < SPILL_MAX));
            tokio::select! {
                biased;
                changed = cancel.changed(), if !stopping => {
                    if changed.is_err() || *cancel.borrow() {
                        stopping = true;
                        self.summary.interrupted = true;
                    }
                }
                Some(note) = done_rx.recv() => match note {
                    Note::Done(done) => {
                        self.running -= 1;
                        if self.on_finished(done) {
                            stopping = true;
                        }
                    }
                    Note::Answered { host, ticket } => self.scheduler.answered(&host, ticket),
                    Note::WantSlot { host, reply } => {
                        if !stopping {
                            self.scheduler.push_front(&host, Work::Slot(reply), Instant::now());
                        }
                    }
                    Note::SlotEnded { host, ticket, signal, pause } => {
                        let now = Instant::now();
                        self.scheduler.finish(&host, ticket, signal, now);
                        if let Some((wait, reason)) = pause
                            && self.scheduler.cool_down(&host, deadline(now, wait), now, &reason)
                        {
                            tracing::info!(target: "haul::decision", %host, %reason, "host paused");
                            self.reporter.on_host_paused(&host, wait, &reason);
                        }
                        if self.spill.len_of(&host) > 0 && self.refill(&host) {
                            stopping = true;
                        }
                    }
                },
                Some(news) = fleet.recv(), if !stopping => match news {
                    FleetNews::Pause(host, wait, reason) => {
                        // Another worker was told to wait: not reported back to the fleet.
                        let now = Instant::now();
                        if self.scheduler.cool_down(&host, deadline(now, wait), now, &reason) {
                            tracing::info!(target: "haul::decision", %host, %reason, "host paused by the fleet");
                        }
                    }
                    FleetNews::Share(workers) => {
                        tracing::info!(target: "haul::decision", workers, "per-host budgets shared");
                        self.scheduler.set_share(workers, Instant::now());
                    }
                },
                batch = input.recv(), if accept => match batch {
                    Some(batch) => {
                        for message in batch {
                            if self.on_input(message) {
                                stopping = true;
                                break;
                            }
                        }
                    }
                    None => input_open = false,
                },
                () = sleep_until(wakeup), if wakeup.is_some() && !stopping => {}
            }
        }
        // Whatever is still queued or on disk was never finished: report it pending.
        let waiting = self.scheduler.take_waiting().into_iter().filter_map(|work| match work {
            Work::Job(state) => Some(state),
            Work::Slot(_) => None,
        });
        let stopped = std::mem::take(&mut self.stopped);
        for state in stopped.into_iter().chain(waiting).chain(std::mem::take(&mut self.held)) {
            self.finish_report(&state, JobStatus::Pending, None, None);
        }
        let hosts: Vec<String> = self.spill.hosts().map(str::to_owned).collect();
        for host in hosts {
            while let Ok(batch) = self.spill.take(&host, 1024) {
                if batch.is_empty() {
                    break;
                }
                for bytes in batch {
                    if let Some(state) = spilled::decode(&bytes) {
                        self.finish_report(&state, JobStatus::Pending, None, None);
                    }
                }
            }
        }
        self.summary.hosts = self.scheduler.pushed_back(HOST_VIEWS);
        (std::mem::take(&mut self.summary), !input_open)
    }

    /// Queues a job read from the manifest: in memory while its host's queue has room, else on
    /// disk (after the host's earlier spilled jobs). True when the run must stop (the spill
    /// failed).
    fn admit(&mut self, mut state: Box<JobState>) -> bool {
        let host = state.host.clone();
        if self.spill.len_of(&host) == 0 && self.scheduler.ready(&host) < self.host_queue {
            if self.scheduler.ready(&host) == 0 {
                self.unproductive = 0; // a host with nothing queued: reading ahead paid
            }
            self.scheduler.push(&host, Work::Job(state), Instant::now());
            return false;
        }
        if self.unproductive >= READ_AHEAD || !self.held.is_empty() {
            self.held.push_back(state);
            return false;
        }
        self.unproductive += 1;
        // Its claim is released while on disk (memory stays bounded) and taken again later.
        self.shared.release(&state.claims);
        state.claims.clear();
        match self.spill.push(&host, &spilled::encode(&state)) {
            Ok(()) => false,
            Err(error) => {
                self.summary.fatal.get_or_insert_with(|| error.to_string());
                self.finish_report(&state, JobStatus::Pending, None, None);
                true
            }
        }
    }

    /// Queues held jobs, in order, while the first one's host has room (and none of its jobs
    /// wait on disk before it).
    fn place_held(&mut self) {
        while let Some(state) = self.held.front() {
            let host = &state.host;
            if self.spill.len_of(host) > 0 || self.scheduler.ready(host) >= self.host_queue {
                return;
            }
            let host = host.clone();
            let state = self.held.pop_front().expect("front exists");
            self.scheduler.push(&host, Work::Job(state), Instant::now());
        }
    }

    /// Moves spilled jobs of `host` back into memory while its queue has room. True when the
    /// run must stop.
    fn refill(&mut self, host: &str) -> bool {
        // Jobs waiting for a retry do not count: they hold no place a new job could use, and a
        // host answering scattered 503s would otherwise starve its queue.
        let room = self.host_queue.saturating_sub(self.scheduler.ready(host));
        if room < self.host_queue / 2 || self.spill.len_of(host) == 0 {
            return false;
        }
        let batch = match self.spill.take(host, room) {
            Ok(batch) => batch,
            Err(error) => {
                self.summary.fatal.get_or_insert_with(|| error.to_string());
                return true;
            }
        };
        for bytes in batch {
            let Some(mut state) = spilled::decode(&bytes) else {
                continue;
            };
            match self.shared.claim(&state.rel) {
                Some(claim) => state.claims.push(claim),
                None => {
                    let error = Error::Conflict(state.rel.clone());
                    if self.fail(&state, &error) {
                        return true;
                    }
                    continue;
                }
            }
            self.scheduler.push(host, Work::Job(state), Instant::now());
        }
        false
    }

    /// [`Dispatcher::refill`] for every host with jobs on disk.
    fn refill_all(&mut self) -> bool {
        let hosts: Vec<String> = self.spill.hosts().map(str::to_owned).collect();
        hosts.iter().any(|host| self.refill(host))
    }

    fn spawn(&self, mut state: Box<JobState>, done: &mpsc::UnboundedSender<Note>, cancel: &watch::Receiver<bool>) {
        if state.attempts == 0 {
            self.reporter.on_job_start(&state.job);
        }
        state.started.get_or_insert_with(Instant::now);
        let shared = Arc::clone(&self.shared);
        let done = done.clone();
        let mut cancel = cancel.clone();
        let slots = split::Slots {
            host: state.host.clone(),
            tx: done.clone(),
        };
        tokio::spawn(async move {
            // Cancellation is cooperative (see `transfer`): the attempt ends its body loop and
            // keeps its part; it is never dropped mid-write or mid-rename. A panic is this job's
            // failure, never a run that waits forever for its report.
            let attempt = AssertUnwindSafe(transfer::run(&shared, &mut state, &mut cancel, &slots))
                .catch_unwind()
                .await;
            let result = attempt.unwrap_or_else(|panic| {
                let text = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a transfer panicked".to_owned());
                Err(Error::Internal(text))
            });
            let _ = done.send(Note::Done(WorkerDone { state, result }));
        });
    }

    /// Handles a reader message; true when the run must stop (a fatal archive error).
    fn on_input(&mut self, message: Input) -> bool {
        match message {
            Input::Job(mut state) => {
                self.shared.monitor.on_read();
                match self.shared.claim(&state.rel) {
                    Some(claim) => {
                        state.claims.push(claim);
                        self.summary.stale += u64::from(state.stale);
                    }
                    None if state.stale => {
                        // The same archived job twice in the manifest, its file missing: the
                        // first line fetches it.
                        let rel = state.rel.clone();
                        self.finish_report(&state, JobStatus::Skipped, Some("duplicate"), Some(&rel));
                        return false;
                    }
                    None => {
                        let error = Error::Conflict(state.rel.clone());
                        return self.fail(&state, &error);
                    }
                }
                return self.admit(state);
            }
            Input::Archived(job, path, rel) => {
                if self.shared.store.is_missing(&path) {
                    let mut state = Box::new(JobState::new(*job, rel.as_str().to_owned()));
                    state.stale = true;
                    return self.on_input(Input::Job(state));
                }
                self.shared.monitor.on_read();
                let state = skipped_state(*job, path);
                self.finish_report(&state, JobStatus::Skipped, Some("archived"), None);
            }
            Input::Skip(job, path, reason, detail) => {
                self.shared.monitor.on_read();
                let state = skipped_state(*job, path);
                self.finish_report(&state, JobStatus::Skipped, Some(reason), detail.as_deref());
            }
            Input::Refused(job, error) => {
                self.shared.monitor.on_read();
                let state = skipped_state(*job, String::new());
                return self.fail(&state, &error);
            }
            Input::Bad(bad) => {
                self.shared.monitor.on_bad_line();
                self.reporter.on_bad_line(&bad);
            }
            Input::End(count) => self.shared.monitor.set_total(count),
            Input::Fatal(error) => {
                self.summary.fatal = Some(error.to_string());
                return true;
            }
        }
        false
    }

    /// Handles a worker's result; true when the run must stop (fatal error).
    fn on_finished(&mut self, done: WorkerDone) -> bool {
        let WorkerDone { state, result } = done;
        let signal = load_signal(&result, state.ttfb);
        if let Some(ticket) = state.ticket {
            self.scheduler.finish(&state.host, ticket, signal, Instant::now());
        }
        if self.spill.len_of(&state.host) > 0 && self.refill(&state.host) {
            return true;
        }
        match result {
            Ok(Outcome::Interrupted) => {
                // Keep the validators so the next run can resume the part file with If-Range.
                self.shared.note_partial(&state, state.known_total);
                self.finish_report(&state, JobStatus::Pending, Some("interrupted"), None);
                false
            }
            Ok(Outcome::Done { file, verified }) => {
                let stop = self.record_done(&state, &file, verified);
                let mut state = state;
                state.verified = verified;
                state.digests = Some(file.digests);
                self.summary.unverified += u64::from(!verified);
                self.finish_report(&state, JobStatus::Done, (!verified).then_some("unverified"), None);
                stop
            }
            Ok(Outcome::Adopted { file, verified }) => {
                let stop = self.record_done(&state, &file, verified);
                self.summary.unverified += u64::from(!verified);
                let mut adopted = state;
                adopted.bytes = file.bytes;
                adopted.verified = verified;
                adopted.digests = Some(file.digests);
                let reason = if verified { "exists" } else { "exists, unverified" };
                self.finish_report(&adopted, JobStatus::Skipped, Some(reason), None);
                stop
            }
            Err(error) => self.on_error(state, error),
        }
    }

    fn on_error(&mut self, mut state: Box<JobState>, error: Error) -> bool {
        let class = classify(&error);
        let retryable = matches!(class, ErrorClass::Transient | ErrorClass::RetryAfter(_));
        if class == ErrorClass::Fatal {
            self.summary
                .fatal
                .get_or_insert_with(|| format!("{error} ({})", error_hint(&error)));
            self.fail(&state, &error);
            return true;
        }
        if error.is_out_of_files() && state.starved < MAX_STARVED {
            // Out of descriptors: back-pressure from the other transfers, not this job's fault.
            state.attempts = state.attempts.saturating_sub(1);
            state.starved += 1;
        }
        if !retryable || state.attempts > self.shared.config.retries {
            return self.fail(&state, &error);
        }
        let now = Instant::now();
        let delay = match class {
            ErrorClass::RetryAfter(wait) => wait.min(self.shared.config.max_retry_wait),
            _ => self.backoff.delay(state.attempts, self.jitter.unit()),
        };
        // A 429 says "too many" of the whole client: the host pauses for its Retry-After. A 503
        // or another error pauses only this job (its Retry-After or backoff), and the host's
        // limit went down in `finish` — unless most of the host's recent answers are errors (an
        // outage): then the host pauses too, and probes with one request at a time.
        let outage = self.scheduler.in_outage(&state.host);
        if error.http_status() == Some(429) || outage {
            let reason = if outage {
                format!("most recent answers failed ({error}); probing one request at a time")
            } else {
                format!("429 Too Many Requests, waiting {:.1} s", delay.as_secs_f64())
            };
            if self
                .scheduler
                .cool_down(&state.host, deadline(now, delay), now, &reason)
            {
                tracing::info!(target: "haul::decision", host = %state.host, %reason, "host paused");
                self.reporter.on_host_paused(&state.host, delay, &reason);
            }
        }
        self.shared.monitor.on_retry();
        tracing::info!(
            target: "haul::decision",
            url = %state.job.safe_url(),
            attempt = state.attempts,
            delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            %error,
            "retry"
        );
        self.reporter.on_retry(&state.job, state.attempts, &error, delay);
        let host = state.host.clone();
        self.scheduler
            .retry_at(&host, Work::Job(state), deadline(now, delay), now);
        false
    }

    /// Records a finished job; true when the archive failed (the run must stop: files
    /// downloaded from now on could not be recorded).
    fn record_done(&mut self, state: &JobState, file: &crate::store::Finished, verified: bool) -> bool {
        let Some(journal) = &self.shared.journal else {
            return false;
        };
        let record = Record {
            id: state.job.id.clone(),
            url: state.job.url.as_str().to_owned(),
            path: Some(state.final_rel.clone()),
            size: Some(file.bytes),
            sha256: file.digests.sha256.map(|d| to_hex(&d)),
            blake3: file.digests.blake3.map(|d| to_hex(&d)),
            verified,
            etag: state.validators.etag.clone(),
            last_modified: state.validators.last_modified.clone(),
            status: RowStatus::Done,
            http_status: state.http_status,
            error_class: None,
            error: None,
            attempts: state.attempts,
            spec: None,
            segments: None,
        };
        match journal.record(record) {
            Ok(()) => false,
            Err(e) => {
                self.summary.fatal.get_or_insert_with(|| e.to_string());
                true
            }
        }
    }

    /// Reports a failed job and records it; true when the archive failed (the run stops).
    fn fail(&mut self, state: &JobState, error: &Error) -> bool {
        let mut stop = false;
        if let Some(journal) = &self.shared.journal
            // A conflict's row would overwrite the row of the job that holds the path or id.
            && !matches!(error, Error::Conflict(_) | Error::RepeatedId { .. })
        {
            let recorded = journal.record(Record {
                id: state.job.id.clone(),
                url: state.job.url.as_str().to_owned(),
                path: (!state.final_rel.is_empty()).then(|| state.final_rel.clone()),
                // The length the server gave with these validators: a resume must agree with it.
                size: state.known_total.or(state.job.size),
                sha256: None,
                blake3: None,
                verified: false,
                etag: state.validators.etag.clone(),
                last_modified: state.validators.last_modified.clone(),
                status: RowStatus::Failed,
                http_status: error.http_status().or(state.http_status),
                error_class: Some(classify(error).name().to_owned()),
                error: Some(error.to_string()),
                attempts: state.attempts,
                spec: Some(state.job.to_manifest_line(&self.shared.config.secret_headers)),
                segments: state.split_missing.as_deref().map(plan::format_ranges),
            });
            if let Err(e) = recorded {
                self.summary.fatal.get_or_insert_with(|| e.to_string());
                stop = true;
            }
        }
        self.finish_report(
            state,
            JobStatus::Failed,
            Some(&error.reason()),
            Some(&error.to_string()),
        );
        stop
    }

    fn finish_report(&mut self, state: &JobState, status: JobStatus, reason: Option<&str>, error: Option<&str>) {
        self.shared.release(&state.claims);
        tracing::debug!(
            target: "haul::decision",
            url = %state.job.safe_url(),
            path = %state.final_rel,
            status = status.name(),
            reason,
            error,
            "job ended"
        );
        let report = JobReport {
            id: &state.job.id,
            url: state.job.safe_url(),
            host: &state.host,
            path: (!state.final_rel.is_empty()).then_some(state.final_rel.as_str()),
            status,
            http_status: state.http_status,
            bytes: state.bytes,
            attempts: state.attempts,
            reason,
            error,
            line: state.job.line,
            verified: state.verified,
            sha256: state.digests.as_ref().and_then(|d| d.sha256.as_ref()),
            blake3: state.digests.as_ref().and_then(|d| d.blake3.as_ref()),
            duration: state.started.map(|s| s.elapsed()),
            final_url: state.final_url.as_ref().map(SafeUrl),
        };
        self.shared.monitor.on_finished(status);
        self.summary.record(&report);
        self.reporter.on_job_finished(&report);
    }
}

fn skipped_state(job: Job, path: String) -> JobState {
    let mut state = JobState::new(job, path);
    state.checked_exists = true;
    state
}

/// A fresh job as the spill stores it.
mod spilled {
    use serde::{Deserialize, Serialize};

    use super::transfer::JobState;
    use crate::fetch::Validators;
    use crate::job::{Job, parse_hex, to_hex};

    #[derive(Serialize, Deserialize)]
    struct Spilled {
        id: String,
        url: String,
        path: Option<String>,
        size: Option<u64>,
        sha256: Option<String>,
        md5: Option<String>,
        headers: Vec<(String, String)>,
        line: u64,
        rel: String,
        etag: Option<String>,
        last_modified: Option<String>,
        known_total: Option<u64>,
        #[serde(default)]
        stale: bool,
        #[serde(default)]
        split_missing: Option<Vec<(u64, u64)>>,
    }

    pub(super) fn encode(state: &JobState) -> Vec<u8> {
        let job = &state.job;
        let spilled = Spilled {
            id: job.id.clone(),
            url: job.url.as_str().to_owned(),
            path: job.path.clone(),
            size: job.size,
            sha256: job.sha256.map(|d| to_hex(&d)),
            md5: job.md5.map(|d| to_hex(&d)),
            headers: job.headers.clone(),
            line: job.line,
            rel: state.rel.clone(),
            etag: state.validators.etag.clone(),
            last_modified: state.validators.last_modified.clone(),
            known_total: state.known_total,
            stale: state.stale,
            split_missing: state.split_missing.clone(),
        };
        serde_json::to_vec(&spilled).expect("plain data encodes")
    }

    pub(super) fn decode(bytes: &[u8]) -> Option<Box<JobState>> {
        let s: Spilled = serde_json::from_slice(bytes).ok()?;
        let mut job = Job::new(url::Url::parse(&s.url).ok()?);
        job.id = s.id;
        job.path = s.path;
        job.size = s.size;
        job.sha256 = s.sha256.as_deref().and_then(parse_hex);
        job.md5 = s.md5.as_deref().and_then(parse_hex);
        job.headers = s.headers;
        job.line = s.line;
        let mut state = JobState::new(job, s.rel);
        state.validators = Validators {
            etag: s.etag,
            last_modified: s.last_modified,
        };
        state.known_total = s.known_total;
        state.stale = s.stale;
        state.split_missing = s.split_missing;
        Some(Box::new(state))
    }
}

/// What an attempt's end says of its host's load (see `schedule::host`).
fn load_signal(result: &Result<Outcome, Error>, ttfb: Option<Duration>) -> Signal {
    match result {
        Ok(Outcome::Done { .. }) => ttfb.map_or(Signal::Nothing, Signal::Answer),
        Ok(Outcome::Adopted { .. } | Outcome::Interrupted) => Signal::Nothing,
        Err(error) => error_signal(error, ttfb),
    }
}

/// What a failed request says of its host's load.
fn error_signal(error: &Error, ttfb: Option<Duration>) -> Signal {
    match error {
        Error::Status { status: 429, .. } => Signal::Refused,
        Error::Status {
            status: 408 | 500 | 502 | 503 | 504,
            ..
        } => Signal::Error,
        Error::Status { .. } | Error::Range(_) => ttfb.map_or(Signal::Nothing, Signal::Answer),
        Error::Network(e) if e.is_connect() || e.is_timeout() => Signal::Error,
        Error::Network(_) | Error::IdleTimeout(_) | Error::ShortBody { .. } => Signal::Error,
        _ => Signal::Nothing,
    }
}

/// What the user can do about a fatal error.
fn error_hint(error: &Error) -> &'static str {
    match error {
        Error::Io { source, .. } if crate::error::is_disk_full(source) => {
            "free some space or choose another output directory, then run again: finished files are kept"
        }
        Error::Io { .. } | Error::Local { .. } => "check that the output directory is writable, then run again",
        _ => "fix the cause and run again: finished files are kept and skipped",
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
