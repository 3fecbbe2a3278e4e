//! The jobs a run has read so far, on disk: repeated ids and duplicate lines are found without
//! an in-memory set that grows with the manifest.
//!
//! One temporary SQLite file in haul's state directory (no journal, no fsync, an 8 MiB page
//! cache), deleted when the run ends. A row per job: a 64-bit hash of its id (the key), a
//! 64-bit hash of what it fetches (URL and path), and its line. Two different ids with one id
//! hash (odds about n²/2⁶⁵: 3 in a million for 10 million jobs) would make the second look
//! like a repeated id: it is reported as a conflict, never recorded done.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, params};

use crate::error::Error;
use crate::job::Job;

/// Inserts per transaction.
const PER_TRANSACTION: u32 = 4096;

/// What the index says of a job just read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Seen {
    /// The first job with this id.
    First,
    /// The same id, URL and path as the job of line `.0`: nothing more to do.
    Duplicate(u64),
    /// The same id as the job of line `.0`, but another URL or path: a conflict.
    RepeatedId(u64),
}

/// The on-disk index of a run's job ids.
#[derive(Debug)]
pub(crate) struct SeenIndex {
    conn: Connection,
    path: PathBuf,
    in_transaction: u32,
}

fn db_error(context: &str, e: impl std::fmt::Display) -> Error {
    Error::Archive(format!("duplicate index: {context}: {e}"))
}

/// A stable 64-bit hash (SipHash with fixed keys: stable within a run, which is all it needs).
fn hash64(parts: &[&str]) -> i64 {
    let mut hasher = std::hash::BuildHasher::build_hasher(&std::hash::BuildHasherDefault::<
        std::collections::hash_map::DefaultHasher,
    >::default());
    for part in parts {
        part.hash(&mut hasher);
    }
    i64::from_ne_bytes(hasher.finish().to_ne_bytes())
}

impl SeenIndex {
    /// Creates the index at `path` (an old file there is replaced).
    ///
    /// # Errors
    /// [`Error::Archive`] when the file cannot be created.
    pub(crate) fn create(path: &Path) -> Result<Self, Error> {
        let _ = std::fs::remove_file(path);
        let conn = Connection::open(path).map_err(|e| db_error("create", e))?;
        conn.execute_batch(
            "PRAGMA journal_mode = OFF;
             PRAGMA synchronous = OFF;
             PRAGMA locking_mode = EXCLUSIVE;
             PRAGMA cache_size = -8192;
             CREATE TABLE seen (key INTEGER PRIMARY KEY, what INTEGER NOT NULL, line INTEGER NOT NULL);",
        )
        .map_err(|e| db_error("create", e))?;
        Ok(Self {
            conn,
            path: path.to_owned(),
            in_transaction: 0,
        })
    }

    /// Notes `job` and says whether its id was seen before.
    ///
    /// # Errors
    /// [`Error::Archive`] on a database error (disk full under the state directory).
    pub(crate) fn note(&mut self, job: &Job) -> Result<Seen, Error> {
        if self.in_transaction == 0 {
            self.conn.execute_batch("BEGIN").map_err(|e| db_error("begin", e))?;
        }
        self.in_transaction += 1;
        let key = hash64(&[&job.id]);
        let what = hash64(&[job.url.as_str(), job.path.as_deref().unwrap_or("\0")]);
        let inserted = self
            .conn
            .prepare_cached("INSERT OR IGNORE INTO seen (key, what, line) VALUES (?1, ?2, ?3)")
            .and_then(|mut stmt| stmt.execute(params![key, what, i64::try_from(job.line).unwrap_or(i64::MAX)]))
            .map_err(|e| db_error("insert", e))?;
        let seen = if inserted == 1 {
            Seen::First
        } else {
            let earlier: Option<(i64, i64)> = self
                .conn
                .prepare_cached("SELECT what, line FROM seen WHERE key = ?1")
                .and_then(|mut stmt| stmt.query_row([key], |r| Ok((r.get(0)?, r.get(1)?))).optional())
                .map_err(|e| db_error("lookup", e))?;
            match earlier {
                Some((earlier_what, line)) if earlier_what == what => Seen::Duplicate(line.unsigned_abs()),
                Some((_, line)) => Seen::RepeatedId(line.unsigned_abs()),
                None => Seen::First,
            }
        };
        if self.in_transaction >= PER_TRANSACTION {
            self.conn.execute_batch("COMMIT").map_err(|e| db_error("commit", e))?;
            self.in_transaction = 0;
        }
        Ok(seen)
    }
}

impl Drop for SeenIndex {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: &str, url: &str, line: u64) -> Job {
        let mut job = Job::new(url::Url::parse(url).unwrap());
        job.id = id.into();
        job.line = line;
        job
    }

    #[test]
    fn duplicates_and_repeated_ids() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seen.sqlite");
        let mut index = SeenIndex::create(&path).unwrap();
        assert_eq!(index.note(&job("a", "http://h/a", 1)).unwrap(), Seen::First);
        assert_eq!(index.note(&job("b", "http://h/b", 2)).unwrap(), Seen::First);
        assert_eq!(index.note(&job("a", "http://h/a", 3)).unwrap(), Seen::Duplicate(1));
        assert_eq!(index.note(&job("a", "http://h/other", 4)).unwrap(), Seen::RepeatedId(1));
        let mut with_path = job("b", "http://h/b", 5);
        with_path.path = Some("elsewhere".into());
        assert_eq!(index.note(&with_path).unwrap(), Seen::RepeatedId(2));
        for i in 0..10_000 {
            let id = format!("x{i}");
            assert_eq!(index.note(&job(&id, "http://h/x", 10 + i)).unwrap(), Seen::First);
        }
        drop(index);
        assert!(!path.exists(), "the index is removed with the run");
    }
}
