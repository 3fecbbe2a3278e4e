//! Where an archive keeps its rows: one trait, two implementations (SQLite, the embedded
//! default; PostgreSQL, with the `queue` feature, for an archive shared by machines).
//!
//! Everything above this trait is shared: the journal's single writer thread and its group
//! commits, the readers' skip checks, `haul status`, `haul failed`, `haul verify`'s stale
//! marks, id imports. One conformance suite (`tests/it/archive.rs`) runs against both.

use std::path::PathBuf;

use super::{DoneRow, Record, Row};
use crate::error::Error;

/// One connection to an archive's rows. The journal's writer thread and each reader hold their
/// own.
pub trait Backend: Send {
    /// True when the archive holds no job at all (a first run).
    ///
    /// # Errors
    /// [`Error::Archive`] on a database error.
    fn is_empty(&mut self) -> Result<bool, Error>;

    /// The row of `id`, if any. An implementation may answer from a snapshot a little older
    /// than the last commit (the engine checks the archive as it was when the run started).
    ///
    /// # Errors
    /// [`Error::Archive`] on a database error.
    fn lookup(&mut self, id: &str) -> Result<Option<Row>, Error>;

    /// The id of the done job whose file is `path`, if any.
    ///
    /// # Errors
    /// [`Error::Archive`] on a database error.
    fn owner_of(&mut self, path: &str) -> Result<Option<String>, Error>;

    /// Writes a batch in one transaction: each record replaces its job's row, except that
    /// attempts add up and the first-seen time stays.
    ///
    /// # Errors
    /// [`Error::Archive`] on a database error (nothing of the batch is written).
    fn write(&mut self, batch: &[Record]) -> Result<(), Error>;

    /// Jobs and bytes by status, ordered by status.
    ///
    /// # Errors
    /// [`Error::Archive`] on a database error.
    fn counts(&mut self) -> Result<Vec<(String, u64, u64)>, Error>;

    /// Visits every failed job in id order, without loading them all.
    ///
    /// # Errors
    /// [`Error::Archive`] on a database error, or the visitor's error.
    fn failed(&mut self, visit: &mut dyn FnMut(FailedRow) -> Result<(), Error>) -> Result<(), Error>;

    /// Up to `limit` done rows with ids after `after`, in id order.
    ///
    /// # Errors
    /// [`Error::Archive`] on a database error.
    fn done_after(&mut self, after: &str, limit: usize) -> Result<Vec<DoneRow>, Error>;

    /// Marks done rows stale, in one transaction: failed, with the error class
    /// [`STALE`](super::STALE) and the reason given for each id.
    ///
    /// # Errors
    /// [`Error::Archive`] on a database error.
    fn mark_stale(&mut self, rows: &[(String, String)]) -> Result<(), Error>;

    /// Adds done rows for ids not in the archive yet, in one transaction; returns how many
    /// were new.
    ///
    /// # Errors
    /// [`Error::Archive`] on a database error.
    fn import_ids(&mut self, ids: &mut dyn Iterator<Item = String>) -> Result<u64, Error>;
}

/// A failed job as the archive holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedRow {
    /// The job id.
    pub id: String,
    /// The URL.
    pub url: String,
    /// The final path, if one was decided.
    pub path: Option<String>,
    /// The job as a manifest line (see [`Record::spec`]).
    pub spec: Option<String>,
    /// The error class name.
    pub class: Option<String>,
    /// The last HTTP status.
    pub http_status: Option<u16>,
    /// The error message.
    pub error: Option<String>,
}

/// Where an archive is: a SQLite file, or a named archive in a PostgreSQL database
/// (`postgres://user@host/db#NAME`; without `#NAME`, the archive `default`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A SQLite file.
    File(PathBuf),
    /// A table in PostgreSQL, shared by every archive of the database, keyed by name.
    Postgres {
        /// The connection URL (without the fragment).
        url: String,
        /// The archive's name.
        name: String,
    },
}

impl Location {
    /// A `postgres://` or `postgresql://` URL (`#NAME` names the archive), else a file path.
    ///
    /// ```
    /// use haul::archive::Location;
    /// assert_eq!(Location::parse("a.sqlite"), Location::File("a.sqlite".into()));
    /// assert_eq!(
    ///     Location::parse("postgres://db/haul#photos"),
    ///     Location::Postgres { url: "postgres://db/haul".into(), name: "photos".into() }
    /// );
    /// ```
    #[must_use]
    pub fn parse(text: &str) -> Self {
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            let (url, name) = text.split_once('#').unwrap_or((text, ""));
            let name = if name.is_empty() { "default" } else { name };
            return Self::Postgres {
                url: url.to_owned(),
                name: name.to_owned(),
            };
        }
        Self::File(PathBuf::from(text))
    }

    /// For messages: the file, or the database's host and the archive's name (never a
    /// password).
    #[must_use]
    pub fn display(&self) -> String {
        match self {
            Self::File(path) => path.display().to_string(),
            Self::Postgres { url, name } => {
                let shown = url::Url::parse(url).map_or_else(
                    |_| "postgres://?".to_owned(),
                    |u| format!("postgres://{}{}", u.host_str().unwrap_or(""), u.path()),
                );
                format!("{shown}#{name}")
            }
        }
    }

    /// Opens a new connection.
    pub(crate) fn connect(&self) -> Result<Box<dyn Backend>, Error> {
        match self {
            Self::File(path) => Ok(Box::new(super::sqlite::Sqlite::open(path)?)),
            #[cfg(feature = "queue")]
            Self::Postgres { url, name } => Ok(Box::new(super::postgres::Postgres::connect(url, name)?)),
            #[cfg(not(feature = "queue"))]
            Self::Postgres { .. } => Err(self.unsupported()),
        }
    }

    /// The error of a PostgreSQL location in a build without PostgreSQL.
    #[cfg(not(feature = "queue"))]
    pub(crate) fn unsupported(&self) -> Error {
        Error::Archive(format!(
            "{}: this haul was built without PostgreSQL (the `queue` feature)",
            self.display()
        ))
    }
}
