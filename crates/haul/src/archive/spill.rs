//! Jobs read ahead for a host whose queue is full, kept on disk until it has room.
//!
//! A manifest sorted by host (1,000 jobs of A, then 1,000 of B) would otherwise fill the
//! engine's window with A's jobs, and B's would wait unread while A works at its limit. The
//! dispatcher keeps each host's queue in memory short and spills the rest here, in order, so it
//! can read on and keep every host busy; memory does not grow with the manifest.
//!
//! A temporary SQLite file in haul's state directory (no journal, no fsync), created on the
//! first spill and deleted when the run ends. Jobs are stored as opaque bytes: the engine
//! encodes them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, params};

use crate::error::Error;

fn db_error(context: &str, e: impl std::fmt::Display) -> Error {
    Error::Archive(format!("read-ahead spill: {context}: {e}"))
}

/// The spilled jobs of a run.
#[derive(Debug)]
pub(crate) struct Spill {
    path: PathBuf,
    conn: Option<Connection>,
    /// Jobs spilled per host (only hosts with some).
    per_host: HashMap<String, u64>,
    total: u64,
}

impl Spill {
    /// A spill whose file, if it ever needs one, is `path`.
    pub(crate) fn new(path: &Path) -> Self {
        Self {
            path: path.to_owned(),
            conn: None,
            per_host: HashMap::new(),
            total: 0,
        }
    }

    /// Jobs on disk in all.
    pub(crate) fn len(&self) -> u64 {
        self.total
    }

    /// Jobs on disk for `host`.
    pub(crate) fn len_of(&self, host: &str) -> u64 {
        self.per_host.get(host).copied().unwrap_or(0)
    }

    /// Hosts with jobs on disk.
    pub(crate) fn hosts(&self) -> impl Iterator<Item = &str> {
        self.per_host.keys().map(String::as_str)
    }

    fn conn(&mut self) -> Result<&Connection, Error> {
        if self.conn.is_none() {
            let conn = super::scratch(
                &self.path,
                "CREATE TABLE spill (seq INTEGER PRIMARY KEY, host TEXT NOT NULL, job BLOB NOT NULL);
                 CREATE INDEX spill_host ON spill (host, seq);",
            )
            .map_err(|e| db_error("create", e))?;
            self.conn = Some(conn);
        }
        Ok(self.conn.as_ref().expect("opened above"))
    }

    /// Keeps `job` of `host` on disk, after the host's earlier ones.
    ///
    /// # Errors
    /// [`Error::Archive`] when the file cannot be written.
    pub(crate) fn push(&mut self, host: &str, job: &[u8]) -> Result<(), Error> {
        self.conn()?
            .prepare_cached("INSERT INTO spill (host, job) VALUES (?1, ?2)")
            .and_then(|mut stmt| stmt.execute(params![host, job]))
            .map_err(|e| db_error("insert", e))?;
        *self.per_host.entry(host.to_owned()).or_default() += 1;
        self.total += 1;
        Ok(())
    }

    /// Takes up to `most` of `host`'s jobs, oldest first.
    ///
    /// # Errors
    /// [`Error::Archive`] when the file cannot be read.
    pub(crate) fn take(&mut self, host: &str, most: usize) -> Result<Vec<Vec<u8>>, Error> {
        if self.len_of(host) == 0 {
            return Ok(Vec::new());
        }
        let most = i64::try_from(most).unwrap_or(i64::MAX);
        let conn = self.conn()?;
        let rows: Vec<(i64, Vec<u8>)> = conn
            .prepare_cached("SELECT seq, job FROM spill WHERE host = ?1 ORDER BY seq LIMIT ?2")
            .and_then(|mut stmt| {
                stmt.query_map(params![host, most], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect()
            })
            .map_err(|e| db_error("read", e))?;
        if let Some((last, _)) = rows.last() {
            conn.prepare_cached("DELETE FROM spill WHERE host = ?1 AND seq <= ?2")
                .and_then(|mut stmt| stmt.execute(params![host, last]))
                .map_err(|e| db_error("delete", e))?;
        }
        let taken = rows.len() as u64;
        self.total -= taken;
        match self.per_host.get_mut(host) {
            Some(count) if *count > taken => *count -= taken,
            _ => {
                self.per_host.remove(host);
            }
        }
        Ok(rows.into_iter().map(|(_, job)| job).collect())
    }
}

impl Drop for Spill {
    fn drop(&mut self) {
        if self.conn.take().is_some() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_order_per_host() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spill.sqlite");
        let mut spill = Spill::new(&path);
        assert!(spill.take("a", 5).unwrap().is_empty());
        assert!(!path.exists(), "no file until something is spilled");
        for i in 0..10u8 {
            spill.push(if i % 2 == 0 { "a" } else { "b" }, &[i]).unwrap();
        }
        assert_eq!((spill.len(), spill.len_of("a")), (10, 5));
        assert_eq!(spill.take("a", 3).unwrap(), vec![vec![0], vec![2], vec![4]]);
        assert_eq!(spill.take("a", 3).unwrap(), vec![vec![6], vec![8]]);
        assert_eq!(spill.len_of("a"), 0);
        assert_eq!(spill.hosts().collect::<Vec<_>>(), vec!["b"]);
        assert_eq!(spill.take("b", 100).unwrap().len(), 5);
        assert_eq!(spill.len(), 0);
        drop(spill);
        assert!(!path.exists());
    }
}
