//! One job's work on a worker task: the existing-file check, then one HTTP attempt streamed
//! into a `.part` file and finished into place.

use std::fs;
use std::io;
use std::sync::Arc;
use std::time::Instant;

use super::Shared;
use crate::config::OnExists;
use crate::error::Error;
use crate::fetch::Validators;
use crate::job::Job;
use crate::store::{Expect, Finished, PartWriter, disposition_filename, part_path};

/// A job between attempts: everything the retry loop carries along.
#[derive(Debug)]
pub(crate) struct JobState {
    pub(crate) job: Job,
    pub(crate) host: String,
    /// The checked relative path.
    pub(crate) rel: String,
    /// Where the file finally goes (differs from `rel` under `--on-exists rename`).
    pub(crate) final_rel: String,
    pub(crate) attempts: u32,
    pub(crate) validators: Validators,
    pub(crate) http_status: Option<u16>,
    pub(crate) bytes: u64,
    /// True once the existing-destination check ran (it runs before the first attempt only).
    pub(crate) checked_exists: bool,
    /// True once a Content-Disposition name replaced the derived one.
    pub(crate) named_by_server: bool,
}

/// What an attempt achieved.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Downloaded, verified and renamed into place.
    Done(Finished),
    /// The destination already held the right file; it was adopted without a request.
    Adopted(Finished),
}

impl JobState {
    fn expect(&self, server_total: Option<u64>) -> Expect {
        Expect {
            size: self.job.size.or(server_total),
            sha256: self.job.sha256,
            md5: self.job.md5,
        }
    }
}

/// Runs the existing-file check (first time) and one attempt.
pub(crate) async fn run(shared: &Arc<Shared>, state: &mut JobState) -> Result<Outcome, Error> {
    if !state.checked_exists {
        state.checked_exists = true;
        if let Some(adopted) = check_existing(shared, state).await? {
            return Ok(Outcome::Adopted(adopted));
        }
    }
    attempt(shared, state).await
}

/// Applies `--on-exists` to a destination that exists. Returns a finished file when it is
/// adopted as is.
async fn check_existing(shared: &Arc<Shared>, state: &mut JobState) -> Result<Option<Finished>, Error> {
    if shared.store.started_empty() {
        // A new output directory: only this run writes there, and it never gives one path to
        // two jobs (the dispatcher's conflict check), so a stat per job would find nothing.
        return Ok(None);
    }
    let dest = shared.store.dest(&state.rel);
    let meta = match fs::symlink_metadata(&dest) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("inspect", &dest, e)),
    };
    if meta.file_type().is_symlink() {
        return Err(Error::Path(format!(
            "refused path {:?}: the destination is a symlink",
            state.rel
        )));
    }
    if meta.is_dir() {
        return Err(Error::Path(format!(
            "refused path {:?}: the destination is a directory",
            state.rel
        )));
    }
    if let Some(reader) = &shared.path_owner {
        let owner = reader.lock().expect("archive reader").owner_of(&state.rel)?;
        if owner.is_some_and(|o| o != state.job.id) {
            return Err(Error::Conflict(state.rel.clone()));
        }
    }
    match shared.config.on_exists {
        OnExists::Overwrite => Ok(None),
        OnExists::Fail => Err(Error::Exists(state.rel.clone())),
        OnExists::Rename => {
            state.final_rel = free_name(shared, &state.rel);
            Ok(None)
        }
        OnExists::Skip => {
            let expect = state.expect(None);
            let want_md5 = expect.md5.is_some();
            let found = tokio::task::spawn_blocking(move || crate::store::hash_file(&dest, want_md5))
                .await
                .map_err(|e| Error::io("read", state.rel.clone(), io::Error::other(e.to_string())))??;
            let (bytes, sha256, md5) = found;
            if crate::store::matches(&expect, bytes, &sha256, md5.as_ref()) {
                Ok(Some(Finished { bytes, sha256 }))
            } else {
                // Not the file the manifest describes (an older version, a torn copy): replace it.
                Ok(None)
            }
        }
    }
}

/// `stem (N).ext` for the smallest N whose name is free.
fn free_name(shared: &Shared, rel: &str) -> String {
    let (dir, name) = rel.rsplit_once('/').map_or(("", rel), |(d, n)| (d, n));
    let (stem, ext) = match name.rfind('.') {
        Some(dot) if dot > 0 => (&name[..dot], &name[dot..]),
        _ => (name, ""),
    };
    (1u32..)
        .map(|n| {
            let candidate = format!("{stem} ({n}){ext}");
            if dir.is_empty() {
                candidate
            } else {
                format!("{dir}/{candidate}")
            }
        })
        .find(|candidate| fs::symlink_metadata(shared.store.dest(candidate)).is_err())
        .expect("some name is free")
}

/// One HTTP attempt streamed into `.part` and finished into place.
async fn attempt(shared: &Arc<Shared>, state: &mut JobState) -> Result<Outcome, Error> {
    state.attempts += 1;
    let config = &shared.config;
    let part = part_path(&shared.store.dest(&state.rel));
    let offset = if state.validators.allow_resume() {
        fs::symlink_metadata(&part)
            .map(|m| if m.is_file() { m.len() } else { 0 })
            .unwrap_or(0)
    } else {
        0
    };
    let (head, mut response) = shared
        .fetcher
        .send(&state.job, offset, &state.validators)
        .await
        .inspect_err(|e| {
            state.http_status = e.http_status();
        })?;
    state.http_status = Some(head.status);
    if head.validators.etag.is_some() || head.validators.last_modified.is_some() || !head.already_complete {
        state.validators = head.validators.clone();
    }
    if let Some(name) = head
        .disposition
        .as_deref()
        .filter(|_| wants_server_name(shared, state))
        .and_then(disposition_filename)
    {
        state.named_by_server = true;
        let renamed = match state.rel.rsplit_once('/') {
            Some((dir, _)) => format!("{dir}/{name}"),
            None => name,
        };
        if renamed != state.rel {
            if !shared.claim(&renamed) {
                return Err(Error::Conflict(renamed));
            }
            state.rel.clone_from(&renamed);
            state.final_rel = renamed;
            if let Some(adopted) = check_existing(shared, state).await? {
                return Ok(Outcome::Adopted(adopted));
            }
        }
    }
    let total = head.total.or(state.job.size);
    if let (Some(limit), Some(total)) = (config.max_size, total)
        && total > limit
    {
        return Err(Error::TooLarge { limit });
    }
    let expect = state.expect(head.total);
    let mut writer = PartWriter::new(Arc::clone(&shared.store), &state.rel, head.offset, expect.md5.is_some());
    if head.already_complete {
        return writer.finish(expect, &state.final_rel).await.map(Outcome::Done);
    }
    shared.note_partial(state, total);
    let guard = shared.monitor.start_transfer(&state.rel, total);
    guard.set_received(head.offset);
    let mut window = (Instant::now(), 0u64);
    loop {
        let chunk = match response.chunk().await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => break,
            Err(e) => {
                state.bytes = writer.total();
                keep_or_drop(writer, &state.validators).await;
                return Err(Error::Network(e));
            }
        };
        let len = chunk.len() as u64;
        guard.add_bytes(len);
        writer.write(chunk).await?;
        if let Some(limit) = config.max_size
            && writer.total() > limit
        {
            drop(writer);
            let _ = fs::remove_file(&part);
            return Err(Error::TooLarge { limit });
        }
        if let Some((lowest, span)) = config.lowest_speed {
            window.1 += len;
            let elapsed = window.0.elapsed();
            if elapsed >= span {
                let rate = (u128::from(window.1) * 1000 / elapsed.as_millis().max(1)) as u64;
                if rate < lowest {
                    state.bytes = writer.total();
                    keep_or_drop(writer, &state.validators).await;
                    return Err(Error::TooSlow { rate, window: span });
                }
                window = (Instant::now(), 0);
            }
        }
    }
    state.bytes = writer.total();
    if let Some(expected) = head.total
        && writer.total() < expected
    {
        let got = writer.total();
        keep_or_drop(writer, &state.validators).await;
        return Err(Error::ShortBody { got, expected });
    }
    writer.finish(expect, &state.final_rel).await.map(Outcome::Done)
}

/// `--content-disposition` names a file only when the manifest did not, and only once.
fn wants_server_name(shared: &Shared, state: &JobState) -> bool {
    shared.config.content_disposition && state.job.path.is_none() && !state.named_by_server
}

/// After a failed body: keep the `.part` file when a later attempt can resume it safely, else
/// remove it (without validators the next attempt restarts from zero anyway).
async fn keep_or_drop(writer: PartWriter, validators: &Validators) {
    if validators.allow_resume() {
        let _ = writer.keep_partial().await;
    } else {
        writer.discard().await;
    }
}
