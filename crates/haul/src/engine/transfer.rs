//! One job's work on a worker task: the existing-file check, then one HTTP attempt streamed
//! into its part file and finished into place.
//!
//! The attempt follows the state machine of `fetch::range`: a head that cannot continue the
//! part discards it (and its validators) before the error goes back to the retry loop; a `200`
//! to a resume request removes the old part before any byte or validator of the new
//! representation is stored. Cancellation is cooperative: it ends the body loop, the part is
//! kept for a later resume, and a finish (verify and rename) that has begun always completes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::Shared;
use super::plan::Plan;
use super::split::{self, Slots};
use crate::config::OnExists;
use crate::error::Error;
use crate::fetch::{BodyEnd, BodyLimits, BodySink, Decision, Validators, stream_body};
use crate::job::Job;
use crate::schedule::host::Ticket;
use crate::store::{
    Commit, Entry, Expect, FileDigests, Finished, PartWriter, Want, disposition_filename, with_file_name,
};

/// A body at least this long reports its answer's head to the scheduler at once.
const LONG_BODY: u64 = 1024 * 1024;

/// A job between attempts: everything the retry loop carries along.
#[derive(Debug)]
pub(crate) struct JobState {
    pub(crate) job: Job,
    pub(crate) host: String,
    /// The checked relative path (the part file is keyed by it).
    pub(crate) rel: String,
    /// Where the file finally goes (differs from `rel` under `--on-exists rename`).
    pub(crate) final_rel: String,
    pub(crate) attempts: u32,
    /// Attempts that ended for want of file descriptors: not counted as attempts, but bounded.
    pub(crate) starved: u32,
    pub(crate) validators: Validators,
    /// The file's total length as a response gave it (checked against later answers).
    pub(crate) known_total: Option<u64>,
    pub(crate) http_status: Option<u16>,
    pub(crate) bytes: u64,
    /// True once the existing-destination check ran (it runs before the first attempt only).
    pub(crate) checked_exists: bool,
    /// How the finished file may take its final name (set by the existing-destination check).
    pub(crate) commit: Commit,
    /// True once a Content-Disposition name replaced the derived one.
    pub(crate) named_by_server: bool,
    /// Fingerprints of the paths this job holds in the in-flight claim set.
    pub(crate) claims: Vec<u64>,
    /// True once the finished file's length or content was checked.
    pub(crate) verified: bool,
    /// The scheduler's ticket of the running attempt (a segmented transfer gives it back as
    /// soon as its first request ends).
    pub(crate) ticket: Option<Ticket>,
    /// Fetch this file as one stream (its server broke a segmented transfer's rules).
    pub(crate) no_split: bool,
    /// The ranges a segmented transfer's part file still misses (set while one runs, and
    /// from the archive for a resume).
    pub(crate) split_missing: Option<Vec<(u64, u64)>>,
    /// The last attempt's time to first byte (the response head), when it got one.
    pub(crate) ttfb: Option<Duration>,
    /// When the first attempt started.
    pub(crate) started: Option<Instant>,
    /// The URL that answered the last attempt, when a redirect led elsewhere.
    pub(crate) final_url: Option<url::Url>,
    /// The digests of the finished file.
    pub(crate) digests: Option<FileDigests>,
    /// The archive had the job done, but its file is missing or wrong on disk: fetched again,
    /// and the file there is replaced whatever `--on-exists` says.
    pub(crate) stale: bool,
}

impl JobState {
    /// A fresh state for `job` bound for `rel`.
    pub(crate) fn new(job: Job, rel: String) -> Self {
        Self {
            host: job.host_key(),
            final_rel: rel.clone(),
            rel,
            job,
            attempts: 0,
            starved: 0,
            validators: Validators::default(),
            known_total: None,
            http_status: None,
            bytes: 0,
            checked_exists: false,
            commit: Commit::New,
            named_by_server: false,
            claims: Vec::new(),
            verified: false,
            ticket: None,
            no_split: false,
            split_missing: None,
            ttfb: None,
            started: None,
            final_url: None,
            digests: None,
            stale: false,
        }
    }

    pub(crate) fn expect(&self, server_total: Option<u64>) -> Expect {
        Expect {
            size: self.job.size.or(server_total),
            sha256: self.job.sha256,
            md5: self.job.md5,
        }
    }

    /// Forgets the part's validators: the next attempt asks for the whole file.
    fn forget_part(&mut self, shared: &Shared) {
        shared.store.discard_part(&self.rel);
        self.validators = Validators::default();
        self.known_total = None;
    }
}

/// What an attempt achieved.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Downloaded, verified and renamed into place. `verified` is false when nothing could
    /// check the body's length or content (a close-delimited body, no manifest size or digest).
    Done { file: Finished, verified: bool },
    /// The destination already held the right file; it was adopted without a request.
    Adopted { file: Finished, verified: bool },
    /// The run was cancelled; a resumable part is kept.
    Interrupted,
}

impl BodySink for PartWriter {
    async fn write(&mut self, data: bytes::Bytes) -> Result<(), Error> {
        PartWriter::write(self, data).await
    }

    fn total(&self) -> u64 {
        PartWriter::total(self)
    }
}

/// Runs the existing-file check (first time) and one attempt.
pub(crate) async fn run(
    shared: &Arc<Shared>,
    state: &mut JobState,
    cancel: &mut watch::Receiver<bool>,
    slots: &Slots,
) -> Result<Outcome, Error> {
    if !state.checked_exists {
        state.checked_exists = true;
        if let Some(adopted) = check_existing(shared, state).await? {
            return Ok(adopted);
        }
    }
    if let Some(plan) = resumable_split(shared, state) {
        state.attempts += 1;
        return split::run(shared, state, cancel, slots, None, plan).await;
    }
    attempt(shared, state, cancel, slots).await
}

/// The plan of a segmented transfer to resume: the archive (or an earlier attempt) lists the
/// ranges missing, the part file is there at the file's length, and the validators can make
/// each range request safe. Anything less: the part is removed and the file fetched anew.
fn resumable_split(shared: &Shared, state: &mut JobState) -> Option<Plan> {
    let missing = state.split_missing.take()?;
    let total = state.known_total;
    let usable = state.validators.allow_resume()
        && !state.no_split
        && total.is_some()
        && shared.store.split_len(&state.rel) == total
        && state.job.size.is_none_or(|s| Some(s) == total);
    match total {
        Some(total) if usable => Some(Plan::resume(total, &missing)),
        _ => {
            shared.store.discard_split(&state.rel);
            None
        }
    }
}

/// Applies `--on-exists` to a destination that exists. Returns an outcome when the file there
/// is adopted as is.
async fn check_existing(shared: &Arc<Shared>, state: &mut JobState) -> Result<Option<Outcome>, Error> {
    state.commit = Commit::New;
    if shared.store.started_empty() {
        // A new output directory: only this run writes there (the directory lock keeps other
        // haul processes out), and the no-replace rename catches two jobs on one file.
        return Ok(None);
    }
    if let Some(bucket) = shared.store.bucket() {
        return check_existing_object(shared, state, bucket).await;
    }
    let entry = shared.store.inspect(&state.final_rel)?;
    let mode = match entry {
        Entry::Missing => return Ok(None),
        Entry::Symlink => {
            return Err(Error::Path(format!(
                "refused path {:?}: the destination is a symlink",
                state.final_rel
            )));
        }
        Entry::Directory | Entry::Other => {
            return Err(Error::Path(format!(
                "refused path {:?}: the destination is not a regular file",
                state.final_rel
            )));
        }
        Entry::File { mode, .. } => mode,
    };
    if shared.store.written_this_run(&entry) {
        return Err(Error::Conflict(state.final_rel.clone()));
    }
    refuse_anothers_file(shared, state)?;
    if state.stale {
        // This job's own file, found wrong by `haul verify`: replaced.
        state.commit = Commit::Replace { mode };
        return Ok(None);
    }
    match shared.config.on_exists {
        OnExists::Overwrite => {
            state.commit = Commit::Replace { mode };
            Ok(None)
        }
        OnExists::Fail => Err(Error::Exists(state.final_rel.clone())),
        OnExists::Rename => {
            state.final_rel = shared.store.free_name(&state.final_rel)?;
            Ok(None)
        }
        OnExists::Skip => {
            let expect = state.expect(None);
            let store = Arc::clone(&shared.store);
            let rel = state.final_rel.clone();
            let want = Want::new(shared.config.digest, &expect);
            let found = tokio::task::spawn_blocking(move || store.hash_existing(&rel, want))
                .await
                .map_err(|e| Error::Internal(e.to_string()))??;
            let (bytes, digests) = found;
            if crate::store::matches(&expect, bytes, &digests) {
                let file = Finished { bytes, digests };
                return Ok(Some(Outcome::Adopted {
                    file,
                    verified: expect.is_checkable(),
                }));
            }
            // Not the file the manifest describes (an older version, a torn copy): replace it.
            state.commit = Commit::Replace { mode };
            Ok(None)
        }
    }
}

/// A file the archive records as another job's is not this job's to adopt or replace.
fn refuse_anothers_file(shared: &Shared, state: &JobState) -> Result<(), Error> {
    if let Some(reader) = &shared.path_owner {
        let owner = reader.lock().expect("archive reader").owner_of(&state.final_rel)?;
        if owner.is_some_and(|o| o != state.job.id) {
            return Err(Error::Conflict(state.final_rel.clone()));
        }
    }
    Ok(())
}

/// `--on-exists` for a bucket output: the object at the destination key, if any, by one `HEAD`
/// (its length, and the digests haul recorded as its metadata when haul uploaded it).
async fn check_existing_object(
    shared: &Arc<Shared>,
    state: &mut JobState,
    bucket: &crate::store::Bucket,
) -> Result<Option<Outcome>, Error> {
    let Some((mut bytes, mut digests)) = bucket.head(&state.final_rel).await? else {
        return Ok(None);
    };
    refuse_anothers_file(shared, state)?;
    let replace = Commit::Replace { mode: 0o644 };
    match shared.config.on_exists {
        _ if state.stale => state.commit = replace,
        OnExists::Overwrite => state.commit = replace,
        OnExists::Fail | OnExists::Rename => return Err(Error::Exists(bucket.display(&state.final_rel))),
        OnExists::Skip => {
            let expect = state.expect(None);
            let unknown = (expect.sha256.is_some() && digests.sha256.is_none()) || expect.md5.is_some();
            if unknown && expect.size.is_none_or(|s| s == bytes) {
                // The object carries no digest to compare: read it through.
                let want = Want::new(shared.config.digest, &expect);
                (bytes, digests) = bucket.hash(&state.final_rel, want).await?;
            }
            if crate::store::matches(&expect, bytes, &digests) {
                let file = Finished { bytes, digests };
                return Ok(Some(Outcome::Adopted {
                    file,
                    verified: expect.is_checkable(),
                }));
            }
            state.commit = replace;
        }
    }
    Ok(None)
}

/// One HTTP attempt streamed into the part file and finished into place.
async fn attempt(
    shared: &Arc<Shared>,
    state: &mut JobState,
    cancel: &mut watch::Receiver<bool>,
    slots: &Slots,
) -> Result<Outcome, Error> {
    state.attempts += 1;
    let config = &shared.config;
    let part_len = if state.validators.allow_resume() {
        shared.store.part_len(&state.rel)
    } else {
        0
    };
    let sent_at = Instant::now();
    state.ttfb = None;
    let sent = tokio::select! {
        biased;
        _ = cancel.wait_for(|c| *c) => return Ok(Outcome::Interrupted),
        sent = shared.fetcher.send(&state.job, part_len, None, &state.validators, state.known_total) => sent,
    };
    if sent.is_ok() || matches!(sent, Err(Error::Status { .. } | Error::Range(_))) {
        state.ttfb = Some(sent_at.elapsed());
    }
    let (head, mut response) = match sent {
        Ok(answer) => answer,
        Err(error) => {
            state.http_status = error.http_status();
            if matches!(error, Error::Range(_)) {
                // The answer cannot continue the part: the next attempt starts from zero.
                state.forget_part(shared);
            }
            return Err(error);
        }
    };
    state.http_status = Some(head.status);
    state.final_url = (head.url != state.job.url).then(|| head.url.clone());
    if head
        .total()
        .is_none_or(|t| t.saturating_sub(head.offset()) >= LONG_BODY)
        && let Some(ticket) = &mut state.ticket
    {
        // A long body: slow start need not wait for its end.
        slots.answered(ticket);
    }
    if let Decision::Stream { offset: 0, .. } = head.decision {
        // A new representation (or a first request): the old part goes before any byte or
        // validator of the new one is stored.
        if part_len > 0 {
            shared.store.discard_part(&state.rel);
        }
        state.validators = head.validators.clone();
    }
    state.known_total = head.total();
    if let Some(name) = head
        .disposition
        .as_deref()
        .filter(|_| wants_server_name(shared, state))
        .and_then(disposition_filename)
    {
        state.named_by_server = true;
        let renamed = with_file_name(&state.rel, &name);
        if renamed != state.rel {
            match shared.claim(&renamed) {
                Some(claim) => state.claims.push(claim),
                None => return Err(Error::Conflict(renamed)),
            }
            state.rel.clone_from(&renamed);
            state.final_rel = renamed;
            state.validators = head.validators.clone();
            if let Some(adopted) = check_existing(shared, state).await? {
                return Ok(adopted);
            }
        }
    }
    let total = head.total();
    // Size discipline: a length that disagrees with the manifest fails before the body.
    if let (Some(want), Some(announced)) = (state.job.size, total)
        && want != announced
    {
        state.forget_part(shared);
        return Err(Error::Verify(format!(
            "the server announces {announced} bytes, the manifest says {want}"
        )));
    }
    if let (Some(limit), Some(size)) = (config.max_size, total.or(state.job.size))
        && size > limit
    {
        return Err(Error::TooLarge { limit });
    }
    if let (Decision::Stream { offset: 0, .. }, Some(size)) = (&head.decision, total) {
        if split::worth_splitting(shared, state, &head, size) {
            let plan = Plan::new(size);
            return split::run(shared, state, cancel, slots, Some(response), plan).await;
        }
        if size >= 2 * config.min_split_size {
            // A file that could have been split earlier: no segmented part may linger.
            shared.store.discard_split(&state.rel);
        }
    }
    let expect = state.expect(total);
    let mut writer = PartWriter::new(
        Arc::clone(&shared.store),
        &state.rel,
        head.offset(),
        Want::new(config.digest, &expect),
    );
    if let Decision::Complete { .. } = head.decision {
        let file = writer.finish(expect, &state.final_rel, state.commit).await?;
        return Ok(Outcome::Done { file, verified: true });
    }
    if let Some(size) = total {
        writer.stream_upload(size, &state.final_rel, expect.sha256).await;
    }
    shared.note_partial(state, total);
    let guard = shared.monitor.start_transfer(&state.rel, total);
    guard.set_received(head.offset());
    let limits = BodyLimits {
        expected: expect.size,
        max_size: config.max_size,
        lowest_speed: config.lowest_speed,
    };
    let rule = crate::rules::find(&config.host_rules, &state.host);
    let budgets = crate::schedule::rate::Budgets {
        all: shared.bandwidth.as_ref(),
        host: rule.and_then(|i| shared.rule_bandwidth[i].as_ref()),
    };
    let throttle = budgets
        .any()
        .then_some(&budgets as &(dyn crate::fetch::Throttle + Sync));
    let end = stream_body(
        &mut response,
        &mut writer,
        limits,
        |n| guard.add_bytes(n),
        throttle,
        cancel,
    )
    .await;
    drop(response);
    state.bytes = writer.total();
    match end {
        Ok(BodyEnd::Complete) => {}
        Ok(BodyEnd::Cancelled) => {
            keep_or_drop(writer, &state.validators).await;
            return Ok(Outcome::Interrupted);
        }
        Err(error @ (Error::Verify(_) | Error::TooLarge { .. })) => {
            // Bytes past what was expected: this part is not the file.
            writer.discard().await;
            state.validators = Validators::default();
            state.known_total = None;
            return Err(error);
        }
        Err(error) => {
            keep_or_drop(writer, &state.validators).await;
            return Err(error);
        }
    }
    if let Some(expected) = total
        && writer.total() < expected
    {
        let got = writer.total();
        keep_or_drop(writer, &state.validators).await;
        return Err(Error::ShortBody { got, expected });
    }
    if writer.total() == 0 && state.job.size != Some(0) && !config.allow_empty {
        writer.discard().await;
        return Err(Error::Empty);
    }
    let verified = expect.is_checkable() || head.framed;
    let file = writer.finish(expect, &state.final_rel, state.commit).await?;
    Ok(Outcome::Done { file, verified })
}

/// `--content-disposition` names a file only when the manifest did not, and only once.
fn wants_server_name(shared: &Shared, state: &JobState) -> bool {
    shared.config.content_disposition && state.job.path.is_none() && !state.named_by_server
}

/// After a failed or interrupted body: keep the part file when a later attempt can resume it
/// safely, else remove it (without validators the next attempt restarts from zero anyway).
async fn keep_or_drop(writer: PartWriter, validators: &Validators) {
    if validators.allow_resume() {
        let _ = writer.keep_partial().await;
    } else {
        writer.discard().await;
    }
}
