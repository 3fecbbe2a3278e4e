//! When a job may start: a global limit, per-host adaptive limits, per-host request rates, host
//! cool-downs and retry delays.
//!
//! [`Scheduler`] is plain data driven by the engine's dispatcher: it knows host keys and
//! instants, never HTTP or paths, and takes `now` as an argument so it is tested without sleeping.
//! Hosts that may start a job wait in a round-robin ring, so picking the next job costs O(1)
//! however many hosts are queued. Each host has a [`host::Controller`] (its adaptive limit under
//! `--per-host`) and, with `--rate`, a [`rate::Bucket`]. A host with nothing to do is forgotten,
//! but its controller is remembered (up to [`REMEMBERED`] hosts), so a host met again later does
//! not start learning from scratch.

pub(crate) mod backoff;
pub(crate) mod host;
pub(crate) mod rate;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use host::{Controller, Phase, Signal, Ticket};
use rate::{Bucket, Rate};

/// Controllers of idle hosts remembered at most (then forgotten all at once).
const REMEMBERED: usize = 4096;

/// How every host is treated.
#[derive(Debug, Clone)]
pub(crate) struct Policy {
    /// `--per-host`: the ceiling of each host's limit.
    pub(crate) per_host: usize,
    /// Adapt each host's limit under the ceiling (else: the ceiling, fixed).
    pub(crate) adaptive: bool,
    /// `--rate`: requests per host per second at most.
    pub(crate) rate: Option<Rate>,
    /// Hosts with settings of their own (ceiling, rate): the first matching rule decides.
    pub(crate) rules: std::sync::Arc<[crate::HostRule]>,
}

/// The queue of one host.
#[derive(Debug)]
struct Host<T> {
    queue: VecDeque<T>,
    /// Jobs waiting for a retry, with the instant they may go again.
    delayed: Vec<(Instant, T)>,
    cool_until: Option<Instant>,
    /// Why it is paused (for the display).
    pause_reason: Option<String>,
    in_ring: bool,
    control: Controller,
    bucket: Option<Bucket>,
}

impl<T> Host<T> {
    fn wants_to_start(&self) -> bool {
        self.cool_until.is_none() && !self.queue.is_empty() && self.control.in_flight() < self.control.limit()
    }

    fn is_idle(&mut self, now: Instant) -> bool {
        self.queue.is_empty()
            && self.delayed.is_empty()
            && self.control.in_flight() == 0
            && self.cool_until.is_none()
            && self.bucket.as_mut().is_none_or(|b| b.is_full(now))
    }
}

/// A job allowed to start.
#[derive(Debug)]
pub(crate) struct Started<T> {
    pub(crate) host: String,
    pub(crate) job: T,
    /// Goes back with [`Scheduler::finish`].
    pub(crate) ticket: Ticket,
}

/// One busy host, as the display shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostView {
    /// `host:port`.
    pub host: String,
    /// Requests it may have in flight now (its adaptive limit).
    pub limit: usize,
    /// Requests in flight.
    pub in_flight: usize,
    /// Jobs queued or waiting for a retry.
    pub waiting: usize,
    /// The mean time to first byte, once known.
    pub ttfb: Option<Duration>,
    /// How long it stays paused (Retry-After, an outage), if it is.
    pub paused_for: Option<Duration>,
    /// Why it is paused, if it is (`429 Too Many Requests, Retry-After 5 s`, an outage).
    pub pause_reason: Option<String>,
    /// `slow start`, `steady` or `outage`.
    pub phase: &'static str,
    /// Refusals (`429`) the host answered so far.
    pub refusals: u64,
    /// Load-related errors (`503`, resets, timeouts) so far.
    pub errors: u64,
    /// Times the host was paused (Retry-After, an outage) so far.
    pub pauses: u64,
}

impl HostView {
    fn of(key: &str, control: &Controller, waiting: usize, paused_for: Option<Duration>) -> Self {
        Self {
            host: key.to_owned(),
            limit: control.limit(),
            in_flight: control.in_flight(),
            waiting,
            ttfb: control.ttfb(),
            paused_for,
            pause_reason: None,
            phase: match control.phase() {
                Phase::SlowStart => "slow start",
                Phase::Steady => "steady",
                Phase::Outage => "outage",
            },
            refusals: control.refusals,
            errors: control.errors,
            pauses: control.pauses,
        }
    }
}

/// Jobs waiting to start, grouped by host.
#[derive(Debug)]
pub(crate) struct Scheduler<T> {
    hosts: HashMap<String, Host<T>>,
    remembered: HashMap<String, Controller>,
    ring: VecDeque<String>,
    timers: BinaryHeap<Reverse<(Instant, String)>>,
    policy: Policy,
    total_limit: usize,
    active: usize,
    waiting: usize,
    /// Workers sharing the per-host budgets (ceiling and rate) of a fleet: each gets a share.
    share: usize,
}

impl<T> Scheduler<T> {
    /// A scheduler running at most `total_limit` jobs, each host within `policy`.
    pub(crate) fn new(total_limit: usize, policy: Policy) -> Self {
        Self {
            hosts: HashMap::new(),
            remembered: HashMap::new(),
            ring: VecDeque::new(),
            timers: BinaryHeap::new(),
            policy: Policy {
                per_host: policy.per_host.max(1),
                ..policy
            },
            total_limit: total_limit.max(1),
            active: 0,
            waiting: 0,
            share: 1,
        }
    }

    /// The ceiling and rate of `key`: its rule's or the policy's, this worker's share of them.
    fn budget(&self, key: &str) -> (usize, Option<Rate>) {
        let rule = crate::rules::find(&self.policy.rules, key).map(|i| &self.policy.rules[i]);
        let ceiling = rule.and_then(|r| r.per_host).unwrap_or(self.policy.per_host).max(1);
        let rate = rule.and_then(|r| r.rate).or(self.policy.rate);
        ((ceiling / self.share).max(1), rate.map(|r| r.divided(self.share)))
    }

    /// Shares every host's budget among `workers` live workers of a fleet (this one included):
    /// each gets its ceiling divided (at least 1) and its rate divided.
    pub(crate) fn set_share(&mut self, workers: usize, now: Instant) {
        let workers = workers.max(1);
        if workers == self.share {
            return;
        }
        self.share = workers;
        let keys: Vec<String> = self.hosts.keys().chain(self.remembered.keys()).cloned().collect();
        for key in keys {
            let (ceiling, rate) = self.budget(&key);
            if let Some(host) = self.hosts.get_mut(&key) {
                host.control.set_ceiling(ceiling);
                if let (Some(bucket), Some(rate)) = (host.bucket.as_mut(), rate) {
                    bucket.set_rate(rate, now);
                }
                // A larger share may let a host at its old limit start more.
                self.enlist(&key);
            } else if let Some(control) = self.remembered.get_mut(&key) {
                control.set_ceiling(ceiling);
            }
        }
    }

    /// Jobs queued or delayed (not running): the engine bounds this to bound memory.
    pub(crate) fn waiting(&self) -> usize {
        self.waiting
    }

    /// Jobs of `host` ready to start (not running, not waiting for a retry).
    pub(crate) fn ready(&self, host: &str) -> usize {
        self.hosts.get(host).map_or(0, |h| h.queue.len())
    }

    /// Jobs running.
    pub(crate) fn active(&self) -> usize {
        self.active
    }

    fn host(&mut self, key: &str, now: Instant) -> &mut Host<T> {
        if !self.hosts.contains_key(key) {
            let (ceiling, rate) = self.budget(key);
            let control = self
                .remembered
                .remove(key)
                .unwrap_or_else(|| Controller::new(ceiling, self.policy.adaptive, now));
            let host = Host {
                queue: VecDeque::new(),
                delayed: Vec::new(),
                cool_until: None,
                pause_reason: None,
                in_ring: false,
                control,
                bucket: rate.map(|rate| Bucket::new(rate, now)),
            };
            self.hosts.insert(key.to_owned(), host);
        }
        self.hosts.get_mut(key).expect("inserted above")
    }

    /// Queues a job for `host`.
    pub(crate) fn push(&mut self, host: &str, job: T, now: Instant) {
        self.waiting += 1;
        self.host(host, now).queue.push_back(job);
        self.enlist(host);
    }

    /// Queues work for `host` ahead of its other jobs (a running transfer's next request).
    pub(crate) fn push_front(&mut self, host: &str, job: T, now: Instant) {
        self.waiting += 1;
        self.host(host, now).queue.push_front(job);
        self.enlist(host);
    }

    fn enlist(&mut self, key: &str) {
        if let Some(host) = self.hosts.get_mut(key)
            && !host.in_ring
            && host.wants_to_start()
        {
            host.in_ring = true;
            self.ring.push_back(key.to_owned());
        }
    }

    /// The next job allowed to start at `now`, counted as running until [`Scheduler::finish`].
    pub(crate) fn pop(&mut self, now: Instant) -> Option<Started<T>> {
        self.fire_timers(now);
        if self.active >= self.total_limit {
            return None;
        }
        while let Some(key) = self.ring.pop_front() {
            let Some(host) = self.hosts.get_mut(&key) else { continue };
            host.in_ring = false;
            if !host.wants_to_start() {
                continue;
            }
            if let Some(bucket) = &mut host.bucket {
                let at = bucket.ready_at(now);
                if at > now {
                    // No token yet: the host comes back when one is there.
                    self.timers.push(Reverse((at, key)));
                    continue;
                }
                bucket.take(now);
            }
            let job = host.queue.pop_front().expect("wants_to_start implies a queued job");
            let ticket = host.control.on_start();
            self.active += 1;
            self.waiting -= 1;
            self.enlist(&key);
            return Some(Started { host: key, job, ticket });
        }
        None
    }

    /// A job of `host` stopped running; `signal` is what its answer said of the host's load.
    pub(crate) fn finish(&mut self, host: &str, ticket: Ticket, signal: Signal, now: Instant) {
        self.active -= 1;
        if let Some(h) = self.hosts.get_mut(host) {
            h.control.on_end(ticket, signal, now);
        }
        self.enlist(host);
        self.forget_if_idle(host, now);
    }

    /// A running request of `host` got its answer's head (see [`Controller::on_answer`]).
    pub(crate) fn answered(&mut self, host: &str, ticket: Ticket) {
        if let Some(h) = self.hosts.get_mut(host) {
            h.control.on_answer(ticket);
        }
        self.enlist(host);
    }

    /// True while most of the host's recent answers are errors (see [`Controller`]).
    pub(crate) fn in_outage(&self, host: &str) -> bool {
        self.hosts.get(host).is_some_and(|h| h.control.in_outage())
    }

    fn forget_if_idle(&mut self, key: &str, now: Instant) {
        let Some(host) = self.hosts.get_mut(key) else { return };
        if host.is_idle(now) {
            let host = self.hosts.remove(key).expect("present");
            if self.remembered.len() >= REMEMBERED {
                self.remembered.clear();
            }
            self.remembered.insert(key.to_owned(), host.control);
        }
    }

    /// Queues a job again, not to start before `at` (a retry after a backoff or Retry-After).
    pub(crate) fn retry_at(&mut self, host: &str, job: T, at: Instant, now: Instant) {
        self.waiting += 1;
        self.host(host, now).delayed.push((at, job));
        self.timers.push(Reverse((at, host.to_owned())));
    }

    /// Starts no job of `host` before `until` (429 / Retry-After: the whole host slows down).
    /// Pauses `host` until `until` for `reason`; true when this starts a pause (not when it
    /// lengthens one).
    pub(crate) fn cool_down(&mut self, host: &str, until: Instant, now: Instant, reason: &str) -> bool {
        let h = self.host(host, now);
        let starts = h.cool_until.is_none();
        if h.cool_until.is_none_or(|t| t < until) {
            if starts {
                h.control.pauses += 1;
            }
            h.cool_until = Some(until);
            h.pause_reason = Some(reason.to_owned());
            self.timers.push(Reverse((until, host.to_owned())));
        }
        starts
    }

    /// Removes and returns every job still waiting (at the end of an interrupted run). There are
    /// at most a window of them.
    pub(crate) fn take_waiting(&mut self) -> Vec<T> {
        let mut jobs = Vec::with_capacity(self.waiting);
        for (_, host) in self.hosts.drain() {
            jobs.extend(host.queue);
            jobs.extend(host.delayed.into_iter().map(|(_, job)| job));
        }
        self.waiting = 0;
        self.ring.clear();
        self.timers.clear();
        jobs
    }

    /// When the next delayed job, cool-down or token is due, if any.
    pub(crate) fn next_wakeup(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((at, _))| *at)
    }

    /// The busiest hosts (most in flight, then most waiting), at most `most` of them.
    pub(crate) fn views(&self, now: Instant, most: usize) -> Vec<HostView> {
        let mut views: Vec<HostView> = self
            .hosts
            .iter()
            .map(|(key, h)| {
                let paused = h.cool_until.map(|t| t.saturating_duration_since(now));
                let mut view = HostView::of(key, &h.control, h.queue.len() + h.delayed.len(), paused);
                view.pause_reason = paused.and(h.pause_reason.clone());
                view
            })
            .collect();
        views.sort_by(|a, b| (b.in_flight, b.waiting, &a.host).cmp(&(a.in_flight, a.waiting, &b.host)));
        views.truncate(most);
        views
    }

    /// For the summary: the hosts that pushed back (refusals, errors, pauses), most first, at
    /// most `most` of them, with what their limit became.
    pub(crate) fn pushed_back(&self, most: usize) -> Vec<HostView> {
        let mut views: Vec<HostView> = self
            .hosts
            .iter()
            .map(|(key, h)| (key, &h.control))
            .chain(self.remembered.iter())
            .filter(|(_, c)| c.refusals + c.errors + c.pauses > 0)
            .map(|(key, c)| HostView::of(key, c, 0, None))
            .collect();
        views.sort_by(|a, b| {
            (b.refusals + b.errors + b.pauses, &a.host).cmp(&(a.refusals + a.errors + a.pauses, &b.host))
        });
        views.truncate(most);
        views
    }

    fn fire_timers(&mut self, now: Instant) {
        while let Some(Reverse((at, _))) = self.timers.peek() {
            if *at > now {
                break;
            }
            let Reverse((_, key)) = self.timers.pop().expect("peeked");
            let Some(host) = self.hosts.get_mut(&key) else { continue };
            if host.cool_until.is_some_and(|t| t <= now) {
                host.cool_until = None;
                host.pause_reason = None;
            }
            // Due retries go to the front: they were read before anything still queued.
            let mut index = 0;
            while index < host.delayed.len() {
                if host.delayed[index].0 <= now {
                    let (_, job) = host.delayed.swap_remove(index);
                    host.queue.push_front(job);
                } else {
                    index += 1;
                }
            }
            self.enlist(&key);
            self.forget_if_idle(&key, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn fixed(per_host: usize) -> Policy {
        Policy {
            per_host,
            adaptive: false,
            rate: None,
            rules: std::sync::Arc::from(Vec::new()),
        }
    }

    fn ok() -> Signal {
        Signal::Answer(Duration::from_millis(10))
    }

    #[test]
    fn a_fleet_share_divides_each_hosts_ceiling_and_rate() {
        let now = Instant::now();
        let mut s = Scheduler::new(64, fixed(8));
        for i in 0..20 {
            s.push("a", i, now);
        }
        // Three workers share a ceiling of 8: this one keeps 2 (8 / 3, rounded down).
        s.set_share(3, now);
        assert_eq!(std::iter::from_fn(|| s.pop(now)).count(), 2);
        // Alone again: the whole ceiling.
        s.set_share(1, now);
        assert_eq!(std::iter::from_fn(|| s.pop(now)).count(), 6);
        let mut r = Scheduler::new(
            64,
            Policy {
                rate: Some(Rate::parse("10/s").unwrap()),
                ..fixed(64)
            },
        );
        r.set_share(2, now);
        for i in 0..20 {
            r.push("a", i, now);
        }
        // Five a second each for two workers: over two seconds at most 5 * 2 + the burst.
        let mut started = 0;
        let mut t = now;
        while t < now + Duration::from_secs(2) {
            while r.pop(t).is_some() {
                started += 1;
            }
            t += Duration::from_millis(10);
        }
        assert!((10..=11).contains(&started), "{started}");
    }

    #[test]
    fn respects_global_and_per_host_limits() {
        let now = Instant::now();
        let mut s = Scheduler::new(3, fixed(2));
        for i in 0..4 {
            s.push("a", i, now);
        }
        s.push("b", 10, now);
        let started: Vec<_> = std::iter::from_fn(|| s.pop(now)).collect();
        assert_eq!(started.len(), 3);
        assert_eq!(started.iter().filter(|x| x.host == "a").count(), 2);
        assert!(started.iter().any(|x| x.host == "b" && x.job == 10));
        assert!(s.pop(now).is_none());
        let ticket = |host: &str| started.iter().find(|x| x.host == host).unwrap().ticket;
        s.finish("b", ticket("b"), ok(), now);
        // b is empty; a is at its per-host limit: nothing may start.
        assert!(s.pop(now).is_none());
        s.finish("a", ticket("a"), ok(), now);
        assert_eq!(s.pop(now).map(|x| x.job), Some(2));
        assert_eq!(s.waiting(), 1);
    }

    #[test]
    fn cool_down_pauses_the_whole_host_then_resumes() {
        let now = Instant::now();
        let mut s = Scheduler::new(10, fixed(10));
        s.push("a", 1, now);
        s.push("a", 2, now);
        s.push("b", 3, now);
        s.cool_down("a", now + Duration::from_secs(5), now, "test");
        assert_eq!(s.pop(now).map(|x| x.job), Some(3));
        assert!(s.pop(now).is_none());
        assert_eq!(s.next_wakeup(), Some(now + Duration::from_secs(5)));
        assert!(s.pop(now + Duration::from_secs(4)).is_none());
        let later = now + Duration::from_secs(5);
        assert_eq!(s.pop(later).map(|x| x.job), Some(1));
        assert_eq!(s.pop(later).map(|x| x.job), Some(2));
    }

    #[test]
    fn retries_wait_for_their_time_and_go_first() {
        let now = Instant::now();
        let mut s = Scheduler::new(1, fixed(1));
        s.push("a", 1, now);
        let first = s.pop(now).unwrap();
        s.push("a", 2, now);
        s.finish("a", first.ticket, ok(), now);
        s.retry_at("a", first.job, now + Duration::from_millis(100), now);
        assert_eq!(s.waiting(), 2);
        let second = s.pop(now).unwrap();
        assert_eq!(second.job, 2);
        s.finish("a", second.ticket, ok(), now);
        assert!(s.pop(now).is_none());
        let later = now + Duration::from_millis(100);
        let third = s.pop(later).unwrap();
        assert_eq!(third.job, 1);
        s.finish("a", third.ticket, ok(), later);
        assert_eq!(s.waiting(), 0);
        assert!(s.hosts.is_empty(), "idle hosts are forgotten");
        assert!(s.remembered.contains_key("a"), "but their controller is remembered");
    }

    #[test]
    fn a_rate_spaces_the_starts_of_one_host() {
        let now = Instant::now();
        let policy = Policy {
            per_host: 64,
            adaptive: false,
            rate: Some(Rate::parse("10/s").unwrap()),
            rules: std::sync::Arc::from(Vec::new()),
        };
        let mut s = Scheduler::new(64, policy);
        for i in 0..5 {
            s.push("a", i, now);
            s.push("b", 10 + i, now);
        }
        // One token each now; the next 100 ms later.
        let first: Vec<_> = std::iter::from_fn(|| s.pop(now)).map(|x| x.host).collect();
        assert_eq!(first.len(), 2, "{first:?}");
        let wake = s.next_wakeup().unwrap();
        assert!(
            wake > now && wake <= now + Duration::from_millis(101),
            "{:?}",
            wake - now
        );
        assert_eq!(std::iter::from_fn(|| s.pop(wake)).count(), 2);
    }

    #[test]
    fn host_rules_set_their_hosts_ceiling_and_rate() {
        let now = Instant::now();
        let mut rule = crate::HostRule::new("*.slow.test");
        rule.per_host = Some(1);
        let policy = Policy {
            rules: std::sync::Arc::from(vec![rule]),
            ..fixed(4)
        };
        let mut s = Scheduler::new(64, policy);
        for i in 0..4 {
            s.push("img.slow.test:443", i, now);
            s.push("fast.test:443", 10 + i, now);
        }
        let started: Vec<String> = std::iter::from_fn(|| s.pop(now)).map(|x| x.host).collect();
        assert_eq!(started.iter().filter(|h| h.starts_with("img")).count(), 1);
        assert_eq!(started.iter().filter(|h| h.starts_with("fast")).count(), 4);
    }
}
