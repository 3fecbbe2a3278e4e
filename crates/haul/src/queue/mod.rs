//! A work queue in PostgreSQL, shared by any number of workers on any number of machines.
//!
//! Jobs are rows of `haul_jobs`, keyed by (queue name, job id): enqueueing the same line twice
//! makes one job. Enqueue groups each host's jobs in chunks of up to [`CHUNK`] (`haul_chunks`),
//! and the chunk is what a worker leases: a worker claims chunks in host-fair batches (a few
//! per host, never one host's thousands) with `FOR UPDATE SKIP LOCKED`, so no two workers
//! claim one job. Each claim increments the chunk's `attempt` and sets its lease
//! (`lease_until`, by the database's clock); the worker's keeper thread renews the leases of
//! the chunks it holds. A chunk whose lease ran out (its worker died or stalled) is split into
//! chunks of one job, claimed again by any worker; one claimed `max_attempts` times without
//! an end fails ("its worker stopped"). Leasing by chunk rather than by job writes one row per
//! sixteen jobs at a claim, which is most of what the database did per job.
//!
//! The `attempt` taken at claim is a **fencing token**: a result is written only where the
//! chunk's owner and attempt are still this worker's, so a worker that was paused past its
//! lease cannot overwrite what the worker that took over recorded. Results are appended to
//! `haul_results` (one per job at most; a job's row is not written again) in group commits,
//! and a done result only after the file is in place (the engine reports it then).
//! A chunk is closed with its last result: done, or back in the queue if a job of it was handed
//! back. A Retry-After one worker is given pauses the host for every worker (`haul_hosts`).
//! On a stop (SIGTERM, Ctrl-C), the leases of chunks not finished go back to the queue at once.
//! The view `haul_job_states` shows each job with the state a user means (`running` while its
//! chunk is leased).

pub(crate) mod db;
mod keeper;

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use postgres::Client;

use crate::engine::{Canceller, FleetLink};
use crate::error::Error;
use crate::job::{Job, to_hex};
use crate::manifest::{Format, ManifestError, ManifestReader};
use crate::report::{JobReport, JobStatus, Reporter};
use db::Db;

/// The queue name used when none is given (`--name`).
pub const DEFAULT_NAME: &str = "default";

const SCHEMA: &str = "
DO $$ BEGIN
    IF to_regclass('haul_jobs') IS NOT NULL AND to_regclass('haul_results') IS NULL THEN
        RAISE EXCEPTION 'the queue tables were made by an older haul (before results had a table of their own): finish its jobs with that version, or drop haul_jobs, haul_chunks, haul_hosts and haul_workers and enqueue again';
    END IF;
END $$;
CREATE SEQUENCE IF NOT EXISTS haul_chunk_ids;
CREATE TABLE IF NOT EXISTS haul_jobs (
    name        TEXT COLLATE \"C\" NOT NULL, -- byte order: keys compare by memcmp, not the locale's rules
    id          TEXT COLLATE \"C\" NOT NULL,
    seq         BIGSERIAL,
    chunk       BIGINT NOT NULL,  -- the lease it is claimed under (haul_chunks)
    host        TEXT COLLATE \"C\" NOT NULL,
    spec        TEXT NOT NULL,
    enqueued    TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (name, id)
);
-- Written at enqueue, and after only by a split (which moves a job to a chunk of its own).
CREATE INDEX IF NOT EXISTS haul_jobs_chunk ON haul_jobs (name, chunk);
-- A job's result, one at most: appended in group commits (an insert of a few hundred rows is
-- about half the database's work of rewriting as many job rows, measured). Keyed by the chunk
-- the job had then, which it keeps: only unfinished jobs move to another chunk.
CREATE TABLE IF NOT EXISTS haul_results (
    name        TEXT COLLATE \"C\" NOT NULL,
    chunk       BIGINT NOT NULL,
    id          TEXT COLLATE \"C\" NOT NULL,
    state       TEXT NOT NULL,     -- done, failed, skipped
    attempt     INTEGER NOT NULL,  -- the claim it was written under
    owner       BIGINT,            -- the worker that wrote it
    finished    TIMESTAMPTZ NOT NULL DEFAULT now(),
    path        TEXT,
    size        BIGINT,
    sha256      TEXT,
    blake3      TEXT,
    verified    BOOLEAN,
    http_status INTEGER,
    reason      TEXT,
    error       TEXT,
    PRIMARY KEY (name, chunk, id)
);
-- Jobs are leased by chunk: up to 16 jobs of one host, made at enqueue. A claim, a lease
-- renewal and a release write one row per chunk, not per job. `attempt` counts the chunk's
-- claims and is the fencing token of its jobs' results; `released` counts the claims that
-- ended by handing the chunk back (not by a worker lost). A chunk whose worker was lost is
-- split into chunks of one job before it is claimed again, so `--max-attempts` fails only the
-- job that keeps killing its workers. A chunk never claimed (attempt 0) has no result under
-- its number: results are written under a claim, and a chunk made again for results already
-- there (a split, `--retry-failed`) starts at their attempt. So a first claim (attempt 1)
-- hands out all its jobs without looking their results up.
CREATE TABLE IF NOT EXISTS haul_chunks (
    name        TEXT COLLATE \"C\" NOT NULL,
    chunk       BIGINT NOT NULL,
    host        TEXT COLLATE \"C\" NOT NULL,
    jobs        INTEGER NOT NULL,
    state       TEXT NOT NULL DEFAULT 'queued', -- queued, running, done (every job ended), failed
    attempt     INTEGER NOT NULL DEFAULT 0,
    released    INTEGER NOT NULL DEFAULT 0,
    owner       BIGINT,
    lease_until TIMESTAMPTZ,
    PRIMARY KEY (name, chunk)
);
CREATE INDEX IF NOT EXISTS haul_chunks_open ON haul_chunks (name, host, chunk) WHERE state IN ('queued', 'running');
-- Each job with the state a user means: `running` while its chunk is leased.
CREATE OR REPLACE VIEW haul_job_states AS
SELECT j.name, j.id, j.host, j.chunk,
       CASE WHEN r.id IS NOT NULL THEN r.state WHEN c.state = 'running' THEN 'running' ELSE 'queued' END AS state,
       CASE WHEN r.id IS NOT NULL THEN r.owner ELSE c.owner END AS owner,
       CASE WHEN r.id IS NOT NULL THEN r.attempt ELSE coalesce(c.attempt, 0) END AS attempt,
       j.enqueued, r.finished, r.path, r.size, r.sha256, r.blake3, r.http_status, r.reason, r.error
FROM haul_jobs j
LEFT JOIN haul_results r ON r.name = j.name AND r.chunk = j.chunk AND r.id = j.id
LEFT JOIN haul_chunks c ON c.name = j.name AND c.chunk = j.chunk AND r.id IS NULL;
-- Writes a batch of results, fenced by their chunks' owner and attempt, then closes the chunks
-- the worker no longer holds a job of: done, or back in the queue when `p_open` says one of
-- their jobs was handed back without a result (the worker knows: its claim handed out every
-- unfinished job of the chunk, and no one else writes results under its attempt). Returns how
-- many results were written. The fence is read once per chunk of the batch; the lookups are
-- kept to primary keys (no hash or merge join: a scan of the table per batch) whatever the
-- statistics say, which are stale right after an enqueue.
DROP FUNCTION IF EXISTS haul_record(TEXT, BIGINT, TEXT[], INTEGER[], TEXT[], TEXT[], BIGINT[], TEXT[], TEXT[], BOOLEAN[], INTEGER[], TEXT[], TEXT[], BIGINT[], INTEGER[], TEXT[]);
DROP FUNCTION IF EXISTS haul_record(TEXT, BIGINT, TEXT[], BIGINT[], INTEGER[], TEXT[], TEXT[], BIGINT[], TEXT[], TEXT[], BOOLEAN[], INTEGER[], TEXT[], TEXT[], BIGINT[], INTEGER[]);
CREATE OR REPLACE FUNCTION haul_record(
    p_name TEXT, p_owner BIGINT, p_ids TEXT[], p_job_chunks BIGINT[], p_attempts INTEGER[], p_states TEXT[],
    p_paths TEXT[], p_sizes BIGINT[], p_sha256 TEXT[], p_blake3 TEXT[], p_verified BOOLEAN[], p_http INTEGER[],
    p_reasons TEXT[], p_errors TEXT[], p_chunks BIGINT[], p_chunk_attempts INTEGER[], p_open BOOLEAN[]
) RETURNS BIGINT LANGUAGE plpgsql
SET enable_hashjoin = off SET enable_mergejoin = off SET enable_seqscan = off AS $$
DECLARE
    written BIGINT;
    held BIGINT[];
    held_attempts INTEGER[];
BEGIN
    -- The fence: the chunks of the batch's results that this worker still holds, with their
    -- attempts. They stay locked until the commit (taken in order: no two batches deadlock), so
    -- no other worker splits or takes over one while its results are written: a scan for lost
    -- chunks skips them, and finds the results there once it does not. The lock reads each
    -- chunk as last committed, so a takeover committed first is seen.
    SELECT coalesce(array_agg(c.chunk), '{}'), coalesce(array_agg(c.attempt), '{}') INTO held, held_attempts
    FROM (SELECT c.chunk, c.attempt FROM haul_chunks c
          WHERE c.name = p_name AND c.chunk = ANY(p_job_chunks) AND c.state = 'running' AND c.owner = p_owner
          ORDER BY c.chunk
          FOR NO KEY UPDATE) c;
    -- A plain insert: with ON CONFLICT, each row costs a second look at the key and a second
    -- write (about 1.6 times the insert's time, measured). A conflict is rare: a batch sent
    -- again (the answer to its commit lost with the connection), or a result that a worker
    -- that lost its lease wrote first. Then the batch goes again, keeping the rows there.
    BEGIN
        INSERT INTO haul_results (name, chunk, id, state, attempt, owner, path, size, sha256, blake3, verified,
                                  http_status, reason, error)
        SELECT p_name, r.chunk, r.id, r.state, r.attempt, p_owner, r.path, r.size, r.sha256, r.blake3,
               r.verified, r.http, r.reason, r.error
        FROM unnest(p_ids, p_job_chunks, p_attempts, p_states, p_paths, p_sizes, p_sha256, p_blake3, p_verified,
                    p_http, p_reasons, p_errors)
             AS r(id, chunk, attempt, state, path, size, sha256, blake3, verified, http, reason, error)
        -- the chunk is still held under the attempt the result was made under
        WHERE held_attempts[array_position(held, r.chunk)] = r.attempt;
        GET DIAGNOSTICS written = ROW_COUNT;
    EXCEPTION WHEN unique_violation THEN
        INSERT INTO haul_results (name, chunk, id, state, attempt, owner, path, size, sha256, blake3, verified,
                                  http_status, reason, error)
        SELECT p_name, r.chunk, r.id, r.state, r.attempt, p_owner, r.path, r.size, r.sha256, r.blake3,
               r.verified, r.http, r.reason, r.error
        FROM unnest(p_ids, p_job_chunks, p_attempts, p_states, p_paths, p_sizes, p_sha256, p_blake3, p_verified,
                    p_http, p_reasons, p_errors)
             AS r(id, chunk, attempt, state, path, size, sha256, blake3, verified, http, reason, error)
        WHERE held_attempts[array_position(held, r.chunk)] = r.attempt
        ON CONFLICT DO NOTHING;
        GET DIAGNOSTICS written = ROW_COUNT;
    END;
    -- Materialized: the update looks each chunk up by key, whatever the plan.
    WITH k AS MATERIALIZED (
        SELECT * FROM unnest(p_chunks, p_chunk_attempts, p_open) AS u(chunk, attempt, open)
    )
    UPDATE haul_chunks c SET
        state = CASE WHEN k.open THEN 'queued' ELSE 'done' END,
        released = c.released + CASE WHEN k.open THEN 1 ELSE 0 END,
        owner = NULL, lease_until = NULL
    FROM k
    WHERE c.name = p_name AND c.chunk = k.chunk AND c.state = 'running' AND c.owner = p_owner
      AND c.attempt = k.attempt;
    RETURN written;
END
$$;
CREATE TABLE IF NOT EXISTS haul_hosts (
    name       TEXT COLLATE \"C\" NOT NULL,
    host       TEXT COLLATE \"C\" NOT NULL,
    cool_until TIMESTAMPTZ,
    reason     TEXT,
    PRIMARY KEY (name, host)
);
CREATE INDEX IF NOT EXISTS haul_hosts_cooling ON haul_hosts (name, cool_until);
CREATE TABLE IF NOT EXISTS haul_workers (
    id        BIGSERIAL PRIMARY KEY,
    name      TEXT NOT NULL,
    label     TEXT NOT NULL,
    lease     DOUBLE PRECISION NOT NULL,
    started   TIMESTAMPTZ NOT NULL DEFAULT now(),
    heartbeat TIMESTAMPTZ NOT NULL DEFAULT now(),
    stopped   TIMESTAMPTZ
);
";

/// How long a worker waits for an unreachable queue before it gives up (statements are retried
/// on a new connection meanwhile).
pub const DEFAULT_PATIENCE: Duration = Duration::from_secs(120);

/// Lines per enqueue transaction.
const ENQUEUE_BATCH: usize = 10_000;
const _: () = assert!(
    ENQUEUE_BATCH < 1 << CHUNK_BITS,
    "a batch's parts fit below its chunk base"
);
/// Connections inserting an enqueue's batches at once.
const ENQUEUE_WRITERS: usize = 2;

/// One enqueue writer: inserts the batches it takes from `rx` on a connection of its own;
/// returns how many jobs were new.
fn insert_batches(url: &str, name: &str, rx: &Mutex<std::sync::mpsc::Receiver<(Vec<u8>, u64)>>) -> Result<u64, Error> {
    let mut db = Db::connect(url, DEFAULT_PATIENCE)?;
    db.run("prepare the enqueue", |client| {
        client.batch_execute(
            "CREATE TEMP TABLE IF NOT EXISTS haul_incoming (id TEXT, host TEXT, part INTEGER, spec TEXT) ON COMMIT DELETE ROWS",
        )
    })?;
    let mut added = 0;
    loop {
        let next = rx.lock().expect("enqueue batches").recv();
        let Ok((rows, lines)) = next else { return Ok(added) };
        added += db.run("enqueue", |client| {
            let mut tx = client.transaction()?;
            let mut copy = tx.copy_in("COPY haul_incoming (id, host, part, spec) FROM STDIN")?;
            // Writing into the COPY stream fails only with the connection, which `finish`
            // then reports (and the batch is run again on a new one).
            let written = copy.write_all(&rows);
            copy.finish()?;
            if let Err(e) = written {
                tracing::warn!(target: "haul::queue", error = %e, "COPY write failed");
            }
            // A plain insert first: `ON CONFLICT` costs each row a second look at the key and
            // a second write (about 1.5 times the insert's time, measured). A batch with a
            // line the queue has (an enqueue run again, a line twice) goes again with it.
            let mut fresh = tx.transaction()?;
            let added = match fresh.execute(ENQUEUE_NEW, &[&name]) {
                Ok(added) => {
                    fresh.commit()?;
                    added
                }
                Err(e) if e.code() == Some(&postgres::error::SqlState::UNIQUE_VIOLATION) => {
                    fresh.rollback()?;
                    tx.execute(ENQUEUE, &[&name])?
                }
                Err(e) => return Err(e),
            };
            if added < lines {
                // Lines the queue had: the chunks that got no job go.
                tx.execute(DROP_EMPTY_CHUNKS, &[&name])?;
            }
            tx.execute(
                "INSERT INTO haul_hosts (name, host) SELECT DISTINCT $1, host FROM haul_incoming \
                 ON CONFLICT DO NOTHING",
                &[&name],
            )?;
            tx.commit()?;
            Ok(added)
        })?;
    }
}

/// The insert of [`ENQUEUE`], without its conflict clause.
macro_rules! enqueue_batch {
    () => {
        "
WITH base AS (SELECT nextval('haul_chunk_ids') << 20 AS first),
chunks AS (
    INSERT INTO haul_chunks (name, chunk, host, jobs)
    SELECT $1, (SELECT first FROM base) + part, min(host), count(*) FROM haul_incoming GROUP BY part
)
INSERT INTO haul_jobs (name, id, host, spec, chunk)
SELECT $1, id, host, spec, (SELECT first FROM base) + part FROM haul_incoming"
    };
}

/// Inserts the batch in `haul_incoming` (`$1` the queue's name): each of its parts (up to
/// [`CHUNK`] lines of one host) becomes a chunk numbered from the batch's base (see
/// [`CHUNK_BITS`]), with the jobs the queue did not have yet; returns how many those were. A
/// chunk's `jobs` is how many lines its part had, an upper bound: jobs already known make it
/// smaller, and chunks left with none are removed ([`DROP_EMPTY_CHUNKS`]). (Counting the new
/// jobs per chunk, through the insert's returned rows, cost a fifth of the enqueue rate.)
const ENQUEUE: &str = concat!(enqueue_batch!(), "\nON CONFLICT DO NOTHING");

/// [`ENQUEUE`] for a batch of lines all new to the queue: fails on a line it has.
const ENQUEUE_NEW: &str = enqueue_batch!();

/// Removes the chunks of the batch just inserted (its range: the session's last sequence
/// number) that got no job, all their lines being known already.
const DROP_EMPTY_CHUNKS: &str = "
DELETE FROM haul_chunks c
WHERE c.name = $1 AND c.chunk >= currval('haul_chunk_ids') << 20 AND c.chunk < (currval('haul_chunk_ids') + 1) << 20
  AND NOT EXISTS (SELECT 1 FROM haul_jobs j WHERE j.name = $1 AND j.chunk = c.chunk)";

/// Statistics for the planner, from a small sample (3,000 rows: a tenth of the default's
/// time; the plans need sizes, not fine distributions). Runs in a transaction.
const ANALYZE: &str = "SET LOCAL default_statistics_target = 10; ANALYZE haul_jobs, haul_chunks, haul_results";

/// The settings of the connections that claim and hand back: their statements look rows up by
/// primary key (a job's result, a chunk's jobs), a nested loop of index scans whatever the
/// statistics say. Statistics taken while `haul_results` was empty (right after an enqueue)
/// made a claim scan the whole table once per job (seconds per claim, seen) until autovacuum
/// analyzed it again. The settings only penalize the other plans: a statement with no index
/// to use still runs.
const LOOKUPS: &str = "SET enable_seqscan = off; SET enable_hashjoin = off; SET enable_mergejoin = off";

/// Chunk numbers are a sequence number shifted left by this many bits (`<< 20` in the SQL): a
/// batch (or a split job) takes one sequence number and numbers its chunks below the next.
const CHUNK_BITS: u32 = 20;

/// Jobs of one host per chunk at most, the unit of claims and leases (see the schema).
pub const CHUNK: usize = 16;

/// The schema's fingerprint, kept as the comment of `haul_jobs` by the haul that made the tables.
fn schema_mark() -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(SCHEMA.as_bytes());
    format!("haul queue schema {}", &to_hex(&digest)[..16])
}

/// Opens the queue's connection and creates its tables if they are missing (under an advisory
/// lock: workers starting together do not race on `CREATE`).
fn open(url: &str, patience: Duration) -> Result<Db, Error> {
    let mut db = Db::connect(url, patience)?;
    let mark = schema_mark();
    db.run("create the queue's tables", |client| {
        let mut tx = client.transaction()?;
        // Tables this very schema made are left as they are: each `CREATE OR REPLACE` rewrites
        // catalog rows, and workers starting together would take turns on the lock for it.
        let current: bool = tx
            .query_one(
                "SELECT obj_description(to_regclass('haul_jobs'), 'pg_class') IS NOT DISTINCT FROM $1",
                &[&mark],
            )?
            .get(0);
        if !current {
            tx.execute("SELECT pg_advisory_xact_lock(7291046)", &[])?;
            tx.batch_execute(SCHEMA)?;
            tx.batch_execute(&format!("COMMENT ON TABLE haul_jobs IS '{mark}'"))?;
        }
        // A queue filled by an older enqueue (or by hand) may have no statistics yet.
        let unplanned: bool = tx
            .query_one(
                "SELECT NOT EXISTS (SELECT 1 FROM pg_stats WHERE tablename = 'haul_jobs' AND attname = 'chunk') \
                 AND EXISTS (SELECT 1 FROM haul_jobs)",
                &[],
            )?
            .get(0);
        if unplanned {
            tx.batch_execute(ANALYZE)?;
        }
        tx.commit()
    })?;
    Ok(db)
}

/// What `enqueue` did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Enqueued {
    /// Jobs added.
    pub new: u64,
    /// Lines whose job id the queue already had (or had earlier in the same manifest).
    pub duplicate: u64,
    /// Lines refused (reported to the caller one by one).
    pub bad: u64,
}

/// The queue as its administrator sees it: enqueue, status, failures.
pub struct Queue {
    db: Db,
    name: String,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Escapes a value for PostgreSQL's COPY text format.
fn copy_escape(out: &mut Vec<u8>, value: &str) {
    for byte in value.bytes() {
        match byte {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            _ => out.push(byte),
        }
    }
}

impl Queue {
    /// Connects to the queue at `url` (`postgres://…`) and creates its tables if missing.
    ///
    /// # Errors
    /// The database cannot be reached, or refuses the tables.
    pub fn connect(url: &str, name: &str) -> Result<Self, Error> {
        Ok(Self {
            db: open(url, DEFAULT_PATIENCE)?,
            name: name.to_owned(),
        })
    }

    /// Adds every job of `jobs` that the queue does not have yet (by job id), in batched
    /// transactions: an enqueue stopped half-way keeps the batches it committed, and running it
    /// again adds only the rest. Bad lines go to `on_bad` and are counted. Secret headers
    /// (`Authorization`, `Cookie`, and `secret`) are not stored.
    ///
    /// # Errors
    /// The database failed (the batches committed before stay).
    pub fn enqueue(
        &mut self,
        jobs: impl Iterator<Item = Result<Job, ManifestError>>,
        secret: &[String],
        mut on_bad: impl FnMut(&ManifestError),
    ) -> Result<Enqueued, Error> {
        let mut counts = Enqueued::default();
        // Lines are read and encoded here while ENQUEUE_WRITERS connections insert the batches
        // before (the database's insert is the slow part; two backends use two cores).
        let (tx, rx) = std::sync::mpsc::sync_channel::<(Vec<u8>, u64)>(ENQUEUE_WRITERS);
        let rx = Mutex::new(rx);
        let name = self.name.as_str();
        let url = self.db.url().to_owned();
        let (added, failure) = std::thread::scope(|scope| {
            let writers: Vec<_> = (0..ENQUEUE_WRITERS)
                .map(|_| scope.spawn(|| insert_batches(&url, name, &rx)))
                .collect();
            let mut rows = Vec::with_capacity(ENQUEUE_BATCH * 160);
            let mut in_batch = 0u64;
            // The batch's parts: per host, the part being filled and its lines.
            let mut parts: HashMap<String, (u32, usize)> = HashMap::new();
            let mut next_part = 0u32;
            let mut jobs = jobs;
            loop {
                let next = jobs.next();
                let end = next.is_none();
                match next {
                    Some(Ok(job)) => {
                        let host = job.host_key();
                        let part = match parts.get_mut(&host) {
                            Some((part, n)) if *n < CHUNK => {
                                *n += 1;
                                *part
                            }
                            _ => {
                                let part = next_part;
                                next_part += 1;
                                parts.insert(host.clone(), (part, 1));
                                part
                            }
                        };
                        copy_escape(&mut rows, &job.id);
                        rows.push(b'\t');
                        copy_escape(&mut rows, &host);
                        rows.push(b'\t');
                        rows.extend_from_slice(part.to_string().as_bytes());
                        rows.push(b'\t');
                        copy_escape(&mut rows, &job.to_manifest_line(secret));
                        rows.push(b'\n');
                        in_batch += 1;
                    }
                    Some(Err(bad)) => {
                        counts.bad += 1;
                        on_bad(&bad);
                    }
                    None => {}
                }
                let full = in_batch as usize == ENQUEUE_BATCH;
                if (full || end) && in_batch > 0 {
                    let batch = std::mem::replace(&mut rows, Vec::with_capacity(ENQUEUE_BATCH * 160));
                    if tx.send((batch, in_batch)).is_err() {
                        break; // a writer failed: its error is collected below
                    }
                    counts.duplicate += in_batch;
                    in_batch = 0;
                    parts.clear();
                    next_part = 0;
                }
                if end {
                    break;
                }
            }
            drop(tx);
            let mut added = 0;
            let mut failure = None;
            for writer in writers {
                match writer.join() {
                    Ok(Ok(n)) => added += n,
                    Ok(Err(e)) => failure = failure.or(Some(e)),
                    Err(_) => failure = failure.or(Some(Error::Internal("an enqueue writer panicked".into()))),
                }
            }
            (added, failure)
        });
        if let Some(e) = failure {
            return Err(e);
        }
        if added > 0 {
            // Fresh statistics: without any, the planner guesses a new table small and plans
            // a result's write as a scan of it (seconds per batch, measured).
            self.db.run("analyze the queue", |client| {
                let mut tx = client.transaction()?;
                tx.batch_execute(ANALYZE)?;
                tx.commit()
            })?;
        }
        counts.new = added;
        counts.duplicate -= added;
        Ok(counts)
    }

    /// The queue's state, for `haul status --queue`.
    ///
    /// # Errors
    /// The database failed.
    pub fn status(&mut self) -> Result<QueueStatus, Error> {
        let name = self.name.clone();
        self.db.run("read the queue's status", |client| status(client, &name))
    }

    /// Visits the manifest line (JSONL) of every failed job.
    ///
    /// # Errors
    /// The database failed, or `visit` did.
    pub fn for_each_failed(&mut self, mut visit: impl FnMut(&str) -> Result<(), Error>) -> Result<(), Error> {
        let name = self.name.clone();
        let specs = self.db.run("read the failed jobs", |client| {
            let rows = client.query(
                "SELECT j.spec FROM haul_results r \
                 JOIN haul_jobs j ON j.name = r.name AND j.chunk = r.chunk AND j.id = r.id \
                 WHERE r.name = $1 AND r.state = 'failed' ORDER BY j.seq",
                &[&name],
            )?;
            Ok(rows.into_iter().map(|r| r.get::<_, String>(0)).collect::<Vec<_>>())
        })?;
        for spec in specs {
            visit(&spec)?;
        }
        Ok(())
    }

    /// Puts every failed job back in the queue; returns how many. Their chunks' attempt
    /// counters keep counting (they are fencing tokens), but `--max-attempts` starts over. The
    /// failed jobs of a chunk a worker still holds move to a chunk of their own (that worker
    /// closes its chunk as done: it knows nothing of the retry).
    ///
    /// # Errors
    /// The database failed.
    pub fn retry_failed(&mut self) -> Result<u64, Error> {
        let name = self.name.clone();
        self.db.run("requeue the failed jobs", |client| {
            let retried: i64 = client
                .query_one(
                    "WITH again AS ( \
                        DELETE FROM haul_results WHERE name = $1 AND state = 'failed' RETURNING chunk, id, attempt), \
                     held AS ( \
                        SELECT h.chunk, nextval('haul_chunk_ids') << 20 AS fresh FROM ( \
                            SELECT DISTINCT a.chunk FROM again a \
                            JOIN haul_chunks c ON c.name = $1 AND c.chunk = a.chunk AND c.state = 'running') h), \
                     moved AS ( \
                        UPDATE haul_jobs j SET chunk = held.fresh FROM again a JOIN held ON held.chunk = a.chunk \
                        WHERE j.name = $1 AND j.chunk = a.chunk AND j.id = a.id \
                        RETURNING j.chunk, j.host, a.attempt), \
                     parts AS ( \
                        SELECT a.chunk, min(j.host) AS host, count(*) AS jobs, max(a.attempt) AS attempt FROM again a \
                        JOIN haul_jobs j ON j.name = $1 AND j.chunk = a.chunk AND j.id = a.id \
                        WHERE a.chunk NOT IN (SELECT chunk FROM held) GROUP BY a.chunk \
                        UNION ALL \
                        SELECT chunk, min(host), count(*), max(attempt) FROM moved GROUP BY chunk), \
                     reopened AS ( \
                        INSERT INTO haul_chunks AS c (name, chunk, host, jobs, attempt, released) \
                        SELECT $1, chunk, host, jobs, attempt, attempt FROM parts \
                        ON CONFLICT (name, chunk) DO UPDATE \
                        SET state = 'queued', owner = NULL, lease_until = NULL, released = c.attempt \
                        WHERE c.state IN ('done', 'failed') \
                        RETURNING c.chunk) \
                     SELECT count(*) FROM again",
                    &[&name],
                )?
                .get(0);
            Ok(u64::try_from(retried).unwrap_or(0))
        })
    }
}

/// Jobs of one state.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct StateCount {
    /// `queued`, `running`, `done`, `failed` or `skipped`.
    pub state: String,
    /// Jobs.
    pub jobs: u64,
    /// Bytes of their files (done jobs).
    pub bytes: u64,
}

/// A worker as the queue knows it.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct WorkerStatus {
    /// Its number.
    pub id: i64,
    /// Its label (`--worker-name`, by default host name and process id).
    pub label: String,
    /// `live` (heartbeat within its lease), `dead` (silent past its lease, never stopped) or
    /// `stopped`.
    pub state: String,
    /// Seconds since its last heartbeat.
    pub silent_for: f64,
    /// Jobs it finished in the last minute.
    pub done_last_minute: u64,
    /// Bytes of those jobs.
    pub bytes_last_minute: u64,
    /// Jobs it holds now.
    pub holding: u64,
}

/// A host every worker leaves alone for now.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct CoolingHost {
    /// `host:port`.
    pub host: String,
    /// Seconds left.
    pub seconds_left: f64,
    /// Why (`429`, `503`…).
    pub reason: String,
}

/// Failures grouped by reason.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct FailureCount {
    /// The short reason.
    pub reason: String,
    /// Jobs.
    pub jobs: u64,
}

/// What `haul status --queue` shows.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct QueueStatus {
    /// The queue's name.
    pub name: String,
    /// Jobs by state.
    pub states: Vec<StateCount>,
    /// The workers that ever worked on this queue, newest first (at most 100).
    pub workers: Vec<WorkerStatus>,
    /// Seconds the oldest queued job has waited.
    pub oldest_queued_seconds: Option<f64>,
    /// Hosts in cool-down.
    pub cooling: Vec<CoolingHost>,
    /// Failures by reason.
    pub failures: Vec<FailureCount>,
}

fn status(client: &mut Client, name: &str) -> Result<QueueStatus, postgres::Error> {
    let mut out = QueueStatus {
        name: name.to_owned(),
        ..QueueStatus::default()
    };
    for row in client.query(
        "SELECT state, count(*), coalesce(sum(size), 0)::BIGINT FROM haul_job_states WHERE name = $1 \
         GROUP BY state ORDER BY state",
        &[&name],
    )? {
        out.states.push(StateCount {
            state: row.get(0),
            jobs: u64::try_from(row.get::<_, i64>(1)).unwrap_or(0),
            bytes: u64::try_from(row.get::<_, i64>(2)).unwrap_or(0),
        });
    }
    for row in client.query(
        "SELECT w.id, w.label, \
            CASE WHEN w.stopped IS NOT NULL THEN 'stopped' \
                 WHEN w.heartbeat > now() - make_interval(secs => w.lease) THEN 'live' ELSE 'dead' END, \
            EXTRACT(EPOCH FROM now() - w.heartbeat)::DOUBLE PRECISION, \
            (SELECT count(*) FROM haul_results r WHERE r.name = w.name AND r.owner = w.id AND r.state = 'done' \
                AND r.finished > now() - interval '1 minute'), \
            (SELECT coalesce(sum(size), 0)::BIGINT FROM haul_results r WHERE r.name = w.name AND r.owner = w.id \
                AND r.state = 'done' AND r.finished > now() - interval '1 minute'), \
            (SELECT count(*) FROM haul_chunks c JOIN haul_jobs j ON j.name = c.name AND j.chunk = c.chunk \
                WHERE c.name = w.name AND c.owner = w.id AND c.state = 'running' AND NOT EXISTS ( \
                    SELECT 1 FROM haul_results r WHERE r.name = j.name AND r.chunk = j.chunk AND r.id = j.id)) \
         FROM haul_workers w WHERE w.name = $1 ORDER BY w.id DESC LIMIT 100",
        &[&name],
    )? {
        out.workers.push(WorkerStatus {
            id: row.get(0),
            label: row.get(1),
            state: row.get(2),
            silent_for: row.get(3),
            done_last_minute: u64::try_from(row.get::<_, i64>(4)).unwrap_or(0),
            bytes_last_minute: u64::try_from(row.get::<_, i64>(5)).unwrap_or(0),
            holding: u64::try_from(row.get::<_, i64>(6)).unwrap_or(0),
        });
    }
    out.oldest_queued_seconds = client
        .query_one(
            "SELECT EXTRACT(EPOCH FROM now() - min(enqueued))::DOUBLE PRECISION FROM haul_job_states \
             WHERE name = $1 AND state = 'queued'",
            &[&name],
        )?
        .get(0);
    for row in client.query(
        "SELECT host, EXTRACT(EPOCH FROM cool_until - now())::DOUBLE PRECISION, coalesce(reason, '') FROM haul_hosts \
         WHERE name = $1 AND cool_until > now() ORDER BY cool_until DESC LIMIT 20",
        &[&name],
    )? {
        out.cooling.push(CoolingHost {
            host: row.get(0),
            seconds_left: row.get(1),
            reason: row.get(2),
        });
    }
    for row in client.query(
        "SELECT coalesce(reason, 'unknown'), count(*) FROM haul_results WHERE name = $1 AND state = 'failed' \
         GROUP BY 1 ORDER BY 2 DESC LIMIT 20",
        &[&name],
    )? {
        out.failures.push(FailureCount {
            reason: row.get(0),
            jobs: u64::try_from(row.get::<_, i64>(1)).unwrap_or(0),
        });
    }
    Ok(out)
}

/// How a worker works the queue.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// How long a claimed job stays this worker's without a heartbeat.
    pub lease: Duration,
    /// Claims of one job (by workers that stopped before finishing it) before it fails.
    pub max_attempts: u32,
    /// Wait for more jobs when the queue is empty, instead of ending.
    pub follow: bool,
    /// The worker's label in `haul status` (by default the host name and process id).
    pub label: String,
    /// Jobs claimed at once at most.
    pub claim_batch: usize,
    /// Jobs of one host this worker holds at most; a host's jobs are claimed again only once
    /// it holds fewer than half of this (so one host's jobs spread over the workers).
    pub per_host_claim: usize,
    /// How often an empty (or cooling) queue is asked again.
    pub poll: Duration,
    /// How long the queue may be unreachable before the worker stops.
    pub patience: Duration,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        Self {
            lease: Duration::from_secs(60),
            max_attempts: 3,
            follow: false,
            label: default_label(),
            claim_batch: 128,
            per_host_claim: 16,
            poll: Duration::from_millis(500),
            patience: DEFAULT_PATIENCE,
        }
    }
}

/// `host:pid`.
fn default_label() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".to_owned());
    format!("{host}:{}", std::process::id())
}

/// A result waiting for the keeper's next group commit.
#[derive(Debug)]
struct Completion {
    id: String,
    /// The chunk it was claimed under, and that claim's attempt (its fence).
    chunk: i64,
    attempt: i32,
    /// `done`, `failed` or `skipped`.
    state: &'static str,
    path: Option<String>,
    size: Option<i64>,
    sha256: Option<String>,
    blake3: Option<String>,
    verified: bool,
    http_status: Option<i32>,
    reason: Option<String>,
    error: Option<String>,
}

/// What the keeper thread has to write.
#[derive(Debug, Default)]
struct Outbox {
    completions: Vec<Completion>,
    /// Chunks this worker holds no job of any more.
    closes: Vec<Close>,
    /// Host pauses to share: (host, seconds, reason).
    cool: Vec<(String, f64, String)>,
    /// Set when the worker ends: write everything, then stop.
    closing: bool,
}

/// Counters of a worker's results.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkerTotals {
    /// Results written.
    pub recorded: u64,
    /// Results refused by the fence: another worker had taken the job over (this worker had
    /// stalled past its lease).
    pub rejected: u64,
    /// Jobs handed back to the queue when the worker stopped.
    pub released: u64,
    /// Results waiting for their group commit.
    pub pending: u64,
}

/// The jobs a worker holds.
#[derive(Debug, Default)]
struct Held {
    /// id → (its chunk, host).
    jobs: HashMap<String, (i64, String)>,
    /// The chunks of held jobs.
    chunks: HashMap<i64, HeldChunk>,
    /// Jobs held per host.
    by_host: HashMap<String, i64>,
    /// Jobs of one host held at most ([`WorkerOptions::per_host_claim`]).
    limit: i64,
    /// Set when a host fell below half of `limit` (a claim would find room for it).
    room: bool,
    /// Hosts a claim had room for but found nothing of: their jobs ending makes no room until
    /// the next poll (a claim would find nothing again).
    exhausted: HashSet<String>,
    /// When the first of `exhausted` was found; they are forgotten a poll interval later.
    exhausted_at: Option<std::time::Instant>,
}

/// A chunk a worker holds jobs of.
#[derive(Debug)]
struct HeldChunk {
    /// The attempt of its claim, the fencing token of its jobs' results.
    attempt: i32,
    /// Its jobs still held.
    jobs: usize,
    host: String,
    /// A job of it was let go of without a result (handed back): it goes back to the queue
    /// when closed. Otherwise every job of it has a result once its last one is let go of:
    /// the claim handed out all its unfinished jobs, and only this worker writes results
    /// under its attempt (the fence).
    open: bool,
}

/// A held job let go of (see [`Held::remove`]).
#[derive(Debug, Clone)]
struct Let {
    /// Its chunk.
    chunk: i64,
    /// The attempt of its chunk's claim.
    attempt: i32,
    /// It was the chunk's last job held: the chunk is closed with the result.
    close: Option<Close>,
}

/// A chunk closed: its worker holds no job of it any more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Close {
    chunk: i64,
    /// The attempt of its claim.
    attempt: i32,
    /// Some job of it has no result: back to the queue, not done (see [`HeldChunk::open`]).
    open: bool,
}

impl Held {
    fn insert(&mut self, id: String, chunk: i64, attempt: i32, host: String) {
        if let Some((old_chunk, old_host)) = self.jobs.insert(id, (chunk, host.clone())) {
            self.drop_host(&old_host);
            if let Some(old) = self.chunks.get_mut(&old_chunk) {
                old.jobs -= 1;
                old.open = true;
            }
        }
        self.chunks
            .entry(chunk)
            .or_insert(HeldChunk {
                attempt,
                jobs: 0,
                host: host.clone(),
                open: false,
            })
            .jobs += 1;
        *self.by_host.entry(host).or_default() += 1;
    }

    /// Forgets a job, which ended with a result unless `handed_back`; returns its claim's
    /// attempt and, when it was the last job held of its chunk, the chunk's close.
    fn remove(&mut self, id: &str, handed_back: bool) -> Option<Let> {
        let (chunk, host) = self.jobs.remove(id)?;
        self.drop_host(&host);
        let held = self.chunks.get_mut(&chunk)?;
        held.jobs -= 1;
        held.open |= handed_back;
        let (attempt, open) = (held.attempt, held.open);
        let close = (held.jobs == 0 && self.chunks.remove(&chunk).is_some()).then_some(Close { chunk, attempt, open });
        Some(Let { chunk, attempt, close })
    }

    /// Forgets the chunks another worker took over, with their jobs; returns how many jobs.
    fn lose(&mut self, lost: &std::collections::HashSet<i64>) -> usize {
        let gone: Vec<String> = self
            .jobs
            .iter()
            .filter(|(_, (chunk, _))| lost.contains(chunk))
            .map(|(id, _)| id.clone())
            .collect();
        for id in &gone {
            if let Some((_, host)) = self.jobs.remove(id) {
                self.drop_host(&host);
            }
        }
        self.chunks.retain(|chunk, _| !lost.contains(chunk));
        gone.len()
    }

    /// After a claim made with `holding` jobs of each of `hosts`, which got chunks of the hosts
    /// in `got`: room made while it ran is spent (it topped the holdings up), and the hosts it
    /// had room for but found nothing of are exhausted.
    fn claimed(&mut self, hosts: &[String], holding: &[i64], got: HashSet<&str>) {
        self.room = false;
        for (host, n) in hosts.iter().zip(holding) {
            if n * 2 < self.limit && !got.contains(host.as_str()) && self.exhausted.insert(host.clone()) {
                self.exhausted_at.get_or_insert_with(std::time::Instant::now);
            }
        }
        for host in got {
            self.exhausted.remove(host);
        }
    }

    fn drop_host(&mut self, host: &str) {
        if let Some(n) = self.by_host.get_mut(host) {
            *n -= 1;
            if *n * 2 < self.limit && !self.exhausted.contains(host) {
                self.room = true;
            }
            if *n <= 0 {
                self.by_host.remove(host);
            }
        }
    }
}

struct Inner {
    url: String,
    name: String,
    id: i64,
    options: WorkerOptions,
    /// The jobs this worker holds, with their claims' attempts (the fencing tokens).
    held: Mutex<Held>,
    /// Signalled when a held job ends (a claim may have room again).
    released: Condvar,
    outbox: Mutex<Outbox>,
    wake: Condvar,
    /// No claims after this.
    stop: AtomicBool,
    /// Held while a claim runs, so a stop never misses one in flight.
    claiming: Mutex<()>,
    fatal: Mutex<Option<String>>,
    engine: Mutex<Option<(FleetLink, Canceller)>>,
    /// Live workers on this queue (this one included), as last counted.
    live: std::sync::atomic::AtomicUsize,
    /// A worker joining others claims nothing before they have all counted it (see
    /// `keeper::SHARE_EVERY`), so the per-host budgets are shared before it sends a request.
    claim_after: std::time::Instant,
    recorded: AtomicU64,
    rejected: AtomicU64,
}

impl Inner {
    fn set_fatal(&self, error: &Error) {
        tracing::error!(target: "haul::queue", %error, "the worker stops");
        self.fatal
            .lock()
            .expect("fatal")
            .get_or_insert_with(|| error.to_string());
        self.stop.store(true, Ordering::SeqCst);
        if let Some((_, canceller)) = &*self.engine.lock().expect("engine") {
            canceller.cancel();
        }
    }

    /// Queues a job's result (none for a job handed back) and, when it was the last job held
    /// of its chunk, the chunk's close, for one group commit.
    fn push(&self, completion: Option<Completion>, close: Option<Close>) {
        let mut outbox = self.outbox.lock().expect("outbox");
        outbox.completions.extend(completion);
        outbox.closes.extend(close);
        if outbox.completions.len() >= keeper::BATCH {
            self.wake.notify_one();
        }
    }

    /// Lets go of a held job (see [`Held::remove`]); wakes a claimer waiting for room only when
    /// this made some (not at every job's end: a wake-up is a system call or two).
    fn remove_held(&self, id: &str, handed_back: bool) -> Option<Let> {
        let mut held = self.held.lock().expect("held jobs");
        let had_room = held.room;
        let taken = held.remove(id, handed_back);
        let made_room = !had_room && held.room;
        let emptied = taken.is_some() && held.jobs.is_empty();
        drop(held);
        if made_room || emptied {
            self.released.notify_all();
        }
        taken
    }
}

/// One worker of the queue: registers itself, claims jobs for the engine ([`Worker::jobs`]),
/// records their results ([`Worker::reporter`]), and keeps its leases alive. End it with
/// [`Worker::finish`].
pub struct Worker {
    inner: Arc<Inner>,
    keeper: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("name", &self.inner.name)
            .field("id", &self.inner.id)
            .finish_non_exhaustive()
    }
}

impl Worker {
    /// Registers a worker on the queue `name` at `url`, and starts its keeper thread (group
    /// commits of results, heartbeats, shared host pauses).
    ///
    /// # Errors
    /// The database cannot be reached.
    pub fn start(url: &str, name: &str, options: WorkerOptions) -> Result<Self, Error> {
        let mut db = open(url, options.patience)?;
        let lease = options.lease.as_secs_f64();
        let label = options.label.clone();
        let (id, live): (i64, i64) = db.run("register the worker", |client| {
            let id: i64 = client
                .query_one(
                    "INSERT INTO haul_workers (name, label, lease) VALUES ($1, $2, $3) RETURNING id",
                    &[&name, &label, &lease],
                )?
                .get(0);
            Ok((id, keeper::live_workers(client, name)?))
        })?;
        let live = usize::try_from(live).unwrap_or(1).max(1);
        let claim_after = std::time::Instant::now()
            + if live > 1 {
                keeper::SHARE_EVERY + Duration::from_millis(250)
            } else {
                Duration::ZERO
            };
        let per_host_claim = options.per_host_claim.max(1);
        let inner = Arc::new(Inner {
            url: url.to_owned(),
            name: name.to_owned(),
            id,
            options,
            held: Mutex::new(Held {
                limit: i64::try_from(per_host_claim).unwrap_or(i64::MAX),
                ..Held::default()
            }),
            released: Condvar::new(),
            outbox: Mutex::new(Outbox::default()),
            wake: Condvar::new(),
            stop: AtomicBool::new(false),
            claiming: Mutex::new(()),
            fatal: Mutex::new(None),
            engine: Mutex::new(None),
            live: std::sync::atomic::AtomicUsize::new(live),
            claim_after,
            recorded: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
        });
        let keeper_inner = Arc::clone(&inner);
        let keeper = std::thread::Builder::new()
            .name("haul-queue-keeper".into())
            .spawn(move || keeper::run(&keeper_inner, db))
            .map_err(|e| Error::io("start the queue keeper", "", e))?;
        Ok(Self {
            inner,
            keeper: Mutex::new(Some(keeper)),
        })
    }

    /// This worker's number in the queue (`haul status` shows it).
    #[must_use]
    pub fn id(&self) -> i64 {
        self.inner.id
    }

    /// The tag of this worker's temporary files in a shared output directory (see
    /// [`Config::shared_output`](crate::Config::shared_output)).
    #[must_use]
    pub fn tag(&self) -> String {
        format!("w{}", self.inner.id)
    }

    /// Links the worker to its engine: hosts another worker was told to wait for are paused
    /// there, the per-host budgets are shared with the live workers, and the engine stops
    /// when the queue is lost for good.
    pub fn attach(&self, link: FleetLink, canceller: Canceller) {
        link.share(self.inner.live.load(Ordering::SeqCst));
        *self.inner.engine.lock().expect("engine") = Some((link, canceller));
    }

    /// The jobs this worker claims, for [`Engine::run`](crate::Engine::run). The iterator
    /// blocks while the queue has nothing to hand out but other workers still hold jobs (one
    /// of them may die and leave its jobs to be claimed again); it ends when every job has
    /// ended (unless `follow`), or when the worker stops.
    ///
    /// # Errors
    /// The database cannot be reached.
    ///
    /// A thread of its own claims ahead of the engine (up to a claim batch waits in a hand-off),
    /// so the engine never waits for a claim's round trip.
    pub fn jobs(&self) -> Result<Claims, Error> {
        let mut claimer = Claimer {
            inner: Arc::clone(&self.inner),
            db: Db::connect(&self.inner.url, self.inner.options.patience)?.with_session(LOOKUPS)?,
            buffer: VecDeque::new(),
            cursors: HashMap::new(),
            rescan_at: std::time::Instant::now(),
            short: false,
        };
        let handoff = Arc::new(Handoff {
            queue: Mutex::new(Slots::default()),
            filled: Condvar::new(),
            drained: Condvar::new(),
            capacity: self.inner.options.claim_batch.max(1),
            ready: crate::InputReady::new(),
        });
        let feed = Arc::clone(&handoff);
        let inner = Arc::clone(&self.inner);
        std::thread::Builder::new()
            .name("haul-queue-claims".into())
            .spawn(move || {
                while let Some(item) = claimer.next_job() {
                    if !feed.push(item, &inner.stop) {
                        break;
                    }
                }
                feed.close();
            })
            .map_err(|e| Error::io("start the queue claimer", "", e))?;
        Ok(Claims { handoff })
    }

    /// Removes from `output_dir` the temporary files of workers no longer live (killed ones
    /// leave theirs), keeping this worker's and every live worker's; returns how many.
    ///
    /// # Errors
    /// The queue or the parts directory cannot be read.
    pub fn remove_orphan_parts(&self, output_dir: &std::path::Path) -> Result<u64, Error> {
        let mut db = Db::connect(&self.inner.url, self.inner.options.patience)?;
        let live: std::collections::HashSet<String> = db.run("list the live workers", |client| {
            Ok(client
                .query(
                    "SELECT id FROM haul_workers WHERE stopped IS NULL \
                     AND heartbeat > now() - make_interval(secs => lease)",
                    &[],
                )?
                .into_iter()
                .map(|r| format!("w{}", r.get::<_, i64>(0)))
                .collect())
        })?;
        let mine = self.tag();
        crate::store::remove_orphan_parts(output_dir, |tag| {
            // Only worker tags (w + number) are this function's business.
            let worker = tag
                .strip_prefix('w')
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
            !worker || tag == mine || live.contains(tag)
        })
        .map_err(|e| Error::io("clean temporary files", output_dir, e))
    }

    /// The worker's counters so far, readable from anywhere (metrics).
    #[must_use]
    pub fn totals(&self) -> Arc<dyn Fn() -> WorkerTotals + Send + Sync> {
        let inner = Arc::clone(&self.inner);
        Arc::new(move || totals(&inner))
    }

    /// A reporter that records each job's end in the queue, then passes the event to `inner`.
    #[must_use]
    pub fn reporter(&self, inner: Arc<dyn Reporter>) -> Arc<dyn Reporter> {
        Arc::new(QueueReporter {
            inner,
            worker: Arc::clone(&self.inner),
        })
    }

    /// Stops claiming, writes every result still waiting, hands the jobs this worker still
    /// holds back to the queue, and marks the worker stopped.
    ///
    /// # Errors
    /// The queue failed during the run (the first error), or could not be written now.
    pub fn finish(&self) -> Result<WorkerTotals, Error> {
        self.inner.stop.store(true, Ordering::SeqCst);
        drop(self.inner.claiming.lock().expect("claim lock"));
        {
            let mut outbox = self.inner.outbox.lock().expect("outbox");
            outbox.closing = true;
            self.inner.wake.notify_one();
        }
        if let Some(keeper) = self.keeper.lock().expect("keeper").take()
            && keeper.join().is_err()
        {
            self.inner
                .fatal
                .lock()
                .expect("fatal")
                .get_or_insert_with(|| "the queue keeper panicked".to_owned());
        }
        let mut db = Db::connect(&self.inner.url, self.inner.options.patience)?.with_session(LOOKUPS)?;
        let (name, id) = (self.inner.name.as_str(), self.inner.id);
        let released = db.run("hand unfinished jobs back to the queue", |client| {
            let mut tx = client.transaction()?;
            let released: i64 = tx
                .query_one(
                    "WITH back AS ( \
                        UPDATE haul_chunks SET state = 'queued', owner = NULL, lease_until = NULL, \
                            released = released + 1 \
                        WHERE name = $1 AND owner = $2 AND state = 'running' RETURNING chunk) \
                     SELECT count(*) FROM back JOIN haul_jobs j ON j.name = $1 AND j.chunk = back.chunk \
                     WHERE NOT EXISTS ( \
                        SELECT 1 FROM haul_results r WHERE r.name = $1 AND r.chunk = j.chunk AND r.id = j.id)",
                    &[&name, &id],
                )?
                .get(0);
            let released = u64::try_from(released).unwrap_or(0);
            tx.execute("UPDATE haul_workers SET stopped = now() WHERE id = $1", &[&id])?;
            tx.commit()?;
            Ok(released)
        })?;
        if let Some(fatal) = self.inner.fatal.lock().expect("fatal").clone() {
            return Err(Error::Queue(fatal));
        }
        Ok(WorkerTotals {
            released,
            ..totals(&self.inner)
        })
    }
}

/// The jobs a worker claims (see [`Worker::jobs`]).
struct Claimer {
    inner: Arc<Inner>,
    db: Db,
    buffer: VecDeque<(String, String)>,
    /// Per host, the highest `seq` this worker claimed: the next claim of the host reads the
    /// queue from there, not through the rows already finished (whose dead index entries a
    /// scan from the start would visit again at every claim). Cleared for a full scan (jobs
    /// handed back or left by dead workers) every lease, and before the queue is called empty.
    cursors: HashMap<String, i64>,
    /// When the next full scan is due.
    rescan_at: std::time::Instant,
    /// The last claim got fewer jobs than it asked for: the next waits for room (or the poll
    /// interval) instead of asking again at once for what is not there.
    short: bool,
}

fn totals(inner: &Inner) -> WorkerTotals {
    WorkerTotals {
        recorded: inner.recorded.load(Ordering::Relaxed),
        rejected: inner.rejected.load(Ordering::Relaxed),
        released: 0,
        pending: inner.outbox.lock().expect("outbox").completions.len() as u64,
    }
}

/// The jobs a worker claims (see [`Worker::jobs`]): an iterator over what its claimer
/// thread hands over.
pub struct Claims {
    handoff: Arc<Handoff>,
}

impl std::fmt::Debug for Claims {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Claims").finish_non_exhaustive()
    }
}

impl Claims {
    /// How many claimed jobs wait to be read ([`Config::input_ready`](crate::Config::input_ready)).
    #[must_use]
    pub fn ready(&self) -> crate::InputReady {
        self.handoff.ready.clone()
    }
}

impl Iterator for Claims {
    type Item = Result<Job, ManifestError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.handoff.pop()
    }
}

/// A bounded hand-off from the claimer thread to the engine's reader, that a stop unblocks.
struct Handoff {
    queue: Mutex<Slots>,
    filled: Condvar,
    drained: Condvar,
    capacity: usize,
    /// How many jobs wait, for the engine's reader (it gathers jobs into batches while some do).
    ready: crate::InputReady,
}

/// The hand-off's state. Each side is woken only while it waits: a wake-up per job would be a
/// system call per job.
#[derive(Default)]
struct Slots {
    /// The jobs waiting.
    items: VecDeque<Result<Job, ManifestError>>,
    /// The claimer has ended: what is queued is the rest.
    closed: bool,
    /// The reader waits for a job.
    reader_waits: bool,
    /// The claimer waits for room.
    claimer_waits: bool,
}

impl Handoff {
    /// Waits for room, then queues `item`; false when the worker stopped first.
    fn push(&self, item: Result<Job, ManifestError>, stop: &AtomicBool) -> bool {
        let mut slots = self.queue.lock().expect("hand-off");
        while slots.items.len() >= self.capacity {
            if stop.load(Ordering::SeqCst) {
                return false;
            }
            slots.claimer_waits = true;
            slots = self
                .drained
                .wait_timeout(slots, Duration::from_millis(100))
                .expect("hand-off")
                .0;
            slots.claimer_waits = false;
        }
        slots.items.push_back(item);
        self.ready.set(slots.items.len());
        if slots.reader_waits {
            self.filled.notify_one();
        }
        true
    }

    /// The claimer ended: what is queued is the rest.
    fn close(&self) {
        self.queue.lock().expect("hand-off").closed = true;
        self.filled.notify_all();
    }

    fn pop(&self) -> Option<Result<Job, ManifestError>> {
        let mut slots = self.queue.lock().expect("hand-off");
        loop {
            if let Some(item) = slots.items.pop_front() {
                self.ready.set(slots.items.len());
                // The claimer is woken once half is free, to refill it in one go (woken at
                // every job taken, it would push one and sleep again: two switches a job).
                if slots.claimer_waits && slots.items.len() <= self.capacity / 2 {
                    self.drained.notify_one();
                }
                return Some(item);
            }
            if slots.closed {
                return None;
            }
            slots.reader_waits = true;
            slots = self.filled.wait(slots).expect("hand-off");
            slots.reader_waits = false;
        }
    }
}

/// Hosts whose cursor a worker keeps at most (past this, the cursors start over).
const MAX_CURSORS: usize = 100_000;

impl std::fmt::Debug for Claimer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Claimer")
            .field("buffered", &self.buffer.len())
            .finish_non_exhaustive()
    }
}

/// Claims a host-fair batch, `$2` chunks at most: of each host not cooling down, enough for
/// this worker to hold `$3` jobs, and none of a host it holds at least half of that of (so one
/// host's jobs spread over the workers, and claims come in batches, not one per finished job).
/// A chunk is claimable when queued, or when its lease ran out and it holds one job (a lost
/// worker's chunks are split first: [`SPLIT`]). The worker's holdings come as arrays of hosts
/// (`$6`) and jobs (`$7`); its cursors (see [`Claimer::cursors`]) as hosts (`$8`) and the chunk
/// to read past (`$9`); `$10` is [`CHUNK`]. Returns the unfinished jobs of the chunks claimed, and a row with no job
/// for a chunk that has none left. `picked` is materialized: locked and read once, never again
/// for each row of the update, whatever the plan.
const CLAIM: &str = "
WITH mine AS (SELECT * FROM unnest($6::TEXT[], $7::BIGINT[]) AS m(host, n)),
marks AS (SELECT * FROM unnest($8::TEXT[], $9::BIGINT[]) AS k(host, after)),
picked AS MATERIALIZED (
    SELECT c.name, c.chunk
    FROM haul_hosts h
    LEFT JOIN mine ON mine.host = h.host
    LEFT JOIN marks ON marks.host = h.host
    CROSS JOIN LATERAL (
        SELECT name, chunk FROM haul_chunks
        WHERE name = h.name AND host = h.host AND state IN ('queued', 'running')
          AND chunk > coalesce(marks.after, 0)
          AND (state = 'queued' OR (lease_until < now() AND jobs = 1))
        ORDER BY chunk
        LIMIT CASE WHEN coalesce(mine.n, 0) * 2 >= $3 THEN 0
                   ELSE GREATEST(1, ($3 - coalesce(mine.n, 0)) / $10) END
        FOR UPDATE SKIP LOCKED
    ) c
    WHERE h.name = $1 AND (h.cool_until IS NULL OR h.cool_until <= now())
    LIMIT $2
),
claimed AS (
    UPDATE haul_chunks t
    SET state = 'running', attempt = t.attempt + 1, owner = $4, lease_until = now() + make_interval(secs => $5)
    FROM picked
    WHERE t.name = picked.name AND t.chunk = picked.chunk
    RETURNING t.chunk, t.attempt, t.host
)
SELECT j.id, j.spec, c.attempt, c.host, c.chunk
FROM claimed c LEFT JOIN LATERAL (
    SELECT j.id, j.spec, j.seq FROM haul_jobs j
    WHERE j.name = $1 AND j.chunk = c.chunk
      -- a chunk's first claim: no result has its number yet (see the schema)
      AND (c.attempt = 1
           OR NOT EXISTS (SELECT 1 FROM haul_results r WHERE r.name = $1 AND r.chunk = c.chunk AND r.id = j.id))
) j ON true
ORDER BY c.chunk, j.seq";

/// Locks the chunks of several jobs whose lease ran out (their worker was lost), for [`SPLIT`],
/// skipping those locked by their worker writing results under them (`haul_record` locks its
/// batch's chunks first): those are split at a later scan, if still lost, with their results
/// written.
const LOST: &str = "
SELECT chunk FROM haul_chunks
WHERE name = $1 AND state = 'running' AND lease_until < now() AND jobs > 1
ORDER BY chunk
FOR UPDATE SKIP LOCKED";

/// Splits the chunks [`LOST`] locked (`$2`) into chunks of one job each, which keep the claim
/// counts: each job is then claimed, and given up, on its own. A statement of its own after
/// the lock: its snapshot has every result written under those chunks (a result of the same
/// statement's snapshot as the lock could be one committed by then but not seen, and its job
/// would be handed out again).
const SPLIT: &str = "
WITH lost AS (
    DELETE FROM haul_chunks
    WHERE name = $1 AND chunk = ANY($2) -- locked by this transaction: as LOST found them
    RETURNING chunk, attempt, released, lease_until
),
moved AS (
    UPDATE haul_jobs j SET chunk = nextval('haul_chunk_ids') << 20
    FROM lost
    WHERE j.name = $1 AND j.chunk = lost.chunk
      AND NOT EXISTS (SELECT 1 FROM haul_results r WHERE r.name = $1 AND r.chunk = lost.chunk AND r.id = j.id)
    RETURNING j.chunk, j.host, lost.attempt, lost.released, lost.lease_until
)
INSERT INTO haul_chunks (name, chunk, host, jobs, state, attempt, released, lease_until)
SELECT $1, chunk, host, 1, 'running', attempt, released, lease_until FROM moved";

/// Fails the jobs of chunks claimed `$2` times by workers that were lost before they ended.
/// Chunks locked (a worker writing results under them) are left to a later scan: waiting for
/// them could deadlock with that worker's batch, which locks its chunks in order.
const GIVE_UP: &str = "
WITH picked AS MATERIALIZED (
    SELECT chunk FROM haul_chunks
    WHERE name = $1 AND state = 'running' AND lease_until < now() AND attempt - released >= $2
    FOR UPDATE SKIP LOCKED
),
lost AS (
    UPDATE haul_chunks t
    SET state = 'failed', owner = NULL, lease_until = NULL
    FROM picked
    WHERE t.name = $1 AND t.chunk = picked.chunk
    RETURNING t.chunk, t.attempt, t.attempt - t.released AS tries
)
INSERT INTO haul_results (name, chunk, id, state, attempt, reason, error)
SELECT $1, lost.chunk, j.id, 'failed', lost.attempt, 'worker lost',
       format('claimed %s times by workers that stopped before finishing it (--max-attempts %s)',
              lost.tries, $2::INTEGER)
FROM lost JOIN haul_jobs j ON j.name = $1 AND j.chunk = lost.chunk
ON CONFLICT DO NOTHING";

impl Claimer {
    /// Claims a batch into the buffer; returns how many chunks.
    fn claim(&mut self) -> Result<usize, Error> {
        let inner = Arc::clone(&self.inner);
        let _claiming = inner.claiming.lock().expect("claim lock");
        if inner.stop.load(Ordering::SeqCst) {
            return Ok(0);
        }
        let name = inner.name.as_str();
        let max = i32::try_from(inner.options.max_attempts).unwrap_or(i32::MAX);
        let per_host = i64::try_from(inner.options.per_host_claim.max(1)).unwrap_or(1);
        let chunk_jobs = CHUNK as i64;
        // More chunks than one host can give (see CLAIM's per-host limit): a claim that fills
        // its batch then had several hosts with room, and one that does not left none with
        // room ("short": wait until a host has room again). With a batch one host can fill,
        // every claim of a one-host queue was followed by an empty one.
        let batch = i64::try_from(inner.options.claim_batch.div_ceil(CHUNK))
            .unwrap_or(i64::MAX)
            .max(per_host / chunk_jobs + 1);
        let lease = inner.options.lease.as_secs_f64();
        let (hosts, holding): (Vec<String>, Vec<i64>) = {
            let mut held = inner.held.lock().expect("held jobs");
            if held.exhausted_at.is_some_and(|at| at.elapsed() >= inner.options.poll) {
                held.exhausted.clear();
                held.exhausted_at = None;
            }
            held.by_host.iter().map(|(h, n)| (h.clone(), *n)).unzip()
        };
        let now = std::time::Instant::now();
        let full = now >= self.rescan_at || self.cursors.len() > MAX_CURSORS;
        if full {
            self.cursors.clear();
            self.rescan_at = now + inner.options.lease;
        }
        let (marked, after): (Vec<String>, Vec<i64>) = self.cursors.iter().map(|(h, s)| (h.clone(), *s)).unzip();
        let rows = self
            .db
            .run_prepared("claim jobs", &[CLAIM, LOST, SPLIT, GIVE_UP], |client, prepared| {
                let [claim, lost, split, give_up] = prepared else {
                    unreachable!("four statements")
                };
                let params: [&(dyn postgres::types::ToSql + Sync); 10] = [
                    &name,
                    &batch,
                    &per_host,
                    &inner.id,
                    &lease,
                    &hosts,
                    &holding,
                    &marked,
                    &after,
                    &chunk_jobs,
                ];
                if !full {
                    // One statement, committed on its own: no BEGIN and COMMIT round trips.
                    return client.query(claim, &params);
                }
                let mut tx = client.transaction()?;
                let lost: Vec<i64> = tx.query(lost, &[&name])?.iter().map(|row| row.get(0)).collect();
                if !lost.is_empty() {
                    tx.execute(split, &[&name, &lost])?;
                }
                tx.execute(give_up, &[&name, &max])?;
                let rows = tx.query(claim, &params)?;
                tx.commit()?;
                Ok(rows)
            })?;
        tracing::debug!(target: "haul::queue", claimed = rows.len(), full, took = ?now.elapsed(), holding = ?holding, buffered = self.buffer.len(), "claim");
        let mut held = inner.held.lock().expect("held jobs");
        let mut chunks = std::collections::HashSet::new();
        let mut empty = Vec::new();
        for row in &rows {
            let attempt: i32 = row.get(2);
            let host: String = row.get(3);
            let chunk: i64 = row.get(4);
            let mark = self.cursors.entry(host.clone()).or_insert(chunk);
            *mark = (*mark).max(chunk);
            chunks.insert(chunk);
            let Some(id) = row.get::<_, Option<String>>(0) else {
                // Nothing left in it (its jobs ended before it was handed back): closed as is.
                empty.push(Close {
                    chunk,
                    attempt,
                    open: false,
                });
                continue;
            };
            held.insert(id.clone(), chunk, attempt, host);
            self.buffer.push_back((id, row.get(1)));
        }
        held.claimed(&hosts, &holding, rows.iter().map(|row| row.get::<_, &str>(3)).collect());
        drop(held);
        for close in empty {
            inner.push(None, Some(close));
        }
        self.short = (chunks.len() as i64) < batch;
        Ok(chunks.len())
    }

    /// True when nothing is left to claim now or later: no job queued, and none held by
    /// another worker (which may die and leave it to be claimed again).
    fn drained(&mut self) -> Result<bool, Error> {
        let (name, id) = (self.inner.name.as_str(), self.inner.id);
        self.db.run("count the jobs left", |client| {
            let row = client.query_one(
                "SELECT count(*) FILTER (WHERE state = 'queued'), \
                        count(*) FILTER (WHERE state = 'running' AND owner IS DISTINCT FROM $2) \
                 FROM haul_chunks WHERE name = $1 AND state IN ('queued', 'running')",
                &[&name, &id],
            )?;
            Ok(row.get::<_, i64>(0) == 0 && row.get::<_, i64>(1) == 0)
        })
    }

    /// Waits for the poll interval, or less: until a held host falls below half of what a
    /// worker may hold of it (a claim finds room then), or the worker holds no job any more
    /// (it held some), or the worker stops.
    fn pause(&self) {
        let started = std::time::Instant::now();
        let step = Duration::from_millis(50);
        let mut held = self.inner.held.lock().expect("held jobs");
        let holding = !held.jobs.is_empty();
        loop {
            let waited = started.elapsed();
            let ready = held.room || (holding && held.jobs.is_empty());
            if waited >= self.inner.options.poll || self.inner.stop.load(Ordering::SeqCst) || ready {
                return;
            }
            held = self
                .inner
                .released
                .wait_timeout(held, step.min(self.inner.options.poll - waited))
                .expect("held jobs")
                .0;
        }
    }
}

/// The job of a queue row: its manifest line, under the row's id.
fn parse_spec(id: &str, spec: &str) -> Result<Job, String> {
    match ManifestReader::new(spec.as_bytes(), Format::Jsonl).next() {
        Some(Ok(mut job)) => {
            id.clone_into(&mut job.id);
            Ok(job)
        }
        Some(Err(e)) => Err(e.reason),
        None => Err("empty job line".to_owned()),
    }
}

impl Claimer {
    /// The next job claimed (see [`Worker::jobs`]); `None` when the queue is drained or the
    /// worker stops.
    fn next_job(&mut self) -> Option<Result<Job, ManifestError>> {
        loop {
            if let Some((id, spec)) = self.buffer.pop_front() {
                match parse_spec(&id, &spec) {
                    Ok(job) => return Some(Ok(job)),
                    Err(reason) => {
                        let taken = self.inner.remove_held(&id, false);
                        if let Some(Let { chunk, attempt, close }) = taken {
                            let completion = Completion {
                                id,
                                chunk,
                                attempt,
                                state: "failed",
                                path: None,
                                size: None,
                                sha256: None,
                                blake3: None,
                                verified: false,
                                http_status: None,
                                reason: Some("bad job line".to_owned()),
                                error: Some(reason),
                            };
                            self.inner.push(Some(completion), close);
                        }
                        continue;
                    }
                }
            }
            if self.inner.stop.load(Ordering::SeqCst) {
                return None;
            }
            if std::time::Instant::now() < self.inner.claim_after {
                self.pause();
                continue;
            }
            // The last claim got what there was: wait for room, unless nothing is held (then
            // the queue may be drained, which only a claim tells).
            let waits = {
                let held = self.inner.held.lock().expect("held jobs");
                self.short && !held.room && !held.jobs.is_empty()
            };
            if waits {
                self.short = false;
                self.pause();
                continue;
            }
            self.inner.held.lock().expect("held jobs").room = false;
            match self.claim() {
                // Nothing past the cursors (and not for want of room): a full scan before
                // anything is concluded.
                Ok(0) if !self.cursors.is_empty() && self.inner.held.lock().expect("held jobs").jobs.is_empty() => {
                    self.rescan_at = std::time::Instant::now();
                    self.short = false;
                    continue;
                }
                Ok(0) => {}
                Ok(_) => continue,
                Err(e) => {
                    self.inner.set_fatal(&e);
                    return None;
                }
            }
            // While this worker holds jobs, the queue is not drained for it: it waits for room
            // (of hosts that had jobs left: see `Held::exhausted`), or the poll interval, or
            // until it holds nothing any more (to find the queue drained, or what was handed
            // back meanwhile).
            let holding = !self.inner.held.lock().expect("held jobs").jobs.is_empty();
            if !self.inner.options.follow && !holding {
                match self.drained() {
                    Ok(true) => return None,
                    Ok(false) => {}
                    Err(e) => {
                        self.inner.set_fatal(&e);
                        return None;
                    }
                }
            }
            self.pause();
        }
    }
}

/// Records each job's end in the queue (see [`Worker::reporter`]).
struct QueueReporter {
    inner: Arc<dyn Reporter>,
    worker: Arc<Inner>,
}

impl Reporter for QueueReporter {
    fn on_job_start(&self, job: &Job) {
        self.inner.on_job_start(job);
    }

    fn on_retry(&self, job: &Job, attempt: u32, error: &Error, delay: Duration) {
        self.inner.on_retry(job, attempt, error, delay);
    }

    fn on_job_finished(&self, report: &JobReport<'_>) {
        // A file found in place that matches the job (adopted: "exists") is the job done, as
        // the archive records it; perhaps a worker finished it and died before recording it.
        let adopted = report.status == JobStatus::Skipped && report.reason.is_some_and(|r| r.starts_with("exists"));
        let done = report.status == JobStatus::Done || adopted;
        let taken = self.worker.remove_held(report.id, report.status == JobStatus::Pending);
        match taken {
            Some(Let { chunk, attempt, close }) => {
                let state = match report.status {
                    _ if done => Some("done"),
                    JobStatus::Skipped => Some("skipped"),
                    JobStatus::Failed => Some("failed"),
                    // Handed back (the run stopped first): it stays queued, and its chunk goes
                    // back to the queue when closed.
                    JobStatus::Done | JobStatus::Pending => None,
                };
                let completion = state.map(|state| Completion {
                    id: report.id.to_owned(),
                    chunk,
                    attempt,
                    state,
                    path: report.path.map(str::to_owned),
                    size: done.then(|| i64::try_from(report.bytes).unwrap_or(i64::MAX)),
                    sha256: report.sha256.map(|d| to_hex(d)),
                    blake3: report.blake3.map(|d| to_hex(d)),
                    verified: report.verified,
                    http_status: report.http_status.map(i32::from),
                    reason: report.reason.map(str::to_owned),
                    error: report.error.map(str::to_owned),
                });
                self.worker.push(completion, close);
            }
            None => {
                // The lease was lost (this worker stalled past it): another worker has the job.
                self.worker.rejected.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(target: "haul::queue", id = report.id, "result not recorded: the job's lease was lost");
            }
        }
        self.inner.on_job_finished(report);
    }

    fn on_bad_line(&self, error: &ManifestError) {
        self.inner.on_bad_line(error);
    }

    fn on_notice(&self, message: &str) {
        self.inner.on_notice(message);
    }

    fn on_host_paused(&self, host: &str, wait: Duration, reason: &str) {
        {
            let mut outbox = self.worker.outbox.lock().expect("outbox");
            outbox
                .cool
                .push((host.to_owned(), wait.as_secs_f64(), reason.to_owned()));
            self.worker.wake.notify_one();
        }
        self.inner.on_host_paused(host, wait, reason);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_text_escapes_what_copy_reads_as_syntax() {
        let mut out = Vec::new();
        copy_escape(&mut out, "a\tb\\c\nd\re");
        assert_eq!(out, b"a\\tb\\\\c\\nd\\re");
    }

    #[test]
    fn chunk_numbers_shift_by_chunk_bits_everywhere() {
        let shift = format!("nextval('haul_chunk_ids') << {CHUNK_BITS}");
        assert!(ENQUEUE.contains(&shift) && SPLIT.contains(&shift));
        assert!(DROP_EMPTY_CHUNKS.contains(&format!("currval('haul_chunk_ids') << {CHUNK_BITS}")));
    }

    #[test]
    fn a_spec_keeps_the_rows_id() {
        let job = parse_spec("row-7", r#"{"url":"http://127.0.0.1/a","id":"other"}"#).expect("job");
        assert_eq!(job.id, "row-7");
        assert!(parse_spec("x", "not json").is_err());
    }

    #[test]
    fn a_chunk_closes_with_its_last_job_and_is_open_when_one_was_handed_back() {
        let mut held = Held {
            limit: 8,
            ..Held::default()
        };
        for (id, chunk) in [("a", 1), ("b", 1), ("c", 2), ("d", 2)] {
            held.insert(id.into(), chunk, 3, "h".into());
        }
        assert_eq!(held.by_host.get("h"), Some(&4));
        let first = held.remove("a", false).expect("held");
        assert_eq!((first.chunk, first.attempt, first.close), (1, 3, None));
        let last = held.remove("b", false).expect("held").close;
        assert_eq!(
            last,
            Some(Close {
                chunk: 1,
                attempt: 3,
                open: false
            }),
            "every job had a result"
        );
        assert!(held.remove("c", true).expect("held").close.is_none());
        let last = held.remove("d", false).expect("held").close;
        assert_eq!(
            last,
            Some(Close {
                chunk: 2,
                attempt: 3,
                open: true
            }),
            "c went back without one"
        );
        assert!(held.remove("d", false).is_none(), "let go of once");
        assert!(held.chunks.is_empty() && held.by_host.is_empty());
    }

    #[test]
    fn a_host_found_exhausted_makes_no_room_as_its_jobs_end() {
        let mut held = Held {
            limit: 4,
            ..Held::default()
        };
        for (id, host) in [("a", "x"), ("b", "x"), ("c", "y"), ("d", "y")] {
            held.insert(id.into(), 1, 1, host.into());
        }
        held.exhausted.insert("x".into());
        held.remove("a", false);
        assert!(!held.room, "x has nothing left to claim");
        held.remove("c", false);
        assert!(held.room, "y may have");
    }
}
