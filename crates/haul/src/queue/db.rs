//! A PostgreSQL connection that comes back: after the server restarts or the network drops, the
//! next statement reconnects and is run again, for up to a patience.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use postgres::{Client, NoTls, Statement};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::error::Error;

/// Where a database is and how to reach it: plain TCP, or TLS when its URL asks for it with
/// `sslmode=require` (or libpq's `verify-ca` / `verify-full`, which this always does: the
/// server's certificate is verified against the platform's authorities and the URL's
/// `sslrootcert=FILE`, and must name the host). Other modes (`prefer`, the default, `disable`)
/// connect in plain TCP, as before.
#[derive(Clone)]
pub(crate) struct Target {
    /// The URL as the client library takes it (without `sslrootcert`, which it does not know).
    url: String,
    tls: Option<MakeRustlsConnect>,
}

impl Target {
    /// Reads the TLS settings of `url` (a `postgres://` URL; a `key=value` string is taken as
    /// it is, in plain TCP).
    pub(crate) fn parse(url: &str) -> Result<Self, String> {
        let Ok(mut parsed) = url::Url::parse(url) else {
            return Ok(Self {
                url: url.to_owned(),
                tls: None,
            });
        };
        let mut mode = None;
        let mut root = None;
        let mut kept = Vec::new();
        for (key, value) in parsed.query_pairs() {
            match key.as_ref() {
                "sslmode" => mode = Some(value.into_owned()),
                "sslrootcert" => root = Some(value.into_owned()),
                _ => kept.push((key.into_owned(), value.into_owned())),
            }
        }
        let tls = matches!(mode.as_deref(), Some("require" | "verify-ca" | "verify-full"));
        if let Some(mode) = mode.as_deref() {
            // The client knows disable, prefer and require; verification is this side's.
            kept.push(("sslmode".into(), if tls { "require" } else { mode }.into()));
        }
        if kept.is_empty() {
            parsed.set_query(None);
        } else {
            parsed.query_pairs_mut().clear().extend_pairs(kept);
        }
        let connector = if tls {
            let pem = match &root {
                Some(path) => Some(std::fs::read(path).map_err(|e| format!("sslrootcert {path}: {e}"))?),
                None => None,
            };
            let shown = root.clone().unwrap_or_default();
            let config = crate::fetch::tls::database_config(pem.as_deref().map(|p| (p, shown.as_str())))
                .map_err(|e| e.to_string())?;
            Some(MakeRustlsConnect::new(config))
        } else {
            if root.is_some() {
                return Err("sslrootcert is given but not sslmode=require (or verify-full)".into());
            }
            None
        };
        Ok(Self {
            url: parsed.to_string(),
            tls: connector,
        })
    }

    /// Opens a connection.
    pub(crate) fn connect(&self) -> Result<Client, postgres::Error> {
        match &self.tls {
            Some(tls) => Client::connect(&self.url, tls.clone()),
            None => Client::connect(&self.url, NoTls),
        }
    }
}

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
    target: Target,
    client: Option<Client>,
    /// Statements prepared on `client`, by their text: parsed and planned once per connection
    /// (the server keeps a generic plan), not at every call.
    prepared: HashMap<&'static str, Statement>,
    /// Settings run on every connection, the first and the reopened ones.
    session: Option<&'static str>,
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
        let target = Target::parse(url).map_err(|e| error(&format!("cannot connect to {what}"), e))?;
        let client = target
            .connect()
            .map_err(|e| error(&format!("cannot connect to {what}"), describe(&e)))?;
        Ok(Self {
            url: url.to_owned(),
            target,
            client: Some(client),
            prepared: HashMap::new(),
            session: None,
            patience,
            error,
            what,
        })
    }

    /// Runs `settings` (SQL, e.g. `SET …`) on this connection now and on every one it reopens.
    pub(crate) fn with_session(mut self, settings: &'static str) -> Result<Self, Error> {
        self.session = Some(settings);
        self.run("set up the connection", |client| client.batch_execute(settings))?;
        Ok(self)
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
        self.run_prepared(what, &[], |client, _| work(client))
    }

    /// As [`Db::run`], with `statements` prepared on the connection (once per connection) and
    /// handed to `work` in the same order.
    pub(crate) fn run_prepared<T>(
        &mut self,
        what: &str,
        statements: &[&'static str],
        mut work: impl FnMut(&mut Client, &[Statement]) -> Result<T, postgres::Error>,
    ) -> Result<T, Error> {
        let started = Instant::now();
        let mut wait = Duration::from_millis(50);
        let mut handles = Vec::with_capacity(statements.len());
        loop {
            let failure = match &mut self.client {
                Some(client) if !client.is_closed() => {
                    handles.clear();
                    let mut ready = Ok(());
                    for sql in statements {
                        if let Some(statement) = self.prepared.get(sql) {
                            handles.push(statement.clone());
                            continue;
                        }
                        match client.prepare(sql) {
                            Ok(statement) => {
                                self.prepared.insert(sql, statement.clone());
                                handles.push(statement);
                            }
                            Err(e) => {
                                ready = Err(e);
                                break;
                            }
                        }
                    }
                    match ready.and_then(|()| work(client, &handles)) {
                        Ok(value) => return Ok(value),
                        Err(e) if is_transient(&e) => {
                            self.client = None;
                            self.prepared.clear();
                            describe(&e)
                        }
                        Err(e) => return Err((self.error)(what, describe(&e))),
                    }
                }
                _ => match self.target.connect().and_then(|mut client| {
                    if let Some(settings) = self.session {
                        client.batch_execute(settings)?;
                    }
                    Ok(client)
                }) {
                    Ok(client) => {
                        tracing::info!(target: "haul::queue", "reconnected to {}", self.what);
                        self.client = Some(client);
                        self.prepared.clear();
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
