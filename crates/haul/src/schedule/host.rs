//! The per-host concurrency controller: how many requests one origin gets at once.
//!
//! A pure type driven by the scheduler with an injected clock. It starts small and learns what
//! the host bears from what the host says:
//! - **slow start**: from a quarter of the ceiling (at least [`INITIAL_LIMIT`], at most 16), one
//!   more for each answer while the host uses all of its limit, so the limit doubles every round
//!   trip (as TCP's slow start does), until the first sign of load;
//! - **additive increase** after the first sign of load: one more per such window;
//! - **decrease on back-pressure**: a `429` ("too many") sets the limit to what the host bore:
//!   of the requests in flight when it first refused, those it answered (the decision waits
//!   until they all ended; the host is paused by its Retry-After meanwhile); a refused probe
//!   goes back to the level it probed from. The level refused is remembered; a `503`, a reset,
//!   a timeout or a refused connection takes off half the share of errors among the window's
//!   answers (10% of errors: 5% off), judged on at least half a limit's worth of answers, and
//!   only when the host used its limit or errors are not scattered (20% or more); a
//!   time-to-first-byte rising well above its recent mean (a server queueing the excess) takes
//!   10% off and is remembered like a refusal;
//! - **probing slowly near a known ceiling**: growth up to one below the level a host last
//!   refused is fast, but reaching that level again waits [`PROBE_START`], doubling each time the
//!   host refuses the same level again (to [`PROBE_MAX`]), so a host that serves 6 at a time sees
//!   a refusal every tens of seconds, not every tenth of a second;
//! - **never growing while the limit is not used**: an idle host keeps its limit.
//!
//! A window lasts about one mean time-to-first-byte (at least [`MIN_WINDOW`]), so the controller
//! reacts at the host's own pace. Responses that say nothing of load (`404`, `403`, `410`) count
//! as answers, not as back-pressure. When most recent answers are errors the host is in an
//! outage: the scheduler pauses it and probes with one request at a time until one succeeds.
//!
//! Studied, not copied: Vector's adaptive request concurrency (AIMD on RTT and back-pressure)
//! and Netflix's concurrency-limits (gradient on latency).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Where a host starts: a quarter of its ceiling, so slow start reaches the ceiling in two
/// round trips, but never below this ...
pub(crate) const INITIAL_LIMIT: usize = 4;
/// ... nor above this (a host that has said nothing yet gets at most 16 requests).
const INITIAL_MAX: usize = 16;
/// The shortest decision window.
const MIN_WINDOW: Duration = Duration::from_millis(25);
/// The first wait before probing the level a host last refused.
const PROBE_START: Duration = Duration::from_secs(20);
/// The longest wait between probes of a level the host keeps refusing.
const PROBE_MAX: Duration = Duration::from_secs(120);
/// Answers kept to tell an outage from scattered errors.
const RECENT: usize = 16;
/// Answer times kept for the Little's-law estimate of a refusal.
const ANSWERS_KEPT: usize = 256;
/// Below this share of errors in a window, errors are scattered (the host still grows).
const SCATTERED: f64 = 0.2;
/// Errors among the recent answers that make an outage.
const OUTAGE_ERRORS: usize = 10;

/// What one answer says about the host's load.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Signal {
    /// An answer that says nothing of load (a success, or a 404): its time to first byte.
    Answer(Duration),
    /// The host refused for load (`429`).
    Refused,
    /// A load-related error (`503`, 5xx, reset, timeout, refused connection).
    Error,
    /// Nothing learned (a local error, a cancelled attempt).
    Nothing,
}

/// The state of a host as the display shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Doubling while the host keeps up.
    SlowStart,
    /// Growing by one, or holding under a known ceiling.
    Steady,
    /// Most recent answers are errors: one request at a time until one succeeds.
    Outage,
}

#[derive(Debug, Default, Clone, Copy)]
struct Window {
    most_in_flight: usize,
    answers: u32,
    refused: u32,
    errors: u32,
    ttfb_sum: Duration,
}

/// The requests in flight when a host first refused: the decision waits until they all ended
/// (the host is paused by its Retry-After meanwhile, so waiting costs nothing), then the host
/// bore about as many as were answered.
#[derive(Debug, Clone, Copy)]
struct Cohort {
    size: u32,
    remaining: u32,
    refused: u32,
    /// Answers in the last time to first byte before the first refusal (Little's law: about
    /// the concurrency the host was serving).
    recent: u32,
}

/// What a request carries from its start to its end: the controller's generation then.
///
/// A request sent before the limit last went down says nothing of the new limit: its refusal or
/// error is not counted again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Ticket {
    generation: u32,
    /// [`Controller::filled`] when the request started.
    filled: u32,
    /// True once its answer's head was counted toward slow start (a long body's request
    /// reports its head at once, so growth does not wait for the body's end).
    pub(crate) answered: bool,
}

/// The adaptive limit of one host.
#[derive(Debug, Clone)]
pub(crate) struct Controller {
    /// Bumped at every decrease (see [`Ticket`]).
    generation: u32,
    /// Bumped each time a start fills the limit: a request whose ticket is older saw the host
    /// use all of its limit while it was in flight.
    filled: u32,
    limit: f64,
    ceiling: f64,
    adaptive: bool,
    slow_start: bool,
    in_flight: usize,
    window: Window,
    window_start: Instant,
    /// Mean and mean deviation of the time to first byte (seconds, moving averages).
    ttfb: Option<(f64, f64)>,
    /// The level the host last refused, when, and how long to wait before probing it again.
    refused_at: Option<(f64, Instant)>,
    probe_wait: Duration,
    /// The level a probe started from (it held), while probing.
    probe_from: Option<f64>,
    cohort: Option<Cohort>,
    /// When the last answers came (at most [`ANSWERS_KEPT`]).
    answered_at: VecDeque<Instant>,
    /// Counts for the summary: refusals (429), errors, pauses.
    pub(crate) refusals: u64,
    pub(crate) errors: u64,
    pub(crate) pauses: u64,
    recent_errors: VecDeque<bool>,
    outage: bool,
}

impl Controller {
    /// A controller under `ceiling` (`--per-host`); not `adaptive`: the ceiling, fixed.
    pub(crate) fn new(ceiling: usize, adaptive: bool, now: Instant) -> Self {
        let ceiling = ceiling.max(1) as f64;
        Self {
            generation: 0,
            filled: 0,
            limit: if adaptive {
                ceiling.min((ceiling / 4.0).clamp(INITIAL_LIMIT as f64, INITIAL_MAX as f64))
            } else {
                ceiling
            },
            ceiling,
            adaptive,
            slow_start: true,
            in_flight: 0,
            window: Window::default(),
            window_start: now,
            ttfb: None,
            refused_at: None,
            probe_wait: PROBE_START,
            probe_from: None,
            cohort: None,
            answered_at: VecDeque::new(),
            refusals: 0,
            errors: 0,
            pauses: 0,
            recent_errors: VecDeque::with_capacity(RECENT),
            outage: false,
        }
    }

    /// Moves the ceiling (a fleet's per-host budget shared anew): the limit stays under it, and
    /// a fixed limit follows it.
    pub(crate) fn set_ceiling(&mut self, ceiling: usize) {
        self.ceiling = ceiling.max(1) as f64;
        self.limit = if self.adaptive {
            self.limit.min(self.ceiling)
        } else {
            self.ceiling
        };
    }

    /// Requests the host may have in flight now.
    pub(crate) fn limit(&self) -> usize {
        if self.outage {
            return 1;
        }
        // Truncation is the point: 5.9 allows 5.
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "limit is in [1, ceiling]"
        )]
        let whole = self.limit.floor() as usize;
        whole.max(1)
    }

    /// Requests in flight.
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// The mean time to first byte, once known.
    pub(crate) fn ttfb(&self) -> Option<Duration> {
        self.ttfb.map(|(mean, _)| Duration::from_secs_f64(mean))
    }

    /// Where the controller is.
    pub(crate) fn phase(&self) -> Phase {
        if self.outage {
            Phase::Outage
        } else if self.slow_start && self.adaptive {
            Phase::SlowStart
        } else {
            Phase::Steady
        }
    }

    /// True while most recent answers are errors (the scheduler pauses the host).
    pub(crate) fn in_outage(&self) -> bool {
        self.outage
    }

    /// A request starts; its ticket goes back with [`Controller::on_end`].
    pub(crate) fn on_start(&mut self) -> Ticket {
        self.in_flight += 1;
        self.window.most_in_flight = self.window.most_in_flight.max(self.in_flight);
        let ticket = Ticket {
            generation: self.generation,
            filled: self.filled,
            answered: false,
        };
        if self.in_flight >= self.limit() {
            self.filled = self.filled.wrapping_add(1);
        }
        ticket
    }

    /// A request ended with `signal`.
    pub(crate) fn on_end(&mut self, ticket: Ticket, signal: Signal, now: Instant) {
        self.in_flight = self.in_flight.saturating_sub(1);
        let stale = ticket.generation != self.generation;
        self.refusals += u64::from(signal == Signal::Refused);
        self.errors += u64::from(signal == Signal::Error);
        if stale && matches!(signal, Signal::Refused | Signal::Error) {
            // Sent under a higher limit: already answered by the decrease.
            return;
        }
        match signal {
            Signal::Answer(ttfb) => {
                if !ticket.answered {
                    self.grow_per_answer(ticket);
                }
                self.window.answers += 1;
                self.window.ttfb_sum += ttfb;
                if self.answered_at.len() >= ANSWERS_KEPT {
                    self.answered_at.pop_front();
                }
                self.answered_at.push_back(now);
            }
            Signal::Refused => self.window.refused += 1,
            Signal::Error => self.window.errors += 1,
            Signal::Nothing => return,
        }
        self.note_recent(matches!(signal, Signal::Refused | Signal::Error));
        if self.adaptive && self.count_cohort(signal, now) {
            return;
        }
        let length = self.ttfb().map_or(MIN_WINDOW, |t| t.max(MIN_WINDOW));
        let elapsed = now.saturating_duration_since(self.window_start);
        // A window with errors is judged on enough answers (half the limit, at least 4), or
        // one error among two answers at the end of a run would halve the limit: it stays
        // open for up to eight lengths to gather them.
        let outcomes = self.window.answers + self.window.errors;
        let sample = (self.limit / 2.0).max(4.0);
        let thin = self.window.errors > 0 && f64::from(outcomes) < sample && elapsed < length * 8;
        if elapsed >= length && !thin {
            self.decide(now);
            self.window = Window {
                most_in_flight: self.in_flight,
                ..Window::default()
            };
            self.window_start = now;
        }
    }

    /// Counts an answer toward the cohort of a refusal (starting one at the first refusal);
    /// true while a cohort is open (no window decision meanwhile).
    fn count_cohort(&mut self, signal: Signal, now: Instant) -> bool {
        let refused = signal == Signal::Refused;
        let cohort = match &mut self.cohort {
            Some(cohort) => cohort,
            None if refused => {
                // Everything in flight now, and this request.
                let size = u32::try_from(self.in_flight + 1).unwrap_or(u32::MAX);
                let span = self.ttfb().unwrap_or(MIN_WINDOW);
                let recent = self
                    .answered_at
                    .iter()
                    .filter(|at| now.saturating_duration_since(**at) <= span)
                    .count();
                self.cohort.insert(Cohort {
                    size,
                    remaining: size,
                    refused: 0,
                    recent: u32::try_from(recent).unwrap_or(u32::MAX),
                })
            }
            None => return false,
        };
        cohort.remaining = cohort.remaining.saturating_sub(1);
        cohort.refused += u32::from(refused);
        if cohort.remaining > 0 && self.in_flight > 0 {
            return true;
        }
        let Cohort {
            size, refused, recent, ..
        } = *cohort;
        self.cohort = None;
        let bore = f64::from(size.saturating_sub(refused).max(recent).max(1));
        // A probe one above a level that held: back to that level (a second refusal in the
        // same probe is noise, not a lower capacity). Else what the cohort showed.
        let served = match self.probe_from {
            Some(held) if bore >= held - 1.0 => held,
            _ => bore.min(self.limit.floor() - 1.0).max(1.0),
        };
        self.probe_from = None;
        let level = served + 1.0;
        let same_level = self.refused_at.is_some_and(|(l, _)| (l - level).abs() < 0.5);
        self.probe_wait = if same_level {
            (self.probe_wait * 2).min(PROBE_MAX)
        } else {
            PROBE_START
        };
        self.refused_at = Some((level, now));
        self.lower(served);
        self.window = Window {
            most_in_flight: self.in_flight,
            ..Window::default()
        };
        self.window_start = now;
        true
    }

    /// Slow start the way TCP does it: one more for each answer while the limit is used, so
    /// the limit doubles every time to first byte without waiting for a window to close. Only
    /// before the host ever refused (after an outage, growth goes by windows, under the level
    /// it refused).
    /// A request's answer began (its head came): slow start grows now, as TCP's does per
    /// acknowledgement, rather than when a long body ends. See [`Ticket::answered`].
    pub(crate) fn on_answer(&mut self, ticket: Ticket) {
        if !ticket.answered && ticket.generation == self.generation {
            self.grow_per_answer(ticket);
        }
    }

    fn grow_per_answer(&mut self, ticket: Ticket) {
        let using = ticket.filled != self.filled;
        if self.adaptive && self.slow_start && !self.outage && self.refused_at.is_none() && using {
            self.limit = (self.limit + 1.0).min(self.ceiling);
            self.slow_start = self.limit < self.ceiling;
        }
    }

    fn note_recent(&mut self, error: bool) {
        if self.recent_errors.len() == RECENT {
            self.recent_errors.pop_front();
        }
        self.recent_errors.push_back(error);
        let errors = self.recent_errors.iter().filter(|e| **e).count();
        if !error && self.outage {
            // One success ends the outage: grow again from the lowered limit, doubling.
            self.outage = false;
            self.slow_start = true;
            self.recent_errors.clear();
        } else if errors >= OUTAGE_ERRORS {
            self.outage = true;
        }
    }

    fn lower(&mut self, to: f64) {
        self.limit = to.max(1.0);
        self.slow_start = false;
        self.generation = self.generation.wrapping_add(1);
    }

    fn decide(&mut self, now: Instant) {
        let w = self.window;

        if !self.adaptive {
            return;
        }
        if w.errors > 0 {
            // Scattered errors while the rest succeeds lower the limit in proportion: 10% of
            // errors take 5% off, a window of errors half.
            let fraction = f64::from(w.errors) / f64::from(w.errors + w.answers);
            // Scattered errors while the host was not even using its limit say nothing of the
            // limit (the end of a run, retries trickling): it stays.
            let used = w.most_in_flight as f64 >= self.limit.floor();
            if used || fraction >= SCATTERED {
                self.lower(self.limit * (1.0 - 0.5 * fraction));
            }
            if fraction >= SCATTERED {
                return;
            }
            // Scattered errors while the host answers the rest: the jobs that met them wait for
            // their Retry-After; the limit may still grow by one below.
        }
        if w.answers == 0 {
            return;
        }
        let mean = w.ttfb_sum.as_secs_f64() / f64::from(w.answers);
        if let Some((long, deviation)) = self.ttfb {
            // A clearly slower window: the host queues what it cannot serve.
            // (Also 5 ms slower at least: on a loopback or a LAN, times of a millisecond jitter
            // by more than half without any queueing.)
            let rising = mean > long + 3.0 * deviation.max(long * 0.1) && mean > long * 1.5 && mean - long > 0.005;
            if rising {
                self.refused_at = Some((self.limit.floor(), now));
                self.lower(self.limit * 0.9);
                return;
            }
            self.ttfb = Some((long * 0.9 + mean * 0.1, deviation * 0.9 + (mean - long).abs() * 0.1));
        } else {
            self.ttfb = Some((mean, mean * 0.1));
        }
        if (w.most_in_flight as f64) < self.limit.floor() || f64::from(w.answers) < self.limit.floor() / 2.0 {
            return; // not using its limit (or too few answers to judge): no reason to grow
        }
        if self.slow_start && self.refused_at.is_none() {
            return; // grown per answer (see grow_per_answer)
        }
        let mut next = if self.slow_start && w.errors == 0 {
            self.limit * 2.0
        } else {
            self.limit + 1.0
        };
        if let Some((level, at)) = self.refused_at {
            let may_probe = now.saturating_duration_since(at) >= self.probe_wait;
            if next >= level - 0.5 && !may_probe {
                next = next.min(level - 1.0).max(self.limit);
            } else if next >= level - 0.5 {
                // Probe one step at a time, remembering the level that held.
                next = next.min(level);
                self.probe_from = Some(self.limit.floor());
                self.refused_at = Some((level, now));
            }
        }
        self.limit = next.min(self.ceiling);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A simulated host: capacity `k`, latency `base`; beyond `k` it either refuses (429 after
    /// `base`, and the client pauses for Retry-After) or queues (each extra request waits).
    #[derive(Clone, Copy)]
    enum Host {
        Rejecting { k: usize, retry_after: Duration },
        Queueing { k: usize },
        Knee { k: usize },
    }

    struct Outcome {
        mean_limit: f64,
        refused_after_warmup: f64,
        completed: u64,
    }

    /// Runs a client with `limit()` requests in flight against `host` for `span` of virtual
    /// time; events are processed in time order.
    fn simulate(host: Host, base: Duration, span: Duration, ceiling: usize) -> Outcome {
        let start = Instant::now();
        let mut c = Controller::new(ceiling, true, start);
        let mut now = start;
        let mut in_flight: Vec<(Instant, Signal, Ticket)> = Vec::new();
        let mut paused_until = start;
        let (mut weighted, mut last) = (0.0, start);
        let (mut after_warmup, mut refused_late, mut completed) = (0u64, 0u64, 0u64);
        let warmup = start + Duration::from_secs(5);
        while now < start + span {
            // Start what the limit allows.
            while now >= paused_until && in_flight.len() < c.limit() {
                let ticket = c.on_start();
                let n = in_flight.len() + 1;
                let (ttfb, signal) = match host {
                    Host::Rejecting { k, .. } if n > k => (base, Signal::Refused),
                    Host::Rejecting { .. } => (base, Signal::Answer(base)),
                    Host::Queueing { k } => {
                        let wait = base * u32::try_from(n.div_ceil(k)).unwrap();
                        (wait, Signal::Answer(wait))
                    }
                    Host::Knee { k } => {
                        let extra = n.saturating_sub(k) as f64 / k as f64;
                        let t = base.mul_f64(1.0 + 2.0 * extra);
                        (t, Signal::Answer(t))
                    }
                };
                in_flight.push((now + ttfb, signal, ticket));
            }
            // The next completion (or the end of a pause).
            in_flight.sort_by_key(|(at, _, _)| *at);
            let next = match in_flight.first() {
                Some((at, _, _)) if *at <= paused_until || now >= paused_until => *at,
                _ => paused_until,
            };
            weighted += c.limit() as f64 * next.saturating_duration_since(last).as_secs_f64();
            last = next;
            now = next;
            if let Some(pos) = in_flight.iter().position(|(at, _, _)| *at <= now) {
                let (_, signal, ticket) = in_flight.remove(pos);
                c.on_end(ticket, signal, now);
                if now > warmup {
                    after_warmup += 1;
                    refused_late += u64::from(signal == Signal::Refused);
                }
                if signal == Signal::Refused {
                    if let Host::Rejecting { retry_after, .. } = host {
                        paused_until = now + retry_after;
                    }
                } else {
                    completed += 1;
                }
            }
        }
        Outcome {
            mean_limit: weighted / span.as_secs_f64(),
            refused_after_warmup: refused_late as f64 / after_warmup.max(1) as f64,
            completed,
        }
    }

    #[test]
    fn finds_a_rejecting_hosts_capacity_and_rarely_probes_it() {
        let host = Host::Rejecting {
            k: 6,
            retry_after: Duration::from_secs(1),
        };
        let base = Duration::from_millis(50);
        let o = simulate(host, base, Duration::from_secs(120), 64);
        assert!((4.5..=9.0).contains(&o.mean_limit), "mean limit {}", o.mean_limit);
        assert!(o.refused_after_warmup < 0.03, "refused {}", o.refused_after_warmup);
        // At least 85% of what K requests every 50 ms would complete.
        let ideal = 6.0 / 0.05 * 120.0;
        assert!(
            o.completed as f64 >= 0.85 * ideal,
            "completed {} of {ideal}",
            o.completed
        );
    }

    #[test]
    fn a_queueing_host_is_not_pushed_far_past_its_capacity() {
        let o = simulate(
            Host::Queueing { k: 8 },
            Duration::from_millis(40),
            Duration::from_secs(60),
            64,
        );
        assert!((6.0..=17.0).contains(&o.mean_limit), "mean limit {}", o.mean_limit);
        let o = simulate(
            Host::Knee { k: 10 },
            Duration::from_millis(40),
            Duration::from_secs(60),
            64,
        );
        assert!((7.0..=24.0).contains(&o.mean_limit), "mean limit {}", o.mean_limit);
    }

    #[test]
    fn two_hosts_converge_to_their_own_capacity() {
        for k in [2, 12] {
            let host = Host::Rejecting {
                k,
                retry_after: Duration::from_secs(1),
            };
            let o = simulate(host, Duration::from_millis(50), Duration::from_secs(120), 64);
            let low = k as f64 * 0.75;
            let high = k as f64 * 1.5 + 1.0;
            assert!(
                (low..=high).contains(&o.mean_limit),
                "k {k}: mean limit {}",
                o.mean_limit
            );
        }
    }

    #[test]
    fn a_host_that_takes_any_load_reaches_the_ceiling_fast() {
        let start = Instant::now();
        let mut c = Controller::new(64, true, start);
        let mut now = start;
        assert_eq!(c.limit(), 16, "a quarter of the ceiling");
        let mut rounds = 0;
        for _ in 0..200 {
            let tickets: Vec<Ticket> = (0..c.limit()).map(|_| c.on_start()).collect();
            now += Duration::from_millis(100);
            for ticket in tickets {
                c.on_end(ticket, Signal::Answer(Duration::from_millis(100)), now);
            }
            rounds += usize::from(c.phase() == Phase::SlowStart);
        }
        assert_eq!(c.limit(), 64);
        assert_eq!(rounds, 1, "16 -> 32 -> 64: the ceiling in two round trips");
        assert_eq!(c.generation, 0, "never lowered");
    }

    #[test]
    fn millisecond_jitter_is_not_queueing() {
        let start = Instant::now();
        let mut c = Controller::new(64, true, start);
        let mut now = start;
        for round in 0..200u32 {
            let tickets: Vec<Ticket> = (0..c.limit()).map(|_| c.on_start()).collect();
            // 1 to 3 ms, jittering: a loopback server, not a queue.
            let ttfb = Duration::from_micros(1000 + u64::from(round % 3) * 1000);
            now += Duration::from_millis(30);
            for ticket in tickets {
                c.on_end(ticket, Signal::Answer(ttfb), now);
            }
        }
        assert_eq!(c.limit(), 64);
    }

    #[test]
    fn a_few_errors_among_few_requests_do_not_collapse_the_limit() {
        // The end of a run on a host that fails 10% at random: two requests at a time.
        let start = Instant::now();
        let mut c = Controller::new(16, false, start);
        c.adaptive = true;
        let mut now = start;
        for round in 0..200u32 {
            let tickets = [c.on_start(), c.on_start()];
            now += Duration::from_millis(20);
            for (i, ticket) in tickets.into_iter().enumerate() {
                let error = (round * 2 + u32::try_from(i).unwrap()) % 10 == 0;
                let signal = if error {
                    Signal::Error
                } else {
                    Signal::Answer(Duration::from_millis(20))
                };
                c.on_end(ticket, signal, now);
            }
        }
        assert!(
            c.limit() >= 8,
            "limit {} after scattered errors on a thin sample",
            c.limit()
        );
    }

    #[test]
    fn not_using_the_limit_never_grows_it() {
        let start = Instant::now();
        let mut c = Controller::new(64, true, start);
        let mut now = start;
        for _ in 0..100 {
            let ticket = c.on_start();
            now += Duration::from_millis(30);
            c.on_end(ticket, Signal::Answer(Duration::from_millis(30)), now);
        }
        assert_eq!(c.limit(), 16);
    }

    #[test]
    fn scattered_errors_lower_gently_and_an_outage_probes_one_at_a_time() {
        let start = Instant::now();
        let mut c = Controller::new(16, true, start);
        let mut now = start;
        // 10% errors while the rest succeeds: the limit stays useful.
        for round in 0..400 {
            let tickets: Vec<Ticket> = (0..c.limit()).map(|_| c.on_start()).collect();
            now += Duration::from_millis(20);
            for (i, ticket) in tickets.into_iter().enumerate() {
                let signal = if (round * 7 + i) % 10 == 0 {
                    Signal::Error
                } else {
                    Signal::Answer(Duration::from_millis(20))
                };
                c.on_end(ticket, signal, now);
            }
        }
        assert!(c.limit() >= 8, "limit {} under scattered errors", c.limit());
        assert!(!c.in_outage());
        for _ in 0..OUTAGE_ERRORS {
            // One at a time, each after the last decrease: none is stale.
            let ticket = c.on_start();
            now += Duration::from_millis(20);
            c.on_end(ticket, Signal::Error, now);
        }
        assert!(c.in_outage());
        assert_eq!(c.limit(), 1);
        let ticket = c.on_start();
        c.on_end(ticket, Signal::Answer(Duration::from_millis(20)), now);
        assert!(!c.in_outage(), "one success ends the outage");
        assert_eq!(c.phase(), Phase::SlowStart, "and the limit grows back fast");
    }

    #[test]
    fn fixed_when_not_adaptive() {
        let start = Instant::now();
        let mut c = Controller::new(8, false, start);
        let ticket = c.on_start();
        c.on_end(ticket, Signal::Refused, start);
        assert_eq!(c.limit(), 8);
    }
}
