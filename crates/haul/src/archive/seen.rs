//! The jobs a run has read so far: repeated ids and duplicate lines are found without memory
//! that grows with the manifest.
//!
//! Two levels. The most recent ids (up to [`RECENT`]) are kept in a hash map; when it is full,
//! they are written in one sorted transaction to a temporary SQLite file in haul's state
//! directory (no journal, no fsync, a 2 MiB page cache) and the map starts over. A fixed 1 MiB
//! Bloom filter over the spilled ids means a new id asks SQLite only when the filter says it may
//! be there. A run of fewer than 114,688 jobs never creates the file; per job the cost is a hash
//! map lookup (measured: SQLite statements per job cost 7% of small-file throughput). Memory is
//! at most about 9 MB whatever the manifest. The file is deleted when the run ends.
//!
//! Each entry: a 64-bit hash of the job's id (the key), a 64-bit hash of what it fetches (URL
//! and path), and its line. Two different ids with one id hash (odds about n²/2⁶⁵: 3 in a
//! million for 10 million jobs) would make the second look like a repeated id: it is reported
//! as a conflict, never recorded done.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, params};

use crate::error::Error;
use crate::job::Job;

/// Ids kept in memory before they are spilled to disk: 7/8 of 131,072, so the map never grows
/// past one table of 131,072 buckets (about 3.3 MB, allocated once).
const RECENT: usize = 114_688;
/// Bits of the Bloom filter over spilled ids (1 MiB: under 12% false positives at a million
/// spilled ids, each costing one SQLite lookup).
const BLOOM_BITS: usize = 1 << 23;

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

/// The index of a run's job ids.
#[derive(Debug)]
pub(crate) struct SeenIndex {
    path: PathBuf,
    /// id hash → (what hash, line), the most recent ids.
    recent: HashMap<u64, (u64, u64)>,
    spilled: Option<Spilled>,
}

/// The ids written to disk, and a Bloom filter over them.
#[derive(Debug)]
struct Spilled {
    conn: Connection,
    bloom: Vec<u64>,
}

impl Spilled {
    fn bit(key: u64) -> (usize, u64) {
        // The key is already a hash: its low bits pick the filter bit.
        let index = usize::try_from(key).unwrap_or(usize::MAX) % BLOOM_BITS;
        (index / 64, 1 << (index % 64))
    }

    fn may_hold(&self, key: u64) -> bool {
        let (word, mask) = Self::bit(key);
        self.bloom[word] & mask != 0
    }
}

fn db_error(context: &str, e: impl std::fmt::Display) -> Error {
    Error::Archive(format!("duplicate index: {context}: {e}"))
}

/// A stable 64-bit hash (SipHash with fixed keys: stable within a run, which is all it needs).
fn hash64(parts: &[&str]) -> u64 {
    let mut hasher = std::hash::BuildHasher::build_hasher(&std::hash::BuildHasherDefault::<
        std::collections::hash_map::DefaultHasher,
    >::default());
    for part in parts {
        part.hash(&mut hasher);
    }
    hasher.finish()
}

/// SQLite integers are signed: the same 64 bits, reinterpreted.
fn signed(value: u64) -> i64 {
    i64::from_ne_bytes(value.to_ne_bytes())
}

impl SeenIndex {
    /// An index whose spill file, if it ever needs one, is `path`.
    pub(crate) fn new(path: &Path) -> Self {
        Self {
            path: path.to_owned(),
            recent: HashMap::new(),
            spilled: None,
        }
    }

    /// Notes `job` and says whether its id was seen before.
    ///
    /// # Errors
    /// [`Error::Archive`] when the spill file fails (disk full under the state directory).
    pub(crate) fn note(&mut self, job: &Job) -> Result<Seen, Error> {
        let key = hash64(&[&job.id]);
        let what = hash64(&[job.url.as_str(), job.path.as_deref().unwrap_or("\0")]);
        let earlier = match self.recent.get(&key) {
            Some(&found) => Some(found),
            None => self.spilled_entry(key)?,
        };
        if let Some((earlier_what, line)) = earlier {
            return Ok(if earlier_what == what {
                Seen::Duplicate(line)
            } else {
                Seen::RepeatedId(line)
            });
        }
        if self.recent.capacity() == 0 {
            self.recent.reserve(RECENT);
        }
        self.recent.insert(key, (what, job.line));
        if self.recent.len() >= RECENT {
            self.spill()?;
        }
        Ok(Seen::First)
    }

    fn spilled_entry(&self, key: u64) -> Result<Option<(u64, u64)>, Error> {
        let Some(spilled) = self.spilled.as_ref().filter(|s| s.may_hold(key)) else {
            return Ok(None);
        };
        let found: Option<(i64, i64)> = spilled
            .conn
            .prepare_cached("SELECT what, line FROM seen WHERE key = ?1")
            .and_then(|mut stmt| stmt.query_row([signed(key)], |r| Ok((r.get(0)?, r.get(1)?))).optional())
            .map_err(|e| db_error("lookup", e))?;
        Ok(found.map(|(what, line)| (u64::from_ne_bytes(what.to_ne_bytes()), line.unsigned_abs())))
    }

    /// Writes the recent ids to disk in one transaction, sorted (B-tree friendly), and clears
    /// the map (its allocation is kept: memory stays what it was).
    fn spill(&mut self) -> Result<(), Error> {
        if self.spilled.is_none() {
            let conn = super::scratch(
                &self.path,
                "CREATE TABLE seen (key INTEGER PRIMARY KEY, what INTEGER NOT NULL, line INTEGER NOT NULL);",
            )
            .map_err(|e| db_error("create", e))?;
            self.spilled = Some(Spilled {
                conn,
                bloom: vec![0; BLOOM_BITS / 64],
            });
        }
        let spilled = self.spilled.as_mut().expect("created above");
        let mut entries: Vec<(u64, (u64, u64))> = self.recent.drain().collect();
        entries.sort_unstable_by_key(|(key, _)| signed(*key));
        let tx = spilled.conn.unchecked_transaction().map_err(|e| db_error("begin", e))?;
        {
            let mut stmt = tx
                .prepare_cached("INSERT OR IGNORE INTO seen (key, what, line) VALUES (?1, ?2, ?3)")
                .map_err(|e| db_error("insert", e))?;
            for (key, (what, line)) in &entries {
                stmt.execute(params![
                    signed(*key),
                    signed(*what),
                    i64::try_from(*line).unwrap_or(i64::MAX)
                ])
                .map_err(|e| db_error("insert", e))?;
                let (word, mask) = Spilled::bit(*key);
                spilled.bloom[word] |= mask;
            }
        }
        tx.commit().map_err(|e| db_error("commit", e))
    }
}

impl Drop for SeenIndex {
    fn drop(&mut self) {
        if self.spilled.is_some() {
            let _ = std::fs::remove_file(&self.path);
        }
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
        let mut index = SeenIndex::new(&path);
        assert_eq!(index.note(&job("a", "http://h/a", 1)).unwrap(), Seen::First);
        assert_eq!(index.note(&job("b", "http://h/b", 2)).unwrap(), Seen::First);
        assert_eq!(index.note(&job("a", "http://h/a", 3)).unwrap(), Seen::Duplicate(1));
        assert_eq!(index.note(&job("a", "http://h/other", 4)).unwrap(), Seen::RepeatedId(1));
        let mut with_path = job("b", "http://h/b", 5);
        with_path.path = Some("elsewhere".into());
        assert_eq!(index.note(&with_path).unwrap(), Seen::RepeatedId(2));
        assert!(!path.exists(), "no file for a small run");
        // Past the in-memory part: spilled to disk, still found.
        let count = RECENT as u64 + 1000;
        for i in 0..count {
            let id = format!("x{i}");
            assert_eq!(
                index.note(&job(&id, "http://h/x", 10 + i)).unwrap(),
                Seen::First,
                "{id}"
            );
        }
        assert!(path.exists(), "spilled");
        assert_eq!(
            index.note(&job("a", "http://h/a", 9)).unwrap(),
            Seen::Duplicate(1),
            "spilled entry"
        );
        assert_eq!(index.note(&job("x5", "http://h/y", 9)).unwrap(), Seen::RepeatedId(15));
        let last = format!("x{}", count - 1);
        assert_eq!(
            index.note(&job(&last, "http://h/x", 9)).unwrap(),
            Seen::Duplicate(count + 9)
        );
        drop(index);
        assert!(!path.exists(), "the index is removed with the run");
    }
}
