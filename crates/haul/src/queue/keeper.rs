//! A worker's keeper thread: writes results in group commits (fenced by owner and attempt),
//! renews the leases of the jobs the worker holds, shares the host pauses it was given, and
//! applies those other workers were given.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::db::Db;
use super::{Completion, Inner};
use crate::error::Error;

/// Results per transaction at most (more wake the keeper early).
pub(super) const BATCH: usize = 512;
/// Longest a result waits for its transaction; also how often pauses are looked up.
const DELAY: Duration = Duration::from_millis(250);

/// Results, fenced: each written only while its chunk is this worker's claim (owner and
/// attempt); then the chunks closed. The batch goes as arrays to `haul_record` (see the
/// schema): one statement per batch, half the database's time of a statement per result.
const RECORD: &str = "SELECT haul_record($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)";

const RENEW: &str = "
UPDATE haul_chunks c SET lease_until = now() + make_interval(secs => $3)
FROM unnest($4::BIGINT[], $5::TEXT[]) AS k(chunk, host)
WHERE c.name = $1 AND c.host = k.host COLLATE \"C\" AND c.chunk = k.chunk AND c.owner = $2 AND c.state = 'running'
RETURNING c.chunk";

const COOL: &str = "
INSERT INTO haul_hosts (name, host, cool_until, reason) VALUES ($1, $2, now() + make_interval(secs => $3), $4)
ON CONFLICT (name, host) DO UPDATE
SET cool_until = GREATEST(haul_hosts.cool_until, EXCLUDED.cool_until), reason = EXCLUDED.reason";

const COOLING: &str = "
SELECT host, EXTRACT(EPOCH FROM cool_until - now())::DOUBLE PRECISION, coalesce(reason, '')
FROM haul_hosts WHERE name = $1 AND cool_until > now()";

/// Live workers of the queue `name`: heartbeat within their lease, not stopped.
pub(super) fn live_workers(client: &mut postgres::Client, name: &str) -> Result<i64, postgres::Error> {
    Ok(client
        .query_one(
            "SELECT count(*) FROM haul_workers WHERE name = $1 AND stopped IS NULL \
             AND heartbeat > now() - make_interval(secs => lease)",
            &[&name],
        )?
        .get(0))
}

/// How often a worker counts the live workers (and re-shares the per-host budgets); a worker
/// joining others waits this long (and a little) before its first claim.
pub(super) const SHARE_EVERY: Duration = Duration::from_secs(1);

/// How often a worker renews its heartbeat and leases.
pub(super) fn beat_every(lease: Duration) -> Duration {
    (lease / 4).clamp(Duration::from_millis(100), Duration::from_secs(5))
}

pub(super) fn run(inner: &Inner, mut db: Db) {
    let beat_every = beat_every(inner.options.lease);
    let mut beat_at = Instant::now();
    let mut share_at = Instant::now();
    // Pauses already passed to the engine, by host: each is sent once.
    let mut applied: HashMap<String, Instant> = HashMap::new();
    loop {
        let (completions, closes, cool, closing) = {
            let mut outbox = inner.outbox.lock().expect("outbox");
            if outbox.completions.len() < super::keeper::BATCH && outbox.cool.is_empty() && !outbox.closing {
                outbox = inner.wake.wait_timeout(outbox, DELAY).expect("outbox").0;
            }
            (
                std::mem::take(&mut outbox.completions),
                std::mem::take(&mut outbox.closes),
                std::mem::take(&mut outbox.cool),
                outbox.closing,
            )
        };
        let result = write(inner, &mut db, completions, &closes, &cool).and_then(|()| {
            if closing {
                return Ok(());
            }
            if beat_at.elapsed() >= beat_every {
                beat_at = Instant::now();
                heartbeat(inner, &mut db)?;
            }
            if share_at.elapsed() >= SHARE_EVERY {
                share_at = Instant::now();
                share(inner, &mut db)?;
            }
            share_pauses(inner, &mut db, &mut applied)
        });
        if let Err(e) = result {
            // Results not written stay unfinished in the queue: their leases run out and
            // another worker does them again (the files on disk are complete either way).
            inner.set_fatal(&e);
            return;
        }
        if closing {
            return;
        }
    }
}

/// Writes results (fenced) and pauses in one transaction.
fn write(
    inner: &Inner,
    db: &mut Db,
    completions: Vec<Completion>,
    closes: &[super::Close],
    cool: &[(String, f64, String)],
) -> Result<(), Error> {
    if completions.is_empty() && closes.is_empty() && cool.is_empty() {
        return Ok(());
    }
    let chunks: Vec<i64> = closes.iter().map(|c| c.chunk).collect();
    let chunk_attempts: Vec<i32> = closes.iter().map(|c| c.attempt).collect();
    let chunks_open: Vec<bool> = closes.iter().map(|c| c.open).collect();
    let n = completions.len();
    let mut ids = Vec::with_capacity(n);
    let mut job_chunks = Vec::with_capacity(n);
    let mut attempts = Vec::with_capacity(n);
    let mut states = Vec::with_capacity(n);
    let mut paths = Vec::with_capacity(n);
    let mut sizes = Vec::with_capacity(n);
    let mut sha256s = Vec::with_capacity(n);
    let mut blake3s = Vec::with_capacity(n);
    let mut verified = Vec::with_capacity(n);
    let mut statuses = Vec::with_capacity(n);
    let mut reasons = Vec::with_capacity(n);
    let mut errors = Vec::with_capacity(n);
    for c in completions {
        ids.push(c.id);
        job_chunks.push(c.chunk);
        attempts.push(c.attempt);
        states.push(c.state);
        paths.push(c.path);
        sizes.push(c.size);
        sha256s.push(c.sha256);
        blake3s.push(c.blake3);
        verified.push(c.verified);
        statuses.push(c.http_status);
        reasons.push(c.reason);
        errors.push(c.error);
    }
    let (name, id) = (inner.name.as_str(), inner.id);
    let started = Instant::now();
    let written = db.run_prepared("record results", &[RECORD], |client, prepared| {
        let params: [&(dyn postgres::types::ToSql + Sync); 17] = [
            &name,
            &id,
            &ids,
            &job_chunks,
            &attempts,
            &states,
            &paths,
            &sizes,
            &sha256s,
            &blake3s,
            &verified,
            &statuses,
            &reasons,
            &errors,
            &chunks,
            &chunk_attempts,
            &chunks_open,
        ];
        let record = |row: postgres::Row| u64::try_from(row.get::<_, i64>(0)).unwrap_or(0);
        if cool.is_empty() {
            // One statement, committed on its own: no BEGIN and COMMIT round trips.
            return client.query_one(&prepared[0], &params).map(record);
        }
        let mut tx = client.transaction()?;
        let mut written = 0;
        if !ids.is_empty() || !chunks.is_empty() {
            written = record(tx.query_one(&prepared[0], &params)?);
        }
        for (host, seconds, reason) in cool {
            tx.execute(COOL, &[&name, host, seconds, reason])?;
        }
        tx.commit()?;
        Ok(written)
    })?;
    tracing::debug!(target: "haul::queue", results = n, took = ?started.elapsed(), "recorded");
    inner.recorded.fetch_add(written, Ordering::Relaxed);
    if written < n as u64 {
        let late = n as u64 - written;
        inner.rejected.fetch_add(late, Ordering::Relaxed);
        tracing::warn!(target: "haul::queue", late, "results refused: another worker had taken the jobs over");
    }
    Ok(())
}

/// Renews this worker's heartbeat and the leases of the chunks it holds; forgets the chunks
/// whose lease another worker took (their results will not be written).
fn heartbeat(inner: &Inner, db: &mut Db) -> Result<(), Error> {
    let (held, hosts): (Vec<i64>, Vec<String>) = inner
        .held
        .lock()
        .expect("held jobs")
        .chunks
        .iter()
        .map(|(chunk, held)| (*chunk, held.host.clone()))
        .unzip();
    let (name, id, lease) = (inner.name.as_str(), inner.id, inner.options.lease.as_secs_f64());
    let renewed = db.run_prepared("renew leases", &[RENEW], |client, prepared| {
        let mut tx = client.transaction()?;
        tx.execute("UPDATE haul_workers SET heartbeat = now() WHERE id = $1", &[&id])?;
        let rows = if held.is_empty() {
            Vec::new()
        } else {
            // Primary-key lookups, whatever the (perhaps stale) statistics say.
            tx.batch_execute("SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off")?;
            tx.query(&prepared[0], &[&name, &id, &lease, &held, &hosts])?
        };
        tx.commit()?;
        Ok(rows.into_iter().map(|r| r.get::<_, i64>(0)).collect::<HashSet<_>>())
    })?;
    if renewed.len() < held.len() {
        let lost: HashSet<i64> = held.into_iter().filter(|c| !renewed.contains(c)).collect();
        let jobs = inner.held.lock().expect("held jobs").lose(&lost);
        if jobs > 0 {
            tracing::warn!(target: "haul::queue", jobs, "leases lost: this worker stalled past them");
        }
    }
    Ok(())
}

/// Counts the live workers and, when their number changed, shares the per-host budgets anew.
fn share(inner: &Inner, db: &mut Db) -> Result<(), Error> {
    let name = inner.name.as_str();
    let live = db.run("count the live workers", |client| live_workers(client, name))?;
    let live = usize::try_from(live).unwrap_or(1).max(1);
    if inner.live.swap(live, Ordering::SeqCst) != live
        && let Some((link, _)) = &*inner.engine.lock().expect("engine")
    {
        link.share(live);
    }
    Ok(())
}

/// Passes the host pauses in the queue (any worker's) to this worker's engine.
fn share_pauses(inner: &Inner, db: &mut Db, applied: &mut HashMap<String, Instant>) -> Result<(), Error> {
    let Some((pauser, _)) = inner.engine.lock().expect("engine").clone() else {
        return Ok(());
    };
    let name = inner.name.as_str();
    let rows = db.run("read host pauses", |client| client.query(COOLING, &[&name]))?;
    let now = Instant::now();
    applied.retain(|_, until| *until > now);
    for row in rows {
        let host: String = row.get(0);
        let seconds: f64 = row.get(1);
        let reason: String = row.get(2);
        let wait = Duration::try_from_secs_f64(seconds).unwrap_or(Duration::ZERO);
        let until = now + wait;
        if applied
            .get(&host)
            .is_some_and(|t| *t + Duration::from_millis(200) >= until)
        {
            continue;
        }
        pauser.pause(&host, wait, &reason);
        applied.insert(host, until);
    }
    Ok(())
}
