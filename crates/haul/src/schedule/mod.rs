//! When a job may start: a global limit, per-host limits, host cool-downs and retry delays.
//!
//! [`Scheduler`] is plain data driven by the engine's dispatcher: it knows host keys and
//! instants, never HTTP or paths, and takes `now` as an argument so it is tested without sleeping.
//! Hosts that may start a job wait in a round-robin ring, so picking the next job costs O(1)
//! however many hosts are queued.

pub(crate) mod backoff;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::time::Instant;

/// The queue of one host.
#[derive(Debug)]
struct Host<T> {
    queue: VecDeque<T>,
    /// Jobs waiting for a retry, with the instant they may go again.
    delayed: Vec<(Instant, T)>,
    active: usize,
    cool_until: Option<Instant>,
    in_ring: bool,
}

impl<T> Host<T> {
    fn new() -> Self {
        Self {
            queue: VecDeque::new(),
            delayed: Vec::new(),
            active: 0,
            cool_until: None,
            in_ring: false,
        }
    }

    fn can_start(&self, limit: usize) -> bool {
        self.active < limit && self.cool_until.is_none() && !self.queue.is_empty()
    }

    fn is_idle(&self) -> bool {
        self.queue.is_empty() && self.delayed.is_empty() && self.active == 0 && self.cool_until.is_none()
    }
}

/// Jobs waiting to start, grouped by host.
#[derive(Debug)]
pub(crate) struct Scheduler<T> {
    hosts: HashMap<String, Host<T>>,
    ring: VecDeque<String>,
    timers: BinaryHeap<Reverse<(Instant, String)>>,
    per_host: usize,
    total_limit: usize,
    active: usize,
    waiting: usize,
}

impl<T> Scheduler<T> {
    /// A scheduler running at most `total_limit` jobs, at most `per_host` of them on one host.
    pub(crate) fn new(total_limit: usize, per_host: usize) -> Self {
        Self {
            hosts: HashMap::new(),
            ring: VecDeque::new(),
            timers: BinaryHeap::new(),
            per_host: per_host.max(1),
            total_limit: total_limit.max(1),
            active: 0,
            waiting: 0,
        }
    }

    /// Jobs queued or delayed (not running): the engine bounds this to bound memory.
    pub(crate) fn waiting(&self) -> usize {
        self.waiting
    }

    /// Jobs running.
    pub(crate) fn active(&self) -> usize {
        self.active
    }

    /// Queues a job for `host`.
    pub(crate) fn push(&mut self, host: &str, job: T) {
        self.waiting += 1;
        let h = self.hosts.entry(host.to_owned()).or_insert_with(Host::new);
        h.queue.push_back(job);
        Self::enlist(&mut self.ring, host, h, self.per_host);
    }

    fn enlist(ring: &mut VecDeque<String>, key: &str, host: &mut Host<T>, per_host: usize) {
        if !host.in_ring && host.can_start(per_host) {
            host.in_ring = true;
            ring.push_back(key.to_owned());
        }
    }

    /// The next job allowed to start at `now`, counted as running until [`Scheduler::finish`].
    pub(crate) fn pop(&mut self, now: Instant) -> Option<(String, T)> {
        self.fire_timers(now);
        if self.active >= self.total_limit {
            return None;
        }
        while let Some(key) = self.ring.pop_front() {
            let Some(host) = self.hosts.get_mut(&key) else { continue };
            host.in_ring = false;
            if !host.can_start(self.per_host) {
                continue;
            }
            let job = host.queue.pop_front().expect("can_start implies a queued job");
            host.active += 1;
            self.active += 1;
            self.waiting -= 1;
            Self::enlist(&mut self.ring, &key, host, self.per_host);
            return Some((key, job));
        }
        None
    }

    /// A job of `host` stopped running.
    pub(crate) fn finish(&mut self, host: &str) {
        self.active -= 1;
        if let Some(h) = self.hosts.get_mut(host) {
            h.active -= 1;
            Self::enlist(&mut self.ring, host, h, self.per_host);
            if h.is_idle() {
                self.hosts.remove(host);
            }
        }
    }

    /// Queues a job again, not to start before `at` (a retry after a backoff).
    pub(crate) fn retry_at(&mut self, host: &str, job: T, at: Instant) {
        self.waiting += 1;
        let h = self.hosts.entry(host.to_owned()).or_insert_with(Host::new);
        h.delayed.push((at, job));
        self.timers.push(Reverse((at, host.to_owned())));
    }

    /// Starts no job of `host` before `until` (429 / Retry-After: the whole host slows down).
    pub(crate) fn cool_down(&mut self, host: &str, until: Instant) {
        let h = self.hosts.entry(host.to_owned()).or_insert_with(Host::new);
        if h.cool_until.is_none_or(|t| t < until) {
            h.cool_until = Some(until);
            self.timers.push(Reverse((until, host.to_owned())));
        }
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

    /// When the next delayed job or cool-down ends, if any.
    pub(crate) fn next_wakeup(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((at, _))| *at)
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
            Self::enlist(&mut self.ring, &key, host, self.per_host);
            if host.is_idle() {
                self.hosts.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn respects_global_and_per_host_limits() {
        let now = Instant::now();
        let mut s = Scheduler::new(3, 2);
        for i in 0..4 {
            s.push("a", i);
        }
        s.push("b", 10);
        let started: Vec<_> = std::iter::from_fn(|| s.pop(now)).collect();
        assert_eq!(started.len(), 3);
        assert_eq!(started.iter().filter(|(h, _)| h == "a").count(), 2);
        assert!(started.iter().any(|(h, j)| h == "b" && *j == 10));
        assert!(s.pop(now).is_none());
        s.finish("b");
        // b is empty; a is at its per-host limit: nothing may start.
        assert!(s.pop(now).is_none());
        s.finish("a");
        assert_eq!(s.pop(now).map(|(_, j)| j), Some(2));
        assert_eq!(s.waiting(), 1);
    }

    #[test]
    fn cool_down_pauses_the_whole_host_then_resumes() {
        let now = Instant::now();
        let mut s = Scheduler::new(10, 10);
        s.push("a", 1);
        s.push("a", 2);
        s.push("b", 3);
        s.cool_down("a", now + Duration::from_secs(5));
        assert_eq!(s.pop(now).map(|(_, j)| j), Some(3));
        assert!(s.pop(now).is_none());
        assert_eq!(s.next_wakeup(), Some(now + Duration::from_secs(5)));
        assert!(s.pop(now + Duration::from_secs(4)).is_none());
        let later = now + Duration::from_secs(5);
        assert_eq!(s.pop(later).map(|(_, j)| j), Some(1));
        assert_eq!(s.pop(later).map(|(_, j)| j), Some(2));
    }

    #[test]
    fn retries_wait_for_their_time_and_go_first() {
        let now = Instant::now();
        let mut s = Scheduler::new(1, 1);
        s.push("a", 1);
        let (_, first) = s.pop(now).unwrap();
        s.push("a", 2);
        s.finish("a");
        s.retry_at("a", first, now + Duration::from_millis(100));
        assert_eq!(s.waiting(), 2);
        assert_eq!(s.pop(now).map(|(_, j)| j), Some(2));
        s.finish("a");
        assert!(s.pop(now).is_none());
        assert_eq!(s.pop(now + Duration::from_millis(100)).map(|(_, j)| j), Some(1));
        s.finish("a");
        assert_eq!(s.waiting(), 0);
        assert!(s.hosts.is_empty(), "idle hosts are forgotten");
    }
}
