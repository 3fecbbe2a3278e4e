//! An archive in PostgreSQL (feature `queue`): the table `haul_archive`, keyed by (archive
//! name, job id), so one database holds the archives of many lists. Same rows and semantics
//! as the SQLite file; statements are retried on a new connection for up to 2 minutes.
//!
//! The synchronous `postgres` client runs a runtime of its own, which must not start inside the
//! engine's: each connection lives on a thread of its own ([`OnThread`]), and callers on any
//! thread (a runtime's included) send it work and wait for the answer.

use std::collections::HashMap;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use ::postgres::Client;
use ::postgres::types::Type;

use super::backend::{Backend, FailedRow, Location};
use super::{DoneRow, Record, Row, RowStatus, STALE, db_error, in_use, now_secs};
use crate::error::Error;
use crate::queue::db::{Db, Target, describe};

/// How long statements are retried while the database is unreachable.
const PATIENCE: Duration = Duration::from_secs(120);
/// Failed rows read per page.
const PAGE: i64 = 1000;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS haul_archive (
    name          TEXT COLLATE \"C\" NOT NULL, -- byte order: keys compare by memcmp
    id            TEXT COLLATE \"C\" NOT NULL,
    url           TEXT NOT NULL,
    path          TEXT COLLATE \"C\",
    size          BIGINT,
    sha256        TEXT,
    etag          TEXT,
    last_modified TEXT,
    status        TEXT NOT NULL,
    http_status   INTEGER,
    error_class   TEXT,
    error         TEXT,
    attempts      INTEGER NOT NULL DEFAULT 0,
    first_seen    BIGINT NOT NULL,
    updated       BIGINT NOT NULL,
    verified      BOOLEAN NOT NULL DEFAULT true,
    spec          TEXT,
    blake3        TEXT,
    segments      TEXT,
    PRIMARY KEY (name, id)
);
CREATE INDEX IF NOT EXISTS haul_archive_path ON haul_archive (name, path);
";

const LOOKUP: &str = "SELECT status, path, size, sha256, etag, last_modified, verified, error_class, blake3, segments
                      FROM haul_archive WHERE name = $1 AND id = $2";

/// One batch as column arrays, for one `INSERT … SELECT FROM unnest(…)`.
const WRITE: &str = "
INSERT INTO haul_archive AS a (name, id, url, path, size, sha256, etag, last_modified, status, http_status,
                               error_class, error, attempts, first_seen, updated, verified, spec, blake3, segments)
SELECT $1, r.id, r.url, r.path, r.size, r.sha256, r.etag, r.last_modified, r.status, r.http_status,
       r.error_class, r.error, r.attempts, $2, $2, r.verified, r.spec, r.blake3, r.segments
FROM unnest($3::text[], $4::text[], $5::text[], $6::bigint[], $7::text[], $8::text[], $9::text[], $10::text[],
            $11::int[], $12::text[], $13::text[], $14::int[], $15::bool[], $16::text[], $17::text[], $18::text[])
     AS r(id, url, path, size, sha256, etag, last_modified, status, http_status, error_class, error, attempts,
          verified, spec, blake3, segments)
ON CONFLICT (name, id) DO UPDATE SET
  url = excluded.url, path = excluded.path, size = excluded.size,
  sha256 = excluded.sha256, blake3 = excluded.blake3, segments = excluded.segments,
  etag = excluded.etag, verified = excluded.verified,
  last_modified = excluded.last_modified, status = excluded.status,
  http_status = excluded.http_status, error_class = excluded.error_class,
  error = excluded.error, attempts = a.attempts + excluded.attempts, spec = excluded.spec,
  updated = excluded.updated";

/// Work sent to an [`OnThread`] value.
type Work<T> = Box<dyn FnOnce(&mut T) + Send>;

/// A value made and used on a thread of its own; dropped (and the thread ended) with this.
struct OnThread<T> {
    work: Option<mpsc::Sender<Work<T>>>,
    thread: Option<JoinHandle<()>>,
}

impl<T: 'static> OnThread<T> {
    /// Starts the thread and makes the value there with `make`.
    fn start(make: impl FnOnce() -> Result<T, Error> + Send + 'static) -> Result<Self, Error> {
        let (work_tx, work_rx) = mpsc::channel::<Work<T>>();
        let (made_tx, made_rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("haul-archive-pg".into())
            .spawn(move || {
                let mut value = match make() {
                    Ok(value) => {
                        let _ = made_tx.send(Ok(()));
                        value
                    }
                    Err(e) => {
                        let _ = made_tx.send(Err(e));
                        return;
                    }
                };
                for work in work_rx {
                    work(&mut value);
                }
            })
            .map_err(|e| Error::Archive(format!("start a connection thread: {e}")))?;
        match made_rx.recv() {
            Ok(Ok(())) => Ok(Self {
                work: Some(work_tx),
                thread: Some(thread),
            }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Error::Archive("the connection thread ended".into())),
        }
    }

    /// Runs `f` on the value's thread and waits for its answer.
    fn call<R: Send + 'static>(&self, f: impl FnOnce(&mut T) -> Result<R, Error> + Send + 'static) -> Result<R, Error> {
        let (tx, rx) = mpsc::sync_channel(1);
        let sent = self.work.as_ref().map(|work| {
            work.send(Box::new(move |value: &mut T| {
                let _ = tx.send(f(value));
            }))
        });
        match sent {
            Some(Ok(())) => rx
                .recv()
                .unwrap_or_else(|_| Err(Error::Archive("the connection thread ended".into()))),
            _ => Err(Error::Archive("the connection thread ended".into())),
        }
    }
}

impl<T> Drop for OnThread<T> {
    fn drop(&mut self) {
        self.work.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A connection to a named archive in PostgreSQL.
pub(crate) struct Postgres {
    db: OnThread<Db>,
    name: String,
}

impl Postgres {
    /// Connects to the archive `name` of the database at `url`; it must exist.
    pub(crate) fn connect(url: &str, name: &str) -> Result<Self, Error> {
        let shown = Location::Postgres {
            url: url.to_owned(),
            name: name.to_owned(),
        }
        .display();
        let url = url.to_owned();
        let db = OnThread::start(move || {
            let mut db = Db::connect_archive(&url, PATIENCE)?;
            let exists: bool = db.run("open the archive", |c| {
                c.query_one("SELECT to_regclass('haul_archive') IS NOT NULL", &[])
                    .map(|r| r.get(0))
            })?;
            if exists {
                Ok(db)
            } else {
                Err(Error::Archive(format!("no archive at {shown}")))
            }
        })?;
        Ok(Self {
            db,
            name: name.to_owned(),
        })
    }

    /// Runs `f` with the connection and this archive's name, on the connection's thread.
    fn with<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Db, &str) -> Result<R, Error> + Send + 'static,
    ) -> Result<R, Error> {
        let name = self.name.clone();
        self.db.call(move |db| f(db, &name))
    }
}

/// Holds an archive's run lock: a session-level advisory lock on a connection of its own
/// (released when the connection ends, so a killed process frees it at once).
pub(crate) struct Lock {
    client: OnThread<Client>,
}

impl Drop for Lock {
    /// Releases the lock before the connection closes: the server ends a closed session a
    /// moment later, and a run started meanwhile found the archive in use (seen in a test).
    fn drop(&mut self) {
        let _ = self.client.call(|client| {
            client
                .execute("SELECT pg_advisory_unlock_all()", &[])
                .map(drop)
                .map_err(|e| db_error("unlock the archive", describe(&e)))
        });
    }
}

impl std::fmt::Debug for Lock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lock").finish_non_exhaustive()
    }
}

impl Lock {
    /// Creates the table if needed and takes the lock of the archive `name` (with `wait`,
    /// waits for another process to release it).
    pub(crate) fn take(url: &str, name: &str, wait: bool, location: &Location) -> Result<Self, Error> {
        let (url, name, location) = (url.to_owned(), name.to_owned(), location.clone());
        let client = OnThread::start(move || Self::lock(&url, &name, wait, &location))?;
        Ok(Self { client })
    }

    fn lock(url: &str, name: &str, wait: bool, location: &Location) -> Result<Client, Error> {
        let shown = format!("cannot connect to {}", location.display());
        let mut client = Target::parse(url)
            .map_err(|e| db_error(&shown, e))?
            .connect()
            .map_err(|e| db_error(&shown, describe(&e)))?;
        let mut tx = client
            .transaction()
            .map_err(|e| db_error("create schema", describe(&e)))?;
        // Two processes creating the table at once would collide on its type's name.
        tx.execute("SELECT pg_advisory_xact_lock(hashtext('haul_archive schema'))", &[])
            .and_then(|_| tx.batch_execute(SCHEMA))
            .map_err(|e| db_error("create schema", describe(&e)))?;
        tx.commit().map_err(|e| db_error("create schema", describe(&e)))?;
        let key = format!("haul_archive:{name}");
        if wait {
            client
                .execute("SELECT pg_advisory_lock(hashtext($1))", &[&key])
                .map_err(|e| db_error("lock the archive", describe(&e)))?;
        } else {
            let got: bool = client
                .query_one("SELECT pg_try_advisory_lock(hashtext($1))", &[&key])
                .map_err(|e| db_error("lock the archive", describe(&e)))?
                .get(0);
            if !got {
                return Err(in_use(&location.display()));
            }
        }
        Ok(client)
    }
}

/// A batch as one array per column (moved out of the records, not copied).
#[derive(Default)]
struct Columns {
    ids: Vec<String>,
    urls: Vec<String>,
    paths: Vec<Option<String>>,
    sizes: Vec<Option<i64>>,
    sha256: Vec<Option<String>>,
    etags: Vec<Option<String>>,
    modified: Vec<Option<String>>,
    statuses: Vec<&'static str>,
    http: Vec<Option<i32>>,
    classes: Vec<Option<String>>,
    errors: Vec<Option<String>>,
    attempts: Vec<i32>,
    verified: Vec<bool>,
    specs: Vec<Option<String>>,
    blake3: Vec<Option<String>>,
    segments: Vec<Option<String>>,
}

impl From<Vec<Record>> for Columns {
    fn from(records: Vec<Record>) -> Self {
        let mut c = Self::default();
        for r in records {
            c.statuses.push(r.status.as_str());
            c.sizes.push(r.size.map(to_i64));
            c.http.push(r.http_status.map(i32::from));
            c.attempts.push(i32::try_from(r.attempts).unwrap_or(i32::MAX));
            c.verified.push(r.verified);
            c.ids.push(r.id);
            c.urls.push(r.url);
            c.paths.push(r.path);
            c.sha256.push(r.sha256);
            c.etags.push(r.etag);
            c.modified.push(r.last_modified);
            c.classes.push(r.error_class);
            c.errors.push(r.error);
            c.specs.push(r.spec);
            c.blake3.push(r.blake3);
            c.segments.push(r.segments);
        }
        c
    }
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn to_u64(n: Option<i64>) -> Option<u64> {
    n.and_then(|n| u64::try_from(n).ok())
}

impl Backend for Postgres {
    fn is_empty(&mut self) -> Result<bool, Error> {
        self.with(|db, name| {
            db.run("count", |c| {
                c.query_one(
                    "SELECT NOT EXISTS (SELECT 1 FROM haul_archive WHERE name = $1)",
                    &[&name],
                )
                .map(|r| r.get(0))
            })
        })
    }

    fn lookup(&mut self, id: &str) -> Result<Option<Row>, Error> {
        let id = id.to_owned();
        let row = self.with(move |db, name| {
            // Typed parameters: one round trip, no separate prepare.
            db.run("lookup", |c| {
                c.query_typed_opt(LOOKUP, &[(&name, Type::TEXT), (&id, Type::TEXT)])
            })
        })?;
        Ok(row.map(|r| Row {
            status: RowStatus::parse(r.get(0)),
            path: r.get(1),
            size: to_u64(r.get(2)),
            sha256: r.get(3),
            etag: r.get(4),
            last_modified: r.get(5),
            verified: r.get(6),
            stale: r.get::<_, Option<&str>>(7) == Some(STALE),
            blake3: r.get(8),
            segments: r.get(9),
        }))
    }

    fn owner_of(&mut self, path: &str) -> Result<Option<String>, Error> {
        let path = path.to_owned();
        let row = self.with(move |db, name| {
            db.run("path lookup", |c| {
                c.query_typed_opt(
                    "SELECT id FROM haul_archive WHERE name = $1 AND path = $2 AND status = 'done' LIMIT 1",
                    &[(&name, Type::TEXT), (&path, Type::TEXT)],
                )
            })
        })?;
        Ok(row.map(|r| r.get(0)))
    }

    fn write(&mut self, batch: &[Record]) -> Result<(), Error> {
        // One row per id (a batch may hold a job's partial and then its done record): the last
        // record wins, attempts add up.
        let mut merged: Vec<Record> = Vec::with_capacity(batch.len());
        let mut at: HashMap<&str, usize> = HashMap::with_capacity(batch.len());
        for record in batch {
            match at.get(record.id.as_str()) {
                Some(&i) => {
                    let attempts = merged[i].attempts + record.attempts;
                    merged[i] = record.clone();
                    merged[i].attempts = attempts;
                }
                None => {
                    at.insert(&record.id, merged.len());
                    merged.push(record.clone());
                }
            }
        }
        let now = now_secs();
        self.with(move |db, name| {
            let c = Columns::from(merged);
            db.run("write", |client| {
                client.execute(
                    WRITE,
                    &[
                        &name,
                        &now,
                        &c.ids,
                        &c.urls,
                        &c.paths,
                        &c.sizes,
                        &c.sha256,
                        &c.etags,
                        &c.modified,
                        &c.statuses,
                        &c.http,
                        &c.classes,
                        &c.errors,
                        &c.attempts,
                        &c.verified,
                        &c.specs,
                        &c.blake3,
                        &c.segments,
                    ],
                )
            })
        })?;
        Ok(())
    }

    fn counts(&mut self) -> Result<Vec<(String, u64, u64)>, Error> {
        let rows = self.with(|db, name| {
            db.run("status", |c| {
                c.query(
                    "SELECT status, COUNT(*), COALESCE(SUM(size), 0)::BIGINT FROM haul_archive
                     WHERE name = $1 GROUP BY status ORDER BY status",
                    &[&name],
                )
            })
        })?;
        Ok(rows
            .iter()
            .map(|r| {
                (
                    r.get(0),
                    r.get::<_, i64>(1).unsigned_abs(),
                    r.get::<_, i64>(2).unsigned_abs(),
                )
            })
            .collect())
    }

    fn failed(&mut self, visit: &mut dyn FnMut(FailedRow) -> Result<(), Error>) -> Result<(), Error> {
        let mut after = String::new();
        loop {
            // Keyset pages by id: memory stays flat however many jobs failed.
            let from = after.clone();
            let rows = self.with(move |db, name| {
                db.run("failed jobs", |c| {
                    c.query(
                        "SELECT id, url, path, spec, error_class, http_status, error FROM haul_archive
                         WHERE name = $1 AND status = 'failed' AND id > $2 ORDER BY id LIMIT $3",
                        &[&name, &from, &PAGE],
                    )
                })
            })?;
            let Some(last) = rows.last() else { return Ok(()) };
            after = last.get(0);
            for r in &rows {
                visit(FailedRow {
                    id: r.get(0),
                    url: r.get(1),
                    path: r.get(2),
                    spec: r.get(3),
                    class: r.get(4),
                    http_status: r.get::<_, Option<i32>>(5).and_then(|s| u16::try_from(s).ok()),
                    error: r.get(6),
                })?;
            }
        }
    }

    fn done_after(&mut self, after: &str, limit: usize) -> Result<Vec<DoneRow>, Error> {
        let (after, limit) = (after.to_owned(), i64::try_from(limit).unwrap_or(i64::MAX));
        let rows = self.with(move |db, name| {
            db.run("read done rows", |c| {
                c.query(
                    "SELECT id, path, size, sha256, blake3 FROM haul_archive
                     WHERE name = $1 AND status = 'done' AND id > $2 ORDER BY id LIMIT $3",
                    &[&name, &after, &limit],
                )
            })
        })?;
        Ok(rows
            .iter()
            .map(|r| DoneRow {
                id: r.get(0),
                path: r.get::<_, Option<String>>(1).unwrap_or_default(),
                size: to_u64(r.get(2)),
                sha256: r.get(3),
                blake3: r.get(4),
            })
            .collect())
    }

    fn mark_stale(&mut self, rows: &[(String, String)]) -> Result<(), Error> {
        let ids: Vec<String> = rows.iter().map(|(id, _)| id.clone()).collect();
        let reasons: Vec<String> = rows.iter().map(|(_, why)| why.clone()).collect();
        let now = now_secs();
        self.with(move |db, name| {
            db.run("mark stale", |c| {
                c.execute(
                    "UPDATE haul_archive AS a SET status = 'failed', error_class = $2, error = r.why, updated = $3
                     FROM unnest($4::text[], $5::text[]) AS r(id, why)
                     WHERE a.name = $1 AND a.id = r.id",
                    &[&name, &STALE, &now, &ids, &reasons],
                )
            })
        })?;
        Ok(())
    }

    fn import_ids(&mut self, ids: &mut dyn Iterator<Item = String>) -> Result<u64, Error> {
        let ids: Vec<String> = ids.collect();
        let now = now_secs();
        self.with(move |db, name| {
            db.run("import", |c| {
                c.execute(
                    "INSERT INTO haul_archive (name, id, url, status, attempts, first_seen, updated)
                     SELECT $1, id, '', 'done', 0, $2, $2 FROM unnest($3::text[]) AS id
                     ON CONFLICT (name, id) DO NOTHING",
                    &[&name, &now, &ids],
                )
            })
        })
    }
}
