//! A segmented transfer: one large file fetched as byte ranges over several requests at once,
//! into one part file with positioned writes.
//!
//! A job's attempt becomes segmented when the first answer shows a known length, byte ranges
//! (`Accept-Ranges: bytes`), a validator for `If-Range`, and a file of at least twice
//! `--min-split-size`; or when the archive holds the ranges still missing of an earlier run.
//! More connections join only when they pay: after [`SPLIT_AFTER`], if the first stream would
//! need more than [`SPLIT_WORTH`] to finish at its rate (a server that throttles each
//! connection, a distant one), up to `--split` connections steal from it. A file that streams
//! fast from a near server stays one stream, and costs no more CPU than one.
//! Every range request is a request like any other to the scheduler: it waits for a slot of
//! its own (the host's adaptive limit, `--rate`, cool-downs and `-j` all apply), its answer goes
//! to the host's controller, and its slot is given back when it ends. The job's own slot carries
//! the first request.
//!
//! Which connection fetches what is the [`Plan`] (work stealing). A range request that fails is
//! retried alone (backoff, or its Retry-After; a 429 pauses the host for everyone) up to
//! `--retries` times per attempt. An answer that shows the file changed, or a server that
//! ignores ranges, stops every connection and the file is fetched again whole, as one stream.
//! The ranges still missing are recorded in the archive every second (and at the end), so a
//! crash or Ctrl-C loses at most a second of work; the part file is verified over its whole
//! content before it is renamed into place.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use futures_util::stream::FuturesUnordered;
use reqwest::Response;
use tokio::sync::{mpsc, oneshot, watch};

use super::plan::{Claim, Plan};
use super::transfer::{JobState, Outcome};
use super::{Note, Shared};
use crate::error::{Error, ErrorClass};
use crate::fetch::{Decision, Head, Throttle as _, classify};
use crate::schedule::host::{Signal, Ticket};
use crate::store::{Prefix, RangeWriter, SplitPart, Upstream, Want};

/// How often the ranges still missing are recorded while a segmented transfer runs.
const RECORD_EVERY: Duration = Duration::from_secs(1);

/// A job's line to the dispatcher for more slots on its host.
#[derive(Debug, Clone)]
pub(crate) struct Slots {
    pub(crate) host: String,
    pub(crate) tx: mpsc::UnboundedSender<Note>,
}

impl Slots {
    /// Waits for one more request's slot on the host. `None` when the run is stopping.
    async fn acquire(&self) -> Option<Granted> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Note::WantSlot {
                host: self.host.clone(),
                reply,
            })
            .ok()?;
        rx.await.ok()
    }

    /// Tells the scheduler a request's answer began (see `Controller::on_answer`); the ticket
    /// is marked so its end does not count it again.
    pub(crate) fn answered(&self, ticket: &mut Ticket) {
        if !ticket.answered {
            let _ = self.tx.send(Note::Answered {
                host: self.host.clone(),
                ticket: *ticket,
            });
            ticket.answered = true;
        }
    }

    /// Gives a slot back with what its request said of the host's load, and the pause its
    /// answer asked for (a 429's Retry-After).
    fn release(&self, ticket: Ticket, signal: Signal, pause: Option<(Duration, String)>) {
        let _ = self.tx.send(Note::SlotEnded {
            host: self.host.clone(),
            ticket,
            signal,
            pause,
        });
    }
}

/// A slot the dispatcher granted. Dropped unused (a transfer that ended while its request for
/// the slot was on its way), it goes back by itself: no slot is ever lost.
#[derive(Debug)]
pub(crate) struct Granted {
    ticket: Option<Ticket>,
    slots: Slots,
}

impl Granted {
    pub(crate) fn new(ticket: Ticket, slots: Slots) -> Self {
        Self {
            ticket: Some(ticket),
            slots,
        }
    }

    /// The ticket, now the caller's to give back.
    fn take(mut self) -> Ticket {
        self.ticket.take().expect("taken once")
    }
}

impl Drop for Granted {
    fn drop(&mut self) {
        if let Some(ticket) = self.ticket.take() {
            self.slots.release(ticket, Signal::Nothing, None);
        }
    }
}

/// True when the file `head` answers may be fetched over several connections: `--split` above
/// 1, byte ranges, a validator for `If-Range`, and at least twice `--min-split-size` bytes.
pub(crate) fn worth_splitting(shared: &Shared, state: &JobState, head: &Head, total: u64) -> bool {
    let config = &shared.config;
    config.split >= 2
        && !state.no_split
        && head.ranges
        && head.validators.allow_resume()
        && Plan::pieces_for(total, config.split, config.min_split_size) >= 2
}

/// A fresh transfer runs on its first connection alone this long before it may be split.
const SPLIT_AFTER: Duration = Duration::from_millis(250);
/// It is split when, at its current rate, it would need longer than this to finish.
const SPLIT_WORTH: Duration = Duration::from_secs(1);

/// How one range request ended.
struct Ended {
    ticket: Ticket,
    ttfb: Option<Duration>,
    result: Result<RangeEnd, Error>,
}

/// A range request that did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RangeEnd {
    /// Its piece is complete, or its body ended (the rest is asked again).
    Served,
    /// The transfer stopped it.
    Stopped,
}

type Task<T> = futures_util::future::BoxFuture<'static, T>;

/// Runs a segmented attempt: `first` is the answer to the job's first request when it is
/// already streaming the file from byte 0 (else every range is asked for anew, as on resume).
pub(crate) async fn run(
    shared: &Arc<Shared>,
    state: &mut JobState,
    cancel: &mut watch::Receiver<bool>,
    slots: &Slots,
    first: Option<Response>,
    plan: Plan,
) -> Result<Outcome, Error> {
    let total = plan.total();
    let fresh = first.is_some();
    let store = Arc::clone(&shared.store);
    let rel = state.rel.clone();
    let opened = tokio::task::spawn_blocking(move || store.open_split(&rel, total, fresh))
        .await
        .map_err(|e| Error::Internal(e.to_string()));
    let part = match opened.and_then(|r| r) {
        Ok(part) => part,
        Err(error) => {
            if let Some(own) = state.ticket.take() {
                slots.release(own, Signal::Nothing, None);
            }
            return Err(error);
        }
    };
    state.known_total = Some(total);
    let plan = Arc::new(Mutex::new(plan));
    state.split_missing = Some(plan.lock().expect("plan").missing());
    shared.note_partial(state, Some(total));
    // Listed (and counted active) until the file is in place: its verification and upload are
    // the transfer's end, as for a single stream.
    let guard = Arc::new(shared.monitor.start_transfer(&state.rel, Some(total)));
    guard.set_received(plan.lock().expect("plan").done_bytes());

    let expect = state.expect(Some(total));
    let want = Want::new(shared.config.digest, &expect);
    // The file's upload to a bucket follows the part file's written prefix: on a resume, that
    // starts with the bytes earlier attempts wrote.
    let (follow_stop, follow_rx) = watch::channel(false);
    let follower = part
        .stream_upload(&shared.store, total, &state.final_rel, expect.sha256)
        .await
        .map(|up| tokio::spawn(follow(up, part.clone(), Arc::clone(&plan), follow_rx)));
    let ctx_prefix = Arc::new(Mutex::new(None));
    let ctx = Arc::new(Context {
        shared: Arc::clone(shared),
        request: RequestState::of(state),
        part: part.clone(),
        plan: Arc::clone(&plan),
        guard: Arc::clone(&guard),
        want,
        prefix: Arc::clone(&ctx_prefix),
    });
    // The connections stop on the run's cancel, or on this transfer's own stop (a changed file).
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut running: FuturesUnordered<Task<Ended>> = FuturesUnordered::new();
    let mut waiting: FuturesUnordered<Task<Option<Granted>>> = FuturesUnordered::new();
    let mut next_conn = 0u64;
    let mut failures = 0u32;
    let mut abort: Option<Error> = None;
    let mut retry_at: Option<Instant> = None;
    let mut stopping = false;
    let mut record_at = Instant::now() + RECORD_EVERY;
    let most = Plan::pieces_for(total, shared.config.split, shared.config.min_split_size);
    // A resume splits at once (its ranges were split before); a fresh file once it is slow.
    let started = Instant::now();
    let done_at_start = plan.lock().expect("plan").done_bytes();
    let mut split_enabled = !fresh;

    // The job's own slot carries the first request: the answer streaming from 0, or the first
    // range of a resume.
    let own = state.ticket.take().unwrap_or_default();
    match Connection::start(&ctx, &mut next_conn, own, first, &stop_rx, slots) {
        Some(task) => running.push(task),
        None => slots.release(own, Signal::Nothing, None),
    }
    loop {
        if abort.is_none() && !stopping && retry_at.is_none_or(|at| at <= Instant::now()) {
            retry_at = None;
            // Ask for slots while there are pieces nobody has (or one half worth stealing).
            let wanted = {
                let p = plan.lock().expect("plan");
                if !split_enabled && started.elapsed() >= SPLIT_AFTER {
                    let got = p.done_bytes().saturating_sub(done_at_start) as f64;
                    let rate = got / started.elapsed().as_secs_f64();
                    let left = p.total().saturating_sub(p.done_bytes()) as f64;
                    split_enabled = rate <= 0.0 || left / rate > SPLIT_WORTH.as_secs_f64();
                    if split_enabled {
                        tracing::debug!(target: "haul::decision", url = %state.job.safe_url(), "split");
                    }
                }
                match p.unclaimed() {
                    0 if split_enabled && p.stealable() => 1,
                    n => n,
                }
            };
            let mut asked = 0;
            while asked < wanted && running.len() + waiting.len() < most {
                let slots = slots.clone();
                waiting.push(Box::pin(async move { slots.acquire().await }));
                asked += 1;
            }
        }
        if running.is_empty() && (abort.is_some() || stopping || plan.lock().expect("plan").is_complete()) {
            break;
        }
        if running.is_empty() && waiting.is_empty() && retry_at.is_none() {
            break;
        }
        let mut wake = retry_at.map_or(record_at, |at| at.min(record_at));
        if !split_enabled {
            // Look again at the first stream's rate.
            wake = wake.min((started + SPLIT_AFTER).max(Instant::now() + SPLIT_AFTER / 2));
        }
        tokio::select! {
            Some(Ended { ticket, ttfb, result }) = running.next() => {
                let signal = match &result {
                    Ok(RangeEnd::Served) => ttfb.map_or(Signal::Nothing, Signal::Answer),
                    Ok(RangeEnd::Stopped) => Signal::Nothing,
                    Err(e) => super::error_signal(e, ttfb),
                };
                let mut pause = None;
                if let Err(error) = result {
                    let class = classify(&error);
                    let retryable = matches!(class, ErrorClass::Transient | ErrorClass::RetryAfter(_))
                        && !matches!(error, Error::Range(_) | Error::Verify(_));
                    if stopping {
                        // Ending anyway: the range stays missing for the next run.
                    } else if retryable && failures < shared.config.retries {
                        failures += 1;
                        let wait = match class {
                            ErrorClass::RetryAfter(wait) => wait.min(shared.config.max_retry_wait),
                            _ => backoff(shared, failures),
                        };
                        if error.http_status() == Some(429) {
                            pause = Some((wait, format!("429 Too Many Requests, waiting {:.1} s", wait.as_secs_f64())));
                        }
                        tracing::info!(
                            target: "haul::decision",
                            url = %state.job.safe_url(),
                            failures,
                            delay_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                            %error,
                            "segment retry"
                        );
                        shared.monitor.on_retry();
                        let at = Instant::now() + wait;
                        retry_at = Some(retry_at.map_or(at, |r| r.max(at)));
                    } else {
                        abort.get_or_insert(error);
                        let _ = stop_tx.send(true);
                    }
                }
                slots.release(ticket, signal, pause);
            }
            Some(granted) = waiting.next() => match granted {
                Some(granted) if abort.is_none() && !stopping => {
                    let ticket = granted.take();
                    match Connection::start(&ctx, &mut next_conn, ticket, None, &stop_rx, slots) {
                        Some(task) => running.push(task),
                        None => slots.release(ticket, Signal::Nothing, None),
                    }
                }
                // Dropped: back to the dispatcher.
                Some(_) => {}
                // The run is stopping: no more slots.
                None => stopping = true,
            },
            () = async { let _ = cancel.wait_for(|c| *c).await; }, if !stopping => {
                stopping = true;
                let _ = stop_tx.send(true);
            }
            () = tokio::time::sleep_until(wake.into()) => {
                if Instant::now() >= record_at {
                    record_at = Instant::now() + RECORD_EVERY;
                    record(shared, state, &part, &plan).await;
                }
            }
        }
    }
    // Slots granted from now on go straight back (their receivers are gone).
    drop(waiting);
    drop(ctx);
    state.bytes = plan.lock().expect("plan").done_bytes();
    state.http_status = Some(206);
    let _ = follow_stop.send(true);
    let mut upstream = match follower {
        Some(task) => task.await.ok().flatten(),
        None => None,
    };
    if abort.is_some() || !plan.lock().expect("plan").is_complete() {
        // The resume starts another upload.
        if let Some(up) = upstream.take() {
            up.abort().await;
        }
    }
    if let Some(error) = abort {
        if matches!(error, Error::Range(_) | Error::Verify(_)) {
            // The file changed, or the server does not keep to ranges: start again, whole and
            // as one stream.
            shared.store.discard_split(&state.rel);
            state.split_missing = None;
            state.no_split = true;
            state.validators = crate::fetch::Validators::default();
            state.known_total = None;
        } else {
            record(shared, state, &part, &plan).await;
        }
        return Err(error);
    }
    if !plan.lock().expect("plan").is_complete() {
        record(shared, state, &part, &plan).await;
        return Ok(Outcome::Interrupted);
    }
    let prefix = ctx_prefix.lock().expect("prefix").take();
    let finished = shared
        .store
        .finish_split(
            part,
            total,
            expect,
            want,
            prefix,
            &state.final_rel,
            state.commit,
            upstream,
        )
        .await;
    state.split_missing = None;
    match finished {
        Ok(file) => Ok(Outcome::Done { file, verified: true }),
        Err(error) => {
            // A mismatch removed the part: the next attempt starts over.
            state.validators = crate::fetch::Validators::default();
            state.known_total = None;
            Err(error)
        }
    }
}

/// Records the ranges still missing (after an fsync of the part under `--fsync`).
async fn record(shared: &Shared, state: &mut JobState, part: &SplitPart, plan: &Mutex<Plan>) {
    let missing = plan.lock().expect("plan").missing();
    if state.split_missing.as_ref() == Some(&missing) {
        return;
    }
    if shared.config.fsync && part.sync().await.is_err() {
        return;
    }
    state.split_missing = Some(missing);
    shared.note_partial(state, state.known_total);
}

/// The wait before a failed range is asked for again.
fn backoff(shared: &Shared, failures: u32) -> Duration {
    let exp = shared
        .config
        .retry_wait
        .saturating_mul(1u32 << failures.min(16).saturating_sub(1));
    exp.min(shared.config.retry_cap)
}

/// What a range request needs of its job.
struct RequestState {
    job: crate::job::Job,
    validators: crate::fetch::Validators,
    host: String,
}

impl RequestState {
    fn of(state: &JobState) -> Self {
        Self {
            job: state.job.clone(),
            validators: state.validators.clone(),
            host: state.host.clone(),
        }
    }
}

/// Bytes the follower hands its upload at once at least, unless they end the file.
const FOLLOW_STEP: u64 = 1024 * 1024;
/// Bytes the follower reads and hands on at once at most (a part of the upload).
const FOLLOW_MOST: u64 = 8 * 1024 * 1024;
/// How often the follower looks at the written prefix.
const FOLLOW_EVERY: Duration = Duration::from_millis(20);

/// Feeds a segmented file's streamed upload from the part file: the bytes from 0 with no gap
/// before them, as the connections write them (read back from the page cache), so the upload
/// keeps up with the download whichever connection wrote what. Ends when `stop` is set or all
/// is sent, giving the upload back (`None` when it failed: the file then goes up whole once
/// verified).
async fn follow(
    mut up: Upstream,
    part: SplitPart,
    plan: Arc<Mutex<Plan>>,
    mut stop: watch::Receiver<bool>,
) -> Option<Upstream> {
    let total = plan.lock().expect("plan").total();
    while up.sent() < total && !*stop.borrow() {
        let ready = plan.lock().expect("plan").written_prefix() - up.sent();
        if ready >= FOLLOW_STEP || (ready > 0 && up.sent() + ready == total) {
            let len = usize::try_from(ready.min(FOLLOW_MOST)).expect("a part fits in memory");
            let sent = match part.read(up.sent(), len).await {
                Ok(block) => up.send(&[block]).await,
                Err(_) => false,
            };
            if !sent {
                up.abort().await;
                return None;
            }
            continue;
        }
        tokio::select! {
            () = tokio::time::sleep(FOLLOW_EVERY) => {}
            _ = stop.changed() => {}
        }
    }
    Some(up)
}

/// What the connections of one transfer share.
struct Context {
    shared: Arc<Shared>,
    request: RequestState,
    part: SplitPart,
    plan: Arc<Mutex<Plan>>,
    guard: Arc<crate::report::TransferGuard>,
    /// The digests the file needs (the archive's, the manifest's checksums).
    want: Want,
    /// The digests of the file's first bytes, from the connection that wrote them from 0.
    prefix: Arc<Mutex<Option<Prefix>>>,
}

/// One range request and its body.
struct Connection {
    ctx: Arc<Context>,
    conn: u64,
    claim: Claim,
    stop: watch::Receiver<bool>,
}

impl Connection {
    /// Claims a range for a new connection and returns its request as a task; `None` when
    /// there is nothing left to claim.
    fn start(
        ctx: &Arc<Context>,
        next_conn: &mut u64,
        ticket: Ticket,
        response: Option<Response>,
        stop: &watch::Receiver<bool>,
        slots: &Slots,
    ) -> Option<Task<Ended>> {
        let conn = *next_conn;
        *next_conn += 1;
        let claim = ctx.plan.lock().expect("plan").claim(conn)?;
        let connection = Self {
            ctx: Arc::clone(ctx),
            conn,
            claim,
            stop: stop.clone(),
        };
        let slots = slots.clone();
        Some(Box::pin(async move {
            let mut ticket = ticket;
            let (ttfb, result) = connection.fetch(response, Instant::now(), &slots, &mut ticket).await;
            Ended { ticket, ttfb, result }
        }))
    }

    /// Fetches the claimed range (on `response`, when the job's first answer already streams
    /// it); returns the time to the answer and how it ended. The piece is released either way.
    async fn fetch(
        mut self,
        response: Option<Response>,
        sent: Instant,
        slots: &Slots,
        ticket: &mut Ticket,
    ) -> (Option<Duration>, Result<RangeEnd, Error>) {
        let ctx = Arc::clone(&self.ctx);
        let total = ctx.plan.lock().expect("plan").total();
        let mut response = match response {
            Some(response) => response,
            None => {
                let asked = tokio::select! {
                    biased;
                    _ = self.stop.wait_for(|s| *s) => None,
                    asked = ctx.shared.fetcher.send(
                        &ctx.request.job,
                        self.claim.from,
                        Some(self.claim.to),
                        &ctx.request.validators,
                        Some(total),
                    ) => Some(asked),
                };
                let wanted = Decision::Stream {
                    offset: self.claim.from,
                    total: Some(total),
                };
                match asked {
                    None => {
                        self.release();
                        return (None, Ok(RangeEnd::Stopped));
                    }
                    Some(Ok((head, response))) if head.decision == wanted => response,
                    Some(Ok((head, _))) => {
                        self.release();
                        let why = format!("a segment answer at {} for {:?}", self.claim.from, head.decision);
                        return (Some(sent.elapsed()), Err(Error::Range(why)));
                    }
                    Some(Err(error)) => {
                        self.release();
                        let ttfb = matches!(error, Error::Status { .. } | Error::Range(_)).then(|| sent.elapsed());
                        return (ttfb, Err(error));
                    }
                }
            }
        };
        let ttfb = Some(sent.elapsed());
        slots.answered(ticket);
        let result = self.stream(&mut response).await;
        drop(response);
        (ttfb, result)
    }

    /// Streams the body into the part file until the piece is complete (its end may move down
    /// as other connections steal from it), the body ends, or the transfer stops.
    async fn stream(&mut self, response: &mut Response) -> Result<RangeEnd, Error> {
        let ctx = Arc::clone(&self.ctx);
        let rule = crate::rules::find(&ctx.shared.config.host_rules, &ctx.request.host);
        let budgets = crate::schedule::rate::Budgets {
            all: ctx.shared.bandwidth.as_ref(),
            host: rule.and_then(|i| ctx.shared.rule_bandwidth[i].as_ref()),
        };
        let mut writer = RangeWriter::new(&ctx.part, self.claim.from, ctx.want);
        let result = loop {
            let chunk = tokio::select! {
                biased;
                chunk = response.chunk() => chunk.map_err(|e| Error::Network(e.without_url())),
                _ = self.stop.wait_for(|s| *s) => break Ok(RangeEnd::Stopped),
            };
            let chunk = match chunk {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break Ok(RangeEnd::Served),
                Err(e) => break Err(e),
            };
            let len = chunk.len() as u64;
            let (keep, complete) = {
                let mut plan = ctx.plan.lock().expect("plan");
                let keep = plan.receive(self.claim.piece, self.conn, len);
                (keep, plan.is_received(self.claim.piece))
            };
            if keep > 0 {
                ctx.guard.add_bytes(keep);
                let kept = usize::try_from(keep).unwrap_or(chunk.len());
                match writer.write(chunk.slice(..kept)).await {
                    Ok(Some(upto)) => ctx.plan.lock().expect("plan").written(self.claim.piece, upto),
                    Ok(None) => {}
                    Err(e) => break Err(e),
                }
            }
            if keep < len || complete {
                break Ok(RangeEnd::Served);
            }
            if budgets.any() {
                let wait = budgets.take(keep);
                if !wait.is_zero() {
                    tokio::select! {
                        biased;
                        () = tokio::time::sleep(wait) => {}
                        _ = self.stop.wait_for(|s| *s) => break Ok(RangeEnd::Stopped),
                    }
                }
            }
        };
        let flushed = match writer.flush().await {
            Ok((upto, prefix)) => {
                ctx.plan.lock().expect("plan").written(self.claim.piece, upto);
                if let Some(prefix) = prefix {
                    // The bytes from 0 this connection hashed as it wrote them: not read again.
                    *ctx.prefix.lock().expect("prefix") = Some(prefix);
                }
                Ok(upto)
            }
            Err(e) => Err(e),
        };
        self.release();
        match (result, flushed) {
            (Err(e), _) | (Ok(_), Err(e)) => Err(e),
            (Ok(end), Ok(_)) => Ok(end),
        }
    }

    fn release(&self) {
        self.ctx.plan.lock().expect("plan").release(self.claim.piece, self.conn);
    }
}
