//! The archive: a crash-safe journal of every job's state, in SQLite (the embedded default) or
//! PostgreSQL (see [`Backend`] and [`Location`]).
//!
//! One table, keyed by the job id, is at once the skip list (status `done`), the resume state
//! (validators of `partial` jobs) and the failure report. Writes come only from one writer
//! thread, in batched transactions (group commit); the engine sends a `done` record only after
//! the file has been renamed into place, so a crash can lose the last records but never mark an
//! unfinished file done. A lock file keeps a second haul process off the same archive.
//!
//! Durability: the database runs in WAL mode. With `synchronous=NORMAL` (the default) a
//! committed batch survives a crash of haul (`kill -9`); the last batches may be lost on power
//! failure, and the files they name are then adopted by the next run (see the engine). With
//! `--fsync`, files and directories are fsynced before their record and the database uses
//! `synchronous=FULL`, so a record implies the file survives power loss.

mod backend;
mod batch;
#[cfg(feature = "queue")]
mod postgres;
mod seen;
mod spill;
mod sqlite;

use std::cell::RefCell;
use std::fs::{self, File};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::Connection;

pub use backend::{Backend, FailedRow, Location};
pub(crate) use batch::Batcher;
pub(crate) use seen::{Seen, SeenIndex};
pub(crate) use spill::Spill;

use crate::error::Error;

/// Records per transaction at most.
pub const DEFAULT_BATCH_RECORDS: usize = 512;
/// Longest a finished job waits for its record to be committed.
pub const DEFAULT_BATCH_DELAY: Duration = Duration::from_millis(250);

/// The state of a job as stored in the archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowStatus {
    /// Complete and verified at `path`.
    Done,
    /// Failed; `error` says why.
    Failed,
    /// Started; a `.part` file may be resumable with the stored validators.
    Partial,
}

impl RowStatus {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Done => "done",
            Self::Failed => "failed",
            Self::Partial => "partial",
        }
    }

    pub(crate) fn parse(text: &str) -> Self {
        match text {
            "done" => Self::Done,
            "partial" => Self::Partial,
            _ => Self::Failed,
        }
    }
}

/// One row to write.
#[derive(Debug, Clone)]
pub struct Record {
    /// The job id (archive key).
    pub id: String,
    /// The URL as given in the manifest (kept so `--retry-failed` can fetch it again).
    pub url: String,
    /// The final path relative to the output directory.
    pub path: Option<String>,
    /// Size in bytes (done), or expected size (partial).
    pub size: Option<u64>,
    /// SHA-256 hex of the file (done, when computed: `--digest sha256` or a manifest checksum).
    pub sha256: Option<String>,
    /// BLAKE3 hex of the file (done, with the default `--digest blake3`).
    pub blake3: Option<String>,
    /// False when nothing could check the file's length or content (see `Summary::unverified`).
    pub verified: bool,
    /// The ETag of the response.
    pub etag: Option<String>,
    /// The Last-Modified of the response.
    pub last_modified: Option<String>,
    /// The state.
    pub status: RowStatus,
    /// The last HTTP status.
    pub http_status: Option<u16>,
    /// The error class name, for failures.
    pub error_class: Option<String>,
    /// The error message, for failures.
    pub error: Option<String>,
    /// Attempts made.
    pub attempts: u32,
    /// For failures: the job as a JSONL manifest line (URL, id, path, size, checksums,
    /// non-secret headers, original line), so `haul failed` and `--retry-failed` run it again
    /// unchanged. See [`Job::to_manifest_line`](crate::Job::to_manifest_line).
    pub spec: Option<String>,
    /// For a partial segmented transfer: the byte ranges already in its part file
    /// (`start-end,start-end`, ends exclusive), so a later run fetches only the rest.
    pub segments: Option<String>,
}

/// What a lookup finds of a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// The state.
    pub status: RowStatus,
    /// The final path.
    pub path: Option<String>,
    /// Size in bytes.
    pub size: Option<u64>,
    /// SHA-256 hex.
    pub sha256: Option<String>,
    /// BLAKE3 hex.
    pub blake3: Option<String>,
    /// The ranges a partial segmented transfer holds (see [`Record::segments`]).
    pub segments: Option<String>,
    /// The ETag seen.
    pub etag: Option<String>,
    /// The Last-Modified seen.
    pub last_modified: Option<String>,
    /// False when nothing could check the file's length or content.
    pub verified: bool,
    /// True for a done row `haul verify` found missing or corrupt on disk: the next run
    /// fetches the job again and replaces the file, whatever `--on-exists` says.
    pub stale: bool,
}

/// A done row, as `haul verify` checks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DoneRow {
    /// The job id.
    pub id: String,
    /// The path relative to the output directory.
    pub path: String,
    /// The recorded size.
    pub size: Option<u64>,
    /// The recorded SHA-256 (hex).
    pub sha256: Option<String>,
    /// The recorded BLAKE3 (hex).
    pub blake3: Option<String>,
}

/// The error class of rows `haul verify` marked stale.
pub const STALE: &str = "stale";

fn db_error(context: &str, e: impl std::fmt::Display) -> Error {
    Error::Archive(format!("{context}: {e}"))
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0))
}

/// A scratch database of one run in haul's state directory (the duplicate index, the read-ahead
/// spill): an old file of the same name is replaced; no journal, no fsync (it is deleted with the
/// run, and a crash loses nothing the next run needs), an exclusive lock, a 2 MiB page cache.
pub(crate) fn scratch(path: &Path, schema: &str) -> rusqlite::Result<Connection> {
    let _ = fs::remove_file(path);
    let conn = Connection::open(path)?;
    conn.execute_batch(
        "PRAGMA journal_mode = OFF;
         PRAGMA synchronous = OFF;
         PRAGMA locking_mode = EXCLUSIVE;
         PRAGMA cache_size = -2048;",
    )?;
    conn.execute_batch(schema)?;
    Ok(conn)
}

/// An archive opened for a run: holds the lock until dropped.
#[derive(Debug)]
pub struct Archive {
    location: Location,
    _lock: Lock,
}

/// What keeps a second haul process off an archive: a locked file beside a SQLite archive, or a
/// session-level advisory lock held by a connection of its own in PostgreSQL.
#[derive(Debug)]
enum Lock {
    File(#[allow(dead_code)] File),
    #[cfg(feature = "queue")]
    Postgres(#[allow(dead_code)] postgres::Lock),
}

impl Archive {
    /// Opens (creating) the SQLite archive at `path` and locks it for this process.
    ///
    /// # Errors
    /// [`Error::Archive`] when it cannot be opened, or when another haul process holds it and
    /// `wait` is false. With `wait`, blocks until the other process ends.
    pub fn open(path: &Path, wait: bool) -> Result<Self, Error> {
        Self::open_at(&Location::File(path.to_owned()), wait)
    }

    /// Opens (creating) the archive at `location` and locks it for this process.
    ///
    /// # Errors
    /// As [`Archive::open`]; for PostgreSQL also when the database cannot be reached.
    pub fn open_at(location: &Location, wait: bool) -> Result<Self, Error> {
        let lock = match location {
            Location::File(path) => Lock::File(lock_file(path, wait)?),
            #[cfg(feature = "queue")]
            Location::Postgres { url, name } => Lock::Postgres(postgres::Lock::take(url, name, wait, location)?),
            #[cfg(not(feature = "queue"))]
            Location::Postgres { .. } => return Err(location.unsupported()),
        };
        if let Location::File(path) = location {
            sqlite::Sqlite::create(path)?;
        }
        Ok(Self {
            location: location.clone(),
            _lock: lock,
        })
    }

    /// Where the archive is.
    #[must_use]
    pub fn location(&self) -> &Location {
        &self.location
    }

    /// A read connection for skip checks (any thread; readers see committed rows while the
    /// writer writes).
    ///
    /// # Errors
    /// [`Error::Archive`] when the database cannot be opened.
    pub fn reader(&self) -> Result<ArchiveReader, Error> {
        ArchiveReader::open_at(&self.location)
    }

    /// Checks every done row with `check` (which says why its file is wrong, or `None` when it
    /// is right) and marks the wrong ones stale: failed with that reason, so the next run
    /// fetches them again and replaces the file. Rows are read and updated in batches; memory
    /// stays flat however many there are. Returns (rows checked, rows marked stale).
    ///
    /// # Errors
    /// [`Error::Archive`] on a database error.
    pub fn mark_stale(&self, mut check: impl FnMut(&DoneRow) -> Option<String>) -> Result<(u64, u64), Error> {
        let mut backend = self.location.connect()?;
        let (mut checked, mut stale) = (0u64, 0u64);
        let mut after = String::new();
        loop {
            // Keyset pagination by id: each batch is a short read, then a short write.
            let batch = backend.done_after(&after, 1024)?;
            let Some(last) = batch.last() else { break };
            after.clone_from(&last.id);
            let wrong: Vec<(String, String)> = batch
                .iter()
                .filter_map(|row| check(row).map(|why| (row.id.clone(), why)))
                .collect();
            checked += batch.len() as u64;
            stale += wrong.len() as u64;
            if !wrong.is_empty() {
                backend.mark_stale(&wrong)?;
            }
        }
        Ok((checked, stale))
    }

    /// Starts the single writer thread.
    ///
    /// # Errors
    /// [`Error::Archive`] when the database cannot be opened.
    pub fn writer(&self, max_records: usize, max_delay: Duration, fsync: bool) -> Result<Journal, Error> {
        let backend: Box<dyn Backend> = match &self.location {
            Location::File(path) => Box::new(sqlite::Sqlite::open_writer(path, fsync)?),
            other => other.connect()?,
        };
        Ok(Journal::start(backend, max_records, max_delay))
    }
}

/// Takes the lock file beside a SQLite archive.
fn lock_file(path: &Path, wait: bool) -> Result<File, Error> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(|e| Error::io("create archive directory", parent, e))?;
    }
    let mut lock_path = path.as_os_str().to_owned();
    lock_path.push(".lock");
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&lock_path)
        .map_err(|e| Error::io("create archive lock", &lock_path, e))?;
    if wait {
        lock.lock().map_err(|e| Error::io("lock archive", &lock_path, e))?;
    } else if lock.try_lock().is_err() {
        return Err(in_use(&path.display().to_string()));
    }
    Ok(lock)
}

/// The error of an archive another haul process holds.
fn in_use(shown: &str) -> Error {
    Error::Archive(format!(
        "{shown} is in use by another haul process; wait for it to finish, or pass --wait-archive"
    ))
}

/// Looks up jobs by id.
pub struct ArchiveReader {
    backend: RefCell<Box<dyn Backend>>,
}

impl std::fmt::Debug for ArchiveReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArchiveReader").finish_non_exhaustive()
    }
}

impl ArchiveReader {
    /// Opens a read connection to an existing SQLite archive, without taking the run lock.
    ///
    /// # Errors
    /// [`Error::Archive`] when the file cannot be opened or is not a haul archive.
    pub fn open(path: &Path) -> Result<Self, Error> {
        Self::open_at(&Location::File(path.to_owned()))
    }

    /// Opens a read connection to the archive at `location`, without taking the run lock.
    ///
    /// # Errors
    /// [`Error::Archive`] when it cannot be opened or is not a haul archive.
    pub fn open_at(location: &Location) -> Result<Self, Error> {
        Ok(Self {
            backend: RefCell::new(location.connect()?),
        })
    }

    /// True when the archive holds no job at all (a first run).
    ///
    /// # Errors
    /// [`Error::Archive`] on a database error.
    pub fn is_empty(&self) -> Result<bool, Error> {
        self.backend.borrow_mut().is_empty()
    }

    /// The row of `id`, if any. A SQLite reader shares one read transaction over up to 1,024
    /// lookups, so rows committed meanwhile may not be seen yet (the engine checks the archive
    /// as it was when the run started).
    ///
    /// # Errors
    /// [`Error::Archive`] on a database error.
    pub fn lookup(&self, id: &str) -> Result<Option<Row>, Error> {
        self.backend.borrow_mut().lookup(id)
    }

    /// The id of the done job whose file is `path`, if any.
    ///
    /// # Errors
    /// [`Error::Archive`] on a database error.
    pub fn owner_of(&self, path: &str) -> Result<Option<String>, Error> {
        self.backend.borrow_mut().owner_of(path)
    }

    /// Counts and bytes by status.
    ///
    /// # Errors
    /// [`Error::Archive`] on a database error.
    pub fn counts(&self) -> Result<Vec<(String, u64, u64)>, Error> {
        self.backend.borrow_mut().counts()
    }

    /// Failed jobs grouped by error class, HTTP status and host of the URL.
    ///
    /// # Errors
    /// [`Error::Archive`] on a database error.
    pub fn failure_groups(&self) -> Result<Vec<FailureGroup>, Error> {
        let mut groups: std::collections::BTreeMap<(String, String, String), (u64, String)> = Default::default();
        self.backend.borrow_mut().failed(&mut |row| {
            let class = row.class.unwrap_or_default();
            let host = url::Url::parse(&row.url).map_or_else(|_| "?".to_owned(), |u| crate::job::host_key(&u));
            let reason = row.http_status.map_or_else(|| class.clone(), |s| format!("http {s}"));
            let entry = groups
                .entry((reason, class, host))
                .or_insert((0, row.error.unwrap_or_default()));
            entry.0 += 1;
            Ok(())
        })?;
        Ok(groups
            .into_iter()
            .map(|((reason, class, host), (count, example))| FailureGroup {
                reason,
                class,
                host,
                count,
                example,
            })
            .collect())
    }

    /// Visits every failed job as a JSONL manifest line (see [`Record::spec`]), in id order,
    /// without loading them all.
    ///
    /// # Errors
    /// [`Error::Archive`] on a database error, or the visitor's error.
    pub fn for_each_failed(&self, mut visit: impl FnMut(&str) -> Result<(), Error>) -> Result<(), Error> {
        self.backend.borrow_mut().failed(&mut |row| match &row.spec {
            Some(spec) => visit(spec),
            // A row of an archive older than the spec column: what it kept.
            None => visit(&serde_json::json!({ "id": row.id, "url": row.url, "path": row.path }).to_string()),
        })
    }
}

/// Failed jobs with the same reason on the same host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailureGroup {
    /// "http 404", "transient", ...
    pub reason: String,
    /// The error class name.
    pub class: String,
    /// `host:port`.
    pub host: String,
    /// How many jobs.
    pub count: u64,
    /// One error message of the group.
    pub example: String,
}

/// What the engine and the writer thread share: the batch being gathered and its state.
///
/// Records go into the batch under a mutex, and the writer is woken only when a batch starts
/// (so it can wait for its deadline) or becomes full: two wake-ups per batch, not one per record.
#[derive(Debug)]
struct Queue {
    state: Mutex<QueueState>,
    /// Wakes the writer.
    work: Condvar,
    /// Wakes callers of [`Journal::flush`].
    flushed: Condvar,
}

#[derive(Debug)]
struct QueueState {
    batcher: Batcher<Record>,
    /// Flushes asked for, and flushes done: a flush waits until `done` reaches its number.
    flush_asked: u64,
    flush_done: u64,
    closed: bool,
    failure: Option<String>,
}

/// The engine's handle on the writer thread.
#[derive(Debug)]
pub struct Journal {
    queue: Arc<Queue>,
    handle: Mutex<Option<thread::JoinHandle<()>>>,
}

impl Journal {
    /// Starts the writer thread on `backend`.
    fn start(backend: Box<dyn Backend>, max_records: usize, max_delay: Duration) -> Self {
        let queue = Arc::new(Queue {
            state: Mutex::new(QueueState {
                batcher: Batcher::new(max_records, max_delay),
                flush_asked: 0,
                flush_done: 0,
                closed: false,
                failure: None,
            }),
            work: Condvar::new(),
            flushed: Condvar::new(),
        });
        let writer_queue = Arc::clone(&queue);
        let handle = thread::Builder::new()
            .name("haul-archive".into())
            .spawn(move || writer_loop(backend, &writer_queue));
        let handle = match handle {
            Ok(handle) => Some(handle),
            Err(e) => {
                queue.state.lock().expect("journal queue").failure =
                    Some(format!("cannot start the archive writer: {e}"));
                None
            }
        };
        Self {
            queue,
            handle: Mutex::new(handle),
        }
    }

    /// Queues a record; never waits for the database. Fails only when the writer has failed (a
    /// fatal error) or the journal is closed.
    ///
    /// # Errors
    /// [`Error::Archive`] with the writer's failure.
    pub fn record(&self, record: Record) -> Result<(), Error> {
        let mut state = self.queue.state.lock().expect("journal queue");
        if let Some(msg) = &state.failure {
            return Err(Error::Archive(msg.clone()));
        }
        if state.closed {
            return Err(Error::Archive("the archive is closed".into()));
        }
        let first = state.batcher.deadline().is_none();
        if state.batcher.push(record, Instant::now()) || first {
            self.queue.work.notify_one();
        }
        Ok(())
    }

    /// The writer's failure, if it failed.
    ///
    /// # Errors
    /// [`Error::Archive`] with the writer's failure.
    pub fn check(&self) -> Result<(), Error> {
        match &self.queue.state.lock().expect("journal queue").failure {
            Some(msg) => Err(Error::Archive(msg.clone())),
            None => Ok(()),
        }
    }

    /// Commits everything queued so far and waits for it.
    ///
    /// # Errors
    /// [`Error::Archive`] when the writer failed.
    pub fn flush(&self) -> Result<(), Error> {
        let mut state = self.queue.state.lock().expect("journal queue");
        if !state.closed {
            // The writer's last pass after `closed` serves every ticket taken before it.
            state.flush_asked += 1;
            let ticket = state.flush_asked;
            self.queue.work.notify_one();
            while state.flush_done < ticket && state.failure.is_none() {
                state = self.queue.flushed.wait(state).expect("journal queue");
            }
        }
        drop(state);
        self.check()
    }

    /// Commits everything and stops the writer; later records are refused.
    ///
    /// # Errors
    /// [`Error::Archive`] when the writer failed.
    pub fn close(&self) -> Result<(), Error> {
        self.queue.state.lock().expect("journal queue").closed = true;
        self.queue.work.notify_one();
        if let Some(handle) = self.handle.lock().expect("journal thread").take() {
            let _ = handle.join();
        }
        self.check()
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        let _ = self.close();
    }
}

fn writer_loop(mut backend: Box<dyn Backend>, queue: &Queue) {
    let mut state = queue.state.lock().expect("journal queue");
    loop {
        let now = Instant::now();
        let flush = state.flush_asked > state.flush_done;
        if state.batcher.is_due(now) || flush || state.closed {
            let batch = state.batcher.take();
            let ticket = state.flush_asked;
            let closed = state.closed;
            drop(state);
            let result = if batch.is_empty() {
                Ok(())
            } else {
                backend.write(&batch)
            };
            state = queue.state.lock().expect("journal queue");
            if let Err(e) = result {
                let why = match e {
                    Error::Archive(why) => why,
                    other => other.to_string(),
                };
                state
                    .failure
                    .get_or_insert_with(|| format!("cannot write the archive: {why}"));
            }
            state.flush_done = ticket;
            queue.flushed.notify_all();
            if closed && state.batcher.deadline().is_none() {
                return;
            }
            continue;
        }
        state = match state.batcher.deadline() {
            Some(deadline) => {
                queue
                    .work
                    .wait_timeout(state, deadline.saturating_duration_since(now))
                    .expect("journal queue")
                    .0
            }
            None => queue.work.wait(state).expect("journal queue"),
        };
    }
}

/// Imports a text file of ids (one per line, as yt-dlp and gallery-dl keep them) as done rows,
/// so those jobs are skipped. Returns how many ids were new.
///
/// # Errors
/// [`Error::Archive`] on a database error, [`Error::Io`] when the file cannot be read.
///
/// ```
/// let dir = tempfile::tempdir().unwrap();
/// let archive = haul::archive::Archive::open(&dir.path().join("a.sqlite"), false).unwrap();
/// let added = haul::archive::import_ids(&archive, "youtube abc\nyoutube def\n".as_bytes()).unwrap();
/// assert_eq!(added, 2);
/// let reader = archive.reader().unwrap();
/// assert_eq!(reader.lookup("youtube abc").unwrap().unwrap().status, haul::archive::RowStatus::Done);
/// ```
pub fn import_ids(archive: &Archive, input: impl std::io::BufRead) -> Result<u64, Error> {
    /// Ids per transaction.
    const CHUNK: usize = 10_000;
    let mut backend = archive.location.connect()?;
    let mut added = 0;
    let mut chunk = Vec::with_capacity(CHUNK);
    for line in input.lines() {
        // A read error stops the import; the chunks before it stay imported.
        let line = line.map_err(|e| Error::io("read", "import file", e))?;
        let id = line.trim();
        if id.is_empty() || id.starts_with('#') {
            continue;
        }
        chunk.push(id.to_owned());
        if chunk.len() == CHUNK {
            added += backend.import_ids(&mut chunk.drain(..))?;
        }
    }
    added += backend.import_ids(&mut chunk.drain(..))?;
    Ok(added)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, status: RowStatus) -> Record {
        Record {
            id: id.into(),
            url: format!("http://h/{id}"),
            path: Some(id.into()),
            size: Some(3),
            sha256: Some("ab".into()),
            blake3: None,
            segments: None,
            verified: true,
            etag: Some("\"e\"".into()),
            last_modified: None,
            status,
            http_status: Some(200),
            error_class: None,
            error: None,
            attempts: 1,
            spec: None,
        }
    }

    #[test]
    fn journal_round_trip_and_lock() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/archive.sqlite");
        let archive = Archive::open(&path, false).unwrap();
        let err = Archive::open(&path, false).unwrap_err();
        assert!(err.to_string().contains("in use by another haul process"), "{err}");
        let journal = archive.writer(2, Duration::from_secs(60), false).unwrap();
        journal.record(record("x", RowStatus::Partial)).unwrap();
        journal.record(record("x", RowStatus::Done)).unwrap();
        journal.record(record("y", RowStatus::Failed)).unwrap();
        journal.flush().unwrap();
        let reader = archive.reader().unwrap();
        let row = reader.lookup("x").unwrap().unwrap();
        assert_eq!(row.status, RowStatus::Done);
        assert_eq!(row.etag.as_deref(), Some("\"e\""));
        assert_eq!(reader.lookup("nope").unwrap(), None);
        assert_eq!(reader.owner_of("x").unwrap().as_deref(), Some("x"));
        journal.close().unwrap();
        let counts = reader.counts().unwrap();
        assert_eq!(counts, vec![("done".into(), 1, 3), ("failed".into(), 1, 3)]);
        let imported = import_ids(&archive, "x\nyoutube abc\n\n# c\nyoutube abc\n".as_bytes()).unwrap();
        assert_eq!(imported, 1);
        // A reader sees the archive as of its read transaction; a new one sees the import.
        assert_eq!(reader.lookup("youtube abc").unwrap(), None);
        let fresh = archive.reader().unwrap();
        assert_eq!(fresh.lookup("youtube abc").unwrap().unwrap().status, RowStatus::Done);
    }
}
