//! The embedded archive: one SQLite file (WAL mode), one table keyed by the job id.

use std::fs::File;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};

use super::backend::{Backend, FailedRow};
use super::{DoneRow, Record, Row, RowStatus, STALE, db_error, now_secs};
use crate::error::Error;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS jobs (
    id            TEXT PRIMARY KEY,
    url           TEXT NOT NULL,
    path          TEXT,
    size          INTEGER,
    sha256        TEXT,
    etag          TEXT,
    last_modified TEXT,
    status        TEXT NOT NULL,
    http_status   INTEGER,
    error_class   TEXT,
    error         TEXT,
    attempts      INTEGER NOT NULL DEFAULT 0,
    first_seen    INTEGER NOT NULL,
    updated       INTEGER NOT NULL,
    verified      INTEGER NOT NULL DEFAULT 1,
    spec          TEXT,
    blake3        TEXT,
    segments      TEXT
) WITHOUT ROWID;
-- No index on status: `haul status` scans, and every commit stays one index lighter.
DROP INDEX IF EXISTS jobs_status;
CREATE INDEX IF NOT EXISTS jobs_path ON jobs(path);
";

/// Lookups that share one read transaction. Each transaction takes and drops SQLite's shared
/// lock (two `fcntl` calls); sharing it over many lookups makes the skip check cheap, and ending
/// it now and then lets the writer's WAL checkpoints complete.
const LOOKUPS_PER_TRANSACTION: u32 = 1024;

/// A connection to a SQLite archive.
#[derive(Debug)]
pub(crate) struct Sqlite {
    conn: Connection,
    /// Lookups made in the current read transaction.
    in_transaction: u32,
}

fn open_connection(path: &Path) -> Result<Connection, Error> {
    let conn = Connection::open(path).map_err(|e| db_error(&format!("cannot open {}", path.display()), e))?;
    conn.busy_timeout(Duration::from_secs(10))
        .map_err(|e| db_error("busy timeout", e))?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(|e| db_error("WAL mode", e))?;
    Ok(conn)
}

impl Sqlite {
    /// Creates the archive at `path` (mode 0600) unless it exists, and brings its schema up to
    /// date. The caller holds the archive's lock.
    pub(crate) fn create(path: &Path) -> Result<(), Error> {
        create_private(path)?;
        let conn = open_connection(path)?;
        conn.execute_batch(SCHEMA).map_err(|e| db_error("create schema", e))?;
        migrate(&conn)
    }

    /// Opens an existing archive.
    pub(crate) fn open(path: &Path) -> Result<Self, Error> {
        if !path.exists() {
            return Err(Error::Archive(format!("no archive at {}", path.display())));
        }
        let conn = open_connection(path)?;
        conn.prepare("SELECT 1 FROM jobs LIMIT 1")
            .map_err(|e| db_error(&format!("{} is not a haul archive", path.display()), e))?;
        Ok(Self {
            conn,
            in_transaction: 0,
        })
    }

    /// Opens the writer's connection: `synchronous=FULL` under `--fsync`, else `NORMAL`.
    pub(crate) fn open_writer(path: &Path, fsync: bool) -> Result<Self, Error> {
        let writer = Self::open(path)?;
        writer
            .conn
            .pragma_update(None, "synchronous", if fsync { "FULL" } else { "NORMAL" })
            .map_err(|e| db_error("synchronous", e))?;
        Ok(writer)
    }

    /// Ends a read transaction a lookup left open (before a write on this connection).
    fn end_read(&mut self) -> Result<(), Error> {
        if self.in_transaction > 0 {
            self.in_transaction = 0;
            self.conn.execute_batch("COMMIT").map_err(|e| db_error("end read", e))?;
        }
        Ok(())
    }
}

impl Backend for Sqlite {
    fn is_empty(&mut self) -> Result<bool, Error> {
        self.conn
            .query_row("SELECT NOT EXISTS (SELECT 1 FROM jobs)", [], |r| r.get(0))
            .map_err(|e| db_error("count", e))
    }

    fn lookup(&mut self, id: &str) -> Result<Option<Row>, Error> {
        match self.in_transaction {
            0 => self
                .conn
                .execute_batch("BEGIN")
                .map_err(|e| db_error("begin read", e))?,
            LOOKUPS_PER_TRANSACTION.. => {
                self.conn
                    .execute_batch("COMMIT; BEGIN")
                    .map_err(|e| db_error("renew read", e))?;
                self.in_transaction = 0;
            }
            _ => {}
        }
        self.in_transaction += 1;
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT status, path, size, sha256, etag, last_modified, verified, error_class, blake3, segments FROM jobs WHERE id = ?1",
            )
            .map_err(|e| db_error("prepare lookup", e))?;
        stmt.query_row([id], |r| {
            Ok(Row {
                status: RowStatus::parse(&r.get::<_, String>(0)?),
                path: r.get(1)?,
                size: r.get::<_, Option<i64>>(2)?.and_then(|s| u64::try_from(s).ok()),
                sha256: r.get(3)?,
                blake3: r.get(8)?,
                segments: r.get(9)?,
                etag: r.get(4)?,
                last_modified: r.get(5)?,
                verified: r.get(6)?,
                stale: r.get::<_, Option<String>>(7)?.as_deref() == Some(STALE),
            })
        })
        .optional()
        .map_err(|e| db_error("lookup", e))
    }

    fn owner_of(&mut self, path: &str) -> Result<Option<String>, Error> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT id FROM jobs WHERE path = ?1 AND status = 'done' LIMIT 1")
            .map_err(|e| db_error("prepare path lookup", e))?;
        stmt.query_row([path], |r| r.get(0))
            .optional()
            .map_err(|e| db_error("path lookup", e))
    }

    fn write(&mut self, batch: &[Record]) -> Result<(), Error> {
        self.end_read()?;
        write_batch(&self.conn, batch).map_err(|e| db_error("write", e))
    }

    fn counts(&mut self) -> Result<Vec<(String, u64, u64)>, Error> {
        let mut stmt = self
            .conn
            .prepare("SELECT status, COUNT(*), COALESCE(SUM(size), 0) FROM jobs GROUP BY status ORDER BY status")
            .map_err(|e| db_error("status", e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get(0)?,
                    r.get::<_, i64>(1)?.unsigned_abs(),
                    r.get::<_, i64>(2)?.unsigned_abs(),
                ))
            })
            .map_err(|e| db_error("status", e))?;
        rows.collect::<Result<_, _>>().map_err(|e| db_error("status", e))
    }

    fn failed(&mut self, visit: &mut dyn FnMut(FailedRow) -> Result<(), Error>) -> Result<(), Error> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT id, url, path, spec, error_class, http_status, error FROM jobs WHERE status = 'failed' ORDER BY id",
            )
            .map_err(|e| db_error("failed jobs", e))?;
        let mut rows = stmt.query([]).map_err(|e| db_error("failed jobs", e))?;
        while let Some(row) = rows.next().map_err(|e| db_error("failed jobs", e))? {
            let failed = (|| {
                Ok::<_, rusqlite::Error>(FailedRow {
                    id: row.get(0)?,
                    url: row.get(1)?,
                    path: row.get(2)?,
                    spec: row.get(3)?,
                    class: row.get(4)?,
                    http_status: row.get(5)?,
                    error: row.get(6)?,
                })
            })()
            .map_err(|e| db_error("failed jobs", e))?;
            visit(failed)?;
        }
        Ok(())
    }

    fn done_after(&mut self, after: &str, limit: usize) -> Result<Vec<DoneRow>, Error> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT id, path, size, sha256, blake3 FROM jobs WHERE status = 'done' AND id > ?1 ORDER BY id LIMIT ?2",
            )
            .map_err(|e| db_error("read done rows", e))?;
        let rows = stmt
            .query_map(params![after, i64::try_from(limit).unwrap_or(i64::MAX)], |r| {
                Ok(DoneRow {
                    id: r.get(0)?,
                    path: r.get::<_, Option<String>>(1)?.unwrap_or_default(),
                    size: r.get::<_, Option<i64>>(2)?.and_then(|s| u64::try_from(s).ok()),
                    sha256: r.get(3)?,
                    blake3: r.get(4)?,
                })
            })
            .map_err(|e| db_error("read done rows", e))?;
        rows.collect::<Result<_, _>>()
            .map_err(|e| db_error("read done rows", e))
    }

    fn mark_stale(&mut self, rows: &[(String, String)]) -> Result<(), Error> {
        self.end_read()?;
        let tx = self
            .conn
            .unchecked_transaction()
            .map_err(|e| db_error("mark stale", e))?;
        {
            let mut update = tx
                .prepare_cached(
                    "UPDATE jobs SET status = 'failed', error_class = ?2, error = ?3, updated = ?4 WHERE id = ?1",
                )
                .map_err(|e| db_error("mark stale", e))?;
            for (id, why) in rows {
                update
                    .execute(params![id, STALE, why, now_secs()])
                    .map_err(|e| db_error("mark stale", e))?;
            }
        }
        tx.commit().map_err(|e| db_error("mark stale", e))
    }

    fn import_ids(&mut self, ids: &mut dyn Iterator<Item = String>) -> Result<u64, Error> {
        self.end_read()?;
        let tx = self.conn.unchecked_transaction().map_err(|e| db_error("import", e))?;
        let mut added = 0;
        {
            let mut stmt = tx
                .prepare(
                    "INSERT INTO jobs (id, url, status, attempts, first_seen, updated)
                     VALUES (?1, '', 'done', 0, ?2, ?2) ON CONFLICT(id) DO NOTHING",
                )
                .map_err(|e| db_error("import", e))?;
            let now = now_secs();
            for id in ids {
                added += stmt.execute(params![id, now]).map_err(|e| db_error("import", e))? as u64;
            }
        }
        tx.commit().map_err(|e| db_error("import", e))?;
        Ok(added)
    }
}

fn write_batch(conn: &Connection, batch: &[Record]) -> rusqlite::Result<()> {
    let tx = conn.unchecked_transaction()?;
    {
        let mut stmt = tx.prepare_cached(
            "INSERT INTO jobs (id, url, path, size, sha256, etag, last_modified, status, http_status,
                               error_class, error, attempts, first_seen, updated, verified, spec,
                               blake3, segments)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?13, ?14, ?15, ?16, ?17)
             ON CONFLICT(id) DO UPDATE SET
               url = excluded.url, path = excluded.path, size = excluded.size,
               sha256 = excluded.sha256, blake3 = excluded.blake3, segments = excluded.segments,
               etag = excluded.etag, verified = excluded.verified,
               last_modified = excluded.last_modified, status = excluded.status,
               http_status = excluded.http_status, error_class = excluded.error_class,
               error = excluded.error, attempts = jobs.attempts + excluded.attempts, spec = excluded.spec,
               updated = excluded.updated",
        )?;
        let now = now_secs();
        for r in batch {
            stmt.execute(params![
                r.id,
                r.url,
                r.path,
                r.size.map(|s| i64::try_from(s).unwrap_or(i64::MAX)),
                r.sha256,
                r.etag,
                r.last_modified,
                r.status.as_str(),
                r.http_status,
                r.error_class,
                r.error,
                r.attempts,
                now,
                r.verified,
                r.spec,
                r.blake3,
                r.segments,
            ])?;
        }
    }
    tx.commit()
}

/// Creates the archive file (mode 0600: it holds URLs, which may carry tokens) unless it
/// exists; refuses a symlink there. SQLite creates its `-wal` and `-shm` files with the same
/// mode.
fn create_private(path: &Path) -> Result<(), Error> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => Err(Error::Archive(format!(
            "{} is a symlink; haul does not follow it for its archive",
            path.display()
        ))),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            match File::options()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(path)
            {
                Ok(_) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
                Err(e) => Err(Error::io("create archive", path, e)),
            }
        }
        Err(e) => Err(Error::io("inspect archive", path, e)),
    }
}

/// Brings an archive of an earlier haul up to this schema.
fn migrate(conn: &Connection) -> Result<(), Error> {
    for (column, definition) in [
        ("verified", "INTEGER NOT NULL DEFAULT 1"),
        ("spec", "TEXT"),
        ("blake3", "TEXT"),
        ("segments", "TEXT"),
    ] {
        let present: bool = conn
            .query_row(
                "SELECT COUNT(*) FROM pragma_table_info('jobs') WHERE name = ?1",
                [column],
                |r| r.get::<_, i64>(0),
            )
            .map_err(|e| db_error("read schema", e))?
            > 0;
        if !present {
            conn.execute_batch(&format!("ALTER TABLE jobs ADD COLUMN {column} {definition}"))
                .map_err(|e| db_error("upgrade schema", e))?;
        }
    }
    Ok(())
}
