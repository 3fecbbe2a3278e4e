//! A PostgreSQL connection that comes back: after the server restarts or the network drops, the
//! next statement reconnects and is run again, for up to a patience.

use std::time::{Duration, Instant};

use postgres::{Client, NoTls};

use crate::error::Error;

/// Longest pause between two reconnection tries.
const MAX_WAIT: Duration = Duration::from_secs(2);

pub(crate) fn queue_error(context: &str, e: impl std::fmt::Display) -> Error {
    Error::Queue(format!("{context}: {e}"))
}

fn archive_error(context: &str, e: impl std::fmt::Display) -> Error {
    Error::Archive(format!("{context}: {e}"))
}

/// The error text of a PostgreSQL error: the server's message when there is one (the client's
/// `Display` says only "db error").
pub(crate) fn describe(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}

/// True for errors that another connection may not meet: the connection closed or broke, the
/// server is shutting down or starting, a serialization failure or deadlock.
fn is_transient(e: &postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    if let Some(code) = e.code() {
        let code = code.code();
        return code.starts_with("08") || code.starts_with("57P") || code == "40001" || code == "40P01";
    }
    let mut source = std::error::Error::source(e);
    while let Some(inner) = source {
        if inner.is::<std::io::Error>() {
            return true;
        }
        source = inner.source();
    }
    false
}

/// One connection, reopened on demand.
pub(crate) struct Db {
    url: String,
    client: Option<Client>,
    patience: Duration,
    /// Makes this connection's errors: the queue's, or an archive's.
    error: fn(&str, String) -> Error,
    /// What it connects to, for messages ("the queue", "the archive").
    what: &'static str,
}

impl Db {
    /// Connects now: a refused connection or a bad URL is an error at once (a usage mistake
    /// is not waited out).
    pub(crate) fn connect(url: &str, patience: Duration) -> Result<Self, Error> {
        Self::connect_as(url, patience, "the queue", queue_error)
    }

    /// As [`Db::connect`], for an archive in PostgreSQL: its errors are archive errors.
    pub(crate) fn connect_archive(url: &str, patience: Duration) -> Result<Self, Error> {
        Self::connect_as(url, patience, "the archive", archive_error)
    }

    fn connect_as(
        url: &str,
        patience: Duration,
        what: &'static str,
        error: fn(&str, String) -> Error,
    ) -> Result<Self, Error> {
        let client =
            Client::connect(url, NoTls).map_err(|e| error(&format!("cannot connect to {what}"), describe(&e)))?;
        Ok(Self {
            url: url.to_owned(),
            client: Some(client),
            patience,
            error,
            what,
        })
    }

    /// The URL it connects to.
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// Runs `work` (one transaction or statement); on a transient error, reconnects and runs it
    /// again, until `patience` has passed since the first try.
    pub(crate) fn run<T>(
        &mut self,
        what: &str,
        mut work: impl FnMut(&mut Client) -> Result<T, postgres::Error>,
    ) -> Result<T, Error> {
        let started = Instant::now();
        let mut wait = Duration::from_millis(50);
        loop {
            let failure = match &mut self.client {
                Some(client) if !client.is_closed() => match work(client) {
                    Ok(value) => return Ok(value),
                    Err(e) if is_transient(&e) => {
                        self.client = None;
                        describe(&e)
                    }
                    Err(e) => return Err((self.error)(what, describe(&e))),
                },
                _ => match Client::connect(&self.url, NoTls) {
                    Ok(client) => {
                        tracing::info!(target: "haul::queue", "reconnected to {}", self.what);
                        self.client = Some(client);
                        continue;
                    }
                    Err(e) => describe(&e),
                },
            };
            if started.elapsed() >= self.patience {
                return Err((self.error)(
                    what,
                    format!("{} was unreachable for {:?}: {failure}", self.what, self.patience),
                ));
            }
            tracing::warn!(target: "haul::queue", %failure, "connection to {} lost; retrying", self.what);
            std::thread::sleep(wait);
            wait = (wait * 2).min(MAX_WAIT);
        }
    }
}
